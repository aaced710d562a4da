package sessionmap

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"unsafe"

	"github.com/emersion/go-imap/v2"
)

// Map is one connection's map of the selected mailbox: the client view, the
// upstream view and the pending changes between them (see the package
// documentation). The zero value is an empty mailbox. A Map is not safe for
// concurrent use; the session guards it with its mutex.
type Map struct {
	// MaxMessages bounds the messages the map holds (both views together);
	// 0 means DefaultMaxMessages. Load, LoadSet, Exists and Resync refuse
	// more with ErrTooMany, so that a hostile backend cannot make one line
	// ("* 4000000000 EXISTS") cost gigabytes.
	MaxMessages uint32

	b    body
	tail []trun // messages after the body, in order (see trun)

	// Tail counts, kept by normTail.
	tc, tu   uint32 // tail messages in the client view / in the upstream view
	tpend    uint32 // in the client view only: pending expunges and tombstones
	ttomb    uint32 // tombstones: unknown UID, in the client view only
	tarr     uint32 // unannounced arrivals: in the upstream view only
	tunknown uint32 // placeholders: unknown UID, in the upstream view

	maxUID uint32 // highest UID learned since Load

	rs   []urange // scratch
	ts   []trun   // scratch
	runs []run    // scratch
}

// Tail runs hold what the body cannot: messages whose UID is not known yet
// (placeholders counted by EXISTS, tombstones), messages not yet announced
// to the client, and whatever follows one of those. Known messages in the
// client view move to the body as soon as nothing unknown precedes them,
// so the tail stays short: the arrivals since the proxy last resolved them.
type trun struct {
	uid uint32 // first UID; 0 while unknown (all messages of the run)
	n   uint32 // messages
	st  uint8  // inClient | inUp
}

const (
	inClient uint8 = 1 << iota // the client has been told of it (EXISTS)
	inUp                       // it exists upstream, as far as we know
)

// DefaultMaxMessages is the default for Map.MaxMessages: 16,777,216
// messages, far above real mailboxes. ReleaseExpunges of all of them
// returns 64 MiB of numbers (ReleaseExpungeRanges one range).
const DefaultMaxMessages = 1 << 24

func (m *Map) limit() uint64 {
	if m.MaxMessages == 0 {
		return DefaultMaxMessages
	}
	return uint64(m.MaxMessages)
}

// scratchLimit bounds the scratch slices kept between calls.
const scratchLimit = 4096

func trim[T any](s []T) []T {
	if cap(s) > scratchLimit {
		return nil
	}
	return s[:0]
}

// Entry describes one message of a view.
type Entry struct {
	UID        uint32 // 0 while unknown: an unresolved placeholder or a tombstone
	InClient   bool   // the client numbers it (it was announced, and no EXPUNGE for it was released)
	InUpstream bool   // it still exists upstream as far as this connection was told
}

// ResyncStats reports what Resync changed.
type ResyncStats struct {
	Expunged uint32 // known messages missing from the list: now pending expunges, or gone if never announced
	Revived  uint32 // pending expunges the list still holds: present again (never announced, so nothing to undo)
	Resolved uint32 // placeholders that got their UID from the list
	Dropped  uint32 // placeholders left without a UID: tombstones if announced, else gone
	Added    uint32 // new UIDs above all known ones: unannounced arrivals
	Ignored  uint32 // UIDs that fit nowhere (see ErrConflict)
}

// New returns an empty Map. The zero value is equally usable.
func New() *Map { return &Map{} }

// Reset empties the map (on CLOSE, UNSELECT, or a failed SELECT) and frees
// its memory.
func (m *Map) Reset() {
	m.b.reset()
	m.tail, m.ts, m.rs, m.runs = nil, nil, nil, nil
	m.tc, m.tu, m.tpend, m.ttomb, m.tarr, m.tunknown = 0, 0, 0, 0, 0, 0
	m.maxUID = 0
}

// Load sets both views to uids, as returned by UID SEARCH ALL right after
// SELECT: any order, duplicates allowed. It sorts uids in place. A zero UID
// (ErrZeroUID) or more than MaxMessages UIDs (ErrTooMany) is an error and
// leaves the map unchanged.
func (m *Map) Load(uids []uint32) error {
	if n, err := sortUIDs(uids); err != nil {
		return err
	} else if n > m.limit() {
		return ErrTooMany
	}
	m.Reset()
	m.b.buildUIDs(uids)
	if len(uids) > 0 {
		m.maxUID = uids[len(uids)-1]
	}
	return nil
}

// LoadSet is Load for a UID set, as in ESEARCH ALL (RFC 4731), e.g.
// 1:5,7,9:100; ranges may be in any order and overlap. "*" is an error.
func (m *Map) LoadSet(set imap.UIDSet) error {
	rs, err := uidRanges(m.rs[:0], set, 0)
	if err != nil {
		return err
	}
	if rangesCount(rs) > m.limit() {
		m.rs = trim(rs)
		return ErrTooMany
	}
	m.load(rs)
	return nil
}

