package e2e

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"uidgate/e2e/backends"
)

// This file holds the pipelining matrix of issue 12: after SELECT, commands
// sent in one write must all be answered through uidgate, and what the
// client hears must be what the server itself says when the same sequence
// is sent to it directly (the server is the oracle).

// answerTimeout bounds the wait for the answers of one pipelined write.
// A healthy server answers in milliseconds; a hang is what is tested for.
const answerTimeout = 10 * time.Second

// pipeConn is a raw IMAP client that reads responses whole, literals by
// their announced length, and records them as a transcript.
type pipeConn struct {
	c       net.Conn
	r       *bufio.Reader
	timeout time.Duration // answerTimeout if zero
}

func dialPipe(addr string) (*pipeConn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	pc := &pipeConn{c: c, r: bufio.NewReader(c)}
	if _, err := pc.response(); err != nil { // greeting
		c.Close()
		return nil, err
	}
	return pc, nil
}

var literalAtEnd = regexp.MustCompile(`\{(\d+)\+?\}\r\n$`)

// response reads one response; a literal is replaced by its length and a
// digest of its bytes, so that transcripts compare bodies exactly.
func (pc *pipeConn) response() (string, error) {
	wait := answerTimeout
	if pc.timeout > 0 {
		wait = pc.timeout
	}
	pc.c.SetReadDeadline(time.Now().Add(wait))
	var b strings.Builder
	for {
		line, err := pc.r.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			return b.String(), err
		}
		m := literalAtEnd.FindStringSubmatch(line)
		if m == nil || strings.HasPrefix(b.String(), "+") {
			return b.String(), nil
		}
		n, _ := strconv.Atoi(m[1])
		h := sha256.New()
		if _, err := io.CopyN(h, pc.r, int64(n)); err != nil {
			return b.String(), err
		}
		fmt.Fprintf(&b, "<%d bytes %x>", n, h.Sum(nil)[:6])
	}
}

// run writes cmds (tagged t1, t2, … by the caller) in one write and reads
// until every tag has its tagged answer, returning every response in order.
func (pc *pipeConn) run(cmds []string, tags []string) ([]string, error) {
	var w strings.Builder
	for _, c := range cmds {
		w.WriteString(c + "\r\n")
	}
	if _, err := io.WriteString(pc.c, w.String()); err != nil {
		return nil, err
	}
	pending := map[string]bool{}
	for _, t := range tags {
		pending[t] = true
	}
	var out []string
	for len(pending) > 0 {
		r, err := pc.response()
		if err != nil {
			return out, fmt.Errorf("%v (still waiting for %v)", err, keys(pending))
		}
		out = append(out, r)
		if i := strings.IndexByte(r, ' '); i > 0 && pending[r[:i]] {
			delete(pending, r[:i])
		}
		if strings.HasPrefix(r, "* BYE") {
			return out, fmt.Errorf("BYE (still waiting for %v)", keys(pending))
		}
	}
	return out, nil
}

func keys(m map[string]bool) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	return s
}

// pipeTarget is a backend and how uidgate is configured in front of it.
type pipeTarget struct {
	name   string
	kind   string // dovecot, cyrus, cyrus23
	be     *backends.Server
	gate   *gate
	box    string
	legacy bool
}

// pipeModes starts uidgate in front of be in each mode that matters: the
// deployed one (legacy, explicit \Seen, Cyrus namespace where Cyrus) and
// the compliant one.
func pipeModes(t *testing.T, kind string, be *backends.Server) []pipeTarget {
	var out []pipeTarget
	for _, legacy := range []bool{true, false} {
		b := deployedBackend(kind, be.Addr)
		b.Legacy, b.ExplicitSeen = legacy, legacy
		name := "plain"
		if legacy {
			name = "legacy"
		}
		out = append(out, pipeTarget{name: name, kind: kind, be: be, gate: startGate(t, gateOpts{backend: b}), box: mailboxName(kind, "pipe"), legacy: legacy})
	}
	return out
}

// boxSerial names each run's mailbox afresh: Cyrus keeps seen state by
// mailbox, and a mailbox deleted and created again under the same name
// within a second can inherit the old one's.
var boxSerial atomic.Int64

