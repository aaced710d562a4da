// Package backends starts real IMAP servers (Dovecot 2.3, Cyrus 3.6 and the
// legacy Cyrus 2.3.18) on loopback for uidgate's end-to-end tests.
//
// Each server is a private instance: its own directory, configuration, free
// ports on 127.0.0.1 and process group, so several can run side by side and
// beside a system-wide installation. The test that starts one owns it:
// t.Cleanup stops every process of the instance, waits for them to exit and
// removes the directory. A program (the load benchmark, bench/) starts them
// with its own TB, which collects the cleanups and runs them itself.
//
// The servers must be installed by .ci/install-deps, and the tests must run as
// root (the servers switch to their own system users). A missing binary is a
// test failure, never a skip. Cyrus's imapd is looked up under
// $UIDGATE_CYRUS_DIR (default /opt/uidgate-cyrus), where install-deps
// extracts it: the cyrus-imapd package conflicts with Dovecot's.
//
// Cyrus 2.3.18 is built by install-deps from ../shared/cyrus-2.3 (beside the
// repository) into $UIDGATE_CYRUS23_DIR (default /opt/uidgate-cyrus23). Where
// those sources are absent, StartCyrus23 skips with the reason (see
// Cyrus23Available); where they are present, a missing build fails the test.
//
// See shared/BACKENDS.md for the facts these configurations rest on.
package backends

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// readyTimeout bounds the wait for a started server's greetings. Both
	// servers greet within a fraction of a second when healthy.
	readyTimeout = 20 * time.Second
	// readyPoll is the pause between two readiness probes.
	readyPoll = 20 * time.Millisecond
	// stopTimeout bounds the graceful stop (SIGTERM) before SIGKILL.
	stopTimeout = 10 * time.Second
	// startAttempts is how often a start is tried with fresh ports: a port
	// found free may be taken by someone else before the server binds it.
	startAttempts = 3
	// logTail is how much of the end of each log file Log returns.
	logTail = 8 << 10
	// installHint names what installs the servers, for failure messages.
	installHint = "run `sudo .ci/install-deps` (it installs Dovecot and Cyrus for the e2e tests)"
)

// TB is the part of testing.TB that starting and stopping a server uses,
// so that a program can start one too. A test passes its *testing.T.
// Fatalf and Skipf must not return: testing.TB's end the goroutine
// (runtime.Goexit), and so must a program's, which therefore calls Start*
// from a goroutine of its own. Cleanup's functions run when the owner is
// done with the server; they stop it and may call Errorf and Logf.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
	Failed() bool
	Cleanup(f func())
}

var _ TB = testing.TB(nil)

// Server is one running IMAP server instance on loopback.
type Server struct {
	// Kind is "dovecot", "cyrus" (3.6) or "cyrus23" (2.3.18).
	Kind string
	// Addr is the host:port of the plain-text IMAP listener on 127.0.0.1.
	Addr string
	// Dir is the instance directory holding configuration, mail and logs.
	Dir string
	// Users maps each user name to its password; every user has an INBOX.
	Users map[string]string
	// AdminUser and AdminPassword are the credentials of the server's
	// administrator ("cyrus" on Cyrus, which may create and delete any
	// user's mailboxes); both are empty on Dovecot, which has none.
	AdminUser, AdminPassword string

	// lmtpNetwork and lmtpAddr are where Deliver connects: "unix" and a
	// socket path for Dovecot, "tcp" and 127.0.0.1:port for Cyrus (both).
	lmtpNetwork, lmtpAddr string

	proc *process

	mu       sync.Mutex
	finalLog string // the log tail kept once the instance is removed
	removed  bool
}

// Deliver puts the raw RFC 5322 message msg into user's INBOX the way an MTA
// does, over LMTP, so that sessions in IDLE see it arrive. Bare LF line ends
// are sent as CRLF. It fails the test on any error, so it must be called from
// the test's goroutine; use TryDeliver elsewhere.
func (s *Server) Deliver(t TB, user string, msg []byte) {
	t.Helper()
	if err := s.TryDeliver(user, msg); err != nil {
		t.Fatalf("backends: %s: deliver to %q: %v\n%s", s.Kind, user, err, s.Log())
	}
}

