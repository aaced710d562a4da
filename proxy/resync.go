package proxy

import (
	"math"
	"strconv"

	"github.com/emersion/go-imap/v2"

	"uidgate/proxy/imapwire"
)

// Legacy resync by changes (issue 15). A legacy backend's message numbers
// are never trusted, so after it reports EXISTS or EXPUNGE uidgate asks by
// UID what changed. Asking for the whole UID list costs what the mailbox
// holds; these cost what changed:
//
//   - after arrivals alone, the UIDs above the last one known;
//   - after expunges alone, the UIDs at and around the places the backend's
//     EXPUNGE numbers point to in uidgate's view of it.
//
// Both ask with "UID FETCH <set> (UID)", not "UID SEARCH UID <set>":
// Cyrus 2.3 finds a UID range by binary search for FETCH
// (index_forsequence) but evaluates SEARCH on every message of the
// mailbox whatever the range (_index_search), so at 100,000 messages the
// SEARCH form cost the mailbox's size again (docs/BENCHMARKS.md). The
// answer's FETCH lines are collected as they come (cheapFetch) and taken
// at the tagged answer (endCheapResync); a FETCH line that carries more
// than the UID (a flag change the server reports with it) still goes to
// the client as well.
//
// The numbers only say where to look. What the answer shows is true by
// UID: a message found is in the mailbox, a known UID asked about and not
// found is gone. The answer is taken only if it adds up with what the
// backend reported (as many arrivals as EXISTS counted, as many gone as
// EXPUNGEs came); otherwise nothing is taken from it and the next resync
// reads the whole list. A count that adds up with other messages than
// the backend meant (a new message expunged and a newer one arrived
// before the search; an unreported expunge near a reported one) leaves
// the client's view true about the mailbox, with a change the backend has
// not yet reported already in it, or one it did report still pending: the
// backend's report of the other makes the next resync a full one, which
// puts both right. RFC 9051 §7.5.1 allows a client to hear of an expunge
// later than it happened; it never hears of one that did not happen.

// resyncKind is what a legacy resync asks for.
type resyncKind uint8

const (
	resyncFull     resyncKind = iota // the whole UID list (Map.ResyncSet)
	resyncArrivals                   // UIDs above the last known (endArrivals)
	resyncExpunges                   // known UIDs near reported expunges (endExpunges)
)

// maxExpReports bounds the EXPUNGE numbers remembered between resyncs;
// beyond it the resync reads the whole list.
const maxExpReports = 64

// expWindow is how many messages either side of the place an EXPUNGE
// number points to are asked about too: a backend whose numbers are a
// little stale still adds up.
const expWindow = 2

// markDirty makes the next resync read the whole UID list.
func (s *schedule) markDirty() {
	s.dirty, s.full = true, true
}

// resyncCommand is the command that resyncs a dirty legacy map, and sets
// sel.cheap to what it asks for. Must hold rs.mu.
func resyncCommand(rs *relayState, sel *selection) string {
	sel.cheap = resyncFull
	first, last, floor, unresolved := sel.m.Unresolved()
	switch {
	case sel.full:
	case len(sel.expReports) > 0 && !unresolved:
		if cands, ok := expungeCandidates(sel); ok {
			sel.cheap, sel.expCands, sel.expSent, sel.cheapFound = resyncExpunges, cands, len(sel.expReports), nil
			return uidFetchCommand(cands.String())
		}
	case len(sel.expReports) == 0 && unresolved && first > 0 && last == sel.m.UpstreamCount() && floor < math.MaxUint32:
		sel.cheap, sel.floor, sel.cheapFound = resyncArrivals, floor, nil
		return uidFetchCommand(strconv.FormatUint(uint64(floor)+1, 10) + ":*")
	}
	return searchAllCommand(rs)
}

// uidFetchCommand asks which UIDs of set are in the mailbox.
func uidFetchCommand(set string) string {
	return "UID FETCH " + set + " (UID)"
}

// cheapFetch takes the UID of a FETCH line that comes while a cheap
// resync is in flight, and reports whether the line is only the
// resync's answer ("* n FETCH (UID u)"), to be dropped. A line with
// other items as well goes on to translateFetch. Must hold rs.mu.
func (ss *session) cheapFetch(rs *relayState, sel *selection, r *imapwire.Response, line []byte) (drop bool) {
	if sel.cheap == resyncFull || rs.tags[rs.injected].inject != injectResync {
		return false
	}
	uid, only := fetchUID(line[r.After:])
	if uid == 0 {
		return false
	}
	if len(sel.cheapFound) < maxCheapRanges {
		sel.cheapFound.AddNum(imap.UID(uid))
	} else {
		sel.cheapOver = true
	}
	return only
}

// maxCheapRanges bounds the ranges a cheap resync's answer may add up
// to; past it the answer is not taken (the whole list next).
const maxCheapRanges = 4096

// fetchUID returns the UID item of a FETCH response's item list ("(UID 7
// FLAGS ())"), and whether it is the only item; 0 if there is none.
func fetchUID(b []byte) (uid uint32, only bool) {
	b = imapwire.TrimEOL(b)
	d := imapwire.NewDecoder(b)
	if !d.Special('(') {
		return 0, false
	}
	items := 0
	for !d.Special(')') {
		if items > 0 && !d.SP() {
			return 0, false
		}
		nameStart := d.Pos()
		if !d.SkipValue() {
			return 0, false
		}
		name := b[nameStart:d.Pos()]
		if !d.SP() {
			return 0, false
		}
		valStart := d.Pos()
		if !d.SkipValue() {
			return uid, false // a literal follows: more than the UID
		}
		if imapwire.EqualFold(name, "UID") {
			if n, ok := parseNumber(b[valStart:d.Pos()]); ok {
				uid = n
			}
		}
		items++
	}
	return uid, items == 1 && d.EOL()
}

