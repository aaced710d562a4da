package rules

import (
	"errors"
	"strings"
	"testing"
)

func TestRouterBackend(t *testing.T) {
	type lookup struct {
		user    string
		backend string // "" means no match
	}
	tests := []struct {
		name    string
		routes  []Route
		lookups []lookup
	}{
		{
			name:   "exact user is case-sensitive in the local part",
			routes: []Route{{User: "alice", Backend: "a"}},
			lookups: []lookup{
				{"alice", "a"},
				{"Alice", ""},
				{"alice@example.org", ""},
				{"xalice", ""},
				{"", ""},
			},
		},
		{
			name:   "glob star spans '@' and '.'",
			routes: []Route{{User: "*@example.org", Backend: "a"}, {User: "a*g", Backend: "b"}},
			lookups: []lookup{
				{"alice@example.org", "a"},
				{"@example.org", "a"},
				{"alice@sub.example.org", "b"}, // "a*g" spans '@' and '.'
				{"alice@example.org.evil", ""},
				{"bob@example.org", "a"},
				{"ag", "b"},
			},
		},
		{
			name:   "glob domain part is case-insensitive",
			routes: []Route{{User: "alice@Example.ORG", Backend: "a"}, {User: "*@EXAMPLE.net", Backend: "b"}},
			lookups: []lookup{
				{"alice@example.org", "a"},
				{"alice@EXAMPLE.org", "a"},
				{"Alice@example.org", ""},
				{"bob@Example.Net", "b"},
			},
		},
		{
			name:   "glob question mark is exactly one character",
			routes: []Route{{User: "user?@x", Backend: "a"}, {User: "??", Backend: "b"}},
			lookups: []lookup{
				{"user1@x", "a"},
				{"useré@x", "a"}, // one rune, two bytes
				{"user@x", ""},
				{"user12@x", ""},
				{"ab", "b"},
				{"a", ""},
				{"abc", ""},
			},
		},
		{
			name:   "glob escapes and repeated stars",
			routes: []Route{{User: `a\*b`, Backend: "lit"}, {User: "**x**", Backend: "star"}, {User: `q\?`, Backend: "q"}},
			lookups: []lookup{
				{"a*b", "lit"},
				{"axb", "star"},
				{"aab", ""},
				{"x", "star"},
				{"q?", "q"},
				{"qq", ""},
			},
		},
		{
			name:   "glob backtracking",
			routes: []Route{{User: "*a*b*c", Backend: "a"}},
			lookups: []lookup{
				{"aaabbbccc", "a"},
				{"abcab", ""},
				{"xxaxxbxxc", "a"},
				{"cba", ""},
			},
		},
		{
			name:   "regex is anchored",
			routes: []Route{{Regex: `al.ce`, Backend: "a"}, {Regex: `b|c`, Backend: "bc"}},
			lookups: []lookup{
				{"alice", "a"},
				{"alxce", "a"},
				{"alice@example.org", ""},
				{"xalice", ""},
				{"b", "bc"},
				{"c", "bc"},
				{"bc", ""}, // the alternation is grouped before anchoring
				{"ab", ""},
			},
		},
		{
			name:   "regex sees a lowercased domain",
			routes: []Route{{Regex: `[a-z]+@example\.org`, Backend: "a"}, {Regex: `(?i)BOB@.*`, Backend: "b"}},
			lookups: []lookup{
				{"alice@EXAMPLE.ORG", "a"},
				{"ALICE@example.org", ""},
				{"bob@anything", "b"},
			},
		},
		{
			name:   "domain is the part after the last '@', any case",
			routes: []Route{{Domain: "Example.org", Backend: "a"}},
			lookups: []lookup{
				{"alice@example.org", "a"},
				{"alice@EXAMPLE.ORG", "a"},
				{"a@b@example.org", "a"},
				{"alice@example.org@evil", ""},
				{"alice@sub.example.org", ""},
				{"example.org", ""},
				{"alice", ""},
			},
		},
		{
			name: "first match wins",
			routes: []Route{
				{User: "admin@example.org", Backend: "admin"},
				{Domain: "example.org", Backend: "org"},
				{User: "*@example.*", Backend: "any-tld"},
				{Default: true, Backend: "default"},
				{User: "never", Backend: "never"},
			},
			lookups: []lookup{
				{"admin@example.org", "admin"},
				{"alice@example.org", "org"},
				{"alice@example.com", "any-tld"},
				{"never", "default"},
				{"", "default"},
			},
		},
		{
			name:   "no routes match nobody",
			routes: nil,
			lookups: []lookup{
				{"alice", ""},
			},
		},
		{
			name:   "no default, no match",
			routes: []Route{{Domain: "example.org", Backend: "a"}},
			lookups: []lookup{
				{"alice@example.com", ""},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRouter(tt.routes)
			if err != nil {
				t.Fatalf("NewRouter: %v", err)
			}
			for _, l := range tt.lookups {
				got, ok := r.Backend(l.user)
				if ok != (l.backend != "") || got != l.backend {
					t.Errorf("Backend(%q) = %q, %v; want %q, %v", l.user, got, ok, l.backend, l.backend != "")
				}
			}
		})
	}
}

