package rules

import "testing"

func TestCanonicalMailbox(t *testing.T) {
	tests := []struct {
		user, name string
		sep        byte
		cyrus      bool
		want       string
	}{
		// INBOX, no Cyrus namespace.
		{"alice", "INBOX", '.', false, "INBOX"},
		{"alice", "inbox", '.', false, "INBOX"},
		{"alice", "InBoX", '/', false, "INBOX"},
		{"alice", "inbox.Sent", '.', false, "INBOX.Sent"},
		{"alice", "Inbox/Sent/2024", '/', false, "INBOX/Sent/2024"},
		{"alice", "inbox/Sent", '.', false, "inbox/Sent"}, // '/' is not the separator here
		{"alice", "INBOXES", '.', false, "INBOXES"},
		{"alice", "inbo", '.', false, "inbo"},
		{"alice", "", '.', false, ""},
		{"alice", "inbox", 0, false, "INBOX"},
		{"alice", "inbox.x", 0, false, "inbox.x"}, // flat namespace
		{"alice", "Sent", '.', false, "Sent"},
		{"alice", "sent", '.', false, "sent"}, // only INBOX is case-insensitive
		{"alice", "INBOX.", '.', false, "INBOX."},

		// Cyrus classic namespace.
		{"alice", "INBOX", '.', true, "user.alice"},
		{"alice", "inbox", '.', true, "user.alice"},
		{"alice", "INBOX.x", '.', true, "user.alice.x"},
		{"alice", "Inbox.x.y", '.', true, "user.alice.x.y"},
		{"bob", "user.alice.x", '.', true, "user.alice.x"}, // same key as alice's INBOX.x
		{"alice", "user.alice", '.', true, "user.alice"},   // her INBOX by its full name
		{"alice", "user.bob.x", '.', true, "user.bob.x"},
		{"alice", "shared.news", '.', true, "shared.news"},
		{"alice", "INBOX/x", '/', true, "user/alice/x"},
		{"alice", "INBOX.x", 0, true, "user.alice.x"}, // 0 taken as '.'
		{"john.doe", "INBOX.x", '.', true, "user.john^doe.x"},
		{"john.doe", "INBOX/x", '/', true, "user/john.doe/x"},

		// Cyrus with virtual domains.
		{"alice@example.org", "INBOX", '.', true, "user.alice@example.org"},
		{"alice@Example.ORG", "INBOX.x", '.', true, "user.alice.x@example.org"},
		{"bob@example.org", "user.alice.x", '.', true, "user.alice.x@example.org"},
		{"bob@other.org", "user.alice.x", '.', true, "user.alice.x@other.org"},
		{"admin", "user.alice.x@example.org", '.', true, "user.alice.x@example.org"},
		{"bob@example.org", "user.alice.x@example.org", '.', true, "user.alice.x@example.org"},
		{"john.doe@example.org", "INBOX/x", '/', true, "user/john.doe/x@example.org"},
		{"john.doe@example.org", "INBOX.x", '.', true, "user.john^doe.x@example.org"},
	}
	for _, tt := range tests {
		got := CanonicalMailbox(tt.user, tt.name, tt.sep, tt.cyrus)
		if got != tt.want {
			t.Errorf("CanonicalMailbox(%q, %q, %q, %v) = %q; want %q", tt.user, tt.name, tt.sep, tt.cyrus, got, tt.want)
		}
	}
}

// TestCanonicalMailboxSameMailbox checks the property locking relies on:
// every name of one mailbox gives one key.
func TestCanonicalMailboxSameMailbox(t *testing.T) {
	groups := []struct {
		sep   byte
		names [][2]string // user, name
	}{
		{'.', [][2]string{{"alice", "INBOX.x"}, {"alice", "inbox.x"}, {"bob", "user.alice.x"}, {"carol", "user.alice.x"}}},
		{'/', [][2]string{{"alice@d.org", "INBOX"}, {"bob@d.org", "user/alice"}, {"admin", "user/alice@d.org"}}},
	}
	for _, g := range groups {
		want := CanonicalMailbox(g.names[0][0], g.names[0][1], g.sep, true)
		for _, n := range g.names[1:] {
			if got := CanonicalMailbox(n[0], n[1], g.sep, true); got != want {
				t.Errorf("%s's %q -> %q; want %q like %s's %q", n[0], n[1], got, want, g.names[0][0], g.names[0][1])
			}
		}
	}
}
