package sessionmap

import (
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// seq parses "1:3,5,7:*" into an imap.SeqSet without normalizing it, so
// reversed and overlapping ranges reach the Map as written. "*" is 0.
func seq(t *testing.T, s string) imap.SeqSet {
	t.Helper()
	var set imap.SeqSet
	num := func(x string) uint32 {
		if x == "*" {
			return 0
		}
		n, err := strconv.ParseUint(x, 10, 32)
		if err != nil {
			t.Fatal(err)
		}
		return uint32(n)
	}
	for _, part := range strings.Split(s, ",") {
		a, z, ok := strings.Cut(part, ":")
		if !ok {
			z = a
		}
		set = append(set, imap.SeqRange{Start: num(a), Stop: num(z)})
	}
	return set
}

func uidSet(t *testing.T, s string) imap.UIDSet {
	t.Helper()
	var set imap.UIDSet
	for _, r := range seq(t, s) {
		set = append(set, imap.UIDRange{Start: imap.UID(r.Start), Stop: imap.UID(r.Stop)})
	}
	return set
}

func span(lo, hi uint32) []uint32 {
	var s []uint32
	for u := lo; u <= hi; u++ {
		s = append(s, u)
	}
	return s
}

func mustLoad(t *testing.T, uids ...uint32) *Map {
	t.Helper()
	m := New()
	if err := m.Load(uids); err != nil {
		t.Fatal(err)
	}
	check(t, m)
	return m
}

func check(t *testing.T, m *Map) {
	t.Helper()
	if err := m.Check(); err != nil {
		t.Fatal(err)
	}
}

// clientView lists the client view as "uid" (present), "-uid" (pending
// expunge), "?" (placeholder) and "-?" (tombstone).
func clientView(m *Map) string {
	var b strings.Builder
	for i := uint32(1); i <= m.ClientCount(); i++ {
		e, _ := m.ClientAt(i)
		if i > 1 {
			b.WriteByte(' ')
		}
		if !e.InUpstream {
			b.WriteByte('-')
		}
		if e.UID == 0 {
			b.WriteByte('?')
		} else {
			b.WriteString(strconv.FormatUint(uint64(e.UID), 10))
		}
	}
	return b.String()
}

func wantSeqErr(t *testing.T, err error, kind SeqErrorKind, num uint32) {
	t.Helper()
	var se *SeqError
	if !errors.As(err, &se) || se.Kind != kind || se.Num != num || !errors.Is(err, ErrBadSequence) {
		t.Fatalf("error %v, want SeqError kind %d num %d", err, kind, num)
	}
}

func TestTranslate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) *Map
		set   string
		want  string // UID set, or "" for an empty one
		err   error
		kind  SeqErrorKind
		num   uint32
	}{
		{name: "empty mailbox, 1", setup: func(t *testing.T) *Map { return New() }, set: "1", kind: SeqTooHigh, num: 1},
		{name: "empty mailbox, *", setup: func(t *testing.T) *Map { return New() }, set: "*", kind: SeqStarEmpty},
		{name: "empty mailbox, 1:*", setup: func(t *testing.T) *Map { return New() }, set: "1:*", kind: SeqStarEmpty},
		{name: "*", setup: func(t *testing.T) *Map { return mustLoad(t, 4, 8, 15) }, set: "*", want: "15"},
		{name: "*:2 is 2:*", setup: func(t *testing.T) *Map { return mustLoad(t, 4, 8, 15) }, set: "*:2", want: "8,15"},
		{name: "reversed 3:1", setup: func(t *testing.T) *Map { return mustLoad(t, 4, 8, 15) }, set: "3:1", want: "4,8,15"},
		{name: "above EXISTS", setup: func(t *testing.T) *Map { return mustLoad(t, 4, 8, 15) }, set: "4", kind: SeqTooHigh, num: 4},
		{name: "range ending above EXISTS", setup: func(t *testing.T) *Map { return mustLoad(t, 4, 8, 15) }, set: "2:9", kind: SeqTooHigh, num: 9},
		{name: "reversed range above EXISTS", setup: func(t *testing.T) *Map { return mustLoad(t, 4, 8, 15) }, set: "9:2", kind: SeqTooHigh, num: 9},
		{name: "bad range after a good one", setup: func(t *testing.T) *Map { return mustLoad(t, 4, 8, 15) }, set: "1,2,7", kind: SeqTooHigh, num: 7},
		{name: "unordered, overlapping", setup: func(t *testing.T) *Map { return mustLoad(t, span(1, 10)...) }, set: "7:9,1,2:3,8:4", want: "1:9"},
		{
			name: "1:* after expunges",
			setup: func(t *testing.T) *Map {
				m := mustLoad(t, span(1, 10)...)
				m.ExpungeUpstream(3) // UID 3
				m.ExpungeUpstream(3) // UID 4
				return m
			},
			set: "1:*", want: "1:2,5:10",
		},
		{
			name: "1:* after expunges were released",
			setup: func(t *testing.T) *Map {
				m := mustLoad(t, span(1, 10)...)
				m.ExpungeUpstream(3)
				m.ExpungeUpstream(3)
				m.ReleaseExpunges(nil)
				return m
			},
			set: "1:*", want: "1:2,5:10",
		},
		{
			name: "pending expunge still counts in the client's range",
			setup: func(t *testing.T) *Map {
				m := mustLoad(t, span(1, 10)...)
				m.ExpungeUpstream(10)
				return m
			},
			set: "10", want: "",
		},
		{
			name: "range whose ends were both expunged",
			setup: func(t *testing.T) *Map {
				m := mustLoad(t, span(1, 10)...)
				m.Vanish(uidSet(t, "3,7"))
				return m
			},
			set: "3:7", want: "4:6",
		},
		{
			name: "only expunged messages",
			setup: func(t *testing.T) *Map {
				m := mustLoad(t, span(1, 10)...)
				m.Vanish(uidSet(t, "3:5"))
				return m
			},
			set: "3:5", want: "",
		},
		{
			name: "announced placeholder",
			setup: func(t *testing.T) *Map {
				m := mustLoad(t, 1, 2, 3)
				m.Exists(5)
				m.AnnounceArrivals()
				return m
			},
			set: "2:4", err: ErrUnresolved,
		},
		{
			name: "unannounced placeholder is beyond the client's count",
			setup: func(t *testing.T) *Map {
				m := mustLoad(t, 1, 2, 3)
				m.Exists(5)
				return m
			},
			set: "4", kind: SeqTooHigh, num: 4,
		},
		{
			name: "placeholder expunged before being resolved is skipped",
			setup: func(t *testing.T) *Map {
				m := mustLoad(t, 1, 2, 3)
				m.Exists(5)
				m.AnnounceArrivals()
				m.ExpungeUpstream(4)
				if err := m.Resolve(4, 9); err != nil {
					t.Fatal(err)
				}
				return m
			},
			set: "3:*", want: "3,9",
		},
		{
			name: "UID 4294967295",
			setup: func(t *testing.T) *Map {
				m := mustLoad(t, math.MaxUint32-1, math.MaxUint32)
				return m
			},
			set: "1:*", want: "4294967294:4294967295",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.setup(t)
			check(t, m)
			got, err := m.ClientSeqToUIDs(seq(t, tc.set))
			switch {
			case tc.kind != 0:
				wantSeqErr(t, err, tc.kind, tc.num)
			case tc.err != nil:
				if !errors.Is(err, tc.err) {
					t.Fatalf("error %v, want %v", err, tc.err)
				}
			case err != nil:
				t.Fatal(err)
			case got.String() != tc.want:
				t.Fatalf("%s -> %q, want %q (client view %s)", tc.set, got.String(), tc.want, clientView(m))
			}
			check(t, m)
		})
	}
}

