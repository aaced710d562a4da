package sessionmap

import (
	"encoding/binary"
	"math/bits"
	"slices"

	"github.com/emersion/go-imap/v2"
)

// The body holds every message whose UID is known and that the client has
// been told of, in UID order: all of the client view except its tail (see
// trun in map.go). A message of the body is either present upstream too, or a
// pending expunge (gone upstream, not yet announced to the client).
//
// Messages are stored as runs of consecutive UIDs sharing the same pending
// bit, varint-encoded in chunks of at most maxChunkBytes:
//
//	uvarint(gap) uvarint(n<<1 | pending)
//
// where gap is the distance from the end of the previous run in the chunk
// (the first run of a chunk starts at chunk.first, gap 0). A dense mailbox
// is one run. A run of one message costs 2 bytes when UIDs are close
// (every other UID) and 3 bytes with gaps below 16,384, which is the most
// a mailbox of 1,000,000 messages can average in 2³² UIDs. Two Fenwick
// trees over the chunks' message and pending counts give rank and select
// in O(log chunks) plus the decoding of one chunk; a change re-encodes one
// chunk, never the whole mailbox.
const (
	// maxChunkBytes bounds one chunk's encoding, hence the linear part of a
	// lookup (decoding at most this many bytes).
	maxChunkBytes = 192
	// fillChunkBytes is how full Load and splits fill a chunk, leaving room
	// for the runs an expunge splits off before the chunk must split.
	fillChunkBytes = 168
	// maxRunBytes is the longest encoding of one run (two 5-byte varints).
	maxRunBytes = 10
)

// run is a decoded run of consecutive UIDs.
type run struct {
	start uint32 // first UID
	n     uint32 // number of messages (UIDs start … start+n-1)
	pend  bool   // pending expunge: gone upstream, still in the client view
}

// chunk is a slice of the body; chunks are in UID order and never empty.
type chunk struct {
	data  []byte // encoded runs
	first uint32 // first UID in the chunk
	last  uint32 // last UID in the chunk
	n     uint32 // messages in the chunk
	pend  uint32 // of which pending expunges
}

// uvarint decodes the varint at b[i:] (always valid: we wrote it).
func uvarint(b []byte, i int) (uint64, int) {
	c := b[i]
	i++
	if c < 0x80 {
		return uint64(c), i
	}
	x := uint64(c & 0x7f)
	for shift := uint(7); ; shift += 7 {
		c = b[i]
		i++
		if c < 0x80 {
			return x | uint64(c)<<shift, i
		}
		x |= uint64(c&0x7f) << shift
	}
}

