// Package configs reads uidgate's TOML configuration: a strict schema in
// which an unknown key is an error naming its file and line, defaults kept in
// accessor methods (documented at each field, so the zero value of a field
// means "default"), and Validate, which reports every problem at once.
//
// Load and Parse check syntax, types and key names only; call Validate
// before using a Config.
package configs

import (
	_ "embed"
	"encoding"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"uidgate/rules"
)

//go:embed default.toml
var defaultTOML []byte

// Config is the whole configuration file.
type Config struct {
	// Listeners are the addresses uidgate accepts clients on; at least one.
	Listeners []Listener `toml:"listener"`
	// TLS holds defaults for listeners' TLS.
	TLS TLS `toml:"tls"`
	// Backends are the IMAP servers uidgate proxies to; at least one.
	Backends []Backend `toml:"backend"`
	// Routes map login names to backends; the first that matches wins
	// (see rules.Router). At least one.
	Routes []Route `toml:"route"`
	// Limits bound what clients may send and how long they may wait.
	Limits Limits `toml:"limits"`
	// Serialization says which commands of different sessions are made to
	// reach a backend one after another.
	Serialization Serialization `toml:"serialization"`
	// Locks says where the serialization's locks live: this process, or
	// etcd shared by several instances.
	Locks Locks `toml:"locks"`
	// Log configures logging.
	Log Log `toml:"log"`
	// Metrics configures the HTTP listener for /metrics, /healthz, /readyz.
	Metrics Metrics `toml:"metrics"`
	// Admin guards the admin view (/admin/...) on the metrics listener.
	Admin Admin `toml:"admin"`

	// file is the name given to Parse; lines maps each key as written,
	// with array indexes ("listener.0.address"), to its 1-based line.
	file  string
	lines map[string]int
}

// TLSMode is how a connection uses TLS.
type TLSMode string

// TLS modes.
const (
	TLSNone     TLSMode = "none"     // cleartext
	TLSStartTLS TLSMode = "starttls" // cleartext upgraded by STARTTLS (RFC 9051 §6.2.1)
	TLSImplicit TLSMode = "implicit" // TLS from the first byte (RFC 8314, port 993)
)

func (m TLSMode) valid() bool {
	return m == TLSNone || m == TLSStartTLS || m == TLSImplicit
}

// Listener is one address clients connect to.
type Listener struct {
	// Address is host:port to listen on; required.
	Address string `toml:"address"`
	// TLS is none (default), starttls or implicit.
	TLS TLSMode `toml:"tls"`
	// RequireTLS, only with tls = "starttls", advertises LOGINDISABLED and
	// refuses AUTHENTICATE until STARTTLS (RFC 9051 §6.2.3). Default false.
	RequireTLS bool `toml:"require_tls"`
	// Cert is a PEM certificate chain; default [tls].cert. Required, here
	// or there, unless tls is none.
	Cert string `toml:"cert"`
	// Key is the PEM private key for Cert; default [tls].key.
	Key string `toml:"key"`
	// TrustedProxies lists networks (CIDR) whose connections start with a
	// PROXY protocol header (v1 or v2) giving the real client address;
	// empty (default): no PROXY protocol.
	TrustedProxies []string `toml:"trusted_proxies"`
}

// TLS holds defaults shared by listeners.
type TLS struct {
	// Cert is the PEM certificate chain listeners use when they set none.
	Cert string `toml:"cert"`
	// Key is the PEM private key for Cert.
	Key string `toml:"key"`
	// MinVersion is the oldest TLS version offered to clients: "1.2"
	// (default), "1.3", or for legacy clients "1.0" or "1.1", which also
	// offer the RSA key exchange suites (see legacyCipherSuites) and are
	// warned about at start (Warnings).
	MinVersion string `toml:"min_version"`
}

