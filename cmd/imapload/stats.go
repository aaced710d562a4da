package main

import (
	"slices"
	"time"
)

// result is one line of imapload's output (JSON). Rates are in decimal
// units: 1 MB = 10^6 bytes.
type result struct {
	Workload string `json:"workload"`
	Label    string `json:"label,omitempty"`
	// Phase is "ready" on the line idle prints once its sessions are all
	// in IDLE, before the hold, and small once its sessions are set up;
	// "done" on the line small prints when its measured loop ends; empty
	// on final results.
	Phase   string `json:"phase,omitempty"`
	Mailbox string `json:"mailbox,omitempty"`
	// Sessions is how many sessions took part (set up successfully).
	Sessions int `json:"sessions"`
	// Failed counts sessions that could not be set up or were dropped.
	Failed int `json:"failed,omitempty"`
	// Errors counts failed commands and sessions; a result with errors
	// must not be used as a measurement.
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	DurationS  float64 `json:"duration_s"`
	SetupS     float64 `json:"setup_s,omitempty"`
	// Ops, OpsPerS, P50us, P99us: commands timed from the write of the
	// command to its tagged response.
	Ops     int64              `json:"ops,omitempty"`
	OpsPerS float64            `json:"ops_per_s,omitempty"`
	P50us   float64            `json:"p50_us,omitempty"`
	P99us   float64            `json:"p99_us,omitempty"`
	ByOp    map[string]opStats `json:"by_op,omitempty"`
	// Messages is the number of messages fetched, appended or selected.
	Messages int64 `json:"messages,omitempty"`
	// Bytes and MBps: bytes moved by the timed commands (for a FETCH,
	// everything read; for an APPEND, the literals) and their rate.
	Bytes int64   `json:"bytes,omitempty"`
	MBps  float64 `json:"mb_per_s,omitempty"`
	// FetchBytes and FetchMBps: append reads back what it appended.
	FetchBytes int64   `json:"fetch_bytes,omitempty"`
	FetchMBps  float64 `json:"fetch_mb_per_s,omitempty"`
	// SelectMS and SearchMS: select's median times to the tagged OK of
	// SELECT and of the UID SEARCH that follows it (if any), and every
	// round's.
	SelectMS    float64   `json:"select_ms,omitempty"`
	SearchMS    float64   `json:"search_ms,omitempty"`
	SelectAllMS []float64 `json:"select_all_ms,omitempty"`
	SearchAllMS []float64 `json:"search_all_ms,omitempty"`
	// stress only (nil otherwise): rounds, commands and violations.
	*stressStats
}

// opStats summarises one kind of command.
type opStats struct {
	N     int64   `json:"n"`
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
}

// latencies collects command durations.
type latencies []time.Duration

// percentile returns the nearest-rank p-quantile (0 < p ≤ 1) of the
// sorted samples, or 0 if there are none.
func percentile(sorted latencies, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p + 0.999999999)
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// summary sorts l and returns its count, p50 and p99 in µs.
func (l latencies) summary() opStats {
	slices.Sort(l)
	return opStats{
		N:     int64(len(l)),
		P50us: micros(percentile(l, 0.50)),
		P99us: micros(percentile(l, 0.99)),
	}
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func millis(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// mbps is bytes over d in MB/s (10^6 bytes).
func mbps(bytes int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(bytes) / 1e6 / d.Seconds()
}

// medianMS returns the median of ds in milliseconds, and every value.
func medianMS(ds []time.Duration) (float64, []float64) {
	if len(ds) == 0 {
		return 0, nil
	}
	all := make([]float64, len(ds))
	for i, d := range ds {
		all[i] = millis(d)
	}
	s := slices.Clone(all)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return m, all
}
