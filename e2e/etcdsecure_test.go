package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"uidgate/configs"
	"uidgate/e2e/etcdtest"
	"uidgate/proxy/locks"
	"uidgate/proxy/locks/etcdlock"
)

// securePrefix is where the secure tests' account may read and write.
const securePrefix = "/t/secure/"

// secureLocks is [locks] as an operator would write it for c: its TLS
// files (with TLS), and the account uidgate/password (with auth).
func secureLocks(c *etcdtest.Cluster, password string) configs.Locks {
	l := configs.Locks{Backend: configs.LocksEtcd, Endpoints: c.Endpoints(), Prefix: securePrefix}
	if c.TLS != nil {
		l.CAFile, l.Cert, l.Key = c.TLS.CAFile, c.TLS.CertFile, c.TLS.KeyFile
	}
	if c.RootPassword != "" {
		l.Username, l.Password = "uidgate", password
	}
	return l
}

// startLocks makes the manager uidgate serve would make from l (through
// configs' TLS loading), logging into a buffer. It does not wait for a
// lease; it is closed at the test's end.
func startLocks(t *testing.T, l configs.Locks) (*etcdlock.Manager, *syncBuffer) {
	t.Helper()
	tc, err := l.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := zerolog.New(logs)
	m, err := etcdlock.New(etcdlock.Config{Endpoints: l.Endpoints, TLS: tc, Username: l.Username, Password: l.Password,
		Prefix: l.PrefixOrDefault(), LeaseTTL: testLeaseTTL, OpTimeout: time.Second, Logger: &log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, logs
}

// TestEtcdSecure: uidgate's lock manager against an etcd with TLS and
// client certificates required, with auth (an account whose role may
// read and write the lock prefix only, as docs/DEPLOYMENT.md says), and
// with both: it takes a lease and grants keys. With a credential wrong
// (password, CA, no client certificate, a prefix the role may not write)
// it grants nothing and Ready (/readyz's note) and the log say why,
// without the password.
func TestEtcdSecure(t *testing.T) {
	checkNoLeaks(t)
	const password = "uidgate-s3cret-pw"
	for _, o := range []etcdtest.Options{{TLS: true}, {Auth: true}, {TLS: true, Auth: true}} {
		t.Run(fmt.Sprintf("tls=%t auth=%t", o.TLS, o.Auth), func(t *testing.T) {
			etcd := etcdtest.StartWith(t, o)
			if o.Auth {
				etcd.AddUser(t, "uidgate", password, securePrefix)
			}
			good := secureLocks(etcd, password)
			m, _ := startLocks(t, good)
			mustWait(t, 10*time.Second, "a lease", m.Live)
			rel, err := acquire(t, m, 5*time.Second, "mailbox:be/INBOX")
			if err != nil {
				t.Fatal(err)
			}
			rel()
			if err := m.Ready(t.Context()); err != nil {
				t.Errorf("Ready: %v", err)
			}
			if !o.TLS || !o.Auth {
				return
			}
			wrongPassword := good
			wrongPassword.Password = "not-the-" + password
			noClientCert := good
			noClientCert.Cert, noClientCert.Key = "", ""
			systemRoots := good
			systemRoots.CAFile = ""
			otherPrefix := good
			otherPrefix.Prefix = "/t/not-granted/"
			for _, tc := range []struct {
				name string
				l    configs.Locks
				why  string // in Ready's error and the log
				// lease: a lease is taken (etcd asks no permission
				// for one), but no key under the prefix.
				lease bool
			}{
				{"wrong password", wrongPassword, "authentication failed", false},
				{"no client certificate", noClientCert, "tls: bad certificate", false},
				{"CA not trusted", systemRoots, "certificate signed by unknown authority", false},
				{"prefix not granted", otherPrefix, "permission denied", true},
			} {
				t.Run(tc.name, func(t *testing.T) {
					m, logs := startLocks(t, tc.l)
					// Ready says why once the first attempt has failed.
					var err error
					if !waitFor(15*time.Second, func() bool {
						err = m.Ready(t.Context())
						return err != nil && strings.Contains(err.Error(), tc.why)
					}) {
						t.Fatalf("Ready: %v, want the reason %q", err, tc.why)
					}
					t.Logf("Ready: %v", err)
					if m.Live() != tc.lease {
						t.Errorf("a lease: %t, want %t", m.Live(), tc.lease)
					}
					ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
					defer cancel()
					if _, err := m.Acquire(ctx, []string{"k"}); !errors.Is(err, locks.ErrUnavailable) || !strings.Contains(err.Error(), tc.why) {
						t.Errorf("Acquire: %v, want the lock service unavailable", err)
					}
					if !strings.Contains(logs.String(), tc.why) {
						t.Errorf("the log does not say %q:\n%s", tc.why, tailString(logs.String(), 2000))
					}
					if strings.Contains(logs.String(), password) || strings.Contains(err.Error(), password) {
						t.Errorf("the password is in the log or the error")
					}
				})
			}
		})
	}
}

// TestEtcdSecureServe: `uidgate serve` with [locks] against an etcd with
// TLS, client certificates and auth, from its configuration file: with
// the right credentials a STORE goes through and /readyz is plain ready;
// with a wrong password the STORE is answered NO [UNAVAILABLE], /readyz's
// note and the log say that authentication failed, and the password is
// in neither.
func TestEtcdSecureServe(t *testing.T) {
	checkNoLeaks(t)
	bin := buildUidgate(t)
	etcd := etcdtest.StartWith(t, etcdtest.Options{TLS: true, Auth: true})
	const password = "uidgate-s3cret-pw"
	etcd.AddUser(t, "uidgate", password, securePrefix)
	fake := startStallServer(t)
	// The stall server never answers its first connection's STORE: use
	// that connection up with a SELECT.
	first := dialIMAP(t, fake.ln.Addr().String())
	first.cmd("x1", "SELECT INBOX")
	for _, tc := range []struct {
		name, password, store, readyz string
	}{
		{"right credentials", password, "s4 OK done", "ready"},
		{"wrong password", "wrong-" + password, "s4 NO [UNAVAILABLE] Lock service unavailable, try again later",
			"ready: etcd out of reach, commands that need a lock are refused: no etcd lease: etcdserver: authentication failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listen, metrics := freePort(t), freePort(t)
			l := secureLocks(etcd, tc.password)
			_, logs := startServe(t, bin, serveConfig(listen, fake.ln.Addr().String(), metrics, fmt.Sprintf(
				"endpoints = [%q]\nprefix = %q\nca_file = %q\ncert = %q\nkey = %q\nusername = %q\npassword = %q\n",
				l.Endpoints[0], l.Prefix, l.CAFile, l.Cert, l.Key, l.Username, l.Password)))
			c := dialIMAP(t, listen)
			c.cmd("s1", "LOGIN alice x")
			c.cmd("s2", "SELECT INBOX")
			var code int
			var body string
			// The first attempt to connect takes up to the dial timeout.
			mustWait(t, 20*time.Second, "/readyz "+tc.readyz, func() bool {
				code, body = getReadyz(t, metrics)
				return code == 200 && strings.HasPrefix(body, tc.readyz)
			})
			if got := c.cmd("s4", "STORE 1 +FLAGS (\\Flagged)"); got != tc.store {
				t.Errorf("STORE: %s, want %s", got, tc.store)
			}
			if tc.password != password && !strings.Contains(logs.String(), "authentication failed") {
				t.Errorf("the log does not say why:\n%s", tailString(logs.String(), 2000))
			}
			if strings.Contains(logs.String(), tc.password) || strings.Contains(body, tc.password) {
				t.Errorf("the password is in the log or /readyz")
			}
		})
	}
}
