// Package etcdlock keeps uidgate's mailbox and seen locks in etcd, so that
// several uidgate instances in front of the same servers serialize their
// sessions' conflicting commands as one would (issue 17).
//
// A key is taken in two steps. First in this process (FIFO among this
// instance's sessions; at most one of them in etcd per key), then in etcd,
// where every instance queues on the key FIFO by revision, as etcd's
// concurrency.Mutex does: each waiter writes an etcd key of its own under
// the lock key's prefix, attached to the process's lease, and holds the
// lock when no key under that prefix was created before its own. A
// command's keys are taken one after the other in sorted order, so no two
// commands wait on each other (as with the in-process manager). A free key
// costs one round trip; a release one more, in the background. Within
// Config.BatchWindow of taking it in etcd, a key given back while another
// session of this process waits for it passes to that session with its
// etcd key, without a round trip.
//
// One lease per process carries every key this process writes: when the
// process dies, etcd deletes them all when the lease expires (lease TTL).
// The manager refreshes the lease itself, one request every TTL/3, and
// notes when each refresh was sent: etcd expires the lease no sooner than
// a TTL after it received the last refresh, so no sooner than a TTL after
// that refresh was sent. When no refresh sent in the last two thirds of the
// TTL (or one second less than the TTL, if that is earlier) has been
// answered, the manager takes the lease for lost before etcd can expire
// it: grants on it end (AcquireLeased's lost context: uidgate ends the
// session with BYE), it stops refreshing it and takes a new one.
//
// A lease given up that way is not revoked at once: its holders may still
// have a command at the backend. It is revoked (if etcd has not expired it
// already) once no grant on it is held any more and no sooner than etcd
// would have expired it had it not been refreshed since (the last refresh's
// send time plus the TTL). Another instance is thus given its keys at the
// earliest a third of the TTL (at least a second) after this process's
// holders were told; the revocation matters when etcd kept the lease alive
// longer (a restarted etcd gives every lease a new TTL). Only Close revokes
// a lease at once.
//
// While etcd is out of reach, Acquire returns locks.ErrUnavailable after at
// most Config.OpTimeout (at once when the lease is known lost), or, with
// Config.Proceed, grants the keys with this process's own locks only
// (logged).
package etcdlock

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"uidgate/proxy/locks"
)

const (
	// DefaultPrefix is where lock keys live in etcd.
	DefaultPrefix = "/uidgate/locks/"
	// DefaultLeaseTTL is the lease's time to live: how long a crashed
	// instance's locks outlive it.
	DefaultLeaseTTL = 15 * time.Second
	// DefaultOpTimeout bounds a round trip to etcd that is not a wait for
	// another holder, and the wait for a lease: past it etcd counts as out
	// of reach.
	DefaultOpTimeout = 3 * time.Second
	// DefaultBatchWindow: see Config.BatchWindow.
	DefaultBatchWindow = 50 * time.Millisecond
	// DefaultSweepEvery: see Config.SweepEvery.
	DefaultSweepEvery = 5 * time.Second
	// MinLeaseTTL: etcd's lease TTL is in whole seconds. At 5 s the lease
	// is refreshed every 1⅔ s and taken for lost 3⅓ s after the last
	// answered refresh was sent, so a command already at the backend when
	// it is lost has 1⅔ s before another instance may be given its locks
	// (see lossAfter); at 3 s that margin was one second, which one stall
	// of a loaded machine eats. configs.MinLeaseTTL is the same.
	MinLeaseTTL = 5 * time.Second
	// dialTimeout bounds connecting (and authenticating) to etcd.
	dialTimeout = 5 * time.Second
	// retryMin and retryMax bound the pause between two attempts to
	// connect, to take a lease, to revoke one given up, or to delete
	// released keys.
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
	// refreshRetry is the pause after a refresh that failed before the
	// next attempt (until the lease is taken for lost).
	refreshRetry = 250 * time.Millisecond
	// proceedLogEvery bounds how often Proceed logs the grants it made
	// without etcd.
	proceedLogEvery = 10 * time.Second
)

