package rules

import "strings"

// Serialization is the policy for which commands of different sessions
// must reach a backend one after another.
type Serialization struct {
	// SelectTakesSeen: SELECT, EXAMINE, CLOSE, UNSELECT and LOGOUT take the
	// user's seen key, for backends that write session-cached \Seen state
	// back at those points with an unlocked read-modify-write (Cyrus 2.3).
	SelectTakesSeen bool
}

// LockRequest describes one command for LockKeys.
type LockRequest struct {
	Backend string
	User    string
	// Command is the command name, upper case ("STORE", "FETCH", ...);
	// UID tells its UID form.
	Command string
	UID     bool
	// Selected is the canonical selected mailbox, "" if none; ReadWrite
	// is false for EXAMINE or a [READ-ONLY] selection.
	Selected  string
	ReadWrite bool
	// Target is the canonical destination of APPEND, COPY and MOVE, or the
	// mailbox of SELECT/EXAMINE.
	Target string
	// TouchesSeen: a STORE whose flags name \Seen, or a FETCH of a body
	// part without .PEEK (which sets \Seen, RFC 9051 §6.4.5).
	TouchesSeen bool
}

// MailboxKey and SeenKey name the lock keys.
func MailboxKey(backend, canonical string) string { return "mailbox:" + backend + "/" + canonical }
func SeenKey(backend, user string) string         { return "seen:" + backend + "/" + user }

// LockKeys returns the keys a command must hold while the backend runs
// it; nil for reads (PEEK fetches, SEARCH, STATUS, LIST...), which never
// wait.
func (p Serialization) LockKeys(r LockRequest) []string {
	var keys []string
	mbox := func(name string) {
		if name != "" {
			keys = append(keys, MailboxKey(r.Backend, name))
		}
	}
	seen := func() { keys = append(keys, SeenKey(r.Backend, r.User)) }
	switch strings.ToUpper(r.Command) {
	case "STORE":
		if r.Selected != "" {
			mbox(r.Selected)
			if r.TouchesSeen {
				seen()
			}
		}
	case "FETCH":
		// A non-PEEK body fetch writes \Seen on a read-write selection.
		if r.TouchesSeen && r.ReadWrite && r.Selected != "" {
			mbox(r.Selected)
			seen()
		}
	case "EXPUNGE":
		if r.ReadWrite {
			mbox(r.Selected)
		}
	case "CLOSE":
		if r.ReadWrite {
			mbox(r.Selected) // CLOSE expunges (RFC 9051 §6.4.1)
		}
		if p.SelectTakesSeen {
			seen()
		}
	case "APPEND":
		mbox(r.Target)
	case "COPY":
		mbox(r.Target)
	case "MOVE":
		mbox(r.Selected)
		mbox(r.Target)
	case "SELECT", "EXAMINE", "UNSELECT", "LOGOUT":
		if p.SelectTakesSeen {
			seen()
		}
	}
	return keys
}
