package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"uidgate/e2e/etcdtest"
	"uidgate/upstream"
)

// unavailable is a command's answer when its locks cannot be had because
// etcd is out of reach (fail closed).
const unavailable = " NO [UNAVAILABLE] Lock service unavailable, try again later"

// TestEtcdPartition: instance A is parted from etcd, through a proxy that
// black-holes (sockets open, nothing forwarded) or resets every
// connection, while instance B, in front of the same Dovecot, still
// reaches etcd. Each of A's sessions stores a keyword of its own per STORE.
//
//   - Every STORE on A during the partition is answered NO [UNAVAILABLE]
//     (fail closed), each within a lease TTL plus the op timeout: until A
//     takes its lease for lost, a lock takes up to the op timeout to fail
//     (or waits for the delete of a key A released as the partition
//     began, which ends with the loss); after, at once. Reads on A go on.
//   - B's STOREs go through, once A's lease has expired in etcd.
//   - An instance with on_unavailable = "proceed", parted the same way,
//     answers OK (its own locks only).
//   - A session whose command holds a lock at the (stalled) backend when
//     its instance takes the lease for lost ends with * BYE.
//   - When the partition heals, A takes a new lease and the same session
//     that was refused stores again.
//
// Nothing is lost: read directly from Dovecot at the end, every keyword
// whose STORE was answered OK is set, and none whose STORE was refused
// (nothing went upstream).
func TestEtcdPartition(t *testing.T) {
	checkNoLeaks(t)
	be := startBackend(t, "dovecot")
	deployed := deployedBackend("dovecot", be.Addr)
	etcd := etcdtest.Start(t, 1)
	for _, tc := range etcdtest.Partitions {
		t.Run(tc.Name, func(t *testing.T) {
			slug := strings.ReplaceAll(tc.Name, " ", "-")
			pfx, box := "/t/partition-"+slug+"/", "partition-"+slug
			proxy := etcd.Proxy(t, etcd.Members[0])
			parted := etcdlockConfig([]string{proxy.URL}, pfx)
			ma, _ := etcdtest.NewManager(t, parted)
			ms, _ := etcdtest.NewManager(t, parted)
			parted.Proceed = true
			mc, _ := etcdtest.NewManager(t, parted)
			mb, _ := etcdtest.NewManager(t, etcdlockConfig(etcd.Endpoints(), pfx))
			a := startGate(t, gateOpts{backend: deployed, locks: ma})
			b := startGate(t, gateOpts{backend: deployed, locks: mb})
			c := startGate(t, gateOpts{backend: deployed, locks: mc})
			stall := startStallServer(t)
			s := startGate(t, gateOpts{backend: upstream.Backend{Name: "fake", Address: stall.ln.Addr().String()}, locks: ms})

			setup := dialBench(t, be.Addr)
			setup.cmd(t, "LOGIN alice %s", testUsers["alice"])
			setup.cmd(t, "CREATE %s", box)
			setup.cmdLiteral(t, message("partition", 200), "APPEND %s", box)
			setup.close()
			open := func(g *gate) *imapLine {
				l := dialIMAP(t, g.Addr)
				if got := l.cmd("o1", "LOGIN alice %s", testUsers["alice"]); !strings.HasPrefix(got, "o1 OK") {
					t.Fatalf("login: %s", got)
				}
				if got := l.cmd("o2", "SELECT %s", box); !strings.HasPrefix(got, "o2 OK") {
					t.Fatalf("select: %s", got)
				}
				return l
			}
			ca, cb, cc := open(a), open(b), open(c)
			kw := keywords{t: t}
			kw.store(ca, "ok")
			// S's session holds the mailbox lock of its stalled STORE.
			cs := dialIMAP(t, s.Addr)
			cs.cmd("s1", "LOGIN alice x")
			cs.cmd("s2", "SELECT INBOX")
			fmt.Fprintf(cs.c, "s3 STORE 1 +FLAGS (\\Flagged)\r\n")
			select {
			case <-stall.stalled:
			case <-time.After(20 * time.Second):
				t.Fatal("S's STORE never reached the backend")
			}

			tc.Cut(proxy)
			cut := time.Now()
			// A: STOREs refused until A knows its lease lost, and after.
			bound := testLeaseTTL + parted.OpTimeout
			for i := 0; i < 20 && (ma.Live() || i < 2); i++ {
				t0 := time.Now()
				if got := kw.store(ca, "unavailable"); !strings.HasSuffix(got, unavailable) {
					t.Errorf("a STORE on A %v after the cut: %s, want NO [UNAVAILABLE]", t0.Sub(cut).Round(time.Millisecond), got)
				}
				if d := time.Since(t0); d > bound {
					t.Errorf("a STORE on A answered after %v, want within %v", d.Round(time.Millisecond), bound)
				}
			}
			if ma.Live() {
				t.Errorf("A still counts its lease live %v after the cut", time.Since(cut))
			}
			t.Logf("A refused %d STOREs; its lease lost %v after the cut", len(kw.refused), time.Since(cut).Round(time.Millisecond))
			if got := ca.cmd("r1", "FETCH 1 (FLAGS)"); !strings.HasPrefix(got, "r1 OK") {
				t.Errorf("a read on A during the partition: %s", got)
			}
			t0 := time.Now()
			if got := kw.store(cb, "ok"); !strings.HasPrefix(got, "k") || !strings.Contains(got, " OK") {
				t.Errorf("a STORE on B during A's partition: %s", got)
			}
			t.Logf("B's STORE went through %v after the cut (waited %v for A's lease)", time.Since(cut).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
			if got := kw.store(cc, "ok"); !strings.Contains(got, " OK") {
				t.Errorf("a STORE on the proceeding instance during its partition: %s", got)
			}
			if line := readLineFrom(cs, "* BYE"); line != "* BYE [UNAVAILABLE] Lock service lost, please reconnect" {
				t.Errorf("S's session holding a lock when the lease was lost: %q, want BYE", line)
			}

			proxy.Restore()
			mustWait(t, 30*time.Second, "new leases after the partition healed", func() bool { return ma.Live() && mc.Live() && ms.Live() })
			t.Logf("leases taken again %v after the cut", time.Since(cut).Round(time.Millisecond))
			if got := kw.store(ca, "ok"); !strings.Contains(got, " OK") {
				t.Errorf("a STORE on A after the partition healed: %s", got)
			}
			if got := kw.store(cc, "ok"); !strings.Contains(got, " OK") {
				t.Errorf("a STORE on the proceeding instance after the partition healed: %s", got)
			}
			// Nothing lost, nothing sent that was refused: read at Dovecot.
			direct := dialIMAP(t, be.Addr)
			direct.cmd("d1", "LOGIN alice %s", testUsers["alice"])
			direct.cmd("d2", "EXAMINE %s", box)
			fmt.Fprintf(direct.c, "d3 FETCH 1 (FLAGS)\r\n")
			flags := readLineFrom(direct, "* 1 FETCH")
			set := strings.Fields(strings.NewReplacer("(", " ", ")", " ").Replace(flags))
			for _, k := range kw.ok {
				if !slices.Contains(set, k) {
					t.Errorf("%s was answered OK and is not set at the server (%s)", k, flags)
				}
			}
			for _, k := range kw.refused {
				if slices.Contains(set, k) {
					t.Errorf("%s was refused and is set at the server (%s)", k, flags)
				}
			}
		})
	}
}

// keywords names each STORE's keyword and records how it was answered.
type keywords struct {
	t       *testing.T
	n       int
	ok      []string
	refused []string
}

// store sets a new keyword on message 1 through l and returns the tagged
// answer, recorded as OK or refused (want says which is expected: only
// for the failure message of an answer that is neither).
func (k *keywords) store(l *imapLine, want string) string {
	k.t.Helper()
	k.n++
	name := fmt.Sprintf("part%d", k.n)
	tag := fmt.Sprintf("k%d", k.n)
	got := l.cmd(tag, "STORE 1 +FLAGS.SILENT (%s)", name)
	switch {
	case strings.HasPrefix(got, tag+" OK"):
		k.ok = append(k.ok, name)
	case strings.HasSuffix(got, unavailable):
		k.refused = append(k.refused, name)
	default:
		k.t.Errorf("STORE %s (want %s): %s", name, want, got)
	}
	return got
}

// readLineFrom reads l's lines until one starts with prefix, and returns it
// without its line end.
func readLineFrom(l *imapLine, prefix string) string {
	l.t.Helper()
	for {
		if s := l.read(); strings.HasPrefix(s, prefix) {
			return strings.TrimSpace(s)
		}
	}
}
