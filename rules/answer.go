package rules

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// BackendAddr is one configured backend as Resolve sees it: its name and
// its host:port. A template backend is not listed (see Resolve).
type BackendAddr struct {
	Name    string
	Address string
}

// Resolution is the backend a directory's answer maps to.
type Resolution struct {
	// Backend is the configured backend's name, or the template's.
	Backend string
	// Address is the host:port to dial: the configured backend's own, or
	// the answered one with the template's settings.
	Address string
	// Template: Backend is the route's template, used for Address.
	Template bool
}

// ErrBadAnswer is wrapped by Resolve's errors for an answer that is not
// a host (or host:port) at all.
var ErrBadAnswer = errors.New("not a host name or address")

// ErrUnknownBackend is wrapped by Resolve's errors for a well-formed
// answer that names no configured backend, on a route without a template.
var ErrUnknownBackend = errors.New("no configured backend has that address and the route has no template")

// ParseHost splits a directory's answer for a user's backend into host and
// port: "imap2.example.org", "imap2.example.org:143", "10.0.0.7:993",
// "[2001:db8::7]:143", or a bare IPv6 address. port is "" when the answer
// has none. Only host names (letters, digits, '-', '_', '.') and IP
// addresses are accepted; anything else (spaces, '/', '@', a URL) is
// ErrBadAnswer: the answer is dialed, never guessed at.
func ParseHost(s string) (host, port string, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", "", fmt.Errorf("empty answer: %w", ErrBadAnswer)
	}
	if a, perr := netip.ParseAddr(s); perr == nil && a.Zone() == "" {
		return a.String(), "", nil // a bare IPv4 or IPv6 address
	}
	host = s
	if strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1 {
		h, p, serr := net.SplitHostPort(s)
		if serr != nil {
			return "", "", fmt.Errorf("%q: %w", s, ErrBadAnswer)
		}
		if n, perr := strconv.ParseUint(p, 10, 16); perr != nil || n == 0 {
			return "", "", fmt.Errorf("%q: port %q: %w", s, p, ErrBadAnswer)
		}
		host, port = h, p
	}
	h, ok := canonicalHost(host)
	if !ok {
		return "", "", fmt.Errorf("%q: %w", s, ErrBadAnswer)
	}
	return h, port, nil
}

// canonicalHost returns host as Resolve compares it: an IP address in its
// canonical form, a name lowercased without a trailing dot. ok is false
// for anything that is neither.
func canonicalHost(host string) (string, bool) {
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return "", false
		}
		return a.Unmap().String(), true
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "" || len(host) > 253 {
		return "", false
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 {
			return "", false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", false
			}
		}
	}
	return host, true
}

// sameAddress reports whether two host:port addresses are the same once
// their hosts are canonical (case, trailing dot, IP spelling).
func sameAddress(a, b string) bool {
	ah, ap, err1 := net.SplitHostPort(a)
	bh, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || ap != bp {
		return false
	}
	ca, ok1 := canonicalHost(ah)
	cb, ok2 := canonicalHost(bh)
	return ok1 && ok2 && ca == cb
}

// Resolve maps a directory's answer to a backend, in this order:
//
//  1. a configured backend whose address is host:port (port, or
//     defaultPort when the answer has none), hosts compared as ParseHost
//     returns them: "IMAP1.example.org." is "imap1.example.org", and an
//     IP address in any spelling is itself. Host names are not resolved:
//     an answer of 10.0.0.7 does not match a backend configured as
//     imap1.internal:143 even if that is its address.
//  2. when the answer has no port, a configured backend whose name is
//     host exactly (a directory may hold uidgate's backend names).
//  3. the route's template (template != ""), with the answered address:
//     host:port, or host:defaultPort.
//
// Otherwise, and for an answer without a port where defaultPort is "" as
// well, it fails: a user is never sent to a backend the answer did not
// name. host and port are as ParseHost returns them.
func Resolve(host, port, defaultPort string, backends []BackendAddr, template string) (Resolution, error) {
	if _, ok := canonicalHost(host); !ok {
		return Resolution{}, fmt.Errorf("%q: %w", host, ErrBadAnswer)
	}
	p := port
	if p == "" {
		p = defaultPort
	}
	var addr string
	if p != "" {
		addr = net.JoinHostPort(host, p)
		for _, b := range backends {
			if sameAddress(b.Address, addr) {
				return Resolution{Backend: b.Name, Address: b.Address}, nil
			}
		}
	}
	if port == "" {
		for _, b := range backends {
			if b.Name == host {
				return Resolution{Backend: b.Name, Address: b.Address}, nil
			}
		}
	}
	if addr == "" {
		return Resolution{}, fmt.Errorf("%q has no port, names no backend, and the route sets no default port: %w", host, ErrUnknownBackend)
	}
	if template == "" {
		return Resolution{}, fmt.Errorf("%s: %w", addr, ErrUnknownBackend)
	}
	return Resolution{Backend: template, Address: addr, Template: true}, nil
}
