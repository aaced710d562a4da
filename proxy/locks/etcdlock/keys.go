package etcdlock

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"uidgate/proxy/locks"
)

// keyState is one lock key in this process: held or not, by whom since
// when, and the waiters in arrival order. queued: its holder here waits
// in etcd's queue, behind another instance.
type keyState struct {
	held    bool
	holder  locks.Owner
	since   time.Time
	queued  bool
	waiters []*waiter
}

// waiter is one acquisition waiting in this process. ch is closed when the
// key passes to it, with hold set if the etcd key comes along.
type waiter struct {
	ch    chan struct{}
	hold  *hold
	owner locks.Owner
	since time.Time
}

// hold is this process's etcd key for one lock key.
type hold struct {
	ep  *epoch
	key etcdKey
	rev int64 // its create revision
	// since is when it became first in its queue (see BatchWindow).
	since time.Time
	// owned: first in its queue. A key written by an acquisition that
	// failed is not: it is only ever deleted.
	owned bool
}

type etcdKey struct {
	prefix string // every waiter's key for this lock key starts with it
	key    string // this process's
}

// etcdKey names a new etcd key of this process for a lock key: the
// escaped lock key (no '/' in it, so one key's prefix never covers
// another's), the lease and a number never used before on it. A name is
// never written twice: a request that etcd applies late (sent to a member
// that died, retried elsewhere) cannot delete or stand for a later
// holder's key, and one that creates a key after its holder gave it up is
// found by sweep. The name is recorded as in use before it is written.
func (m *Manager) etcdKey(key string, ep *epoch) etcdKey {
	pfx := m.cfg.Prefix + url.PathEscape(key) + "/"
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.seq++
	name := pfx + leaseHex(ep.id) + "-" + strconv.FormatUint(ep.seq, 16)
	if ep.names == nil {
		ep.names = make(map[string]bool)
	}
	ep.names[name] = true
	return etcdKey{prefix: pfx, key: name}
}

// forget records that an etcd key is no longer in use.
func (ep *epoch) forget(name string) {
	ep.mu.Lock()
	delete(ep.names, name)
	ep.mu.Unlock()
}

// inUse reports whether name is an etcd key in use.
func (ep *epoch) inUse(name string) bool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.names[name]
}

// sweepLoop runs sweep every Config.SweepEvery until ep ends.
func (m *Manager) sweepLoop(ep *epoch) {
	t := time.NewTicker(m.cfg.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			m.sweep(ep)
		case <-ep.ctx.Done():
			return
		}
	}
}

// sweep deletes the keys on ep's lease that no holder or waiter uses.
func (m *Manager) sweep(ep *epoch) {
	ctx, cancel := context.WithTimeout(ep.ctx, m.cfg.OpTimeout)
	defer cancel()
	resp, err := ep.cli.TimeToLive(ctx, ep.id, clientv3.WithAttachedKeys())
	if err != nil {
		return // keep notices a lease in trouble
	}
	for _, k := range resp.Keys {
		name := string(k)
		if ep.inUse(name) || !strings.HasPrefix(name, m.cfg.Prefix) {
			continue
		}
		// A key dropped since it was listed is deleted again: harmless
		// (its name is never used again), and not logged.
		if resp, err := ep.cli.Delete(ctx, name); err == nil && resp.Deleted > 0 {
			m.log.Warn().Str("key", name).Msg("deleted a lock key written late (a request applied after it was given up)")
		}
	}
}

func leaseHex(id clientv3.LeaseID) string { return strconv.FormatInt(int64(id), 16) }

// Acquire is AcquireLeased for a holder that does not watch its lease.
func (m *Manager) Acquire(ctx context.Context, keys []string) (func(), error) {
	release, _, err := m.AcquireLeased(ctx, keys)
	return release, err
}