// TryDeliver is Deliver that returns its error instead of failing a test.
// It is safe to call from any goroutine.
func (s *Server) TryDeliver(user string, msg []byte) error {
	return deliverLMTP(s.lmtpNetwork, s.lmtpAddr, user, msg)
}

// LMTPAddr returns where Deliver connects: "unix" and a socket path for
// Dovecot, "tcp" and 127.0.0.1:port for Cyrus.
func (s *Server) LMTPAddr() (network, addr string) {
	return s.lmtpNetwork, s.lmtpAddr
}

// Log returns the tail of each of the server's log files, for failure
// messages. Cyrus logs only to syslog, which is absent here, so its log holds
// what cyrmaster and its children write to stdout and stderr.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return s.finalLog
	}
	return readLogs(s.Kind, s.Dir)
}

// readLogs returns the tails of the files in dir/log, each under a header.
func readLogs(kind, dir string) string {
	logDir := filepath.Join(dir, "log")
	entries, err := os.ReadDir(logDir)
	if err != nil {
		return fmt.Sprintf("--- %s logs: %v", kind, err)
	}
	var b strings.Builder
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		name := filepath.Join(logDir, e.Name())
		data, err := tail(name, logTail)
		fmt.Fprintf(&b, "--- %s %s ---\n", kind, name)
		if err != nil {
			fmt.Fprintf(&b, "(%v)\n", err)
			continue
		}
		b.Write(data)
		if len(data) > 0 && data[len(data)-1] != '\n' {
			b.WriteByte('\n')
		}
	}
	if b.Len() == 0 {
		return fmt.Sprintf("--- %s: no log files in %s", kind, logDir)
	}
	return b.String()
}

// tail returns at most the last n bytes of the file name.
func tail(name string, n int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if off := fi.Size() - n; off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(f)
}

// userName restricts user names to what both servers, their mailbox names
// (Cyrus's "user.NAME" with '.' as separator) and passwd-file accept as is.
var userName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// checkUsers fails the test for users that the configurations cannot hold.
func checkUsers(t TB, users map[string]string) {
	t.Helper()
	for u, p := range users {
		if !userName.MatchString(u) {
			t.Fatalf("backends: user name %q: want %s", u, userName)
		}
		if u == "cyrus" {
			t.Fatalf("backends: user name %q is reserved for the Cyrus administrator", u)
		}
		if p == "" || strings.ContainsAny(p, ":\r\n\x00") {
			t.Fatalf("backends: password of %q must be non-empty, without ':', CR, LF or NUL", u)
		}
	}
}

// requireRoot fails the test unless it runs as root.
func requireRoot(t TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("backends: the e2e servers must be started as root (they switch to their own users); %s and run the tests as root", installHint)
	}
}

