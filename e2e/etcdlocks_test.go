package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"uidgate/e2e/etcdtest"
	"uidgate/proxy/locks"
	"uidgate/proxy/locks/etcdlock"
)

// testLeaseTTL is the lease TTL of the lock tests' managers: short, so
// that expiry is seen quickly, and long enough that a busy machine does not
// make a lease pass for lost (a refresh every 1.7 s, lost 3.3 s after the
// last answered one was sent; at the 3 s minimum, 1 s and 2 s).
const testLeaseTTL = 5 * time.Second

// newEtcdLocks makes an etcd lock manager for a test (see
// etcdtest.NewManager), with the prefix and Proceed as given.
func newEtcdLocks(t testing.TB, endpoints []string, prefix string, proceed bool) (*etcdlock.Manager, *etcdtest.Log) {
	return etcdtest.NewManager(t, etcdlock.Config{Endpoints: endpoints, Prefix: prefix, Proceed: proceed})
}

// mustWait polls cond (state in another process: etcd) until it holds,
// and fails the test if it does not within d.
func mustWait(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !waitFor(d, cond) {
		t.Fatalf("no %s after %v", what, d)
	}
}

func acquire(t testing.TB, m locks.Manager, d time.Duration, keys ...string) (func(), error) {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	return m.Acquire(ctx, keys)
}

