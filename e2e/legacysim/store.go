package legacysim

import (
	"bufio"
	"bytes"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// The store: users own mailboxes, mailboxes own an index (msgs, sorted by
// UID) and the owner's seen record. Everything here is guarded by Server.mu.

const mailboxDelim = '.' // Cyrus' default hierarchy separator

type user struct {
	name, pass string
	mailboxes  map[string]*mailbox // by canonical name
}

type mailbox struct {
	user        *user
	name        string
	uidValidity uint32
	uidNext     imap.UID
	subscribed  bool
	msgs        []*message // the live index, ascending UIDs

	// seen is the owner's seen record (Cyrus 2.3's user.seen), used for
	// \Seen when Config.SessionSeen is on; otherwise \Seen is an index flag.
	seen map[imap.UID]struct{}

	// views are the sessions that have this mailbox selected.
	views map[*session]struct{}
}

type message struct {
	uid   imap.UID
	buf   []byte // immutable
	t     time.Time
	msgID string
	flags flagSet
}

// flagSet maps a flag's lower-case form to its canonical spelling (flags are
// case-insensitive, RFC 3501 §2.3.2).
type flagSet map[string]imap.Flag

var systemFlags = []imap.Flag{imap.FlagAnswered, imap.FlagFlagged, imap.FlagDeleted, imap.FlagSeen, imap.FlagDraft}

func canonicalFlag(f imap.Flag) imap.Flag {
	for _, sf := range systemFlags {
		if strings.EqualFold(string(sf), string(f)) {
			return sf
		}
	}
	return f
}

func flagKey(f imap.Flag) string { return strings.ToLower(string(f)) }

func newFlagSet(flags []imap.Flag) flagSet {
	fs := make(flagSet, len(flags))
	for _, f := range flags {
		fs.add(f)
	}
	return fs
}

func (fs flagSet) add(f imap.Flag)      { fs[flagKey(f)] = canonicalFlag(f) }
func (fs flagSet) del(f imap.Flag)      { delete(fs, flagKey(f)) }
func (fs flagSet) has(f imap.Flag) bool { _, ok := fs[flagKey(f)]; return ok }

func (fs flagSet) clone() flagSet {
	c := make(flagSet, len(fs))
	for k, v := range fs {
		c[k] = v
	}
	return c
}

func (fs flagSet) equal(o flagSet) bool {
	if len(fs) != len(o) {
		return false
	}
	for k := range fs {
		if _, ok := o[k]; !ok {
			return false
		}
	}
	return true
}

// list returns the flags sorted, for stable output.
func (fs flagSet) list() []imap.Flag {
	l := make([]imap.Flag, 0, len(fs))
	for _, f := range fs {
		l = append(l, f)
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l
}

// apply performs a STORE operation on fs.
func (fs flagSet) apply(op imap.StoreFlagsOp, flags []imap.Flag) {
	switch op {
	case imap.StoreFlagsSet:
		for k := range fs {
			delete(fs, k)
		}
		fallthrough
	case imap.StoreFlagsAdd:
		for _, f := range flags {
			fs.add(f)
		}
	case imap.StoreFlagsDel:
		for _, f := range flags {
			fs.del(f)
		}
	}
}

func canonicalMailbox(name string) string {
	if strings.EqualFold(name, "INBOX") {
		return "INBOX"
	}
	return name
}

func (u *user) mailbox(name string) *mailbox {
	return u.mailboxes[canonicalMailbox(name)]
}

func messageID(buf []byte) string {
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(buf)))
	if err != nil {
		return ""
	}
	mh := mail.Header{Header: gomessage.Header{Header: h}}
	id, _ := mh.MessageID()
	return id
}

// index returns the position of uid in the live index, or -1.
func (mb *mailbox) index(uid imap.UID) int {
	i := sort.Search(len(mb.msgs), func(i int) bool { return mb.msgs[i].uid >= uid })
	if i < len(mb.msgs) && mb.msgs[i].uid == uid {
		return i
	}
	return -1
}

func (mb *mailbox) lookup(uid imap.UID) *message {
	if i := mb.index(uid); i >= 0 {
		return mb.msgs[i]
	}
	return nil
}

// uidIndex returns the position of uid in the ascending list l, or -1.
func uidIndex(l []imap.UID, uid imap.UID) int {
	i := sort.Search(len(l), func(i int) bool { return l[i] >= uid })
	if i < len(l) && l[i] == uid {
		return i
	}
	return -1
}