// Backend is one upstream IMAP server.
type Backend struct {
	// Name identifies the backend in routes and logs; required, unique.
	Name string `toml:"name"`
	// Address is host:port of the server; required.
	Address string `toml:"address"`
	// TLS is none (default), starttls or implicit.
	TLS TLSMode `toml:"tls"`
	// CAFile is a PEM bundle of CAs trusted for the server's certificate;
	// default the system roots.
	CAFile string `toml:"ca_file"`
	// ServerName is the name sent in SNI and verified in the certificate;
	// default the host part of Address.
	ServerName string `toml:"server_name"`
	// InsecureSkipVerify accepts any server certificate. Default false.
	InsecureSkipVerify bool `toml:"insecure_skip_verify"`
	// MinVersion is the oldest TLS version accepted from the server: "1.0",
	// "1.1", "1.2" (default) or "1.3". Old Cyrus builds may need "1.0".
	MinVersion string `toml:"min_version"`
	// Legacy marks a server whose message numbers are never trusted: uidgate
	// resyncs by UID after every EXPUNGE/EXISTS and sets \Seen explicitly.
	// Default false.
	Legacy bool `toml:"legacy"`
	// DialTimeout bounds connecting, TLS and greeting; default 10s.
	DialTimeout Duration `toml:"dial_timeout"`
	// ExplicitSeen: "auto" (default: on for legacy backends), "on" or
	// "off". When on, a body fetch that would set \Seen is sent as .PEEK
	// and uidgate sets \Seen with a STORE under the user's seen lock.
	ExplicitSeen string `toml:"explicit_seen"`
	// ProxyProtocol sends a PROXY protocol header with the client's
	// address first: "v1", "v2", or "" (default: none).
	ProxyProtocol string `toml:"proxy_protocol"`
	// SendClientID sends ID ("x-originating-ip" ...) before login, for a
	// backend that trusts uidgate's address (Dovecot login_trusted_networks).
	// Default false.
	SendClientID bool `toml:"send_client_id"`
	// CyrusNamespace says mailbox names follow the Cyrus classic namespace
	// (other users' mailboxes under "user."); see rules.CanonicalMailbox.
	// Default false.
	CyrusNamespace bool `toml:"cyrus_namespace"`
	// Template makes this backend a template for directory routes (kind
	// http or ldap): it has no address of its own, and an answer naming
	// an address no other backend has is served with its settings (TLS,
	// legacy, namespace...) at that address. Static routes cannot name
	// it. Default false.
	Template bool `toml:"template,omitempty"`
	// OutOfRange is how a FETCH, STORE, COPY or MOVE naming message
	// numbers beyond the client's view is answered: "bad" (RFC 9051 §9,
	// as Dovecot does), "ignore" (as Cyrus 2.3 and 3.x do: the numbers
	// beyond are not named; none left gives FETCH/COPY/MOVE "NO No
	// matching messages", STORE OK), or "auto" (default: "ignore" with
	// cyrus_namespace, else "bad").
	OutOfRange string `toml:"out_of_range"`
}

// Route is one routing rule; see rules.Route for the matching semantics.
// Exactly one of User, Regex, Domain and Default is set. A static route
// (the default kind) names its Backend; an http or ldap route asks a
// directory for each matched user's backend at login (package lookup).
type Route struct {
	// User is a glob over the login name ('*', '?').
	User string `toml:"user,omitempty"`
	// Regex is an anchored RE2 expression over the login name.
	Regex string `toml:"regex,omitempty"`
	// Domain matches the part of the login name after the last '@'.
	Domain string `toml:"domain,omitempty"`
	// Default matches every login name.
	Default bool `toml:"default,omitempty"`
	// Backend is the name of a [[backend]]; required for a static route,
	// not set for the others.
	Backend string `toml:"backend,omitempty"`
	// Kind is "static" (default), "http" (an nginx auth_http service,
	// configured in the route's [route.http] table) or "ldap" ([route.ldap]).
	Kind string `toml:"kind,omitempty"`
	// HTTP configures a kind = "http" route.
	HTTP *HTTPLookup `toml:"http,omitempty"`
	// LDAP configures a kind = "ldap" route.
	LDAP *LDAPLookup `toml:"ldap,omitempty"`
}

