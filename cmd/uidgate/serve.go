package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync/atomic"
	"syscall"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"uidgate/configs"
	"uidgate/lookup"
	"uidgate/proxy"
	"uidgate/rules"
	"uidgate/upstream"
)

// loadConfig reads file, or the embedded default when file is "", and
// validates it, reporting every problem of the file at once.
func loadConfig(file string) (*configs.Config, error) {
	if file != "" {
		return configs.LoadValid(file)
	}
	c := configs.Default()
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
	for _, w := range c.Warnings() {
		fmt.Fprintln(stderr, "warning:", w)
	}
	if err := c.Encode(stdout); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// logTimeFormat stamps every log line, JSON and console alike: date, time
// to the millisecond, and zone.
const logTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// newLogger builds the process logger. Its level is zerolog's global
// level, so that SIGHUP can change it for every session at once. The
// console format is coloured only when w is a terminal: in a file or the
// journal, colour codes are noise.
func newLogger(c configs.Log, w io.Writer) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(c.LevelOrDefault())
	if err != nil {
		return zerolog.Logger{}, err
	}
	zerolog.SetGlobalLevel(level)
	zerolog.TimeFieldFormat = logTimeFormat
	if c.FormatOrDefault() == "console" {
		w = zerolog.ConsoleWriter{Out: w, NoColor: !isTerminal(w), TimeFormat: logTimeFormat}
	}
	return zerolog.New(w).With().Timestamp().Logger(), nil
}

// isTerminal reports whether w is a terminal (TCGETS answers only on one).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// running is what a reload may change in a running uidgate beyond the
// routing: each TLS listener's key pair, and the readiness cache.
type running struct {
	file    string
	config  *configs.Config // the configuration in force
	current *atomic.Pointer[routing]
	// keyPairs: each TLS listener's certificate, by address.
	keyPairs map[string]*configs.KeyPair
	ops      *ops
	log      *zerolog.Logger
}

// reload re-reads the file on SIGHUP: routes, backends, the log level and
// listeners' certificates change for new logins and handshakes; open
// sessions keep their backend and their TLS. An invalid file (a broken
// key pair among its problems) is logged and the running configuration
// kept, certificates included. Listeners, limits and the rest need a
// restart; a reload says which of them changed.
func (rn *running) reload() {
	log, file := rn.log, rn.file
	c, err := loadConfig(file)
	var r *routing
	if err == nil {
		r, err = newRouting(c)
	}
	if err != nil {
		log.Error().Str("config", file).Str("error", err.Error()).Msg("reload failed; keeping the running configuration")
		return
	}
	level, _ := zerolog.ParseLevel(c.Log.LevelOrDefault())
	rn.current.Swap(r).close()
	zerolog.SetGlobalLevel(level)
	if rn.ops != nil {
		rn.ops.invalidate() // readiness probes the new backends
	}
	for _, l := range c.Listeners {
		kp := rn.keyPairs[l.Address]
		if kp == nil || l.TLSModeOrDefault() == configs.TLSNone {
			continue
		}
		certFile, keyFile := l.CertFile(c.TLS), l.KeyFile(c.TLS)
		if err := kp.Reload(certFile, keyFile); err != nil {
			// Validate read the pair a moment ago: it changed since.
			log.Error().Str("listener", l.Address).Str("cert", certFile).Str("error", err.Error()).
				Msg("certificate reload failed; keeping the one in use")
			continue
		}
		ev := log.Info().Str("listener", l.Address).Str("cert", certFile)
		if leaf := kp.Certificate().Leaf; leaf != nil {
			ev = ev.Str("subject", leaf.Subject.String()).Time("not_after", leaf.NotAfter)
		}
		ev.Msg("certificate loaded")
	}
	for _, what := range restartNeeded(rn.config, c) {
		log.Warn().Str("config", file).Msg(what + " changed: it takes effect at the next restart")
	}
	log.Info().Str("config", file).Msg("configuration reloaded")
	rn.config = c
}

// restartNeeded names what differs between old and c that a reload does
// not apply.
func restartNeeded(old, c *configs.Config) []string {
	var out []string
	addrs := func(c *configs.Config) []string {
		var a []string
		for _, l := range c.Effective().Listeners {
			a = append(a, fmt.Sprintf("%s %s %t %v", l.Address, l.TLS, l.RequireTLS, l.TrustedProxies))
		}
		return a
	}
	if !slices.Equal(addrs(old), addrs(c)) {
		out = append(out, "[[listener]]")
	}
	if old.TLS.MinVersionOrDefault() != c.TLS.MinVersionOrDefault() {
		out = append(out, "tls.min_version")
	}
	if old.Effective().Limits != c.Effective().Limits {
		out = append(out, "[limits]")
	}
	if old.Serialization != c.Serialization {
		out = append(out, "[serialization]")
	}
	if old.Metrics != c.Metrics {
		out = append(out, "[metrics]")
	}
	if old.Log.FormatOrDefault() != c.Log.FormatOrDefault() {
		out = append(out, "log.format")
	}
	return out
}

