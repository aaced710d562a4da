package proxy

import (
	"crypto/sha256"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"

	"uidgate/proxy/imapwire"
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
	// authFailureWindow is how long failures are remembered per address.
	authFailureWindow = 15 * time.Minute
	// loginEntries bounds the addresses and login names remembered (a
	// record is about 300 bytes with its key: 20 MB at most).
	loginEntries = 65536

	// DefaultLoginBurstPerIP and DefaultLoginIntervalPerIP: the login
	// attempts from one address, far above a NAT gateway's users' needs;
	// a guesser gets 20 a second.
	DefaultLoginBurstPerIP    = 200
	DefaultLoginIntervalPerIP = 50 * time.Millisecond
	// DefaultLoginBurstPerUser and DefaultLoginIntervalPerUser: the login
	// attempts at one name, far above a user's devices' needs (a client
	// opens a few connections at start); a guesser gets 30 a minute.
	DefaultLoginBurstPerUser    = 30
	DefaultLoginIntervalPerUser = 2 * time.Second

	// DefaultExpansionFactor and DefaultExpansionFloor bound a translation
	// (see Server.ExpansionFactor): 16 MiB holds "1:*" of a million
	// messages with every other UID gone.
	DefaultExpansionFactor = 16
	DefaultExpansionFloor  = 16 << 20

	// upstreamMaxLine bounds a backend line held whole: one that is
	// translated ("* SEARCH" answering a client's SEARCH by number: 7 MB
	// at 1,000,000 results) or parsed. Past it the session ends with BYE
	// and a log line naming the backend (issue 16: a line held whole, and
	// its translation, must fit the documented bound of a session).
	upstreamMaxLine = 16 << 20
	// upstreamMaxStreamed bounds a backend line streamed as it arrives,
	// never held whole: a UID list read into the map or a resync, a
	// result passed to the client unchanged (readUpLine).
	upstreamMaxStreamed = 64 << 20
)

// setUpstreamBounds sets the line bounds of a backend reader for the
// relay (before it, at login, a backend line has the default bound).
func setUpstreamBounds(ur *imapwire.Reader) {
	ur.SetMaxLine(upstreamMaxLine)
	ur.SetMaxStreamed(upstreamMaxStreamed)
}

// newUpstreamReader is a backend reader bounded as in the relay.
func newUpstreamReader(r io.Reader) *imapwire.Reader {
	ur := imapwire.NewReader(r, upstreamMaxLine)
	setUpstreamBounds(ur)
	return ur
}

// LoginRate is a token bucket of login attempts: Burst at once, then one
// more every Interval. A negative Burst is no limit.
type LoginRate struct {
	Burst    int
	Interval time.Duration
}

func (r LoginRate) or(burst int, interval time.Duration) LoginRate {
	if r.Burst == 0 {
		r.Burst = burst
	}
	if r.Interval <= 0 {
		r.Interval = interval
	}
	return r
}

func (s *Server) loginRatePerIP() LoginRate {
	return s.LoginRatePerIP.or(DefaultLoginBurstPerIP, DefaultLoginIntervalPerIP)
}

func (s *Server) loginRatePerUser() LoginRate {
	return s.LoginRatePerUser.or(DefaultLoginBurstPerUser, DefaultLoginIntervalPerUser)
}

// expansionCap is how many bytes a translation of in bytes may reach.
func (s *Server) expansionCap(in int) int {
	f, floor := s.ExpansionFactor, s.ExpansionFloor
	if f <= 0 {
		f = DefaultExpansionFactor
	}
	if floor <= 0 {
		floor = DefaultExpansionFloor
	}
	return max(floor, f*in)
}

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

// loginRecord is what is remembered of one client address ("a " key) or
// one login name ("u " key) in the server's LRU: its token bucket of login
// attempts and, for an address, its recent failed logins. The LRU bounds
// how many are remembered; old failures expire when next looked at
// (golang-lru's expirable cache runs a goroutine that never stops).
type loginRecord struct {
	bucket *rate.Limiter
	// turn admits one login at a time from the address while it has
	// recent failures: parallel connections must not multiply guesses.
	turn chan struct{}
	mu   sync.Mutex // guards n and last
	n    int
	last time.Time
}

