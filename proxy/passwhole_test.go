package proxy

import (
	"fmt"
	"strings"
	"testing"
)

// TestLongLinesPassWhole: long answers that need no translation (UID
// SEARCH, ESEARCH of a UID SEARCH) reach the client byte for byte, a
// literal announced at the end of one included; a long answer to a SEARCH
// by number is still translated, not passed through.
func TestLongLinesPassWhole(t *testing.T) {
	const n = 50_000 // UIDs 1, 3, ..., 99999: lines of ~300 KB
	s := startBuildSession(t, "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN ESEARCH")
	s.selected(true, n, uidLine(true, "UG.1", n, 1, 2, false))

	// ESEARCH of a UID SEARCH: passed whole.
	s.send(s.c, "u1 UID SEARCH RETURN (ALL) ALL\r\n")
	s.expect(s.br, s.b, "u1 UID SEARCH RETURN (ALL) ALL")
	es := uidLine(true, "u1", n, 1, 2, false)
	go s.b.Write(append(es, "u1 OK done\r\n"...))
	s.expect(s.cr, s.c, strings.TrimSuffix(string(es), "\r\n"))
	s.expect(s.cr, s.c, "u1 OK done")

	// SEARCH of a UID SEARCH, ending with a literal (an extension's
	// value): the literal and the rest of the response follow it.
	s.send(s.c, "u2 UID SEARCH ALL\r\n")
	s.expect(s.br, s.b, "u2 UID SEARCH ALL")
	sr := uidLine(false, "", n, 1, 2, false)
	head := string(sr[:len(sr)-2]) + " X-EXT {5}"
	go s.b.Write([]byte(head + "\r\nab\r\nc\r\n* 3 RECENT\r\nu2 OK done\r\n"))
	s.expect(s.cr, s.c, head)
	s.expect(s.cr, s.c, "ab")
	s.expect(s.cr, s.c, "c")
	s.expect(s.cr, s.c, "* 3 RECENT")
	s.expect(s.cr, s.c, "u2 OK done")

	// SEARCH by number: rewritten, so its UIDs come back as numbers.
	s.send(s.c, "m1 SEARCH ALL\r\n")
	s.expect(s.br, s.b, "m1 UID SEARCH ALL")
	go s.b.Write(append(sr, "m1 OK done\r\n"...))
	var want strings.Builder
	want.WriteString("* SEARCH")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&want, " %d", i)
	}
	s.expect(s.cr, s.c, want.String())
	s.expect(s.cr, s.c, "m1 OK done")
}
