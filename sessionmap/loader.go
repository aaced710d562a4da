package sessionmap

import "errors"

// errLoaderDone reports a second Finish.
var errLoaderDone = errors.New("sessionmap: Loader already finished")

// A Loader builds a Map from a UID list that arrives piece by piece, as
// the proxy parses a long "* SEARCH" or "* ESEARCH ... ALL" line: no slice
// of all the UIDs or ranges is ever held. Ascending ranges that do not
// overlap (what Dovecot and Cyrus send) go straight into the body's
// encoder, so loading costs little beyond the map itself. A range out of
// order or overlapping turns the Loader into a collector of ranges, sorted
// and merged at Finish: slower, still correct.
//
// Until Finish the Loader neither reads nor writes its Map: Add needs no
// lock that guards the Map. A Loader is used once; one never finished is
// simply dropped.
type Loader struct {
	m     *Map
	limit uint64 // m.limit() when the Loader was made
	fill  int    // m.b.fill() when the Loader was made

	// Ascending mode: ranges so far are ascending and disjoint; they are
	// encoded as they come. count is exact, last the highest UID.
	enc   encoder
	blk   []chunk   // chunks being appended by enc
	blks  [][]chunk // full blocks of chunks, in order
	nblk  int       // chunks in blks
	count uint64
	last  uint32

	// Collecting mode: every range so far, merged from time to time.
	collecting bool
	rs         []urange
	merged     int // len(rs) after the last merge

	zero, tooMany, done bool
}

const (
	// loaderMinBlock and loaderMaxBlock bound the blocks the encoded
	// chunks are gathered in before Finish joins them: growing one slice
	// by append would leave garbage of several times its final size.
	loaderMinBlock = 4
	loaderMaxBlock = 1024
	// loaderMergeMin is how many unmerged ranges a collecting Loader
	// keeps before merging them (it merges again when they double).
	loaderMergeMin = 1024
)

// NewLoader returns a Loader that will make m what Load would make it for
// the UIDs added. MaxMessages is read now.
func (m *Map) NewLoader() *Loader {
	l := &Loader{m: m, limit: m.limit(), fill: m.b.fill()}
	l.blk = make([]chunk, 0, loaderMinBlock)
	l.enc.reset(l.fill, &l.blk)
	return l
}

// Add adds the UIDs lo..hi (swapped if lo > hi). A UID 0 is reported by
// Finish as ErrZeroUID.
func (l *Loader) Add(lo, hi uint32) {
	if l.done {
		return
	}
	if lo > hi {
		lo, hi = hi, lo
	}
	switch {
	case lo == 0:
		// RFC 9051 §2.3.1.1: UIDs are non-zero. Still scanned after
		// ErrTooMany: Load reports a zero UID first.
		l.zero = true
		l.drop()
		return
	case l.zero || l.tooMany:
		return
	}
	if !l.collecting {
		if l.count == 0 || lo > l.last {
			l.count += uint64(hi-lo) + 1
			if l.count > l.limit {
				l.tooMany = true
				l.drop()
				return
			}
			l.room()
			// The encoder merges a range that touches the previous one
			// (lo == last+1) into its open run.
			l.enc.add(lo, hi-lo+1, false)
			l.last = hi
			return
		}
		l.collect()
	}
	l.rs = append(l.rs, urange{lo, hi})
	if len(l.rs) >= 2*l.merged+loaderMergeMin {
		// Duplicates must not grow the list without bound.
		l.rs = mergeRanges(l.rs)
		l.merged = len(l.rs)
		if rangesCount(l.rs) > l.limit {
			l.tooMany = true
			l.drop()
		}
	}
}

// Finish makes the Map what Load (or LoadSet) would make it for the UIDs
// added, with the same errors: ErrZeroUID, then ErrTooMany beyond
// MaxMessages. On error the Map is unchanged. The Loader is spent either
// way.
func (l *Loader) Finish() error {
	if l.done {
		return errLoaderDone
	}
	defer func() {
		l.drop()
		l.done = true
	}()
	switch {
	case l.zero:
		return ErrZeroUID
	case l.tooMany:
		return ErrTooMany
	}
	m := l.m
	if l.collecting {
		rs := mergeRanges(l.rs)
		if rangesCount(rs) > l.limit {
			return ErrTooMany
		}
		m.load(rs)
		l.rs = nil // m.load may keep it as scratch
		return nil
	}
	l.room()
	l.enc.finish()
	l.enc.out = nil
	chunks := l.blk
	if len(chunks) == 0 {
		chunks = nil
	}
	if len(l.blks) > 0 {
		chunks = make([]chunk, 0, l.nblk+len(l.blk))
		for _, b := range l.blks {
			chunks = append(chunks, b...)
		}
		chunks = append(chunks, l.blk...)
	}
	m.Reset()
	b := &m.b
	b.chunks = chunks
	for i := range chunks {
		b.bytes += len(chunks[i].data)
	}
	b.n = uint32(l.count)
	b.dirty = true
	m.maxUID = l.last
	l.blk, l.blks = nil, nil
	return nil
}

// room makes sure the current block can take the chunks one encoder call
// may close: two (the piece in progress and the run it did not fit).
func (l *Loader) room() {
	if cap(l.blk)-len(l.blk) >= 2 {
		return
	}
	if len(l.blk) > 0 {
		l.blks = append(l.blks, l.blk)
		l.nblk += len(l.blk)
	}
	l.blk = make([]chunk, 0, min(max(l.nblk, loaderMinBlock), loaderMaxBlock))
}

// collect leaves ascending mode: the ranges encoded so far are decoded
// back into the list of ranges.
func (l *Loader) collect() {
	l.room()
	l.enc.finish()
	rs := make([]urange, 0, loaderMergeMin)
	var runs []run
	decode := func(cs []chunk) {
		for i := range cs {
			runs = cs[i].runs(runs[:0])
			for _, r := range runs {
				rs = append(rs, urange{r.start, r.start + r.n - 1})
			}
		}
	}
	for _, b := range l.blks {
		decode(b)
	}
	decode(l.blk)
	l.drop()
	l.collecting = true
	l.rs = rs
	l.merged = len(rs)
}

// drop frees what the Loader holds.
func (l *Loader) drop() {
	l.enc = encoder{}
	l.blk, l.blks, l.nblk = nil, nil, 0
	l.rs = nil
}