// loginRecords returns the per-address and per-name login memory.
func (s *Server) loginRecords() *lru.Cache[string, *loginRecord] {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.logins == nil {
		s.logins, _ = lru.New[string, *loginRecord](loginEntries)
	}
	return s.logins
}

// loginRecordFor returns key's record, made with a full bucket of r if
// there is none.
func (s *Server) loginRecordFor(key string, r LoginRate) *loginRecord {
	c := s.loginRecords()
	if rec, ok := c.Get(key); ok {
		return rec
	}
	rec := &loginRecord{turn: make(chan struct{}, 1)}
	if r.Burst < 0 {
		rec.bucket = rate.NewLimiter(rate.Inf, 0)
	} else {
		rec.bucket = rate.NewLimiter(rate.Every(r.Interval), r.Burst)
	}
	if prev, ok, _ := c.PeekOrAdd(key, rec); ok {
		return prev
	}
	return rec
}

func addrKey(ip string) string { return "a " + ip }

// userKey is a login name's key: case-folded, and hashed so that a key
// costs 34 bytes however long the name (up to preauthMaxLiteral).
func userKey(user string) string {
	sum := sha256.Sum256([]byte(strings.ToLower(user)))
	return "u " + string(sum[:])
}

// loginAllowed takes a token from the client address's bucket and one
// from the login name's, or neither: it returns which bucket is empty
// ("address", "user") or "". It runs before anything else is done with
// the credentials, so its answer is the same whatever the password, and
// nothing in it waits for a backend (issue 16: the old delay came after
// the backend had checked the password, and never for a success).
func (s *Server) loginAllowed(ip, user string) string {
	now := time.Now()
	a := s.loginRecordFor(addrKey(ip), s.loginRatePerIP()).bucket
	u := s.loginRecordFor(userKey(user), s.loginRatePerUser()).bucket
	ra := a.ReserveN(now, 1)
	if !ra.OK() || ra.DelayFrom(now) > 0 {
		ra.CancelAt(now)
		return "address"
	}
	if ru := u.ReserveN(now, 1); !ru.OK() || ru.DelayFrom(now) > 0 {
		ru.CancelAt(now)
		ra.CancelAt(now)
		return "user"
	}
	return ""
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
	rec, found := s.loginRecords().Get(addrKey(ip))
	if !found {
		return func() {}, true
	}
	rec.mu.Lock()
	if time.Since(rec.last) > authFailureWindow {
		rec.n = 0
	}
	failed := rec.n > 0
	rec.mu.Unlock()
	if !failed {
		return func() {}, true
	}
	select {
	case rec.turn <- struct{}{}:
	case <-done:
		return nil, false
	}
	release = func() { <-rec.turn }
	rec.mu.Lock()
	wait := time.Until(rec.last.Add(min(time.Duration(rec.n)*s.authDelayStep(), maxAuthDelay)))
	rec.mu.Unlock()
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
	rec := s.loginRecordFor(addrKey(ip), s.loginRatePerIP())
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if time.Since(rec.last) > authFailureWindow {
		rec.n = 0
	}
	rec.n++
	rec.last = time.Now()
}

// loginSucceeded forgets ip's failures. Its bucket stays: a success must
// not refill it for the guesses that follow.
func (s *Server) loginSucceeded(ip string) {
	if rec, ok := s.loginRecords().Peek(addrKey(ip)); ok {
		rec.mu.Lock()
		rec.n = 0
		rec.mu.Unlock()
	}
}

// maxKeptOut bounds the translation buffer an upstream goroutine keeps
// between responses; a bigger one, made for one big answer, is let go.
const maxKeptOut = 64 << 10

// maxBackendLiteral is the largest literal a backend may announce: ten
// digits (issue 16). max_literal bounds what clients send, not what a
// mailbox holds, so a stored message of any size below this is fetched,
// streamed in constant memory.
const maxBackendLiteral = 9_999_999_999
