package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"uidgate/proxy"
	"uidgate/proxy/locks"
	"uidgate/upstream"
)

// Issue 12: a session ends when its client goes, in any state; what it
// held (backend connection, locks) goes with it; it holds bounded memory
// whatever the client pipelines; a slow reader holds no lock; Shutdown
// keeps to its context. All in the deployed configuration: Cyrus 2.3,
// legacy, explicit \Seen, Cyrus namespace.

// sessionEnd bounds how long a session may outlive its client (issue 12).
const sessionEnd = 5 * time.Second

// lifeGate runs uidgate in front of Cyrus 2.3 in the deployed mode. The
// first login goes through a fault proxy (which can stall the backend),
// later ones straight to the backend, under the same backend name: so
// they share lock keys.
func lifeGate(t *testing.T, backendAddr, faultAddr string, mem *locks.Memory) *gate {
	logs := &syncBuffer{}
	log := zerolog.New(logs).Level(zerolog.TraceLevel)
	b := func(addr string) *upstream.Backend {
		return &upstream.Backend{Name: "cyrus23", Address: addr, TLS: upstream.TLSNone, Legacy: true, ExplicitSeen: true, CyrusNamespace: true}
	}
	faulty, direct := b(faultAddr), b(backendAddr)
	var logins atomic.Int32
	srv := &proxy.Server{
		Route: func(user string) (*upstream.Backend, bool) {
			if logins.Add(1) == 1 && faultAddr != "" {
				return faulty, true
			}
			return direct, true
		},
		Logger:      &log,
		Locks:       mem,
		LockTimeout: 20 * time.Second,
		MaxLiteral:  64 << 20,
		// Test clients all log in from 127.0.0.1 (see startGate).
		LoginRatePerIP:   proxy.LoginRate{Burst: -1},
		LoginRatePerUser: proxy.LoginRate{Burst: -1},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln, proxy.Listener{TLS: upstream.TLSNone})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if t.Failed() {
			t.Logf("uidgate log (tail):\n%s", tailString(logs.String(), 6000))
		}
	})
	return &gate{Addr: ln.Addr().String(), Srv: srv, Logs: logs}
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not synchronisation
	}
	return true
}

func selectInbox(t *testing.T, rc *rawConn) {
	t.Helper()
	rc.send("S SELECT INBOX")
	if l := rc.until("S"); !strings.HasPrefix(l, "S OK") {
		t.Fatalf("select: %q", l)
	}
}

func TestClientGoneEndsSession(t *testing.T) {
	checkNoLeaks(t)
	be := startBackend(t, "cyrus23")
	for i := range 3 {
		be.Deliver(t, "alice", message(fmt.Sprintf("life %d", i), 200))
	}
	fp := newFaultProxy(t, be.Addr)
	mem := &locks.Memory{}
	g := lifeGate(t, be.Addr, fp.ln.Addr().String(), mem)
	active := g.Srv.ActiveSessions

	// A, through the fault proxy: a STORE the stalled backend never
	// answers holds alice's INBOX lock.
	a := rawLogin(t, g.Addr, "alice")
	selectInbox(t, a)
	fp.hang()
	a.send(`a1 STORE 1 +FLAGS (\Flagged)`)

	// B waits for that lock; its client goes.
	b := rawLogin(t, g.Addr, "alice")
	selectInbox(t, b)
	b.send(`b1 STORE 2 +FLAGS (\Flagged)`)
	if !waitFor(sessionEnd, func() bool { return mem.Waiting("mailbox:cyrus23/user.alice") > 0 }) {
		t.Fatal("B never waited for the lock")
	}
	b.c.Close()
	if !waitFor(sessionEnd, func() bool { return active() == 1 }) {
		t.Fatalf("state lock wait: session outlived its client (%d active)", active())
	}

	// A pipelines a SELECT behind its unanswered STORE: a barrier wait.
	a.send("a2 SELECT INBOX")
	// Traced once read whole; the session's next step is the barrier,
	// and it reads nothing more from the client before it.
	if !waitFor(sessionEnd, func() bool { return strings.Contains(g.Logs.String(), `"C":"a2 SELECT INBOX"`) }) {
		t.Fatal("a2 never read")
	}
	a.c.Close()
	if !waitFor(sessionEnd, func() bool { return active() == 0 }) {
		t.Fatalf("state barrier: session outlived its client (%d active)", active())
	}
	fp.resume()

	// A's lock went with it: C's STORE on the same mailbox goes through,
	// not "NO [INUSE]" after lock_timeout.
	c := rawLogin(t, g.Addr, "alice")
	selectInbox(t, c)
	c.send(`c1 STORE 1 +FLAGS (\Flagged)`)
	if l := c.until("c1"); !strings.HasPrefix(l, "c1 OK") {
		t.Fatalf("STORE after the holder's client left: %q", l)
	}

	// Inside a client literal: the client goes half way.
	c.send("c2 APPEND INBOX {100}")
	if l := c.line(); !strings.HasPrefix(l, "+") {
		t.Fatalf("APPEND: %q", l)
	}
	io.WriteString(c.c, "only part")
	c.c.Close()
	if !waitFor(sessionEnd, func() bool { return active() == 0 }) {
		t.Fatalf("state literal: session outlived its client (%d active)", active())
	}
	if n := mem.Held(); n != 0 {
		t.Fatalf("%d lock keys held after every session ended", n)
	}
}

