package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The stress workload: -sessions sessions of one user on one mailbox
// each write a seeded random mix of 1–4 pipelined commands in one write,
// read every answer and check it against their own model of the mailbox
// (stressView) and the rules of RFC 3501. Whatever breaks a rule is a
// violation; the run fails if there is any.

const (
	// stressStallDefault: the issue asks for every command to be answered
	// within 10 s.
	stressStallDefault = 10 * time.Second
	// stressMaxMessages: above this many messages, a client deletes the
	// oldest down to stressTrimTo (the issue: keep the mailbox bounded).
	stressMaxMessages = 200
	stressTrimTo      = 150
	// stressMinMessages: below this, no random deletes.
	stressMinMessages = 10
	// stressRefuse: stress deletes messages, so a mailbox larger than this
	// at the start is taken for one that is not a scratch mailbox.
	stressRefuse = 5 * stressMaxMessages
	// stressMaxBatch: the issue asks for 1–4 commands per write.
	stressMaxBatch = 4
	// stressMaxReported bounds the violations described in the result.
	stressMaxReported = 20
	// stressIdleMin and stressIdleSpread: how long a client stays in IDLE
	// before DONE (the issue: briefly, 50–200 ms).
	stressIdleMin    = 50 * time.Millisecond
	stressIdleSpread = 150 * time.Millisecond
	// stressMaxBodies bounds the UIDs whose body digest is remembered.
	stressMaxBodies = 100_000
	// stressBox2 is the second mailbox (COPY, STATUS) unless -mailbox2
	// names one; it goes under the personal namespace's prefix.
	stressBox2 = "imapload-stress"
	// stressKeywords: client i sets $Stress<i mod stressKeywords>; with no
	// more sessions than that, each keyword is one client's own.
	stressKeywords = 32
	// Appended messages are stressMsgMin to stressMsgMin+stressMsgSpread-1
	// bytes: small enough for a LITERAL- literal.
	stressMsgMin    = 1024
	stressMsgSpread = 2048
	// literalMinusMax: RFC 7888 §4, LITERAL- allows non-synchronizing
	// literals of at most 4096 bytes.
	literalMinusMax = 4096
)

// stressStats is the part of a result only stress fills in.
type stressStats struct {
	Seed         int64   `json:"seed"`
	Rounds       int64   `json:"rounds"`
	Commands     int64   `json:"commands"`
	CommandsPerS float64 `json:"commands_per_s"`
	Reconnects   int64   `json:"reconnects"`
	// Violations counts every broken rule, stalls included.
	Violations int64 `json:"violations"`
	// Stalls counts commands not answered within -stall.
	Stalls int64 `json:"stalls"`
	// FlagRaces counts STOREs whose FETCH responses did not show the
	// change, of a flag other clients also change or of a message some
	// client saw expunged: a race, not a violation.
	FlagRaces int64 `json:"flag_races,omitempty"`
	// LateExists counts SEARCHes that named a message announced only
	// after the SEARCH response, before the tagged answer (Cyrus 3 does).
	LateExists int64 `json:"late_exists,omitempty"`
	// SearchAhead counts, with -tolerate-search-ahead, SEARCHes that named
	// a message no EXISTS announced by their tagged answer.
	SearchAhead int64 `json:"search_ahead,omitempty"`
	// ViolationList describes the first stressMaxReported violations.
	ViolationList []violation `json:"violation_list,omitempty"`
}

// violation describes one broken rule.
type violation struct {
	Client   int    `json:"client"`
	Command  string `json:"command,omitempty"`  // the command(s) in flight
	Response string `json:"response,omitempty"` // the response that broke the rule
	Why      string `json:"why"`
}

// stressKind is a kind of command in the mix.
type stressKind uint8

const (
	kSelect stressKind = iota
	kExamine
	kFetch     // FETCH n (UID FLAGS) and the like
	kFetchBody // FETCH n (UID BODY.PEEK[]) and the like
	kUIDFetch
	kStore
	kDelete // a plan only: STORE n +FLAGS (\Deleted), then EXPUNGE
	kExpunge
	kAppend
	kCopy
	kSearch
	kUIDSearch
	kList
	kStatus
	kNoop
	kIdle
	kLogout
	numKinds
)

// kindInfo is what the planner and the checker know of a kind.
type kindInfo struct {
	name   string
	weight int // share of the mix
	// usesSeq: carries message numbers, so it may only go where the view
	// cannot have shrunk since the plan (before any command that allows
	// EXPUNGE in the same batch).
	usesSeq bool
	writes  bool // needs a read-write selection
	// quiet: RFC 3501 §7.4.1, no EXPUNGE may be sent while it runs
	// (FETCH, STORE, SEARCH; "UID" commands are other commands).
	quiet bool
	// mayNO: a message expunged by another client may make it fail.
	mayNO bool
	ends  bool // nothing may follow it in a batch
}

var stressKinds = [numKinds]kindInfo{
	kSelect:    {name: "SELECT", weight: 3},
	kExamine:   {name: "EXAMINE", weight: 1},
	kFetch:     {name: "FETCH", weight: 18, usesSeq: true, quiet: true, mayNO: true},
	kFetchBody: {name: "FETCH", weight: 6, usesSeq: true, quiet: true, mayNO: true},
	kUIDFetch:  {name: "UID FETCH", weight: 8},
	kStore:     {name: "STORE", weight: 16, usesSeq: true, writes: true, quiet: true, mayNO: true},
	kDelete:    {name: "STORE", weight: 4, usesSeq: true, writes: true, quiet: true, mayNO: true},
	kExpunge:   {name: "EXPUNGE", weight: 2, writes: true},
	kAppend:    {name: "APPEND", weight: 8},
	kCopy:      {name: "COPY", weight: 5, usesSeq: true, mayNO: true},
	kSearch:    {name: "SEARCH", weight: 6, quiet: true},
	kUIDSearch: {name: "UID SEARCH", weight: 3},
	kList:      {name: "LIST", weight: 2},
	kStatus:    {name: "STATUS", weight: 3},
	kNoop:      {name: "NOOP", weight: 6},
	kIdle:      {name: "IDLE", weight: 3, ends: true},
	kLogout:    {name: "LOGOUT", weight: 1, ends: true},
}

