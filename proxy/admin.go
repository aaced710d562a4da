package proxy

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"uidgate/proxy/locks"
	"uidgate/rules"
)

// The admin view: who is connected, what each session holds and waits
// for, and a kick that ends a session (admin_http.go serves them). It
// reads the sessions the Server tracks already; a session's own
// goroutines write what it shows through the hooks below, under locks of
// their own, so that reading it never races with the relay.

// sessionView is what a session shows the admin view, written by the
// session's hooks and read by Sessions.
type sessionView struct {
	// loginAttempts counts the logins tried on the connection (nginx's
	// Auth-Login-Attempt).
	loginAttempts atomic.Int32

	mu       sync.Mutex
	user     string
	backend  string
	loggedIn time.Time
	rs       *relayState
	gone     chan struct{} // closed by ended; made on demand
	isGone   bool
}

// loggedIn records a successful login (hook in session.login).
func (v *sessionView) setLogin(user, backend string) {
	v.mu.Lock()
	v.user, v.backend, v.loggedIn = user, backend, time.Now()
	v.mu.Unlock()
}

// setRelay records the relay's state (hook in session.relay).
func (v *sessionView) setRelay(rs *relayState) {
	v.mu.Lock()
	v.rs = rs
	v.mu.Unlock()
}

// ended records that the session is no longer tracked: its goroutines
// have returned and its locks are released (hook in Server.untrack).
func (v *sessionView) ended() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.isGone = true
	if v.gone != nil {
		close(v.gone)
	}
}

// goneCh returns a channel closed once the session has ended.
func (v *sessionView) goneCh() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.gone == nil {
		v.gone = make(chan struct{})
		if v.isGone {
			close(v.gone)
		}
	}
	return v.gone
}

