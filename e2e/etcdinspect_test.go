package e2e

import (
	"context"
	"testing"
	"time"

	"uidgate/e2e/etcdtest"
	"uidgate/proxy/locks"
)

// TestEtcdLockInspect: the etcd manager shows what it can, this
// instance's view (locks.ScopeInstance): its holder and its own FIFO of
// waiters per key, and a holder of its that waits in etcd behind another
// instance as Queued.
func TestEtcdLockInspect(t *testing.T) {
	cl := etcdtest.Start(t, 1)
	const pfx = "/inspect/"
	a, _ := newEtcdLocks(t, cl.Endpoints(), pfx, false)
	b, _ := newEtcdLocks(t, cl.Endpoints(), pfx, false)
	own := func(cid uint64) context.Context {
		return locks.WithOwner(context.Background(), locks.Owner{Session: cid, User: "alice", Command: "STORE"})
	}
	relA, err := a.Acquire(own(1), []string{"k"})
	if err != nil {
		t.Fatal(err)
	}
	// Another session of A waits here; B's holder waits in etcd.
	got := make(chan func(), 2)
	go func() {
		rel, err := a.Acquire(own(2), []string{"k"})
		if err != nil {
			t.Error(err)
		}
		got <- rel
	}()
	go func() {
		rel, err := b.Acquire(own(3), []string{"k"})
		if err != nil {
			t.Error(err)
		}
		got <- rel
	}()
	mustWait(t, 10*time.Second, "both waiting", func() bool {
		sb := b.Inspect()
		return a.Waiting("k") == 1 && len(sb.Keys) == 1 && sb.Keys[0].Queued
	})
	sa := a.Inspect()
	if sa.Scope != locks.ScopeInstance || len(sa.Keys) != 1 {
		t.Fatalf("A: %+v", sa)
	}
	if k := sa.Keys[0]; k.Key != "k" || k.Holder.Session != 1 || k.Queued || len(k.Waiters) != 1 || k.Waiters[0].Session != 2 {
		t.Errorf("A's key: %+v", k)
	}
	if k := b.Inspect().Keys[0]; k.Holder.Session != 3 || len(k.Waiters) != 0 {
		t.Errorf("B's key: %+v", k)
	}
	relA()
	(<-got)()
	(<-got)()
	mustWait(t, 10*time.Second, "no key left", func() bool {
		return len(a.Inspect().Keys) == 0 && len(b.Inspect().Keys) == 0
	})
}
