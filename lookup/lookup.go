// Package lookup routes logins: static routes as package rules matches
// them, and directory routes by asking, at each login, an HTTP auth service
// speaking nginx's mail auth_http protocol (kind = "http") or an LDAP
// directory (kind = "ldap") which backend the user's mailbox is on. It does
// the I/O that package rules, pure policy, leaves out: rules picks the
// route and maps an answer to a backend (rules.Resolve); lookup asks, caches
// and builds the backend to dial.
//
// A directory's answer is a routing answer only: uidgate still logs in to
// the backend with the client's own name and password, and the backend
// decides whether they are right. A failure to ask (timeout, refused
// connection, an answer that cannot be read or names no backend uidgate
// knows) is ErrUnavailable: the client is answered NO [UNAVAILABLE] and
// never sent to some other backend.
package lookup

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"uidgate/configs"
	"uidgate/rules"
	"uidgate/upstream"
)

// Request is one login to route.
type Request struct {
	// User and Pass are the client's login name and password. Pass goes
	// to an HTTP auth service (Auth-Pass) as nginx sends it; it is never
	// logged or kept (the cache keeps a keyed hash of it).
	User, Pass string
	// Method is "plain" (LOGIN, AUTHENTICATE PLAIN) or "login"
	// (AUTHENTICATE LOGIN), as nginx's Auth-Method.
	Method string
	// Attempt counts the logins tried on this connection, from 1
	// (Auth-Login-Attempt).
	Attempt int
	// ClientIP is the client's address (Client-IP), as a trusted PROXY
	// header gave it if any.
	ClientIP string
	// Secure: the client's connection is TLS (Auth-SSL: on).
	Secure bool
}

// ErrNoRoute: no route matches the user, or the directory has no entry
// for it. The client is answered as for a wrong password.
var ErrNoRoute = errors.New("no route for user")

// ErrUnavailable wraps every failure to get a usable answer: the client is
// answered NO [UNAVAILABLE].
var ErrUnavailable = errors.New("directory unavailable")

// Refused is an auth service's refusal of a login (Auth-Status other than
// OK). nginx answers it "tag NO <text>"; after Wait (Auth-Wait) the
// session goes on, and without Auth-Wait nginx closes the connection.
type Refused struct {
	// Text is the Auth-Status text, on one line.
	Text string
	// Code is the IMAP response code to answer with: Auth-Error-Code when
	// it is one of the RFC 5530 codes a login may get, else
	// AUTHENTICATIONFAILED (nginx uses Auth-Error-Code for SMTP only).
	Code string
	// Wait is the Auth-Wait delay; 0 when the answer had none.
	Wait time.Duration
	// Close: the answer had no Auth-Wait, so the connection ends after
	// the NO, as nginx ends it.
	Close bool
}

func (r *Refused) Error() string {
	return fmt.Sprintf("login refused by the auth service: [%s] %s", r.Code, r.Text)
}

// maxWait bounds Auth-Wait: a session is not held longer for it.
const maxWait = 60 * time.Second

// answer is what a directory said for one user: where its backend is.
type answer struct {
	host, port string // as rules.ParseHost returns them
}

// directory asks one route's directory.
type directory interface {
	// ask returns the answer for req, ErrNoRoute, a *Refused, or another
	// error (unavailable).
	ask(ctx context.Context, req Request) (answer, error)
	// cacheKey is the key of req's answer in the cache; "" for no cache.
	cacheKey(req Request) string
	// defaultPort completes answers without a port; "" for none.
	defaultPort() string
	template() string
	close()
}

// route is one directory route, with its cache.
type route struct {
	dir   directory
	cache *ttlCache // nil: no cache
}

// Router routes logins for one configuration. It is safe for concurrent
// use; Close releases its connections (a SIGHUP reload builds a new one).
type Router struct {
	rules     *rules.Router
	backends  map[string]*upstream.Backend // configured, by name
	addrs     []rules.BackendAddr
	templates map[string]configs.Backend
	routes    map[int]*route

	// made holds the backends made from a template, by name, so that
	// their TLS configuration is built once; bounded by maxMade.
	mu   sync.Mutex
	made map[string]*upstream.Backend
}

// maxMade bounds Router.made: a directory naming ever new addresses costs
// a little more per login past it, not memory.
const maxMade = 4096

