package proxy

import (
	"testing"

	"github.com/emersion/go-imap/v2"

	"uidgate/proxy/imapwire"
	"uidgate/sessionmap"
)

// FuzzRewrite feeds arbitrary commands to the rewriter over a mailbox
// with a pending expunge and a placeholder, and over one of 20,000
// messages with every other UID gone (each sequence set becomes the
// longest UID set): no panic, what it sends upstream is always a UID
// command with the client's tag, never past the expansion cap, and what
// it allocates is bounded by that cap (issue 16: "SEARCH 1:* 1:* …" took
// uidgate to 613 MB).
func FuzzRewrite(f *testing.F) {
	for _, s := range transcriptSeeds(f, "C") {
		f.Add(s)
	}
	for _, s := range conformanceSeeds(f) {
		f.Add(s)
	}
	large := oddMailbox(f, 20000)
	srv := &Server{ExpansionFactor: fuzzFactor, ExpansionFloor: fuzzFloor}
	for _, s := range []string{
		"a FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n",
		"a FETCH 5:3 RFC822\r\n",
		"a STORE 2,4 +FLAGS.SILENT (\\Seen)\r\n",
		"a STORE 1 (UNCHANGEDSINCE 5) FLAGS ()\r\n",
		"a COPY 1:2 {5}\r\nTrash\r\n",
		"a MOVE * \"Junk Mail\"\r\n",
		"a SEARCH RETURN (MIN MAX) CHARSET UTF-8 OR (1:3 NOT 5) SUBJECT {4}\r\ncafe KEYWORD 1\r\n",
		"a UID SEARCH 1:* UID 3:4 MODSEQ \"/flags/\\\\Seen\" all 5\r\n",
		"a SORT (REVERSE ARRIVAL) UTF-8 HEADER X-Foo bar 2\r\n",
		"a THREAD REFERENCES UTF-8 NOT (((((1)))))\r\n",
		"a FETCH $ (FLAGS)\r\n",
		"a FETCH 0 FLAGS\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cmd, ok := imapwire.ParseCommand(data)
		if !ok {
			return
		}
		var kind cmdKind
		switch kind = kindOf(cmd); kind {
		case cmdFetch, cmdStore, cmdCopy, cmdMove, cmdSearch, cmdSort, cmdThread:
		default:
			return
		}
		m := sessionmap.New()
		if err := m.Load([]uint32{2, 4, 6, 8, 10}); err != nil {
			t.Fatal(err)
		}
		m.ExpungeUpstream(2)
		m.Exists(5)
		m.AnnounceArrivals()
		c := &wireCmd{buf: data}
		// Literals inside: mark the ones the line structure announces.
		for i := 0; i < len(data); {
			j := i
			for j < len(data) && data[j] != '\n' {
				j++
			}
			if j == len(data) {
				break
			}
			line := data[i : j+1]
			if lit, ok := imapwire.TrailingLiteral(line); ok && lit.Size <= int64(len(data)-(j+1)) {
				end := j + 1 + int(lit.Size)
				c.lits = append(c.lits, litSpan{hdr: i + lit.Start, data: j + 1, end: end, lit: lit})
				i = end
				continue
			}
			i = j + 1
		}
		limit := srv.expansionCap(len(data))
		for i, m := range []*sessionmap.Map{m, large} {
			runs := []int{5, 20000}[i] // runs of consecutive UIDs in m
			var b builder
			before := allocated()
			res, err := rewriteCommand(c, cmd, kind, func(set imap.SeqSet) (imap.UIDSet, error) {
				return m.ClientSeqToUIDs(set)
			}, true, limit, &b)
			// The command as built (append doubles: twice the cap), the
			// UIDs of each sequence set written (8 bytes a run of UIDs,
			// at least 2 bytes out), and those of the set that passes
			// the cap, resolved before it is refused (sessionmap: 33
			// bytes a run, measured).
			if bound := uint64(8*limit + 64*runs + 256<<10); allocated()-before > bound {
				t.Fatalf("%d bytes allocated rewriting %d bytes (cap %d, bound %d): %.200q", allocated()-before, len(data), limit, bound, data)
			}
			if len(b.out) > limit && err == nil && res.answer == "" {
				t.Fatalf("%d bytes built past the cap %d: %.200q", len(b.out), limit, data)
			}
			if err != nil || res.answer != "" {
				continue
			}
			out, ok := imapwire.ParseCommand(b.out)
			if !ok || string(out.Tag) != string(cmd.Tag) || !out.UID {
				t.Fatalf("rewrote %q into %q", data, b.out)
			}
		}
	})
}
