package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"uidgate/proxy"
	"uidgate/upstream"
)

// faultProxy sits between uidgate and a backend and can cut or stall every
// connection through it, standing in for a backend that dies or hangs.
type faultProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	stall  chan struct{} // closed: forwarding resumes
	wg     sync.WaitGroup
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fp := &faultProxy{ln: ln, target: target}
	fp.wg.Add(1)
	go func() {
		defer fp.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			fp.mu.Lock()
			fp.conns = append(fp.conns, c, u)
			fp.mu.Unlock()
			fp.wg.Add(2)
			go fp.pipe(c, u)
			go fp.pipe(u, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		fp.cut()
		fp.resume()
		fp.wg.Wait()
	})
	return fp
}

func (fp *faultProxy) pipe(dst, src net.Conn) {
	defer fp.wg.Done()
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		fp.mu.Lock()
		stall := fp.stall
		fp.mu.Unlock()
		if stall != nil {
			<-stall
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// cut closes every connection: the backend died.
func (fp *faultProxy) cut() {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	for _, c := range fp.conns {
		c.Close()
	}
	fp.conns = nil
}

// hang stops forwarding until resume: the backend stalls.
func (fp *faultProxy) hang() {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if fp.stall == nil {
		fp.stall = make(chan struct{})
	}
}

func (fp *faultProxy) resume() {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if fp.stall != nil {
		close(fp.stall)
		fp.stall = nil
	}
}

// hardGate runs uidgate with alice routed through a fault proxy and bob
// straight to the backend, both in kind's deployed configuration: bob is
// the bystander who must not notice.
func hardGate(t *testing.T, kind, backendAddr, faultAddr string, idle time.Duration) (*gate, *syncBuffer) {
	logs := &syncBuffer{}
	log := zerolog.New(logs).Level(zerolog.TraceLevel)
	b := func(name, addr string) *upstream.Backend {
		be := deployedBackend(kind, addr)
		be.Name, be.TLS = name, upstream.TLSNone
		return &be
	}
	faulty, direct := b("faulty", faultAddr), b("direct", backendAddr)
	srv := &proxy.Server{
		Route: func(user string) (*upstream.Backend, bool) {
			if user == "alice" {
				return faulty, true
			}
			return direct, true
		},
		Logger:      &log,
		IdleTimeout: idle,
		MaxLiteral:  64 << 20,
		// Test clients all log in from 127.0.0.1 (see startGate).
		LoginRatePerIP:   proxy.LoginRate{Burst: -1},
		LoginRatePerUser: proxy.LoginRate{Burst: -1},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln, proxy.Listener{TLS: upstream.TLSNone}) }()
	t.Cleanup(func() {
		srv.Shutdown(t.Context())
		<-served
	})
	return &gate{Addr: ln.Addr().String(), Srv: srv, Logs: logs}, logs
}

// rawLogin opens a raw session and logs in.
func rawLogin(t *testing.T, addr, user string) *rawConn {
	rc := dialRaw(t, addr)
	rc.send("L LOGIN " + user + ` "` + strings.ReplaceAll(testUsers[user], `"`, `\"`) + `"`)
	if l := rc.until("L"); !strings.HasPrefix(l, "L OK") {
		t.Fatalf("login %s: %q", user, l)
	}
	return rc
}

// status is the status word of a tagged response line: OK, NO or BAD.
func status(tagged string) string {
	f := strings.Fields(tagged)
	if len(f) < 2 {
		return tagged
	}
	return f[1]
}

// rest reads until the connection ends and returns what came.
func (rc *rawConn) rest(limit int) string {
	rc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, _ := io.ReadAll(io.LimitReader(rc.r, int64(limit)))
	return string(b)
}

// TestBackendFaults: a backend that dies mid-FETCH, mid-APPEND or during
// IDLE, or stalls. The client gets BYE (or, inside a literal, a closed
// connection), never a success for what did not happen; the bystander
// session on another backend connection goes on; nothing leaks. On each
// real server, in its deployed configuration.
func TestBackendFaults(t *testing.T) {
	eachKind(t, allKinds, testBackendFaults)
}

func testBackendFaults(t *testing.T, kind string) {
	be := startBackend(t, kind)
	fp := newFaultProxy(t, be.Addr)
	g, logs := hardGate(t, kind, be.Addr, fp.ln.Addr().String(), time.Minute)
	bob := rawLogin(t, g.Addr, "bob")
	bystander := func(step string) {
		t.Helper()
		bob.send("b-" + step + " NOOP")
		if l := bob.until("b-" + step); !strings.HasPrefix(l, "b-"+step+" OK") {
			t.Fatalf("bystander after %s: %q", step, l)
		}
	}
	setup := rawLogin(t, be.Addr, "alice")
	big := int64(20 << 20)
	setup.send(fmt.Sprintf("s1 APPEND INBOX {%d}", big))
	setup.line()
	io.Copy(setup.c, bigMessage(big))
	setup.send("")
	setup.until("s1")

	t.Run("mid-fetch", func(t *testing.T) {
		a := rawLogin(t, g.Addr, "alice")
		a.send("f0 SELECT INBOX")
		a.until("f0")
		a.send("f1 FETCH 1 BODY.PEEK[]")
		if l := a.line(); !strings.Contains(l, "BODY[] {") {
			t.Fatalf("FETCH started with %q", l)
		}
		io.CopyN(io.Discard, a.r, 1<<20)
		fp.cut()
		rest := a.rest(64 << 20)
		if strings.Contains(rest, "f1 OK") {
			t.Errorf("FETCH reported success after the backend died")
		}
		bystander("fetch")
	})
	t.Run("mid-append", func(t *testing.T) {
		a := rawLogin(t, g.Addr, "alice")
		a.send("p1 APPEND INBOX {1000}")
		a.line()
		io.WriteString(a.c, strings.Repeat("x", 500))
		fp.cut()
		rest := a.rest(4096)
		if !strings.Contains(rest, "* BYE [UNAVAILABLE]") || strings.Contains(rest, "p1 OK") {
			t.Errorf("after the backend died mid-APPEND the client got %q", rest)
		}
		bystander("append")
	})
	t.Run("during-idle", func(t *testing.T) {
		a := rawLogin(t, g.Addr, "alice")
		a.send("i0 SELECT INBOX")
		a.until("i0")
		a.send("i1 IDLE")
		if l := a.line(); !strings.HasPrefix(l, "+") {
			t.Fatalf("IDLE answered %q", l)
		}
		fp.cut()
		if rest := a.rest(4096); !strings.Contains(rest, "* BYE [UNAVAILABLE] Backend connection lost") {
			t.Errorf("during IDLE the client got %q", rest)
		}
		bystander("idle")
	})
	t.Run("stall", func(t *testing.T) {
		g2, _ := hardGate(t, kind, be.Addr, fp.ln.Addr().String(), time.Second)
		a := rawLogin(t, g2.Addr, "alice")
		fp.hang()
		defer fp.resume()
		a.send("n1 NOOP")
		// The session ends by the idle timer (1 s here, ≥ 30 min in
		// production), with BYE, not silently.
		if rest := a.rest(4096); !strings.Contains(rest, "* BYE") {
			t.Errorf("a stalled backend left the client with %q", rest)
		}
		bystander("stall")
	})
	for _, secret := range []string{testUsers["alice"], testUsers["bob"]} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("password in log")
		}
	}
}

