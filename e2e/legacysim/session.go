package legacysim

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
)

// session is one IMAP connection. imapserver calls its methods from the
// connection's goroutine (and Idle from a second one while the first waits
// for DONE). Every field from user on is guarded by srv.mu.
type session struct {
	srv    *Server
	id     uint64
	wire   *wireConn
	notify chan struct{} // capacity 1: something was queued for Idle
	push   chan struct{} // capacity 1: EarlyExpunge's pusher should look
	quit   chan struct{} // closed by Close: stops the pusher

	user     *user
	mb       *mailbox
	readOnly bool
	closed   bool

	// view is what the session has been told: its message numbers are
	// positions in this ascending UID list (RFC 3501 §7.4.1: they change only
	// when the session is sent EXPUNGE or EXISTS).
	view           []imap.UID
	pendingExpunge []imap.UID // expunged, still in view, not yet announced
	pendingNew     []imap.UID // appended, not yet in view
	pendingFlags   map[imap.UID]struct{}
	// pushed are the UIDs EarlyExpunge's pusher announced since the
	// session's last command ended: the client sent its next command before
	// it could read those EXPUNGEs, so its numbers still count them.
	pushed []imap.UID

	// SessionSeen: the seen record as read at SELECT and this session's own
	// changes since, written back at CLOSE/LOGOUT/SELECT.
	seenSnap map[imap.UID]struct{}
	seenChg  map[imap.UID]bool
	// DeliveryRace: UIDs this session marked \Seen through a message number.
	seqSeen map[imap.UID]struct{}
}

var (
	_ imapserver.Session          = (*session)(nil)
	_ imapserver.SessionNamespace = (*session)(nil)
)

func (s *Server) newSession(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
	w, _ := c.NetConn().(*wireConn)
	s.mu.Lock()
	s.nextSession++
	sess := &session{srv: s, id: s.nextSession, wire: w, notify: make(chan struct{}, 1),
		push: make(chan struct{}, 1), quit: make(chan struct{})}
	if s.cfg.EarlyExpunge && w != nil {
		s.wg.Add(1) // the connection is counted already, so this is not a first Add
		go sess.pusher()
	}
	s.mu.Unlock()
	if w != nil {
		w.sess.Store(sess)
	}
	return sess, nil, nil
}

func (s *session) pushWake() {
	select {
	case s.push <- struct{}{}:
	default:
	}
}

// pusher is EarlyExpunge's "any time": it sends other sessions' EXPUNGEs to
// a session that has no command in progress, as soon as they happen or the
// session's command ends (RFC 3501 §7.4.1 / RFC 9051 §7.5.1 forbid it).
// It writes only while wireConn holds imapserver in its read of the next
// command, so no response of imapserver's can be cut in two, and a command
// the client sent before it could read the EXPUNGE is resolved after it.
func (s *session) pusher() {
	defer s.srv.wg.Done()
	for {
		select {
		case <-s.push:
		case <-s.quit:
			return
		case <-s.srv.done:
			return
		}
		w := s.wire
		w.idleMu.Lock()
		if w.between {
			s.srv.mu.Lock()
			var nums []uint32
			if s.mb != nil {
				var uids []imap.UID
				nums, uids = s.takeExpungesLocked()
				s.pushed = append(s.pushed, uids...)
			}
			s.srv.mu.Unlock()
			s.writeExpunges(nums)
		}
		w.idleMu.Unlock()
	}
}

func (s *session) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func noMailbox() error {
	return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNonExistent, Text: "Mailbox does not exist"}
}

// Close ends the session: a LOGOUT or a dropped connection writes the seen
// state back like CLOSE does.
func (s *session) Close() error {
	s.srv.mu.Lock()
	if s.closed {
		s.srv.mu.Unlock()
		return nil
	}
	s.closed = true
	selected := s.mb != nil
	close(s.quit)
	s.srv.mu.Unlock()
	if selected {
		s.Unselect()
	}
	if s.wire != nil {
		s.srv.forgetConn(s.wire.Conn)
	}
	s.srv.wg.Done()
	return nil
}

func (s *session) Login(username, password string) error {
	u := s.srv.checkLogin(username, password)
	if u == nil {
		return imapserver.ErrAuthFailed
	}
	s.srv.mu.Lock()
	s.user = u
	s.srv.mu.Unlock()
	return nil
}

