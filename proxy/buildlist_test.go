package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"uidgate/proxy/imapwire"
	"uidgate/sessionmap"
	"uidgate/upstream"
)

// uidLine returns the answer to the map build's UID SEARCH for the UIDs
// first, first+step, ... (n of them): "* ESEARCH (TAG "tag") UID ALL ..."
// with esearch, else "* SEARCH ...". desc lists them highest first.
func uidLine(esearch bool, tag string, n, first, step int, desc bool) []byte {
	var b bytes.Buffer
	b.Grow(n * 8)
	if esearch {
		fmt.Fprintf(&b, "* ESEARCH (TAG %q) UID", tag)
	} else {
		b.WriteString("* SEARCH")
	}
	sep := " "
	if esearch && n > 0 {
		b.WriteString(" ALL")
	}
	if esearch && step == 1 && n > 0 {
		fmt.Fprintf(&b, " %d:%d", first, first+n-1)
		n = 0
	}
	for i := range n {
		k := i
		if desc {
			k = n - 1 - i
		}
		b.WriteString(sep)
		b.Write(appendUint(nil, uint32(first+k*step)))
		if esearch {
			sep = ","
		}
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// buildSession is a client logged in through uidgate to the scripted
// backend.
type buildSession struct {
	t      *testing.T
	c, b   net.Conn
	cr, br *bufio.Reader
	logs   *logBuffer
}

func (s *buildSession) send(c net.Conn, text string) {
	s.t.Helper()
	if _, err := io.WriteString(c, text); err != nil {
		s.t.Fatal(err)
	}
}

func (s *buildSession) expect(r *bufio.Reader, c net.Conn, want string) {
	s.t.Helper()
	c.SetReadDeadline(time.Now().Add(stepTimeout))
	got, err := r.ReadString('\n')
	if err != nil || got != want+"\r\n" {
		s.t.Fatalf("want %q, got %.200q (%v)", want, got, err)
	}
}

// logBuffer is a session's log, written by its goroutines and read by
// the test while they run.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func startBuildSession(t *testing.T, caps string, opts ...func(*upstream.Backend)) *buildSession {
	return startSessionWith(t, caps, nil, opts...)
}

// startSessionWith is startBuildSession with the server's fields set by
// srvOpt.
func startSessionWith(t *testing.T, caps string, srvOpt func(*Server), opts ...func(*upstream.Backend)) *buildSession {
	sb := newScriptedBackend(t)
	backend := &upstream.Backend{Name: "scripted", Address: sb.ln.Addr().String(), TLS: upstream.TLSNone}
	for _, o := range opts {
		o(backend)
	}
	logs := &logBuffer{}
	log := zerolog.New(logs).Level(zerolog.DebugLevel)
	srv := &Server{Route: func(string) (*upstream.Backend, bool) { return backend, true }, Logger: &log}
	if srvOpt != nil {
		srvOpt(srv)
	}
	cc, sc := tcpPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(t.Context(), sc, Listener{TLS: upstream.TLSNone})
	}()
	s := &buildSession{t: t, c: cc, cr: bufio.NewReader(cc), logs: logs}
	t.Cleanup(func() {
		cc.Close()
		<-done
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	})
	s.cr.ReadString('\n') // greeting
	s.send(cc, "L LOGIN alice secret-pw\r\n")
	select {
	case s.b = <-sb.conn:
	case <-time.After(stepTimeout):
		t.Fatal("no backend connection")
	}
	t.Cleanup(func() { s.b.Close() })
	s.br = bufio.NewReader(s.b)
	s.send(s.b, "* OK [CAPABILITY "+caps+"] hi\r\n")
	s.expect(s.br, s.b, "ug1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldC1wdw==")
	s.send(s.b, "ug1 OK [CAPABILITY "+caps+"] in\r\n")
	s.cr.ReadString('\n') // L OK
	return s
}

