package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// readyTimeout bounds the wait for a started server's greeting.
	readyTimeout = 20 * time.Second
	// readyPoll is the pause between two readiness probes.
	readyPoll = 20 * time.Millisecond
	// stopTimeout bounds a graceful stop (SIGTERM) before SIGKILL.
	stopTimeout = 10 * time.Second
	// clockTicks is USER_HZ, the unit of CPU times in /proc/PID/stat: 100
	// on every Linux architecture Go supports.
	clockTicks = 100
)

// proc is a server process the bench started in a process group of its
// own, so that stopping it stops its children too (Dovecot's, nginx's).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // set when done is closed
}

// procs is every process the bench started and has not stopped yet; they
// are all stopped on the way out, whatever the way out is.
type procs struct {
	mu   sync.Mutex
	list []*proc
}

// start runs argv with stdout and stderr appended to logFile.
func (ps *procs) start(name string, argv []string, logFile string, env []string) (*proc, error) {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	// Pdeathsig: a bench killed outright (SIGKILL, timeout) takes its servers with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logFile, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p, nil
}

// pid is the process's id (the group leader's).
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, waits up to stopTimeout, then
// SIGKILLs the group. It removes p from ps.
func (ps *procs) stop(p *proc) {
	ps.mu.Lock()
	for i, q := range ps.list {
		if q == p {
			ps.list = append(ps.list[:i], ps.list[i+1:]...)
			break
		}
	}
	ps.mu.Unlock()
	pgid := p.pid()
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// Children that outlived their leader (a Dovecot service process).
	syscall.Kill(-pgid, syscall.SIGKILL)
}

// stopAll stops every process still running, the last started first.
func (ps *procs) stopAll() {
	for {
		ps.mu.Lock()
		if len(ps.list) == 0 {
			ps.mu.Unlock()
			return
		}
		p := ps.list[len(ps.list)-1]
		ps.mu.Unlock()
		ps.stop(p)
	}
}

// freePort returns a port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitGreeting polls addr until an IMAP greeting ("* OK") arrives, the
// process exits, or readyTimeout passes.
func waitGreeting(ctx context.Context, p *proc, addr string) error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited: %v; log:\n%s", p.name, p.err, tail(p.log, 4096))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if rerr == nil && strings.HasPrefix(line, "* OK") {
				return nil
			}
			err = fmt.Errorf("greeting %q: %v", line, rerr)
		}
		last = err
		time.Sleep(readyPoll)
	}
	name := addr
	log := ""
	if p != nil {
		name, log = p.name, tail(p.log, 4096)
	}
	return fmt.Errorf("%s not ready after %s: %v\n%s", name, readyTimeout, last, log)
}

// tail returns the last n bytes of a file, for error messages.
func tail(file string, n int64) string {
	f, err := os.Open(file)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	f.ReadAt(b, off)
	return string(b)
}

// memStatus is a process's memory from /proc/PID/status, in bytes.
type memStatus struct {
	RSS, HWM int64
}

// readMem reads VmRSS and VmHWM of pid.
func readMem(pid int) (memStatus, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStatus{}, err
	}
	var m memStatus
	for _, line := range bytes.Split(b, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		var dst *int64
		switch string(k) {
		case "VmRSS":
			dst = &m.RSS
		case "VmHWM":
			dst = &m.HWM
		default:
			continue
		}
		f := strings.Fields(string(v)) // "1234 kB"
		if len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			*dst = n << 10
		}
	}
	return m, nil
}

// resetHWM resets VmHWM to the current RSS (Linux ≥ 4.0: writing 5 to
// clear_refs), so that a later VmHWM is the peak of what came after.
func resetHWM(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// cpuTime returns the user+system CPU time pid has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// After ")": state is field 3 of stat(5); utime and stime are 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / clockTicks, nil
}

// childPIDs returns the processes whose parent is pid.
func childPIDs(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// sampler polls the RSS of some processes while a workload runs and
// keeps the largest sum seen.
type sampler struct {
	pids []int
	stop chan struct{}
	done chan struct{}
	max  int64
}

// startSampler polls every interval until stop.
func startSampler(pids []int, interval time.Duration) *sampler {
	s := &sampler{pids: pids, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.stop:
				s.sample()
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) sample() {
	var sum int64
	for _, pid := range s.pids {
		m, err := readMem(pid)
		if err == nil {
			sum += m.RSS
		}
	}
	s.max = max(s.max, sum)
}

// finish stops the sampler and returns the largest RSS sum seen.
func (s *sampler) finish() int64 {
	close(s.stop)
	<-s.done
	return s.max
}

// sumMem returns the RSS and VmHWM summed over pids.
func sumMem(pids []int) memStatus {
	var m memStatus
	for _, pid := range pids {
		x, err := readMem(pid)
		if err == nil {
			m.RSS += x.RSS
			m.HWM += x.HWM
		}
	}
	return m
}

// sumCPU returns the CPU time summed over pids.
func sumCPU(pids []int) time.Duration {
	var d time.Duration
	for _, pid := range pids {
		x, err := cpuTime(pid)
		if err == nil {
			d += x
		}
	}
	return d
}