func (s *session) Select(name string, options *imap.SelectOptions) (*imap.SelectData, error) {
	srv := s.srv
	srv.mu.Lock()
	defer srv.mu.Unlock()
	mb := s.user.mailbox(name)
	if mb == nil {
		return nil, noMailbox()
	}
	s.mb = mb
	s.readOnly = options != nil && options.ReadOnly
	mb.views[s] = struct{}{}
	s.view = make([]imap.UID, len(mb.msgs))
	for i, msg := range mb.msgs {
		s.view[i] = msg.uid
	}
	s.pendingExpunge, s.pendingNew, s.pendingFlags, s.pushed = nil, nil, nil, nil
	s.seenChg, s.seqSeen = make(map[imap.UID]bool), make(map[imap.UID]struct{})
	s.seenSnap = nil
	if srv.cfg.SessionSeen {
		s.seenSnap = make(map[imap.UID]struct{}, len(mb.seen))
		for uid := range mb.seen {
			s.seenSnap[uid] = struct{}{}
		}
	}
	var firstUnseen uint32
	for i, msg := range mb.msgs {
		if !s.flagsLocked(msg).has(imap.FlagSeen) {
			firstUnseen = uint32(i) + 1
			break
		}
	}
	flags := append([]imap.Flag(nil), systemFlags...)
	return &imap.SelectData{
		Flags:             flags,
		PermanentFlags:    append(flags, imap.FlagWildcard),
		NumMessages:       uint32(len(s.view)),
		FirstUnseenSeqNum: firstUnseen,
		UIDNext:           mb.uidNext,
		UIDValidity:       mb.uidValidity,
	}, nil
}

// Unselect writes the seen state back (CLOSE, SELECT of another mailbox,
// LOGOUT) and leaves the mailbox.
func (s *session) Unselect() error {
	s.flushSeen()
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	if s.mb != nil {
		delete(s.mb.views, s)
	}
	s.mb = nil
	s.view, s.pendingExpunge, s.pendingNew, s.pendingFlags, s.pushed = nil, nil, nil, nil, nil
	s.seenSnap, s.seenChg, s.seqSeen = nil, nil, nil
	return nil
}

// flagsLocked is the flag set of msg as this session sees it.
func (s *session) flagsLocked(msg *message) flagSet {
	fs := msg.flags.clone()
	if s.srv.cfg.SessionSeen && s.mb != nil {
		seen, ok := s.seenChg[msg.uid]
		if !ok {
			_, seen = s.seenSnap[msg.uid]
		}
		if seen {
			fs.add(imap.FlagSeen)
		}
	}
	return fs
}

// setFlagsLocked makes msg's flags (as this session sees them) want, and
// reports whether anything changed. With SessionSeen, \Seen goes into the
// session's own cache instead of the index.
func (s *session) setFlagsLocked(msg *message, want flagSet, byNum bool) bool {
	srv := s.srv
	before := s.flagsLocked(msg)
	idx := want.clone()
	if srv.cfg.SessionSeen {
		idx.del(imap.FlagSeen)
		if want.has(imap.FlagSeen) != before.has(imap.FlagSeen) {
			s.seenChg[msg.uid] = want.has(imap.FlagSeen)
		}
	}
	if !idx.equal(msg.flags) {
		msg.flags = idx
		srv.flagsChangedLocked(s.mb, msg, s)
	}
	if byNum && want.has(imap.FlagSeen) {
		s.seqSeen[msg.uid] = struct{}{}
	}
	return !before.equal(want)
}

