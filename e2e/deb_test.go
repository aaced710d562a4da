package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The unit, the configuration and the binary as the .deb installs them
// (packaging/nfpm.yaml).
const (
	debUnit   = "/usr/lib/systemd/system/uidgate.service"
	debConfig = "/etc/uidgate/uidgate.toml"
	debBinary = "/usr/bin/uidgate"
	debMan    = "/usr/share/man/man8/uidgate.8.gz"
)

// TestDebPackage checks uidgate's .deb and runs a login through what it
// installs, started as systemd would start the unit (ExecStart=, User=,
// Environment=; no systemd needed), in front of a real Dovecot.
//
// By default it builds the .deb with the documented command
// (bash packaging/build-deb.sh), checks the archive (control fields,
// conffile, maintainer scripts, file modes) and extracts it into a
// temporary directory with dpkg-deb -x. With UIDGATE_TEST_INSTALLED_DEB=1
// (.ci/run, after `dpkg -i`) it checks the package installed on this
// machine instead: dpkg's status, the system user and its directories; the
// installed /etc/uidgate/uidgate.toml is edited for the run (the backend's
// address) and put back afterwards. Either way the unit must score "OK" or
// better in `systemd-analyze security --offline`.
func TestDebPackage(t *testing.T) {
	installed := os.Getenv("UIDGATE_TEST_INSTALLED_DEB") != ""
	root, version := "/", ""
	if installed {
		if os.Geteuid() != 0 {
			t.Fatal("UIDGATE_TEST_INSTALLED_DEB is set: the installed package's checks run as root")
		}
		version = checkInstalledDeb(t)
	} else {
		deb := buildDeb(t)
		version = checkDebArchive(t, deb)
		root = t.TempDir()
		if out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x: %v\n%s", err, out)
		}
	}
	at := func(p string) string { return filepath.Join(root, p) }

	// The binary: the package's version and, from a checkout, the commit.
	out, err := exec.Command(at(debBinary), "version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s version: %v\n%s", debBinary, err, out)
	}
	if !strings.HasPrefix(string(out), "uidgate "+version+" (commit ") || strings.Contains(string(out), "commit unknown") {
		t.Errorf("uidgate version = %q, want version %s and a commit", out, version)
	}
	if head, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil && !installed {
		if c := strings.TrimSpace(string(head)); !strings.Contains(string(out), c[:12]) {
			t.Errorf("uidgate version = %q, want commit %s", out, c[:12])
		}
	}

	// The man page, rendered from packaging/uidgate.8.md.
	if page := gunzipFile(t, at(debMan)); !strings.HasPrefix(page, ".nh\n.TH uidgate 8") || !strings.Contains(page, `\fBcheck-config\fP`) {
		t.Errorf("%s is not uidgate's man page:\n%s", debMan, tailString(page, 500))
	}

	// The unit: Type=notify, a watchdog, the system user, credentials for
	// TLS, and a sandbox systemd-analyze rates "OK" or better.
	unitText, err := os.ReadFile(at(debUnit))
	if err != nil {
		t.Fatal(err)
	}
	unit := parseUnit(string(unitText))
	for key, want := range map[string]string{
		"Type": "notify", "User": "uidgate", "WatchdogSec": "30s", "LoadCredential": "tls:/etc/uidgate/tls",
		"MemoryDenyWriteExecute": "yes", "NoNewPrivileges": "yes", "UMask": "0077", "ProtectSystem": "strict",
		"ReadWritePaths": "/var/lib/uidgate", "ExecReload": "/bin/kill -HUP $MAINPID",
	} {
		if got := unit[key]; len(got) != 1 || got[0] != want {
			t.Errorf("unit: %s = %q, want %q", key, got, want)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found (Debian's systemd package; bash .ci/install-deps installs it): %v", err)
	}
	// --threshold: exit non-zero above 4.9, where "OK" ends ("MEDIUM").
	out, err = exec.Command(analyze, "security", "--offline=true", "--threshold=49", at(debUnit)).CombinedOutput()
	last := strings.TrimSpace(string(out))
	last = last[strings.LastIndex(last, "\n")+1:]
	if err != nil || !(strings.Contains(last, " OK ") || strings.Contains(last, " SAFE ")) {
		t.Errorf("systemd-analyze security --offline=true %s: %v; %s", debUnit, err, last)
	} else {
		t.Logf("systemd-analyze security: %s", last)
	}

	// Run the unit's command line in front of a real server.
	args := unit["ExecStart"]
	if len(args) != 1 {
		t.Fatalf("unit: ExecStart = %q", args)
	}
	argv := strings.Fields(args[0])
	cfgPath := ""
	for i, a := range argv {
		if i > 0 && argv[i-1] == "-config" {
			cfgPath = a
		}
		if strings.HasPrefix(a, "/") {
			argv[i] = at(a)
		}
	}
	if argv[0] != at(debBinary) || cfgPath != debConfig {
		t.Fatalf("unit: ExecStart = %q, want %s … -config %s", args[0], debBinary, debConfig)
	}
	var env []string
	for _, e := range unit["Environment"] {
		k, v, _ := strings.Cut(e, "=")
		if k == "TMPDIR" {
			v = at(v)
			if err := os.MkdirAll(v, 0o700); err != nil { // systemd's StateDirectory= at start
				t.Fatal(err)
			}
		}
		env = append(env, k+"="+v)
	}
	if !slicesContainsPrefix(env, "TMPDIR="+at("/var/lib/uidgate/spool")) {
		t.Errorf("unit: Environment = %q, want TMPDIR under /var/lib/uidgate", env)
	}

	be := startBackend(t, "dovecot")
	listen, metrics := freePort(t), freePort(t)
	orig, err := os.ReadFile(at(debConfig))
	if err != nil {
		t.Fatal(err)
	}
	// As an administrator would: the backend's and the listeners' addresses.
	cfg := string(orig)
	for from, to := range map[string]string{
		`address = "127.0.0.1:143"`:  fmt.Sprintf("address = %q", be.Addr),
		`address = "127.0.0.1:1143"`: fmt.Sprintf("address = %q", listen),
		`address = "127.0.0.1:9143"`: fmt.Sprintf("address = %q", metrics),
	} {
		if strings.Count(cfg, from+"\n") != 1 {
			t.Fatalf("%s: no line %s to change:\n%s", debConfig, from, cfg)
		}
		cfg = strings.Replace(cfg, from+"\n", to+"\n", 1)
	}
	if installed {
		t.Cleanup(func() {
			if err := os.WriteFile(debConfig, orig, 0o640); err != nil {
				t.Errorf("restoring %s: %v", debConfig, err)
			}
		})
	}
	if err := os.WriteFile(at(debConfig), []byte(cfg), 0o640); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	if installed {
		// As the unit's User=: the package's user must read the
		// configuration and write the spool.
		u, err := user.Lookup(unit["User"][0])
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
	})

	var conn net.Conn
	for deadline := time.Now().Add(20 * time.Second); ; {
		if conn, err = net.Dial("tcp", listen); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not listen: %v\n%s", strings.Join(argv, " "), err, logs.String())
		}
		time.Sleep(50 * time.Millisecond) // polling for start-up
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	read := func() string {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v (%q)\n%s", err, l, logs.String())
		}
		return l
	}
	// until reads up to the tagged answer to tag.
	until := func(tag string) string {
		t.Helper()
		for {
			if l := read(); strings.HasPrefix(l, tag+" ") {
				return l
			}
		}
	}
	if g := read(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting %q", g)
	}
	fmt.Fprintf(conn, "a1 LOGIN alice %s\r\n", testUsers["alice"])
	if l := until("a1"); !strings.HasPrefix(l, "a1 OK") {
		t.Fatalf("LOGIN through the packaged uidgate: %q\n%s", l, logs.String())
	}
	be.Deliver(t, "alice", message("through the package", 300))
	fmt.Fprintf(conn, "a2 SELECT INBOX\r\n")
	if l := until("a2"); !strings.HasPrefix(l, "a2 OK") {
		t.Errorf("SELECT: %q", l)
	}
	fmt.Fprintf(conn, "a3 FETCH 1:* (FLAGS)\r\n")
	if l := until("a3"); !strings.HasPrefix(l, "a3 OK") {
		t.Errorf("FETCH: %q", l)
	}
	for path, want := range map[string]string{
		"/readyz":  "ready",
		"/metrics": `uidgate_logins_total{backend="imap",result="ok"} 1`,
	} {
		resp, err := http.Get("http://" + metrics + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, want %q in:\n%s", path, resp.StatusCode, want, tailString(string(body), 2000))
		}
	}
	fmt.Fprintf(conn, "a4 LOGOUT\r\n")
	until("a4")
	// systemctl stop: SIGTERM, a clean exit.
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit after SIGTERM\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `"message":"session end"`) {
		t.Errorf("no session end logged:\n%s", logs.String())
	}
}

