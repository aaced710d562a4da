package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// stressOut is what the tests read of stress's JSON line.
type stressOut struct {
	Sessions      int
	Errors        int64
	FirstError    string `json:"first_error"`
	Rounds        int64
	Commands      int64
	Reconnects    int64
	Violations    int64
	Stalls        int64
	FlagRaces     int64       `json:"flag_races"`
	LateExists    int64       `json:"late_exists"`
	SearchAhead   int64       `json:"search_ahead"`
	ViolationList []violation `json:"violation_list"`
}

// runStressCLI runs imapload with args and returns its exit status and
// the result line.
func runStressCLI(t *testing.T, args ...string) (int, stressOut) {
	t.Helper()
	var out, errb strings.Builder
	code := run(args, &out, &errb)
	var r stressOut
	if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
		t.Fatalf("exit %d, output %q, stderr %q: %v", code, out.String(), errb.String(), err)
	}
	t.Logf("exit %d: %s", code, strings.TrimSpace(out.String()))
	return code, r
}

// TestStressMemServer runs the checker against go-imap's in-memory
// server, with one bug of it worked around (see zeroFetchFilter): no
// violation may be found.
func TestStressMemServer(t *testing.T) {
	t.Parallel()
	mem := imapmemserver.New()
	u := imapmemserver.NewUser("stress", "stress-pw")
	if err := u.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	for k := 0; k < 30; k++ {
		m, err := newMessage(1000+int64(k), fmt.Sprintf("pre.%d", k))
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		m.WriteTo(&b)
		if _, err := u.Append("INBOX", bytes.NewReader(b.Bytes()), &imap.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mem.AddUser(u)
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}},
		InsecureAuth: true,
		Logger:       testLogger{t},
	})
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &zeroFetchFilter{Listener: tcp}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})

	code, r := runStressCLI(t, "-addr", ln.Addr().String(), "-mode", "stress",
		"-user", "stress", "-pass", "stress-pw", "-sessions", "4", "-seed", "3",
		"-duration", "3s", "-max-time", "20s")
	if code != 0 || r.Errors != 0 || r.Violations != 0 || r.Stalls != 0 {
		t.Errorf("exit %d, %d errors (%s), %d violations: %+v", code, r.Errors, r.FirstError, r.Violations, r.ViolationList)
	}
	t.Logf("%d \"* 0 FETCH\" responses of imapmemserver dropped", ln.dropped.Load())
	if r.Sessions != 4 || r.Commands < 500 || r.Rounds < 200 || r.Reconnects == 0 {
		t.Errorf("%d sessions, %d rounds, %d commands, %d reconnects: too little done", r.Sessions, r.Rounds, r.Commands, r.Reconnects)
	}
}

// zeroFetchFilter works around a bug of go-imap v2.0.0-beta.8's
// imapmemserver that the checker finds: a UID FETCH that matches a message
// appended by another session and not announced yet with EXISTS is
// answered "* 0 FETCH (UID …)" (MailboxView.Fetch writes the number
// EncodeSeqNum returns, 0, where it should skip the message, as it does
// for a FETCH by number). It drops exactly those responses from what the
// server writes, which is what the fixed server would send.
type zeroFetchFilter struct {
	net.Listener
	dropped atomic.Int64
}

func (l *zeroFetchFilter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	fc := &filteredConn{Conn: c, pw: pw, done: make(chan struct{})}
	go func() {
		defer close(fc.done)
		defer pr.Close()
		l.filter(pr, c)
	}()
	return fc, nil
}

// filter copies whole responses (lines and literals, framed by the
// literals' lengths) from r to w, less "* 0 FETCH" ones, until r or w
// fails.
func (l *zeroFetchFilter) filter(r io.Reader, w io.Writer) {
	br := bufio.NewReader(r)
	for {
		var raw []byte
		for {
			line, err := br.ReadBytes('\n')
			if err != nil {
				return
			}
			raw = append(raw, line...)
			n := trailingLiteral(line)
			if n < 0 {
				break
			}
			lit := make([]byte, n)
			if _, err := io.ReadFull(br, lit); err != nil {
				return
			}
			raw = append(raw, lit...)
		}
		if bytes.HasPrefix(raw, []byte("* 0 FETCH ")) {
			l.dropped.Add(1)
			continue
		}
		if _, err := w.Write(raw); err != nil {
			return
		}
	}
}

// filteredConn sends what the server writes through the filter; closing
// it lets the filter pass what it holds (a LOGOUT's last responses), then
// closes the connection.
type filteredConn struct {
	net.Conn
	pw   *io.PipeWriter
	done chan struct{} // closed when the filter has returned
}

func (c *filteredConn) Write(p []byte) (int, error) { return c.pw.Write(p) }

func (c *filteredConn) Close() error {
	c.pw.Close()
	c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	<-c.done
	return c.Conn.Close()
}

