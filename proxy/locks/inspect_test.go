package locks

import (
	"context"
	"testing"
	"time"
)

// TestInspect: holder and FIFO of waiters per key, with their owners, as
// the key passes from one to the next.
func TestInspect(t *testing.T) {
	m := &Memory{}
	a := Owner{Session: 1, User: "alice", Command: "STORE"}
	relA, ok := m.TryAcquireAs(a, []string{"k2", "k1"})
	if !ok {
		t.Fatal("TryAcquireAs refused free keys")
	}
	got := make(chan func(), 2)
	for _, o := range []Owner{{Session: 2, User: "bob", Command: "UID MOVE"}, {Session: 3, Command: "EXPUNGE"}} {
		go func() {
			rel, err := m.Acquire(WithOwner(context.Background(), o), []string{"k1"})
			if err != nil {
				t.Error(err)
			}
			got <- rel
		}()
		for deadline := time.Now().Add(5 * time.Second); m.Waiting("k1") < int(o.Session)-1; {
			if time.Now().After(deadline) {
				t.Fatal("waiter never queued")
			}
			time.Sleep(time.Millisecond) // polling for the queue
		}
	}
	s := m.Inspect()
	if s.Scope != ScopeProcess || len(s.Keys) != 2 || s.Keys[0].Key != "k1" || s.Keys[1].Key != "k2" {
		t.Fatalf("snapshot: %+v", s)
	}
	k1 := s.Keys[0]
	if !k1.Held || k1.Holder.Owner != a || k1.Holder.Since.IsZero() || len(k1.Waiters) != 2 ||
		k1.Waiters[0].Session != 2 || k1.Waiters[0].Command != "UID MOVE" || k1.Waiters[1].Session != 3 {
		t.Errorf("k1: %+v", k1)
	}
	if len(s.Keys[1].Waiters) != 0 || s.Keys[1].Holder.Owner != a {
		t.Errorf("k2: %+v", s.Keys[1])
	}
	relA()
	rel := <-got
	s = m.Inspect()
	if len(s.Keys) != 1 || s.Keys[0].Holder.Session != 2 || len(s.Keys[0].Waiters) != 1 || s.Keys[0].Waiters[0].Session != 3 {
		t.Errorf("after A's release: %+v", s)
	}
	rel()
	(<-got)()
	if s := m.Inspect(); len(s.Keys) != 0 {
		t.Errorf("at the end: %+v", s)
	}
	if OwnerFrom(context.Background()) != (Owner{}) {
		t.Error("an owner from nowhere")
	}
}
