// Package scenarios runs the races that legacy (Cyrus 2.3-era) IMAP servers
// lose, against the legacy simulator (package e2e/legacysim) either directly
// or through a proxy in front of it, and counts the damage against the
// simulator's ground truth.
//
// The clients speak raw IMAP and use message sequence numbers (non-UID
// SEARCH, STORE and FETCH), like the legacy clients that suffer. Both
// scenarios run many randomized rounds, bounded in count and time, from a
// deterministic seed. The core API takes no testing.T: it is used by the e2e
// tests and by `uidgate demo`.
//
// Against the simulator with every fault off both scenarios must count 0
// (that proves the counting); directly against a faulty simulator they must
// count more than 0 (that proves the simulator); through a correct proxy
// they must count 0 again.
package scenarios

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"

	"uidgate/e2e/legacysim"
)

// Defaults for the configurations' zero values.
const (
	DefaultRounds      = 100
	DefaultMaxDuration = 10 * time.Second
	DefaultMailbox     = "INBOX"
)

// Result counts what went wrong in a scenario run.
type Result struct {
	Scenario string
	Rounds   int // rounds completed
	// WrongWrites counts messages a write (STORE, and so the EXPUNGE that
	// follows) landed on although no session chose them.
	WrongWrites int
	// Missed counts messages a session chose for a write that did not get it.
	Missed int
	// LostSeen counts messages a session marked \Seen (STORE or non-PEEK
	// FETCH) that are not \Seen at the end of the round.
	LostSeen int
	// SpuriousSeen counts messages \Seen at the end of a round that no
	// session marked.
	SpuriousSeen int
	// Errors counts rounds cut short by a failed command or connection.
	Errors   int
	FirstErr error // the first of those, for diagnosis
	// FirstFault describes the first fault counted in real-server mode
	// (round, message, what), for diagnosis.
	FirstFault string
	Duration   time.Duration
	Seed       int64
	Truncated  bool // stopped by MaxDuration or the context before all rounds
}

// Faults is the total damage: wrong, missed, lost and spurious.
func (r Result) Faults() int { return r.WrongWrites + r.Missed + r.LostSeen + r.SpuriousSeen }

func (r Result) String() string {
	return fmt.Sprintf("scenario %s: %d rounds in %v: %d wrong-message writes, %d missed writes, %d lost \\Seen, %d spurious \\Seen, %d errors",
		r.Scenario, r.Rounds, r.Duration.Round(time.Millisecond), r.WrongWrites, r.Missed, r.LostSeen, r.SpuriousSeen, r.Errors)
}

// Common is the configuration both scenarios share.
type Common struct {
	// Addr is where the clients connect: the simulator, or a proxy in front
	// of it.
	Addr string
	// Sim is the simulator behind Addr: the ground truth, and where each
	// round's mailbox is reset and seeded. Nil runs the scenarios against
	// any server (real-server mode, see real.go): a checker session at
	// CheckAddr empties and seeds the mailbox by APPEND and reads the
	// truth by UID FETCH.
	Sim *legacysim.Server
	// CheckAddr is where the real-server mode's checker connects: the
	// server itself, never a proxy under test (default Addr).
	CheckAddr string
	// User and Password log in the clients (and the checker: \Seen is per
	// user); the user must exist in Sim.
	User, Password string
	// Mailbox is the mailbox the rounds use (default INBOX); it is replaced
	// (real-server mode: emptied and seeded) at the start of every round.
	Mailbox string
	// Rounds is the number of rounds (default DefaultRounds).
	Rounds int
	// Seed makes the rounds' choices reproducible.
	Seed int64
	// MaxDuration bounds the run (default DefaultMaxDuration); the rounds
	// done by then are reported with Truncated set.
	MaxDuration time.Duration
	// Dial connects to Addr (default: TCP).
	Dial func(ctx context.Context, addr string) (net.Conn, error)

	// runID makes the run's Message-IDs its own: a server that suppresses
	// duplicate deliveries (Cyrus: duplicatesuppression, on by default)
	// drops a message whose Message-ID an earlier run with the same seed
	// delivered, and a run without its deliveries races nothing.
	runID string
}

// runN numbers the runs of this process (with its start time: unique).
var runN atomic.Int64

// msgID is the Message-ID of a round's message.
func (c *Common) msgID(scenario string, round int, which any) string {
	return fmt.Sprintf("%s%d.%s.%d.%v@uidgate.test", scenario, c.Seed, c.runID, round, which)
}