// flushSeen is the CLOSE/LOGOUT/SELECT seen write-back.
//
// With SessionSeen it is Cyrus 2.3's unlocked read-modify-write of the
// user's seen record: read, hold the window open, write back what was read
// plus this session's changes, overwriting whatever other sessions wrote in
// between. With DeliveryRace, a session that marked its last message \Seen
// through a message number writes that run open-ended ("n:*"), resolved
// against the live index, so mail delivered since it last looked becomes
// \Seen too.
func (s *session) flushSeen() {
	srv := s.srv
	srv.mu.Lock()
	mb := s.mb
	if mb == nil {
		srv.mu.Unlock()
		return
	}
	var trailing imap.UID
	if srv.cfg.DeliveryRace && len(s.view) > 0 {
		last := s.view[len(s.view)-1]
		if _, ok := s.seqSeen[last]; ok {
			trailing = last
		}
	}
	s.seqSeen = make(map[imap.UID]struct{})
	chg := s.seenChg
	s.seenChg = make(map[imap.UID]bool)
	for uid, seen := range chg { // the session keeps seeing its own changes
		if seen {
			s.seenSnap[uid] = struct{}{}
		} else {
			delete(s.seenSnap, uid)
		}
	}

	if !srv.cfg.SessionSeen {
		if trailing != 0 {
			s.trailingSeenLocked(mb, trailing, nil)
		}
		srv.mu.Unlock()
		return
	}
	if len(chg) == 0 && trailing == 0 {
		srv.mu.Unlock()
		return
	}
	rec := make(map[imap.UID]struct{}, len(mb.seen))
	for uid := range mb.seen {
		rec[uid] = struct{}{}
	}
	srv.mu.Unlock()

	srv.window(WindowSeenFlush, mb, s.id)

	srv.mu.Lock()
	defer srv.mu.Unlock()
	for uid, seen := range chg {
		if seen {
			rec[uid] = struct{}{}
		} else {
			delete(rec, uid)
		}
	}
	if trailing != 0 {
		s.trailingSeenLocked(mb, trailing, rec)
	}
	// The write: whatever changed since the read is overwritten.
	for uid := range mb.seen {
		if _, ok := rec[uid]; !ok && mb.lookup(uid) != nil {
			srv.recordLocked(WriteRecord{Session: s.id, User: mb.user.name, Mailbox: mb.name, Op: OpSeenLost, UID: uid})
		}
	}
	for uid := range rec {
		if _, ok := mb.seen[uid]; !ok {
			if _, mine := chg[uid]; !mine && mb.lookup(uid) != nil {
				srv.recordLocked(WriteRecord{Session: s.id, User: mb.user.name, Mailbox: mb.name, Op: OpSeenLost,
					Flags: []imap.Flag{imap.FlagSeen}, UID: uid})
			}
		}
	}
	mb.seen = rec
}

// trailingSeenLocked marks \Seen every live message after the session's
// last one: into rec (the seen record being written) or, without
// SessionSeen, into the index.
func (s *session) trailingSeenLocked(mb *mailbox, after imap.UID, rec map[imap.UID]struct{}) {
	srv := s.srv
	for _, msg := range mb.msgs {
		if msg.uid <= after {
			continue
		}
		if rec != nil {
			if _, ok := rec[msg.uid]; ok {
				continue
			}
			rec[msg.uid] = struct{}{}
		} else {
			if msg.flags.has(imap.FlagSeen) {
				continue
			}
			msg.flags.add(imap.FlagSeen)
			srv.flagsChangedLocked(mb, msg, nil)
		}
		srv.recordLocked(WriteRecord{Session: s.id, User: mb.user.name, Mailbox: mb.name, Op: OpSeenSync,
			Flags: []imap.Flag{imap.FlagSeen}, UID: msg.uid})
	}
}

func (s *session) Create(name string, options *imap.CreateOptions) error {
	srv := s.srv
	srv.mu.Lock()
	defer srv.mu.Unlock()
	name = strings.TrimSuffix(name, string(mailboxDelim))
	if name == "" || s.user.mailbox(name) != nil {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "Mailbox already exists"}
	}
	srv.newMailboxLocked(s.user, name)
	return nil
}

func (s *session) Delete(name string) error {
	srv := s.srv
	srv.mu.Lock()
	defer srv.mu.Unlock()
	mb := s.user.mailbox(name)
	if mb == nil {
		return noMailbox()
	}
	if mb.name == "INBOX" {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Cannot delete INBOX"}
	}
	delete(s.user.mailboxes, mb.name)
	return nil
}

func (s *session) Rename(oldName, newName string, options *imap.RenameOptions) error {
	srv := s.srv
	srv.mu.Lock()
	defer srv.mu.Unlock()
	mb := s.user.mailbox(oldName)
	if mb == nil {
		return noMailbox()
	}
	if s.user.mailbox(newName) != nil {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "Mailbox already exists"}
	}
	if mb.name == "INBOX" {
		// RFC 3501 §6.3.5: renaming INBOX moves its messages and leaves it empty.
		delete(s.user.mailboxes, "INBOX")
		mb.name = canonicalMailbox(newName)
		s.user.mailboxes[mb.name] = mb
		srv.newMailboxLocked(s.user, "INBOX")
		return nil
	}
	delete(s.user.mailboxes, mb.name)
	mb.name = canonicalMailbox(newName)
	s.user.mailboxes[mb.name] = mb
	return nil
}

