// Package ldaptest starts a real OpenLDAP server (Debian's slapd) on a free
// 127.0.0.1 port for uidgate's LDAP routing tests: its own slapd.conf, schema
// from /etc/ldap/schema, an mdb database loaded with slapadd, all in a
// temporary directory; never the system's slapd or its configuration. The
// test that starts one owns it: t.Cleanup stops it and removes the
// directory.
//
// The directory is dc=example,dc=org with people under ou=people: each an
// inetOrgPerson and inetLocalMailRecipient (misc.schema), whose mailHost
// names its backend. Anonymous clients may only bind; uidgate's service
// account (BindDN, BindPassword) may read, as a directory would be set up
// for a proxy.
//
// slapd must be installed by .ci/install-deps; a missing binary fails the
// test, never skips it.
package ldaptest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

const (
	// Base is the directory's suffix; People holds the users.
	Base   = "dc=example,dc=org"
	People = "ou=people," + Base
	// BindDN is uidgate's service account.
	BindDN = "cn=uidgate," + Base
	// rootDN administers the test directory (SetMailHost).
	rootDN = "cn=admin," + Base

	readyTimeout  = 20 * time.Second
	readyPoll     = 50 * time.Millisecond
	stopTimeout   = 10 * time.Second
	startAttempts = 3
	installHint   = "run `sudo .ci/install-deps` (it installs Debian's slapd and ldap-utils for the LDAP routing tests)"
)

// TB is the part of testing.TB the harness uses.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Failed() bool
	Cleanup(f func())
}

var _ TB = testing.TB(nil)

// User is one person in the directory. MailHost "" leaves the attribute
// out.
type User struct {
	UID      string
	MailHost string
}

// Server is a running slapd.
type Server struct {
	// URL is ldap://127.0.0.1:port.
	URL string
	// BindPassword is BindDN's password (random per server).
	BindPassword string

	dir, conf, logFile, bin string
	rootPW                  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start loads users into a new directory and starts slapd on it.
func Start(t TB, users []User) *Server {
	t.Helper()
	bin := findBinary(t, "slapd")
	slapadd := findBinary(t, "slapadd")
	var failures []string
	for attempt := 1; attempt <= startAttempts; attempt++ {
		s, err := startOnce(bin, slapadd, users)
		if err == nil {
			t.Cleanup(func() { s.shutdown(t) })
			return s
		}
		failures = append(failures, fmt.Sprintf("attempt %d: %v", attempt, err))
	}
	t.Fatalf("ldaptest: cannot start slapd:\n%s", strings.Join(failures, "\n"))
	return nil
}

func findBinary(t TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	p := "/usr/sbin/" + name
	if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
		return p
	}
	t.Fatalf("ldaptest: %s not found in $PATH or /usr/sbin; %s", name, installHint)
	return ""
}

func secret() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func startOnce(bin, slapadd string, users []User) (*Server, error) {
	dir, err := os.MkdirTemp("", "uidgate-slapd-")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Server{
		URL:          fmt.Sprintf("ldap://127.0.0.1:%d", port),
		BindPassword: secret(),
		rootPW:       secret(),
		dir:          dir,
		conf:         filepath.Join(dir, "slapd.conf"),
		logFile:      filepath.Join(dir, "slapd.log"),
		bin:          bin,
	}
	fail := func(err error) (*Server, error) {
		log := s.Log()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%v\n%s", err, log)
	}
	if err := os.MkdirAll(filepath.Join(dir, "db"), 0o700); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(s.conf, []byte(s.config()), 0o600); err != nil {
		return fail(err)
	}
	ldif := filepath.Join(dir, "data.ldif")
	if err := os.WriteFile(ldif, []byte(s.data(users)), 0o600); err != nil {
		return fail(err)
	}
	if out, err := exec.Command(slapadd, "-f", s.conf, "-l", ldif).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("slapadd: %v\n%s", err, out))
	}
	if err := s.start(); err != nil {
		return fail(err)
	}
	if err := s.waitReady(); err != nil {
		s.signal(syscall.SIGKILL, 0)
		return fail(err)
	}
	return s, nil
}

