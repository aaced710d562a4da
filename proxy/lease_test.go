package proxy

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"uidgate/proxy/locks"
	"uidgate/upstream"
)

// leasedLocks is a locks.Leased over Memory whose lease the test ends, and
// which fails with ErrUnavailable while down is set.
type leasedLocks struct {
	mem locks.Memory

	mu     sync.Mutex
	down   bool
	lease  context.Context
	expire context.CancelFunc
}

func newLeasedLocks() *leasedLocks {
	l := &leasedLocks{}
	l.lease, l.expire = context.WithCancel(context.Background())
	return l
}

func (l *leasedLocks) Acquire(ctx context.Context, keys []string) (func(), error) {
	release, _, err := l.AcquireLeased(ctx, keys)
	return release, err
}

func (l *leasedLocks) AcquireLeased(ctx context.Context, keys []string) (func(), context.Context, error) {
	l.mu.Lock()
	down, lease := l.down, l.lease
	l.mu.Unlock()
	if down {
		return nil, nil, locks.ErrUnavailable
	}
	release, err := l.mem.Acquire(ctx, keys)
	return release, lease, err
}

func (l *leasedLocks) setDown(down bool) {
	l.mu.Lock()
	l.down = down
	l.mu.Unlock()
}

var _ locks.Leased = (*leasedLocks)(nil)

// TestLockUnavailable: with the lock service down, a command that needs a
// lock is answered NO [UNAVAILABLE] without reaching the backend; reads
// pass; once it is back, writes go through again.
func TestLockUnavailable(t *testing.T) {
	sb := newScriptedBackend(t)
	backend := &upstream.Backend{Name: "scripted", Address: sb.ln.Addr().String(), TLS: upstream.TLSNone}
	lm := newLeasedLocks()
	srv := &Server{Route: func(string) (*upstream.Backend, bool) { return backend, true }, Locks: lm}
	s := startLockSession(t, srv, sb)
	lm.setDown(true)
	s.send(s.c, "a1 STORE 1 +FLAGS (\\Flagged)")
	s.expect(s.cr, s.c, "a1 NO [UNAVAILABLE] Lock service unavailable, try again later")
	s.send(s.c, "a2 FETCH 1 (FLAGS)")
	s.expect(s.br, s.b, "a2 UID FETCH 1 (FLAGS)") // the STORE never went up
	io.WriteString(s.b, "a2 OK done\r\n")
	s.expect(s.cr, s.c, "a2 OK done")
	lm.setDown(false)
	s.send(s.c, "a3 STORE 1 +FLAGS (\\Flagged)")
	s.expect(s.br, s.b, "a3 UID STORE 1 +FLAGS (\\Flagged)")
	io.WriteString(s.b, "a3 OK done\r\n")
	s.expect(s.cr, s.c, "a3 OK done")
}

// TestLockLostEndsSession: a session whose command holds a lock when the
// lease under it is lost ends with BYE (its backend connection closed); a
// session that held nothing then goes on.
func TestLockLostEndsSession(t *testing.T) {
	sb := newScriptedBackend(t)
	backend := &upstream.Backend{Name: "scripted", Address: sb.ln.Addr().String(), TLS: upstream.TLSNone}
	lm := newLeasedLocks()
	srv := &Server{Route: func(string) (*upstream.Backend, bool) { return backend, true }, Locks: lm}
	holder := startLockSession(t, srv, sb)
	idle := startLockSession(t, srv, sb)

	// idle's STORE took and gave back its lock before the loss.
	idle.send(idle.c, "i1 STORE 2 +FLAGS (\\Flagged)")
	idle.expect(idle.br, idle.b, "i1 UID STORE 2 +FLAGS (\\Flagged)")
	io.WriteString(idle.b, "i1 OK done\r\n")
	idle.expect(idle.cr, idle.c, "i1 OK done")

	holder.send(holder.c, "h1 STORE 1 +FLAGS (\\Deleted)")
	holder.expect(holder.br, holder.b, "h1 UID STORE 1 +FLAGS (\\Deleted)")
	lm.expire() // the backend has not answered: h1 holds the mailbox
	holder.expect(holder.cr, holder.c, "* BYE [UNAVAILABLE] Lock service lost, please reconnect")
	holder.b.SetReadDeadline(time.Now().Add(stepTimeout))
	if n, err := holder.br.ReadString('\n'); err == nil {
		t.Errorf("backend got %q after the loss; want its connection closed", n)
	}
	holder.c.SetReadDeadline(time.Now().Add(stepTimeout))
	if l, err := holder.cr.ReadString('\n'); err != io.EOF {
		t.Errorf("after BYE the client read %q, %v; want EOF", l, err)
	}

	idle.send(idle.c, "i2 NOOP")
	idle.expect(idle.br, idle.b, "i2 NOOP")
	io.WriteString(idle.b, "i2 OK done\r\n")
	idle.expect(idle.cr, idle.c, "i2 OK done")
}
