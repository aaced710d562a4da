package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"uidgate/rules"
)

// The differential conformance suite of issue 14. Each script of
// e2e/conformance/*.txt runs against a real server directly and through
// uidgate in both modes, each run on fresh mailboxes; the server is the
// oracle. Responses are compared step by step: tagged status and code;
// every other untagged response in order, with message numbers mapped to
// UIDs through the view of the client that heard them; and the view each
// client is left with after the step. A difference fails unless
// e2e/conformance/ALLOWLIST names it with its reason. The format is in
// e2e/conformance/README.md.

// confScript is one script of the corpus.
type confScript struct {
	name     string
	pos      string // file:line of its header
	messages int    // messages appended to {box} before it runs
	flags    map[int][]string
	box2     int // messages in {box2}; -1: no {box2}
	nologin  bool
	steps    []confStep
}

// confStep is what one session sends before waiting: one command, or
// several pipelined in one write.
type confStep struct {
	who  byte
	cmds []string
	line int
}

func parseCorpus(t *testing.T) []*confScript {
	files, err := filepath.Glob("conformance/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no conformance scripts: %v", err)
	}
	var out []*confScript
	seen := map[string]string{}
	for _, f := range files {
		scripts, err := parseScripts(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range scripts {
			if p, dup := seen[s.name]; dup {
				t.Fatalf("%s: script %q already defined at %s", s.pos, s.name, p)
			}
			seen[s.name] = s.pos
		}
		out = append(out, scripts...)
	}
	return out
}

var sessionLine = regexp.MustCompile(`^([A-Z])([:|]) (.+)$`)

func parseScripts(file string) ([]*confScript, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []*confScript
	var cur *confScript
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), " \t")
		pos := fmt.Sprintf("%s:%d", file, n)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "=== "):
			cur = &confScript{name: strings.TrimSpace(line[4:]), pos: pos, messages: 5, box2: -1, flags: map[int][]string{}}
			out = append(out, cur)
			continue
		case cur == nil:
			return nil, fmt.Errorf("%s: text before the first '=== name'", pos)
		case strings.HasPrefix(line, "@"):
			f := strings.Fields(line)
			bad := func() error { return fmt.Errorf("%s: bad directive %q", pos, line) }
			switch f[0] {
			case "@messages", "@box2":
				if len(f) != 2 {
					return nil, bad()
				}
				k, err := strconv.Atoi(f[1])
				if err != nil || k < 0 || k > 50 {
					return nil, bad()
				}
				if f[0] == "@box2" {
					cur.box2 = k
				} else {
					cur.messages = k
				}
			case "@flag":
				if len(f) < 3 {
					return nil, bad()
				}
				for _, s := range strings.Split(f[1], ",") {
					k, err := strconv.Atoi(s)
					if err != nil || k < 1 {
						return nil, bad()
					}
					cur.flags[k] = append(cur.flags[k], f[2:]...)
				}
			case "@nologin":
				cur.nologin = true
			default:
				return nil, bad()
			}
			continue
		}
		m := sessionLine.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("%s: want 'A: command' or 'A| pipelined command', got %q", pos, line)
		}
		who, cmd := m[1][0], m[3]
		if m[2] == "|" {
			if len(cur.steps) == 0 || cur.steps[len(cur.steps)-1].who != who {
				return nil, fmt.Errorf("%s: '%c|' must follow a line of session %c", pos, who, who)
			}
			st := &cur.steps[len(cur.steps)-1]
			st.cmds = append(st.cmds, cmd)
			continue
		}
		cur.steps = append(cur.steps, confStep{who: who, cmds: []string{cmd}, line: n})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, s := range out {
		if len(s.steps) == 0 {
			return nil, fmt.Errorf("%s: script %q has no steps", s.pos, s.name)
		}
	}
	return out, nil
}

// allowEntry is one line of the allowlist: a difference that is expected,
// and why.
type allowEntry struct {
	backend, mode, key, reason string
	used                       bool
}

func parseAllowlist(t *testing.T) []*allowEntry {
	b, err := os.ReadFile("conformance/ALLOWLIST")
	if err != nil {
		t.Fatal(err)
	}
	var out []*allowEntry
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			t.Fatalf("ALLOWLIST:%d: want 'backend mode key reason…', got %q", i+1, line)
		}
		out = append(out, &allowEntry{backend: f[0], mode: f[1], key: f[2], reason: strings.Join(f[3:], " ")})
	}
	return out
}

