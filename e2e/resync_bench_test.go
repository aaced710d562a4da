package e2e

import (
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	resyncSizes   = flag.String("resync.sizes", "10000,100000", "BenchmarkResync: mailbox sizes, comma-separated")
	resyncBackend = flag.String("resync.backend", "cyrus23", "BenchmarkResync: backend kind")
)

// BenchmarkResync measures what one change costs a legacy session in a
// large mailbox (issue 15): another session appends one message, or
// expunges one, and the selected session's NOOP learns of it. Directly,
// that is the server's NOOP; through uidgate in the deployed mode it adds
// the resync (UIDs above the last known after an arrival, the whole list
// after an expunge). NOOP p50 per size, target and change; the resync's
// cost is uidgate's minus direct's.
//
//	go test ./e2e/ -run '^$' -bench Resync -benchtime 30x -timeout 1h
func BenchmarkResync(b *testing.B) {
	kind := *resyncBackend
	be := startBackend(b, kind)
	g := startGate(b, gateOpts{backend: deployedBackend(kind, be.Addr)})
	other, err := dialPipe(be.Addr)
	if err != nil {
		b.Fatal(err)
	}
	defer other.c.Close()
	other.timeout = 5 * time.Minute
	if _, err := other.run([]string{fmt.Sprintf("l LOGIN alice %q", testUsers["alice"])}, []string{"l"}); err != nil {
		b.Fatal(err)
	}
	for _, s := range strings.Split(*resyncSizes, ",") {
		size, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		box := mailboxName(kind, fmt.Sprintf("resync%d", size))
		fillMailbox(b, other, box, size)
		for _, target := range []struct{ name, addr string }{{"direct", be.Addr}, {"uidgate", g.Addr}} {
			b.Run(fmt.Sprintf("%d/%s", size, target.name), func(b *testing.B) {
				pc, err := dialPipe(target.addr)
				if err != nil {
					b.Fatal(err)
				}
				defer pc.c.Close()
				pc.timeout = time.Minute
				if _, err := pc.run([]string{fmt.Sprintf("l LOGIN alice %q", testUsers["alice"]), "s SELECT " + box}, []string{"l", "s"}); err != nil {
					b.Fatal(err)
				}
				noop := func(i int, what string) time.Duration {
					tag := fmt.Sprintf("n%s%d", what, i)
					t0 := time.Now()
					out, err := pc.run([]string{tag + " NOOP"}, []string{tag})
					took := time.Since(t0)
					if err != nil || !strings.HasPrefix(out[len(out)-1], tag+" OK") {
						b.Fatalf("%v %q", err, out)
					}
					return took
				}
				var arrival, expunge []time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					appendMessages(b, other, box, 1, i)
					b.StartTimer()
					arrival = append(arrival, noop(i, "a"))
					b.StopTimer()
					// The newest message goes again: one expunge.
					if out, err := other.run([]string{"x SELECT " + box, `y STORE * +FLAGS.SILENT (\Deleted)`, "z EXPUNGE", "u UNSELECT"}, []string{"x", "y", "z", "u"}); err != nil {
						b.Fatalf("%v %q", err, out)
					}
					b.StartTimer()
					expunge = append(expunge, noop(i, "x"))
				}
				b.StopTimer()
				b.ReportMetric(float64(median(arrival).Microseconds()), "arrival-p50-µs")
				b.ReportMetric(float64(median(expunge).Microseconds()), "expunge-p50-µs")
			})
		}
	}
}

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

// fillMailbox creates box with n small messages, appended in pipelined
// batches with non-synchronizing literals (RFC 7888).
func fillMailbox(b *testing.B, pc *pipeConn, box string, n int) {
	b.Helper()
	if out, err := pc.run([]string{"c CREATE " + box}, []string{"c"}); err != nil || !strings.HasPrefix(out[len(out)-1], "c OK") {
		b.Fatalf("CREATE %s: %v %q", box, err, out)
	}
	for done := 0; done < n; done += 500 {
		appendMessages(b, pc, box, min(500, n-done), done)
	}
}

// appendMessages appends k small messages to box in one write.
func appendMessages(b *testing.B, pc *pipeConn, box string, k, from int) {
	b.Helper()
	var cmds, tags []string
	for i := range k {
		msg := message(fmt.Sprintf("resync %d", from+i), 200)
		tag := fmt.Sprintf("a%d", i)
		cmds = append(cmds, fmt.Sprintf("%s APPEND %s {%d+}\r\n%s", tag, box, len(msg), msg))
		tags = append(tags, tag)
	}
	out, err := pc.run(cmds, tags)
	if err != nil {
		b.Fatalf("APPEND: %v", err)
	}
	for _, l := range out {
		if strings.HasPrefix(l, "a") && !strings.Contains(l, " OK") {
			b.Fatalf("APPEND: %q", l)
		}
	}
}