var stressWeights = func() (total int) {
	for _, k := range stressKinds {
		total += k.weight
	}
	return total
}()

// stressCmd is one command in flight: its own record of what it is, what
// its answers must show, and when it must be answered.
type stressCmd struct {
	tag      string
	kind     stressKind
	line     string    // the command without tag, literal and CRLF
	deadline time.Time // answered by then, or it is a stall

	// APPEND: the message; sync: a synchronizing literal, sent on "+".
	body     []byte
	sync     bool
	bodySent bool

	// STORE of one message, not .SILENT: the flag its FETCH responses
	// must show (storeAdd) or not; strict if no other client changes it.
	storeN      uint32
	storeFlag   string
	storeAdd    bool
	storeStrict bool
	flagsSeen   bool // a FETCH FLAGS for storeN came
	flagsMatch  bool // one of them showed the change

	// SEARCH: the highest message number it named beyond the view, and
	// that response; its EXISTS must come before the tagged answer.
	searchMax  uint32
	searchResp []byte

	copied    int64 // COPY to the other mailbox: messages copied
	sawExists bool  // SELECT, EXAMINE: its EXISTS came
	idling    bool  // IDLE: "+" came
	doneSent  bool  // IDLE: DONE written
}

func (cmd *stressCmd) String() string { return cmd.tag + " " + cmd.line }

// stressShared is what the clients of one run share.
type stressShared struct {
	cfg       *config
	box2      string
	box2Count atomic.Int64 // messages in box2, as last seen plus copied since

	commands, rounds, reconnects, flagRaces, lateExists, searchAhead atomic.Int64

	mu         sync.Mutex
	violations int64
	stalls     int64
	reported   []violation
	bodies     map[bodyKey]stressLit
	// expunged: every message any client saw expunged. suspects: strict
	// STOREs whose flag no FETCH showed; each is a race if its message
	// was expunged (RFC 9051 §6.4.6 lets a server ignore a STORE to a
	// message another session expunged), else a violation (settle).
	expunged map[bodyKey]bool
	suspects []suspect
}

// suspect is a strict STORE answered OK without its flag being shown.
type suspect struct {
	msg bodyKey
	v   violation
}

// bodyKey names a message for good: RFC 3501 §2.3.1.1, a UID with its
// UIDVALIDITY never names another message.
type bodyKey struct{ validity, uid uint32 }

func (sh *stressShared) violate(v violation, stall bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.violations++
	if stall {
		sh.stalls++
	}
	if len(sh.reported) < stressMaxReported {
		sh.reported = append(sh.reported, v)
	}
}

// sawExpunge records that a client saw the message expunged.
func (sh *stressShared) sawExpunge(validity, uid uint32) {
	if validity == 0 || uid == 0 {
		return
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if len(sh.expunged) < stressMaxBodies {
		sh.expunged[bodyKey{validity, uid}] = true
	}
}

// suspect defers a strict STORE's missing flag until the run's end. One
// whose message's UID the client never learnt cannot be settled either
// way (nobody can tell later whether that message was expunged, RFC 9051
// §6.4.6): it counts as a flag race.
func (sh *stressShared) suspect(validity, uid uint32, v violation) {
	if validity == 0 || uid == 0 {
		sh.flagRaces.Add(1)
		return
	}
	sh.mu.Lock()
	room := len(sh.suspects) < stressMaxBodies
	if room {
		sh.suspects = append(sh.suspects, suspect{bodyKey{validity, uid}, v})
	}
	sh.mu.Unlock()
	if !room {
		sh.violate(v, false)
	}
}

func (sh *stressShared) hasSuspects() bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return len(sh.suspects) > 0
}

// presentUIDs reads, after the run, which messages the mailbox still
// holds (by UIDVALIDITY and UID).
func presentUIDs(ctx context.Context, cfg *config) (map[bodyKey]bool, error) {
	set := newConnSet(ctx)
	c, err := cfg.connect(set, 0)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var validity uint32
	if _, err := c.wait(c.send("EXAMINE "+quote(cfg.mailbox)), func(line []byte) {
		if _, v, ok := bytes.Cut(line, []byte("[UIDVALIDITY ")); ok {
			v, _, _ = bytes.Cut(v, []byte("]"))
			n, _ := strconv.ParseUint(string(v), 10, 32)
			validity = uint32(n)
		}
	}, nil); err != nil {
		return nil, err
	}
	if validity == 0 {
		return nil, errors.New("EXAMINE gave no UIDVALIDITY")
	}
	present := make(map[bodyKey]bool)
	if _, err := c.wait(c.send("UID SEARCH ALL"), func(line []byte) {
		if rest, ok := bytes.CutPrefix(trimEOL(line), []byte("* SEARCH")); ok {
			for _, f := range bytes.Fields(rest) {
				if n, err := strconv.ParseUint(string(f), 10, 32); err == nil {
					present[bodyKey{validity, uint32(n)}] = true
				}
			}
		}
	}, nil); err != nil {
		return nil, err
	}
	return present, c.logout()
}

