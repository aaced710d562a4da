package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"uidgate/proxy"
	"uidgate/proxy/locks"
	"uidgate/rules"
	"uidgate/upstream"
)

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	// keep, if set, bounds what is kept to about its last keep bytes:
	// for tests that measure the process's heap while the gate logs
	// every line at trace level.
	keep int
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keep > 0 && s.b.Len()+len(p) > s.keep {
		tail := s.b.Bytes()[s.b.Len()-min(s.b.Len(), s.keep/2):]
		s.b = *bytes.NewBuffer(append(make([]byte, 0, s.keep), tail...))
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// gate is a uidgate instance running in the test process.
type gate struct {
	Addr string
	Srv  *proxy.Server
	Logs *syncBuffer
}

type gateOpts struct {
	listener proxy.Listener
	backend  upstream.Backend
	maxLit   int64
	// locks replaces the gate's own in-process lock manager (several
	// gates sharing one stand for instances sharing etcd); serialization
	// is its policy.
	locks         locks.Manager
	serialization rules.Serialization
	lockTimeout   time.Duration // proxy.Server.LockTimeout
}

// startGate starts uidgate on a free loopback port in front of backend,
// logging at trace level into a buffer that tests can search.
func startGate(t testing.TB, o gateOpts) *gate {
	t.Helper()
	logs := &syncBuffer{}
	log := zerolog.New(logs).Level(zerolog.TraceLevel).With().Timestamp().Logger()
	b := o.backend
	if b.Name == "" {
		b.Name = "test"
	}
	if b.TLS == "" {
		b.TLS = upstream.TLSNone
	}
	srv := &proxy.Server{
		Route: func(user string) (*upstream.Backend, bool) {
			if strings.HasPrefix(user, "nobody-routes-") {
				return nil, false
			}
			return &b, true
		},
		Logger:        &log,
		MaxLiteral:    o.maxLit,
		Locks:         o.locks,
		Serialization: o.serialization,
		LockTimeout:   o.lockTimeout,
		// Every test client is alice from 127.0.0.1, hundreds of logins a
		// run: the login buckets are tested in proxy/limits_test.go.
		LoginRatePerIP:   proxy.LoginRate{Burst: -1},
		LoginRatePerUser: proxy.LoginRate{Burst: -1},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if o.listener.TLS == "" {
		o.listener.TLS = upstream.TLSNone
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln, o.listener) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, proxy.ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
		if t.Failed() {
			var serious []string
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) {
					serious = append(serious, l)
				}
			}
			t.Logf("uidgate log, warnings and errors:\n%s", tailString(strings.Join(serious, "\n"), 6000))
			t.Logf("uidgate log (tail):\n%s", tailString(logs.String(), 6000))
			if dir := os.Getenv("UIDGATE_TEST_LOGS"); dir != "" {
				// The whole log, for a failure the tail does not explain.
				name := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+".log")
				if err := os.WriteFile(name, []byte(logs.String()), 0o644); err == nil {
					t.Logf("uidgate log written to %s", name)
				}
			}
		}
	})
	return &gate{Addr: ln.Addr().String(), Srv: srv, Logs: logs}
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// selfSigned makes a certificate for 127.0.0.1 and localhost, and a pool
// that trusts it.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "uidgate test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// checkNoLeaks fails the test if goroutines started during it are still
// running once it is done (after the cleanups registered before it).
func checkNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutines: %d before, %d after\n%s", before, n, buf)
				return
			}
			time.Sleep(20 * time.Millisecond) // polling for exit, not synchronisation
		}
	})
}
