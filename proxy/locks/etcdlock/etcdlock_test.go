package etcdlock_test

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"uidgate/e2e/etcdtest"
	"uidgate/proxy/locks"
	"uidgate/proxy/locks/etcdlock"
)

// The manager's semantics against a real etcd (e2e/etcdtest starts one on
// loopback): FIFO per key, sorted multi-key acquisition, the timeout, the
// one-round-trip fast path and lease loss. e2e/etcdlocks_test.go has the
// rest (exclusion under load, the batch window, lease expiry of a
// vanished holder, etcd down, a member killed) and the tests through
// uidgate.

// ttl is the managers' lease TTL here (etcdtest.NewManager's): the
// minimum, so that loss is seen quickly (taken for lost 3⅓ s after the last
// answered refresh was sent).
const ttl = etcdlock.MinLeaseTTL

// newManager makes a manager as etcdtest.NewManager does, with the sweep
// out of the way unless cfg says (no request of its own in the counts).
func newManager(t *testing.T, cfg etcdlock.Config) *etcdlock.Manager {
	t.Helper()
	if cfg.SweepEvery == 0 {
		cfg.SweepEvery = time.Hour
	}
	m, _ := etcdtest.NewManager(t, cfg)
	return m
}

// waitUntil polls cond (state in etcd, another process) until it holds,
// and fails the test if it does not within d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %v", what, d)
		}
		time.Sleep(20 * time.Millisecond) // polling another process's state
	}
}

func acquire(t *testing.T, m locks.Manager, d time.Duration, keys ...string) (func(), error) {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	return m.Acquire(ctx, keys)
}

// grants records the order in which waiters, each in a goroutine of its
// own, are granted a key (and hold it until release).
type grants struct {
	t     *testing.T
	mu    sync.Mutex
	order []string
	wg    sync.WaitGroup
}

func (g *grants) wait(name string, m locks.Manager, key string) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		rel, err := acquire(g.t, m, 20*time.Second, key)
		if err != nil {
			g.t.Errorf("%s: %v", name, err)
			return
		}
		g.mu.Lock()
		g.order = append(g.order, name)
		g.mu.Unlock()
		rel()
	}()
}

func (g *grants) done() []string {
	g.wg.Wait()
	return g.order
}

// TestFIFO: one key's waiters are granted in the order they queued, in one
// instance and across two. With no batch window, a key given back goes
// through etcd's queue every time: A's second waiter, queued in A behind
// A's first, comes after B's, which was in etcd's queue first.
func TestFIFO(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	const pfx = "/t/fifo/"
	cfg := etcdlock.Config{Endpoints: etcd.Endpoints(), Prefix: pfx, BatchWindow: -1}
	a, b, c := newManager(t, cfg), newManager(t, cfg), newManager(t, cfg)
	relC, err := acquire(t, c, 5*time.Second, "k")
	if err != nil {
		t.Fatal(err)
	}
	g := grants{t: t}
	g.wait("a1", a, "k")
	waitUntil(t, 5*time.Second, "a1 queued in etcd", func() bool { return len(etcd.Keys(t, pfx)) == 2 })
	g.wait("b1", b, "k")
	waitUntil(t, 5*time.Second, "b1 queued in etcd", func() bool { return len(etcd.Keys(t, pfx)) == 3 })
	g.wait("a2", a, "k")
	waitUntil(t, 5*time.Second, "a2 queued in A", func() bool { return a.Waiting("k") == 1 })
	g.wait("b2", b, "k")
	waitUntil(t, 5*time.Second, "b2 queued in B", func() bool { return b.Waiting("k") == 1 })
	relC()
	if got := strings.Join(g.done(), ","); got != "a1,b1,a2,b2" {
		t.Errorf("grant order %s, want a1,b1,a2,b2 (the order they queued in)", got)
	}
	waitUntil(t, 5*time.Second, "every etcd key deleted", func() bool { return len(etcd.Keys(t, pfx)) == 0 })
}

