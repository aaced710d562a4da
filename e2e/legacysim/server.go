package legacysim

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/rs/zerolog"
)

// ErrServerClosed is returned by Serve and ServeLMTP after Close.
var ErrServerClosed = errors.New("legacysim: server closed")

// maxWriteLog bounds the write log; older records are dropped first.
const maxWriteLog = 1 << 20

// Server is a legacy IMAP server simulator. Create it with New; it serves
// IMAP on every listener given to Serve and LMTP on those given to ServeLMTP
// until Close.
type Server struct {
	cfg  Config
	log  zerolog.Logger
	imap *imapserver.Server

	mu              sync.Mutex // guards the store, the sessions and the logs
	users           map[string]*user
	writes          []WriteRecord
	writeSeq        uint64
	nextSession     uint64
	nextUIDValidity uint32
	watchers        map[chan Event]struct{}
	conns           map[net.Conn]struct{} // IMAP and LMTP connections
	lmtpListeners   map[net.Listener]struct{}
	closed          bool

	rngMu sync.Mutex
	rng   *rand.Rand

	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup // Serve loops, IMAP sessions, LMTP loops and connections
}

// New returns a simulator with cfg's faults and users. Every user starts with
// an empty INBOX.
func New(cfg Config) *Server {
	log := zerolog.Nop()
	if cfg.Logger != nil {
		log = *cfg.Logger
	}
	s := &Server{
		cfg:             cfg,
		log:             log,
		users:           make(map[string]*user),
		watchers:        make(map[chan Event]struct{}),
		conns:           make(map[net.Conn]struct{}),
		lmtpListeners:   make(map[net.Listener]struct{}),
		nextUIDValidity: uint32(time.Date(2008, 1, 1, 0, 0, 0, 0, time.UTC).Unix()),
		rng:             rand.New(rand.NewPCG(uint64(cfg.Seed), 0x6c65676163797369)),
		done:            make(chan struct{}),
	}
	names := make([]string, 0, len(cfg.Users))
	for name := range cfg.Users {
		names = append(names, name)
	}
	sort.Strings(names) // deterministic UIDVALIDITYs
	for _, name := range names {
		s.addUserLocked(name, cfg.Users[name])
	}
	s.imap = imapserver.New(&imapserver.Options{
		NewSession: s.newSession,
		// What a Cyrus 2.3 server advertised, as far as imapserver supports
		// it; imapserver adds ENABLE, UTF8=ACCEPT, SASL-IR and LITERAL-.
		Caps: imap.CapSet{
			imap.CapIMAP4rev1:   {},
			imap.CapLiteralPlus: {},
			imap.CapUIDPlus:     {},
			imap.CapNamespace:   {},
			imap.CapIdle:        {},
			imap.CapUnselect:    {},
		},
		Logger:       imapLogger{&s.log},
		InsecureAuth: true, // loopback test server, no TLS
	})
	return s
}

// Config returns the configuration the server was created with.
func (s *Server) Config() Config { return s.cfg }

type imapLogger struct{ log *zerolog.Logger }

func (l imapLogger) Printf(format string, args ...any) { l.log.Debug().Msgf(format, args...) }

// Serve accepts IMAP connections on ln until Close, which closes ln. It
// returns ErrServerClosed after Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	err := s.imap.Serve(&listener{Listener: ln, srv: s})
	select {
	case <-s.done:
		return ErrServerClosed
	default:
		return err
	}
}

// listener wraps every accepted connection in a wireConn (for XGROUNDTRUTH
// and for writes the imapserver API does not allow) and counts it, so that
// Close can wait for its session to end.
type listener struct {
	net.Listener
	srv *Server
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	s := l.srv
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return nil, net.ErrClosed
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1) // released by session.Close
	s.mu.Unlock()
	return newWireConn(c, s), nil
}

// Close stops every listener, ends every connection and waits for their
// goroutines. It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		close(s.done)
		for ln := range s.lmtpListeners {
			ln.Close()
		}
		s.mu.Unlock()
		s.imap.Close() // closes the IMAP listeners and waits for their loops
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
		s.mu.Lock()
		for ch := range s.watchers {
			delete(s.watchers, ch)
			close(ch)
		}
		s.mu.Unlock()
	})
	return nil
}

