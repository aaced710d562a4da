package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"uidgate/proxy/imapwire"
	"uidgate/rules"
	"uidgate/upstream"
)

const (
	// preauthMaxLiteral bounds literals before login (user names and
	// passwords); nothing larger is legitimate there.
	preauthMaxLiteral = 8 << 10
	// preauthMaxCommand bounds a whole pre-auth command with its literals.
	// RFC 2971 §3.3 lets an ID list hold 30 pairs of a 30-octet field and
	// a 1024-octet value (about 32 KB quoted); Dovecot takes that before
	// login, so uidgate must too.
	preauthMaxCommand = 40 << 10
	// traceMax bounds a traced line.
	traceMax = 512
)

// session is one client connection, before and after login.
type session struct {
	srv    *Server
	lis    Listener
	id     uint64
	remote string
	ip     string // the client's address, for per-address limits
	// remoteAddr, localAddr: the client's connection (as told by a
	// trusted PROXY header, if any).
	remoteAddr, localAddr net.Addr
	start                 time.Time
	log                   zerolog.Logger
	conn                  net.Conn // the client, TLS-wrapped once secured
	rawConn               net.Conn // the client's connection as accepted (watchClient)
	cr                    *imapwire.Reader
	cw                    *syncWriter
	tlsOn                 bool
	user                  string
	backend               string
	up                    *upstream.Conn
	bad                   int
	rs                    *relayState
	legacy                bool // the backend's numbers are never trusted
	// explicitSeen: non-PEEK body fetches go as .PEEK plus a STORE \Seen.
	explicitSeen   bool
	cyrusNamespace bool
	// ignoreOutOfRange: numbers beyond the view are answered as Cyrus
	// does (outOfRange), not BAD.
	ignoreOutOfRange bool
	uw               *flushWriter // to the backend, under upMu
	upMu             sync.Mutex
	// upWrites counts writes to the backend's socket; each carries the
	// acknowledgement of what the backend sent before it (quickAcker).
	upWrites atomic.Uint64
	done     chan struct{} // closed when the session is torn down
	// ctx ends with done (cancelled by closeAll), for waits that take a
	// context.
	ctx       context.Context
	cancelCtx context.CancelFunc
	closing   atomic.Bool
	connMu    sync.Mutex // guards conn and up against closeAll from elsewhere

	// renameCont: the FETCH response being relayed had RFC822 items
	// fetched under other names; its lines after a literal are renamed
	// too. Only the backend reader uses it.
	renameCont bool
	// heldBytes: the bytes of the SELECT responses held (onSelecting).
	// Only the backend reader uses it.
	heldBytes int

	bytesIn, bytesOut atomic.Int64 // client→uidgate, uidgate→client
	closeOnce         sync.Once
	view              sessionView // what the admin view shows (admin.go)
	info              sessionInfo // for the "session end" line (sessionlog.go)
}

func newSession(s *Server, c net.Conn, l Listener) *session {
	id := s.nextID.Add(1)
	ss := &session{
		srv:        s,
		lis:        l,
		id:         id,
		remote:     c.RemoteAddr().String(),
		ip:         hostOf(c.RemoteAddr()),
		remoteAddr: c.RemoteAddr(),
		localAddr:  c.LocalAddr(),
		start:      time.Now(),
		conn:       c,
		rawConn:    c,
		done:       make(chan struct{}),
	}
	ss.ctx, ss.cancelCtx = context.WithCancel(context.Background())
	ss.log = s.logger().With().Str("cid", cid(id)).Str("remote", ss.remote).Str("listener", l.Name).Logger()
	ss.cr = imapwire.NewReader(c, s.maxLine())
	ss.cw = newSyncWriter(c)
	return ss
}

// syncWriter is the one writer of the client stream. The upstream
// goroutine relays the backend's responses through it; everything else
// (uidgate's own "+", tagged answers to commands it does not send, BYE)
// is handed to send as a whole response and written only at a response
// boundary: never inside a relayed response that continues after a
// literal (RFC 9051 §2.2.2: a response is the line, its literals and the
// rest of the line).
type syncWriter struct {
	mu   sync.Mutex
	conn net.Conn
	fw   *flushWriter // to deadlineWriter{conn}
	err  error
	// mid: a relayed response is half written (a literal or the rest of
	// its line follows); send waits on boundary until it ends.
	mid      bool
	closed   bool
	boundary sync.Cond
}

