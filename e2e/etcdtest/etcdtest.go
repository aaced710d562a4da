// Package etcdtest starts real etcd servers (Debian's etcd-server, 3.4) on
// loopback for uidgate's lock tests: one member, or a cluster of several on
// one machine, each on free 127.0.0.1 ports with its data in a directory of
// its own; and a proxy in front of a member that a test can cut, to part
// one client from etcd. The test that starts a cluster owns it: t.Cleanup
// stops every member and removes the directories.
//
// etcd must be installed by .ci/install-deps; a missing binary fails the
// test, never skips it.
package etcdtest

import (
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
	// installHint names what installs etcd, for failure messages.
	installHint = "run `sudo .ci/install-deps` (it installs Debian's etcd-server for the lock tests)"
)

// TB is the part of testing.TB the harness uses (a benchmark program may
// pass its own). Fatalf must not return.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Failed() bool
	Cleanup(f func())
}

var _ TB = testing.TB(nil)

// Cluster is a running etcd cluster on loopback.
type Cluster struct {
	Members []*Member
	dir     string
}

// Member is one etcd server of a Cluster.
type Member struct {
	Name string
	// ClientURL is where clients connect: http://127.0.0.1:port.
	ClientURL string
	peerURL   string
	dataDir   string
	logFile   string
	bin       string
	initial   string // the --initial-cluster value

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

// Start starts a cluster of n members (1 or more) and waits until every
// member reports healthy. It fails the test if etcd is not installed or
// does not start.
func Start(t TB, n int) *Cluster {
	t.Helper()
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
		c, err := startOnce(bin, n)
		if err == nil {
			t.Cleanup(func() { c.shutdown(t) })
			return c
		}
		failures = append(failures, fmt.Sprintf("attempt %d: %v", attempt, err))
	}
	t.Fatalf("etcdtest: cannot start %d etcd member(s):\n%s", n, strings.Join(failures, "\n"))
	return nil
}

func startOnce(bin string, n int) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "uidgate-etcd-")
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2 * n)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	c := &Cluster{dir: dir}
	var initial []string
	for i := range n {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			dataDir:   filepath.Join(dir, fmt.Sprintf("m%d.etcd", i)),
			logFile:   filepath.Join(dir, fmt.Sprintf("m%d.log", i)),
			bin:       bin,
		}
		initial = append(initial, m.Name+"="+m.peerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.initial = strings.Join(initial, ",")
		if err := m.start(); err != nil {
			c.stopAll()
			log := c.logs()
			os.RemoveAll(dir)
			return nil, fmt.Errorf("%v\n%s", err, log)
		}
	}
	if err := c.waitHealthy(c.Members); err != nil {
		c.stopAll()
		log := c.logs()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%v\n%s", err, log)
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
	cmd := exec.Command(m.bin,
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
	)
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
func (m *Member) Kill(t TB) {
	t.Helper()
	m.signal(syscall.SIGKILL, 0)
}

// Stop ends the member gracefully (SIGTERM, SIGKILL after a while).
func (m *Member) Stop(t TB) {
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
func (c *Cluster) Restart(t TB, m *Member) {
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
	client := &http.Client{Timeout: time.Second}
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

func (c *Cluster) shutdown(t TB) {
	t.Helper()
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

// Proxy is a TCP proxy on loopback in front of one member, which a test
// can cut as a network partition between one client and etcd would: Cut
// closes every connection through it and holds the ones made afterwards
// silent (accepted, nothing forwarded either way) until Restore. The test
// that starts it owns it: t.Cleanup closes it and waits for its
// goroutines.
type Proxy struct {
	// URL is the client URL to give the client instead of the member's.
	URL    string
	ln     net.Listener
	target string // the member's host:port
	wg     sync.WaitGroup

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool // open connections, both sides; true: held
}

// Proxy starts a proxy to m.
func (c *Cluster) Proxy(t TB, m *Member) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcdtest: proxy: %v", err)
	}
	p := &Proxy{URL: "http://" + ln.Addr().String(), ln: ln,
		target: strings.TrimPrefix(m.ClientURL, "http://"), conns: make(map[net.Conn]bool)}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// Cut closes every connection through the proxy and holds new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// Restore forwards again; the connections held meanwhile are closed (their
// client connects again).
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	for c, held := range p.conns {
		if held {
			c.Close()
			delete(p.conns, c)
		}
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		cut := p.cut
		if cut {
			p.conns[c] = true
		}
		p.mu.Unlock()
		if !cut {
			p.wg.Add(1)
			go p.forward(c)
		}
	}
}

// forward copies between c and a new connection to the member until
// either side ends or Cut closes both.
func (p *Proxy) forward(c net.Conn) {
	defer p.wg.Done()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.cut {
		// Cut while dialling.
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = false, false
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go proxyCopy(up, c, done)
	go proxyCopy(c, up, done)
	<-done
	c.Close()
	up.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

func proxyCopy(dst, src net.Conn, done chan<- struct{}) {
	io.Copy(dst, src)
	done <- struct{}{}
}
