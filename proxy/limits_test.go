package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"uidgate/upstream"
)

// TestConnectionLimits: past the per-address bound a client gets BYE at
// once; a slot freed is reusable.
func TestConnectionLimits(t *testing.T) {
	srv := &Server{
		Route:               func(string) (*upstream.Backend, bool) { return nil, false },
		MaxConnectionsPerIP: 2,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln, Listener{TLS: upstream.TLSNone}) }()
	t.Cleanup(func() {
		srv.Shutdown(t.Context())
		<-served
	})
	greet := func() (net.Conn, string) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(stepTimeout))
		l, _ := bufio.NewReader(c).ReadString('\n')
		return c, l
	}
	c1, g1 := greet()
	_, g2 := greet()
	_, g3 := greet()
	if !strings.HasPrefix(g1, "* OK") || !strings.HasPrefix(g2, "* OK") {
		t.Fatalf("greetings %q %q", g1, g2)
	}
	if g3 != "* BYE [UNAVAILABLE] Too many connections from your address\r\n" {
		t.Fatalf("third connection got %q", g3)
	}
	io.WriteString(c1, "a LOGOUT\r\n")
	io.Copy(io.Discard, c1) // until uidgate closes it
	deadline := time.Now().Add(stepTimeout)
	for srv.ActiveSessions() > 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling for the session's end
	}
	if _, g4 := greet(); !strings.HasPrefix(g4, "* OK") {
		t.Fatalf("after one left, a new connection got %q", g4)
	}
}

// TestAuthFailureDelay: repeated failed logins from one address are
// checked, and answered, ever later; the first is not delayed.
func TestAuthFailureDelay(t *testing.T) {
	const step = 150 * time.Millisecond
	srv := &Server{
		Route:            func(string) (*upstream.Backend, bool) { return nil, false },
		AuthFailureDelay: step,
	}
	cc, sc := tcpPair(t)
	go srv.ServeConn(t.Context(), sc, Listener{TLS: upstream.TLSNone})
	t.Cleanup(func() { cc.Close() })
	r := bufio.NewReader(cc)
	cc.SetReadDeadline(time.Now().Add(3 * stepTimeout))
	r.ReadString('\n')
	var took []time.Duration
	for i := 0; i < 3; i++ {
		t0 := time.Now()
		io.WriteString(cc, "a LOGIN nobody x\r\n")
		l, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(l, "a NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("login %d: %q %v", i, l, err)
		}
		took = append(took, time.Since(t0))
	}
	// Each waits its delay from the previous failure, recorded just before
	// that failure was answered.
	if took[1] < step-step/10 || took[2] < 2*step-step/10 {
		t.Errorf("answers took %v; want the 2nd ≥ %v and the 3rd ≥ %v", took, step, 2*step)
	}
}