// Limits bound resources per connection.
type Limits struct {
	// MaxLine is the longest command line accepted, in bytes, literals
	// excluded; default 65536, at least 8000 (RFC 2683 §3.2.1.5).
	MaxLine int `toml:"max_line"`
	// MaxLiteral is the largest literal a client may announce, in bytes;
	// larger ones are refused with NO [TOOBIG] or BAD (RFC 9051 §7.1).
	// Default 104857600 (100 MiB).
	MaxLiteral int64 `toml:"max_literal"`
	// PreauthTimeout bounds the time from connect to a successful login;
	// default 60s.
	PreauthTimeout Duration `toml:"preauth_timeout"`
	// IdleTimeout is how long an authenticated client may stay silent;
	// default 31m, at least 30m (RFC 9051 §5.4).
	IdleTimeout Duration `toml:"idle_timeout"`
	// LockTimeout is how long a command waits for a mailbox lock before
	// being answered NO [INUSE]; default 30s.
	LockTimeout Duration `toml:"lock_timeout"`
	// MaxConnections bounds client connections in total; default 20000.
	MaxConnections int `toml:"max_connections"`
	// MaxConnectionsPerIP bounds client connections from one address;
	// default 200.
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
	// AuthFailureDelay: from an address with recent failed logins, the
	// next login waits this per failure (up to 10s) before the backend
	// checks its password, one login at a time; default "1s".
	AuthFailureDelay Duration `toml:"auth_failure_delay"`
	// DrainTimeout is how long a stopping uidgate waits for sessions to
	// end after telling every client BYE; default "30s".
	DrainTimeout Duration `toml:"drain_timeout"`
	// MaxBadCommands is how many BAD answers in a row end a session with
	// BYE; default 3.
	MaxBadCommands int `toml:"max_bad_commands"`
	// MaxCommandsInFlight bounds the commands of one session sent and not
	// yet answered; past it uidgate stops reading the client until one is
	// answered, so a client that pipelines without reading costs bounded
	// memory; default 64.
	MaxCommandsInFlight int `toml:"max_commands_in_flight"`
	// ExpansionFactor and ExpansionFloor bound what uidgate writes in
	// place of what it translates: a command rewritten into its UID form,
	// or a backend response with its numbers mapped, may be
	// max(expansion_floor, expansion_factor × the input's length) bytes.
	// Past it a command is answered NO [TOOBIG] and not sent; a response
	// ends the session with BYE. Defaults 16 and 16777216 (16 MiB: "1:*"
	// over a million messages with every other UID gone); factor 1 to
	// 1024, floor 65536 to 1073741824.
	ExpansionFactor int `toml:"expansion_factor"`
	ExpansionFloor  int `toml:"expansion_floor"`
	// LoginBurstPerIP and LoginIntervalPerIP are the token bucket of login
	// attempts from one client address: up to the burst at once, then one
	// more per interval; past it a login is answered NO [UNAVAILABLE]
	// before any backend sees it. Defaults 200 and "50ms" (20 a second).
	LoginBurstPerIP    int      `toml:"login_burst_per_ip"`
	LoginIntervalPerIP Duration `toml:"login_interval_per_ip"`
	// LoginBurstPerUser and LoginIntervalPerUser are the same for one
	// login name (case-folded), whatever the address. Defaults 30 and
	// "2s" (30 a minute).
	LoginBurstPerUser    int      `toml:"login_burst_per_user"`
	LoginIntervalPerUser Duration `toml:"login_interval_per_user"`
}

// Serialization is the cross-session ordering policy (rules.Serialization).
type Serialization struct {
	// SelectTakesSeen makes SELECT, EXAMINE, CLOSE, UNSELECT and LOGOUT
	// take the user's seen lock, for backends that write session-cached
	// \Seen state back at those points (Cyrus 2.3). Default false.
	SelectTakesSeen bool `toml:"select_takes_seen"`
}

// IgnoreOutOfRange reports whether numbers beyond the view are answered
// the Cyrus way (see OutOfRange).
func (b Backend) IgnoreOutOfRange() bool {
	switch b.OutOfRange {
	case "ignore":
		return true
	case "bad":
		return false
	}
	return b.CyrusNamespace
}

