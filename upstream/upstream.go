// Package upstream dials IMAP backends: plain, STARTTLS or implicit TLS;
// it reads the greeting, learns capabilities and logs in with the
// client's credentials. After Login the connection belongs to the caller,
// who relays on it.
package upstream

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/pires/go-proxyproto"

	"uidgate/proxy/imapwire"
)

// TLSMode says how a connection is secured.
type TLSMode string

const (
	TLSNone     TLSMode = "none"
	TLSStartTLS TLSMode = "starttls"
	TLSImplicit TLSMode = "implicit"
)

const (
	// DefaultDialTimeout bounds dialing and the greeting.
	DefaultDialTimeout = 10 * time.Second
	// loginTimeout bounds the login exchange; a backend that stalls then is
	// reported as unavailable rather than holding the client.
	loginTimeout = 30 * time.Second
	// tagPrefix marks uidgate's own commands during set-up.
	tagPrefix = "ug"
)

// ErrUnavailable wraps every failure to reach or talk to a backend: the
// client is answered NO [UNAVAILABLE].
var ErrUnavailable = errors.New("backend unavailable")

// Backend says how to reach one backend.
type Backend struct {
	Name    string
	Address string
	TLS     TLSMode
	// TLSConfig is used for STARTTLS and implicit TLS; nil means verify
	// against the system roots with the host of Address as server name.
	TLSConfig   *tls.Config
	DialTimeout time.Duration // DefaultDialTimeout if zero
	// Legacy marks a backend whose message numbers are never trusted; it
	// is the relay's business, carried here with the backend's address.
	Legacy bool
	// ExplicitSeen: the relay sets \Seen itself instead of letting a body
	// fetch do it (on by default for legacy backends).
	ExplicitSeen bool
	// CyrusNamespace: mailbox names follow the Cyrus classic namespace.
	CyrusNamespace bool
	// IgnoreOutOfRange: message numbers beyond the client's view are
	// answered as Cyrus does (not named) instead of BAD.
	IgnoreOutOfRange bool
	// ProxyProtocol, 1 or 2, sends a PROXY protocol header with the
	// client's address first (HAProxy's spec); 0 sends none.
	ProxyProtocol byte
	// SendClientID sends the client's address in an ID command before
	// login (RFC 2971 with Dovecot's x-originating-ip fields), for a
	// backend that trusts uidgate to report it.
	SendClientID bool
	// Dial, if set, replaces net.Dialer.DialContext (tests).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Conn is a connection to a backend that has greeted us.
type Conn struct {
	Backend *Backend
	Conn    net.Conn
	R       *imapwire.Reader
	// Caps are the capabilities last announced by the backend.
	Caps   []string
	tagN   int
	TLSOn  bool
	client Client
	// strict: an untagged BAD, or a tagged answer to a command uidgate
	// did not send, is an error (checkProxyHeader).
	strict bool
}

// Client identifies the client a backend connection is made for.
type Client struct {
	Addr, Local net.Addr // its address, and the address it connected to
}

// Dial connects, reads the greeting and, for STARTTLS backends, upgrades.
// The client's address reaches the backend as configured (PROXY header,
// ID before login).
func Dial(ctx context.Context, b *Backend, client Client) (*Conn, error) {
	timeout := b.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dial := b.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	nc, err := dial(ctx, "tcp", b.Address)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %v", ErrUnavailable, b.Address, err)
	}
	c := &Conn{Backend: b, Conn: nc, client: client}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	if b.ProxyProtocol != 0 && client.Addr != nil && client.Local != nil {
		h := proxyproto.HeaderProxyFromAddrs(b.ProxyProtocol, client.Addr, client.Local)
		if _, err := h.WriteTo(nc); err != nil {
			nc.Close()
			return nil, fmt.Errorf("%w: PROXY header to %s: %v", ErrUnavailable, b.Address, err)
		}
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if b.TLS == TLSImplicit {
		tc := tls.Client(nc, b.tlsConfig())
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("%w: TLS with %s: %v", ErrUnavailable, b.Address, err)
		}
		c.Conn, c.TLSOn = tc, true
	}
	c.R = imapwire.NewReader(c.Conn, 0)
	if err := c.greeting(); err != nil {
		c.Conn.Close()
		return nil, err
	}
	if b.ProxyProtocol != 0 && b.TLS == TLSNone {
		if err := c.checkProxyHeader(); err != nil {
			c.Conn.Close()
			return nil, err
		}
	}
	if b.TLS == TLSStartTLS {
		if err := c.startTLS(ctx); err != nil {
			c.Conn.Close()
			return nil, err
		}
	}
	c.Conn.SetDeadline(time.Time{})
	return c, nil
}

