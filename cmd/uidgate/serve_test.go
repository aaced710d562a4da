package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"uidgate/configs"
)

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "uidgate.toml")
	if err := os.WriteFile(name, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

func minimalConfig(listen, metrics string) string {
	s := fmt.Sprintf("[[listener]]\naddress = %q\n\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\n[[route]]\ndefault = true\nbackend = \"a\"\n", listen)
	if metrics != "" {
		s += fmt.Sprintf("\n[metrics]\naddress = %q\n", metrics)
	}
	return s
}

// TestConfigArg: issue 18, `uidgate serve FILE` ran the built-in default
// and ignored FILE. The file may come as FILE, -config FILE or -c FILE,
// for serve and check-config alike; anything else is a usage error.
func TestConfigArg(t *testing.T) {
	for _, tt := range []struct {
		cmd  string
		args []string
		want string // "" with ok: the default
		ok   bool
	}{
		{"serve", nil, "", true},
		{"serve", []string{"f.toml"}, "f.toml", true},
		{"serve", []string{"-config", "f.toml"}, "f.toml", true},
		{"serve", []string{"-c", "f.toml"}, "f.toml", true},
		{"serve", []string{"--config=f.toml"}, "f.toml", true},
		{"serve", []string{"f.toml", "g.toml"}, "", false},
		{"serve", []string{"-config", "f.toml", "g.toml"}, "", false},
		{"serve", []string{"f.toml", "-config", "g.toml"}, "", false},
		{"serve", []string{"-c", "f.toml", "-config", "g.toml"}, "", false},
		{"serve", []string{"-bogus"}, "", false},
		{"check-config", []string{"f.toml"}, "f.toml", true},
		{"check-config", []string{"-c", "f.toml"}, "f.toml", true},
		{"check-config", []string{"-config", "f.toml"}, "f.toml", true},
		{"check-config", nil, "", false},
		{"check-config", []string{"f.toml", "g.toml"}, "", false},
	} {
		var stderr bytes.Buffer
		got, ok := configArg(tt.cmd, tt.args, tt.cmd == "check-config", &stderr)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%s %q = %q, %t; want %q, %t", tt.cmd, tt.args, got, ok, tt.want, tt.ok)
		}
		if !ok && !strings.Contains(stderr.String(), "usage: uidgate "+tt.cmd) {
			t.Errorf("%s %q: no usage:\n%s", tt.cmd, tt.args, stderr.String())
		}
	}
}