func (m *Map) load(rs []urange) {
	m.Reset()
	m.b.build(rs)
	if len(rs) > 0 {
		m.maxUID = rs[len(rs)-1].hi
	}
	m.rs = trim(rs)
}

// ClientCount is the number of messages in the client view: what the
// client was last told by EXISTS minus the EXPUNGEs it was sent.
func (m *Map) ClientCount() uint32 { return m.b.n + m.tc }

// UpstreamCount is the number of messages in the upstream view: the
// backend's last EXISTS minus the expunges it reported since.
func (m *Map) UpstreamCount() uint32 { return m.b.up() + m.tu }

// PendingExpunges counts messages gone upstream that the client still
// numbers (tombstones included): what ReleaseExpunges would send.
func (m *Map) PendingExpunges() uint32 { return m.b.pend + m.tpend }

// Tombstones counts pending expunges whose UID was never learned.
func (m *Map) Tombstones() uint32 { return m.ttomb }

// PendingArrivals counts messages upstream that the client was not told of
// yet: what AnnounceArrivals would add to the client's count.
func (m *Map) PendingArrivals() uint32 { return m.tarr }

// Unknown counts placeholders: messages upstream whose UID is not known.
func (m *Map) Unknown() uint32 { return m.tunknown }

// MaxUID is the highest UID learned since Load (0 if none).
func (m *Map) MaxUID() uint32 { return m.maxUID }

// total is the number of messages in either view.
func (m *Map) total() uint32 { return m.b.n + m.tc + m.tarr }

// Bytes approximates the memory the map holds.
func (m *Map) Bytes() int {
	const trunSize = int(unsafe.Sizeof(trun{}))
	return int(unsafe.Sizeof(*m)) + m.b.memBytes() +
		trunSize*(cap(m.tail)+cap(m.ts)) + 8*cap(m.rs) + 12*cap(m.runs)
}

// Exists records an upstream "* n EXISTS": n-UpstreamCount() new messages,
// placeholders until their UIDs are resolved, not yet announced to the
// client. It returns how many were added. An n below the upstream count is
// ErrExistsShrank and changes nothing.
func (m *Map) Exists(n uint32) (uint32, error) {
	up := m.UpstreamCount()
	if n < up {
		return 0, fmt.Errorf("%w: %d < %d", ErrExistsShrank, n, up)
	}
	add := n - up
	if add == 0 {
		return 0, nil
	}
	// Each new message needs a UID of its own above the last known one
	// and the placeholders after it.
	last, unknown := uint64(m.b.lastUID()), uint64(0)
	for _, r := range slices.Backward(m.tail) {
		if r.uid != 0 {
			last = uint64(r.uid) + uint64(r.n) - 1
			break
		}
		if r.st&inUp != 0 {
			unknown += uint64(r.n)
		}
	}
	if uint64(m.total())+uint64(add) > m.limit() || last+unknown+uint64(add) > math.MaxUint32 {
		return 0, ErrTooMany
	}
	m.tail = append(m.tail, trun{n: add, st: inUp})
	m.normTail()
	return add, nil
}

// AnnounceArrivals makes every pending arrival part of the client view and
// returns how many there were; the proxy then sends "* ClientCount()
// EXISTS". Pending expunges still count: EXISTS never lowers the client's
// count (RFC 3501 §5.2, RFC 9051 §5.2).
func (m *Map) AnnounceArrivals() uint32 {
	var k uint32
	for i := range m.tail {
		if r := &m.tail[i]; r.st&inClient == 0 {
			r.st |= inClient
			k += r.n
		}
	}
	if k > 0 {
		m.normTail()
	}
	return k
}

// AnnounceResolved is AnnounceArrivals limited to the arrivals before the
// first one whose UID is unknown. A client that gets VANISHED instead of
// EXPUNGE (QRESYNC, RFC 7162 §3.2.10) must only be told of messages with a
// known UID, or one expunged before it is resolved could not be reported.
func (m *Map) AnnounceResolved() uint32 {
	var k uint32
	for i := range m.tail {
		r := &m.tail[i]
		if r.st&inClient != 0 {
			continue
		}
		if r.uid == 0 {
			break
		}
		r.st |= inClient
		k += r.n
	}
	if k > 0 {
		m.normTail()
	}
	return k
}

