package legacysim

import (
	"sort"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
)

// pick is one message a FETCH, STORE or COPY names.
type pick struct {
	kind     imapserver.NumKind
	num      uint32   // the number the client sent
	msgno    uint32   // the message number used in the response
	msg      *message // the message actually acted on
	intended imap.UID // what num named in the session's view (0: nothing)
}

// act runs under srv.mu for one picked message and returns what to write
// once the lock is released (nil: nothing).
type act func(p *pick) (write func() error, err error)

func errInvalidSeq() error {
	return &imap.Error{Type: imap.StatusResponseTypeBad, Code: imap.ResponseCodeClientBug, Text: "Invalid message sequence number"}
}

func errReadOnly() error {
	return &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Mailbox is read-only"}
}

// expandSeq lists the numbers set names, ascending, where "*" is max. bad
// reports a number beyond max.
func expandSeq(set imap.SeqSet, max uint32) (nums []uint32, bad bool) {
	seen := make(map[uint32]bool)
	for _, r := range set {
		start, stop := r.Start, r.Stop
		if start == 0 {
			start = max
		}
		if stop == 0 {
			stop = max
		}
		if start > stop {
			start, stop = stop, start
		}
		if start == 0 { // "*" in an empty mailbox
			continue
		}
		if stop > max {
			bad = true
			stop = max
		}
		for n := start; n <= stop && n != 0; n++ {
			if !seen[n] {
				seen[n] = true
				nums = append(nums, n)
			}
		}
	}
	sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
	return nums, bad
}

func staticUIDSet(set imap.UIDSet, max imap.UID) imap.UIDSet {
	out := make(imap.UIDSet, len(set))
	for i, r := range set {
		if r.Start == 0 {
			r.Start = max
		}
		if r.Stop == 0 {
			r.Stop = max
		}
		if r.Start > r.Stop {
			r.Start, r.Stop = r.Stop, r.Start
		}
		out[i] = r
	}
	return out
}

// liveUIDsLocked is the live index as a UID list: what StaleMsgno numbers
// messages against.
func liveUIDsLocked(mb *mailbox) []imap.UID {
	l := make([]imap.UID, len(mb.msgs))
	for i, msg := range mb.msgs {
		l[i] = msg.uid
	}
	return l
}

// forEach resolves numSet and runs a for every message it names.
//
// A correct server resolves message numbers in the session's own view and
// skips messages expunged since (RFC 3501 §7.4.1 / RFC 9051 §7.5.1).
// StaleMsgno resolves them against the live index instead. EarlyExpunge
// announces pending EXPUNGEs at the start of the command and between
// responses (once after holding a window open), renumbering as it goes, and
// resolves each number only when it gets to it — Cyrus 2.3's index_check in
// the middle of a command.
func (s *session) forEach(numSet imap.NumSet, fetchOrStore bool, a act) error {
	if imap.IsSearchRes(numSet) {
		return nil // SEARCHRES is not advertised
	}
	switch set := numSet.(type) {
	case imap.SeqSet:
		return s.forEachSeq(set, fetchOrStore, a)
	case imap.UIDSet:
		return s.forEachUID(set, a)
	}
	return nil
}

