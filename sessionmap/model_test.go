package sessionmap

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// model is the naive reference: one plain []uint32 per view, holding the
// true UID of every message (the map itself only learns a UID through
// Load, Resolve and Resync). Messages are identified by their true UID.
type model struct {
	up    []uint32 // upstream view
	cl    []uint32 // client view
	unann int      // trailing messages of up not announced (not in cl)
	inUp  bitset   // true UIDs in up
	known bitset   // UIDs the map knows
	next  uint32   // next UID the simulated server assigns
}

type bitset []uint64

func (b *bitset) set(i uint32, v bool) {
	w := int(i / 64)
	for w >= len(*b) {
		*b = append(*b, 0)
	}
	if v {
		(*b)[w] |= 1 << (i % 64)
	} else {
		(*b)[w] &^= 1 << (i % 64)
	}
}

func (b bitset) get(i uint32) bool {
	w := int(i / 64)
	return w < len(b) && b[w]&(1<<(i%64)) != 0
}

// newUID returns the next UID the server assigns, with random gaps.
func (md *model) newUID(r *rand.Rand) uint32 {
	if r.IntN(4) == 0 {
		md.next += uint32(r.IntN(6))
	}
	u := md.next
	md.next++
	return u
}

func (md *model) load(r *rand.Rand, n int) []uint32 {
	*md = model{next: 1 + uint32(r.IntN(3))}
	for range n {
		u := md.newUID(r)
		md.up = append(md.up, u)
		md.inUp.set(u, true)
		md.known.set(u, true)
	}
	md.cl = slices.Clone(md.up)
	return slices.Clone(md.up)
}

func (md *model) uidOf(u uint32) uint32 {
	if md.known.get(u) {
		return u
	}
	return 0
}

// removeUp removes up[i] as an upstream expunge does.
func (md *model) removeUp(i int) {
	if i >= len(md.up)-md.unann {
		md.unann--
	}
	md.inUp.set(md.up[i], false)
	md.up = slices.Delete(md.up, i, i+1)
}

func (md *model) pending() (known, tomb int) {
	for _, u := range md.cl {
		if !md.inUp.get(u) {
			if md.known.get(u) {
				known++
			} else {
				tomb++
			}
		}
	}
	return known, tomb
}

func (md *model) unknownUp() int {
	n := 0
	for _, u := range md.up {
		if !md.known.get(u) {
			n++
		}
	}
	return n
}

// compareFull checks every message of both views and all counts.
func compareFull(m *Map, md *model) error {
	if err := m.Check(); err != nil {
		return err
	}
	if err := compareCounts(m, md); err != nil {
		return err
	}
	k, tomb := md.pending()
	if got := m.PendingExpunges(); got != uint32(k+tomb) {
		return fmt.Errorf("PendingExpunges %d, want %d", got, k+tomb)
	}
	if got := m.Tombstones(); got != uint32(tomb) {
		return fmt.Errorf("Tombstones %d, want %d", got, tomb)
	}
	if got := m.Unknown(); got != uint32(md.unknownUp()) {
		return fmt.Errorf("Unknown %d, want %d", got, md.unknownUp())
	}
	for i := range md.cl {
		if err := checkClient(m, md, i); err != nil {
			return err
		}
	}
	for i := range md.up {
		if err := checkUp(m, md, i); err != nil {
			return err
		}
	}
	return nil
}

func compareCounts(m *Map, md *model) error {
	if m.ClientCount() != uint32(len(md.cl)) || m.UpstreamCount() != uint32(len(md.up)) ||
		m.PendingArrivals() != uint32(md.unann) {
		return fmt.Errorf("counts client/up/arrivals %d/%d/%d, want %d/%d/%d",
			m.ClientCount(), m.UpstreamCount(), m.PendingArrivals(), len(md.cl), len(md.up), md.unann)
	}
	return nil
}