// Resolve records that upstream message upMsgno has UID uid, from "* n
// FETCH (... UID u ...)". For a known message it only checks the UID
// (ErrUIDMismatch if it differs). For a placeholder, uid must fit between
// the known UIDs around it (ErrUIDOrder), leaving room for the other
// unknown messages in between.
func (m *Map) Resolve(upMsgno, uid uint32) error {
	if uid == 0 {
		return ErrZeroUID
	}
	if err := checkNum(upMsgno, m.UpstreamCount()); err != nil {
		return err
	}
	k := upMsgno - 1
	if bu := m.b.up(); k < bu {
		if got, _ := m.b.upAt(k); got != uid {
			return fmt.Errorf("%w: message %d is UID %d, not %d", ErrUIDMismatch, upMsgno, got, uid)
		}
		return nil
	} else {
		k -= bu
	}
	ri, off := m.tailSeek(k, inUp)
	r := m.tail[ri]
	if r.uid != 0 {
		if got := r.uid + off; got != uid {
			return fmt.Errorf("%w: message %d is UID %d, not %d", ErrUIDMismatch, upMsgno, got, uid)
		}
		return nil
	}
	// UIDs ascend with message numbers (RFC 9051 §2.3.1.1), and each
	// placeholder between uid and the nearest known UIDs needs its own.
	// (Tombstones had UIDs too, but Resync may drop any of a group of
	// placeholders, so where their UIDs lay is not known.)
	lo, before := uint64(m.b.lastUID()), uint64(off)
	for i := ri - 1; i >= 0; i-- {
		if t := m.tail[i]; t.uid != 0 {
			lo = uint64(t.uid) + uint64(t.n) - 1
			break
		} else if t.st&inUp != 0 {
			before += uint64(t.n)
		}
	}
	hi, after := uint64(math.MaxUint32)+1, uint64(r.n-off-1)
	for _, t := range m.tail[ri+1:] {
		if t.uid != 0 {
			hi = uint64(t.uid)
			break
		}
		if t.st&inUp != 0 {
			after += uint64(t.n)
		}
	}
	if u := uint64(uid); u <= lo+before || u+after >= hi {
		return fmt.Errorf("%w: UID %d for message %d, known neighbours %d and %d", ErrUIDOrder, uid, upMsgno, lo, hi)
	}
	i := m.tailIsolate(ri, off)
	m.tail[i].uid = uid
	m.maxUID = max(m.maxUID, uid)
	m.normTail()
	return nil
}

// Unresolved reports the upstream message numbers first..last that span
// all placeholders, and floor, the highest known UID before the first of
// them: "UID FETCH floor+1:* (UID)" or "FETCH first:last (UID)" resolves
// them all. ok is false when no UID is unknown.
func (m *Map) Unresolved() (first, last, floor uint32, ok bool) {
	pos := m.b.up()
	floor = m.b.lastUID()
	for _, r := range m.tail {
		if r.st&inUp != 0 {
			if r.uid == 0 {
				if !ok {
					first, ok = pos+1, true
				}
				last = pos + r.n
			}
			pos += r.n
		}
		if !ok && r.uid != 0 {
			floor = r.uid + r.n - 1
		}
	}
	if !ok {
		return 0, 0, 0, false
	}
	return first, last, floor, true
}

// ExpungeUpstream records an upstream "* n EXPUNGE", n in the upstream
// numbering (which shifts after each one). The message leaves the upstream
// view. If the client numbers it, it becomes a pending expunge (a tombstone
// if its UID is unknown); if it was an unannounced arrival it just goes.
// It returns the message's UID, 0 if unknown.
func (m *Map) ExpungeUpstream(upMsgno uint32) (uint32, error) {
	if err := checkNum(upMsgno, m.UpstreamCount()); err != nil {
		return 0, err
	}
	k := upMsgno - 1
	if bu := m.b.up(); k < bu {
		return m.b.setPendingAt(k), nil
	} else {
		k -= bu
	}
	ri, off := m.tailSeek(k, inUp)
	i := m.tailIsolate(ri, off)
	uid := m.tail[i].uid
	m.tail[i].st &^= inUp
	m.normTail()
	return uid, nil
}

// Vanish records an upstream "* VANISHED uids" (RFC 7162 §3.2.10): like
// ExpungeUpstream for each UID of the upstream view in uids; other UIDs are
// ignored. "n:*" reaches the highest UID. It returns how many left the
// upstream view.
func (m *Map) Vanish(uids imap.UIDSet) uint32 {
	rs, _ := uidRanges(m.rs[:0], uids, math.MaxUint32)
	defer func() { m.rs = trim(rs) }()
	var count uint32
	for _, r := range rs {
		count += m.b.setPending(r.lo, r.hi)
	}
	if len(rs) == 0 || m.tu == 0 {
		return count
	}
	out := m.ts[:0]
	for _, t := range m.tail {
		if t.uid == 0 || t.st&inUp == 0 {
			out = append(out, t)
			continue
		}
		s, e := uint64(t.uid), uint64(t.uid)+uint64(t.n)-1
		pos := s
		for j := sort.Search(len(rs), func(i int) bool { return uint64(rs[i].hi) >= s }); j < len(rs) && uint64(rs[j].lo) <= e; j++ {
			a, z := max(pos, uint64(rs[j].lo)), min(e, uint64(rs[j].hi))
			if a > pos {
				out = append(out, trun{uint32(pos), uint32(a - pos), t.st})
			}
			out = append(out, trun{uint32(a), uint32(z - a + 1), t.st &^ inUp})
			count += uint32(z - a + 1)
			pos = z + 1
		}
		if pos <= e {
			out = append(out, trun{uint32(pos), uint32(e - pos + 1), t.st})
		}
	}
	m.tail, m.ts = out, m.tail[:0]
	m.normTail()
	return count
}