// config is slapd.conf: the schemas misc.schema needs, one mdb database,
// and ACLs under which only the service account reads.
func (s *Server) config() string {
	return fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/misc.schema
pidfile %[1]s/slapd.pid
argsfile %[1]s/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "%[2]s"
rootdn "%[3]s"
rootpw %[4]s
directory %[1]s/db
access to attrs=userPassword
	by anonymous auth
	by * none
access to *
	by dn.exact="%[5]s" read
	by * none
`, s.dir, Base, rootDN, s.rootPW, BindDN)
}

func (s *Server) data(users []User) string {
	var b strings.Builder
	fmt.Fprintf(&b, "dn: %s\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n", Base)
	fmt.Fprintf(&b, "dn: %s\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: uidgate\nuserPassword: %s\n\n", BindDN, s.BindPassword)
	fmt.Fprintf(&b, "dn: %s\nobjectClass: organizationalUnit\nou: people\n\n", People)
	for _, u := range users {
		fmt.Fprintf(&b, "dn: uid=%s,%s\nobjectClass: inetOrgPerson\nobjectClass: inetLocalMailRecipient\nuid: %s\ncn: %s\nsn: %s\n",
			ldap.EscapeDN(u.UID), People, u.UID, u.UID, u.UID)
		if u.MailHost != "" {
			fmt.Fprintf(&b, "mailHost: %s\n", u.MailHost)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// start runs slapd in the foreground (-d) on its own configuration,
// logging connections and operations (stats) to the log file.
func (s *Server) start() error {
	out, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command(s.bin, "-f", s.conf, "-h", s.URL+"/", "-d", "256")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return nil
}

// waitReady waits until the service account can bind and read.
func (s *Server) waitReady() error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		if !s.Running() {
			return errors.New("slapd exited")
		}
		c, err := ldap.DialURL(s.URL, ldap.DialWithDialer(&net.Dialer{Timeout: time.Second}))
		if err == nil {
			err = c.Bind(BindDN, s.BindPassword)
			if err == nil {
				_, err = c.Search(ldap.NewSearchRequest(People, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
					0, 0, false, "(objectClass=*)", nil, nil))
			}
			c.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		time.Sleep(readyPoll) // polling for start-up
	}
	return fmt.Errorf("slapd not ready after %v: %v", readyTimeout, last)
}

// Running reports whether slapd is alive.
func (s *Server) Running() bool {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Stop ends slapd (SIGTERM, SIGKILL after a while): the directory is down.
func (s *Server) Stop(t TB) {
	t.Helper()
	s.signal(syscall.SIGTERM, stopTimeout)
}

// Restart starts a stopped slapd again on its data and waits until it
// answers.
func (s *Server) Restart(t TB) {
	t.Helper()
	if s.Running() {
		t.Fatalf("ldaptest: slapd is still running")
	}
	if err := s.start(); err != nil {
		t.Fatalf("ldaptest: restart: %v", err)
	}
	if err := s.waitReady(); err != nil {
		t.Fatalf("ldaptest: restart: %v\n%s", err, s.Log())
	}
}

func (s *Server) signal(sig syscall.Signal, grace time.Duration) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(grace):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// SetMailHost changes (or, with host "", removes) a user's mailHost, as
// the directory's administrator.
func (s *Server) SetMailHost(t TB, uid, host string) {
	t.Helper()
	c, err := ldap.DialURL(s.URL)
	if err != nil {
		t.Fatalf("ldaptest: %v", err)
	}
	defer c.Close()
	if err := c.Bind(rootDN, s.rootPW); err != nil {
		t.Fatalf("ldaptest: bind as %s: %v", rootDN, err)
	}
	m := ldap.NewModifyRequest("uid="+ldap.EscapeDN(uid)+","+People, nil)
	if host == "" {
		m.Delete("mailHost", nil)
	} else {
		m.Replace("mailHost", []string{host})
	}
	if err := c.Modify(m); err != nil {
		t.Fatalf("ldaptest: set mailHost of %s: %v", uid, err)
	}
}

// Log returns the end of slapd's log.
func (s *Server) Log() string {
	b, err := os.ReadFile(s.logFile)
	if err != nil {
		return ""
	}
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	return string(b)
}

func (s *Server) shutdown(t TB) {
	s.signal(syscall.SIGTERM, stopTimeout)
	if t.Failed() {
		t.Logf("slapd log (tail):\n%s", s.Log())
	}
	os.RemoveAll(s.dir)
}
