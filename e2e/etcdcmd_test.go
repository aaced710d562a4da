package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"uidgate/e2e/etcdtest"
	"uidgate/proxy/locks"
	"uidgate/upstream"
)

// stallServer is an IMAP server that answers everything OK (a mailbox of
// one message) except STORE on its first connection, which it never
// answers: a command still in flight upstream, its locks held, when the
// uidgate in front of it is killed.
type stallServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	n     int
	// stalled receives the first connection's STORE line.
	stalled chan string
}

func startStallServer(t *testing.T) *stallServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &stallServer{ln: ln, stalled: make(chan string, 1)}
	go s.serve()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	return s
}

func (s *stallServer) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.n++
		first := s.n == 1
		s.mu.Unlock()
		go s.session(c, first)
	}
}

func (s *stallServer) session(c net.Conn, first bool) {
	defer c.Close()
	io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] stall server ready\r\n")
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Fields(strings.ToUpper(line))
		if len(f) < 2 {
			continue
		}
		tag, cmd := strings.Fields(line)[0], f[1]
		if cmd == "UID" && len(f) > 2 {
			cmd = "UID " + f[2]
		}
		switch cmd {
		case "SELECT", "EXAMINE":
			io.WriteString(c, "* 1 EXISTS\r\n* FLAGS (\\Seen \\Flagged)\r\n"+tag+" OK [READ-WRITE] done\r\n")
		case "UID SEARCH":
			io.WriteString(c, "* SEARCH 1\r\n"+tag+" OK done\r\n")
		case "STORE", "UID STORE":
			if first {
				s.stalled <- line
				continue // never answered
			}
			io.WriteString(c, tag+" OK done\r\n")
		case "LOGOUT":
			io.WriteString(c, "* BYE bye\r\n"+tag+" OK done\r\n")
			return
		default:
			io.WriteString(c, tag+" OK done\r\n")
		}
	}
}

// imapLine is one client connection read line by line.
type imapLine struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialIMAP(t *testing.T, addr string) *imapLine {
	t.Helper()
	var c net.Conn
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; {
		if c, err = net.Dial("tcp", addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond) // polling a starting process
	}
	t.Cleanup(func() { c.Close() })
	l := &imapLine{t: t, c: c, r: bufio.NewReader(c)}
	l.read() // greeting
	return l
}

func (l *imapLine) read() string {
	l.t.Helper()
	l.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	s, err := l.r.ReadString('\n')
	if err != nil {
		l.t.Fatalf("read: %v (%q)", err, s)
	}
	return s
}

// cmd sends a command and returns its tagged answer.
func (l *imapLine) cmd(tag, format string, args ...any) string {
	l.t.Helper()
	fmt.Fprintf(l.c, tag+" "+format+"\r\n", args...)
	for {
		if s := l.read(); strings.HasPrefix(s, tag+" ") {
			return strings.TrimSpace(s)
		}
	}
}

// startServe runs `uidgate serve` with config, returning what kills it.
func startServe(t *testing.T, bin, config string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "uidgate.toml")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "serve", "-config", file)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("uidgate serve log:\n%s", tailString(logs.String(), 4000))
		}
	})
	return cmd, logs
}

// serveConfig is `uidgate serve`'s configuration in the etcd tests: one
// listener, one backend (the default route), [locks] in etcd with the
// settings in locks (TOML lines), and the metrics listener.
func serveConfig(listen, backend, metrics, locks string) string {
	return fmt.Sprintf(`
[[listener]]
address = %q

[[backend]]
name = "fake"
address = %q

[[route]]
default = true
backend = "fake"

[locks]
backend = "etcd"
%s
[metrics]
address = %q
`, listen, backend, locks, metrics)
}

