package proxy

import (
	"testing"

	"github.com/emersion/go-imap/v2"
)

func TestAppendSeqSetJoinsNeighbours(t *testing.T) {
	for _, c := range []struct {
		set  imap.SeqSet
		want string
	}{
		{imap.SeqSet{{Start: 1, Stop: 1}, {Start: 2, Stop: 2}, {Start: 3, Stop: 3}, {Start: 4, Stop: 4}, {Start: 5, Stop: 5}}, "1:5"},
		{imap.SeqSet{{Start: 2, Stop: 3}, {Start: 5, Stop: 5}}, "2:3,5"},
		{imap.SeqSet{{Start: 1, Stop: 2}, {Start: 3, Stop: 4}, {Start: 7, Stop: 7}, {Start: 8, Stop: 9}}, "1:4,7:9"},
		// ESORT order is kept: only ascending neighbours are joined.
		{imap.SeqSet{{Start: 5, Stop: 5}, {Start: 4, Stop: 4}, {Start: 6, Stop: 6}}, "5,4,6"},
		{nil, ""},
	} {
		if got := string(appendSeqSet(nil, c.set)); got != c.want {
			t.Errorf("%v: %q, want %q", c.set, got, c.want)
		}
	}
}

// TestUIDSetLen: the length a bound is checked against is the length
// written.
func TestUIDSetLen(t *testing.T) {
	for _, set := range []imap.UIDSet{
		nil,
		{{Start: 1, Stop: 1}},
		{{Start: 9, Stop: 10}, {Start: 99, Stop: 0}, {Start: 4294967295, Stop: 4294967295}},
		{{Start: 1, Stop: 999999}, {Start: 1000001, Stop: 1000001}},
	} {
		if got, want := uidSetLen(set), len(appendUIDSet(nil, set)); got != want {
			t.Errorf("%v: uidSetLen %d, written %d", set, got, want)
		}
	}
}
