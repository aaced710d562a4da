package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"uidgate/proxy/imapwire"
	"uidgate/rules"
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
)

// selectNameMax bounds a SELECT/EXAMINE mailbox literal read into memory
// to learn the selected mailbox.
const selectNameMax = 4 << 10

type pendingCmd struct {
	kind    cmdKind
	mailbox string
}

// litDecision is the backend's answer to a synchronizing literal sent to a
// backend without LITERAL+: go on, or the command was refused.
type litDecision bool

// relayState is shared by the two relay goroutines under mu.
type relayState struct {
	mu       sync.Mutex
	tags     map[string]pendingCmd
	selected string // mailbox as the client named it; "" when none
	readOnly bool
	exists   uint32
	idleTag  string // IDLE sent, continuation not yet seen
	idling   bool   // backend said "+": the next client line is DONE
	// litWait, when set, is the tag of a command whose synchronizing
	// literal waits for the backend's "+"; litPass says whether that "+"
	// goes to the client (it sent a synchronizing literal itself).
	litWait   string
	litPass   bool
	litCh     chan litDecision
	byeSeen   bool
	logoutTag string // LOGOUT answered: the session ends
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
	rs := &relayState{tags: make(map[string]pendingCmd), litCh: make(chan litDecision, 1)}
	ss.rs = rs
	done := make(chan error, 2)
	go func() { done <- ss.clientToUpstream(rs) }()
	go func() { done <- ss.upstreamToClient(rs) }()
	err := <-done
	// The first to finish closes both sides; the other then returns too.
	if err != nil && !isClosed(err) {
		ss.log.Warn().Err(err).Msg("relay ended")
	}
	ss.closeAll()
	<-done
}

