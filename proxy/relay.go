package proxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"

	"uidgate/proxy/imapwire"
	"uidgate/rules"
	"uidgate/sessionmap"
)

// cmdKind is what the relay needs to know of a command in flight.
type cmdKind uint8

const (
	cmdOther cmdKind = iota
	cmdSelect
	cmdExamine
	cmdClose
	cmdUnselect
	cmdIdle
	cmdLogout
	cmdFetch
	cmdStore
	cmdCopy
	cmdMove
	cmdSearch
	cmdSort
	cmdThread
	cmdEnable
	cmdAppend
	cmdExpunge
)

// injectKind marks commands uidgate sends for itself.
type injectKind uint8

const (
	injectNone     injectKind = iota
	injectBuild               // UID SEARCH ALL after SELECT: load the map
	injectResync              // legacy resync: UID SEARCH ALL, or UID FETCH set (UID)
	injectResolve             // UID FETCH n:* (UID): learn new messages' UIDs
	injectSeen                // UID STORE +FLAGS (\Seen): explicit \Seen
	injectFlags               // UID FETCH uids (FLAGS): legacy flag reports
	injectClose               // EXPUNGE before a legacy CLOSE sent as UNSELECT
	injectUnselect            // UNSELECT before a legacy LOGOUT: seen written first
)

const (
	// maxRewriteCommand bounds a command collected whole to be rewritten
	// (its literals included): sequence sets and search programs.
	maxRewriteCommand = 1 << 20
	// tagSpace starts every tag uidgate makes up; a client tag that starts
	// with it is renamed on the way up (see registerLocked).
	tagSpace = "UG"
	// injectTagPrefix starts the tags of uidgate's own commands.
	injectTagPrefix = tagSpace + "."
	// clientTagEscape starts the tags given to renamed client commands.
	clientTagEscape = tagSpace + "C."
)

type pendingCmd struct {
	kind      cmdKind
	mailbox   string
	clientTag string // the client's tag when it differs from the upstream one
	inject    injectKind
	// rewritten: sent in UID form; numbers in its responses are UIDs.
	rewritten bool
	// forbidsExpunge: RFC 3501 §7.4.1, RFC 9051 §7.5.1 — no EXPUNGE may be
	// sent while it is in progress (FETCH, STORE, SEARCH, and with them
	// SORT and THREAD, whose results are message numbers too).
	forbidsExpunge bool
	wantsUID       bool   // keep UID items in FETCH responses
	resultsAreUIDs bool   // its SEARCH/SORT/THREAD/ESEARCH results need mapping
	esearch        bool   // RETURN options: results come as ESEARCH
	renameRFC822   bool   // BODY[] / BODY[TEXT] answer RFC822 / RFC822.TEXT asked for
	release        func() // gives back the command's locks
	seenFor        string // injectSeen: the client command it serves
	// seenUIDs: a FETCH sent as .PEEK after uidgate's STORE \Seen; a
	// backend's separate FLAGS-only report for these UIDs is dropped, the
	// FETCH's own FLAGS carry it (nil with seenAll: every UID, for "$").
	seenUIDs imap.UIDSet
	seenAll  bool
	// answers: the UIDs a FETCH/STORE (or uidgate's STORE \Seen) is
	// answered for (answersAll: any, for "$"), and the highest answered so
	// far (fetchOwnerLocked).
	answers    imap.UIDSet
	answersAll bool
	lastUID    uint32
	// seq orders commands as sent; answering: its untagged answers have
	// begun (mayRelease).
	seq       uint64
	answering bool
}

// selState is where a selection is in its life.
type selState uint8

const (
	selPending  selState = iota + 1 // SELECT sent; responses held
	selBuilding                     // SELECT OK held; map being built
	selReady                        // map built: normalizing
)

// selection is the selected mailbox with its msgno↔UID map.
type selection struct {
	m      *sessionmap.Map
	legacy bool
	state  selState
	loaded bool // the build's UID list arrived
	// schedule: what the client has not been told yet (schedule.go).
	schedule
	tag      string // the SELECT's upstream tag
	readOnly bool
	validity uint32 // UIDVALIDITY announced by the SELECT
}

// litDecision is the backend's answer to a synchronizing literal sent to a
// backend without LITERAL+: go on, or the command was refused.
type litDecision bool