// TestEtcdLocks: the etcd lock manager's semantics against a real etcd,
// between two managers standing for two uidgate instances (FIFO, sorted
// keys, the timeout, the fast path and lease loss are tested in
// proxy/locks/etcdlock).
func TestEtcdLocks(t *testing.T) {
	checkNoLeaks(t)
	etcd := etcdtest.Start(t, 1)
	eps := etcd.Endpoints()

	t.Run("exclusion and timeout", func(t *testing.T) {
		const pfx = "/t/excl/"
		a, _ := newEtcdLocks(t, eps, pfx, false)
		b, _ := newEtcdLocks(t, eps, pfx, false)
		relA, err := acquire(t, a, 5*time.Second, "mailbox:x/INBOX")
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if _, err := acquire(t, b, 300*time.Millisecond, "mailbox:x/INBOX"); !errors.Is(err, locks.ErrTimeout) {
			t.Fatalf("second instance while held: %v, want ErrTimeout", err)
		}
		if d := time.Since(t0); d < 300*time.Millisecond || d > 5*time.Second {
			t.Errorf("timed out after %v, want about 300ms", d)
		}
		// The waiter that timed out left nothing behind.
		mustWait(t, 5*time.Second, "waiter's key removed", func() bool { return len(etcd.Keys(t, pfx)) == 1 })
		// Another key is free meanwhile.
		relOther, err := acquire(t, b, 5*time.Second, "mailbox:x/Other")
		if err != nil {
			t.Fatal(err)
		}
		relOther()
		got := make(chan error, 1)
		go func() {
			rel, err := acquire(t, b, 10*time.Second, "mailbox:x/INBOX")
			if err == nil {
				rel()
			}
			got <- err
		}()
		mustWait(t, 5*time.Second, "b queued", func() bool { return len(etcd.Keys(t, pfx)) == 2 })
		relA()
		if err := <-got; err != nil {
			t.Fatalf("after release: %v", err)
		}
		mustWait(t, 5*time.Second, "keys released", func() bool { return len(etcd.Keys(t, pfx)) == 0 })
	})

	// Two instances, 8 sessions taking random key sets; with the default
	// batch window, and with none (every grant through etcd). The sweep
	// of keys no holder uses runs every 100 ms meanwhile (5 s deployed),
	// and must take none in use. At the end nothing is left: no etcd key
	// under the prefix, no waiter in either process.
	for _, tc := range []struct {
		name   string
		window time.Duration
	}{{"default window", 0}, {"no window", -1}} {
		t.Run("mutual exclusion under load, "+tc.name, func(t *testing.T) {
			pfx := "/t/load-" + strings.ReplaceAll(tc.name, " ", "-") + "/"
			var ms []*etcdlock.Manager
			for range 2 {
				m, _ := etcdtest.NewManager(t, etcdlock.Config{Endpoints: eps, Prefix: pfx,
					BatchWindow: tc.window, SweepEvery: 100 * time.Millisecond})
				ms = append(ms, m)
			}
			keys := []string{"mailbox:x/A", "mailbox:x/B", "seen:x/alice"}
			inside := make([]atomic.Int32, len(keys))
			var wg sync.WaitGroup
			var bad, done atomic.Int32
			for w := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 17))
					m := ms[w%2]
					for range 15 {
						// Random subsets, in random order: the manager sorts.
						var ks []int
						for i := range keys {
							if rng.IntN(2) == 0 {
								ks = append(ks, i)
							}
						}
						if len(ks) == 0 {
							ks = []int{rng.IntN(len(keys))}
						}
						rng.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
						names := make([]string, len(ks))
						for i, k := range ks {
							names[i] = keys[k]
						}
						rel, err := acquire(t, m, 30*time.Second, names...)
						if err != nil {
							t.Errorf("worker %d: %v", w, err)
							return
						}
						for _, k := range ks {
							if inside[k].Add(1) != 1 {
								bad.Add(1)
							}
						}
						time.Sleep(time.Millisecond) // hold it a moment
						for _, k := range ks {
							inside[k].Add(-1)
						}
						rel()
						done.Add(1)
					}
				}()
			}
			wg.Wait()
			if bad.Load() != 0 {
				t.Errorf("%d times two holders of one key at once", bad.Load())
			}
			// Releases delete their etcd keys in the background.
			mustWait(t, 10*time.Second, "every etcd key deleted", func() bool { return len(etcd.Keys(t, pfx)) == 0 })
			for i, m := range ms {
				for _, k := range keys {
					if n := m.Waiting(k); n != 0 {
						t.Errorf("instance %d: %d waiting for %s at the end", i, n, k)
					}
				}
			}
			t.Logf("%d grants of random key sets over two instances, no overlap, no deadlock", done.Load())
		})
	}

	t.Run("an instance passes a key to its own waiters for a bounded time", func(t *testing.T) {
		const pfx = "/t/batch/"
		// A 2 s window (default 50 ms), waiters holding 200 ms each: 20
		// waiters take 4 s, twice the window. The window starts when a's
		// first waiter gets the key in etcd, after the set-up: c holds
		// the key meanwhile.
		a, _ := etcdtest.NewManager(t, etcdlock.Config{Endpoints: eps, Prefix: pfx, BatchWindow: 2 * time.Second})
		b, _ := newEtcdLocks(t, eps, pfx, false)
		c, _ := newEtcdLocks(t, eps, pfx, false)
		relC, err := acquire(t, c, 5*time.Second, "k")
		if err != nil {
			t.Fatal(err)
		}
		// Each holds the key 200 ms: a command's time at the backend.
		g := grantLog{t: t, key: "k", timeout: 30 * time.Second, hold: 200 * time.Millisecond}
		// 20 of a's: one queues in etcd behind c, 19 wait in a's process
		// behind it; then b queues in etcd behind a's.
		for range 20 {
			g.wait("a", a)
		}
		mustWait(t, 10*time.Second, "a's waiters queued", func() bool {
			return a.Waiting("k") == 19 && len(etcd.Keys(t, pfx)) == 2
		})
		g.wait("b", b)
		mustWait(t, 10*time.Second, "b queued", func() bool { return len(etcd.Keys(t, pfx)) == 3 })
		relC()
		order := g.done()
		// a's waiters take the key from one another, without etcd, until
		// the window has passed; then b, whose etcd key was next in the
		// queue, before the rest of a's.
		pos := slices.Index(order, "b")
		t.Logf("b granted after %d of a's 20 waiters", pos)
		if pos < 2 || pos >= 20 {
			t.Errorf("grant order %v: b after %d of a's, want some but not all (the window)", order, pos)
		}
	})
}