// ClientAt returns the message the client numbers msgno; ok is false for 0
// or a number above ClientCount().
func (m *Map) ClientAt(msgno uint32) (e Entry, ok bool) {
	if msgno == 0 || msgno > m.ClientCount() {
		return Entry{}, false
	}
	k := msgno - 1
	if k < m.b.n {
		uid, pend := m.b.clientAt(k)
		return Entry{UID: uid, InClient: true, InUpstream: !pend}, true
	}
	ri, off := m.tailSeek(k-m.b.n, inClient)
	return m.tail[ri].entry(off), true
}

// UpstreamAt returns upstream message upMsgno; ok is false for 0 or a
// number above UpstreamCount().
func (m *Map) UpstreamAt(upMsgno uint32) (e Entry, ok bool) {
	if upMsgno == 0 || upMsgno > m.UpstreamCount() {
		return Entry{}, false
	}
	k := upMsgno - 1
	if bu := m.b.up(); k < bu {
		uid, _ := m.b.upAt(k)
		return Entry{UID: uid, InClient: true, InUpstream: true}, true
	} else {
		k -= bu
	}
	ri, off := m.tailSeek(k, inUp)
	return m.tail[ri].entry(off), true
}

// ClientMsgno returns the client's number for uid; ok is false if the
// client does not number it (unknown UID, or an unannounced arrival). A
// pending expunge still has its number.
func (m *Map) ClientMsgno(uid uint32) (msgno uint32, ok bool) {
	if uid == 0 {
		return 0, false
	}
	if uid <= m.b.lastUID() {
		pos, _, _, ok := m.b.find(uid)
		return pos + 1, ok
	}
	pos := m.b.n
	for _, r := range m.tail {
		if r.st&inClient == 0 {
			break
		}
		if r.has(uid) {
			return pos + uid - r.uid + 1, true
		}
		pos += r.n
	}
	return 0, false
}

// UpstreamMsgno returns the upstream number of uid; ok is false if uid is
// not in the upstream view.
func (m *Map) UpstreamMsgno(uid uint32) (upMsgno uint32, ok bool) {
	if uid == 0 {
		return 0, false
	}
	if uid <= m.b.lastUID() {
		_, upos, pend, ok := m.b.find(uid)
		return upos + 1, ok && !pend
	}
	pos := m.b.up()
	for _, r := range m.tail {
		if r.st&inUp == 0 {
			continue
		}
		if r.has(uid) {
			return pos + uid - r.uid + 1, true
		}
		pos += r.n
	}
	return 0, false
}

// UpstreamToClient maps an upstream message number (an unsolicited
// "* n FETCH" without UID) to the client's; ok is false if the client does
// not number that message yet, or upMsgno is out of range.
func (m *Map) UpstreamToClient(upMsgno uint32) (msgno uint32, ok bool) {
	if upMsgno == 0 || upMsgno > m.UpstreamCount() {
		return 0, false
	}
	k := upMsgno - 1
	if bu := m.b.up(); k < bu {
		_, pos := m.b.upAt(k)
		return pos + 1, true
	} else {
		k -= bu
	}
	cpos := m.b.n
	for _, r := range m.tail {
		if r.st&inUp != 0 {
			if k < r.n {
				if r.st&inClient == 0 {
					return 0, false
				}
				return cpos + k + 1, true
			}
			k -= r.n
		}
		if r.st&inClient != 0 {
			cpos += r.n
		}
	}
	return 0, false
}

// ClientToUpstream maps a client message number to the upstream one; ok is
// false for a pending expunge or a number out of range.
func (m *Map) ClientToUpstream(msgno uint32) (upMsgno uint32, ok bool) {
	if msgno == 0 || msgno > m.ClientCount() {
		return 0, false
	}
	k := msgno - 1
	if k < m.b.n {
		uid, pend := m.b.clientAt(k)
		if pend {
			return 0, false
		}
		_, upos, _, _ := m.b.find(uid)
		return upos + 1, true
	}
	k -= m.b.n
	upos := m.b.up()
	for _, r := range m.tail {
		if r.st&inClient != 0 {
			if k < r.n {
				if r.st&inUp == 0 {
					return 0, false
				}
				return upos + k + 1, true
			}
			k -= r.n
		}
		if r.st&inUp != 0 {
			upos += r.n
		}
	}
	return 0, false
}

// ClientSeqToUIDs translates a sequence set the client sent, in its own
// numbering, into the UIDs to send upstream. See AppendClientUIDs.
func (m *Map) ClientSeqToUIDs(set imap.SeqSet) (imap.UIDSet, error) {
	return m.AppendClientUIDs(nil, set)
}