func (c *Common) defaults() error {
	if c.Addr == "" {
		return errors.New("scenarios: no address to connect to")
	}
	if c.CheckAddr == "" {
		c.CheckAddr = c.Addr
	}
	if c.Mailbox == "" {
		c.Mailbox = DefaultMailbox
	}
	if c.Rounds <= 0 {
		c.Rounds = DefaultRounds
	}
	if c.MaxDuration <= 0 {
		c.MaxDuration = DefaultMaxDuration
	}
	c.runID = strconv.FormatInt(processStart, 36) + "-" + strconv.FormatInt(runN.Add(1), 10)
	return nil
}

var processStart = time.Now().UnixNano()

// run drives the rounds: it stops after c.Rounds, at the time bound or when
// ctx ends; a failed round counts as an error and its clients are replaced
// (a failure to reconnect ends the run with that error).
func (c *Common) run(ctx context.Context, res *Result, round func(ctx context.Context, i int) error, reconnect func(ctx context.Context) error) error {
	start := time.Now()
	defer func() { res.Duration = time.Since(start) }()
	ctx, cancel := context.WithTimeout(ctx, c.MaxDuration)
	defer cancel()
	if err := reconnect(ctx); err != nil {
		return err
	}
	for i := 0; i < c.Rounds; i++ {
		if ctx.Err() != nil {
			res.Truncated = true
			return nil
		}
		if err := round(ctx, i); err != nil {
			if ctx.Err() != nil {
				res.Truncated = true
				return nil
			}
			res.Errors++
			if res.FirstErr == nil {
				res.FirstErr = fmt.Errorf("round %d: %w", i, err)
			}
			if !isStatus(err) {
				if err := reconnect(ctx); err != nil {
					if ctx.Err() != nil {
						res.Truncated = true
						return nil
					}
					return err
				}
			}
			continue
		}
		res.Rounds++
	}
	return nil
}

func closeAll(cs []*client) {
	for _, c := range cs {
		if c != nil {
			c.close()
		}
	}
}

// ACfg configures scenario A.
type ACfg struct {
	Common
}

// RunA runs scenario A, the wrong-message write: session 1 finds a message
// with SEARCH HEADER Message-ID and gets its message number; session 2
// deletes and expunges one or two other messages (mostly lower ones, so the
// number shifts for everyone but session 1, which has not been told); session
// 1 runs STORE n +FLAGS (\Deleted) and EXPUNGE. A correct server (RFC 3501
// §7.4.1) applies n in session 1's own view: the chosen message is destroyed,
// or nothing if session 2 already destroyed it. A legacy one flags and
// destroys a neighbour.
//
// Per round, WrongWrites counts messages that were flagged or destroyed
// without being chosen, and Missed counts chosen messages that survived.
func RunA(ctx context.Context, cfg ACfg) (Result, error) {
	res := Result{Scenario: "A", Seed: cfg.Seed}
	if err := cfg.defaults(); err != nil {
		return res, err
	}
	rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 'A'))
	var s1, s2 *client
	var k *checker
	defer func() { closeAll([]*client{s1, s2}); k.close() }()
	reconnect := func(ctx context.Context) error {
		closeAll([]*client{s1, s2})
		k.close()
		s1, s2, k = nil, nil, nil
		var err error
		if s1, err = dialClient(ctx, cfg.Dial, cfg.Addr, cfg.User, cfg.Password); err != nil {
			return err
		}
		if s2, err = dialClient(ctx, cfg.Dial, cfg.Addr, cfg.User, cfg.Password); err != nil {
			return err
		}
		if cfg.Sim == nil {
			k, err = dialChecker(ctx, &cfg.Common)
		}
		return err
	}
	round := func(ctx context.Context, i int) error {
		return roundA(ctx, &cfg, rng, i, s1, s2, k, &res)
	}
	err := cfg.run(ctx, &res, round, reconnect)
	return res, err
}

