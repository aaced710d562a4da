package scenarios

import (
	"context"
	"errors"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"uidgate/e2e/legacysim"
)

const (
	testUser, testPass = "alice", "secret"
	testRounds         = 100
	testBound          = 10 * time.Second
)

// startSim runs a simulator with cfg's faults on loopback ports (IMAP and
// LMTP) until the test ends.
func startSim(t *testing.T, faults string, seed int64) (sim *legacysim.Server, addr, lmtpAddr string) {
	t.Helper()
	cfg := legacysim.Config{Seed: seed, Users: map[string]string{testUser: testPass}}
	if err := cfg.SetFaults(faults); err != nil {
		t.Fatal(err)
	}
	sim = legacysim.New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 2)
	go func() { served <- sim.Serve(ln) }()
	go func() { served <- sim.ServeLMTP(lln) }()
	t.Cleanup(func() {
		sim.Close()
		for range 2 {
			if err := <-served; !errors.Is(err, legacysim.ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		}
	})
	return sim, ln.Addr().String(), lln.Addr().String()
}

func common(sim *legacysim.Server, addr string, seed int64) Common {
	return Common{Addr: addr, Sim: sim, User: testUser, Password: testPass, Rounds: testRounds, Seed: seed, MaxDuration: testBound}
}

func checkNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutine leak: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond) // polling for exit, not synchronisation
		}
	})
}

func logResult(t *testing.T, r Result, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%v: %v", r, err)
	}
	t.Log(r)
	if r.FirstErr != nil {
		t.Logf("first error: %v", r.FirstErr)
	}
	if r.Errors != 0 {
		t.Errorf("%d rounds failed", r.Errors)
	}
	if r.Rounds == 0 {
		t.Errorf("no round completed")
	}
}

// With every fault off the simulator is a correct server, so both scenarios
// must count nothing: this proves the counting.
func TestFaultsOffCountNothing(t *testing.T) {
	checkNoLeaks(t)
	sim, addr, lmtpAddr := startSim(t, "none", 1)
	ctx := context.Background()

	a, err := RunA(ctx, ACfg{common(sim, addr, 1)})
	logResult(t, a, err)
	if a.Faults() != 0 {
		t.Errorf("scenario A against a correct server: %v", a)
	}
	b, err := RunB(ctx, BCfg{Common: common(sim, addr, 1)})
	logResult(t, b, err)
	if b.Faults() != 0 {
		t.Errorf("scenario B against a correct server: %v", b)
	}
	bl, err := RunB(ctx, BCfg{Common: common(sim, addr, 2), LMTPAddr: lmtpAddr})
	logResult(t, bl, err)
	if bl.Faults() != 0 {
		t.Errorf("scenario B (LMTP) against a correct server: %v", bl)
	}
}

// Every fault must show in the direct run of its scenario, or the simulator
// is not doing its job.
func TestEachFaultShows(t *testing.T) {
	checkNoLeaks(t)
	ctx := context.Background()
	for _, tc := range []struct {
		fault string
		run   func(sim *legacysim.Server, addr, lmtpAddr string) (Result, error)
		check func(r Result) bool
	}{
		{legacysim.FaultStaleMsgno,
			func(sim *legacysim.Server, addr, _ string) (Result, error) {
				return RunA(ctx, ACfg{common(sim, addr, 3)})
			},
			func(r Result) bool { return r.WrongWrites > 0 && r.Missed > 0 }},
		{legacysim.FaultEarlyExpunge,
			func(sim *legacysim.Server, addr, _ string) (Result, error) {
				return RunA(ctx, ACfg{common(sim, addr, 4)})
			},
			func(r Result) bool { return r.WrongWrites > 0 && r.Missed > 0 }},
		{legacysim.FaultSessionSeen,
			func(sim *legacysim.Server, addr, _ string) (Result, error) {
				return RunB(ctx, BCfg{Common: common(sim, addr, 5)})
			},
			func(r Result) bool { return r.LostSeen > 0 }},
		{legacysim.FaultDeliveryRace,
			func(sim *legacysim.Server, addr, _ string) (Result, error) {
				return RunB(ctx, BCfg{Common: common(sim, addr, 6)})
			},
			func(r Result) bool { return r.LostSeen > 0 && r.SpuriousSeen > 0 }},
		{legacysim.FaultDeliveryRace + " via LMTP",
			func(sim *legacysim.Server, addr, lmtpAddr string) (Result, error) {
				return RunB(ctx, BCfg{Common: common(sim, addr, 7), LMTPAddr: lmtpAddr})
			},
			func(r Result) bool { return r.LostSeen > 0 && r.SpuriousSeen > 0 }},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			fault, _, _ := strings.Cut(tc.fault, " ")
			sim, addr, lmtpAddr := startSim(t, fault, 42)
			r, err := tc.run(sim, addr, lmtpAddr)
			logResult(t, r, err)
			if !tc.check(r) {
				t.Errorf("fault %s does not show: %v", tc.fault, r)
			}
		})
	}
}
