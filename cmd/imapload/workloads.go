package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// config is what the flags say.
type config struct {
	addr, user, pass string
	users            int // user names: user with %d replaced by session index mod users
	workload         string
	mix              string // small: "flags" or "seen" (mixOps)
	label            string
	sessions         int
	duration         time.Duration // small, bulk: measuring time; idle: hold
	rounds           int           // bound of commands per session (small), FETCHes (bulk), SELECTs (select)
	size             int64         // append, seed: message size
	count            int           // append, seed: messages
	mailbox          string
	search           string // select: "none", "esearch" or "plain"
	hold             time.Duration
	concurrency      int // sessions set up at once
	timeout          time.Duration
	idleLogout       bool          // idle: DONE and LOGOUT at the end instead of closing
	verify           bool          // append: check each fetched message's SHA-256
	searchAhead      bool          // stress: tolerate SEARCH naming unannounced messages
	seed             int64         // stress: seed of every session's random mix
	mailbox2         string        // stress: the other mailbox (COPY, STATUS); "" derives one
	stall            time.Duration // stress: a command unanswered this long is a stall
}

// userFor returns the login name of session i.
func (cfg *config) userFor(i int) string {
	if strings.Contains(cfg.user, "%d") {
		return fmt.Sprintf(cfg.user, i%max(cfg.users, 1))
	}
	return cfg.user
}

// connSet closes every connection it holds when its context ends, so that
// a cancelled run never waits on a socket.
type connSet struct {
	mu     sync.Mutex
	conns  map[*conn]struct{}
	closed bool
}

func newConnSet(ctx context.Context) *connSet {
	s := &connSet{conns: make(map[*conn]struct{})}
	context.AfterFunc(ctx, s.closeAll)
	return s
}

func (s *connSet) add(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *connSet) remove(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

// connect dials and logs in as session i's user.
func (cfg *config) connect(set *connSet, i int) (*conn, error) {
	c, err := dial(cfg.addr, cfg.timeout)
	if err != nil {
		return nil, err
	}
	if !set.add(c) {
		c.Close()
		return nil, context.Canceled
	}
	if err := c.login(cfg.userFor(i), cfg.pass); err != nil {
		set.remove(c)
		c.Close()
		return nil, err
	}
	return c, nil
}

// errCount counts errors and keeps the first.
type errCount struct {
	mu    sync.Mutex
	n     int64
	first error
}

func (e *errCount) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if e.first == nil {
		e.first = err
	}
}

func (e *errCount) fill(r *result) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r.Errors += e.n
	if e.first != nil && r.FirstError == "" {
		r.FirstError = e.first.Error()
	}
}

// forEach runs fn(0..n-1) with at most conc at once and stops starting new
// calls once ctx ends. Errors go to errs.
func forEach(ctx context.Context, n, conc int, errs *errCount, fn func(i int) error) {
	sem := make(chan struct{}, max(conc, 1))
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs.add(fmt.Errorf("session %d: %w", i, ctx.Err()))
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fn(i); err != nil {
				errs.add(fmt.Errorf("session %d: %w", i, err))
			}
		})
	}
	wg.Wait()
}

// logoutAll logs every connection out (at most conc at once).
func logoutAll(ctx context.Context, conns []*conn, conc int, set *connSet) {
	var ignored errCount
	forEach(ctx, len(conns), conc, &ignored, func(i int) error {
		if conns[i] == nil {
			return nil
		}
		defer set.remove(conns[i])
		return conns[i].logout()
	})
}

// smallOp is one command of the small workload: its name in the result's
// by_op, and its format, where %d is a random message number of the
// selected mailbox.
type smallOp struct{ name, format string }

// smallOps are the small workload's commands (-mix flags), issued in this
// order in a loop.
var smallOps = []smallOp{
	{"NOOP", "NOOP"},
	{"FETCH", "FETCH %d (FLAGS)"},
	{"STORE+", `STORE %d +FLAGS (\Flagged)`},
	{"STORE-", `STORE %d -FLAGS (\Flagged)`},
}

