package proxy

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"uidgate/proxy/imapwire"
	"uidgate/sessionmap"
)

// oddMailbox is a map of n messages with every other UID gone (UIDs 1, 3,
// 5, …): the most fragmented a mailbox gets, so every sequence set
// becomes the longest UID set.
func oddMailbox(tb testing.TB, n int) *sessionmap.Map {
	uids := make([]uint32, n)
	for i := range uids {
		uids[i] = uint32(2*i + 1)
	}
	m := sessionmap.New()
	if err := m.Load(uids); err != nil {
		tb.Fatal(err)
	}
	return m
}

// TestRewriteExpansionConfigurable: the rewrite's bound is
// max(floor, factor × the command's length), and what is past it is
// refused before the UID set is written.
func TestRewriteExpansionConfigurable(t *testing.T) {
	m := oddMailbox(t, 2000) // "1:*" is 1,3,…,3999: 9,444 bytes
	for _, tc := range []struct {
		line          string
		factor, floor int
		tooBig        bool
	}{
		{"a FETCH 1:* (FLAGS)\r\n", 0, 0, false},           // defaults: 16 MiB
		{"a FETCH 1:* (FLAGS)\r\n", 16, 64 << 10, false},   // 64 KiB floor
		{"a FETCH 1:* (FLAGS)\r\n", 16, 4096, true},        // 4 KiB floor, 16 × 21 bytes
		{"a FETCH 1:* (FLAGS)\r\n", 1024, 4096, false},     // 1024 × 21 = 21,504: fits
		{"a SEARCH 1:* 1:*\r\n", 16, 16 << 10, true},       // the second set is past it
		{"a SEARCH 1:* 1:*\r\n", 16, 32 << 10, false},      //
		{"a SEARCH 1:10 OR 11 12\r\n", 1, 64 << 10, false}, // small: the floor
	} {
		t.Run(fmt.Sprintf("%s/%d/%d", strings.TrimSpace(tc.line), tc.factor, tc.floor), func(t *testing.T) {
			srv := &Server{ExpansionFactor: tc.factor, ExpansionFloor: tc.floor}
			line := []byte(tc.line)
			cmd, _ := imapwire.ParseCommand(line)
			limit := srv.expansionCap(len(line))
			var b builder
			_, err := rewriteCommand(&wireCmd{buf: line}, cmd, kindOf(cmd), func(set imap.SeqSet) (imap.UIDSet, error) {
				return m.ClientSeqToUIDs(set)
			}, false, limit, &b)
			if got := errors.Is(err, errCommandTooLong); got != tc.tooBig {
				t.Fatalf("cap %d: too big %v (%v), want %v; %d bytes out", limit, got, err, tc.tooBig, len(b.out))
			}
			if len(b.out) > limit {
				t.Fatalf("%d bytes built past the cap %d", len(b.out), limit)
			}
		})
	}
	if tc := (&Server{ExpansionFactor: 1024, ExpansionFloor: 4096}); tc.expansionCap(21) != 21504 {
		t.Fatalf("cap = %d", tc.expansionCap(21))
	}
}

// TestBackendExpansionEndsSession: a backend response whose translation
// would be past the cap is not relayed; the session ends with BYE, and
// the log names the backend. Here (factor 1, floor 30 bytes) an
// unsolicited flag update for upstream message 9, which is message 10 to
// a client that has not yet been told of an expunge, is one byte longer
// translated: the smallest expansion there is.
func TestBackendExpansionEndsSession(t *testing.T) {
	s := startSessionWith(t, "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN", func(srv *Server) {
		srv.ExpansionFactor, srv.ExpansionFloor = 1, 30
	})
	s.selected(false, 10, searchLine([]int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}))
	s.send(s.c, "f1 FETCH 1 (FLAGS)\r\n")
	s.expect(s.br, s.b, "f1 UID FETCH 1 (FLAGS)")
	// The EXPUNGE is held (a FETCH is in flight, RFC 9051 §7.5.1): the
	// client still counts 10 messages, and upstream 9 is its 10.
	s.send(s.b, "* 1 EXPUNGE\r\n* 9 FETCH (FLAGS (\\Seen \\Answered \\Flagged $Label1))\r\n")
	s.expect(s.cr, s.c, "* BYE [UNAVAILABLE] Backend response too large to translate")
	logs := s.logs.String()
	if !strings.Contains(logs, `"backend":"scripted"`) || !strings.Contains(logs, "backend response expands past the cap") {
		t.Fatalf("no log line naming the backend:\n%s", logs)
	}
}

// TestParseESearchUnterminated: an ESEARCH correlator whose string never
// ends is read as far as it goes; it once looped for ever, holding the
// session's state lock (FuzzResponses, its corpus keeps the input).
func TestParseESearchUnterminated(t *testing.T) {
	for _, in := range []string{`(TAG "o`, `(TAG "o" "x`, `(TAG "a\`, `(TAG {5}`} {
		done := make(chan esearch, 1)
		go func() { done <- parseESearch([]byte(in)) }()
		select {
		case <-done:
		case <-time.After(stepTimeout):
			t.Fatalf("parseESearch(%q) does not return", in)
		}
	}
}

// TestSelectHeldBounded: the responses a SELECT's map build holds back
// are bounded; a backend that never ends them loses the session, with a
// BYE, instead of filling uidgate's memory.
func TestSelectHeldBounded(t *testing.T) {
	s := startBuildSession(t, "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN")
	s.send(s.c, "s SELECT INBOX\r\n")
	s.expect(s.br, s.b, "s SELECT INBOX")
	line := "* OK [PERMANENTFLAGS (" + strings.Repeat("$Keyword ", 1000) + ")] held\r\n"
	go func() {
		for range maxHeldSelect/len(line) + 2 {
			if _, err := io.WriteString(s.b, line); err != nil {
				return
			}
		}
	}()
	s.expect(s.cr, s.c, "* BYE [UNAVAILABLE] Backend protocol error")
}
