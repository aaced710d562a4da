package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"math"

	"github.com/emersion/go-imap/v2"

	"uidgate/proxy/imapwire"
	"uidgate/sessionmap"
)

// The map build after SELECT reads the answer to uidgate's "UID SEARCH
// [RETURN (ALL)] ALL", one line that holds every UID of the mailbox (7 MB
// for 1,000,000 UIDs without ESEARCH). It is parsed as it arrives, in
// fragments split anywhere, into a sessionmap.Loader: neither the line nor
// a list of its UIDs is ever held.

var errUIDListSyntax = errors.New("malformed UID list")

// uidListState is where a uidList is in its line.
type uidListState uint8

const (
	// "* SEARCH" (RFC 9051 §7.3.4): nz-number *(SP nz-number).
	lsSep  uidListState = iota // before a number, or after one and its SP
	lsNum                      // inside a number
	lsStop                     // after the numbers: the rest is ignored

	// "* ESEARCH" (RFC 4731 §4): [search-correlator] [SP "UID"]
	// *(SP search-return-data).
	esItem      // before a return item, or the correlator
	esName      // inside a return item's name
	esValue     // before the value of an item other than ALL
	esAtomValue // inside such a value (a number or an atom)
	esParen     // inside a parenthesized value (the correlator, ext values)
	esQuoted    // inside a quoted string (of the correlator)
	esSetStart  // before a number of ALL's sequence-set
	esLo        // inside the first number of a range
	esHiStart   // after ':'
	esHi        // inside the second number of a range
)

// maxItemName bounds what is kept of a return item's name: enough to tell
// "UID" and "ALL" from the rest.
const maxItemName = 8

// rangeSink takes the UID ranges of a list as they are parsed: a
// sessionmap.Loader (the build) or a uidRanges (a resync).
type rangeSink interface{ Add(lo, hi uint32) }

// uidList parses the UID list of an injected search's answer, from just
// after the response name (imapwire.Response.After) to the line end, and
// adds each UID range to sink. The first syntax error stops it; close
// reports it.
type uidList struct {
	sink    rangeSink
	ld      *sessionmap.Loader // the build's: finished by finishBuildList
	ranges  *uidRanges         // a resync's: diffed by endResyncList
	st      uidListState
	ret     uidListState // the state a quoted string returns to
	n       uint64       // the number being read
	lo      uint32       // the start of a range
	name    [maxItemName]byte
	nameLen int
	depth   int // parentheses open in esParen
	escaped bool
	pos     int64 // offset in what was fed, for error messages
	ended   bool  // the line end (or an error) was seen
	err     error
}

// newUIDList returns a parser of "* ESEARCH" data (esearch) or "* SEARCH"
// data feeding ld.
func newUIDList(ld *sessionmap.Loader, esearch bool) *uidList {
	p := newUIDListTo(ld, esearch)
	p.ld = ld
	return p
}

// newResyncList returns a parser collecting the list as merged ranges.
func newResyncList(esearch bool) *uidList {
	r := &uidRanges{}
	p := newUIDListTo(r, esearch)
	p.ranges = r
	return p
}

func newUIDListTo(sink rangeSink, esearch bool) *uidList {
	p := &uidList{sink: sink, st: lsSep}
	if esearch {
		p.st = esItem
	}
	return p
}

// uidRanges collects UID ranges, merging each with the previous one when
// they touch: a legacy backend's "* SEARCH 1 2 3 ..." of a dense mailbox
// becomes a single range, not a list of every UID.
type uidRanges struct{ set imap.UIDSet }

func (u *uidRanges) Add(lo, hi uint32) {
	if lo > hi {
		lo, hi = hi, lo
	}
	if n := len(u.set); n > 0 {
		last := &u.set[n-1]
		if uint32(last.Start) <= lo && uint64(lo) <= uint64(last.Stop)+1 {
			last.Stop = imap.UID(max(uint32(last.Stop), hi))
			return
		}
	}
	u.set = append(u.set, imap.UIDRange{Start: imap.UID(lo), Stop: imap.UID(hi)})
}