// roundA runs one round of scenario A; k is the checker in real-server
// mode (nil with the simulator).
func roundA(ctx context.Context, cfg *ACfg, rng *rand.Rand, round int, s1, s2 *client, k *checker, res *Result) error {
	n := 4 + rng.IntN(9) // 4..12 messages
	ids := make([]string, n)
	msgs := make([]legacysim.NewMessage, n)
	for i := range msgs {
		ids[i] = cfg.msgID("a", round, i+1)
		msgs[i] = legacysim.NewMessage{Body: message(ids[i], fmt.Sprintf("round %d message %d", round, i+1))}
	}
	var uids []imap.UID
	if k != nil {
		if err := k.reset(ctx, seeds(msgs)); err != nil {
			return err
		}
		// Identities stand in for UIDs: the choices below are by position.
		uids = make([]imap.UID, n)
	} else {
		var err error
		if uids, err = cfg.Sim.ResetMailbox(cfg.User, cfg.Mailbox, msgs); err != nil {
			return err
		}
	}

	// Session 1's choice, and session 2's victims: mostly below it (the
	// number shifts), sometimes the same message (already gone), sometimes
	// above it (no shift).
	target := rng.IntN(n)
	victims := map[int]bool{}
	for k := 1 + rng.IntN(2); len(victims) < k; {
		switch p := rng.IntN(10); {
		case p < 7 && target > 0:
			victims[rng.IntN(target)] = true
		case p < 8:
			victims[target] = true
		default:
			victims[rng.IntN(n)] = true
		}
	}
	chosen := map[uint32]bool{uint32(uids[target]): true}
	chosenIDs := map[string]bool{ids[target]: true}
	victimUIDs := map[uint32]bool{}
	for v := range victims {
		chosen[uint32(uids[v])] = true
		chosenIDs[ids[v]] = true
		victimUIDs[uint32(uids[v])] = true
	}
	var mark, mark2 uint64
	if k == nil {
		mark = cfg.Sim.WriteSeq()
	}

	if _, err := s1.cmd(ctx, "SELECT %s", quote(cfg.Mailbox)); err != nil {
		return err
	}
	if _, err := s2.cmd(ctx, "SELECT %s", quote(cfg.Mailbox)); err != nil {
		return err
	}
	rs, err := s1.cmd(ctx, "SEARCH HEADER Message-ID %s", quote("<"+ids[target]+">"))
	if err != nil {
		return err
	}
	found := searchNums(rs)
	if len(found) != 1 {
		return fmt.Errorf("SEARCH for the target found %v", found)
	}
	for v := range sortedKeys(victims) {
		rs, err := s2.cmd(ctx, "SEARCH HEADER Message-ID %s", quote("<"+ids[v]+">"))
		if err != nil {
			return err
		}
		for _, m := range searchNums(rs) {
			if _, err := s2.cmd(ctx, "STORE %d +FLAGS (\\Deleted)", m); err != nil {
				return err
			}
		}
	}
	if _, err := s2.cmd(ctx, "EXPUNGE"); err != nil {
		return err
	}
	// The race: session 1 acts on the number it was given.
	if k == nil {
		mark2 = cfg.Sim.WriteSeq()
	}
	if _, err := s1.cmd(ctx, "STORE %d +FLAGS (\\Deleted)", found[0]); err != nil {
		return err
	}
	if _, err := s1.cmd(ctx, "EXPUNGE"); err != nil {
		return err
	}
	if _, err := s1.cmd(ctx, "CLOSE"); err != nil {
		return err
	}
	if _, err := s2.cmd(ctx, "CLOSE"); err != nil {
		return err
	}

	if k != nil {
		truth, err := k.truth(ctx)
		if err != nil {
			return err
		}
		verdictA(truth, ids, chosenIDs, round, res)
		return nil
	}
	truth, err := cfg.Sim.Messages(cfg.User, cfg.Mailbox)
	if err != nil {
		return err
	}
	alive := map[uint32]bool{}
	for _, m := range truth {
		alive[uint32(m.UID)] = true
	}
	// A write is wrong if it is not on a message its session chose:
	// session 2's stores come before mark2, session 1's after.
	wrong := map[uint32]bool{}
	for _, w := range cfg.Sim.Writes(mark) {
		if w.User != cfg.User || w.Mailbox != cfg.Mailbox || w.Op != legacysim.OpStore {
			continue
		}
		if (w.Seq <= mark2 && !victimUIDs[uint32(w.UID)]) || (w.Seq > mark2 && w.UID != uids[target]) {
			wrong[uint32(w.UID)] = true
		}
	}
	for _, uid := range uids {
		u := uint32(uid)
		if !alive[u] && !chosen[u] {
			wrong[u] = true
		}
		if alive[u] && chosen[u] {
			res.Missed++
		}
	}
	res.WrongWrites += len(wrong)
	return nil
}

