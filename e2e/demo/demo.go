// Package demo runs the legacy-server scenarios against the simulator,
// once directly and once through an in-process uidgate, and reports the
// faults each run counted. `uidgate demo` prints it; the e2e tests assert
// on it.
package demo

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"uidgate/e2e/legacysim"
	"uidgate/e2e/scenarios"
	"uidgate/proxy"
	"uidgate/proxy/locks"
	"uidgate/rules"
	"uidgate/upstream"
)

// Options size a run; the zero value is the demo's default.
type Options struct {
	Rounds int   // per scenario and target (default 100)
	Seed   int64 // default 1
	// MaxDuration bounds each scenario run (default 10 s).
	MaxDuration time.Duration
	// Locks replaces uidgate's lock manager (tests: a manager that grants
	// everything at once shows what serialization is for).
	Locks locks.Manager
}

// Row is one scenario, run directly and through uidgate.
type Row struct {
	Scenario string
	Direct   scenarios.Result
	Uidgate  scenarios.Result
}

const (
	user, password = "alice", "alice-demo"
)

// Run starts the simulator with every fault on and uidgate in front of it,
// on loopback, runs scenarios A and B against each, and stops both.
func Run(ctx context.Context, o Options) ([]Row, error) {
	sizeDefaults(&o.Rounds, &o.Seed, &o.MaxDuration, 100, 10*time.Second)
	cfg := legacysim.Config{Seed: o.Seed, Users: map[string]string{user: password}}
	if err := cfg.SetFaults("all"); err != nil {
		return nil, err
	}
	sim := legacysim.New(cfg)
	simLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	simDone := make(chan error, 1)
	go func() { simDone <- sim.Serve(simLn) }()
	defer func() {
		sim.Close()
		<-simDone
	}()

	// uidgate as it would be configured in front of a Cyrus 2.3 server.
	backend := &upstream.Backend{Name: "legacy", Address: simLn.Addr().String(), TLS: upstream.TLSNone,
		Legacy: true, ExplicitSeen: true}
	gateAddr, stopGate, err := startGate(backend, o.Locks, rules.Serialization{SelectTakesSeen: true})
	if err != nil {
		return nil, err
	}
	defer stopGate()

	common := func(addr string) scenarios.Common {
		return scenarios.Common{Addr: addr, Sim: sim, User: user, Password: password,
			Rounds: o.Rounds, Seed: o.Seed, MaxDuration: o.MaxDuration}
	}
	return runBoth(ctx, simLn.Addr().String(), gateAddr, common, func(c scenarios.Common) scenarios.BCfg {
		return scenarios.BCfg{Common: c}
	})
}

// sizeDefaults fills a run's zero sizes: rounds and bound as given, seed 1.
func sizeDefaults(rounds *int, seed *int64, bound *time.Duration, defRounds int, defBound time.Duration) {
	if *rounds <= 0 {
		*rounds = defRounds
	}
	if *seed == 0 {
		*seed = 1
	}
	if *bound <= 0 {
		*bound = defBound
	}
}

// Scenario names, as the table prints them.
const (
	NameA = "A: STORE after another session's EXPUNGE"
	NameB = "B: \\Seen while mail is delivered"
)

// startGate starts an in-process uidgate on a loopback port in front of
// backend and returns its address and what stops it.
func startGate(backend *upstream.Backend, lm locks.Manager, ser rules.Serialization) (string, func(), error) {
	srv := &proxy.Server{
		Locks:         lm,
		Route:         func(string) (*upstream.Backend, bool) { return backend, true },
		Serialization: ser,
		// The scenarios' clients are one user on 127.0.0.1, reconnecting
		// after every failed round: not what the login buckets are for.
		LoginRatePerIP:   proxy.LoginRate{Burst: -1},
		LoginRatePerUser: proxy.LoginRate{Burst: -1},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln, proxy.Listener{TLS: upstream.TLSNone}) }()
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-done
	}
	return ln.Addr().String(), stop, nil
}

// runBoth runs scenarios A and B directly at direct and through uidgate at
// gate; common gives a scenario's configuration for an address, bcfg
// completes scenario B's.
func runBoth(ctx context.Context, direct, gate string, common func(addr string) scenarios.Common, bcfg func(scenarios.Common) scenarios.BCfg) ([]Row, error) {
	var rows []Row
	for _, sc := range []struct {
		name string
		run  func(addr string) (scenarios.Result, error)
	}{
		{NameA, func(addr string) (scenarios.Result, error) {
			return scenarios.RunA(ctx, scenarios.ACfg{Common: common(addr)})
		}},
		{NameB, func(addr string) (scenarios.Result, error) {
			return scenarios.RunB(ctx, bcfg(common(addr)))
		}},
	} {
		d, err := sc.run(direct)
		if err != nil {
			return rows, fmt.Errorf("%s, direct: %w", sc.name, err)
		}
		via, err := sc.run(gate)
		if err != nil {
			return rows, fmt.Errorf("%s, through uidgate: %w", sc.name, err)
		}
		rows = append(rows, Row{Scenario: sc.name, Direct: d, Uidgate: via})
		if ctx.Err() != nil {
			return rows, ctx.Err()
		}
	}
	return rows, nil
}

// Print writes the table.
func Print(w io.Writer, rows []Row) {
	fmt.Fprintf(w, "%-42s %-8s %6s %12s %7s %10s %14s %7s\n", "scenario", "via", "rounds", "wrong writes", "missed", "lost \\Seen", "spurious \\Seen", "errors")
	for _, r := range rows {
		for _, v := range []struct {
			via string
			res scenarios.Result
		}{{"direct", r.Direct}, {"uidgate", r.Uidgate}} {
			fmt.Fprintf(w, "%-42s %-8s %6d %12d %7d %10d %14d %7d\n", r.Scenario, v.via, v.res.Rounds,
				v.res.WrongWrites, v.res.Missed, v.res.LostSeen, v.res.SpuriousSeen, v.res.Errors)
		}
	}
}
