package configs

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Route kinds.
const (
	RouteStatic = "static"
	RouteHTTP   = "http"
	RouteLDAP   = "ldap"
)

// Defaults of directory routes.
const (
	DefaultLookupTimeout  = 5 * time.Second
	DefaultLookupCacheTTL = 60 * time.Second
	DefaultLookupCache    = 10000
	DefaultLDAPAttribute  = "mailHost"
	DefaultLDAPPort       = 143
	DefaultLDAPConns      = 4
	// MaxLookupCacheTTL bounds cache_ttl: a change in the directory (a
	// user moved, an account disabled) reaches uidgate at most this late.
	MaxLookupCacheTTL = time.Hour
	// MinAdminToken is the shortest admin token accepted, in bytes.
	MinAdminToken = 16
)

// HTTPLookup is a kind = "http" route: an auth service speaking nginx's
// mail auth_http protocol is asked for each login's backend.
type HTTPLookup struct {
	// URL is the auth service: "http://host:port/path" or https://;
	// required.
	URL string `toml:"url"`
	// Timeout bounds one request, from connecting to the last header of
	// the answer; default "5s".
	Timeout Duration `toml:"timeout,omitempty"`
	// CAFile is a PEM bundle of CAs trusted for an https URL; default the
	// system roots.
	CAFile string `toml:"ca_file,omitempty"`
	// Headers are sent with every request, as "Name: value" (nginx's
	// auth_http_header), such as a shared secret; check-config prints
	// their values redacted.
	Headers []string `toml:"headers,omitempty"`
	// Template names a [[backend]] with template = true: an answer whose
	// Auth-Server:Auth-Port is no configured backend's address is served
	// with its settings at that address. Default none: such an answer is
	// NO [UNAVAILABLE].
	Template string `toml:"template,omitempty"`
	// CacheTTL is how long an OK answer is reused for the same login name
	// and password (package lookup keeps a keyed hash of the password,
	// never the password); default "60s", "0s" for no cache, at most 1h.
	CacheTTL Duration `toml:"cache_ttl"`
	// CacheSize bounds the cached answers; default 10000.
	CacheSize int `toml:"cache_size,omitempty"`
}

// LDAPLookup is a kind = "ldap" route: a directory is searched for the
// user's entry, whose Attribute names the backend.
type LDAPLookup struct {
	// URLs are the directory's servers, "ldap://host:port" or
	// "ldaps://host:port", tried in order; at least one.
	URLs []string `toml:"urls"`
	// StartTLS upgrades ldap:// connections with StartTLS. Default false.
	StartTLS bool `toml:"starttls,omitempty"`
	// CAFile is a PEM bundle of CAs trusted for ldaps:// and StartTLS;
	// default the system roots.
	CAFile string `toml:"ca_file,omitempty"`
	// BindDN and BindPassword (or BindPasswordFile, whose first line is
	// the password) authenticate the searches; an empty BindDN searches
	// anonymously. The password is never logged; check-config prints it
	// redacted.
	BindDN           string `toml:"bind_dn,omitempty"`
	BindPassword     string `toml:"bind_password,omitempty"`
	BindPasswordFile string `toml:"bind_password_file,omitempty"`
	// Base is where the search starts; required.
	Base string `toml:"base"`
	// Filter is the search filter, with %u for the login name, %n for its
	// part before the last '@', %d for the part after it and %% for '%',
	// each escaped (RFC 4515); required, e.g.
	// "(&(objectClass=inetOrgPerson)(uid=%u))". Exactly one entry must
	// match.
	Filter string `toml:"filter"`
	// Attribute holds the backend: a host, host:port, or a [[backend]]'s
	// name; default "mailHost".
	Attribute string `toml:"attribute,omitempty"`
	// Port completes an answer without one; default 143.
	Port int `toml:"port,omitempty"`
	// Template: as for HTTPLookup.
	Template string `toml:"template,omitempty"`
	// Timeout bounds connecting, binding and one search; default "5s".
	Timeout Duration `toml:"timeout,omitempty"`
	// MaxConns bounds the connections kept open to the directory and
	// reused; default 4.
	MaxConns int `toml:"max_conns,omitempty"`
	// CacheTTL is how long an answer is reused for the same login name;
	// default "60s", "0s" for no cache, at most 1h.
	CacheTTL Duration `toml:"cache_ttl"`
	// CacheSize bounds the cached answers; default 10000.
	CacheSize int `toml:"cache_size,omitempty"`
}