// TestExampleCheckConfigCommand: issue 18, example.toml told operators to
// run `uidgate check-config -c FILE`, which exited 2. Whatever command it
// shows must work.
func TestExampleCheckConfigCommand(t *testing.T) {
	ex, err := os.ReadFile("../../configs/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	cmds := regexp.MustCompile("`uidgate (check-config[^`]*)`").FindAllStringSubmatch(string(ex), -1)
	if len(cmds) == 0 {
		t.Fatal("example.toml shows no check-config command")
	}
	file := writeConfig(t, minimalConfig(freePort(t), ""))
	for _, m := range cmds {
		args := strings.Fields(strings.ReplaceAll(m[1], "FILE", file))
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Errorf("`uidgate %s` from example.toml exited %d:\n%s", m[1], code, stderr.String())
		}
	}
}

// TestCheckConfigWarns: TLS below 1.2 towards clients passes, with a
// warning on stderr.
func TestCheckConfigWarns(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeTestPair(t, cert, key, "first")
	file := writeConfig(t, minimalConfig(freePort(t), "")+
		fmt.Sprintf("\n[[listener]]\naddress = %q\ntls = \"implicit\"\n\n[tls]\ncert = %q\nkey = %q\nmin_version = \"1.0\"\n", freePort(t), cert, key))
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check-config", file}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "warning: tls.min_version = \"1.0\"") {
		t.Errorf("check-config: %d\n%s", code, stderr.String())
	}
}

// serveAsync runs serve in the background; the returned function waits
// for it to return, up to d.
func serveAsync(t *testing.T, ctx context.Context, file string, logs io.Writer) func(d time.Duration) (error, bool) {
	done := make(chan error, 1)
	go func() { done <- serve(ctx, file, logs) }()
	return func(d time.Duration) (error, bool) {
		select {
		case err := <-done:
			return err, true
		case <-time.After(d):
			return nil, false
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestBindFailureExits: issue 18, with [metrics] set a listener that could
// not be bound was reported, and the process went on forever with
// /healthz answering 200 (serve waited for the metrics server, which
// waited for serve). Now serve returns at once, having closed what it had
// opened.
func TestBindFailureExits(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	metrics := freePort(t)
	for _, cfg := range []string{
		minimalConfig(taken.Addr().String(), metrics),                                                   // the listener
		minimalConfig(freePort(t), taken.Addr().String()),                                               // the metrics listener
		minimalConfig(freePort(t), metrics) + fmt.Sprintf("[[listener]]\naddress = %q\n", taken.Addr()), // the second listener
	} {
		ctx, cancel := context.WithCancel(context.Background())
		wait := serveAsync(t, ctx, writeConfig(t, cfg), io.Discard)
		err, returned := wait(5 * time.Second)
		cancel()
		if !returned {
			t.Fatalf("serve still running 5 s after a bind failure:\n%s", cfg)
		}
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("serve = %v, want the bind failure", err)
		}
		// What it had bound is free again.
		if ln, err := net.Listen("tcp", metrics); err != nil {
			t.Errorf("metrics address still bound after serve returned: %v", err)
		} else {
			ln.Close()
		}
	}
}

// TestHealthzListenerGone: issue 18, /healthz answered 200 whatever
// became of the listeners. A listener that stops accepting turns /healthz
// and /readyz to 503 at once, and serve then returns its error.
func TestHealthzListenerGone(t *testing.T) {
	var mu sync.Mutex
	var imap []net.Listener
	listen = func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err == nil {
			mu.Lock()
			imap = append(imap, ln)
			mu.Unlock()
		}
		return ln, err
	}
	t.Cleanup(func() { listen = net.Listen })
	listenAddr, metrics := freePort(t), freePort(t)
	logs := &syncBuffer{}
	wait := serveAsync(t, context.Background(), writeConfig(t, minimalConfig(listenAddr, metrics)), logs)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + metrics + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for code, _ := get("/healthz"); code != 200; code, _ = get("/healthz") {
		if time.Now().After(deadline) {
			t.Fatalf("/healthz never 200:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond) // polling start-up
	}
	// A client holds the drain open (BYE, then up to 2 s for it to go),
	// long enough to see the health checks fail.
	c, err := net.Dial("tcp", listenAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bufio.NewReader(c).ReadString('\n')
	mu.Lock()
	imap[0].Close() // the IMAP listener (bound first)
	mu.Unlock()
	deadline = time.Now().Add(2 * time.Second)
	for {
		hc, hb := get("/healthz")
		rc, rb := get("/readyz")
		if hc == 503 && rc == 503 {
			if !strings.Contains(hb, "listener "+listenAddr) || !strings.Contains(rb, "listener "+listenAddr) {
				t.Errorf("/healthz %q, /readyz %q: want the listener named", hb, rb)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listener closed: /healthz %d %q, /readyz %d %q\n%s", hc, hb, rc, rb, logs.String())
		}
		time.Sleep(20 * time.Millisecond) // polling the endpoints
	}
	err, returned := wait(10 * time.Second)
	if !returned || err == nil || !strings.Contains(err.Error(), "listener "+listenAddr) {
		t.Errorf("serve after its listener failed: %v (returned %t)", err, returned)
	}
}

// TestConsoleLog: issue 18, the console format wrote colour codes into
// files and stamped only "3:49PM". Colour on a terminal only; full time.
func TestConsoleLog(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLogger(configs.Log{Format: "console"}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Str("k", "v").Msg("hello")
	out := buf.String()
	if strings.Contains(out, "\x1b[") {
		t.Errorf("colour codes written to a buffer: %q", out)
	}
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) INF hello k=v`).MatchString(out) {
		t.Errorf("console line %q: want a full timestamp", out)
	}
	buf.Reset()
	log, _ = newLogger(configs.Log{}, &buf)
	log.Info().Msg("x")
	if !regexp.MustCompile(`"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}`).MatchString(buf.String()) {
		t.Errorf("JSON line %q: want milliseconds in the time", buf.String())
	}

	// On a terminal: colour.
	master, slave := openPTY(t)
	log, _ = newLogger(configs.Log{Format: "console"}, slave)
	log.Info().Msg("on a terminal")
	b := make([]byte, 4096)
	master.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := master.Read(b)
	if !strings.Contains(string(b[:n]), "\x1b[") {
		t.Errorf("no colour on a terminal: %q", b[:n])
	}
}

// openPTY opens a pseudo-terminal pair.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}