func (s *Server) forgetConn(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// AddUser adds a user with an empty INBOX, or changes an existing user's
// password.
func (s *Server) AddUser(name, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addUserLocked(name, password)
}

func (s *Server) addUserLocked(name, pass string) *user {
	if u := s.users[name]; u != nil {
		u.pass = pass
		return u
	}
	u := &user{name: name, pass: pass, mailboxes: make(map[string]*mailbox)}
	s.users[name] = u
	s.newMailboxLocked(u, "INBOX")
	return u
}

func (s *Server) checkLogin(name, pass string) *user {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[name]
	if u == nil || subtle.ConstantTimeCompare([]byte(pass), []byte(u.pass)) != 1 {
		return nil
	}
	return u
}

func (s *Server) newMailboxLocked(u *user, name string) *mailbox {
	s.nextUIDValidity++
	mb := &mailbox{
		user:        u,
		name:        canonicalMailbox(name),
		uidValidity: s.nextUIDValidity,
		uidNext:     1,
		seen:        make(map[imap.UID]struct{}),
		views:       make(map[*session]struct{}),
	}
	u.mailboxes[mb.name] = mb
	return mb
}

func (s *Server) mailboxLocked(userName, mailboxName string) (*mailbox, error) {
	u := s.users[userName]
	if u == nil {
		return nil, fmt.Errorf("legacysim: no user %q", userName)
	}
	mb := u.mailbox(mailboxName)
	if mb == nil {
		return nil, fmt.Errorf("legacysim: user %q has no mailbox %q", userName, mailboxName)
	}
	return mb, nil
}

// NewMessage is a message for ResetMailbox.
type NewMessage struct {
	Body  []byte      // RFC 5322 message, CRLF line endings
	Flags []imap.Flag // initial flags; \Seen goes to the seen record when Config.SessionSeen
	Date  time.Time   // internal date; zero means a fixed date
}

// ResetMailbox replaces user's mailbox (created if missing) with a new one
// holding msgs, atomically and outside every fault. The new mailbox has a new
// UIDVALIDITY and UIDs from 1; it returns them in order. Sessions that had the
// old mailbox selected keep the old copy until they select again.
func (s *Server) ResetMailbox(userName, mailboxName string, msgs []NewMessage) ([]imap.UID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[userName]
	if u == nil {
		return nil, fmt.Errorf("legacysim: no user %q", userName)
	}
	mb := s.newMailboxLocked(u, mailboxName)
	uids := make([]imap.UID, 0, len(msgs))
	for _, m := range msgs {
		t := m.Date
		if t.IsZero() {
			t = time.Date(2008, 1, 1, 0, 0, 0, 0, time.UTC)
		}
		msg := s.appendLocked(mb, m.Body, m.Flags, t)
		uids = append(uids, msg.uid)
	}
	return uids, nil
}

// Reset gives every user a single empty INBOX and clears the write log.
// Sessions keep what they had selected until they select again.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range s.users {
		u.mailboxes = make(map[string]*mailbox)
		s.newMailboxLocked(u, "INBOX")
	}
	s.writes = nil
}

// Deliver delivers msg to user's mailbox the way the LMTP listener does,
// through the same (with DeliveryRace, non-atomic) index rewrite, and returns
// the new message's UID.
func (s *Server) Deliver(userName, mailboxName string, msg []byte) (imap.UID, error) {
	s.mu.Lock()
	mb, err := s.mailboxLocked(userName, mailboxName)
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return s.deliver(mb, msg, nil, time.Now(), 0), nil
}

// MessageInfo is the ground truth about one message.
type MessageInfo struct {
	UID       imap.UID
	MessageID string      // without angle brackets
	Flags     []imap.Flag // index flags, plus \Seen from the seen record when Config.SessionSeen
}

// Seen reports whether the message is \Seen.
func (m MessageInfo) Seen() bool {
	for _, f := range m.Flags {
		if f == imap.FlagSeen {
			return true
		}
	}
	return false
}

// Messages returns the ground truth of user's mailbox, in UID order.
func (s *Server) Messages(userName, mailboxName string) ([]MessageInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb, err := s.mailboxLocked(userName, mailboxName)
	if err != nil {
		return nil, err
	}
	l := make([]MessageInfo, 0, len(mb.msgs))
	for _, msg := range mb.msgs {
		l = append(l, MessageInfo{UID: msg.uid, MessageID: msg.msgID, Flags: s.trueFlagsLocked(mb, msg).list()})
	}
	return l, nil
}

// SeenRecord returns the UIDs of user's mailbox that are \Seen for the owner:
// the seen record when Config.SessionSeen, else the index's \Seen flags.
func (s *Server) SeenRecord(userName, mailboxName string) (imap.UIDSet, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb, err := s.mailboxLocked(userName, mailboxName)
	if err != nil {
		return nil, err
	}
	var set imap.UIDSet
	for _, msg := range mb.msgs {
		if s.trueFlagsLocked(mb, msg).has(imap.FlagSeen) {
			set.AddNum(msg.uid)
		}
	}
	return set, nil
}