// AppendClientUIDs appends to dst the UIDs, as ascending merged ranges, of
// the messages set names in the client's numbering. Ranges may be reversed
// (5:3 is 3:5), unordered or overlapping; "*" (0, as in go-imap) is
// ClientCount(). A literal 0 cannot be told from "*" in an imap.SeqSet:
// the tokenizer must reject it (RFC 9051 §9: nz-number).
//
// Messages gone upstream (pending expunges, tombstones) are skipped
// silently, as Cyrus 2.4 and later do; the result may be empty, in which
// case nothing needs to go upstream. Errors, with dst returned unchanged:
// a *SeqError (ErrBadSequence) for a number above ClientCount() or "*" in
// an empty mailbox, answered BAD; ErrUnresolved if a named message is a
// placeholder: resolve (see Unresolved) and call again.
func (m *Map) AppendClientUIDs(dst imap.UIDSet, set imap.SeqSet) (imap.UIDSet, error) {
	cc := m.ClientCount()
	rs := m.rs[:0]
	defer func() { m.rs = trim(rs) }()
	for _, r := range set {
		a, z := r.Start, r.Stop
		if a == 0 || z == 0 {
			if cc == 0 {
				return dst, &SeqError{Kind: SeqStarEmpty}
			}
			if a == 0 {
				a = cc
			}
			if z == 0 {
				z = cc
			}
		}
		if a > z {
			a, z = z, a
		}
		if z > cc {
			return dst, &SeqError{Kind: SeqTooHigh, Num: z, Count: cc}
		}
		rs = append(rs, urange{a, z})
	}
	rs = mergeRanges(rs)
	n0 := len(dst)
	for _, r := range rs {
		a, z := r.lo-1, r.hi-1
		if a < m.b.n {
			dst = m.b.appendUpUIDs(dst, a, min(z, m.b.n-1))
		}
		if z >= m.b.n {
			var err error
			if dst, err = m.tailUIDs(dst, max(a, m.b.n)-m.b.n, z-m.b.n); err != nil {
				return dst[:n0], err
			}
		}
	}
	return dst, nil
}

// tailUIDs appends the UIDs of the upstream messages among tail client
// positions a..z (0-based).
func (m *Map) tailUIDs(dst imap.UIDSet, a, z uint32) (imap.UIDSet, error) {
	var pos uint32
	for _, r := range m.tail {
		if r.st&inClient == 0 || pos > z {
			break
		}
		s, e := pos, pos+r.n-1
		pos += r.n
		if e < a || r.st&inUp == 0 {
			continue
		}
		if r.uid == 0 {
			return dst, ErrUnresolved
		}
		x, y := max(s, a), min(e, z)
		dst = appendUIDRange(dst, r.uid+(x-s), r.uid+(y-s))
	}
	return dst, nil
}

// AppendClientMsgnos appends the client's number for each UID of uids, in
// the same order (SEARCH and SORT results), skipping UIDs the client does
// not number. Each lookup is O(log n).
func (m *Map) AppendClientMsgnos(dst, uids []uint32) []uint32 {
	for _, u := range uids {
		if n, ok := m.ClientMsgno(u); ok {
			dst = append(dst, n)
		}
	}
	return dst
}

// AppendClientSeq appends to dst, as ascending merged ranges, the client's
// numbers for the UIDs in uids (ESEARCH ALL, RFC 4731), skipping UIDs the
// client does not number. "n:*" reaches the highest UID.
func (m *Map) AppendClientSeq(dst imap.SeqSet, uids imap.UIDSet) imap.SeqSet {
	rs, _ := uidRanges(m.rs[:0], uids, math.MaxUint32)
	defer func() { m.rs = trim(rs) }()
	last := m.b.lastUID()
	for _, r := range rs {
		if m.b.n > 0 && r.lo <= last {
			dst = m.b.appendMsgnos(dst, r.lo, r.hi)
		}
		if r.hi <= last {
			continue
		}
		pos := m.b.n
		for _, t := range m.tail {
			if t.st&inClient == 0 {
				break
			}
			if t.uid != 0 {
				s, e := uint64(t.uid), uint64(t.uid)+uint64(t.n)-1
				if a, z := max(s, uint64(r.lo)), min(e, uint64(r.hi)); a <= z {
					dst = appendSeqRange(dst, pos+uint32(a-s)+1, pos+uint32(z-s)+1)
				}
			}
			pos += t.n
		}
	}
	return dst
}

// ReleaseExpunges applies every pending expunge to the client view and
// appends to dst the numbers to send as "* n EXPUNGE", in order. Call it
// only where an EXPUNGE may be sent: never during FETCH, STORE or SEARCH,
// nor when no command is in progress (RFC 3501 §7.4.1, RFC 9051 §7.5.1).
//
// Each EXPUNGE decrements at once the numbers of the messages after it
// (RFC 3501 §7.4.1, RFC 9051 §7.5.1), so the numbers come highest first:
// then none shifts, and each is the one the client has for the message.
// Afterwards the client view equals the upstream view minus the
// unannounced arrivals. It costs 4 bytes per expunge; see
// ReleaseExpungeRanges for a cost per range.
func (m *Map) ReleaseExpunges(dst []uint32) []uint32 {
	for _, r := range m.ReleaseExpungeRanges(nil) {
		for n := r.Hi; ; n-- {
			dst = append(dst, n)
			if n <= r.Lo {
				break
			}
		}
	}
	return dst
}

// NumRange is the client's message numbers Lo to Hi.
type NumRange struct{ Lo, Hi uint32 }

