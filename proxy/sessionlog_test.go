package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"uidgate/upstream"
)

// endLine waits for the "session end" line in logs and returns it, raw
// and decoded.
func endLine(t *testing.T, logs *logBuffer) (string, map[string]any) {
	t.Helper()
	deadline := time.Now().Add(stepTimeout)
	for {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, `"message":"session end"`) {
				var m map[string]any
				if err := json.Unmarshal([]byte(l), &m); err != nil {
					t.Fatalf("session end line %q: %v", l, err)
				}
				return l, m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session end line:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond) // polling the log
	}
}

var cidPattern = regexp.MustCompile(`^[a-z2-7]{8}-[0-9]+$`)

// TestSessionEndLine: issue 18. The line has each key once, durations in
// milliseconds under keys that say so, the TLS version, the login
// mechanism and why the session ended; cid is unique across restarts.
func TestSessionEndLine(t *testing.T) {
	for _, tt := range []struct {
		name   string
		srvOpt func(*Server)
		end    func(s *buildSession)
		reason string
		bye    string
	}{
		{name: "logout", reason: "client_logout", end: func(s *buildSession) {
			s.send(s.c, "o LOGOUT\r\n")
			s.expect(s.br, s.b, "o LOGOUT")
			s.send(s.b, "* BYE logging out\r\no OK done\r\n")
		}},
		{name: "client gone", reason: "client_gone", end: func(s *buildSession) { s.c.Close() }},
		{name: "backend gone", reason: "backend_gone", bye: "[UNAVAILABLE] Backend connection lost", end: func(s *buildSession) { s.b.Close() }},
		{name: "backend BYE", reason: "backend_gone", end: func(s *buildSession) {
			s.send(s.b, "* BYE server shutting down\r\n")
			s.b.Close()
		}},
		{name: "idle", reason: "idle_timeout", bye: "Autologout; idle for too long",
			srvOpt: func(srv *Server) { srv.IdleTimeout = 200 * time.Millisecond }, end: func(*buildSession) {}},
		{name: "protocol", reason: "protocol_error", bye: "Cannot skip an unparsable command's literal", end: func(s *buildSession) {
			s.send(s.c, "x {5+}\r\nhello\r\n")
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := startSessionWith(t, "IMAP4rev1 AUTH=PLAIN SASL-IR", tt.srvOpt)
			tt.end(s)
			raw, m := endLine(t, s.logs)
			for _, k := range []string{"user", "backend", "cid", "reason", "duration_ms"} {
				if n := strings.Count(raw, `"`+k+`":`); n != 1 {
					t.Errorf("%q appears %d times in %s", k, n, raw)
				}
			}
			if strings.Contains(raw, `"duration":`) {
				t.Errorf("duration without a unit: %s", raw)
			}
			// startSessionWith logs in with LOGIN (sent on as AUTHENTICATE).
			want := map[string]any{"user": "alice", "backend": "scripted", "reason": tt.reason, "auth": "LOGIN", "tls": "none"}
			if tt.bye != "" {
				want["bye"] = tt.bye
			}
			for k, v := range want {
				if m[k] != v {
					t.Errorf("%s = %v, want %v in %s", k, m[k], v, raw)
				}
			}
			if _, ok := m["duration_ms"].(float64); !ok {
				t.Errorf("duration_ms not a number: %s", raw)
			}
			if cid, _ := m["cid"].(string); !cidPattern.MatchString(cid) || !strings.HasPrefix(cid, cidPrefix+"-") {
				t.Errorf("cid %q, want %s-N", m["cid"], cidPrefix)
			}
		})
	}
}

// TestSessionEndBeforeLogin: the reasons of sessions that never log in.
func TestSessionEndBeforeLogin(t *testing.T) {
	for _, tt := range []struct {
		name    string
		send    string
		reason  string
		preauth time.Duration
	}{
		{name: "logout", send: "a LOGOUT\r\n", reason: "client_logout"},
		{name: "bad commands", send: "a FOO\r\nb FOO\r\nc FOO\r\n", reason: "protocol_error"},
		{name: "preauth timeout", reason: "preauth_timeout", preauth: 200 * time.Millisecond},
		{name: "gone", reason: "client_gone"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logs := &logBuffer{}
			log := zerolog.New(logs)
			srv := &Server{Route: func(string) (*upstream.Backend, bool) { return nil, false }, Logger: &log, PreauthTimeout: tt.preauth}
			cc, sc := tcpPair(t)
			defer cc.Close()
			go srv.ServeConn(t.Context(), sc, Listener{TLS: upstream.TLSNone})
			r := bufio.NewReader(cc)
			r.ReadString('\n')
			io.WriteString(cc, tt.send)
			if tt.reason == "client_gone" {
				cc.Close()
			}
			raw, m := endLine(t, logs)
			if m["reason"] != tt.reason || strings.Contains(raw, `"user"`) || strings.Contains(raw, `"auth"`) {
				t.Errorf("session end %s; want reason %s, no user or auth", raw, tt.reason)
			}
		})
	}
}