// trueFlagsLocked is the authoritative flag set of msg.
func (s *Server) trueFlagsLocked(mb *mailbox, msg *message) flagSet {
	fs := msg.flags.clone()
	if s.cfg.SessionSeen {
		if _, ok := mb.seen[msg.uid]; ok {
			fs.add(imap.FlagSeen)
		}
	}
	return fs
}

// WriteOp is the kind of a recorded write.
type WriteOp string

// Recorded writes.
const (
	OpStore        WriteOp = "STORE"           // flags set by STORE / UID STORE
	OpImplicitSeen WriteOp = "FETCH-SEEN"      // \Seen set by a non-PEEK body fetch
	OpCopy         WriteOp = "COPY"            // message copied by COPY / UID COPY
	OpExpunge      WriteOp = "EXPUNGE"         // message removed by EXPUNGE, UID EXPUNGE or CLOSE
	OpSeenSync     WriteOp = "SEEN-SYNC"       // \Seen set by a seen write-back's open-ended trailing run (DeliveryRace)
	OpRewrite      WriteOp = "INDEX-REWRITE"   // flags reverted by a delivery's non-atomic index rewrite (DeliveryRace)
	OpSeenLost     WriteOp = "SEEN-WRITE-BACK" // a seen write-back overwrote another session's \Seen change (SessionSeen)
)

// WriteRecord is one write to a message, as the simulator performed it.
type WriteRecord struct {
	Seq     uint64 // increasing; see WriteSeq
	Session uint64 // 0 for writes no session asked for (deliveries)
	User    string
	Mailbox string
	Op      WriteOp
	StoreOp imap.StoreFlagsOp // for OpStore
	Flags   []imap.Flag       // for OpStore, OpImplicitSeen, OpSeenSync, OpRewrite (the flags written)
	Kind    imapserver.NumKind
	Num     uint32   // the message number or UID the client sent; 0 if none
	UID     imap.UID // the message written
	// Intended is the message Num named in the session's own view, which a
	// correct server would have written (for UID commands, the UID itself);
	// 0 if it named none (already expunged, or no number was sent). EXPUNGEs
	// that EarlyExpunge pushed between commands are taken as not yet read
	// when the next command was sent.
	Intended imap.UID
}

// Wrong reports whether the write landed on a message the client did not
// name: every OpSeenSync, OpRewrite and OpSeenLost write, and any STORE,
// FETCH or COPY that StaleMsgno or EarlyExpunge redirected.
func (w WriteRecord) Wrong() bool { return w.UID != w.Intended }

// WriteSeq returns the Seq of the latest write record (0 if none yet); pass
// it to Writes to get only later writes.
func (s *Server) WriteSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeSeq
}

// Writes returns the write records with Seq > since, oldest first.
func (s *Server) Writes(since uint64) []WriteRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.writes), func(i int) bool { return s.writes[i].Seq > since })
	return append([]WriteRecord(nil), s.writes[i:]...)
}

func (s *Server) recordLocked(w WriteRecord) {
	s.writeSeq++
	w.Seq = s.writeSeq
	if len(s.writes) >= maxWriteLog {
		s.writes = append(s.writes[:0], s.writes[len(s.writes)/2:]...)
	}
	s.writes = append(s.writes, w)
}

// WindowKind names a fault window.
type WindowKind string

// Fault windows.
const (
	WindowDelivery     WindowKind = "delivery"      // between a delivery's index read and its write-back
	WindowSeenFlush    WindowKind = "seen-flush"    // between a seen write-back's read and its write
	WindowEarlyExpunge WindowKind = "early-expunge" // inside a FETCH/STORE response, before an early EXPUNGE check
)

// Event reports that a fault window opened.
type Event struct {
	Kind     WindowKind
	User     string
	Mailbox  string
	Session  uint64 // 0 for deliveries
	Duration time.Duration
}

// Watch returns a channel that receives an Event whenever a fault window
// opens, and a function that stops the watch. Events are dropped when the
// channel (with room for 64) is full. The channel is closed by stop or Close.
func (s *Server) Watch() (<-chan Event, func()) {
	ch := make(chan Event, 64)
	s.mu.Lock()
	if s.closed {
		close(ch)
	} else {
		s.watchers[ch] = struct{}{}
	}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		if _, ok := s.watchers[ch]; ok {
			delete(s.watchers, ch)
			close(ch)
		}
		s.mu.Unlock()
	}
}