// relayState is shared by the two relay goroutines under mu.
type relayState struct {
	mu       sync.Mutex
	cond     *sync.Cond // broadcast on every tagged response and at the end
	tags     map[string]pendingCmd
	selected string // mailbox as the client named it; "" when none
	readOnly bool
	exists   uint32
	sel      *selection
	prevSel  *selection
	idleTag  string // IDLE sent, continuation not yet seen
	idling   bool   // backend said "+": the next client line is DONE
	// idleCycle: legacy: uidgate left the backend's IDLE to learn by UID
	// what it reported, and idles again (leaveIdle); the client idles on.
	// idleDone: the client's DONE came meanwhile, and was not sent.
	idleCycle idleCycle
	idleDone  bool
	// litWait, when set, is the tag of a command whose synchronizing
	// literal waits for the backend's "+"; litPass says whether that "+"
	// goes to the client (it sent a synchronizing literal itself).
	litWait    string
	litPass    bool
	litCh      chan litDecision
	midCommand bool     // the client goroutine is sending a command's parts
	searchQ    []string // SEARCH/SORT/THREAD in flight with untagged answers, in order sent
	fetchQ     []string // FETCH/STORE in flight (and uidgate's STORE \Seen), in order sent
	injectN    int
	renameN    int    // client tags renamed so far (registerLocked)
	seqN       uint64 // commands registered so far
	injected   string // tag of the injected command in flight
	byeSeen    bool
	logoutTag  string // LOGOUT answered: the session ends
	ended      bool
	legacy     bool
	esearch    bool   // backend has ESEARCH (RFC 4731)
	toSend     []byte // uidgate's own command to send after a response
	// fatal, once set, is the BYE text the session must end with; it is
	// read on every response, so without the lock.
	fatal atomic.Pointer[string]
}

func (rs *relayState) isLogoutTag(tag []byte) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.logoutTag != "" && rs.logoutTag == string(tag)
}

// State is a snapshot of a session's relay state, for tests and logs.
type State struct {
	Selected string
	ReadOnly bool
	Exists   uint32
}

func (rs *relayState) snapshot() State {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return State{Selected: rs.selected, ReadOnly: rs.readOnly, Exists: rs.exists}
}

func (ss *session) relay(ctx context.Context) {
	ss.conn.SetDeadline(time.Time{})
	rs := &relayState{
		tags:    make(map[string]pendingCmd),
		litCh:   make(chan litDecision, 1),
		legacy:  ss.legacy,
		esearch: ss.up.HasCap("ESEARCH"),
	}
	rs.cond = sync.NewCond(&rs.mu)
	ss.rs = rs
	ss.view.setRelay(rs) // admin view (admin.go)
	ss.uw = newFlushWriter(countingWriter{ss.up.Conn, &ss.upWrites})
	setUpstreamBounds(ss.up.R)
	// One goroutine per direction: the client's commands on a new one, the
	// backend's responses on this one (a third goroutine, only waiting,
	// would cost every idle session its stack). The first to finish closes
	// both sides; the other then returns too, and only the first's error
	// is worth a log line.
	var first sync.Once
	end := func(side string, err error) {
		first.Do(func() {
			switch {
			case err != nil && !isClosed(err):
				ss.log.Warn().Err(err).Str("side", side).Msg("relay ended")
			default:
				ss.log.Debug().AnErr("error", err).Str("side", side).Msg("relay ended")
			}
		})
		ss.closeAll()
	}
	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		end("client", ss.relayEnded(fromClient, ss.clientToUpstream(rs)))
	}()
	end("backend", ss.relayEnded(fromBackend, ss.upstreamToClient(rs)))
	<-clientDone
	rs.mu.Lock()
	rs.ended = true
	rs.cond.Broadcast()
	// Locks of commands that will never be answered go back now.
	for tag, pc := range rs.tags {
		if pc.release != nil {
			pc.release()
		}
		delete(rs.tags, tag)
	}
	rs.mu.Unlock()
}

// injectedInFlightLocked reports whether a command uidgate sent itself is
// not yet answered. Must hold rs.mu.
func (rs *relayState) injectedInFlightLocked() bool {
	_, ok := rs.tags[rs.injected]
	return rs.injected != "" && ok
}

// writeUp writes to the backend; flush sends it.
func (ss *session) writeUp(b []byte, flush bool) error {
	ss.upMu.Lock()
	defer ss.upMu.Unlock()
	if _, err := ss.uw.Write(b); err != nil {
		return err
	}
	if flush {
		return ss.uw.Flush()
	}
	return nil
}

// registerLocked records a client command about to be sent and returns
// the tag it carries upstream, unique among the commands in flight: the
// client's own, unless that tag starts with uidgate's tag space ("UG") or
// belongs to a command still in flight (RFC 9051 §2.2.1 asks clients for
// unique tags; a proxy must not lose a record, and its locks, when one
// does not). Renamed tags are "UGC.n", never reused; the record keeps the
// client's tag for the answer.
func (rs *relayState) registerLocked(tag string, pc pendingCmd) string {
	up := tag
	if _, busy := rs.tags[tag]; busy || strings.HasPrefix(tag, tagSpace) {
		rs.renameN++
		up = clientTagEscape + itoa(rs.renameN)
		pc.clientTag = tag
	}
	rs.seqN++
	pc.seq = rs.seqN
	rs.tags[up] = pc
	return up
}

// retag gives line, which starts with the client's tag, the upstream tag.
func retag(line []byte, tag, up string) []byte {
	if up == tag {
		return line
	}
	return append([]byte(up), line[len(tag):]...)
}

