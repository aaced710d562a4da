package proxy

import (
	"github.com/emersion/go-imap/v2"

	"uidgate/proxy/imapwire"
)

// This file is the response scheduler: the one place that decides what a
// client may be told of its mailbox's changes, and when. The backend's
// news (EXPUNGE, EXISTS, flag reports, FETCH data of new messages) goes
// into the map and the selection's schedule as it comes; what reaches the
// client, and where in the response stream, is decided here:
//
//   - EXPUNGE never while the client may be reading message numbers of a
//     FETCH, STORE or SEARCH (UID forms included) that is being answered
//     (RFC 3501 §7.4.1, RFC 9051 §7.5.1); otherwise before the tagged
//     answer of the next command that allows it (mayRelease,
//     releaseLines), at once during IDLE (RFC 9051 §6.3.13).
//   - EXISTS announces arrivals with the client's new count, which never
//     goes down (RFC 9051 §7.3.1): at once, or before a FETCH naming the
//     new message (announce).
//   - A command's own expunges and news come before its tagged answer
//     (RFC 9051 §6.4.3, §7.5.1). A legacy backend's numbers are never
//     trusted: the answer is held while uidgate learns them by UID
//     (beforeTagged, heldTag), or, with commands pipelined behind, the
//     next command resyncs first (resyncIfDirty); behind EXPUNGE and
//     MOVE nothing is sent until their answer is in (ownExpunges).
//   - FETCH data only for a message the client has been told of (RFC
//     9051 §7.5.2): a legacy UID FETCH reaching past the view is held
//     until the resync announces the message (late, lateLines).
//   - A flag report by number alone from a legacy backend is asked again
//     by UID (flagCands, flagFetch) and given as an unsolicited FETCH
//     (RFC 9051 §7.5.2) in the client's numbering.
//   - SELECT's responses wait for the map: EXISTS in its terms, [UNSEEN
//     n] (RFC 3501 §7.1) renumbered, or dropped when a legacy number
//     cannot be trusted (finishSelect).
//   - During IDLE on a legacy backend, news that needs a resync makes
//     uidgate leave the backend's IDLE, resync and idle again
//     (leaveIdle, reenterIdle), so the client hears it at once.

// schedule is a selection's record of what the client has not been told
// yet, or what waits for a resync by UID (legacy backends).
type schedule struct {
	dirty   bool // legacy: resync by UID before the next command
	listBad bool // the resync's UID list was unreadable: stay dirty
	// full: legacy: news other than arrivals and expunges (a flag report
	// by number, data past the view, an unreadable list…) made the map
	// dirty, so the resync reads the whole UID list. Without it the
	// resync asks for what changed (resyncCommand, proxy/resync.go).
	full bool
	// expReports: legacy: the numbers of the EXPUNGEs the backend
	// reported since the last resync, in its order (at most
	// maxExpReports; beyond, full).
	expReports []uint32
	// existsAfter: legacy: an EXISTS count the backend reported after
	// those EXPUNGEs, applied with them.
	existsAfter uint32
	// cheap: the kind of the resync in flight, and what it asked about.
	cheap    resyncKind
	floor    uint32      // resyncArrivals: the last UID known before them
	expCands imap.UIDSet // resyncExpunges: the UIDs asked about
	expSent  int         // resyncExpunges: len(expReports) when sent
	// cheapFound: the UIDs the cheap resync's FETCH lines named so far;
	// cheapOver: more ranges than maxCheapRanges came.
	cheapFound imap.UIDSet
	cheapOver  bool
	// flagCands: legacy: UIDs the backend reported flag changes for by
	// number alone; refetched by UID before the resync (flagFetch).
	flagCands imap.UIDSet
	// late: legacy: FETCH data of messages not yet counted (a UID FETCH
	// reaching past the client's view); sent once the resync has
	// announced them (lateLines). lateBytes bounds it.
	late      []lateFetch
	lateBytes int
	// held, heldOK: a SELECT's responses and OK, until the map is built.
	held   [][]byte
	heldOK []byte
	// heldTag: a client command's tagged answer held until the resync
	// that learns, by UID, what the legacy backend expunged during it
	// (heldSeq is that command's place in the sending order).
	heldTag []byte
	heldSeq uint64
	// closing: a legacy CLOSE's EXPUNGE is on its way (injectClose):
	// nothing numbered reaches the client any more.
	closing bool
}