// allowed returns the entry that allows key for backend and mode, or nil.
func allowed(list []*allowEntry, backend, mode, key string) *allowEntry {
	for _, e := range list {
		if (e.backend == "*" || e.backend == backend) && (e.mode == "*" || e.mode == mode) && e.key == key {
			e.used = true
			return e
		}
	}
	return nil
}

// confRun is one run of a script against one address: what each step
// heard, and the UID lists the oracle session read after it.
type confRun struct {
	steps []confResult
}

type confResult struct {
	step  confStep
	cmds  []string // as sent, tags included
	resp  []string
	boxes map[string][]uint32 // mailbox → UIDs, read after the step
	box   string              // the session's selected mailbox after the step
	err   error
}

// confSession is one scripted client connection.
type confSession struct {
	pc      *pipeConn
	tags    int
	box     string
	idleTag string
}

// runScript runs s against addr on fresh mailboxes made directly at the
// backend (backendAddr).
func runScript(t *testing.T, s *confScript, kind, backendAddr, addr string) *confRun {
	t.Helper()
	serial := boxSerial.Add(1)
	box := mailboxName(kind, fmt.Sprintf("cf%da", serial))
	box2 := mailboxName(kind, fmt.Sprintf("cf%db", serial))
	setup := login(t, backendAddr, "alice")
	defer func() {
		setup.Delete(box).Wait()
		if s.box2 >= 0 {
			setup.Delete(box2).Wait()
		}
		setup.Logout().Wait()
	}()
	date := time.Date(2026, 11, 29, 1, 0, 0, 0, time.UTC)
	fill := func(b string, n int) {
		if err := setup.Create(b, nil).Wait(); err != nil {
			t.Fatalf("create %s: %v", b, err)
		}
		for i := 1; i <= n; i++ {
			msg := confMessage(i)
			cmd := setup.Append(b, int64(len(msg)), &imap.AppendOptions{Time: date.Add(time.Duration(i) * time.Hour)})
			cmd.Write(msg)
			cmd.Close()
			if _, err := cmd.Wait(); err != nil {
				t.Fatalf("append: %v", err)
			}
		}
	}
	fill(box, s.messages)
	if s.box2 >= 0 {
		fill(box2, s.box2)
	}
	if len(s.flags) > 0 {
		if _, err := setup.Select(box, nil).Wait(); err != nil {
			t.Fatal(err)
		}
		for n, fl := range s.flags {
			var flags []imap.Flag
			for _, f := range fl {
				flags = append(flags, imap.Flag(f))
			}
			if err := setup.Store(imap.SeqSetNum(uint32(n)), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: flags}, nil).Close(); err != nil {
				t.Fatalf("setup flags: %v", err)
			}
		}
		if err := setup.Unselect().Wait(); err != nil {
			t.Fatal(err)
		}
	}
	oracle, err := dialPipe(backendAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer oracle.c.Close()
	if _, err := oracle.run([]string{fmt.Sprintf("o LOGIN alice %q", testUsers["alice"])}, []string{"o"}); err != nil {
		t.Fatal(err)
	}
	subst := strings.NewReplacer("{box}", box, "{box2}", box2, "{pass}", strconv.Quote(testUsers["alice"]))
	sessions := map[byte]*confSession{}
	defer func() {
		for _, cs := range sessions {
			cs.pc.c.Close()
		}
	}()
	run := &confRun{}
	for _, st := range s.steps {
		res := confResult{step: st}
		cs := sessions[st.who]
		if cs == nil {
			pc, err := dialPipe(addr)
			if err != nil {
				t.Fatal(err)
			}
			cs = &confSession{pc: pc}
			sessions[st.who] = cs
			if !s.nologin {
				if _, err := pc.run([]string{fmt.Sprintf("%cL LOGIN alice %q", st.who, testUsers["alice"])}, []string{fmt.Sprintf("%cL", st.who)}); err != nil {
					t.Fatalf("login: %v", err)
				}
			}
		}
		res.resp, res.cmds, res.err = cs.step(st, subst)
		res.box = cs.box
		// The oracle reads the UID lists of the mailboxes in use, so that
		// numbers can be mapped to messages.
		res.boxes = map[string][]uint32{}
		for _, other := range sessions {
			if other.box != "" && res.boxes[other.box] == nil {
				res.boxes[other.box] = oracleUIDs(t, oracle, other.box)
			}
		}
		run.steps = append(run.steps, res)
		if res.err != nil {
			break
		}
	}
	return run
}