// clientToUpstream forwards the client's commands; the backend is written
// only from here, except for the map build that follows a SELECT, which
// runs while this goroutine waits (see barrier).
func (ss *session) clientToUpstream(rs *relayState) (err error) {
	defer ss.recoverInto(&err)
	literalPlus := ss.up.HasCap("LITERAL+")
	// ownExpunges: the last command sent expunges by itself (EXPUNGE,
	// MOVE) on a legacy backend.
	ownExpunges := false
	for {
		if err := ss.roomInFlight(rs); err != nil {
			return err
		}
		ss.conn.SetReadDeadline(time.Now().Add(ss.srv.idleTimeout()))
		line, err := ss.cr.ReadLine()
		if err != nil {
			ss.endOnReadError(err, line)
			return err
		}
		ss.bytesIn.Add(int64(len(line)))
		rs.mu.Lock()
		idling := rs.idling
		rs.idling = false
		cycling := rs.idleCycle != idleOn && !rs.idleDone
		if cycling {
			rs.idleDone = true
		}
		rs.mu.Unlock()
		if cycling {
			// uidgate ended the backend's IDLE itself (leaveIdle): nothing
			// goes upstream until the cycle ends; then this DONE ends the
			// backend's new IDLE, or, if the cycle ended with IDLE's
			// answer, is not sent at all.
			if err := ss.waitState(rs, func() bool { return rs.idleCycle == idleOn }); err != nil {
				return err
			}
			rs.mu.Lock()
			idling = rs.idling
			rs.idling = false
			rs.mu.Unlock()
			if !idling {
				continue
			}
		}
		if idling {
			// RFC 9051 §6.3.13: the line after "+" ends IDLE ("DONE").
			if err := ss.writeUp(line, true); err != nil {
				return err
			}
			continue
		}
		cmd, ok := imapwire.ParseCommand(line)
		if !ok {
			if lit, has := imapwire.TrailingLiteral(line); has && !lit.Sync {
				ss.sendf("* BAD Command syntax error")
				ss.bye("Cannot skip an unparsable command's literal")
				return nil
			}
			ss.sendf("* BAD Command syntax error")
			continue
		}
		tag := string(cmd.Tag)
		ss.traceCommand(line, cmd.Name, false)
		refusal := refused(cmd)
		if _, lit := imapwire.TrailingLiteral(line); lit && takesNoArguments(cmd) {
			// A literal after a command without arguments would reach the
			// backend as bytes it may read as the next command once it has
			// refused this one: a command smuggled past the rewriter, the
			// locks and the capability filter (issue 16).
			refusal = "Unexpected literal"
		}
		if refusal != "" {
			if err := ss.answerUnsent(tag, "BAD "+refusal, line); err != nil {
				return err
			}
			continue
		}
		kind := kindOf(cmd)
		ss.srv.Metrics.command(cmd.Name, cmd.UID, !cmd.UID && kind >= cmdFetch && kind <= cmdThread)
		if ss.answersNameNewMessages(rs, kind, line) {
			// Its results may name messages that a command still in flight
			// brings (COPY into the selected mailbox, news at NOOP): the
			// server would run it after them, so it waits for them and
			// their UIDs are learned first, or they would be left out.
			if err := ss.barrier(rs); err != nil {
				return err
			}
		}
		if ownExpunges {
			// RFC 9051 §6.4.3: EXPUNGE's (and MOVE's) expunges come
			// before its tagged answer. A legacy backend's numbers are
			// learned by UID while the answer waits (beforeTagged), which
			// it can only do with nothing sent behind the command: what
			// the client pipelined behind waits for that answer.
			if err := ss.barrier(rs); err != nil {
				return err
			}
		}
		rs.mu.Lock()
		ownExpunges = rs.legacy && rs.sel != nil && (kind == cmdExpunge || kind == cmdMove)
		rs.mu.Unlock()
		if kind != cmdLogout {
			// A legacy backend's numbers are never trusted: after it
			// reported EXPUNGE/EXISTS, learn the truth by UID first.
			if err := ss.resyncIfDirty(rs); err != nil {
				return err
			}
		}
		if ss.needsRewrite(rs, cmd, kind) {
			if err := ss.rewriteAndSend(rs, cmd, kind, line, literalPlus); err != nil {
				return err
			}
			continue
		}
		if kind == cmdEnable {
			line = filterEnable(line, cmd)
		}
		if kind == cmdAppend {
			if err := ss.appendSpooled(rs, cmd, line, literalPlus); err != nil {
				return err
			}
			continue
		}
		pc := pendingCmd{kind: kind, wantsUID: cmd.UID}
		if kind == cmdClose {
			// RFC 9051 §6.4.1: CLOSE sends no EXPUNGE responses.
			pc.forbidsExpunge = true
		}
		var whole *wireCmd // SELECT/EXAMINE: read whole before any lock
		if kind == cmdSelect || kind == cmdExamine {
			whole = &wireCmd{}
			if err := ss.collect(line, whole); err != nil {
				if errors.Is(err, errCommandTooLong) {
					ss.sendf("%s NO [TOOBIG] Command too long", tag)
					continue
				}
				ss.endOnReadError(err, line)
				return err
			}
			d := imapwire.NewDecoder(whole.buf)
			d.Seek(cmd.Args)
			pc.mailbox, _ = d.AString()
			// A SELECT changes what numbers mean: let what is in flight
			// finish first, and build the new map before anything follows.
			if err := ss.barrier(rs); err != nil {
				return err
			}
		}
		if release, err := ss.lockPassthrough(rs, cmd, kind); err != nil {
			if err := ss.lockFailed(tag, err); err != nil {
				return err
			}
			continue
		} else {
			pc.release = release
		}
		rs.mu.Lock()
		for pc.kind == cmdLogout && rs.injectedInFlightLocked() {
			// LOGOUT needs no resync, but must not overtake one in flight:
			// the backend answers LOGOUT and closes, and an answer held
			// for that resync (beforeTagged) would never reach the client.
			// Checked here, under the lock LOGOUT is registered with: the
			// backend goroutine holds an answer only while nothing is
			// registered (beforeTagged), so a hold is either seen here or
			// never made.
			rs.mu.Unlock()
			if err := ss.barrier(rs); err != nil {
				if pc.release != nil {
					pc.release()
				}
				return err
			}
			rs.mu.Lock()
		}
		// sendFirst: uidgate's own command sent just before this one.
		var sendFirst []byte
		unselect := pc.kind == cmdClose && rs.legacy && rs.sel != nil && ss.up.HasCap("UNSELECT") && bareCommand(line, cmd)
		if unselect && !rs.readOnly {
			// Cyrus 2.3's CLOSE expunges under an index lock that re-reads
			// the mailbox header, then writes the user's seen state from
			// its view of the mailbox, which lacks the messages delivered
			// since the last command: if that view's last message is
			// \Seen, every one of them becomes \Seen (imap/index.c,
			// index_checkseen: "Any messages between uid+1 and
			// mailbox->last_uid get same disposition as uid";
			// docs/CYRUS23.md). EXPUNGE brings the view up to date after
			// its own lock (index_check), and UNSELECT (RFC 3691) then
			// closes without a header read: CLOSE's effect (RFC 9051
			// §6.4.1) without the stale write. Its EXPUNGE responses never
			// reach the client, as CLOSE sends none.
			rs.injectN++
			st := injectTagPrefix + itoa(rs.injectN)
			rs.seqN++
			rs.tags[st] = pendingCmd{kind: cmdExpunge, inject: injectClose, seq: rs.seqN, forbidsExpunge: true}
			sendFirst = []byte(st + " EXPUNGE\r\n")
			rs.sel.closing = true
		}
		if pc.kind == cmdLogout && rs.legacy && rs.sel != nil && ss.up.HasCap("UNSELECT") {
			// Cyrus 2.3 answers LOGOUT first and only then, on its way
			// out, writes the session's cached \Seen state (imapd.c: the
			// "Logout" case returns after the OK; shut_down calls
			// index_closemailbox): the client, and the locks held for
			// the LOGOUT, are done before the state is stored, and a
			// session that looks right after sees the user's reads
			// missing (docs/CYRUS23.md). UNSELECT (RFC 3691) writes it
			// before its answer; sent first, LOGOUT then leaves nothing
			// to write. Its answer is uidgate's, and nothing numbered
			// reaches the client after LOGOUT.
			rs.injectN++
			st := injectTagPrefix + itoa(rs.injectN)
			rs.seqN++
			rs.tags[st] = pendingCmd{kind: cmdUnselect, inject: injectUnselect, seq: rs.seqN, forbidsExpunge: true}
			sendFirst = []byte(st + " UNSELECT\r\n")
			rs.sel.closing = true
		}
		up := rs.registerLocked(tag, pc)
		line = retag(line, tag, up)
		if unselect {
			line = []byte(up + " UNSELECT\r\n")
		}
		if pc.kind == cmdIdle {
			rs.idleTag = up
		}
		if pc.kind == cmdSelect || pc.kind == cmdExamine {
			rs.prevSel = rs.sel
			rs.sel = &selection{m: sessionmap.New(), legacy: rs.legacy, state: selPending, tag: up}
		}
		rs.mu.Unlock()
		if sendFirst != nil {
			if err := ss.writeUp(sendFirst, false); err != nil {
				return err
			}
		}
		if whole != nil {
			var b builder
			b.out = append(b.out, up...)
			b.copySpan(whole, len(tag), len(whole.buf))
			if err := ss.sendBuilt(rs, up, &b, literalPlus); err != nil {
				return err
			}
		} else if err := ss.forwardCommand(rs, up, pc, line, literalPlus); err != nil {
			return err
		}
		if pc.kind == cmdSelect || pc.kind == cmdExamine {
			if err := ss.barrier(rs); err != nil {
				return err
			}
		}
	}
}

