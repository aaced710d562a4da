package proxy

import (
	"bytes"
	"errors"
	"math"
	"net"
	"slices"
	"strings"

	"github.com/emersion/go-imap/v2"

	"uidgate/proxy/imapwire"
	"uidgate/rules"
	"uidgate/sessionmap"
)

// This file is the normalizer: it rewrites message-number commands into
// their UID forms with the client's own view, maps numbers in responses
// back into that view, and holds EXPUNGEs until the client may be told
// (RFC 3501 §5.5, §7.4.1; RFC 9051 §5.5, §7.5.1).

// needsRewrite reports whether cmd uses message numbers that must be
// translated: non-UID FETCH, STORE, COPY, MOVE, and SEARCH, SORT, THREAD
// in either form (their criteria may hold sequence sets).
func (ss *session) needsRewrite(rs *relayState, cmd imapwire.Command, kind cmdKind) bool {
	switch kind {
	case cmdFetch, cmdStore, cmdCopy, cmdMove:
		// UID forms too: their locks and explicit \Seen need them parsed.
	case cmdSearch, cmdSort, cmdThread:
	default:
		return false
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.sel != nil && rs.sel.state == selReady
}

// collect reads the rest of a command whose first line is line, literals
// inline, answering "+" to synchronizing ones. The size is bounded.
func (ss *session) collect(line []byte, c *wireCmd) error {
	c.buf = append(c.buf[:0], line...)
	c.lits = c.lits[:0]
	for {
		lit, has := imapwire.TrailingLiteral(line)
		if !has {
			return nil
		}
		if int64(len(c.buf))+lit.Size > maxRewriteCommand {
			if lit.Sync {
				return errCommandTooLong
			}
			return errLiteralTooBig
		}
		if lit.Sync {
			ss.sendf("+ Ready for literal")
		}
		hdr := len(c.buf) - len(line) + lit.Start
		data := len(c.buf)
		ss.cr.Expect(lit.Size)
		var err error
		if c.buf, err = ss.cr.ReadLiteral(c.buf); err != nil {
			return err
		}
		ss.bytesIn.Add(lit.Size)
		c.lits = append(c.lits, litSpan{hdr: hdr, data: data, end: len(c.buf), lit: lit})
		if line, err = ss.cr.ReadLine(); err != nil {
			return err
		}
		ss.bytesIn.Add(int64(len(line)))
		c.buf = append(c.buf, line...)
	}
}

// rewriteAndSend collects, translates and sends one message-number
// command, or answers it without the backend.
func (ss *session) rewriteAndSend(rs *relayState, cmd imapwire.Command, kind cmdKind, line []byte, literalPlus bool) error {
	tag := string(cmd.Tag)
	var c wireCmd
	if err := ss.collect(line, &c); err != nil {
		switch {
		case errors.Is(err, errCommandTooLong):
			ss.sendf("%s NO [TOOBIG] Command too long to translate", tag)
			return nil
		case errors.Is(err, errLiteralTooBig):
			ss.endOnReadError(err, line)
			return net.ErrClosed
		}
		ss.endOnReadError(err, nil)
		return err
	}
	// Parse again over the whole command (cmd pointed into line).
	cmd, _ = imapwire.ParseCommand(c.buf)
	for attempt := 0; ; attempt++ {
		var b builder
		rs.mu.Lock()
		sel := rs.sel
		if sel == nil || sel.state != selReady {
			rs.mu.Unlock()
			// The selection ended meanwhile (e.g. a failed SELECT
			// pipelined before): the backend answers as it would.
			return ss.writeUp(c.buf, true)
		}
		if sel.m.Unknown() > 0 && attempt < 3 {
			// New messages' UIDs are learned before any translation:
			// results of SEARCH ALL must name them too.
			rs.mu.Unlock()
			if err := ss.resolve(rs); err != nil {
				return err
			}
			continue
		}
		rw := !sel.readOnly
		// One buffer for every set of the command: rewriteCommand formats
		// each before it asks for the next (issue 16: a SEARCH of
		// thousands of sets left a UID set behind for each).
		var scratch imap.UIDSet
		res, err := rewriteCommand(&c, cmd, kind, func(set imap.SeqSet) (imap.UIDSet, error) {
			uids, err := sel.m.AppendClientUIDs(scratch[:0], set)
			if ss.ignoreOutOfRange && kind != cmdSearch && kind != cmdSort && kind != cmdThread && errors.As(err, new(*sessionmap.SeqError)) {
				// Cyrus answers numbers beyond the mailbox as if they
				// were not named (see outOfRange).
				if set = clipSeqSet(set, sel.m.ClientCount()); len(set) == 0 {
					return nil, errNoMatching
				}
				uids, err = sel.m.AppendClientUIDs(scratch[:0], set)
			}
			scratch = uids
			return uids, err
		}, rw && ss.explicitSeen, ss.srv.expansionCap(len(c.buf)), &b)
		if err != nil {
			rs.mu.Unlock()
			if errors.Is(err, sessionmap.ErrUnresolved) && attempt < 3 {
				if err := ss.resolve(rs); err != nil {
					return err
				}
				continue
			}
			if errors.Is(err, errNoMatching) {
				ss.sendf("%s %s", tag, outOfRange(kind))
				return nil
			}
			if answer, ok := seqErrAnswer(err); ok {
				ss.sendf("%s %s", tag, answer)
				return nil
			}
			if errors.Is(err, errCommandTooLong) {
				ss.sendf("%s NO [TOOBIG] Command too long to translate", tag)
				return nil
			}
			ss.log.Warn().Err(err).Msg("cannot rewrite command")
			ss.sendf("%s NO [SERVERBUG] uidgate could not translate the command", tag)
			return nil
		}
		if res.answer != "" {
			rs.mu.Unlock()
			ss.sendf("%s %s", tag, res.answer)
			return nil
		}
		// Registered before any wait for locks: from now on the command is
		// in progress, and EXPUNGEs that it forbids are held.
		up := rs.registerLocked(tag, res.pc)
		if up != tag {
			b.out = retag(b.out, tag, up)
			for i := range b.lits {
				b.lits[i].hdr += len(up) - len(tag)
				b.lits[i].data += len(up) - len(tag)
				b.lits[i].end += len(up) - len(tag)
			}
		}
		if k := res.pc.kind; (k == cmdSearch || k == cmdSort || k == cmdThread) && !res.pc.esearch {
			// RFC 9051 §7.3.4: "* SEARCH" carries no tag; answers are matched
			// to search commands in the order sent, UID forms included, so
			// that a UID SEARCH's UIDs are never read as another's numbers.
			rs.searchQ = append(rs.searchQ, up)
		}
		if k := res.pc.kind; k == cmdFetch || k == cmdStore {
			rs.fetchQ = append(rs.fetchQ, up)
			pc := rs.tags[up]
			var err error
			if pc.answers, err = parseUIDSet([]byte(res.uidSet)); err != nil {
				pc.answersAll = true // "$"
			}
			rs.tags[up] = pc
		}
		req := rules.LockRequest{
			Command:     strings.ToUpper(string(cmd.Name)),
			UID:         cmd.UID,
			Selected:    ss.canonical(rs.selected),
			ReadWrite:   rw,
			TouchesSeen: res.storeSeen || res.bodyFetch,
		}
		if res.target != "" {
			req.Target = ss.canonical(res.target)
		}
		explicitSeen := res.bodyFetch && rw && ss.explicitSeen
		rs.mu.Unlock()
		release, err := ss.lock(req)
		if err != nil {
			rs.complete(up)
			return ss.lockFailed(tag, err)
		}
		rs.mu.Lock()
		pc := rs.tags[up]
		if !explicitSeen {
			pc.release = release
		}
		if explicitSeen {
			if set, err := parseUIDSet([]byte(res.uidSet)); err == nil {
				pc.seenUIDs = set
			} else {
				pc.seenAll = true
			}
		}
		rs.tags[up] = pc
		var seenCmd []byte
		if explicitSeen {
			// The backend's own \Seen update is an unlocked read-modify-write;
			// uidgate sets it with a silent STORE, under the seen lock, before
			// the PEEK fetch, whose FLAGS then report it as a compliant
			// server's implicit \Seen would be (RFC 9051 §6.4.5).
			rs.injectN++
			st := injectTagPrefix + itoa(rs.injectN)
			// The locks cover the write, and go back with its answer:
			// the .PEEK fetch that follows changes nothing, and a client
			// slow to read a large body must not hold the mailbox.
			rs.tags[st] = pendingCmd{inject: injectSeen, seenFor: up, release: release, seenUIDs: pc.seenUIDs, seenAll: pc.seenAll, answers: pc.seenUIDs, answersAll: pc.seenAll}
			// Sent just before the FETCH: its answers come first.
			if i := slices.Index(rs.fetchQ, up); i >= 0 {
				rs.fetchQ = slices.Insert(rs.fetchQ, i, st)
			}
			seenCmd = []byte(st + " UID STORE " + res.uidSet + " +FLAGS.SILENT (\\Seen)\r\n")
		}
		rs.mu.Unlock()
		if seenCmd != nil {
			if err := ss.writeUp(seenCmd, false); err != nil {
				return err
			}
		}
		if e := ss.log.Trace(); e.Enabled() {
			e.Bytes("U", imapwire.TrimEOL(b.out[:min(len(b.out), traceMax)])).Send()
		}
		return ss.sendBuilt(rs, up, &b, literalPlus)
	}
}

// sendBuilt sends a rewritten command. Its literals go non-synchronizing
// with LITERAL+; otherwise each waits for the backend's "+".
func (ss *session) sendBuilt(rs *relayState, tag string, b *builder, literalPlus bool) error {
	from := 0
	for _, l := range b.lits {
		hdr := l.lit
		hdr.Sync = !literalPlus
		if err := ss.writeUp(b.out[from:l.hdr], false); err != nil {
			return err
		}
		if hdr.Sync {
			// Set before the header leaves: the "+" may come back at once.
			rs.mu.Lock()
			rs.litWait, rs.litPass = tag, false
			rs.mu.Unlock()
		}
		if err := ss.writeUp(imapwire.AppendLiteralHeader(nil, hdr), hdr.Sync); err != nil {
			return err
		}
		if hdr.Sync {
			ok, err := ss.awaitContinuation(rs)
			if err != nil {
				return err
			}
			if !ok {
				return nil // refused; the answer went to the client
			}
		}
		from = l.data
		if l.spool != nil {
			if err := ss.writeSpool(l.spool); err != nil {
				return err
			}
		}
	}
	return ss.writeUp(b.out[from:], true)
}

// barrier waits until no command is in flight, client's or uidgate's.
// Only commands that were sent are in flight (every path that answers a
// command without sending it completes its record), and what was sent
// is flushed first, so the wait ends with the backend's answers.
func (ss *session) barrier(rs *relayState) error {
	if err := ss.flushUp(); err != nil {
		return err
	}
	return ss.waitState(rs, func() bool { return len(rs.tags) == 0 })
}

// roomInFlight waits until fewer than the session's bound of commands are
// in flight, so that a client pipelining without reading holds bounded
// memory: it is not read meanwhile (TCP pushes back).
func (ss *session) roomInFlight(rs *relayState) error {
	max := ss.srv.maxInFlight()
	rs.mu.Lock()
	full := len(rs.tags) >= max
	rs.mu.Unlock()
	if !full {
		return nil
	}
	if err := ss.flushUp(); err != nil {
		return err
	}
	return ss.waitState(rs, func() bool { return len(rs.tags) < max })
}

// waitState waits until ready (called under rs.mu) holds or the session
// ends. Nobody reads the client meanwhile, so its socket is watched: a
// client that goes away ends the session (watchClient).
func (ss *session) waitState(rs *relayState, ready func() bool) error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if !ready() && !rs.ended {
		rs.mu.Unlock()
		stop := ss.watchClient(ss.cr.Buffered())
		rs.mu.Lock()
		for !ready() && !rs.ended {
			rs.cond.Wait()
		}
		rs.mu.Unlock()
		stop()
		rs.mu.Lock()
	}
	if rs.ended {
		return net.ErrClosed
	}
	return nil
}

