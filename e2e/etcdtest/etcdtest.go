// Package etcdtest starts real etcd servers (Debian's etcd-server, 3.4) on
// loopback for uidgate's lock tests: one member, or a cluster of several on
// one machine, each on free 127.0.0.1 ports with its data in a directory of
// its own; with TLS (a CA made for the test, client certificates required)
// and with etcd's auth if asked; and a proxy in front of a member that a
// test can cut, to part one client from etcd. The test that starts a
// cluster owns it: t.Cleanup stops every member and removes the
// directories.
//
// etcd must be installed by .ci/install-deps; a missing binary fails the
// test, never skips it.
package etcdtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

const (
	// readyTimeout bounds the wait for a started cluster's health. One
	// member is healthy in about a second; a cluster once it has a leader.
	readyTimeout = 30 * time.Second
	// readyPoll is the pause between two health probes.
	readyPoll = 50 * time.Millisecond
	// stopTimeout bounds a graceful stop (SIGTERM) before SIGKILL.
	stopTimeout = 10 * time.Second
	// startAttempts: a port found free may be taken before etcd binds it.
	startAttempts = 3
	// opTimeout bounds the harness's own requests (auth set-up, Client).
	opTimeout = 10 * time.Second
	// installHint names what installs etcd, for failure messages.
	installHint = "run `sudo .ci/install-deps` (it installs Debian's etcd-server for the lock tests)"
)

// Options says what cluster Start makes.
type Options struct {
	// Members is the number of members (default 1).
	Members int
	// TLS serves the client URLs over https with a certificate from a CA
	// made for the test (Cluster.TLS), and requires a client certificate
	// from that CA (etcd's --client-cert-auth).
	TLS bool
	// Auth turns on etcd's auth, with a root account (Cluster.RootPassword);
	// Cluster.AddUser adds others.
	Auth bool
}

// Cluster is a running etcd cluster on loopback.
type Cluster struct {
	Members []*Member
	// TLS names the PEM files of the test's CA and of a client certificate
	// it signed; nil without Options.TLS.
	TLS *TLSFiles
	// RootPassword is the root account's password with Options.Auth.
	RootPassword string
	dir          string
	clientTLS    *tls.Config // for the harness's own connections

	adminMu  sync.Mutex
	adminCli *clientv3.Client // see admin
}

// Member is one etcd server of a Cluster.
type Member struct {
	Name string
	// ClientURL is where clients connect: http://127.0.0.1:port, or
	// https:// with Options.TLS.
	ClientURL string
	peerURL   string
	dataDir   string
	logFile   string
	bin       string
	initial   string   // the --initial-cluster value
	tlsFlags  []string // the server's TLS flags, if any

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been reaped
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.Members))
	for i, m := range c.Members {
		out[i] = m.ClientURL
	}
	return out
}

// Start starts a plain cluster of n members (1 or more) and waits until
// every member reports healthy. It fails the test if etcd is not installed
// or does not start.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartWith(t, Options{Members: n})
}

// StartWith starts a cluster as o says and waits until every member
// reports healthy (and auth is on, with o.Auth).
func StartWith(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Members == 0 {
		o.Members = 1
	}
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if _, statErr := os.Stat("/usr/bin/etcd"); statErr == nil {
			bin = "/usr/bin/etcd"
		} else {
			t.Fatalf("etcdtest: etcd not found in $PATH or /usr/bin: %v; %s", err, installHint)
		}
	}
	var failures []string
	for attempt := 1; attempt <= startAttempts; attempt++ {
		c, err := startOnce(bin, o)
		if err == nil {
			t.Cleanup(func() { c.shutdown(t) })
			if o.Auth {
				c.enableAuth(t)
			}
			return c
		}
		failures = append(failures, fmt.Sprintf("attempt %d: %v", attempt, err))
	}
	t.Fatalf("etcdtest: cannot start %d etcd member(s):\n%s", o.Members, strings.Join(failures, "\n"))
	return nil
}

func startOnce(bin string, o Options) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "uidgate-etcd-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir}
	fail := func(err error) (*Cluster, error) {
		c.stopAll()
		log := c.logs()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%v\n%s", err, log)
	}
	scheme := "http"
	var tlsFlags []string
	if o.TLS {
		files, err := makeCerts(dir)
		if err != nil {
			return fail(err)
		}
		c.TLS = files
		if c.clientTLS, err = files.Config(); err != nil {
			return fail(err)
		}
		scheme = "https"
		tlsFlags = []string{"--cert-file", files.serverCert, "--key-file", files.serverKey,
			"--trusted-ca-file", files.CAFile, "--client-cert-auth"}
	}
	ports, err := freePorts(2 * o.Members)
	if err != nil {
		return fail(err)
	}
	var initial []string
	for i := range o.Members {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			dataDir:   filepath.Join(dir, fmt.Sprintf("m%d.etcd", i)),
			logFile:   filepath.Join(dir, fmt.Sprintf("m%d.log", i)),
			bin:       bin,
			tlsFlags:  tlsFlags,
		}
		initial = append(initial, m.Name+"="+m.peerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.initial = strings.Join(initial, ",")
		if err := m.start(); err != nil {
			return fail(err)
		}
	}
	if err := c.waitHealthy(c.Members); err != nil {
		return fail(err)
	}
	return c, nil
}