// TestBadInput: hostile or broken input through a live uidgate in front
// of each real server, in its deployed configuration, is answered as
// documented and touches no other session.
func TestBadInput(t *testing.T) {
	eachKind(t, allKinds, testBadInput)
}

func testBadInput(t *testing.T, kind string) {
	be := startBackend(t, kind)
	g, logs := hardGate(t, kind, be.Addr, be.Addr, time.Minute)
	bob := rawLogin(t, g.Addr, "bob")
	bob.send("b0 SELECT INBOX")
	bob.until("b0")
	bystander := func(step string) {
		t.Helper()
		bob.send("b-" + step + " NOOP")
		if l := bob.until("b-" + step); !strings.HasPrefix(l, "b-"+step+" OK") {
			t.Fatalf("bystander after %s: %q", step, l)
		}
	}

	t.Run("garbage-before-login", func(t *testing.T) {
		rc := dialRaw(t, g.Addr)
		io.WriteString(rc.c, "\x16\x03\x01\x02\x00\x01\x00\r\nGET / HTTP/1.1\r\n\xff\xfe\r\n")
		rest := rc.rest(4096)
		if !strings.Contains(rest, "* BYE Too many bad commands") {
			t.Errorf("garbage got %q", rest)
		}
		bystander("garbage")
	})
	t.Run("overlong-line", func(t *testing.T) {
		rc := rawLogin(t, g.Addr, "alice")
		io.WriteString(rc.c, "x1 SEARCH TEXT "+strings.Repeat("a", 200<<10)+"\r\n")
		if rest := rc.rest(4096); !strings.Contains(rest, "x1 BAD Line too long") || !strings.Contains(rest, "* BYE") {
			t.Errorf("overlong line got %q", rest)
		}
		bystander("overlong")
	})
	t.Run("huge-literal", func(t *testing.T) {
		rc := rawLogin(t, g.Addr, "alice")
		rc.send("x1 APPEND INBOX {99999999999}")
		if l := rc.line(); !strings.HasPrefix(l, "x1 NO [TOOBIG]") {
			t.Errorf("huge sync literal got %q", l)
		}
		rc.send("x2 APPEND INBOX {99999999999+}")
		if rest := rc.rest(4096); !strings.Contains(rest, "x2 BAD [TOOBIG]") || !strings.Contains(rest, "* BYE") {
			t.Errorf("huge non-sync literal got %q", rest)
		}
		bystander("huge")
	})
	t.Run("literal-then-close", func(t *testing.T) {
		st := rawLogin(t, be.Addr, "alice")
		st.send("c1 STATUS INBOX (MESSAGES)")
		before := st.until("c1")
		_ = before
		rc := rawLogin(t, g.Addr, "alice")
		rc.send("x1 APPEND INBOX {1000}")
		rc.line()
		io.WriteString(rc.c, strings.Repeat("y", 300))
		rc.c.Close()
		st.send("c2 STATUS INBOX (MESSAGES)")
		var lines []string
		for l := st.line(); !strings.HasPrefix(l, "c2 "); l = st.line() {
			lines = append(lines, l)
		}
		if len(lines) != 1 || !strings.Contains(lines[0], "MESSAGES 0") {
			t.Errorf("a half-sent APPEND left %q", lines)
		}
		bystander("literal-close")
	})
	t.Run("nul-and-invalid-utf8", func(t *testing.T) {
		// Neither line is valid (RFC 9051 §9: CHAR8 excludes NUL; a
		// quoted string without CHARSET is US-ASCII), and the servers
		// judge them differently: Dovecot answers both BAD, Cyrus both
		// OK. uidgate relays them, so through it the answer is the one
		// the server gives directly.
		direct := rawLogin(t, be.Addr, "alice")
		rc := rawLogin(t, g.Addr, "alice")
		for _, c := range []*rawConn{direct, rc} {
			c.send("u0 SELECT INBOX")
			if l := c.until("u0"); !strings.HasPrefix(l, "u0 OK") {
				t.Fatalf("select: %q", l)
			}
		}
		for _, line := range []string{"u1 SEARCH SUBJECT \"\xff\xfe\xc0\"", "u2 NOOP\x00junk"} {
			tag, _, _ := strings.Cut(line, " ")
			direct.send(line)
			want := direct.until(tag)
			rc.send(line)
			if got := rc.until(tag); status(got) != status(want) {
				t.Errorf("%q: %q through uidgate, %q directly", line, got, want)
			}
		}
		rc.send("u3 NOOP")
		if l := rc.until("u3"); !strings.HasPrefix(l, "u3 OK") {
			t.Errorf("session after bad lines: %q", l)
		}
		bystander("nul")
	})
	t.Run("pipelined", func(t *testing.T) {
		// Far beyond the commands in flight uidgate allows (64). Cyrus 3.6
		// itself takes about 1 ms a command here (10 s for 10,000, directly
		// as through uidgate), so it gets 1,000; uidgate relays it in the
		// same legacy mode as Cyrus 2.3, which gets all 10,000.
		n := 10000
		if kind == "cyrus" {
			n = 1000
		}
		rc := rawLogin(t, g.Addr, "alice")
		rc.send("q0 SELECT INBOX")
		rc.until("q0")
		var b bytes.Buffer
		for i := 0; i < n; i++ {
			if i%2 == 0 {
				fmt.Fprintf(&b, "q%d NOOP\r\n", i+1)
			} else {
				fmt.Fprintf(&b, "q%d SEARCH ALL\r\n", i+1)
			}
		}
		go rc.c.Write(b.Bytes()) // the answers are read meanwhile
		next := 1
		for next <= n {
			l := rc.line()
			if strings.HasPrefix(l, "*") {
				continue
			}
			if want := fmt.Sprintf("q%d OK", next); !strings.HasPrefix(l, want) {
				t.Fatalf("answer %d: %q", next, l)
			}
			next++
		}
		bystander("pipelined")
	})
	if strings.Contains(logs.String(), testUsers["alice"]) {
		t.Errorf("password in log")
	}
}