// TestPipelineWithoutReading: a client that pipelines commands and never
// reads costs bounded memory (max_commands_in_flight), and its session
// ends when it goes.
func TestPipelineWithoutReading(t *testing.T) {
	checkNoLeaks(t)
	be := startBackend(t, "cyrus23")
	g := lifeGate(t, be.Addr, "", &locks.Memory{})
	rc := rawLogin(t, g.Addr, "alice")
	selectInbox(t, rc)
	// 2,000,000 NOOPs (26 MB). Their answers (tens of MB) fill the socket
	// buffers between uidgate and the client, and then uidgate must stop
	// reading: before the bound, every command read while answers piled
	// up in those buffers cost a record (hundreds of MB).
	var cmds strings.Builder
	for i := range 2_000_000 {
		fmt.Fprintf(&cmds, "n%d NOOP\r\n", i)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	rc.c.SetWriteDeadline(time.Now().Add(20 * time.Second))
	_, err := io.WriteString(rc.c, cmds.String())
	var ne net.Error
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("writing 26 MB of NOOPs to a session whose answers are never read: %v (uidgate kept reading)", err)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 32<<20 {
		t.Fatalf("heap grew %d MB for one session that does not read", grew>>20)
	} else {
		t.Logf("heap grew %d KB", grew>>10)
	}
	rc.c.Close()
	if !waitFor(sessionEnd, func() bool { return g.Srv.ActiveSessions() == 0 }) {
		t.Fatal("session outlived its client")
	}
}

// TestSlowReaderHoldsNoLock: a client fetching a large body and reading
// slowly does not hold its mailbox: with explicit \Seen the locks cover
// uidgate's STORE \Seen and go back with its answer. Then Shutdown, with
// that client still not reading, keeps to its context.
func TestSlowReaderHoldsNoLock(t *testing.T) {
	checkNoLeaks(t)
	const size = 30 << 20 // far beyond what socket buffers hold
	be := startBackend(t, "cyrus23")
	g := lifeGate(t, be.Addr, "", &locks.Memory{})
	a := rawLogin(t, g.Addr, "alice")
	a.send(fmt.Sprintf("a1 APPEND INBOX {%d}", size))
	if l := a.line(); !strings.HasPrefix(l, "+") {
		t.Fatalf("APPEND: %q", l)
	}
	if _, err := io.Copy(a.c, bigMessage(size)); err != nil {
		t.Fatal(err)
	}
	a.send("")
	if l := a.until("a1"); !strings.HasPrefix(l, "a1 OK") {
		t.Fatalf("APPEND: %q", l)
	}
	selectInbox(t, a)
	a.send("a2 FETCH 1 BODY[]") // and not read

	b := rawLogin(t, g.Addr, "alice")
	selectInbox(t, b)
	b.send(`b1 STORE 1 +FLAGS (\Flagged)`)
	if l := b.until("b1"); !strings.HasPrefix(l, "b1 OK") {
		t.Fatalf("STORE while another session slowly reads a body: %q", l)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	t0 := time.Now()
	err := g.Srv.Shutdown(ctx)
	if took := time.Since(t0); took > 2*sessionEnd {
		t.Fatalf("Shutdown with a 2 s context took %v (err %v)", took, err)
	}
	if !waitFor(sessionEnd, func() bool { return g.Srv.ActiveSessions() == 0 }) {
		t.Fatalf("%d sessions left after Shutdown's context ended", g.Srv.ActiveSessions())
	}
}
