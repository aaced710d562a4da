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
	if o.Rounds <= 0 {
		o.Rounds = 100
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.MaxDuration <= 0 {
		o.MaxDuration = 10 * time.Second
	}
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
	srv := &proxy.Server{
		Locks:         o.Locks,
		Route:         func(string) (*upstream.Backend, bool) { return backend, true },
		Serialization: rules.Serialization{SelectTakesSeen: true},
	}
	gateLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	gateDone := make(chan error, 1)
	go func() { gateDone <- srv.Serve(gateLn, proxy.Listener{TLS: upstream.TLSNone}) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-gateDone
	}()

	common := func(addr string) scenarios.Common {
		return scenarios.Common{Addr: addr, Sim: sim, User: user, Password: password,
			Rounds: o.Rounds, Seed: o.Seed, MaxDuration: o.MaxDuration}
	}
	var rows []Row
	for _, sc := range []struct {
		name string
		run  func(addr string) (scenarios.Result, error)
	}{
		{"A: STORE after another session's EXPUNGE", func(addr string) (scenarios.Result, error) {
			return scenarios.RunA(ctx, scenarios.ACfg{Common: common(addr)})
		}},
		{"B: \\Seen while mail is delivered", func(addr string) (scenarios.Result, error) {
			return scenarios.RunB(ctx, scenarios.BCfg{Common: common(addr)})
		}},
	} {
		direct, err := sc.run(simLn.Addr().String())
		if err != nil {
			return rows, fmt.Errorf("%s, direct: %w", sc.name, err)
		}
		via, err := sc.run(gateLn.Addr().String())
		if err != nil {
			return rows, fmt.Errorf("%s, through uidgate: %w", sc.name, err)
		}
		rows = append(rows, Row{Scenario: sc.name, Direct: direct, Uidgate: via})
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