// idleCycle is where uidgate is in leaving and re-entering a legacy
// backend's IDLE while the client idles.
type idleCycle int

const (
	idleOn         idleCycle = iota // no cycle: the backend idles for the client
	idleLeaving                     // DONE sent, IDLE's tagged answer awaited
	idleReentering                  // resync and IDLE sent, "+" awaited
)

// lateFetch is one held FETCH response: the UID it is about and its item
// list as the client will get it, from after "(".
type lateFetch struct {
	uid  uint32
	body []byte
}

// maxLateBytes bounds the FETCH data a legacy session holds for messages
// not yet announced; beyond it (or with a literal) such data is dropped,
// and the client has the message's EXISTS but must fetch it again.
const maxLateBytes = 64 << 10

// maxFlagCands bounds the UIDs remembered for a flag refetch; beyond it
// the reports are dropped (and logged), not the session's memory.
const maxFlagCands = 1024

// resyncIfDirty re-reads a legacy backend's UID list when it reported
// EXPUNGE or EXISTS, and diffs it against the upstream view.
func (ss *session) resyncIfDirty(rs *relayState) error {
	dirty := func() bool {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		sel := rs.sel
		return sel != nil && sel.state == selReady && sel.dirty
	}
	if !dirty() {
		return nil
	}
	// A resync uidgate started itself before a tagged answer (onTagged)
	// may be in flight: once it is done the map may be clean.
	if err := ss.barrier(rs); err != nil || !dirty() {
		return err
	}
	rs.mu.Lock()
	cmd, ok := flagFetch(rs.sel)
	rs.mu.Unlock()
	if ok {
		if err := ss.inject(rs, injectFlags, cmd); err != nil {
			return err
		}
	}
	rs.mu.Lock()
	cmd = resyncCommand(rs, rs.sel)
	rs.mu.Unlock()
	return ss.inject(rs, injectResync, cmd)
}

// lateLines appends to b the FETCH data held for messages the resync has
// now announced, numbered in the client's view; data of a message that is
// gone again is dropped.
func (ss *session) lateLines(sel *selection, b []byte) []byte {
	for _, l := range sel.late {
		if n, ok := sel.m.ClientMsgno(l.uid); ok {
			b = append(b, "* "...)
			b = appendUint(b, n)
			b = append(b, " FETCH ("...)
			b = append(b, l.body...)
		}
	}
	sel.late, sel.lateBytes = nil, 0
	return b
}

// flagFetch takes the selection's flag candidates as a command that asks
// their flags by UID; the answers reach the client as unsolicited FETCH
// (RFC 9051 §7.5.2) in its own numbering.
func flagFetch(sel *selection) (string, bool) {
	if sel == nil || len(sel.flagCands) == 0 {
		return "", false
	}
	cmd := "UID FETCH " + sel.flagCands.String() + " (FLAGS)"
	sel.flagCands = nil
	return cmd, true
}

// leaveIdle ends a legacy backend's IDLE when it reported what only a
// resync by UID can place (an EXPUNGE, a flag change by number: its
// numbers are never trusted), so that the idling client hears it at once
// (RFC 9051 §6.3.13), as it would from the server: uidgate sends DONE,
// and at IDLE's tagged answer the resync and a new IDLE (onTagged). The
// client's own DONE, if it comes meanwhile, is not sent (clientToUpstream).
func (ss *session) leaveIdle(rs *relayState) {
	sel := rs.sel
	if !rs.idling || rs.idleCycle != idleOn || sel == nil || !sel.legacy || sel.state != selReady || !sel.dirty {
		return
	}
	rs.idling, rs.idleCycle = false, idleLeaving
	rs.toSend = append(rs.toSend, "DONE\r\n"...)
}

