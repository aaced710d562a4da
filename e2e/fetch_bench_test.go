package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkBodyFetch times one non-PEEK `FETCH 1 BODY[]` round trip on
// Cyrus 2.3, directly and through uidgate in the deployed mode (explicit
// \Seen: uidgate's STORE \Seen and the .PEEK fetch), and reports the
// medians (issue 15: 44 ms through uidgate, a Nagle/delayed-ACK stall).
//
//	go test ./e2e/ -run '^$' -bench BodyFetch -benchtime 200x
func BenchmarkBodyFetch(b *testing.B) {
	be := startBackend(b, "cyrus23")
	be.Deliver(b, "alice", message("fetch me", 2000))
	g := startGate(b, gateOpts{backend: deployedBackend("cyrus23", be.Addr)})
	for _, target := range []struct{ name, addr string }{{"direct", be.Addr}, {"uidgate", g.Addr}} {
		b.Run(target.name, func(b *testing.B) {
			pc, err := dialPipe(target.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer pc.c.Close()
			if _, err := pc.run([]string{fmt.Sprintf("l LOGIN alice %q", testUsers["alice"]), "s SELECT INBOX"}, []string{"l", "s"}); err != nil {
				b.Fatal(err)
			}
			var took []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tag := fmt.Sprintf("f%d", i)
				t0 := time.Now()
				out, err := pc.run([]string{tag + " FETCH 1 BODY[]"}, []string{tag})
				took = append(took, time.Since(t0))
				if err != nil || !strings.HasPrefix(out[len(out)-1], tag+" OK") {
					b.Fatalf("%v %q", err, out)
				}
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-µs")
		})
	}
}