// confMessage is the i-th message of a fresh mailbox: subjects, senders
// and sizes differ so that SORT, THREAD and SEARCH have something to tell
// apart.
func confMessage(i int) []byte {
	subjects := []string{"alpha", "Re: alpha", "bravo", "charlie", "Re: bravo", "delta", "echo"}
	subj := subjects[(i-1)%len(subjects)]
	var b strings.Builder
	fmt.Fprintf(&b, "From: User %d <u%d@example.org>\r\nTo: Bob <bob@example.org>\r\nSubject: %s\r\nMessage-ID: <m%d@uidgate.test>\r\n", i, i%3, subj, i)
	if strings.HasPrefix(subj, "Re: ") && i > 2 {
		fmt.Fprintf(&b, "In-Reply-To: <m%d@uidgate.test>\r\nReferences: <m%d@uidgate.test>\r\n", i-1, i-1)
	}
	fmt.Fprintf(&b, "Date: Sun, %d Nov 2026 0%d:00:00 +0000\r\nContent-Type: text/plain\r\n\r\n", 20-i%9, i%10)
	for k := 0; k < i; k++ {
		fmt.Fprintf(&b, "Body line %d of message %d: the quick brown fox.\r\n", k, i)
	}
	return []byte(b.String())
}

var searchNums = regexp.MustCompile(`^\* SEARCH((?: \d+)*)`)

// oracleUIDs reads box's UIDs on the oracle session, straight from the
// backend: EXAMINE afresh, then UID SEARCH ALL.
func oracleUIDs(t *testing.T, o *pipeConn, box string) []uint32 {
	resp, err := o.run([]string{"o1 EXAMINE " + box, "o2 UID SEARCH ALL"}, []string{"o1", "o2"})
	if err != nil {
		t.Fatalf("oracle: %v", err)
	}
	var uids []uint32
	for _, r := range resp {
		if m := searchNums.FindStringSubmatch(r); m != nil {
			for _, f := range strings.Fields(m[1]) {
				u, _ := strconv.ParseUint(f, 10, 32)
				uids = append(uids, uint32(u))
			}
		}
	}
	return uids
}

// readWait bounds "@read": Dovecot and Cyrus 3.6 push changes to an idle
// client at once, Cyrus 2.3's idled within a second.
const readWait = 3 * time.Second

var (
	literalPart = regexp.MustCompile(`\{(msg|lit):([^}]*)\}`)
	readUntil   = regexp.MustCompile(`^@read (.+)$`)
)

// step sends st's commands and reads until each has its tagged answer (an
// IDLE: its continuation; "@read X": a response containing X).
func (cs *confSession) step(st confStep, subst *strings.Replacer) (resp, sent []string, err error) {
	pending := map[string]bool{}
	collect := func(stop func(string) bool) error {
		for {
			r, err := cs.pc.response()
			if err != nil {
				return err
			}
			resp = append(resp, r)
			if i := strings.IndexByte(r, ' '); i > 0 && pending[r[:i]] {
				delete(pending, r[:i])
			}
			if stop(r) {
				return nil
			}
		}
	}
	for _, raw := range st.cmds {
		raw = subst.Replace(raw)
		if m := readUntil.FindStringSubmatch(raw); m != nil {
			sent = append(sent, raw)
			// What another session's change brings comes at once or not
			// at all: a short wait keeps a missing one cheap.
			cs.pc.timeout = readWait
			defer func() { cs.pc.timeout = 0 }()
			err := collect(func(r string) bool { return strings.Contains(r, m[1]) })
			return resp, sent, err
		}
		if raw == "DONE" {
			if cs.idleTag == "" {
				return resp, sent, fmt.Errorf("DONE outside IDLE")
			}
			pending[cs.idleTag] = true
			cs.idleTag = ""
			sent = append(sent, raw)
			if _, err := io.WriteString(cs.pc.c, "DONE\r\n"); err != nil {
				return resp, sent, err
			}
			continue
		}
		cs.tags++
		tag := fmt.Sprintf("%c%d", st.who, cs.tags)
		line := tag + " " + raw
		sent = append(sent, line)
		pending[tag] = true
		// Literals are sent synchronizing: text up to "{n}", then wait
		// for the continuation (or the command's refusal).
		for {
			m := literalPart.FindStringSubmatchIndex(line)
			if m == nil {
				break
			}
			data := line[m[4]:m[5]]
			if line[m[2]:m[3]] == "msg" {
				data = string(message(data, 120))
			} else {
				data = strings.ReplaceAll(data, `\n`, "\r\n")
			}
			if _, err := fmt.Fprintf(cs.pc.c, "%s{%d}\r\n", line[:m[0]], len(data)); err != nil {
				return resp, sent, err
			}
			refused := false
			if err := collect(func(r string) bool {
				refused = !pending[tag]
				return strings.HasPrefix(r, "+") || refused
			}); err != nil {
				return resp, sent, err
			}
			if refused {
				line = ""
				break
			}
			line = data + line[m[1]:]
		}
		if line == "" {
			continue
		}
		if _, err := io.WriteString(cs.pc.c, line+"\r\n"); err != nil {
			return resp, sent, err
		}
		if strings.EqualFold(raw, "IDLE") {
			cs.idleTag = tag
			delete(pending, tag)
			err := collect(func(r string) bool { return strings.HasPrefix(r, "+") })
			return resp, sent, err
		}
	}
	if len(pending) > 0 {
		err = collect(func(string) bool { return len(pending) == 0 })
	}
	// The selected mailbox after the step: RFC 9051 §6.3.2, a failed
	// SELECT leaves none.
	for i, line := range sent {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		st := taggedStatus(resp, f[0])
		switch strings.ToUpper(f[1]) {
		case "SELECT", "EXAMINE":
			cs.box = ""
			if st == "OK" && len(f) > 2 {
				cs.box = f[2]
			}
		case "CLOSE", "UNSELECT":
			if st == "OK" {
				cs.box = ""
			}
		case "LOGOUT":
			cs.box = ""
		}
		_ = i
	}
	return resp, sent, err
}

