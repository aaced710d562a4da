// Package proxy is uidgate's IMAP front end: listeners, the pre-auth
// dialogue it answers itself, and the relay that carries an authenticated
// session to its backend, parsing both directions and forwarding the
// original bytes.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"uidgate/proxy/imapwire"
	"uidgate/proxy/locks"
	"uidgate/rules"
	"uidgate/upstream"
)

const (
	// DefaultPreauthTimeout bounds the time from connect to login.
	DefaultPreauthTimeout = 60 * time.Second
	// DefaultIdleTimeout: RFC 9051 §5.4 requires an inactivity timer of at
	// least 30 minutes for authenticated sessions.
	DefaultIdleTimeout = 31 * time.Minute
	// DefaultMaxLiteral bounds a literal a client may announce.
	DefaultMaxLiteral = 100 << 20
	// DefaultMaxBadCommands before auth; the next one ends the session.
	DefaultMaxBadCommands = 3
	// DefaultMaxInFlight bounds the commands of a session in flight: a
	// client that pipelines and never reads must not grow memory.
	DefaultMaxInFlight = 64
	// writeTimeout bounds a write to a client that does not read.
	writeTimeout = 5 * time.Minute
)

// Route resolves the backend for a user name. ok is false if no route
// matches. The returned Backend must not be modified.
type Route func(user string) (b *upstream.Backend, ok bool)

// Listener describes how clients connect on one listening socket.
type Listener struct {
	Name string // for logs; the address if empty
	// TLS is "none", "starttls" or "implicit".
	TLS upstream.TLSMode
	// TLSConfig holds the certificate for starttls and implicit.
	TLSConfig *tls.Config
	// RequireTLS refuses LOGIN/AUTHENTICATE (LOGINDISABLED) until STARTTLS.
	RequireTLS bool
	// TrustedProxies, when set, accepts a PROXY protocol header (v1 or v2)
	// from these networks, and the client address it gives replaces the
	// connection's; from anywhere else a header is not parsed (and fails
	// as a bad command). Connections from these networks must send one.
	TrustedProxies []netip.Prefix
}

// Server proxies IMAP sessions. Fields must not change after Serve is
// first called. The zero value (with Route set) serves with the defaults.
type Server struct {
	// Route picks the backend for a user; required unless Lookup is set.
	Route Route
	// Lookup, if set, routes logins instead of Route, and may ask a
	// directory (see LoginRouter, route.go).
	Lookup LoginRouter
	// Logger receives session logs; nil logs nothing.
	Logger *zerolog.Logger
	// MaxLine bounds a command line (imapwire.DefaultMaxLine if zero).
	MaxLine int
	// MaxLiteral bounds literal sizes (DefaultMaxLiteral if zero).
	MaxLiteral int64
	// PreauthTimeout, IdleTimeout: see the Default constants.
	PreauthTimeout time.Duration
	IdleTimeout    time.Duration
	// MaxBadCommands before authentication (DefaultMaxBadCommands if zero).
	MaxBadCommands int
	// MaxInFlight bounds a session's commands sent and not yet answered
	// (DefaultMaxInFlight if zero); past it the client is not read.
	MaxInFlight int
	// Locks serializes conflicting commands across sessions; nil uses one
	// in-process manager for this Server.
	Locks locks.Manager
	// LockTimeout bounds a lock wait (DefaultLockTimeout if zero); past it
	// the command is answered NO [INUSE] and not sent.
	LockTimeout time.Duration
	// Serialization says which commands take which locks.
	Serialization rules.Serialization
	// Metrics, if set, records Prometheus metrics (see NewMetrics).
	Metrics *Metrics
	// MaxConnections and MaxConnectionsPerIP bound client connections
	// (DefaultMaxConnections, DefaultMaxConnectionsPerIP if zero); past
	// them a client gets "* BYE [UNAVAILABLE]".
	MaxConnections      int
	MaxConnectionsPerIP int
	// AuthFailureDelay is added per recent failed login from one address
	// before the next failure is answered (DefaultAuthFailureDelay if
	// zero; negative: none).
	AuthFailureDelay time.Duration
	// LoginRatePerIP and LoginRatePerUser are token buckets of login
	// attempts per client address and per login name (case-folded),
	// taken before the backend is asked, whatever the outcome; an attempt
	// past either is answered NO [UNAVAILABLE] (a zero field takes
	// DefaultLoginBurstPerIP, DefaultLoginIntervalPerIP and their PerUser
	// counterparts; a negative Burst: no limit).
	LoginRatePerIP   LoginRate
	LoginRatePerUser LoginRate
	// ExpansionFactor and ExpansionFloor bound translations: a rewritten
	// command or translated response may be max(ExpansionFloor,
	// ExpansionFactor × its input) bytes (DefaultExpansionFactor,
	// DefaultExpansionFloor if zero). Past it a command is answered NO
	// [TOOBIG] and not sent; a response ends the session with BYE.
	ExpansionFactor int
	ExpansionFloor  int

	mu        sync.Mutex
	memLocks  *locks.Memory
	perIP     map[string]int
	logins    *lru.Cache[string, *loginRecord]
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	wg        sync.WaitGroup
	shutdown  atomic.Bool
	nextID    atomic.Uint64

	// tlsConfigs: each listener's TLS configuration with the ClientHello
	// noted (tlsServer); hellos: the ClientHello seen on each connection
	// in a handshake; handshakeLog bounds the lines of failed handshakes.
	tlsConfigs             map[*tls.Config]*tls.Config
	hellos                 sync.Map // net.Conn → *helloInfo
	handshakeLog           *rate.Limiter
	handshakeLogSuppressed atomic.Uint64
}

