package proxy

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
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

// Shared by the fuzzers of both directions: seeds from the protocol cases
// of testdata/transcripts and ../e2e/conformance, and the per-iteration
// memory check.

// transcriptSeeds returns, for each transcript, the lines one side sends
// (who: "C" the client, "B" the backend) as one stream, and each command
// or response alone (a line announcing a literal joined with the lines
// that follow it).
func transcriptSeeds(tb testing.TB, who string) [][]byte {
	files, err := filepath.Glob("testdata/transcripts/*.txt")
	if err != nil || len(files) == 0 {
		tb.Fatalf("no transcripts: %v", err)
	}
	var seeds [][]byte
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		var stream, one []byte
		for _, l := range strings.Split(string(data), "\n") {
			text, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), who+": ")
			if !ok || strings.HasPrefix(text, "<") {
				continue
			}
			b := unescape(tb, text)
			stream = append(stream, b...)
			one = append(one, b...)
			if _, lit := imapwire.TrailingLiteral(b); !lit && bytes.HasSuffix(b, []byte("\n")) {
				seeds = append(seeds, one)
				one = nil
			}
		}
		if len(stream) > 0 {
			seeds = append(seeds, stream)
		}
	}
	return seeds
}

// conformanceSeeds returns the client commands of the e2e conformance
// corpus (e2e/conformance/README.md), its placeholders filled in.
func conformanceSeeds(tb testing.TB) [][]byte {
	files, _ := filepath.Glob("../e2e/conformance/*.txt")
	placeholder := regexp.MustCompile(`\{(box2?|pass|msg:[^}]*|lit:[^}]*)\}`)
	var seeds [][]byte
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		for _, l := range strings.Split(string(data), "\n") {
			if len(l) < 3 || l[0] < 'A' || l[0] > 'Z' || (l[1] != ':' && l[1] != '|') || strings.HasPrefix(l[3:], "@") {
				continue
			}
			cmd := placeholder.ReplaceAllStringFunc(l[3:], func(p string) string {
				switch {
				case p == "{box}":
					return "INBOX"
				case p == "{box2}":
					return "Trash"
				case p == "{pass}":
					return `"pw"`
				}
				return "{5}\r\nhello"
			})
			seeds = append(seeds, []byte("a "+cmd+"\r\n"))
		}
	}
	return seeds
}

// allocated returns the bytes allocated by the process so far, exactly
// (runtime.ReadMemStats: a short stop-the-world; runtime/metrics counts
// small allocations a span at a time, too coarsely for these bounds).
func allocated() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// fuzzConn is a connection that takes every write (keeping it, to be
// checked) and reads nothing: the client's and the backend's ends of a
// fuzzed session.
type fuzzConn struct{ bytes.Buffer }

func (c *fuzzConn) Read([]byte) (int, error)         { return 0, net.ErrClosed }
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// toldClient sums up what a client was sent: how many EXPUNGEs, the
// highest EXISTS, and the bytes of everything else.
func toldClient(out []byte) (expunges, maxExists uint32, other int) {
	for _, l := range bytes.SplitAfter(out, []byte("\n")) {
		r, ok := imapwire.ParseResponse(l)
		switch {
		case ok && r.HasNum && imapwire.EqualFold(r.Name, "EXPUNGE"):
			expunges++
		case ok && r.HasNum && imapwire.EqualFold(r.Name, "EXISTS"):
			maxExists = max(maxExists, r.Num)
			other += len(l)
		default:
			other += len(l)
		}
	}
	return expunges, maxExists, other
}

// Bounds of the fuzzed session's translations: small, so that a missing
// bound shows at the sizes a fuzzer tries.
const (
	fuzzFactor = 16
	fuzzFloor  = 64 << 10
)

// responseSession is a session logged in to a backend whose responses are
// data, with a selected mailbox of UIDs 2, 4, …, 20 whose upstream
// message 3 (UID 6) is expunged but not yet told to the client, and one
// arrival not yet resolved; in flight: a rewritten SEARCH (s1), THREAD
// (t1), ESEARCH (e1), ESORT (o1, as the client's tag "a-long-client-tag"
// upstream "UGC.1"), FETCH of RFC822 with explicit \Seen (f1), STORE
// (w1), and, legacy, uidgate's resync (UG.9).
func responseSession(tb testing.TB, data []byte, legacy bool, logs *bytes.Buffer) (*session, *relayState, *fuzzConn) {
	client, backend := &fuzzConn{}, &fuzzConn{}
	srv := &Server{ExpansionFactor: fuzzFactor, ExpansionFloor: fuzzFloor}
	log := zerolog.New(logs).Level(zerolog.WarnLevel)
	ss := &session{
		srv:     srv,
		log:     log,
		conn:    client,
		rawConn: client,
		cw:      newSyncWriter(client),
		up:      &upstream.Conn{Conn: backend, R: newUpstreamReader(bytes.NewReader(data))},
		uw:      newFlushWriter(backend),
		done:    make(chan struct{}),
		backend: "fuzzed",
		legacy:  legacy,
	}
	ss.ctx, ss.cancelCtx = context.WithCancel(context.Background())
	m := sessionmap.New()
	m.MaxMessages = 1 << 16
	uids := make([]uint32, 10)
	for i := range uids {
		uids[i] = uint32(2 * (i + 1))
	}
	if err := m.Load(uids); err != nil {
		tb.Fatal(err)
	}
	if !legacy {
		m.ExpungeUpstream(3)
	}
	m.Exists(m.UpstreamCount() + 1)
	rs := &relayState{
		tags:    map[string]pendingCmd{},
		litCh:   make(chan litDecision, 1),
		legacy:  legacy,
		esearch: true,
		sel:     &selection{m: m, legacy: legacy, state: selReady, tag: "s", validity: 7},
	}
	rs.cond = sync.NewCond(&rs.mu)
	rs.selected = "INBOX"
	add := func(tag string, pc pendingCmd) {
		rs.seqN++
		pc.seq = rs.seqN
		rs.tags[tag] = pc
	}
	add("s1", pendingCmd{kind: cmdSearch, rewritten: true, resultsAreUIDs: true, forbidsExpunge: true})
	add("t1", pendingCmd{kind: cmdThread, rewritten: true, resultsAreUIDs: true, forbidsExpunge: true})
	add("e1", pendingCmd{kind: cmdSearch, rewritten: true, resultsAreUIDs: true, esearch: true, forbidsExpunge: true})
	add("UGC.1", pendingCmd{kind: cmdSort, rewritten: true, resultsAreUIDs: true, esearch: true, clientTag: "a-long-client-tag"})
	add("f1", pendingCmd{kind: cmdFetch, rewritten: true, forbidsExpunge: true, renameRFC822: legacy, answersAll: true})
	add("w1", pendingCmd{kind: cmdStore, rewritten: true, answersAll: true})
	rs.searchQ = []string{"s1", "t1"}
	rs.fetchQ = []string{"f1", "w1"}
	if legacy {
		add("UG.9", pendingCmd{inject: injectResync})
		rs.injected = "UG.9"
		rs.sel.dirty = true
	}
	ss.rs = rs
	return ss, rs, client
}

