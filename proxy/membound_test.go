package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"
)

// sessionMemBound is the documented bound of one session's memory for any
// input from either side (docs/ARCHITECTURE.md, "Hardening"), in a
// mailbox of up to 20,000 runs of UIDs.
const sessionMemBound = 64 << 20

// heapPeak samples the heap's object bytes (live and not yet collected:
// what the process must hold) every millisecond from start to end, and
// reports the highest growth over the heap at start.
type heapPeak struct {
	base uint64
	stop chan struct{}
	peak chan uint64
}

func heapObjects(s []metrics.Sample) uint64 {
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func startHeapPeak() *heapPeak {
	runtime.GC()
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	h := &heapPeak{base: heapObjects(s), stop: make(chan struct{}), peak: make(chan uint64, 1)}
	go func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		var top uint64
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			top = max(top, heapObjects(s))
			select {
			case <-h.stop:
				h.peak <- top
				return
			case <-t.C:
			}
		}
	}()
	return h
}

// end returns the peak growth in bytes.
func (h *heapPeak) end() uint64 {
	close(h.stop)
	top := <-h.peak
	if top < h.base {
		return 0
	}
	return top - h.base
}

// patternReader yields head, then n bytes of fill repeated, then tail,
// without holding them: a hostile peer's endless line.
type patternReader struct {
	head, tail []byte
	fill       []byte
	left       int64 // fill bytes still to come
}

func newPatternReader(head string, fill string, n int64, tail string) *patternReader {
	return &patternReader{head: []byte(head), tail: []byte(tail), fill: bytes.Repeat([]byte(fill), 64<<10/len(fill)), left: n}
}

func (p *patternReader) Read(b []byte) (int, error) {
	switch {
	case len(p.head) > 0:
		n := copy(b, p.head)
		p.head = p.head[n:]
		return n, nil
	case p.left > 0:
		n := copy(b, p.fill[:min(int64(len(p.fill)), p.left)])
		p.left -= int64(n)
		return n, nil
	case len(p.tail) > 0:
		n := copy(b, p.tail)
		p.tail = p.tail[n:]
		return n, nil
	}
	return 0, io.EOF
}

// writeOddList writes head, the n UIDs 1,3,5,… and tail to w as they
// are made.
func writeOddList(w io.Writer, head string, n int, tail string) {
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.WriteString(head)
	var num []byte
	for i := range n {
		if i > 0 {
			bw.WriteByte(',')
		}
		num = appendUint(num[:0], uint32(2*i+1))
		bw.Write(num)
	}
	bw.WriteString(tail)
	bw.Flush()
}

// lineDrain reads the client's side of a session line by line, however
// long the lines, holding at most the reader's buffer and a line's first
// 200 bytes.
type lineDrain struct {
	r    *bufio.Reader
	c    net.Conn
	head *[]byte
}

func newLineDrain(c net.Conn, r *bufio.Reader) lineDrain {
	return lineDrain{r: r, c: c, head: new([]byte)}
}

// nextBytes returns the next line without its CRLF (its first 200 bytes
// if longer), valid until the next call, or an error; the deadline is
// per call.
func (d lineDrain) nextBytes(timeout time.Duration) ([]byte, error) {
	d.c.SetReadDeadline(time.Now().Add(timeout))
	head := (*d.head)[:0]
	defer func() { *d.head = head[:0] }()
	for {
		frag, err := d.r.ReadSlice('\n')
		if len(head) < 200 {
			head = append(head, frag[:min(len(frag), 200-len(head))]...)
		}
		switch {
		case err == nil:
			return bytes.TrimRight(head, "\r\n"), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return head, err
		}
	}
}

// next is nextBytes as a string.
func (d lineDrain) next(timeout time.Duration) (string, error) {
	l, err := d.nextBytes(timeout)
	return string(l), err
}

