package sessionmap

import (
	"encoding/binary"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// fuzzInput hands out numbers from the fuzzer's bytes.
type fuzzInput struct{ b []byte }

func (in *fuzzInput) byte() byte {
	if len(in.b) == 0 {
		return 0
	}
	c := in.b[0]
	in.b = in.b[1:]
	return c
}

// num returns a number: mostly small or near ref, sometimes any uint32.
func (in *fuzzInput) num(ref uint32) uint32 {
	switch c := in.byte(); c >> 6 {
	case 0:
		return uint32(c & 63)
	case 1:
		return ref + uint32(c&63) - 32
	case 2:
		return ref + uint32(c&63)
	default:
		if len(in.b) < 4 {
			return ^uint32(0)
		}
		v := binary.LittleEndian.Uint32(in.b)
		in.b = in.b[4:]
		return v
	}
}

func (in *fuzzInput) uids(ref uint32) []uint32 {
	n := in.byte() % 16
	u := make([]uint32, n)
	for i := range u {
		u[i] = in.num(ref)
	}
	return u
}

func (in *fuzzInput) ranges(ref uint32) []imap.UIDRange {
	n := in.byte() % 4
	rs := make([]imap.UIDRange, n)
	for i := range rs {
		rs[i] = imap.UIDRange{Start: imap.UID(in.num(ref)), Stop: imap.UID(in.num(ref))}
	}
	return rs
}

// FuzzOps calls the API with arbitrary arguments, including invalid ones:
// nothing may panic, and the invariants and counts must hold after each
// call. The model-based tests check the results; this checks robustness.
func FuzzOps(f *testing.F) {
	f.Add([]byte{0, 5, 1, 2, 3, 4, 5, 2, 9, 3, 4, 1, 5, 10, 6, 7, 2, 8, 0, 0, 9, 10})
	f.Add([]byte{1, 1, 3, 1, 30, 2, 40, 3, 4, 2, 3, 12, 4, 14, 5, 1, 13, 2, 0, 3})
	f.Add([]byte{0, 1, 2, 0xc0, 0xff, 0xff, 0xff, 0xff, 0xc0, 0, 0, 0, 0, 2, 0xc0, 0xff, 0xff, 0xff, 0xff, 3, 4, 11, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzInput{b: data}
		m := New()
		m.MaxMessages = 1 << 16
		if in.byte()&1 == 1 {
			m.b.maxBytes, m.b.fillBytes = 24, 12
		}
		for len(in.b) > 0 {
			cc, uc := m.ClientCount(), m.UpstreamCount()
			switch op := in.byte() % 16; op {
			case 0:
				m.Load(in.uids(m.MaxUID()))
			case 1:
				m.LoadSet(in.ranges(m.MaxUID()))
			case 2:
				m.Exists(in.num(uc))
			case 3:
				m.AnnounceArrivals()
			case 4:
				m.AnnounceResolved()
			case 5:
				m.Resolve(in.num(uc), in.num(m.MaxUID()))
			case 6:
				m.ExpungeUpstream(in.num(uc))
			case 7:
				m.Vanish(in.ranges(m.MaxUID()))
			case 8:
				var set imap.SeqSet
				for _, r := range in.ranges(cc) {
					set = append(set, imap.SeqRange{Start: uint32(r.Start), Stop: uint32(r.Stop)})
				}
				got, err := m.ClientSeqToUIDs(set)
				if err != nil && len(got) != 0 {
					t.Fatalf("error %v with result %v", err, got)
				}
			case 9:
				m.AppendClientSeq(nil, in.ranges(m.MaxUID()))
				m.AppendClientMsgnos(nil, in.uids(m.MaxUID()))
			case 10:
				got := m.ReleaseExpunges(nil)
				for i := 1; i < len(got); i++ {
					if got[i] >= got[i-1] {
						t.Fatalf("ReleaseExpunges not descending: %v", got)
					}
				}
			case 11:
				m.ReleaseVanished(nil)
			case 12:
				m.Resync(in.uids(m.MaxUID()))
			case 13:
				m.ResyncSet(in.ranges(m.MaxUID()))
			case 14:
				n := in.num(cc)
				m.ClientAt(n)
				m.UpstreamAt(n)
				m.UpstreamToClient(n)
				m.ClientToUpstream(n)
				m.ClientMsgno(n)
				m.UpstreamMsgno(n)
				m.Unresolved()
			case 15:
				m.Reset()
			}
			if err := m.Check(); err != nil {
				t.Fatal(err)
			}
			// Messages in both views, counted from either side.
			if m.ClientCount()-m.PendingExpunges() != m.UpstreamCount()-m.PendingArrivals() {
				t.Fatalf("counts: client %d - pending %d != upstream %d - arrivals %d",
					m.ClientCount(), m.PendingExpunges(), m.UpstreamCount(), m.PendingArrivals())
			}
		}
	})
}