// flushUp sends what is buffered for the backend. Every wait starts with
// it: a command written without a flush (more client input was waiting)
// would otherwise never be answered, and the wait never end.
func (ss *session) flushUp() error {
	ss.upMu.Lock()
	defer ss.upMu.Unlock()
	return ss.uw.Flush()
}

// inject sends one of uidgate's own commands once nothing else is in
// flight, and waits for it: its responses are then unambiguous, and never
// reach the client.
func (ss *session) inject(rs *relayState, kind injectKind, text string) error {
	if err := ss.barrier(rs); err != nil {
		return err
	}
	rs.mu.Lock()
	tag := ss.injectTagLocked(rs, kind)
	rs.mu.Unlock()
	if err := ss.writeUp([]byte(tag+" "+text+"\r\n"), true); err != nil {
		return err
	}
	return ss.barrier(rs)
}

// injectTagLocked registers an injected command and returns its tag.
func (ss *session) injectTagLocked(rs *relayState, kind injectKind) string {
	rs.injectN++
	tag := injectTagPrefix + itoa(rs.injectN)
	rs.seqN++
	rs.tags[tag] = pendingCmd{inject: kind, seq: rs.seqN}
	rs.injected = tag
	return tag
}

func itoa(n int) string { return string(appendUint(nil, uint32(n))) }

