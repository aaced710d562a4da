package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"uidgate/upstream"
)

// stressTime is how long the stress checker runs per backend and target in
// the test suite (issue 12: 20 s in CI; the 10-minute runs are in
// docs/BENCHMARKS.md).
const stressTime = 20 * time.Second

// TestStress runs `imapload -mode stress` (8 pipelining sessions of one
// user on one mailbox, each checking every answer against its own model of
// its view) directly against the real backend, so that the checker is
// checked, and then through uidgate in the deployed mode: both must report
// no violation and no stall.
func TestStress(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "imapload")
	if out, err := exec.Command("go", "build", "-o", bin, "uidgate/cmd/imapload").CombinedOutput(); err != nil {
		t.Fatalf("go build imapload: %v\n%s", err, out)
	}
	// Cyrus 3.6 is run through uidgate only: run directly, the server
	// itself answers SEARCH with messages it has not yet announced by
	// EXISTS, which the checker rightly counts (see docs/BENCHMARKS.md).
	for _, kind := range []string{"cyrus23", "cyrus", "dovecot"} {
		t.Run(kind, func(t *testing.T) {
			be := startBackend(t, kind)
			g := startGate(t, gateOpts{backend: upstream.Backend{Address: be.Addr, Legacy: true, ExplicitSeen: true, CyrusNamespace: kind != "dovecot"}})
			targets := []struct{ name, addr string }{{"direct", be.Addr}, {"uidgate", g.Addr}}
			if kind == "cyrus" {
				targets = targets[1:]
			}
			for _, target := range targets {
				out, err := exec.Command(bin, "-addr", target.addr, "-mode", "stress", "-user", "alice", "-pass", testUsers["alice"],
					"-sessions", "8", "-seed", "12", "-duration", stressTime.String(), "-max-time", "2m").CombinedOutput()
				var res struct {
					Commands   int64 `json:"commands"`
					Violations int64 `json:"violations"`
					Stalls     int64 `json:"stalls"`
				}
				line := strings.TrimSpace(string(out))
				if i := strings.LastIndexByte(line, '\n'); i >= 0 {
					line = line[i+1:]
				}
				if jerr := json.Unmarshal([]byte(line), &res); err != nil || jerr != nil || res.Violations != 0 || res.Stalls != 0 || res.Commands == 0 {
					t.Fatalf("%s: stress %v\n%s", target.name, err, out)
				}
				t.Logf("%s: %d commands in %v, no violation", target.name, res.Commands, stressTime)
			}
		})
	}
}
