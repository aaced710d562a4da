package main

import (
	"context"
	"sync/atomic"

	"uidgate/lookup"
	"uidgate/upstream"
)

// currentRouter routes through the routing in force: a SIGHUP swaps it.
type currentRouter struct {
	current *atomic.Pointer[routing]
}

func (c currentRouter) Route(ctx context.Context, req lookup.Request) (*upstream.Backend, error) {
	return c.current.Load().lookup.Route(ctx, req)
}

// close releases the routing's directory connections once it is replaced
// or the process ends; lookups still running on it finish first.
func (r *routing) close() {
	if r != nil {
		r.lookup.Close()
	}
}