// searchAllCommand lists every UID: ESEARCH ranges when the backend has
// them (RFC 4731), compact even for a million messages.
func searchAllCommand(rs *relayState) string {
	if rs.esearch {
		return "UID SEARCH RETURN (ALL) ALL"
	}
	return "UID SEARCH ALL"
}

// resolve learns the UIDs of messages counted by EXISTS.
func (ss *session) resolve(rs *relayState) error {
	rs.mu.Lock()
	sel := rs.sel
	if sel == nil || sel.state != selReady {
		rs.mu.Unlock()
		return nil
	}
	if sel.legacy {
		// A legacy backend's numbers cannot place UIDs: diff by UID.
		sel.dirty = true
		rs.mu.Unlock()
		return ss.resyncIfDirty(rs)
	}
	_, _, floor, ok := sel.m.Unresolved()
	rs.mu.Unlock()
	if !ok {
		return nil
	}
	return ss.inject(rs, injectResolve, "UID FETCH "+itoa(int(floor)+1)+":* (UID)")
}

// onResponse handles the first line of a backend response: it updates the
// session state and returns the bytes to forward; skip drops the whole
// response (literals included).
func (ss *session) onResponse(rs *relayState, r *imapwire.Response, line []byte, out *[]byte) (fwd []byte, skip bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	defer ss.leaveIdle(rs)
	switch r.Kind {
	case imapwire.RespContinuation:
		if rs.litWait != "" {
			pass := rs.litPass
			rs.litWait = ""
			rs.litCh <- true
			return line, !pass
		}
		if rs.idleTag != "" && rs.idleCycle == idleReentering {
			// The backend idles again; the client had its "+" long ago.
			// If the client's DONE came meanwhile, its goroutine, waiting
			// for this, sends it now.
			rs.idleTag, rs.idleCycle, rs.idling = "", idleOn, true
			rs.cond.Broadcast()
			return nil, true
		}
		if rs.idleTag != "" {
			rs.idleTag = ""
			rs.idling = true
			// IDLE is in progress: what was held may go now (RFC 9051 §6.3.13).
			if sel := rs.sel; sel != nil && sel.state == selReady && sel.m.PendingExpunges() > 0 && ss.mayRelease(rs, rs.seqN) {
				return ss.releaseLines(rs, sel, out, line), false
			}
		}
		return line, false
	case imapwire.RespTagged:
		return ss.onTagged(rs, r, line, out)
	}
	// Untagged.
	if !r.HasNum && len(r.Name) > 0 && (r.Name[0] >= '0' && r.Name[0] <= '9' || r.Name[0] == '-') {
		// RFC 9051 §9: a message number is 1..2^32-1. A backend sending
		// anything else ("* 4294967296 FETCH", "* -1 FETCH") has lost the
		// protocol; relaying it would hand the client a number uidgate
		// never translated (issue 16).
		ss.backendProtocolError(rs, line)
		return nil, true
	}
	sel := rs.sel
	switch {
	case imapwire.EqualFold(r.Name, "CAPABILITY"):
		return capLine(out, line[:r.After], imapwire.TrimEOL(line[r.After:]), line[len(imapwire.TrimEOL(line)):]), false
	case imapwire.EqualFold(r.Name, "BYE"):
		rs.byeSeen = true
	}
	if imapwire.EqualFold(r.Code, "CLOSED") {
		// RFC 7162 §3.2.11: the previously selected mailbox is closed.
		rs.selected, rs.readOnly = "", false
		return line, false
	}
	if imapwire.EqualFold(r.Code, "CAPABILITY") && len(r.CodeArgs) > 0 {
		return capLine(out, line[:r.CodeStart+1+len("CAPABILITY ")], r.CodeArgs, line[r.CodeEnd-1:]), false
	}
	if sel == nil {
		ss.trackCounts(rs, r)
		return line, false
	}
	if imapwire.EqualFold(r.Code, "UIDVALIDITY") {
		v, _ := parseNumber(r.CodeArgs)
		if sel.state == selReady && v != sel.validity {
			// RFC 9051 §2.3.1.1: every UID the client holds is void; it
			// must start over, and uidgate's map with it.
			why := "[UNAVAILABLE] Mailbox UIDVALIDITY changed; please reconnect"
			rs.fatal.Store(&why)
			return nil, true
		}
		sel.validity = v
	}
	if sel.state != selReady {
		return ss.onSelecting(rs, sel, r, line)
	}
	return ss.onSelected(rs, sel, r, line, out)
}

