package backends

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// TestCyrus23Instance checks that StartCyrus23 runs the legacy server itself
// (not Cyrus 3.6) with the master in the foreground as the process we own.
func TestCyrus23Instance(t *testing.T) {
	t.Parallel()
	s := StartCyrus23(t, map[string]string{"alice": "pw"})

	// Both 2.3.16 and 2.3.18 greet as v2.3.16: upstream never bumped it.
	greeting, err := readGreeting("tcp", s.Addr)
	if err != nil {
		t.Fatalf("greeting: %v", err)
	}
	if !strings.HasPrefix(greeting, "* OK") || !strings.Contains(greeting, "Cyrus IMAP v2.3") {
		t.Errorf("greeting %q, want a Cyrus IMAP v2.3 one", greeting)
	}

	c := login(t, s, "alice", nil)
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatalf("CAPABILITY: %v", err)
	}
	for _, want := range []imap.Cap{imap.CapIMAP4rev1, imap.CapIdle, imap.CapUIDPlus} {
		if !caps.Has(want) {
			t.Errorf("capabilities %v lack %s", caps, want)
		}
	}
	// 3.6 has MOVE, 2.3 has not: this tells the two apart.
	if caps.Has(imap.CapMove) {
		t.Errorf("capabilities %v include MOVE, which Cyrus 2.3 lacks", caps)
	}

	data, err := os.ReadFile(filepath.Join(s.Dir, "run", "master.pid"))
	if err != nil {
		t.Fatalf("master.pid: %v", err)
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err != nil || pid != s.proc.cmd.Process.Pid {
		t.Errorf("master.pid holds %q, want the started process %d", data, s.proc.cmd.Process.Pid)
	}
}

// TestCyrus23Sources checks the skip rule: the backend is available exactly
// when a directory ../shared/cyrus-2.3 lies beside the repository root,
// found by walking up to go.mod.
func TestCyrus23Sources(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		gomod   bool   // root/main/go.mod exists
		sources string // what root/shared/cyrus-2.3 is: "", "dir" or "file"
		want    bool
	}{
		{"present", true, "dir", true},
		{"absent", true, "", false},
		{"a file, not a directory", true, "file", false},
		{"no go.mod", false, "dir", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			wd := filepath.Join(root, "main", "e2e", "backends")
			if err := os.MkdirAll(wd, 0o755); err != nil {
				t.Fatal(err)
			}
			if tt.gomod {
				if err := os.WriteFile(filepath.Join(root, "main", "go.mod"), []byte("module x\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			src := filepath.Join(root, "shared", "cyrus-2.3")
			switch tt.sources {
			case "dir":
				if err := os.MkdirAll(src, 0o755); err != nil {
					t.Fatal(err)
				}
			case "file":
				if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(src, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			ok, reason := cyrus23Sources(wd)
			if ok != tt.want {
				t.Fatalf("cyrus23Sources = %v (%q), want %v", ok, reason, tt.want)
			}
			if !ok && reason == "" {
				t.Error("no reason given for the absence")
			}
			if !ok && tt.gomod && !strings.Contains(reason, src) {
				t.Errorf("reason %q does not name %s", reason, src)
			}
		})
	}
}

// TestCyrus23MissingBuildFails checks the other half of the skip rule: with
// the sources present, a missing build fails the test instead of skipping.
func TestCyrus23MissingBuildFails(t *testing.T) {
	if ok, reason := Cyrus23Available(); !ok {
		t.Skip(reason)
	}
	empty := t.TempDir()
	t.Setenv("UIDGATE_CYRUS23_DIR", empty)
	r := &recordingTB{TB: t}
	r.run(func() { StartCyrus23(r, map[string]string{"alice": "pw"}) })
	if r.skipped || !r.failed {
		t.Fatalf("StartCyrus23 without a build: failed %v, skipped %v (%q); want a failure", r.failed, r.skipped, r.msg)
	}
	if !strings.Contains(r.msg, empty) || !strings.Contains(r.msg, "install-deps") {
		t.Errorf("failure %q does not name %s and install-deps", r.msg, empty)
	}
}

// recordingTB records a test's failure or skip instead of reporting it; the
// rest goes to the embedded TB. Fatal and Skip end the goroutine, as they do
// in the testing package, so run the code under test with run.
type recordingTB struct {
	testing.TB
	mu              sync.Mutex
	failed, skipped bool
	msg             string
}

// run calls f in a goroutine of its own and waits for it to return or to
// end in Fatal or Skip.
func (r *recordingTB) run(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

func (r *recordingTB) record(skip bool, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if skip {
		r.skipped = true
	} else {
		r.failed = true
	}
	r.msg += msg
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.record(false, fmt.Sprintf(format, args...))
}
func (r *recordingTB) Error(args ...any)                 { r.record(false, fmt.Sprint(args...)) }
func (r *recordingTB) Fail()                             { r.record(false, "") }
func (r *recordingTB) FailNow()                          { r.Fail(); runtime.Goexit() }
func (r *recordingTB) Fatalf(format string, args ...any) { r.Errorf(format, args...); runtime.Goexit() }
func (r *recordingTB) Fatal(args ...any)                 { r.Error(args...); runtime.Goexit() }
func (r *recordingTB) SkipNow()                          { r.record(true, ""); runtime.Goexit() }
func (r *recordingTB) Skipf(format string, args ...any) {
	r.record(true, fmt.Sprintf(format, args...))
	runtime.Goexit()
}
func (r *recordingTB) Skip(args ...any) { r.record(true, fmt.Sprint(args...)); runtime.Goexit() }
