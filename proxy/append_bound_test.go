package proxy

import (
	"fmt"
	"io"
	"strings"
	"testing"
)

// TestAppendManyLiteralsBounded: a MULTIAPPEND (RFC 3502) holds at most
// appendMem in memory; the literals past it go to temporary files, and
// the backend gets every byte. Past maxAppendLiterals messages the
// command is refused before anything goes upstream (issue 16: every
// literal of an APPEND was held in memory, however many).
func TestAppendManyLiteralsBounded(t *testing.T) {
	caps := "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN MULTIAPPEND"
	s := startBuildSession(t, caps)
	const n, size = 40, 60 << 10 // 2.4 MB: past appendMem
	body := strings.Repeat("x", size-2) + "\r\n"
	var cmd strings.Builder
	cmd.WriteString("a APPEND INBOX")
	for range n {
		fmt.Fprintf(&cmd, " {%d+}\r\n%s", size, body)
	}
	cmd.WriteString("\r\n")
	go io.WriteString(s.c, cmd.String())
	// The backend reads the command as uidgate sends it: the same bytes.
	want := cmd.String()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(s.br, got); err != nil || string(got) != want {
		t.Fatalf("backend got %d bytes (%v), differing from the command of %d", len(got), err, len(want))
	}
	s.send(s.b, "a OK appended\r\n")
	s.expect(s.cr, s.c, "a OK appended")

	// One literal past maxAppendLiterals: refused, nothing sent.
	var many strings.Builder
	many.WriteString("b APPEND INBOX")
	for range maxAppendLiterals {
		many.WriteString(" {1+}\r\nx")
	}
	many.WriteString(" {1}\r\n")
	go io.WriteString(s.c, many.String())
	s.expect(s.cr, s.c, "b NO [TOOBIG] APPEND too large")
	s.send(s.c, "c NOOP\r\n")
	s.expect(s.br, s.b, "c NOOP")
	s.send(s.b, "c OK done\r\n")
	s.expect(s.cr, s.c, "c OK done")
}