// resetBox deletes the previous run's mailbox and makes a new one, named
// base and a serial number, with four messages, the second one \Deleted
// so that EXPUNGE has something to do.
func resetBox(t *testing.T, addr, base string, prev *string) string {
	t.Helper()
	c := login(t, addr, "alice")
	defer c.Close()
	if *prev != "" {
		if err := c.Delete(*prev).Wait(); err != nil {
			t.Fatalf("delete %s: %v", *prev, err)
		}
	}
	box := fmt.Sprintf("%s%d", base, boxSerial.Add(1))
	*prev = box
	if err := c.Create(box, nil).Wait(); err != nil {
		t.Fatalf("create %s: %v", box, err)
	}
	for i := 1; i <= 4; i++ {
		appendMsg(t, c, box, message(fmt.Sprintf("pipe %d", i), 300))
	}
	if _, err := c.Select(box, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Store(imap.SeqSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	return box
}

// pipeCommands are the commands of the matrix, {box} standing for the
// test mailbox.
var pipeCommands = []string{
	"NOOP",
	`LIST "" "*"`,
	"STATUS {box} (MESSAGES UIDNEXT)",
	"SELECT {box}",
	"EXAMINE {box}",
	"FETCH 1 (FLAGS)",
	"UID FETCH 1:* (FLAGS)",
	`STORE 1 +FLAGS (\Flagged)`,
	"SEARCH ALL",
	"EXPUNGE",
	"CHECK",
	"FETCH 1 BODY[]",
}

// randomExtra join the matrix's commands in the random sequences.
var randomExtra = []string{
	"MOVE 1 {box}",
	"COPY 1:2 {box}",
	"UID SEARCH ALL",
	`STORE 1:* -FLAGS (\Seen)`,
	"FETCH 1:* (UID FLAGS)",
	"SEARCH 2:*",
}

// pipeSession logs in, selects the box, runs cmds pipelined in one write
// and then, one at a time, NOOP and a FETCH of every message's UID and
// flags: the view the client is left with.
func pipeSession(addr, box string, cmds []string) (out, final []string, err error) {
	pc, err := dialPipe(addr)
	if err != nil {
		return nil, nil, err
	}
	defer pc.c.Close()
	if _, err := pc.run([]string{fmt.Sprintf("l LOGIN alice %q", testUsers["alice"])}, []string{"l"}); err != nil {
		return nil, nil, fmt.Errorf("login: %v", err)
	}
	sel, err := pc.run([]string{"s SELECT " + box}, []string{"s"})
	if err != nil {
		return nil, nil, fmt.Errorf("select: %v", err)
	}
	var lines, tags []string
	for i, c := range cmds {
		tag := "t" + strconv.Itoa(i+1)
		tags = append(tags, tag)
		lines = append(lines, tag+" "+strings.ReplaceAll(c, "{box}", box))
	}
	out, err = pc.run(lines, tags)
	if err != nil {
		return out, nil, err
	}
	noop, err := pc.run([]string{"f1 NOOP"}, []string{"f1"})
	if err != nil {
		return out, nil, fmt.Errorf("final NOOP: %v", err)
	}
	// The client's own count, from what it was told.
	count, why := viewCount(append(append(sel, out...), noop...))
	if why != "" {
		return out, nil, fmt.Errorf("numbering: %s", why)
	}
	final = []string{fmt.Sprintf("view: %d messages", count)}
	if count > 0 {
		f, err := pc.run([]string{"f2 FETCH 1:* (UID FLAGS)"}, []string{"f2"})
		if err != nil {
			return out, nil, fmt.Errorf("final FETCH: %v", err)
		}
		final = append(final, f...)
	}
	pc.run([]string{"z LOGOUT"}, []string{"z"})
	return out, final, nil
}

var untaggedCount = regexp.MustCompile(`^\* (\d+) (EXISTS|EXPUNGE)\r\n$`)

// viewCount follows the EXISTS and EXPUNGE a client was told and returns
// its message count, or why they do not add up (RFC 9051 §7.4.1: an
// EXPUNGE names a message the client has; §7.3.1: EXISTS never shrinks
// the count).
func viewCount(resp []string) (uint32, string) {
	var n uint32
	reselect := false
	for _, r := range resp {
		if strings.HasPrefix(r, "* FLAGS ") {
			// A SELECT/EXAMINE's answer starts a new view (RFC 9051 §6.3.2).
			reselect = true
		}
		m := untaggedCount.FindStringSubmatch(r)
		if m == nil {
			continue
		}
		k, _ := strconv.ParseUint(m[1], 10, 32)
		switch {
		case m[2] == "EXISTS" && reselect:
			n, reselect = uint32(k), false
		case m[2] == "EXISTS" && uint32(k) < n:
			return 0, fmt.Sprintf("EXISTS %d below the %d messages the client has", k, n)
		case m[2] == "EXISTS":
			n = uint32(k)
		case k == 0 || uint32(k) > n:
			return 0, fmt.Sprintf("EXPUNGE %d with %d messages", k, n)
		default:
			n--
		}
	}
	return n, ""
}

// normalize masks what differs between two runs on two fresh copies of
// the same mailbox, and what a server may order as it likes: tagged
// answers of pipelined commands are compared per tag (RFC 9051 §5.5: a
// server may complete them in any order), untagged responses in order.
// EXISTS, EXPUNGE and RECENT are left to the final view: where they are
// announced differs by design (held, then released where allowed).
func normalize(resp []string) []string {
	var untagged, tagged []string
	for _, r := range resp {
		switch {
		case strings.HasPrefix(r, "* CAPABILITY"), strings.HasPrefix(r, "* OK ["):
			continue // capability filter; untagged OK codes (issue 14)
		case untaggedCount.MatchString(r), strings.HasSuffix(r, " RECENT\r\n"):
			continue
		}
		r = maskNumbers.ReplaceAllString(r, "$1 N")
		r = boxNumber.ReplaceAllString(r, "pipe")
		r = dovecotTiming.ReplaceAllString(r, "")
		r = capCode.ReplaceAllString(r, "[CAPABILITY …]")
		r = strings.TrimRight(r, "\r\n ")
		if f := strings.Fields(r); len(f) > 1 && f[1] == "BAD" && !strings.HasPrefix(r, "*") {
			// uidgate sends a command in its UID form: a server that
			// refuses it words the refusal differently ("Unrecognized UID
			// subcommand" for MOVE on Cyrus 2.3). BAD is what counts.
			r = f[0] + " BAD"
		}
		if strings.HasPrefix(r, "*") {
			untagged = append(untagged, r)
		} else {
			tagged = append(tagged, r)
		}
	}
	slices.Sort(tagged)
	return append(untagged, tagged...)
}

var bodyFlags = regexp.MustCompile(`^(\* \d+ FETCH \(.*?)FLAGS \([^)]*\) (.*BODY\[)`)

func stripBodyFlags(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = bodyFlags.ReplaceAllString(l, "$1$2")
	}
	return out
}

// taggedOnly keeps the tagged answers and the final view of normalized
// transcripts.
func taggedOnly(lines []string) []string {
	var out []string
	final := false
	for _, l := range lines {
		final = final || strings.HasPrefix(l, "view: ")
		if final || !strings.HasPrefix(l, "*") {
			out = append(out, l)
		}
	}
	return out
}

var (
	boxNumber     = regexp.MustCompile(`pipe\d+`)
	maskNumbers   = regexp.MustCompile(`(UIDVALIDITY|HIGHESTMODSEQ|MODSEQ \(?|APPENDUID|COPYUID) \d+`)
	dovecotTiming = regexp.MustCompile(` \([^()]*\d\.\d+[^()]*\)\.?\r\n$`)
	capCode       = regexp.MustCompile(`\[CAPABILITY [^\]]*\]`)
)

// comparePipelined runs cmds directly and through uidgate, each on a fresh
// copy of the mailbox, and reports the first difference.
func comparePipelined(t *testing.T, tg pipeTarget, cmds []string) {
	t.Helper()
	var box string
	defer func() {
		if box != "" {
			c := login(t, tg.be.Addr, "alice")
			c.Delete(box).Wait()
			c.Close()
		}
	}()
	direct, dfinal, err := pipeSession(tg.be.Addr, resetBox(t, tg.be.Addr, tg.box, &box), cmds)
	if err != nil {
		t.Fatalf("direct %q: %v\n%s", cmds, err, strings.Join(direct, ""))
	}
	via, vfinal, err := pipeSession(tg.gate.Addr, resetBox(t, tg.be.Addr, tg.box, &box), cmds)
	if err != nil {
		t.Fatalf("through uidgate %q: %v\nreceived:\n%s\ndirect:\n%s", cmds, err, strings.Join(via, ""), strings.Join(direct, ""))
	}
	d := append(normalize(direct), normalize(dfinal)...)
	v := append(normalize(via), normalize(vfinal)...)
	if tg.kind == "dovecot" {
		// Dovecot runs pipelined commands side by side: which of two
		// answers for one message comes first, and whether an unchanged
		// FLAGS item is sent again, depend on timing, and uidgate's locks
		// serialize what Dovecot would overlap. There the tagged answers
		// and the view the client is left with are compared; the Cyrus
		// servers answer in order, and every response is compared.
		d, v = taggedOnly(d), taggedOnly(v)
	}
	if tg.legacy {
		// Explicit \Seen asks FLAGS with every body fetch, so the answer
		// carries them even where the server would leave them out (\Seen
		// already set); what \Seen became is compared in the final view.
		d, v = stripBodyFlags(d), stripBodyFlags(v)
	}
	if tg.legacy && slices.Contains(cmds[:len(cmds)-1], "EXPUNGE") {
		// Known gap (issue 14): on a legacy backend uidgate learns what
		// an EXPUNGE removed by UID before its OK only when nothing is
		// pipelined behind it; otherwise the client hears "* n EXPUNGE"
		// at the next command, and numbers in between are of the view it
		// still has. Compared there: the tagged answers and the view it
		// is left with.
		d, v = taggedOnly(d), taggedOnly(v)
	}
	if strings.Join(d, "\n") != strings.Join(v, "\n") {
		t.Errorf("%q: through uidgate\n%s\n--- directly\n%s", cmds, strings.Join(via, "")+strings.Join(vfinal, ""), strings.Join(direct, "")+strings.Join(dfinal, ""))
	}
}

// usesNumbers reports a command of the pool that names messages by number.
func usesNumbers(c string) bool {
	for _, p := range []string{"FETCH ", "STORE ", "COPY ", "MOVE ", "SEARCH 2:*"} {
		if strings.HasPrefix(c, p) {
			return true
		}
	}
	return false
}

// forEachTarget runs f against each backend, in each mode of uidgate.
func forEachTarget(t *testing.T, f func(t *testing.T, tg pipeTarget)) {
	for _, kind := range allKinds {
		t.Run(kind, func(t *testing.T) {
			checkNoLeaks(t)
			be := startBackend(t, kind)
			for _, tg := range pipeModes(t, kind, be) {
				t.Run(tg.name, func(t *testing.T) { f(t, tg) })
			}
		})
	}
}

// TestPipelinedPairs sends every ordered pair of the matrix's commands in
// one write after SELECT, on every backend and mode.
func TestPipelinedPairs(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tg pipeTarget) {
		for _, a := range pipeCommands {
			for _, b := range pipeCommands {
				comparePipelined(t, tg, []string{a, b})
			}
		}
	})
}

// TestPipelinedRandom sends seeded random sequences of 2–8 commands in one
// write, directly and through uidgate.
func TestPipelinedRandom(t *testing.T) {
	const sequences = 25
	forEachTarget(t, func(t *testing.T, tg pipeTarget) {
		rng := rand.New(rand.NewPCG(12, uint64(len(tg.kind))))
		pool := append(slices.Clip(pipeCommands), randomExtra...)
		for range sequences {
			cmds := make([]string, 2+rng.IntN(7))
			moved := false
			for i := range cmds {
				for {
					cmds[i] = pool[rng.IntN(len(pool))]
					// RFC 9051 §5.5: a client waits for a command that
					// renumbers its own view (MOVE of message 1) before it
					// uses numbers again; pipelined, their meaning is the
					// server's guess (uidgate keeps the view they were
					// written in).
					if !moved || !usesNumbers(cmds[i]) {
						break
					}
				}
				moved = moved || strings.HasPrefix(cmds[i], "MOVE ")
			}
			comparePipelined(t, tg, cmds)
		}
	})
}
