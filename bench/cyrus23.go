package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"uidgate/e2e/backends"
	"uidgate/e2e/scenarios"
)

// cyrus23Gate is uidgate's [[backend]] table for Cyrus 2.3 as sites deploy
// it (the e2e tests' deployedBackend): its message numbers never trusted,
// \Seen set by uidgate under the user's seen lock, the Cyrus namespace
// (lock keys user.NAME…; out_of_range "auto" answers the Cyrus way).
const cyrus23Gate = `legacy = true
cyrus_namespace = true
explicit_seen = "on"`

// cyrus23Version is the release .ci/install-deps builds. Its banner says
// "v2.3.16", as 2.3.18's own does (../shared/cyrus-2.3/build.sh), so the
// report names the build, not the greeting.
const cyrus23Version = "2.3.18"

// The Cyrus 2.3 users besides bench<i>: the owner of the SELECT workload's
// mailbox, and the user of the seed's scenarios, which empty its INBOX at
// every round.
const (
	bigUser  = "big"
	scenUser = "scen"
)

const (
	// bigMsgSize is the size of a message of the SELECT workload's mailbox,
	// as in Dovecot's large mailboxes.
	bigMsgSize = 300
	// scenarioBound bounds one scenario run against one target: a round
	// takes well under a second on Cyrus 2.3.
	scenarioBound = 3 * time.Minute
)

// runCyrus23 starts Cyrus 2.3, fills it, starts the proxies and runs the
// Cyrus 2.3 workloads.
func (b *bench) runCyrus23(ctx context.Context) error {
	if err := b.startCyrus23(ctx, b.o.c23Users); err != nil {
		return err
	}
	if err := b.fillCyrus23(ctx, b.o.c23Users, b.o.inboxMsgs, b.o.inboxSize, b.o.c23SelectMsgs); err != nil {
		return err
	}
	if err := b.startProxies(ctx, b.c23); err != nil {
		return err
	}
	if err := b.runAll(ctx, b.c23, []workloadStep{
		{"small", func(ctx context.Context, ts []*target) error {
			return b.runSmall(ctx, ts, b.o.c23SmallSessions, []string{"-mix", "seen"})
		}},
		{"select", b.runSelectCyrus23},
		{"scenarios", b.runScenarios},
	}); err != nil {
		return err
	}
	if b.o.profile != "" {
		if err := b.profileCyrus23(ctx); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	return nil
}

// startCyrus23 starts a Cyrus 2.3 instance through e2e/backends with users
// bench0…bench<n-1>, big and scen, and makes b.c23 its stack (proxies not
// started yet).
func (b *bench) startCyrus23(ctx context.Context, n int) error {
	if ok, reason := backends.Cyrus23Available(); !ok {
		return errors.New(reason)
	}
	users := map[string]string{bigUser: password, scenUser: password}
	for i := range n {
		users[userName(i)] = password
	}
	t0 := time.Now()
	b.c23tb = &serverTB{logf: b.logf}
	var srv *backends.Server
	if err := b.c23tb.run(func() { srv = backends.StartCyrus23(b.c23tb, users) }); err != nil {
		return fmt.Errorf("starting Cyrus 2.3: %w", err)
	}
	b.c23srv = srv
	b.c23 = &stack{backend: "cyrus23", addr: srv.Addr, dir: filepath.Join(b.work, "cyrus23"), users: n, gateConf: cyrus23Gate}
	b.logf("cyrus23 on %s, %d users, started in %.1fs", srv.Addr, len(users), time.Since(t0).Seconds())
	return ctx.Err()
}

// fillCyrus23 delivers the mail over LMTP, as an MTA would: msgs messages
// of size bytes into the INBOX of each of bench0…bench<users-1>, one
// transaction per message for all of them (Cyrus stores one copy,
// hard-linked), and big messages of bigMsgSize bytes into big's INBOX.
// Cyrus keeps its mailboxes in its own files and databases, which cannot
// be generated like maildirs; the instance is new at every start, so this
// runs every time (~40 s for the default sizes: 200 transactions to 50
// users, 10,000 to one).
func (b *bench) fillCyrus23(ctx context.Context, users, msgs, size, big int) error {
	t0 := time.Now()
	network, addr := b.c23srv.LMTPAddr()
	c, err := dialLMTP(network, addr)
	if err != nil {
		return fmt.Errorf("LMTP: %w", err)
	}
	defer c.close()
	rcpts := b.userList(users)
	var buf []byte
	for i := 0; i < msgs; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		buf = messageBytes(buf[:0], i, size)
		if err := c.deliver(rcpts, buf); err != nil {
			return fmt.Errorf("LMTP delivery %d to the INBOXes: %w", i, err)
		}
	}
	b.logf("cyrus23: %d messages of %d B delivered to each of %d INBOXes in %.1fs", msgs, size, users, time.Since(t0).Seconds())
	t0 = time.Now()
	for i := 0; i < big; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		buf = messageBytes(buf[:0], i, bigMsgSize)
		if err := c.deliver([]string{bigUser}, buf); err != nil {
			return fmt.Errorf("LMTP delivery %d to %s: %w", i, bigUser, err)
		}
	}
	b.logf("cyrus23: %d messages of %d B delivered to %s's INBOX in %.1fs", big, bigMsgSize, bigUser, time.Since(t0).Seconds())
	return c.close()
}