// AcquireLeased takes keys in sorted order, each first in this process,
// then in etcd (unless the previous holder here left its etcd key to it),
// waiting FIFO behind earlier holders. If ctx ends first, nothing is held
// and the error wraps locks.ErrTimeout; if etcd cannot be reached (or the
// lease is lost while waiting, or as the keys are granted),
// locks.ErrUnavailable, unless Proceed. lost ends if the lease under the
// grant is lost before release; the caller checks it before relying on
// the grant.
func (m *Manager) AcquireLeased(ctx context.Context, keys []string) (func(), context.Context, error) {
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	ep, etcdErr := m.epoch(ctx)
	if etcdErr != nil && !m.cfg.Proceed {
		return nil, nil, m.refused(keys, etcdErr)
	}
	holds := make([]*hold, 0, len(keys))
	undo := func() {
		for i := len(holds) - 1; i >= 0; i-- {
			m.unlock(keys[i], holds[i])
		}
	}
	owner := locks.OwnerFrom(ctx)
	for _, k := range keys {
		h, err := m.lockLocal(ctx, k, owner)
		if err != nil {
			undo()
			return nil, nil, errors.Join(locks.ErrTimeout, err)
		}
		if h != nil && h.ep != ep && h.ep.ctx.Err() == nil {
			// Left by a holder on a newer lease than this acquisition's
			// (which is lost): not to be mixed with it, nor left behind.
			m.drop(h)
			h.ep.giveBack()
			h = nil
		}
		if h != nil && h.ep.ctx.Err() != nil {
			// Left on a lost lease: its key stays in etcd's queue until
			// that lease is revoked or expires, and a new one waits
			// behind it.
			h.ep.giveBack()
			h = nil
		}
		if h == nil && etcdErr == nil {
			h = m.newHold(k, ep)
			if err := m.takeEtcd(ctx, k, h); err != nil {
				// h's key, written perhaps, is deleted before k is free
				// here again (h is not owned: never passed on).
				if errors.Is(err, locks.ErrTimeout) || !m.cfg.Proceed {
					undo()
					m.unlock(k, h)
					if errors.Is(err, locks.ErrTimeout) {
						return nil, nil, err
					}
					return nil, nil, m.refused(keys, err)
				}
				etcdErr = err
			}
		}
		holds = append(holds, h)
	}
	if etcdErr == nil && ep.ctx.Err() != nil {
		// The lease was lost as the keys were taken: refused (or
		// proceeding) as if it had been lost before.
		etcdErr = context.Cause(ep.ctx)
		if !m.cfg.Proceed {
			undo()
			return nil, nil, m.refused(keys, etcdErr)
		}
	}
	if etcdErr != nil {
		// Proceed: this process's locks only; etcd keys written before
		// the failure go at release.
		m.proceeding(keys, etcdErr)
		return m.releaser(keys, holds), context.Background(), nil
	}
	return m.releaser(keys, holds), ep.ctx, nil
}

// refused logs and returns ErrUnavailable for keys.
func (m *Manager) refused(keys []string, err error) error {
	msg := "etcd out of reach: lock refused"
	if permanent(err) {
		msg = "etcd refused this instance's request: lock refused (check [locks] username, its role's permission on prefix)"
	}
	m.log.Warn().Err(err).Strs("keys", keys).Msg(msg)
	return fmt.Errorf("%w: %v", locks.ErrUnavailable, err)
}

// releaser gives back keys (with their etcd holds), once, in reverse order.
func (m *Manager) releaser(keys []string, holds []*hold) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			for i := len(keys) - 1; i >= 0; i-- {
				m.unlock(keys[i], holds[i])
			}
		})
	}
}

// lockLocal takes key in this process, FIFO, and returns the etcd hold
// its previous holder left it, if any.
func (m *Manager) lockLocal(ctx context.Context, key string, owner locks.Owner) (*hold, error) {
	m.kmu.Lock()
	if m.keys == nil {
		m.keys = make(map[string]*keyState)
	}
	q := m.keys[key]
	if q == nil {
		q = &keyState{}
		m.keys[key] = q
	}
	if !q.held {
		q.held, q.holder, q.since, q.queued = true, owner, time.Now(), false
		m.kmu.Unlock()
		return nil, nil
	}
	w := &waiter{ch: make(chan struct{}), owner: owner, since: time.Now()}
	q.waiters = append(q.waiters, w)
	m.kmu.Unlock()
	select {
	case <-w.ch:
		return w.hold, nil
	case <-ctx.Done():
		m.kmu.Lock()
		select {
		case <-w.ch:
			// Granted while timing out: pass it on.
			m.kmu.Unlock()
			m.unlock(key, w.hold)
		default:
			if i := slices.Index(q.waiters, w); i >= 0 {
				q.waiters = slices.Delete(q.waiters, i, i+1)
			}
			m.kmu.Unlock()
		}
		return nil, ctx.Err()
	}
}