// clientToUpstream forwards the client's commands. It is the only writer
// to the backend connection.
func (ss *session) clientToUpstream(rs *relayState) (err error) {
	defer ss.recoverInto(&err)
	up := ss.up
	uw := bufio.NewWriterSize(up.Conn, writeBufSize)
	literalPlus := up.HasCap("LITERAL+")
	for {
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
		rs.mu.Unlock()
		if idling {
			// RFC 9051 §6.3.13: the line after "+" ends IDLE ("DONE").
			if err := writeUp(uw, line, true); err != nil {
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
		ss.traceCommand(line, cmd.Name)
		if refusal := refused(cmd); refusal != "" {
			if lit, has := imapwire.TrailingLiteral(line); has && !lit.Sync {
				ss.sendf("%s BAD %s", tag, refusal)
				ss.bye("Cannot skip a refused command's literal")
				return nil
			}
			ss.sendf("%s BAD %s", tag, refusal)
			continue
		}
		pc := pendingCmd{kind: kindOf(cmd)}
		if pc.kind == cmdSelect || pc.kind == cmdExamine {
			pc.mailbox, _ = imapwire.NewDecoder(line[cmd.Args:]).AString()
		}
		rs.mu.Lock()
		rs.tags[tag] = pc
		if pc.kind == cmdIdle {
			rs.idleTag = tag
		}
		rs.mu.Unlock()

		// Forward the command: each line, and each literal it announces.
		first := true
		for {
			lit, has := imapwire.TrailingLiteral(line)
			if !has {
				if err := writeUp(uw, line, ss.cr.Buffered() == 0); err != nil {
					return err
				}
				break
			}
			if lit.Size > ss.srv.maxLiteral() {
				if !first {
					// Earlier parts are with the backend already; the
					// command cannot be withdrawn, so the session ends.
					ss.sendf("%s NO [TOOBIG] Literal too large", tag)
					ss.bye("Literal too large")
					return nil
				}
				rs.forget(tag)
				if !lit.Sync {
					ss.endOnReadError(errLiteralTooBig, line)
					return nil
				}
				// RFC 9051 §7.1: no "+" was sent, so the client sends nothing.
				ss.sendf("%s NO [TOOBIG] Literal too large", tag)
				break
			}
			if (pc.kind == cmdSelect || pc.kind == cmdExamine) && first && lit.Size <= selectNameMax {
				name, err := ss.readSmallLiteral(lit)
				if err != nil {
					return err
				}
				pc.mailbox = string(name)
				rs.mu.Lock()
				rs.tags[tag] = pc
				rs.mu.Unlock()
				if err := ss.forwardLiteral(rs, uw, tag, line, lit, literalPlus, bytes.NewReader(name)); err != nil {
					return err
				}
			} else {
				if lit.Sync && literalPlus {
					ss.sendf("+ Ready for literal")
				}
				if err := ss.forwardLiteral(rs, uw, tag, line, lit, literalPlus, nil); err != nil {
					return err
				}
			}
			first = false
			if line, err = ss.cr.ReadLine(); err != nil {
				ss.endOnReadError(err, line)
				return err
			}
			ss.bytesIn.Add(int64(len(line)))
		}
	}
}

// readSmallLiteral reads a literal the relay needs to see, answering "+"
// first when the client waits for it.
func (ss *session) readSmallLiteral(lit imapwire.Literal) ([]byte, error) {
	if lit.Sync {
		ss.sendf("+ Ready for literal")
	}
	ss.cr.Expect(lit.Size)
	b, err := ss.cr.ReadLiteral(nil)
	ss.bytesIn.Add(int64(len(b)))
	return b, err
}

// forwardLiteral sends line (ending in a literal announcement) upstream,
// then the literal's bytes: from body if set, else streamed from the
// client. With LITERAL+ upstream every literal goes non-synchronizing
// (RFC 7888); otherwise the backend's "+" is awaited. If the backend
// refuses instead, the literal and the rest of the command are read from
// the client and dropped: the refusal already went to the client.
func (ss *session) forwardLiteral(rs *relayState, uw *bufio.Writer, tag string, line []byte, lit imapwire.Literal, literalPlus bool, body io.Reader) error {
	out := lit
	out.Sync = !literalPlus
	buf := append(append([]byte(nil), line[:lit.Start]...), imapwire.AppendLiteralHeader(nil, out)...)
	if out.Sync {
		rs.mu.Lock()
		rs.litWait, rs.litPass = tag, lit.Sync && body == nil
		rs.mu.Unlock()
	}
	if err := writeUp(uw, buf, true); err != nil {
		return err
	}
	if out.Sync {
		select {
		case ok := <-rs.litCh:
			if !ok {
				return ss.discardRest(lit, body)
			}
		case <-ss.done:
			return net.ErrClosed
		}
	}
	if body != nil {
		_, err := io.Copy(uw, body)
		return err
	}
	if err := uw.Flush(); err != nil {
		return err
	}
	ss.cr.Expect(lit.Size)
	n, err := ss.cr.CopyLiteral(ss.up.Conn)
	ss.bytesIn.Add(n)
	return err
}

// discardRest drops a refused command's remaining bytes from the client.
func (ss *session) discardRest(lit imapwire.Literal, body io.Reader) error {
	if body == nil {
		ss.cr.Expect(lit.Size)
		if err := ss.cr.DiscardLiteral(); err != nil {
			return err
		}
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

func writeUp(uw *bufio.Writer, b []byte, flush bool) error {
	if _, err := uw.Write(b); err != nil {
		return err
	}
	if flush {
		return uw.Flush()
	}
	return nil
}

func (rs *relayState) forget(tag string) {
	rs.mu.Lock()
	delete(rs.tags, tag)
	rs.mu.Unlock()
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
	case imapwire.EqualFold(cmd.Name, "AUTHENTICATE"), imapwire.EqualFold(cmd.Name, "LOGIN"):
		// RFC 9051 §6.2: only valid in the not-authenticated state.
		return "Already authenticated"
	}
	return ""
}

func kindOf(cmd imapwire.Command) cmdKind {
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
	}
	return cmdOther
}

// upstreamToClient forwards the backend's responses, tracking state and
// filtering capabilities. It is the only reader of the backend.
func (ss *session) upstreamToClient(rs *relayState) (err error) {
	defer ss.recoverInto(&err)
	ur := ss.up.R
	midResponse := false // the previous line announced a literal
	var out []byte
	for {
		line, err := ur.ReadLine()
		if err != nil {
			rs.mu.Lock()
			bye := rs.byeSeen
			rs.mu.Unlock()
			if !bye && !midResponse && !ss.closing.Load() {
				if errors.Is(err, imapwire.ErrLineTooLong) {
					ss.log.Warn().Msg("backend line too long")
				}
				ss.bye("[UNAVAILABLE] Backend connection lost")
			}
			return err
		}
		literalOK := true
		fwd := line
		logoutDone := false
		if !midResponse {
			resp, ok := imapwire.ParseResponse(line)
			if ok {
				var skip bool
				fwd, skip = ss.onResponse(rs, &resp, line, &out)
				if skip {
					continue
				}
				logoutDone = resp.Kind == imapwire.RespTagged && rs.isLogoutTag(resp.Tag)
				literalOK = resp.MayAnnounceLiteral()
			}
		}
		lit, has := imapwire.TrailingLiteral(line)
		has = has && literalOK
		ss.cw.mu.Lock()
		werr := ss.cw.write(fwd, !has && ur.Buffered() == 0)
		ss.bytesOut.Add(int64(len(fwd)))
		if has && werr == nil {
			werr = ss.cw.bw.Flush()
			if werr == nil {
				ss.cw.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
				ur.Expect(lit.Size)
				var n int64
				n, werr = ur.CopyLiteral(ss.cw.conn)
				ss.bytesOut.Add(n)
			}
			if werr != nil {
				ss.cw.err = werr
			}
		}
		ss.cw.mu.Unlock()
		if werr != nil {
			return werr
		}
		midResponse = has
		if logoutDone {
			// RFC 9051 §6.1.3: the connection closes after LOGOUT's OK.
			return nil
		}
	}
}

// onResponse updates the session state from the first line of a backend
// response and returns the bytes to forward; skip drops the line.
func (ss *session) onResponse(rs *relayState, r *imapwire.Response, line []byte, out *[]byte) (fwd []byte, skip bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	switch r.Kind {
	case imapwire.RespContinuation:
		if rs.litWait != "" {
			pass := rs.litPass
			rs.litWait = ""
			rs.litCh <- true
			return line, !pass
		}
		if rs.idleTag != "" {
			rs.idleTag = ""
			rs.idling = true
		}
		return line, false
	case imapwire.RespUntagged:
		switch {
		case r.HasNum && imapwire.EqualFold(r.Name, "EXISTS"):
			rs.exists = r.Num
		case r.HasNum && imapwire.EqualFold(r.Name, "EXPUNGE"):
			if rs.exists > 0 {
				rs.exists--
			}
		case imapwire.EqualFold(r.Name, "CAPABILITY"):
			return capLine(out, line[:r.After], imapwire.TrimEOL(line[r.After:]), line[len(imapwire.TrimEOL(line)):]), false
		case imapwire.EqualFold(r.Name, "BYE"):
			rs.byeSeen = true
		}
		if imapwire.EqualFold(r.Code, "CLOSED") {
			// RFC 7162 §3.2.11: the previously selected mailbox is closed.
			rs.selected, rs.readOnly = "", false
		}
	case imapwire.RespTagged:
		tag := string(r.Tag)
		pc, known := rs.tags[tag]
		delete(rs.tags, tag)
		if rs.litWait == tag {
			rs.litWait = ""
			rs.litCh <- false
		}
		if known {
			ok := imapwire.EqualFold(r.Name, "OK")
			switch pc.kind {
			case cmdSelect, cmdExamine:
				if ok {
					rs.selected = pc.mailbox
					rs.readOnly = pc.kind == cmdExamine || imapwire.EqualFold(r.Code, "READ-ONLY")
				} else if imapwire.EqualFold(r.Name, "NO") {
					// RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected.
					rs.selected, rs.readOnly = "", false
				}
			case cmdClose, cmdUnselect:
				if ok {
					rs.selected, rs.readOnly = "", false
				}
			case cmdIdle:
				if rs.idleTag == tag {
					rs.idleTag = ""
				}
				rs.idling = false
			case cmdLogout:
				rs.byeSeen = true
				rs.logoutTag = tag
			}
		}
	}
	if imapwire.EqualFold(r.Code, "CAPABILITY") && len(r.CodeArgs) > 0 {
		return capLine(out, line[:r.CodeStart+1+len("CAPABILITY ")], r.CodeArgs, line[r.CodeEnd-1:]), false
	}
	return line, false
}

// capLine rebuilds a line whose capability list is filtered.
func capLine(out *[]byte, head, caps, tail []byte) []byte {
	b := append((*out)[:0], head...)
	b = append(b, strings.Join(rules.ClientCaps(strings.Fields(string(caps))), " ")...)
	b = append(b, tail...)
	*out = b
	return b
}

// recoverInto turns a panic in a relay goroutine into an error, logged
// with its stack: one session's bug must not end the process.
func (ss *session) recoverInto(err *error) {
	if p := recover(); p != nil {
		ss.log.Error().Interface("panic", p).Bytes("stack", debug.Stack()).Msg("relay panic")
		*err = errors.New("relay panic")
	}
}