// TestShutdownUnderLoad: uidgate stopped while 20 sessions fetch and
// store: every client gets BYE (or its answers, then BYE), Shutdown
// returns, and no goroutine is left. It is heavy, so it runs on Cyrus 2.3
// in the deployed mode (legacy: each FETCH and STORE goes up rewritten to
// UIDs) and on Dovecot in the compliant one.
func TestShutdownUnderLoad(t *testing.T) {
	eachKind(t, []string{"cyrus23", "dovecot"}, testShutdownUnderLoad)
}

func testShutdownUnderLoad(t *testing.T, kind string) {
	be := startBackend(t, kind)
	g, _ := hardGate(t, kind, be.Addr, be.Addr, time.Minute)
	seed := rawLogin(t, be.Addr, "alice")
	for i := 0; i < 20; i++ {
		seed.send(fmt.Sprintf("s%d APPEND INBOX {%d}", i, len(message("x", 2000))))
		seed.line()
		seed.c.Write(message("x", 2000))
		seed.send("")
		seed.until(fmt.Sprintf("s%d", i))
	}
	var wg sync.WaitGroup
	ended := make(chan string, 20)
	started := make(chan struct{}, 20)
	for s := 0; s < 20; s++ {
		rc := rawLogin(t, g.Addr, "alice")
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc.send("x SELECT INBOX")
			started <- struct{}{}
			// Pipeline work until the connection ends; the reader below
			// sees what came last.
			go func() {
				for i := 0; i < 200; i++ {
					if _, err := fmt.Fprintf(rc.c, "f%d FETCH 1:* (FLAGS BODY.PEEK[])\r\nt%d STORE %d +FLAGS (\\Flagged)\r\n", i, i, i%20+1); err != nil {
						return
					}
				}
			}()
			rc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
			var last string
			for {
				l, err := rc.r.ReadString('\n')
				if err != nil {
					break
				}
				if strings.HasPrefix(l, "* BYE") {
					last = l
				}
			}
			ended <- last
		}()
	}
	for i := 0; i < 20; i++ {
		<-started
	}
	if err := g.Srv.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wg.Wait()
	close(ended)
	for last := range ended {
		if !strings.HasPrefix(last, "* BYE [UNAVAILABLE] uidgate is shutting down") {
			t.Errorf("a client's session ended without BYE (last BYE %q)", last)
		}
	}
}