func newSyncWriter(c net.Conn) *syncWriter {
	w := &syncWriter{conn: c, fw: newFlushWriter(deadlineWriter{c})}
	w.boundary.L = &w.mu
	return w
}

// setMidLocked records whether the relayed response written last goes on
// after what was written. Must hold mu.
func (w *syncWriter) setMidLocked(mid bool) {
	w.mid = mid
	if !mid {
		w.boundary.Broadcast()
	}
}

// close wakes every send waiting for a boundary: the session is over.
// Called once the connections are closed, so no copy holds mu for long.
func (w *syncWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.boundary.Broadcast()
	w.mu.Unlock()
}

// write writes b, flushing if flush is set. Must hold mu.
func (w *syncWriter) write(b []byte, flush bool) error {
	if w.err != nil {
		return w.err
	}
	if _, err := w.fw.Write(b); err != nil {
		w.err = err
		return err
	}
	if flush {
		w.err = w.fw.Flush()
	}
	return w.err
}

// reset makes w write to c (after STARTTLS). Must hold mu.
func (w *syncWriter) reset(c net.Conn) {
	w.conn = c
	w.fw.Reset(deadlineWriter{c})
}

// deadlineWriter bounds every write to a peer that does not read.
type deadlineWriter struct{ c net.Conn }

func (d deadlineWriter) Write(p []byte) (int, error) {
	d.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	return d.c.Write(p)
}

// spliceStep is how much of a long literal is copied per write deadline.
const spliceStep = 1 << 20