func taggedStatus(resp []string, tag string) string {
	for _, r := range resp {
		if f := strings.Fields(r); len(f) > 1 && f[0] == tag {
			return strings.ToUpper(f[1])
		}
	}
	return ""
}

// confView is what one client knows of its mailbox: the UID of each
// message in its own numbering (0 where it cannot be known).
type confView struct {
	uids   []uint32
	recent string
}

func (v *confView) name(n uint64) string {
	if n == 0 || n > uint64(len(v.uids)) || v.uids[n-1] == 0 {
		return fmt.Sprintf("?%d", n)
	}
	return fmt.Sprintf("u%d", v.uids[n-1])
}

// grow extends the view to n messages: new messages have UIDs above every
// one it knows, so they are the next ones of the oracle's list.
func (v *confView) grow(n int, now []uint32) {
	var top uint32
	for _, u := range v.uids {
		top = max(top, u)
	}
	for _, u := range now {
		if len(v.uids) >= n {
			break
		}
		if u > top {
			v.uids = append(v.uids, u)
		}
	}
	for len(v.uids) < n {
		v.uids = append(v.uids, 0)
	}
}

func (v *confView) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "view: %d [", len(v.uids))
	for i, u := range v.uids {
		if i > 0 {
			b.WriteByte(' ')
		}
		if u == 0 {
			b.WriteByte('?')
		} else {
			fmt.Fprint(&b, u)
		}
	}
	b.WriteString("] recent " + v.recent)
	return b.String()
}

var (
	untaggedNum = regexp.MustCompile(`(?s)^\* (\d+) ([A-Za-z]+)(.*)$`)
	confMasks   = []struct {
		re   *regexp.Regexp
		with string
	}{
		{regexp.MustCompile(`cf\d+([ab])`), "cf$1"},
		{regexp.MustCompile(`(UIDVALIDITY|HIGHESTMODSEQ|APPENDUID|COPYUID) \d+`), "$1 N"},
		{regexp.MustCompile(`MODSEQ \(\d+\)`), "MODSEQ (N)"},
		{regexp.MustCompile(`(MAILBOXID|EMAILID|THREADID) \([^)]*\)`), "$1 (X)"},
		{dovecotTiming, ""},
	}
	codeAndText  = regexp.MustCompile(`^(\S+ (?:OK|NO|BAD|BYE|PREAUTH))(?: (\[[^\]]*\]))?`)
	capList      = regexp.MustCompile(`^(\* CAPABILITY |.*\[CAPABILITY )([^\]\r\n]*)`)
	unseenCode   = regexp.MustCompile(`\[UNSEEN (\d+)\]`)
	uidItem      = regexp.MustCompile(` UID \d+|UID \d+ `)
	flagsItem    = regexp.MustCompile(` FLAGS \([^)]*\)|FLAGS \([^)]*\) `)
	bodyItem     = regexp.MustCompile(`BODY\[|RFC822[ .)]|RFC822$|BINARY\[`)
	searchLike   = regexp.MustCompile(`^\* (SEARCH|SORT|THREAD)\b(.*)$`)
	esearchTag   = regexp.MustCompile(`^\* ESEARCH \(TAG "([^"]*)"\)( UID)?(.*)$`)
	allNumbers   = regexp.MustCompile(`\d+`)
	esearchItems = regexp.MustCompile(`(MIN|MAX|ALL) (\S+)`)
)