// answerUnsent answers a command uidgate does not send. A non-synchronizing
// literal's bytes follow regardless and cannot be skipped unread: the
// session ends then.
func (ss *session) answerUnsent(tag, answer string, line []byte) error {
	if lit, has := imapwire.TrailingLiteral(line); has && !lit.Sync {
		ss.sendf("%s %s", tag, answer)
		ss.bye("Cannot skip a refused command's literal")
		return net.ErrClosed
	}
	ss.sendf("%s %s", tag, answer)
	return nil
}

// forwardCommand sends a command as it came: each line, and each literal
// it announces, streamed.
func (ss *session) forwardCommand(rs *relayState, tag string, pc pendingCmd, line []byte, literalPlus bool) error {
	first := true
	defer func() {
		rs.mu.Lock()
		rs.midCommand = false
		rs.mu.Unlock()
	}()
	for {
		lit, has := imapwire.TrailingLiteral(line)
		if !has {
			return ss.writeUp(line, ss.cr.Buffered() == 0)
		}
		if lit.Size > ss.srv.maxLiteral() {
			if !first {
				// Earlier parts are with the backend already; the
				// command cannot be withdrawn, so the session ends.
				ss.sendf("%s NO [TOOBIG] Literal too large", tagOrClient(pc, tag))
				ss.bye("Literal too large")
				return net.ErrClosed
			}
			rs.complete(tag)
			if !lit.Sync {
				ss.endOnReadError(errLiteralTooBig, line)
				return net.ErrClosed
			}
			// RFC 9051 §7.1: no "+" was sent, so the client sends nothing.
			ss.sendf("%s NO [TOOBIG] Literal too large", tagOrClient(pc, tag))
			return nil
		}
		rs.mu.Lock()
		rs.midCommand = true
		rs.mu.Unlock()
		if lit.Sync && literalPlus {
			ss.sendf("+ Ready for literal")
		}
		if err := ss.forwardLiteral(rs, tag, line, lit, literalPlus); err != nil {
			return err
		}
		first = false
		var err error
		if line, err = ss.cr.ReadLine(); err != nil {
			ss.endOnReadError(err, line)
			return err
		}
		ss.bytesIn.Add(int64(len(line)))
	}
}

