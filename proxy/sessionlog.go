package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// What a session's "session end" line says (issue 18): why it ended,
// how it logged in, over which TLS version, for how long.

// Why a session ended: the "reason" of its "session end" line.
const (
	reasonLogout         = "client_logout"   // the client sent LOGOUT
	reasonClientGone     = "client_gone"     // the client closed or reset its connection, or stopped reading
	reasonBackendGone    = "backend_gone"    // the backend closed its connection, or said BYE on its own
	reasonIdle           = "idle_timeout"    // limits.idle_timeout passed without a command
	reasonPreauthTimeout = "preauth_timeout" // limits.preauth_timeout passed before a login
	reasonShutdown       = "shutdown"        // uidgate stopped (SIGTERM, SIGINT)
	reasonProtocol       = "protocol_error"  // the client or the backend broke the protocol, or a limit on it
	reasonTLS            = "tls_failed"      // the TLS handshake with the client failed
	reasonLocksLost      = "locks_lost"      // the etcd lease under a held lock was lost
	reasonUIDValidity    = "uidvalidity_changed"
	reasonInternal       = "internal_error" // a bug: "session panic" is logged before
	reasonOther          = "other"          // uidgate said BYE for a reason not listed here; see "bye"
)

// byeReasons classifies uidgate's own BYE texts by their start.
var byeReasons = []struct{ prefix, reason string }{
	{"[UNAVAILABLE] uidgate is shutting down", reasonShutdown},
	{"Autologout", reasonIdle},
	{"[UNAVAILABLE] Backend connection lost", reasonBackendGone},
	{"[UNAVAILABLE] Lock service lost", reasonLocksLost},
	{"[UNAVAILABLE] Mailbox UIDVALIDITY changed", reasonUIDValidity},
	{"[UNAVAILABLE] Backend protocol error", reasonProtocol},
	{"[UNAVAILABLE] Backend response too large", reasonProtocol},
	{"[UNAVAILABLE] uidgate could not read the mailbox", reasonProtocol},
	{"Too many bad commands", reasonProtocol},
	{"Line too long", reasonProtocol},
	{"Command too long", reasonProtocol},
	{"Literal too large", reasonProtocol},
	{"Data after STARTTLS", reasonProtocol},
	{"Cannot skip", reasonProtocol},
}

func byeReason(text string) string {
	for _, b := range byeReasons {
		if strings.HasPrefix(text, b.prefix) {
			return b.reason
		}
	}
	return reasonOther
}

// sessionEnd is why a session ended, and the BYE uidgate sent, if any.
type sessionEnd struct{ reason, bye string }

// sessionInfo is what the "session end" line reports beyond the counters.
type sessionInfo struct {
	// end is the first reason recorded; later ones are consequences.
	end atomic.Pointer[sessionEnd]
	// auth and tlsVersion are written by the session's goroutine before
	// the relay starts and read by it at the end.
	auth       string // "LOGIN", "AUTHENTICATE PLAIN", "AUTHENTICATE LOGIN"
	tlsVersion uint16
}

// ending records why the session ends, unless a reason came first.
func (ss *session) ending(reason, bye string) {
	ss.info.end.CompareAndSwap(nil, &sessionEnd{reason: reason, bye: bye})
}

// Relay directions, for relayEnded.
const (
	fromClient  = false // the goroutine reading the client and writing the backend
	fromBackend = true  // the goroutine reading the backend and writing the client
)