// getReadyz returns /readyz's status and body.
func getReadyz(t *testing.T, addr string) (int, string) {
	t.Helper()
	// No keep-alive: no idle connection (and its goroutines) outlives the
	// call, for the leak check.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var resp *http.Response
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; {
		if resp, err = client.Get("http://" + addr + "/readyz"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /readyz: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling a starting process
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// TestEtcdInstanceKilled: `uidgate serve` with [locks] in etcd holds a
// mailbox lock (its STORE unanswered upstream); another instance's STORE
// on that mailbox is answered NO [INUSE] after its lock_timeout. A is
// killed with SIGKILL; another instance's STORE on that mailbox waits, and
// goes through once the dead instance's lease has expired.
func TestEtcdInstanceKilled(t *testing.T) {
	checkNoLeaks(t)
	bin := buildUidgate(t)
	etcd := etcdtest.Start(t, 1)
	fake := startStallServer(t)
	listen, metrics := freePort(t), freePort(t)
	a, _ := startServe(t, bin, serveConfig(listen, fake.ln.Addr().String(), metrics, fmt.Sprintf(`endpoints = [%q]
prefix = "/t/killed/"
lease_ttl = "5s"
`, etcd.Endpoints()[0])))

	ca := dialIMAP(t, listen)
	if got := ca.cmd("a1", "LOGIN alice x"); !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("login: %s", got)
	}
	if got := ca.cmd("a2", "SELECT INBOX"); !strings.HasPrefix(got, "a2 OK") {
		t.Fatalf("select: %s", got)
	}
	fmt.Fprintf(ca.c, "a3 STORE 1 +FLAGS (\\Flagged)\r\n")
	select {
	case l := <-fake.stalled:
		t.Logf("instance A holds the mailbox: the backend got %q and does not answer", strings.TrimSpace(l))
	case <-time.After(20 * time.Second):
		t.Fatal("A's STORE never reached the backend")
	}
	// A holds a lease (its STORE took a lock): ready.
	if code, body := getReadyz(t, metrics); code != 200 || body != "ready" {
		t.Errorf("/readyz with etcd up: %d %q", code, body)
	}
	// Another instance whose lock_timeout is 1 s: NO [INUSE] while A holds
	// the mailbox.
	lm, _ := etcdtest.NewManager(t, etcdlockConfig(etcd.Endpoints(), "/t/killed/"))
	fakeBackend := upstream.Backend{Name: "fake", Address: fake.ln.Addr().String()}
	w := startGate(t, gateOpts{backend: fakeBackend, locks: lm, lockTimeout: time.Second})
	cw := dialIMAP(t, w.Addr)
	cw.cmd("w1", "LOGIN alice x")
	cw.cmd("w2", "SELECT INBOX")
	if got := cw.cmd("w3", "STORE 1 +FLAGS (\\Flagged)"); got != "w3 NO [INUSE] Mailbox in use by another session, try again" {
		t.Errorf("a STORE on another instance past lock_timeout while A holds the mailbox: %s", got)
	}

	a.Process.Signal(syscall.SIGKILL)
	killed := time.Now()

	b := startGate(t, gateOpts{backend: fakeBackend, locks: lm})
	cb := dialIMAP(t, b.Addr)
	cb.cmd("b1", "LOGIN alice x")
	cb.cmd("b2", "SELECT INBOX")
	if got := cb.cmd("b3", "STORE 1 +FLAGS (\\Flagged)"); got != "b3 OK done" {
		t.Fatalf("B's STORE: %s", got)
	}
	d := time.Since(killed)
	t.Logf("B's STORE went through %v after A was killed (lease TTL 5s)", d.Round(time.Millisecond))
	// A's last refresh was sent TTL/3 (1⅔ s) or less before the kill, so
	// the lease expired 3⅓ s to 5 s after it (etcd checks every 500 ms);
	// B's lock wait (30 s) is far above the upper bound.
	if d < 2*time.Second || d > 15*time.Second {
		t.Errorf("B's STORE after %v: want about the lease TTL (5s)", d)
	}
}

// TestEtcdReadyz: with etcd out of reach, /readyz stays ready (reads go
// on, and etcd is shared: a 503 would take every instance out of the
// balancer) and its note says what writes get; a write needing a lock is
// answered NO [UNAVAILABLE] when commands fail, goes through when they
// proceed; a read passes either way.
func TestEtcdReadyz(t *testing.T) {
	checkNoLeaks(t)
	bin := buildUidgate(t)
	fake := startStallServer(t)
	dead := "http://" + freePort(t) // nothing listens there
	for _, tc := range []struct {
		mode, wantBody string
		wantCode       int
	}{
		{"fail", "ready: etcd out of reach, commands that need a lock are refused: no etcd lease", 200},
		{"proceed", "ready: etcd out of reach, proceeding without cross-instance locks: no etcd lease", 200},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			listen, metrics := freePort(t), freePort(t)
			startServe(t, bin, serveConfig(listen, fake.ln.Addr().String(), metrics,
				fmt.Sprintf("endpoints = [%q]\non_unavailable = %q\n", dead, tc.mode)))
			c := dialIMAP(t, listen)
			c.cmd("r1", "LOGIN alice x")
			c.cmd("r2", "SELECT INBOX")
			if got := c.cmd("r3", "FETCH 1 (FLAGS)"); got != "r3 OK done" {
				t.Errorf("a read with etcd down: %s", got)
			}
			got := c.cmd("r4", "STORE 1 +FLAGS (\\Flagged)")
			switch tc.mode {
			case "fail":
				if got != "r4 NO [UNAVAILABLE] Lock service unavailable, try again later" {
					t.Errorf("a write with etcd down: %s", got)
				}
			case "proceed":
				if got != "r4 OK done" {
					t.Errorf("a write with etcd down, proceed: %s", got)
				}
			}
			code, body := getReadyz(t, metrics)
			if code != tc.wantCode || !strings.HasPrefix(body, tc.wantBody) {
				t.Errorf("/readyz: %d %q, want %d %q...", code, body, tc.wantCode, tc.wantBody)
			}
		})
	}
}