// backendProtocolError ends the session: the backend sent what no IMAP
// server may send, and uidgate cannot tell what it meant.
func (ss *session) backendProtocolError(rs *relayState, line []byte) {
	ss.log.Warn().Bytes("response", imapwire.TrimEOL(line[:min(len(line), traceMax)])).Msg("backend protocol error")
	why := "[UNAVAILABLE] Backend protocol error"
	rs.fatal.Store(&why)
}

// pastCap reports whether a response translated from in bytes (the
// backend's line, and the client's tag where it is given back) into out
// bytes is past the expansion cap. Then the session ends: the backend is
// trusted for data, not for unbounded work (issue 16), and a response
// cannot be answered NO.
func (ss *session) pastCap(rs *relayState, in, out int, line []byte) bool {
	if out <= ss.srv.expansionCap(in) {
		return false
	}
	ss.log.Warn().Int("in", in).Int("out", out).Bytes("response", imapwire.TrimEOL(line[:min(len(line), traceMax)])).
		Msg("backend response expands past the cap")
	why := "[UNAVAILABLE] Backend response too large to translate"
	rs.fatal.Store(&why)
	return true
}

// capped returns a translated response b, or drops it (the session then
// ends) if it is past the cap for line.
func (ss *session) capped(rs *relayState, line, b []byte) ([]byte, bool) {
	if ss.pastCap(rs, len(line), len(b), line) {
		return nil, true
	}
	return b, false
}

// trackCounts keeps the EXISTS count for a session without a map.
func (ss *session) trackCounts(rs *relayState, r *imapwire.Response) {
	switch {
	case r.HasNum && imapwire.EqualFold(r.Name, "EXISTS"):
		rs.exists = r.Num
	case r.HasNum && imapwire.EqualFold(r.Name, "EXPUNGE"):
		if rs.exists > 0 {
			rs.exists--
		}
	}
}

// onSelecting holds a SELECT's untagged responses until the map is built,
// so that the EXISTS the client hears agrees with the map.
func (ss *session) onSelecting(rs *relayState, sel *selection, r *imapwire.Response, line []byte) ([]byte, bool) {
	if p := ss.buildList(rs, r, line); p != nil {
		// A list too long for the read buffer never gets here: readUpLine
		// diverts it into the same parser as it arrives.
		p.feed(line[r.After:])
		ss.finishBuildList(sel, p)
		return nil, true
	}
	switch {
	case r.HasNum && imapwire.EqualFold(r.Name, "EXPUNGE"):
		if sel.loaded {
			sel.m.ExpungeUpstream(r.Num)
		}
		// Before the UID list, the list already reflects it.
		return nil, true
	case r.HasNum && imapwire.EqualFold(r.Name, "EXISTS"):
		if sel.loaded {
			sel.m.Exists(r.Num)
			return nil, true
		}
		rs.exists = r.Num
	}
	if _, has := imapwire.TrailingLiteral(line); has && r.MayAnnounceLiteral() {
		return line, false // never held: literals are streamed
	}
	if len(sel.held) == 0 {
		ss.heldBytes = 0
	}
	if ss.heldBytes += len(line); ss.heldBytes > maxHeldSelect {
		// A SELECT answers with a few lines: a backend that goes on
		// and on before its OK is not holding uidgate's memory hostage.
		ss.backendProtocolError(rs, line)
		return nil, true
	}
	sel.held = append(sel.held, append([]byte(nil), line...))
	return nil, true
}

// maxHeldSelect bounds a SELECT's responses held until the map is built:
// FLAGS, PERMANENTFLAGS and a few OK codes, even with thousands of
// keywords, are far below it.
const maxHeldSelect = 4 << 20