// buildDeb runs the documented command and returns the .deb it made.
func buildDeb(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("bash", "../packaging/build-deb.sh", t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bash packaging/build-deb.sh: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	deb := lines[len(lines)-1]
	if _, err := os.Stat(deb); err != nil || !strings.HasSuffix(deb, ".deb") {
		t.Fatalf("build-deb.sh printed %q, not a .deb (%v)\n%s", deb, err, stderr.String())
	}
	return deb
}

// debVersion: a tag's X.Y.Z, or X.Y.Z+gitDATE.COMMIT from an untagged
// checkout (packaging/build-deb.sh).
var debVersion = regexp.MustCompile(`^\d+\.\d+\.\d+(\+git\d{14}\.[0-9a-f]{12}(\.dirty)?)?$`)

// checkDebArchive checks the .deb's control data and file list and returns
// its version.
func checkDebArchive(t *testing.T, deb string) string {
	t.Helper()
	fields := map[string]string{}
	for _, f := range []string{"Package", "Version", "Architecture", "Depends", "Section"} {
		out, err := exec.Command("dpkg-deb", "-f", deb, f).Output()
		if err != nil {
			t.Fatalf("dpkg-deb -f %s: %v", f, err)
		}
		fields[f] = strings.TrimSpace(string(out))
	}
	if fields["Package"] != "uidgate" || !debVersion.MatchString(fields["Version"]) || !strings.Contains(fields["Depends"], "adduser") {
		t.Errorf("control fields %q", fields)
	}
	ctl := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-e", deb, ctl).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -e: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(ctl, "conffiles")); strings.TrimSpace(string(b)) != debConfig {
		t.Errorf("conffiles = %q, want %s", b, debConfig)
	}
	if b, _ := os.ReadFile(filepath.Join(ctl, "postinst")); !strings.Contains(string(b), "adduser --system") || !strings.Contains(string(b), "/var/lib/uidgate") {
		t.Errorf("postinst creates no system user or state directory:\n%s", b)
	}
	out, err := exec.Command("dpkg-deb", "-c", deb).Output()
	if err != nil {
		t.Fatalf("dpkg-deb -c: %v", err)
	}
	modes := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 6 {
			modes[strings.TrimPrefix(strings.TrimSuffix(f[len(f)-1], "/"), ".")] = f[0] + " " + f[1]
		}
	}
	for path, want := range map[string]string{
		debBinary:                              "-rwxr-xr-x root/root",
		debConfig:                              "-rw-r----- root/root",
		"/etc/uidgate/tls":                     "drwx------ root/root",
		debUnit:                                "-rw-r--r-- root/root",
		debMan:                                 "-rw-r--r-- root/root",
		"/usr/share/doc/uidgate/copyright":     "-rw-r--r-- root/root",
		"/usr/share/doc/uidgate/OPERATIONS.md": "-rw-r--r-- root/root",
		"/usr/share/doc/uidgate/examples/example.toml": "-rw-r--r-- root/root",
	} {
		if modes[path] != want {
			t.Errorf("%s in the .deb: %q, want %q", path, modes[path], want)
		}
	}
	return fields["Version"]
}