// ReleaseExpungeRanges is ReleaseExpunges with the numbers as ranges:
// it appends them to dst highest first, and each range stands for
// "* n EXPUNGE" for n from its Hi down to its Lo. So a release costs 8
// bytes per range of consecutive numbers, not 4 per message (issue 16:
// a backend that claims a large mailbox and then empties it must not make
// uidgate hold one number per message).
func (m *Map) ReleaseExpungeRanges(dst []NumRange) []NumRange {
	if m.PendingExpunges() == 0 {
		return dst
	}
	// The tail's messages come after the body's: list them first.
	n0 := len(dst)
	if m.tpend > 0 {
		pos := m.b.n
		for _, r := range m.tail {
			if r.st&inClient == 0 {
				break
			}
			if r.st&inUp == 0 {
				dst = appendNumRange(dst, n0, pos+1, pos+r.n)
			}
			pos += r.n
		}
		slices.Reverse(dst[n0:])
	}
	n1 := len(dst)
	dst, _ = m.b.release(dst, nil, true, false)
	slices.Reverse(dst[n1:])
	if n1 > n0 && n1 < len(dst) && dst[n1].Hi+1 == dst[n1-1].Lo {
		// The body's last range runs into the tail's first.
		dst[n1-1].Lo = dst[n1].Lo
		dst = slices.Delete(dst, n1, n1+1)
	}
	m.dropTailPending()
	return dst
}

// appendNumRange appends lo..hi to the ascending ranges dst[from:],
// joined to the last one if it ends just before lo.
func appendNumRange(dst []NumRange, from int, lo, hi uint32) []NumRange {
	if k := len(dst) - 1; k >= from && dst[k].Hi+1 == lo {
		dst[k].Hi = hi
		return dst
	}
	return append(dst, NumRange{Lo: lo, Hi: hi})
}

// ReleaseVanished is ReleaseExpunges for a client that enabled QRESYNC
// (RFC 7162 §3.2.10): it appends the UIDs of the pending expunges to dst,
// to send as one "* VANISHED" response. Tombstones have no UID: their
// client numbers come back separately, highest first, valid after the
// VANISHED response (as "* n EXPUNGE", which a QRESYNC client must not get;
// use AnnounceResolved to never create tombstones for such a client).
func (m *Map) ReleaseVanished(dst imap.UIDSet) (vanished imap.UIDSet, tombstones []uint32) {
	if m.PendingExpunges() == 0 {
		return dst, nil
	}
	if m.ttomb > 0 {
		pos := m.b.up()
		for _, r := range m.tail {
			if r.st&inClient == 0 {
				break
			}
			if r.st&inUp == 0 {
				if r.uid != 0 {
					continue
				}
				for i := range r.n {
					tombstones = append(tombstones, pos+i+1)
				}
			}
			pos += r.n
		}
		slices.Reverse(tombstones)
	}
	_, dst = m.b.release(nil, dst, false, true)
	for _, r := range m.tail {
		if r.st == inClient && r.uid != 0 {
			dst = appendUIDRange(dst, r.uid, r.uid+r.n-1)
		}
	}
	m.dropTailPending()
	return dst, tombstones
}

// dropTailPending removes the tail's pending expunges and tombstones.
func (m *Map) dropTailPending() {
	if m.tpend == 0 {
		return
	}
	for i := range m.tail {
		if m.tail[i].st == inClient {
			m.tail[i].st = 0
		}
	}
	m.normTail()
}

// Resync diffs the upstream view against uids, the complete UID list of the
// mailbox (UID SEARCH ALL), for backends whose message numbers are not
// trusted. It sorts uids in place. See ResyncSet.
func (m *Map) Resync(uids []uint32) (ResyncStats, error) {
	// Afterwards every message is in the list or in the client view.
	if n, err := sortUIDs(uids); err != nil {
		return ResyncStats{}, err
	} else if uint64(m.ClientCount())+n > m.limit() {
		return ResyncStats{}, ErrTooMany
	}
	st := m.resync(&cursor{uids: uids, at: 1})
	if len(uids) > 0 {
		m.maxUID = max(m.maxUID, uids[len(uids)-1])
	}
	if st.Ignored > 0 {
		return st, fmt.Errorf("%w: %d UIDs", ErrConflict, st.Ignored)
	}
	return st, nil
}

// ResyncSet makes the upstream view equal the UID set (ESEARCH ALL):
//   - known messages missing from it leave the upstream view (pending
//     expunges, or gone if never announced); pending expunges it still
//     holds come back (the client was never told);
//   - placeholders take, in order, the list's UIDs between the known UIDs
//     around them; extra placeholders are dropped (tombstones if announced);
//   - UIDs above every UID learned so far become unannounced arrivals;
//   - UIDs that fit nowhere (below known ones) are counted as Ignored and
//     reported as ErrConflict: a client cannot be told of a message in the
//     middle of its view. Everything else is applied.
func (m *Map) ResyncSet(set imap.UIDSet) (ResyncStats, error) {
	rs, err := uidRanges(m.rs[:0], set, 0)
	if err != nil {
		return ResyncStats{}, err
	}
	if uint64(m.ClientCount())+rangesCount(rs) > m.limit() {
		m.rs = trim(rs)
		return ResyncStats{}, ErrTooMany
	}
	st := m.resync(&cursor{rs: rs, at: 1})
	if len(rs) > 0 {
		m.maxUID = max(m.maxUID, rs[len(rs)-1].hi)
	}
	m.rs = trim(rs)
	if st.Ignored > 0 {
		return st, fmt.Errorf("%w: %d UIDs", ErrConflict, st.Ignored)
	}
	return st, nil
}