// reenterIdle handles the tagged answer of the IDLE uidgate left itself:
// the resync (with the flag refetch) and IDLE again go in one write; the
// record stays, for the answer that ends the client's IDLE.
func (ss *session) reenterIdle(rs *relayState, sel *selection, tag string, pc pendingCmd) {
	rs.tags[tag] = pc
	rs.idleCycle, rs.idleTag = idleReentering, tag
	ss.queueResync(rs, sel)
	rs.toSend = append(rs.toSend, tag+" IDLE\r\n"...)
}

// queueResync queues, for the upstream goroutine's next write, the flag
// refetch (if any report waits) and the resync: in one write, so that
// nothing the client pipelines behind can overtake them (a LOGOUT must
// not overtake a held answer).
func (ss *session) queueResync(rs *relayState, sel *selection) {
	if cmd, ok := flagFetch(sel); ok {
		t := ss.injectTagLocked(rs, injectFlags)
		rs.toSend = append(rs.toSend, t+" "+cmd+"\r\n"...)
	}
	t := ss.injectTagLocked(rs, injectResync)
	rs.toSend = append(rs.toSend, t+" "+resyncCommand(rs, sel)+"\r\n"...)
}

// announce tells the client of arrivals: "* n EXISTS" with its new count,
// appended to prefix (RFC 9051 §7.4.1: the count never goes down).
func (ss *session) announce(rs *relayState, sel *selection, out *[]byte, prefix []byte) []byte {
	if sel.m.PendingArrivals() == 0 {
		return prefix
	}
	sel.m.AnnounceArrivals()
	b := append(prefix, "* "...)
	b = appendUint(b, sel.m.ClientCount())
	b = append(b, " EXISTS\r\n"...)
	rs.exists = sel.m.ClientCount()
	*out = b
	return b
}

// mayRelease reports whether EXPUNGEs may go to the client now, before the
// tagged response of the command sent as number after (rs.seqN in IDLE,
// which nothing follows): no command is half sent, and none that forbids
// them is being responded to (RFC 3501 §7.4.1, RFC 9051 §7.5.1: not
// "while responding to" FETCH, STORE or SEARCH). One pipelined after that
// command which has not begun to answer is not being responded to yet: the
// server itself announces expunges before that command's OK and only then
// runs the next, and uidgate numbers its answers in the view that follows.
// The answered command itself is no longer in rs.tags.
func (ss *session) mayRelease(rs *relayState, after uint64) bool {
	if rs.midCommand || rs.litWait != "" {
		return false
	}
	for _, pc := range rs.tags {
		if !pc.forbidsExpunge {
			continue
		}
		if pc.seq > after && !pc.answering {
			continue
		}
		return false
	}
	return true
}

// releaseChunk bounds the "* n EXPUNGE" lines releaseLines builds at
// once: past it they go to the client in chunks.
const releaseChunk = 32 << 10

// releaseLines applies pending expunges to the client view and returns
// prefix followed by the "* n EXPUNGE" lines, highest number first so
// none shifts, in *out. However many are released, it builds at most
// releaseChunk bytes of lines: before that, prefix and the lines go to
// the client as they are built, so what it returns is the last chunk
// (issue 16: a backend claiming a million messages with one EXISTS and
// emptying the mailbox with one short resync list made uidgate build
// 22 MB of lines, 100 MB allocated). The caller must write what it
// returns before anything else: the lines already written came first.
// Must hold rs.mu; takes the client writer.
func (ss *session) releaseLines(rs *relayState, sel *selection, out *[]byte, prefix []byte) []byte {
	ranges := sel.m.ReleaseExpungeRanges(nil)
	rs.exists = sel.m.ClientCount()
	total := 0
	for _, r := range ranges {
		total += int(r.Hi-r.Lo) + 1
	}
	ss.srv.Metrics.released(total)
	b := append((*out)[:0], prefix...)
	for _, r := range ranges {
		for n := r.Hi; ; n-- {
			if len(b) >= releaseChunk {
				if err := ss.writeReleased(b); err != nil {
					// The client is gone; the session ends on the next write.
					*out = b[:0]
					return nil
				}
				b = b[:0]
			}
			b = append(b, "* "...)
			b = appendUint(b, n)
			b = append(b, " EXPUNGE\r\n"...)
			if n <= r.Lo {
				break
			}
		}
	}
	*out = b
	return b
}