// settle ends the run's suspects: a message some client saw expunged, or
// gone from the mailbox at the end (present, when it could be read),
// makes a race; any other is a violation.
func (sh *stressShared) settle(present map[bodyKey]bool) {
	sh.mu.Lock()
	sus := sh.suspects
	sh.suspects = nil
	var bad []violation
	for _, s := range sus {
		if sh.expunged[s.msg] || present != nil && !present[s.msg] {
			sh.flagRaces.Add(1)
		} else {
			bad = append(bad, s.v)
		}
	}
	sh.mu.Unlock()
	for _, v := range bad {
		sh.violate(v, false)
	}
}

// checkBody checks a message's body against the one seen before under
// the same UID (by any client).
func (sh *stressShared) checkBody(validity, uid uint32, lit stressLit) string {
	// An empty body is what some servers answer for a message expunged
	// meanwhile; it says nothing about the message.
	if validity == 0 || lit.size == 0 {
		return ""
	}
	k := bodyKey{validity, uid}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old, ok := sh.bodies[k]
	if !ok {
		if len(sh.bodies) < stressMaxBodies {
			sh.bodies[k] = lit
		}
		return ""
	}
	if old != lit {
		return fmt.Sprintf("UID %d's body was %d bytes (SHA-256 %x…), now %d bytes (%x…) (RFC 3501 §2.3.1.1: a UID names one message)",
			uid, old.size, old.sum[:4], lit.size, lit.sum[:4])
	}
	return ""
}

// stressRead is one response, or the error that ended the reading.
type stressRead struct {
	resp *stressResp
	err  error
}

// readResponses reads r until it fails and hands every response to out,
// then the error, and closes out. While it runs it is r's only reader;
// closing the connection ends it.
func readResponses(r *bufio.Reader, out chan<- stressRead) {
	defer close(out)
	for {
		resp, err := readStressResp(r)
		out <- stressRead{resp, err}
		if err != nil {
			return
		}
	}
}

// capSet is what stress uses of a server's capabilities.
type capSet struct{ literalPlus, literalMinus, idle, namespace bool }

func parseCaps(line []byte) (capSet, bool) {
	rest, ok := cutPrefixFold(trimEOL(line), "* CAPABILITY ")
	if !ok {
		return capSet{}, false
	}
	var cs capSet
	for _, f := range bytes.Fields(rest) {
		switch strings.ToUpper(string(f)) {
		case "LITERAL+":
			cs.literalPlus = true
		case "LITERAL-":
			cs.literalMinus = true
		case "IDLE":
			cs.idle = true
		case "NAMESPACE":
			cs.namespace = true
		}
	}
	return cs, true
}

func cutPrefixFold(b []byte, prefix string) ([]byte, bool) {
	if len(b) < len(prefix) || !strings.EqualFold(string(b[:len(prefix)]), prefix) {
		return b, false
	}
	return b[len(prefix):], true
}

// capabilities asks for CAPABILITY and returns it.
func (c *conn) capabilities() (capSet, error) {
	var cs capSet
	status, err := c.wait(c.send("CAPABILITY"), func(line []byte) {
		if s, ok := parseCaps(line); ok {
			cs = s
		}
	}, nil)
	if err == nil && status != "OK" {
		err = fmt.Errorf("CAPABILITY: %s: %w", status, errNotOK)
	}
	return cs, err
}

// stressClient is one session of the run and the model it checks the
// server against. Only its own goroutine uses it (its reader goroutine
// owns the connection's reading side and hands over whole responses).
type stressClient struct {
	id  int
	cfg *config
	sh  *stressShared
	rng *rand.Rand
	set *connSet

	// The connection.
	c         *conn
	resps     chan stressRead
	caps      capSet
	bye       bool // an unexpected BYE came (reported)
	loggedOut bool // LOGOUT answered

	// Commands in flight, in the order written.
	tagN     uint64
	inflight []*stressCmd
	idleT    *time.Timer
	idleC    <-chan time.Time // fires when an IDLE is to end

	// The selection.
	selected    bool
	readOnly    bool
	uidValidity uint32
	view        stressView

	keyword       string // $Stress<k>
	strictKeyword bool   // no other client sets keyword
	appended      int
}

var errStall = errors.New("stall")