// cursor walks an ascending UID list, given as merged ranges (rs) or as
// sorted UIDs that may repeat (uids); every UID below at is consumed.
type cursor struct {
	rs   []urange
	uids []uint32
	i    int
	at   uint64

	// In uids mode: the segment seg of consecutive UIDs uids[i:segEnd].
	seg    urange
	segEnd int
	segOK  bool
}

// peek returns the next unconsumed segment lo..hi.
func (c *cursor) peek() (lo, hi uint64, ok bool) {
	if c.uids == nil {
		for c.i < len(c.rs) && uint64(c.rs[c.i].hi) < c.at {
			c.i++
		}
		if c.i == len(c.rs) {
			return 0, 0, false
		}
		return max(uint64(c.rs[c.i].lo), c.at), uint64(c.rs[c.i].hi), true
	}
	for {
		if !c.segOK {
			if c.i >= len(c.uids) {
				return 0, 0, false
			}
			s := urange{c.uids[c.i], c.uids[c.i]}
			j := c.i + 1
			for j < len(c.uids) && (c.uids[j] == s.hi || uint64(c.uids[j]) == uint64(s.hi)+1) {
				s.hi = c.uids[j]
				j++
			}
			c.seg, c.segEnd, c.segOK = s, j, true
		}
		if uint64(c.seg.hi) < c.at {
			c.i, c.segOK = c.segEnd, false
			continue
		}
		return max(uint64(c.seg.lo), c.at), uint64(c.seg.hi), true
	}
}

// skipTo consumes the UIDs below upto and returns how many there were.
func (c *cursor) skipTo(upto uint64) uint64 {
	var k uint64
	for {
		lo, hi, ok := c.peek()
		if !ok || lo >= upto {
			break
		}
		e := min(hi+1, upto)
		k += e - lo
		c.at = e
	}
	c.at = max(c.at, upto)
	return k
}

// split calls fn for the maximal segments of s..e inside (in) and outside
// the ranges, in order, consuming up to e.
func (c *cursor) split(s, e uint64, fn func(lo, hi uint64, in bool)) {
	for pos := s; pos <= e; {
		lo, hi, ok := c.peek()
		if !ok || lo > e {
			fn(pos, e, false)
			break
		}
		if lo > pos {
			fn(pos, lo-1, false)
			pos = lo
		}
		z := min(hi, e)
		fn(pos, z, true)
		pos = z + 1
		c.at = pos
	}
	c.at = max(c.at, e+1)
}

func (m *Map) resync(cur *cursor) ResyncStats {
	var st ResyncStats

	// The body: set each message's pending bit to "not in the list".
	b := &m.b
	if len(b.chunks) > 0 {
		out := make([]chunk, 0, len(b.chunks))
		for ci := range b.chunks {
			c := b.chunks[ci]
			rs := c.runs(b.runs[:0])
			nr := b.tmp[:0]
			changed := false
			for _, r := range rs {
				s := uint64(r.start)
				st.Ignored += uint32(cur.skipTo(s))
				cur.split(s, s+uint64(r.n)-1, func(lo, hi uint64, in bool) {
					n := uint32(hi - lo + 1)
					switch {
					case r.pend && in:
						st.Revived += n
						changed = true
					case !r.pend && !in:
						st.Expunged += n
						changed = true
					}
					nr = append(nr, run{uint32(lo), n, !in})
				})
			}
			b.runs, b.tmp = rs[:0], nr[:0]
			if !changed {
				out = append(out, c)
				continue
			}
			b.enc.reset(b.fill(), &out)
			for _, r := range nr {
				b.enc.add(r.start, r.n, r.pend)
			}
			b.enc.finish()
			b.enc.out = nil
		}
		b.chunks = out
		b.n, b.pend, b.bytes = 0, 0, 0
		for i := range out {
			b.n += out[i].n
			b.pend += out[i].pend
			b.bytes += len(out[i].data)
		}
		b.dirty = true
	}

	// The tail: known runs are classified like the body; each group of
	// unknown runs takes the list's UIDs between its known neighbours.
	nt := m.ts[:0]
	tail := m.tail
	maxBefore := uint64(m.maxUID)
	for i := 0; ; {
		j := i
		for j < len(tail) && tail[j].uid == 0 {
			j++
		}
		final := j == len(tail)
		bound := uint64(math.MaxUint32) + 1
		if !final {
			bound = uint64(tail[j].uid)
		}
		probe := *cur
		cand := probe.skipTo(bound)
		var places uint64
		for _, t := range tail[i:j] {
			if t.st&inUp != 0 {
				places += uint64(t.n)
			}
		}
		match := min(cand, places)
		var assigned uint64
		for _, t := range tail[i:j] {
			if t.st&inUp == 0 {
				nt = append(nt, t)
				continue
			}
			take := min(uint64(t.n), match-assigned)
			for rem := take; rem > 0; {
				lo, hi, _ := cur.peek()
				seg := min(hi-lo+1, rem)
				nt = append(nt, trun{uint32(lo), uint32(seg), t.st})
				cur.at = lo + seg
				rem -= seg
			}
			assigned += take
			st.Resolved += uint32(take)
			if left := uint64(t.n) - take; left > 0 {
				nt = append(nt, trun{0, uint32(left), t.st &^ inUp})
				st.Dropped += uint32(left)
			}
		}
		if cand > match {
			if !final {
				st.Ignored += uint32(cur.skipTo(bound))
			} else {
				// New UIDs must be above every UID seen so far.
				st.Ignored += uint32(cur.skipTo(maxBefore + 1))
				for {
					lo, hi, ok := cur.peek()
					if !ok {
						break
					}
					nt = append(nt, trun{uint32(lo), uint32(hi - lo + 1), inUp})
					st.Added += uint32(hi - lo + 1)
					cur.at = hi + 1
				}
			}
		}
		if final {
			break
		}
		t := tail[j]
		s := uint64(t.uid)
		cur.split(s, s+uint64(t.n)-1, func(lo, hi uint64, in bool) {
			n := uint32(hi - lo + 1)
			ns := t.st &^ inUp
			if in {
				ns |= inUp
			}
			switch {
			case in && t.st&inUp == 0:
				st.Revived += n
			case !in && t.st&inUp != 0:
				st.Expunged += n
			}
			nt = append(nt, trun{uint32(lo), n, ns})
		})
		i = j + 1
	}
	m.tail, m.ts = nt, tail[:0]
	m.normTail()
	return st
}