// SessionInfo is one session as the admin view shows it.
type SessionInfo struct {
	ID       uint64    `json:"cid"`
	User     string    `json:"user,omitempty"`
	Client   string    `json:"client"`
	Listener string    `json:"listener"`
	Backend  string    `json:"backend,omitempty"`
	Since    time.Time `json:"connected_since"`
	// LoggedIn is zero before login.
	LoggedIn time.Time `json:"logged_in_since,omitzero"`
	// Selected is the selected mailbox as the client named it.
	Selected string `json:"selected,omitempty"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// InFlight are the commands sent to the backend and not yet answered,
	// in the order sent; uidgate's own are tagged "(uidgate)".
	InFlight []CommandInfo `json:"commands_in_flight"`
	// Holds and Waits are the lock keys its commands hold and wait for.
	Holds    []LockRef `json:"locks_held"`
	Waits    []LockRef `json:"locks_waited"`
	BytesIn  int64     `json:"bytes_in"`
	BytesOut int64     `json:"bytes_out"`
}

// CommandInfo is a command in flight.
type CommandInfo struct {
	Tag     string `json:"tag"`
	Command string `json:"command"`
	Mailbox string `json:"mailbox,omitempty"`
}

// LockRef is a lock key a session holds or waits for; Position is its
// place among the key's waiters (1 is next), 0 for a key held.
type LockRef struct {
	Key      string    `json:"key"`
	Command  string    `json:"command,omitempty"`
	Since    time.Time `json:"since"`
	Position int       `json:"position,omitempty"`
	Queued   bool      `json:"queued_in_etcd,omitempty"`
}

// LockSnapshot returns the lock manager's keys, holders and waiters; ok is false
// when the manager cannot show them (not a locks.Inspector).
func (s *Server) LockSnapshot() (locks.Snapshot, bool) {
	in, ok := s.locks().(locks.Inspector)
	if !ok {
		return locks.Snapshot{}, false
	}
	return in.Inspect(), true
}

// sessionList returns the tracked sessions, by id.
func (s *Server) sessionList() []*session {
	s.mu.Lock()
	out := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		out = append(out, ss)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b *session) int { return cmpUint(a.id, b.id) })
	return out
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Sessions returns every session served, by id, with the locks each holds
// and waits for.
func (s *Server) Sessions() []SessionInfo {
	snap, _ := s.LockSnapshot()
	holds := map[uint64][]LockRef{}
	waits := map[uint64][]LockRef{}
	for _, k := range snap.Keys {
		if k.Held && k.Holder.Session != 0 {
			holds[k.Holder.Session] = append(holds[k.Holder.Session],
				LockRef{Key: k.Key, Command: k.Holder.Command, Since: k.Holder.Since, Queued: k.Queued})
		}
		for i, w := range k.Waiters {
			waits[w.Session] = append(waits[w.Session],
				LockRef{Key: k.Key, Command: w.Command, Since: w.Since, Position: i + 1})
		}
	}
	list := s.sessionList()
	out := make([]SessionInfo, 0, len(list))
	for _, ss := range list {
		info := SessionInfo{
			ID: ss.id, Client: ss.remote, Listener: ss.lis.Name, Since: ss.start,
			BytesIn: ss.bytesIn.Load(), BytesOut: ss.bytesOut.Load(),
			Holds: holds[ss.id], Waits: waits[ss.id], InFlight: []CommandInfo{},
		}
		if info.Holds == nil {
			info.Holds = []LockRef{}
		}
		if info.Waits == nil {
			info.Waits = []LockRef{}
		}
		ss.view.mu.Lock()
		info.User, info.Backend, info.LoggedIn = ss.view.user, ss.view.backend, ss.view.loggedIn
		rs := ss.view.rs
		ss.view.mu.Unlock()
		if rs != nil {
			rs.mu.Lock()
			info.Selected, info.ReadOnly = rs.selected, rs.readOnly
			type inflight struct {
				seq uint64
				c   CommandInfo
			}
			var cmds []inflight
			for up, pc := range rs.tags {
				tag := up
				if pc.clientTag != "" {
					tag = pc.clientTag
				}
				name := kindName(pc.kind)
				if pc.inject != injectNone {
					name += " (uidgate)"
				}
				cmds = append(cmds, inflight{pc.seq, CommandInfo{Tag: tag, Command: name, Mailbox: pc.mailbox}})
			}
			rs.mu.Unlock()
			slices.SortFunc(cmds, func(a, b inflight) int { return cmpUint(a.seq, b.seq) })
			for _, c := range cmds {
				info.InFlight = append(info.InFlight, c.c)
			}
		}
		out = append(out, info)
	}
	return out
}

// kindName names a command kind for the admin view.
func kindName(k cmdKind) string {
	switch k {
	case cmdSelect:
		return "SELECT"
	case cmdExamine:
		return "EXAMINE"
	case cmdClose:
		return "CLOSE"
	case cmdUnselect:
		return "UNSELECT"
	case cmdIdle:
		return "IDLE"
	case cmdLogout:
		return "LOGOUT"
	case cmdFetch:
		return "FETCH"
	case cmdStore:
		return "STORE"
	case cmdCopy:
		return "COPY"
	case cmdMove:
		return "MOVE"
	case cmdSearch:
		return "SEARCH"
	case cmdSort:
		return "SORT"
	case cmdThread:
		return "THREAD"
	case cmdEnable:
		return "ENABLE"
	case cmdAppend:
		return "APPEND"
	case cmdExpunge:
		return "EXPUNGE"
	}
	return "other"
}

// lockOwner is who Inspect shows for the locks req takes.
func (ss *session) lockOwner(req rules.LockRequest) locks.Owner {
	cmd := strings.ToUpper(req.Command)
	if req.UID {
		cmd = "UID " + cmd
	}
	return locks.Owner{Session: ss.id, User: ss.user, Command: cmd}
}

// kickWait bounds how long Kick waits for a kicked session's BYE to go
// out (at a response boundary) before it closes the session outright.
const kickWait = 5 * time.Second

// Kick ends the sessions that match: the one with id cid if cid is not
// zero, else every session logged in as user (exactly as logged in).
// Each gets "* BYE" at the next response boundary and is closed; the
// locks its commands hold or wait for go back as when a client goes (a
// command already at the backend may still finish there). Kick returns
// the ids of the sessions ended, once they have ended or ctx is done.
func (s *Server) Kick(ctx context.Context, cid uint64, user string) []uint64 {
	var targets []*session
	for _, ss := range s.sessionList() {
		ss.view.mu.Lock()
		u := ss.view.user
		ss.view.mu.Unlock()
		if cid != 0 && ss.id == cid || cid == 0 && user != "" && u == user {
			targets = append(targets, ss)
		}
	}
	ids := make([]uint64, 0, len(targets))
	for _, ss := range targets {
		ids = append(ids, ss.id)
		gone := ss.view.goneCh()
		go func() {
			// Marked closing first, so that the relay takes the backend's
			// closing for uidgate's doing and answers no BYE of its own.
			if ss.closing.CompareAndSwap(false, true) {
				ss.log.Warn().Msg("kicked by an administrator")
				ss.bye("Disconnected by an administrator")
				return
			}
			ss.closeAll()
		}()
		t := time.NewTimer(kickWait)
		select {
		case <-gone:
		case <-t.C:
			// The BYE waits on a client that does not read: cut it off.
			ss.closeAll()
			select {
			case <-gone:
			case <-ctx.Done():
			}
		case <-ctx.Done():
		}
		t.Stop()
	}
	return ids
}
