package proxy

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"uidgate/upstream"
)

func legacyBackend(b *upstream.Backend) { b.Legacy = true }

// searchLine is "* SEARCH" of uids, CRLF-terminated.
func searchLine(uids []int) []byte {
	var b bytes.Buffer
	b.WriteString("* SEARCH")
	for _, u := range uids {
		fmt.Fprintf(&b, " %d", u)
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// TestLegacyResyncLongList is norm-legacy-resync.txt at 100,000 messages:
// the resync's "* SEARCH" (Cyrus 2.3 has no ESEARCH) is far beyond the read
// buffer, so it is parsed as it arrives; what really went and came is
// announced as with a short list, and numbers map by the new list.
func TestLegacyResyncLongList(t *testing.T) {
	const n = 100_000
	uids := make([]int, n) // 2, 4, ..., 200000
	for i := range uids {
		uids[i] = 2 * (i + 1)
	}
	s := startBuildSession(t, "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN", legacyBackend)
	s.selected(false, n, searchLine(uids))

	// A legacy EXPUNGE number is not trusted: uidgate asks about the
	// UIDs around its place before n1's OK. The number is wrong: UID 102
	// (message 51) went, and none of those asked about; it does not add
	// up, so the whole list is read before the next command. It says
	// UID 102 went and UID 200001 came.
	s.send(s.c, "n1 NOOP\r\n")
	s.expect(s.br, s.b, "n1 NOOP")
	s.send(s.b, fmt.Sprintf("* 2 EXPUNGE\r\n* %d EXISTS\r\nn1 OK done\r\n", n))
	s.expect(s.br, s.b, "UG.2 UID FETCH 2,4,6,8 (UID)")
	s.send(s.b, "* 1 FETCH (UID 2)\r\n* 2 FETCH (UID 4)\r\n* 3 FETCH (UID 6)\r\n* 4 FETCH (UID 8)\r\nUG.2 OK done\r\n")
	s.expect(s.cr, s.c, "n1 OK done")
	s.send(s.c, "n2 NOOP\r\n")
	next := append(append([]int{}, uids[:50]...), uids[51:]...)
	next = append(next, 200001)
	s.expect(s.br, s.b, "UG.3 UID SEARCH ALL")
	go s.b.Write(append(searchLine(next), "UG.3 OK done\r\n"...))
	s.expect(s.cr, s.c, fmt.Sprintf("* %d EXISTS", n+1))
	s.expect(s.br, s.b, "n2 NOOP")
	s.send(s.b, "n2 OK done\r\n")
	s.expect(s.cr, s.c, "* 51 EXPUNGE")
	s.expect(s.cr, s.c, "n2 OK done")

	s.send(s.c, "f1 FETCH 51,100000 (FLAGS)\r\n")
	s.expect(s.br, s.b, "f1 UID FETCH 104,200001 (FLAGS)")
	s.send(s.b, "f1 OK done\r\n")
	s.expect(s.cr, s.c, "f1 OK done")
	if strings.Contains(s.logs.String(), `"level":"warn"`) {
		t.Fatalf("warnings: %s", s.logs.String())
	}
}

// TestLegacyResyncLongListMalformed: a long resync list that turns out
// unreadable is not applied (a truncated list would read as expunges);
// the map stays dirty, so the next command resyncs again.
func TestLegacyResyncLongListMalformed(t *testing.T) {
	const n = 10_000
	uids := make([]int, n)
	for i := range uids {
		uids[i] = i + 1
	}
	s := startBuildSession(t, "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN", legacyBackend)
	s.selected(false, n, searchLine(uids))
	s.send(s.c, "n1 NOOP\r\n")
	s.expect(s.br, s.b, "n1 NOOP")
	// An arrival, then an expunge: the whole list is read (a cheap resync
	// asks by UID FETCH, issue 15).
	s.send(s.b, fmt.Sprintf("* %d EXISTS\r\n* 1 EXPUNGE\r\nn1 OK done\r\n", n+1))
	s.expect(s.cr, s.c, fmt.Sprintf("* %d EXISTS", n+1))

	bad := searchLine(uids[:5000])
	bad = append(bad[:len(bad)-2], " 4294967296\r\n"...) // above 2³²-1
	s.expect(s.br, s.b, "UG.2 UID SEARCH ALL")
	go s.b.Write(append(bad, "UG.2 OK done\r\n"...))
	s.expect(s.cr, s.c, "n1 OK done") // no EXPUNGE for the 5,000 missing
	if !strings.Contains(s.logs.String(), "resync list unreadable") {
		t.Fatalf("no warning: %s", s.logs.String())
	}
	// Still dirty: the next command resyncs first.
	s.send(s.c, "n2 NOOP\r\n")
	s.expect(s.br, s.b, "UG.3 UID SEARCH ALL")
	go s.b.Write(append(searchLine(append(uids[1:], n+1)), "UG.3 OK done\r\n"...))
	s.expect(s.br, s.b, "n2 NOOP")
	s.send(s.b, "n2 OK done\r\n")
	s.expect(s.cr, s.c, "* 1 EXPUNGE")
	s.expect(s.cr, s.c, "n2 OK done")
}

// TestResyncListMemory diffs a legacy resync's "* SEARCH" of 1,000,000
// dense UIDs (a 6.9 MB line) through the streaming path: the list is one
// merged range, so it allocates next to nothing.
func TestResyncListMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("7 MB lines")
	}
	const n = 1_000_000
	uids := make([]int, n)
	for i := range uids {
		uids[i] = i + 1
	}
	in := append(searchLine(uids), "UG.2 OK done\r\n"...)
	setup := func() (*session, *relayState, *selection) {
		ss := nopSession(t)
		ss.srv = &Server{}
		rs, sel := buildState()
		list := make([]uint32, n)
		for i := range list {
			list[i] = uint32(i + 1)
		}
		if err := sel.m.Load(list); err != nil {
			t.Fatal(err)
		}
		sel.state, sel.dirty, sel.legacy = selReady, true, true
		rs.injected = "UG.2"
		rs.tags["UG.2"] = pendingCmd{inject: injectResync}
		return ss, rs, sel
	}

	ss, rs, sel := setup()
	streamed, _ := measure(func() {
		ur := newUpstreamReader(bytes.NewReader(in))
		line, _, err := ss.readUpLine(rs, ur, false)
		if err != nil || string(line) != "UG.2 OK done\r\n" {
			t.Fatalf("after the list: %q, %v", line, err)
		}
	})
	if sel.m.ClientCount() != n || sel.m.PendingExpunges() != 0 || sel.listBad {
		t.Fatalf("map after the streamed resync: %d messages, %d pending", sel.m.ClientCount(), sel.m.PendingExpunges())
	}

	// The assembled path (ReadLine, a []uint32 of every UID, Resync)
	// allocated 61 MB for the same list when this was written.
	t.Logf("resync of 1,000,000 dense UIDs: streamed %d KB allocated", streamed>>10)
	if streamed > 1<<20 {
		t.Errorf("streamed resync allocated %d KB, want < 1 MB", streamed>>10)
	}
}