// lostLocks is a locks.Leased whose every grant comes with its lease
// already lost, as when the lease is lost between the grant and the
// command's going upstream.
type lostLocks struct{ mem locks.Memory }

var _ locks.Leased = (*lostLocks)(nil)

func (l *lostLocks) Acquire(ctx context.Context, keys []string) (func(), error) {
	release, _, err := l.AcquireLeased(ctx, keys)
	return release, err
}

func (l *lostLocks) AcquireLeased(ctx context.Context, keys []string) (func(), context.Context, error) {
	release, err := l.mem.Acquire(ctx, keys)
	if err != nil {
		return nil, nil, err
	}
	lost, cancel := context.WithCancelCause(context.Background())
	cancel(errors.New("lease lost before the grant was returned"))
	return release, lost, nil
}

// TestLeaseLostBeforeSend: a grant whose lease is already lost when it is
// returned is not used: the command is answered NO [UNAVAILABLE] and never
// reaches the backend, and its locks are given back (the next command's
// grant is not kept waiting).
func TestLeaseLostBeforeSend(t *testing.T) {
	checkNoLeaks(t)
	fake := startStallServer(t)
	g := startGate(t, gateOpts{backend: upstream.Backend{Name: "fake", Address: fake.ln.Addr().String()}, locks: &lostLocks{}})
	c := dialIMAP(t, g.Addr)
	c.cmd("l1", "LOGIN alice x")
	c.cmd("l2", "SELECT INBOX")
	for _, tag := range []string{"l3", "l4"} {
		if got := c.cmd(tag, "STORE 1 +FLAGS (\\Flagged)"); got != tag+" NO [UNAVAILABLE] Lock service unavailable, try again later" {
			t.Errorf("a write on a lost lease: %s", got)
		}
	}
	if got := c.cmd("l5", "FETCH 1 (FLAGS)"); got != "l5 OK done" {
		t.Errorf("a read after: %s", got)
	}
	select {
	case l := <-fake.stalled:
		t.Errorf("the backend got %q", strings.TrimSpace(l))
	default:
	}
}