func (p *uidList) fail(what string, c byte) {
	if p.err == nil {
		p.err = fmt.Errorf("%w: %s at byte %d (%q)", errUIDListSyntax, what, p.pos, c)
	}
	p.ended = true
}

// feed parses the next fragment of the line.
func (p *uidList) feed(frag []byte) {
	base := p.pos
	for i := 0; i < len(frag) && !p.ended; i++ {
		c := frag[i]
		if p.st == lsNum || p.st == esLo || p.st == esHi {
			// The bulk of the line: run through the digits at once.
			for c >= '0' && c <= '9' {
				if p.n = p.n*10 + uint64(c-'0'); p.n > math.MaxUint32 {
					p.pos = base + int64(i)
					p.fail("number above 2³²-1", c)
					return
				}
				if i++; i == len(frag) {
					p.pos = base + int64(i)
					return
				}
				c = frag[i]
			}
		}
		p.pos = base + int64(i)
		p.step(c)
	}
	if !p.ended {
		p.pos = base + int64(len(frag))
	}
}

// step advances the parser by one byte.
func (p *uidList) step(c byte) {
	eol := c == '\r' || c == '\n'
	switch p.st {
	case lsSep:
		switch {
		case c == ' ':
		case c >= '0' && c <= '9':
			p.n, p.st = uint64(c-'0'), lsNum
		case eol:
			p.ended = true
		case c == '(':
			// RFC 7162 §3.1.5: "(MODSEQ n)" may follow the numbers.
			p.st, p.ended = lsStop, true
		default:
			// Anything else is not a UID list: reading on would take a
			// truncated list for the mailbox's (its tail as expunged).
			p.fail("not a UID", c)
		}
	case lsNum:
		switch {
		case c == ' ':
			p.sink.Add(uint32(p.n), uint32(p.n))
			p.st = lsSep
		case eol:
			p.sink.Add(uint32(p.n), uint32(p.n))
			p.ended = true
		default:
			p.fail("bad number", c)
		}
	case esItem:
		switch {
		case c == ' ':
		case c == '(':
			p.st, p.depth = esParen, 1
		case eol:
			p.ended = true
		case imapwire.IsAtomChar(c):
			p.st, p.nameLen = esName, 0
			p.nameChar(c)
		default:
			p.fail("bad return item", c)
		}
	case esName:
		switch {
		case c == ' ':
			switch name := p.name[:min(p.nameLen, maxItemName)]; {
			case p.nameLen <= maxItemName && imapwire.EqualFold(name, "UID"):
				p.st = esItem // the UID indicator has no value
			case p.nameLen <= maxItemName && imapwire.EqualFold(name, "ALL"):
				p.st = esSetStart
			default:
				p.st = esValue
			}
		case eol:
			if p.nameLen > maxItemName || !imapwire.EqualFold(p.name[:p.nameLen], "UID") {
				p.fail("return item without value", c)
				return
			}
			p.ended = true
		case imapwire.IsAtomChar(c):
			p.nameChar(c)
		default:
			p.fail("bad return item", c)
		}
	case esValue:
		switch {
		case c == '(':
			p.st, p.depth = esParen, 1
		case c == '"':
			p.st, p.ret, p.escaped = esQuoted, esItem, false
		case imapwire.IsAtomChar(c):
			p.st = esAtomValue
		default:
			p.fail("bad return value", c)
		}
	case esAtomValue:
		switch {
		case c == ' ':
			p.st = esItem
		case eol:
			p.ended = true
		case !imapwire.IsAtomChar(c):
			p.fail("bad return value", c)
		}
	case esParen:
		switch {
		case c == '"':
			p.st, p.ret, p.escaped = esQuoted, esParen, false
		case c == '(':
			p.depth++
		case c == ')':
			if p.depth--; p.depth == 0 {
				p.st = esItem
			}
		case eol:
			p.fail("unbalanced parenthesis", c)
		}
	case esQuoted:
		switch {
		case eol:
			p.fail("unterminated string", c)
		case p.escaped:
			p.escaped = false
		case c == '\\':
			p.escaped = true
		case c == '"':
			p.st = p.ret
		}
	case esSetStart, esHiStart:
		switch {
		case c >= '0' && c <= '9':
			p.n = uint64(c - '0')
			if p.st == esSetStart {
				p.st = esLo
			} else {
				p.st = esHi
			}
		case c == '*':
			// The answer to ALL lists UIDs that exist: "*" has no place.
			p.err = fmt.Errorf("%w at byte %d", sessionmap.ErrStar, p.pos)
			p.ended = true
		default:
			p.fail("bad sequence set", c)
		}
	case esLo, esHi:
		// RFC 4731 §3.1, §4: ALL's value is a sequence-set of the UIDs
		// found, ranges separated by ","; an SP ends it and another
		// return item may follow.
		lo, hi := uint32(p.n), uint32(p.n)
		if p.st == esHi {
			lo = p.lo
		}
		switch {
		case c == ':' && p.st == esLo:
			p.lo, p.st = uint32(p.n), esHiStart
		case c == ',':
			p.sink.Add(lo, hi)
			p.st = esSetStart
		case c == ' ':
			p.sink.Add(lo, hi)
			p.st = esItem
		case eol:
			p.sink.Add(lo, hi)
			p.ended = true
		default:
			p.fail("bad sequence set", c)
		}
	}
}