// BCfg configures scenario B.
type BCfg struct {
	Common
	// Sessions is the number of sessions of the user reading mail
	// (default 3).
	Sessions int
	// Deliveries is the number of deliveries per round that race the
	// sessions (default 2); one more arrives after them, before CLOSE.
	Deliveries int
	// Ops is the number of \Seen updates each session makes per delivery
	// (default 3).
	Ops int
	// LMTPAddr, if set, delivers through this LMTP server (the simulator's)
	// instead of APPEND via Addr. An MTA does not go through an IMAP proxy,
	// so a proxy cannot serialize these deliveries: with DeliveryRace, the
	// \Seen updates they revert are lost even through a correct proxy.
	LMTPAddr string
	// Deliver, if set, delivers msg into Mailbox the way an MTA does (the
	// real-server mode's LMTP; it must be safe to call from any
	// goroutine); it takes precedence over LMTPAddr.
	Deliver func(ctx context.Context, msg []byte) error
}

// Delivery names how RunB delivers: "LMTP" or "APPEND".
func (c *BCfg) Delivery() string {
	if c.Deliver != nil || c.LMTPAddr != "" {
		return "LMTP"
	}
	return "APPEND"
}

// RunB runs scenario B, lost and spurious \Seen: per round, several sessions
// of the same user select the mailbox; while messages are delivered, each
// marks messages \Seen by number, with STORE n +FLAGS (\Seen) or a non-PEEK
// FETCH n (BODY[]), often the newest one it knows; one more message arrives;
// then all sessions CLOSE at once.
//
// The sessions' updates are aimed into the simulator's fault windows: they
// start when the simulator reports a delivery's window open (or when the
// delivery is done, if it has none), so the run needs no sleeps and a correct
// server or proxy simply serializes them.
//
// At the end of a round the ground truth must hold \Seen exactly on the
// messages seeded \Seen plus those the sessions marked (no message is
// expunged, so a number names the same message in every view): LostSeen
// counts the missing ones, SpuriousSeen the extra ones.
func RunB(ctx context.Context, cfg BCfg) (Result, error) {
	res := Result{Scenario: "B", Seed: cfg.Seed}
	if err := cfg.defaults(); err != nil {
		return res, err
	}
	if cfg.Sessions <= 0 {
		cfg.Sessions = 3
	}
	if cfg.Deliveries <= 0 {
		cfg.Deliveries = 2
	}
	if cfg.Ops <= 0 {
		cfg.Ops = 3
	}
	rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 'B'))
	var events <-chan legacysim.Event
	if cfg.Sim != nil {
		var stopWatch func()
		events, stopWatch = cfg.Sim.Watch()
		defer stopWatch()
	}

	sessions := make([]*client, cfg.Sessions)
	var deliverer *client
	var k *checker
	defer func() { closeAll(append(sessions, deliverer)); k.close() }()
	reconnect := func(ctx context.Context) error {
		closeAll(append(sessions, deliverer))
		k.close()
		for i := range sessions {
			sessions[i] = nil
		}
		deliverer, k = nil, nil
		if cfg.Sim == nil {
			var err error
			if k, err = dialChecker(ctx, &cfg.Common); err != nil {
				return err
			}
		}
		for i := range sessions {
			c, err := dialClient(ctx, cfg.Dial, cfg.Addr, cfg.User, cfg.Password)
			if err != nil {
				return err
			}
			sessions[i] = c
		}
		if cfg.Delivery() == "APPEND" {
			c, err := dialClient(ctx, cfg.Dial, cfg.Addr, cfg.User, cfg.Password)
			if err != nil {
				return err
			}
			deliverer = c
		}
		return nil
	}
	round := func(ctx context.Context, i int) error {
		return roundB(ctx, &cfg, rng, i, sessions, deliverer, k, events, &res)
	}
	err := cfg.run(ctx, &res, round, reconnect)
	return res, err
}

// seenOp is one \Seen update a session made: the message number it named,
// and for a body fetch the identity of the body it got back.
type seenOp struct {
	msgno uint32
	fetch bool   // a body fetch, not a STORE
	id    string // the fetched body's Message-ID; "" if none came back
}

