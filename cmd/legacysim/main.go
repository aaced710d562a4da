// Command legacysim runs the legacy (Cyrus 2.3-era) IMAP server simulator of
// package e2e/legacysim, for scripts and manual testing:
//
//	legacysim -faults all -seed 7 -users alice:secret,admin:root -admin admin
//
// It listens on loopback only: it is a test server without TLS, and with
// every fault it is designed to lose mail. The admin user can read the
// ground truth with "tag XGROUNDTRUTH user [mailbox]".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"uidgate/e2e/legacysim"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "legacysim:", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("legacysim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:1430", "IMAP listen address (loopback only)")
	lmtp := fs.String("lmtp", "", "LMTP listen address (loopback only); empty: no LMTP")
	faults := fs.String("faults", "none", "comma-separated faults: "+
		strings.Join([]string{legacysim.FaultStaleMsgno, legacysim.FaultEarlyExpunge, legacysim.FaultSessionSeen, legacysim.FaultDeliveryRace}, ", ")+
		", or all, or none")
	seed := fs.Int64("seed", 1, "seed for race-window jitter and early-EXPUNGE placement")
	window := fs.Duration("race-window", legacysim.DefaultRaceWindow, "longest fault window (max "+legacysim.MaxRaceWindow.String()+"; negative: none)")
	users := fs.String("users", "alice:alice,bob:bob,admin:admin", "comma-separated user:password list")
	admin := fs.String("admin", "admin", "user allowed to run XGROUNDTRUTH (one of -users); empty: nobody")
	level := fs.String("log-level", "info", "trace, debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	lvl, err := zerolog.ParseLevel(*level)
	if err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.TimeOnly, NoColor: true}).Level(lvl).With().Timestamp().Logger()

	cfg := legacysim.Config{Seed: *seed, RaceWindow: *window, Admin: *admin, Logger: &log, Users: map[string]string{}}
	if err := cfg.SetFaults(*faults); err != nil {
		return fmt.Errorf("-faults: %w", err)
	}
	if *window == 0 {
		cfg.RaceWindow = -1 // an explicit 0 means no window, not the default
	}
	for _, up := range strings.Split(*users, ",") {
		u, p, ok := strings.Cut(strings.TrimSpace(up), ":")
		if !ok || u == "" {
			return fmt.Errorf("-users: %q is not user:password", up)
		}
		cfg.Users[u] = p
	}
	if _, ok := cfg.Users[*admin]; *admin != "" && !ok {
		return fmt.Errorf("-admin: %q is not one of -users", *admin)
	}

	ln, err := listenLoopback(*listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	var lln net.Listener
	if *lmtp != "" {
		if lln, err = listenLoopback(*lmtp); err != nil {
			ln.Close()
			return fmt.Errorf("-lmtp: %w", err)
		}
	}

	sim := legacysim.New(cfg)
	served := make(chan error, 2)
	n := 1
	go func() { served <- sim.Serve(ln) }()
	ev := log.Info().Str("imap", ln.Addr().String()).Str("faults", cfg.Faults()).Int64("seed", *seed).Str("race_window", window.String())
	if lln != nil {
		n++
		go func() { served <- sim.ServeLMTP(lln) }()
		ev = ev.Str("lmtp", lln.Addr().String())
	}
	ev.Msg("legacysim ready")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var first error
	select {
	case <-ctx.Done():
		log.Info().Msg("shutting down")
	case first = <-served:
		n--
	}
	sim.Close()
	for ; n > 0; n-- {
		if err := <-served; first == nil {
			first = err
		}
	}
	if errors.Is(first, legacysim.ErrServerClosed) {
		return nil
	}
	return first
}

// listenLoopback listens on addr, which must name a loopback address.
func listenLoopback(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if host != "localhost" {
		ip := net.ParseIP(host)
		if ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("%q is not a loopback address: the simulator loses mail on purpose", addr)
		}
	}
	return net.Listen("tcp", addr)
}