// seenOps (-mix seen) are smallOps plus what a mail reader does to \Seen:
// a non-PEEK body fetch (it sets \Seen, RFC 9051 §6.4.5), and \Seen set
// and cleared by STORE, so that the fetches keep finding unseen messages.
// These are the commands a legacy server's unlocked \Seen update races
// and uidgate's explicit \Seen serializes.
var seenOps = append(smallOps[:len(smallOps):len(smallOps)],
	smallOp{"FETCHBODY", "FETCH %d BODY[]"},
	smallOp{"STORE+Seen", `STORE %d +FLAGS (\Seen)`},
	smallOp{"STORE-Seen", `STORE %d -FLAGS (\Seen)`},
)

// mixOps returns the commands of the small workload's mix.
func mixOps(mix string) ([]smallOp, error) {
	switch mix {
	case "flags":
		return smallOps, nil
	case "seen":
		return seenOps, nil
	}
	return nil, fmt.Errorf("-mix %q: want flags or seen", mix)
}

// runSmall: cfg.sessions sessions each SELECT cfg.mailbox, then, once all
// are ready, issue the commands of cfg.mix (flags: NOOP, FETCH n (FLAGS),
// STORE n +FLAGS, STORE n -FLAGS; seen: those and FETCH n BODY[], STORE n
// ±FLAGS (\Seen)) in a closed loop (one command at a time) for
// cfg.duration or cfg.rounds commands, whichever ends first. Phase lines "ready" and "done" go to
// emit (if set) just before and after the measured loop, so that an
// observer can tell set-up and logout from the load.
func runSmall(ctx context.Context, cfg *config, emit func(result)) result {
	res := result{Workload: "small", Mailbox: cfg.mailbox}
	ops, err := mixOps(cfg.mix)
	if err != nil {
		res.Errors, res.FirstError = 1, err.Error()
		return res
	}
	set := newConnSet(ctx)
	conns := make([]*conn, cfg.sessions)
	exists := make([]uint32, cfg.sessions)
	var errs errCount
	setup := time.Now()
	forEach(ctx, cfg.sessions, cfg.concurrency, &errs, func(i int) error {
		c, err := cfg.connect(set, i)
		if err != nil {
			return err
		}
		conns[i] = c
		n, err := c.selectBox(cfg.mailbox, false)
		if err == nil && n == 0 {
			err = fmt.Errorf("mailbox %s is empty", cfg.mailbox)
		}
		exists[i] = n
		return err
	})
	res.SetupS = time.Since(setup).Seconds()
	if errs.n > 0 {
		logoutAll(ctx, conns, cfg.concurrency, set)
		errs.fill(&res)
		return res
	}
	res.Sessions = cfg.sessions
	phase := func(name string) {
		if emit != nil {
			r := res
			r.Phase = name
			emit(r)
		}
	}
	phase("ready")

	lat := make([][]latencies, cfg.sessions)
	for i := range lat {
		lat[i] = make([]latencies, len(ops))
	}
	start := time.Now()
	deadline := start.Add(cfg.duration)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 0x1a9))
			for k := 0; k < cfg.rounds; k++ {
				if !time.Now().Before(deadline) || ctx.Err() != nil {
					return
				}
				op := k % len(ops)
				cmd := ops[op].format
				if op != 0 {
					cmd = fmt.Sprintf(cmd, 1+rng.Uint32N(exists[i]))
				}
				d, err := c.simple(cmd)
				if err != nil {
					errs.add(fmt.Errorf("session %d: %w", i, err))
					return
				}
				lat[i][op] = append(lat[i][op], d)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	phase("done")
	logoutAll(ctx, conns, cfg.concurrency, set)

	var all latencies
	res.ByOp = make(map[string]opStats, len(ops))
	for op, o := range ops {
		var l latencies
		for i := range lat {
			l = append(l, lat[i][op]...)
		}
		all = append(all, l...)
		res.ByOp[o.name] = l.summary()
	}
	s := all.summary()
	res.Ops, res.P50us, res.P99us = s.N, s.P50us, s.P99us
	res.DurationS = elapsed.Seconds()
	res.OpsPerS = float64(s.N) / elapsed.Seconds()
	errs.fill(&res)
	return res
}

