package scenarios

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"

	"uidgate/e2e/legacysim"
)

// Real-server mode (Common.Sim nil): no simulator to ask, so a checker
// session of the same user, connected to the server itself (Common.CheckAddr),
// empties the round's mailbox and seeds it by APPEND, and after the round
// reads the truth with EXAMINE and one
// UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]).
// Every message carries a unique Message-ID, so a body a client got back
// and a line of the truth both name their message; the sessions record what
// they meant by those identities, never by the server's numbers.

// truthMsg is one message of the mailbox as the checker read it.
type truthMsg struct {
	uid   uint32
	id    string // Message-ID without angle brackets
	flags []string
}

func (m truthMsg) has(flag string) bool {
	return slices.ContainsFunc(m.flags, func(f string) bool { return strings.EqualFold(f, flag) })
}

// seed is a message the checker appends at the start of a round.
type seed struct {
	body []byte
	seen bool
}

// checker is the session that owns the ground truth in real-server mode.
type checker struct {
	c       *client
	mailbox string
}

func dialChecker(ctx context.Context, cfg *Common) (*checker, error) {
	c, err := dialClient(ctx, cfg.Dial, cfg.CheckAddr, cfg.User, cfg.Password)
	if err != nil {
		return nil, fmt.Errorf("checker: %w", err)
	}
	return &checker{c: c, mailbox: cfg.Mailbox}, nil
}

func (k *checker) close() {
	if k != nil {
		k.c.close()
	}
}

// seeds are msgs as the checker appends them.
func seeds(msgs []legacysim.NewMessage) []seed {
	out := make([]seed, len(msgs))
	for i, m := range msgs {
		out[i] = seed{body: m.Body, seen: slices.Contains(m.Flags, imap.FlagSeen)}
	}
	return out
}

// reset expunges every message of the mailbox and appends msgs. The
// sessions have closed the mailbox by then, so they see only the new
// messages when they select it again.
func (k *checker) reset(ctx context.Context, msgs []seed) error {
	if _, err := k.c.cmd(ctx, "SELECT %s", quote(k.mailbox)); err != nil {
		return fmt.Errorf("checker: %w", err)
	}
	rs, err := k.c.cmd(ctx, "UID SEARCH ALL")
	if err != nil {
		return fmt.Errorf("checker: %w", err)
	}
	if uids := searchNums(rs); len(uids) > 0 {
		set := make([]string, len(uids))
		for i, u := range uids {
			set[i] = strconv.FormatUint(uint64(u), 10)
		}
		if _, err := k.c.cmd(ctx, "UID STORE %s +FLAGS.SILENT (\\Deleted)", strings.Join(set, ",")); err != nil {
			return fmt.Errorf("checker: %w", err)
		}
	}
	// CLOSE expunges what is \Deleted (RFC 3501 §6.4.2).
	if _, err := k.c.cmd(ctx, "CLOSE"); err != nil {
		return fmt.Errorf("checker: %w", err)
	}
	for _, m := range msgs {
		flags := "()"
		if m.seen {
			flags = "(\\Seen)"
		}
		if _, err := k.c.cmdLiteral(ctx, m.body, "APPEND %s %s", quote(k.mailbox), flags); err != nil {
			return fmt.Errorf("checker: %w", err)
		}
	}
	return nil
}

