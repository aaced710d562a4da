// Package rules holds uidgate's policy as pure functions: which backend a user
// is routed to, and how mailbox names are canonicalised so that two names for
// the same mailbox take the same lock. It does no I/O and starts no
// goroutines.
package rules

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Route sends the users it matches to Backend. Exactly one of User, Regex,
// Domain and Default must be set (an empty string counts as unset).
//
// Matching is done on the login name with its domain part (the text after
// the last '@') lowercased, because domains are case-insensitive (RFC 5321
// §2.4) while the local part is left to the backend. Local parts therefore
// compare case-sensitively: "Alice@Example.ORG" matches User "Alice@example.org"
// but not "alice@example.org".
type Route struct {
	// User is a glob over the whole login name: '*' matches any run of
	// characters (including '@' and '.'), '?' exactly one character, and '\'
	// makes the next character literal. A pattern without wildcards is an
	// exact comparison. The pattern's own domain part (after its last '@')
	// is lowercased when compiled.
	User string
	// Regex is an RE2 regular expression, anchored at both ends: "a.*"
	// behaves as "^(?:a.*)$". Use "(?i)" for a case-insensitive local part.
	Regex string
	// Domain matches users whose domain part, the text after the last '@',
	// equals it case-insensitively. Users without '@' never match.
	Domain string
	// Default matches every user, including one without a domain.
	Default bool
	// Backend names the backend matched users are sent to. Exactly one of
	// Backend and Lookup is set.
	Backend string
	// Lookup names a directory lookup (an HTTP auth service or LDAP) that
	// gives the backend of each matched user at login. Asking it is I/O and
	// not this package's business: see package lookup, and Resolve for
	// what its answer maps to.
	Lookup string
}

// Target is where a route sends the users it matches: a backend, or a
// lookup that names one per user.
type Target struct {
	Backend string // set for a static route
	Lookup  string // set for a directory route
	Index   int    // the route's position in the slice given to NewRouter
}

// RouteError is what NewRouter reports for one bad route.
type RouteError struct {
	Index int    // position of the route in the slice given to NewRouter
	Field string // "user", "regex", "domain", "backend", or "" for the route as a whole
	Err   error
}

func (e *RouteError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("route %d: %v", e.Index, e.Err)
	}
	return fmt.Sprintf("route %d: %s: %v", e.Index, e.Field, e.Err)
}

func (e *RouteError) Unwrap() error { return e.Err }

// Router picks a backend for a login name. It is immutable and safe for
// concurrent use.
type Router struct {
	routes []compiledRoute
}

type matchKind uint8

const (
	matchGlob matchKind = iota
	matchRegex
	matchDomain
	matchDefault
)

type compiledRoute struct {
	kind   matchKind
	glob   []globToken
	re     *regexp.Regexp
	domain string // lowercased
	target Target
}

