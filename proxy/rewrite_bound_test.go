package proxy

import (
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"uidgate/proxy/imapwire"
	"uidgate/sessionmap"
)

// TestSearchAmplificationBounded: a 64 KB SEARCH repeating "1:*" over a
// mailbox whose UIDs are all odd (each key becomes 2,000 UID ranges) is
// refused as too long to translate, within bounded memory (issue 16: it
// took uidgate from 15 MB to 613 MB).
func TestSearchAmplificationBounded(t *testing.T) {
	uids := make([]uint32, 2000)
	for i := range uids {
		uids[i] = uint32(2*i + 1)
	}
	m := sessionmap.New()
	if err := m.Load(uids); err != nil {
		t.Fatal(err)
	}
	line := []byte("a SEARCH" + strings.Repeat(" 1:*", 16000) + "\r\n")
	cmd, _ := imapwire.ParseCommand(line)
	limit := (&Server{}).expansionCap(len(line)) // the default: 16 MiB
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var b builder
	_, err := rewriteCommand(&wireCmd{buf: line}, cmd, cmdSearch, func(set imap.SeqSet) (imap.UIDSet, error) {
		return m.ClientSeqToUIDs(set)
	}, false, limit, &b)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, errCommandTooLong) {
		t.Fatalf("rewrite: %v (%d bytes out)", err, len(b.out))
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 200<<20 {
		t.Fatalf("allocated %d MB", grew>>20)
	}
	if len(b.out) > limit {
		t.Fatalf("%d bytes built", len(b.out))
	}
}
