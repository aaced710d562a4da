package main

import (
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
)

// TestSDNotify runs `uidgate serve` as systemd would with Type=notify and
// WatchdogSec=: $NOTIFY_SOCKET names a datagram socket that the test
// reads. READY=1 comes once it listens, WATCHDOG=1 at half of
// $WATCHDOG_USEC, RELOADING=1 then READY=1 around a SIGHUP reload, and
// STOPPING=1 on SIGTERM, before the process exits 0.
func TestSDNotify(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(dir, "uidgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
[[listener]]
address = %q

[[backend]]
name = "nowhere"
address = "127.0.0.1:1"

[[route]]
default = true
backend = "nowhere"
`, listen)), 0o600)

	cmd := exec.Command(bin, "serve", "-config", cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000")
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()

	// next returns the next datagram other than a watchdog ping, and counts
	// the pings.
	pings := 0
	next := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("no notification: %v\n%s", err, logs.String())
			}
			if msg := string(buf[:n]); msg == "WATCHDOG=1" {
				pings++
			} else {
				return msg
			}
		}
	}
	expect := func(prefix string) {
		t.Helper()
		if msg := next(); !strings.HasPrefix(msg, prefix) {
			t.Fatalf("notification %q, want %s", msg, prefix)
		}
	}

	expect("READY=1\nSTATUS=1 listeners bound")
	if c, err := net.Dial("tcp", listen); err != nil {
		t.Errorf("READY=1 sent, but the listener refuses: %v", err)
	} else {
		c.Close()
	}
	time.Sleep(500 * time.Millisecond) // two or more watchdog intervals of 100 ms
	cmd.Process.Signal(syscall.SIGHUP)
	msg := next()
	if !strings.HasPrefix(msg, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Fatalf("after SIGHUP: %q, want RELOADING=1 with MONOTONIC_USEC", msg)
	}
	expect("READY=1")
	if pings < 2 {
		t.Errorf("%d watchdog pings in 500 ms with WATCHDOG_USEC=200000, want ≥ 2", pings)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	expect("STOPPING=1")
	select {
	case err := <-exited:
		exited <- err // for the deferred Wait
		if err != nil {
			t.Errorf("exit: %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit after SIGTERM\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "systemd watchdog on") {
		t.Errorf("log does not say the watchdog is on:\n%s", logs.String())
	}
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