func TestMsgnoZero(t *testing.T) {
	m := mustLoad(t, 1, 2, 3)
	if _, ok := m.ClientAt(0); ok {
		t.Error("ClientAt(0) ok")
	}
	if _, ok := m.UpstreamAt(0); ok {
		t.Error("UpstreamAt(0) ok")
	}
	if _, ok := m.UpstreamToClient(0); ok {
		t.Error("UpstreamToClient(0) ok")
	}
	if _, ok := m.ClientToUpstream(0); ok {
		t.Error("ClientToUpstream(0) ok")
	}
	if _, ok := m.ClientMsgno(0); ok {
		t.Error("ClientMsgno(UID 0) ok")
	}
	if _, ok := m.UpstreamMsgno(0); ok {
		t.Error("UpstreamMsgno(UID 0) ok")
	}
	_, err := m.ExpungeUpstream(0)
	wantSeqErr(t, err, SeqZero, 0)
	wantSeqErr(t, m.Resolve(0, 7), SeqZero, 0)
	if err := m.Resolve(1, 0); !errors.Is(err, ErrZeroUID) {
		t.Errorf("Resolve(1, 0): %v", err)
	}
	if err := m.Load([]uint32{3, 0}); !errors.Is(err, ErrZeroUID) {
		t.Errorf("Load with UID 0: %v", err)
	}
	if _, err := m.Resync([]uint32{0}); !errors.Is(err, ErrZeroUID) {
		t.Errorf("Resync with UID 0: %v", err)
	}
	// In an imap.SeqSet, 0 is "*" (go-imap's encoding); a literal 0 is a
	// syntax error the tokenizer rejects (RFC 9051 §9: nz-number).
	got, err := m.ClientSeqToUIDs(imap.SeqSet{{Start: 0, Stop: 0}})
	if err != nil || got.String() != "3" {
		t.Errorf("SeqRange{0,0} = %v %v, want 3 (\"*\")", got, err)
	}
	if clientView(m) != "1 2 3" {
		t.Errorf("map changed: %s", clientView(m))
	}
	check(t, m)
}