func (s *session) Subscribe(name string) error   { return s.subscribe(name, true) }
func (s *session) Unsubscribe(name string) error { return s.subscribe(name, false) }

func (s *session) subscribe(name string, on bool) error {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	mb := s.user.mailbox(name)
	if mb == nil {
		return noMailbox()
	}
	mb.subscribed = on
	return nil
}

func (s *session) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	srv := s.srv
	srv.mu.Lock()
	if len(patterns) == 0 {
		srv.mu.Unlock()
		return w.WriteList(&imap.ListData{Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}, Delim: mailboxDelim})
	}
	var l []imap.ListData
	for name, mb := range s.user.mailboxes {
		match := false
		for _, p := range patterns {
			if imapserver.MatchList(name, mailboxDelim, ref, p) {
				match = true
				break
			}
		}
		if !match || (options.SelectSubscribed && !mb.subscribed) {
			continue
		}
		d := imap.ListData{Mailbox: name, Delim: mailboxDelim}
		if mb.subscribed && options.SelectSubscribed {
			d.Attrs = append(d.Attrs, imap.MailboxAttrSubscribed)
		}
		l = append(l, d)
	}
	srv.mu.Unlock()
	sort.Slice(l, func(i, j int) bool { return l[i].Mailbox < l[j].Mailbox })
	for i := range l {
		if err := w.WriteList(&l[i]); err != nil {
			return err
		}
	}
	return nil
}

func (s *session) Namespace() (*imap.NamespaceData, error) {
	return &imap.NamespaceData{Personal: []imap.NamespaceDescriptor{{Prefix: "INBOX.", Delim: mailboxDelim}}}, nil
}

func (s *session) Status(name string, options *imap.StatusOptions) (*imap.StatusData, error) {
	srv := s.srv
	srv.mu.Lock()
	defer srv.mu.Unlock()
	mb := s.user.mailbox(name)
	if mb == nil {
		return nil, noMailbox()
	}
	d := &imap.StatusData{Mailbox: mb.name}
	n := uint32(len(mb.msgs))
	if options.NumMessages {
		d.NumMessages = &n
	}
	if options.UIDNext {
		d.UIDNext = mb.uidNext
	}
	if options.UIDValidity {
		d.UIDValidity = mb.uidValidity
	}
	if options.NumRecent {
		var zero uint32
		d.NumRecent = &zero
	}
	var unseen, deleted uint32
	var size int64
	for _, msg := range mb.msgs {
		fs := srv.trueFlagsLocked(mb, msg)
		if !fs.has(imap.FlagSeen) {
			unseen++
		}
		if fs.has(imap.FlagDeleted) {
			deleted++
		}
		size += int64(len(msg.buf))
	}
	if options.NumUnseen {
		d.NumUnseen = &unseen
	}
	if options.NumDeleted {
		d.NumDeleted = &deleted
	}
	if options.Size {
		d.Size = &size
	}
	return d, nil
}

// maxAppend bounds APPEND; the simulator keeps messages in memory.
const maxAppend = 64 << 20

func (s *session) AppendLimit() uint32 { return maxAppend }

func (s *session) Append(name string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(r, maxAppend+1)); err != nil {
		return nil, err
	}
	if buf.Len() > maxAppend {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTooBig, Text: "Message too big"}
	}
	srv := s.srv
	srv.mu.Lock()
	mb := s.user.mailbox(name)
	srv.mu.Unlock()
	if mb == nil {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTryCreate, Text: "Mailbox does not exist"}
	}
	t := options.Time
	if t.IsZero() {
		t = time.Now()
	}
	uid := srv.deliver(mb, buf.Bytes(), options.Flags, t, s.id)
	return &imap.AppendData{UIDValidity: mb.uidValidity, UID: uid}, nil
}