// until reads lines until one starts with prefix, counting those that
// end with count on the way; a read error ends it.
func (d lineDrain) until(prefix, count string, timeout time.Duration) (string, int, error) {
	n := 0
	for {
		l, err := d.nextBytes(timeout)
		if err != nil {
			return string(l), n, err
		}
		if bytes.HasPrefix(l, []byte(prefix)) {
			return string(l), n, nil
		}
		if count != "" && bytes.HasSuffix(l, []byte(count)) {
			n++
		}
	}
}

// replyLoop is a backend that answers every command after the test's
// script: uidgate's own searches with an empty result (the mailbox is
// gone), the first NOOP with an EXPUNGE, anything else OK.
func replyLoop(b net.Conn, br *bufio.Reader) {
	noops := 0
	d := newLineDrain(b, br)
	for {
		line, err := d.next(30 * time.Second)
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(line, " ")
		var out string
		switch {
		case strings.HasPrefix(tag, injectTagPrefix) && strings.Contains(rest, "SEARCH RETURN"):
			out = fmt.Sprintf("* ESEARCH (TAG %q) UID\r\n", tag)
		case strings.HasPrefix(tag, injectTagPrefix) && strings.Contains(rest, "SEARCH"):
			out = "* SEARCH\r\n"
		case strings.EqualFold(rest, "NOOP"):
			if noops++; noops == 1 {
				out = "* 1 EXPUNGE\r\n"
			}
		}
		if _, err := io.WriteString(b, out+tag+" OK done\r\n"); err != nil {
			return
		}
	}
}

