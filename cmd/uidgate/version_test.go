package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildBinary compiles this package with `go build <flags> -o BIN .` (the
// test's working directory is cmd/uidgate, inside the git checkout).
func buildBinary(t *testing.T, flags ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "uidgate")
	args := append(append([]string{"build"}, flags...), "-o", bin, ".")
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// TestVersionStamped builds the binary as the README says
// (go build -buildvcs=true) and checks that `uidgate version` names the
// checked-out commit, and that -v adds the Go version and dependencies.
func TestVersionStamped(t *testing.T) {
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout (git rev-parse HEAD: %v): nothing to stamp", err)
	}
	commit := strings.TrimSpace(string(head))
	bin := buildBinary(t, "-buildvcs=true")
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("uidgate version: %v\n%s", err, out)
	}
	line := string(out)
	if !strings.HasPrefix(line, "uidgate v") || !strings.Contains(line, "(commit "+commit[:12]) {
		t.Errorf("uidgate version = %q, want the module version and commit %s", line, commit[:12])
	}
	if strings.Contains(line, "(devel)") {
		t.Errorf("uidgate version = %q: unstamped", line)
	}
	out, err = exec.Command(bin, "version", "-v").CombinedOutput()
	if err != nil {
		t.Fatalf("uidgate version -v: %v\n%s", err, out)
	}
	for _, want := range []string{"\ngo\tgo1.", "\ncommit\t" + commit + "\n", "\ndep\tgithub.com/emersion/go-imap/v2\tv2.", "\ndep\tgithub.com/coreos/go-systemd/v22\tv22."} {
		if !strings.Contains(string(out), want) {
			t.Errorf("uidgate version -v lacks %q:\n%s", want, out)
		}
	}
	if out, err := exec.Command(bin, "version", "extra").CombinedOutput(); err == nil {
		t.Errorf("uidgate version extra: exit 0, want usage error\n%s", out)
	}
}

// TestVersionLinkerFlags: the version and commit set with -ldflags -X (the
// .deb's build) win over the build information.
func TestVersionLinkerFlags(t *testing.T) {
	defer func(v, c string) { buildVersion, buildCommit = v, c }(buildVersion, buildCommit)
	buildVersion, buildCommit = "1.2.3~git20261203.0123456789ab", "0123456789abcdef0123456789abcdef01234567"
	var out, errb bytes.Buffer
	if rc := run([]string{"version"}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	// A test binary carries no VCS stamp, so the linker's commit is used.
	if want := "uidgate 1.2.3~git20261203.0123456789ab (commit 0123456789ab)\n"; out.String() != want {
		t.Errorf("version = %q, want %q", out.String(), want)
	}
	buildVersion, buildCommit = "", ""
	out.Reset()
	run([]string{"version"}, &out, &errb)
	if !strings.Contains(out.String(), "commit unknown") {
		t.Errorf("unstamped version = %q, want it to say the commit is unknown", out.String())
	}
}
