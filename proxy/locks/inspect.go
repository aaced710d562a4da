package locks

import (
	"context"
	"slices"
	"strings"
	"time"
)

// Owner says who holds or waits for keys, for the admin view (Inspect):
// a session of this process and the command that needs them. Managers
// learn it from the context given to Acquire (WithOwner), or from
// TryAcquireAs; an unknown owner is the zero Owner.
type Owner struct {
	// Session is the session's id in this process (its log's cid).
	Session uint64 `json:"cid"`
	// User is the session's login name.
	User string `json:"user,omitempty"`
	// Command names the command that needs the keys: "STORE", "UID MOVE".
	Command string `json:"command,omitempty"`
}

type ownerKey struct{}

// WithOwner returns ctx carrying o, for Acquire.
func WithOwner(ctx context.Context, o Owner) context.Context {
	return context.WithValue(ctx, ownerKey{}, o)
}

// OwnerFrom returns the Owner ctx carries, or the zero Owner.
func OwnerFrom(ctx context.Context) Owner {
	o, _ := ctx.Value(ownerKey{}).(Owner)
	return o
}

// OwnedTryAcquirer is a TryAcquirer that records who took the keys.
type OwnedTryAcquirer interface {
	TryAcquireAs(owner Owner, keys []string) (release func(), ok bool)
}

var _ OwnedTryAcquirer = (*Memory)(nil)

// Holder is an owner and since when it has held (or waited for) a key.
type Holder struct {
	Owner
	Since time.Time `json:"since"`
}

// KeyState is one key: its holder, and the acquisitions waiting for it in
// the order they will get it (FIFO).
type KeyState struct {
	Key string `json:"key"`
	// Held is false only while a key passes from one holder to the next.
	Held   bool   `json:"held"`
	Holder Holder `json:"holder"`
	// Queued: the holder has the key in this process and waits for it in
	// the shared queue (etcd), behind another instance's holder.
	Queued  bool     `json:"queued,omitempty"`
	Waiters []Holder `json:"waiters"`
}

// Scopes of a Snapshot.
const (
	// ScopeProcess: the manager is this process's own; the snapshot shows
	// every holder and waiter there is.
	ScopeProcess = "process"
	// ScopeInstance: the keys are shared with other instances (etcd); the
	// snapshot shows this instance's holders and waiters only. Another
	// instance's holder of a key shows as this instance's holder being
	// Queued.
	ScopeInstance = "instance"
)

// Snapshot is what Inspect returns: the keys held or waited for, sorted.
type Snapshot struct {
	Scope string     `json:"scope"`
	Keys  []KeyState `json:"keys"`
}

// Inspector is implemented by Managers that can show their keys.
type Inspector interface {
	Inspect() Snapshot
}

func (s *Snapshot) sort() {
	slices.SortFunc(s.Keys, func(a, b KeyState) int { return strings.Compare(a.Key, b.Key) })
}

// Sort orders s.Keys by key (for managers outside this package).
func (s *Snapshot) Sort() { s.sort() }