// FuzzResponses feeds arbitrary backend output through the whole backend
// → client path (upstreamToClient: reading, literals, translation through
// the session's map, the schedule of held expunges and arrivals) of a
// compliant and a legacy session. It must not panic, and what it writes
// and allocates must be bounded by the input: to the client, at most
// fuzzFactor × the input plus 4 KB (what the fixed state adds: EXISTS,
// held FETCH data, BYE), and no more EXPUNGEs than messages it was told
// of; allocated, at most 1 MiB plus 64 bytes per input byte and 256 per
// message the client was told of (a backend may claim a large mailbox
// with one EXISTS line, and empty it with one short UID list: the
// client must then hear every EXPUNGE; docs/HARDENING.md measures it).
func FuzzResponses(f *testing.F) {
	for _, s := range transcriptSeeds(f, "B") {
		f.Add(s)
	}
	for _, s := range []string{
		"* SEARCH 2 4 8 20\r\ns1 OK done\r\n",
		"* SEARCH 2 4 (MODSEQ 9)\r\n",
		"* THREAD (2 (4)(8 10))(12)\r\nt1 OK done\r\n",
		"* ESEARCH (TAG \"e1\") UID MIN 4 MAX 20 ALL 4:8,12 COUNT 4\r\n",
		"* ESEARCH (TAG \"UGC.1\") UID ALL 20,2,4:8,10\r\nUGC.1 OK sorted\r\n",
		"* ESEARCH (TAG \"UGC.1\") UID ALL 1:50000000\r\n",
		"* ESEARCH (TAG \"UGC.1\") UID ALL 1:11\r\n",
		"* ESEARCH (TAG \"e1\") UID ALL 1:4294967295\r\n",
		"* 2 FETCH (UID 4 BODY[] {5}\r\nhello FLAGS (\\Seen))\r\nf1 OK done\r\n",
		"* 4 FETCH (FLAGS (\\Seen) UID 8 MODSEQ (5))\r\n* 9 FETCH (FLAGS ())\r\n",
		"* 11 FETCH (UID 22 FLAGS ())\r\n* 12 EXISTS\r\n",
		"* 1 EXPUNGE\r\n* 3 EXPUNGE\r\ns1 OK done\r\nw1 OK [MODIFIED 2:6,8] done\r\n",
		"* VANISHED (EARLIER) 1:4294967295\r\n",
		"* OK [UNSEEN 9] first\r\n* OK [UIDVALIDITY 7] same\r\n",
		"* SEARCH 2 4 6 8 10 12 14 16 18 20 22\r\nUG.9 OK done\r\n",
		"* 60000 EXISTS\r\n* SEARCH\r\nUG.9 OK done\r\ns1 OK\r\nt1 OK\r\ne1 OK\r\nf1 OK\r\nw1 OK\r\nUGC.1 OK\r\n",
		"* 4294967296 FETCH (FLAGS ())\r\n",
		"* THREAD (4294967296)\r\n",
		"+ go ahead\r\n* BYE bye\r\n",
		"* CAPABILITY IMAP4rev1 QRESYNC CONDSTORE LITERAL+\r\n",
		"* 1 FETCH (BODY[TEXT] {99999999}\r\nshort",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, legacy := range []bool{false, true} {
			var logs bytes.Buffer
			ss, rs, client := responseSession(t, data, legacy, &logs)
			before := allocated()
			err := ss.upstreamToClient(rs)
			grew := allocated() - before
			if err != nil && err.Error() == "relay panic" {
				t.Fatalf("legacy %v: panic:\n%s", legacy, logs.String())
			}
			expunges, exists, other := toldClient(client.Bytes())
			told := max(exists, 10) // the client knew 10 messages
			if expunges > told {
				t.Fatalf("legacy %v: %d EXPUNGEs for %d messages", legacy, expunges, told)
			}
			if limit := fuzzFactor*len(data) + 4096; other > limit {
				t.Fatalf("legacy %v: %d bytes to the client for %d bytes of input (bound %d)", legacy, other, len(data), limit)
			}
			// The recording of the client's bytes is allocated too.
			if limit := uint64(1<<20 + 64*len(data) + 256*int(told) + 4*client.Len()); grew > limit {
				t.Fatalf("legacy %v: %d bytes allocated for %d bytes of input, %d messages (bound %d)", legacy, grew, len(data), told, limit)
			}
		}
	})
}