// NewRouter compiles routes, in order. Every bad route is reported, each as
// a *RouteError, joined with errors.Join. An empty slice gives a Router that
// matches nobody.
func NewRouter(routes []Route) (*Router, error) {
	r := &Router{routes: make([]compiledRoute, 0, len(routes))}
	var errs []error
	for i, rt := range routes {
		c, err := compileRoute(i, rt)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r.routes = append(r.routes, c)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

func compileRoute(i int, rt Route) (compiledRoute, error) {
	var set []string
	if rt.User != "" {
		set = append(set, "user")
	}
	if rt.Regex != "" {
		set = append(set, "regex")
	}
	if rt.Domain != "" {
		set = append(set, "domain")
	}
	if rt.Default {
		set = append(set, "default")
	}
	switch len(set) {
	case 0:
		return compiledRoute{}, &RouteError{Index: i, Err: errors.New("no matcher: set one of user, regex, domain or default")}
	case 1:
	default:
		return compiledRoute{}, &RouteError{Index: i, Err: fmt.Errorf("%s are all set: set exactly one", strings.Join(set, ", "))}
	}
	switch {
	case rt.Backend == "" && rt.Lookup == "":
		return compiledRoute{}, &RouteError{Index: i, Field: "backend", Err: errors.New("required")}
	case rt.Backend != "" && rt.Lookup != "":
		return compiledRoute{}, &RouteError{Index: i, Field: "backend", Err: errors.New("set, but the route's backend comes from a lookup: set one of them")}
	}
	c := compiledRoute{target: Target{Backend: rt.Backend, Lookup: rt.Lookup, Index: i}}
	switch {
	case rt.User != "":
		g, err := compileGlob(lowerDomain(rt.User))
		if err != nil {
			return compiledRoute{}, &RouteError{Index: i, Field: "user", Err: err}
		}
		c.kind, c.glob = matchGlob, g
	case rt.Regex != "":
		// Compile alone first so that errors quote the expression as written.
		if _, err := regexp.Compile(rt.Regex); err != nil {
			return compiledRoute{}, &RouteError{Index: i, Field: "regex", Err: err}
		}
		re, err := regexp.Compile(`^(?:` + rt.Regex + `)$`)
		if err != nil {
			return compiledRoute{}, &RouteError{Index: i, Field: "regex", Err: err}
		}
		c.kind, c.re = matchRegex, re
	case rt.Domain != "":
		if strings.ContainsAny(rt.Domain, "@ \t") {
			return compiledRoute{}, &RouteError{Index: i, Field: "domain",
				Err: fmt.Errorf("%q: want a bare domain such as \"example.org\", without '@' or spaces", rt.Domain)}
		}
		c.kind, c.domain = matchDomain, strings.ToLower(rt.Domain)
	default:
		c.kind = matchDefault
	}
	return c, nil
}

// Backend returns the backend of the first route that matches user, and
// false if none does or the first that does is a lookup route (see Match).
func (r *Router) Backend(user string) (backend string, ok bool) {
	t, ok := r.Match(user)
	if !ok || t.Backend == "" {
		return "", false
	}
	return t.Backend, true
}

// Match returns the target of the first route that matches user, and
// false if none does. A lookup route that matches ends the search: what
// the lookup answers (or fails to) is the answer, later routes are not
// tried, so that a directory that is down never sends a user to another
// route's backend.
func (r *Router) Match(user string) (Target, bool) {
	if r == nil {
		return Target{}, false
	}
	norm := lowerDomain(user)
	for i := range r.routes {
		if r.routes[i].matches(norm) {
			return r.routes[i].target, true
		}
	}
	return Target{}, false
}

// matches reports whether the route matches norm, a login name whose domain
// part is already lowercased.
func (c *compiledRoute) matches(norm string) bool {
	switch c.kind {
	case matchGlob:
		return matchGlobTokens(c.glob, norm)
	case matchRegex:
		return c.re.MatchString(norm)
	case matchDomain:
		at := strings.LastIndexByte(norm, '@')
		return at >= 0 && norm[at+1:] == c.domain
	case matchDefault:
		return true
	}
	return false
}

// lowerDomain lowercases the part of s after its last '@', if any.
func lowerDomain(s string) string {
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return s
	}
	d := s[at+1:]
	if ld := strings.ToLower(d); ld != d {
		return s[:at+1] + ld
	}
	return s
}

// globToken is one element of a compiled glob.
type globToken struct {
	kind globKind
	r    rune // for globLiteral
}

type globKind uint8

const (
	globLiteral globKind = iota
	globOne              // '?'
	globAny              // '*'
)

// compileGlob turns pattern into tokens. '\' escapes the next character;
// a trailing '\' is an error. Consecutive '*' collapse into one.
func compileGlob(pattern string) ([]globToken, error) {
	toks := make([]globToken, 0, len(pattern))
	escaped := false
	for _, r := range pattern {
		switch {
		case escaped:
			toks = append(toks, globToken{kind: globLiteral, r: r})
			escaped = false
		case r == '\\':
			escaped = true
		case r == '*':
			if n := len(toks); n > 0 && toks[n-1].kind == globAny {
				continue
			}
			toks = append(toks, globToken{kind: globAny})
		case r == '?':
			toks = append(toks, globToken{kind: globOne})
		default:
			toks = append(toks, globToken{kind: globLiteral, r: r})
		}
	}
	if escaped {
		return nil, fmt.Errorf("bad pattern %q: trailing '\\'", pattern)
	}
	return toks, nil
}

// matchGlobTokens reports whether toks match all of s. It backtracks only to
// the most recent '*', so it runs in O(len(toks)·len(s)) at worst.
func matchGlobTokens(toks []globToken, s string) bool {
	rs := []rune(s)
	ti, si := 0, 0
	starT, starS := -1, 0
	for si < len(rs) {
		if ti < len(toks) {
			switch t := toks[ti]; t.kind {
			case globAny:
				starT, starS = ti, si
				ti++
				continue
			case globOne:
				ti++
				si++
				continue
			case globLiteral:
				if t.r == rs[si] {
					ti++
					si++
					continue
				}
			}
		}
		if starT < 0 {
			return false
		}
		// Let the last '*' swallow one more character and retry.
		starS++
		ti, si = starT+1, starS
	}
	for ti < len(toks) && toks[ti].kind == globAny {
		ti++
	}
	return ti == len(toks)
}