// confNormalizer turns one run's responses into comparable lines, with the
// normalizations the allowlist grants (keys "rule:…").
type confNormalizer struct {
	rule func(string) bool
}

func (cn confNormalizer) mask(s string) string {
	s = strings.TrimRight(s, "\r\n \t")
	for _, m := range confMasks {
		s = m.re.ReplaceAllString(s, m.with)
	}
	if m := capList.FindStringSubmatchIndex(s); m != nil && cn.rule("rule:capabilities") {
		caps := rules.ClientCaps(strings.Fields(s[m[4]:m[5]]))
		slices.Sort(caps)
		s = s[:m[4]] + strings.Join(caps, " ") + s[m[5]:]
	}
	return s
}

// run normalizes every step of a run.
func (cn confNormalizer) run(r *confRun) [][]string {
	views := map[byte]*confView{}
	var out [][]string
	for _, res := range r.steps {
		v := views[res.step.who]
		if v == nil {
			v = &confView{recent: "-"}
			views[res.step.who] = v
		}
		out = append(out, cn.step(res, v))
	}
	return out
}

type confCmd struct {
	tag, name string
	uid       bool
}

func (cn confNormalizer) step(res confResult, v *confView) []string {
	var cmds []confCmd
	selecting := false
	for _, s := range res.cmds {
		f := strings.Fields(strings.ToUpper(s))
		if len(f) < 2 || f[0] == "DONE" || strings.HasPrefix(f[0], "@") {
			continue
		}
		c := confCmd{tag: strings.Fields(s)[0], name: f[1]}
		if f[1] == "UID" && len(f) > 2 {
			c.name, c.uid = f[2], true
		}
		selecting = selecting || c.name == "SELECT" || c.name == "EXAMINE"
		cmds = append(cmds, c)
	}
	now := res.boxes[res.box]
	newView := false
	var untagged, expunged []string
	// Each tagged answer with the expunges that came before it (since the
	// previous one): RFC 9051 §6.4.3 puts a command's expunges before its
	// tagged answer, so which answer they precede counts; their order
	// among themselves is the server's choice.
	type segment struct {
		expunged []string
		tagged   string
	}
	var segs []segment
	answered := map[string]bool{}
	owner := func(name string) confCmd {
		for _, c := range cmds {
			if !answered[c.tag] && c.name == name {
				return c
			}
		}
		return confCmd{name: name}
	}
	for _, raw := range res.resp {
		line := cn.mask(raw)
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if f[0] != "*" && f[0] != "+" {
			// Tagged: this step's commands, or the IDLE that DONE ends.
			answered[f[0]] = true
			m := codeAndText.FindStringSubmatch(line)
			switch {
			case m == nil:
			case strings.HasSuffix(m[1], " BAD"):
				line = m[1]
			default:
				line = strings.TrimSpace(m[1] + " " + m[2])
			}
			slices.Sort(expunged)
			segs = append(segs, segment{expunged, line})
			expunged = nil
			continue
		}
		if f[0] == "+" {
			if !cn.rule("rule:own-continuation") {
				untagged = append(untagged, "+")
			}
			continue
		}
		if m := untaggedNum.FindStringSubmatch(line); m != nil {
			n, _ := strconv.ParseUint(m[1], 10, 32)
			switch strings.ToUpper(m[2]) {
			case "EXISTS":
				if selecting && newView {
					v.uids = v.uids[:0]
					newView = false
				}
				if int(n) < len(v.uids) {
					untagged = append(untagged, fmt.Sprintf("! EXISTS %d below the view's %d", n, len(v.uids)))
					continue
				}
				v.grow(int(n), now)
				continue
			case "RECENT":
				v.recent = m[1]
				continue
			case "EXPUNGE":
				if n == 0 || n > uint64(len(v.uids)) {
					untagged = append(untagged, fmt.Sprintf("! EXPUNGE %d with %d messages", n, len(v.uids)))
					continue
				}
				for _, c := range cmds {
					if answered[c.tag] {
						continue
					}
					if !c.uid && (c.name == "FETCH" || c.name == "STORE" || c.name == "SEARCH") {
						// RFC 9051 §7.5.1.
						untagged = append(untagged, "! EXPUNGE during "+c.name)
					}
					// Sent before any such command and not yet answered:
					// the EXPUNGE may be this command's.
					break
				}
				// The order of a command's expunges is the server's
				// choice; which messages went is what counts.
				expunged = append(expunged, "EXPUNGE "+v.name(n))
				v.uids = slices.Delete(v.uids, int(n-1), int(n))
				continue
			case "FETCH":
				rest := m[3]
				if cn.rule("rule:body-fetch-flags") && bodyItem.MatchString(rest) {
					rest = flagsItem.ReplaceAllString(rest, "")
					rest = strings.Replace(rest, "( ", "(", 1)
				}
				if cn.rule("rule:fetch-uid-item") {
					rest = uidItem.ReplaceAllString(rest, "")
				}
				untagged = append(untagged, "* "+v.name(n)+" FETCH"+rest)
				continue
			}
		}
		if strings.HasPrefix(line, "* FLAGS ") && selecting {
			newView = true
		}
		if strings.HasPrefix(line, "* ID ") && cn.rule("rule:own-id") {
			line = "* ID (…)"
		}
		if m := unseenCode.FindStringSubmatchIndex(line); m != nil {
			n, _ := strconv.ParseUint(line[m[2]:m[3]], 10, 32)
			line = line[:m[2]] + v.name(n) + line[m[3]:]
		}
		if m := searchLike.FindStringSubmatch(line); m != nil && !owner(strings.ToUpper(m[1])).uid {
			line = "* " + m[1] + allNumbers.ReplaceAllStringFunc(m[2], func(s string) string {
				n, _ := strconv.ParseUint(s, 10, 32)
				return v.name(n)
			})
		}
		if m := esearchTag.FindStringSubmatch(line); m != nil && m[2] == "" {
			line = "* ESEARCH (TAG) " + esearchItems.ReplaceAllStringFunc(m[3], func(s string) string {
				kv := strings.SplitN(s, " ", 2)
				var names []string
				for _, r := range strings.Split(kv[1], ",") {
					lo, hi, _ := strings.Cut(r, ":")
					a, err1 := strconv.ParseUint(lo, 10, 32)
					b, err2 := strconv.ParseUint(hi, 10, 32)
					if err2 != nil {
						b = a
					}
					if err1 != nil || b < a || b-a > 1000 {
						return s
					}
					for n := a; n <= b; n++ {
						names = append(names, v.name(n))
					}
				}
				return fmt.Sprintf("%s %s (%d parts)", kv[0], strings.Join(names, ","), strings.Count(kv[1], ",")+1)
			})
		}
		if m := codeAndText.FindStringSubmatch(line); m != nil && strings.HasPrefix(line, "* ") {
			// Untagged OK/NO/BAD/BYE: the code counts; the text is the
			// server's (or uidgate's) own words.
			line = strings.TrimSpace(m[1] + " " + m[2])
		}
		untagged = append(untagged, line)
	}
	// Tagged answers of pipelined commands may come in any order (RFC
	// 9051 §5.5); expunges after the last one (during IDLE) go last.
	slices.SortFunc(segs, func(a, b segment) int { return strings.Compare(a.tagged, b.tagged) })
	slices.Sort(expunged)
	out := untagged
	for _, sg := range segs {
		out = append(append(out, sg.expunged...), sg.tagged)
	}
	return append(append(out, expunged...), v.String())
}