// TestSortedKeys: a command's keys are taken in sorted order, whatever the
// order asked: their etcd keys are created in that order (so two
// instances taking the same keys in opposite orders queue the same way and
// never wait on each other), and a key asked for twice is taken once. All
// of them are on the process's one lease.
func TestSortedKeys(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	const pfx = "/t/sorted/"
	cfg := etcdlock.Config{Endpoints: etcd.Endpoints(), Prefix: pfx}
	a, b := newManager(t, cfg), newManager(t, cfg)
	asked := []string{"seen:be/alice", "mailbox:be/Sent", "mailbox:be/INBOX", "seen:be/alice"}
	rel, err := acquire(t, a, 5*time.Second, asked...)
	if err != nil {
		t.Fatal(err)
	}
	var taken []string
	leases := map[string]bool{}
	for _, k := range etcd.Keys(t, pfx) {
		// <prefix><escaped lock key>/<lease>-<number>
		escaped, name, _ := strings.Cut(strings.TrimPrefix(k, pfx), "/")
		key, err := url.PathUnescape(escaped)
		if err != nil {
			t.Fatal(err)
		}
		taken = append(taken, key)
		lease, _, _ := strings.Cut(name, "-")
		leases[lease] = true
	}
	if len(leases) != 1 {
		t.Errorf("one process's keys on %d leases, want one", len(leases))
	}
	want := []string{"mailbox:be/INBOX", "mailbox:be/Sent", "seen:be/alice"}
	if !slices.Equal(taken, want) {
		t.Errorf("etcd keys created in the order %q, want %q", taken, want)
	}
	rel()
	// Opposite orders from two instances, many times over: no deadlock.
	var wg sync.WaitGroup
	for i, m := range []locks.Manager{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys := []string{"mailbox:be/INBOX", "seen:be/alice"}
			if i == 1 {
				slices.Reverse(keys)
			}
			for range 20 {
				rel, err := acquire(t, m, 10*time.Second, keys...)
				if err != nil {
					t.Errorf("%v: %v", keys, err)
					return
				}
				rel()
			}
		}()
	}
	wg.Wait()
}

// TestTimeout: a key held by another instance past the caller's deadline
// (uidgate's lock_timeout) fails with locks.ErrTimeout (answered NO
// [INUSE]), holds nothing and leaves nothing in etcd; a key taken before
// the one that timed out is given back too.
func TestTimeout(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	const pfx = "/t/timeout/"
	cfg := etcdlock.Config{Endpoints: etcd.Endpoints(), Prefix: pfx}
	a, b := newManager(t, cfg), newManager(t, cfg)
	relA, err := acquire(t, a, 5*time.Second, "mailbox:be/INBOX")
	if err != nil {
		t.Fatal(err)
	}
	// b takes "mailbox:be/Archive" (sorted first, free), then waits for
	// INBOX until its deadline.
	if _, err := acquire(t, b, 300*time.Millisecond, "mailbox:be/INBOX", "mailbox:be/Archive"); !errors.Is(err, locks.ErrTimeout) {
		t.Fatalf("while held by another instance: %v, want ErrTimeout", err)
	}
	waitUntil(t, 5*time.Second, "b's keys deleted", func() bool { return len(etcd.Keys(t, pfx)) == 1 })
	relArchive, err := acquire(t, a, 5*time.Second, "mailbox:be/Archive")
	if err != nil {
		t.Fatalf("the key taken before the timeout was not given back: %v", err)
	}
	relArchive()
	relA()
	rel, err := acquire(t, b, 5*time.Second, "mailbox:be/INBOX")
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	rel()
	if n := b.Waiting("mailbox:be/INBOX"); n != 0 {
		t.Errorf("%d waiting at the end", n)
	}
}

// TestFastPath: a free key costs one round trip, counted by etcd itself
// (its grpc_server_started_total per method): one Txn (put, read the
// queue's first, read the key back), no read and no watch; its release one
// DeleteRange. A key held elsewhere costs more (a watch, reads), which
// shows that the count sees them.
func TestFastPath(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	metrics := etcd.Members[0].ClientURL + "/metrics"
	const pfx = "/t/fast/"
	cfg := etcdlock.Config{Endpoints: etcd.Endpoints(), Prefix: pfx}
	a, b := newManager(t, cfg), newManager(t, cfg)
	// Lease refreshes (LeaseKeepAlive) and /readyz's checks are not KV
	// requests; nothing else of the managers' runs meanwhile.
	before := kvRequests(t, metrics)
	rel, err := acquire(t, a, 5*time.Second, "k")
	if err != nil {
		t.Fatal(err)
	}
	got := diff(kvRequests(t, metrics), before)
	if want := map[string]int{"Txn": 1}; !mapsEqual(got, want) {
		t.Errorf("a free key cost %v, want %v", got, want)
	}
	// Held by a: b queues and waits.
	before = kvRequests(t, metrics)
	got2 := make(chan error, 1)
	go func() {
		rel, err := acquire(t, b, 10*time.Second, "k")
		if err == nil {
			rel()
		}
		got2 <- err
	}()
	waitUntil(t, 5*time.Second, "b queued and watching", func() bool { return diff(kvRequests(t, metrics), before)["Watch"] >= 1 })
	rel()
	if err := <-got2; err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "both releases' deletes", func() bool { return diff(kvRequests(t, metrics), before)["DeleteRange"] == 2 })
	got = diff(kvRequests(t, metrics), before)
	t.Logf("a contended key and the two releases cost %v", got)
	if got["Txn"] != 1 || got["Range"] < 1 {
		t.Errorf("a contended key cost %v, want one Txn and reads besides the watch", got)
	}
}