// start runs the member's etcd (a new one, or again on its data after
// Stop or Kill: the --initial-* flags are ignored then).
func (m *Member) start() error {
	out, err := os.OpenFile(m.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close() // the child has its own copy
	args := []string{
		"--name", m.Name,
		"--data-dir", m.dataDir,
		"--listen-client-urls", m.ClientURL,
		"--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.peerURL,
		"--initial-advertise-peer-urls", m.peerURL,
		"--initial-cluster", m.initial,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", "uidgate-test",
		// Faster elections than the defaults (100 ms, 1 s): a test kills
		// members. Loopback has no latency to allow for.
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
		"--logger", "zap",
	}
	cmd := exec.Command(m.bin, append(args, m.tlsFlags...)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	m.mu.Lock()
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
	return nil
}

// Running reports whether the member's process is alive.
func (m *Member) Running() bool {
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
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

// Kill ends the member at once (SIGKILL), as a crash would, and waits for
// it to be gone.
func (m *Member) Kill(t testing.TB) {
	t.Helper()
	m.signal(syscall.SIGKILL, 0)
}

// Stop ends the member gracefully (SIGTERM, SIGKILL after a while).
func (m *Member) Stop(t testing.TB) {
	t.Helper()
	m.signal(syscall.SIGTERM, stopTimeout)
}

func (m *Member) signal(sig syscall.Signal, grace time.Duration) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
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

// Restart starts a stopped or killed member again on its data and waits
// until it is healthy.
func (c *Cluster) Restart(t testing.TB, m *Member) {
	t.Helper()
	if m.Running() {
		t.Fatalf("etcdtest: %s is still running", m.Name)
	}
	if err := m.start(); err != nil {
		t.Fatalf("etcdtest: restart %s: %v", m.Name, err)
	}
	if err := c.waitHealthy([]*Member{m}); err != nil {
		t.Fatalf("etcdtest: restart %s: %v\n%s", m.Name, err, c.logs())
	}
}

// waitHealthy polls each member's /health until it says true (it has a
// leader and answers).
func (c *Cluster) waitHealthy(ms []*Member) error {
	deadline := time.Now().Add(readyTimeout)
	client := &http.Client{Timeout: time.Second,
		Transport: &http.Transport{TLSClientConfig: c.clientTLS, DisableKeepAlives: true}}
	for _, m := range ms {
		for {
			if !m.Running() {
				return fmt.Errorf("etcd %s exited", m.Name)
			}
			resp, err := client.Get(m.ClientURL + "/health")
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if strings.Contains(string(body), `"health":"true"`) {
					break
				}
				err = fmt.Errorf("health %s", body)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("etcd %s not healthy after %v: %v", m.Name, readyTimeout, err)
			}
			time.Sleep(readyPoll) // polling a starting server
		}
	}
	return nil
}

// Client returns a client of the cluster as root (with Options.Auth),
// over TLS with the test's client certificate (with Options.TLS). It is
// closed at the test's end.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := c.newClient()
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func (c *Cluster) newClient() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints: c.Endpoints(), TLS: c.clientTLS, DialTimeout: opTimeout,
		Username: rootIf(c.RootPassword), Password: c.RootPassword,
		Logger: zap.NewNop(),
	})
}

func rootIf(password string) string {
	if password == "" {
		return ""
	}
	return "root"
}

// enableAuth adds the root account (role root) with a new password and
// turns auth on, as `etcdctl user add root; etcdctl auth enable` do.
func (c *Cluster) enableAuth(t testing.TB) {
	t.Helper()
	pw := "root-" + randomHex(8)
	cli := c.Client(t) // no password yet: auth is off
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	defer cancel()
	steps := []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", pw); return err },
		func() error { _, err := cli.RoleAdd(ctx, "root"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("etcdtest: enabling auth: %v", err)
		}
	}
	c.RootPassword = pw
}

// AddUser adds an account whose role (of the same name) may read and write
// the keys under prefix only, as docs/DEPLOYMENT.md tells an operator to.
func (c *Cluster) AddUser(t testing.TB, name, password, prefix string) {
	t.Helper()
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	defer cancel()
	steps := []func() error{
		func() error { _, err := cli.RoleAdd(ctx, name); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, name, prefix, clientv3.GetPrefixRangeEnd(prefix),
				clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, name, password); return err },
		func() error { _, err := cli.UserGrantRole(ctx, name, name); return err },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("etcdtest: adding user %s: %v", name, err)
		}
	}
}

func (c *Cluster) stopAll() {
	for _, m := range c.Members {
		m.signal(syscall.SIGTERM, stopTimeout)
	}
}

// logs returns the tail of every member's log.
func (c *Cluster) logs() string {
	var b strings.Builder
	for _, m := range c.Members {
		data, _ := os.ReadFile(m.logFile)
		if len(data) > 4<<10 {
			data = data[len(data)-4<<10:]
		}
		fmt.Fprintf(&b, "--- etcd %s log (tail)\n%s\n", m.Name, data)
	}
	return b.String()
}

func (c *Cluster) shutdown(t testing.TB) {
	t.Helper()
	c.adminMu.Lock()
	if c.adminCli != nil {
		c.adminCli.Close()
	}
	c.adminMu.Unlock()
	c.stopAll()
	if t.Failed() {
		t.Logf("etcdtest: logs at stop:\n%s", c.logs())
	}
	if err := os.RemoveAll(c.dir); err != nil {
		t.Errorf("etcdtest: removing %s: %v", c.dir, err)
	}
}

// freePorts returns n distinct TCP ports on 127.0.0.1 that were free a
// moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, errors.Join(errors.New("no free port"), err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