// newHold names a new etcd key of this process for key, on ep, and counts
// the hold on ep (see revokeGivenUp) until giveBack.
func (m *Manager) newHold(key string, ep *epoch) *hold {
	ep.addHold()
	return &hold{ep: ep, key: m.etcdKey(key, ep)}
}

// unlock gives key back. Its etcd key passes with it to the next waiter
// here within Config.BatchWindow; otherwise it is deleted first (in the
// background: the caller may hold the session's state lock), and only
// then the key passes on here. A hold on a lost lease is given back
// without a round trip: its key goes when the lease is revoked or expires.
// Once Close has begun, the key passes on at once: Close's revocation
// deletes it.
func (m *Manager) unlock(key string, h *hold) {
	live := h != nil && h.ep.ctx.Err() == nil
	m.kmu.Lock()
	q := m.keys[key]
	if live && h.owned && len(q.waiters) > 0 && time.Since(h.since) < m.cfg.BatchWindow {
		w := q.waiters[0]
		q.waiters = slices.Delete(q.waiters, 0, 1)
		q.holder, q.since, q.queued = w.owner, time.Now(), false
		w.hold = h
		close(w.ch)
		m.kmu.Unlock()
		return
	}
	m.kmu.Unlock()
	if live && m.background(func() { m.dropThenPass(key, h) }) {
		return
	}
	if h != nil {
		h.ep.giveBack()
	}
	m.passLocal(key)
}

// dropThenPass deletes h's etcd key, then passes key on here.
func (m *Manager) dropThenPass(key string, h *hold) {
	m.drop(h)
	h.ep.giveBack()
	m.passLocal(key)
}

// passLocal passes key to its next waiter here, without an etcd key, or
// frees it.
func (m *Manager) passLocal(key string) {
	m.kmu.Lock()
	defer m.kmu.Unlock()
	q := m.keys[key]
	if len(q.waiters) > 0 {
		w := q.waiters[0]
		q.waiters = slices.Delete(q.waiters, 0, 1)
		q.holder, q.since, q.queued = w.owner, time.Now(), false
		close(w.ch)
		return
	}
	delete(m.keys, key)
}

// setQueued records whether key's holder here waits in etcd's queue.
func (m *Manager) setQueued(key string, queued bool) {
	m.kmu.Lock()
	if q := m.keys[key]; q != nil {
		q.queued = queued
	}
	m.kmu.Unlock()
}

// Inspect returns the keys held or waited for in this process, with their
// holders and waiters here (locks.ScopeInstance): other instances' holders
// and waiters are in etcd and not shown, but a holder here that waits
// behind one of them is marked Queued.
func (m *Manager) Inspect() locks.Snapshot {
	m.kmu.Lock()
	defer m.kmu.Unlock()
	out := locks.Snapshot{Scope: locks.ScopeInstance, Keys: make([]locks.KeyState, 0, len(m.keys))}
	for k, q := range m.keys {
		ks := locks.KeyState{Key: k, Held: q.held, Queued: q.queued,
			Holder: locks.Holder{Owner: q.holder, Since: q.since}}
		for _, w := range q.waiters {
			ks.Waiters = append(ks.Waiters, locks.Holder{Owner: w.owner, Since: w.since})
		}
		out.Keys = append(out.Keys, ks)
	}
	out.Sort()
	return out
}

// Waiting reports how many acquisitions of this process wait for key in
// the process (behind one of its own holders), for tests.
func (m *Manager) Waiting(key string) int {
	m.kmu.Lock()
	defer m.kmu.Unlock()
	if q := m.keys[key]; q != nil {
		return len(q.waiters)
	}
	return 0
}