// checkClient checks client message i (0-based) every way it can be reached.
func checkClient(m *Map, md *model, i int) error {
	u := md.cl[i]
	want := Entry{UID: md.uidOf(u), InClient: true, InUpstream: md.inUp.get(u)}
	msgno := uint32(i + 1)
	if got, ok := m.ClientAt(msgno); !ok || got != want {
		return fmt.Errorf("ClientAt(%d) = %+v %v, want %+v (true UID %d)", msgno, got, ok, want, u)
	}
	if want.UID != 0 {
		if got, ok := m.ClientMsgno(u); !ok || got != msgno {
			return fmt.Errorf("ClientMsgno(%d) = %d %v, want %d", u, got, ok, msgno)
		}
	} else if got, ok := m.ClientMsgno(u); ok {
		return fmt.Errorf("ClientMsgno(%d) of an unknown UID = %d", u, got)
	}
	if want.InUpstream {
		j, _ := slices.BinarySearch(md.up, u)
		if got, ok := m.ClientToUpstream(msgno); !ok || got != uint32(j+1) {
			return fmt.Errorf("ClientToUpstream(%d) = %d %v, want %d", msgno, got, ok, j+1)
		}
	} else if got, ok := m.ClientToUpstream(msgno); ok {
		return fmt.Errorf("ClientToUpstream(%d) of a pending expunge = %d", msgno, got)
	}
	return nil
}

// checkUp checks upstream message i (0-based).
func checkUp(m *Map, md *model, i int) error {
	u := md.up[i]
	inClient := i < len(md.up)-md.unann
	want := Entry{UID: md.uidOf(u), InClient: inClient, InUpstream: true}
	msgno := uint32(i + 1)
	if got, ok := m.UpstreamAt(msgno); !ok || got != want {
		return fmt.Errorf("UpstreamAt(%d) = %+v %v, want %+v (true UID %d)", msgno, got, ok, want, u)
	}
	if want.UID != 0 {
		if got, ok := m.UpstreamMsgno(u); !ok || got != msgno {
			return fmt.Errorf("UpstreamMsgno(%d) = %d %v, want %d", u, got, ok, msgno)
		}
	}
	got, ok := m.UpstreamToClient(msgno)
	if inClient {
		j, _ := slices.BinarySearch(md.cl, u)
		if !ok || got != uint32(j+1) {
			return fmt.Errorf("UpstreamToClient(%d) = %d %v, want %d", msgno, got, ok, j+1)
		}
	} else if ok {
		return fmt.Errorf("UpstreamToClient(%d) of an unannounced arrival = %d", msgno, got)
	}
	return nil
}

// simulation drives a Map and the model with the same random events.
type simulation struct {
	r      *rand.Rand
	m      *Map
	md     model
	small  bool // mailboxes of tens of messages, compared in full each step
	size   int  // initial size on reload
	lastOp int
}

func (s *simulation) reload() error {
	n := s.size
	if s.small {
		n = s.r.IntN(s.size + 1)
	}
	uids := s.md.load(s.r, n)
	s.r.Shuffle(len(uids), func(i, j int) { uids[i], uids[j] = uids[j], uids[i] })
	if n > 0 && s.r.IntN(4) == 0 {
		uids = append(uids, uids[0]) // a duplicate
	}
	if s.r.IntN(2) == 0 {
		var set imap.UIDSet
		for _, u := range uids {
			set = append(set, imap.UIDRange{Start: imap.UID(u), Stop: imap.UID(u)})
		}
		return s.m.LoadSet(set)
	}
	return s.m.Load(uids)
}

func (s *simulation) randUIDSet(maxRanges int) imap.UIDSet {
	var set imap.UIDSet
	for range 1 + s.r.IntN(maxRanges) {
		a := 1 + uint32(s.r.IntN(int(s.md.next)+2))
		w := uint32(s.r.IntN(4))
		if !s.small {
			w = uint32(s.r.IntN(64))
		}
		z := a + w
		if s.r.IntN(2) == 0 {
			a, z = z, a
		}
		set = append(set, imap.UIDRange{Start: imap.UID(a), Stop: imap.UID(z)})
	}
	return set
}