// selected is selectWith followed by what the client hears of it.
func (s *buildSession) selected(esearch bool, count int, answer []byte) {
	s.t.Helper()
	s.selectWith(esearch, count, answer)
	s.expect(s.cr, s.c, fmt.Sprintf("* %d EXISTS", count))
	s.expect(s.cr, s.c, "* OK [UIDVALIDITY 7] UIDs valid")
	s.expect(s.cr, s.c, "s OK [READ-WRITE] done")
}

// selectWith selects INBOX of count messages; the backend answers the
// map build with answer.
func (s *buildSession) selectWith(esearch bool, count int, answer []byte) {
	s.t.Helper()
	s.send(s.c, "s SELECT INBOX\r\n")
	s.expect(s.br, s.b, "s SELECT INBOX")
	s.send(s.b, fmt.Sprintf("* %d EXISTS\r\n* OK [UIDVALIDITY 7] UIDs valid\r\ns OK [READ-WRITE] done\r\n", count))
	if esearch {
		s.expect(s.br, s.b, "UG.1 UID SEARCH RETURN (ALL) ALL")
	} else {
		s.expect(s.br, s.b, "UG.1 UID SEARCH ALL")
	}
	// Written while uidgate reads: the backend does not wait for it.
	go s.b.Write(append(answer, "UG.1 OK done\r\n"...))
}

// TestSelectLongUIDList: the build's UID list, far longer than the read
// buffer, in each form the backends send, gives the right map.
func TestSelectLongUIDList(t *testing.T) {
	const n = 200_000 // UIDs 1, 3, ..., 399999: a list of 1.3 MB
	for _, tc := range []struct {
		name    string
		esearch bool
		desc    bool
	}{
		{"esearch", true, false},
		{"search", false, false},
		{"search descending", false, true},
		{"esearch descending", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			caps := "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN"
			if tc.esearch {
				caps += " ESEARCH"
			}
			s := startBuildSession(t, caps)
			s.selectWith(tc.esearch, n, uidLine(tc.esearch, "UG.1", n, 1, 2, tc.desc))
			s.expect(s.cr, s.c, fmt.Sprintf("* %d EXISTS", n))
			s.expect(s.cr, s.c, "* OK [UIDVALIDITY 7] UIDs valid")
			s.expect(s.cr, s.c, "s OK [READ-WRITE] done")
			s.send(s.c, "f1 FETCH 150000 (FLAGS)\r\n")
			s.expect(s.br, s.b, "f1 UID FETCH 299999 (FLAGS)")
			s.send(s.b, "* 150000 FETCH (UID 299999 FLAGS ())\r\nf1 OK done\r\n")
			s.expect(s.cr, s.c, "* 150000 FETCH (FLAGS ())")
			s.expect(s.cr, s.c, "f1 OK done")
			s.send(s.c, "f2 FETCH 1,200000,* (FLAGS)\r\n")
			s.expect(s.br, s.b, "f2 UID FETCH 1,399999 (FLAGS)")
			s.send(s.b, "f2 OK done\r\n")
			s.expect(s.cr, s.c, "f2 OK done")
			if strings.Contains(s.logs.String(), "cannot load") {
				t.Fatalf("log: %s", s.logs.String())
			}
		})
	}
}

// TestSelectLongUIDListMalformed: a long list that turns out malformed at
// its end leaves the map empty with a warning, as a failed load always
// did, and the session goes on.
func TestSelectLongUIDListMalformed(t *testing.T) {
	s := startBuildSession(t, "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN ESEARCH")
	line := uidLine(true, "UG.1", 10_000, 1, 2, false)
	line = append(line[:len(line)-2], ":*\r\n"...)
	s.selectWith(true, 10_000, line)
	s.expect(s.cr, s.c, "* 0 EXISTS")
	s.expect(s.cr, s.c, "* OK [UIDVALIDITY 7] UIDs valid")
	s.expect(s.cr, s.c, "s OK [READ-WRITE] done")
	s.send(s.c, "n NOOP\r\n")
	s.expect(s.br, s.b, "n NOOP")
	s.send(s.b, "n OK done\r\n")
	s.expect(s.cr, s.c, "n OK done")
	if !strings.Contains(s.logs.String(), "cannot load the UID list") {
		t.Fatalf("no warning in the log: %s", s.logs.String())
	}
}

