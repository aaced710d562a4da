// Package locks grants named keys to one holder at a time, first come
// first served. uidgate takes a command's keys (its mailbox, the user's
// seen state) just before sending it to the backend and gives them back on
// its tagged response, so that conflicting commands of different sessions
// reach a legacy backend one after the other.
package locks

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// ErrTimeout is returned when keys could not be had before the context
// ended; the command is answered NO [INUSE] and not sent.
var ErrTimeout = errors.New("locks: wait timed out")

// Manager grants keys. Acquire takes every key (in sorted order, so that
// two holders never wait on each other) or none; release gives them back
// and must be called exactly once. Implementations: Memory (one process);
// a distributed one (e.g. etcd leases) can replace it for several
// instances.
type Manager interface {
	Acquire(ctx context.Context, keys []string) (release func(), err error)
}

// TryAcquirer is implemented by Managers that can grant keys at once when
// none is held, without a context: the common, uncontended case then costs
// no timer and no goroutine. ok is false when any key is held; nothing is
// taken then, and the caller falls back to Acquire.
type TryAcquirer interface {
	TryAcquire(keys []string) (release func(), ok bool)
}

// Memory is the in-process Manager. The zero value is ready to use.
type Memory struct {
	mu   sync.Mutex
	keys map[string]*queue
}

var (
	_ Manager     = (*Memory)(nil)
	_ TryAcquirer = (*Memory)(nil)
)

var _ Inspector = (*Memory)(nil)

// queue is one key: held or not, by whom since when, and its waiters in
// arrival order. A waiter's channel is closed when the key passes to it.
type queue struct {
	held    bool
	holder  Owner
	since   time.Time
	waiters []*memWaiter
}

type memWaiter struct {
	ch    chan struct{}
	owner Owner
	since time.Time
}

// Acquire takes keys, waiting FIFO behind earlier holders of each. If ctx
// ends first, keys already taken are released and ErrTimeout (wrapping the
// context's error) is returned.
func (m *Memory) Acquire(ctx context.Context, keys []string) (func(), error) {
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	owner := OwnerFrom(ctx)
	taken := 0
	for _, k := range keys {
		if err := m.acquire(ctx, k, owner); err != nil {
			for _, held := range keys[:taken] {
				m.release(held)
			}
			return nil, errors.Join(ErrTimeout, err)
		}
		taken++
	}
	return m.releaser(keys), nil
}

// releaser gives back sorted keys, once, in reverse order.
func (m *Memory) releaser(keys []string) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			for i := len(keys) - 1; i >= 0; i-- {
				m.release(keys[i])
			}
		})
	}
}

// TryAcquire takes every key if none is held or waited for, in one step.
func (m *Memory) TryAcquire(keys []string) (func(), bool) {
	return m.TryAcquireAs(Owner{}, keys)
}

// TryAcquireAs is TryAcquire for owner, whom Inspect shows as the holder.
func (m *Memory) TryAcquireAs(owner Owner, keys []string) (func(), bool) {
	m.mu.Lock()
	for _, k := range keys {
		if _, busy := m.keys[k]; busy {
			m.mu.Unlock()
			return nil, false
		}
	}
	if m.keys == nil {
		m.keys = make(map[string]*queue)
	}
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	now := time.Now()
	for _, k := range keys {
		m.keys[k] = &queue{held: true, holder: owner, since: now}
	}
	m.mu.Unlock()
	return m.releaser(keys), true
}

func (m *Memory) acquire(ctx context.Context, key string, owner Owner) error {
	m.mu.Lock()
	if m.keys == nil {
		m.keys = make(map[string]*queue)
	}
	q := m.keys[key]
	if q == nil {
		q = &queue{}
		m.keys[key] = q
	}
	if !q.held {
		q.held, q.holder, q.since = true, owner, time.Now()
		m.mu.Unlock()
		return nil
	}
	w := &memWaiter{ch: make(chan struct{}), owner: owner, since: time.Now()}
	q.waiters = append(q.waiters, w)
	m.mu.Unlock()
	select {
	case <-w.ch:
		return nil
	case <-ctx.Done():
		m.mu.Lock()
		defer m.mu.Unlock()
		select {
		case <-w.ch:
			// Granted while timing out: pass it on.
			m.releaseLocked(key)
		default:
			if i := slices.Index(q.waiters, w); i >= 0 {
				q.waiters = slices.Delete(q.waiters, i, i+1)
			}
		}
		return ctx.Err()
	}
}

func (m *Memory) release(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.releaseLocked(key)
}

func (m *Memory) releaseLocked(key string) {
	q := m.keys[key]
	if q == nil || !q.held {
		return
	}
	if len(q.waiters) > 0 {
		w := q.waiters[0]
		q.waiters = slices.Delete(q.waiters, 0, 1)
		q.holder, q.since = w.owner, time.Now()
		close(w.ch) // the key passes to the next waiter, still held
		return
	}
	q.held = false
	delete(m.keys, key)
}

// Inspect returns every key held, with its holder and its waiters in the
// order they will get it: all there is, the manager being this process's
// only.
func (m *Memory) Inspect() Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := Snapshot{Scope: ScopeProcess, Keys: make([]KeyState, 0, len(m.keys))}
	for k, q := range m.keys {
		ks := KeyState{Key: k, Held: q.held, Holder: Holder{Owner: q.holder, Since: q.since}}
		for _, w := range q.waiters {
			ks.Waiters = append(ks.Waiters, Holder{Owner: w.owner, Since: w.since})
		}
		out.Keys = append(out.Keys, ks)
	}
	out.sort()
	return out
}

// Waiting reports how many acquisitions wait for key, for tests.
func (m *Memory) Waiting(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if q := m.keys[key]; q != nil {
		return len(q.waiters)
	}
	return 0
}

// Held reports how many keys are held, for tests and metrics.
func (m *Memory) Held() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.keys)
}
