package legacysim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// These tests talk raw IMAP, so that what each fault puts on the wire is
// visible: S: lines are matched in order, untagged lines not listed are
// ignored unless the test looks at them.

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

type testSim struct {
	*Server
	addr, lmtp string
}

func start(t *testing.T, cfg Config) *testSim {
	t.Helper()
	checkNoLeaks(t)
	if cfg.Users == nil {
		cfg.Users = map[string]string{"alice": "pw", "admin": "root"}
		cfg.Admin = "admin"
	}
	s := New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 2)
	go func() { served <- s.Serve(ln) }()
	go func() { served <- s.ServeLMTP(lln) }()
	t.Cleanup(func() {
		s.Close()
		for range 2 {
			if err := <-served; !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		}
	})
	return &testSim{Server: s, addr: ln.Addr().String(), lmtp: lln.Addr().String()}
}

func testMessage(i int) []byte {
	return []byte(fmt.Sprintf("From: a@example.org\r\nSubject: message %d\r\nMessage-ID: <m%d@example.org>\r\n\r\nbody %d\r\n", i, i, i))
}

// seed gives alice's INBOX n messages with UIDs 1..n.
func (s *testSim) seed(t *testing.T, n int) {
	t.Helper()
	msgs := make([]NewMessage, n)
	for i := range msgs {
		msgs[i] = NewMessage{Body: testMessage(i + 1)}
	}
	if _, err := s.ResetMailbox("alice", "INBOX", msgs); err != nil {
		t.Fatal(err)
	}
}

type conn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (s *testSim) dial(t *testing.T) *conn {
	t.Helper()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	cn := &conn{t: t, c: c, br: bufio.NewReader(c)}
	cn.expect("* OK")
	return cn
}

func (s *testSim) login(t *testing.T, user, pass string) *conn {
	c := s.dial(t)
	c.run("l LOGIN " + user + " " + pass)
	return c
}

func (c *conn) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, line+"\r\n"); err != nil {
		c.t.Fatal(err)
	}
}

func (c *conn) line() string {
	c.t.Helper()
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return strings.TrimRight(l, "\r\n")
}

// expect reads one line and checks its prefix.
func (c *conn) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want %q...", l, prefix)
	}
	return l
}

// await reads lines until one starts with prefix.
func (c *conn) await(prefix string) {
	c.t.Helper()
	for !strings.HasPrefix(c.line(), prefix) {
	}
}

// run sends a tagged command and returns every line up to and including an
// OK tagged response.
func (c *conn) run(cmd string) []string {
	c.t.Helper()
	tag, _, _ := strings.Cut(cmd, " ")
	c.send(cmd)
	return c.until(tag)
}

func (c *conn) until(tag string) []string {
	c.t.Helper()
	var lines []string
	for {
		l := c.line()
		lines = append(lines, l)
		if strings.HasPrefix(l, tag+" ") {
			if !strings.HasPrefix(l, tag+" OK") {
				c.t.Fatalf("%s failed: %q", tag, lines)
			}
			return lines
		}
	}
}

// transcript checks that want appears in got, in order (other lines may be
// in between) and that none of the forbidden lines do.
func transcript(t *testing.T, got []string, want []string, forbidden ...string) {
	t.Helper()
	i := 0
	for _, l := range got {
		for _, f := range forbidden {
			if strings.HasPrefix(l, f) {
				t.Errorf("forbidden %q in %q", f, got)
			}
		}
		if i < len(want) && strings.HasPrefix(l, want[i]) {
			i++
		}
	}
	if i < len(want) {
		t.Errorf("missing %q in\n%s", want[i], strings.Join(got, "\n"))
	}
}

func (s *testSim) flags(t *testing.T, uid imap.UID) []imap.Flag {
	t.Helper()
	msgs, err := s.Messages("alice", "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.UID == uid {
			return m.Flags
		}
	}
	return nil
}

func has(flags []imap.Flag, f imap.Flag) bool {
	for _, g := range flags {
		if g == f {
			return true
		}
	}
	return false
}

