package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"time"

	"uidgate/proxy/imapwire"
	"uidgate/proxy/locks"
	"uidgate/rules"
)

// DefaultLockTimeout bounds the wait for a mailbox or seen lock.
const DefaultLockTimeout = 30 * time.Second

func (s *Server) lockTimeout() time.Duration {
	if s.LockTimeout > 0 {
		return s.LockTimeout
	}
	return DefaultLockTimeout
}

// locks returns the lock manager: Locks, or one in-process Memory shared
// by the server's sessions.
func (s *Server) locks() locks.Manager {
	if s.Locks != nil {
		return s.Locks
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.memLocks == nil {
		s.memLocks = &locks.Memory{}
	}
	return s.memLocks
}

// canonical names a mailbox of this session's backend for lock keys.
func (ss *session) canonical(name string) string {
	if name == "" {
		return ""
	}
	if ss.cyrusNamespace {
		return rules.CanonicalMailbox(ss.user, name, '.', true)
	}
	// Without a known shared namespace, a name is the user's own mailbox:
	// alice's INBOX and bob's INBOX are different mailboxes and must not
	// share a lock (that serialized every user's STOREs behind one key).
	return ss.user + "/" + rules.CanonicalMailbox(ss.user, name, '/', false)
}

// lock takes the keys req needs. It never holds anything while waiting on
// the client: it is called once the whole command has been read.
func (ss *session) lock(req rules.LockRequest) (func(), error) {
	req.Backend, req.User = ss.backend, ss.user
	keys := ss.srv.Serialization.LockKeys(req)
	if len(keys) == 0 {
		return nil, nil
	}
	mgr := ss.srv.locks()
	owner := ss.lockOwner(req) // for the admin view (admin.go)
	if try, ok := mgr.(locks.OwnedTryAcquirer); ok {
		// Uncontended: no timer, no wait.
		if release, ok := try.TryAcquireAs(owner, keys); ok {
			ss.srv.Metrics.lockWaited(0, false)
			return release, nil
		}
	} else if try, ok := mgr.(locks.TryAcquirer); ok {
		if release, ok := try.TryAcquire(keys); ok {
			ss.srv.Metrics.lockWaited(0, false)
			return release, nil
		}
	}
	// The holder may be this session's own command, still in the buffer.
	if err := ss.flushUp(); err != nil {
		return nil, err
	}
	// The wait ends early if the session does (ss.ctx), and the session
	// ends if the client goes meanwhile.
	ctx, cancel := context.WithTimeout(locks.WithOwner(ss.ctx, owner), ss.srv.lockTimeout())
	defer cancel()
	defer ss.watchClient(ss.cr.Buffered())()
	t0 := time.Now()
	release, err := ss.acquire(ctx, mgr, keys)
	ss.srv.Metrics.lockWaited(time.Since(t0), errors.Is(err, locks.ErrTimeout))
	if d := time.Since(t0); d > 100*time.Millisecond {
		ss.log.Debug().Strs("keys", keys).Dur("waited", d).Msg("lock wait")
	}
	return release, err
}

// lockFailed answers a command whose locks could not be had: nothing was
// sent upstream.
func (ss *session) lockFailed(tag string, err error) error {
	if errors.Is(err, locks.ErrTimeout) {
		select {
		case <-ss.done:
			return errors.New("session closed while waiting for a lock")
		default:
		}
		ss.log.Warn().Err(err).Msg("lock timeout")
		ss.sendf("%s NO [INUSE] Mailbox in use by another session, try again", tag)
		return nil
	}
	if errors.Is(err, locks.ErrUnavailable) {
		// Fail closed: the command would go up unserialized (RFC 5530
		// UNAVAILABLE: a subsystem is down, try again later).
		ss.sendf("%s NO [UNAVAILABLE] Lock service unavailable, try again later", tag)
		return nil
	}
	return err
}

const (
	// appendMem bounds what one APPEND holds in memory: its lines, the
	// small literals kept inline and the start of spooled ones (issue
	// 16: a MULTIAPPEND of many literals was held whole). The rest of a
	// literal goes to an unlinked temporary file. A slow client then
	// never holds a mailbox lock: the lock is taken once the whole
	// command is here.
	appendMem = 1 << 20
	// appendInline is the largest literal kept in the command's buffer.
	appendInline = 64 << 10
	// maxAppendLiterals bounds the messages of one APPEND (RFC 3502
	// MULTIAPPEND): each spooled one holds an open file.
	maxAppendLiterals = 1000
)

// spool holds one literal's bytes: up to memMax in memory, then a
// temporary file.
type spool struct {
	mem    bytes.Buffer
	memMax int
	f      *os.File
	n      int64
}

func (s *spool) Write(p []byte) (int, error) {
	if s.f == nil && s.mem.Len()+len(p) <= s.memMax {
		s.n += int64(len(p))
		return s.mem.Write(p)
	}
	if s.f == nil {
		f, err := os.CreateTemp("", "uidgate-append-*")
		if err != nil {
			return 0, err
		}
		// Unlinked at once: the bytes vanish with the descriptor, whatever
		// happens to the process.
		os.Remove(f.Name())
		s.f = f
	}
	k, err := s.f.Write(p)
	s.n += int64(k)
	return k, err
}

// WriteTo sends the spooled bytes to w (a file to a socket can sendfile).
func (s *spool) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(s.mem.Bytes())
	total := int64(n)
	if err != nil || s.f == nil {
		return total, err
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return total, err
	}
	k, err := io.Copy(w, s.f)
	return total + k, err
}