// kvRequests reads etcd's counts of KV and Watch requests started, by
// method.
func kvRequests(t *testing.T, url string) map[string]int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// grpc_server_started_total{grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 3
		line := sc.Text()
		if !strings.HasPrefix(line, "grpc_server_started_total{") {
			continue
		}
		if !strings.Contains(line, `grpc_service="etcdserverpb.KV"`) && !strings.Contains(line, `grpc_service="etcdserverpb.Watch"`) {
			continue
		}
		_, rest, _ := strings.Cut(line, `grpc_method="`)
		method, _, _ := strings.Cut(rest, `"`)
		n, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[method] = int(n)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// diff is after - before, without the methods that did not change.
func diff(after, before map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestLeaseLost: the manager is parted from etcd (through a proxy: a black
// hole, and a hard reset) while a grant is held. The holder is told
// (lost ends) while etcd still holds the lease, so before another
// instance can be given the key; then a new acquisition is refused with
// locks.ErrUnavailable at once, or granted with the instance's own locks
// with Proceed. When the partition heals, the manager takes a new lease
// and grants through etcd again.
func TestLeaseLost(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	cli := etcd.Client(t)
	for _, tc := range etcdtest.Partitions {
		t.Run(tc.Name, func(t *testing.T) {
			proxy := etcd.Proxy(t, etcd.Members[0])
			pfx := "/t/lost-" + strings.ReplaceAll(tc.Name, " ", "-") + "/"
			cfg := etcdlock.Config{Endpoints: []string{proxy.URL}, Prefix: pfx}
			m := newManager(t, cfg)
			cfg.Proceed = true
			p := newManager(t, cfg)
			rel, lost, err := m.AcquireLeased(t.Context(), []string{"k"})
			if err != nil {
				t.Fatal(err)
			}
			kvs, err := cli.Get(t.Context(), pfx, clientv3.WithPrefix())
			if err != nil || len(kvs.Kvs) != 1 {
				t.Fatalf("the holder's etcd key: %v %v", kvs, err)
			}
			lease := clientv3.LeaseID(kvs.Kvs[0].Lease)

			tc.Cut(proxy)
			cut := time.Now()
			select {
			case <-lost.Done():
			case <-time.After(3 * ttl):
				t.Fatal("the grant was never reported lost")
			}
			t.Logf("grant lost %v after the cut: %v", time.Since(cut).Round(time.Millisecond), context.Cause(lost))
			if tr, err := cli.TimeToLive(t.Context(), lease); err != nil || tr.TTL <= 0 {
				t.Errorf("the lease had expired in etcd when the holder was told (TTL %v, %v)", tr, err)
			}
			t0 := time.Now()
			if _, err := acquire(t, m, 10*time.Second, "other"); !errors.Is(err, locks.ErrUnavailable) {
				t.Errorf("after the loss: %v, want ErrUnavailable", err)
			}
			if d := time.Since(t0); d > time.Second {
				t.Errorf("refused after %v: the loss is known, want at once", d)
			}
			waitUntil(t, 3*ttl, "the proceeding manager's lease lost", func() bool { return !p.Live() })
			relP, err := acquire(t, p, 5*time.Second, "k")
			if err != nil {
				t.Errorf("proceed, parted from etcd: %v", err)
			} else {
				relP()
			}
			rel() // as the session ended with BYE would

			proxy.Restore()
			waitUntil(t, 20*time.Second, "a new lease after the partition healed", func() bool { return m.Live() && p.Live() })
			rel2, lost2, err := m.AcquireLeased(t.Context(), []string{"k"})
			if err != nil {
				t.Fatalf("after the partition healed: %v", err)
			}
			if lost2.Err() != nil {
				t.Errorf("a grant after recovery is lost already")
			}
			rel2()
		})
	}
}