// ExplicitSeenOn reports whether explicit \Seen applies to b.
func (b Backend) ExplicitSeenOn() bool {
	switch b.ExplicitSeen {
	case "on":
		return true
	case "off":
		return false
	}
	return b.Legacy
}

// Metrics is the operations HTTP listener.
type Metrics struct {
	// Address is host:port for Prometheus /metrics, /healthz and /readyz;
	// empty (default) serves none. Keep it off the public network.
	Address string `toml:"address"`
}

// MaxConnectionsOrDefault returns l.MaxConnections, or 20000.
func (l Limits) MaxConnectionsOrDefault() int { return orDefault(l.MaxConnections, 20000) }

// MaxConnectionsPerIPOrDefault returns l.MaxConnectionsPerIP, or 200.
func (l Limits) MaxConnectionsPerIPOrDefault() int { return orDefault(l.MaxConnectionsPerIP, 200) }

// AuthFailureDelayOrDefault returns l.AuthFailureDelay, or 1s.
func (l Limits) AuthFailureDelayOrDefault() time.Duration {
	return orDefault(l.AuthFailureDelay.Duration, time.Second)
}

// ExpansionFactorOrDefault returns l.ExpansionFactor, or 16.
func (l Limits) ExpansionFactorOrDefault() int {
	return orDefault(l.ExpansionFactor, DefaultExpansionFactor)
}

// ExpansionFloorOrDefault returns l.ExpansionFloor, or 16 MiB.
func (l Limits) ExpansionFloorOrDefault() int {
	return orDefault(l.ExpansionFloor, DefaultExpansionFloor)
}

// LoginBurstPerIPOrDefault returns l.LoginBurstPerIP, or 200.
func (l Limits) LoginBurstPerIPOrDefault() int {
	return orDefault(l.LoginBurstPerIP, DefaultLoginBurstPerIP)
}

// LoginIntervalPerIPOrDefault returns l.LoginIntervalPerIP, or 50ms.
func (l Limits) LoginIntervalPerIPOrDefault() time.Duration {
	return orDefault(l.LoginIntervalPerIP.Duration, DefaultLoginIntervalPerIP)
}

// LoginBurstPerUserOrDefault returns l.LoginBurstPerUser, or 30.
func (l Limits) LoginBurstPerUserOrDefault() int {
	return orDefault(l.LoginBurstPerUser, DefaultLoginBurstPerUser)
}

// LoginIntervalPerUserOrDefault returns l.LoginIntervalPerUser, or 2s.
func (l Limits) LoginIntervalPerUserOrDefault() time.Duration {
	return orDefault(l.LoginIntervalPerUser.Duration, DefaultLoginIntervalPerUser)
}

// DrainTimeoutOrDefault returns l.DrainTimeout, or 30s.
func (l Limits) DrainTimeoutOrDefault() time.Duration {
	return orDefault(l.DrainTimeout.Duration, 30*time.Second)
}

// Log configures the process logger.
type Log struct {
	// Level is trace, debug, info (default), warn or error.
	Level string `toml:"level"`
	// Format is json (default) or console.
	Format string `toml:"format"`
}

