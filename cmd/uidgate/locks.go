package main

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"uidgate/configs"
	"uidgate/proxy/locks/etcdlock"
)

// newLockManager builds the manager [locks] asks for: nil for "memory"
// (the proxy's own in-process one), an etcd manager for "etcd". The caller
// closes it after the sessions have ended. It does not wait for etcd.
func newLockManager(c configs.Locks, log *zerolog.Logger) (*etcdlock.Manager, error) {
	if c.BackendOrDefault() != configs.LocksEtcd {
		return nil, nil
	}
	tc, err := c.TLSConfig()
	if err != nil {
		return nil, err
	}
	m, err := etcdlock.New(etcdlock.Config{
		Endpoints: c.Endpoints,
		TLS:       tc,
		Username:  c.Username,
		Password:  c.Password,
		Prefix:    c.PrefixOrDefault(),
		LeaseTTL:  c.LeaseTTLOrDefault(),
		Proceed:   c.OnUnavailableOrDefault() == configs.UnavailableProceed,
		Logger:    log,
	})
	if err != nil {
		return nil, fmt.Errorf("locks: %w", err)
	}
	return m, nil
}

// lockReadiness is /readyz's view of an etcd lock manager. etcd out of
// reach never makes the instance not ready: reads need no lock and go on,
// and a balancer that took every instance out for it (etcd is shared)
// would end those too. The note says what etcd's state means for writes.
type lockReadiness struct {
	m *etcdlock.Manager
	// required: on_unavailable = "fail", a command that needs a lock is
	// refused while etcd is out of reach; with "proceed" it goes through
	// with this instance's locks only.
	required bool
}

func (l *lockReadiness) check(ctx context.Context) (ready bool, note string) {
	if err := l.m.Ready(ctx); err != nil {
		if l.required {
			return true, "etcd out of reach, commands that need a lock are refused: " + err.Error()
		}
		return true, "etcd out of reach, proceeding without cross-instance locks: " + err.Error()
	}
	return true, ""
}

// registerLockMetrics exports whether the manager holds a live lease.
func registerLockMetrics(reg *prometheus.Registry, m *etcdlock.Manager) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "uidgate_lock_lease_live",
		Help: "1 while this instance holds a live etcd lease for its locks ([locks] backend = \"etcd\").",
	}, func() float64 {
		if m.Live() {
			return 1
		}
		return 0
	}))
}