// TestConformance runs the corpus against each real backend directly and
// through uidgate in the deployed (legacy) and the compliant mode.
func TestConformance(t *testing.T) {
	scripts := parseCorpus(t)
	if len(scripts) < 150 {
		t.Errorf("the corpus has %d scripts; issue 14 asks for at least 150", len(scripts))
	}
	allow := parseAllowlist(t)
	for _, kind := range allKinds {
		t.Run(kind, func(t *testing.T) {
			checkNoLeaks(t)
			be := startBackend(t, kind)
			var targets []pipeTarget
			for _, tg := range pipeModes(t, kind, be) {
				targets = append(targets, tg)
			}
			for _, s := range scripts {
				t.Run(s.name, func(t *testing.T) {
					direct := runScript(t, s, kind, be.Addr, be.Addr)
					if direct.steps[len(direct.steps)-1].err != nil {
						t.Fatalf("%s directly: %v", s.pos, direct.steps[len(direct.steps)-1].err)
					}
					for _, tg := range targets {
						via := runScript(t, s, kind, be.Addr, tg.gate.Addr)
						rule := func(key string) bool { return allowed(allow, kind, tg.name, key) != nil }
						cn := confNormalizer{rule: rule}
						if diff := confDiff(cn.run(direct), cn.run(via), direct, via); diff != "" {
							if e := allowed(allow, kind, tg.name, "script:"+s.name); e != nil {
								t.Logf("%s (%s): allowed difference (%s)\n%s", s.pos, tg.name, e.reason, diff)
								continue
							}
							t.Errorf("%s: through uidgate (%s) differs from %s directly\n%s", s.pos, tg.name, kind, diff)
						}
					}
				})
			}
		})
	}
	for _, e := range allow {
		if !e.used {
			t.Logf("ALLOWLIST entry %s %s %s was not needed in this run", e.backend, e.mode, e.key)
		}
	}
}