// Defaults, used when a field is zero.
const (
	DefaultTLSMinVersion  = "1.2"
	DefaultDialTimeout    = 10 * time.Second
	DefaultMaxLine        = 64 << 10  // RFC 2683 §3.2.1.5 asks servers to accept ≥ 8000 octets
	DefaultMaxLiteral     = 100 << 20 // bytes
	DefaultPreauthTimeout = 60 * time.Second
	DefaultIdleTimeout    = 31 * time.Minute // RFC 9051 §5.4: at least 30 minutes
	DefaultLockTimeout    = 30 * time.Second
	DefaultMaxBadCommands = 3
	DefaultMaxInFlight    = 64
	// DefaultExpansionFactor and DefaultExpansionFloor: see
	// Limits.ExpansionFactor.
	DefaultExpansionFactor = 16
	DefaultExpansionFloor  = 16 << 20
	// Login token buckets (see Limits.LoginBurstPerIP): far above what a
	// client, or a NAT gateway's users, need; a guesser gets 20 a second
	// from one address and 30 a minute at one name.
	DefaultLoginBurstPerIP      = 200
	DefaultLoginIntervalPerIP   = 50 * time.Millisecond
	DefaultLoginBurstPerUser    = 30
	DefaultLoginIntervalPerUser = 2 * time.Second
	DefaultLogLevel             = "info"
	DefaultLogFormat            = "json"

	// MinMaxLine is the smallest max_line allowed (RFC 2683 §3.2.1.5).
	MinMaxLine = 8000
	// MinIdleTimeout is the smallest idle_timeout allowed (RFC 9051 §5.4).
	MinIdleTimeout = 30 * time.Minute
	// MaxExpansionFactor, MinExpansionFloor and MaxExpansionFloor bound
	// expansion_factor and expansion_floor.
	MaxExpansionFactor = 1024
	MinExpansionFloor  = 64 << 10
	MaxExpansionFloor  = 1 << 30
)

// TLSModeOrDefault returns l.TLS, or none if unset.
func (l Listener) TLSModeOrDefault() TLSMode { return orDefault(l.TLS, TLSNone) }

// CertFile returns l.Cert, or def.Cert if unset.
func (l Listener) CertFile(def TLS) string { return orDefault(l.Cert, def.Cert) }

// KeyFile returns l.Key, or def.Key if unset.
func (l Listener) KeyFile(def TLS) string { return orDefault(l.Key, def.Key) }

// MinVersionOrDefault returns t.MinVersion, or "1.2" if unset.
func (t TLS) MinVersionOrDefault() string { return orDefault(t.MinVersion, DefaultTLSMinVersion) }

// TLSModeOrDefault returns b.TLS, or none if unset.
func (b Backend) TLSModeOrDefault() TLSMode { return orDefault(b.TLS, TLSNone) }

// ServerNameOrDefault returns b.ServerName, or the host part of b.Address.
func (b Backend) ServerNameOrDefault() string {
	if b.ServerName != "" {
		return b.ServerName
	}
	host, _, err := net.SplitHostPort(b.Address)
	if err != nil {
		return b.Address
	}
	return host
}

// MinVersionOrDefault returns b.MinVersion, or "1.2" if unset.
func (b Backend) MinVersionOrDefault() string {
	return orDefault(b.MinVersion, DefaultTLSMinVersion)
}

// DialTimeoutOrDefault returns b.DialTimeout, or 10s if unset.
func (b Backend) DialTimeoutOrDefault() time.Duration {
	return orDefault(b.DialTimeout.Duration, DefaultDialTimeout)
}

// MaxLineOrDefault returns l.MaxLine, or 65536 if unset.
func (l Limits) MaxLineOrDefault() int { return orDefault(l.MaxLine, DefaultMaxLine) }

// MaxLiteralOrDefault returns l.MaxLiteral, or 100 MiB if unset.
func (l Limits) MaxLiteralOrDefault() int64 { return orDefault(l.MaxLiteral, DefaultMaxLiteral) }

// PreauthTimeoutOrDefault returns l.PreauthTimeout, or 60s if unset.
func (l Limits) PreauthTimeoutOrDefault() time.Duration {
	return orDefault(l.PreauthTimeout.Duration, DefaultPreauthTimeout)
}

// IdleTimeoutOrDefault returns l.IdleTimeout, or 31m if unset.
func (l Limits) IdleTimeoutOrDefault() time.Duration {
	return orDefault(l.IdleTimeout.Duration, DefaultIdleTimeout)
}

// LockTimeoutOrDefault returns l.LockTimeout, or 30s if unset.
func (l Limits) LockTimeoutOrDefault() time.Duration {
	return orDefault(l.LockTimeout.Duration, DefaultLockTimeout)
}