// onSelected translates an untagged response while a map is in use.
func (ss *session) onSelected(rs *relayState, sel *selection, r *imapwire.Response, line []byte, out *[]byte) ([]byte, bool) {
	if sel.closing && r.HasNum {
		// A legacy CLOSE's EXPUNGE (injectClose): CLOSE tells the client
		// nothing of the mailbox it leaves, its EXPUNGEs least of all
		// (RFC 9051 §6.4.1), so no EXISTS, RECENT or FETCH either.
		return nil, true
	}
	injected := rs.tags[rs.injected].inject
	if p := ss.resyncList(rs, r, line); p != nil {
		// A short resync list; a long one never gets here (readUpLine).
		p.feed(line[r.After:])
		if b := ss.endResyncList(rs, sel, p); b != nil {
			return b, false
		}
		return nil, true
	}
	switch {
	case r.HasNum && imapwire.EqualFold(r.Name, "EXISTS"):
		if sel.legacy {
			// Arrivals alone: the resync may ask for UIDs above the
			// last known only (resyncCommand).
			sel.dirty = true
			if len(sel.expReports) > 0 && !sel.full {
				// A count after EXPUNGEs not applied yet: it is applied
				// with them (endExpunges); below what they leave, the
				// numbers do not add up.
				if int64(r.Num) < int64(sel.m.UpstreamCount())-int64(len(sel.expReports)) {
					sel.markDirty()
				} else {
					sel.existsAfter = r.Num
				}
				return nil, true
			}
		}
		if _, err := sel.m.Exists(r.Num); err != nil {
			if sel.legacy {
				sel.markDirty()
			}
			return nil, true
		}
		if b := ss.announce(rs, sel, out, nil); b != nil {
			return b, false
		}
		return nil, true
	case r.HasNum && imapwire.EqualFold(r.Name, "EXPUNGE"):
		if sel.legacy {
			// Never trust a legacy backend's number: find out by UID.
			// The number says where to look first (resyncCommand).
			sel.dirty = true
			if len(sel.expReports) < maxExpReports {
				sel.expReports = append(sel.expReports, r.Num)
			} else {
				sel.full = true
			}
			return nil, true
		}
		if _, err := sel.m.ExpungeUpstream(r.Num); err != nil {
			ss.log.Warn().Err(err).Uint32("msgno", r.Num).Msg("EXPUNGE out of range")
		} else {
			ss.srv.Metrics.held(1)
		}
		if rs.idling && ss.mayRelease(rs, rs.seqN) {
			// RFC 9051 §6.3.13: during IDLE, updates go out at once.
			return ss.releaseLines(rs, sel, out, nil), false
		}
		return nil, true
	case r.HasNum && imapwire.EqualFold(r.Name, "RECENT"):
		return line, false
	case r.HasNum && imapwire.EqualFold(r.Name, "FETCH"):
		if ss.cheapFetch(rs, sel, r, line) {
			return nil, true
		}
		return ss.translateFetch(rs, sel, r, line, out)
	case imapwire.EqualFold(r.Name, "VANISHED"):
		// RFC 7162 §3.2.10; QRESYNC is withheld, so only if ENABLEd anyway.
		rest := imapwire.TrimEOL(line[r.After:])
		if d := imapwire.NewDecoder(rest); d.Special('(') {
			d.SkipList()
			d.SP()
			rest = d.Rest()
		}
		if set, err := parseUIDSet(rest); err == nil && !sel.legacy {
			sel.m.Vanish(set)
		} else {
			sel.markDirty()
		}
		return nil, true
	case imapwire.EqualFold(r.Name, "SEARCH") || imapwire.EqualFold(r.Name, "SORT"):
		if injected == injectResolve || injected == injectBuild {
			return nil, true
		}
		rs.answeringLocked(rs.searchQ)
		if len(rs.searchQ) > 0 && rs.tags[rs.searchQ[0]].resultsAreUIDs {
			return ss.capped(rs, line, ss.translateNumberList(sel, r, line, out))
		}
	case imapwire.EqualFold(r.Name, "THREAD"):
		rs.answeringLocked(rs.searchQ)
		if len(rs.searchQ) > 0 && rs.tags[rs.searchQ[0]].resultsAreUIDs {
			return ss.capped(rs, line, ss.translateThread(sel, r, line, out))
		}
	case imapwire.EqualFold(r.Name, "ESEARCH"):
		es := parseESearch(imapwire.TrimEOL(line[r.After:]))
		rs.answeringLocked([]string{es.tag})
		if pc, ok := rs.tags[es.tag]; ok && pc.resultsAreUIDs {
			b := ss.translateESearch(sel, pc, es, line[:r.After], out)
			// The client's tag, given back in place of the upstream one,
			// is the client's input, not an expansion.
			if ss.pastCap(rs, len(line)+len(pc.clientTag), len(b), line) {
				return nil, true
			}
			return b, false
		}
	}
	if imapwire.EqualFold(r.Code, "UNSEEN") && !sel.legacy {
		// RFC 3501 §7.1: [UNSEEN n] is a message number.
		if n, ok := parseNumber(r.CodeArgs); ok {
			if m, ok := sel.m.UpstreamToClient(n); ok {
				b := append((*out)[:0], line[:r.CodeStart]...)
				b = append(b, "[UNSEEN "...)
				b = appendUint(b, m)
				b = append(b, line[r.CodeEnd-1:]...)
				*out = b
				return ss.capped(rs, line, b)
			}
		}
	}
	return line, false
}