// runSelectCyrus23 times the SELECT of big's INBOX, then UID SEARCH ALL
// (Cyrus 2.3 has no ESEARCH).
func (b *bench) runSelectCyrus23(ctx context.Context, ts []*target) error {
	param := fmt.Sprintf("%s messages", fmtNum(float64(b.o.c23SelectMsgs), 0))
	return b.runSelectBox(ctx, ts, param, b.selectBigArgs(1), b.o.c23SelectMsgs)
}

// selectBigArgs are imapload's arguments for rounds SELECTs of big's INBOX.
func (b *bench) selectBigArgs(rounds int) []string {
	return []string{"-workload", "select", "-user", bigUser, "-users", "1", "-mailbox", "INBOX",
		"-rounds", strconv.Itoa(rounds), "-search", "plain", "-hold", b.o.selectHold.String(), "-timeout", "10m"}
}

// scenarioConfigs are the seed's scenarios A and B against target t in
// their real-server mode, as e2e's TestRealScenarios runs them: sessions
// of scen in its INBOX, the truth read from Cyrus itself, B's deliveries
// over LMTP. The seed names the messages (Message-ID a<seed>.…, b<seed>.…),
// so each run needs a seed of its own: Cyrus's duplicate delivery
// suppression (imapd.conf duplicatesuppression, on by default) accepts a
// message whose Message-ID it has delivered to the mailbox before with 250
// and drops it, and a B run with a used seed would race no delivery at all.
func (b *bench) scenarioConfigs(t *target, rounds int, seed int64) (scenarios.ACfg, scenarios.BCfg) {
	srv := b.c23srv
	c := scenarios.Common{Addr: t.addr(), CheckAddr: srv.Addr, User: scenUser, Password: password,
		Mailbox: "INBOX", Rounds: rounds, Seed: seed, MaxDuration: scenarioBound}
	deliver := func(ctx context.Context, msg []byte) error { return srv.TryDeliver(scenUser, msg) }
	return scenarios.ACfg{Common: c}, scenarios.BCfg{Common: c, Deliver: deliver}
}

// runScenarios runs scenario A (STORE n +FLAGS (\Deleted) by number while
// another session expunges) and B (\Seen set by number and by FETCH
// BODY[] in three sessions while LMTP delivers) against each target, each
// run with a seed of its own (see scenarioConfigs).
func (b *bench) runScenarios(ctx context.Context, ts []*target) error {
	seed := int64(100) // the smoke test's are below
	for r := 0; r < b.o.runs; r++ {
		for _, t := range rotate(ts, r) {
			seed++
			a, bc := b.scenarioConfigs(t, b.o.scenarioRounds, seed)
			ra, err := scenarios.RunA(ctx, a)
			if err != nil {
				return fmt.Errorf("scenario A against %s: %w", t.name, err)
			}
			b.recordScenario(t, r, ra)
			rb, err := scenarios.RunB(ctx, bc)
			if err != nil {
				return fmt.Errorf("scenario B against %s: %w", t.name, err)
			}
			b.recordScenario(t, r, rb)
		}
	}
	return nil
}

// recordScenario keeps one scenario run's time and counts.
func (b *bench) recordScenario(t *target, run int, res scenarios.Result) {
	m := map[string]float64{
		"rounds":        float64(res.Rounds),
		"wrong":         float64(res.WrongWrites),
		"missed":        float64(res.Missed),
		"lost_seen":     float64(res.LostSeen),
		"spurious_seen": float64(res.SpuriousSeen),
		"errors":        float64(res.Errors),
	}
	if res.Rounds > 0 && res.Duration > 0 {
		m["ms_per_round"] = float64(res.Duration.Microseconds()) / 1000 / float64(res.Rounds)
		m["rounds_per_s"] = float64(res.Rounds) / res.Duration.Seconds()
	}
	b.record("scenarios", res.Scenario, t, run, m)
	b.logf("cyrus23 scenarios %-7s run %d: %v", t.name, run+1, res)
	if res.FirstFault != "" {
		b.logf("  first fault: %s", res.FirstFault)
	}
	if res.FirstErr != nil {
		b.logf("  first error: %v", res.FirstErr)
	}
}