func TestNilRouter(t *testing.T) {
	var r *Router
	if b, ok := r.Backend("alice"); ok || b != "" {
		t.Errorf("nil Router: Backend = %q, %v", b, ok)
	}
}

func TestNewRouterErrors(t *testing.T) {
	tests := []struct {
		name   string
		routes []Route
		// want is one entry per expected *RouteError, in order.
		want []RouteError
		// msg are substrings of the joined error text.
		msg []string
	}{
		{
			name:   "no matcher",
			routes: []Route{{Backend: "a"}},
			want:   []RouteError{{Index: 0}},
			msg:    []string{"route 0:", "no matcher"},
		},
		{
			name:   "several matchers",
			routes: []Route{{Default: true, Backend: "a"}, {User: "x", Domain: "y", Backend: "a"}},
			want:   []RouteError{{Index: 1}},
			msg:    []string{"route 1:", "user, domain are all set"},
		},
		{
			name:   "missing backend",
			routes: []Route{{Default: true}},
			want:   []RouteError{{Index: 0, Field: "backend"}},
			msg:    []string{"route 0: backend: required"},
		},
		{
			name:   "bad regex",
			routes: []Route{{User: "x", Backend: "a"}, {Regex: "a(b", Backend: "a"}},
			want:   []RouteError{{Index: 1, Field: "regex"}},
			msg:    []string{"route 1: regex: error parsing regexp: missing closing ): `a(b`"},
		},
		{
			name:   "bad glob",
			routes: []Route{{User: `abc\`, Backend: "a"}},
			want:   []RouteError{{Index: 0, Field: "user"}},
			msg:    []string{"route 0: user:", "trailing"},
		},
		{
			name:   "domain with '@'",
			routes: []Route{{Domain: "@example.org", Backend: "a"}},
			want:   []RouteError{{Index: 0, Field: "domain"}},
			msg:    []string{"route 0: domain:", "without '@'"},
		},
		{
			name:   "every bad route is reported",
			routes: []Route{{Backend: "a"}, {Default: true, Backend: "a"}, {Regex: "(", Backend: "a"}, {Domain: "x"}},
			want:   []RouteError{{Index: 0}, {Index: 2, Field: "regex"}, {Index: 3, Field: "backend"}},
			msg:    []string{"route 0:", "route 2:", "route 3:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRouter(tt.routes)
			if err == nil {
				t.Fatalf("NewRouter succeeded; want error")
			}
			if r != nil {
				t.Errorf("NewRouter returned a Router with its error")
			}
			for _, m := range tt.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not contain %q", err, m)
				}
			}
			var got []RouteError
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
				var re *RouteError
				if !errors.As(e, &re) {
					t.Fatalf("error %v is not a *RouteError", e)
				}
				got = append(got, RouteError{Index: re.Index, Field: re.Field})
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d route errors %v; want %d %v", len(got), got, len(tt.want), tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("error %d: index/field = %d/%q; want %d/%q", i, got[i].Index, got[i].Field, tt.want[i].Index, tt.want[i].Field)
				}
			}
		})
	}
}

func FuzzGlob(f *testing.F) {
	for _, s := range [][2]string{{"*@example.org", "alice@example.org"}, {"a?c", "abc"}, {`\*`, "*"}, {"*a*", "banana"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, s string) {
		toks, err := compileGlob(pattern)
		if err != nil {
			return
		}
		got := matchGlobTokens(toks, s)
		if want := naiveGlob(toks, []rune(s)); got != want {
			t.Fatalf("match(%q, %q) = %v; naive says %v", pattern, s, got, want)
		}
	})
}

// naiveGlob is an exponential reference matcher.
func naiveGlob(toks []globToken, s []rune) bool {
	if len(toks) == 0 {
		return len(s) == 0
	}
	switch toks[0].kind {
	case globAny:
		for i := 0; i <= len(s); i++ {
			if naiveGlob(toks[1:], s[i:]) {
				return true
			}
		}
		return false
	case globOne:
		return len(s) > 0 && naiveGlob(toks[1:], s[1:])
	default:
		return len(s) > 0 && s[0] == toks[0].r && naiveGlob(toks[1:], s[1:])
	}
}