// checkInstalledDeb checks what dpkg -i and postinst left and returns the
// installed version.
func checkInstalledDeb(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}\t${Version}", "uidgate").Output()
	if err != nil {
		t.Fatalf("dpkg-query -W uidgate: %v (is the .deb installed? .ci/run does: dpkg -i)", err)
	}
	status, version, _ := strings.Cut(string(out), "\t")
	if status != "install ok installed" || !debVersion.MatchString(version) {
		t.Fatalf("dpkg-query: %q", out)
	}
	u, err := user.Lookup("uidgate")
	if err != nil {
		t.Fatalf("the system user: %v", err)
	}
	for path, want := range map[string]string{
		"/var/lib/uidgate":       "drwx------ " + u.Uid,
		"/var/lib/uidgate/spool": "drwx------ " + u.Uid,
		"/etc/uidgate/tls":       "drwx------ 0",
		debConfig:                "-rw-r----- 0",
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		got := fmt.Sprintf("%s %d", fi.Mode().String(), fi.Sys().(*syscall.Stat_t).Uid)
		if got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
	if fi, err := os.Stat(debConfig); err == nil && strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Gid)) != u.Gid {
		t.Errorf("%s: group %d, want uidgate's (%s)", debConfig, fi.Sys().(*syscall.Stat_t).Gid, u.Gid)
	}
	return version
}

// parseUnit returns a systemd unit file's directives, every value of each
// (comments and section headers left out).
func parseUnit(text string) map[string][]string {
	d := map[string][]string{}
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' || l[0] == ';' || l[0] == '[' {
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok {
			d[k] = append(d[k], v)
		}
	}
	return d
}

func gunzipFile(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return string(b)
}

func slicesContainsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}
