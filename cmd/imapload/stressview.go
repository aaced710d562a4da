package main

import (
	"fmt"
	"slices"
)

// stressMaxView bounds the messages a view holds: far above what stress
// lets a mailbox grow to, low enough that a server announcing billions
// costs nothing.
const stressMaxView = 100_000

// stressView is one client's model of its selected mailbox, built only
// from what the server told it: how many messages there are (EXISTS, less
// EXPUNGEs) and, in message-number order, the UIDs it has learnt (from
// FETCH responses carrying UID). It is pure: each method applies one
// response and returns what is wrong with it ("" if nothing), the text
// of a violation.
type stressView struct {
	// selecting is set from a SELECT until its tagged response: every
	// EXISTS then starts the view afresh, EXPUNGE and FETCH are not
	// checked (they may still be about the mailbox being left).
	selecting bool
	uids      []uint32 // uids[i] is message i+1's UID, 0 until learnt; len is the count
}

func (v *stressView) count() uint32 { return uint32(len(v.uids)) }

// uid returns message n's UID, 0 if not learnt or n is not in the view.
func (v *stressView) uid(n uint32) uint32 {
	if n == 0 || n > v.count() {
		return 0
	}
	return v.uids[n-1]
}

// reset starts a SELECT.
func (v *stressView) reset() {
	v.selecting = true
	v.uids = v.uids[:0]
}

// exists applies "* n EXISTS".
func (v *stressView) exists(n uint32) string {
	if n > stressMaxView {
		return fmt.Sprintf("EXISTS %d: more than the %d messages stress can hold", n, stressMaxView)
	}
	if v.selecting {
		v.uids = append(v.uids[:0], make([]uint32, n)...)
		return ""
	}
	if n < v.count() {
		why := fmt.Sprintf("EXISTS %d after %d, and no EXPUNGE between (RFC 3501 §7.3.1: EXISTS never decreases)", n, v.count())
		v.uids = v.uids[:n]
		return why
	}
	for v.count() < n {
		v.uids = append(v.uids, 0)
	}
	return ""
}

// expunge applies "* n EXPUNGE": the messages after n move down by one
// (RFC 3501 §7.4.1).
func (v *stressView) expunge(n uint32) string {
	if v.selecting {
		return ""
	}
	if n == 0 || n > v.count() {
		return fmt.Sprintf("EXPUNGE %d, but the client knows of %d messages", n, v.count())
	}
	v.uids = slices.Delete(v.uids, int(n-1), int(n))
	return ""
}

// fetch applies "* n FETCH", with the UID it carries if hasUID.
func (v *stressView) fetch(n, uid uint32, hasUID bool) string {
	if v.selecting {
		return ""
	}
	if n == 0 || n > v.count() {
		return fmt.Sprintf("FETCH %d, but the client knows of %d messages", n, v.count())
	}
	if !hasUID {
		return ""
	}
	if uid == 0 {
		return fmt.Sprintf("FETCH %d with UID 0 (RFC 9051 §9: nz-number)", n)
	}
	i := int(n - 1)
	if old := v.uids[i]; old != 0 {
		if old == uid {
			return ""
		}
		v.uids[i] = uid
		return fmt.Sprintf("message %d was UID %d, now UID %d, and no EXPUNGE between", n, old, uid)
	}
	// RFC 3501 §2.3.1.1: UIDs ascend with message numbers. The nearest
	// known neighbours on each side tell.
	var why string
	for j := i - 1; j >= 0; j-- {
		if u := v.uids[j]; u != 0 {
			if u >= uid {
				why = fmt.Sprintf("message %d is UID %d, but message %d is UID %d (RFC 3501 §2.3.1.1: UIDs ascend)", n, uid, j+1, u)
			}
			break
		}
	}
	for j := i + 1; j < len(v.uids) && why == ""; j++ {
		if u := v.uids[j]; u != 0 {
			if u <= uid {
				why = fmt.Sprintf("message %d is UID %d, but message %d is UID %d (RFC 3501 §2.3.1.1: UIDs ascend)", n, uid, j+1, u)
			}
			break
		}
	}
	if why != "" {
		// Start over from this answer rather than report every later one.
		clear(v.uids)
	}
	v.uids[i] = uid
	return why
}

// searchHit checks one message number of a "* SEARCH" answering SEARCH.
func (v *stressView) searchHit(n uint32) string {
	if n == 0 || n > v.count() {
		return fmt.Sprintf("SEARCH found message %d, but the client knows of %d messages", n, v.count())
	}
	return ""
}

// knownUID returns the UID of a random message whose UID is known (pick
// chooses among k candidates), or 0.
func (v *stressView) knownUID(pick func(k int) int) uint32 {
	known := 0
	for _, u := range v.uids {
		if u != 0 {
			known++
		}
	}
	if known == 0 {
		return 0
	}
	k := pick(known)
	for _, u := range v.uids {
		if u != 0 {
			if k == 0 {
				return u
			}
			k--
		}
	}
	return 0
}