func (p *uidList) nameChar(c byte) {
	if p.nameLen < maxItemName {
		p.name[p.nameLen] = c
	}
	p.nameLen++
}

// close ends the line (if no line end was fed) and reports the first
// syntax error. The caller then finishes the Loader, or drops it.
func (p *uidList) close() error {
	if !p.ended {
		p.step('\n')
	}
	return p.err
}

// buildList recognises the answer to the map build's UID SEARCH in head,
// the start of a response line parsed as r, under the same conditions as
// onSelecting: a selection being made, the build in flight, and "* SEARCH"
// without a number (RFC 9051 §7.3.4) or "* ESEARCH" correlated with the
// build's tag (RFC 4731 §3.1: the TAG correlator names the command). It returns a parser feeding a new Loader
// of the selection's map, or nil. Must hold rs.mu.
func (ss *session) buildList(rs *relayState, r *imapwire.Response, head []byte) *uidList {
	sel := rs.sel
	if sel == nil || sel.state == selReady || sel.m == nil || r.Kind != imapwire.RespUntagged ||
		rs.injected == "" || rs.tags[rs.injected].inject != injectBuild {
		return nil
	}
	switch {
	case imapwire.EqualFold(r.Name, "SEARCH") && !r.HasNum:
		return newUIDList(sel.m.NewLoader(), false)
	case imapwire.EqualFold(r.Name, "ESEARCH"):
		if esearchTag(r, head) == rs.injected {
			return newUIDList(sel.m.NewLoader(), true)
		}
	}
	return nil
}

// finishBuildList ends the build's UID list: the map is loaded, or on any
// error (syntax, or Loader.Finish's) left as it was, new and empty, with a
// warning, as a failed Load always left it; either way the selection has
// had its list (the SELECT's held responses go out with the build's
// tagged OK). Must hold rs.mu.
func (ss *session) finishBuildList(sel *selection, p *uidList) {
	err := p.close()
	if err == nil {
		err = p.ld.Finish()
	}
	if err != nil {
		ss.log.Warn().Err(err).Msg("cannot load the UID list")
	}
	sel.loaded = true
}