// New builds the router of a validated configuration. It does not contact
// any directory: connections are made at the first login that needs one.
func New(c *configs.Config) (*Router, error) {
	rr, err := c.Router()
	if err != nil {
		return nil, err
	}
	r := &Router{
		rules:     rr,
		backends:  make(map[string]*upstream.Backend, len(c.Backends)),
		templates: make(map[string]configs.Backend),
		routes:    make(map[int]*route),
		made:      make(map[string]*upstream.Backend),
	}
	for _, b := range c.Backends {
		if b.Template {
			r.templates[b.Name] = b
			continue
		}
		ub, err := NewBackend(b)
		if err != nil {
			return nil, err
		}
		r.backends[b.Name] = ub
		r.addrs = append(r.addrs, rules.BackendAddr{Name: b.Name, Address: b.Address})
	}
	// One random key per router: the cache's hash of a password is
	// worthless outside this process, and changes with every reload.
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	for i, rc := range c.Routes {
		var d directory
		var size int
		switch rc.KindOrDefault() {
		case configs.RouteHTTP:
			if d, err = newHTTPDirectory(*rc.HTTP, key); err != nil {
				r.Close()
				return nil, fmt.Errorf("route %d: %w", i, err)
			}
			size = rc.HTTP.CacheSizeOrDefault()
		case configs.RouteLDAP:
			if d, err = newLDAPDirectory(*rc.LDAP); err != nil {
				r.Close()
				return nil, fmt.Errorf("route %d: %w", i, err)
			}
			size = rc.LDAP.CacheSizeOrDefault()
		default:
			continue
		}
		rt := &route{dir: d}
		if ttl := c.LookupCacheTTL(i); ttl > 0 {
			if rt.cache, err = newTTLCache(size, ttl); err != nil {
				r.Close()
				return nil, fmt.Errorf("route %d: %w", i, err)
			}
		}
		r.routes[i] = rt
	}
	return r, nil
}

// NewBackend makes the upstream backend of a configured (non-template)
// [[backend]].
func NewBackend(b configs.Backend) (*upstream.Backend, error) {
	tc, err := b.TLSConfig()
	if err != nil {
		return nil, fmt.Errorf("backend %q: %w", b.Name, err)
	}
	return &upstream.Backend{
		Name:             b.Name,
		Address:          b.Address,
		TLS:              upstream.TLSMode(b.TLSModeOrDefault()),
		TLSConfig:        tc,
		DialTimeout:      b.DialTimeoutOrDefault(),
		Legacy:           b.Legacy,
		ExplicitSeen:     b.ExplicitSeenOn(),
		CyrusNamespace:   b.CyrusNamespace,
		IgnoreOutOfRange: b.IgnoreOutOfRange(),
		ProxyProtocol:    b.ProxyProtocolVersion(),
		SendClientID:     b.SendClientID,
	}, nil
}

// Close closes the directories' idle connections; connections in use are
// closed when their lookup ends. Lookups after Close fail.
func (r *Router) Close() {
	for _, rt := range r.routes {
		rt.dir.close()
	}
}