// writeReleased writes a chunk of releaseLines to the client.
// releaseLines runs on the backend's reader, the only writer of relayed
// responses, at a response boundary: what may come between two chunks is
// only a whole response of uidgate's own (syncWriter.send), as between
// any two relayed responses. It runs under rs.mu: a client slow to read
// holds the session's state that long (writeTimeout at most), as it holds
// the backend's reader; only releases past releaseChunk (about 1,500
// EXPUNGEs) write here.
func (ss *session) writeReleased(b []byte) error {
	ss.cw.mu.Lock()
	defer ss.cw.mu.Unlock()
	ss.bytesOut.Add(int64(len(b)))
	return ss.cw.write(b, false)
}

// heldLines returns the responses held during a SELECT.
func (ss *session) heldLines(sel *selection, out *[]byte) []byte {
	var b []byte
	if sel == nil {
		return b
	}
	for _, l := range sel.held {
		b = append(b, l...)
	}
	sel.held = nil
	return b
}

// finishSelect releases the held SELECT responses once the map is built,
// with EXISTS (and [UNSEEN n]) in terms of the map, then the SELECT's OK.
func (ss *session) finishSelect(rs *relayState, sel *selection, out *[]byte) []byte {
	var b []byte
	if sel.m != nil {
		sel.m.AnnounceArrivals()
		rs.exists = sel.m.ClientCount()
	}
	// A legacy backend's [UNSEEN n] is its own number: it is trusted only
	// where the UID list read right after agrees with the SELECT's EXISTS
	// (nothing came or went in between), so that n names the same message.
	unseenOK := !sel.legacy
	for _, l := range sel.held {
		if r, ok := imapwire.ParseResponse(l); ok && r.HasNum && imapwire.EqualFold(r.Name, "EXISTS") && sel.m != nil {
			unseenOK = !sel.legacy || r.Num == sel.m.UpstreamCount() && !sel.dirty
		}
	}
	for _, l := range sel.held {
		r, ok := imapwire.ParseResponse(l)
		switch {
		case ok && r.HasNum && imapwire.EqualFold(r.Name, "EXISTS") && sel.m != nil:
			b = append(b, "* "...)
			b = appendUint(b, sel.m.ClientCount())
			b = append(b, " EXISTS\r\n"...)
		case ok && r.HasNum && imapwire.EqualFold(r.Name, "FETCH") && sel.m != nil:
			// Numbered before the UID list: an EXPUNGE absorbed by the list
			// may have shifted it. Dropped rather than risk a wrong number;
			// the client fetches flags after SELECT anyway.
		case ok && imapwire.EqualFold(r.Code, "UNSEEN") && sel.m != nil:
			n, _ := parseNumber(r.CodeArgs)
			// RFC 3501 §7.1: [UNSEEN n] is the first unseen message's number.
			if m, ok := sel.m.UpstreamToClient(n); ok && unseenOK {
				b = append(b, l[:r.CodeStart]...)
				b = append(b, "[UNSEEN "...)
				b = appendUint(b, m)
				b = append(b, l[r.CodeEnd-1:]...)
			}
		default:
			b = append(b, l...)
		}
	}
	b = append(b, sel.heldOK...)
	sel.held, sel.heldOK = nil, nil
	if sel.m == nil {
		if sel.legacy {
			// A legacy backend's numbers must never reach a client
			// untranslated; without a UID list there is no translation.
			why := "[UNAVAILABLE] uidgate could not read the mailbox's UIDs"
			rs.fatal.Store(&why)
		}
		rs.sel = nil // compliant backend, no map: numbers pass as they are
	} else {
		sel.state = selReady
	}
	*out = b
	return b
}