// Config configures a Manager.
type Config struct {
	// Endpoints are etcd's client URLs ("https://etcd1:2379"); required.
	Endpoints []string
	// TLS, if set, is used for https endpoints: CA, client certificate.
	TLS *tls.Config
	// Username and Password authenticate to etcd when both are set.
	Username, Password string
	// Prefix is prepended to every etcd key (DefaultPrefix if empty).
	Prefix string
	// LeaseTTL is the lease's TTL, whole seconds (DefaultLeaseTTL if zero,
	// at least MinLeaseTTL).
	LeaseTTL time.Duration
	// OpTimeout bounds one round trip and the wait for a lease
	// (DefaultOpTimeout if zero).
	OpTimeout time.Duration
	// BatchWindow is how long this process may keep one etcd key for a
	// lock key, passing it from one of its holders to the next without a
	// round trip, before it goes back to etcd's queue, where another
	// instance's waiter may be first (DefaultBatchWindow if zero;
	// negative: never). A handoff through etcd costs a few round trips
	// with a disk write each, a handoff in the process nothing: this
	// bounds what another instance waits beyond FIFO (the window and the
	// command in progress), and lets a hot mailbox's commands through at
	// close to the in-process rate.
	BatchWindow time.Duration
	// SweepEvery is how often the keys on this process's lease are
	// checked for one that no holder or waiter uses, written by a request
	// etcd applied after it was given up (DefaultSweepEvery if zero).
	// Tests shorten it so that the sweep runs while they do.
	SweepEvery time.Duration
	// Proceed grants keys with this process's locks only when etcd is out
	// of reach, instead of failing with locks.ErrUnavailable: sessions on
	// other instances are then not serialized with this one's.
	Proceed bool
	// Logger receives the manager's events; nil logs nothing.
	Logger *zerolog.Logger
}

// Manager is a locks.Manager whose keys live in etcd. Make one with New;
// Close it when done.
type Manager struct {
	cfg    Config
	ttl    time.Duration
	log    zerolog.Logger
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned
	// bg counts the goroutines Close waits for (see background).
	bg sync.WaitGroup

	mu      sync.Mutex
	closing bool             // Close has begun: no new background work
	cli     *clientv3.Client // nil until connected
	cur     *epoch           // the live lease; nil while there is none
	changed chan struct{}    // closed (and replaced) when cur or lastErr changes
	lastErr error            // why there is no lease
	// proceeded counts grants made without etcd since the last log.
	proceeded int
	loggedAt  time.Time

	kmu  sync.Mutex
	keys map[string]*keyState // the keys held or waited for in this process
}

var (
	_ locks.Manager   = (*Manager)(nil)
	_ locks.Leased    = (*Manager)(nil)
	_ locks.Inspector = (*Manager)(nil)
)

// epoch is one lease: its refreshes, and the holds on it.
type epoch struct {
	cli *clientv3.Client
	id  clientv3.LeaseID
	// ctx ends when the lease is taken for lost (or the manager closes).
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu    sync.Mutex
	seq   uint64          // the last number used in a key name
	names map[string]bool // etcd keys in use (see etcdKey)
	// sent is when the last refresh (or the grant) was sent, answered or
	// not: etcd expires the lease no sooner than a TTL after it.
	sent time.Time
	// holds counts the holds on this lease not yet given back (see
	// newHold). free is closed when the lease is lost and holds is zero.
	holds int
	lost  bool
	freed bool // free is closed
	free  chan struct{}
}

var (
	// errLeaseLost is the cause of an epoch's end.
	errLeaseLost = errors.New("etcd lease lost")
	// errNotYet: no attempt to take a lease has failed yet (start-up).
	errNotYet = errors.New("not connected yet")
)