// takeEtcd writes h's key and waits until no key in its queue was created
// before it.
func (m *Manager) takeEtcd(ctx context.Context, key string, h *hold) error {
	cli := h.ep.cli
	// Stop waiting when the lease is lost as well as when ctx ends.
	wctx, stop := mergeCancel(ctx, h.ep.ctx)
	defer stop()
	fail := func(err error) error {
		switch {
		case h.ep.ctx.Err() != nil:
			return context.Cause(h.ep.ctx)
		case ctx.Err() != nil:
			return errors.Join(locks.ErrTimeout, ctx.Err())
		}
		return err
	}
	// Put, read the first in the queue and the key's own create revision
	// (read back rather than taken from the header: a retried put, the
	// first one's answer lost with a member, keeps the first one's).
	var resp *clientv3.TxnResponse
	err := m.retry(wctx, func(ctx context.Context) (err error) {
		resp, err = cli.Txn(ctx).Then(
			clientv3.OpPut(h.key.key, "", clientv3.WithLease(h.ep.id)),
			clientv3.OpGet(h.key.prefix, clientv3.WithFirstCreate()...),
			clientv3.OpGet(h.key.key),
		).Commit()
		return err
	})
	if err != nil {
		return fail(err)
	}
	first := resp.Responses[1].GetResponseRange().GetKvs()
	own := resp.Responses[2].GetResponseRange().GetKvs()
	if len(first) == 0 || len(own) == 0 {
		return fail(errors.New("lock key vanished as it was written (lease expired?)"))
	}
	h.rev = own[0].CreateRevision
	if first[0].CreateRevision == h.rev {
		h.owned, h.since = true, time.Now()
		return nil // the fast path: one round trip
	}
	m.setQueued(key, true)
	err = m.waitDeletes(wctx, cli, h.key.prefix, h.rev-1)
	m.setQueued(key, false)
	if err != nil {
		return fail(err)
	}
	// Still ours: the lease may have expired while we waited. Read
	// again for a while if not: a member that has just taken over as
	// leader was seen to answer a read before it had applied the key's
	// creation (etcd 3.4, three members, the leader killed).
	for deadline := time.Now().Add(m.cfg.OpTimeout); ; {
		var gresp *clientv3.GetResponse
		err = m.retry(wctx, func(ctx context.Context) (err error) {
			gresp, err = cli.Get(ctx, h.key.key)
			return err
		})
		if err != nil {
			return fail(err)
		}
		if len(gresp.Kvs) == 1 && gresp.Kvs[0].CreateRevision == h.rev {
			break
		}
		if time.Now().After(deadline) {
			return fail(errors.New("lock key gone while waiting (lease expired?)"))
		}
		select {
		case <-time.After(retryPause):
		case <-wctx.Done():
			return fail(wctx.Err())
		}
	}
	h.owned, h.since = true, time.Now()
	return nil
}

// drop deletes h's etcd key, retrying until done or the lease is lost
// (its keys go with it).
func (m *Manager) drop(h *hold) {
	pause := retryMin
	for {
		err := m.retry(h.ep.ctx, func(ctx context.Context) error {
			_, err := h.ep.cli.Delete(ctx, h.key.key)
			return err
		})
		if err == nil || h.ep.ctx.Err() != nil {
			h.ep.forget(h.key.key)
			return
		}
		m.log.Warn().Err(err).Str("key", h.key.key).Msg("cannot delete a released lock key; retrying")
		select {
		case <-time.After(pause):
		case <-h.ep.ctx.Done():
			return
		}
		pause = min(2*pause, retryMax)
	}
}

// proceeding logs grants made without etcd, at most every
// proceedLogEvery.
func (m *Manager) proceeding(keys []string, err error) {
	m.mu.Lock()
	m.proceeded++
	n := m.proceeded
	if time.Since(m.loggedAt) < proceedLogEvery {
		m.mu.Unlock()
		return
	}
	m.proceeded, m.loggedAt = 0, time.Now()
	m.mu.Unlock()
	m.log.Warn().Err(err).Strs("keys", keys).Int("grants", n).
		Msg("etcd out of reach: proceeding with this instance's locks only (on_unavailable = proceed)")
}