// confDiff describes the first step where two normalized runs differ.
func confDiff(d, v [][]string, direct, via *confRun) string {
	for i := 0; i < max(len(d), len(v)); i++ {
		var ds, vs []string
		if i < len(d) {
			ds = d[i]
		}
		if i < len(v) {
			vs = v[i]
		}
		var verr, derr error
		if i < len(via.steps) {
			verr = via.steps[i].err
		}
		if i < len(direct.steps) {
			derr = direct.steps[i].err
		}
		if slices.Equal(ds, vs) && (verr == nil) == (derr == nil) {
			continue
		}
		var st confStep
		var dr, vr, sent []string
		if i < len(direct.steps) {
			st, dr, sent = direct.steps[i].step, direct.steps[i].resp, direct.steps[i].cmds
		}
		if i < len(via.steps) {
			vr = via.steps[i].resp
		}
		return fmt.Sprintf("step at line %d, session %c: %q\n--- through uidgate (error %v):\n  %s\n--- directly (error %v):\n  %s\n--- raw through uidgate:\n%s--- raw directly:\n%s",
			st.line, st.who, sent, verr, strings.Join(vs, "\n  "), derr, strings.Join(ds, "\n  "), strings.Join(vr, ""), strings.Join(dr, ""))
	}
	return ""
}

// TestConfNormalizerExpungeOrder: expunges reported before EXPUNGE's
// tagged answer and the same expunges reported before the NOOP pipelined
// behind it normalize differently (RFC 9051 §6.4.3), while their order
// among themselves and the order of the tagged answers do not count.
func TestConfNormalizerExpungeOrder(t *testing.T) {
	cn := confNormalizer{rule: func(string) bool { return false }}
	norm := func(resp ...string) []string {
		res := confResult{cmds: []string{"a1 EXPUNGE", "a2 NOOP"}, resp: resp,
			boxes: map[string][]uint32{"b": {1, 2, 3}}, box: "b"}
		return cn.step(res, &confView{uids: []uint32{1, 2, 3, 4}, recent: "-"})
	}
	own := norm("* 2 EXPUNGE", "* 1 EXPUNGE", "a1 OK done", "a2 OK done")
	swapped := norm("* 1 EXPUNGE", "* 1 EXPUNGE", "a1 OK done", "a2 OK done")
	late := norm("a1 OK done", "* 2 EXPUNGE", "* 1 EXPUNGE", "a2 OK done")
	reordered := norm("* 2 EXPUNGE", "* 1 EXPUNGE", "a2 OK done", "a1 OK done")
	if slices.Equal(own, late) {
		t.Errorf("expunges after EXPUNGE's tagged answer normalize like its own:\n%q", late)
	}
	if !slices.Equal(own, swapped) {
		t.Errorf("the order of one command's expunges counts:\n%q\n%q", own, swapped)
	}
	if slices.Equal(own, reordered) {
		t.Errorf("expunges before the NOOP's answer instead of EXPUNGE's normalize alike:\n%q", reordered)
	}
}
