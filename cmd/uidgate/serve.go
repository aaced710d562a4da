package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/rs/zerolog"

	"uidgate/configs"
	"uidgate/lookup"
	"uidgate/proxy"
	"uidgate/rules"
	"uidgate/upstream"
)

// loadConfig reads file, or the embedded default when file is "", and
// validates it.
func loadConfig(file string) (*configs.Config, error) {
	var c *configs.Config
	if file == "" {
		c = configs.Default()
	} else {
		var err error
		if c, err = configs.Load(file); err != nil {
			return nil, err
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func checkConfig(file string, stdout, stderr io.Writer) int {
	c, err := loadConfig(file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := c.Encode(stdout); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// newLogger builds the process logger. Its level is zerolog's global
// level, so that SIGHUP can change it for every session at once.
func newLogger(c configs.Log, w io.Writer) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(c.LevelOrDefault())
	if err != nil {
		return zerolog.Logger{}, err
	}
	zerolog.SetGlobalLevel(level)
	if c.FormatOrDefault() == "console" {
		w = zerolog.ConsoleWriter{Out: w}
	}
	return zerolog.New(w).With().Timestamp().Logger(), nil
}

// reload re-reads file on SIGHUP: routes, backends and the log level
// change for new logins; open sessions keep their backend. An invalid file
// is logged and the running configuration kept. Listeners and limits need
// a restart.
func reload(file string, current *atomic.Pointer[routing], log *zerolog.Logger) {
	c, err := loadConfig(file)
	if err == nil {
		var r *routing
		if r, err = newRouting(c); err == nil {
			level, _ := zerolog.ParseLevel(c.Log.LevelOrDefault())
			current.Swap(r).close()
			zerolog.SetGlobalLevel(level)
			log.Info().Str("config", file).Msg("configuration reloaded")
			return
		}
	}
	log.Error().Str("config", file).Str("error", err.Error()).Msg("reload failed; keeping the running configuration")
}

// routing is what SIGHUP replaces: routes, backends and directories
// (routing.go).
type routing struct {
	lookup *lookup.Router
}

func newRouting(c *configs.Config) (*routing, error) {
	lr, err := lookup.New(c)
	if err != nil {
		return nil, err
	}
	return &routing{lookup: lr}, nil
}

// newServer builds the proxy from a validated configuration; its routes
// and backends are read through current, which a reload swaps.
func newServer(c *configs.Config, log *zerolog.Logger, current *atomic.Pointer[routing]) (*proxy.Server, error) {
	r, err := newRouting(c)
	if err != nil {
		return nil, err
	}
	current.Store(r)
	return &proxy.Server{
		Lookup:              currentRouter{current},
		Logger:              log,
		MaxLine:             c.Limits.MaxLineOrDefault(),
		MaxLiteral:          c.Limits.MaxLiteralOrDefault(),
		PreauthTimeout:      c.Limits.PreauthTimeoutOrDefault(),
		IdleTimeout:         c.Limits.IdleTimeoutOrDefault(),
		MaxBadCommands:      c.Limits.MaxBadCommandsOrDefault(),
		MaxInFlight:         c.Limits.MaxCommandsInFlightOrDefault(),
		LockTimeout:         c.Limits.LockTimeoutOrDefault(),
		MaxConnections:      c.Limits.MaxConnectionsOrDefault(),
		MaxConnectionsPerIP: c.Limits.MaxConnectionsPerIPOrDefault(),
		AuthFailureDelay:    c.Limits.AuthFailureDelayOrDefault(),
		ExpansionFactor:     c.Limits.ExpansionFactorOrDefault(),
		ExpansionFloor:      c.Limits.ExpansionFloorOrDefault(),
		LoginRatePerIP: proxy.LoginRate{
			Burst:    c.Limits.LoginBurstPerIPOrDefault(),
			Interval: c.Limits.LoginIntervalPerIPOrDefault(),
		},
		LoginRatePerUser: proxy.LoginRate{
			Burst:    c.Limits.LoginBurstPerUserOrDefault(),
			Interval: c.Limits.LoginIntervalPerUserOrDefault(),
		},
		Serialization: rules.Serialization{SelectTakesSeen: c.Serialization.SelectTakesSeen},
	}, nil
}

// serve runs until ctx ends, then shuts down gracefully.
func serve(ctx context.Context, file string, stderr io.Writer) error {
	c, err := loadConfig(file)
	if err != nil {
		return err
	}
	log, err := newLogger(c.Log, stderr)
	if err != nil {
		return err
	}
	var current atomic.Pointer[routing]
	srv, err := newServer(c, &log, &current)
	if err != nil {
		return err
	}
	defer func() { current.Load().close() }()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	o := newOps(func() []string {
		var addrs []string
		for _, b := range c.Backends {
			if !b.Template {
				addrs = append(addrs, b.Address)
			}
		}
		return addrs
	})
	srv.Metrics = o.metrics
	if o.admin, err = adminHandler(c, srv, &log); err != nil {
		return err
	}
	lm, err := newLockManager(c.Locks, &log)
	if err != nil {
		return err
	}
	if lm != nil {
		// Closed when serve returns, after Shutdown has ended the sessions:
		// the lease is revoked and this instance's locks go at once.
		defer lm.Close()
		srv.Locks = lm
		o.locks = &lockReadiness{m: lm, required: c.Locks.OnUnavailableOrDefault() == configs.UnavailableFail}
		registerLockMetrics(o.registry, lm)
		log.Info().Strs("endpoints", c.Locks.Endpoints).Str("prefix", c.Locks.PrefixOrDefault()).Msg("locks in etcd")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opsDone := make(chan error, 1)
	if c.Metrics.Address != "" {
		ln, err := net.Listen("tcp", c.Metrics.Address)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		go func() { opsDone <- serveOps(ctx, ln, o, &log) }()
	} else {
		opsDone <- nil
	}
	defer func() { <-opsDone }()
	type bound struct {
		ln net.Listener
		l  proxy.Listener
	}
	var lns []bound
	for _, l := range c.Listeners {
		tc, err := l.TLSConfig(c.TLS)
		if err != nil {
			return fmt.Errorf("listener %s: %w", l.Address, err)
		}
		ln, err := net.Listen("tcp", l.Address)
		if err != nil {
			for _, b := range lns {
				b.ln.Close()
			}
			return err
		}
		lns = append(lns, bound{ln, proxy.Listener{
			Name:           l.Address,
			TLS:            upstream.TLSMode(l.TLSModeOrDefault()),
			TLSConfig:      tc,
			RequireTLS:     l.RequireTLS,
			TrustedProxies: l.TrustedPrefixes(),
		}})
	}
	o.bound.Store(true)
	errs := make(chan error, len(lns))
	for _, b := range lns {
		log.Info().Str("address", b.ln.Addr().String()).Str("tls", string(b.l.TLS)).Msg("listening")
		go func() { errs <- srv.Serve(b.ln, b.l) }()
	}
	sd := newSDNotifier(&log) // systemd Type=notify: systemd.go
	sd.ready(fmt.Sprintf("%d listeners bound", len(lns)))
	sd.watchdog(ctx, o.bound.Load)
	var serveErr error
wait:
	for {
		select {
		case <-hup:
			sd.reloading()
			reload(file, &current, &log)
			sd.ready(fmt.Sprintf("%d listeners bound", len(lns)))
		case <-ctx.Done():
			log.Info().Msg("shutting down")
			break wait
		case serveErr = <-errs:
			log.Error().Err(serveErr).Msg("listener failed")
			break wait
		}
	}
	sd.stopping()
	sctx, cancel := context.WithTimeout(context.Background(), c.Limits.DrainTimeoutOrDefault())
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Msg("sessions still open at shutdown")
	}
	if errors.Is(serveErr, proxy.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}