func (s *simulation) step() error {
	r, m, md := s.r, s.m, &s.md
	op := r.IntN(100)
	s.lastOp = op
	switch {
	case op < 1 && s.small, op < 0:
		return s.reload()

	case op < 12: // upstream EXISTS
		k := r.IntN(4)
		if s.small && len(md.up) > 80 {
			k = 0
		}
		for range k {
			u := md.newUID(r)
			md.up = append(md.up, u)
			md.inUp.set(u, true)
			md.unann++
		}
		got, err := m.Exists(uint32(len(md.up)))
		if err != nil || got != uint32(k) {
			return fmt.Errorf("Exists: %d %v, want %d", got, err, k)
		}
		if len(md.up) > 0 {
			if _, err := m.Exists(uint32(len(md.up) - 1)); !errors.Is(err, ErrExistsShrank) {
				return fmt.Errorf("shrinking Exists: %v", err)
			}
		}

	case op < 18: // announce arrivals
		if r.IntN(3) == 0 {
			want := 0
			for _, u := range md.up[len(md.up)-md.unann:] {
				if !md.known.get(u) {
					break
				}
				want++
			}
			if got := m.AnnounceResolved(); got != uint32(want) {
				return fmt.Errorf("AnnounceResolved = %d, want %d", got, want)
			}
			md.cl = append(md.cl, md.up[len(md.up)-md.unann:][:want]...)
			md.unann -= want
			break
		}
		if got := m.AnnounceArrivals(); got != uint32(md.unann) {
			return fmt.Errorf("AnnounceArrivals = %d, want %d", got, md.unann)
		}
		md.cl = append(md.cl, md.up[len(md.up)-md.unann:]...)
		md.unann = 0

	case op < 28: // resolve: one message, or all of them as "FETCH n:* (UID)" does
		if len(md.up) == 0 {
			break
		}
		lo, hi := r.IntN(len(md.up)), len(md.up)
		if !s.small && r.IntN(2) == 0 {
			lo = max(0, hi-1-r.IntN(100))
		}
		if r.IntN(2) == 0 || hi-lo > 200 {
			hi = lo + 1
		}
		if s.small || r.IntN(50) == 0 {
			if err := checkUnresolved(m, md); err != nil {
				return err
			}
		}
		if err := s.resolve(lo, hi); err != nil {
			return err
		}
	case op < 40: // upstream EXPUNGE
		if len(md.up) == 0 {
			if _, err := m.ExpungeUpstream(1); !errors.Is(err, ErrBadSequence) {
				return fmt.Errorf("ExpungeUpstream(1) when empty: %v", err)
			}
			break
		}
		i := r.IntN(len(md.up))
		want := md.uidOf(md.up[i])
		got, err := m.ExpungeUpstream(uint32(i + 1))
		if err != nil || got != want {
			return fmt.Errorf("ExpungeUpstream(%d) = %d %v, want %d", i+1, got, err, want)
		}
		md.removeUp(i)
		if _, err := m.ExpungeUpstream(uint32(len(md.up) + 1)); !errors.Is(err, ErrBadSequence) {
			return fmt.Errorf("ExpungeUpstream above count: %v", err)
		}

	case op < 45: // VANISHED
		set := s.randUIDSet(3)
		var idx []int
		for _, i := range md.inSet(md.up, set) {
			if md.known.get(md.up[i]) {
				idx = append(idx, i)
			}
		}
		want := len(idx)
		for _, i := range slices.Backward(idx) {
			md.removeUp(i)
		}
		if got := m.Vanish(set); got != uint32(want) {
			return fmt.Errorf("Vanish(%v) = %d, want %d", set, got, want)
		}

	case op < 51: // release pending expunges
		if !s.small && r.IntN(5) != 0 {
			break
		}
		if r.IntN(3) == 0 {
			var want imap.UIDSet
			var tombs []uint32
			pos := 0
			for _, u := range md.cl {
				if md.inUp.get(u) {
					pos++
				} else if md.known.get(u) {
					want = appendUIDRange(want, u, u)
				}
			}
			pos = 0
			for _, u := range md.cl {
				if md.inUp.get(u) || !md.known.get(u) {
					pos++
					if !md.inUp.get(u) {
						tombs = append(tombs, uint32(pos))
					}
				}
			}
			slices.Reverse(tombs)
			got, gotTombs := m.ReleaseVanished(nil)
			if !slices.Equal(got, want) || !slices.Equal(gotTombs, tombs) {
				return fmt.Errorf("ReleaseVanished = %v %v, want %v %v", got, gotTombs, want, tombs)
			}
		} else {
			var want []uint32
			for i := len(md.cl) - 1; i >= 0; i-- {
				if !md.inUp.get(md.cl[i]) {
					want = append(want, uint32(i+1))
				}
			}
			if got := m.ReleaseExpunges(nil); !slices.Equal(got, want) {
				return fmt.Errorf("ReleaseExpunges = %v, want %v", got, want)
			}
		}
		md.cl = slices.DeleteFunc(md.cl, func(u uint32) bool { return !md.inUp.get(u) })
		if m.PendingExpunges() != 0 {
			return fmt.Errorf("PendingExpunges %d after release", m.PendingExpunges())
		}

	case op < 54: // resync against the server's list
		if !s.small && r.IntN(40) != 0 {
			break
		}
		var auth []uint32
		var want ResyncStats
		keep := make([]bool, len(md.up))
		for i, u := range md.up {
			keep[i] = !md.known.get(u) || r.IntN(8) != 0 || !s.small && r.IntN(100) != 0
			if keep[i] {
				auth = append(auth, u)
				if !md.known.get(u) {
					want.Resolved++
				}
			} else {
				want.Expunged++
			}
		}
		var revive []uint32
		for _, u := range md.cl {
			if !md.inUp.get(u) && md.known.get(u) && r.IntN(3) == 0 {
				revive = append(revive, u)
			}
		}
		auth = append(auth, revive...)
		want.Revived = uint32(len(revive))
		var added []uint32
		for range r.IntN(4) {
			added = append(added, md.newUID(r))
		}
		auth = append(auth, added...)
		want.Added = uint32(len(added))
		r.Shuffle(len(auth), func(i, j int) { auth[i], auth[j] = auth[j], auth[i] })
		var got ResyncStats
		var err error
		if r.IntN(2) == 0 {
			got, err = m.Resync(auth)
		} else {
			var set imap.UIDSet
			for _, u := range auth {
				set = append(set, imap.UIDRange{Start: imap.UID(u), Stop: imap.UID(u)})
			}
			got, err = m.ResyncSet(set)
		}
		if err != nil || got != want {
			return fmt.Errorf("Resync = %+v %v, want %+v", got, err, want)
		}
		for i := len(md.up) - 1; i >= 0; i-- {
			if !keep[i] {
				md.removeUp(i)
			}
		}
		for _, u := range md.up {
			md.known.set(u, true)
		}
		for _, u := range revive {
			md.inUp.set(u, true)
			j, _ := slices.BinarySearch(md.up, u)
			md.up = slices.Insert(md.up, j, u)
		}
		for _, u := range added {
			md.up = append(md.up, u)
			md.inUp.set(u, true)
			md.known.set(u, true)
			md.unann++
		}

	case op < 72: // translate a client sequence set
		cc := uint32(len(md.cl))
		var set imap.SeqSet
		var wantErr error
		num := func() uint32 {
			switch x := r.IntN(20); {
			case x == 0:
				return 0 // "*"
			case x == 1:
				return cc + 1 + uint32(r.IntN(3))
			case cc == 0:
				return 1
			}
			return 1 + uint32(r.IntN(int(cc)))
		}
		var nums []uint32
		for range 1 + r.IntN(4) {
			a := num()
			z := a
			if r.IntN(2) == 0 {
				z = num()
				// Keep most ranges short in the large mailbox: the
				// model expands them. One in a hundred may be 1:*.
				star := func(x uint32) uint32 {
					if x == 0 {
						return cc
					}
					return x
				}
				if !s.small && max(star(a), star(z))-min(star(a), star(z)) > 5000 && r.IntN(100) != 0 {
					z = a
				}
			}
			set = append(set, imap.SeqRange{Start: a, Stop: z})
			if wantErr != nil {
				continue
			}
			if (a == 0 || z == 0) && cc == 0 {
				wantErr = &SeqError{Kind: SeqStarEmpty}
				continue
			}
			if a == 0 {
				a = cc
			}
			if z == 0 {
				z = cc
			}
			if a > z {
				a, z = z, a
			}
			if z > cc {
				wantErr = &SeqError{Kind: SeqTooHigh, Num: z, Count: cc}
				continue
			}
			for n := a; n <= z; n++ {
				nums = append(nums, n)
			}
		}
		var want imap.UIDSet
		if wantErr == nil {
			slices.Sort(nums)
			nums = slices.Compact(nums)
			for _, n := range nums {
				u := md.cl[n-1]
				if !md.inUp.get(u) {
					continue
				}
				if !md.known.get(u) {
					wantErr = ErrUnresolved
					want = nil
					break
				}
				want = appendUIDRange(want, u, u)
			}
		}
		got, err := m.ClientSeqToUIDs(set)
		if wantErr != nil {
			if we, ok := wantErr.(*SeqError); ok {
				var se *SeqError
				if !errors.As(err, &se) || *se != *we || !errors.Is(err, ErrBadSequence) {
					return fmt.Errorf("ClientSeqToUIDs(%v) error %v, want %v", set, err, wantErr)
				}
			} else if !errors.Is(err, wantErr) {
				return fmt.Errorf("ClientSeqToUIDs(%v) error %v, want %v", set, err, wantErr)
			}
			break
		}
		if err != nil || !slices.Equal(got, want) {
			return fmt.Errorf("ClientSeqToUIDs(%v) = %v %v, want %v", set, got, err, want)
		}

	case op < 80: // translate UIDs back: SEARCH / SORT lists and ESEARCH sets
		set := s.randUIDSet(3)
		var want imap.SeqSet
		for _, i := range md.inSet(md.cl, set) {
			if md.known.get(md.cl[i]) {
				want = appendSeqRange(want, uint32(i+1), uint32(i+1))
			}
		}
		if got := m.AppendClientSeq(nil, set); !slices.Equal(got, want) {
			return fmt.Errorf("AppendClientSeq(%v) = %v, want %v", set, got, want)
		}
		var uids, wantNums []uint32
		for range r.IntN(6) {
			var u uint32
			switch {
			case len(md.cl) > 0 && r.IntN(2) == 0:
				u = md.cl[r.IntN(len(md.cl))]
			case len(md.up) > 0 && r.IntN(2) == 0:
				u = md.up[r.IntN(len(md.up))]
			default:
				u = uint32(r.IntN(int(md.next) + 2))
			}
			uids = append(uids, u)
			if j, ok := slices.BinarySearch(md.cl, u); ok && md.known.get(u) {
				wantNums = append(wantNums, uint32(j+1))
			}
		}
		if got := m.AppendClientMsgnos(nil, uids); !slices.Equal(got, wantNums) {
			return fmt.Errorf("AppendClientMsgnos(%v) = %v, want %v", uids, got, wantNums)
		}

	default: // lookups, in the large mailbox the only check of most steps
		for range 4 {
			if len(md.cl) > 0 {
				if err := checkClient(m, md, r.IntN(len(md.cl))); err != nil {
					return err
				}
			}
			if len(md.up) > 0 {
				if err := checkUp(m, md, r.IntN(len(md.up))); err != nil {
					return err
				}
			}
		}
		for _, n := range []uint32{0, uint32(len(md.cl) + 1)} {
			if e, ok := m.ClientAt(n); ok {
				return fmt.Errorf("ClientAt(%d) = %+v", n, e)
			}
		}
		if e, ok := m.UpstreamAt(uint32(len(md.up) + 1)); ok {
			return fmt.Errorf("UpstreamAt(%d) = %+v", len(md.up)+1, e)
		}
	}
	if err := compareCounts(m, md); err != nil {
		return fmt.Errorf("after op %d: %w", s.lastOp, err)
	}
	return nil
}

