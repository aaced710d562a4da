package sessionmap

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// sameMap compares two maps field by field, down to the chunk encodings.
func sameMap(a, b *Map) error {
	if err := a.Check(); err != nil {
		return fmt.Errorf("first map: %w", err)
	}
	if err := b.Check(); err != nil {
		return fmt.Errorf("second map: %w", err)
	}
	if len(a.b.chunks) != len(b.b.chunks) {
		return fmt.Errorf("%d chunks vs %d", len(a.b.chunks), len(b.b.chunks))
	}
	for i := range a.b.chunks {
		x, y := &a.b.chunks[i], &b.b.chunks[i]
		if !bytes.Equal(x.data, y.data) || x.first != y.first || x.last != y.last || x.n != y.n || x.pend != y.pend {
			return fmt.Errorf("chunk %d differs: %+v vs %+v", i, *x, *y)
		}
	}
	if a.b.n != b.b.n || a.b.pend != b.b.pend || a.b.bytes != b.b.bytes {
		return fmt.Errorf("body n/pend/bytes %d/%d/%d vs %d/%d/%d", a.b.n, a.b.pend, a.b.bytes, b.b.n, b.b.pend, b.b.bytes)
	}
	if len(a.tail) != len(b.tail) {
		return fmt.Errorf("tail %v vs %v", a.tail, b.tail)
	}
	for i := range a.tail {
		if a.tail[i] != b.tail[i] {
			return fmt.Errorf("tail %v vs %v", a.tail, b.tail)
		}
	}
	if a.maxUID != b.maxUID || a.ClientCount() != b.ClientCount() || a.UpstreamCount() != b.UpstreamCount() ||
		a.PendingExpunges() != b.PendingExpunges() || a.PendingArrivals() != b.PendingArrivals() {
		return fmt.Errorf("counts differ: max %d/%d client %d/%d up %d/%d", a.maxUID, b.maxUID,
			a.ClientCount(), b.ClientCount(), a.UpstreamCount(), b.UpstreamCount())
	}
	return nil
}

// loaderCase is a list of ranges in the order a backend might send them.
type loaderCase struct {
	name   string
	ranges []urange
	max    uint32 // MaxMessages
	tiny   bool   // tiny chunks
}

// randomRanges returns up to n ranges of UIDs below span, in one of the
// shapes the Loader must handle.
func randomRanges(r *rand.Rand, shape string, n int, span uint32) []urange {
	var rs []urange
	u := uint32(1 + r.IntN(5))
	for range n {
		w := uint32(r.IntN(4)) // width-1
		if r.IntN(3) == 0 {
			w = 0
		}
		rs = append(rs, urange{u, u + w})
		gap := uint32(1 + r.IntN(4)) // 1: touching the next range
		u += w + gap
		if u > span {
			break
		}
	}
	switch shape {
	case "shuffled":
		r.Shuffle(len(rs), func(i, j int) { rs[i], rs[j] = rs[j], rs[i] })
	case "overlapping":
		for i := range rs {
			if r.IntN(4) == 0 {
				rs[i].hi += uint32(r.IntN(10))
			}
			if r.IntN(4) == 0 && rs[i].lo > 3 {
				rs[i].lo -= uint32(r.IntN(3))
			}
		}
	case "duplicates":
		for i := 0; i < len(rs); i++ {
			if r.IntN(3) == 0 {
				rs = append(rs[:i+1], append([]urange{rs[i]}, rs[i+1:]...)...)
				i++
			}
		}
	case "late":
		// Ascending, then one range from the start: the fallback must
		// recover what was already encoded.
		if len(rs) > 0 {
			rs = append(rs, rs[r.IntN(len(rs))])
		}
	case "zero":
		if len(rs) > 0 {
			rs[r.IntN(len(rs))].lo = 0
		}
	}
	return rs
}