// entry describes message off of the run.
func (r trun) entry(off uint32) Entry {
	e := Entry{InClient: r.st&inClient != 0, InUpstream: r.st&inUp != 0}
	if r.uid != 0 {
		e.UID = r.uid + off
	}
	return e
}

// has reports whether the run holds the known UID uid.
func (r trun) has(uid uint32) bool {
	return r.uid != 0 && uid >= r.uid && uint64(uid) < uint64(r.uid)+uint64(r.n)
}

// tailSeek finds the k-th (0-based) tail message whose state has all the
// bits of mask; the caller has checked that it exists.
func (m *Map) tailSeek(k uint32, mask uint8) (ri int, off uint32) {
	for i, r := range m.tail {
		if r.st&mask != mask {
			continue
		}
		if k < r.n {
			return i, k
		}
		k -= r.n
	}
	return len(m.tail) - 1, 0 // unreachable while the counts are right
}

// tailIsolate splits run ri so that its message off is a run of its own,
// and returns that run's index.
func (m *Map) tailIsolate(ri int, off uint32) int {
	r := m.tail[ri]
	if r.n == 1 {
		return ri
	}
	at := func(o uint32) uint32 {
		if r.uid == 0 {
			return 0
		}
		return r.uid + o
	}
	var parts [3]trun
	np, mid := 0, 0
	if off > 0 {
		parts[np] = trun{r.uid, off, r.st}
		np++
	}
	parts[np], mid = trun{at(off), 1, r.st}, np
	np++
	if off+1 < r.n {
		parts[np] = trun{at(off + 1), r.n - off - 1, r.st}
		np++
	}
	m.tail = slices.Replace(m.tail, ri, ri+1, parts[:np]...)
	return ri + mid
}

// normTail drops empty runs, merges neighbours, moves the known announced
// prefix into the body and recounts.
func (m *Map) normTail() {
	out := m.tail[:0]
	for _, r := range m.tail {
		if r.n == 0 || r.st == 0 {
			continue
		}
		if k := len(out); k > 0 {
			p := &out[k-1]
			if p.st == r.st && (p.uid == 0) == (r.uid == 0) &&
				(r.uid == 0 || uint64(p.uid)+uint64(p.n) == uint64(r.uid)) {
				p.n += r.n
				continue
			}
		}
		out = append(out, r)
	}
	k := 0
	for k < len(out) && out[k].uid != 0 && out[k].st&inClient != 0 {
		k++
	}
	if k > 0 {
		rs := m.runs[:0]
		for _, r := range out[:k] {
			rs = append(rs, run{r.uid, r.n, r.st&inUp == 0})
		}
		m.b.appendRuns(rs)
		m.runs = trim(rs)
		out = out[:copy(out, out[k:])]
	}
	m.tail = out
	m.tc, m.tu, m.tpend, m.ttomb, m.tarr, m.tunknown = 0, 0, 0, 0, 0, 0
	for _, r := range out {
		c, u := r.st&inClient != 0, r.st&inUp != 0
		if c {
			m.tc += r.n
		}
		if u {
			m.tu += r.n
		}
		switch {
		case c && !u:
			m.tpend += r.n
			if r.uid == 0 {
				m.ttomb += r.n
			}
		case u && !c:
			m.tarr += r.n
		}
		if u && r.uid == 0 {
			m.tunknown += r.n
		}
	}
}