// inSet returns the ascending indices of view's UIDs that set contains.
func (md *model) inSet(view []uint32, set imap.UIDSet) []int {
	var idx []int
	for _, r := range set {
		lo, hi := uint32(r.Start), uint32(r.Stop)
		if lo > hi {
			lo, hi = hi, lo
		}
		i, _ := slices.BinarySearch(view, lo)
		for ; i < len(view) && view[i] <= hi; i++ {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	return slices.Compact(idx)
}

func checkUnresolved(m *Map, md *model) error {
	first, last, floor, ok := m.Unresolved()
	var wf, wl, wfloor uint32
	var wok bool
	for i, u := range md.up {
		if !md.known.get(u) {
			if !wok {
				wf, wok = uint32(i+1), true
				// floor: the highest known UID of either view below u
				for _, v := range md.up[:i] {
					if md.known.get(v) {
						wfloor = max(wfloor, v)
					}
				}
				for _, v := range md.cl {
					if v < u && md.known.get(v) {
						wfloor = max(wfloor, v)
					}
				}
			}
			wl = uint32(i + 1)
		}
	}
	if first != wf || last != wl || floor != wfloor || ok != wok {
		return fmt.Errorf("Unresolved = %d %d %d %v, want %d %d %d %v", first, last, floor, ok, wf, wl, wfloor, wok)
	}
	return nil
}

// resolve resolves upstream messages lo..hi-1 (0-based), in order or not,
// trying a wrong UID first where one must be refused.
func (s *simulation) resolve(lo, hi int) error {
	r, m, md := s.r, s.m, &s.md
	idx := make([]int, 0, hi-lo)
	for i := lo; i < hi; i++ {
		idx = append(idx, i)
	}
	if r.IntN(4) == 0 {
		r.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
	}
	for _, i := range idx {
		u := md.up[i]
		if md.known.get(u) {
			if err := m.Resolve(uint32(i+1), u+1); !errors.Is(err, ErrUIDMismatch) {
				return fmt.Errorf("Resolve(%d, wrong UID %d): %v", i+1, u+1, err)
			}
		} else if i > 0 && md.known.get(md.up[i-1]) {
			if err := m.Resolve(uint32(i+1), md.up[i-1]); !errors.Is(err, ErrUIDOrder) {
				return fmt.Errorf("Resolve(%d, UID %d of the previous message): %v", i+1, md.up[i-1], err)
			}
		}
		if err := m.Resolve(uint32(i+1), u); err != nil {
			return fmt.Errorf("Resolve(%d, %d): %v", i+1, u, err)
		}
		md.known.set(u, true)
	}
	return nil
}

func runSimulation(t *testing.T, seed uint64, ops int, small bool, size, fullEvery int) {
	s := &simulation{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), m: New(), small: small, size: size}
	if seed%2 == 0 {
		// Tiny chunks: a few runs each, so that small mailboxes split,
		// merge and compact chunks all the time.
		s.m.b.maxBytes, s.m.b.fillBytes = 24, 12
	}
	if err := s.reload(); err != nil {
		t.Fatal(err)
	}
	for i := range ops {
		if err := s.step(); err != nil {
			t.Fatalf("seed %d step %d: %v", seed, i, err)
		}
		if i%fullEvery == 0 {
			if err := compareFull(s.m, &s.md); err != nil {
				t.Fatalf("seed %d step %d: %v", seed, i, err)
			}
		}
	}
	if err := compareFull(s.m, &s.md); err != nil {
		t.Fatalf("seed %d end: %v", seed, err)
	}
}

// TestRandomSmall runs 100,000 random events per seed on mailboxes of up
// to ~100 messages, comparing both views in full after every step.
func TestRandomSmall(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			ops := 100_000
			if testing.Short() {
				ops = 10_000
			}
			runSimulation(t, seed, ops, true, 40, 1)
		})
	}
}

// TestRandomLarge runs 100,000 random events on a 200,000-message mailbox:
// spot checks every step, a full comparison every 20,000.
func TestRandomLarge(t *testing.T) {
	for _, seed := range []uint64{11, 13} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			ops, size := 100_000, 200_000
			if testing.Short() {
				ops, size = 10_000, 20_000
			}
			runSimulation(t, seed, ops, false, size, 20_000)
		})
	}
}
