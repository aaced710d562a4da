package lookup

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"

	"uidgate/configs"
	"uidgate/rules"
)

// ldapDirectory searches an LDAP directory for the user's entry and reads
// the attribute that names its backend. Connections are bound once and
// reused, at most maxConns of them; one that fails is dropped and the
// search tried once more on a new one (a server may close idle
// connections).
type ldapDirectory struct {
	urls     []string
	startTLS bool
	tls      *tls.Config
	bindDN   string
	bindPW   string // never logged, never in an error
	base     string
	filter   string
	attr     string
	port     string
	tpl      string
	timeout  time.Duration

	slots chan struct{}   // a token per connection open
	idle  chan *ldap.Conn // connections open and not in use
	mu    sync.Mutex      // orders put against close
	shut  bool
}

func newLDAPDirectory(c configs.LDAPLookup) (*ldapDirectory, error) {
	pw, err := c.BindPasswordValue()
	if err != nil {
		return nil, fmt.Errorf("bind_password_file: %w", err)
	}
	tc, err := c.TLSConfig()
	if err != nil {
		return nil, err
	}
	if err := configs.CheckLDAPFilter(c.Filter); err != nil {
		return nil, err
	}
	d := &ldapDirectory{
		urls:     c.URLs,
		startTLS: c.StartTLS,
		tls:      tc,
		bindDN:   c.BindDN,
		bindPW:   pw,
		base:     c.Base,
		filter:   c.Filter,
		attr:     c.AttributeOrDefault(),
		port:     strconv.Itoa(c.PortOrDefault()),
		tpl:      c.Template,
		timeout:  c.TimeoutOrDefault(),
		slots:    make(chan struct{}, c.MaxConnsOrDefault()),
		idle:     make(chan *ldap.Conn, c.MaxConnsOrDefault()),
	}
	return d, nil
}

func (d *ldapDirectory) defaultPort() string { return d.port }
func (d *ldapDirectory) template() string    { return d.tpl }

// cacheKey: the login name. LDAP is asked where a user lives, never
// whether its password is right: the backend checks that at every login.
func (d *ldapDirectory) cacheKey(req Request) string { return req.User }

// close closes the idle connections; busy ones close when given back.
func (d *ldapDirectory) close() {
	d.mu.Lock()
	d.shut = true
	d.mu.Unlock()
	for {
		select {
		case c := <-d.idle:
			d.drop(c)
		default:
			return
		}
	}
}

// Filter expands the filter template for user: %u the login name, %n its
// part before the last '@' (all of it without one), %d the part after it
// ("" without one), %% a '%', each escaped (RFC 4515 §3) so that a login
// name such as "*)(uid=*" matches itself and nothing else.
func Filter(template, user string) string {
	local, domain := user, ""
	if at := strings.LastIndexByte(user, '@'); at >= 0 {
		local, domain = user[:at], user[at+1:]
	}
	var b strings.Builder
	for i := 0; i < len(template); i++ {
		c := template[i]
		if c != '%' || i+1 >= len(template) {
			b.WriteByte(c)
			continue
		}
		i++
		switch template[i] {
		case 'u':
			b.WriteString(ldap.EscapeFilter(user))
		case 'n':
			b.WriteString(ldap.EscapeFilter(local))
		case 'd':
			b.WriteString(ldap.EscapeFilter(domain))
		default: // "%%" (CheckLDAPFilter allows nothing else)
			b.WriteByte(template[i])
		}
	}
	return b.String()
}

