package proxy

import (
	"bytes"
	"errors"

	"github.com/emersion/go-imap/v2"
)

var errSeqSyntax = errors.New("invalid sequence set")

// isSeqSetToken reports whether b looks like a sequence set (digits, "*",
// ":" and ","), as opposed to a search key or an argument. "$" (RFC 5182)
// is not one: it names a saved result and passes unchanged.
func isSeqSetToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c == '*' || c == ':' || c == ',') {
			return false
		}
	}
	return true
}

// parseSeqSet parses RFC 9051 §9 sequence-set. "*" is 0 in the result, as
// go-imap has it; a literal 0 is an error (seq-number is nz-number).
func parseSeqSet(b []byte) (imap.SeqSet, error) {
	set := make(imap.SeqSet, 0, bytes.Count(b, []byte{','})+1)
	err := parseRanges(b, func(lo, hi uint32) {
		set = append(set, imap.SeqRange{Start: lo, Stop: hi})
	})
	if err != nil {
		return nil, err
	}
	return set, nil
}

// parseRanges calls add for each range of the sequence-set b, in order.
// The caller sizes its result from b's commas: one allocation however
// long the set (issue 16: a backend's ESEARCH ALL of a million ranges
// cost five times its size in copies left behind by append).
func parseRanges(b []byte, add func(lo, hi uint32)) error {
	i := 0
	num := func() (uint32, bool) {
		if i < len(b) && b[i] == '*' {
			i++
			return 0, true
		}
		start := i
		var n uint64
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			n = n*10 + uint64(b[i]-'0')
			if n > 0xffffffff {
				return 0, false
			}
			i++
		}
		return uint32(n), i > start && n > 0
	}
	for {
		lo, ok := num()
		if !ok {
			return errSeqSyntax
		}
		hi := lo
		if i < len(b) && b[i] == ':' {
			i++
			if hi, ok = num(); !ok {
				return errSeqSyntax
			}
		}
		add(lo, hi)
		if i == len(b) {
			return nil
		}
		if b[i] != ',' {
			return errSeqSyntax
		}
		i++
	}
}

// growTo makes room in b for n more bytes, at least doubling its capacity
// when it must grow, never past limit when it need not: a command
// rewritten to megabytes then leaves behind copies adding up to its size,
// not four times it as append's growth by a quarter does (issue 16).
func growTo(b []byte, n, limit int) []byte {
	if len(b)+n <= cap(b) {
		return b
	}
	c := max(min(2*cap(b), limit), len(b)+n)
	return append(make([]byte, 0, c), b...)
}

// appendUIDSet formats set (ascending ranges, no "*") into dst.
func appendUIDSet(dst []byte, set imap.UIDSet) []byte {
	for i, r := range set {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendUint(dst, uint32(r.Start))
		if r.Stop != r.Start {
			dst = append(dst, ':')
			if r.Stop == 0 {
				dst = append(dst, '*')
			} else {
				dst = appendUint(dst, uint32(r.Stop))
			}
		}
	}
	return dst
}

// uidSetLen is the length of appendUIDSet(nil, set), counted without
// writing it: a bound is checked before the bytes exist.
func uidSetLen(set imap.UIDSet) int {
	n := 0
	for i, r := range set {
		if i > 0 {
			n++ // ','
		}
		n += uintLen(uint32(r.Start))
		if r.Stop != r.Start {
			n++ // ':'
			if r.Stop == 0 {
				n++ // '*'
			} else {
				n += uintLen(uint32(r.Stop))
			}
		}
	}
	return n
}

// uintLen is the number of decimal digits of n.
func uintLen(n uint32) int {
	d := 1
	for n >= 10 {
		n /= 10
		d++
	}
	return d
}

// appendSeqSet formats a client sequence set into dst.
// Ascending neighbours are joined ("1,2,3" is written "1:3", as servers
// write ESEARCH's ALL; RFC 4731 §3.1 and RFC 5267 §3.2 read both alike).
func appendSeqSet(dst []byte, set imap.SeqSet) []byte {
	for i := 0; i < len(set); i++ {
		if i > 0 {
			dst = append(dst, ',')
		}
		start, stop := set[i].Start, set[i].Stop
		for start <= stop && i+1 < len(set) && set[i+1].Start == stop+1 && set[i+1].Start <= set[i+1].Stop {
			i++
			stop = set[i].Stop
		}
		dst = appendUint(dst, start)
		if stop != start {
			dst = append(dst, ':')
			dst = appendUint(dst, stop)
		}
	}
	return dst
}

func appendUint(dst []byte, n uint32) []byte {
	var buf [10]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return append(dst, buf[i:]...)
}

// parseUIDSet parses a UID set as a backend sends it (ESEARCH ALL,
// [MODIFIED ...]); "*" is kept as 0.
func parseUIDSet(b []byte) (imap.UIDSet, error) {
	set := make(imap.UIDSet, 0, bytes.Count(b, []byte{','})+1)
	err := parseRanges(b, func(lo, hi uint32) {
		if lo > hi && hi != 0 || lo == 0 {
			lo, hi = hi, lo
		}
		set = append(set, imap.UIDRange{Start: imap.UID(lo), Stop: imap.UID(hi)})
	})
	if err != nil {
		return nil, err
	}
	return set, nil
}