// runStress runs the stress workload (see the package comment).
func runStress(ctx context.Context, cfg *config) result {
	st := &stressStats{Seed: cfg.seed}
	res := result{Workload: "stress", Mailbox: cfg.mailbox, stressStats: st}
	set := newConnSet(ctx)
	var errs errCount
	box2, derived, box2Count, err := stressSetup(cfg, set)
	if err != nil {
		errs.add(fmt.Errorf("setup: %w", err))
		errs.fill(&res)
		return res
	}
	sh := &stressShared{cfg: cfg, box2: box2, bodies: make(map[bodyKey]stressLit), expunged: make(map[bodyKey]bool)}
	sh.box2Count.Store(box2Count)

	start := time.Now()
	var deadline time.Time
	if cfg.duration > 0 {
		deadline = start.Add(cfg.duration)
	}
	var started atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < cfg.sessions; i++ {
		wg.Go(func() {
			cl := &stressClient{
				id:            i,
				cfg:           cfg,
				sh:            sh,
				rng:           rand.New(rand.NewPCG(uint64(cfg.seed), uint64(i))),
				set:           set,
				keyword:       "$Stress" + strconv.Itoa(i%stressKeywords),
				strictKeyword: cfg.sessions <= stressKeywords,
			}
			if err := cl.connect(); err != nil {
				errs.add(fmt.Errorf("session %d: %w", i, err))
				return
			}
			started.Add(1)
			if err := cl.run(ctx, deadline); err != nil {
				errs.add(fmt.Errorf("session %d: %w", i, err))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	var present map[bodyKey]bool
	if sh.hasSuspects() && ctx.Err() == nil {
		var err error
		if present, err = presentUIDs(ctx, cfg); err != nil {
			errs.add(fmt.Errorf("reading the mailbox's UIDs at the end: %w", err))
		}
	}
	sh.settle(present)
	if derived && ctx.Err() == nil {
		if err := deleteBoxes(ctx, cfg, box2); err != nil {
			errs.add(fmt.Errorf("clean up: %w", err))
		}
	}

	res.Sessions = int(started.Load())
	res.Failed = cfg.sessions - res.Sessions
	res.DurationS = elapsed.Seconds()
	st.Rounds = sh.rounds.Load()
	st.Commands = sh.commands.Load()
	st.CommandsPerS = float64(st.Commands) / elapsed.Seconds()
	st.Reconnects = sh.reconnects.Load()
	st.FlagRaces = sh.flagRaces.Load()
	st.LateExists = sh.lateExists.Load()
	st.SearchAhead = sh.searchAhead.Load()
	st.Violations, st.Stalls, st.ViolationList = sh.violations, sh.stalls, sh.reported
	errs.fill(&res)
	return res
}

// stressSetup CREATEs the mailbox and the second one (named after the
// personal namespace unless -mailbox2 is set: derived), checks that the
// mailbox is small enough to be a scratch mailbox, and returns the
// second mailbox's name and message count.
func stressSetup(cfg *config, set *connSet) (box2 string, derived bool, count int64, err error) {
	c, err := cfg.connect(set, 0)
	if err != nil {
		return "", false, 0, err
	}
	defer set.remove(c)
	defer c.Close()
	caps, err := c.capabilities()
	if err != nil {
		return "", false, 0, err
	}
	if err := c.create(cfg.mailbox); err != nil {
		return "", false, 0, err
	}
	box2 = cfg.mailbox2
	if box2 == "" {
		derived = true
		prefix := ""
		if caps.namespace {
			// RFC 2342 §5: * NAMESPACE (("prefix" "sep") …) other shared
			status, err := c.wait(c.send("NAMESPACE"), func(line []byte) {
				rest, ok := cutPrefixFold(trimEOL(line), "* NAMESPACE ")
				if !ok {
					return
				}
				p := &respParser{b: rest}
				if p.byte('(') && p.byte('(') {
					if s, ok := p.Quoted(); ok {
						prefix = string(s)
					}
				}
			}, nil)
			if err == nil && status != "OK" {
				err = fmt.Errorf("NAMESPACE: %s: %w", status, errNotOK)
			}
			if err != nil {
				return "", false, 0, err
			}
		}
		box2 = prefix + stressBox2
		if box2 == cfg.mailbox {
			box2 += "-2"
		}
	}
	if err := c.create(box2); err != nil {
		return "", false, 0, err
	}
	status, err := c.wait(c.send("STATUS "+quote(box2)+" (MESSAGES)"), func(line []byte) {
		if n, ok := statusMessages(&stressResp{text: trimEOL(line)}); ok {
			count = int64(n)
		}
	}, nil)
	if err == nil && status != "OK" {
		err = fmt.Errorf("STATUS %s: %s: %w", box2, status, errNotOK)
	}
	if err != nil {
		return "", false, 0, err
	}
	n, err := c.selectBox(cfg.mailbox, true)
	if err != nil {
		return "", false, 0, err
	}
	if n > stressRefuse {
		return "", false, 0, fmt.Errorf("%s has %d messages: stress deletes messages, so it wants a scratch mailbox of at most %d", cfg.mailbox, n, stressRefuse)
	}
	return box2, derived, count, c.logout()
}

// statusMessages reads MESSAGES from "* STATUS name (MESSAGES n …)".
func statusMessages(resp *stressResp) (uint32, bool) {
	rest, ok := cutPrefixFold(resp.text, "* STATUS ")
	if !ok {
		return 0, false
	}
	p := &respParser{b: rest, lits: resp.lits}
	if _, ok := p.AString(); !ok || !p.SP() || !p.byte('(') {
		return 0, false
	}
	for {
		name := p.Atom()
		if len(name) == 0 || !p.SP() {
			return 0, false
		}
		n, ok := p.Number()
		if !ok {
			return 0, false
		}
		if bytes.EqualFold(name, []byte("MESSAGES")) {
			return n, true
		}
		if !p.SP() {
			return 0, false
		}
	}
}

// connect dials, logs in and asks for CAPABILITY, then hands the reading
// side to a reader goroutine.
func (cl *stressClient) connect() error {
	c, err := cl.cfg.connect(cl.set, 0)
	if err != nil {
		return err
	}
	caps, err := c.capabilities()
	if err != nil {
		cl.set.remove(c)
		c.Close()
		return err
	}
	// From here on, stalls are the client's to find (stressClient.exchange):
	// no read deadline, a write deadline per write.
	c.nc.SetDeadline(time.Time{})
	cl.c, cl.caps = c, caps
	cl.resps = make(chan stressRead, 16)
	go readResponses(c.r, cl.resps)
	cl.bye, cl.loggedOut, cl.selected = false, false, false
	return nil
}

// disconnect closes the connection and waits for its reader to end.
func (cl *stressClient) disconnect() {
	if cl.c == nil {
		return
	}
	cl.set.remove(cl.c)
	cl.c.Close()
	for range cl.resps {
	}
	cl.c, cl.resps = nil, nil
	cl.stopIdle()
	cl.inflight = cl.inflight[:0]
	cl.selected = false
}

// run plays rounds until -rounds, the deadline or ctx, reconnecting
// after a LOGOUT, a stall or a lost connection, and ends with LOGOUT.
func (cl *stressClient) run(ctx context.Context, deadline time.Time) error {
	defer cl.disconnect()
	for r := 0; r < cl.cfg.rounds; r++ {
		if ctx.Err() != nil || (!deadline.IsZero() && !time.Now().Before(deadline)) {
			break
		}
		err := cl.exchange(ctx, cl.plan())
		if ctx.Err() != nil {
			return nil
		}
		cl.sh.rounds.Add(1)
		if err != nil || cl.loggedOut {
			cl.disconnect()
			if err := cl.connect(); err != nil {
				return fmt.Errorf("reconnect: %w", err)
			}
			cl.sh.reconnects.Add(1)
		}
	}
	if ctx.Err() == nil {
		cl.exchange(ctx, []*stressCmd{{kind: kLogout, line: "LOGOUT"}})
	}
	return nil
}

// pick returns a random kind by weight.
func (cl *stressClient) pick() stressKind {
	w := cl.rng.IntN(stressWeights)
	for k, info := range stressKinds {
		if w < info.weight {
			return stressKind(k)
		}
		w -= info.weight
	}
	return kNoop
}

// plan draws the next batch: 1–4 commands valid in the state the batch
// itself leads to. Commands with message numbers come only while the
// view cannot have shrunk (before any command that allows EXPUNGE), so
// their numbers are valid when the server reads them; IDLE, LOGOUT and
// an APPEND with a synchronizing literal end a batch.
func (cl *stressClient) plan() []*stressCmd {
	var batch []*stressCmd
	add := func(kind stressKind, format string, args ...any) *stressCmd {
		cmd := &stressCmd{kind: kind, line: fmt.Sprintf(format, args...)}
		batch = append(batch, cmd)
		return cmd
	}
	mailbox := quote(cl.cfg.mailbox)
	n := cl.view.count()
	readOnly := cl.readOnly
	switch {
	case !cl.selected:
		if cl.rng.IntN(5) == 0 {
			add(kExamine, "EXAMINE %s", mailbox)
			readOnly = true
		} else {
			add(kSelect, "SELECT %s", mailbox)
			readOnly = false
		}
	case n > stressMaxMessages && readOnly:
		add(kSelect, "SELECT %s", mailbox)
		readOnly = false
	case n > stressMaxMessages:
		// Keep the mailbox bounded: delete the oldest messages.
		add(kStore, `STORE 1:%d +FLAGS.SILENT (\Deleted)`, n-stressTrimTo)
		add(kExpunge, "EXPUNGE")
		return batch
	}
	stable := len(batch) == 0
	searching := false // a SEARCH or UID SEARCH is in the batch
	// stored: messages a STORE in the batch changes. RFC 3501 §5.5: two
	// STOREs of one message's flags pipelined are ambiguous, and servers
	// answer them differently (Dovecot runs both, then reports the first
	// with the flags after the second), so a batch stores each message
	// once.
	stored := map[uint32]bool{}
	want := 1 + cl.rng.IntN(stressMaxBatch)
	for tries := 0; len(batch) < want && tries < 32; tries++ {
		k := cl.pick()
		info := &stressKinds[k]
		if info.usesSeq && (!stable || n == 0) ||
			info.writes && readOnly ||
			(k == kSelect || k == kExamine) && len(batch) > 0 ||
			k == kIdle && !cl.caps.idle ||
			// RFC 3501 §5.5: no pipelining where answers would be
			// ambiguous; two SEARCHes' "* SEARCH" cannot be told apart
			// (servers run them in parallel: Dovecot does).
			(k == kSearch || k == kUIDSearch) && searching ||
			k == kDelete && (n < stressMinMessages || len(batch)+2 > want) {
			continue
		}
		msg := 1 + cl.rng.Uint32N(max(n, 1))
		if k == kStore || k == kDelete {
			if stored[msg] {
				continue
			}
			stored[msg] = true
		}
		ends := info.ends
		switch k {
		case kSelect:
			add(k, "SELECT %s", mailbox)
			readOnly = false
		case kExamine:
			add(k, "EXAMINE %s", mailbox)
			readOnly = true
		case kFetch:
			switch cl.rng.IntN(6) {
			case 0:
				add(k, "FETCH %d:%d (FLAGS UID)", msg, min(n, msg+cl.rng.Uint32N(4)))
			case 1:
				add(k, "FETCH %d FLAGS", msg)
			default:
				add(k, "FETCH %d (UID FLAGS)", msg)
			}
		case kFetchBody:
			switch cl.rng.IntN(3) {
			case 0:
				add(k, "FETCH %d (UID BODY.PEEK[])", msg)
			case 1:
				add(k, "FETCH %d (BODY[] UID)", msg)
			default:
				add(k, "FETCH %d BODY.PEEK[]", msg)
			}
		case kUIDFetch:
			uid := cl.view.knownUID(cl.rng.IntN)
			switch r := cl.rng.IntN(3); {
			case uid != 0 && r == 0:
				add(k, "UID FETCH %d (FLAGS BODY.PEEK[])", uid)
			case uid != 0 && r == 1:
				add(k, "UID FETCH %d:* (FLAGS)", uid)
			default:
				add(k, "UID FETCH 1:* (FLAGS)")
			}
		case kStore:
			flag := cl.keyword
			switch cl.rng.IntN(4) {
			case 0:
				flag = `\Flagged`
			case 1:
				flag = `\Seen`
			}
			sign := "+"
			if cl.rng.IntN(2) == 0 {
				sign = "-"
			}
			if cl.rng.IntN(4) == 0 {
				add(k, "STORE %d %sFLAGS.SILENT (%s)", msg, sign, flag)
				break
			}
			cmd := add(k, "STORE %d %sFLAGS (%s)", msg, sign, flag)
			cmd.storeN, cmd.storeFlag, cmd.storeAdd = msg, flag, sign == "+"
			cmd.storeStrict = flag == cl.keyword && cl.strictKeyword
		case kDelete:
			// Nobody removes \Deleted: its STORE's answer is checked.
			cmd := add(kStore, `STORE %d +FLAGS (\Deleted)`, msg)
			cmd.storeN, cmd.storeFlag, cmd.storeAdd, cmd.storeStrict = msg, `\Deleted`, true, true
			add(kExpunge, "EXPUNGE")
		case kExpunge:
			add(k, "EXPUNGE")
		case kAppend:
			cmd := cl.appendCmd()
			batch = append(batch, cmd)
			ends = cmd.sync
		case kCopy:
			hi := min(n, msg+cl.rng.Uint32N(3))
			set := strconv.FormatUint(uint64(msg), 10)
			if hi > msg {
				set += ":" + strconv.FormatUint(uint64(hi), 10)
			}
			if cl.rng.IntN(2) == 0 && cl.sh.box2Count.Load() < stressMaxMessages {
				cmd := add(k, "COPY %s %s", set, quote(cl.sh.box2))
				cmd.copied = int64(hi - msg + 1)
			} else {
				add(k, "COPY %s %s", set, mailbox)
			}
		case kSearch:
			searching = true
			criteria := [...]string{"ALL", "FLAGGED", "UNSEEN", "DELETED", "NOT DELETED", "KEYWORD " + cl.keyword}
			add(k, "SEARCH %s", criteria[cl.rng.IntN(len(criteria))])
		case kUIDSearch:
			searching = true
			criteria := [...]string{"ALL", "FLAGGED", "KEYWORD " + cl.keyword}
			add(k, "UID SEARCH %s", criteria[cl.rng.IntN(len(criteria))])
		case kList:
			add(k, `LIST "" "%%"`)
		case kStatus:
			add(k, "STATUS %s (MESSAGES UIDNEXT UNSEEN)", quote(cl.sh.box2))
		case kNoop:
			add(k, "NOOP")
		case kIdle:
			add(k, "IDLE")
		case kLogout:
			add(k, "LOGOUT")
		}
		if !info.quiet || k == kDelete {
			// kDelete ends in an EXPUNGE: numbers after it could name
			// other messages by the time the server reads them.
			stable = false
		}
		if ends {
			break
		}
	}
	if len(batch) == 0 {
		add(kNoop, "NOOP")
	}
	return batch
}

// appendCmd returns an APPEND of a new small message to the mailbox,
// with a non-synchronizing literal if the server allows one for its
// size (LITERAL+, or LITERAL- up to 4096 bytes), else a synchronizing one.
func (cl *stressClient) appendCmd() *stressCmd {
	size := stressMsgMin + cl.rng.IntN(stressMsgSpread)
	cl.appended++
	m, err := newMessage(int64(size), fmt.Sprintf("stress.%d.%d.%d.%d", cl.cfg.seed, cl.id, cl.appended, time.Now().UnixNano()))
	if err != nil {
		panic(err) // stressMsgMin is above what newMessage needs
	}
	var body bytes.Buffer
	m.WriteTo(&body)
	flags := ""
	if cl.rng.IntN(3) == 0 {
		flags = ` (\Seen)`
	}
	sync := !cl.caps.literalPlus && !(cl.caps.literalMinus && size <= literalMinusMax)
	plus := "+"
	if sync {
		plus = ""
	}
	return &stressCmd{
		kind: kAppend,
		line: fmt.Sprintf("APPEND %s%s {%d%s}", quote(cl.cfg.mailbox), flags, size, plus),
		body: body.Bytes(),
		sync: sync,
	}
}

// exchange writes batch in one write and reads until every command in it
// is answered, checking each response. It returns an error if the
// connection is no longer usable: lost, or stalled (both reported).
func (cl *stressClient) exchange(ctx context.Context, batch []*stressCmd) error {
	var buf bytes.Buffer
	now := time.Now()
	for _, cmd := range batch {
		cl.tagN++
		cmd.tag = "S" + strconv.FormatUint(cl.tagN, 10)
		cmd.deadline = now.Add(cl.cfg.stall)
		buf.WriteString(cmd.String())
		buf.WriteString("\r\n")
		if cmd.body != nil && !cmd.sync {
			buf.Write(cmd.body)
			buf.WriteString("\r\n")
			cmd.bodySent = true
		}
		if cmd.kind == kSelect || cmd.kind == kExamine {
			// Planned first in its batch: nothing else is in flight.
			cl.view.reset()
			cl.selected, cl.readOnly, cl.uidValidity = false, cmd.kind == kExamine, 0
		}
	}
	cl.inflight = append(cl.inflight[:0], batch...)
	if err := cl.write(buf.Bytes()); err != nil {
		return cl.lost(err)
	}
	timer := time.NewTimer(cl.cfg.stall)
	defer timer.Stop()
	for len(cl.inflight) > 0 {
		oldest := cl.inflight[0]
		for _, cmd := range cl.inflight {
			if cmd.deadline.Before(oldest.deadline) {
				oldest = cmd
			}
		}
		timer.Reset(time.Until(oldest.deadline))
		select {
		case rd, ok := <-cl.resps:
			if !ok || rd.err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return cl.lost(rd.err)
			}
			if err := cl.handle(rd.resp); err != nil {
				return cl.lost(err)
			}
		case <-cl.idleC:
			cl.stopIdle()
			for _, cmd := range cl.inflight {
				if cmd.kind == kIdle && cmd.idling && !cmd.doneSent {
					cmd.doneSent = true
					cmd.deadline = time.Now().Add(cl.cfg.stall)
					if err := cl.write([]byte("DONE\r\n")); err != nil {
						return cl.lost(err)
					}
				}
			}
		case <-timer.C:
			if time.Now().Before(oldest.deadline) {
				continue
			}
			cl.sh.violate(violation{
				Client:  cl.id,
				Command: oldest.String(),
				Why:     fmt.Sprintf("no answer within %v (stall)", cl.cfg.stall),
			}, true)
			return errStall
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// write writes b in one write, bounded by the stall time.
func (cl *stressClient) write(b []byte) error {
	cl.c.nc.SetWriteDeadline(time.Now().Add(cl.cfg.stall))
	_, err := cl.c.nc.Write(b)
	return err
}

// lost reports a connection that failed with commands in flight, unless
// an unexpected BYE already explained it.
func (cl *stressClient) lost(err error) error {
	if err == nil {
		err = errors.New("connection closed")
	}
	if !cl.bye {
		cl.violate(nil, fmt.Sprintf("connection lost with %d commands in flight: %v", len(cl.inflight), err))
	}
	return err
}

func (cl *stressClient) stopIdle() {
	if cl.idleT != nil {
		cl.idleT.Stop()
	}
	cl.idleT, cl.idleC = nil, nil
}

// violate reports a violation about resp (nil: none) with the commands
// in flight.
func (cl *stressClient) violate(resp *stressResp, why string) {
	cl.violateCmd(cl.inflightString(), resp, why)
}

func (cl *stressClient) violateCmd(cmd string, resp *stressResp, why string) {
	v := violation{Client: cl.id, Command: cmd, Why: why}
	if resp != nil {
		v.Response = report(resp.text)
	}
	cl.sh.violate(v, false)
}

func (cl *stressClient) inflightString() string {
	var b strings.Builder
	for i, cmd := range cl.inflight {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(cmd.String())
	}
	s := b.String()
	if len(s) > reportMax {
		s = s[:reportMax] + "…"
	}
	return s
}

// handle checks one response and applies it to the model.
func (cl *stressClient) handle(resp *stressResp) error {
	switch t := resp.text; {
	case len(t) > 0 && t[0] == '+':
		return cl.continuation(resp)
	case bytes.HasPrefix(t, []byte("* ")):
		cl.untagged(resp)
	default:
		cl.tagged(resp)
	}
	return nil
}

// continuation answers "+": the literal of an APPEND, or the start of
// IDLE (DONE follows after a short wait).
func (cl *stressClient) continuation(resp *stressResp) error {
	var cmd *stressCmd
	for _, c := range cl.inflight {
		if c.sync && !c.bodySent || c.kind == kIdle && !c.idling {
			cmd = c
			break
		}
	}
	if cmd == nil {
		cl.violate(resp, "continuation request, but no command waits for one")
		return nil
	}
	if cmd.kind == kIdle {
		cmd.idling = true
		wait := stressIdleMin + time.Duration(cl.rng.Int64N(int64(stressIdleSpread)))
		cmd.deadline = time.Now().Add(wait + cl.cfg.stall)
		cl.idleT = time.NewTimer(wait)
		cl.idleC = cl.idleT.C
		return nil
	}
	cmd.bodySent = true
	cmd.deadline = time.Now().Add(cl.cfg.stall)
	return cl.write(append(cmd.body, '\r', '\n'))
}

// tagged checks a tagged response and completes its command.
func (cl *stressClient) tagged(resp *stressResp) {
	p := newRespParser(resp)
	tag := string(p.Atom())
	p.SP()
	status := strings.ToUpper(string(p.Atom()))
	i := slices.IndexFunc(cl.inflight, func(c *stressCmd) bool { return c.tag == tag })
	if i < 0 {
		why := "tagged response for a tag not in flight"
		if n, err := strconv.ParseUint(strings.TrimPrefix(tag, "S"), 10, 64); err == nil && strings.HasPrefix(tag, "S") && n <= cl.tagN {
			why = "tagged response for a command already answered"
		}
		cl.violate(resp, why)
		return
	}
	cmd := cl.inflight[i]
	cl.inflight = slices.Delete(cl.inflight, i, i+1)
	cl.sh.commands.Add(1)
	info := &stressKinds[cmd.kind]
	switch status {
	case "OK":
	case "NO":
		if !info.mayNO {
			cl.violateCmd(cmd.String(), resp, info.name+" answered NO, which no other client's doing explains")
		}
	case "BAD":
		cl.violateCmd(cmd.String(), resp, "BAD, but the command is valid")
	default:
		cl.violateCmd(cmd.String(), resp, "tagged response neither OK, NO nor BAD")
	}
	ok := status == "OK"
	switch cmd.kind {
	case kSelect, kExamine:
		cl.view.selecting = false
		cl.selected = ok
		if ok && !cmd.sawExists {
			cl.violateCmd(cmd.String(), resp, "answered OK without EXISTS (RFC 3501 §6.3.1: EXISTS is required)")
		}
	case kStore:
		if ok && cmd.storeN != 0 && cmd.flagsSeen && !cmd.flagsMatch {
			if cmd.storeStrict {
				verb := "with"
				if !cmd.storeAdd {
					verb = "without"
				}
				v := violation{Client: cl.id, Command: cmd.String(), Response: report(resp.text),
					Why: fmt.Sprintf("answered OK, but no FETCH response for message %d showed it %s %s, and it was not expunged", cmd.storeN, verb, cmd.storeFlag)}
				cl.sh.suspect(cl.uidValidity, cl.view.uid(cmd.storeN), v)
			} else {
				cl.sh.flagRaces.Add(1)
			}
		}
	case kSearch:
		if cmd.searchMax > cl.view.count() && cl.sh.cfg.searchAhead {
			cl.sh.searchAhead.Add(1)
		} else if cmd.searchMax > cl.view.count() {
			cl.violateCmd(cmd.String(), &stressResp{text: cmd.searchResp}, fmt.Sprintf("SEARCH found message %d, but the client knows of %d messages, and no EXISTS announced it by the tagged answer", cmd.searchMax, cl.view.count()))
		} else if cmd.searchMax > 0 {
			cl.sh.lateExists.Add(1)
		}
	case kCopy:
		if ok && cmd.copied > 0 {
			cl.sh.box2Count.Add(cmd.copied)
		}
	case kAppend:
		if ok && !cmd.bodySent {
			cl.violateCmd(cmd.String(), resp, "answered OK before its literal was sent")
		}
	case kIdle:
		cl.stopIdle()
	case kLogout:
		cl.loggedOut = true
	}
}

// untagged checks an untagged response and applies it to the view.
func (cl *stressClient) untagged(resp *stressResp) {
	p := newRespParser(resp)
	p.pos = len("* ")
	num, hasNum := p.Number()
	if hasNum && !p.SP() {
		cl.violate(resp, "untagged response does not parse")
		return
	}
	name := strings.ToUpper(string(p.Atom()))
	check := func(why string) {
		if why != "" {
			cl.violate(resp, why)
		}
	}
	switch {
	case hasNum && name == "EXISTS":
		for _, cmd := range cl.inflight {
			if cmd.kind == kSelect || cmd.kind == kExamine {
				cmd.sawExists = true
			}
		}
		check(cl.view.exists(num))
	case hasNum && name == "EXPUNGE":
		// RFC 3501 §7.4.1: no EXPUNGE during FETCH, STORE, SEARCH. They
		// are pipelined with others, so only when nothing else runs.
		quietOnly := true
		for _, cmd := range cl.inflight {
			quietOnly = quietOnly && stressKinds[cmd.kind].quiet
		}
		if quietOnly {
			cl.violate(resp, "EXPUNGE while only FETCH, STORE or SEARCH are in progress (RFC 3501 §7.4.1)")
		}
		if !cl.view.selecting {
			cl.sh.sawExpunge(cl.uidValidity, cl.view.uid(num))
		}
		check(cl.view.expunge(num))
	case hasNum && name == "FETCH":
		if !p.SP() {
			cl.violate(resp, "FETCH response does not parse")
			return
		}
		d, ok := p.Fetch()
		if !ok {
			cl.violate(resp, "FETCH response does not parse")
			return
		}
		check(cl.view.fetch(num, d.uid, d.hasUID))
		if len(cl.inflight) > 0 && d.hasFlags {
			// The oldest command in flight is the one being answered.
			if cmd := cl.inflight[0]; cmd.kind == kStore && cmd.storeN == num {
				cmd.flagsSeen = true
				has := slices.ContainsFunc(d.flags, func(f []byte) bool { return strings.EqualFold(string(f), cmd.storeFlag) })
				if has == cmd.storeAdd {
					cmd.flagsMatch = true
				}
			}
		}
		if d.hasBody && d.hasUID && !cl.view.selecting {
			check(cl.sh.checkBody(cl.uidValidity, d.uid, d.body))
		}
	case !hasNum && name == "SEARCH":
		i := slices.IndexFunc(cl.inflight, func(c *stressCmd) bool { return c.kind == kSearch || c.kind == kUIDSearch })
		if i < 0 || cl.inflight[i].kind != kSearch {
			return
		}
		cmd := cl.inflight[i]
		for p.SP() {
			n, ok := p.Number()
			if !ok {
				break
			}
			if n > cl.view.count() && n <= stressMaxView {
				// Checked at the tagged answer: some servers (Cyrus 3)
				// announce a message's EXISTS after the SEARCH naming it.
				cmd.searchMax = max(cmd.searchMax, n)
				cmd.searchResp = slices.Clone(resp.text)
				continue
			}
			if why := cl.view.searchHit(n); why != "" {
				cl.violate(resp, why)
				break
			}
		}
	case !hasNum && name == "STATUS":
		// stress asks for the STATUS of the other mailbox only.
		if n, ok := statusMessages(resp); ok {
			cl.sh.box2Count.Store(int64(n))
		}
	case !hasNum && name == "OK":
		code, ok := cutPrefixFold(resp.text[p.pos:], " [UIDVALIDITY ")
		if !ok || !cl.view.selecting {
			return
		}
		q := &respParser{b: code}
		if v, ok := q.Number(); ok {
			cl.uidValidity = v
		}
	case !hasNum && name == "BYE":
		if !slices.ContainsFunc(cl.inflight, func(c *stressCmd) bool { return c.kind == kLogout }) {
			cl.violate(resp, "BYE, but no LOGOUT in flight")
			cl.bye = true
		}
	case !hasNum && name == "CAPABILITY":
		if cs, ok := parseCaps(resp.text); ok {
			cl.caps = cs
		}
	}
}