// injectedDone handles the end of uidgate's flag refetch or resync: what
// it learned goes to the client, before the tagged answer it held if any.
func (ss *session) injectedDone(rs *relayState, sel *selection, pc pendingCmd, out *[]byte) []byte {
	switch pc.inject {
	case injectFlags:
		if sel.heldTag != nil {
			// Sent with the resync before a held tagged answer: its end
			// releases it.
			return nil
		}
	case injectResync:
		// The list, when it came and could be read, cleaned the map
		// (endResyncList). Still dirty: a list unreadable or missing, or
		// EXPUNGE/EXISTS reported after the list (a backend that runs a
		// command pipelined behind the resync at once, as Dovecot does):
		// the next command resyncs again.
		if sel.listBad {
			sel.markDirty()
		}
		sel.listBad = false
		if held := sel.heldTag; held != nil {
			sel.heldTag = nil
			var pre []byte
			if sel.m.PendingExpunges() > 0 && ss.mayRelease(rs, sel.heldSeq) {
				pre = ss.releaseLines(rs, sel, new([]byte), nil)
			}
			pre = ss.announce(rs, sel, new([]byte), pre)
			pre = ss.lateLines(sel, pre)
			return append(pre, held...)
		}
	}
	var pre []byte
	if pc.inject == injectResync && rs.idleCycle == idleReentering && sel.m.PendingExpunges() > 0 && ss.mayRelease(rs, rs.seqN) {
		// The client idles: what the resync learned goes out now (RFC
		// 9051 §6.3.13, §7.5.1).
		pre = ss.releaseLines(rs, sel, new([]byte), nil)
	}
	b := ss.announce(rs, sel, out, pre)
	if pc.inject == injectResync {
		b = ss.lateLines(sel, b)
	}
	return b
}

// beforeTagged returns what goes to the client with a client command's
// tagged answer fwd: pending expunges and arrivals first where allowed,
// or nothing yet (skip) while a legacy resync runs that the answer waits
// for.
func (ss *session) beforeTagged(rs *relayState, sel *selection, pc pendingCmd, fwd []byte) ([]byte, bool) {
	if sel.legacy && sel.dirty && rs.sel == sel && !pc.forbidsExpunge && pc.kind != cmdLogout && len(rs.tags) == 0 && rs.injected == "" {
		// RFC 9051 §6.4.3, §7.5.1: the expunges a command causes or
		// learns (its own EXPUNGE's, news at NOOP or a UID command) come
		// before its OK. A legacy backend's numbers are never trusted, so
		// the OK waits while uidgate learns them by UID, now that nothing
		// else is in flight; the client's next command waits for that
		// resync (resyncIfDirty). Pipelined commands behind it make the
		// expunges wait for the next command instead; after UNSELECT
		// (rs.sel gone) there is nothing left to learn.
		sel.heldTag, sel.heldSeq = append(sel.heldTag[:0], fwd...), pc.seq
		rs.toSend = rs.toSend[:0]
		ss.queueResync(rs, sel)
		return nil, true
	}
	var pre []byte
	if !pc.forbidsExpunge && sel.m.PendingExpunges() > 0 && ss.mayRelease(rs, pc.seq) {
		pre = append(pre, ss.releaseLines(rs, sel, new([]byte), nil)...)
	}
	pre = ss.announce(rs, sel, new([]byte), pre)
	if len(pre) == 0 {
		return fwd, false
	}
	return append(pre, fwd...), false
}
