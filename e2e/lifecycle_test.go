package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
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
	// The log's tail only: TestPipelineWithoutReading measures the heap,
	// and two million traced commands and answers would be most of it.
	logs := &syncBuffer{keep: 4 << 20}
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

// Issue 18: the process's own life, run as the binary.

// runUidgate runs the binary to its end, bounded by d, and returns its
// exit code, output and how long it ran.
func runUidgate(t *testing.T, bin string, d time.Duration, args ...string) (int, string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	took := time.Since(t0)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out), took
	case ctx.Err() != nil:
		t.Fatalf("uidgate %q still running after %v:\n%s", args, d, out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out), took
	}
	t.Fatalf("uidgate %q: %v", args, err)
	return 0, "", 0
}

// gateTOML is a configuration with one plain listener, one backend and
// a default route to it, and [metrics] if metrics is set.
func gateTOML(listen, backend, metrics string) string {
	s := fmt.Sprintf("[[listener]]\naddress = %q\n\n[[backend]]\nname = \"b\"\naddress = %q\ndial_timeout = \"2s\"\n\n[[route]]\ndefault = true\nbackend = \"b\"\n", listen, backend)
	if metrics != "" {
		s += fmt.Sprintf("\n[metrics]\naddress = %q\n", metrics)
	}
	return s
}

func writeTemp(t *testing.T, name, text string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestServeStartFailure: a listener that cannot be bound while [metrics]
// is set made the process hang for ever, /healthz answering 200; any
// start-up failure now exits 1 at once. A configuration path given
// twice, or two of them, is a usage error (2).
func TestServeStartFailure(t *testing.T) {
	bin := buildUidgate(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := writeTemp(t, "taken.toml", gateTOML(taken.Addr().String(), "127.0.0.1:1", freePort(t)))
	code, out, took := runUidgate(t, bin, 20*time.Second, "serve", cfg)
	if code != 1 || !strings.Contains(out, "address already in use") || took > 10*time.Second {
		t.Errorf("serve with its listener's port taken: exit %d after %v:\n%s", code, took, out)
	}
	for _, args := range [][]string{{"serve", cfg, cfg}, {"serve", "-config", cfg, cfg}, {"check-config"}} {
		if code, out, _ := runUidgate(t, bin, 20*time.Second, args...); code != 2 || !strings.Contains(out, "usage:") {
			t.Errorf("uidgate %q: exit %d:\n%s", args, code, out)
		}
	}
}

// TestServeFileAndReload: `uidgate serve FILE` serves FILE (it ran the
// built-in default), and after SIGHUP /readyz probes the backends of the
// new file (it probed those known at start for ever).
func TestServeFileAndReload(t *testing.T) {
	bin := buildUidgate(t)
	// A backend for readiness: anything that accepts a connection.
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	listen, metrics := freePort(t), freePort(t)
	cfg := writeTemp(t, "uidgate.toml", gateTOML(listen, "127.0.0.1:1", metrics))
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "serve", cfg)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("uidgate log:\n%s", tailString(logs.String(), 4000))
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("tcp", listen)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("`uidgate serve FILE` does not listen on FILE's %s: %v", listen, err)
		}
		time.Sleep(50 * time.Millisecond) // polling start-up
	}
	if code, body := getReadyz(t, metrics); code != 503 || !strings.Contains(body, "no backend reachable") {
		t.Errorf("/readyz with the only backend down: %d %q", code, body)
	}
	os.WriteFile(cfg, []byte(gateTOML(listen, up.Addr().String(), metrics)), 0o600)
	cmd.Process.Signal(syscall.SIGHUP)
	if !waitFor(20*time.Second, func() bool { return strings.Contains(logs.String(), "configuration reloaded") }) {
		t.Fatal("no reload")
	}
	if code, body := getReadyz(t, metrics); code != 200 {
		t.Errorf("/readyz after SIGHUP to a reachable backend: %d %q", code, body)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if exitErr != nil {
			t.Errorf("exit after SIGTERM: %v", exitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}

// TestProxyHeaderToPlainBackend: proxy_protocol = "v2" towards a real
// server not set up for it held each login 30 s; the dial timeout bounds
// it now, and the log says what is likely wrong.
func TestProxyHeaderToPlainBackend(t *testing.T) {
	eachKind(t, allKinds, func(t *testing.T, kind string) {
		be := startBackend(t, kind)
		b := deployedBackend(kind, be.Addr)
		b.ProxyProtocol, b.DialTimeout = 2, 2*time.Second
		g := startGate(t, gateOpts{backend: b})
		rc := dialRaw(t, g.Addr)
		t0 := time.Now()
		rc.send("L LOGIN alice " + testUsers["alice"])
		l := rc.until("L")
		if took := time.Since(t0); !strings.HasPrefix(l, "L NO [UNAVAILABLE]") || took > 6*time.Second {
			t.Errorf("login via a PROXY v2 header the backend does not expect: %q after %v", l, took)
		}
		if !strings.Contains(g.Logs.String(), "PROXY v2 header") {
			t.Errorf("the log does not name the PROXY header:\n%s", tailString(g.Logs.String(), 2000))
		}
	})
}