func tagOrClient(pc pendingCmd, tag string) string {
	if pc.clientTag != "" {
		return pc.clientTag
	}
	return tag
}

// forwardLiteral sends line (ending in a literal announcement) upstream,
// then the literal's bytes, streamed from the client. With LITERAL+ upstream every literal goes non-synchronizing
// (RFC 7888); otherwise the backend's "+" is awaited. If the backend
// refuses instead, the literal and the rest of the command are read from
// the client and dropped: the refusal already went to the client.
func (ss *session) forwardLiteral(rs *relayState, tag string, line []byte, lit imapwire.Literal, literalPlus bool) error {
	out := lit
	out.Sync = !literalPlus
	buf := append(append([]byte(nil), line[:lit.Start]...), imapwire.AppendLiteralHeader(nil, out)...)
	if out.Sync {
		rs.mu.Lock()
		rs.litWait, rs.litPass = tag, lit.Sync
		rs.mu.Unlock()
	}
	if err := ss.writeUp(buf, true); err != nil {
		return err
	}
	if out.Sync {
		ok, err := ss.awaitContinuation(rs)
		if err != nil {
			return err
		}
		if !ok {
			return ss.discardRest(lit)
		}
	}
	ss.upMu.Lock()
	defer ss.upMu.Unlock()
	if err := ss.uw.Flush(); err != nil {
		return err
	}
	ss.cr.Expect(lit.Size)
	n, err := ss.cr.CopyLiteral(ss.up.Conn)
	ss.upWrites.Add(1)
	ss.bytesIn.Add(n)
	return err
}