func TestLoad(t *testing.T) {
	m := New()
	if err := m.Load([]uint32{9, 3, 5, 3, 1, 2, 9}); err != nil {
		t.Fatal(err)
	}
	check(t, m)
	if v := clientView(m); v != "1 2 3 5 9" {
		t.Fatalf("view %s", v)
	}
	if err := m.LoadSet(uidSet(t, "9:100,1:5,7,3:4")); err != nil {
		t.Fatal(err)
	}
	check(t, m)
	if m.ClientCount() != 98 || m.UpstreamCount() != 98 || m.MaxUID() != 100 {
		t.Fatalf("counts %d %d max %d", m.ClientCount(), m.UpstreamCount(), m.MaxUID())
	}
	if n, _ := m.ClientMsgno(7); n != 6 {
		t.Fatalf("UID 7 is %d", n)
	}
	if err := m.LoadSet(uidSet(t, "1:*")); !errors.Is(err, ErrStar) {
		t.Fatalf("LoadSet(1:*): %v", err)
	}
	if err := m.Load(nil); err != nil || m.ClientCount() != 0 {
		t.Fatalf("Load(nil): %v, %d", err, m.ClientCount())
	}
	// A hostile backend cannot make the map huge.
	if err := m.LoadSet(uidSet(t, "1:4294967295")); !errors.Is(err, ErrTooMany) {
		t.Fatalf("LoadSet(1:4294967295): %v", err)
	}
	if _, err := m.Exists(DefaultMaxMessages + 1); !errors.Is(err, ErrTooMany) {
		t.Fatalf("Exists(DefaultMaxMessages+1): %v", err)
	}
	if st, err := m.Resync([]uint32{1, 2, 3, 1, 2, 3}); err != nil || st.Added != 3 {
		t.Fatal(st, err)
	}
	m.AnnounceArrivals()
	m.MaxMessages = 3
	if _, err := m.Exists(4); !errors.Is(err, ErrTooMany) {
		t.Fatalf("Exists(4) with MaxMessages 3: %v", err)
	}
	if err := m.Load([]uint32{1, 2, 3, 4}); !errors.Is(err, ErrTooMany) {
		t.Fatalf("Load of 4 with MaxMessages 3: %v", err)
	}
	if _, err := m.Resync([]uint32{1, 2, 4}); !errors.Is(err, ErrTooMany) {
		t.Fatalf("Resync of 3 with 3 in the client view and MaxMessages 3: %v", err)
	}
	// Every UID there is: one run, no overflow.
	m.MaxMessages = math.MaxUint32
	if err := m.LoadSet(uidSet(t, "1:4294967295")); err != nil {
		t.Fatal(err)
	}
	check(t, m)
	if m.ClientCount() != math.MaxUint32 {
		t.Fatalf("count %d", m.ClientCount())
	}
	if e, _ := m.ClientAt(math.MaxUint32); e.UID != math.MaxUint32 {
		t.Fatalf("last %+v", e)
	}
	if _, err := m.ExpungeUpstream(1); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Exists(math.MaxUint32); !errors.Is(err, ErrTooMany) {
		t.Fatalf("Exists past 2³²-1 messages: %v", err)
	}
	got, err := m.ClientSeqToUIDs(seq(t, "1:*"))
	if err != nil || got.String() != "2:4294967295" {
		t.Fatalf("1:* = %v %v", got, err)
	}
	m.Reset()
	if m.ClientCount() != 0 || m.Bytes() > 1024 {
		t.Fatalf("after Reset: %d messages, %d bytes", m.ClientCount(), m.Bytes())
	}
	check(t, m)
}

