package sessionmap

import (
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// The benchmarks compare the Map with the naive model of the tests: one
// plain []uint32 per view. Run them with
//
//	go test -run '^$' -bench . -benchmem -count 5 ./sessionmap
//
// and see docs/BENCHMARKS.md.

const benchN = 1_000_000

// benchUIDs returns benchN ascending UIDs: dense, or with 1% random gaps.
func benchUIDs(gaps bool) []uint32 {
	r := rand.New(rand.NewPCG(1, 2))
	uids := make([]uint32, benchN)
	u := uint32(1)
	for i := range uids {
		if gaps && r.IntN(100) == 0 {
			u += 1 + uint32(r.IntN(10))
		}
		uids[i] = u
		u++
	}
	return uids
}

// naive is the reference model: both views as sorted []uint32.
type naive struct{ client, up []uint32 }

func (n *naive) load(uids []uint32) {
	if !slices.IsSorted(uids) {
		slices.Sort(uids)
	}
	n.up = slices.Compact(slices.Clone(uids))
	n.client = slices.Clone(n.up)
}

func (n *naive) expunge(upMsgno uint32) {
	n.up = slices.Delete(n.up, int(upMsgno-1), int(upMsgno))
}

// release drops from the client view what left the upstream view.
func (n *naive) release(dst []uint32) []uint32 {
	j := 0
	for i := len(n.client) - 1; i >= 0; i-- {
		if _, ok := slices.BinarySearch(n.up, n.client[i]); !ok {
			dst = append(dst, uint32(i+1))
		}
	}
	n.client = slices.DeleteFunc(n.client, func(u uint32) bool {
		for j < len(n.up) && n.up[j] < u {
			j++
		}
		return j == len(n.up) || n.up[j] != u
	})
	return dst
}

// translate appends the UIDs of the upstream messages set names.
func (n *naive) translate(dst imap.UIDSet, set imap.SeqSet) imap.UIDSet {
	cc := uint32(len(n.client))
	for _, r := range set {
		a, z := r.Start, r.Stop
		if a == 0 {
			a = cc
		}
		if z == 0 {
			z = cc
		}
		if a > z {
			a, z = z, a
		}
		j, _ := slices.BinarySearch(n.up, n.client[a-1])
		for m := a; m <= z; m++ {
			u := n.client[m-1]
			for j < len(n.up) && n.up[j] < u {
				j++
			}
			if j < len(n.up) && n.up[j] == u {
				dst = appendUIDRange(dst, u, u)
			}
		}
	}
	return dst
}

func BenchmarkLoad(b *testing.B) {
	for _, gaps := range []bool{false, true} {
		name := "dense"
		if gaps {
			name = "gaps1%"
		}
		uids := benchUIDs(gaps)
		b.Run(name+"/map", func(b *testing.B) {
			var m Map
			for b.Loop() {
				if err := m.Load(uids); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(m.Bytes()), "B/map")
		})
		b.Run(name+"/naive", func(b *testing.B) {
			var n naive
			for b.Loop() {
				n.load(uids)
			}
			b.ReportMetric(float64(4*(cap(n.client)+cap(n.up))), "B/map")
		})
	}
}

// BenchmarkLoader loads 1,000,000 UIDs through a Loader, one Add per UID
// as "* SEARCH" gives them, or per range as ESEARCH ALL gives them, next
// to LoadSet of the same ranges parsed into an imap.UIDSet. B/alloc is
// what one load allocates (the map included), B/map what the map holds.
func BenchmarkLoader(b *testing.B) {
	everyOther := make([]uint32, benchN)
	for i := range everyOther {
		everyOther[i] = 1 + 2*uint32(i)
	}
	for _, tc := range []struct {
		name string
		uids []uint32
	}{{"dense", benchUIDs(false)}, {"gaps1%", benchUIDs(true)}, {"everyother", everyOther}} {
		var set imap.UIDSet
		for _, u := range tc.uids {
			set = appendUIDRange(set, u, u)
		}
		report := func(b *testing.B, m *Map, alloc uint64) {
			b.ReportMetric(float64(alloc), "B/alloc")
			b.ReportMetric(float64(m.Bytes()), "B/map")
		}
		b.Run(tc.name+"/loader-uids", func(b *testing.B) {
			var alloc uint64
			var m *Map
			for b.Loop() {
				alloc = allocs(func() {
					m = New()
					l := m.NewLoader()
					for _, u := range tc.uids {
						l.Add(u, u)
					}
					if err := l.Finish(); err != nil {
						b.Fatal(err)
					}
				})
			}
			report(b, m, alloc)
		})
		b.Run(tc.name+"/loader-ranges", func(b *testing.B) {
			var alloc uint64
			var m *Map
			for b.Loop() {
				alloc = allocs(func() {
					m = New()
					l := m.NewLoader()
					for _, r := range set {
						l.Add(uint32(r.Start), uint32(r.Stop))
					}
					if err := l.Finish(); err != nil {
						b.Fatal(err)
					}
				})
			}
			report(b, m, alloc)
		})
		b.Run(tc.name+"/loadset", func(b *testing.B) {
			var alloc uint64
			var m *Map
			for b.Loop() {
				alloc = allocs(func() {
					m = New()
					if err := m.LoadSet(set); err != nil {
						b.Fatal(err)
					}
				})
			}
			report(b, m, alloc)
		})
	}
}

// allocs returns the bytes fn allocates.
func allocs(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// BenchmarkMemory reports the heap held by one loaded mailbox, measured
// (B/heap) and as Bytes() reports it (B/map). A Map holds both views in
// one structure; the naive model holds one slice per view.
func BenchmarkMemory(b *testing.B) {
	for _, tc := range []struct {
		name string
		uids func() []uint32
	}{
		{"dense", func() []uint32 { return benchUIDs(false) }},
		{"gaps1%", func() []uint32 { return benchUIDs(true) }},
		{"everyother", func() []uint32 {
			u := make([]uint32, benchN)
			for i := range u {
				u[i] = 1 + 2*uint32(i)
			}
			return u
		}},
	} {
		uids := tc.uids()
		b.Run(tc.name+"/map", func(b *testing.B) {
			var heap, size float64
			for b.Loop() {
				before := heapInUse()
				m := New()
				m.Load(uids)
				heap = float64(heapInUse() - before)
				size = float64(m.Bytes())
				runtime.KeepAlive(m)
			}
			b.ReportMetric(heap, "B/heap")
			b.ReportMetric(size, "B/map")
		})
		b.Run(tc.name+"/naive", func(b *testing.B) {
			var heap float64
			for b.Loop() {
				before := heapInUse()
				n := new(naive)
				n.load(uids)
				heap = float64(heapInUse() - before)
				runtime.KeepAlive(n)
			}
			b.ReportMetric(heap, "B/heap")
			b.ReportMetric(float64(4*benchN*2), "B/map")
		})
	}
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// benchSets returns 10,000 random sequence sets of 1 to 4 ranges, each
// 1 to 100 messages wide, some with "*".
func benchSets(count uint32) []imap.SeqSet {
	r := rand.New(rand.NewPCG(3, 4))
	sets := make([]imap.SeqSet, 10_000)
	for i := range sets {
		for range 1 + r.IntN(4) {
			a := 1 + uint32(r.IntN(int(count)))
			z := min(count, a+uint32(r.IntN(100)))
			if r.IntN(50) == 0 {
				z = 0 // a:*
				a = count - uint32(r.IntN(100))
			}
			if r.IntN(2) == 0 {
				a, z = z, a
			}
			sets[i] = append(sets[i], imap.SeqRange{Start: a, Stop: z})
		}
	}
	return sets
}

// BenchmarkTranslate translates 10,000 random client sequence sets into
// UID sets, with 1,000 pending expunges in the mailbox; one op is the
// whole batch.
func BenchmarkTranslate(b *testing.B) {
	uids := benchUIDs(true)
	r := rand.New(rand.NewPCG(5, 6))
	m := New()
	m.Load(uids)
	var n naive
	n.load(uids)
	for range 1000 {
		k := 1 + uint32(r.IntN(int(m.UpstreamCount())))
		m.ExpungeUpstream(k)
		n.expunge(k)
	}
	sets := benchSets(m.ClientCount())
	b.Run("map", func(b *testing.B) {
		var dst imap.UIDSet
		for b.Loop() {
			for _, s := range sets {
				var err error
				if dst, err = m.AppendClientUIDs(dst[:0], s); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(sets)), "ns/set")
	})
	b.Run("naive", func(b *testing.B) {
		var dst imap.UIDSet
		for b.Loop() {
			for _, s := range sets {
				dst = n.translate(dst[:0], s)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(sets)), "ns/set")
	})
}

// BenchmarkExpunge applies 10,000 upstream expunges at random positions of
// a 1,000,000-message mailbox, then releases them to the client; one op
// is the whole batch. "each" releases after every expunge, as in IDLE.
func BenchmarkExpunge(b *testing.B) {
	uids := benchUIDs(true)
	r := rand.New(rand.NewPCG(7, 8))
	pos := make([]uint32, 10_000)
	for i := range pos {
		pos[i] = 1 + uint32(r.IntN(benchN-i))
	}
	for _, each := range []bool{false, true} {
		name := "batch"
		if each {
			name = "each"
		}
		b.Run(name+"/map", func(b *testing.B) {
			var m Map
			var rel []uint32
			for b.Loop() {
				b.StopTimer()
				m.Load(uids)
				b.StartTimer()
				for _, p := range pos {
					if _, err := m.ExpungeUpstream(p); err != nil {
						b.Fatal(err)
					}
					if each {
						rel = m.ReleaseExpunges(rel[:0])
					}
				}
				rel = m.ReleaseExpunges(rel[:0])
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(pos)), "ns/expunge")
		})
		b.Run(name+"/naive", func(b *testing.B) {
			var n naive
			var rel []uint32
			for b.Loop() {
				b.StopTimer()
				n.load(uids)
				b.StartTimer()
				for _, p := range pos {
					n.expunge(p)
					if each {
						// Only the expunged message needs looking at.
						n.client = slices.Delete(n.client, int(p-1), int(p))
					}
				}
				rel = n.release(rel[:0])
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(pos)), "ns/expunge")
		})
	}
}

// BenchmarkLookup measures one random msgno→UID and one UID→msgno lookup
// in the client view of a 1,000,000-message mailbox with 1% gaps.
func BenchmarkLookup(b *testing.B) {
	uids := benchUIDs(true)
	m := New()
	m.Load(uids)
	var n naive
	n.load(uids)
	r := rand.New(rand.NewPCG(9, 10))
	b.Run("map", func(b *testing.B) {
		var sink uint32
		for b.Loop() {
			e, _ := m.ClientAt(1 + uint32(r.IntN(benchN)))
			k, _ := m.ClientMsgno(e.UID)
			sink += k
		}
		runtime.KeepAlive(sink)
	})
	b.Run("naive", func(b *testing.B) {
		var sink uint32
		for b.Loop() {
			u := n.client[r.IntN(benchN)]
			k, _ := slices.BinarySearch(n.client, u)
			sink += uint32(k)
		}
		runtime.KeepAlive(sink)
	})
}
