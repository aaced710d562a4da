// Package sessionmap keeps, for one client connection and its selected
// mailbox, the client's own message sequence numbers and how they map to
// UIDs and to the backend's numbers. It is a pure data structure: no I/O,
// no goroutines, no locking (the session's mutex guards it).
//
// # The model
//
// Every connection has its own message numbers, which change only when that
// connection is sent EXISTS or EXPUNGE (RFC 3501 §2.3.1.2, RFC 9051
// §2.3.1.2). uidgate therefore keeps two views of the mailbox:
//
//   - the upstream view: what the backend has told this connection (its
//     EXISTS, EXPUNGE, VANISHED and FETCH UID responses), numbered as the
//     backend numbers them;
//   - the client view: what uidgate has told the client, numbered as the
//     client numbers them.
//
// Both are lists of messages in UID order (UIDs ascend with message
// numbers, RFC 9051 §2.3.1.1). A message can be in both, or only in one:
//
//   - a pending expunge is gone upstream but still numbered by the client,
//     until ReleaseExpunges (or ReleaseVanished) reports it;
//   - a pending arrival is counted by an upstream EXISTS but not yet
//     announced to the client, until AnnounceArrivals;
//   - a placeholder is a message counted by EXISTS whose UID is not known
//     yet (Resolve learns it from "* n FETCH (UID u)"; Unresolved says what
//     to ask for);
//   - a tombstone is a placeholder the client was told of that went away
//     upstream before its UID was learned: a pending expunge without UID.
//
// Pending arrivals always form the end of the list: EXISTS only ever adds
// messages at the end, and arrivals are announced in order. So the client
// view is the whole list minus that suffix, and the upstream view is the
// whole list minus the pending expunges and tombstones.
//
// # Events, in the order a session sees them
//
//	SELECT, then UID SEARCH ALL    Load (or LoadSet for ESEARCH ALL, or
//	                               NewLoader to take the list as it arrives)
//	* n EXISTS                     Exists, then AnnounceArrivals when the
//	                               client may be told (* ClientCount() EXISTS)
//	* n FETCH (UID u ...)          Resolve for a placeholder
//	* n EXPUNGE                    ExpungeUpstream (n in upstream numbers)
//	* VANISHED uids                Vanish
//	client command with msgnos     ClientSeqToUIDs / AppendClientUIDs
//	responses with UIDs            ClientMsgno, AppendClientMsgnos,
//	                               AppendClientSeq, UpstreamToClient
//	EXPUNGE allowed to the client  ReleaseExpunges (or ReleaseVanished)
//	legacy backend, dirty view     Resync with a fresh UID SEARCH ALL
//	CLOSE, UNSELECT                Reset
//
// A client's message number that is still in its view but gone upstream is
// skipped silently when a command is translated, as Cyrus 2.4 and later do;
// a number above the client's count, or "*" in an empty mailbox, is a
// *SeqError the proxy answers with BAD, without asking the backend.
//
// ReleaseExpunges returns the numbers highest first. Each EXPUNGE
// decrements the numbers of the messages after it at once (RFC 3501
// §7.4.1, RFC 9051 §7.5.1), so in that order no number shifts before it is
// sent and each is the number the client has for the message. EXPUNGE may
// not be sent during FETCH, STORE or SEARCH, nor when no command is in
// progress (same sections): when to call it is the proxy's decision.
//
// # Representation
//
// Known messages the client was told of live in the body: runs of
// consecutive UIDs sharing a pending bit, varint-encoded (gap, length) in
// chunks of at most 192 bytes, with two Fenwick trees over the chunks'
// message and pending counts. Rank and select are O(log chunks) plus the
// decoding of one chunk; an expunge re-encodes one chunk, never the
// mailbox. 1,000,000 messages cost about 500 bytes with dense UIDs and
// 2.6 MB with every other UID (the naive []uint32 per view: 8 MB).
//
// Everything after the first unknown UID or unannounced message lives in a
// short tail of runs (placeholders compress to one run), scanned
// linearly; known, announced messages move to the body as soon as nothing
// unknown precedes them. The tail is the arrivals the proxy has not yet
// resolved or announced, so it stays small in practice; a huge one (say
// 100,000 placeholders resolved in reverse order) is correct but slow.
package sessionmap