func (s *session) forEachSeq(set imap.SeqSet, early bool, a act) error {
	srv := s.srv
	cfg := srv.cfg
	early = early && cfg.EarlyExpunge

	srv.mu.Lock()
	mb := s.mb
	told := s.toldLocked() // what the client's numbers mean
	if early && len(s.pushed) == 0 {
		told = append([]imap.UID(nil), s.view...)
	}
	max := uint32(len(told))
	if cfg.StaleMsgno {
		max = uint32(len(mb.msgs))
	}
	nums, bad := expandSeq(set, max)
	srv.mu.Unlock()
	if bad && !cfg.StaleMsgno {
		return errInvalidSeq()
	}

	injectAt := -1
	if early {
		if err := s.earlyExpunge(); err != nil {
			return err
		}
		if len(nums) > 1 {
			injectAt = 1 + srv.randIntN(len(nums)-1)
		}
	}
	for i, n := range nums {
		if early && i > 0 {
			if i == injectAt {
				srv.window(WindowEarlyExpunge, mb, s.id)
			}
			if err := s.earlyExpunge(); err != nil {
				return err
			}
		}
		srv.mu.Lock()
		p := pick{kind: imapserver.NumKindSeq, num: n}
		if int(n) <= len(told) && mb.lookup(told[n-1]) != nil {
			p.intended = told[n-1]
		}
		if cfg.StaleMsgno {
			if int(n) <= len(mb.msgs) {
				p.msg, p.msgno = mb.msgs[n-1], n
			}
		} else if int(n) <= len(s.view) {
			p.msg, p.msgno = mb.lookup(s.view[n-1]), n
		}
		if p.msg == nil {
			srv.mu.Unlock()
			continue
		}
		write, err := a(&p)
		srv.mu.Unlock()
		if err != nil {
			return err
		}
		if write != nil {
			if err := write(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *session) forEachUID(set imap.UIDSet, a act) error {
	srv := s.srv
	srv.mu.Lock()
	mb := s.mb
	set = staticUIDSet(set, mb.uidNext-1)
	numbering := s.view
	if srv.cfg.StaleMsgno {
		numbering = liveUIDsLocked(mb)
	}
	var uids []imap.UID
	for _, uid := range numbering {
		if set.Contains(uid) {
			uids = append(uids, uid)
		}
	}
	srv.mu.Unlock()

	for _, uid := range uids {
		srv.mu.Lock()
		numbering := s.view
		if srv.cfg.StaleMsgno {
			numbering = liveUIDsLocked(mb)
		}
		i := uidIndex(numbering, uid)
		msg := mb.lookup(uid)
		if i < 0 || msg == nil {
			srv.mu.Unlock()
			continue
		}
		p := pick{kind: imapserver.NumKindUID, num: uint32(uid), msgno: uint32(i) + 1, msg: msg, intended: uid}
		write, err := a(&p)
		srv.mu.Unlock()
		if err != nil {
			return err
		}
		if write != nil {
			if err := write(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *session) record(p *pick, op WriteOp, storeOp imap.StoreFlagsOp, flags []imap.Flag) {
	s.srv.recordLocked(WriteRecord{
		Session: s.id, User: s.mb.user.name, Mailbox: s.mb.name, Op: op, StoreOp: storeOp, Flags: flags,
		Kind: p.kind, Num: p.num, UID: p.msg.uid, Intended: p.intended,
	})
}

func (s *session) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	markSeen := false
	for _, bs := range options.BodySection {
		markSeen = markSeen || !bs.Peek
	}
	for _, bs := range options.BinarySection {
		markSeen = markSeen || !bs.Peek
	}
	return s.forEach(numSet, true, func(p *pick) (func() error, error) {
		changed := false
		if markSeen && !s.readOnly {
			fs := s.flagsLocked(p.msg)
			if !fs.has(imap.FlagSeen) {
				// RFC 3501 §6.4.5: BODY[] sets \Seen implicitly.
				fs.add(imap.FlagSeen)
				changed = s.setFlagsLocked(p.msg, fs, p.kind == imapserver.NumKindSeq)
				s.record(p, OpImplicitSeen, imap.StoreFlagsAdd, []imap.Flag{imap.FlagSeen})
			}
		}
		snap := fetchSnap{uid: p.msg.uid, buf: p.msg.buf, t: p.msg.t, flags: s.flagsLocked(p.msg).list()}
		msgno := p.msgno
		return func() error {
			// RFC 3501 §6.4.5: flags changed by the fetch SHOULD be returned.
			return writeFetch(w.CreateMessage(msgno), snap, options, options.UID, options.Flags || changed)
		}, nil
	})
}

func (s *session) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	if s.readOnly {
		return errReadOnly()
	}
	_, isUID := numSet.(imap.UIDSet)
	return s.forEach(numSet, true, func(p *pick) (func() error, error) {
		want := s.flagsLocked(p.msg)
		want.apply(flags.Op, flags.Flags)
		s.setFlagsLocked(p.msg, want, p.kind == imapserver.NumKindSeq)
		s.record(p, OpStore, flags.Op, append([]imap.Flag(nil), flags.Flags...))
		if flags.Silent {
			return nil, nil
		}
		uid, msgno, list := p.msg.uid, p.msgno, s.flagsLocked(p.msg).list()
		return func() error {
			rw := w.CreateMessage(msgno)
			if isUID {
				rw.WriteUID(uid) // RFC 3501 §6.4.8
			}
			rw.WriteFlags(list)
			return rw.Close()
		}, nil
	})
}

func (s *session) Copy(numSet imap.NumSet, destName string) (*imap.CopyData, error) {
	srv := s.srv
	srv.mu.Lock()
	dest := s.user.mailbox(destName)
	srv.mu.Unlock()
	if dest == nil {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTryCreate, Text: "Mailbox does not exist"}
	}
	var src, dst imap.UIDSet
	err := s.forEach(numSet, false, func(p *pick) (func() error, error) {
		msg := srv.appendLocked(dest, p.msg.buf, s.flagsLocked(p.msg).list(), p.msg.t)
		s.record(p, OpCopy, 0, nil)
		src.AddNum(p.msg.uid)
		dst.AddNum(msg.uid)
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	if len(src) == 0 {
		return nil, nil
	}
	return &imap.CopyData{UIDValidity: dest.uidValidity, SourceUIDs: src, DestUIDs: dst}, nil
}

func (s *session) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	srv := s.srv
	if kind == imapserver.NumKindSeq && srv.cfg.EarlyExpunge {
		if err := s.earlyExpunge(); err != nil {
			return nil, err
		}
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	mb := s.mb
	numbering := s.view
	if srv.cfg.StaleMsgno {
		numbering = liveUIDsLocked(mb)
	}
	staticCriteria(criteria, uint32(len(numbering)), mb.uidNext-1)

	data := &imap.SearchData{}
	var seqs imap.SeqSet
	var uids imap.UIDSet
	for i, uid := range numbering {
		msg := mb.lookup(uid)
		if msg == nil {
			continue
		}
		seqNum := uint32(i) + 1
		if !matchMessage(msg, seqNum, s.flagsLocked(msg), criteria) {
			continue
		}
		num := seqNum
		if kind == imapserver.NumKindUID {
			num = uint32(uid)
			uids.AddNum(uid)
		} else {
			seqs.AddNum(seqNum)
		}
		if data.Min == 0 || num < data.Min {
			data.Min = num
		}
		if num > data.Max {
			data.Max = num
		}
		data.Count++
	}
	if kind == imapserver.NumKindUID {
		data.All = uids
	} else {
		data.All = seqs
	}
	return data, nil
}
