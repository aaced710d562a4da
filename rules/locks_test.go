package rules

import (
	"slices"
	"testing"
)

func TestLockKeys(t *testing.T) {
	const mb, sn = "mailbox:b/user.alice", "seen:b/alice"
	base := LockRequest{Backend: "b", User: "alice", Selected: "user.alice", ReadWrite: true}
	with := func(f func(r *LockRequest)) LockRequest { r := base; f(&r); return r }
	tests := []struct {
		name   string
		policy Serialization
		req    LockRequest
		want   []string
	}{
		{"store", Serialization{}, with(func(r *LockRequest) { r.Command = "STORE" }), []string{mb}},
		{"store seen", Serialization{}, with(func(r *LockRequest) { r.Command = "STORE"; r.TouchesSeen = true }), []string{mb, sn}},
		{"uid store", Serialization{}, with(func(r *LockRequest) { r.Command = "STORE"; r.UID = true }), []string{mb}},
		{"peek fetch", Serialization{}, with(func(r *LockRequest) { r.Command = "FETCH" }), nil},
		{"body fetch", Serialization{}, with(func(r *LockRequest) { r.Command = "FETCH"; r.TouchesSeen = true }), []string{mb, sn}},
		{"body fetch read-only", Serialization{}, with(func(r *LockRequest) { r.Command = "FETCH"; r.TouchesSeen = true; r.ReadWrite = false }), nil},
		{"expunge", Serialization{}, with(func(r *LockRequest) { r.Command = "EXPUNGE" }), []string{mb}},
		{"expunge read-only", Serialization{}, with(func(r *LockRequest) { r.Command = "EXPUNGE"; r.ReadWrite = false }), nil},
		{"close", Serialization{}, with(func(r *LockRequest) { r.Command = "close" }), []string{mb}},
		{"close seen", Serialization{SelectTakesSeen: true}, with(func(r *LockRequest) { r.Command = "CLOSE" }), []string{mb, sn}},
		{"append", Serialization{}, LockRequest{Backend: "b", User: "alice", Command: "APPEND", Target: "user.bob"}, []string{"mailbox:b/user.bob"}},
		{"copy", Serialization{}, with(func(r *LockRequest) { r.Command = "COPY"; r.Target = "user.alice.x" }), []string{"mailbox:b/user.alice.x"}},
		{"move", Serialization{}, with(func(r *LockRequest) { r.Command = "MOVE"; r.Target = "user.alice.x" }), []string{mb, "mailbox:b/user.alice.x"}},
		{"select", Serialization{}, with(func(r *LockRequest) { r.Command = "SELECT" }), nil},
		{"select seen", Serialization{SelectTakesSeen: true}, with(func(r *LockRequest) { r.Command = "SELECT" }), []string{sn}},
		{"search", Serialization{SelectTakesSeen: true}, with(func(r *LockRequest) { r.Command = "SEARCH" }), nil},
		{"status", Serialization{}, with(func(r *LockRequest) { r.Command = "STATUS" }), nil},
	}
	for _, tt := range tests {
		if got := tt.policy.LockKeys(tt.req); !slices.Equal(got, tt.want) {
			t.Errorf("%s: LockKeys = %v, want %v", tt.name, got, tt.want)
		}
	}
}