// Poll sends what changed since the session last looked: EXPUNGEs (only
// where allowExpunge, i.e. not after FETCH, STORE or SEARCH, RFC 3501
// §7.4.1 — unless EarlyExpunge), EXISTS and FETCH FLAGS.
func (s *session) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	srv := s.srv
	srv.mu.Lock()
	if s.mb == nil {
		srv.mu.Unlock()
		return nil
	}
	s.pushed = nil // a command ended: the client has read what was pushed
	var expunges []uint32
	if allowExpunge || srv.cfg.EarlyExpunge {
		expunges, _ = s.takeExpungesLocked()
	}
	var exists uint32
	if len(s.pendingNew) > 0 {
		s.view = append(s.view, s.pendingNew...)
		s.pendingNew = nil
		exists = uint32(len(s.view))
	}
	type flagUpdate struct {
		msgno uint32
		flags []imap.Flag
	}
	var updates []flagUpdate
	for uid := range s.pendingFlags {
		i := uidIndex(s.view, uid)
		msg := s.mb.lookup(uid)
		if i < 0 || msg == nil {
			continue
		}
		updates = append(updates, flagUpdate{uint32(i) + 1, s.flagsLocked(msg).list()})
	}
	s.pendingFlags = nil
	srv.mu.Unlock()

	sort.Slice(updates, func(i, j int) bool { return updates[i].msgno < updates[j].msgno })
	if allowExpunge {
		for _, n := range expunges {
			if err := w.WriteExpunge(n); err != nil {
				return err
			}
		}
	} else if err := s.writeExpunges(expunges); err != nil {
		return err
	}
	if exists != 0 {
		if err := w.WriteNumMessages(exists); err != nil {
			return err
		}
	}
	for _, u := range updates {
		if err := w.WriteMessageFlags(u.msgno, 0, u.flags); err != nil {
			return err
		}
	}
	return nil
}

// takeExpungesLocked removes the pending expunges from the view and returns
// their message numbers, in the order they must be sent, and their UIDs.
func (s *session) takeExpungesLocked() (nums []uint32, uids []imap.UID) {
	for _, uid := range s.pendingExpunge {
		if i := uidIndex(s.view, uid); i >= 0 {
			nums = append(nums, uint32(i)+1)
			uids = append(uids, uid)
			s.view = append(s.view[:i], s.view[i+1:]...)
		}
	}
	s.pendingExpunge = nil
	return nums, uids
}

// toldLocked is the numbering the client's current command was written
// against: the view, plus what was pushed while it was on its way.
func (s *session) toldLocked() []imap.UID {
	if len(s.pushed) == 0 {
		return s.view
	}
	told := append(append([]imap.UID(nil), s.view...), s.pushed...)
	sort.Slice(told, func(i, j int) bool { return told[i] < told[j] })
	return told
}

// writeExpunges sends EXPUNGE responses where imapserver would refuse to:
// the EarlyExpunge fault. imapserver flushes after every response line, so
// between two responses nothing of its own is buffered.
func (s *session) writeExpunges(nums []uint32) error {
	if len(nums) == 0 || s.wire == nil {
		return nil
	}
	var b strings.Builder
	for _, n := range nums {
		fmt.Fprintf(&b, "* %d EXPUNGE\r\n", n)
	}
	return s.wire.writeRaw([]byte(b.String()))
}

// earlyExpunge is EarlyExpunge's index check inside a command: announce
// the pending expunges now and renumber.
func (s *session) earlyExpunge() error {
	s.srv.mu.Lock()
	nums, _ := s.takeExpungesLocked()
	s.srv.mu.Unlock()
	return s.writeExpunges(nums)
}

func (s *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	for {
		if err := s.Poll(w, true); err != nil {
			return err
		}
		select {
		case <-s.notify:
		case <-stop:
			return nil
		case <-s.srv.done:
			return nil
		}
	}
}

func (s *session) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	srv := s.srv
	srv.mu.Lock()
	if s.readOnly {
		srv.mu.Unlock()
		return nil // RFC 3501 §6.4.2: CLOSE on a read-only mailbox expunges nothing
	}
	removed := srv.expungeLocked(s.mb, func(msg *message) bool {
		return msg.flags.has(imap.FlagDeleted) && (uids == nil || uids.Contains(msg.uid))
	}, s)
	var nums []uint32
	for _, uid := range removed {
		if i := uidIndex(s.pendingNew, uid); i >= 0 {
			s.pendingNew = append(s.pendingNew[:i], s.pendingNew[i+1:]...)
			continue
		}
		if i := uidIndex(s.view, uid); i >= 0 {
			nums = append(nums, uint32(i)+1)
			s.view = append(s.view[:i], s.view[i+1:]...)
		}
	}
	srv.mu.Unlock()
	for _, n := range nums {
		if err := w.WriteExpunge(n); err != nil {
			return err
		}
	}
	return nil
}