// relayEnded records why one direction of the relay ended with err, when
// uidgate did not end the session itself (then the reason is recorded
// already): a failed write is the peer written to, anything else the peer
// read from. It returns err.
func (ss *session) relayEnded(backendSide bool, err error) error {
	if err == nil || ss.closing.Load() {
		return err
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "write" {
		backendSide = !backendSide
	}
	if backendSide {
		ss.ending(reasonBackendGone, "")
	} else {
		ss.ending(reasonClientGone, "")
	}
	return err
}

// endReason returns why the session ended.
func (ss *session) endReason() sessionEnd {
	var e sessionEnd
	if p := ss.info.end.Load(); p != nil {
		e = *p
	}
	if rs := ss.rs; rs != nil && (e.reason == "" || e.reason == reasonClientGone || e.reason == reasonBackendGone) {
		rs.mu.Lock()
		logout, bye := rs.logoutTag != "", rs.byeSeen
		rs.mu.Unlock()
		switch {
		case logout:
			// LOGOUT was answered: whoever closed first after it, the
			// client ended the session.
			e.reason = reasonLogout
		case bye && e.reason == "":
			e.reason = reasonBackendGone
		}
	}
	switch {
	case e.reason == "":
		e.reason = reasonClientGone
	case e.reason == reasonIdle && ss.user == "":
		e.reason = reasonPreauthTimeout
	}
	return e
}

// logEnd writes the "session end" line. Durations are whole milliseconds
// in keys ending "_ms".
func (ss *session) logEnd() {
	e := ss.endReason()
	// After login ss.log carries user and backend already.
	ev := ss.log.Info().Str("reason", e.reason)
	if e.bye != "" {
		ev = ev.Str("bye", e.bye)
	}
	if ss.user != "" && ss.info.auth != "" {
		ev = ev.Str("auth", ss.info.auth)
	}
	ev.Str("tls", tlsVersionName(ss.info.tlsVersion)).
		Int64("bytes_in", ss.bytesIn.Load()).Int64("bytes_out", ss.bytesOut.Load()).
		Int64("duration_ms", time.Since(ss.start).Milliseconds()).Msg("session end")
}

func tlsVersionName(v uint16) string {
	if v == 0 {
		return "none"
	}
	return tls.VersionName(v)
}

// cidPrefix starts every session id of this process: 8 random base32
// characters (40 bits), so that ids are unique across restarts and across
// instances whose logs are read together; a counter follows.
var cidPrefix = func() string {
	var b [5]byte
	rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
}()

// cid is the id of the session numbered n: "k2mq7xta-17".
func cid(n uint64) string { return cidPrefix + "-" + strconv.FormatUint(n, 10) }

// Handshake failures are logged at info, but at most handshakeLogBurst at
// once and then one per handshakeLogEvery; the next line logged says how
// many were left out ("suppressed"). A scanner or a misconfigured client
// retrying in a loop must not flood the log.
const (
	handshakeLogBurst = 10
	handshakeLogEvery = time.Second
)

// helloInfo is what a client offered in its ClientHello.
type helloInfo struct {
	seen       bool
	serverName string
	versions   []string
	ciphers    []string
}

// tlsServer returns base with a GetConfigForClient that notes each
// ClientHello for the session it belongs to (by connection), so that a
// failed handshake can be logged with what the client offered. One is
// made per base configuration and kept: session resumption keys live in
// it.
func (s *Server) tlsServer(base *tls.Config) *tls.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.tlsConfigs[base]; ok {
		return c
	}
	c := base.Clone()
	next := base.GetConfigForClient
	c.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		if v, ok := s.hellos.Load(hi.Conn); ok {
			h := v.(*helloInfo)
			h.seen, h.serverName = true, hi.ServerName
			for _, v := range hi.SupportedVersions {
				h.versions = append(h.versions, tls.VersionName(v))
			}
			for _, cs := range hi.CipherSuites {
				h.ciphers = append(h.ciphers, tls.CipherSuiteName(cs))
			}
		}
		if next != nil {
			return next(hi)
		}
		return nil, nil
	}
	if s.tlsConfigs == nil {
		s.tlsConfigs = make(map[*tls.Config]*tls.Config)
	}
	s.tlsConfigs[base] = c
	return c
}

// handshake runs the server side of TLS on the client's connection
// (implicit TLS, or after STARTTLS). A failure is logged (see
// logHandshakeFailure) and ends the session.
func (ss *session) handshake(ctx context.Context) (*tls.Conn, bool) {
	h := &helloInfo{}
	raw := ss.conn
	ss.srv.hellos.Store(raw, h)
	defer ss.srv.hellos.Delete(raw)
	tc := tls.Server(raw, ss.srv.tlsServer(ss.lis.TLSConfig))
	if err := tc.HandshakeContext(ctx); err != nil {
		if !h.seen && isClosed(err) {
			ss.ending(reasonClientGone, "") // a port probe, say
		} else {
			ss.ending(reasonTLS, "")
		}
		ss.srv.logHandshakeFailure(ss, h, err)
		return nil, false
	}
	ss.info.tlsVersion = tc.ConnectionState().Version
	return tc, true
}

// logHandshakeFailure logs a failed handshake at info with what the client
// offered and why it failed, rate-limited. A connection closed before any
// ClientHello (a port probe, a load balancer's TCP check) is only a debug
// line.
func (s *Server) logHandshakeFailure(ss *session, h *helloInfo, err error) {
	if !h.seen && isClosed(err) {
		ss.log.Debug().Err(err).Msg("connection closed before the TLS handshake")
		return
	}
	s.Metrics.tlsFailure(ss.lis.Name)
	s.mu.Lock()
	if s.handshakeLog == nil {
		s.handshakeLog = rate.NewLimiter(rate.Every(handshakeLogEvery), handshakeLogBurst)
	}
	lim := s.handshakeLog
	s.mu.Unlock()
	if !lim.Allow() {
		s.handshakeLogSuppressed.Add(1)
		return
	}
	ev := ss.log.Info().Str("error", err.Error())
	if h.seen {
		if h.serverName != "" {
			ev = ev.Str("sni", h.serverName)
		}
		ev = ev.Strs("offered_versions", h.versions).Strs("offered_ciphers", h.ciphers)
	}
	if n := s.handshakeLogSuppressed.Swap(0); n > 0 {
		ev = ev.Uint64("suppressed", n)
	}
	ev.Msg("TLS handshake failed")
}