// findBinary returns the first of paths that is an executable file, or the
// result of exec.LookPath(name); it fails the test when there is none.
func findBinary(t TB, name string, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if isExecutable(p) {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("backends: %s not found (looked in %s and $PATH); %s", name, strings.Join(paths, ", "), installHint)
	return ""
}

// isExecutable reports whether p is a regular file with an execute bit.
func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// lookupIDs returns the numeric uid of userName and gid of groupName.
func lookupIDs(t TB, userName, groupName string) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup(userName)
	if err != nil {
		t.Fatalf("backends: system user %q: %v; %s", userName, err, installHint)
	}
	g, err := user.LookupGroup(groupName)
	if err != nil {
		t.Fatalf("backends: system group %q: %v; %s", groupName, err, installHint)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(g.Gid)
	return uid, gid
}

// newInstanceDir creates an empty 0755 instance directory. It is not under
// t.TempDir: that one and its parents are 0700, and the servers' unprivileged
// processes (Dovecot's auth as "dovecot", Cyrus's services as "cyrus") must
// traverse the path. The caller removes it.
func newInstanceDir(kind string) (string, error) {
	base := os.TempDir()
	if !searchableByAll(base) {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "uidgate-"+kind+"-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// searchableByAll reports whether every directory on the path of dir lets
// any user traverse it.
func searchableByAll(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// mkdirs creates each of dirs (relative to base) with mode 0755 and, when
// uid >= 0, gives it to uid:gid.
func mkdirs(base string, uid, gid int, dirs ...string) error {
	for _, d := range dirs {
		p := filepath.Join(base, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if uid >= 0 {
			if err := os.Chown(p, uid, gid); err != nil {
				return err
			}
		}
	}
	return nil
}

// chownTree gives root and everything below it to uid:gid.
func chownTree(root string, uid, gid int) error {
	return filepath.WalkDir(root, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// freePorts returns n distinct TCP ports on 127.0.0.1 that were free a moment
// ago. All listeners are held until every port is picked, so the ports differ.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// process is a server's master process, started in its own process group so
// that stopping it can also reap every child it forked.
type process struct {
	cmd  *exec.Cmd
	pgid int
	done chan struct{} // closed when cmd.Wait has returned
	err  error         // cmd.Wait's result, valid after done
}

// startProcess starts argv in a new process group with stdout and stderr
// appended to logFile.
func startProcess(logFile string, argv ...string) (*process, error) {
	out, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer out.Close() // the child has its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, pgid: cmd.Process.Pid, done: make(chan struct{})}
	go p.wait()
	return p, nil
}

// wait reaps the master process; it is the only goroutine a process owns.
func (p *process) wait() {
	p.err = p.cmd.Wait()
	close(p.done)
}

// exited reports whether the master process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the whole process group: SIGTERM, then SIGKILL for whatever is
// left after stopTimeout. It returns once the master has been reaped and no
// live process remains in the group.
func (p *process) stop() error {
	_ = syscall.Kill(-p.pgid, syscall.SIGTERM)
	deadline := time.Now().Add(stopTimeout)
	for !p.exited() || len(groupMembers(p.pgid)) > 0 {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
			break
		}
		time.Sleep(readyPoll)
	}
	<-p.done
	// After SIGKILL the kernel ends every member; wait for that to show.
	killDeadline := time.Now().Add(stopTimeout)
	for {
		left := groupMembers(p.pgid)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(killDeadline) {
			return fmt.Errorf("processes %v of group %d still alive after SIGKILL", left, p.pgid)
		}
		_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
		time.Sleep(readyPoll)
	}
}

// groupMembers lists the live (not zombie) processes whose process group is
// pgid. Zombies are left out: once the master is gone, their reaping is up to
// the init process, and they hold no port or file.
func groupMembers(pgid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// proc(5): "pid (comm) state ppid pgrp ..."; comm may hold spaces
		// and parentheses, so split after the last ')'.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, err := strconv.Atoi(f[2]); err == nil && g == pgid {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids
}

// errExited reports that the server exited before it was ready.
var errExited = errors.New("server exited before it was ready")

// errPortTaken reports that a greeting came from a listener of another
// process: the port picked as free was taken before the server bound it.
var errPortTaken = errors.New("port taken by another process")

// waitGreeting polls network/addr until a connection's first line starts
// with prefix ("* OK" for IMAP, "220" for LMTP), the process exits, or
// readyTimeout has passed since start.
func waitGreeting(p *process, start time.Time, network, addr, prefix string) error {
	deadline := start.Add(readyTimeout)
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("%w (%v)", errExited, p.err)
		}
		line, err := readGreeting(network, addr)
		if err == nil {
			// A greeting may come from someone else's server that took
			// the port first; only a listener of ours makes us ready.
			if network == "tcp" && !ownsListener(p.pgid, addr) {
				return fmt.Errorf("%w: %s greets %q", errPortTaken, addr, line)
			}
			if strings.HasPrefix(line, prefix) {
				return nil
			}
			err = fmt.Errorf("greeting %q, want %q", line, prefix)
		}
		last = err
		if time.Now().After(deadline) {
			return fmt.Errorf("no greeting on %s %s within %v: %v", network, addr, readyTimeout, last)
		}
		time.Sleep(readyPoll)
	}
}

// ownsListener reports whether a process of group pgid holds the listening
// TCP socket bound to addr (127.0.0.1:port). It matches the socket's inode in
// /proc/net/tcp (proc(5)) with the processes' file descriptors.
func ownsListener(pgid int, addr string) bool {
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return false
	}
	table, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false
	}
	// Fields: sl local_address rem_address st ... inode (the 10th);
	// 127.0.0.1 is 0100007F in host (little-endian) order, st 0A is LISTEN.
	local := fmt.Sprintf("0100007F:%04X", port)
	inode := ""
	for _, line := range strings.Split(string(table), "\n") {
		f := strings.Fields(line)
		if len(f) >= 10 && f[1] == local && f[3] == "0A" {
			inode = f[9]
			break
		}
	}
	if inode == "" {
		return false
	}
	want := "socket:[" + inode + "]"
	for _, pid := range groupMembers(pgid) {
		fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if target, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && target == want {
				return true
			}
		}
	}
	return false
}

// readGreeting connects to network/addr and returns the first line it reads.
func readGreeting(network, addr string) (string, error) {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// instance is what a kind-specific setup prepares in a fresh directory.
type instance struct {
	server *Server
	argv   []string // the master process, to run in the foreground
	// stdoutLog receives the master's stdout and stderr.
	stdoutLog string
}

// start runs setup in a fresh instance directory with fresh ports, starts
// the server and waits until both its IMAP and LMTP listeners greet. It
// retries with new ports when the server exits early (a port may have been
// taken meanwhile) and fails the test with the server log after
// startAttempts. On success it registers the cleanup that stops the server
// and removes its directory.
func start(t TB, kind string, ports int, setup func(dir string, ports []int) (*instance, error)) *Server {
	t.Helper()
	var failures []string
	for attempt := 1; attempt <= startAttempts; attempt++ {
		s, err := startOnce(kind, ports, setup)
		if err == nil {
			t.Cleanup(func() { s.shutdown(t) })
			return s
		}
		failures = append(failures, fmt.Sprintf("attempt %d: %v", attempt, err))
		var se *startError
		if !errors.As(err, &se) || !se.retry {
			break
		}
	}
	t.Fatalf("backends: cannot start %s:\n%s", kind, strings.Join(failures, "\n"))
	return nil
}

// startError is a failed start with the server log at that moment.
type startError struct {
	err   error
	log   string
	retry bool // the server exited early, perhaps for a port taken meanwhile
}

func (e *startError) Error() string { return fmt.Sprintf("%v\n%s", e.err, e.log) }
func (e *startError) Unwrap() error { return e.err }

// startOnce is one attempt of start; on failure it leaves no process or
// directory behind.
func startOnce(kind string, nports int, setup func(dir string, ports []int) (*instance, error)) (*Server, error) {
	dir, err := newInstanceDir(kind)
	if err != nil {
		return nil, err
	}
	fail := func(err error, retry bool) (*Server, error) {
		log := readLogs(kind, dir)
		os.RemoveAll(dir)
		return nil, &startError{err: err, log: log, retry: retry}
	}
	ports, err := freePorts(nports)
	if err != nil {
		return fail(err, false)
	}
	inst, err := setup(dir, ports)
	if err != nil {
		return fail(err, false)
	}
	began := time.Now()
	p, err := startProcess(inst.stdoutLog, inst.argv...)
	if err != nil {
		return fail(err, false)
	}
	s := inst.server
	s.proc = p
	err = waitGreeting(p, began, "tcp", s.Addr, "* OK")
	if err == nil {
		err = waitGreeting(p, began, s.lmtpNetwork, s.lmtpAddr, "220")
	}
	if err != nil {
		if stopErr := p.stop(); stopErr != nil {
			err = fmt.Errorf("%w; stopping: %v", err, stopErr)
		}
		return fail(err, errors.Is(err, errExited) || errors.Is(err, errPortTaken))
	}
	return s, nil
}

// shutdown stops the server, keeps its log tail for Log, logs it when the
// test failed, and removes the instance directory.
func (s *Server) shutdown(t TB) {
	t.Helper()
	stopErr := s.proc.stop()
	s.mu.Lock()
	s.finalLog = readLogs(s.Kind, s.Dir)
	s.removed = true
	s.mu.Unlock()
	if t.Failed() {
		t.Logf("backends: %s log at stop:\n%s", s.Kind, s.finalLog)
	}
	if stopErr != nil {
		t.Errorf("backends: stopping %s: %v", s.Kind, stopErr)
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		t.Errorf("backends: removing %s: %v", s.Dir, err)
	}
}
