package proxy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"uidgate/sessionmap"
)

// parseUIDList feeds data (what follows "* SEARCH " or "* ESEARCH ") to a
// uidList in the given fragments and returns the loaded UIDs, or the
// error: the parser's, else the Loader's.
func parseUIDList(esearch bool, frags ...string) (string, error) {
	m := sessionmap.New()
	p := newUIDList(m.NewLoader(), esearch)
	for _, f := range frags {
		p.feed([]byte(f))
	}
	if err := p.close(); err != nil {
		return "", err
	}
	if err := p.ld.Finish(); err != nil {
		return "", err
	}
	if m.ClientCount() == 0 {
		return "", nil
	}
	set, err := m.ClientSeqToUIDs(imap.SeqSet{{Start: 1, Stop: 0}})
	if err != nil {
		return "", err
	}
	return set.String(), nil
}

var uidListTests = []struct {
	esearch bool
	in      string
	want    string
	err     error
}{
	// RFC 9051 §7.3.4.
	{false, "1 2 3\r\n", "1:3", nil},
	{false, "\r\n", "", nil},
	{false, "", "", nil},
	{false, "7", "7", nil},
	{false, "2 4 6 (MODSEQ 917162500)\r\n", "2,4,6", nil}, // RFC 7162 §3.1.5
	{false, "5 3 1 3\n", "1,3,5", nil},
	{false, "1  2 \r\n", "1:2", nil},
	{false, "4294967295\r\n", "4294967295", nil},
	{false, "4294967296\r\n", "", errUIDListSyntax},
	{false, "99999999999999999999999\r\n", "", errUIDListSyntax},
	{false, "1 2x 3\r\n", "", errUIDListSyntax},
	{false, "0 1\r\n", "", sessionmap.ErrZeroUID},
	// RFC 4731 §3.1.
	{true, "(TAG \"UG.1\") UID ALL 1:5,7,9:100\r\n", "1:5,7,9:100", nil},
	{true, "(TAG \"UG.1\") UID\r\n", "", nil},
	{true, "(TAG \"UG.1\") UID ALL 1:3 MODSEQ 12\r\n", "1:3", nil},
	{true, "(TAG \"UG.1\") UID MIN 1 MAX 9 ALL 1,9 COUNT 2\r\n", "1,9", nil},
	{true, "(TAG \"a\\\")b\") UID ALL 4\r\n", "4", nil},
	{true, "(TAG \"UG.1\") UID X (a (b) \"c)\") ALL 3\r\n", "3", nil},
	{true, "(TAG \"x\") UID VERYLONGITEMNAME 5 ALLX 6 all 2:3", "2:3", nil},
	{true, "UID ALL 5:1\r\n", "1:5", nil},
	{true, "(TAG \"UG.1\") UID ALL 3,1:2,2\r\n", "1:3", nil},
	{true, "(TAG \"UG.1\") UID ALL 1:3 ALL 2:6\r\n", "1:6", nil},
	{true, "(TAG \"UG.1\") UID ALL 1:4294967295", "", sessionmap.ErrTooMany},
	{true, "(TAG \"UG.1\") UID ALL 0:3\r\n", "", sessionmap.ErrZeroUID},
	{true, "(TAG \"UG.1\") UID ALL 1:*\r\n", "", sessionmap.ErrStar},
	{true, "(TAG \"UG.1\") UID ALL *\r\n", "", sessionmap.ErrStar},
	{true, "(TAG \"UG.1\") UID ALL \r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1\") UID ALL\r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1\") UID ALL 1:\r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1\") UID ALL 1,,2\r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1\") UID ALL 1:2:3\r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1\") UID ALL 1;2\r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1\") UID ALL 4294967296\r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1\" UID ALL 1\r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1) UID ALL 1\r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1\") UID MIN\r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1\") UID MIN ]\r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1\") UID MIN 5x]\r\n", "", errUIDListSyntax},
	{true, "(TAG \"UG.1\") ]\r\n", "", errUIDListSyntax},
}

