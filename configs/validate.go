package configs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"uidgate/rules"
)

// MaxMaxLine caps max_line: a line is held in memory while it is parsed.
const MaxMaxLine = 16 << 20

// Validate checks c and returns every problem found, joined with
// errors.Join, or nil. Each problem reads "file:line: key: what is wrong"
// (without file:line for a Config not made by Parse or Load, and with the
// line of the enclosing table when the key itself is missing). It reads the
// certificate, key and CA files named in c.
func (c *Config) Validate() error {
	return joinProblems(c.validate())
}

func (c *Config) validate() []problem {
	v := &validator{c: c}
	v.listeners()
	v.tlsDefaults()
	v.metrics()
	names, templates := v.backends()
	v.routes(names, templates)
	v.limits()
	v.locks()
	v.admin()
	v.log()
	return v.problems
}

type validator struct {
	c        *Config
	problems []problem
}

// add records a problem with key, placed at key's line or its nearest
// ancestor's.
func (v *validator) add(key, format string, args ...any) {
	line := v.c.lineOf(key)
	var where string
	switch {
	case v.c.file != "" && line > 0:
		where = fmt.Sprintf("%s:%d: ", v.c.file, line)
	case v.c.file != "":
		where = v.c.file + ": "
	}
	v.problems = append(v.problems, problem{line: line, key: key, ikey: key,
		msg: where + key + ": " + fmt.Sprintf(format, args...)})
}

