package sessionmap

import (
	"math"
	"slices"

	"github.com/emersion/go-imap/v2"
)

// urange is an inclusive range of UIDs or message numbers.
type urange struct{ lo, hi uint32 }

// mergeRanges sorts rs and merges ranges that overlap or touch, in place.
func mergeRanges(rs []urange) []urange {
	sorted := true
	for i := 1; i < len(rs); i++ {
		if rs[i].lo <= rs[i-1].hi || rs[i].lo-rs[i-1].hi == 1 {
			sorted = false
			break
		}
	}
	if sorted {
		return rs
	}
	slices.SortFunc(rs, func(a, b urange) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	out := rs[:1]
	for _, r := range rs[1:] {
		p := &out[len(out)-1]
		if uint64(r.lo) <= uint64(p.hi)+1 {
			p.hi = max(p.hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// uidRanges converts set to sorted, merged ranges appended to dst. A "*"
// (0 in go-imap's encoding) stands for star; with star == 0 it is an error.
func uidRanges(dst []urange, set imap.UIDSet, star uint32) ([]urange, error) {
	dst = slices.Grow(dst, len(set)) // one allocation, not append's copies
	for _, r := range set {
		lo, hi := uint32(r.Start), uint32(r.Stop)
		if lo == 0 || hi == 0 {
			if star == 0 {
				return dst, ErrStar
			}
			if lo == 0 {
				lo = star
			}
			if hi == 0 {
				hi = star
			}
		}
		if lo > hi {
			lo, hi = hi, lo
		}
		dst = append(dst, urange{lo, hi})
	}
	return mergeRanges(dst), nil
}

// sortUIDs sorts uids in place (duplicates stay) and counts the distinct
// ones; a zero UID is an error.
func sortUIDs(uids []uint32) (unique uint64, err error) {
	sorted := true
	for i, u := range uids {
		switch {
		case u == 0:
			return 0, ErrZeroUID
		case i == 0:
			unique++
		case u > uids[i-1]:
			unique++
		case u < uids[i-1]:
			sorted = false
		}
	}
	if sorted {
		return unique, nil
	}
	slices.Sort(uids)
	return uniqueCount(uids), nil
}

// appendUIDRange appends lo:hi to s, extending its last range if they touch.
func appendUIDRange(s imap.UIDSet, lo, hi uint32) imap.UIDSet {
	if n := len(s); n > 0 && uint32(s[n-1].Stop) != math.MaxUint32 && uint32(s[n-1].Stop)+1 == lo {
		s[n-1].Stop = imap.UID(hi)
		return s
	}
	return append(s, imap.UIDRange{Start: imap.UID(lo), Stop: imap.UID(hi)})
}

// appendSeqRange appends lo:hi to s, extending its last range if they touch.
func appendSeqRange(s imap.SeqSet, lo, hi uint32) imap.SeqSet {
	if n := len(s); n > 0 && s[n-1].Stop != math.MaxUint32 && s[n-1].Stop+1 == lo {
		s[n-1].Stop = hi
		return s
	}
	return append(s, imap.SeqRange{Start: lo, Stop: hi})
}

// uniqueCount counts the distinct values of sorted uids.
func uniqueCount(uids []uint32) uint64 {
	var n uint64
	for i, u := range uids {
		if i == 0 || u != uids[i-1] {
			n++
		}
	}
	return n
}

// rangesCount counts the numbers in disjoint ranges.
func rangesCount(rs []urange) uint64 {
	var n uint64
	for _, r := range rs {
		n += uint64(r.hi-r.lo) + 1
	}
	return n
}
