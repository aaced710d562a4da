package e2e

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// viewModel is what a client knows: the subject of each message, in its
// own numbering, kept only from the EXISTS and EXPUNGE it was sent.
type viewModel struct {
	mu       sync.Mutex
	subjects []string // index msgno-1; "" for a message not fetched yet
	errs     []string
}

func (v *viewModel) expunge(n uint32) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if n == 0 || int(n) > len(v.subjects) {
		v.errs = append(v.errs, fmt.Sprintf("EXPUNGE %d with %d messages", n, len(v.subjects)))
		return
	}
	v.subjects = slices.Delete(v.subjects, int(n-1), int(n))
}

func (v *viewModel) exists(n uint32) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if int(n) < len(v.subjects) {
		v.errs = append(v.errs, fmt.Sprintf("EXISTS %d below %d", n, len(v.subjects)))
		return
	}
	for len(v.subjects) < int(n) {
		v.subjects = append(v.subjects, "")
	}
}

func subjectField(m *imapclient.FetchMessageBuffer) string {
	for _, b := range m.BodySection {
		s := strings.TrimSpace(string(b.Bytes))
		return strings.TrimSpace(strings.TrimPrefix(s, "Subject:"))
	}
	return ""
}

var subjectSection = []*imap.FetchItemBodySection{{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"Subject"}, Peek: true}}

// TestNormalizerConcurrentExpunge: session A works by message number
// through uidgate while session B, straight to the backend, expunges
// messages below the ones A names. Every FETCH and STORE of A must reach the
// message A meant in its own numbering, or nothing if that message is gone;
// A's numbering must follow exactly the EXISTS and EXPUNGE it was sent.
func TestNormalizerConcurrentExpunge(t *testing.T) {
	for _, kind := range allKinds {
		t.Run(kind, func(t *testing.T) {
			checkNoLeaks(t)
			be := startBackend(t, kind)
			for _, legacy := range []bool{true, false} {
				b := deployedBackend(kind, be.Addr)
				b.Legacy, b.ExplicitSeen = legacy, legacy
				g := startGate(t, gateOpts{backend: b})
				t.Run(fmt.Sprintf("legacy=%v", legacy), func(t *testing.T) {
					testConcurrentExpunge(t, be.Addr, g.Addr, kind, fmt.Sprintf("race-%v", legacy))
				})
			}
		})
	}
}

func testConcurrentExpunge(t *testing.T, direct, via, kind, name string) {
	const messages, rounds = 60, 25
	box := mailboxName(kind, name)
	b := login(t, direct, "alice")
	if err := b.Create(box, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < messages; i++ {
		appendMsg(t, b, box, message(fmt.Sprintf("msg-%03d", i), 200))
	}
	model := &viewModel{}
	a, err := imapclient.DialInsecure(via, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Expunge: model.expunge,
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					model.exists(*d.NumMessages)
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if err := a.Login("alice", testUsers["alice"]).Wait(); err != nil {
		t.Fatal(err)
	}
	sel, err := a.Select(box, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	model.exists(sel.NumMessages)
	// A learns every subject by number, as a legacy client's SEARCH would.
	refresh := func() {
		t.Helper()
		msgs, err := a.Fetch(allSeq(), &imap.FetchOptions{BodySection: subjectSection}).Collect()
		if err != nil {
			t.Fatalf("fetch all: %v", err)
		}
		model.mu.Lock()
		defer model.mu.Unlock()
		for _, m := range msgs {
			n := int(m.SeqNum)
			if n < 1 || n > len(model.subjects) {
				t.Fatalf("FETCH numbered %d with %d messages known", n, len(model.subjects))
			}
			if s := subjectField(m); model.subjects[n-1] != "" && model.subjects[n-1] != s {
				t.Fatalf("message %d was %q, now %q: numbering drifted", n, model.subjects[n-1], s)
			} else {
				model.subjects[n-1] = s
			}
		}
	}
	refresh()
	if _, err := b.Select(box, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	intended := map[string]bool{} // subjects A flagged
	expunged := map[string]bool{}
	for r := 0; r < rounds; r++ {
		model.mu.Lock()
		n := len(model.subjects)
		model.mu.Unlock()
		if n < 4 {
			break
		}
		// B expunges a message below A's target, without A knowing yet.
		target := uint32(rng.IntN(n-1) + 2)
		victim := uint32(rng.IntN(int(target)-1) + 1)
		bm, err := b.Fetch(imap.SeqSetNum(victim), &imap.FetchOptions{BodySection: subjectSection}).Collect()
		if err != nil || len(bm) != 1 {
			t.Fatalf("B fetch: %v", err)
		}
		expunged[subjectField(bm[0])] = true
		if err := b.Store(imap.SeqSetNum(victim), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Expunge().Collect(); err != nil {
			t.Fatal(err)
		}
		// A fetches and flags what it calls message target.
		model.mu.Lock()
		want := model.subjects[target-1]
		model.mu.Unlock()
		msgs, err := a.Fetch(imap.SeqSetNum(target), &imap.FetchOptions{BodySection: subjectSection}).Collect()
		if err != nil {
			t.Fatalf("A fetch %d: %v", target, err)
		}
		for _, m := range msgs {
			if got := subjectField(m); m.SeqNum != target || got != want {
				t.Fatalf("round %d: A fetched %d expecting %q, got %d %q", r, target, want, m.SeqNum, got)
			}
		}
		if err := a.Store(imap.SeqSetNum(target), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}, Silent: true}, nil).Close(); err != nil {
			t.Fatalf("A store: %v", err)
		}
		intended[want] = true
		// A lists its view by number: messages gone upstream that A was
		// not told of keep their numbers (and are simply not returned).
		refresh()
		if rng.IntN(2) == 0 {
			// A hears of the expunges only now, as the RFC allows.
			if err := a.Noop().Wait(); err != nil {
				t.Fatal(err)
			}
			refresh()
		}
	}
	if err := a.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	refresh()
	model.mu.Lock()
	if len(model.errs) > 0 {
		t.Errorf("illegal updates sent to A: %v", model.errs)
	}
	model.mu.Unlock()
	// Ground truth by UID, straight from the backend.
	msgs, err := b.Fetch(allSeq(), &imap.FetchOptions{UID: true, Flags: true, BodySection: subjectSection}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	// Cyrus 2.3 also sends B separate "* n FETCH (FLAGS …)" updates for
	// A's changes, numbered in B's own (stale) view, which go-imap
	// collects as messages of their own: merge by UID, and leave out what
	// names none.
	type truth struct {
		subject string
		flagged bool
	}
	bySeq := map[imap.UID]*truth{}
	var order []imap.UID
	for _, m := range msgs {
		if m.UID == 0 {
			continue
		}
		tr := bySeq[m.UID]
		if tr == nil {
			tr = &truth{}
			bySeq[m.UID] = tr
			order = append(order, m.UID)
		}
		if s := subjectField(m); s != "" {
			tr.subject = s
		}
		if m.Flags != nil {
			tr.flagged = slices.Contains(m.Flags, imap.FlagFlagged)
		}
	}
	for _, seq := range order {
		s, flagged := bySeq[seq].subject, bySeq[seq].flagged
		if flagged && !intended[s] {
			t.Errorf("%q was flagged but A never meant it: a wrong-message write", s)
		}
		if !flagged && intended[s] && !expunged[s] {
			t.Errorf("%q was meant by A but is not flagged", s)
		}
	}
}

// allSeq is "1:*".
func allSeq() imap.SeqSet {
	var s imap.SeqSet
	s.AddRange(1, 0)
	return s
}