// MaxCommandsInFlightOrDefault returns l.MaxCommandsInFlight, or 64 if unset.
func (l Limits) MaxCommandsInFlightOrDefault() int {
	return orDefault(l.MaxCommandsInFlight, DefaultMaxInFlight)
}

// MaxBadCommandsOrDefault returns l.MaxBadCommands, or 3 if unset.
func (l Limits) MaxBadCommandsOrDefault() int {
	return orDefault(l.MaxBadCommands, DefaultMaxBadCommands)
}

// LevelOrDefault returns l.Level, or "info" if unset.
func (l Log) LevelOrDefault() string { return orDefault(l.Level, DefaultLogLevel) }

// FormatOrDefault returns l.Format, or "json" if unset.
func (l Log) FormatOrDefault() string { return orDefault(l.Format, DefaultLogFormat) }

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Load reads and parses the file at path; see Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes data, naming it name in errors. It rejects TOML syntax
// errors, values of the wrong type (array elements included), and unknown
// keys (including keys that differ from a known one only in case), each
// reported as "name:line: message"; all such problems are joined into one
// error. Parse does not fill defaults or Validate; ParseValid does both
// checks at once.
func Parse(name string, data []byte) (*Config, error) {
	c, problems, err := parse(name, data)
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		return nil, joinProblems(problems)
	}
	return c, nil
}

// ParseValid is Parse then Validate, reporting the problems of both at
// once: a value of the wrong type does not hide a bad value elsewhere.
// Only a TOML syntax error (an integer beyond 64 bits is one) stops
// everything after it: no parser can say what follows it means.
func ParseValid(name string, data []byte) (*Config, error) {
	c, problems, err := parse(name, data)
	if err != nil {
		return nil, err
	}
	// What did not decode is zero in c: Validate's complaints about those
	// keys (or under them) would repeat the problem in other words.
	bad := make([]string, 0, len(problems))
	for _, p := range problems {
		bad = append(bad, p.ikey)
	}
	for _, p := range c.validate() {
		if !coveredBy(p.ikey, bad) {
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		return nil, joinProblems(problems)
	}
	return c, nil
}

// LoadValid reads path and calls ParseValid.
func LoadValid(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return ParseValid(path, data)
}

// coveredBy reports whether key is one of keys, or lies under one.
func coveredBy(key string, keys []string) bool {
	for _, k := range keys {
		if k != "" && (key == k || strings.HasPrefix(key, k+".")) {
			return true
		}
	}
	return false
}

// parse decodes data leniently: c holds every value that decoded, and
// problems says what did not (syntax errors alone end it, as err).
func parse(name string, data []byte) (c *Config, problems []problem, err error) {
	if name == "" {
		name = "config"
	}
	src := string(data)
	// Syntax first, alone, so that its errors are not confused with the
	// type errors of decoding into Config.
	var syntax map[string]any
	if _, err := toml.Decode(src, &syntax); err != nil {
		return nil, nil, syntaxError(name, err)
	}
	entries := scanKeys(data)

	c = &Config{file: name, lines: make(map[string]int, len(entries))}
	for _, e := range entries {
		c.lines[e.indexed()] = e.line
	}
	problems = checkSchema(name, entries, syntax)
	// Each key is decoded on its own, skipping those checkSchema found
	// wrong, so that one bad value does not stop the rest (toml.Decode
	// stops at the first).
	var top map[string]toml.Primitive
	md, err := toml.Decode(src, &top)
	if err != nil {
		return nil, nil, syntaxError(name, err)
	}
	skip := make(map[string]bool, len(problems))
	for _, p := range problems {
		skip[p.ikey] = true
	}
	d := &lenientDecoder{md: md, c: c, file: name, skip: skip}
	d.table(top, reflect.ValueOf(c).Elem(), nil, nil)
	problems = append(problems, d.problems...)
	problems = append(problems, undecodedProblems(name, d.unknown, entries, problems)...)
	return c, problems, nil
}

// lenientDecoder decodes a document key by key into a Config.
type lenientDecoder struct {
	md       toml.MetaData
	c        *Config
	file     string
	skip     map[string]bool // indexed keys already reported
	problems []problem
	unknown  []toml.Key
}

var textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()

// table decodes the keys of one table into the struct rv.
func (d *lenientDecoder) table(m map[string]toml.Primitive, rv reflect.Value, path []pathElem, key toml.Key) {
	fields := make(map[string]int, rv.NumField())
	for i := range rv.NumField() {
		f := rv.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" {
			name = f.Name
		}
		if name != "-" {
			fields[name] = i
		}
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		p := append(slices.Clip(path), pathElem{name: k, index: -1})
		tk := append(slices.Clip(key), k)
		i, ok := fields[k]
		if !ok {
			d.unknown = append(d.unknown, tk)
			continue
		}
		d.value(m[k], rv.Field(i), p, tk)
	}
}