// Route returns the backend for req: a static route's at once, a
// directory route's from its cache or its directory. Its errors are
// ErrNoRoute, a *Refused, or wrap ErrUnavailable; they never hold the
// password.
func (r *Router) Route(ctx context.Context, req Request) (*upstream.Backend, error) {
	t, ok := r.rules.Match(req.User)
	if !ok {
		return nil, ErrNoRoute
	}
	if t.Backend != "" {
		b, ok := r.backends[t.Backend]
		if !ok {
			return nil, fmt.Errorf("%w: route %d names backend %q, which is not configured", ErrUnavailable, t.Index, t.Backend)
		}
		return b, nil
	}
	rt := r.routes[t.Index]
	if rt == nil {
		return nil, fmt.Errorf("%w: route %d has no directory", ErrUnavailable, t.Index)
	}
	var key string
	if rt.cache != nil {
		key = rt.dir.cacheKey(req)
		if res, ok := rt.cache.Get(key); ok {
			return r.backend(res)
		}
	}
	ans, err := rt.dir.ask(ctx, req)
	var refused *Refused
	switch {
	case err == nil:
	case errors.Is(err, ErrNoRoute), errors.As(err, &refused):
		if rt.cache != nil {
			rt.cache.Remove(key) // only OK answers are ever kept
		}
		return nil, err
	case errors.Is(err, ErrUnavailable):
		return nil, err
	default:
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	res, err := rules.Resolve(ans.host, ans.port, rt.dir.defaultPort(), r.addrs, rt.dir.template())
	if err != nil {
		return nil, fmt.Errorf("%w: route %d: the answer %s: %v", ErrUnavailable, t.Index, hostPort(ans), err)
	}
	b, err := r.backend(res)
	if err != nil {
		return nil, err
	}
	if rt.cache != nil {
		rt.cache.Add(key, res)
	}
	return b, nil
}

func hostPort(a answer) string {
	if a.port == "" {
		return a.host
	}
	return net.JoinHostPort(a.host, a.port)
}

// backend returns the upstream backend of a resolution: a configured
// one, or one made from a template for the answered address.
func (r *Router) backend(res rules.Resolution) (*upstream.Backend, error) {
	if !res.Template {
		b, ok := r.backends[res.Backend]
		if !ok {
			return nil, fmt.Errorf("%w: backend %q is not configured", ErrUnavailable, res.Backend)
		}
		return b, nil
	}
	// The name carries the address: lock keys and metrics tell two
	// servers served by one template apart.
	name := res.Backend + "@" + res.Address
	r.mu.Lock()
	b, ok := r.made[name]
	r.mu.Unlock()
	if ok {
		return b, nil
	}
	tpl, ok := r.templates[res.Backend]
	if !ok {
		return nil, fmt.Errorf("%w: template %q is not configured", ErrUnavailable, res.Backend)
	}
	tpl.Name, tpl.Address = name, res.Address
	b, err := NewBackend(tpl)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if b.TLSConfig != nil && tpl.ServerName == "" {
		// The certificate is checked against the answered host.
		host, _, _ := net.SplitHostPort(res.Address)
		b.TLSConfig = b.TLSConfig.Clone()
		b.TLSConfig.ServerName = host
	}
	r.mu.Lock()
	if len(r.made) < maxMade {
		r.made[name] = b
	}
	r.mu.Unlock()
	return b, nil
}

// passwordKey is the cache's stand-in for a password: HMAC-SHA-256 under
// the router's random key.
func passwordKey(key []byte, pass string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(pass))
	return string(m.Sum(nil))
}

// loginCodes are the response codes an auth service may ask for in
// Auth-Error-Code (RFC 5530 codes that fit a refused login).
var loginCodes = map[string]bool{
	"AUTHENTICATIONFAILED": true,
	"AUTHORIZATIONFAILED":  true,
	"EXPIRED":              true,
	"PRIVACYREQUIRED":      true,
	"CONTACTADMIN":         true,
	"UNAVAILABLE":          true,
	"LIMIT":                true,
}

// oneLine keeps an answer's text fit for an IMAP response: printable,
// one line, bounded.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// tlsClone returns a copy of cfg for one server name (nil stays nil).
func tlsClone(cfg *tls.Config, serverName string) *tls.Config {
	if cfg == nil {
		return nil
	}
	c := cfg.Clone()
	if c.ServerName == "" {
		c.ServerName = serverName
	}
	return c
}

// ttlCache is an LRU whose entries expire. expirable.LRU does the same
// with a cleanup goroutine that nothing can stop (golang-lru v2.0.7), and
// a Router is made anew at every reload: each would leak one, holding the
// old cache. Here an expired entry is dropped when it is looked up, and
// the LRU bound holds the rest.
type ttlCache struct {
	c   *lru.Cache[string, ttlEntry]
	ttl time.Duration
}

type ttlEntry struct {
	res     rules.Resolution
	expires time.Time
}

func newTTLCache(size int, ttl time.Duration) (*ttlCache, error) {
	c, err := lru.New[string, ttlEntry](size)
	if err != nil {
		return nil, err
	}
	return &ttlCache{c: c, ttl: ttl}, nil
}

// Get returns key's resolution if it is there and not expired.
func (t *ttlCache) Get(key string) (rules.Resolution, bool) {
	e, ok := t.c.Get(key)
	if !ok {
		return rules.Resolution{}, false
	}
	if time.Now().After(e.expires) {
		t.c.Remove(key)
		return rules.Resolution{}, false
	}
	return e.res, true
}

// Add keeps res under key for the TTL.
func (t *ttlCache) Add(key string, res rules.Resolution) {
	t.c.Add(key, ttlEntry{res: res, expires: time.Now().Add(t.ttl)})
}

// Remove drops key.
func (t *ttlCache) Remove(key string) { t.c.Remove(key) }