// readUpLine reads the backend's next line for upstreamToClient. A line
// too long for the read buffer is never assembled when it need not be:
//   - the build's UID list is diverted, parsed as it arrives into the new
//     map without rs.mu held while reading, and not forwarded; the line
//     after it is returned instead; a legacy resync's list likewise, into
//     merged ranges diffed against the map at its end (what the client
//     must hear of it, EXISTS, is written then);
//   - a response that goes to the client unchanged (passesWhole: SEARCH,
//     SORT or ESEARCH results that are UIDs already) is written to the
//     client as it arrives; forwarded is then set and line holds only the
//     line's last bytes, for the caller to see a literal announced there.
//
// A line after a literal (midResponse) is never diverted.
func (ss *session) readUpLine(rs *relayState, ur *imapwire.Reader, midResponse bool) (line []byte, forwarded bool, err error) {
	for {
		var p *uidList
		var sel *selection
		var fw lineForwarder
		divert := func(head []byte) func([]byte) {
			r, ok := imapwire.ParseResponse(head)
			if !ok {
				return nil
			}
			var pass bool
			sel, p, pass = ss.divertKind(rs, &r, head)
			if pass {
				ss.cw.mu.Lock() // released once the line is read, below
				fw.ss = ss
				return fw.write
			}
			if p == nil {
				return nil
			}
			list := p       // p itself stays on the stack: most lines are not diverted
			skip := r.After // the head starts with "* SEARCH " or "* ESEARCH "
			return func(frag []byte) {
				if skip > 0 {
					k := min(skip, len(frag))
					frag, skip = frag[k:], skip-k
				}
				list.feed(frag)
			}
		}
		if midResponse {
			divert = nil
		}
		line, diverted, err := ss.readDiverted(ur, divert, &fw)
		if fw.ss != nil {
			return fw.finish(err)
		}
		if !diverted || err != nil {
			return line, false, err
		}
		tell := ss.endList(rs, sel, p)
		if len(tell) > 0 || ur.Buffered() == 0 {
			// As for a dropped response: what was written must go out.
			ss.cw.mu.Lock()
			werr := ss.cw.write(tell, ur.Buffered() == 0)
			ss.bytesOut.Add(int64(len(tell)))
			ss.cw.mu.Unlock()
			if werr != nil {
				return nil, false, werr
			}
		}
	}
}

// divertKind decides, under rs.mu, what becomes of a long line whose
// head is parsed as r: the build's UID list (p), passed whole to the
// client (pass), or neither.
func (ss *session) divertKind(rs *relayState, r *imapwire.Response, head []byte) (sel *selection, p *uidList, pass bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if p = ss.buildList(rs, r, head); p == nil {
		p = ss.resyncList(rs, r, head)
	}
	return rs.sel, p, p == nil && ss.passesWhole(rs, r, head)
}

// esearchTag is the correlator of an ESEARCH response (RFC 4731 §3.1)
// whose line starts with head: only "(TAG ...)" is parsed, never the
// rest of a line that may be megabytes long. A tag holds no ")" (RFC 9051
// §9: tag chars are ASTRING-CHARs, which exclude atom-specials).
func esearchTag(r *imapwire.Response, head []byte) string {
	rest := imapwire.TrimEOL(head[r.After:])
	if i := bytes.IndexByte(rest, ')'); i >= 0 {
		rest = rest[:i+1]
	}
	return parseESearch(rest).tag
}

// resyncList recognises the answer to a legacy backend's resync (the
// injected UID SEARCH ALL that runs before a command once the map is
// dirty), under the conditions of onSelected: "* SEARCH" without a number,
// or "* ESEARCH" correlated with the resync's tag. Cyrus 2.3 has no
// ESEARCH, so for 1,000,000 messages this is a 7 MB "* SEARCH" line before
// every command that follows an EXISTS or EXPUNGE. Must hold rs.mu.
func (ss *session) resyncList(rs *relayState, r *imapwire.Response, head []byte) *uidList {
	sel := rs.sel
	if sel == nil || sel.state != selReady || r.Kind != imapwire.RespUntagged ||
		rs.injected == "" || rs.tags[rs.injected].inject != injectResync || sel.cheap != resyncFull {
		return nil
	}
	switch {
	case imapwire.EqualFold(r.Name, "SEARCH") && !r.HasNum:
		return newResyncList(false)
	case imapwire.EqualFold(r.Name, "ESEARCH"):
		if esearchTag(r, head) == rs.injected {
			return newResyncList(true)
		}
	}
	return nil
}