// onTagged handles a tagged response: uidgate's own commands end here;
// SELECT completes its map; EXPUNGEs are released where allowed.
func (ss *session) onTagged(rs *relayState, r *imapwire.Response, line []byte, out *[]byte) ([]byte, bool) {
	tag := string(r.Tag)
	pc, known := rs.tags[tag]
	delete(rs.tags, tag)
	defer rs.cond.Broadcast()
	if rs.litWait == tag {
		rs.litWait = ""
		rs.litCh <- false
	}
	rs.unqueueLocked(tag)
	if !known {
		return line, false
	}
	sel := rs.sel
	ok := imapwire.EqualFold(r.Name, "OK")
	if pc.kind == cmdIdle && rs.idleCycle != idleOn {
		if rs.idleCycle == idleLeaving && ok && !rs.idleDone && sel != nil {
			ss.reenterIdle(rs, sel, tag, pc)
			return nil, true
		}
		// The client's DONE came, or the backend ended IDLE: the answer
		// goes to the client, after the resync if one is due (below).
		rs.idleCycle = idleOn
	}
	if pc.release != nil {
		pc.release()
	}
	if pc.inject == injectSeen {
		if !ok {
			ss.log.Warn().Bytes("response", imapwire.TrimEOL(line)).Msg("explicit \\Seen failed")
		}
		return nil, true
	}
	if pc.inject == injectClose || pc.inject == injectUnselect {
		// Its expunges are CLOSE's, which tells the client none (RFC 9051
		// §6.4.1): a NO (nothing to expunge, no right) changes nothing.
		// UNSELECT before LOGOUT: the client asked for LOGOUT's answer
		// only.
		return nil, true
	}
	if pc.inject != injectNone {
		if rs.injected == tag {
			rs.injected = ""
		}
		if !ok {
			ss.log.Warn().Bytes("response", imapwire.TrimEOL(line)).Msg("uidgate's own command failed")
		}
		if sel == nil {
			return nil, true
		}
		if pc.inject == injectBuild {
			if !sel.loaded {
				ss.log.Warn().Msg("no UID list after SELECT; message numbers pass untranslated")
				sel.m = nil
			}
			return ss.finishSelect(rs, sel, out), false
		}
		var news []byte
		if pc.inject == injectResync && sel.cheap != resyncFull {
			news = ss.endCheapResync(rs, sel, ok)
		}
		b := ss.injectedDone(rs, sel, pc, out)
		if len(news) > 0 {
			b = append(news, b...)
		}
		if len(b) > 0 {
			return b, false
		}
		return nil, true
	}
	fwd := line
	if imapwire.EqualFold(r.Code, "CAPABILITY") && len(r.CodeArgs) > 0 {
		fwd = capLine(new([]byte), line[:r.CodeStart+1+len("CAPABILITY ")], r.CodeArgs, line[r.CodeEnd-1:])
	}
	if pc.clientTag != "" {
		b := append((*out)[:0], pc.clientTag...)
		b = append(b, fwd[len(tag):]...)
		*out = b
		fwd = b
	}
	switch pc.kind {
	case cmdSelect, cmdExamine:
		if sel != nil && sel.tag == tag && ok {
			rs.selected = pc.mailbox
			rs.readOnly = pc.kind == cmdExamine || imapwire.EqualFold(r.Code, "READ-ONLY")
			sel.readOnly = rs.readOnly
			sel.heldOK = append([]byte(nil), fwd...)
			sel.state = selBuilding
			// Build the map now, before anything else goes upstream: the
			// client goroutine waits for this SELECT (see barrier).
			t := ss.injectTagLocked(rs, injectBuild)
			rs.toSend = append(rs.toSend[:0], t+" "+searchAllCommand(rs)+"\r\n"...)
			return nil, true
		}
		held := ss.heldLines(sel, out)
		if imapwire.EqualFold(r.Name, "NO") {
			// RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected.
			rs.selected, rs.readOnly, rs.sel = "", false, nil
		} else {
			rs.sel = rs.prevSel // BAD: the command was not executed
		}
		return append(held, fwd...), false
	case cmdClose, cmdUnselect:
		if ok {
			rs.selected, rs.readOnly, rs.sel = "", false, nil
		} else if sel != nil {
			sel.closing = false
		}
	case cmdIdle:
		if rs.idleTag == tag {
			rs.idleTag = ""
		}
		rs.idling, rs.idleDone = false, false
		rs.cond.Broadcast()
	case cmdLogout:
		rs.byeSeen = true
		rs.logoutTag = tag
	}
	if sel == nil || sel.state != selReady || sel.m == nil {
		return fwd, false
	}
	if pc.rewritten && imapwire.EqualFold(r.Code, "MODIFIED") {
		// RFC 7162 §3.1.3: the UIDs of a rewritten STORE are numbers to the client.
		if set, err := parseUIDSet(r.CodeArgs); err == nil {
			b := append([]byte(nil), fwd[:r.CodeStart]...)
			b = append(b, "[MODIFIED "...)
			b = appendSeqSet(b, sel.m.AppendClientSeq(nil, set))
			b = append(b, fwd[r.CodeEnd-1:]...)
			if ss.pastCap(rs, len(fwd), len(b), line) {
				return nil, true
			}
			fwd = b
		}
	}
	return ss.beforeTagged(rs, sel, pc, fwd)
}

func parseNumber(b []byte) (uint32, bool) {
	d := imapwire.NewDecoder(b)
	n, ok := d.Number()
	return n, ok && d.EOL()
}