func TestEmpty(t *testing.T) {
	var m Map // the zero value
	check(t, &m)
	if m.ClientCount() != 0 || m.UpstreamCount() != 0 || m.PendingExpunges() != 0 {
		t.Fatal("not empty")
	}
	if got := m.ReleaseExpunges(nil); got != nil {
		t.Fatalf("ReleaseExpunges %v", got)
	}
	if _, _, _, ok := m.Unresolved(); ok {
		t.Fatal("Unresolved on empty")
	}
	if n := m.Vanish(uidSet(t, "1:*")); n != 0 {
		t.Fatalf("Vanish %d", n)
	}
	if got := m.AppendClientSeq(nil, uidSet(t, "1:*")); len(got) != 0 {
		t.Fatalf("AppendClientSeq %v", got)
	}
	if st, err := m.Resync(nil); err != nil || st != (ResyncStats{}) {
		t.Fatalf("Resync %+v %v", st, err)
	}
	if n, err := m.Exists(0); n != 0 || err != nil {
		t.Fatalf("Exists(0) %d %v", n, err)
	}
	_, err := m.ExpungeUpstream(1)
	wantSeqErr(t, err, SeqTooHigh, 1)
	wantSeqErr(t, m.Resolve(1, 1), SeqTooHigh, 1)
	check(t, &m)
}

func TestPlaceholders(t *testing.T) {
	m := mustLoad(t, 1, 2, 3)
	if n, err := m.Exists(6); n != 3 || err != nil {
		t.Fatalf("Exists(6) = %d %v", n, err)
	}
	if _, err := m.Exists(5); !errors.Is(err, ErrExistsShrank) {
		t.Fatalf("Exists(5): %v", err)
	}
	if m.ClientCount() != 3 || m.UpstreamCount() != 6 || m.PendingArrivals() != 3 || m.Unknown() != 3 {
		t.Fatal("counts after EXISTS")
	}
	if _, ok := m.UpstreamToClient(4); ok {
		t.Fatal("unannounced arrival has a client number")
	}
	// An unannounced placeholder expunged just goes.
	if uid, err := m.ExpungeUpstream(6); uid != 0 || err != nil {
		t.Fatal(uid, err)
	}
	if m.PendingArrivals() != 2 || m.PendingExpunges() != 0 {
		t.Fatal("counts after expunging an unannounced placeholder")
	}
	if n := m.AnnounceArrivals(); n != 2 || m.ClientCount() != 5 {
		t.Fatalf("announced %d, count %d", n, m.ClientCount())
	}
	first, last, floor, ok := m.Unresolved()
	if first != 4 || last != 5 || floor != 3 || !ok {
		t.Fatalf("Unresolved = %d %d %d %v", first, last, floor, ok)
	}
	// Resolving out of order: 5 first. The placeholder before it needs a
	// UID of its own between 3 and 5, so 4 is the lowest 5 can be.
	if err := m.Resolve(5, 4); !errors.Is(err, ErrUIDOrder) {
		t.Fatalf("Resolve(5, 4): %v", err)
	}
	if err := m.Resolve(5, 20); err != nil {
		t.Fatal(err)
	}
	if err := m.Resolve(4, 20); !errors.Is(err, ErrUIDOrder) {
		t.Fatalf("Resolve(4, 20): %v", err)
	}
	if err := m.Resolve(5, 21); !errors.Is(err, ErrUIDMismatch) {
		t.Fatalf("Resolve(5, 21): %v", err)
	}
	if err := m.Resolve(2, 3); !errors.Is(err, ErrUIDMismatch) {
		t.Fatalf("Resolve(2, 3): %v", err)
	}
	if err := m.Resolve(2, 2); err != nil {
		t.Fatal(err)
	}
	if first, last, floor, _ = m.Unresolved(); first != 4 || last != 4 || floor != 3 {
		t.Fatalf("Unresolved = %d %d %d", first, last, floor)
	}
	check(t, m)
	// The placeholder goes before its UID is learned: a tombstone.
	if uid, err := m.ExpungeUpstream(4); uid != 0 || err != nil {
		t.Fatal(uid, err)
	}
	if v := clientView(m); v != "1 2 3 -? 20" {
		t.Fatalf("view %s", v)
	}
	if m.Tombstones() != 1 || m.PendingExpunges() != 1 || m.Unknown() != 0 {
		t.Fatal("tombstone counts")
	}
	if _, _, _, ok := m.Unresolved(); ok {
		t.Fatal("a tombstone needs no resolving")
	}
	got, err := m.ClientSeqToUIDs(seq(t, "4:5"))
	if err != nil || got.String() != "20" {
		t.Fatalf("4:5 = %v %v", got, err)
	}
	if n, ok := m.ClientMsgno(20); n != 5 || !ok {
		t.Fatalf("ClientMsgno(20) = %d", n)
	}
	if n, ok := m.UpstreamMsgno(20); n != 4 || !ok {
		t.Fatalf("UpstreamMsgno(20) = %d", n)
	}
	if rel := m.ReleaseExpunges(nil); !slices.Equal(rel, []uint32{4}) {
		t.Fatalf("released %v", rel)
	}
	check(t, m)
	if v := clientView(m); v != "1 2 3 20" || len(m.tail) != 0 {
		t.Fatalf("view %s, tail %v", v, m.tail)
	}
}

