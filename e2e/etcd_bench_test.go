package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"uidgate/e2e/etcdtest"
	"uidgate/proxy/locks"
	"uidgate/rules"
)

// BenchmarkEtcdLock measures one acquire and release of a key: in-process
// (locks.Memory), in etcd by one instance (a free key: the one-round-trip
// path, plus the release's round trip the next acquire waits for), and
// handed back and forth between two instances (each acquire waits for the
// other's release). Not part of the test suite:
//
//	go test ./e2e/ -run '^$' -bench EtcdLock -benchtime 2000x
func BenchmarkEtcdLock(b *testing.B) {
	b.Run("memory", func(b *testing.B) {
		var m locks.Memory
		for b.Loop() {
			rel, err := m.Acquire(context.Background(), []string{"mailbox:x/INBOX"})
			if err != nil {
				b.Fatal(err)
			}
			rel()
		}
	})
	etcd := etcdtest.Start(b, 1)
	b.Run("etcd-1-instance", func(b *testing.B) {
		m, _ := etcdtest.NewManager(b, etcdlockConfig(etcd.Endpoints(), "/bench/one/"))
		for b.Loop() {
			rel, err := acquire(b, m, 10*time.Second, "mailbox:x/INBOX")
			if err != nil {
				b.Fatal(err)
			}
			rel()
		}
	})
	b.Run("etcd-2-instances-alternating", func(b *testing.B) {
		var ms [2]locks.Manager
		for i := range ms {
			ms[i], _ = etcdtest.NewManager(b, etcdlockConfig(etcd.Endpoints(), "/bench/two/"))
		}
		var wg sync.WaitGroup
		var next atomic.Int64 // whose turn: the two instances take turns
		var failed atomic.Bool
		n := b.N
		b.ResetTimer()
		for i, m := range ms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := i; k < n; k += 2 {
					for next.Load() != int64(k) {
						if failed.Load() {
							return
						}
						time.Sleep(20 * time.Microsecond) // waiting for the other's turn
					}
					rel, err := acquire(b, m, 10*time.Second, "mailbox:x/INBOX")
					if err != nil {
						b.Error(err)
						failed.Store(true)
						return
					}
					next.Add(1)
					rel()
				}
			}()
		}
		wg.Wait()
	})
}

// storeSessions is BenchmarkSerializedStore's session count.
const storeSessions = 50

// BenchmarkSerializedStore: 50 sessions of one user STORE flags on one
// mailbox of the real Cyrus 2.3.18 (legacy, as deployed), every STORE
// serialized on the mailbox's lock: through one instance with in-process
// locks, through two instances (25 sessions each) sharing etcd locks, and
// through two instances with their own in-process locks (not serialized
// across instances: unsafe, shown for what the sharing costs). Reports
// STOREs per second. Not part of the test suite:
//
//	go test ./e2e/ -run '^$' -bench SerializedStore -benchtime 3000x
func BenchmarkSerializedStore(b *testing.B) {
	be := startBackend(b, "cyrus23")
	etcd := etcdtest.Start(b, 1)
	deployed := deployedBackend("cyrus23", be.Addr)
	policy := rules.Serialization{SelectTakesSeen: true}
	setup := dialBench(b, be.Addr)
	setup.cmd(b, "LOGIN alice %s", testUsers["alice"])
	for i := range 10 {
		msg := message(fmt.Sprintf("store-bench-%d", i), 300)
		setup.cmdLiteral(b, msg, "APPEND INBOX")
	}
	setup.close()

	for _, target := range []struct {
		name  string
		gates func(b *testing.B) []*gate
	}{
		{"memory-1-instance", func(b *testing.B) []*gate {
			return []*gate{startGate(b, gateOpts{backend: deployed, serialization: policy})}
		}},
		{"etcd-2-instances", func(b *testing.B) []*gate {
			var gs []*gate
			for range 2 {
				m, _ := etcdtest.NewManager(b, etcdlockConfig(etcd.Endpoints(), "/bench/store/"))
				gs = append(gs, startGate(b, gateOpts{backend: deployed, locks: m, serialization: policy}))
			}
			return gs
		}},
		{"memory-2-instances-unsafe", func(b *testing.B) []*gate {
			return []*gate{startGate(b, gateOpts{backend: deployed, serialization: policy}),
				startGate(b, gateOpts{backend: deployed, serialization: policy})}
		}},
	} {
		b.Run(target.name, func(b *testing.B) {
			gates := target.gates(b)
			sessions := make([]*benchIMAP, storeSessions)
			for i := range sessions {
				s := dialBench(b, gates[i%len(gates)].Addr)
				s.cmd(b, "LOGIN alice %s", testUsers["alice"])
				s.cmd(b, "SELECT INBOX")
				sessions[i] = s
			}
			defer func() {
				for _, s := range sessions {
					s.close()
				}
			}()
			var next atomic.Int64
			var wg sync.WaitGroup
			n := int64(b.N)
			b.ResetTimer()
			start := time.Now()
			for _, s := range sessions {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						k := next.Add(1)
						if k > n {
							return
						}
						op := "+"
						if k%2 == 0 {
							op = "-"
						}
						if got := s.try(fmt.Sprintf("STORE %d %sFLAGS.SILENT (\\Flagged)", 1+k%10, op)); !strings.Contains(got, " OK") {
							b.Errorf("STORE: %s", got)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "stores/s")
		})
	}
}

// benchIMAP is a plain client connection for benchmarks: commands by line,
// tagged answers returned.
type benchIMAP struct {
	c   net.Conn
	r   *bufio.Reader
	tag int
}

func dialBench(b testing.TB, addr string) *benchIMAP {
	b.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	s := &benchIMAP{c: c, r: bufio.NewReader(c)}
	if _, err := s.r.ReadString('\n'); err != nil {
		b.Fatal(err)
	}
	return s
}

// try sends line and returns its tagged answer (or the error).
func (s *benchIMAP) try(line string) string {
	s.tag++
	tag := fmt.Sprintf("r%d", s.tag)
	if _, err := io.WriteString(s.c, tag+" "+line+"\r\n"); err != nil {
		return err.Error()
	}
	for {
		s.c.SetReadDeadline(time.Now().Add(60 * time.Second))
		l, err := s.r.ReadString('\n')
		if err != nil {
			return err.Error()
		}
		if strings.HasPrefix(l, tag+" ") {
			return strings.TrimSpace(l)
		}
	}
}

func (s *benchIMAP) cmd(b testing.TB, format string, args ...any) {
	b.Helper()
	if got := s.try(fmt.Sprintf(format, args...)); !strings.Contains(got, " OK") {
		b.Fatalf("%s: %s", fmt.Sprintf(format, args...), got)
	}
}

// cmdLiteral sends a command with a synchronizing literal argument last.
func (s *benchIMAP) cmdLiteral(b testing.TB, lit []byte, format string, args ...any) {
	b.Helper()
	s.tag++
	tag := fmt.Sprintf("r%d", s.tag)
	fmt.Fprintf(s.c, "%s %s {%d}\r\n", tag, fmt.Sprintf(format, args...), len(lit))
	if l, err := s.r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "+") {
		b.Fatalf("literal: %q %v", l, err)
	}
	s.c.Write(append(lit, '\r', '\n'))
	for {
		l, err := s.r.ReadString('\n')
		if err != nil {
			b.Fatal(err)
		}
		if strings.HasPrefix(l, tag+" ") {
			if !strings.Contains(l, " OK") {
				b.Fatalf("%s: %s", format, l)
			}
			return
		}
	}
}

func (s *benchIMAP) close() {
	s.try("LOGOUT")
	s.c.Close()
}