func (s *spool) Close() error {
	if s.f != nil {
		return s.f.Close()
	}
	return nil
}

// writeSpool streams a spooled literal to the backend.
func (ss *session) writeSpool(sp *spool) error {
	ss.upMu.Lock()
	defer ss.upMu.Unlock()
	if err := ss.uw.Flush(); err != nil {
		return err
	}
	_, err := sp.WriteTo(ss.up.Conn)
	ss.upWrites.Add(1)
	return err
}

// lockPassthrough takes the locks of a command relayed as it is: EXPUNGE,
// CLOSE, and with the seen policy SELECT, EXAMINE, UNSELECT, LOGOUT.
func (ss *session) lockPassthrough(rs *relayState, cmd imapwire.Command, kind cmdKind) (func(), error) {
	var name string
	switch kind {
	case cmdExpunge:
		name = "EXPUNGE"
	case cmdClose:
		name = "CLOSE"
	case cmdSelect:
		name = "SELECT"
	case cmdExamine:
		name = "EXAMINE"
	case cmdUnselect:
		name = "UNSELECT"
	case cmdLogout:
		name = "LOGOUT"
	default:
		return nil, nil
	}
	rs.mu.Lock()
	req := rules.LockRequest{Command: name, UID: cmd.UID, Selected: ss.canonical(rs.selected), ReadWrite: rs.selected != "" && !rs.readOnly}
	rs.mu.Unlock()
	return ss.lock(req)
}

// appendSpooled reads a whole APPEND (RFC 9051 §6.3.12, MULTIAPPEND RFC
// 3502) before anything goes upstream: large literals into a spool, so
// that the target mailbox's lock is held only while the backend works,
// never while a slow client sends.
func (ss *session) appendSpooled(rs *relayState, cmd imapwire.Command, line []byte, literalPlus bool) error {
	tag := string(cmd.Tag)
	var c wireCmd
	defer func() {
		for _, l := range c.lits {
			if l.spool != nil {
				l.spool.Close()
			}
		}
	}()
	c.buf = append(c.buf, line...)
	spooledMem := 0 // bytes of c's spools held in memory
	for {
		lit, has := imapwire.TrailingLiteral(line)
		if !has {
			break
		}
		var tooBig string
		switch {
		case lit.Size > ss.srv.maxLiteral():
			tooBig = "Literal too large"
		case len(c.lits) >= maxAppendLiterals || len(c.buf) > 2*appendMem:
			tooBig = "APPEND too large"
		}
		if tooBig != "" {
			if !lit.Sync {
				ss.endOnReadError(errLiteralTooBig, line)
				return net.ErrClosed
			}
			// RFC 7889 §4: too big for the server; nothing went upstream.
			ss.sendf("%s NO [TOOBIG] %s", tag, tooBig)
			return nil
		}
		if lit.Sync {
			ss.sendf("+ Ready for literal")
		}
		hdr := len(c.buf) - len(line) + lit.Start
		span := litSpan{hdr: hdr, data: len(c.buf), lit: lit}
		ss.cr.Expect(lit.Size)
		free := max(appendMem-len(c.buf)-spooledMem, 0)
		if lit.Size <= appendInline && lit.Size <= int64(free) {
			var err error
			if c.buf, err = ss.cr.ReadLiteral(c.buf); err != nil {
				return err
			}
		} else {
			span.spool = &spool{memMax: free}
			if _, err := ss.cr.CopyLiteral(span.spool); err != nil {
				span.spool.Close()
				return err
			}
			spooledMem += span.spool.mem.Len()
		}
		ss.bytesIn.Add(lit.Size)
		span.end = len(c.buf)
		c.lits = append(c.lits, span)
		var err error
		if line, err = ss.cr.ReadLine(); err != nil {
			ss.endOnReadError(err, line)
			return err
		}
		ss.bytesIn.Add(int64(len(line)))
		c.buf = append(c.buf, line...)
	}
	target, _ := imapwire.NewDecoder(c.buf[cmd.Args:]).AString()
	release, err := ss.lock(rules.LockRequest{Command: "APPEND", Target: ss.canonical(target)})
	if err != nil {
		return ss.lockFailed(tag, err)
	}
	pc := pendingCmd{kind: cmdAppend, release: release}
	rs.mu.Lock()
	up := rs.registerLocked(tag, pc)
	rs.mu.Unlock()
	var b builder
	b.out = append(b.out, up...)
	b.copySpan(&c, len(tag), len(c.buf))
	return ss.sendBuilt(rs, up, &b, literalPlus)
}