func TestAnnounceResolved(t *testing.T) {
	m := mustLoad(t, 1, 2, 3)
	m.Exists(5)
	m.Resolve(5, 9)
	if n := m.AnnounceResolved(); n != 0 {
		t.Fatalf("announced %d past an unknown UID", n)
	}
	m.Resolve(4, 7)
	if n := m.AnnounceResolved(); n != 2 || m.ClientCount() != 5 {
		t.Fatalf("announced %d", n)
	}
	check(t, m)
}

func TestRelease(t *testing.T) {
	// RFC 3501 §7.4.1: the last 5 messages of 9 expunged; a "higher to
	// lower" server sends 9, 8, 7, 6, 5.
	m := mustLoad(t, span(1, 9)...)
	for range 5 {
		m.ExpungeUpstream(5)
	}
	if got := m.ReleaseExpunges(nil); !slices.Equal(got, []uint32{9, 8, 7, 6, 5}) {
		t.Fatalf("released %v", got)
	}
	if m.ClientCount() != 4 || m.PendingExpunges() != 0 {
		t.Fatal("counts after release")
	}

	// Expunges in the body and tombstones in the tail, with an arrival
	// that stays unannounced.
	m = mustLoad(t, 10, 20, 30, 40)
	m.Exists(6)
	m.AnnounceArrivals()
	m.Exists(7)
	m.Resolve(7, 70)
	m.ExpungeUpstream(6) // the second placeholder: tombstone, client 6
	m.ExpungeUpstream(2) // UID 20, client 2
	if v := clientView(m); v != "10 -20 30 40 ? -?" {
		t.Fatalf("view %s", v)
	}
	vanished, tombs := m.ReleaseVanished(nil)
	// After "* VANISHED 20" the tombstone is the client's message 5.
	if vanished.String() != "20" || !slices.Equal(tombs, []uint32{5}) {
		t.Fatalf("ReleaseVanished = %v %v", vanished, tombs)
	}
	check(t, m)
	if v := clientView(m); v != "10 30 40 ?" || m.PendingArrivals() != 1 {
		t.Fatalf("view %s, arrivals %d", v, m.PendingArrivals())
	}
}

func TestVanish(t *testing.T) {
	m := mustLoad(t, 2, 4, 6, 8, 10)
	m.Exists(7)
	m.Resolve(6, 12)
	// 12 is an unannounced arrival: it just goes. 1, 3 and 13:* are absent.
	if n := m.Vanish(uidSet(t, "1:4,8,12:*")); n != 4 {
		t.Fatalf("vanished %d", n)
	}
	check(t, m)
	if v := clientView(m); v != "-2 -4 6 -8 10" || m.PendingArrivals() != 1 || m.UpstreamCount() != 3 {
		t.Fatalf("view %s, arrivals %d", v, m.PendingArrivals())
	}
	if n := m.Vanish(uidSet(t, "2:8")); n != 1 { // only 6 is left of those
		t.Fatalf("vanished %d again", n)
	}
}