// New checks cfg and starts connecting to etcd in the background: it does
// not wait for etcd, which may be out of reach at start-up (Acquire then
// fails or proceeds as configured, and Ready says why).
func New(cfg Config) (*Manager, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdlock: no endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = DefaultOpTimeout
	}
	if cfg.BatchWindow == 0 {
		cfg.BatchWindow = DefaultBatchWindow
	}
	if cfg.SweepEvery <= 0 {
		cfg.SweepEvery = DefaultSweepEvery
	}
	ttl := cfg.LeaseTTL
	if ttl == 0 {
		ttl = DefaultLeaseTTL
	}
	if ttl < MinLeaseTTL || ttl%time.Second != 0 {
		return nil, fmt.Errorf("etcdlock: lease TTL %v: want whole seconds, at least %v", ttl, MinLeaseTTL)
	}
	m := &Manager{cfg: cfg, ttl: ttl, done: make(chan struct{}), changed: make(chan struct{}),
		lastErr: errNotYet}
	if cfg.Logger != nil {
		m.log = cfg.Logger.With().Str("component", "etcdlock").Logger()
	} else {
		m.log = zerolog.Nop()
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	go m.run()
	return m, nil
}

// Close revokes the live lease (every key this process holds on it goes
// at once), and closes the connection. Grants still held are lost (their
// lost context ends). Leases given up earlier and not yet revoked are left
// to expire.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closing = true
	m.mu.Unlock()
	m.cancel()
	<-m.done
	m.bg.Wait()
	m.mu.Lock()
	cli := m.cli
	m.mu.Unlock()
	if cli != nil {
		return cli.Close()
	}
	return nil
}

// background runs f in a goroutine that Close waits for, unless Close has
// begun: then it does not run f, and returns false. Deciding under m.mu
// keeps every bg.Add before Close's bg.Wait.
func (m *Manager) background(f func()) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return false
	}
	m.bg.Add(1)
	go m.runBackground(f)
	return true
}

func (m *Manager) runBackground(f func()) {
	defer m.bg.Done()
	f()
}

// run connects, takes a lease and keeps it, and takes a new one whenever
// it is lost, until Close.
func (m *Manager) run() {
	defer close(m.done)
	pause := retryMin
	retry := func(err error) bool {
		m.setErr(err)
		select {
		case <-time.After(pause):
		case <-m.ctx.Done():
			return false
		}
		pause = min(2*pause, retryMax)
		return true
	}
	for m.ctx.Err() == nil {
		cli, err := m.client()
		if err != nil {
			err = m.explain(err)
			m.log.Warn().Err(err).Msg("cannot connect to etcd")
			if !retry(err) {
				return
			}
			continue
		}
		ep, err := m.grant(cli)
		if err != nil {
			if m.ctx.Err() != nil {
				return
			}
			err = m.explain(err)
			m.log.Warn().Err(err).Msg("cannot take an etcd lease")
			if !retry(err) {
				return
			}
			continue
		}
		pause = retryMin
		m.install(ep)
		m.background(func() { m.sweepLoop(ep) })
		m.log.Info().Str("lease", leaseHex(ep.id)).Dur("ttl", m.ttl).Msg("etcd lease taken")
		why := m.keep(ep)
		m.uninstall(ep, why)
		if m.ctx.Err() != nil {
			// Close: revoke now, so that etcd deletes the keys at once
			// rather than at expiry, if it can be reached.
			rctx, cancel := context.WithTimeout(context.Background(), m.cfg.OpTimeout)
			cli.Revoke(rctx, ep.id)
			cancel()
			return
		}
		m.log.Error().Str("lease", leaseHex(ep.id)).Str("why", why.Error()).
			Msg("etcd lease lost: sessions holding locks end; taking a new lease")
		// Refreshes stopped with keep; the lease is revoked once its
		// holders are done and etcd would have expired it anyway.
		m.background(func() { m.revokeGivenUp(ep) })
	}
}