func (d *ldapDirectory) ask(ctx context.Context, req Request) (answer, error) {
	filter := Filter(d.filter, req.User)
	var lastErr error
	for try := 0; try < 2; try++ {
		conn, fresh, err := d.get(ctx)
		if err != nil {
			return answer{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		ans, err := d.search(ctx, conn, filter)
		var le *ldap.Error
		if err == nil || !errors.As(err, &le) || le.ResultCode != ldap.ErrorNetwork {
			// A result, or the directory's own answer (such as two
			// entries): the connection is fine.
			d.put(conn)
			if err != nil && !errors.Is(err, ErrNoRoute) {
				err = fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
			return ans, err
		}
		// The connection failed: drop it, and try once more on a new one
		// unless this one was new already.
		d.drop(conn)
		lastErr = err
		if fresh || ctx.Err() != nil {
			break
		}
	}
	return answer{}, fmt.Errorf("%w: %v", ErrUnavailable, lastErr)
}

// search runs the search on conn: exactly one entry must match, and its
// attribute hold one value.
func (d *ldapDirectory) search(ctx context.Context, conn *ldap.Conn, filter string) (answer, error) {
	// A session that ends meanwhile closes the connection, which ends the
	// search at once rather than at its timeout.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	sr := ldap.NewSearchRequest(d.base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, int(max(d.timeout/time.Second, 1)), false, filter, []string{d.attr}, nil)
	res, err := conn.Search(sr)
	if err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
			return answer{}, errors.New("more than one entry matches the login name")
		}
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
			return answer{}, fmt.Errorf("the search base %q does not exist", d.base)
		}
		return answer{}, err
	}
	switch len(res.Entries) {
	case 0:
		return answer{}, ErrNoRoute
	case 1:
	default:
		return answer{}, errors.New("more than one entry matches the login name")
	}
	e := res.Entries[0]
	var values []string
	for _, a := range e.Attributes {
		if strings.EqualFold(a.Name, d.attr) {
			values = append(values, a.Values...)
		}
	}
	switch len(values) {
	case 0:
		return answer{}, fmt.Errorf("%w: the entry %s has no %s", ErrNoRoute, e.DN, d.attr)
	case 1:
	default:
		return answer{}, fmt.Errorf("the entry %s has %d values of %s", e.DN, len(values), d.attr)
	}
	host, port, err := rules.ParseHost(values[0])
	if err != nil {
		return answer{}, fmt.Errorf("the entry %s: %s: %v", e.DN, d.attr, err)
	}
	return answer{host: host, port: port}, nil
}

// get returns an idle connection, or a new one (fresh) if fewer than
// maxConns are open, or waits up to the timeout for one to be given back.
func (d *ldapDirectory) get(ctx context.Context) (conn *ldap.Conn, fresh bool, err error) {
	wctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	for {
		if d.closed() {
			return nil, false, errors.New("the route's directory is closed (configuration reloaded)")
		}
		var c *ldap.Conn
		select {
		case c = <-d.idle:
		default:
			select {
			case c = <-d.idle:
			case d.slots <- struct{}{}:
				c, err := d.dial(ctx)
				if err != nil {
					d.release()
					return nil, false, err
				}
				return c, true, nil
			case <-wctx.Done():
				return nil, false, errors.New("every directory connection stayed busy")
			}
		}
		if c.IsClosing() {
			d.release()
			continue
		}
		return c, false, nil
	}
}

func (d *ldapDirectory) closed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.shut
}

// put gives a connection back for reuse.
func (d *ldapDirectory) put(c *ldap.Conn) {
	d.mu.Lock()
	if !d.shut && !c.IsClosing() {
		select {
		case d.idle <- c: // never full: it holds at most one per slot
			d.mu.Unlock()
			return
		default:
		}
	}
	d.mu.Unlock()
	d.drop(c)
}

// drop closes a connection and frees its slot.
func (d *ldapDirectory) drop(c *ldap.Conn) {
	c.Close()
	d.release()
}

func (d *ldapDirectory) release() { <-d.slots }

// dial connects to the first server that answers, secures and binds.
func (d *ldapDirectory) dial(ctx context.Context) (*ldap.Conn, error) {
	var errs []string
	for _, u := range d.urls {
		c, err := d.dialOne(ctx, u)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err.Error())
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.New(strings.Join(errs, "; "))
}

func (d *ldapDirectory) dialOne(ctx context.Context, raw string) (*ldap.Conn, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	host := u.Hostname()
	deadline := time.Now().Add(d.timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	c, err := ldap.DialURL(raw,
		ldap.DialWithDialer(&net.Dialer{Deadline: deadline}),
		ldap.DialWithTLSConfig(tlsClone(d.tls, host)))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", raw, err)
	}
	c.SetTimeout(d.timeout)
	// Connecting, securing and binding are bounded as one; a session that
	// ends meanwhile ends them.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if d.startTLS && u.Scheme == "ldap" {
		if err := c.StartTLS(tlsClone(d.tls, host)); err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: StartTLS: %v", raw, err)
		}
	}
	if d.bindDN != "" {
		if err := c.Bind(d.bindDN, d.bindPW); err != nil {
			c.Close()
			// go-ldap's error names the result code, never the password.
			return nil, fmt.Errorf("%s: bind as %s: %v", raw, d.bindDN, err)
		}
	}
	if ctx.Err() != nil {
		c.Close()
		return nil, ctx.Err()
	}
	return c, nil
}