func TestUIDList(t *testing.T) {
	for _, tt := range uidListTests {
		got, err := parseUIDList(tt.esearch, tt.in)
		if got != tt.want || !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
			t.Errorf("%q: %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

// TestUIDListSplit: a line cut anywhere, into two or three fragments or
// into single bytes, parses as the whole line does, errors included (with
// the same offset in their text).
func TestUIDListSplit(t *testing.T) {
	for _, tt := range uidListTests {
		want, wantErr := parseUIDList(tt.esearch, tt.in)
		same := func(how string, frags ...string) {
			t.Helper()
			got, err := parseUIDList(tt.esearch, frags...)
			if got != want || fmt.Sprint(err) != fmt.Sprint(wantErr) {
				t.Fatalf("%q %s: %q, %v; whole: %q, %v", tt.in, how, got, err, want, wantErr)
			}
		}
		in := tt.in
		for i := range len(in) + 1 {
			same(fmt.Sprintf("cut at %d", i), in[:i], in[i:])
			for j := i; j <= len(in); j++ {
				same(fmt.Sprintf("cut at %d and %d", i, j), in[:i], in[i:j], in[j:])
			}
		}
		same("byte by byte", strings.Split(in, "")...)
	}
}

// TestUIDListRandom parses random UID lists of both forms, cut into
// random fragments, against the UIDs they were made of.
func TestUIDListRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for i := range 500 {
		var set imap.UIDSet
		var uids []uint32
		u := uint32(1 + r.IntN(3))
		for range r.IntN(300) {
			w := uint32(r.IntN(3))
			if i%3 == 0 {
				w = 0
			}
			set = append(set, imap.UIDRange{Start: imap.UID(u), Stop: imap.UID(u + w)})
			for x := u; x <= u+w; x++ {
				uids = append(uids, x)
			}
			u += w + 1 + uint32(r.IntN(int(1+u%7)))
			if r.IntN(50) == 0 {
				u += uint32(r.IntN(1 << 30)) // numbers of every length
			}
		}
		if i%4 == 1 {
			r.Shuffle(len(uids), func(a, b int) { uids[a], uids[b] = uids[b], uids[a] })
			r.Shuffle(len(set), func(a, b int) { set[a], set[b] = set[b], set[a] })
		}
		var want imap.UIDSet
		for _, x := range uids {
			want.AddNum(imap.UID(x))
		}
		var search, esearch strings.Builder
		for j, x := range uids {
			if j > 0 {
				search.WriteByte(' ')
			}
			fmt.Fprint(&search, x)
		}
		search.WriteString("\r\n")
		fmt.Fprintf(&esearch, "(TAG \"UG.%d\") UID", i)
		if len(set) > 0 {
			esearch.WriteString(" ALL " + set.String())
		}
		if r.IntN(2) == 0 {
			esearch.WriteString(" COUNT 3")
		}
		esearch.WriteString("\r\n")
		for _, c := range []struct {
			esearch bool
			in      string
		}{{false, search.String()}, {true, esearch.String()}} {
			var frags []string
			for in := c.in; len(in) > 0; {
				k := min(len(in), 1+r.IntN(12))
				frags, in = append(frags, in[:k]), in[k:]
			}
			got, err := parseUIDList(c.esearch, frags...)
			if err != nil || got != want.String() {
				t.Fatalf("%q: %q, %v; want %q", c.in, got, err, want.String())
			}
		}
	}
}

// FuzzUIDList: whatever the input, parsing it whole and in two pieces
// agree, and nothing panics.
func FuzzUIDList(f *testing.F) {
	for _, tt := range uidListTests {
		f.Add(tt.esearch, tt.in, uint(len(tt.in)/2))
	}
	f.Fuzz(func(t *testing.T, esearch bool, in string, cut uint) {
		cut %= uint(len(in) + 1)
		want, wantErr := parseUIDList(esearch, in)
		got, err := parseUIDList(esearch, in[:cut], in[cut:])
		if got != want || fmt.Sprint(err) != fmt.Sprint(wantErr) {
			t.Fatalf("%q cut at %d: %q, %v; whole: %q, %v", in, cut, got, err, want, wantErr)
		}
	})
}