// endResyncList diffs a resync's list against the map, as onSelected does
// with a short one, and returns what the client must hear of it (EXISTS
// for arrivals). A list that could not be parsed is not applied: the map
// stays as it was and dirty, so the next command resyncs again, rather
// than take a truncated list as expunges. Must hold rs.mu.
func (ss *session) endResyncList(rs *relayState, sel *selection, p *uidList) []byte {
	if err := p.close(); err != nil {
		ss.log.Warn().Err(err).Msg("resync list unreadable; not applied")
		sel.listBad = true
		return nil
	}
	ss.srv.Metrics.resync()
	st, err := sel.m.ResyncSet(p.ranges.set)
	p.ranges.set = nil
	sel.full, sel.expReports, sel.existsAfter = false, sel.expReports[:0], 0
	ss.log.Debug().Uint32("expunged", st.Expunged).Uint32("added", st.Added).Uint32("resolved", st.Resolved).Msg("resync")
	if err != nil {
		ss.log.Warn().Err(err).Msg("resync conflict")
	}
	sel.dirty = false
	var out []byte
	return ss.announce(rs, sel, &out, nil)
}

// readDiverted is ur.ReadLineDivert that gives back the client writer if
// a forwarded line panics half way (fw.finish is not reached then): a
// recovered session must still be able to end.
func (ss *session) readDiverted(ur *imapwire.Reader, divert func([]byte) func([]byte), fw *lineForwarder) (line []byte, diverted bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			if fw.ss != nil {
				ss.cw.mu.Unlock()
			}
			panic(p)
		}
	}()
	return ur.ReadLineDivert(divert)
}

// endList finishes a diverted list under rs.mu, if the selection it was
// for is still the one: the build's loads the map; a resync's is diffed
// and returns what the client must hear.
func (ss *session) endList(rs *relayState, sel *selection, p *uidList) []byte {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.sel != sel {
		return nil
	}
	if p.ld != nil {
		ss.finishBuildList(sel, p)
		return nil
	}
	return ss.endResyncList(rs, sel, p)
}

// lineForwarder writes a long line to the client fragment by fragment,
// holding ss.cw.mu from the first fragment to finish.
type lineForwarder struct {
	ss   *session
	err  error
	tail [32]byte // the line's last bytes: room for "~{n+}" CRLF, n ≤ 19 digits
	n    int
}

func (f *lineForwarder) write(frag []byte) {
	if f.err == nil {
		f.err = f.ss.cw.write(frag, false)
		f.ss.bytesOut.Add(int64(len(frag)))
	}
	if len(frag) >= len(f.tail) {
		f.n = copy(f.tail[:], frag[len(frag)-len(f.tail):])
		return
	}
	keep := min(f.n, len(f.tail)-len(frag))
	copy(f.tail[:], f.tail[f.n-keep:f.n])
	f.n = keep + copy(f.tail[keep:], frag)
}

// finish releases the client writer after the line: what arrived goes out
// if the backend failed (a BYE cannot follow half a line).
func (f *lineForwarder) finish(readErr error) ([]byte, bool, error) {
	defer f.ss.cw.mu.Unlock()
	if readErr != nil {
		f.ss.cw.write(nil, true)
		return nil, true, readErr
	}
	if f.err != nil {
		return nil, true, f.err
	}
	return f.tail[:f.n], true, nil
}

// passesWhole reports whether the untagged response r, of which head is
// the start, goes to the client exactly as it came, as onResponse would
// decide it: SEARCH/SORT (RFC 9051 §7.3.4, RFC 5256 §4) when the command
// they answer was not rewritten from numbers, ESEARCH (RFC 4731 §3.1)
// whose correlated command was not; never while a selection is being
// built or uidgate's own command is in flight (it consumes such
// answers). Must hold rs.mu.
func (ss *session) passesWhole(rs *relayState, r *imapwire.Response, head []byte) bool {
	if r.Kind != imapwire.RespUntagged || r.HasNum || rs.injected != "" {
		return false
	}
	sel := rs.sel
	if sel != nil && sel.state != selReady {
		return false
	}
	switch {
	case imapwire.EqualFold(r.Name, "SEARCH") || imapwire.EqualFold(r.Name, "SORT"):
		return sel == nil || len(rs.searchQ) == 0 || !rs.tags[rs.searchQ[0]].resultsAreUIDs
	case imapwire.EqualFold(r.Name, "ESEARCH"):
		pc, ok := rs.tags[esearchTag(r, head)]
		return sel == nil || !ok || !pc.resultsAreUIDs
	}
	return false
}