// endCheapResync applies a cheap resync's answer at its tagged response
// (ok: it was OK) and returns what the client must hear of it. Must hold
// rs.mu.
func (ss *session) endCheapResync(rs *relayState, sel *selection, ok bool) []byte {
	kind, set, over := sel.cheap, sel.cheapFound, sel.cheapOver
	sel.cheap, sel.cheapFound, sel.cheapOver = resyncFull, nil, false
	if !ok || over {
		sel.expCands = nil
		sel.markDirty()
		return nil
	}
	if kind == resyncArrivals {
		return ss.endArrivals(rs, sel, set)
	}
	return ss.endExpunges(rs, sel, set)
}

// expungeCandidates places the reported EXPUNGE numbers in uidgate's view
// of the backend (each number counts after the ones before it are gone)
// and returns the UIDs there and expWindow either side; ok is false if a
// number falls outside the view or a UID there is not known.
func expungeCandidates(sel *selection) (imap.UIDSet, bool) {
	up := sel.m.UpstreamCount()
	var gone []uint32 // places in the view before the reports, ascending
	for _, k := range sel.expReports {
		p := k
		i := 0
		for ; i < len(gone) && gone[i] <= p; i++ {
			p++
		}
		if p == 0 || p > up {
			return nil, false
		}
		gone = append(gone[:i], append([]uint32{p}, gone[i:]...)...)
	}
	var cands imap.UIDSet
	for _, p := range gone {
		for q := max(p, expWindow+1) - expWindow; q <= min(p+expWindow, up); q++ {
			e, ok := sel.m.UpstreamAt(q)
			if !ok || e.UID == 0 {
				return nil, false
			}
			cands.AddNum(imap.UID(e.UID))
		}
	}
	return cands, true
}

// endArrivals applies the answer of an arrivals resync ("UID FETCH
// floor+1:* (UID)"): the UIDs above floor are the messages that arrived, in
// order, and they are the placeholders EXISTS added at the end of the map
// only if there are as many. A "*" that names a UID below floor+1
// (nothing above it) is left out (RFC 3501 §6.4.8, RFC 9051 §6.4.9: "n:*"
// includes the last message whatever n). Must hold rs.mu.
func (ss *session) endArrivals(rs *relayState, sel *selection, set imap.UIDSet) []byte {
	if sel.full || len(sel.expReports) > 0 {
		sel.markDirty() // other news came meanwhile
		return nil
	}
	first, last, _, ok := sel.m.Unresolved()
	want := uint64(last) - uint64(first) + 1
	var got uint64
	for _, r := range set {
		if lo, hi := max(uint64(r.Start), uint64(sel.floor)+1), uint64(r.Stop); hi >= lo {
			got += hi - lo + 1
		}
	}
	if !ok || got != want {
		ss.log.Debug().Uint64("arrivals", got).Uint64("exists", want).Msg("arrivals resync does not add up; the whole list next")
		sel.markDirty()
		return nil
	}
	n := first
	for _, r := range set {
		for u := uint64(max(uint32(r.Start), sel.floor+1)); u <= uint64(r.Stop); u++ {
			if err := sel.m.Resolve(n, uint32(u)); err != nil {
				ss.log.Warn().Err(err).Msg("arrivals resync conflict; the whole list next")
				sel.markDirty()
				return nil
			}
			n++
		}
	}
	ss.srv.Metrics.resync()
	sel.dirty = false
	var out []byte
	return ss.announce(rs, sel, &out, nil)
}

// endExpunges applies the answer of an expunges resync ("UID FETCH
// <candidates> (UID)"): the candidates not found are gone, and they are what the
// backend reported only if there are as many as its EXPUNGEs. They become
// pending expunges, released where the scheduler allows; an EXISTS count
// reported after them then adds placeholders for the arrivals it counts.
// Must hold rs.mu.
func (ss *session) endExpunges(rs *relayState, sel *selection, found imap.UIDSet) []byte {
	cands := sel.expCands
	sel.expCands = nil
	if _, _, _, unresolved := sel.m.Unresolved(); sel.full || unresolved || len(sel.expReports) != sel.expSent {
		sel.markDirty() // other news came meanwhile
		return nil
	}
	var gone imap.UIDSet
	n := 0
	for _, r := range cands {
		for u := r.Start; ; u++ { // candidates are known UIDs: no "*"
			if !found.Contains(u) {
				gone.AddNum(u)
				n++
			}
			if u >= r.Stop {
				break
			}
		}
	}
	if n != sel.expSent {
		ss.log.Debug().Int("gone", n).Int("expunges", sel.expSent).Msg("expunges resync does not add up; the whole list next")
		sel.markDirty()
		return nil
	}
	sel.m.Vanish(gone)
	ss.srv.Metrics.held(n)
	ss.srv.Metrics.resync()
	sel.dirty, sel.expReports = false, sel.expReports[:0]
	if after := sel.existsAfter; after > sel.m.UpstreamCount() {
		// Arrivals counted after the expunges: placeholders now, their
		// UIDs asked for by the next resync (resyncArrivals).
		sel.dirty = true
		if _, err := sel.m.Exists(after); err != nil {
			sel.markDirty()
		}
	}
	sel.existsAfter = 0
	var out []byte
	return ss.announce(rs, sel, &out, nil)
}