// Admin guards the admin view (/admin/sessions, /admin/locks,
// POST /admin/kick) on the metrics listener. With neither token nor
// token_file it answers only clients on loopback addresses; with one, it
// answers any client that sends "Authorization: Bearer <token>", and no
// other (loopback included).
type Admin struct {
	// Token is the bearer token, at least 16 characters; check-config
	// prints it redacted. Prefer TokenFile.
	Token string `toml:"token,omitempty"`
	// TokenFile holds the token (its first line).
	TokenFile string `toml:"token_file,omitempty"`
}

// KindOrDefault returns r.Kind, or "static" if unset.
func (r Route) KindOrDefault() string { return orDefault(r.Kind, RouteStatic) }

// TimeoutOrDefault returns h.Timeout, or 5s.
func (h HTTPLookup) TimeoutOrDefault() time.Duration {
	return orDefault(h.Timeout.Duration, DefaultLookupTimeout)
}

// CacheSizeOrDefault returns h.CacheSize, or 10000.
func (h HTTPLookup) CacheSizeOrDefault() int { return orDefault(h.CacheSize, DefaultLookupCache) }

// TimeoutOrDefault returns l.Timeout, or 5s.
func (l LDAPLookup) TimeoutOrDefault() time.Duration {
	return orDefault(l.Timeout.Duration, DefaultLookupTimeout)
}

// AttributeOrDefault returns l.Attribute, or "mailHost".
func (l LDAPLookup) AttributeOrDefault() string { return orDefault(l.Attribute, DefaultLDAPAttribute) }

// PortOrDefault returns l.Port, or 143.
func (l LDAPLookup) PortOrDefault() int { return orDefault(l.Port, DefaultLDAPPort) }

// MaxConnsOrDefault returns l.MaxConns, or 4.
func (l LDAPLookup) MaxConnsOrDefault() int { return orDefault(l.MaxConns, DefaultLDAPConns) }

// CacheSizeOrDefault returns l.CacheSize, or 10000.
func (l LDAPLookup) CacheSizeOrDefault() int { return orDefault(l.CacheSize, DefaultLookupCache) }

// LookupCacheTTL returns the cache TTL of route i's lookup: its cache_ttl,
// the default when it is not written, 0 when it is written "0s".
func (c *Config) LookupCacheTTL(i int) time.Duration {
	r := c.Routes[i]
	var d time.Duration
	key := fmt.Sprintf("route.%d.%s.cache_ttl", i, r.KindOrDefault())
	switch {
	case r.HTTP != nil && r.KindOrDefault() == RouteHTTP:
		d = r.HTTP.CacheTTL.Duration
	case r.LDAP != nil && r.KindOrDefault() == RouteLDAP:
		d = r.LDAP.CacheTTL.Duration
	default:
		return 0
	}
	if d == 0 && !c.has(key) {
		return DefaultLookupCacheTTL
	}
	return d
}

// BindPasswordValue returns the bind password: BindPassword, or the first
// line of BindPasswordFile.
func (l LDAPLookup) BindPasswordValue() (string, error) {
	if l.BindPasswordFile == "" {
		return l.BindPassword, nil
	}
	return firstLine(l.BindPasswordFile)
}

// TokenValue returns the admin token: Token, or the first line of
// TokenFile; "" when neither is set.
func (a Admin) TokenValue() (string, error) {
	if a.TokenFile == "" {
		return a.Token, nil
	}
	return firstLine(a.TokenFile)
}

// firstLine reads a secret file: its first line, without the line end.
func firstLine(name string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", err
	}
	s, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimRight(s, "\r"), nil
}

