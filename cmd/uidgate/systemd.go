package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// sdNotifier tells systemd where the service is in its life (sd_notify(3);
// packaging/uidgate.service has Type=notify): READY=1 once every listener
// is bound, RELOADING=1 … READY=1 around a SIGHUP reload, STOPPING=1 when
// the drain starts, and WATCHDOG=1 pings while WatchdogSec= is set. Outside
// systemd (no $NOTIFY_SOCKET) every call does nothing.
type sdNotifier struct {
	on  bool
	log *zerolog.Logger
}

func newSDNotifier(log *zerolog.Logger) *sdNotifier {
	return &sdNotifier{on: os.Getenv("NOTIFY_SOCKET") != "", log: log}
}

func (n *sdNotifier) send(state string) {
	if !n.on {
		return
	}
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn().Err(err).Str("state", state).Msg("sd_notify failed")
	}
}

// ready: start-up finished, or a reload did.
func (n *sdNotifier) ready(status string) {
	n.send(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

// reloading: a SIGHUP reload starts. MONOTONIC_USEC is what systemd 253+
// requires for Type=notify-reload; Type=notify (systemd 252, Debian 12)
// ignores it.
func (n *sdNotifier) reloading() {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	n.send(fmt.Sprintf("%s\nMONOTONIC_USEC=%d", daemon.SdNotifyReloading, ts.Nano()/1000))
}

// stopping: the drain starts (systemd waits up to TimeoutStopSec=).
func (n *sdNotifier) stopping() {
	n.send(daemon.SdNotifyStopping + "\nSTATUS=draining sessions")
}

// watchdog pings WATCHDOG=1 at half the interval systemd asks for
// ($WATCHDOG_USEC, WatchdogSec= in the unit) while healthy says so, until
// ctx ends. A process that stops pinging is killed with SIGABRT (a Go
// stack dump of every goroutine in the journal) and restarted.
func (n *sdNotifier) watchdog(ctx context.Context, healthy func() bool) {
	if !n.on {
		return
	}
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn().Err(err).Msg("systemd watchdog: bad WATCHDOG_USEC or WATCHDOG_PID; not pinging")
		return
	}
	if every <= 0 {
		return
	}
	every /= 2
	n.log.Info().Str("interval", every.String()).Msg("systemd watchdog on")
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if healthy() {
					n.send(daemon.SdNotifyWatchdog)
				}
			}
		}
	}()
}
