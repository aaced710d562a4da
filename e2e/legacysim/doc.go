// Package legacysim is an in-process IMAP server that behaves like a Cyrus
// 2.3-era server on purpose, so that the failures uidgate exists for can be
// reproduced on demand: real Cyrus 3.x and Dovecot are correct servers.
//
// It is built on go-imap v2's imapserver (the wire protocol) with its own
// in-memory store. Every fault is a documented Cyrus 2.3 behaviour and is
// switched on separately in [Config]; with all of them off the simulator is a
// correct IMAP4rev1 server, which is what proves that the scenario counters
// (package e2e/scenarios) count only real faults.
//
//   - StaleMsgno: non-UID FETCH, STORE, COPY (and SEARCH's message numbers)
//     are resolved against the mailbox's current index, not against the
//     numbering the session was told. Cyrus 2.3 re-read cyrus.index at the
//     start of a command and indexed its fresh map with the client's numbers,
//     so after another session's EXPUNGE "STORE 7" hit the neighbour. The rule
//     broken: RFC 3501 §7.4.1 / RFC 9051 §7.5.1, message numbers change for a
//     session only when it is sent EXPUNGE.
//   - EarlyExpunge: EXPUNGE responses for other sessions' expunges are sent
//     at any time: while no command is in progress, and at the start of, in
//     the middle of and at the end of FETCH, STORE and SEARCH (Cyrus 2.3's
//     index_check ran inside those commands). The session's numbering shifts
//     at once, so the number the client sent before it could read the
//     EXPUNGE now names another message. The rule broken: RFC 3501 §7.4.1 /
//     RFC 9051 §7.5.1, no EXPUNGE when no command is in progress nor while
//     responding to FETCH, STORE or SEARCH. (It is legal during UID
//     commands, so those are left alone.)
//   - SessionSeen: \Seen is not an index flag but a per-user seen record
//     (Cyrus 2.3's user.seen database). A session loads it at SELECT, keeps
//     its own \Seen changes (STORE, or the implicit \Seen of a non-PEEK body
//     fetch) to itself, and writes them back at CLOSE, LOGOUT or the next
//     SELECT with an unlocked read-modify-write: concurrent write-backs lose
//     each other's updates, and other sessions do not see the changes until
//     then.
//   - DeliveryRace: a delivery (APPEND, [Server.Deliver] or the LMTP
//     listener) rewrites the index non-atomically: it reads every record,
//     waits, then writes them all back with the new message, so a flag change
//     made by another session in between is lost. And a session's seen state
//     written back after non-UID seen updates is run-length encoded over its
//     message numbers, with a trailing run that reaches its last message
//     written open-ended ("n:*") and resolved against the live index: mail
//     delivered since the session last looked becomes \Seen.
//
// Race windows are bounded sleeps inside the simulator (Config.RaceWindow,
// jittered by a generator seeded with Config.Seed); [Server.Watch] reports
// each window as it opens, so callers can aim at it without sleeping.
//
// The ground truth is exposed to Go code ([Server.Messages],
// [Server.SeenRecord], [Server.Writes]: every write with the message the
// client named and the one it hit) and, for scripts, to the admin user
// through the XGROUNDTRUTH command (see admin.go; cmd/legacysim runs the
// simulator stand-alone).
//
// The simulator listens where it is told; it is meant for loopback only.
package legacysim
