package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildUidgate compiles cmd/uidgate into a temporary directory.
func buildUidgate(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "uidgate")
	out, err := exec.Command("go", "build", "-o", bin, "uidgate/cmd/uidgate").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestServeBinary runs `uidgate serve -config FILE` as a process in front
// of each real server, configured as deployed, logs in through it with a
// routed user, and stops it with SIGTERM: the client gets BYE, the process
// exits 0, and its JSON log has session lines without the password.
func TestServeBinary(t *testing.T) {
	bin := buildUidgate(t)
	eachKind(t, allKinds, func(t *testing.T, kind string) { testServeBinary(t, bin, kind) })
}

// backendTOML is deployedBackend(kind, addr) as a [[backend]] table of
// uidgate's configuration file, named kind.
func backendTOML(kind, addr string) string {
	b := deployedBackend(kind, addr)
	seen, outOfRange := "off", "bad"
	if b.ExplicitSeen {
		seen = "on"
	}
	if b.IgnoreOutOfRange {
		outOfRange = "ignore"
	}
	return fmt.Sprintf("[[backend]]\nname = %q\naddress = %q\nlegacy = %t\nexplicit_seen = %q\ncyrus_namespace = %t\nout_of_range = %q\n",
		kind, addr, b.Legacy, seen, b.CyrusNamespace, outOfRange)
}