// window holds a fault window open: it tells the watchers, then waits
// between half of and the whole race window (seeded jitter), or until Close.
// The caller must not hold s.mu.
func (s *Server) window(kind WindowKind, mb *mailbox, sess uint64) {
	max := s.cfg.raceWindow()
	var d time.Duration
	if max > 0 {
		s.rngMu.Lock()
		d = max/2 + time.Duration(s.rng.Int64N(int64(max/2)+1))
		s.rngMu.Unlock()
	}
	ev := Event{Kind: kind, Session: sess, Duration: d}
	s.mu.Lock()
	ev.User, ev.Mailbox = mb.user.name, mb.name
	for ch := range s.watchers {
		select {
		case ch <- ev:
		default:
		}
	}
	s.mu.Unlock()
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.done:
	}
}

// randIntN returns a seeded pseudo-random number in [0, n).
func (s *Server) randIntN(n int) int {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.IntN(n)
}

// appendLocked adds a message to the index at once and tells the sessions.
func (s *Server) appendLocked(mb *mailbox, buf []byte, flags []imap.Flag, t time.Time) *message {
	msg := &message{uid: mb.uidNext, buf: buf, t: t, msgID: messageID(buf), flags: newFlagSet(flags)}
	mb.uidNext++
	if s.cfg.SessionSeen && msg.flags.has(imap.FlagSeen) {
		msg.flags.del(imap.FlagSeen)
		mb.seen[msg.uid] = struct{}{}
	}
	mb.msgs = append(mb.msgs, msg)
	for v := range mb.views {
		v.pendingNew = append(v.pendingNew, msg.uid)
		v.wake()
	}
	return msg
}

// deliver adds a message as Cyrus 2.3's append did. Without DeliveryRace the
// index is updated atomically. With it, the index is read, the window is held
// open, and every record is written back as read, with the new message: a
// flag change another session made in the window is reverted.
func (s *Server) deliver(mb *mailbox, buf []byte, flags []imap.Flag, t time.Time, sess uint64) imap.UID {
	if !s.cfg.DeliveryRace {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.appendLocked(mb, buf, flags, t).uid
	}
	s.mu.Lock()
	snap := make(map[imap.UID]flagSet, len(mb.msgs))
	for _, msg := range mb.msgs {
		snap[msg.uid] = msg.flags.clone()
	}
	s.mu.Unlock()

	s.window(WindowDelivery, mb, sess)

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, msg := range mb.msgs {
		old, ok := snap[msg.uid]
		if !ok || old.equal(msg.flags) {
			continue
		}
		msg.flags = old
		s.recordLocked(WriteRecord{Session: sess, User: mb.user.name, Mailbox: mb.name, Op: OpRewrite,
			Flags: old.list(), UID: msg.uid})
		s.flagsChangedLocked(mb, msg, nil)
	}
	return s.appendLocked(mb, buf, flags, t).uid
}

// flagsChangedLocked queues an unsolicited FETCH FLAGS for every session
// that has mb selected, except src.
func (s *Server) flagsChangedLocked(mb *mailbox, msg *message, src *session) {
	for v := range mb.views {
		if v == src {
			continue
		}
		if v.pendingFlags == nil {
			v.pendingFlags = make(map[imap.UID]struct{})
		}
		v.pendingFlags[msg.uid] = struct{}{}
		v.wake()
	}
}

// expungeLocked removes the messages keep rejects from the index, records
// them and queues the EXPUNGEs for every other session. It returns the
// removed UIDs, ascending.
func (s *Server) expungeLocked(mb *mailbox, remove func(*message) bool, src *session) []imap.UID {
	var removed []imap.UID
	kept := mb.msgs[:0]
	for _, msg := range mb.msgs {
		if remove(msg) {
			removed = append(removed, msg.uid)
			continue
		}
		kept = append(kept, msg)
	}
	for i := len(kept); i < len(mb.msgs); i++ {
		mb.msgs[i] = nil
	}
	mb.msgs = kept
	if len(removed) == 0 {
		return nil
	}
	var sid uint64
	if src != nil {
		sid = src.id
	}
	for _, uid := range removed {
		delete(mb.seen, uid)
		s.recordLocked(WriteRecord{Session: sid, User: mb.user.name, Mailbox: mb.name, Op: OpExpunge,
			UID: uid, Intended: uid})
	}
	for v := range mb.views {
		if v == src {
			continue
		}
		for _, uid := range removed {
			if i := uidIndex(v.pendingNew, uid); i >= 0 {
				// Never announced: nothing to expunge.
				v.pendingNew = append(v.pendingNew[:i], v.pendingNew[i+1:]...)
				continue
			}
			if uidIndex(v.view, uid) >= 0 {
				v.pendingExpunge = append(v.pendingExpunge, uid)
			}
		}
		v.wake()
		if s.cfg.EarlyExpunge {
			v.pushWake()
		}
	}
	return removed
}