// translateFetch renumbers "* n FETCH (...)" by its UID into the client's
// view, and drops the UID item the client did not ask for.
func (ss *session) translateFetch(rs *relayState, sel *selection, r *imapwire.Response, line []byte, out *[]byte) ([]byte, bool) {
	d := imapwire.NewDecoder(line)
	d.Seek(r.After)
	if !d.Special('(') {
		return line, false
	}
	listStart := d.Pos()
	var uid uint32
	uidStart, uidEnd := -1, -1
	items := 0
	for !d.EOL() && !d.Special(')') {
		itemStart := d.Pos()
		if items > 0 && !d.SP() {
			break
		}
		nameStart := d.Pos()
		if !d.SkipValue() {
			break
		}
		name := line[nameStart:d.Pos()]
		if !d.SP() {
			break
		}
		valStart := d.Pos()
		if !d.SkipValue() {
			items++ // a literal whose bytes follow: the item continues later
			break
		}
		items++
		if imapwire.EqualFold(name, "UID") {
			if n, ok := parseNumber(line[valStart:d.Pos()]); ok {
				uid = n
				uidStart, uidEnd = itemStart, d.Pos()
				if itemStart == listStart && uidEnd < len(line) && line[uidEnd] == ' ' {
					uidEnd++ // "UID n " at the start: drop the SP after
				}
			}
		}
	}
	head, seenEcho := rs.fetchOwnerLocked(uid, uid != 0 && onlyFlags(line[listStart:]))
	wantsUID, rename := head.wantsUID, head.renameRFC822
	injectedResolve := rs.tags[rs.injected].inject == injectResolve
	var msgno uint32
	var prefix []byte
	if uid != 0 {
		if !sel.legacy {
			if e, ok := sel.m.UpstreamAt(r.Num); ok && e.UID == 0 {
				sel.m.Resolve(r.Num, uid)
			}
		}
		n, ok := sel.m.ClientMsgno(uid)
		if !ok {
			if _, up := sel.m.UpstreamMsgno(uid); up && sel.m.PendingArrivals() > 0 {
				prefix = ss.announce(rs, sel, new([]byte), nil)
				n, ok = sel.m.ClientMsgno(uid)
			}
		}
		if !ok {
			if sel.legacy && uid > sel.m.MaxUID() {
				// A message it never counted with EXISTS: the resync
				// announces it, and then this data (RFC 9051 §7.5.2: a
				// FETCH only for a message the client has).
				sel.markDirty()
				body := line[listStart:]
				if uidStart >= 0 && !wantsUID {
					body = append(append([]byte(nil), line[listStart:uidStart]...), line[uidEnd:]...)
				}
				if _, lit := imapwire.TrailingLiteral(line); !lit && !(uidStart >= 0 && !wantsUID && items == 1) && sel.lateBytes+len(body) <= maxLateBytes {
					if rename {
						body = renameRFC822(body)
					}
					sel.late = append(sel.late, lateFetch{uid: uid, body: append([]byte(nil), body...)})
					sel.lateBytes += len(body)
				}
			}
			return nil, true
		}
		msgno = n
	} else {
		if sel.legacy {
			// Without a UID a legacy number means nothing trustworthy.
			// A flag change it reports is asked again by the UID the
			// number had in uidgate's view of the backend (flagFetch):
			// if the number was stale, another message's flags are
			// reported, true as well, and this change is missed, never
			// misplaced.
			sel.markDirty()
			if onlyFlags(line[listStart:]) {
				if e, ok := sel.m.UpstreamAt(r.Num); ok && e.UID != 0 {
					if len(sel.flagCands) < maxFlagCands {
						sel.flagCands.AddNum(imap.UID(e.UID))
					} else {
						ss.log.Debug().Uint32("uid", e.UID).Msg("flag report dropped: too many pending")
					}
				}
			}
			return nil, true
		}
		n, ok := sel.m.UpstreamToClient(r.Num)
		if !ok {
			return nil, true
		}
		msgno = n
	}
	if injectedResolve && items == 1 && uidStart >= 0 {
		return nil, true // uidgate's own UID FETCH
	}
	if seenEcho {
		// The report of uidgate's own STORE \Seen: the FETCH it serves
		// answers with FLAGS itself, as one response.
		return prefixOrDrop(prefix, out)
	}
	// The translation is about the line's length: room for it at once.
	b := slices.Grow((*out)[:0], len(prefix)+len(line)+16)
	b = append(b, prefix...)
	b = append(b, "* "...)
	b = appendUint(b, msgno)
	b = append(b, " FETCH ("...)
	body := line[listStart:]
	if uidStart >= 0 && !wantsUID {
		if items == 1 {
			return prefixOrDrop(prefix, out)
		}
		if rename {
			body = append(append([]byte(nil), line[listStart:uidStart]...), line[uidEnd:]...)
		} else {
			// Straight into b: no copy of a line that may be megabytes.
			b = append(b, line[listStart:uidStart]...)
			body = line[uidEnd:]
		}
	}
	if rename {
		// RFC822 and RFC822.TEXT were fetched as BODY.PEEK[] and
		// BODY.PEEK[TEXT] (explicit \Seen): answer with the names asked,
		// here and in the rest of the response, after its literals.
		body = renameRFC822(body)
		ss.renameCont = true
	}
	b = append(b, body...)
	*out = b
	// The prefix announces the view (EXISTS): not a translation of line.
	if ss.pastCap(rs, len(line), len(b)-len(prefix), line) {
		return nil, true
	}
	return b, false
}

// renameRFC822 gives the items of a FETCH fetched for RFC822 and
// RFC822.TEXT the names the client asked for.
func renameRFC822(b []byte) []byte {
	return renameItem(renameItem(b, "BODY[] ", "RFC822 "), "BODY[TEXT] ", "RFC822.TEXT ")
}

// renameItem replaces the FETCH item name from by to where it starts an
// item (after "(" or " ").
func renameItem(body []byte, from, to string) []byte {
	i := bytes.Index(body, []byte(from))
	if i < 0 || (i > 0 && body[i-1] != ' ' && body[i-1] != '(') {
		return body
	}
	return append(append(append([]byte(nil), body[:i]...), to...), body[i+len(from):]...)
}

// onlyFlags reports whether a FETCH item list holds only FLAGS and UID
// (and MODSEQ), i.e. is a flag-change report.
func onlyFlags(list []byte) bool {
	d := imapwire.NewDecoder(list)
	n := 0
	for !d.EOL() && !d.Special(')') {
		d.SP()
		start := d.Pos()
		if !d.SkipValue() {
			return false
		}
		name := list[start:d.Pos()]
		if !imapwire.EqualFold(name, "FLAGS") && !imapwire.EqualFold(name, "UID") && !imapwire.EqualFold(name, "MODSEQ") {
			return false
		}
		if !d.SP() || !d.SkipValue() {
			return false
		}
		n++
	}
	return n > 0
}

func prefixOrDrop(prefix []byte, out *[]byte) ([]byte, bool) {
	if len(prefix) == 0 {
		return nil, true
	}
	*out = prefix
	return prefix, false
}