func testServeBinary(t *testing.T, bin, kind string) {
	be := startBackend(t, kind)
	listen, metricsAddr := freePort(t), freePort(t)
	cfg := filepath.Join(t.TempDir(), "uidgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
[[listener]]
address = %q

%s
[[backend]]
name = "nowhere"
address = "127.0.0.1:1"
dial_timeout = "2s"

[[route]]
user = "carol*"
backend = "nowhere"

[[route]]
domain = "example.org"
backend = "nowhere"

[[route]]
default = true
backend = %q

[log]
level = "debug"

[metrics]
address = %q
`, listen, backendTOML(kind, be.Addr), kind, metricsAddr)), 0o600)

	logs := &syncBuffer{}
	cmd := exec.Command(bin, "serve", "-config", cfg)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() {
		exitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
	})
	var conn net.Conn
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		if conn, err = net.Dial("tcp", listen); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("uidgate did not listen: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond) // polling for start-up
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	read := func() string {
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v (%q)\n%s", err, l, logs.String())
		}
		return l
	}
	if g := read(); !strings.HasPrefix(g, "* OK [CAPABILITY IMAP4rev1") {
		t.Fatalf("greeting %q", g)
	}
	// A route to an unreachable backend: NO [UNAVAILABLE].
	fmt.Fprintf(conn, "a1 LOGIN carol x\r\n")
	if l := read(); !strings.HasPrefix(l, "a1 NO [UNAVAILABLE]") {
		t.Errorf("unreachable backend answered %q", l)
	}
	fmt.Fprintf(conn, "a2 LOGIN alice %s\r\n", testUsers["alice"])
	// The backend's capabilities, filtered: Cyrus 2.3 lists IMAP4 first.
	l := read()
	caps, ok := strings.CutPrefix(l, "a2 OK [CAPABILITY ")
	caps, _, _ = strings.Cut(caps, "]")
	if !ok || !slices.Contains(strings.Fields(caps), "IMAP4rev1") {
		t.Fatalf("login answered %q", l)
	}
	fmt.Fprintf(conn, "a3 SELECT INBOX\r\n")
	for l := read(); !strings.HasPrefix(l, "a3 "); l = read() {
	}
	// A delivery to the selected mailbox: a legacy backend's EXISTS makes
	// uidgate resync by UID before the next command (counted below), so
	// the metric shows the file's legacy = true reached the session.
	be.Deliver(t, "alice", message("through the binary", 500))
	fmt.Fprintf(conn, "a4 NOOP\r\n")
	for l := read(); !strings.HasPrefix(l, "a4 "); l = read() {
	}
	fmt.Fprintf(conn, "a5 FETCH 1 (UID FLAGS)\r\n")
	var fetched bool
	for l := read(); !strings.HasPrefix(l, "a5 "); l = read() {
		fetched = fetched || strings.HasPrefix(l, "* 1 FETCH (")
	}
	if !fetched {
		t.Errorf("FETCH 1 after a delivery: no data")
	}
	// Operations endpoint: health, readiness, and the metrics of what just
	// happened.
	legacy := deployedBackend(kind, be.Addr).Legacy
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ready",
		"/metrics": fmt.Sprintf(`uidgate_logins_total{backend=%q,result="ok"} 1`, kind),
	} {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, want %q in:\n%s", path, resp.StatusCode, want, tailString(string(body), 3000))
		}
		if path != "/metrics" {
			continue
		}
		if n, ok := metricValue(string(body), "uidgate_resyncs_total"); !ok || (n > 0) != legacy {
			t.Errorf("GET /metrics: uidgate_resyncs_total = %v (found %t) with legacy = %t", n, ok, legacy)
		}
	}
	// SIGHUP with a broken file: logged, the running configuration kept.
	orig, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte("[[listener]]\nadress = 1\n"), 0o600)
	hup := func(want string) {
		t.Helper()
		before := strings.Count(logs.String(), want)
		cmd.Process.Signal(syscall.SIGHUP)
		deadline := time.Now().Add(20 * time.Second)
		for strings.Count(logs.String(), want) == before {
			if time.Now().After(deadline) {
				t.Fatalf("no %q after SIGHUP:\n%s", want, logs.String())
			}
			time.Sleep(20 * time.Millisecond) // polling the log
		}
	}
	hup("reload failed")
	// SIGHUP routing everyone to the unreachable backend: new logins fail,
	// the open session goes on with its backend.
	os.WriteFile(cfg, bytes.Replace(orig, []byte(fmt.Sprintf("default = true\nbackend = %q", kind)), []byte("default = true\nbackend = \"nowhere\""), 1), 0o600)
	hup("configuration reloaded")
	fmt.Fprintf(conn, "a6 NOOP\r\n")
	if l := read(); !strings.HasPrefix(l, "a6 OK") {
		t.Errorf("open session after reload: %q", l)
	}
	c2, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	r2 := bufio.NewReader(c2)
	c2.SetReadDeadline(time.Now().Add(20 * time.Second))
	r2.ReadString('\n')
	fmt.Fprintf(c2, "b1 LOGIN alice %s\r\n", testUsers["alice"])
	if l, _ := r2.ReadString('\n'); !strings.HasPrefix(l, "b1 NO [UNAVAILABLE]") {
		t.Errorf("login after reload to an unreachable backend: %q", l)
	}
	// Done with it: a client still connected holds the drain for its
	// BYE linger.
	c2.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if l := read(); !strings.HasPrefix(l, "* BYE") {
		t.Errorf("on SIGTERM the client got %q, want BYE", l)
	}
	select {
	case <-exited:
		if exitErr != nil {
			t.Errorf("uidgate exited with %v\n%s", exitErr, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("uidgate did not exit after SIGTERM")
	}
	out := logs.String()
	for _, want := range []string{`"message":"session end"`, `"user":"alice"`, `"backend":"` + kind + `"`, `"bytes_in"`, `"message":"listening"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, testUsers["alice"]) {
		t.Errorf("password in log")
	}
	// Issue 18: alice's session end says why it ended, how she logged
	// in, over what, for how long (in ms), each key once.
	var end string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, `"message":"session end"`) && strings.Contains(l, `"user":"alice"`) {
			end = l
		}
	}
	for _, want := range []string{`"reason":"shutdown"`, `"bye":"[UNAVAILABLE] uidgate is shutting down"`, `"auth":"LOGIN"`, `"tls":"none"`, `"duration_ms":`} {
		if !strings.Contains(end, want) {
			t.Errorf("session end line lacks %s: %s", want, end)
		}
	}
	for _, k := range []string{`"user":`, `"backend":`, `"cid":`} {
		if n := strings.Count(end, k); n != 1 {
			t.Errorf("%s %d times in %s", k, n, end)
		}
	}
	if !strings.Contains(out, `"login_ms":`) {
		t.Errorf("no login_ms in the log")
	}
}

// metricValue finds an unlabelled sample in a Prometheus text exposition.
func metricValue(exposition, name string) (float64, bool) {
	for _, l := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// TestCheckConfig: the effective config for a good file, every error with
// file:line for a bad one.
func TestCheckConfig(t *testing.T) {
	bin := buildUidgate(t)
	out, err := exec.Command(bin, "check-config", "../configs/default.toml").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `address = "127.0.0.1:1143"`) || !strings.Contains(string(out), "idle_timeout") {
		t.Errorf("check-config default: %v\n%s", err, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("[[listener]]\naddress = \"127.0.0.1:1143\"\n\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:143\"\n\n[[route]]\ndefault = true\nbackend = \"b\"\n"), 0o600)
	out, err = exec.Command(bin, "check-config", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), bad+":10:") || !strings.Contains(string(out), `"b"`) {
		t.Errorf("check-config with a route to a missing backend: %v\n%s", err, out)
	}
}