// runBulk: cfg.sessions sessions EXAMINE cfg.mailbox and each run
// "FETCH 1:* BODY.PEEK[]" cfg.rounds times (bounded by cfg.duration if
// set), discarding the bodies as they stream in. Every message must come.
func runBulk(ctx context.Context, cfg *config) result {
	res := result{Workload: "bulk", Mailbox: cfg.mailbox}
	set := newConnSet(ctx)
	conns := make([]*conn, cfg.sessions)
	exists := make([]uint32, cfg.sessions)
	var errs errCount
	forEach(ctx, cfg.sessions, cfg.concurrency, &errs, func(i int) error {
		c, err := cfg.connect(set, i)
		if err != nil {
			return err
		}
		conns[i] = c
		exists[i], err = c.selectBox(cfg.mailbox, true)
		if err == nil && exists[i] == 0 {
			err = fmt.Errorf("mailbox %s is empty", cfg.mailbox)
		}
		return err
	})
	if errs.n > 0 {
		logoutAll(ctx, conns, cfg.concurrency, set)
		errs.fill(&res)
		return res
	}
	res.Sessions = cfg.sessions
	var bytesTotal, messages atomic.Int64
	var fetches latencies
	var mu sync.Mutex
	start := time.Now()
	var deadline time.Time
	if cfg.duration > 0 {
		deadline = start.Add(cfg.duration)
	}
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			for k := 0; k < cfg.rounds; k++ {
				if (!deadline.IsZero() && !time.Now().Before(deadline)) || ctx.Err() != nil {
					return
				}
				before := c.bytesIn
				var got int64
				t0 := time.Now()
				tag := c.send("FETCH 1:* BODY.PEEK[]")
				status, err := c.wait(tag, func(line []byte) {
					if bytes.Contains(line, []byte(" FETCH ")) {
						got++
					}
				}, nil)
				d := time.Since(t0)
				if err == nil && status != "OK" {
					err = fmt.Errorf("FETCH: %s: %w", status, errNotOK)
				}
				if err == nil && got != int64(exists[i]) {
					err = fmt.Errorf("FETCH 1:* returned %d messages of %d", got, exists[i])
				}
				if err != nil {
					errs.add(fmt.Errorf("session %d: %w", i, err))
					return
				}
				bytesTotal.Add(c.bytesIn - before)
				messages.Add(got)
				mu.Lock()
				fetches = append(fetches, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	logoutAll(ctx, conns, cfg.concurrency, set)
	s := fetches.summary()
	res.Ops, res.P50us, res.P99us = s.N, s.P50us, s.P99us
	res.DurationS = elapsed.Seconds()
	res.Bytes = bytesTotal.Load()
	res.Messages = messages.Load()
	res.MBps = mbps(res.Bytes, elapsed)
	errs.fill(&res)
	return res
}

// runSelect: cfg.rounds times, one new session logs in and SELECTs
// cfg.mailbox, timed to the tagged OK; then, per cfg.search, a timed
// "UID SEARCH RETURN (ALL) ALL" (esearch) or "UID SEARCH ALL" (plain);
// then it stays selected for cfg.hold (for memory sampling) and logs out.
func runSelect(ctx context.Context, cfg *config) result {
	res := result{Workload: "select", Mailbox: cfg.mailbox, Sessions: 1}
	set := newConnSet(ctx)
	var errs errCount
	var sel, search []time.Duration
	var searchCmd string
	switch cfg.search {
	case "esearch":
		searchCmd = "UID SEARCH RETURN (ALL) ALL"
	case "plain":
		searchCmd = "UID SEARCH ALL"
	}
	start := time.Now()
	for k := 0; k < cfg.rounds && ctx.Err() == nil; k++ {
		err := func() error {
			c, err := cfg.connect(set, 0)
			if err != nil {
				return err
			}
			defer set.remove(c)
			defer c.Close()
			t0 := time.Now()
			n, err := c.selectBox(cfg.mailbox, false)
			if err != nil {
				return err
			}
			sel = append(sel, time.Since(t0))
			res.Messages = int64(n)
			if searchCmd != "" {
				d, err := c.simple(searchCmd)
				if err != nil {
					return err
				}
				search = append(search, d)
			}
			if !sleep(ctx, cfg.hold) {
				return ctx.Err()
			}
			return c.logout()
		}()
		if err != nil {
			errs.add(fmt.Errorf("round %d: %w", k, err))
			break
		}
	}
	res.DurationS = time.Since(start).Seconds()
	res.Ops = int64(len(sel))
	res.SelectMS, res.SelectAllMS = medianMS(sel)
	res.SearchMS, res.SearchAllMS = medianMS(search)
	errs.fill(&res)
	return res
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// runIdle: cfg.sessions sessions log in, SELECT cfg.mailbox (unless it is
// "") and enter IDLE (cfg.concurrency set up at once). Once all are in IDLE, a "ready"
// line goes to emit, then every session stays for cfg.duration, reading
// whatever the server sends. A session whose connection fails during the
// hold counts as dropped. At the end, sessions are closed, or with
// cfg.idleLogout end IDLE with DONE (timed) and LOG OUT.
func runIdle(ctx context.Context, cfg *config, emit func(result)) result {
	res := result{Workload: "idle", Mailbox: cfg.mailbox}
	set := newConnSet(ctx)
	conns := make([]*conn, cfg.sessions)
	idleTags := make([][]byte, cfg.sessions)
	var errs errCount
	setup := time.Now()
	forEach(ctx, cfg.sessions, cfg.concurrency, &errs, func(i int) error {
		c, err := cfg.connect(set, i)
		if err != nil {
			return err
		}
		if cfg.mailbox != "" {
			if _, err := c.selectBox(cfg.mailbox, false); err != nil {
				set.remove(c)
				c.Close()
				return err
			}
		}
		tag := c.send("IDLE")
		ok, status, err := c.waitContinuation(tag)
		if err == nil && !ok {
			err = fmt.Errorf("IDLE: %s: %w", status, errNotOK)
		}
		if err != nil {
			set.remove(c)
			c.Close()
			return err
		}
		conns[i] = c
		idleTags[i] = append([]byte(nil), tag...)
		return nil
	})
	res.SetupS = time.Since(setup).Seconds()
	for _, c := range conns {
		if c != nil {
			res.Sessions++
		}
	}
	res.Failed = cfg.sessions - res.Sessions
	ready := res
	ready.Phase = "ready"
	errs.fill(&ready)
	emit(ready)

	holdEnd := time.Now().Add(cfg.duration)
	var dropped atomic.Int64
	var done latencies
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, c := range conns {
		if c == nil {
			continue
		}
		wg.Go(func() {
			defer set.remove(c)
			defer c.Close()
			// Responses during IDLE (EXISTS, "* OK Still here") are read
			// and ignored; anything else than the hold's end is a drop.
			c.nc.SetReadDeadline(holdEnd)
			for {
				line, lit, err := c.readLine()
				if err != nil {
					var ne net.Error
					if !errors.As(err, &ne) || !ne.Timeout() {
						dropped.Add(1)
						errs.add(fmt.Errorf("session %d dropped: %w", i, err))
						return
					}
					break
				}
				if bytes.HasPrefix(line, []byte("* BYE")) {
					dropped.Add(1)
					errs.add(fmt.Errorf("session %d: %q", i, trimEOL(line)))
					return
				}
				if lit >= 0 {
					if err := c.discard(lit); err != nil {
						dropped.Add(1)
						errs.add(fmt.Errorf("session %d dropped: %w", i, err))
						return
					}
				}
			}
			if !cfg.idleLogout || ctx.Err() != nil {
				return
			}
			t0 := time.Now()
			c.nc.SetDeadline(t0.Add(cfg.timeout))
			c.w.WriteString("DONE\r\n")
			c.w.Flush()
			status, err := c.wait(idleTags[i], nil, nil)
			if err == nil && status != "OK" {
				err = fmt.Errorf("IDLE ended with %s", status)
			}
			if err == nil {
				d := time.Since(t0)
				mu.Lock()
				done = append(done, d)
				mu.Unlock()
				err = c.logout()
			}
			if err != nil {
				errs.add(fmt.Errorf("session %d: DONE: %w", i, err))
			}
		})
	}
	wg.Wait()
	res.DurationS = cfg.duration.Seconds()
	res.Failed += int(dropped.Load())
	if len(done) > 0 {
		s := done.summary()
		res.Ops, res.P50us, res.P99us = s.N, s.P50us, s.P99us
	}
	errs.fill(&res)
	return res
}

// appendMessage APPENDs msg to mailbox with a synchronizing literal (so
// that it works the same whether the server has LITERAL+ or not) and
// returns the time from the command to its tagged OK. onLine sees the
// untagged responses (EXISTS when the mailbox is selected).
func (c *conn) appendMessage(mailbox string, msg message, onLine func([]byte)) (time.Duration, error) {
	t0 := time.Now()
	c.startCommand()
	fmt.Fprintf(c.w, "APPEND %s (\\Seen) {%d}\r\n", quote(mailbox), msg.size)
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	tag := c.tag
	ok, status, err := c.waitContinuation(tag)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("APPEND refused: %s: %w", status, errNotOK)
	}
	if _, err := msg.WriteTo(c.w); err != nil {
		return 0, err
	}
	c.w.WriteString("\r\n")
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	status, err = c.wait(tag, onLine, nil)
	if err == nil && status != "OK" {
		err = fmt.Errorf("APPEND: %s: %w", status, errNotOK)
	}
	return time.Since(t0), err
}

// create CREATEs mailbox; one that exists already is fine.
func (c *conn) create(mailbox string) error {
	// A NO is fine: RFC 5530 §3 [ALREADYEXISTS], and servers without that
	// code say NO all the same. The SELECT or APPEND that follows tells.
	_, err := c.wait(c.send("CREATE "+quote(mailbox)), nil, nil)
	return err
}

// runAppend: one session CREATEs and SELECTs cfg.mailbox, APPENDs
// cfg.count messages of cfg.size bytes (each streamed as generated), then
// FETCHes each back with BODY.PEEK[] (size checked, and SHA-256 with
// cfg.verify), then deletes them (STORE \Deleted + EXPUNGE; not timed).
func runAppend(ctx context.Context, cfg *config) result {
	res := result{Workload: "append", Mailbox: cfg.mailbox, Sessions: 1}
	set := newConnSet(ctx)
	var errs errCount
	err := func() error {
		c, err := cfg.connect(set, 0)
		if err != nil {
			return err
		}
		defer set.remove(c)
		defer c.Close()
		if err := c.create(cfg.mailbox); err != nil {
			return err
		}
		first, err := c.selectBox(cfg.mailbox, false)
		if err != nil {
			return err
		}
		exists := first
		onLine := func(line []byte) {
			if n, ok := untaggedNumber(line, "EXISTS"); ok {
				exists = n
			}
		}
		var msgs []message
		var appendTime time.Duration
		id := strconv.Itoa(os.Getpid()) + "." + strconv.FormatInt(time.Now().UnixNano(), 36)
		for k := 0; k < cfg.count && ctx.Err() == nil; k++ {
			m, err := newMessage(cfg.size, fmt.Sprintf("%s.%d", id, k))
			if err != nil {
				return err
			}
			d, err := c.appendMessage(cfg.mailbox, m, onLine)
			if err != nil {
				return err
			}
			appendTime += d
			res.Bytes += m.size
			msgs = append(msgs, m)
		}
		res.Messages = int64(len(msgs))
		res.MBps = mbps(res.Bytes, appendTime)
		// The APPENDs' EXISTS may come now at the latest (RFC 9051 §6.3.12).
		if status, err := c.wait(c.send("NOOP"), onLine, nil); err != nil || status != "OK" {
			return fmt.Errorf("NOOP: %s %v", status, err)
		}
		if exists < first+uint32(len(msgs)) {
			return fmt.Errorf("appended %d messages, but EXISTS went from %d to %d", len(msgs), first, exists)
		}
		var fetchTime time.Duration
		for k, m := range msgs {
			seq := exists - uint32(len(msgs)) + uint32(k) + 1
			var got int64
			var sum [sha256.Size]byte
			t0 := time.Now()
			tag := c.send(fmt.Sprintf("FETCH %d BODY.PEEK[]", seq))
			status, err := c.wait(tag, nil, func(n int64, r io.Reader) error {
				got += n
				if !cfg.verify {
					_, err := io.CopyBuffer(io.Discard, r, c.scratchBuf())
					return err
				}
				h := sha256.New()
				_, err := io.CopyBuffer(h, r, c.scratchBuf())
				h.Sum(sum[:0])
				return err
			})
			fetchTime += time.Since(t0)
			if err == nil && status != "OK" {
				err = fmt.Errorf("FETCH %d: %s: %w", seq, status, errNotOK)
			}
			if err != nil {
				return err
			}
			if got != m.size {
				return fmt.Errorf("FETCH %d: %d bytes, appended %d", seq, got, m.size)
			}
			if cfg.verify && sum != m.digest() {
				return fmt.Errorf("FETCH %d: the message differs from the one appended", seq)
			}
			res.FetchBytes += got
		}
		res.FetchMBps = mbps(res.FetchBytes, fetchTime)
		if len(msgs) > 0 {
			from := exists - uint32(len(msgs)) + 1
			if _, err := c.simple(fmt.Sprintf(`STORE %d:* +FLAGS.SILENT (\Deleted)`, from)); err != nil {
				return err
			}
			if _, err := c.simple("EXPUNGE"); err != nil {
				return err
			}
		}
		res.DurationS = (appendTime + fetchTime).Seconds()
		return c.logout()
	}()
	if err != nil {
		errs.add(err)
	}
	errs.fill(&res)
	return res
}

// scratchBuf returns the connection's literal buffer.
func (c *conn) scratchBuf() []byte {
	if c.scratch == nil {
		c.scratch = make([]byte, discardBufSize)
	}
	return c.scratch
}

// runSeed: cfg.sessions sessions APPEND cfg.count messages of cfg.size
// bytes in all to cfg.mailbox (CREATEd first), to populate a server for
// the other workloads.
func runSeed(ctx context.Context, cfg *config) result {
	res := result{Workload: "seed", Mailbox: cfg.mailbox, Sessions: cfg.sessions}
	set := newConnSet(ctx)
	var errs errCount
	var next, bytesTotal atomic.Int64
	start := time.Now()
	forEach(ctx, cfg.sessions, cfg.concurrency, &errs, func(i int) error {
		c, err := cfg.connect(set, i)
		if err != nil {
			return err
		}
		defer set.remove(c)
		defer c.Close()
		if err := c.create(cfg.mailbox); err != nil {
			return err
		}
		for ctx.Err() == nil {
			k := next.Add(1) - 1
			if k >= int64(cfg.count) {
				break
			}
			m, err := newMessage(cfg.size, fmt.Sprintf("seed.%d", k))
			if err != nil {
				return err
			}
			if _, err := c.appendMessage(cfg.mailbox, m, nil); err != nil {
				return err
			}
			bytesTotal.Add(m.size)
		}
		return c.logout()
	})
	elapsed := time.Since(start)
	res.Messages = min(next.Load(), int64(cfg.count))
	res.Bytes = bytesTotal.Load()
	res.DurationS = elapsed.Seconds()
	res.MBps = mbps(res.Bytes, elapsed)
	errs.fill(&res)
	return res
}