// uvarintLen is the length of x's varint encoding.
func uvarintLen(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

// decodeRun decodes the run at data[i:]; prevEnd is one past the previous
// run's last UID (chunk.first for the first run).
func decodeRun(data []byte, i int, prevEnd uint64) (start uint64, n uint32, pend bool, next int) {
	gap, i := uvarint(data, i)
	v, i := uvarint(data, i)
	return prevEnd + gap, uint32(v >> 1), v&1 != 0, i
}

// runs appends the decoded runs of c to dst.
func (c *chunk) runs(dst []run) []run {
	prevEnd := uint64(c.first)
	for i := 0; i < len(c.data); {
		start, n, pend, j := decodeRun(c.data, i, prevEnd)
		dst = append(dst, run{uint32(start), n, pend})
		prevEnd = start + uint64(n)
		i = j
	}
	return dst
}

// at returns the UID of the off-th message of c (off < c.n).
func (c *chunk) at(off uint32) (uid uint32, pend bool) {
	prevEnd := uint64(c.first)
	for i := 0; i < len(c.data); {
		start, n, p, j := decodeRun(c.data, i, prevEnd)
		if off < n {
			return uint32(start) + off, p
		}
		off -= n
		prevEnd = start + uint64(n)
		i = j
	}
	return 0, false
}

// upAt returns the UID of the off-th non-pending message of c and its
// offset among all the messages of c.
func (c *chunk) upAt(off uint32) (uid, coff uint32) {
	prevEnd := uint64(c.first)
	for i := 0; i < len(c.data); {
		start, n, p, j := decodeRun(c.data, i, prevEnd)
		if !p {
			if off < n {
				return uint32(start) + off, coff + off
			}
			off -= n
		}
		coff += n
		prevEnd = start + uint64(n)
		i = j
	}
	return 0, coff
}

// find looks uid up in c. coff and uoff count the messages, and the
// non-pending messages, of c that come before uid.
func (c *chunk) find(uid uint32) (coff, uoff uint32, pend, found bool) {
	u := uint64(uid)
	prevEnd := uint64(c.first)
	for i := 0; i < len(c.data); {
		start, n, p, j := decodeRun(c.data, i, prevEnd)
		if u < start {
			return coff, uoff, false, false
		}
		if end := start + uint64(n); u < end {
			off := uint32(u - start)
			if !p {
				uoff += off
			}
			return coff + off, uoff, p, true
		}
		coff += n
		if !p {
			uoff += n
		}
		prevEnd = start + uint64(n)
		i = j
	}
	return coff, uoff, false, false
}

// piece describes one chunk produced by an encoder, in encoder.buf.
type piece struct {
	off, end    int
	first, last uint32
	n, pend     uint32
	hasRuns     bool
}

// encoder turns ascending runs into chunk encodings, merging runs that
// touch and share the pending bit. With out set, each finished chunk is
// appended there at once (Load); otherwise pieces stay in buf (replace).
type encoder struct {
	fill    int
	buf     []byte
	pcs     []piece
	out     *[]chunk
	cur     piece
	open    run
	hasOpen bool
	prevEnd uint64
}

func (e *encoder) reset(fill int, out *[]chunk) {
	e.fill, e.out = fill, out
	e.buf, e.pcs = e.buf[:0], e.pcs[:0]
	e.cur = piece{}
	e.hasOpen = false
}

func (e *encoder) add(start, n uint32, pend bool) {
	if n == 0 {
		return
	}
	if e.hasOpen && e.open.pend == pend && uint64(e.open.start)+uint64(e.open.n) == uint64(start) {
		e.open.n += n
		return
	}
	e.emit()
	e.open, e.hasOpen = run{start, n, pend}, true
}

func (e *encoder) emit() {
	if !e.hasOpen {
		return
	}
	e.hasOpen = false
	r := e.open
	v := uint64(r.n) << 1
	if r.pend {
		v |= 1
	}
	if e.cur.hasRuns {
		size := uvarintLen(uint64(r.start)-e.prevEnd) + uvarintLen(v)
		if e.cur.end-e.cur.off+size > e.fill {
			e.close()
		}
	}
	if !e.cur.hasRuns {
		e.cur = piece{off: len(e.buf), first: r.start, hasRuns: true}
		e.prevEnd = uint64(r.start)
	}
	e.buf = binary.AppendUvarint(e.buf, uint64(r.start)-e.prevEnd)
	e.buf = binary.AppendUvarint(e.buf, v)
	e.cur.end = len(e.buf)
	e.prevEnd = uint64(r.start) + uint64(r.n)
	e.cur.last = uint32(e.prevEnd - 1)
	e.cur.n += r.n
	if r.pend {
		e.cur.pend += r.n
	}
}

func (e *encoder) close() {
	if !e.cur.hasRuns {
		return
	}
	if e.out != nil {
		*e.out = append(*e.out, e.chunk(e.cur, 0))
		e.buf = e.buf[:0]
	} else {
		e.pcs = append(e.pcs, e.cur)
	}
	e.cur = piece{}
}

func (e *encoder) finish() {
	e.emit()
	e.close()
}

// chunk materializes p with slack spare bytes of capacity.
func (e *encoder) chunk(p piece, slack int) chunk {
	n := p.end - p.off
	data := make([]byte, n, min(n+slack, maxChunkBytes))
	copy(data, e.buf[p.off:p.end])
	return chunk{data: data, first: p.first, last: p.last, n: p.n, pend: p.pend}
}

// body is the known, announced part of the client view.
type body struct {
	chunks  []chunk
	fn, fp  []uint32 // Fenwick trees (1-based) over chunks[i].n and .pend
	n, pend uint32   // totals
	bytes   int      // sum of len(chunks[i].data)
	dirty   bool     // fn/fp must be rebuilt before use

	// maxBytes and fillBytes override maxChunkBytes and fillChunkBytes
	// when non-zero (tests use tiny chunks to exercise splits).
	maxBytes, fillBytes int

	enc  encoder
	runs []run // scratch
	tmp  []run // scratch
}

// max is the chunk size bound; fill is how full new chunks are made.
func (b *body) max() int {
	if b.maxBytes > 0 {
		return b.maxBytes
	}
	return maxChunkBytes
}

func (b *body) fill() int {
	if b.fillBytes > 0 {
		return b.fillBytes
	}
	return fillChunkBytes
}

func (b *body) reset() {
	b.chunks = nil
	b.fn, b.fp = nil, nil
	b.n, b.pend, b.bytes = 0, 0, 0
	b.dirty = false
	b.enc = encoder{}
	b.runs, b.tmp = nil, nil
}

func (b *body) up() uint32 { return b.n - b.pend }

// lastUID is the highest UID in the body, 0 if empty.
func (b *body) lastUID() uint32 {
	if len(b.chunks) == 0 {
		return 0
	}
	return b.chunks[len(b.chunks)-1].last
}

// fix rebuilds the Fenwick trees if the chunk list changed shape.
func (b *body) fix() {
	if !b.dirty {
		return
	}
	c := len(b.chunks)
	if cap(b.fn) < c+1 {
		b.fn, b.fp = make([]uint32, c+1, c+1+c/8), make([]uint32, c+1, c+1+c/8)
	}
	b.fn, b.fp = b.fn[:c+1], b.fp[:c+1]
	b.fn[0], b.fp[0] = 0, 0
	for i := range b.chunks {
		b.fn[i+1], b.fp[i+1] = b.chunks[i].n, b.chunks[i].pend
	}
	for i := 1; i <= c; i++ {
		if j := i + i&-i; j <= c {
			b.fn[j] += b.fn[i]
			b.fp[j] += b.fp[i]
		}
	}
	b.dirty = false
}

// update adds dn and dp (modulo 2³²) to chunk ci's counts in the trees.
func (b *body) update(ci int, dn, dp uint32) {
	if b.dirty {
		return
	}
	for i := ci + 1; i < len(b.fn); i += i & -i {
		b.fn[i] += dn
		b.fp[i] += dp
	}
}

// prefix returns the messages and pending expunges in chunks[:ci].
func (b *body) prefix(ci int) (n, p uint32) {
	b.fix()
	for i := ci; i > 0; i -= i & -i {
		n += b.fn[i]
		p += b.fp[i]
	}
	return n, p
}

// seekN finds the chunk holding the k-th (0-based) message; k < b.n.
func (b *body) seekN(k uint32) (ci int, off uint32) {
	b.fix()
	c := len(b.chunks)
	pos := 0
	for step := 1 << (bits.Len(uint(c)) - 1); step > 0; step >>= 1 {
		if j := pos + step; j <= c && b.fn[j] <= k {
			pos = j
			k -= b.fn[j]
		}
	}
	return pos, k
}

// seekU finds the chunk holding the k-th (0-based) non-pending message;
// k < b.up().
func (b *body) seekU(k uint32) (ci int, off uint32) {
	b.fix()
	c := len(b.chunks)
	pos := 0
	for step := 1 << (bits.Len(uint(c)) - 1); step > 0; step >>= 1 {
		if j := pos + step; j <= c && b.fn[j]-b.fp[j] <= k {
			pos = j
			k -= b.fn[j] - b.fp[j]
		}
	}
	return pos, k
}

// chunkFor returns the index of the first chunk whose last UID is ≥ uid
// (len(chunks) if none).
func (b *body) chunkFor(uid uint32) int {
	lo, hi := 0, len(b.chunks)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if b.chunks[mid].last < uid {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// clientAt returns the k-th (0-based) message of the body.
func (b *body) clientAt(k uint32) (uid uint32, pend bool) {
	ci, off := b.seekN(k)
	return b.chunks[ci].at(off)
}

// upAt returns the UID and body position of the k-th non-pending message.
func (b *body) upAt(k uint32) (uid, pos uint32) {
	ci, off := b.seekU(k)
	uid, coff := b.chunks[ci].upAt(off)
	n, _ := b.prefix(ci)
	return uid, n + coff
}

// find returns uid's position in the body and among its non-pending
// messages.
func (b *body) find(uid uint32) (pos, upos uint32, pend, ok bool) {
	ci := b.chunkFor(uid)
	if ci == len(b.chunks) || uid < b.chunks[ci].first {
		return 0, 0, false, false
	}
	coff, uoff, pend, ok := b.chunks[ci].find(uid)
	if !ok {
		return 0, 0, false, false
	}
	n, p := b.prefix(ci)
	return n + coff, n - p + uoff, pend, true
}

// replace re-encodes chunk ci from runs (ascending; they may touch) and
// returns how many chunks took its place (0 if it became empty).
func (b *body) replace(ci int, runs []run) int {
	old := &b.chunks[ci]
	oldN, oldP, oldBytes := old.n, old.pend, len(old.data)
	e := &b.enc
	e.reset(1<<30, nil)
	for _, r := range runs {
		e.add(r.start, r.n, r.pend)
	}
	e.finish()
	if len(e.pcs) == 0 {
		b.n -= oldN
		b.pend -= oldP
		b.bytes -= oldBytes
		b.chunks = slices.Delete(b.chunks, ci, ci+1)
		b.dirty = true
		return 0
	}
	p := e.pcs[0]
	if size := p.end - p.off; size <= b.max() {
		if cap(old.data) >= size {
			old.data = old.data[:size]
			copy(old.data, e.buf[p.off:p.end])
		} else {
			old.data = e.chunk(p, 16).data
		}
		old.first, old.last, old.n, old.pend = p.first, p.last, p.n, p.pend
		b.n += p.n - oldN
		b.pend += p.pend - oldP
		b.bytes += size - oldBytes
		b.update(ci, p.n-oldN, p.pend-oldP)
		return 1
	}
	// Too big: split into balanced pieces.
	size := p.end - p.off
	k := (size + b.fill() - 1) / b.fill()
	e.reset((size+k-1)/k+maxRunBytes, nil)
	for _, r := range runs {
		e.add(r.start, r.n, r.pend)
	}
	e.finish()
	newChunks := make([]chunk, len(e.pcs))
	for i, pc := range e.pcs {
		newChunks[i] = e.chunk(pc, 16)
		b.bytes += pc.end - pc.off
		b.n += pc.n
		b.pend += pc.pend
	}
	b.n -= oldN
	b.pend -= oldP
	b.bytes -= oldBytes
	b.chunks = slices.Replace(b.chunks, ci, ci+1, newChunks...)
	b.dirty = true
	return len(newChunks)
}

// appendRuns appends runs whose UIDs are all above lastUID().
func (b *body) appendRuns(runs []run) {
	if len(b.chunks) == 0 {
		b.chunks = append(b.chunks, chunk{})
		b.dirty = true
	}
	ci := len(b.chunks) - 1
	rs := b.chunks[ci].runs(b.runs[:0])
	rs = append(rs, runs...)
	b.replace(ci, rs)
	b.runs = rs[:0]
}

// setPending marks the non-pending messages with UIDs in [lo, hi] as
// pending expunges and returns how many there were.
func (b *body) setPending(lo, hi uint32) uint32 {
	var changed uint32
	for ci := b.chunkFor(lo); ci < len(b.chunks) && b.chunks[ci].first <= hi; {
		c := &b.chunks[ci]
		if c.pend == c.n {
			ci++
			continue
		}
		rs := c.runs(b.runs[:0])
		out := b.tmp[:0]
		var ch uint32
		for _, r := range rs {
			s, e := uint64(r.start), uint64(r.start)+uint64(r.n)-1
			a, z := max(s, uint64(lo)), min(e, uint64(hi))
			if r.pend || a > z {
				out = append(out, r)
				continue
			}
			if a > s {
				out = append(out, run{r.start, uint32(a - s), false})
			}
			out = append(out, run{uint32(a), uint32(z - a + 1), true})
			ch += uint32(z - a + 1)
			if z < e {
				out = append(out, run{uint32(z + 1), uint32(e - z), false})
			}
		}
		b.runs, b.tmp = rs[:0], out[:0]
		if ch == 0 {
			ci++
			continue
		}
		changed += ch
		ci += b.replace(ci, out)
	}
	return changed
}

// setPendingAt marks the k-th non-pending message as a pending expunge
// and returns its UID.
func (b *body) setPendingAt(k uint32) uint32 {
	ci, off := b.seekU(k)
	uid, _ := b.chunks[ci].upAt(off)
	b.setPending(uid, uid)
	return uid
}

// build replaces the body with the messages of the ascending, disjoint
// ranges rs, none pending.
func (b *body) build(rs []urange) {
	b.reset()
	e := &b.enc
	e.reset(b.fill(), &b.chunks)
	for _, r := range rs {
		e.add(r.lo, r.hi-r.lo+1, false)
		b.n += r.hi - r.lo + 1
	}
	e.finish()
	e.out = nil
	for i := range b.chunks {
		b.bytes += len(b.chunks[i].data)
	}
	b.dirty = true
}

// buildUIDs replaces the body with the sorted uids (duplicates skipped),
// none pending.
func (b *body) buildUIDs(uids []uint32) {
	b.reset()
	e := &b.enc
	e.reset(b.fill(), &b.chunks)
	for i := 0; i < len(uids); {
		lo, hi := uids[i], uids[i]
		for i++; i < len(uids) && (uids[i] == hi || uids[i] == hi+1); i++ {
			hi = uids[i]
		}
		e.add(lo, hi-lo+1, false)
		b.n += hi - lo + 1
	}
	e.finish()
	e.out = nil
	for i := range b.chunks {
		b.bytes += len(b.chunks[i].data)
	}
	b.dirty = true
}

// compact re-encodes all chunks when they are less than half full on
// average. Getting there again takes splits or removals of the order of
// the body's size, so the cost is amortized.
func (b *body) compact() {
	if len(b.chunks) < 4 || b.bytes >= len(b.chunks)*b.fill()/2 {
		return
	}
	old := b.chunks
	b.chunks = make([]chunk, 0, b.bytes/b.fill()+2)
	e := &b.enc
	e.reset(b.fill(), &b.chunks)
	rs := b.runs[:0]
	for i := range old {
		rs = old[i].runs(rs[:0])
		for _, r := range rs {
			e.add(r.start, r.n, r.pend)
		}
	}
	e.finish()
	e.out = nil
	b.runs = rs[:0]
	b.bytes = 0
	for i := range b.chunks {
		b.bytes += len(b.chunks[i].data)
	}
	b.dirty = true
}

// memBytes approximates the body's heap footprint.
func (b *body) memBytes() int {
	const chunkSize = 24 + 4*4
	size := cap(b.chunks)*chunkSize + 4*(cap(b.fn)+cap(b.fp))
	for i := range b.chunks {
		size += cap(b.chunks[i].data)
	}
	size += cap(b.enc.buf) + cap(b.enc.pcs)*48 + 12*(cap(b.runs)+cap(b.tmp))
	return size
}

// appendUpUIDs appends the UIDs of the non-pending messages among body
// positions a..z (0-based, inclusive, z < b.n).
func (b *body) appendUpUIDs(dst imap.UIDSet, a, z uint32) imap.UIDSet {
	ci, off := b.seekN(a)
	left := z - a + 1
	for ; ci < len(b.chunks) && left > 0; ci++ {
		c := &b.chunks[ci]
		prevEnd := uint64(c.first)
		for i := 0; i < len(c.data) && left > 0; {
			start, n, p, j := decodeRun(c.data, i, prevEnd)
			i, prevEnd = j, start+uint64(n)
			if off >= n {
				off -= n
				continue
			}
			take := min(n-off, left)
			if !p {
				dst = appendUIDRange(dst, uint32(start)+off, uint32(start)+off+take-1)
			}
			left -= take
			off = 0
		}
	}
	return dst
}

// appendMsgnos appends the 1-based body positions of the UIDs in lo..hi.
func (b *body) appendMsgnos(dst imap.SeqSet, lo, hi uint32) imap.SeqSet {
	ci := b.chunkFor(lo)
	if ci == len(b.chunks) {
		return dst
	}
	base, _ := b.prefix(ci)
	l, h := uint64(lo), uint64(hi)
	for ; ci < len(b.chunks) && b.chunks[ci].first <= hi; ci++ {
		c := &b.chunks[ci]
		prevEnd := uint64(c.first)
		for i := 0; i < len(c.data); {
			start, n, _, j := decodeRun(c.data, i, prevEnd)
			i, prevEnd = j, start+uint64(n)
			if start > h {
				return dst
			}
			if x, y := max(start, l), min(prevEnd-1, h); x <= y {
				dst = appendSeqRange(dst, base+uint32(x-start)+1, base+uint32(y-start)+1)
			}
			base += n
		}
	}
	return dst
}

// release removes the pending expunges. With wantN it appends their
// 1-based positions to msgnos as ranges, ascending; with wantU their UIDs
// to uids.
func (b *body) release(msgnos []NumRange, uids imap.UIDSet, wantN, wantU bool) ([]NumRange, imap.UIDSet) {
	if b.pend == 0 {
		return msgnos, uids
	}
	from := len(msgnos)
	var base uint32
	w := 0
	for r := range b.chunks {
		c := b.chunks[r]
		if c.pend == 0 {
			b.chunks[w] = c
			w++
			base += c.n
			continue
		}
		rs := c.runs(b.runs[:0])
		kept := b.tmp[:0]
		off := base
		for _, x := range rs {
			if !x.pend {
				kept = append(kept, x)
			} else {
				if wantN {
					msgnos = appendNumRange(msgnos, from, off+1, off+x.n)
				}
				if wantU {
					uids = appendUIDRange(uids, x.start, x.start+x.n-1)
				}
			}
			off += x.n
		}
		base += c.n
		b.runs, b.tmp = rs[:0], kept[:0]
		b.bytes -= len(c.data)
		if len(kept) == 0 {
			continue
		}
		// The chunk cannot grow: dropping runs widens the gap of the run
		// after them to at most the sum of the dropped gaps and lengths,
		// and a varint of a sum of three numbers is no longer than their
		// three varints.
		e := &b.enc
		e.reset(1<<30, nil)
		for _, x := range kept {
			e.add(x.start, x.n, false)
		}
		e.finish()
		p := e.pcs[0]
		if size := p.end - p.off; cap(c.data) >= size {
			c.data = c.data[:size]
			copy(c.data, e.buf[p.off:p.end])
		} else {
			c.data = e.chunk(p, 16).data
		}
		c.first, c.last, c.n, c.pend = p.first, p.last, p.n, 0
		b.bytes += len(c.data)
		b.chunks[w] = c
		w++
	}
	clear(b.chunks[w:])
	b.chunks = b.chunks[:w]
	b.n -= b.pend
	b.pend = 0
	b.dirty = true
	b.compact()
	return msgnos, uids
}