func (s *testSim) uids(t *testing.T) []imap.UID {
	t.Helper()
	msgs, err := s.Messages("alice", "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	var l []imap.UID
	for _, m := range msgs {
		l = append(l, m.UID)
	}
	return l
}

// expungeSecond has a second session delete and expunge message 2 (UID 2).
func (s *testSim) expungeSecond(t *testing.T) {
	b := s.login(t, "alice", "pw")
	b.run("b1 SELECT INBOX")
	b.run(`b2 STORE 2 +FLAGS.SILENT (\Deleted)`)
	transcript(t, b.run("b3 EXPUNGE"), []string{"* 2 EXPUNGE", "b3 OK"})
	b.run("b4 LOGOUT")
}

// A correct server keeps the session's numbering until it is sent EXPUNGE,
// sends no EXPUNGE during FETCH, STORE or SEARCH (RFC 3501 §7.4.1, RFC 9051
// §7.5.1), and skips a message that is gone.
func TestCorrectServerKeepsSessionNumbering(t *testing.T) {
	s := start(t, Config{})
	s.seed(t, 5)
	a := s.login(t, "alice", "pw")
	transcript(t, a.run("a1 SELECT INBOX"), []string{"* 5 EXISTS", "* OK [UIDVALIDITY", "a1 OK [READ-WRITE]"})
	s.expungeSecond(t)

	transcript(t, a.run("a2 FETCH 1:* (UID)"),
		[]string{"* 1 FETCH (UID 1)", "* 3 FETCH (UID 3)", "* 4 FETCH (UID 4)", "* 5 FETCH (UID 5)", "a2 OK"},
		"* 2 EXPUNGE", "* 2 FETCH")
	transcript(t, a.run("a3 SEARCH ALL"), []string{"* SEARCH 1 3 4 5", "a3 OK"}, "* 2 EXPUNGE")
	transcript(t, a.run(`a4 STORE 4 +FLAGS (\Flagged)`), []string{`* 4 FETCH (FLAGS (\Flagged))`, "a4 OK"}, "* 2 EXPUNGE")
	transcript(t, a.run(`a5 STORE 2 +FLAGS (\Flagged)`), []string{"a5 OK"}, "* 2 FETCH")
	transcript(t, a.run("a6 NOOP"), []string{"* 2 EXPUNGE", "a6 OK"})
	transcript(t, a.run("a7 FETCH 3 (UID FLAGS)"), []string{`* 3 FETCH (UID 4 FLAGS (\Flagged))`, "a7 OK"})

	if !has(s.flags(t, 4), imap.FlagFlagged) || has(s.flags(t, 5), imap.FlagFlagged) {
		t.Errorf("STORE 4 flagged the wrong message: %v", s.uids(t))
	}
	for _, w := range s.Writes(0) {
		if w.Wrong() {
			t.Errorf("wrong write by a correct server: %+v", w)
		}
	}
	// A number beyond the session's view is an error, not a no-op.
	a.send("a8 FETCH 9 (UID)")
	a.expect("a8 BAD")
}

// StaleMsgno: STORE 4 after another session's expunge hits the neighbour.
func TestStaleMsgnoHitsTheNeighbour(t *testing.T) {
	s := start(t, Config{StaleMsgno: true})
	s.seed(t, 5)
	a := s.login(t, "alice", "pw")
	a.run("a1 SELECT INBOX")
	mark := s.WriteSeq()
	s.expungeSecond(t)

	transcript(t, a.run(`a2 STORE 4 +FLAGS (\Deleted)`), []string{`* 4 FETCH (FLAGS (\Deleted))`, "a2 OK"}, "* 2 EXPUNGE")
	// Its own expunge first (UID 5, still number 5 in its view), then the
	// other session's.
	transcript(t, a.run("a3 EXPUNGE"), []string{"* 5 EXPUNGE", "* 2 EXPUNGE", "a3 OK"})
	if got := s.uids(t); fmt.Sprint(got) != "[1 3 4]" {
		t.Errorf("left %v, want [1 3 4]: UID 5 destroyed instead of UID 4", got)
	}
	var wrong []WriteRecord
	for _, w := range s.Writes(mark) {
		if w.Wrong() {
			wrong = append(wrong, w)
		}
	}
	if len(wrong) != 1 || wrong[0].Num != 4 || wrong[0].UID != 5 || wrong[0].Intended != 4 || wrong[0].Op != OpStore {
		t.Errorf("wrong writes %+v, want one STORE 4 on UID 5 meant for UID 4", wrong)
	}
}

// EarlyExpunge: the EXPUNGE comes inside the STORE, and the number the
// client sent before it could see it is applied after it.
func TestEarlyExpungeInsideStoreAndFetch(t *testing.T) {
	s := start(t, Config{EarlyExpunge: true, RaceWindow: -1})
	s.seed(t, 6)
	a := s.login(t, "alice", "pw")
	a.run("a1 SELECT INBOX")
	s.expungeSecond(t)
	transcript(t, a.run(`a2 STORE 4 +FLAGS (\Deleted)`),
		[]string{"* 2 EXPUNGE", `* 4 FETCH (FLAGS (\Deleted))`, "a2 OK"})
	if !has(s.flags(t, 5), imap.FlagDeleted) || has(s.flags(t, 4), imap.FlagDeleted) {
		t.Errorf("STORE 4 should have hit UID 5: %v %v", s.flags(t, 4), s.flags(t, 5))
	}

	// With no command in progress: the EXPUNGE arrives unasked, and the
	// command the client sends without having read it is resolved after it.
	s.seed(t, 6)
	a = s.login(t, "alice", "pw")
	a.run("a1 SELECT INBOX")
	mark := s.WriteSeq()
	s.expungeSecond(t)
	a.expect("* 2 EXPUNGE") // nothing was sent: this is unsolicited
	transcript(t, a.run(`a2 STORE 4 +FLAGS (\Flagged)`), []string{`* 4 FETCH (FLAGS (\Flagged))`, "a2 OK"}, "* 2 EXPUNGE")
	flagged := 0
	for _, w := range s.Writes(mark) {
		if w.Op == OpStore && fmt.Sprint(w.Flags) == `[\Flagged]` {
			flagged++
			if w.UID != 5 || w.Intended != 4 || !w.Wrong() {
				t.Errorf("write %+v, want UID 5 meant for UID 4", w)
			}
		}
	}
	if flagged != 1 {
		t.Errorf("%d \\Flagged writes, want 1", flagged)
	}

	// In the middle of a FETCH: another session expunges while the response
	// is being written (the window is aimed at with Watch).
	s2 := start(t, Config{EarlyExpunge: true, RaceWindow: 200 * time.Millisecond, Seed: 1})
	s2.seed(t, 6)
	a = s2.login(t, "alice", "pw")
	a.run("a1 SELECT INBOX")
	b := s2.login(t, "alice", "pw")
	b.run("b1 SELECT INBOX")
	b.run(`b2 STORE 1 +FLAGS.SILENT (\Deleted)`)
	events, stop := s2.Watch()
	defer stop()
	a.send("a2 FETCH 1:6 (UID)")
	if ev := <-events; ev.Kind != WindowEarlyExpunge {
		t.Fatalf("event %+v", ev)
	}
	b.run("b3 EXPUNGE")
	lines := a.until("a2")
	var expungeAt, fetches int
	uids := map[string]bool{}
	for i, l := range lines {
		if l == "* 1 EXPUNGE" {
			expungeAt = i
		}
		if strings.HasPrefix(l, "* ") && strings.Contains(l, " FETCH (UID ") {
			fetches++
			uids[strings.TrimSuffix(l[strings.Index(l, "UID ")+4:], ")")] = true
		}
	}
	if expungeAt == 0 || expungeAt >= len(lines)-1 {
		t.Errorf("no EXPUNGE in the middle of the FETCH responses:\n%s", strings.Join(lines, "\n"))
	}
	if fetches != 5 {
		t.Errorf("%d FETCH responses, want 5 (one message was expunged mid-way):\n%s", fetches, strings.Join(lines, "\n"))
	}
	// The numbers after the EXPUNGE were resolved in the shifted view: one
	// message the client asked for (and that still exists) was skipped.
	skipped := 0
	for _, u := range []string{"2", "3", "4", "5", "6"} {
		if !uids[u] {
			skipped++
		}
	}
	if skipped != 1 {
		t.Errorf("fetched UIDs %v, want all of 2..6 but one", uids)
	}
}

// SessionSeen: \Seen stays in the session until CLOSE, and two write-backs
// in the same window lose one of them.
func TestSessionSeenIsCachedAndLost(t *testing.T) {
	s := start(t, Config{SessionSeen: true, RaceWindow: 200 * time.Millisecond})
	s.seed(t, 3)
	a := s.login(t, "alice", "pw")
	b := s.login(t, "alice", "pw")
	a.run("a1 SELECT INBOX")
	b.run("b1 SELECT INBOX")
	transcript(t, a.run(`a2 STORE 1 +FLAGS (\Seen)`), []string{`* 1 FETCH (FLAGS (\Seen))`, "a2 OK"})
	transcript(t, a.run(`a3 FETCH 2 (BODY[TEXT])`), []string{`* 2 FETCH (FLAGS (\Seen) BODY[TEXT]`})
	transcript(t, b.run(`b2 FETCH 1:2 (FLAGS)`), []string{`* 1 FETCH (FLAGS ())`, `* 2 FETCH (FLAGS ())`, "b2 OK"})
	if rec, _ := s.SeenRecord("alice", "INBOX"); len(rec) != 0 {
		t.Errorf("seen record %v before CLOSE, want empty", rec)
	}
	transcript(t, b.run(`b3 STORE 3 +FLAGS (\Seen)`), []string{`* 3 FETCH (FLAGS (\Seen))`})

	events, stop := s.Watch()
	defer stop()
	a.send("a4 CLOSE")
	if ev := <-events; ev.Kind != WindowSeenFlush {
		t.Fatalf("event %+v", ev)
	}
	b.send("b4 CLOSE") // reads the record while a's write-back is in its window
	a.until("a4")
	b.until("b4")
	// The window's length is jittered, so either write-back can be last;
	// whichever is, the other one's changes are gone.
	rec, _ := s.SeenRecord("alice", "INBOX")
	lost := 0
	for _, w := range s.Writes(0) {
		if w.Op == OpSeenLost {
			lost++
		}
	}
	switch rec.String() {
	case "3": // a's 1:2 lost
		if lost != 2 {
			t.Errorf("%d SEEN-WRITE-BACK records, want 2", lost)
		}
	case "1:2": // b's 3 lost
		if lost != 1 {
			t.Errorf("%d SEEN-WRITE-BACK records, want 1", lost)
		}
	default:
		t.Errorf("seen record %v, want 3 or 1:2 (one session's update lost)", rec)
	}
}

// DeliveryRace: a flag stored while a delivery rewrites the index is lost;
// a CLOSE after a non-UID \Seen on the last message marks new mail \Seen.
func TestDeliveryRace(t *testing.T) {
	s := start(t, Config{DeliveryRace: true, RaceWindow: 200 * time.Millisecond})
	s.seed(t, 3)
	a := s.login(t, "alice", "pw")
	a.run("a1 SELECT INBOX")
	events, stop := s.Watch()
	defer stop()
	delivered := make(chan error, 1)
	go func() {
		_, err := s.Deliver("alice", "INBOX", testMessage(4))
		delivered <- err
	}()
	if ev := <-events; ev.Kind != WindowDelivery {
		t.Fatalf("event %+v", ev)
	}
	transcript(t, a.run(`a2 STORE 1 +FLAGS (\Flagged)`), []string{`* 1 FETCH (FLAGS (\Flagged))`, "a2 OK"})
	if err := <-delivered; err != nil {
		t.Fatal(err)
	}
	if has(s.flags(t, 1), imap.FlagFlagged) {
		t.Errorf("the flag survived the delivery's index rewrite")
	}

	// The trailing run: a sees 4 messages, marks the last one by number;
	// mail 5 arrives; CLOSE marks it \Seen.
	transcript(t, a.run("a3 NOOP"), []string{"* 4 EXISTS"})
	a.run(`a4 STORE 4 +FLAGS (\Seen)`)
	if _, err := s.Deliver("alice", "INBOX", testMessage(5)); err != nil {
		t.Fatal(err)
	}
	a.run("a5 CLOSE")
	if !has(s.flags(t, 5), imap.FlagSeen) {
		t.Errorf("new mail not marked \\Seen by CLOSE after STORE 4")
	}
	// The same by UID is harmless.
	a.run("a6 SELECT INBOX")
	a.run(`a7 UID STORE 5 -FLAGS (\Seen)`)
	a.run(`a8 UID STORE 5 +FLAGS (\Seen)`)
	if _, err := s.Deliver("alice", "INBOX", testMessage(6)); err != nil {
		t.Fatal(err)
	}
	a.run("a9 CLOSE")
	if has(s.flags(t, 6), imap.FlagSeen) {
		t.Errorf("new mail marked \\Seen after a UID STORE")
	}
}

// With DeliveryRace off a delivery is atomic.
func TestDeliveryIsAtomicWhenOff(t *testing.T) {
	s := start(t, Config{SessionSeen: true})
	s.seed(t, 2)
	a := s.login(t, "alice", "pw")
	a.run("a1 SELECT INBOX")
	a.run(`a2 STORE 2 +FLAGS (\Seen \Flagged)`)
	transcript(t, a.run("a3 APPEND INBOX {"+fmt.Sprint(len(testMessage(3)))+"+}\r\n"+string(testMessage(3))),
		[]string{"* 3 EXISTS", "a3 OK [APPENDUID"})
	a.run(`a4 FETCH 3 (BODY[])`)
	a.run("a5 CLOSE")
	for uid, want := range map[imap.UID]string{1: "[]", 2: `[\Flagged \Seen]`, 3: `[\Seen]`} {
		if got := fmt.Sprint(s.flags(t, uid)); got != want {
			t.Errorf("UID %d: flags %s, want %s", uid, got, want)
		}
	}
}

// IDLE gets EXPUNGE and EXISTS at once (RFC 2177).
func TestIdle(t *testing.T) {
	s := start(t, Config{})
	s.seed(t, 3)
	a := s.login(t, "alice", "pw")
	a.run("a1 SELECT INBOX")
	a.send("a2 IDLE")
	a.expect("+ ")
	s.expungeSecond(t)
	a.await("* 2 EXPUNGE")
	if _, err := s.Deliver("alice", "INBOX", testMessage(4)); err != nil {
		t.Fatal(err)
	}
	a.await("* 3 EXISTS")
	a.send("DONE")
	a.until("a2")
}

func TestGroundTruthCommand(t *testing.T) {
	s := start(t, Config{StaleMsgno: true})
	s.seed(t, 3)
	a := s.login(t, "alice", "pw")
	a.run("a1 SELECT INBOX")
	a.send("a2 XGROUNDTRUTH alice")
	a.expect("a2 NO [NOPERM]")
	// A literal whose content looks like the command is not the command.
	lit := "x XGROUNDTRUTH alice\r\n"
	a.send(fmt.Sprintf("a3 APPEND INBOX {%d}", len(lit)))
	a.expect("+ ")
	a.send(lit)
	a.until("a3")
	s.expungeSecond(t)
	a.run(`a4 STORE 2 +FLAGS (\Flagged)`)

	adm := s.dial(t)
	adm.send("p1 XGROUNDTRUTH alice")
	adm.expect("p1 NO")
	adm.run("p2 LOGIN admin root")
	got := adm.run(`p3 XGROUNDTRUTH "alice" INBOX`)
	transcript(t, got, []string{
		`* XGROUNDTRUTH MAILBOX "alice" "INBOX" UIDVALIDITY `,
		`* XGROUNDTRUTH MESSAGE 1 FLAGS () MESSAGE-ID "m1@example.org"`,
		`* XGROUNDTRUTH MESSAGE 3 FLAGS (\Flagged) MESSAGE-ID "m3@example.org"`,
		`* XGROUNDTRUTH MESSAGE 4 FLAGS () MESSAGE-ID ""`,
		`* XGROUNDTRUTH SEEN ""`,
		`* XGROUNDTRUTH WRITE `,
		`p3 OK XGROUNDTRUTH completed`,
	})
	if !strings.Contains(strings.Join(got, "\n"), `OP "STORE" FLAGS (\Flagged) KIND seq NUM 2 UID 3 INTENDED 0 WRONG`) {
		t.Errorf("no WRONG write line:\n%s", strings.Join(got, "\n"))
	}
	// The connection still works for imapserver afterwards.
	adm.run("p4 NOOP")
	adm.send("p5 XGROUNDTRUTH alice Trash")
	adm.expect("p5 NO [NONEXISTENT]")
}

func TestLMTPDelivers(t *testing.T) {
	s := start(t, Config{})
	c, err := net.Dial("tcp", s.lmtp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := textproto.NewConn(c)
	step := func(cmd string, code int) {
		t.Helper()
		if cmd != "" {
			if err := tc.PrintfLine("%s", cmd); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := tc.ReadResponse(code); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
	}
	step("", 220)
	step("LHLO localhost", 250)
	step("MAIL FROM:<x@example.org>", 250)
	step("RCPT TO:<nobody@example.org>", 550)
	step("RCPT TO:<alice@example.org>", 250)
	step("DATA", 354)
	w := tc.DotWriter()
	io.WriteString(w, "Message-ID: <lmtp@example.org>\r\n\r\n.leading dot\r\n")
	w.Close()
	step("", 250)
	step("QUIT", 221)

	msgs, err := s.Messages("alice", "INBOX")
	if err != nil || len(msgs) != 1 || msgs[0].MessageID != "lmtp@example.org" {
		t.Fatalf("messages %+v, %v", msgs, err)
	}
	a := s.login(t, "alice", "pw")
	a.run("a1 SELECT INBOX")
	got := a.run("a2 FETCH 1 (BODY.PEEK[TEXT])")
	transcript(t, got, []string{"* 1 FETCH (BODY[TEXT] {14}", ".leading dot", "a2 OK"})
}

func TestSetFaults(t *testing.T) {
	var c Config
	if err := c.SetFaults("stale-msgno, delivery-race"); err != nil || c.Faults() != "stale-msgno,delivery-race" {
		t.Errorf("%v %q", err, c.Faults())
	}
	if err := c.SetFaults("all"); err != nil || c.Faults() != "stale-msgno,early-expunge,session-seen,delivery-race" {
		t.Errorf("%v %q", err, c.Faults())
	}
	if err := c.SetFaults("none"); err != nil || c.Faults() != "none" {
		t.Errorf("%v %q", err, c.Faults())
	}
	if err := c.SetFaults("bogus"); err == nil {
		t.Errorf("no error for an unknown fault")
	}
}

// Close ends sessions that sit in a fault window.
func TestCloseDuringWindow(t *testing.T) {
	s := start(t, Config{DeliveryRace: true, RaceWindow: MaxRaceWindow})
	events, stop := s.Watch()
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Deliver("alice", "INBOX", testMessage(1))
	}()
	<-events
	ctx, cancel := context.WithTimeout(context.Background(), MaxRaceWindow/2)
	defer cancel()
	s.Close()
	select {
	case <-done:
	case <-ctx.Done():
		t.Errorf("Close did not end the window")
	}
}
