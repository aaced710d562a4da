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
	resyncSizes    = flag.String("resync.sizes", "10000,100000", "BenchmarkResync: mailbox sizes, comma-separated")
	resyncBackend  = flag.String("resync.backend", "cyrus23", "BenchmarkResync: backend kind")
	resyncInterval = flag.Duration("resync.interval", 0, "BenchmarkResync: least time from one change to the next (1s with -benchtime 30x: issue 15's one change per second for 60 s)")
)

// BenchmarkResync measures what one change costs a legacy session in a
// large mailbox (issue 15): another session appends one message, or
// expunges one, and the selected session's NOOP learns of it. Directly,
// that is the server's NOOP; through uidgate in the deployed mode it adds
// the resync (UID FETCH of the UIDs above the last known after an
// arrival, of the known UIDs around the reported place after an expunge:
// proxy/resync.go). NOOP p50 per size, target and change; the resync's
// cost is uidgate's minus direct's. A direct session and one through
// uidgate have the mailbox selected side by side and both NOOP after each
// change (in alternating order), so each change is measured in a pair and
// "added" is the pairs' median difference (with the order cancelled out:
// see below); what uidgate reports
// must be what the server told the direct session. With -resync.interval the changes are
// paced (one a second, alternating arrival and expunge, as an idle
// client's mailbox sees them) instead of back to back.
//
//	go test ./e2e/ -run '^$' -bench Resync -benchtime 30x -timeout 1h
//	go test ./e2e/ -run '^$' -bench Resync -benchtime 30x -resync.interval 1s -resync.sizes 100000
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
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			var pcs [2]*pipeConn // direct, uidgate
			for k, addr := range []string{be.Addr, g.Addr} {
				pc, err := dialPipe(addr)
				if err != nil {
					b.Fatal(err)
				}
				defer pc.c.Close()
				pc.timeout = time.Minute
				if _, err := pc.run([]string{fmt.Sprintf("l LOGIN alice %q", testUsers["alice"]), "s SELECT " + box}, []string{"l", "s"}); err != nil {
					b.Fatal(err)
				}
				pcs[k] = pc
			}
			// noop runs a NOOP on pcs[k] and returns its time and the
			// untagged line that starts with want's number and ends
			// in want's word ("EXISTS", "EXPUNGE").
			noop := func(k, i int, word string) (time.Duration, string) {
				tag := fmt.Sprintf("n%d.%d", k, i)
				t0 := time.Now()
				out, err := pcs[k].run([]string{tag + " NOOP"}, []string{tag})
				took := time.Since(t0)
				if err != nil || !strings.HasPrefix(out[len(out)-1], tag+" OK") {
					b.Fatalf("%v %q", err, out)
				}
				var news []string
				for _, l := range out {
					if strings.HasSuffix(strings.TrimSpace(l), " "+word) {
						news = append(news, strings.TrimSpace(l))
					}
				}
				return took, strings.Join(news, "; ")
			}
			// both asks both sessions, in an order that alternates, and
			// checks that uidgate told its client what the server told
			// its own: the server is the oracle.
			var took [2][2][]time.Duration // [change][target]
			var quiet [2][]time.Duration   // NOOP, UID FETCH with nothing changed
			both := func(change, i int, word string) {
				var news [2]string
				for j := range 2 {
					k := (i + j) % 2
					var d time.Duration
					d, news[k] = noop(k, 2*i+change, word)
					took[change][k] = append(took[change][k], d)
				}
				if news[0] == "" || news[0] != news[1] {
					b.Fatalf("after one %s: directly %q, through uidgate %q", word, news[0], news[1])
				}
			}
			var last time.Time
			pace := func() {
				if *resyncInterval > 0 {
					time.Sleep(time.Until(last.Add(*resyncInterval)))
					last = time.Now()
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				pace()
				appendMessages(b, other, box, 1, i)
				both(0, i, "EXISTS")
				pace()
				// The newest message goes again: one expunge.
				if out, err := other.run([]string{"x SELECT " + box, `y STORE * +FLAGS.SILENT (\Deleted)`, "z EXPUNGE", "u UNSELECT"}, []string{"x", "y", "z", "u"}); err != nil {
					b.Fatalf("%v %q", err, out)
				}
				both(1, i, "EXPUNGE")
				// With nothing changed: what any command costs the
				// server (Cyrus 2.3's index_check walks every message
				// in each), and what the arrivals' resync command costs.
				for k, cmd := range []string{"NOOP", "UID FETCH " + strconv.Itoa(size+i+1) + ":* (UID)"} {
					tag := fmt.Sprintf("q%d.%d", k, i)
					t0 := time.Now()
					out, err := pcs[0].run([]string{tag + " " + cmd}, []string{tag})
					if err != nil || !strings.HasPrefix(out[len(out)-1], tag+" OK") {
						b.Fatalf("%s: %v %q", cmd, err, out)
					}
					quiet[k] = append(quiet[k], time.Since(t0))
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(median(quiet[0]).Microseconds()), "unchanged-noop-p50-µs")
			b.ReportMetric(float64(median(quiet[1]).Microseconds()), "unchanged-uidfetch-p50-µs")
			for change, name := range []string{"arrival", "expunge"} {
				direct, gate := took[change][0], took[change][1]
				// The first NOOP after a change may pay for the second
				// (the server's re-read of its index): "added" is the
				// mean of the medians of the pairs' differences with
				// either target first, so that the order cancels out.
				var added [2][]time.Duration // [direct went first, uidgate went first]
				for i := range gate {
					added[i%2] = append(added[i%2], gate[i]-direct[i])
				}
				b.ReportMetric(float64(median(direct).Microseconds()), name+"-direct-p50-µs")
				b.ReportMetric(float64(median(gate).Microseconds()), name+"-uidgate-p50-µs")
				if len(added[1]) == 0 { // b.N is 1 on the first call
					added[1] = added[0]
				}
				b.ReportMetric(float64((median(added[0])+median(added[1])).Microseconds())/2, name+"-added-µs")
			}
		})
	}
}

// median sorts a copy of d and returns its middle.
func median(d []time.Duration) time.Duration {
	d = slices.Clone(d)
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