// TestEtcdLockLeaseExpiry: an instance that dies holding a key (its client
// gone without revoking its lease, as after SIGKILL) holds it until the
// lease expires; the other instance then gets it.
func TestEtcdLockLeaseExpiry(t *testing.T) {
	checkNoLeaks(t)
	etcd := etcdtest.Start(t, 1)
	eps := etcd.Endpoints()
	const pfx = "/t/expiry/"
	// The instance that waits, ready before the other's lease starts, so
	// that its set-up does not count against the lease.
	b, _ := newEtcdLocks(t, eps, pfx, false)
	// The vanished instance: its own key under the prefix, on a lease of
	// testLeaseTTL, then its client closed with nothing revoked.
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now() // the lease expires no sooner than a TTL after
	lease, err := cli.Grant(t.Context(), int64(testLeaseTTL/time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// A key in "k"'s queue, named as the manager names its own.
	if _, err := cli.Put(t.Context(), pfx+"k/"+fmt.Sprintf("%x", int64(lease.ID)), "", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	rel, err := acquire(t, b, 4*testLeaseTTL, "k")
	if err != nil {
		t.Fatalf("after the holder vanished: %v", err)
	}
	rel()
	d := time.Since(t0)
	t.Logf("the vanished holder's key freed %v after its lease was granted (lease TTL %v)", d.Round(time.Millisecond), testLeaseTTL)
	if d < testLeaseTTL-time.Second || d > testLeaseTTL+5*time.Second {
		t.Errorf("got the key %v after the lease was granted, want about the lease TTL %v", d, testLeaseTTL)
	}
}

// TestEtcdLockUnavailable: etcd down — a held grant is lost (its holder is
// told), Acquire fails with ErrUnavailable within the op timeout, or
// proceeds with the instance's own locks when configured so; etcd back —
// both recover, and the lease given up is revoked, so that a key held on it
// when etcd went away is free again without waiting for the new TTL that
// the restarted etcd gave it.
func TestEtcdLockUnavailable(t *testing.T) {
	checkNoLeaks(t)
	etcd := etcdtest.Start(t, 1)
	eps := etcd.Endpoints()
	const pfx = "/t/down/"
	// A 6 s lease for the instance whose lease is revoked: the restarted
	// etcd would keep it 6 s more, far longer than the revocation takes.
	const failingTTL = 6 * time.Second
	failing, logs := etcdtest.NewManager(t, etcdlock.Config{Endpoints: eps, Prefix: pfx, LeaseTTL: failingTTL})
	proceeding, _ := newEtcdLocks(t, eps, pfx, true)

	rel, lost, err := failing.AcquireLeased(t.Context(), []string{"held"})
	if err != nil {
		t.Fatal(err)
	}
	etcd.Members[0].Kill(t)
	t0 := time.Now()
	select {
	case <-lost.Done():
		t.Logf("held grant lost %v after etcd died (lease TTL %v)", time.Since(t0).Round(time.Millisecond), failingTTL)
	case <-time.After(2 * failingTTL):
		t.Fatal("the grant held when etcd died was never reported lost")
	}
	if time.Since(t0) >= failingTTL {
		t.Errorf("loss reported %v after etcd died: not before the lease's own expiry (%v)", time.Since(t0), failingTTL)
	}
	rel() // as the session ended with BYE would
	t1 := time.Now()
	if _, err := acquire(t, failing, 10*time.Second, "k"); !errors.Is(err, locks.ErrUnavailable) {
		t.Errorf("etcd down: %v, want ErrUnavailable", err)
	}
	if d := time.Since(t1); d > 5*time.Second {
		t.Errorf("ErrUnavailable after %v, want within the op timeout (1s)", d)
	}
	// Proceed: granted with this instance's locks, which still exclude.
	relP, err := acquire(t, proceeding, 10*time.Second, "k")
	if err != nil {
		t.Fatalf("proceed, etcd down: %v", err)
	}
	if _, err := acquire(t, proceeding, 200*time.Millisecond, "k"); !errors.Is(err, locks.ErrTimeout) {
		t.Errorf("proceed: the same instance's second holder got %v, want ErrTimeout", err)
	}
	relP()

	etcd.Restart(t, etcd.Members[0])
	mustWait(t, 20*time.Second, "a new lease after etcd came back", func() bool { return failing.Live() && proceeding.Live() })
	// The lease given up is revoked on return (its holder is gone, and
	// it would have expired by now had etcd been up), not left to the
	// TTL the restarted etcd gave it.
	mustWait(t, 20*time.Second, "the lease given up revoked", func() bool {
		return strings.Contains(logs.String(), "revoked a lease given up")
	})
	relH, err := acquire(t, proceeding, 10*time.Second, "held")
	if err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	relH()
	relK, err := acquire(t, failing, 10*time.Second, "k")
	if err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	relK()
	if !strings.Contains(logs.String(), "etcd lease lost") {
		t.Errorf("the lease loss was not logged")
	}
}

// TestEtcdLockLeaseLost: instance A is cut off from etcd (a partition of A
// alone, through a proxy) while one of its sessions holds a key, and
// reaches it again before that session lets go. A's holder is told
// (lost) before A's lease can expire; B, queued for the key, gets it no
// sooner than that expiry: A neither revokes the lease while the holder
// still holds the key nor before etcd would have expired it. Once A's
// holder lets go, nothing is left in etcd or in either process.
func TestEtcdLockLeaseLost(t *testing.T) {
	checkNoLeaks(t)
	etcd := etcdtest.Start(t, 1)
	eps := etcd.Endpoints()
	proxy := etcd.Proxy(t, etcd.Members[0])
	const pfx = "/t/lost/"
	// A 9 s lease: taken for lost 6 s after the last answered refresh
	// was sent, 3 s before etcd may expire it: room for A to take a new
	// lease in between, when a revocation would show.
	const ttl = 9 * time.Second
	a, logs := etcdtest.NewManager(t, etcdlock.Config{Endpoints: []string{proxy.URL}, Prefix: pfx, LeaseTTL: ttl})
	b, _ := newEtcdLocks(t, eps, pfx, false)
	cli := etcd.Client(t)

	relA, lost, err := a.AcquireLeased(t.Context(), []string{"k"})
	if err != nil {
		t.Fatal(err)
	}
	defer relA()
	gr, err := cli.Get(t.Context(), pfx+"k/", clientv3.WithPrefix())
	if err != nil || len(gr.Kvs) != 1 || gr.Kvs[0].Lease == 0 {
		t.Fatalf("A's etcd key: %v %v", gr, err)
	}
	lease := clientv3.LeaseID(gr.Kvs[0].Lease)

	bGot := make(chan time.Time, 1)
	go func() {
		rel, err := acquire(t, b, 60*time.Second, "k")
		if err != nil {
			t.Errorf("B: %v", err)
			close(bGot)
			return
		}
		bGot <- time.Now()
		rel()
	}()
	mustWait(t, 10*time.Second, "B queued", func() bool { return len(etcd.Keys(t, pfx)) == 2 })

	proxy.Blackhole()
	cut := time.Now()
	select {
	case <-lost.Done():
	case <-time.After(3 * ttl):
		t.Fatal("A's grant was never reported lost")
	}
	lostAt := time.Now()
	t.Logf("A's grant lost %v after the cut: %v", lostAt.Sub(cut).Round(time.Millisecond), context.Cause(lost))
	select {
	case at := <-bGot:
		t.Fatalf("B got the key %v after the cut, before A's holder was told", at.Sub(cut))
	default:
	}
	// etcd's view of A's lease, no longer refreshed: it expires no
	// sooner than this (the remaining TTL is rounded down to seconds).
	q := time.Now()
	tr, err := cli.TimeToLive(t.Context(), lease)
	if err != nil {
		t.Fatal(err)
	}
	if tr.TTL <= 0 {
		t.Fatalf("A's lease had expired when A's holder was told (TTL %d)", tr.TTL)
	}
	expiry := q.Add(time.Duration(tr.TTL) * time.Second)

	// etcd back for A, whose holder still holds the key.
	proxy.Restore()
	mustWait(t, 30*time.Second, "a new lease for A", a.Live)
	t.Logf("A has a new lease %v after the cut", time.Since(cut).Round(time.Millisecond))
	var got time.Time
	select {
	case at, ok := <-bGot:
		if !ok {
			t.FailNow()
		}
		got = at
	case <-time.After(4 * ttl):
		t.Fatal("B never got the key")
	}
	t.Logf("B got the key %v after A's holder was told, %v after the cut", got.Sub(lostAt).Round(time.Millisecond), got.Sub(cut).Round(time.Millisecond))
	if got.Before(expiry) {
		t.Errorf("B got the key %v before A's lease could have expired: A gave it up early", expiry.Sub(got).Round(time.Millisecond))
	}
	relA()
	mustWait(t, 10*time.Second, "every etcd key deleted", func() bool { return len(etcd.Keys(t, pfx)) == 0 })
	if a.Waiting("k") != 0 || b.Waiting("k") != 0 {
		t.Errorf("waiting at the end: A %d, B %d", a.Waiting("k"), b.Waiting("k"))
	}
	if !strings.Contains(logs.String(), "etcd lease lost") {
		t.Errorf("A's lease loss was not logged")
	}
}

// TestEtcdLockCluster: three etcd members; the leader killed while a key
// is held — the holder keeps it, and both instances go on taking keys
// through the other two. The managers have the default op timeout (3s),
// which a new election (about a second here) must fit in, and a 10s lease.
func TestEtcdLockCluster(t *testing.T) {
	checkNoLeaks(t)
	etcd := etcdtest.Start(t, 3)
	eps := etcd.Endpoints()
	const pfx = "/t/cluster/"
	cfg := etcdlock.Config{Endpoints: eps, Prefix: pfx, LeaseTTL: 10 * time.Second, OpTimeout: etcdlock.DefaultOpTimeout}
	a, _ := etcdtest.NewManager(t, cfg)
	b, _ := etcdtest.NewManager(t, cfg)
	rel, lost, err := a.AcquireLeased(t.Context(), []string{"held"})
	if err != nil {
		t.Fatal(err)
	}
	victim := etcd.Members[leaderIndex(t, etcd)]
	victim.Kill(t)
	t.Logf("killed %s", victim.Name)
	// Both instances keep working: take and release keys for 8 s, past
	// the point where a lease whose refreshes the kill had stopped would
	// be taken for lost (6.7 s at 10 s).
	const busy = 8 * time.Second
	deadline := time.Now().Add(busy)
	n := 0
	for time.Now().Before(deadline) {
		for _, m := range []locks.Manager{a, b} {
			r, err := acquire(t, m, 10*time.Second, "k")
			if err != nil {
				t.Fatalf("after killing %s: %v", victim.Name, err)
			}
			r()
			n++
		}
	}
	if _, err := acquire(t, b, 300*time.Millisecond, "held"); !errors.Is(err, locks.ErrTimeout) {
		t.Errorf("the key held across the kill: %v, want ErrTimeout (still held)", err)
	}
	select {
	case <-lost.Done():
		t.Errorf("the grant held across one member's death was lost: %v", context.Cause(lost))
	default:
	}
	rel()
	t.Logf("%d grants with one of three members dead", n)
}

// leaderIndex finds which member leads (by its status), and fails the
// test if none does within 10 s.
func leaderIndex(t testing.TB, etcd *etcdtest.Cluster) int {
	t.Helper()
	cli := etcd.Client(t)
	eps := etcd.Endpoints()
	leader := -1
	mustWait(t, 10*time.Second, "etcd leader", func() bool {
		for i, ep := range eps {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			st, err := cli.Status(ctx, ep)
			cancel()
			if err == nil && st.Header.MemberId == st.Leader {
				leader = i
				return true
			}
		}
		return false
	})
	return leader
}

// grantLog records the order in which waiters, each in a goroutine of its
// own, are granted key; each holds it for hold.
type grantLog struct {
	t             *testing.T
	key           string
	timeout, hold time.Duration
	mu            sync.Mutex
	order         []string
	wg            sync.WaitGroup
}

func (g *grantLog) wait(name string, m locks.Manager) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		rel, err := acquire(g.t, m, g.timeout, g.key)
		if err != nil {
			g.t.Errorf("%s: %v", name, err)
			return
		}
		g.mu.Lock()
		g.order = append(g.order, name)
		g.mu.Unlock()
		time.Sleep(g.hold)
		rel()
	}()
}

// done waits for every waiter and returns the order they were granted in.
func (g *grantLog) done() []string {
	g.wg.Wait()
	return g.order
}