// revokeGivenUp revokes ep, a lease taken for lost, once no hold on it is
// left and no sooner than etcd would have expired it (a TTL after its last
// refresh was sent), so that another instance gets its keys no earlier than
// if it had simply expired. It tries until etcd answers or Close: at the
// latest when this process has a new lease, so that a restarted etcd,
// which gives every lease a new TTL, does not keep its keys that long.
func (m *Manager) revokeGivenUp(ep *epoch) {
	select {
	case <-ep.free:
	case <-m.ctx.Done():
		return
	}
	ep.mu.Lock()
	expiry := ep.sent.Add(m.ttl)
	ep.mu.Unlock()
	if d := time.Until(expiry); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-m.ctx.Done():
			return
		}
	}
	pause := retryMin
	for {
		m.mu.Lock()
		changed := m.changed // taken before the attempt: no news missed
		m.mu.Unlock()
		ctx, cancel := context.WithTimeout(m.ctx, m.cfg.OpTimeout)
		_, err := ep.cli.Revoke(ctx, ep.id)
		cancel()
		switch {
		case err == nil:
			m.log.Info().Str("lease", leaseHex(ep.id)).Msg("revoked a lease given up earlier")
			return
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			m.log.Debug().Str("lease", leaseHex(ep.id)).Msg("a lease given up earlier has expired")
			return
		case m.ctx.Err() != nil:
			return
		}
		// etcd out of reach: try again when run has news (a new lease
		// shows it answers again), or after a pause.
		select {
		case <-changed:
		case <-time.After(pause):
		case <-m.ctx.Done():
			return
		}
		pause = min(2*pause, retryMax)
	}
}

// client returns the connection to etcd, making it on first use. With a
// user name, making it needs etcd (to authenticate), so it is retried.
func (m *Manager) client() (*clientv3.Client, error) {
	m.mu.Lock()
	cli := m.cli
	m.mu.Unlock()
	if cli != nil {
		return cli, nil
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   m.cfg.Endpoints,
		TLS:         m.cfg.TLS,
		Username:    m.cfg.Username,
		Password:    m.cfg.Password,
		DialTimeout: dialTimeout,
		// Keepalive pings find a dead member between requests.
		DialKeepAliveTime:    m.ttl / 3,
		DialKeepAliveTimeout: m.cfg.OpTimeout,
		Logger:               zap.NewNop(), // the manager logs what matters
	})
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.cli = cli
	m.mu.Unlock()
	return cli, nil
}

// grant takes a new lease. Its send time counts as its first refresh's.
func (m *Manager) grant(cli *clientv3.Client) (*epoch, error) {
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.OpTimeout)
	sent := time.Now()
	resp, err := cli.Grant(ctx, int64(m.ttl/time.Second))
	cancel()
	if err != nil {
		return nil, err
	}
	ep := &epoch{cli: cli, id: resp.ID, sent: sent, free: make(chan struct{})}
	ep.ctx, ep.cancel = context.WithCancelCause(m.ctx)
	return ep, nil
}

// lossAfter is how long after the send time of its last answered refresh
// the lease is taken for lost: before etcd, which expires it a TTL after
// the last refresh it received, may give its keys to another instance.
// The rest of the TTL (a third, at least a second) is the margin a command
// already at the backend has to finish.
func (m *Manager) lossAfter() time.Duration {
	return min(m.ttl*2/3, m.ttl-time.Second)
}

