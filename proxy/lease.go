package proxy

import (
	"context"
	"fmt"

	"uidgate/proxy/locks"
)

// acquire takes keys from mgr. A grant that can be lost while held
// (locks.Leased: a distributed manager whose lease expired, so that another
// uidgate instance may now hold the same keys) ends the session when it is
// lost: its command already went upstream, and what the client sends next
// must not reach the backend as if it were still serialized.
func (ss *session) acquire(ctx context.Context, mgr locks.Manager, keys []string) (func(), error) {
	leased, ok := mgr.(locks.Leased)
	if !ok {
		return mgr.Acquire(ctx, keys)
	}
	release, lost, err := leased.AcquireLeased(ctx, keys)
	if err != nil {
		return nil, err
	}
	if lost.Err() != nil {
		// Lost already: AfterFunc would call lockLost in a goroutine of
		// its own, after the command had gone upstream unserialized.
		release()
		return nil, fmt.Errorf("%w: %v", locks.ErrUnavailable, context.Cause(lost))
	}
	stop := context.AfterFunc(lost, func() { ss.lockLost(keys) })
	return func() {
		stop()
		release()
	}, nil
}

// lockLost ends the session with BYE, once, at the next response boundary
// (as Shutdown does): a lock one of its commands holds is no longer held.
func (ss *session) lockLost(keys []string) {
	// closing: the backend connection closed next is uidgate's doing, so
	// the relay does not answer it with a BYE of its own.
	if !ss.closing.CompareAndSwap(false, true) {
		return
	}
	ss.log.Error().Strs("keys", keys).Msg("lock lease lost while held: ending the session")
	ss.bye("[UNAVAILABLE] Lock service lost, please reconnect")
}
