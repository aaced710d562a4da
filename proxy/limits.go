package proxy

import (
	"net"
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
	n    int
	last time.Time
}

// authFailures returns the per-address failure memory.
func (s *Server) authFailures() *lru.Cache[string, authFailure] {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failures == nil {
		s.failures, _ = lru.New[string, authFailure](authFailureEntries)
	}
	return s.failures
}

// failureDelay records a failed login from ip and returns how long to
// wait before answering it: growing with recent failures, so that password
// guessing from one address slows down without affecting others.
func (s *Server) failureDelay(ip string) time.Duration {
	f := s.authFailures()
	af, _ := f.Get(ip)
	if time.Since(af.last) > authFailureWindow {
		af.n = 0
	}
	af.n++
	af.last = time.Now()
	f.Add(ip, af)
	d := time.Duration(af.n-1) * s.authDelayStep()
	return min(d, maxAuthDelay)
}

// loginSucceeded forgets ip's failures.
func (s *Server) loginSucceeded(ip string) {
	s.authFailures().Remove(ip)
}