// routing is what SIGHUP replaces: routes, backends and directories
// (routing.go).
type routing struct {
	lookup *lookup.Router
	// addrs are the backends' addresses, in the file's order, templates
	// left out (readiness).
	addrs []string
}

func newRouting(c *configs.Config) (*routing, error) {
	lr, err := lookup.New(c)
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, b := range c.Backends {
		if !b.Template {
			addrs = append(addrs, b.Address)
		}
	}
	return &routing{lookup: lr, addrs: addrs}, nil
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

// listen opens a listening socket (a variable for tests).
var listen = net.Listen

// serve runs until ctx ends, then shuts down gracefully. Any failure to
// start (a socket that cannot be bound, a certificate that cannot be
// read, etcd) returns at once, with what it had opened closed: the
// process exits 1. A listener that stops accepting later makes /healthz
// and /readyz fail, ends the process the same way, and returns its error.
func serve(ctx context.Context, file string, stderr io.Writer) error {
	c, err := loadConfig(file)
	if err != nil {
		return err
	}
	log, err := newLogger(c.Log, stderr)
	if err != nil {
		return err
	}
	for _, w := range c.Warnings() {
		log.Warn().Str("config", file).Msg(w)
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
	o := newOps(func() []string { return current.Load().addrs })
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
	rn := &running{file: file, config: c, current: &current, keyPairs: make(map[string]*configs.KeyPair), ops: o, log: &log}

	// Every socket is bound before anything is served: /healthz never
	// answers for a process that is missing a listener.
	type bound struct {
		ln net.Listener
		l  proxy.Listener
	}
	var lns []bound
	var opsLn net.Listener
	closeAll := func() {
		for _, b := range lns {
			b.ln.Close()
		}
		if opsLn != nil {
			opsLn.Close()
		}
	}
	for _, l := range c.Listeners {
		tc, kp, err := l.ServerTLS(c.TLS)
		if err != nil {
			closeAll()
			return fmt.Errorf("listener %s: %w", l.Address, err)
		}
		if kp != nil {
			rn.keyPairs[l.Address] = kp
		}
		ln, err := listen("tcp", l.Address)
		if err != nil {
			closeAll()
			return fmt.Errorf("listener: %w", err)
		}
		lns = append(lns, bound{ln, proxy.Listener{
			Name:           l.Address,
			TLS:            upstream.TLSMode(l.TLSModeOrDefault()),
			TLSConfig:      tc,
			RequireTLS:     l.RequireTLS,
			TrustedProxies: l.TrustedPrefixes(),
		}})
	}
	if c.Metrics.Address != "" {
		if opsLn, err = listen("tcp", c.Metrics.Address); err != nil {
			closeAll()
			return fmt.Errorf("metrics listener: %w", err)
		}
	}
	o.bound.Store(true)

	ctx, cancel := context.WithCancel(ctx)
	opsDone := make(chan error, 1)
	if opsLn != nil {
		go func() { opsDone <- serveOps(ctx, opsLn, o, &log) }()
	} else {
		opsDone <- nil
	}
	// The operations server stops last, after the drain: cancel, then wait.
	defer func() {
		cancel()
		<-opsDone
	}()
	type failure struct {
		name string
		err  error
	}
	errs := make(chan failure, len(lns))
	for _, b := range lns {
		log.Info().Str("address", b.ln.Addr().String()).Str("tls", string(b.l.TLS)).Msg("listening")
		go func() { errs <- failure{b.l.Name, srv.Serve(b.ln, b.l)} }()
	}
	sd := newSDNotifier(&log) // systemd Type=notify: systemd.go
	sd.ready(fmt.Sprintf("%d listeners bound", len(lns)))
	sd.watchdog(ctx, func() bool { ok, _ := o.isHealthy(); return ok })
	var serveErr error
wait:
	for {
		select {
		case <-hup:
			sd.reloading()
			rn.reload()
			sd.ready(fmt.Sprintf("%d listeners bound", len(lns)))
		case <-ctx.Done():
			o.down("shutting down")
			log.Info().Msg("shutting down")
			break wait
		case f := <-errs:
			serveErr = fmt.Errorf("listener %s: %w", f.name, f.err)
			o.down(serveErr.Error())
			log.Error().Str("listener", f.name).Err(f.err).Msg("listener failed; shutting down")
			break wait
		}
	}
	sd.stopping()
	sctx, cancelDrain := context.WithTimeout(context.Background(), c.Limits.DrainTimeoutOrDefault())
	defer cancelDrain()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Msg("sessions still open at shutdown")
	}
	if errors.Is(serveErr, proxy.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}
