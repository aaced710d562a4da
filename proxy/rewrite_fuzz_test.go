package proxy

import (
	"testing"

	"github.com/emersion/go-imap/v2"

	"uidgate/proxy/imapwire"
	"uidgate/sessionmap"
)

// FuzzRewrite feeds arbitrary commands to the rewriter over a mailbox
// with a pending expunge and a placeholder: no panic, and what it sends
// upstream is always a UID command with the client's tag.
func FuzzRewrite(f *testing.F) {
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
		var b builder
		res, err := rewriteCommand(c, cmd, kind, func(set imap.SeqSet) (imap.UIDSet, error) {
			return m.ClientSeqToUIDs(set)
		}, true, &b)
		if err != nil || res.answer != "" {
			return
		}
		out, ok := imapwire.ParseCommand(b.out)
		if !ok || string(out.Tag) != string(cmd.Tag) || !out.UID {
			t.Fatalf("rewrote %q into %q", data, b.out)
		}
	})
}
