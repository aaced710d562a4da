package legacysim

import (
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// DefaultRaceWindow is the race window used when Config.RaceWindow is zero:
// long enough that a loopback client's next command (a few hundred µs) lands
// inside it, short enough that hundreds of rounds take seconds.
const DefaultRaceWindow = 5 * time.Millisecond

// MaxRaceWindow bounds Config.RaceWindow: a window is a sleep inside a
// command, and the scenarios must stay bounded in time.
const MaxRaceWindow = time.Second

// Config selects the simulated Cyrus 2.3 faults. The zero value is a correct
// server with no users.
type Config struct {
	// StaleMsgno resolves non-UID message numbers against the live index
	// instead of the session's own view (breaks RFC 3501 §7.4.1 /
	// RFC 9051 §7.5.1).
	StaleMsgno bool
	// EarlyExpunge sends other sessions' EXPUNGEs between commands and
	// during FETCH, STORE and SEARCH, and shifts the session's numbering
	// there and then (breaks RFC 3501 §7.4.1 / RFC 9051 §7.5.1).
	EarlyExpunge bool
	// SessionSeen keeps \Seen changes per session and writes them to the
	// per-user seen record at CLOSE/LOGOUT/SELECT with an unlocked
	// read-modify-write.
	SessionSeen bool
	// DeliveryRace makes deliveries rewrite the index non-atomically and
	// makes a seen write-back after non-UID seen updates cover mail
	// delivered since the session last looked.
	DeliveryRace bool

	// Seed seeds the generator that jitters race windows and picks where in
	// a FETCH or STORE response an early EXPUNGE goes.
	Seed int64
	// RaceWindow is the longest a fault window stays open (each window lasts
	// between half of it and all of it). Zero means DefaultRaceWindow; a
	// negative value means no wait at all; it is capped at MaxRaceWindow.
	RaceWindow time.Duration

	// Users maps user names to passwords. More can be added with AddUser.
	Users map[string]string
	// Admin names the user (one of Users) that may run XGROUNDTRUTH.
	// Empty: nobody may.
	Admin string

	// Logger receives debug messages (connection errors); nil discards.
	Logger *zerolog.Logger
}

// Fault names accepted by SetFaults and printed by Faults.
const (
	FaultStaleMsgno   = "stale-msgno"
	FaultEarlyExpunge = "early-expunge"
	FaultSessionSeen  = "session-seen"
	FaultDeliveryRace = "delivery-race"
)

// SetFaults switches faults from a comma-separated list of fault names,
// "all" or "none" (or ""); the faults not named are switched off.
func (c *Config) SetFaults(list string) error {
	c.StaleMsgno, c.EarlyExpunge, c.SessionSeen, c.DeliveryRace = false, false, false, false
	for _, name := range strings.Split(list, ",") {
		switch strings.TrimSpace(strings.ToLower(name)) {
		case "", "none":
		case "all":
			c.StaleMsgno, c.EarlyExpunge, c.SessionSeen, c.DeliveryRace = true, true, true, true
		case FaultStaleMsgno:
			c.StaleMsgno = true
		case FaultEarlyExpunge:
			c.EarlyExpunge = true
		case FaultSessionSeen:
			c.SessionSeen = true
		case FaultDeliveryRace:
			c.DeliveryRace = true
		default:
			return fmt.Errorf("legacysim: unknown fault %q (want %s, %s, %s, %s, all or none)",
				name, FaultStaleMsgno, FaultEarlyExpunge, FaultSessionSeen, FaultDeliveryRace)
		}
	}
	return nil
}

// Faults returns the faults switched on as a comma-separated list, or "none".
func (c Config) Faults() string {
	var l []string
	if c.StaleMsgno {
		l = append(l, FaultStaleMsgno)
	}
	if c.EarlyExpunge {
		l = append(l, FaultEarlyExpunge)
	}
	if c.SessionSeen {
		l = append(l, FaultSessionSeen)
	}
	if c.DeliveryRace {
		l = append(l, FaultDeliveryRace)
	}
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ",")
}

func (c Config) raceWindow() time.Duration {
	switch {
	case c.RaceWindow == 0:
		return DefaultRaceWindow
	case c.RaceWindow < 0:
		return 0
	case c.RaceWindow > MaxRaceWindow:
		return MaxRaceWindow
	}
	return c.RaceWindow
}