// answersNameNewMessages reports whether a message-number command's answer
// depends on messages other commands in flight may add: SEARCH, SORT and
// THREAD results, and a set with "*" (the last message when the server
// runs it). Only commands other than FETCH, STORE and the searches can
// bring new messages (RFC 9051 §7.5.1 lets a server announce them then).
func (ss *session) answersNameNewMessages(rs *relayState, kind cmdKind, line []byte) bool {
	switch kind {
	case cmdSearch, cmdSort, cmdThread:
	case cmdFetch, cmdStore, cmdCopy, cmdMove:
		if bytes.IndexByte(line, '*') < 0 {
			return false
		}
	default:
		return false
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.sel == nil || rs.sel.state != selReady {
		return false
	}
	for _, pc := range rs.tags {
		switch pc.kind {
		case cmdFetch, cmdStore, cmdSearch, cmdSort, cmdThread:
		default:
			return true
		}
	}
	return false
}

// awaitContinuation waits for the backend's answer to a synchronizing
// literal: "+" (true) or a tagged refusal (false), watching the client.
func (ss *session) awaitContinuation(rs *relayState) (bool, error) {
	defer ss.watchClient(ss.cr.Buffered())()
	select {
	case ok := <-rs.litCh:
		return bool(ok), nil
	case <-ss.done:
		return false, net.ErrClosed
	}
}

// discardRest drops a refused command's remaining bytes from the client.
func (ss *session) discardRest(lit imapwire.Literal) error {
	ss.cr.Expect(lit.Size)
	if err := ss.cr.DiscardLiteral(); err != nil {
		return err
	}
	for {
		line, err := ss.cr.ReadLine()
		if err != nil {
			return err
		}
		next, has := imapwire.TrailingLiteral(line)
		if !has {
			return nil
		}
		if next.Size > ss.srv.maxLiteral() {
			return errLiteralTooBig
		}
		ss.cr.Expect(next.Size)
		if err := ss.cr.DiscardLiteral(); err != nil {
			return err
		}
	}
}

// complete ends the record of a command that will get no tagged response
// from the backend (answered by uidgate, or never sent): its locks go
// back and whoever waits for "nothing in flight" is woken.
func (rs *relayState) complete(tag string) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.completeLocked(tag)
}

func (rs *relayState) completeLocked(tag string) {
	if pc, ok := rs.tags[tag]; ok && pc.release != nil {
		pc.release()
	}
	delete(rs.tags, tag)
	rs.unqueueLocked(tag)
	rs.cond.Broadcast()
}

// unqueueLocked takes an answered command out of the queues that match
// untagged answers to commands in the order sent.
func (rs *relayState) unqueueLocked(tag string) {
	if i := slices.Index(rs.searchQ, tag); i >= 0 {
		rs.searchQ = slices.Delete(rs.searchQ, i, i+1)
	}
	if i := slices.Index(rs.fetchQ, tag); i >= 0 {
		rs.fetchQ = slices.Delete(rs.fetchQ, i, i+1)
	}
}

// fetchOwnerLocked finds the command an untagged FETCH for uid answers,
// so that the items one command asked for are never judged by another's:
// the oldest FETCH/STORE in flight that names uid and has not yet answered
// it or a higher one (a STORE only for a flags-only answer). A server
// answers pipelined commands in the order sent, each in ascending UID
// order; once a command answers uid, the older ones naming it are done
// with it. An unsolicited update, or an answer without UID, goes to the
// oldest. seenEcho: the answer is a flags-only report of uidgate's own
// STORE \Seen (during it, or before the .PEEK FETCH it serves has answered
// that message), which the FETCH's own FLAGS item reports instead.
func (rs *relayState) fetchOwnerLocked(uid uint32, flagsOnly bool) (owner pendingCmd, seenEcho bool) {
	if len(rs.fetchQ) == 0 {
		return pendingCmd{}, false
	}
	if uid != 0 {
		for i, tag := range rs.fetchQ {
			pc := rs.tags[tag]
			if uid <= pc.lastUID || !pc.answersAll && !uidSetHas(pc.answers, uid) {
				continue
			}
			seenFetch := pc.seenAll || pc.seenUIDs.Contains(imap.UID(uid))
			switch {
			case seenFetch && flagsOnly:
				return pc, true
			case pc.inject == injectSeen, pc.kind == cmdStore && !flagsOnly:
				continue
			}
			for _, older := range rs.fetchQ[:i+1] {
				if o := rs.tags[older]; o.lastUID < uid {
					o.lastUID = uid
					rs.tags[older] = o
				}
			}
			rs.answeringLocked(rs.fetchQ[i : i+1])
			return rs.tags[tag], false
		}
	}
	rs.answeringLocked(rs.fetchQ)
	return rs.tags[rs.fetchQ[0]], false
}

// answeringLocked marks the first command of q in flight as answering:
// its untagged responses have begun (see mayRelease).
func (rs *relayState) answeringLocked(q []string) {
	if len(q) == 0 {
		return
	}
	if pc, ok := rs.tags[q[0]]; ok && !pc.answering {
		pc.answering = true
		rs.tags[q[0]] = pc
	}
}

// uidSetHas reports whether set holds uid; a range ending in "*" (Stop 0)
// holds every UID from its start.
func uidSetHas(set imap.UIDSet, uid uint32) bool {
	for _, r := range set {
		if uint32(r.Start) <= uid && (r.Stop == 0 || uid <= uint32(r.Stop)) {
			return true
		}
	}
	return false
}

// takesNoArguments reports commands whose syntax has no argument, so no
// literal (RFC 9051 §9: capability, noop, logout, check, close, unselect,
// idle, namespace, expunge; UID EXPUNGE takes a set, never a literal).
func takesNoArguments(cmd imapwire.Command) bool {
	for _, n := range [...]string{"NOOP", "CAPABILITY", "LOGOUT", "CHECK", "CLOSE", "UNSELECT", "IDLE", "NAMESPACE", "EXPUNGE"} {
		if imapwire.EqualFold(cmd.Name, n) {
			return true
		}
	}
	return false
}