// keep refreshes ep every TTL/3 until it is lost, and returns why (or
// that the manager is closing). Each refresh is one request
// (KeepAliveOnce), its send time noted before it goes: the lease is
// alive in etcd until at least a TTL after the send time of the last one
// answered, and is taken for lost lossAfter after it.
func (m *Manager) keep(ep *epoch) error {
	every := m.ttl / 3
	margin := m.ttl - m.lossAfter()
	ep.mu.Lock()
	confirmed := ep.sent // the send time of the last answered refresh
	ep.mu.Unlock()
	lossAt := confirmed.Add(m.lossAfter())
	next := confirmed.Add(every)
	for {
		t := time.NewTimer(time.Until(minTime(next, lossAt)))
		select {
		case <-t.C:
		case <-m.ctx.Done():
			t.Stop()
			return m.ctx.Err()
		}
		if !time.Now().Before(lossAt) {
			return fmt.Errorf("the last lease refresh answered was sent %v ago", time.Since(confirmed).Round(time.Millisecond))
		}
		sent := time.Now()
		ep.mu.Lock()
		ep.sent = sent
		ep.mu.Unlock()
		ctx, cancel := context.WithDeadline(ep.ctx, minTime(sent.Add(m.cfg.OpTimeout), lossAt))
		resp, err := ep.cli.KeepAliveOnce(ctx, ep.id)
		cancel()
		switch {
		case err == nil:
			// etcd expires it resp.TTL after it received this refresh,
			// which was after sent.
			confirmed = sent
			lossAt = sent.Add(time.Duration(resp.TTL)*time.Second - margin)
			next = sent.Add(every)
		case m.ctx.Err() != nil:
			return m.ctx.Err()
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return errors.New("lease expired")
		default:
			m.log.Debug().Err(err).Str("lease", leaseHex(ep.id)).Msg("lease refresh failed; trying again")
			next = time.Now().Add(refreshRetry)
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func (m *Manager) install(ep *epoch) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cur, m.lastErr = ep, nil
	m.signalLocked()
}

// uninstall ends ep: its grants are lost, and it is revoked once its holds
// are given back (see revokeGivenUp).
func (m *Manager) uninstall(ep *epoch, why error) {
	m.mu.Lock()
	if m.cur == ep {
		m.cur, m.lastErr = nil, why
		m.signalLocked()
	}
	m.mu.Unlock()
	ep.cancel(fmt.Errorf("%w: %v", errLeaseLost, why))
	ep.mu.Lock()
	ep.lost = true
	ep.freeLocked()
	ep.mu.Unlock()
}

// addHold counts a hold on ep; giveBack ends it.
func (ep *epoch) addHold() {
	ep.mu.Lock()
	ep.holds++
	ep.mu.Unlock()
}

// giveBack ends a hold on ep: its etcd key is deleted, or ep is lost.
func (ep *epoch) giveBack() {
	ep.mu.Lock()
	ep.holds--
	ep.freeLocked()
	ep.mu.Unlock()
}

// freeLocked closes free, once, when ep is lost and holds nothing.
func (ep *epoch) freeLocked() {
	if ep.lost && ep.holds == 0 && !ep.freed {
		ep.freed = true
		close(ep.free)
	}
}

// setErr records why there is no lease, and wakes the acquisitions that
// wait for the first attempt's outcome (see epoch).
func (m *Manager) setErr(err error) {
	m.mu.Lock()
	m.lastErr = err
	m.signalLocked()
	m.mu.Unlock()
}

func (m *Manager) signalLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// epoch returns the live lease. At start-up, until the first attempt to
// take one has succeeded or failed, it waits for its outcome, up to
// OpTimeout; afterwards, with no lease, it answers at once (etcd is known
// to be out of reach).
func (m *Manager) epoch(ctx context.Context) (*epoch, error) {
	var timeout <-chan time.Time
	for {
		m.mu.Lock()
		ep, changed, why := m.cur, m.changed, m.lastErr
		m.mu.Unlock()
		if ep != nil && ep.ctx.Err() == nil {
			return ep, nil
		}
		if why != errNotYet {
			return nil, fmt.Errorf("no etcd lease: %v", why)
		}
		if timeout == nil {
			t := time.NewTimer(m.cfg.OpTimeout)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-changed:
		case <-timeout:
			return nil, fmt.Errorf("no etcd lease: %v", why)
		case <-ctx.Done():
			return nil, fmt.Errorf("no etcd lease: %v", why)
		case <-m.ctx.Done():
			return nil, errors.New("lock manager closed")
		}
	}
}

// Live reports whether the manager holds a live lease.
func (m *Manager) Live() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur != nil && m.cur.ctx.Err() == nil
}

// Ready checks that a lease is live and that etcd answers a linearizable
// read (a quorum is up), for /readyz.
func (m *Manager) Ready(ctx context.Context) error {
	m.mu.Lock()
	ep, why := m.cur, m.lastErr
	m.mu.Unlock()
	if ep == nil || ep.ctx.Err() != nil {
		return fmt.Errorf("no etcd lease: %v", why)
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.OpTimeout)
	defer cancel()
	if _, err := ep.cli.Get(ctx, m.cfg.Prefix, clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	return nil
}

// retryPause is the pause between two attempts of one round trip.
const retryPause = 50 * time.Millisecond

// retry runs op, an idempotent round trip, until it succeeds, ctx ends or
// OpTimeout has passed: a request lost with a member that died, or made
// while the members elect a new leader (proposals are dropped then, and
// the request would hang until the server gives up), is sent again, to
// another member if need be. Each attempt gets a third of OpTimeout.
func (m *Manager) retry(ctx context.Context, op func(ctx context.Context) error) error {
	deadline := time.Now().Add(m.cfg.OpTimeout)
	attempt := max(m.cfg.OpTimeout/3, 200*time.Millisecond)
	for {
		until := time.Now().Add(attempt)
		if until.After(deadline) {
			until = deadline
		}
		actx, cancel := context.WithDeadline(ctx, until)
		err := op(actx)
		cancel()
		if err == nil || ctx.Err() != nil || permanent(err) {
			return err
		}
		if time.Now().Add(retryPause).After(deadline) {
			return err
		}
		select {
		case <-time.After(retryPause):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitDeletes waits until no key under pfx created at or before maxRev is
// left (as concurrency's unexported waitDeletes): the holders and earlier
// waiters of one lock key. A failed watch or read is tried again, for up
// to OpTimeout in a row.
func (m *Manager) waitDeletes(ctx context.Context, cli *clientv3.Client, pfx string, maxRev int64) error {
	var failingSince time.Time
	for {
		err := m.waitDeletesOnce(ctx, cli, pfx, maxRev)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil || permanent(err):
			return err
		case failingSince.IsZero():
			failingSince = time.Now()
		case time.Since(failingSince) > m.cfg.OpTimeout:
			return err
		}
		// The watch failed (its member died, or lost its leader): look
		// again, through another member if need be.
		select {
		case <-time.After(retryPause):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitDeletesOnce watches the whole prefix from now on, then reads the
// latest earlier key and waits for its deletion, until none is left. The
// watch starts before the read and at the current revision, so no
// deletion is missed and etcd serves it as events come (a watch from a
// past revision is served by its catch-up loop, every 100 ms).
func (m *Manager) waitDeletesOnce(ctx context.Context, cli *clientv3.Client, pfx string, maxRev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := cli.Watch(wctx, pfx, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if err := watchCreated(wctx, wch); err != nil {
		return err
	}
	opts := append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(maxRev))
	for {
		var resp *clientv3.GetResponse
		err := m.retry(ctx, func(ctx context.Context) (err error) {
			resp, err = cli.Get(ctx, pfx, opts...)
			return err
		})
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		key, at := string(resp.Kvs[0].Key), resp.Header.Revision
		if err := awaitDelete(wctx, wch, key, at); err != nil {
			return err
		}
	}
}

// watchCreated waits for the watch's creation.
func watchCreated(ctx context.Context, wch clientv3.WatchChan) error {
	wr, ok := <-wch
	switch {
	case !ok:
		if err := ctx.Err(); err != nil {
			return err
		}
		return errors.New("watch ended as it started")
	case wr.Err() != nil:
		return wr.Err()
	case !wr.Created:
		return errors.New("watch started without its creation notice")
	}
	return nil
}

// awaitDelete reads wch until key is deleted after revision at (the same
// name may have been deleted and written again before it).
func awaitDelete(ctx context.Context, wch clientv3.WatchChan, key string, at int64) error {
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete && string(ev.Kv.Key) == key && ev.Kv.ModRevision > at {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("watch ended waiting for a lock key's deletion")
}

// mergeCancel returns a context that ends with a or b (keeping a's values
// and deadline).
func mergeCancel(a, b context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(a)
	stop := context.AfterFunc(b, cancel)
	return ctx, func() { stop(); cancel() }
}