// translateNumberList maps "* SEARCH"/"* SORT" UIDs to client numbers in
// the same order, keeping a trailing "(MODSEQ n)" (RFC 7162 §3.1.5).
func (ss *session) translateNumberList(sel *selection, r *imapwire.Response, line []byte, out *[]byte) []byte {
	rest := imapwire.TrimEOL(line[r.After:])
	d := imapwire.NewDecoder(rest)
	// A client number is never longer than its UID (UIDs ascend from 1 in
	// the client's order), so the line's length is room enough: one
	// allocation, number by number, however long the list (issue 16:
	// slices of the UIDs and numbers cost 8 bytes per result more).
	b := slices.Grow((*out)[:0], len(line))
	b = append(b, line[:r.After]...)
	b = trimRightSP(b)
	var tail []byte
	for !d.EOL() {
		if d.SP() {
			continue
		}
		if n, ok := d.Number(); ok {
			if m, ok := sel.m.ClientMsgno(n); ok {
				b = append(b, ' ')
				b = appendUint(b, m)
			}
			continue
		}
		tail = d.Rest()
		break
	}
	if len(tail) > 0 {
		b = append(b, ' ')
		b = append(b, tail...)
	}
	b = append(b, '\r', '\n')
	*out = b
	return b
}

func trimRightSP(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == ' ' {
		b = b[:len(b)-1]
	}
	return b
}

// translateThread maps every UID in "* THREAD (...)" (RFC 5256 §4),
// keeping the nesting.
func (ss *session) translateThread(sel *selection, r *imapwire.Response, line []byte, out *[]byte) []byte {
	// Room for the line: its numbers are only ever shortened (see
	// translateNumberList).
	b := slices.Grow((*out)[:0], len(line))
	b = append(b, line[:r.After]...)
	rest := line[r.After:]
	for i := 0; i < len(rest); {
		c := rest[i]
		if c < '0' || c > '9' {
			b = append(b, c)
			i++
			continue
		}
		j := i
		var n uint64
		for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
			n = n*10 + uint64(rest[j]-'0')
			j++
			if n > math.MaxUint32 {
				ss.backendProtocolError(ss.rs, line) // not a UID (RFC 9051 §9)
				return b
			}
		}
		if m, ok := sel.m.ClientMsgno(uint32(n)); ok {
			b = appendUint(b, m)
		} else {
			b = appendUint(b, uint32(n)) // cannot happen once resolved
		}
		i = j
	}
	*out = b
	return b
}

// esearch is a parsed ESEARCH response (RFC 4731 §3.1).
type esearch struct {
	tag string
	uid bool
	// parts in order: name and raw value
	parts [][2][]byte
	all   []byte
}

func parseESearch(b []byte) esearch {
	var es esearch
	d := imapwire.NewDecoder(b)
	if d.Special('(') {
		if a, ok := d.Atom(); ok && imapwire.EqualFold(a, "TAG") && d.SP() {
			es.tag, _ = d.String()
		}
		for !d.EOL() && !d.Special(')') {
			// An unreadable value (an unterminated string) ends the
			// list: it once looped here for ever (found by FuzzResponses).
			if skipped := d.SkipValue(); !d.SP() && !skipped {
				break
			}
		}
		d.SP()
	}
	for !d.EOL() {
		if d.SP() {
			continue
		}
		name, ok := d.Atom()
		if !ok {
			break
		}
		if imapwire.EqualFold(name, "UID") {
			es.uid = true
			continue
		}
		d.SP()
		start := d.Pos()
		if !d.SkipValue() {
			break
		}
		val := b[start:d.Pos()]
		if imapwire.EqualFold(name, "ALL") {
			es.all = val
		}
		es.parts = append(es.parts, [2][]byte{name, val})
	}
	return es
}

// translateESearch maps an ESEARCH answer to a rewritten SEARCH or SORT:
// the UID indicator goes, MIN, MAX and ALL become client numbers.
func (ss *session) translateESearch(sel *selection, pc pendingCmd, es esearch, head []byte, out *[]byte) []byte {
	b := append((*out)[:0], head...)
	b = append(b, "(TAG \""...)
	b = append(b, tagOrClient(pc, es.tag)...)
	b = append(b, '"', ')')
	for _, p := range es.parts {
		name, val := p[0], p[1]
		switch {
		case imapwire.EqualFold(name, "MIN"), imapwire.EqualFold(name, "MAX"):
			n, ok := parseNumber(val)
			m, known := sel.m.ClientMsgno(n)
			if !ok || !known {
				continue
			}
			val = appendUint(nil, m)
		case imapwire.EqualFold(name, "ALL"):
			set, err := parseUIDSet(val)
			if err != nil {
				continue
			}
			var seq imap.SeqSet
			if pc.kind == cmdSort {
				// RFC 5267 §3.2: ESORT's ALL keeps the sort order. It
				// names each message once: more UIDs than the mailbox
				// holds is a broken answer, not expanded (issue 16: a
				// backend's "ALL 1:50000000" cost 835 MB).
				var total uint64
				for _, rg := range set {
					if rg.Stop == 0 || rg.Stop < rg.Start {
						total = math.MaxUint64
						break
					}
					total += uint64(rg.Stop-rg.Start) + 1
				}
				if total > uint64(sel.m.UpstreamCount()) {
					ss.log.Warn().Uint64("uids", total).Msg("ESORT ALL longer than the mailbox; dropped")
					continue
				}
				// Range by range, never number by number: the UIDs of
				// a range a:b are consecutive in the sort order and
				// ascending, so their client numbers are ascending
				// ranges too, joined again by appendSeqSet.
				for _, rg := range set {
					if rg.Start == rg.Stop {
						if m, ok := sel.m.ClientMsgno(uint32(rg.Start)); ok {
							seq = append(seq, imap.SeqRange{Start: m, Stop: m})
						}
						continue
					}
					seq = sel.m.AppendClientSeq(seq, imap.UIDSet{rg})
				}
			} else {
				seq = sel.m.AppendClientSeq(nil, set)
			}
			if len(seq) == 0 {
				continue
			}
			val = appendSeqSet(nil, seq)
		}
		b = append(b, ' ')
		b = append(b, name...)
		b = append(b, ' ')
		b = append(b, val...)
	}
	b = append(b, '\r', '\n')
	*out = b
	return b
}