type testLogger struct{ t *testing.T }

func (l testLogger) Printf(format string, args ...any) { l.t.Logf(format, args...) }

// TestStressFaults runs the checker against a scripted server that
// breaks one rule: each must be found.
func TestStressFaults(t *testing.T) {
	for _, tc := range []struct {
		fault string
		want  string   // in a violation's why
		args  []string // more flags
	}{
		{"expunge-in-fetch", "EXPUNGE while only FETCH", nil},
		{"exists-down", "EXISTS never decreases", nil},
		{"uid-change", "UID", nil},
		{"stall", "stall", nil},
		{"bad", "BAD", nil},
		{"wrong-body", "a UID names one message", nil},
		// store-flags: the client never learns a UID, so no STORE's
		// missing flag can be told from a race with an expunge: each is
		// counted as a race (below), none as a violation; store-uid is
		// the same fault with UIDs known, and is caught.
		{"store-flags", "", nil},
		{"store-uid", "and it was not expunged", nil},
		{"store-gone", "", nil},
		{"search-beyond", "SEARCH found message 9", nil},
		{"search-late", "", nil},
		{"search-beyond", "", []string{"-tolerate-search-ahead"}},
		{"dup-tag", "already answered", nil},
		{"none", "", nil}, // and no LITERAL+: synchronizing literals
	} {
		t.Run(strings.Join(append([]string{tc.fault}, tc.args...), ""), func(t *testing.T) {
			t.Parallel()
			addr := startFaulty(t, tc.fault)
			code, r := runStressCLI(t, append([]string{"-addr", addr, "-workload", "stress", "-sessions", "2",
				"-duration", "500ms", "-stall", "300ms", "-max-time", "10s"}, tc.args...)...)
			if tc.want == "" {
				if code != 0 || r.Violations != 0 || r.Errors != 0 || r.Commands < 50 {
					t.Errorf("exit %d, %d errors (%s), %d commands, %d violations: %+v", code, r.Errors, r.FirstError, r.Commands, r.Violations, r.ViolationList)
				}
				// The tolerated deviations were met, not just absent.
				if (tc.fault == "store-gone" || tc.fault == "store-flags") && r.FlagRaces == 0 || tc.fault == "search-late" && r.LateExists == 0 || tc.fault == "search-beyond" && r.SearchAhead == 0 {
					t.Errorf("%d flag races, %d late EXISTS, %d searches ahead: the case never arose", r.FlagRaces, r.LateExists, r.SearchAhead)
				}
				return
			}
			if code == 0 || r.Violations == 0 {
				t.Fatalf("exit %d, %d violations: the fault went unnoticed", code, r.Violations)
			}
			found := false
			for _, v := range r.ViolationList {
				found = found || strings.Contains(v.Why, tc.want)
			}
			if !found {
				t.Errorf("no violation says %q: %+v", tc.want, r.ViolationList)
			}
			if tc.fault == "stall" && (r.Stalls == 0 || r.Reconnects == 0) {
				t.Errorf("%d stalls, %d reconnects", r.Stalls, r.Reconnects)
			}
		})
	}
}