// TestSessionMemoryBound drives one session at a time with what a
// hostile backend or client can send, and checks that the heap never
// grows past the documented bound while it runs (issue 16). Each case
// also checks how the session answers.
func TestSessionMemoryBound(t *testing.T) {
	if testing.Short() {
		t.Skip("hundreds of megabytes through loopback")
	}
	const caps = "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN ESEARCH"
	const huge = 100 << 20
	cases := []struct {
		name string
		srv  func(*Server)
		run  func(t *testing.T, s *buildSession, d lineDrain)
	}{
		{
			// A line held whole (a FETCH is parsed and translated) stops at
			// upstreamMaxLine: BYE, and a log line naming the backend.
			name: "backend 100 MB FETCH line",
			run: func(t *testing.T, s *buildSession, d lineDrain) {
				s.selected(true, 10, uidLine(true, "UG.1", 10, 1, 1, false))
				s.send(s.c, "f1 FETCH 1 (FLAGS)\r\n")
				s.expect(s.br, s.b, "f1 UID FETCH 1 (FLAGS)")
				go io.Copy(s.b, newPatternReader("* 1 FETCH (UID 1 FLAGS (", `\Seen `, huge, "))\r\n"))
				l, _, err := d.until("* BYE", "", 30*time.Second)
				if err != nil || l != "* BYE [UNAVAILABLE] Backend connection lost" {
					t.Fatalf("got %q, %v", l, err)
				}
				logs := s.logs.String()
				if !strings.Contains(logs, "backend line too long") || !strings.Contains(logs, `"backend":"scripted"`) {
					t.Fatalf("no log line naming the backend:\n%.2000s", logs)
				}
			},
		},
		{
			// The answer to a SEARCH by number is translated, so held
			// whole: the same bound.
			name: "backend 100 MB SEARCH to translate",
			run: func(t *testing.T, s *buildSession, d lineDrain) {
				s.selected(true, 10, uidLine(true, "UG.1", 10, 1, 1, false))
				s.send(s.c, "s1 SEARCH ALL\r\n")
				s.expect(s.br, s.b, "s1 UID SEARCH ALL")
				go io.Copy(s.b, newPatternReader("* SEARCH", " 1", huge, "\r\n"))
				l, _, err := d.until("* BYE", "", 30*time.Second)
				if err != nil || l != "* BYE [UNAVAILABLE] Backend connection lost" {
					t.Fatalf("got %q, %v", l, err)
				}
			},
		},
		{
			// Just within the bound: a 15 MB answer to a SEARCH by
			// number, translated whole.
			name: "backend 15 MB SEARCH translated",
			run: func(t *testing.T, s *buildSession, d lineDrain) {
				s.selected(true, 10, uidLine(true, "UG.1", 10, 1, 1, false))
				s.send(s.c, "s1 SEARCH ALL\r\n")
				s.expect(s.br, s.b, "s1 UID SEARCH ALL")
				go io.Copy(s.b, newPatternReader("* SEARCH", " 10", 15<<20, "\r\ns1 OK done\r\n"))
				l, err := d.next(30 * time.Second)
				if err != nil || !strings.HasPrefix(l, "* SEARCH 10 10 10") {
					t.Fatalf("got %q, %v", l, err)
				}
				if l, err := d.next(5 * time.Second); err != nil || l != "s1 OK done" {
					t.Fatalf("got %q, %v", l, err)
				}
			},
		},
		{
			// The same for THREAD.
			name: "backend 15 MB THREAD translated",
			run: func(t *testing.T, s *buildSession, d lineDrain) {
				s.selected(true, 10, uidLine(true, "UG.1", 10, 1, 1, false))
				s.send(s.c, "t1 THREAD REFERENCES UTF-8 ALL\r\n")
				s.expect(s.br, s.b, "t1 UID THREAD REFERENCES UTF-8 ALL")
				go io.Copy(s.b, newPatternReader("* THREAD ", "(10)", 15<<20, "\r\nt1 OK done\r\n"))
				l, err := d.next(30 * time.Second)
				if err != nil || !strings.HasPrefix(l, "* THREAD (10)(10)") {
					t.Fatalf("got %q, %v", l, err)
				}
				if l, err := d.next(5 * time.Second); err != nil || l != "t1 OK done" {
					t.Fatalf("got %q, %v", l, err)
				}
			},
		},
		{
			// ESEARCH ALL of a SEARCH by number in the most fragmented
			// mailbox: 1,000,000 messages, odd UIDs, a 7.5 MB answer.
			name: "backend 7.5 MB ESEARCH translated",
			run: func(t *testing.T, s *buildSession, d lineDrain) {
				const n = 1_000_000
				// selectWith's steps, the lists written as they are made.
				s.send(s.c, "s SELECT INBOX\r\n")
				s.expect(s.br, s.b, "s SELECT INBOX")
				s.send(s.b, fmt.Sprintf("* %d EXISTS\r\n* OK [UIDVALIDITY 7] UIDs valid\r\ns OK [READ-WRITE] done\r\n", n))
				s.expect(s.br, s.b, "UG.1 UID SEARCH RETURN (ALL) ALL")
				go writeOddList(s.b, `* ESEARCH (TAG "UG.1") UID ALL `, n, "\r\nUG.1 OK done\r\n")
				s.expect(s.cr, s.c, fmt.Sprintf("* %d EXISTS", n))
				s.expect(s.cr, s.c, "* OK [UIDVALIDITY 7] UIDs valid")
				s.expect(s.cr, s.c, "s OK [READ-WRITE] done")
				s.send(s.c, "s1 SEARCH RETURN (ALL) ALL\r\n")
				s.expect(s.br, s.b, "s1 UID SEARCH RETURN (ALL) ALL")
				go writeOddList(s.b, `* ESEARCH (TAG "s1") UID ALL `, n, "\r\ns1 OK done\r\n")
				l, err := d.next(30 * time.Second)
				if err != nil || l != `* ESEARCH (TAG "s1") ALL 1:1000000` {
					t.Fatalf("got %q, %v", l, err)
				}
			},
		},
		{
			// An answer passed whole streams to the client up to
			// upstreamMaxStreamed, never held; past it the session ends
			// (half a line cannot be followed by a BYE).
			name: "backend 100 MB UID SEARCH passed whole",
			run: func(t *testing.T, s *buildSession, d lineDrain) {
				s.selected(true, 10, uidLine(true, "UG.1", 10, 1, 1, false))
				s.send(s.c, "s1 UID SEARCH ALL\r\n")
				s.expect(s.br, s.b, "s1 UID SEARCH ALL")
				go io.Copy(s.b, newPatternReader("* SEARCH", " 1", huge, "\r\n"))
				l, err := d.next(30 * time.Second)
				if err == nil || !strings.HasPrefix(l, "* SEARCH 1 1 1") {
					t.Fatalf("got %q, %v", l, err)
				}
				if !strings.Contains(s.logs.String(), "relay ended") {
					t.Fatalf("no log line:\n%.2000s", s.logs.String())
				}
			},
		},
		{
			// A backend nests 7,000,000 lists in a FETCH (14 MB): parsed
			// without recursion, within the line bound.
			name: "backend deep nesting",
			run: func(t *testing.T, s *buildSession, d lineDrain) {
				s.selected(true, 10, uidLine(true, "UG.1", 10, 1, 1, false))
				s.send(s.c, "f1 FETCH 1 (FLAGS)\r\n")
				s.expect(s.br, s.b, "f1 UID FETCH 1 (FLAGS)")
				const depth = 7_000_000
				go func() {
					io.Copy(s.b, io.MultiReader(
						newPatternReader("* 1 FETCH (UID 1 X-JUNK ", "(", depth, ""),
						newPatternReader("", ")", depth, ""),
						strings.NewReader(" FLAGS ())\r\nf1 OK done\r\n")))
				}()
				l, err := d.next(30 * time.Second)
				if err != nil || (l != "* BYE [UNAVAILABLE] Backend protocol error" && !strings.HasPrefix(l, "* 1 FETCH")) {
					t.Fatalf("got %q, %v", l, err)
				}
			},
		},
		{
			// Legacy: the backend claims 16,000,000 messages (the map's
			// limit is 16,777,216) and empties the mailbox with one
			// short resync answer. The client hears every EXPUNGE; uidgate
			// builds them a chunk at a time.
			name: "backend legacy mailbox emptied",
			run: func(t *testing.T, s *buildSession, d lineDrain) {
				const n = 16_000_000
				s.selected(true, n, fmt.Appendf(nil, "* ESEARCH (TAG \"UG.1\") UID ALL 1:%d\r\n", n))
				go replyLoop(s.b, s.br)
				got := 0
				for i := range 4 {
					s.send(s.c, fmt.Sprintf("n%d NOOP\r\n", i))
					l, k, err := d.until(fmt.Sprintf("n%d ", i), " EXPUNGE", 60*time.Second)
					if err != nil || l != fmt.Sprintf("n%d OK done", i) {
						t.Fatalf("got %q, %v", l, err)
					}
					got += k
				}
				if got != n {
					t.Fatalf("%d EXPUNGEs, want %d", got, n)
				}
			},
		},
		{
			// The SEARCH amplification of issue 16 at the default cap:
			// 2,000 messages, odd UIDs, "1:*" 7,000 times in a 64 KiB line.
			name: "client SEARCH amplification",
			run: func(t *testing.T, s *buildSession, d lineDrain) {
				s.selected(true, 2000, uidLine(true, "UG.1", 2000, 1, 2, false))
				s.send(s.c, "a SEARCH"+strings.Repeat(" 1:*", 7000)+"\r\n")
				l, err := d.next(30 * time.Second)
				if err != nil || l != "a NO [TOOBIG] Command too long to translate" {
					t.Fatalf("got %q, %v", l, err)
				}
			},
		},
		{
			// A client with max_line raised to 16 MiB nests 8,000,000
			// parentheses in a SEARCH.
			name: "client deep nesting",
			srv:  func(srv *Server) { srv.MaxLine = 16 << 20 },
			run: func(t *testing.T, s *buildSession, d lineDrain) {
				s.selected(true, 10, uidLine(true, "UG.1", 10, 1, 1, false))
				go replyLoop(s.b, s.br)
				const depth = 8_000_000
				go io.Copy(s.c, io.MultiReader(
					newPatternReader("a SEARCH ", "(", depth, ""),
					newPatternReader("ALL", ")", depth, ""),
					strings.NewReader("\r\n")))
				l, _, err := d.until("a ", "", 30*time.Second)
				if err != nil || !strings.HasPrefix(l, "a ") {
					t.Fatalf("got %q, %v", l, err)
				}
			},
		},
		{
			// A client line without end: BAD and BYE at max_line.
			name: "client 100 MB line",
			run: func(t *testing.T, s *buildSession, d lineDrain) {
				go io.Copy(s.c, newPatternReader("a SEARCH ", "x", huge, "\r\n"))
				l, err := d.next(30 * time.Second)
				if err != nil || l != "a BAD Line too long" {
					t.Fatalf("got %q, %v", l, err)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startSessionWith(t, caps, tc.srv, legacyBackend)
			d := newLineDrain(s.c, bufio.NewReader(s.c))
			s.cr = d.r // one reader of the client's side
			h := startHeapPeak()
			var once sync.Once
			peak := func() uint64 {
				var p uint64
				once.Do(func() { p = h.end() })
				return p
			}
			defer peak()
			tc.run(t, s, d)
			p := peak()
			t.Logf("heap peak growth %.1f MiB", float64(p)/(1<<20))
			if p > sessionMemBound {
				t.Fatalf("heap grew by %.1f MiB, past the bound of %d MiB", float64(p)/(1<<20), sessionMemBound>>20)
			}
		})
	}
}

// TestReleaseLinesChunked: a legacy resync that finds every other
// message of 10,000 gone releases 5,000 EXPUNGEs, about 100 KB of lines,
// so in several chunks: they reach the client complete and in order,
// highest number first, before the tagged answer.
func TestReleaseLinesChunked(t *testing.T) {
	const n = 10_000
	s := startBuildSession(t, "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN", legacyBackend)
	d := newLineDrain(s.c, bufio.NewReader(s.c))
	s.cr = d.r
	s.selected(false, n, uidLine(false, "", n, 1, 1, false))
	odd := uidLine(false, "", n/2, 1, 2, false)
	go func() {
		bd := newLineDrain(s.b, s.br)
		noops := 0
		for {
			line, err := bd.next(30 * time.Second)
			if err != nil {
				return
			}
			tag, rest, _ := strings.Cut(line, " ")
			var out string
			switch {
			case rest == "UID SEARCH ALL":
				out = string(odd)
			case strings.HasPrefix(rest, "UID SEARCH"):
				out = "* SEARCH\r\n" // around the reported place: all gone
			case rest == "NOOP":
				if noops++; noops == 1 {
					out = "* 1 EXPUNGE\r\n"
				}
			}
			if _, err := io.WriteString(s.b, out+tag+" OK done\r\n"); err != nil {
				return
			}
		}
	}()
	var got []int
	for i := 0; len(got) < n/2 && i < 4; i++ {
		s.send(s.c, fmt.Sprintf("n%d NOOP\r\n", i))
		for {
			l, err := d.next(30 * time.Second)
			if err != nil {
				t.Fatalf("after %d EXPUNGEs: %v", len(got), err)
			}
			if l == fmt.Sprintf("n%d OK done", i) {
				break
			}
			var k int
			if _, err := fmt.Sscanf(l, "* %d EXPUNGE", &k); err != nil {
				t.Fatalf("unexpected %q", l)
			}
			got = append(got, k)
		}
	}
	if len(got) != n/2 {
		t.Fatalf("%d EXPUNGEs, want %d", len(got), n/2)
	}
	for i, k := range got {
		if want := n - 2*i; k != want {
			t.Fatalf("EXPUNGE %d is %d, want %d", i, k, want)
		}
	}
	s.send(s.c, "f1 FETCH 1:* (FLAGS)\r\n")
	s.expect(s.cr, s.c, "f1 OK done") // the session goes on
}
