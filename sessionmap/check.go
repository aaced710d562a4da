package sessionmap

import (
	"fmt"
	"math"
	"slices"
)

// Check verifies the map's internal invariants and returns the first one
// broken, nil if none. It is O(n); tests call it after each step.
func (m *Map) Check() error {
	b := &m.b
	var n, pend uint32
	var bytes int
	var prevLast uint64
	for ci := range b.chunks {
		c := &b.chunks[ci]
		if len(c.data) == 0 || c.n == 0 {
			return fmt.Errorf("chunk %d is empty", ci)
		}
		if len(c.data) > b.max() {
			return fmt.Errorf("chunk %d holds %d bytes > %d", ci, len(c.data), b.max())
		}
		if ci > 0 && uint64(c.first) <= prevLast {
			return fmt.Errorf("chunk %d starts at UID %d, not above %d", ci, c.first, prevLast)
		}
		var cn, cp uint32
		prevEnd := uint64(c.first)
		var prev run
		for i := 0; i < len(c.data); {
			start, rn, p, j := decodeRun(c.data, i, prevEnd)
			switch {
			case i == 0 && start != uint64(c.first):
				return fmt.Errorf("chunk %d: first run at %d, not %d", ci, start, c.first)
			case rn == 0:
				return fmt.Errorf("chunk %d: empty run at UID %d", ci, start)
			case i > 0 && start == prevEnd && p == prev.pend:
				return fmt.Errorf("chunk %d: runs not merged at UID %d", ci, start)
			case start+uint64(rn)-1 > math.MaxUint32:
				return fmt.Errorf("chunk %d: run past UID 2³²-1", ci)
			}
			cn += rn
			if p {
				cp += rn
			}
			prev = run{uint32(start), rn, p}
			prevEnd = start + uint64(rn)
			i = j
		}
		if prevEnd-1 != uint64(c.last) || cn != c.n || cp != c.pend {
			return fmt.Errorf("chunk %d: cached last/n/pend %d/%d/%d, decoded %d/%d/%d",
				ci, c.last, c.n, c.pend, prevEnd-1, cn, cp)
		}
		prevLast = uint64(c.last)
		n += cn
		pend += cp
		bytes += len(c.data)
	}
	if n != b.n || pend != b.pend || bytes != b.bytes {
		return fmt.Errorf("body totals n/pend/bytes %d/%d/%d, counted %d/%d/%d", b.n, b.pend, b.bytes, n, pend, bytes)
	}
	if !b.dirty && len(b.chunks) > 0 {
		fn, fp := slices.Clone(b.fn), slices.Clone(b.fp)
		b.dirty = true
		b.fix()
		if !slices.Equal(fn, b.fn) || !slices.Equal(fp, b.fp) {
			return fmt.Errorf("fenwick trees out of date")
		}
	}

	var tc, tu, tpend, ttomb, tarr, tunknown uint32
	known := prevLast  // highest known UID so far
	var unknown uint64 // placeholders since, each needing a UID above it
	announced := true
	for i, r := range m.tail {
		c, u := r.st&inClient != 0, r.st&inUp != 0
		switch {
		case r.n == 0 || r.st == 0 || r.st&^(inClient|inUp) != 0:
			return fmt.Errorf("tail run %d: n %d, state %d", i, r.n, r.st)
		case i == 0 && r.uid != 0 && c:
			return fmt.Errorf("tail run 0 belongs in the body")
		case !c && announced:
			announced = false
		case c && !announced:
			return fmt.Errorf("tail run %d: announced after an unannounced arrival", i)
		}
		if i > 0 {
			p := m.tail[i-1]
			if p.st == r.st && (p.uid == 0) == (r.uid == 0) &&
				(r.uid == 0 || uint64(p.uid)+uint64(p.n) == uint64(r.uid)) {
				return fmt.Errorf("tail runs %d and %d not merged", i-1, i)
			}
		}
		if r.uid != 0 {
			if uint64(r.uid) <= known+unknown {
				return fmt.Errorf("tail run %d: UID %d after UID %d and %d placeholders", i, r.uid, known, unknown)
			}
			known, unknown = uint64(r.uid)+uint64(r.n)-1, 0
			if known > math.MaxUint32 {
				return fmt.Errorf("tail run %d: past UID 2³²-1", i)
			}
		} else if u {
			unknown += uint64(r.n)
		}
		if c {
			tc += r.n
		}
		if u {
			tu += r.n
		}
		switch {
		case c && !u:
			tpend += r.n
			if r.uid == 0 {
				ttomb += r.n
			}
		case u && !c:
			tarr += r.n
		}
		if u && r.uid == 0 {
			tunknown += r.n
		}
	}
	if known+unknown > math.MaxUint32 {
		return fmt.Errorf("%d placeholders after UID %d", unknown, known)
	}
	if tc != m.tc || tu != m.tu || tpend != m.tpend || ttomb != m.ttomb || tarr != m.tarr || tunknown != m.tunknown {
		return fmt.Errorf("tail counts %d/%d/%d/%d/%d/%d, counted %d/%d/%d/%d/%d/%d",
			m.tc, m.tu, m.tpend, m.ttomb, m.tarr, m.tunknown, tc, tu, tpend, ttomb, tarr, tunknown)
	}
	if uint64(b.n)+uint64(tc)+uint64(tarr) > math.MaxUint32 {
		return fmt.Errorf("more than 2³²-1 messages")
	}
	return nil
}