// roundB runs one round of scenario B; k is the checker in real-server
// mode, events the simulator's fault windows (both nil in the other mode).
func roundB(ctx context.Context, cfg *BCfg, rng *rand.Rand, round int, sessions []*client, deliverer *client, k *checker, events <-chan legacysim.Event, res *Result) error {
	n0 := 3 + rng.IntN(6) // 3..8 messages to start with
	msgs := make([]legacysim.NewMessage, n0)
	preSeen := map[int]bool{}
	for i := range msgs {
		id := cfg.msgID("b", round, i+1)
		msgs[i] = legacysim.NewMessage{Body: message(id, fmt.Sprintf("round %d message %d", round, i+1))}
		if rng.IntN(4) == 0 {
			msgs[i].Flags = []imap.Flag{imap.FlagSeen}
			preSeen[i] = true
		}
	}
	var uids []imap.UID
	if k != nil {
		if err := k.reset(ctx, seeds(msgs)); err != nil {
			return err
		}
	} else {
		var err error
		if uids, err = cfg.Sim.ResetMailbox(cfg.User, cfg.Mailbox, msgs); err != nil {
			return err
		}
	}
	for _, c := range sessions {
		if _, err := c.cmd(ctx, "SELECT %s", quote(cfg.Mailbox)); err != nil {
			return err
		}
	}

	delivered := 0
	deliver := func(ctx context.Context) error {
		delivered++
		id := cfg.msgID("b", round, fmt.Sprintf("new%d", delivered))
		body := message(id, fmt.Sprintf("round %d delivery %d", round, delivered))
		if cfg.Deliver != nil {
			return cfg.Deliver(ctx, body)
		}
		if cfg.LMTPAddr != "" {
			return deliverLMTP(ctx, cfg.Dial, cfg.LMTPAddr, cfg.User, body)
		}
		_, err := deliverer.cmdLiteral(ctx, body, "APPEND %s", quote(cfg.Mailbox))
		return err
	}

	done := make([][]seenOp, len(sessions))
	for d := 0; d < cfg.Deliveries; d++ {
		drain(events)
		delivery := make(chan error, 1)
		go func() { delivery <- deliver(ctx) }()
		var derr error
		delivering := true
		// Against a real server there are no windows to aim at: the
		// sessions start with the delivery.
	wait:
		for events != nil {
			select {
			case ev, ok := <-events:
				if ok && ev.Kind == legacysim.WindowDelivery && ev.User == cfg.User && ev.Mailbox == cfg.Mailbox {
					break wait
				}
			case derr = <-delivery:
				delivering = false
				break wait
			case <-ctx.Done():
				<-delivery
				return ctx.Err()
			}
		}
		// Each session's choices come from its own generator, seeded in
		// order, so they do not depend on scheduling.
		errs := make(chan error, len(sessions))
		for i, c := range sessions {
			srng := rand.New(rand.NewPCG(rng.Uint64(), uint64(i)))
			go func() {
				ops, err := seenOps(ctx, c, srng, cfg.Ops)
				done[i] = append(done[i], ops...)
				errs <- err
			}()
		}
		var firstErr error
		for range sessions {
			if err := <-errs; err != nil && firstErr == nil {
				firstErr = err
			}
		}
		if delivering {
			derr = <-delivery
		}
		if firstErr != nil {
			return firstErr
		}
		if derr != nil {
			return derr
		}
	}
	if err := deliver(ctx); err != nil {
		return err
	}
	errs := make(chan error, len(sessions))
	for _, c := range sessions {
		go func() {
			_, err := c.cmd(ctx, "CLOSE")
			errs <- err
		}()
	}
	var firstErr error
	for range sessions {
		if err := <-errs; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return firstErr
	}

	if k != nil {
		truth, err := k.truth(ctx)
		if err != nil {
			return err
		}
		if len(truth) != n0+delivered {
			// Nothing in B expunges: a round that lost deliveries raced
			// none, and its verdict would mean nothing.
			return fmt.Errorf("round %d: the mailbox holds %d messages after %d seeded and %d delivered (deliveries dropped, e.g. as duplicates?)", round, len(truth), n0, delivered)
		}
		want := map[string]bool{}
		for i := range preSeen {
			want[cfg.msgID("b", round, i+1)] = true
		}
		var stores []uint32
		for _, ops := range done {
			for _, op := range ops {
				switch {
				case op.id != "":
					want[op.id] = true
				case !op.fetch:
					stores = append(stores, op.msgno)
				}
				// A body fetch that returned no body names nothing.

			}
		}
		return verdictB(truth, want, stores, round, res)
	}
	truth, err := cfg.Sim.Messages(cfg.User, cfg.Mailbox)
	if err != nil {
		return err
	}
	want := map[uint32]bool{}
	for i := range preSeen {
		want[uint32(uids[i])] = true
	}
	for _, ops := range done {
		for _, op := range ops {
			if int(op.msgno) > len(truth) {
				return fmt.Errorf("message %d of %d marked, but the mailbox has %d", op.msgno, len(truth), len(truth))
			}
			want[uint32(truth[op.msgno-1].UID)] = true
		}
	}
	for _, m := range truth {
		u := uint32(m.UID)
		switch {
		case want[u] && !m.Seen():
			res.LostSeen++
		case !want[u] && m.Seen():
			res.SpuriousSeen++
		}
	}
	return nil
}