// truth reads every message of the mailbox, in UID order, read-only
// (EXAMINE: RFC 3501 §6.3.2, and BODY.PEEK: no \Seen is set by looking).
func (k *checker) truth(ctx context.Context) ([]truthMsg, error) {
	if _, err := k.c.cmd(ctx, "EXAMINE %s", quote(k.mailbox)); err != nil {
		return nil, fmt.Errorf("checker: %w", err)
	}
	var msgs []truthMsg
	if k.c.exists > 0 {
		rs, err := k.c.cmd(ctx, "UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
		if err != nil {
			return nil, fmt.Errorf("checker: %w", err)
		}
		for _, r := range rs {
			if !isFetch(r.line) {
				continue
			}
			m := truthMsg{uid: fetchUID(r.line), flags: fetchFlags(r.line), id: bodyID(r.lits)}
			if m.uid == 0 || m.id == "" {
				return nil, fmt.Errorf("checker: unreadable FETCH answer %q", r.line)
			}
			msgs = append(msgs, m)
		}
		slices.SortFunc(msgs, func(a, b truthMsg) int { return int(a.uid) - int(b.uid) })
		msgs = slices.CompactFunc(msgs, func(a, b truthMsg) bool { return a.uid == b.uid })
	}
	if _, err := k.c.cmd(ctx, "CLOSE"); err != nil {
		return nil, fmt.Errorf("checker: %w", err)
	}
	return msgs, nil
}

var (
	fetchRe    = regexp.MustCompile(`(?i)^\* \d+ FETCH `)
	uidRe      = regexp.MustCompile(`(?i)[( ]UID (\d+)`)
	flagsRe    = regexp.MustCompile(`(?i)[( ]FLAGS \(([^)]*)\)`)
	msgIDRe    = regexp.MustCompile(`(?i)(?:^|\n)Message-ID:[ \t]*<([^>\r\n]+)>`)
	roundIDsRe = regexp.MustCompile(`^[ab]-?\d+\.`)
)

func isFetch(line string) bool { return fetchRe.MatchString(line) }

func fetchUID(line string) uint32 {
	m := uidRe.FindStringSubmatch(line)
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseUint(m[1], 10, 32)
	return uint32(n)
}

func fetchFlags(line string) []string {
	m := flagsRe.FindStringSubmatch(line)
	if m == nil {
		return nil
	}
	return strings.Fields(m[1])
}

// bodyID is the Message-ID of the first literal that has one: the message
// a body or header fetch returned.
func bodyID(lits [][]byte) string {
	for _, l := range lits {
		if m := msgIDRe.FindSubmatch(l); m != nil {
			return string(m[1])
		}
	}
	return ""
}

// fetchedID is the identity of the message whose body a FETCH answered
// with, or "" if none came back.
func fetchedID(rs []response) string {
	for _, r := range rs {
		if isFetch(r.line) {
			if id := bodyID(r.lits); id != "" {
				return id
			}
		}
	}
	return ""
}

// verdictA counts scenario A's damage in real-server mode from the final
// state: ids are the round's seeded messages, chosen those a session named
// for \Deleted (session 1's target and session 2's victims). A message is
// wrongly written if it is gone or carries \Deleted without having been
// chosen; a chosen message still there is missed (one already expunged by
// the other session is a legitimate no-op, not a miss). A write that landed
// on a message expunged anyway leaves no trace here (the simulator mode
// sees it in its write log); on a real server it cannot happen, as the
// victims are gone from the index before session 1's STORE.
func verdictA(truth []truthMsg, ids []string, chosen map[string]bool, round int, res *Result) {
	alive := map[string]truthMsg{}
	for _, m := range truth {
		alive[m.id] = m
	}
	for _, id := range ids {
		m, ok := alive[id]
		switch {
		case !ok && !chosen[id], ok && !chosen[id] && m.has(`\Deleted`):
			res.WrongWrites++
			res.fault(round, id, fmt.Sprintf("not chosen, but expunged or \\Deleted (flags %v)", m.flags))
		case ok && chosen[id]:
			res.Missed++
			res.fault(round, id, fmt.Sprintf("chosen, still there (flags %v)", m.flags))
		}
	}
}

// verdictB counts scenario B's damage in real-server mode: want holds the
// identities that must be \Seen (seeded \Seen, bodies fetched, messages a
// STORE named), stores the message numbers of the STOREs, resolved here
// against the final mailbox (nothing is expunged during a round of B, so a
// number names the same message in every session's view).
func verdictB(truth []truthMsg, want map[string]bool, stores []uint32, round int, res *Result) error {
	for _, n := range stores {
		if n == 0 || int(n) > len(truth) {
			return fmt.Errorf("message %d marked, but the mailbox has %d", n, len(truth))
		}
		want[truth[n-1].id] = true
	}
	for _, m := range truth {
		if !roundIDsRe.MatchString(m.id) {
			return fmt.Errorf("message %q in the mailbox is not the scenario's", m.id)
		}
		seen := m.has(`\Seen`)
		switch {
		case want[m.id] && !seen:
			res.LostSeen++
			res.fault(round, m.id, fmt.Sprintf("marked \\Seen, not \\Seen (UID %d, flags %v)", m.uid, m.flags))
		case !want[m.id] && seen:
			res.SpuriousSeen++
			res.fault(round, m.id, fmt.Sprintf("nobody marked it, \\Seen (UID %d, flags %v)", m.uid, m.flags))
		}
	}
	return nil
}

func (r *Result) fault(round int, id, what string) {
	if r.FirstFault == "" {
		r.FirstFault = fmt.Sprintf("round %d, <%s>: %s", round, id, what)
	}
}