// checkProxyHeader asks for the capabilities right after the greeting of
// a backend sent a PROXY header, within the dial deadline. A backend that
// does not expect the header greets all the same (before reading) and
// then takes its bytes for the start of the next command, which it
// answers under a tag that is not uidgate's, if at all: without this the
// login would wait for its answer until loginTimeout (issue 18). A
// backend that takes the header answers at once; its capabilities save
// Login the same command. (Over TLS, the header breaks the handshake,
// which the dial deadline bounds already.)
func (c *Conn) checkProxyHeader() error {
	c.strict = true
	defer func() { c.strict = false }()
	if _, err := c.command("CAPABILITY", nil); err != nil {
		return fmt.Errorf("%w (does %s accept a PROXY v%d header from uidgate?)", err, c.Backend.Address, c.Backend.ProxyProtocol)
	}
	return nil
}

func (b *Backend) tlsConfig() *tls.Config {
	if b.TLSConfig != nil {
		return b.TLSConfig
	}
	host, _, _ := net.SplitHostPort(b.Address)
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
}

func (c *Conn) greeting() error {
	line, err := c.R.ReadLine()
	if err != nil {
		return fmt.Errorf("%w: greeting from %s: %v", ErrUnavailable, c.Backend.Address, err)
	}
	r, ok := imapwire.ParseResponse(line)
	if !ok || r.Kind != imapwire.RespUntagged || !imapwire.EqualFold(r.Name, "OK") {
		// RFC 9051 §7.1.5: a BYE greeting means the server will not serve us;
		// PREAUTH would skip our login, which uidgate cannot use.
		return fmt.Errorf("%w: %s greeted %q", ErrUnavailable, c.Backend.Address, imapwire.TrimEOL(line))
	}
	if imapwire.EqualFold(r.Code, "CAPABILITY") {
		c.Caps = strings.Fields(string(r.CodeArgs))
	}
	return nil
}

func (c *Conn) nextTag() string {
	c.tagN++
	return tagPrefix + strconv.Itoa(c.tagN)
}

// Status is a tagged result.
type Status struct {
	Name string // OK, NO or BAD
	Code string // response code with arguments, without brackets
	Text string
}

// OK reports a tagged OK.
func (s Status) OK() bool { return s.Name == "OK" }

func (s Status) String() string {
	if s.Code != "" {
		return s.Name + " [" + s.Code + "] " + s.Text
	}
	return s.Name + " " + s.Text
}

// command sends line (without CRLF) and reads until its tagged response,
// noting capabilities announced on the way. cont, if set, answers each
// continuation request.
func (c *Conn) command(line string, cont func(text []byte) (string, error)) (Status, error) {
	tag := c.nextTag()
	if _, err := c.Conn.Write([]byte(tag + " " + line + "\r\n")); err != nil {
		return Status{}, fmt.Errorf("%w: write: %v", ErrUnavailable, err)
	}
	for {
		l, err := c.R.ReadLine()
		if err != nil {
			return Status{}, fmt.Errorf("%w: read: %v", ErrUnavailable, err)
		}
		r, ok := imapwire.ParseResponse(l)
		if !ok {
			return Status{}, fmt.Errorf("%w: unparsable response %q", ErrUnavailable, imapwire.TrimEOL(l))
		}
		switch r.Kind {
		case imapwire.RespContinuation:
			if cont == nil {
				return Status{}, fmt.Errorf("%w: unexpected continuation", ErrUnavailable)
			}
			reply, err := cont(r.Text)
			if err != nil {
				return Status{}, err
			}
			if _, err := c.Conn.Write([]byte(reply + "\r\n")); err != nil {
				return Status{}, fmt.Errorf("%w: write: %v", ErrUnavailable, err)
			}
		case imapwire.RespUntagged:
			if imapwire.EqualFold(r.Name, "CAPABILITY") {
				c.Caps = strings.Fields(string(imapwire.TrimEOL(l[r.After:])))
			} else if imapwire.EqualFold(r.Code, "CAPABILITY") {
				c.Caps = strings.Fields(string(r.CodeArgs))
			} else if imapwire.EqualFold(r.Name, "BYE") {
				return Status{}, fmt.Errorf("%w: BYE %s", ErrUnavailable, r.Text)
			} else if c.strict && imapwire.EqualFold(r.Name, "BAD") {
				return Status{}, fmt.Errorf("%w: %s answered %q", ErrUnavailable, c.Backend.Address, imapwire.TrimEOL(l))
			}
			if r.MayAnnounceLiteral() {
				if lit, ok := imapwire.TrailingLiteral(l); ok {
					c.R.Expect(lit.Size)
					if err := c.R.DiscardLiteral(); err != nil {
						return Status{}, fmt.Errorf("%w: read: %v", ErrUnavailable, err)
					}
				}
			}
		case imapwire.RespTagged:
			if string(r.Tag) != tag {
				if c.strict {
					return Status{}, fmt.Errorf("%w: %s answered %q to %s", ErrUnavailable, c.Backend.Address, imapwire.TrimEOL(l), tag)
				}
				continue
			}
			st := Status{Name: strings.ToUpper(string(r.Name)), Text: string(r.Text)}
			if len(r.Code) > 0 {
				st.Code = string(l[r.CodeStart+1 : r.CodeEnd-1])
			}
			if imapwire.EqualFold(r.Code, "CAPABILITY") {
				c.Caps = strings.Fields(string(r.CodeArgs))
			}
			return st, nil
		}
	}
}

