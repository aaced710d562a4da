package locks

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
)

func TestFIFO(t *testing.T) {
	var m Memory
	rel, err := m.Acquire(context.Background(), []string{"k"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		queued := make(chan struct{})
		go func() {
			defer wg.Done()
			go func() {
				// Wait until this waiter is queued before starting the next.
				for {
					m.mu.Lock()
					n := len(m.keys["k"].waiters)
					m.mu.Unlock()
					if n == i+1 {
						close(queued)
						return
					}
					runtime.Gosched()
				}
			}()
			r, err := m.Acquire(context.Background(), []string{"k"})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			r()
		}()
		<-queued
	}
	rel()
	wg.Wait()
	if fmt.Sprint(order) != "[0 1 2 3 4]" {
		t.Errorf("grant order %v, want arrival order", order)
	}
	if m.Held() != 0 {
		t.Errorf("%d keys still held", m.Held())
	}
}

func TestTimeoutReleasesTakenKeys(t *testing.T) {
	var m Memory
	relB, _ := m.Acquire(context.Background(), []string{"b"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	// "a" is free and taken first (sorted), then "b" times out: "a" must
	// be given back.
	if _, err := m.Acquire(ctx, []string{"b", "a"}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	relA, err := m.Acquire(context.Background(), []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	relA()
	relB()
	relB() // a second call is harmless
	if m.Held() != 0 {
		t.Errorf("%d keys still held", m.Held())
	}
}

// TestNoDeadlock: many goroutines take overlapping key sets in different
// orders; sorted acquisition means all finish. Run with -race.
func TestNoDeadlock(t *testing.T) {
	var m Memory
	keys := []string{"mailbox:a/INBOX", "mailbox:a/Trash", "seen:a/alice", "seen:a/bob"}
	var wg sync.WaitGroup
	var counter [4]int
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				idx := []int{(g + i) % 4, (g*3 + i + 1) % 4}
				set := []string{keys[idx[1]], keys[idx[0]]}
				rel, err := m.Acquire(context.Background(), set)
				if err != nil {
					t.Error(err)
					return
				}
				for _, k := range idx {
					counter[k]++ // guarded only by the lock on keys[k]: -race checks it
				}
				rel()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("deadlock")
	}
	if m.Held() != 0 {
		t.Errorf("%d keys still held", m.Held())
	}
}

func TestTryAcquire(t *testing.T) {
	var m Memory
	rel, ok := m.TryAcquire([]string{"b", "a", "b"})
	if !ok {
		t.Fatal("free keys refused")
	}
	if m.Held() != 2 {
		t.Fatalf("%d keys held, want 2", m.Held())
	}
	// Any held key refuses the whole set, and takes nothing.
	if _, ok := m.TryAcquire([]string{"c", "a"}); ok {
		t.Fatal("held key granted twice")
	}
	if m.Held() != 2 {
		t.Fatalf("%d keys held after a refused try, want 2", m.Held())
	}
	// A waiter queued behind a try-acquired key gets it on release.
	got := make(chan error, 1)
	go func() {
		r, err := m.Acquire(context.Background(), []string{"a"})
		if err == nil {
			r()
		}
		got <- err
	}()
	for m.Waiting("a") == 0 {
		runtime.Gosched()
	}
	if _, ok := m.TryAcquire([]string{"a"}); ok {
		t.Fatal("a try overtook a queued waiter")
	}
	rel()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	rel() // a second call is a no-op
	if m.Held() != 0 {
		t.Errorf("%d keys still held", m.Held())
	}
}
