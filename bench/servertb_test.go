package main

import (
	"strings"
	"testing"
)

// TestServerTB: a Fatalf ends the goroutine run started and becomes run's
// error; cleanups run in stop, the last registered first, once.
func TestServerTB(t *testing.T) {
	tb := &serverTB{logf: t.Logf}
	var order []int
	reached := false
	err := tb.run(func() {
		tb.Cleanup(func() { order = append(order, 1) })
		tb.Cleanup(func() { order = append(order, 2); tb.Errorf("stopping: %d", 2) })
		tb.Fatalf("start: %s", "failed")
		reached = true
	})
	if err == nil || !strings.Contains(err.Error(), "start: failed") || reached {
		t.Fatalf("run = %v, code after Fatalf reached: %v", err, reached)
	}
	if !tb.Failed() {
		t.Error("Failed() is false after Fatalf")
	}
	err = tb.stop()
	if len(order) != 2 || order[0] != 2 || order[1] != 1 {
		t.Errorf("cleanups ran in order %v, want [2 1]", order)
	}
	if err == nil || !strings.Contains(err.Error(), "stopping: 2") || strings.Contains(err.Error(), "start:") {
		t.Errorf("stop = %v, want only the error reported while stopping", err)
	}
	if err := tb.stop(); err != nil || len(order) != 2 {
		t.Errorf("second stop: %v, cleanups %v", err, order)
	}

	tb = &serverTB{logf: t.Logf}
	if err := tb.run(func() { tb.Skipf("no %s", "sources") }); err == nil || !strings.Contains(err.Error(), "skipped: no sources") {
		t.Errorf("run after Skipf = %v", err)
	}
}

// TestView: samples of files written before -backends existed have no
// backend and count as Dovecot's.
func TestView(t *testing.T) {
	b := &bench{samples: []sample{
		{Backend: "cyrus23", Workload: "small", Param: "1 sessions", Target: "direct", Metrics: map[string]float64{"p50_us": 1}},
		{Workload: "small", Param: "1 sessions", Target: "direct", Metrics: map[string]float64{"p50_us": 2}},
		{Backend: "dovecot", Workload: "small", Param: "1 sessions", Target: "direct", Metrics: map[string]float64{"p50_us": 4}},
	}}
	if got := b.view("cyrus23").get("small", "1 sessions", "direct", "p50_us"); got.n != 1 || got.median != 1 {
		t.Errorf("cyrus23: %+v", got)
	}
	if got, n := b.view("dovecot").sum("small", "1 sessions", "direct", "p50_us"); n != 2 || got != 6 {
		t.Errorf("dovecot: sum %v of %d", got, n)
	}
}