func TestTranslateBack(t *testing.T) {
	m := mustLoad(t, 5, 6, 7, 10, 11, 20)
	m.ExpungeUpstream(2) // UID 6 pending: the client still numbers it 2
	m.Exists(6)
	m.Resolve(6, 30) // unannounced: no client number
	if got := m.AppendClientMsgnos(nil, []uint32{20, 5, 30, 6, 99, 10}); !slices.Equal(got, []uint32{6, 1, 2, 4}) {
		t.Fatalf("AppendClientMsgnos = %v", got)
	}
	if got := m.AppendClientSeq(nil, uidSet(t, "5:11,20:*")); got.String() != "1:6" {
		t.Fatalf("AppendClientSeq = %v", got)
	}
	if got := m.AppendClientSeq(nil, uidSet(t, "10,5,8:9")); got.String() != "1,4" {
		t.Fatalf("AppendClientSeq = %v", got)
	}
	if n, ok := m.UpstreamToClient(2); n != 3 || !ok { // UID 7
		t.Fatalf("UpstreamToClient(2) = %d %v", n, ok)
	}
	if _, ok := m.ClientToUpstream(2); ok {
		t.Fatal("a pending expunge has no upstream number")
	}
	if n, ok := m.ClientToUpstream(3); n != 2 || !ok {
		t.Fatalf("ClientToUpstream(3) = %d %v", n, ok)
	}
}

func TestResync(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(m *Map)
		auth  []uint32
		want  ResyncStats
		err   error
		view  string // client view after AnnounceArrivals
	}{
		{
			name: "unchanged",
			auth: []uint32{1, 2, 3, 10},
			view: "1 2 3 10",
		},
		{
			name: "expunged and new",
			auth: []uint32{1, 3, 10, 11, 12},
			want: ResyncStats{Expunged: 1, Added: 2},
			view: "1 -2 3 10 11 12",
		},
		{
			name:  "revived",
			setup: func(m *Map) { m.ExpungeUpstream(2) },
			auth:  []uint32{1, 2, 3, 10},
			want:  ResyncStats{Revived: 1},
			view:  "1 2 3 10",
		},
		{
			name: "placeholders take the new UIDs in order",
			setup: func(m *Map) {
				m.Exists(6)
				m.AnnounceArrivals()
			},
			auth: []uint32{1, 2, 3, 10, 11, 15, 16},
			want: ResyncStats{Resolved: 2, Added: 1},
			view: "1 2 3 10 11 15 16",
		},
		{
			name: "more placeholders than new UIDs: tombstone",
			setup: func(m *Map) {
				m.Exists(6)
				m.AnnounceArrivals()
			},
			auth: []uint32{1, 2, 3, 10, 11},
			want: ResyncStats{Resolved: 1, Dropped: 1},
			view: "1 2 3 10 11 -?",
		},
		{
			name:  "unannounced placeholders without UIDs just go",
			setup: func(m *Map) { m.Exists(7) },
			auth:  []uint32{1, 2, 3, 10},
			want:  ResyncStats{Dropped: 3},
			view:  "1 2 3 10",
		},
		{
			name: "interior placeholders",
			setup: func(m *Map) {
				m.Exists(7)
				m.AnnounceArrivals()
				m.Resolve(7, 30)
			},
			auth: []uint32{1, 2, 3, 10, 12, 30},
			want: ResyncStats{Resolved: 1, Dropped: 1},
			view: "1 2 3 10 12 -? 30",
		},
		{
			name: "too many UIDs for the interior placeholders",
			setup: func(m *Map) {
				m.Exists(6)
				m.AnnounceArrivals()
				m.Resolve(6, 30)
			},
			auth: []uint32{1, 2, 3, 10, 12, 13, 30},
			want: ResyncStats{Resolved: 1, Ignored: 1},
			err:  ErrConflict,
			view: "1 2 3 10 12 30",
		},
		{
			name: "an old UID never seen",
			auth: []uint32{1, 2, 3, 5, 10},
			want: ResyncStats{Ignored: 1},
			err:  ErrConflict,
			view: "1 2 3 10",
		},
		{
			name: "a released UID does not come back",
			setup: func(m *Map) {
				m.ExpungeUpstream(4)
				m.ReleaseExpunges(nil)
			},
			auth: []uint32{1, 2, 3, 10, 11},
			want: ResyncStats{Added: 1, Ignored: 1},
			err:  ErrConflict,
			view: "1 2 3 11",
		},
		{
			name: "everything gone",
			setup: func(m *Map) {
				m.Exists(5)
			},
			auth: nil,
			want: ResyncStats{Expunged: 4, Dropped: 1},
			view: "-1 -2 -3 -10",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mustLoad(t, 1, 2, 3, 10)
			if tc.setup != nil {
				tc.setup(m)
			}
			check(t, m)
			st, err := m.Resync(slices.Clone(tc.auth))
			if !errors.Is(err, tc.err) || st != tc.want {
				t.Fatalf("Resync = %+v %v, want %+v %v", st, err, tc.want, tc.err)
			}
			check(t, m)
			m.AnnounceArrivals()
			if v := clientView(m); v != tc.view {
				t.Fatalf("view %q, want %q", v, tc.view)
			}
			// The upstream view is the list, less what was ignored.
			var up []uint32
			for i := uint32(1); i <= m.UpstreamCount(); i++ {
				e, _ := m.UpstreamAt(i)
				up = append(up, e.UID)
			}
			var want []uint32
			for _, u := range tc.auth {
				if _, ok := m.UpstreamMsgno(u); ok {
					want = append(want, u)
				}
			}
			if !slices.Equal(up, want) || len(up)+int(st.Ignored) != len(tc.auth) {
				t.Fatalf("upstream view %v, list %v", up, tc.auth)
			}
			m.ReleaseExpunges(nil)
			check(t, m)
		})
	}
}