// TLSConfig returns the client TLS configuration for an https URL (its CA
// bundle), or nil for http.
func (h HTTPLookup) TLSConfig() (*tls.Config, error) {
	if !strings.HasPrefix(strings.ToLower(h.URL), "https://") {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if h.CAFile != "" {
		pool, err := loadCAFile(h.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// TLSConfig returns the client TLS configuration for ldaps:// and
// StartTLS (its CA bundle); the server name is set per connection.
func (l LDAPLookup) TLSConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if l.CAFile != "" {
		pool, err := loadCAFile(l.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// HeaderFields splits Headers into names and values (Validate has checked
// them).
func (h HTTPLookup) HeaderFields() http.Header {
	out := http.Header{}
	for _, f := range h.Headers {
		name, value, _ := strings.Cut(f, ":")
		out.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	return out
}

// effectiveRoute is route i with its defaults written out, and its lookup
// tables copied (Effective must not alias them).
func (c *Config) effectiveRoute(i int) Route {
	r := c.Routes[i]
	r.Kind = r.KindOrDefault()
	ttl := Duration{c.LookupCacheTTL(i)}
	if r.HTTP != nil {
		h := *r.HTTP
		h.Headers = append([]string(nil), h.Headers...)
		if r.Kind == RouteHTTP {
			h.Timeout.Duration = h.TimeoutOrDefault()
			h.CacheTTL = ttl
			h.CacheSize = h.CacheSizeOrDefault()
		}
		r.HTTP = &h
	}
	if r.LDAP != nil {
		l := *r.LDAP
		l.URLs = append([]string(nil), l.URLs...)
		if r.Kind == RouteLDAP {
			l.Timeout.Duration = l.TimeoutOrDefault()
			l.Attribute = l.AttributeOrDefault()
			l.Port = l.PortOrDefault()
			l.MaxConns = l.MaxConnsOrDefault()
			l.CacheTTL = ttl
			l.CacheSize = l.CacheSizeOrDefault()
		}
		r.LDAP = &l
	}
	return r
}

// redactSecrets replaces, in e (an effective copy), the secrets printed
// by check-config.
func (e *Config) redactSecrets() {
	const redacted = "(redacted)"
	for i := range e.Routes {
		if h := e.Routes[i].HTTP; h != nil {
			for j, f := range h.Headers {
				if name, _, ok := strings.Cut(f, ":"); ok {
					h.Headers[j] = name + ": " + redacted
				}
			}
		}
		if l := e.Routes[i].LDAP; l != nil && l.BindPassword != "" {
			l.BindPassword = redacted
		}
	}
	if e.Admin.Token != "" {
		e.Admin.Token = redacted
	}
}

// lookupRoute checks route i of kind http or ldap (k is "route.i").
func (v *validator) lookupRoute(k string, i int, r Route, templates map[string]bool) {
	c := v.c
	kind := r.KindOrDefault()
	if r.Backend != "" {
		v.add(k+".backend", "set, but a kind = %q route's backend comes from its %s answer: remove it (or set kind = \"static\")", kind, kind)
	}
	template := ""
	switch kind {
	case RouteHTTP:
		if r.LDAP != nil {
			v.add(k+".ldap", "has no effect with kind = \"http\"")
		}
		h := r.HTTP
		if h == nil {
			v.add(k+".http", "required with kind = \"http\": a [route.http] table with at least url")
			return
		}
		hk := k + ".http"
		template = h.Template
		u, err := url.Parse(h.URL)
		switch {
		case h.URL == "":
			v.add(hk+".url", "required (the auth service, such as \"http://127.0.0.1:9000/auth\")")
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Fragment != "":
			v.add(hk+".url", "%q: want \"http://host[:port]/path\" or \"https://...\"", h.URL)
		case u.Scheme == "http" && h.CAFile != "":
			v.add(hk+".ca_file", "has no effect with an http:// url (use https://)")
		}
		if h.CAFile != "" {
			if _, err := loadCAFile(h.CAFile); err != nil {
				v.add(hk+".ca_file", "%v", err)
			}
		}
		for j, f := range h.Headers {
			name, _, ok := strings.Cut(f, ":")
			name = strings.TrimSpace(name)
			if !ok || name == "" || strings.ContainsAny(f, "\r\n") || !validHeaderName(name) {
				v.add(fmt.Sprintf("%s.headers.%d", hk, j), "want \"Name: value\" on one line")
			} else if strings.HasPrefix(strings.ToLower(name), "auth-") || strings.EqualFold(name, "client-ip") || strings.EqualFold(name, "client-host") {
				v.add(fmt.Sprintf("%s.headers.%d", hk, j), "%q is one of the headers uidgate sends itself", name)
			}
		}
		v.lookupCommon(hk, h.Timeout, h.CacheTTL, h.CacheSize, c.has(hk+".timeout"))
	case RouteLDAP:
		if r.HTTP != nil {
			v.add(k+".http", "has no effect with kind = \"ldap\"")
		}
		l := r.LDAP
		if l == nil {
			v.add(k+".ldap", "required with kind = \"ldap\": a [route.ldap] table with urls, base and filter")
			return
		}
		lk := k + ".ldap"
		template = l.Template
		if len(l.URLs) == 0 {
			v.add(lk+".urls", "at least one (such as \"ldap://ldap.internal:389\")")
		}
		for j, s := range l.URLs {
			u, err := url.Parse(s)
			if err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.User != nil || u.RawQuery != "" {
				v.add(fmt.Sprintf("%s.urls.%d", lk, j), "%q: want \"ldap://host[:port]\" or \"ldaps://host[:port]\"", s)
				continue
			}
			if u.Scheme == "ldaps" && l.StartTLS {
				v.add(lk+".starttls", "has no effect on ldaps:// url %q (TLS from the start)", s)
			}
		}
		if l.CAFile != "" {
			if _, err := loadCAFile(l.CAFile); err != nil {
				v.add(lk+".ca_file", "%v", err)
			}
		}
		switch {
		case l.BindPassword != "" && l.BindPasswordFile != "":
			v.add(lk+".bind_password_file", "set with bind_password: set one")
		case l.BindDN == "" && (l.BindPassword != "" || l.BindPasswordFile != ""):
			v.add(lk+".bind_dn", "required with a bind password (an empty bind_dn searches anonymously)")
		case l.BindPasswordFile != "":
			if _, err := firstLine(l.BindPasswordFile); err != nil {
				v.add(lk+".bind_password_file", "%v", err)
			}
		}
		if l.Base == "" {
			v.add(lk+".base", "required (where the search starts, such as \"ou=people,dc=example,dc=org\")")
		}
		if err := CheckLDAPFilter(l.Filter); err != nil {
			v.add(lk+".filter", "%v", err)
		}
		if a := l.Attribute; a != "" && !validAttribute(a) {
			v.add(lk+".attribute", "%q: want an attribute name such as \"mailHost\"", a)
		}
		if c.has(lk+".port") && (l.Port < 1 || l.Port > 65535) {
			v.add(lk+".port", "%d: want 1 to 65535", l.Port)
		}
		if c.has(lk+".max_conns") && (l.MaxConns < 1 || l.MaxConns > 64) {
			v.add(lk+".max_conns", "%d: want 1 to 64", l.MaxConns)
		}
		v.lookupCommon(lk, l.Timeout, l.CacheTTL, l.CacheSize, c.has(lk+".timeout"))
	default:
		v.add(k+".kind", "%q: want \"static\", \"http\" or \"ldap\"", r.Kind)
		return
	}
	if template != "" && !templates[template] {
		v.add(fmt.Sprintf("%s.%s.template", k, kind), "%q: no [[backend]] of that name has template = true", template)
	}
}

func (v *validator) lookupCommon(k string, timeout, ttl Duration, size int, timeoutSet bool) {
	if timeout.Duration < 0 || timeout.Duration == 0 && timeoutSet {
		v.add(k+".timeout", "%s: must be positive", timeout)
	}
	if ttl.Duration < 0 || ttl.Duration > MaxLookupCacheTTL {
		v.add(k+".cache_ttl", "%s: want 0s (no cache) to %s", ttl, formatDuration(MaxLookupCacheTTL))
	}
	if size < 0 || size == 0 && v.c.has(k+".cache_size") {
		v.add(k+".cache_size", "%d: must be positive", size)
	}
}

// CheckLDAPFilter checks an ldap route's filter template: parenthesized,
// with at least one of %u, %n, %d, and no other '%' escape.
func CheckLDAPFilter(f string) error {
	if f == "" {
		return fmt.Errorf("required (such as \"(&(objectClass=inetOrgPerson)(uid=%%u))\")")
	}
	if !strings.HasPrefix(f, "(") || !strings.HasSuffix(f, ")") {
		return fmt.Errorf("%q: want a filter in parentheses", f)
	}
	uses := false
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			continue
		}
		if i+1 >= len(f) {
			return fmt.Errorf("%q: a trailing '%%' (write %%%% for '%%')", f)
		}
		switch f[i+1] {
		case 'u', 'n', 'd':
			uses = true
		case '%':
		default:
			return fmt.Errorf("%q: unknown %%%c (want %%u, %%n, %%d or %%%%)", f, f[i+1])
		}
		i++
	}
	if !uses {
		return fmt.Errorf("%q: names no part of the login (%%u, %%n or %%d)", f)
	}
	return nil
}

func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return s != ""
}

func validAttribute(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' && i > 0) {
			return false
		}
	}
	return s != ""
}

// admin checks [admin].
func (v *validator) admin() {
	a := v.c.Admin
	switch {
	case a.Token != "" && a.TokenFile != "":
		v.add("admin.token_file", "set with admin.token: set one")
		return
	case a.Token == "" && a.TokenFile == "":
		return
	}
	if v.c.Metrics.Address == "" {
		v.add("admin", "has no effect without metrics.address (the admin view is served there)")
	}
	key := "admin.token"
	if a.TokenFile != "" {
		key = "admin.token_file"
	}
	tok, err := a.TokenValue()
	switch {
	case err != nil:
		v.add(key, "%v", err)
	case len(tok) < MinAdminToken:
		v.add(key, "the token is %d characters: want at least %d (such as `openssl rand -hex 32`)", len(tok), MinAdminToken)
	case strings.ContainsAny(tok, " \t\r\n"):
		v.add(key, "the token has spaces in it")
	}
}