// loadReference loads rs into m with Load, and returns Load's error.
func loadReference(m *Map, rs []urange) error {
	var uids []uint32
	for _, x := range rs {
		lo, hi := min(x.lo, x.hi), max(x.lo, x.hi)
		for u := uint64(lo); u <= uint64(hi); u++ {
			uids = append(uids, uint32(u))
		}
	}
	return m.Load(uids)
}

// prepared returns a map with some history, so that "unchanged" after an
// error means something: a loaded mailbox with a pending expunge and an
// unannounced arrival.
func prepared(c loaderCase) *Map {
	m := New()
	if c.tiny {
		m.b.maxBytes, m.b.fillBytes = 24, 12
	}
	m.Load([]uint32{3, 4, 9, 20, 21})
	m.ExpungeUpstream(2)
	m.Exists(5)
	m.Resolve(5, 30)
	m.MaxMessages = c.max
	return m
}

func checkLoader(t *testing.T, c loaderCase, r *rand.Rand) {
	t.Helper()
	ref, got := prepared(c), prepared(c)
	refErr := loadReference(ref, c.ranges)
	l := got.NewLoader()
	for _, x := range c.ranges {
		if r != nil && r.IntN(5) == 0 {
			x.lo, x.hi = x.hi, x.lo
		}
		l.Add(x.lo, x.hi)
	}
	err := l.Finish()
	if !errors.Is(err, refErr) || (err == nil) != (refErr == nil) {
		t.Fatalf("%s: Finish = %v, Load = %v (ranges %v)", c.name, err, refErr, c.ranges)
	}
	if e := sameMap(ref, got); e != nil {
		t.Fatalf("%s: after Finish (%v): %v (ranges %v)", c.name, err, e, c.ranges)
	}
	if err := l.Finish(); err == nil {
		t.Fatalf("%s: second Finish succeeded", c.name)
	}
	// LoadSet agrees where it applies (no zero: "*" there).
	hasZero := false
	var set imap.UIDSet
	for _, x := range c.ranges {
		hasZero = hasZero || x.lo == 0 || x.hi == 0
		set = append(set, imap.UIDRange{Start: imap.UID(x.lo), Stop: imap.UID(x.hi)})
	}
	if !hasZero {
		viaSet := prepared(c)
		if setErr := viaSet.LoadSet(set); !errors.Is(setErr, refErr) || (setErr == nil) != (refErr == nil) {
			t.Fatalf("%s: LoadSet = %v, Load = %v", c.name, setErr, refErr)
		}
		if e := sameMap(viaSet, got); e != nil {
			t.Fatalf("%s: LoadSet vs Loader: %v", c.name, e)
		}
	}
}

func TestLoader(t *testing.T) {
	for _, c := range []loaderCase{
		{name: "empty"},
		{name: "one", ranges: []urange{{7, 7}}},
		{name: "touching", ranges: []urange{{1, 3}, {4, 4}, {5, 9}, {11, 11}}},
		{name: "reversed range", ranges: []urange{{9, 5}, {12, 10}}},
		{name: "descending", ranges: []urange{{9, 9}, {7, 7}, {5, 5}, {1, 3}}},
		{name: "duplicate", ranges: []urange{{1, 1}, {1, 1}, {2, 2}}},
		{name: "zero", ranges: []urange{{1, 3}, {0, 0}, {5, 5}}},
		{name: "zero after too many", ranges: []urange{{1, 10}, {0, 0}}, max: 3},
		{name: "too many", ranges: []urange{{1, 4}}, max: 3},
		{name: "too many merged", ranges: []urange{{1, 2}, {1, 2}, {5, 5}, {1, 1}, {6, 6}}, max: 3},
		{name: "exactly the limit", ranges: []urange{{2, 2}, {1, 1}, {3, 3}, {2, 3}}, max: 3},
		{name: "last UID", ranges: []urange{{4294967290, 4294967295}, {1, 1}}},
	} {
		t.Run(c.name, func(t *testing.T) { checkLoader(t, c, nil) })
	}
	// Every UID there is, which Load cannot be given: LoadSet is the
	// reference.
	m, viaSet := New(), New()
	m.MaxMessages, viaSet.MaxMessages = 4294967295, 4294967295
	l := m.NewLoader()
	l.Add(1, 100)
	l.Add(101, 4294967295)
	if err := l.Finish(); err != nil || m.ClientCount() != 4294967295 {
		t.Fatalf("every UID: %v, %d", err, m.ClientCount())
	}
	if err := viaSet.LoadSet(imap.UIDSet{{Start: 1, Stop: 4294967295}}); err != nil {
		t.Fatal(err)
	}
	if err := sameMap(viaSet, m); err != nil {
		t.Fatal(err)
	}
}