// startFaulty starts a scripted IMAP server on loopback that answers
// every command OK, with a 5-message mailbox, and breaks one rule:
//
//	expunge-in-fetch  "* 1 EXPUNGE" during every FETCH
//	exists-down       "* 4 EXISTS" after every command but SELECT
//	uid-change        FETCH n answers a new UID for n every time
//	stall             NOOP is never answered
//	bad               SEARCH is answered BAD
//	wrong-body        UID 1's body differs on every FETCH
//	store-flags       STORE n is answered "* n FETCH (FLAGS ())"
//	store-uid         the same, FETCH n tells message n's UID
//	store-gone        the same, and message n is expunged at the next
//	                  command that allows it, a new one appended: a race
//	search-beyond     SEARCH finds message 9
//	search-late       SEARCH finds a new message, whose EXISTS follows
//	                  before the tagged answer (as Cyrus 3 does)
//	dup-tag           NOOP is answered twice
//	none              no fault, and no LITERAL+
func startFaulty(t *testing.T, fault string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := make(map[net.Conn]bool)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				serveFaulty(c, fault)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func serveFaulty(c net.Conn, fault string) {
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	caps := "IMAP4rev1 LITERAL+ IDLE"
	if fault == "none" {
		caps = "IMAP4rev1 IDLE"
	}
	fmt.Fprintf(w, "* OK [CAPABILITY %s] faulty\r\n", caps)
	w.Flush()
	uid := 100
	// store-uid, store-gone, search-late keep a mailbox: uids[n-1] is
	// message n's UID; gone is a message to expunge, 0 if none.
	uids := []int{1, 2, 3, 4, 5}
	next, gone := 6, 0
	model := fault == "store-uid" || fault == "store-gone" || fault == "search-late"
	for {
		line, err := readFaultyCommand(r, w)
		if err != nil {
			return
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			fmt.Fprintf(w, "* BAD what\r\n")
			w.Flush()
			continue
		}
		tag, verb := f[0], strings.ToUpper(f[1])
		status := "OK"
		if gone > 0 && verb != "FETCH" && verb != "STORE" && verb != "SEARCH" && verb != "UID" {
			// RFC 3501 §7.4.1: not during FETCH, STORE, SEARCH.
			fmt.Fprintf(w, "* %d EXPUNGE\r\n", gone)
			uids = append(uids[:gone-1], uids[gone:]...)
			uids = append(uids, next)
			next++
			fmt.Fprintf(w, "* %d EXISTS\r\n", len(uids))
			gone = 0
		}
		switch verb {
		case "CAPABILITY":
			fmt.Fprintf(w, "* CAPABILITY %s\r\n", caps)
		case "SELECT", "EXAMINE":
			fmt.Fprintf(w, "* %d EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n", len(uids))
		case "FETCH":
			n, _, _ := strings.Cut(f[2], ":")
			if k, err := strconv.Atoi(n); model && err == nil && k >= 1 && k <= len(uids) {
				fmt.Fprintf(w, "* %d FETCH (UID %d)\r\n", k, uids[k-1])
			}
			switch fault {
			case "expunge-in-fetch":
				fmt.Fprintf(w, "* 1 EXPUNGE\r\n")
			case "uid-change":
				uid++
				fmt.Fprintf(w, "* %s FETCH (UID %d)\r\n", n, uid)
			case "wrong-body":
				uid++
				fmt.Fprintf(w, "* 1 FETCH (UID 1 BODY[] {%d}\r\n%d)\r\n", len(fmt.Sprint(uid)), uid)
			}
		case "STORE":
			switch k, _ := strconv.Atoi(f[2]); {
			case fault == "store-flags" || fault == "store-uid" || fault == "store-gone" && k == gone:
				fmt.Fprintf(w, "* %s FETCH (FLAGS ())\r\n", f[2])
			case fault == "store-gone" && gone == 0 && k >= 1 && k <= len(uids):
				fmt.Fprintf(w, "* %s FETCH (FLAGS ())\r\n", f[2])
				gone = k
			}
		case "UID":
			if model && len(f) > 3 && strings.EqualFold(f[2], "SEARCH") {
				fmt.Fprintf(w, "* SEARCH")
				for _, u := range uids {
					fmt.Fprintf(w, " %d", u)
				}
				fmt.Fprintf(w, "\r\n")
			}
		case "SEARCH":
			switch fault {
			case "bad":
				status = "BAD"
			case "search-beyond":
				fmt.Fprintf(w, "* SEARCH 2 9\r\n")
			case "search-late":
				uids = append(uids, next)
				next++
				fmt.Fprintf(w, "* SEARCH 2 %d\r\n* %d EXISTS\r\n", len(uids), len(uids))
			}
		case "IDLE":
			fmt.Fprintf(w, "+ idling\r\n")
			w.Flush()
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
		case "NOOP":
			switch fault {
			case "stall":
				continue
			case "dup-tag":
				fmt.Fprintf(w, "%s OK once\r\n", tag)
			}
		case "LOGOUT":
			fmt.Fprintf(w, "* BYE bye\r\n%s OK bye\r\n", tag)
			w.Flush()
			return
		}
		if fault == "exists-down" && verb != "SELECT" && verb != "EXAMINE" {
			fmt.Fprintf(w, "* 4 EXISTS\r\n")
		}
		fmt.Fprintf(w, "%s %s done\r\n", tag, status)
		w.Flush()
	}
}

// readFaultyCommand reads a command line, with its literals (a
// synchronizing one gets its "+" first), and returns it without them.
func readFaultyCommand(r *bufio.Reader, w *bufio.Writer) (string, error) {
	var cmd strings.Builder
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		n := trailingLiteral([]byte(line))
		cmd.WriteString(strings.TrimRight(line, "\r\n"))
		if n < 0 {
			return cmd.String(), nil
		}
		if !strings.HasSuffix(strings.TrimRight(line, "\r\n"), "+}") {
			w.WriteString("+ go on\r\n")
			w.Flush()
		}
		if _, err := io.CopyN(io.Discard, r, n); err != nil {
			return "", err
		}
	}
}