// TestSessionEndShutdown: a session ended by Shutdown says so.
func TestSessionEndShutdown(t *testing.T) {
	var srv *Server
	s := startSessionWith(t, "IMAP4rev1 AUTH=PLAIN SASL-IR", func(x *Server) { srv = x })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() { io.Copy(io.Discard, s.c); s.c.Close() }()
	srv.Shutdown(ctx)
	_, m := endLine(t, s.logs)
	if m["reason"] != "shutdown" {
		t.Errorf("reason %v, want shutdown", m["reason"])
	}
}

func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestHandshakeFailureLogged: issue 18, failed handshakes were debug
// lines. Now: info, with what the client offered and why it failed,
// rate-limited; a connection closed before its ClientHello stays debug.
func TestHandshakeFailureLogged(t *testing.T) {
	logs := &logBuffer{}
	log := zerolog.New(logs).Level(zerolog.InfoLevel)
	srv := &Server{Route: func(string) (*upstream.Backend, bool) { return nil, false }, Logger: &log}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t)}, MinVersion: tls.VersionTLS12}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln, Listener{TLS: upstream.TLSImplicit, TLSConfig: cfg})
	}()
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		<-served
	})
	old := func() error {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11, ServerName: "imap.example.org"})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := old(); err == nil {
		t.Fatal("TLS 1.1 handshake with a min_version 1.2 listener succeeded")
	}
	// A probe that connects and closes: not an info line.
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
	}
	var line map[string]any
	waitLog := func(n int) []string {
		t.Helper()
		deadline := time.Now().Add(stepTimeout)
		for {
			var got []string
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, `"TLS handshake failed"`) {
					got = append(got, l)
				}
			}
			if len(got) >= n || time.Now().After(deadline) {
				return got
			}
			time.Sleep(10 * time.Millisecond) // polling the log
		}
	}
	got := waitLog(1)
	if len(got) != 1 {
		t.Fatalf("%d handshake failure lines, want 1:\n%s", len(got), logs.String())
	}
	json.Unmarshal([]byte(got[0]), &line)
	if line["level"] != "info" || line["sni"] != "imap.example.org" || !strings.Contains(got[0], `"offered_versions":["TLS 1.1","TLS 1.0"]`) ||
		!strings.Contains(got[0], `"offered_ciphers":["TLS_ECDHE_`) || !strings.Contains(got[0], "unsupported versions") || line["remote"] == nil {
		t.Errorf("handshake failure line: %s", got[0])
	}
	// A flood: at most the burst is logged, the rest counted.
	for range 3 * handshakeLogBurst {
		old()
	}
	// Each failed handshake's session is tracked by then (the server
	// answered it); once none is left, every one has logged.
	for deadline := time.Now().Add(stepTimeout); srv.ActiveSessions() > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still running after the flood", srv.ActiveSessions())
		}
		time.Sleep(10 * time.Millisecond) // polling the server
	}
	if got := waitLog(0); len(got) > handshakeLogBurst+1 {
		t.Errorf("%d lines for %d failures in a burst; want at most %d", len(got), 3*handshakeLogBurst+1, handshakeLogBurst+1)
	}
	time.Sleep(handshakeLogEvery)
	n := len(waitLog(0))
	old()
	got = waitLog(n + 1)
	if len(got) != n+1 || !strings.Contains(got[n], `"suppressed":`) {
		t.Errorf("after the flood: %q; want a line with suppressed", got[n:])
	}
	if strings.Count(logs.String(), `"reason":"tls_failed"`) == 0 {
		t.Errorf("no session end with reason tls_failed:\n%s", logs.String())
	}
}