// buildState is a relay state waiting for the build's answer, as
// onTagged leaves it after a SELECT's OK.
func buildState() (*relayState, *selection) {
	rs := &relayState{tags: map[string]pendingCmd{}}
	sel := &selection{m: sessionmap.New(), state: selBuilding, tag: "s"}
	rs.sel = sel
	rs.injected = "UG.1"
	rs.tags["UG.1"] = pendingCmd{inject: injectBuild}
	return rs, sel
}

// buildStream reads the build's answer as upstreamToClient does: a long
// one is diverted by readUpLine, a short one goes to onSelecting. It
// returns the line after the answer.
func buildStream(ss *session, in []byte) (*selection, []byte, error) {
	rs, sel := buildState()
	ur := newUpstreamReader(bytes.NewReader(in))
	for {
		line, _, err := ss.readUpLine(rs, ur, false)
		if err != nil || sel.loaded {
			return sel, line, err
		}
		r, _ := imapwire.ParseResponse(line)
		rs.mu.Lock()
		ss.onSelecting(rs, sel, &r, line)
		rs.mu.Unlock()
	}
}

// buildAssembled is the path before streaming, kept as the benchmarks'
// baseline: the line assembled by ReadLine, its UIDs collected into a
// slice or an imap.UIDSet, then Load or LoadSet.
func buildAssembled(in []byte) (*selection, error) {
	_, sel := buildState()
	ur := newUpstreamReader(bytes.NewReader(in))
	line, err := ur.ReadLine()
	if err != nil {
		return nil, err
	}
	return sel, loadAssembled(sel, line)
}

// loadAssembled loads a whole "* SEARCH" or "* ESEARCH ... ALL" line the
// way uidgate did before it parsed lists as they arrive.
func loadAssembled(sel *selection, line []byte) error {
	r, _ := imapwire.ParseResponse(line)
	rest := imapwire.TrimEOL(line[r.After:])
	if imapwire.EqualFold(r.Name, "ESEARCH") {
		set, err := parseUIDSet(parseESearch(rest).all)
		if err != nil {
			return err
		}
		return sel.m.LoadSet(set)
	}
	var list []uint32
	d := imapwire.NewDecoder(rest)
	for !d.EOL() {
		if d.SP() {
			continue
		}
		n, ok := d.Number()
		if !ok {
			d.SkipValue()
			continue
		}
		list = append(list, n)
	}
	return sel.m.Load(list)
}

func measure(fn func()) (total, retained uint64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	total = after.TotalAlloc - before.TotalAlloc
	runtime.GC()
	runtime.ReadMemStats(&after)
	return total, after.HeapAlloc - min(before.HeapAlloc, after.HeapAlloc)
}

// nopSession is as much of a session as readUpLine needs: a logger, and
// a client writer on a loopback socket nobody reads (nothing is written).
func nopSession(tb testing.TB) *session {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return &session{log: zerolog.Nop(), cw: newSyncWriter(c)}
}

// TestBuildListMemory builds the map of 1,000,000 every-other UIDs through
// the whole path (imapwire.Reader, divert, uidList, sessionmap.Loader)
// from both answer forms, and checks that it allocates little beyond the
// map itself.
func TestBuildListMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("7 MB lines")
	}
	ss := nopSession(t)
	for _, esearch := range []bool{true, false} {
		in := append(uidLine(esearch, "UG.1", 1_000_000, 1, 2, false), "UG.1 OK done\r\n"...)
		var sel *selection
		var next []byte
		var err error
		start := time.Now()
		total, retained := measure(func() { sel, next, err = buildStream(ss, in) })
		took := time.Since(start)
		if err != nil || string(next) != "UG.1 OK done\r\n" || !sel.loaded || sel.m.ClientCount() != 1_000_000 {
			t.Fatalf("esearch %v: %v, next %q, loaded %v, %d messages", esearch, err, next, sel.loaded, sel.m.ClientCount())
		}
		if e, _ := sel.m.ClientAt(1_000_000); e.UID != 1_999_999 {
			t.Fatalf("last message: %+v", e)
		}
		size := uint64(sel.m.Bytes())
		t.Logf("esearch %v, %d-byte line: %d bytes allocated, %d retained, map %d bytes, %v",
			esearch, len(in), total, retained, size, took)
		if total > 4<<20 {
			t.Errorf("esearch %v: %d bytes allocated for a map of %d", esearch, total, size)
		}
		runtime.KeepAlive(sel)
		runtime.KeepAlive(in) // or its collection hides the map's growth
	}
}