// value decodes one value into rv, which it is for.
func (d *lenientDecoder) value(prim toml.Primitive, rv reflect.Value, path []pathElem, key toml.Key) {
	ik := indexedKey(path)
	if d.skip[ik] {
		return
	}
	t := rv.Type()
	switch {
	case t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(textUnmarshalerType):
		var m map[string]toml.Primitive
		if err := d.md.PrimitiveDecode(prim, &m); err != nil {
			d.fail(ik, err)
			return
		}
		d.table(m, rv, path, key)
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		var elems []toml.Primitive
		if err := d.md.PrimitiveDecode(prim, &elems); err != nil {
			d.fail(ik, err)
			return
		}
		rv.Set(reflect.MakeSlice(t, len(elems), len(elems)))
		for i, e := range elems {
			p := slices.Clone(path)
			p[len(p)-1].index = i
			d.value(e, rv.Index(i), p, key)
		}
	default:
		v := reflect.New(t)
		if err := d.md.PrimitiveDecode(prim, v.Interface()); err != nil {
			d.fail(ik, err)
			return
		}
		rv.Set(v.Elem())
	}
}

// fail records that the value at key did not decode.
func (d *lenientDecoder) fail(key string, err error) {
	msg := err.Error()
	var pe toml.ParseError
	if errors.As(err, &pe) {
		msg = pe.Message
	} else if _, after, ok := strings.Cut(msg, "): "); ok && strings.HasPrefix(msg, "toml:") {
		msg = after // "toml: line 3 (last key "x"): "
	}
	line := d.c.lineOf(key)
	where := d.file + ": "
	if line > 0 {
		where = fmt.Sprintf("%s:%d: ", d.file, line)
	}
	d.problems = append(d.problems, problem{line: line, ikey: key, msg: where + key + ": " + msg})
}

// Default returns the built-in configuration: one plain listener on
// 127.0.0.1:1143, one backend "local" at 127.0.0.1:143, a default route to
// it, and JSON logs at info level. It panics if the embedded file does not
// parse, which the package's tests rule out.
func Default() *Config {
	c, err := Parse("default.toml", defaultTOML)
	if err != nil {
		panic("configs: embedded default.toml: " + err.Error())
	}
	return c
}

// File returns the name the configuration was parsed under, or "" for a
// Config built in code.
func (c *Config) File() string { return c.file }

// Router compiles the routes; Validate reports the same errors with their
// lines.
func (c *Config) Router() (*rules.Router, error) {
	rs := make([]rules.Route, len(c.Routes))
	for i, r := range c.Routes {
		rs[i] = rules.Route{User: r.User, Regex: r.Regex, Domain: r.Domain, Default: r.Default, Backend: r.Backend}
		if k := r.KindOrDefault(); k != RouteStatic {
			// The lookup is named after the route; the backend is its answer.
			rs[i].Backend, rs[i].Lookup = "", fmt.Sprintf("route.%d (%s)", i, k)
		}
	}
	return rules.NewRouter(rs)
}

// Backend returns the backend called name.
func (c *Config) Backend(name string) (Backend, bool) {
	for _, b := range c.Backends {
		if b.Name == name {
			return b, true
		}
	}
	return Backend{}, false
}