// TestAuthFailuresSlowGuessing: from one address with recent failures,
// credentials reach the backend one login at a time, each after the
// delay, however many connections guess in parallel (issue 16: the delay
// came after the backend had checked the password, so 20 connections had
// 200 guesses checked in 5 s).
func TestAuthFailuresSlowGuessing(t *testing.T) {
	const step, run, workers = 100 * time.Millisecond, 1500 * time.Millisecond, 10
	var checked atomic.Int32
	srv := &Server{
		Route: func(string) (*upstream.Backend, bool) {
			checked.Add(1) // stands for the backend checking a password
			return nil, false
		},
		AuthFailureDelay: step,
	}
	var wg sync.WaitGroup
	stop := time.Now().Add(run)
	for range workers {
		cc, sc := tcpPair(t)
		go srv.ServeConn(t.Context(), sc, Listener{TLS: upstream.TLSNone})
		t.Cleanup(func() { cc.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := bufio.NewReader(cc)
			cc.SetReadDeadline(stop)
			r.ReadString('\n')
			for time.Now().Before(stop) {
				io.WriteString(cc, "a LOGIN nobody x\r\n")
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	// Waits of 0, 1, 2, 3, 4 and 5 steps fit in 1.5 s: six checks (eight
	// allowed for a slow machine). Without the turn, the ten connections'
	// first guesses alone are checked at once.
	if n := checked.Load(); n > 8 {
		t.Fatalf("%d logins checked in %v from one address", n, run)
	}
}

// addrConn gives a connection another client address, as a PROXY header
// from a trusted balancer would.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

// loginFrom opens a session from address ip (a fake one over loopback)
// and returns the client's end past the greeting.
func loginFrom(t *testing.T, srv *Server, ip string) (net.Conn, *bufio.Reader) {
	cc, sc := tcpPair(t)
	t.Cleanup(func() { cc.Close() })
	remote := &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}
	go srv.ServeConn(t.Context(), addrConn{sc, remote}, Listener{TLS: upstream.TLSNone})
	r := bufio.NewReader(cc)
	cc.SetReadDeadline(time.Now().Add(stepTimeout))
	if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "* OK") {
		t.Fatalf("greeting: %q %v", l, err)
	}
	return cc, r
}

// TestLoginRateLimitPerUser: many parallel guesses at one login name,
// each from its own address and connection, reach the backend only as
// far as the name's bucket allows; the others are answered NO
// [UNAVAILABLE] without the backend. Another name is not affected; the
// name is case-folded. No password reaches the log (issue 16: 20 workers
// had 200 guesses checked in 5 s).
func TestLoginRateLimitPerUser(t *testing.T) {
	var logs logBuffer
	log := zerolog.New(&logs).Level(zerolog.TraceLevel)
	var checked atomic.Int32
	srv := &Server{
		Route: func(string) (*upstream.Backend, bool) {
			checked.Add(1) // stands for the backend checking a password
			return nil, false
		},
		Logger:           &log,
		AuthFailureDelay: -1, // each address guesses once: no delay anyway
		LoginRatePerUser: LoginRate{Burst: 3, Interval: time.Hour},
	}
	const workers = 20
	answers := make(chan string, workers)
	var wg sync.WaitGroup
	for i := range workers {
		cc, r := loginFrom(t, srv, fmt.Sprintf("192.0.2.%d", i+1))
		wg.Add(1)
		go func() {
			defer wg.Done()
			fmt.Fprintf(cc, "a LOGIN alice guess-pw-%d\r\n", i)
			l, _ := r.ReadString('\n')
			answers <- l
		}()
	}
	wg.Wait()
	close(answers)
	counts := map[string]int{}
	for l := range answers {
		counts[l]++
	}
	if n := checked.Load(); n != 3 {
		t.Errorf("%d guesses at alice checked; want 3 (the burst)", n)
	}
	if counts["a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"] != 3 || counts["a NO [UNAVAILABLE] Too many logins, try again later\r\n"] != workers-3 {
		t.Errorf("answers: %v", counts)
	}
	// The name's bucket is empty whatever the case; bob's is full.
	for _, tc := range []struct{ user, want string }{
		{"ALICE", "b NO [UNAVAILABLE] Too many logins, try again later\r\n"},
		{"bob", "b NO [AUTHENTICATIONFAILED] Authentication failed\r\n"},
	} {
		cc, r := loginFrom(t, srv, "198.51.100.7")
		fmt.Fprintf(cc, "b LOGIN %s guess-pw-x\r\n", tc.user)
		if l, _ := r.ReadString('\n'); l != tc.want {
			t.Errorf("%s: %q, want %q", tc.user, l, tc.want)
		}
	}
	if strings.Contains(logs.String(), "guess-pw") {
		t.Errorf("password in the log:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `"limit":"user"`) {
		t.Errorf("no log line for the refusals:\n%s", logs.String())
	}
}

// TestLoginRateLimitPerAddress: one address guessing many names is
// limited by its own bucket; another address is not.
func TestLoginRateLimitPerAddress(t *testing.T) {
	var checked atomic.Int32
	srv := &Server{
		Route: func(string) (*upstream.Backend, bool) {
			checked.Add(1)
			return nil, false
		},
		AuthFailureDelay: -1,
		LoginRatePerIP:   LoginRate{Burst: 4, Interval: time.Hour},
	}
	cc, r := loginFrom(t, srv, "192.0.2.1")
	var got []string
	for i := range 6 {
		fmt.Fprintf(cc, "a%d LOGIN user%d pw\r\n", i, i)
		l, _ := r.ReadString('\n')
		got = append(got, strings.TrimSpace(l))
	}
	for i, l := range got {
		want := "NO [AUTHENTICATIONFAILED]"
		if i >= 4 {
			want = "NO [UNAVAILABLE]"
		}
		if !strings.Contains(l, want) {
			t.Errorf("attempt %d: %q, want %s", i, l, want)
		}
	}
	cc2, r2 := loginFrom(t, srv, "192.0.2.2")
	fmt.Fprintf(cc2, "b LOGIN user9 pw\r\n")
	if l, _ := r2.ReadString('\n'); !strings.Contains(l, "NO [AUTHENTICATIONFAILED]") {
		t.Errorf("another address: %q", l)
	}
	if n := checked.Load(); n != 5 {
		t.Errorf("%d logins checked; want 5", n)
	}
}

// TestLoginRateNotAnOracle: a success takes its token like a failure, and
// once the bucket is empty the answer is the same whatever the password:
// the decision is taken before the backend sees it.
func TestLoginRateNotAnOracle(t *testing.T) {
	sb := newScriptedBackend(t)
	backend := &upstream.Backend{Name: "scripted", Address: sb.ln.Addr().String(), TLS: upstream.TLSNone}
	var routed atomic.Int32
	srv := &Server{
		Route: func(string) (*upstream.Backend, bool) {
			routed.Add(1)
			return backend, true
		},
		AuthFailureDelay: -1,
		LoginRatePerUser: LoginRate{Burst: 2, Interval: time.Hour},
	}
	// Backend side: the right password is "secret-pw".
	go func() {
		for c := range sb.conn {
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n")
				l, _ := br.ReadString('\n')
				if strings.Contains(l, "AGFsaWNlAHNlY3JldC1wdw==") { // \0alice\0secret-pw
					io.WriteString(c, "ug1 OK [CAPABILITY IMAP4rev1] in\r\n")
					br.ReadString('\n') // until the test ends
					return
				}
				io.WriteString(c, "ug1 NO [AUTHENTICATIONFAILED] no\r\n")
			}()
		}
	}()
	login := func(pass string) string {
		cc, r := loginFrom(t, srv, "192.0.2.1")
		fmt.Fprintf(cc, "a LOGIN alice %s\r\n", pass)
		l, _ := r.ReadString('\n')
		return l
	}
	if l := login("secret-pw"); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("first login: %q", l)
	}
	if l := login("wrong-pw"); !strings.HasPrefix(l, "a NO [AUTHENTICATIONFAILED]") {
		t.Fatalf("second login: %q", l)
	}
	for _, pass := range []string{"secret-pw", "wrong-pw"} {
		if l := login(pass); l != "a NO [UNAVAILABLE] Too many logins, try again later\r\n" {
			t.Fatalf("past the burst with %s: %q", pass, l)
		}
	}
	if n := routed.Load(); n != 2 {
		t.Fatalf("%d logins went toward the backend; want 2", n)
	}
}