// BenchmarkBuildList compares the build of a 1,000,000-message map from
// an in-memory answer, streamed (now) and assembled (before): B/alloc is
// what one build allocates, B/map what the map holds.
//
//	go test -run '^$' -bench BuildList -benchtime 10x ./proxy
func BenchmarkBuildList(b *testing.B) {
	for _, shape := range []struct {
		name string
		step int
	}{{"everyother", 2}, {"dense", 1}} {
		for _, esearch := range []bool{true, false} {
			form := "search"
			if esearch {
				form = "esearch"
			}
			in := append(uidLine(esearch, "UG.1", 1_000_000, 1, shape.step, false), "UG.1 OK done\r\n"...)
			for _, path := range []string{"stream", "assembled"} {
				b.Run(shape.name+"/"+form+"/"+path, func(b *testing.B) {
					ss := nopSession(b)
					var alloc uint64
					var size int
					for b.Loop() {
						var sel *selection
						var err error
						var ms0, ms1 runtime.MemStats
						runtime.ReadMemStats(&ms0)
						if path == "stream" {
							sel, _, err = buildStream(ss, in)
						} else {
							sel, err = buildAssembled(in)
						}
						runtime.ReadMemStats(&ms1)
						if err != nil || sel.m.ClientCount() != 1_000_000 {
							b.Fatal(err)
						}
						alloc, size = ms1.TotalAlloc-ms0.TotalAlloc, sel.m.Bytes()
					}
					b.ReportMetric(float64(alloc), "B/alloc")
					b.ReportMetric(float64(size), "B/map")
					b.ReportMetric(float64(len(in)), "B/line")
				})
			}
		}
	}
}

// BenchmarkBuildListSocket reads the 7 MB answer of 1,000,000 every-other
// UIDs from a loopback socket: "discard" only reads it (what the backend
// takes to send it), "stream" and "assembled" also build the map.
func BenchmarkBuildListSocket(b *testing.B) {
	for _, esearch := range []bool{true, false} {
		form := "search"
		if esearch {
			form = "esearch"
		}
		in := append(uidLine(esearch, "UG.1", 1_000_000, 1, 2, false), "UG.1 OK done\r\n"...)
		for _, path := range []string{"discard", "stream", "assembled"} {
			b.Run(form+"/"+path, func(b *testing.B) {
				ss := nopSession(b)
				for b.Loop() {
					b.StopTimer()
					ln, err := net.Listen("tcp", "127.0.0.1:0")
					if err != nil {
						b.Fatal(err)
					}
					go func() {
						w, err := ln.Accept()
						if err == nil {
							w.Write(in)
							w.Close()
						}
					}()
					conn, err := net.Dial("tcp", ln.Addr().String())
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					ur := newUpstreamReader(conn)
					switch path {
					case "discard":
						_, _, err = ur.ReadLineDivert(func([]byte) func([]byte) { return func([]byte) {} })
					case "stream":
						rs, sel := buildState()
						_, _, err = ss.readUpLine(rs, ur, false)
						if sel.m.ClientCount() != 1_000_000 {
							err = fmt.Errorf("%d messages", sel.m.ClientCount())
						}
					case "assembled":
						_, sel := buildState()
						var line []byte
						if line, err = ur.ReadLine(); err == nil {
							err = loadAssembled(sel, line)
						}
					}
					b.StopTimer()
					conn.Close()
					ln.Close()
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			})
		}
	}
}