// TestLoaderRandom checks the Loader against Load and LoadSet on random
// lists of every shape, with normal and tiny chunks.
func TestLoaderRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	shapes := []string{"ascending", "shuffled", "overlapping", "duplicates", "late", "zero"}
	for i := range 3000 {
		shape := shapes[i%len(shapes)]
		n := r.IntN(40)
		if i%10 == 0 {
			n = 3000 // beyond loaderMergeMin, and many blocks with tiny chunks
		}
		c := loaderCase{
			name:   fmt.Sprintf("%d/%s", i, shape),
			ranges: randomRanges(r, shape, n, 1<<20),
			tiny:   r.IntN(2) == 0,
		}
		if r.IntN(4) == 0 {
			c.max = uint32(1 + r.IntN(60))
		}
		checkLoader(t, c, r)
	}
}

// TestLoaderDuplicatesBounded: a list that repeats one range forever is
// merged as it comes, not kept.
func TestLoaderDuplicatesBounded(t *testing.T) {
	m := New()
	l := m.NewLoader()
	l.Add(5, 5)
	for range 100_000 {
		l.Add(1, 3)
	}
	if cap(l.rs) > 4*loaderMergeMin {
		t.Fatalf("%d ranges kept for 2 distinct ones", cap(l.rs))
	}
	if err := l.Finish(); err != nil || clientView(m) != "1 2 3 5" {
		t.Fatalf("%v: %s", err, clientView(m))
	}
}

const everyOtherN = 1_000_000

// allocated returns the bytes fn allocates (whether freed or not: an upper
// bound of the heap it makes grow) and the heap it leaves in use.
func allocated(fn func()) (total, retained uint64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	total = after.TotalAlloc - before.TotalAlloc
	runtime.GC()
	runtime.ReadMemStats(&after)
	return total, after.HeapAlloc - min(before.HeapAlloc, after.HeapAlloc)
}

// TestLoaderMemory: 1,000,000 every-other UIDs through a Loader allocate
// little beyond the map itself; LoadSet of the same UIDs parsed into an
// imap.UIDSet needs a copy of all the ranges on top of the set.
func TestLoaderMemory(t *testing.T) {
	m := New()
	total, retained := allocated(func() {
		l := m.NewLoader()
		for i := range uint32(everyOtherN) {
			l.Add(1+2*i, 1+2*i)
		}
		if err := l.Finish(); err != nil {
			t.Fatal(err)
		}
	})
	size := uint64(m.Bytes())
	t.Logf("Loader: %d bytes allocated, %d retained, map %d bytes", total, retained, size)
	if total > size+size/2 {
		t.Errorf("Loader allocated %d bytes for a map of %d", total, size)
	}
	set := make(imap.UIDSet, everyOtherN)
	for i := range set {
		u := imap.UID(1 + 2*i)
		set[i] = imap.UIDRange{Start: u, Stop: u}
	}
	viaSet := New()
	setTotal, _ := allocated(func() {
		if err := viaSet.LoadSet(set); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("LoadSet of a parsed UIDSet (%d bytes): %d bytes allocated", 16*len(set), setTotal)
	if err := sameMap(viaSet, m); err != nil {
		t.Fatal(err)
	}
}