// ReadFrom copies r to the connection in steps, each with a fresh
// deadline, through the connection's own ReadFrom (splice on Linux, which
// needs an *io.LimitedReader directly over the socket: so a LimitedReader
// is unwrapped, not wrapped again).
func (d deadlineWriter) ReadFrom(r io.Reader) (int64, error) {
	src, limit := r, int64(-1)
	lr, limited := r.(*io.LimitedReader)
	if limited {
		if lr.N <= 0 {
			return 0, nil // as io.LimitedReader: nothing left to read
		}
		src, limit = lr.R, lr.N
	}
	var total int64
	defer func() {
		if limited {
			lr.N -= total
		}
	}()
	for limit != 0 {
		step := int64(spliceStep)
		if limit > 0 && limit < step {
			step = limit
		}
		d.c.SetWriteDeadline(time.Now().Add(writeTimeout))
		n, err := io.CopyN(d.c, src, step)
		total += n
		if limit > 0 {
			limit -= n
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// send writes one complete response of uidgate's own at the next response
// boundary, and flushes.
func (w *syncWriter) send(b []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.mid && !w.closed {
		w.boundary.Wait()
	}
	if w.closed {
		return net.ErrClosed
	}
	return w.write(b, true)
}

func (ss *session) sendf(format string, args ...any) error {
	b := fmt.Appendf(nil, format, args...)
	ss.traceLine("R", b)
	ss.bytesOut.Add(int64(len(b) + 2))
	return ss.cw.send(append(b, '\r', '\n'))
}

func (ss *session) closeAll() {
	ss.closeOnce.Do(func() {
		ss.closing.Store(true)
		close(ss.done)
		ss.cancelCtx()
		ss.connMu.Lock()
		c, up := ss.conn, ss.up
		ss.connMu.Unlock()
		c.Close()
		if up != nil {
			up.Close()
		}
		ss.cw.close()
	})
}

// bye tells the client the session ends and closes it.
func (ss *session) bye(text string) {
	ss.ending(byeReason(text), text)
	ss.sendf("* BYE %s", text)
	ss.lingerClose()
}

// byeLinger bounds how long a closing session reads and drops what the
// client still sends, after BYE.
const byeLinger = 2 * time.Second

// lingerClose ends the session so that the client can read everything it
// was sent: closing a socket that holds unread input makes the kernel send
// a reset, and the client may then lose the BYE. So: the write side is
// shut (FIN after the BYE), the backend closed, and the client's input
// drained until it closes or byeLinger passes.
func (ss *session) lingerClose() {
	ss.closing.Store(true) // what follows is our doing, not the backend's
	ss.connMu.Lock()
	c, up := ss.conn, ss.up
	ss.connMu.Unlock()
	if up != nil {
		up.Close()
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		// The read deadline alone is no bound: the client goroutine may
		// set its own on the same socket (TestSessionEndLine/backend_gone
		// lingered until the client closed).
		t := time.AfterFunc(byeLinger, ss.closeAll)
		c.SetReadDeadline(time.Now().Add(byeLinger))
		io.Copy(io.Discard, io.LimitReader(c, 1<<20))
		t.Stop()
	}
	ss.closeAll()
}

func (ss *session) run(ctx context.Context) {
	ss.log.Debug().Msg("connect")
	defer ss.closeAll() // ServeConn logs "session end"
	if ss.lis.TLS == upstream.TLSImplicit {
		ss.conn.SetDeadline(time.Now().Add(ss.srv.preauthTimeout()))
		tc, ok := ss.handshake(ctx)
		if !ok {
			return
		}
		ss.setConn(tc)
	}
	ss.log.Info().Msg("session start")
	ss.srv.Metrics.sessionStart(ss.lis.Name)
	defer func() { ss.srv.Metrics.sessionEnd(ss.lis.Name, ss.bytesIn.Load(), ss.bytesOut.Load()) }()
	if !ss.preauth(ctx) {
		return
	}
	ss.relay(ctx)
}

func (ss *session) setConn(c net.Conn) {
	ss.connMu.Lock()
	ss.conn = c
	ss.connMu.Unlock()
	ss.tlsOn = true
	ss.cr.Reset(c)
	ss.cw.mu.Lock()
	ss.cw.reset(c)
	ss.cw.mu.Unlock()
}

// preCaps returns the capabilities before login (RFC 9051 §6.1.1).
func (ss *session) preCaps() string {
	caps := "IMAP4rev1 LITERAL+ SASL-IR ID"
	if ss.lis.TLS == upstream.TLSStartTLS && !ss.tlsOn {
		caps += " STARTTLS"
	}
	if ss.loginDisabled() {
		// RFC 9051 §6.2.3: LOGINDISABLED, and no AUTH= mechanism that would
		// send a password in the clear.
		return caps + " LOGINDISABLED"
	}
	return caps + " AUTH=PLAIN AUTH=LOGIN"
}

func (ss *session) loginDisabled() bool { return ss.lis.RequireTLS && !ss.tlsOn }

// preauth answers commands until a login succeeds (true) or the session
// must end (false).
func (ss *session) preauth(ctx context.Context) bool {
	// preauth_timeout bounds connect to login, whatever is sent meanwhile:
	// a NOOP now and then must not keep an anonymous connection (issue 16).
	end := ss.start.Add(ss.srv.preauthTimeout())
	ss.conn.SetDeadline(end)
	if ss.sendf("* OK [CAPABILITY %s] uidgate ready", ss.preCaps()) != nil {
		return false
	}
	var buf []byte
	for {
		cmd, err := ss.readPreauthCommand(buf[:0])
		buf = cmd
		if err != nil {
			ss.endOnReadError(err, cmd)
			return false
		}
		if cmd == nil {
			continue // answered already (e.g. literal refused)
		}
		d := imapwire.NewDecoder(cmd)
		tag, ok := d.Tag()
		if !ok || !d.SP() {
			if !ss.badCommand("*", "Missing tag") {
				return false
			}
			continue
		}
		name, _ := d.Atom()
		t := string(tag)
		ss.traceCommand(cmd, name, true)
		switch {
		case imapwire.EqualFold(name, "CAPABILITY") && d.EOL():
			ss.sendf("* CAPABILITY %s", ss.preCaps())
			ss.sendf("%s OK CAPABILITY completed", t)
		case imapwire.EqualFold(name, "NOOP") && d.EOL():
			ss.sendf("%s OK NOOP completed", t)
		case imapwire.EqualFold(name, "LOGOUT") && d.EOL():
			ss.ending(reasonLogout, "")
			ss.sendf("* BYE uidgate logging out")
			ss.sendf("%s OK LOGOUT completed", t)
			return false
		case imapwire.EqualFold(name, "ID"):
			// RFC 2971 §3.1: answer with our own identification.
			ss.sendf(`* ID ("name" "uidgate")`)
			ss.sendf("%s OK ID completed", t)
		case imapwire.EqualFold(name, "STARTTLS") && d.EOL():
			if !ss.startTLS(ctx, t) {
				return false
			}
		case imapwire.EqualFold(name, "LOGIN"):
			d.SP()
			user, ok1 := d.ExpectAString()
			d.ExpectSP()
			pass, ok2 := d.ExpectAString()
			d.ExpectCRLF()
			if !ok1 || !ok2 || d.Err() != nil {
				if !ss.badCommand(t, "LOGIN expects user name and password") {
					return false
				}
				continue
			}
			if ss.loginDisabled() {
				ss.sendf("%s NO [PRIVACYREQUIRED] LOGIN needs STARTTLS first", t)
				continue
			}
			ss.info.auth = "LOGIN"
			if ss.login(ctx, t, user, pass) {
				return true
			}
		case imapwire.EqualFold(name, "AUTHENTICATE"):
			d.SP()
			mech, _ := d.Atom()
			var ir []byte
			hasIR := d.SP()
			if hasIR {
				ir, _ = d.Atom()
			}
			if !d.EOL() || len(mech) == 0 {
				if !ss.badCommand(t, "AUTHENTICATE expects a mechanism") {
					return false
				}
				continue
			}
			if ss.loginDisabled() {
				ss.sendf("%s NO [PRIVACYREQUIRED] AUTHENTICATE needs STARTTLS first", t)
				continue
			}
			user, pass, ok, alive := ss.authenticate(t, string(mech), hasIR, string(ir))
			if !alive {
				return false
			}
			ss.info.auth = "AUTHENTICATE " + strings.ToUpper(string(mech))
			if ok && ss.login(ctx, t, user, pass) {
				return true
			}
		default:
			// RFC 9051 §6: only these commands are valid before login.
			if !ss.badCommand(t, "Command not valid before login") {
				return false
			}
		}
		ss.conn.SetDeadline(end) // STARTTLS may have replaced the connection
	}
}

// badCommand answers BAD and reports whether the session may go on: after
// MaxBadCommands bad commands the session ends with BYE.
func (ss *session) badCommand(tag, text string) bool {
	ss.bad++
	ss.sendf("%s BAD %s", tag, text)
	if ss.bad >= ss.srv.maxBad() {
		ss.bye("Too many bad commands")
		return false
	}
	return true
}

// endOnReadError answers a failed read where an answer is still possible.
func (ss *session) endOnReadError(err error, partial []byte) {
	switch {
	case errors.Is(err, imapwire.ErrLineTooLong):
		tag := tagOf(partial)
		ss.sendf("%s BAD Line too long", tag)
		ss.bye("Line too long")
	case errors.Is(err, errCommandTooLong):
		ss.sendf("%s BAD Command too long", tagOf(partial))
		ss.bye("Command too long")
	case errors.Is(err, errLiteralTooBig):
		// The client sends a non-synchronizing literal's bytes without
		// waiting; they cannot be skipped unread, so the session ends
		// (RFC 7888 §4).
		ss.sendf("%s BAD [TOOBIG] Literal too large", tagOf(partial))
		ss.bye("Literal too large")
	case isTimeout(err):
		ss.bye("Autologout; idle for too long")
	default:
		ss.log.Debug().Err(err).Msg("client read")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isClosed reports the errors of a connection that went away, which are
// not worth more than a debug line.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrDeadlineExceeded)
}

// tagOf returns the tag at the start of a (partial) command, or "*".
func tagOf(line []byte) string {
	d := imapwire.NewDecoder(line)
	if tag, ok := d.Tag(); ok && d.SP() {
		return string(tag)
	}
	return "*"
}

var (
	errCommandTooLong = errors.New("command too long")
	errLiteralTooBig  = errors.New("non-synchronizing literal too big")
)

// readPreauthCommand reads one whole command with its literals inline,
// answering "+" to synchronizing literals. It returns nil (no error) when
// it refused a synchronizing literal and answered the command.
func (ss *session) readPreauthCommand(buf []byte) ([]byte, error) {
	for {
		line, err := ss.cr.ReadLine()
		if err != nil {
			return append(buf, line...), err
		}
		ss.bytesIn.Add(int64(len(line)))
		buf = append(buf, line...)
		if len(buf) > preauthMaxCommand {
			return buf, errCommandTooLong
		}
		lit, ok := imapwire.TrailingLiteral(line)
		if !ok {
			return buf, nil
		}
		if lit.Size > preauthMaxLiteral {
			if !lit.Sync {
				return buf, errLiteralTooBig
			}
			ss.sendf("%s NO [TOOBIG] Literal too large", tagOf(buf))
			return nil, nil
		}
		if lit.Sync {
			ss.sendf("+ Ready for literal")
		}
		ss.cr.Expect(lit.Size)
		if buf, err = ss.cr.ReadLiteral(buf); err != nil {
			return buf, err
		}
		ss.bytesIn.Add(lit.Size)
	}
}

// traceCommand logs a client command at trace level, never a password.
func (ss *session) traceCommand(cmd, name []byte, preauth bool) {
	if e := ss.log.Trace(); e.Enabled() {
		// Redaction by position, not by parse (issue 16: "a  LOGIN u p",
		// two spaces, once went out whole): a line whose command word is
		// not known harmless — before login, anything but CAPABILITY,
		// NOOP, LOGOUT, STARTTLS and ID — is logged as tag and word only.
		harmless := len(name) > 0 && !imapwire.EqualFold(name, "LOGIN") && !imapwire.EqualFold(name, "AUTHENTICATE")
		if preauth {
			harmless = harmless && (imapwire.EqualFold(name, "CAPABILITY") || imapwire.EqualFold(name, "NOOP") ||
				imapwire.EqualFold(name, "LOGOUT") || imapwire.EqualFold(name, "STARTTLS") || imapwire.EqualFold(name, "ID"))
		}
		if !harmless {
			e.Str("C", tagOf(cmd)+" "+strings.ToUpper(string(name))+" <redacted>").Send()
			return
		}
		b := imapwire.TrimEOL(cmd)
		if len(b) > traceMax {
			b = b[:traceMax]
		}
		e.Bytes("C", b).Send()
	}
}

// traceLine logs a response line at trace level under key: "S" as the
// backend sent it, "R" as the client is sent it. Responses carry no
// password (a LOGIN's arguments are never echoed), so they go out whole,
// up to traceMax.
func (ss *session) traceLine(key string, line []byte) {
	if e := ss.log.Trace(); e.Enabled() && len(line) > 0 {
		e.Bytes(key, imapwire.TrimEOL(line[:min(len(line), traceMax)])).Send()
	}
}

func (ss *session) startTLS(ctx context.Context, tag string) bool {
	if ss.lis.TLS != upstream.TLSStartTLS || ss.tlsOn {
		// RFC 9051 §6.2.1: STARTTLS is only valid when advertised.
		return ss.badCommand(tag, "STARTTLS not available")
	}
	ss.sendf("%s OK Begin TLS negotiation now", tag)
	if ss.cr.Buffered() > 0 {
		// Bytes pipelined after STARTTLS would be injected into the secured
		// session (CVE-2011-0411 class); refuse them.
		ss.bye("Data after STARTTLS")
		return false
	}
	tc, ok := ss.handshake(ctx)
	if !ok {
		return false
	}
	ss.setConn(tc)
	return true
}

// authenticate runs a SASL exchange (RFC 9051 §6.2.2, RFC 4959 SASL-IR)
// for PLAIN (RFC 4616) or LOGIN. ok reports credentials obtained; alive
// false means the session must end.
func (ss *session) authenticate(tag, mech string, hasIR bool, ir string) (user, pass string, ok, alive bool) {
	step := func(challenge string) (string, bool, bool) {
		if ss.sendf("+ %s", challenge) != nil {
			return "", false, false
		}
		line, err := ss.cr.ReadLine()
		if err != nil {
			// The answer carries the AUTHENTICATE's tag, not "*".
			ss.endOnReadError(err, []byte(tag+" "))
			return "", false, false
		}
		ss.bytesIn.Add(int64(len(line)))
		resp := string(imapwire.TrimEOL(line))
		if resp == "*" {
			// RFC 9051 §6.2.2: "*" cancels the exchange.
			ss.sendf("%s BAD AUTHENTICATE cancelled", tag)
			return "", false, true
		}
		return resp, true, true
	}
	decode := func(s string) ([]byte, bool) {
		if s == "=" {
			return nil, true // RFC 4959 §3: empty initial response
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			ss.sendf("%s BAD Invalid base64", tag)
			return nil, false
		}
		return b, true
	}
	switch strings.ToUpper(mech) {
	case "PLAIN":
		resp := ir
		if !hasIR {
			var more bool
			if resp, more, alive = step(""); !more {
				return "", "", false, alive
			}
		}
		b, good := decode(resp)
		if !good {
			return "", "", false, true
		}
		parts := strings.Split(string(b), "\x00")
		if len(parts) != 3 || parts[1] == "" {
			ss.sendf("%s BAD Malformed PLAIN response", tag)
			return "", "", false, true
		}
		if parts[0] != "" && parts[0] != parts[1] {
			ss.sendf("%s NO [AUTHORIZATIONFAILED] Proxy authorization is not supported", tag)
			return "", "", false, true
		}
		return parts[1], parts[2], true, true
	case "LOGIN":
		var resp string
		var more bool
		if hasIR {
			resp = ir
		} else if resp, more, alive = step(base64.StdEncoding.EncodeToString([]byte("Username:"))); !more {
			return "", "", false, alive
		}
		u, good := decode(resp)
		if !good {
			return "", "", false, true
		}
		if resp, more, alive = step(base64.StdEncoding.EncodeToString([]byte("Password:"))); !more {
			return "", "", false, alive
		}
		p, good := decode(resp)
		if !good {
			return "", "", false, true
		}
		return string(u), string(p), true, true
	default:
		ss.sendf("%s NO [CANNOT] Unsupported authentication mechanism", tag)
		return "", "", false, true
	}
}

// login routes user, dials the backend and logs in there. It answers the
// client either way and reports success.
func (ss *session) login(ctx context.Context, tag, user, pass string) bool {
	// The rate decision comes first, before the password goes anywhere:
	// it is the same whatever the password, and takes no backend's time.
	if which := ss.srv.loginAllowed(ss.ip, user); which != "" {
		ss.log.Info().Str("user", user).Str("limit", which).Msg("login rate limited")
		ss.srv.Metrics.login("", "rate_limited", 0)
		ss.sendf("%s NO [UNAVAILABLE] Too many logins, try again later", tag)
		return false
	}
	release, ok := ss.srv.loginTurn(ss.ip, ss.done)
	if !ok {
		return false
	}
	defer release()
	b, ok := ss.route(tag, user, pass) // answers the client if not ok (route.go)
	if !ok {
		return false
	}
	log := ss.log.With().Str("user", user).Str("backend", b.Name).Logger()
	t0 := time.Now()
	up, err := upstream.Dial(ctx, b, upstream.Client{Addr: ss.remoteAddr, Local: ss.localAddr})
	if err != nil {
		log.Warn().Err(err).Msg("backend unavailable")
		ss.srv.Metrics.login(b.Name, "unavailable", 0)
		ss.sendf("%s NO [UNAVAILABLE] Backend unavailable, try again later", tag)
		return false
	}
	st, err := up.Login(ctx, user, pass)
	if err != nil {
		up.Close()
		log.Warn().Err(err).Msg("backend login failed")
		ss.srv.Metrics.login(b.Name, "unavailable", 0)
		ss.sendf("%s NO [UNAVAILABLE] Backend unavailable, try again later", tag)
		return false
	}
	if !st.OK() {
		up.Close()
		log.Info().Str("status", st.Name).Msg("login refused by backend")
		ss.srv.loginFailed(ss.ip)
		ss.srv.Metrics.login(b.Name, "failed", time.Since(t0))
		code := st.Code
		if code == "" {
			code = "AUTHENTICATIONFAILED"
		}
		ss.sendf("%s NO [%s] %s", tag, code, sanitizeText(st.Text, pass))
		return false
	}
	ss.connMu.Lock()
	ss.up = up
	ss.connMu.Unlock()
	if ss.closing.Load() {
		up.Close()
		return false
	}
	ss.user, ss.backend = user, b.Name
	ss.view.setLogin(user, b.Name)
	ss.legacy = b.Legacy
	ss.explicitSeen = b.ExplicitSeen
	ss.cyrusNamespace = b.CyrusNamespace
	ss.ignoreOutOfRange = b.IgnoreOutOfRange
	ss.log = log
	log.Info().Str("auth", ss.info.auth).Int64("login_ms", time.Since(t0).Milliseconds()).Msg("logged in")
	ss.srv.Metrics.login(b.Name, "ok", time.Since(t0))
	ss.srv.loginSucceeded(ss.ip)
	caps := rules.ClientCaps(up.Caps)
	ss.sendf("%s OK [CAPABILITY %s] %s", tag, strings.Join(caps, " "), sanitizeText(st.Text, pass))
	return true
}

// sanitizeText keeps a backend's resp-text fit to relay: one line, and
// never containing the password it was given.
func sanitizeText(text, pass string) string {
	text = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, text)
	if pass != "" && strings.Contains(text, pass) {
		text = strings.ReplaceAll(text, pass, "<redacted>")
	}
	if text == "" {
		text = "done"
	}
	return text
}