// bareCommand reports whether line is its command's name alone, with no
// arguments after it.
func bareCommand(line []byte, cmd imapwire.Command) bool {
	return !cmd.UID && len(imapwire.TrimEOL(line)) == len(cmd.Tag)+1+len(cmd.Name)
}

// refused returns why the relay answers a command itself with BAD, or "".
func refused(cmd imapwire.Command) string {
	switch {
	case imapwire.EqualFold(cmd.Name, "STARTTLS"):
		// RFC 9051 §6.2.1: only valid in the not-authenticated state.
		return "STARTTLS not valid after login"
	case imapwire.EqualFold(cmd.Name, "COMPRESS"):
		return "COMPRESS is not supported by uidgate"
	case imapwire.EqualFold(cmd.Name, "NOTIFY"):
		return "NOTIFY is not supported by uidgate"
	case imapwire.EqualFold(cmd.Name, "REPLACE") && !cmd.UID:
		return "REPLACE is not supported by uidgate"
	case imapwire.EqualFold(cmd.Name, "AUTHENTICATE"), imapwire.EqualFold(cmd.Name, "LOGIN"):
		// RFC 9051 §6.2: only valid in the not-authenticated state.
		return "Already authenticated"
	}
	return ""
}

func kindOf(cmd imapwire.Command) cmdKind {
	switch n := cmd.Name; {
	case imapwire.EqualFold(n, "FETCH"):
		return cmdFetch
	case imapwire.EqualFold(n, "STORE"):
		return cmdStore
	case imapwire.EqualFold(n, "COPY"):
		return cmdCopy
	case imapwire.EqualFold(n, "MOVE"):
		return cmdMove
	case imapwire.EqualFold(n, "SEARCH"):
		return cmdSearch
	case imapwire.EqualFold(n, "SORT"):
		return cmdSort
	case imapwire.EqualFold(n, "THREAD"):
		return cmdThread
	case imapwire.EqualFold(n, "EXPUNGE"):
		return cmdExpunge // and UID EXPUNGE (RFC 4315)
	case imapwire.EqualFold(n, "APPEND"):
		return cmdAppend
	}
	if cmd.UID {
		return cmdOther
	}
	switch n := cmd.Name; {
	case imapwire.EqualFold(n, "SELECT"):
		return cmdSelect
	case imapwire.EqualFold(n, "EXAMINE"):
		return cmdExamine
	case imapwire.EqualFold(n, "CLOSE"):
		return cmdClose
	case imapwire.EqualFold(n, "UNSELECT"):
		return cmdUnselect
	case imapwire.EqualFold(n, "IDLE"):
		return cmdIdle
	case imapwire.EqualFold(n, "LOGOUT"):
		return cmdLogout
	case imapwire.EqualFold(n, "ENABLE"):
		return cmdEnable
	}
	return cmdOther
}

// filterEnable drops capabilities uidgate withholds from an ENABLE: a
// client must not switch on at the backend what uidgate cannot translate.
func filterEnable(line []byte, cmd imapwire.Command) []byte {
	args := strings.Fields(string(imapwire.TrimEOL(line[cmd.Args:])))
	kept := args[:0]
	for _, a := range args {
		if !rules.CapFiltered(a) {
			kept = append(kept, a)
		}
	}
	if len(kept) == len(args) {
		return line
	}
	out := append([]byte(nil), line[:cmd.Args]...)
	if len(kept) == 0 {
		// ENABLE needs an argument; one every server ignores keeps it valid.
		kept = append(kept, "X-UIDGATE-NONE")
	}
	out = append(out, strings.Join(kept, " ")...)
	return append(out, '\r', '\n')
}

