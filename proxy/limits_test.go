package proxy

import (
	"bufio"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