// smokeCyrus23 is -smoke's check of the Cyrus 2.3 path: a small Cyrus 2.3
// filled over LMTP, uidgate legacy in front of it; the small commands with
// \Seen traffic and the SELECT directly and through uidgate, then two
// rounds of each scenario through uidgate, which must complete (their
// fault counts are logged: what uidgate prevents is e2e's to assert).
// Where the Cyrus 2.3 sources are absent (see backends.Cyrus23Available)
// it says so and passes, as the e2e tests skip.
func (b *bench) smokeCyrus23(ctx context.Context) error {
	if ok, reason := backends.Cyrus23Available(); !ok {
		b.logf("cyrus23 smoke skipped: %s", reason)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, smokeBound)
	defer cancel()
	const msgs = 20
	if err := b.startCyrus23(ctx, 1); err != nil {
		return err
	}
	if err := b.fillCyrus23(ctx, 1, msgs, 2000, msgs); err != nil {
		return err
	}
	if err := b.restartUidgate(ctx, b.c23); err != nil {
		return err
	}
	ug := b.c23.ug
	fail := func(err error) error {
		return fmt.Errorf("%w\nuidgate log:\n%s\nCyrus log:\n%s", err, tail(ug.proc.log, 4096), b.c23srv.Log())
	}
	ts := b.targets(b.c23)[:2] // direct and uidgate: no nginx in the smoke test
	for _, t := range ts {
		out, err := b.measure(ctx, t, []string{"-workload", "small", "-sessions", "2", "-duration", "1s", "-mix", "seen"}, nil)
		if err == nil && (out.res.Ops < 7 || len(out.res.ByOp) != 7) {
			err = fmt.Errorf("small -mix seen against %s: %d commands of %d kinds", t.name, out.res.Ops, len(out.res.ByOp))
		}
		if err != nil {
			return fail(err)
		}
		b.logf("cyrus23 smoke: small -mix seen against %s: %d commands, p50 %.0f µs", t.name, out.res.Ops, out.res.P50us)
		out, err = b.measure(ctx, t, b.selectBigArgs(2), nil)
		if err == nil && (out.res.Messages != msgs || out.res.Ops != 2) {
			err = fmt.Errorf("select against %s: %d SELECTs saw %d messages, want 2 and %d", t.name, out.res.Ops, out.res.Messages, msgs)
		}
		if err != nil {
			return fail(err)
		}
		b.logf("cyrus23 smoke: select against %s: %.1f ms", t.name, out.res.SelectMS)
	}
	a, bc := b.scenarioConfigs(ts[1], 2, 1)
	for _, run := range []func() (scenarios.Result, error){
		func() (scenarios.Result, error) { return scenarios.RunA(ctx, a) },
		func() (scenarios.Result, error) { return scenarios.RunB(ctx, bc) },
	} {
		res, err := run()
		if err == nil && (res.Errors != 0 || res.Rounds != 2) {
			err = fmt.Errorf("through uidgate: %v (first error %v)", res, res.FirstErr)
		}
		if err != nil {
			return fail(err)
		}
		b.logf("cyrus23 smoke: %v", res)
	}
	if ug.proc.exited() {
		return fail(fmt.Errorf("uidgate exited: %v", ug.proc.err))
	}
	return nil
}

// serverTB is what e2e/backends asks of a test (backends.TB), for a
// program: a failure or a skip while starting becomes run's error, and the
// cleanups the package registers (they stop the server and remove its
// directory) run in stop, the last registered first.
type serverTB struct {
	logf func(format string, args ...any)

	mu       sync.Mutex
	errs     []error
	skipped  string
	cleanups []func()
}

var _ backends.TB = (*serverTB)(nil)

// run calls fn in a goroutine of its own, since Fatalf and Skipf end the
// goroutine they are called on, and returns what failed.
func (tb *serverTB) run(fn func()) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if tb.skipped != "" {
		return fmt.Errorf("skipped: %s", tb.skipped)
	}
	return errors.Join(tb.errs...)
}

// stop runs the cleanups, the last registered first, and returns the
// errors reported meanwhile. Calling it again does nothing.
func (tb *serverTB) stop() error {
	tb.mu.Lock()
	fns := tb.cleanups
	tb.cleanups = nil
	before := len(tb.errs)
	tb.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return errors.Join(tb.errs[before:]...)
}

func (tb *serverTB) Helper() {}

func (tb *serverTB) Logf(format string, args ...any) { tb.logf(format, args...) }

func (tb *serverTB) Errorf(format string, args ...any) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.errs = append(tb.errs, errors.New(fmt.Sprintf(format, args...)))
}

// Fatalf reports an error and ends the goroutine, as testing's does.
func (tb *serverTB) Fatalf(format string, args ...any) {
	tb.Errorf(format, args...)
	runtime.Goexit()
}

// Skipf records why and ends the goroutine, as testing's does.
func (tb *serverTB) Skipf(format string, args ...any) {
	tb.mu.Lock()
	tb.skipped = fmt.Sprintf(format, args...)
	tb.mu.Unlock()
	runtime.Goexit()
}

func (tb *serverTB) Failed() bool {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return len(tb.errs) > 0
}

func (tb *serverTB) Cleanup(f func()) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.cleanups = append(tb.cleanups, f)
}