// upstreamToClient forwards the backend's responses, translating message
// numbers and holding EXPUNGEs. It is the only reader of the backend.
func (ss *session) upstreamToClient(rs *relayState) (err error) {
	defer ss.recoverInto(&err)
	defer func() {
		rs.mu.Lock()
		rs.ended = true
		rs.cond.Broadcast()
		rs.mu.Unlock()
	}()
	ur := ss.up.R
	quickAck := quickAcker(ss.up.Conn)
	armedAt := notArmed  // upWrites at the last quickAck
	midResponse := false // the previous line announced a literal
	dropping := false    // the response being read is not for the client
	var out []byte       // translations are built here, reused line after line
	for {
		if ur.Buffered() == 0 {
			// About to wait for the backend: if it owes answers and
			// uidgate has written to it since the last quick ACK (which
			// put the socket back into delayed ACKs), quick ACKs again.
			if w := ss.upWrites.Load(); w != armedAt && rs.owesResponses() {
				quickAck()
				armedAt = w
			}
		}
		line, forwarded, err := ss.readUpLine(rs, ur, midResponse)
		if err != nil {
			rs.mu.Lock()
			bye := rs.byeSeen
			rs.mu.Unlock()
			if !bye && !midResponse && !forwarded && !ss.closing.Load() {
				if errors.Is(err, imapwire.ErrLineTooLong) {
					ss.log.Warn().Msg("backend line too long")
				}
				ss.bye("[UNAVAILABLE] Backend connection lost")
			}
			return err
		}
		if forwarded {
			// A long line already went to the client as it arrived; line
			// is its end, which may announce a literal.
			lit, has := imapwire.TrailingLiteral(line)
			if has && lit.Size > maxBackendLiteral {
				// Half a response is out: no BYE can follow it.
				ss.backendProtocolError(rs, line[:min(len(line), 64)])
				ss.lingerClose()
				return nil
			}
			if err := ss.toClient(ur, nil, lit, has, !has && ur.Buffered() == 0); err != nil {
				return err
			}
			midResponse, dropping = has, false
			continue
		}
		if !midResponse {
			ss.traceLine("S", line)
		}
		literalOK := true
		fwd := line
		logoutDone := false
		if midResponse && ss.renameCont {
			fwd = renameRFC822(line)
		}
		if !midResponse {
			dropping, ss.renameCont = false, false
			resp, ok := imapwire.ParseResponse(line)
			if ok {
				var skip bool
				if cap(out) > maxKeptOut {
					// One big translation is not kept for the session's
					// life (issue 16: memory per session).
					out = nil
				}
				fwd, skip = ss.onResponse(rs, &resp, line, &out)
				if err := ss.sendQueued(rs); err != nil {
					return err
				}
				if why := rs.fatal.Load(); why != nil {
					ss.bye(*why)
					return nil
				}
				literalOK = resp.MayAnnounceLiteral()
				if skip {
					dropping = true
				}
				logoutDone = resp.Kind == imapwire.RespTagged && rs.isLogoutTag(resp.Tag)
			}
		}
		lit, has := imapwire.TrailingLiteral(line)
		has = has && literalOK
		if has && lit.Size > maxBackendLiteral {
			// Issue 16: a literal count of more than 10 digits (10 GB) is
			// no message; relayed, client and uidgate would wait for it.
			ss.backendProtocolError(rs, line)
			ss.bye(*rs.fatal.Load())
			return nil
		}
		if dropping {
			if has {
				ur.Expect(lit.Size)
				if err := ur.DiscardLiteral(); err != nil {
					return err
				}
			}
			midResponse = has
			if ur.Buffered() == 0 {
				// Nothing more is waiting: what was written must go out.
				if err := ss.toClient(ur, nil, lit, false, true); err != nil {
					return err
				}
			}
			continue
		}
		// After LOGOUT's OK nothing else is read: it goes out now, whatever
		// the backend sent after it.
		if err := ss.toClient(ur, fwd, lit, has, !has && (ur.Buffered() == 0 || logoutDone)); err != nil {
			return err
		}
		midResponse = has
		if logoutDone {
			// RFC 9051 §6.1.3: the connection closes after LOGOUT's OK.
			return nil
		}
	}
}

// toClient writes fwd (flushing if flush) and then, if has, the literal
// lit that fwd announced, streamed from ur. The client writer's mutex is
// given back on any exit: a recovered panic must leave the session able
// to end.
func (ss *session) toClient(ur *imapwire.Reader, fwd []byte, lit imapwire.Literal, has, flush bool) error {
	ss.cw.mu.Lock()
	defer ss.cw.mu.Unlock()
	if len(fwd) > 0 || flush {
		ss.traceLine("R", fwd)
		if err := ss.cw.write(fwd, flush); err != nil {
			return err
		}
		ss.bytesOut.Add(int64(len(fwd)))
	}
	// The response goes on after a literal: nobody else writes until
	// its line ends.
	ss.cw.setMidLocked(has)
	if !has {
		return nil
	}
	ur.Expect(lit.Size)
	n, err := ss.cw.copyLiteral(ur)
	ss.bytesOut.Add(n)
	return err
}

// sendQueued writes a command uidgate decided to send while handling a
// response (the map build after SELECT), outside the state lock.
func (ss *session) sendQueued(rs *relayState) error {
	rs.mu.Lock()
	b := rs.toSend
	rs.toSend = nil
	rs.mu.Unlock()
	if len(b) == 0 {
		return nil
	}
	return ss.writeUp(b, true)
}

// recoverInto turns a panic in a relay goroutine into an error, logged
// with its stack: one session's bug must not end the process.
func (ss *session) recoverInto(err *error) {
	if p := recover(); p != nil {
		ss.log.Error().Interface("panic", p).Bytes("stack", debug.Stack()).Msg("relay panic")
		*err = errors.New("relay panic")
	}
}

// capLine rebuilds a line whose capability list is filtered.
func capLine(out *[]byte, head, caps, tail []byte) []byte {
	b := append((*out)[:0], head...)
	b = append(b, strings.Join(rules.ClientCaps(strings.Fields(string(caps))), " ")...)
	b = append(b, tail...)
	*out = b
	return b
}