// Effective returns a deep copy of c with every default written out: what
// the accessor methods return becomes the field's value. Listener cert and
// key are filled from [tls] only for listeners that use TLS, and a backend's
// server_name and min_version only for backends that use TLS, so that the
// result still passes Validate.
func (c *Config) Effective() *Config {
	e := *c
	e.Listeners = slices.Clone(c.Listeners)
	e.Backends = slices.Clone(c.Backends)
	e.Routes = slices.Clone(c.Routes)
	for i := range e.Routes {
		e.Routes[i] = c.effectiveRoute(i)
	}

	for i := range e.Listeners {
		l := &e.Listeners[i]
		l.TLS = l.TLSModeOrDefault()
		if l.TLS != TLSNone {
			l.Cert, l.Key = l.CertFile(c.TLS), l.KeyFile(c.TLS)
		}
	}
	e.TLS.MinVersion = e.TLS.MinVersionOrDefault()
	for i := range e.Backends {
		b := &e.Backends[i]
		b.TLS = b.TLSModeOrDefault()
		if b.TLS != TLSNone && !b.Template {
			// A template's server name defaults to each answered host.
			b.ServerName = b.ServerNameOrDefault()
			b.MinVersion = b.MinVersionOrDefault()
		} else if b.TLS != TLSNone {
			b.MinVersion = b.MinVersionOrDefault()
		}
		b.DialTimeout.Duration = b.DialTimeoutOrDefault()
		if b.ExplicitSeen == "" {
			b.ExplicitSeen = "auto"
		}
		if b.OutOfRange == "" {
			b.OutOfRange = "auto"
		}
	}
	l := &e.Limits
	l.MaxLine = l.MaxLineOrDefault()
	l.MaxLiteral = l.MaxLiteralOrDefault()
	l.PreauthTimeout.Duration = l.PreauthTimeoutOrDefault()
	l.IdleTimeout.Duration = l.IdleTimeoutOrDefault()
	l.LockTimeout.Duration = l.LockTimeoutOrDefault()
	l.MaxBadCommands = l.MaxBadCommandsOrDefault()
	l.MaxCommandsInFlight = l.MaxCommandsInFlightOrDefault()
	l.MaxConnections = l.MaxConnectionsOrDefault()
	l.DrainTimeout.Duration = l.DrainTimeoutOrDefault()
	l.MaxConnectionsPerIP = l.MaxConnectionsPerIPOrDefault()
	l.AuthFailureDelay.Duration = l.AuthFailureDelayOrDefault()
	l.ExpansionFactor = l.ExpansionFactorOrDefault()
	l.ExpansionFloor = l.ExpansionFloorOrDefault()
	l.LoginBurstPerIP = l.LoginBurstPerIPOrDefault()
	l.LoginIntervalPerIP.Duration = l.LoginIntervalPerIPOrDefault()
	l.LoginBurstPerUser = l.LoginBurstPerUserOrDefault()
	l.LoginIntervalPerUser.Duration = l.LoginIntervalPerUserOrDefault()
	e.Locks = c.Locks.effective()
	e.Admin = c.Admin
	e.Log.Level = e.Log.LevelOrDefault()
	e.Log.Format = e.Log.FormatOrDefault()
	return &e
}

// Encode writes the effective configuration (c.Effective()) as TOML, for
// `uidgate check-config`. Parsing the output gives back c.Effective(),
// but for a [locks] password, printed redacted.
func (c *Config) Encode(w io.Writer) error {
	enc := toml.NewEncoder(w)
	enc.Indent = ""
	return enc.Encode(c.Effective().redacted())
}

// TrustedPrefixes parses TrustedProxies (Validate has checked them).
func (l Listener) TrustedPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, n := range l.TrustedProxies {
		if p, err := netip.ParsePrefix(n); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// ProxyProtocolVersion is 1 or 2 for "v1"/"v2", else 0.
func (b Backend) ProxyProtocolVersion() byte {
	switch b.ProxyProtocol {
	case "v1":
		return 1
	case "v2":
		return 2
	}
	return 0
}
