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

// realMode is common without the simulator: the scenarios' real-server mode,
// run against the simulator as if it were any server.
func realMode(addr string, seed int64) Common {
	return Common{Addr: addr, User: testUser, Password: testPass, Rounds: testRounds, Seed: seed, MaxDuration: testBound}
}

// The real-server mode's counting (a checker session's APPENDs and UID
// FETCH instead of the simulator's records) must count nothing against a
// correct server and must show the faults of a faulty one.
func TestRealModeCounts(t *testing.T) {
	checkNoLeaks(t)
	ctx := context.Background()
	t.Run("faults off", func(t *testing.T) {
		_, addr, lmtpAddr := startSim(t, "none", 1)
		a, err := RunA(ctx, ACfg{realMode(addr, 1)})
		logResult(t, a, err)
		if a.Faults() != 0 {
			t.Errorf("scenario A against a correct server: %v", a)
		}
		for _, lmtp := range []string{"", lmtpAddr} {
			b, err := RunB(ctx, BCfg{Common: realMode(addr, 2), LMTPAddr: lmtp})
			logResult(t, b, err)
			if b.Faults() != 0 {
				t.Errorf("scenario B (LMTP %q) against a correct server: %v", lmtp, b)
			}
		}
	})
	t.Run("faults on", func(t *testing.T) {
		_, addr, lmtpAddr := startSim(t, "all", 3)
		c := realMode(addr, 3)
		c.Rounds = 30 // enough to show the faults, in a few seconds
		a, err := RunA(ctx, ACfg{c})
		logResult(t, a, err)
		if a.WrongWrites == 0 || a.Missed == 0 {
			t.Errorf("scenario A against the faulty simulator shows nothing: %v", a)
		}
		for _, lmtp := range []string{"", lmtpAddr} {
			c := realMode(addr, 4)
			c.Rounds = 30
			b, err := RunB(ctx, BCfg{Common: c, LMTPAddr: lmtp})
			logResult(t, b, err)
			if b.LostSeen == 0 || b.SpuriousSeen == 0 {
				t.Errorf("scenario B (LMTP %q) against the faulty simulator shows no lost and spurious \\Seen: %v", lmtp, b)
			}
		}
	})
}
