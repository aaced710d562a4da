package configs

import (
	"fmt"
	"strconv"
	"time"
)

// Duration is a time.Duration written in TOML as a string such as "30s",
// "31m" or "1h30m" (time.ParseDuration syntax). A bare number is rejected:
// it would be ambiguous between seconds and nanoseconds.
type Duration struct {
	time.Duration
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := parseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler, in the shortest unit that
// is exact: "31m", not "31m0s".
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(formatDuration(d.Duration)), nil
}

func (d Duration) String() string { return formatDuration(d.Duration) }

func parseDuration(s string) (time.Duration, error) {
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return 0, fmt.Errorf("invalid duration %q: needs a unit, as in \"%ss\"", s, s)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want a number with a unit (ms, s, m, h), as in \"30s\" or \"1h30m\"", s)
	}
	return v, nil
}

func formatDuration(d time.Duration) string {
	switch {
	case d == 0:
		return "0s"
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	case d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}
