package e2e

import (
	"flag"
	"slices"
	"strings"
	"testing"
	"time"

	"uidgate/upstream"
)

var (
	stressLong     = flag.Duration("stress.duration", 10*time.Minute, "BenchmarkStress: run time per backend and target")
	stressBackends = flag.String("stress.backends", "cyrus23,cyrus,dovecot", "BenchmarkStress: backends, comma-separated")
	stressTargets  = flag.String("stress.targets", "direct,uidgate-legacy,uidgate-plain", "BenchmarkStress: targets, comma-separated")
)

// BenchmarkStress is the long run of the stress checker (issue 12): per
// backend, directly and through uidgate in the deployed (legacy) and the
// compliant mode, one after the other in one run, reporting commands per
// second and violations. Not part of the test suite:
//
//	go test ./e2e/ -run '^$' -bench Stress -benchtime 1x -timeout 3h \
//	    -stress.duration 10m -stress.backends cyrus23
func BenchmarkStress(b *testing.B) {
	bin := buildImapload(b)
	for _, kind := range strings.Split(*stressBackends, ",") {
		b.Run(kind, func(b *testing.B) {
			be := startBackend(b, kind)
			cyrus := kind != "dovecot"
			legacy := startGate(b, gateOpts{backend: upstream.Backend{Address: be.Addr, Legacy: true, ExplicitSeen: true, CyrusNamespace: cyrus}})
			plain := startGate(b, gateOpts{backend: upstream.Backend{Address: be.Addr, CyrusNamespace: cyrus}})
			var direct float64
			for _, target := range []struct{ name, addr string }{{"direct", be.Addr}, {"uidgate-legacy", legacy.Addr}, {"uidgate-plain", plain.Addr}} {
				if !slices.Contains(strings.Split(*stressTargets, ","), target.name) {
					continue
				}
				res, line, err := runStress(bin, kind, target.name, mailboxName(kind, "stress-"+target.name), target.addr, 7, *stressLong) // a fresh mailbox per target: Cyrus 3.6 keeps expunged records (delayed expunge) and slows down as they pile up
				if res.Commands == 0 {
					b.Fatalf("%s: %v\n%s", target.name, err, line)
				}
				if target.name == "direct" {
					direct = res.PerSecond
				}
				ratio := 0.0
				if direct > 0 {
					ratio = res.PerSecond / direct
				}
				b.Logf("%s %s: %d commands, %.0f/s (%.2f× direct), %d violations, %d stalls, %d searches ahead (tolerated)\n%s", kind, target.name, res.Commands, res.PerSecond, ratio, res.Violations, res.Stalls, res.SearchAhead, line)
			}
		})
	}
}
