package proxy

import (
	"net"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

const (
	// DefaultMaxConnections bounds client connections in total.
	DefaultMaxConnections = 20000
	// DefaultMaxConnectionsPerIP bounds client connections from one
	// address (a NAT gateway can carry many users).
	DefaultMaxConnectionsPerIP = 200
	// DefaultAuthFailureDelay is added per recent failed login from an
	// address before answering the next failure, up to maxAuthDelay.
	DefaultAuthFailureDelay = time.Second
	maxAuthDelay            = 10 * time.Second
	// authFailureWindow is how long failures are remembered per address,
	// for at most authFailureEntries addresses.
	authFailureWindow  = 15 * time.Minute
	authFailureEntries = 65536
)

func (s *Server) maxConns() int {
	if s.MaxConnections > 0 {
		return s.MaxConnections
	}
	return DefaultMaxConnections
}

func (s *Server) maxConnsPerIP() int {
	if s.MaxConnectionsPerIP > 0 {
		return s.MaxConnectionsPerIP
	}
	return DefaultMaxConnectionsPerIP
}

func (s *Server) authDelayStep() time.Duration {
	switch {
	case s.AuthFailureDelay > 0:
		return s.AuthFailureDelay
	case s.AuthFailureDelay < 0:
		return 0
	}
	return DefaultAuthFailureDelay
}

func hostOf(addr net.Addr) string {
	if addr == nil {
		return ""
	}
	h, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	return h
}

// admit counts a new connection from ip, or says why it is refused.
// Must hold s.mu.
func (s *Server) admitLocked(ip string) string {
	if len(s.sessions) >= s.maxConns() {
		return "[UNAVAILABLE] Too many connections, try again later"
	}
	if s.perIP == nil {
		s.perIP = make(map[string]int)
	}
	if s.perIP[ip] >= s.maxConnsPerIP() {
		return "[UNAVAILABLE] Too many connections from your address"
	}
	s.perIP[ip]++
	return ""
}

func (s *Server) leaveLocked(ip string) {
	if s.perIP[ip] <= 1 {
		delete(s.perIP, ip)
		return
	}
	s.perIP[ip]--
}

// authFailure is one address's recent failed logins. The LRU bounds how
// many addresses are remembered; old entries expire when next looked at
// (golang-lru's expirable cache runs a goroutine that never stops).
type authFailure struct {
	// turn admits one login at a time from the address while it has
	// recent failures: parallel connections must not multiply guesses.
	turn chan struct{}
	mu   sync.Mutex // guards n and last
	n    int
	last time.Time
}

// authFailures returns the per-address failure memory.
func (s *Server) authFailures() *lru.Cache[string, *authFailure] {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failures == nil {
		s.failures, _ = lru.New[string, *authFailure](authFailureEntries)
	}
	return s.failures
}

// loginTurn is taken before a login's credentials go to a backend. From
// an address with recent failures, logins go one at a time, each after a
// delay that grows with those failures (auth_failure_delay each, up to
// maxAuthDelay), whether it then succeeds or not: so guessing from one
// address is slowed before the backend checks a password, however many
// connections it opens (issue 16). Other addresses never wait. release
// must be called when the login is answered; ok is false if done closed
// first.
func (s *Server) loginTurn(ip string, done <-chan struct{}) (release func(), ok bool) {
	f := s.authFailures()
	af, found := f.Get(ip)
	if !found {
		return func() {}, true
	}
	select {
	case af.turn <- struct{}{}:
	case <-done:
		return nil, false
	}
	release = func() { <-af.turn }
	af.mu.Lock()
	if time.Since(af.last) > authFailureWindow {
		af.n = 0
	}
	wait := time.Until(af.last.Add(min(time.Duration(af.n)*s.authDelayStep(), maxAuthDelay)))
	af.mu.Unlock()
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-done:
			release()
			return nil, false
		}
	}
	return release, true
}

// loginFailed records a failed login from ip.
func (s *Server) loginFailed(ip string) {
	f := s.authFailures()
	af, found := f.Get(ip)
	if !found {
		af = &authFailure{turn: make(chan struct{}, 1)}
		if prev, ok, _ := f.PeekOrAdd(ip, af); ok {
			af = prev
		}
	}
	af.mu.Lock()
	defer af.mu.Unlock()
	if time.Since(af.last) > authFailureWindow {
		af.n = 0
	}
	af.n++
	af.last = time.Now()
}

// loginSucceeded forgets ip's failures.
func (s *Server) loginSucceeded(ip string) {
	s.authFailures().Remove(ip)
}