// proxyHeaderTimeout bounds the wait for a PROXY protocol header.
const proxyHeaderTimeout = 10 * time.Second

// trusted reports whether addr is inside one of nets.
func trusted(addr net.Addr, nets []netip.Prefix) bool {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false
	}
	for _, n := range nets {
		if n.Contains(ap.Addr().Unmap()) {
			return true
		}
	}
	return false
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

func (s *Server) logger() zerolog.Logger {
	if s.Logger == nil {
		return zerolog.Nop()
	}
	return *s.Logger
}

func (s *Server) maxLine() int {
	if s.MaxLine > 0 {
		return s.MaxLine
	}
	return imapwire.DefaultMaxLine
}

func (s *Server) maxLiteral() int64 {
	if s.MaxLiteral > 0 {
		return s.MaxLiteral
	}
	return DefaultMaxLiteral
}

func (s *Server) preauthTimeout() time.Duration {
	if s.PreauthTimeout > 0 {
		return s.PreauthTimeout
	}
	return DefaultPreauthTimeout
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return DefaultIdleTimeout
}

func (s *Server) maxInFlight() int {
	if s.MaxInFlight > 0 {
		return s.MaxInFlight
	}
	return DefaultMaxInFlight
}

func (s *Server) maxBad() int {
	if s.MaxBadCommands > 0 {
		return s.MaxBadCommands
	}
	return DefaultMaxBadCommands
}

// Serve accepts connections on ln until Shutdown or an accept error. It
// owns ln and closes it on return.
func (s *Server) Serve(ln net.Listener, l Listener) error {
	if l.Name == "" {
		l.Name = ln.Addr().String()
	}
	s.mu.Lock()
	if s.shutdown.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	if len(l.TrustedProxies) > 0 {
		ln = &proxyproto.Listener{
			Listener:          ln,
			ReadHeaderTimeout: proxyHeaderTimeout,
			ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
				if trusted(o.Upstream, l.TrustedProxies) {
					return proxyproto.USE, nil
				}
				// Not parsed at all: a header from elsewhere is garbage to IMAP
				// and a direct client is not kept waiting for one.
				return proxyproto.SKIP, nil
			},
		}
	}
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.shutdown.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Temporary failure (e.g. out of file descriptors): back off
				// as net/http does rather than spin.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		go s.ServeConn(context.Background(), c, l)
	}
}

// ServeConn serves one client connection and returns when the session
// ends. It owns c and closes it.
func (s *Server) ServeConn(ctx context.Context, c net.Conn, l Listener) {
	ss := newSession(s, c, l)
	if refusal, ok := s.track(ss); !ok {
		if refusal != "" {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("* BYE " + refusal + "\r\n"))
			ss.log.Warn().Msg("connection refused: " + refusal)
		}
		c.Close()
		return
	}
	defer s.untrack(ss)
	defer func() {
		if p := recover(); p != nil {
			// One session's bug must not take down the others.
			ss.log.Error().Interface("panic", p).Bytes("stack", debug.Stack()).Msg("session panic")
			ss.ending(reasonInternal, "")
			ss.closeAll()
		}
		ss.logEnd()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, ss.closeAll)
	defer stop()
	ss.run(ctx)
}

func (s *Server) track(ss *session) (refusal string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown.Load() {
		return "", false
	}
	if why := s.admitLocked(ss.ip); why != "" {
		return why, false
	}
	if s.sessions == nil {
		s.sessions = make(map[*session]struct{})
	}
	s.sessions[ss] = struct{}{}
	s.wg.Add(1)
	return "", true
}

func (s *Server) untrack(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	s.leaveLocked(ss.ip)
	s.mu.Unlock()
	ss.view.ended() // admin view: Kick's wait ends (admin.go)
	s.wg.Done()
}

// Shutdown stops accepting, tells every client "* BYE" (at a response
// boundary, never inside a literal) and closes its session, then waits for
// session goroutines to end. ctx bounds all of it: when it expires, every
// session still open is closed at once, BYE or not, and Shutdown returns
// ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown.Store(true)
	for ln := range s.listeners {
		ln.Close()
	}
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	var byes sync.WaitGroup
	for _, ss := range sessions {
		byes.Add(1)
		go func() {
			defer byes.Done()
			const bye = "[UNAVAILABLE] uidgate is shutting down"
			ss.ending(reasonShutdown, bye)
			ss.bye(bye)
		}()
	}
	done := make(chan struct{})
	go func() {
		byes.Wait()
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		// A session whose BYE waits on a client that does not read (or
		// on a response that does not end) is cut off now.
		for _, ss := range sessions {
			ss.closeAll()
		}
		return ctx.Err()
	}
}

// ActiveSessions reports the sessions being served.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}
