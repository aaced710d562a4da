package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"
)

// Smoke sizes: small enough that the whole pass takes a few seconds.
const (
	smokeMessages    = 20
	smokeMessageSize = 20_000
	smokeAppendSize  = 2_000_000
	smokeIdle        = 20
	smokeTime        = time.Second
	smokeBox         = "imapload-smoke"
	smokeAppendBox   = "imapload-smoke-append"
)

// runSmoke runs every workload briefly against cfg.addr in mailboxes of
// its own and checks what it can: no errors, every message arrives, and
// bodies come back byte for byte. The mailboxes are deleted at the end.
func runSmoke(ctx context.Context, base *config, emit func(result)) error {
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := deleteBoxes(ctx, base, smokeBox, smokeAppendBox); err != nil {
		return fmt.Errorf("clean up before: %w", err)
	}
	step := func(name string, r result, check func(result) error) error {
		r.Label = base.label
		emit(r)
		if r.Errors > 0 {
			return fmt.Errorf("%s: %d errors, first: %s", name, r.Errors, r.FirstError)
		}
		if err := check(r); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	cfg := *base
	cfg.mailbox = smokeBox
	cfg.users = 1
	cfg.timeout = 20 * time.Second

	seed := cfg
	seed.sessions, seed.count, seed.size = 2, smokeMessages, smokeMessageSize
	if err := step("seed", runSeed(ctx, &seed), func(r result) error {
		if r.Messages != smokeMessages {
			return fmt.Errorf("appended %d messages, want %d", r.Messages, smokeMessages)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := verifyBox(ctx, &cfg, smokeBox, smokeMessages, smokeMessageSize); err != nil {
		return fmt.Errorf("verify: %w", err)
	}

	bulk := cfg
	bulk.sessions, bulk.rounds, bulk.duration = 2, 2, smokeTime
	if err := step("bulk", runBulk(ctx, &bulk), func(r result) error {
		if r.Messages == 0 || r.Messages%smokeMessages != 0 || r.MBps <= 0 {
			return fmt.Errorf("fetched %d messages at %.1f MB/s", r.Messages, r.MBps)
		}
		return nil
	}); err != nil {
		return err
	}

	for _, mix := range []string{"flags", "seen"} {
		small := cfg
		small.sessions, small.duration, small.mix = 4, smokeTime, mix
		ops, _ := mixOps(mix)
		if err := step("small -mix "+mix, runSmall(ctx, &small, nil), func(r result) error {
			if r.Ops < int64(len(ops)) || r.P50us <= 0 || len(r.ByOp) != len(ops) {
				return fmt.Errorf("%d commands of %d kinds, p50 %.0f µs", r.Ops, len(r.ByOp), r.P50us)
			}
			return nil
		}); err != nil {
			return err
		}
	}

	sel := cfg
	sel.rounds, sel.search = 2, "esearch"
	if err := step("select", runSelect(ctx, &sel), func(r result) error {
		if r.Messages != smokeMessages || r.Ops != 2 {
			return fmt.Errorf("%d SELECTs saw %d messages", r.Ops, r.Messages)
		}
		return nil
	}); err != nil {
		return err
	}

	idle := cfg
	idle.sessions, idle.duration, idle.idleLogout = smokeIdle, smokeTime, true
	if err := step("idle", runIdle(ctx, &idle, func(r result) {
		r.Label = base.label
		emit(r)
	}), func(r result) error {
		if r.Sessions != smokeIdle || r.Failed != 0 || r.Ops != smokeIdle {
			return fmt.Errorf("%d sessions, %d failed, %d left IDLE cleanly", r.Sessions, r.Failed, r.Ops)
		}
		return nil
	}); err != nil {
		return err
	}

	app := cfg
	app.mailbox, app.count, app.size, app.verify = smokeAppendBox, 1, smokeAppendSize, true
	if err := step("append", runAppend(ctx, &app), func(r result) error {
		if r.Messages != 1 || r.FetchBytes != smokeAppendSize {
			return fmt.Errorf("appended %d, fetched %d bytes", r.Messages, r.FetchBytes)
		}
		return nil
	}); err != nil {
		return err
	}
	return deleteBoxes(ctx, base, smokeBox, smokeAppendBox)
}

// verifyBox fetches every message of mailbox and checks that each is one
// of the n messages runSeed appended (seed.0 … seed.n-1, in any order),
// byte for byte, and that none is missing or doubled.
func verifyBox(ctx context.Context, cfg *config, mailbox string, n int, size int64) error {
	want := make(map[[sha256.Size]byte]int, n)
	for k := 0; k < n; k++ {
		m, err := newMessage(size, fmt.Sprintf("seed.%d", k))
		if err != nil {
			return err
		}
		want[m.digest()] = k
	}
	set := newConnSet(ctx)
	c, err := cfg.connect(set, 0)
	if err != nil {
		return err
	}
	defer c.Close()
	exists, err := c.selectBox(mailbox, true)
	if err != nil {
		return err
	}
	if int(exists) != n {
		return fmt.Errorf("%s has %d messages, want %d", mailbox, exists, n)
	}
	seen := make(map[int]bool, n)
	status, err := c.wait(c.send("FETCH 1:* BODY.PEEK[]"), nil, func(size int64, r io.Reader) error {
		h := sha256.New()
		if _, err := io.CopyBuffer(h, r, c.scratchBuf()); err != nil {
			return err
		}
		var d [sha256.Size]byte
		h.Sum(d[:0])
		k, ok := want[d]
		if !ok {
			return errors.New("a message came back changed")
		}
		if seen[k] {
			return fmt.Errorf("message seed.%d came twice", k)
		}
		seen[k] = true
		return nil
	})
	if err == nil && status != "OK" {
		err = fmt.Errorf("FETCH: %s", status)
	}
	if err == nil && len(seen) != n {
		err = fmt.Errorf("%d of %d messages came back", len(seen), n)
	}
	if err != nil {
		return err
	}
	return c.logout()
}

// deleteBoxes DELETEs the mailboxes; one that does not exist is fine.
func deleteBoxes(ctx context.Context, cfg *config, boxes ...string) error {
	set := newConnSet(ctx)
	c, err := cfg.connect(set, 0)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, b := range boxes {
		if _, err := c.wait(c.send("DELETE "+quote(b)), nil, nil); err != nil {
			return err
		}
	}
	return c.logout()
}