func TestReadStressResp(t *testing.T) {
	body := "Subject: x\r\n\r\n{5}\r\n* 3 EXPUNGE\r\n"
	in := "* 3 FETCH (UID 17 BODY[] {" + fmt.Sprint(len(body)) + "}\r\n" + body + " FLAGS (\\Seen $Stress1))\r\n" +
		"* SEARCH 1 2\r\nS1 OK done\r\n"
	r := bufio.NewReaderSize(strings.NewReader(in), 16)
	resp, err := readStressResp(r)
	if err != nil {
		t.Fatal(err)
	}
	if want := "* 3 FETCH (UID 17 BODY[] \x00 FLAGS (\\Seen $Stress1))"; string(resp.text) != want {
		t.Errorf("text = %q, want %q", resp.text, want)
	}
	if len(resp.lits) != 1 || resp.lits[0].size != int64(len(body)) || resp.lits[0].sum != sha256.Sum256([]byte(body)) {
		t.Errorf("literals = %+v", resp.lits)
	}
	p := newRespParser(resp)
	p.pos = len("* 3 FETCH ")
	d, ok := p.Fetch()
	if !ok || !d.hasUID || d.uid != 17 || !d.hasBody || len(d.flags) != 2 || string(d.flags[1]) != "$Stress1" {
		t.Errorf("Fetch = %+v, %v", d, ok)
	}
	// The literal's content, CRLFs and all, was not taken for responses.
	for _, want := range []string{"* SEARCH 1 2", "S1 OK done"} {
		resp, err := readStressResp(r)
		if err != nil || string(resp.text) != want {
			t.Errorf("next = %q, %v; want %q", resp.text, err, want)
		}
	}
	if _, err := readStressResp(r); err != io.EOF {
		t.Errorf("at the end: %v", err)
	}
	if _, err := readStressResp(bufio.NewReader(strings.NewReader("* 1 FETCH (BODY[] {10}\r\nabc"))); err != io.ErrUnexpectedEOF {
		t.Errorf("cut literal: %v", err)
	}
}

func TestFetchParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		uid  uint32
		flgs int
		ok   bool
	}{
		{`(UID 5 FLAGS (\Seen))`, 5, 1, true},
		{`(FLAGS () UID 9)`, 9, 0, true},
		{`(BODY[HEADER.FIELDS (SUBJECT)] "x\"y" UID 3 INTERNALDATE "01-Jan-2024 00:00:00 +0000")`, 3, 0, true},
		{`(ENVELOPE (NIL "s" (("a" NIL "b" "c")) NIL) UID 4)`, 4, 0, true},
		{`()`, 0, 0, true},
		{`(UID x)`, 0, 0, false},
		{`(UID 5`, 5, 0, false},
	} {
		p := &respParser{b: []byte(tc.in)}
		d, ok := p.Fetch()
		if ok != tc.ok || ok && (d.uid != tc.uid || len(d.flags) != tc.flgs) {
			t.Errorf("Fetch(%s) = %+v, %v", tc.in, d, ok)
		}
	}
}

func TestStressView(t *testing.T) {
	var v stressView
	v.reset()
	if why := v.exists(3); why != "" {
		t.Fatal(why)
	}
	v.selecting = false
	steps := []struct {
		do   func() string
		fail bool
	}{
		{func() string { return v.fetch(1, 10, true) }, false},
		{func() string { return v.fetch(3, 30, true) }, false},
		{func() string { return v.fetch(2, 40, true) }, true}, // 10 < 40 but 40 > 30
		{func() string { return v.fetch(2, 20, true) }, true}, // was 40
		{func() string { return v.fetch(4, 0, false) }, true}, // beyond 3
		{func() string { return v.exists(5) }, false},
		{func() string { return v.exists(4) }, true},
		{func() string { return v.expunge(2) }, false}, // now 3: 10? 30?
		{func() string { return v.searchHit(3) }, false},
		{func() string { return v.searchHit(4) }, true},
		{func() string { return v.expunge(4) }, true},
		{func() string { return v.fetch(3, 0, true) }, true},
	}
	for i, s := range steps {
		if why := s.do(); (why != "") != s.fail {
			t.Errorf("step %d: %q, want failure %v", i, why, s.fail)
		}
	}
	if v.count() != 3 {
		t.Errorf("count = %d, want 3", v.count())
	}
	// An EXPUNGE shifts what is known: message 3 (UID 30) becomes 2.
	v = stressView{}
	v.reset()
	v.exists(3)
	v.selecting = false
	v.fetch(1, 10, true)
	v.fetch(3, 30, true)
	v.expunge(2)
	if why := v.fetch(2, 30, true); why != "" {
		t.Errorf("after EXPUNGE 2: %s", why)
	}
	if why := v.fetch(2, 31, true); why == "" {
		t.Error("UID 30 → 31 went unnoticed")
	}
}

func TestStressBadArgs(t *testing.T) {
	var out, errb strings.Builder
	if code := run([]string{"-mode", "stress", "-stall", "0s"}, &out, &errb); code != 2 {
		t.Errorf("-stall 0: exit %d", code)
	}
}