// HasCap reports whether the backend announced capability name.
func (c *Conn) HasCap(name string) bool {
	for _, cp := range c.Caps {
		if strings.EqualFold(cp, name) {
			return true
		}
	}
	return false
}

func (c *Conn) startTLS(ctx context.Context) error {
	if c.Caps == nil {
		if _, err := c.command("CAPABILITY", nil); err != nil {
			return err
		}
	}
	st, err := c.command("STARTTLS", nil)
	if err != nil {
		return err
	}
	if !st.OK() {
		return fmt.Errorf("%w: STARTTLS refused by %s: %s", ErrUnavailable, c.Backend.Address, st)
	}
	if c.R.Buffered() > 0 {
		// RFC 9051 §6.2.1: nothing may follow the OK before the handshake;
		// bytes here would be a command injection.
		return fmt.Errorf("%w: data after STARTTLS OK", ErrUnavailable)
	}
	tc := tls.Client(c.Conn, c.Backend.tlsConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("%w: TLS with %s: %v", ErrUnavailable, c.Backend.Address, err)
	}
	c.Conn, c.TLSOn = tc, true
	c.R.Reset(tc)
	c.Caps = nil // RFC 9051 §6.2.1: capabilities must be re-learned
	return nil
}

// Login authenticates with the client's credentials. A Status other than
// OK is the backend's answer (wrong password); an error means the backend
// failed. The password never appears in an error.
func (c *Conn) Login(ctx context.Context, user, pass string) (Status, error) {
	c.Conn.SetDeadline(time.Now().Add(loginTimeout))
	stop := context.AfterFunc(ctx, func() { c.Conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer c.Conn.SetDeadline(time.Time{})
	if c.Caps == nil {
		if _, err := c.command("CAPABILITY", nil); err != nil {
			return Status{}, err
		}
	}
	if c.Backend.SendClientID && c.client.Addr != nil {
		if _, err := c.command(clientID(c.client), nil); err != nil {
			return Status{}, err
		}
	}
	var st Status
	var err error
	switch {
	case c.HasCap("AUTH=PLAIN"):
		// RFC 4616 PLAIN carries any octets in user and password, unlike
		// LOGIN's astrings; prefer it.
		resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
		if c.HasCap("SASL-IR") {
			st, err = c.command("AUTHENTICATE PLAIN "+resp, nil)
		} else {
			st, err = c.command("AUTHENTICATE PLAIN", func([]byte) (string, error) { return resp, nil })
		}
	case !c.HasCap("LOGINDISABLED"):
		st, err = c.login(user, pass)
	default:
		return Status{}, fmt.Errorf("%w: backend offers no usable login", ErrUnavailable)
	}
	if err != nil {
		return st, err
	}
	if st.OK() && !strings.HasPrefix(strings.ToUpper(st.Code), "CAPABILITY ") {
		// RFC 9051 §6.2.2: capabilities may change after login.
		if _, err := c.command("CAPABILITY", nil); err != nil {
			return st, err
		}
	}
	return st, nil
}

// login sends LOGIN with each argument as a literal, which needs no
// quoting rules; LITERAL+ saves the round trips.
func (c *Conn) login(user, pass string) (Status, error) {
	plus := ""
	if c.HasCap("LITERAL+") {
		plus = "+"
	}
	lit := func(s string) string { return "{" + strconv.Itoa(len(s)) + plus + "}" }
	if plus != "" {
		return c.command("LOGIN "+lit(user)+"\r\n"+user+" "+lit(pass)+"\r\n"+pass, nil)
	}
	parts := []string{user + " " + lit(pass), pass}
	return c.command("LOGIN "+lit(user), func([]byte) (string, error) {
		if len(parts) == 0 {
			return "", fmt.Errorf("%w: unexpected continuation", ErrUnavailable)
		}
		p := parts[0]
		parts = parts[1:]
		return p, nil
	})
}

// Logout sends LOGOUT and closes the connection.
func (c *Conn) Logout() {
	c.Conn.SetDeadline(time.Now().Add(2 * time.Second))
	c.command("LOGOUT", nil)
	c.Conn.Close()
}

// Close closes the connection.
func (c *Conn) Close() error { return c.Conn.Close() }

// ParseCaps splits a capability list.
func ParseCaps(b []byte) []string { return strings.Fields(string(bytes.TrimSpace(b))) }

// clientID is the ID command carrying the client's address, with the
// field names Dovecot and Cyrus trust from a proxy (RFC 2971 §3.3 allows
// such non-standard fields).
func clientID(c Client) string {
	host, port, _ := net.SplitHostPort(c.Addr.String())
	id := `ID ("x-originating-ip" "` + host + `" "x-originating-port" "` + port + `"`
	if c.Local != nil {
		lhost, lport, _ := net.SplitHostPort(c.Local.String())
		id += ` "x-connected-ip" "` + lhost + `" "x-connected-port" "` + lport + `"`
	}
	return id + ")"
}