// seenOps makes n \Seen updates by message number, a third of them on the
// newest message the session knows of, and returns those that succeeded.
func seenOps(ctx context.Context, c *client, rng *rand.Rand, n int) ([]seenOp, error) {
	var ops []seenOp
	for j := 0; j < n; j++ {
		exists := c.exists
		if exists == 0 {
			return ops, errors.New("session sees an empty mailbox")
		}
		msgno := exists
		if rng.IntN(3) != 0 {
			msgno = 1 + uint32(rng.IntN(int(exists)))
		}
		op := seenOp{msgno: msgno}
		var err error
		if rng.IntN(2) == 0 {
			_, err = c.cmd(ctx, "STORE %d +FLAGS (\\Seen)", msgno)
		} else {
			// RFC 3501 §6.4.5: BODY[] (not BODY.PEEK[]) sets \Seen.
			var rs []response
			rs, err = c.cmd(ctx, "FETCH %d (BODY[])", msgno)
			op.fetch, op.id = true, fetchedID(rs)
		}
		if err != nil {
			return ops, err
		}
		ops = append(ops, op)
	}
	return ops, nil
}

// sortedKeys iterates over m's keys in order, so that the commands of a
// round do not depend on map order.
func sortedKeys(m map[int]bool) func(yield func(int) bool) {
	return func(yield func(int) bool) {
		keys := make([]int, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if !yield(k) {
				return
			}
		}
	}
}

func drain(events <-chan legacysim.Event) {
	for {
		select {
		case _, ok := <-events:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

// DeliverLMTP delivers msg to rcpt through the LMTP server at addr:
// host:port, or the path of a unix socket (starting with "/").
func DeliverLMTP(ctx context.Context, addr, rcpt string, msg []byte) error {
	var dial func(context.Context, string) (net.Conn, error)
	if strings.HasPrefix(addr, "/") {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "unix", addr) }
	}
	return deliverLMTP(ctx, dial, addr, rcpt, msg)
}

// deliverLMTP delivers msg to rcpt through the LMTP server at addr
// (RFC 2033): LHLO, MAIL FROM, RCPT TO, DATA, QUIT.
func deliverLMTP(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addr, rcpt string, msg []byte) error {
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	nc, err := dial(ctx, addr)
	if err != nil {
		return err
	}
	c := &client{c: nc, br: bufio.NewReader(nc)}
	c.stop = context.AfterFunc(ctx, func() { nc.Close() })
	defer c.close()
	c.deadline(ctx)
	expect := func(code string) error {
		for {
			line, err := c.readLine()
			if err != nil {
				return err
			}
			if !strings.HasPrefix(line, code) {
				return fmt.Errorf("LMTP: want %s, got %q", code, line)
			}
			if len(line) < 4 || line[3] != '-' {
				return nil
			}
		}
	}
	send := func(line, code string) error {
		if _, err := fmt.Fprintf(nc, "%s\r\n", line); err != nil {
			return err
		}
		return expect(code)
	}
	if err := expect("220"); err != nil {
		return err
	}
	for _, s := range [][2]string{
		{"LHLO localhost", "250"},
		{"MAIL FROM:<sim@uidgate.test>", "250"},
		{"RCPT TO:<" + rcpt + ">", "250"},
		{"DATA", "354"},
	} {
		if err := send(s[0], s[1]); err != nil {
			return err
		}
	}
	// RFC 5321 §4.5.2: dot-stuffing; the scenarios' messages have no line
	// starting with a dot, but be correct anyway.
	body := strings.ReplaceAll("\r\n"+string(msg), "\r\n.", "\r\n..")[2:]
	if !strings.HasSuffix(body, "\r\n") {
		body += "\r\n"
	}
	if err := send(body+".", "250"); err != nil {
		return err
	}
	return send("QUIT", "221")
}