// TestMemory checks the size bounds of the issue: 1,000,000 messages cost
// at most 64 KB with dense UIDs and 4 MB with every other UID.
func TestMemory(t *testing.T) {
	for _, tc := range []struct {
		name  string
		step  uint32
		limit int
	}{
		{"dense", 1, 64 << 10},
		{"every other UID", 2, 4 << 20},
		{"widest gaps", math.MaxUint32 / 1_000_000, 4 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uids := make([]uint32, 1_000_000)
			for i := range uids {
				uids[i] = 1 + uint32(i)*tc.step
			}
			m := New()
			if err := m.Load(uids); err != nil {
				t.Fatal(err)
			}
			if b := m.Bytes(); b > tc.limit {
				t.Fatalf("%d bytes > %d", b, tc.limit)
			} else {
				t.Logf("%d bytes", b)
			}
			// After 10,000 expunges at random places, released, the map
			// is about the size of one loaded from scratch.
			for i := range 10_000 {
				m.ExpungeUpstream(1 + uint32(i*7919)%m.UpstreamCount())
			}
			m.ReleaseExpunges(nil)
			check(t, m)
			all, err := m.ClientSeqToUIDs(seq(t, "1:*"))
			if err != nil {
				t.Fatal(err)
			}
			rest := New()
			if err := rest.LoadSet(all); err != nil {
				t.Fatal(err)
			}
			if b, fresh := m.Bytes(), rest.Bytes(); b > fresh*3/2+4096 {
				t.Fatalf("after expunges: %d bytes, loaded afresh %d", b, fresh)
			} else {
				t.Logf("after expunges: %d bytes, loaded afresh %d", b, fresh)
			}
		})
	}
}

// TestReleaseExpungeRanges: released as ranges, highest first, joined
// where the numbers are consecutive; a mailbox claimed by one EXISTS and
// emptied by a resync is one range, whatever its size (issue 16).
func TestReleaseExpungeRanges(t *testing.T) {
	m := mustLoad(t, span(1, 9)...)
	m.ExpungeUpstream(9)
	m.ExpungeUpstream(7)
	m.ExpungeUpstream(7) // the client's 8
	m.ExpungeUpstream(2)
	if got := m.ReleaseExpungeRanges(nil); !slices.Equal(got, []NumRange{{7, 9}, {2, 2}}) {
		t.Fatalf("released %v", got)
	}
	check(t, m)

	m = mustLoad(t, 1, 2, 3)
	if _, err := m.Exists(1_000_003); err != nil {
		t.Fatal(err)
	}
	m.AnnounceArrivals()
	if _, err := m.ResyncSet(nil); err != nil {
		t.Logf("resync: %v", err)
	}
	got := m.ReleaseExpungeRanges(nil)
	if !slices.Equal(got, []NumRange{{1, 1_000_003}}) || m.ClientCount() != 0 {
		t.Fatalf("released %v, %d left", got, m.ClientCount())
	}
	check(t, m)
}