// lineOf returns the line of key, or of its nearest ancestor written in the
// file, or 0.
func (c *Config) lineOf(key string) int {
	for k := key; k != ""; {
		if l, ok := c.lines[k]; ok {
			return l
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

// has reports whether key was written in the file.
func (c *Config) has(key string) bool {
	_, ok := c.lines[key]
	return ok
}

func (v *validator) listeners() {
	c := v.c
	if len(c.Listeners) == 0 {
		v.add("listener", "at least one [[listener]] is required")
	}
	var bound []string // addresses of the listeners before, "" if bad
	for i, l := range c.Listeners {
		k := fmt.Sprintf("listener.%d", i)
		for j, n := range l.TrustedProxies {
			if _, err := netip.ParsePrefix(n); err != nil {
				v.add(fmt.Sprintf("%s.trusted_proxies.%d", k, j), "%q: want a network such as \"10.0.0.0/8\"", n)
			}
		}
		addr := ""
		switch err := checkHostPort(l.Address, false); {
		case err != nil:
			v.add(k+".address", "%v", err)
		default:
			addr = l.Address
			for j, other := range bound {
				if l.Address == other {
					v.add(k+".address", "%q is also listener.%d's address", l.Address, j)
					break
				}
				if why := overlaps(l.Address, other); why != "" {
					v.add(k+".address", "%q %s listener.%d's %q: both cannot be bound", l.Address, why, j, other)
					break
				}
			}
		}
		bound = append(bound, addr)
		mode := l.TLSModeOrDefault()
		if !mode.valid() {
			v.add(k+".tls", "%q: want \"none\", \"starttls\" or \"implicit\"", l.TLS)
			continue
		}
		if l.RequireTLS && mode != TLSStartTLS {
			v.add(k+".require_tls", "only applies to tls = \"starttls\", not %q", mode)
		}
		if mode == TLSNone {
			// Probably a listener the writer believes is encrypted.
			if l.Cert != "" {
				v.add(k+".cert", "set, but tls = \"none\": set tls = \"starttls\" or \"implicit\", or remove it")
			}
			if l.Key != "" {
				v.add(k+".key", "set, but tls = \"none\": set tls = \"starttls\" or \"implicit\", or remove it")
			}
			continue
		}
		certKey, keyKey := k+".cert", k+".key"
		if l.Cert == "" && c.TLS.Cert != "" {
			certKey = "tls.cert"
		}
		if l.Key == "" && c.TLS.Key != "" {
			keyKey = "tls.key"
		}
		v.keyPair(mode, certKey, l.CertFile(c.TLS), keyKey, l.KeyFile(c.TLS))
	}
}

// keyPair checks that a certificate and key are named, exist and match.
func (v *validator) keyPair(mode TLSMode, certKey, certFile, keyKey, keyFile string) {
	ok := true
	for _, f := range []struct{ key, file string }{{certKey, certFile}, {keyKey, keyFile}} {
		if f.file == "" {
			v.add(f.key, "required with tls = %q (set it here or in [tls])", mode)
			ok = false
		} else if err := checkFile(f.file); err != nil {
			v.add(f.key, "%v", err)
			ok = false
		}
	}
	if !ok {
		return
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		v.add(certKey, "%s and %s: %v", certFile, keyFile, err)
	}
}

func checkFile(name string) error {
	fi, err := os.Stat(name)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory", name)
	}
	return nil
}

// checkHostPort checks a host:port address with a numeric port. A backend
// needs a host and a non-zero port; a listener may leave the host empty
// (all interfaces) or use port 0 (any free port).
func checkHostPort(addr string, backend bool) error {
	if addr == "" {
		return errors.New("required")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port: %v", addr, err)
	}
	if backend && host == "" {
		return fmt.Errorf("%q: missing host", addr)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	if backend && n == 0 {
		return fmt.Errorf("%q: port 0", addr)
	}
	return nil
}

func (v *validator) metrics() {
	a := v.c.Metrics.Address
	if a == "" {
		return
	}
	if err := checkHostPort(a, false); err != nil {
		v.add("metrics.address", "%v", err)
		return
	}
	for i, l := range v.c.Listeners {
		if a == l.Address {
			v.add("metrics.address", "%q is also listener.%d's address", a, i)
			return
		}
		if why := overlaps(a, l.Address); why != "" {
			v.add("metrics.address", "%q %s listener.%d's %q: both cannot be bound", a, why, i, l.Address)
			return
		}
	}
}

// overlaps says why two listening addresses (checked by checkHostPort)
// cannot both be bound, or "". On one port, an address on all interfaces
// ("", 0.0.0.0, ::; Go listens on both IPv4 and IPv6 for any of them)
// takes every other address, and an address takes itself. Host names
// other than localhost are compared as written: they are not resolved.
func overlaps(a, b string) string {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return ""
	}
	wa, wb := isWildcard(ha), isWildcard(hb)
	switch {
	case wa && wb:
		return "is the same port on all interfaces as"
	case wa:
		return "(all interfaces) takes the port of"
	case wb:
		return "is taken by"
	}
	if sameHost(ha, hb) {
		return "is the same address as"
	}
	return ""
}

func isWildcard(host string) bool {
	if host == "" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsUnspecified()
}

func sameHost(a, b string) bool {
	norm := func(h string) []netip.Addr {
		if strings.EqualFold(h, "localhost") {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
		}
		if ip, err := netip.ParseAddr(h); err == nil {
			return []netip.Addr{ip.Unmap()}
		}
		return nil
	}
	na, nb := norm(a), norm(b)
	if na == nil || nb == nil {
		return strings.EqualFold(a, b)
	}
	for _, x := range na {
		if slices.Contains(nb, x) {
			return true
		}
	}
	return false
}

func (v *validator) tlsDefaults() {
	if mv := v.c.TLS.MinVersion; mv != "" {
		if _, err := tlsVersion(mv); err != nil {
			v.add("tls.min_version", "%v", err)
		}
	}
}

// backends checks the backends and returns the set of their names, and
// that of the templates'.
func (v *validator) backends() (names, templates map[string]bool) {
	c := v.c
	if len(c.Backends) == 0 {
		v.add("backend", "at least one [[backend]] is required")
	}
	names = make(map[string]bool)
	templates = make(map[string]bool)
	first := make(map[string]int)
	for i, b := range c.Backends {
		k := fmt.Sprintf("backend.%d", i)
		switch j, dup := first[b.Name]; {
		case b.Name == "":
			v.add(k+".name", "required")
		case dup:
			v.add(k+".name", "%q is also backend.%d's name", b.Name, j)
		case b.Template:
			first[b.Name] = i
			templates[b.Name] = true
		default:
			first[b.Name] = i
			names[b.Name] = true
		}
		switch {
		case b.Template && b.Address != "":
			v.add(k+".address", "set, but a template's address comes from each directory answer: remove it")
		case b.Template:
		default:
			if err := checkHostPort(b.Address, true); err != nil {
				v.add(k+".address", "%v", err)
			}
		}
		if b.DialTimeout.Duration < 0 || b.DialTimeout.Duration == 0 && c.has(k+".dial_timeout") {
			v.add(k+".dial_timeout", "%s: must be positive", b.DialTimeout)
		}
		if pp := b.ProxyProtocol; pp != "" && pp != "v1" && pp != "v2" {
			v.add(k+".proxy_protocol", "%q: want \"v1\" or \"v2\"", pp)
		}
		if es := b.ExplicitSeen; es != "" && es != "auto" && es != "on" && es != "off" {
			v.add(k+".explicit_seen", "%q: want \"auto\", \"on\" or \"off\"", es)
		}
		if o := b.OutOfRange; o != "" && o != "auto" && o != "bad" && o != "ignore" {
			v.add(k+".out_of_range", "%q: want \"auto\", \"bad\" or \"ignore\"", o)
		}
		mode := b.TLSModeOrDefault()
		if !mode.valid() {
			v.add(k+".tls", "%q: want \"none\", \"starttls\" or \"implicit\"", b.TLS)
			continue
		}
		if mode == TLSNone {
			for _, f := range []struct {
				key string
				set bool
			}{
				{"ca_file", b.CAFile != ""},
				{"server_name", b.ServerName != ""},
				{"insecure_skip_verify", b.InsecureSkipVerify},
				{"min_version", b.MinVersion != ""},
			} {
				if f.set {
					v.add(k+"."+f.key, "has no effect with tls = \"none\"")
				}
			}
			continue
		}
		if _, err := tlsVersion(b.MinVersionOrDefault()); err != nil {
			v.add(k+".min_version", "%v", err)
		}
		if b.CAFile != "" {
			if b.InsecureSkipVerify {
				v.add(k+".ca_file", "has no effect with insecure_skip_verify = true")
			} else if _, err := loadCAFile(b.CAFile); err != nil {
				v.add(k+".ca_file", "%v", err)
			}
		}
	}
	return names, templates
}

func (v *validator) routes(backends, templates map[string]bool) {
	c := v.c
	if len(c.Routes) == 0 {
		v.add("route", "at least one [[route]] is required (a route with default = true sends everyone to one backend)")
	}
	if _, err := c.Router(); err != nil {
		errs := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			errs = j.Unwrap()
		}
		for _, e := range errs {
			var re *rules.RouteError
			if !errors.As(e, &re) {
				v.add("route", "%v", e)
				continue
			}
			k := fmt.Sprintf("route.%d", re.Index)
			if re.Field != "" {
				k += "." + re.Field
			}
			v.add(k, "%v", re.Err)
		}
	}
	known := make([]string, 0, len(backends))
	for n := range backends {
		known = append(known, strconv.Quote(n))
	}
	sort.Strings(known)
	firstDefault := -1
	for i, r := range c.Routes {
		k := fmt.Sprintf("route.%d", i)
		if r.KindOrDefault() != RouteStatic {
			v.lookupRoute(k, i, r, templates)
		} else {
			switch {
			case r.Backend != "" && templates[r.Backend]:
				v.add(k+".backend", "%q is a template (template = true): only kind = \"http\" or \"ldap\" routes use it, as their template", r.Backend)
			case r.Backend != "" && !backends[r.Backend]:
				v.add(k+".backend", "unknown backend %q (backends: %s)", r.Backend, strings.Join(known, ", "))
			}
			if r.HTTP != nil {
				v.add(k+".http", "has no effect on a static route (set kind = \"http\")")
			}
			if r.LDAP != nil {
				v.add(k+".ldap", "has no effect on a static route (set kind = \"ldap\")")
			}
		}
		if firstDefault >= 0 {
			v.add(k, "unreachable: route.%d (default = true) matches every user first", firstDefault)
		} else if r.Default {
			firstDefault = i
		}
	}
}

func (v *validator) limits() {
	c, l := v.c, v.c.Limits
	set := func(key string, zero bool) bool { return !zero || c.has("limits."+key) }
	if set("max_line", l.MaxLine == 0) && (l.MaxLine < MinMaxLine || l.MaxLine > MaxMaxLine) {
		v.add("limits.max_line", "%d: want %d to %d (RFC 2683 §3.2.1.5 asks for at least %d)", l.MaxLine, MinMaxLine, MaxMaxLine, MinMaxLine)
	}
	if set("max_literal", l.MaxLiteral == 0) && l.MaxLiteral < 1 {
		v.add("limits.max_literal", "%d: must be positive", l.MaxLiteral)
	}
	for _, d := range []struct {
		key string
		d   time.Duration
	}{{"preauth_timeout", l.PreauthTimeout.Duration}, {"lock_timeout", l.LockTimeout.Duration}} {
		if set(d.key, d.d == 0) && d.d <= 0 {
			v.add("limits."+d.key, "%s: must be positive", formatDuration(d.d))
		}
	}
	if set("idle_timeout", l.IdleTimeout.Duration == 0) && l.IdleTimeout.Duration < MinIdleTimeout {
		v.add("limits.idle_timeout", "%s: must be at least %s (RFC 9051 §5.4)", l.IdleTimeout, formatDuration(MinIdleTimeout))
	}
	if set("max_bad_commands", l.MaxBadCommands == 0) && l.MaxBadCommands < 1 {
		v.add("limits.max_bad_commands", "%d: must be at least 1", l.MaxBadCommands)
	}
	if set("max_commands_in_flight", l.MaxCommandsInFlight == 0) && l.MaxCommandsInFlight < 1 {
		v.add("limits.max_commands_in_flight", "%d: must be at least 1", l.MaxCommandsInFlight)
	}
	if set("expansion_factor", l.ExpansionFactor == 0) && (l.ExpansionFactor < 1 || l.ExpansionFactor > MaxExpansionFactor) {
		v.add("limits.expansion_factor", "%d: want 1 to %d", l.ExpansionFactor, MaxExpansionFactor)
	}
	if set("expansion_floor", l.ExpansionFloor == 0) && (l.ExpansionFloor < MinExpansionFloor || l.ExpansionFloor > MaxExpansionFloor) {
		v.add("limits.expansion_floor", "%d: want %d to %d", l.ExpansionFloor, MinExpansionFloor, MaxExpansionFloor)
	}
	// Written as 0 (or less), these would silently take their defaults:
	// refused, so that what check-config prints is what runs.
	for _, b := range []struct {
		key string
		n   int
	}{{"max_connections", l.MaxConnections}, {"max_connections_per_ip", l.MaxConnectionsPerIP}} {
		if set(b.key, b.n == 0) && b.n < 1 {
			v.add("limits."+b.key, "%d: must be at least 1", b.n)
		}
	}
	if set("drain_timeout", l.DrainTimeout.Duration == 0) && l.DrainTimeout.Duration <= 0 {
		v.add("limits.drain_timeout", "%s: must be positive (clients get BYE, then this long to go before they are cut off; \"1s\" for a quick stop)", l.DrainTimeout)
	}
	if set("auth_failure_delay", l.AuthFailureDelay.Duration == 0) && l.AuthFailureDelay.Duration <= 0 {
		v.add("limits.auth_failure_delay", "%s: must be positive", l.AuthFailureDelay)
	}
	for _, b := range []struct {
		key string
		n   int
	}{{"login_burst_per_ip", l.LoginBurstPerIP}, {"login_burst_per_user", l.LoginBurstPerUser}} {
		if set(b.key, b.n == 0) && b.n < 1 {
			v.add("limits."+b.key, "%d: must be at least 1", b.n)
		}
	}
	for _, d := range []struct {
		key string
		d   time.Duration
	}{{"login_interval_per_ip", l.LoginIntervalPerIP.Duration}, {"login_interval_per_user", l.LoginIntervalPerUser.Duration}} {
		if set(d.key, d.d == 0) && d.d <= 0 {
			v.add("limits."+d.key, "%s: must be positive", formatDuration(d.d))
		}
	}
}

func (v *validator) log() {
	switch lv := v.c.Log.LevelOrDefault(); lv {
	case "trace", "debug", "info", "warn", "error":
	default:
		v.add("log.level", "%q: want \"trace\", \"debug\", \"info\", \"warn\" or \"error\"", lv)
	}
	switch f := v.c.Log.FormatOrDefault(); f {
	case "json", "console":
	default:
		v.add("log.format", "%q: want \"json\" or \"console\"", f)
	}
}

// loadCAFile reads a PEM bundle of CA certificates.
func loadCAFile(name string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", name)
	}
	return pool, nil
}
