package locks

import (
	"context"
	"errors"
)

// ErrUnavailable is returned when the service that keeps the keys (etcd)
// cannot be reached: nothing is taken, the command is answered
// NO [UNAVAILABLE] and not sent.
var ErrUnavailable = errors.New("locks: lock service unavailable")

// Leased is implemented by Managers whose grants live on a lease that can
// end while they are held: a distributed manager whose process lost touch
// with the coordination service for longer than its lease, after which
// another instance may be granted the same keys. AcquireLeased is Acquire,
// and also returns lost, a context that ends if the grant is lost that way
// before release is called; it never ends for a grant that holds no lease.
// A holder must then stop relying on its keys (uidgate ends the session).
type Leased interface {
	Manager
	AcquireLeased(ctx context.Context, keys []string) (release func(), lost context.Context, err error)
}
