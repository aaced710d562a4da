package lookup

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"uidgate/configs"
	"uidgate/rules"
)

const (
	// maxWaitRounds bounds "Auth-Status: WAIT" answers in a row: nginx
	// asks again after Auth-Wait; uidgate does so this many times.
	maxWaitRounds = 3
	// maxBody is how much of an answer's body is read (and dropped) so
	// that its connection can be reused.
	maxBody = 4 << 10
)

// httpDirectory asks an nginx mail auth_http service. The request is the
// one nginx sends (GET with Auth-Method, Auth-User, Auth-Pass,
// Auth-Protocol, Auth-Login-Attempt, Client-IP, Auth-SSL and the
// configured headers); the answer's status line is ignored, as nginx
// ignores it, and its Auth-* headers decide.
type httpDirectory struct {
	url     string
	timeout time.Duration
	headers http.Header
	tpl     string
	client  *http.Client
	key     []byte // the cache's password hash key
}

func newHTTPDirectory(c configs.HTTPLookup, key []byte) (*httpDirectory, error) {
	tc, err := c.TLSConfig()
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:               nil, // the auth service is asked directly
		DialContext:         (&net.Dialer{Timeout: c.TimeoutOrDefault()}).DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: c.TimeoutOrDefault(),
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &httpDirectory{
		url:     c.URL,
		timeout: c.TimeoutOrDefault(),
		headers: c.HeaderFields(),
		tpl:     c.Template,
		key:     key,
		client: &http.Client{
			Transport: tr,
			// An auth service answers; it does not redirect (nginx follows
			// none).
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

func (d *httpDirectory) defaultPort() string { return "" }
func (d *httpDirectory) template() string    { return d.tpl }
func (d *httpDirectory) close()              { d.client.CloseIdleConnections() }

// cacheKey: the user and a keyed hash of the password, and the other
// facts the auth service was told (Client-IP, Auth-SSL), so that an answer
// it gave for TLS or one address is not reused for plain text or another.
// Only OK answers are cached, so a hit needs a password the auth service
// accepted for that user, from there, within the TTL: a wrong password
// always reaches the auth service, and its refusals, delays (Auth-Wait)
// and lock-outs stay in force.
func (d *httpDirectory) cacheKey(req Request) string {
	tls := "plain"
	if req.Secure {
		tls = "tls"
	}
	return req.User + "\x00" + passwordKey(d.key, req.Pass) + "\x00" + tls + "\x00" + req.ClientIP
}

func (d *httpDirectory) ask(ctx context.Context, req Request) (answer, error) {
	for round := 1; ; round++ {
		ans, wait, err := d.once(ctx, req)
		if err != nil || wait < 0 {
			return ans, err
		}
		// "Auth-Status: WAIT": ask again after Auth-Wait.
		if round >= maxWaitRounds {
			return answer{}, fmt.Errorf("%w: the auth service answered WAIT %d times", ErrUnavailable, round)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return answer{}, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
		}
	}
}

// once asks once. wait >= 0 means "Auth-Status: WAIT": ask again after it.
func (d *httpDirectory) once(ctx context.Context, req Request) (ans answer, wait time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, d.url, nil)
	if err != nil {
		return answer{}, -1, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	for name, values := range d.headers {
		hr.Header[name] = values
	}
	method := req.Method
	if method == "" {
		method = "plain"
	}
	h := hr.Header
	h.Set("Auth-Method", method)
	h.Set("Auth-User", escapeAuth(req.User))
	h.Set("Auth-Pass", escapeAuth(req.Pass))
	h.Set("Auth-Protocol", "imap")
	h.Set("Auth-Login-Attempt", strconv.Itoa(max(req.Attempt, 1)))
	h.Set("Client-IP", req.ClientIP)
	if req.Secure {
		h.Set("Auth-SSL", "on")
	}
	resp, err := d.client.Do(hr)
	if err != nil {
		// url.Error quotes the URL, never the headers: no password here.
		return answer{}, -1, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	resp.Body.Close()
	return parseAuthAnswer(resp.Header, req)
}

// parseAuthAnswer reads an auth_http answer's headers as nginx does.
func parseAuthAnswer(h http.Header, req Request) (answer, time.Duration, error) {
	if _, ok := h["Auth-Status"]; !ok {
		return answer{}, -1, fmt.Errorf("%w: the auth service's answer has no Auth-Status", ErrUnavailable)
	}
	status := h.Get("Auth-Status")
	var wait time.Duration
	if w := h.Get("Auth-Wait"); w != "" {
		// nginx: a non-negative integer number of seconds, else ignored.
		if n, err := strconv.Atoi(w); err == nil && n >= 0 {
			wait = min(time.Duration(n)*time.Second, maxWait)
		}
	}
	switch status {
	case "OK":
	case "WAIT":
		return answer{}, wait, nil
	default:
		code := strings.ToUpper(strings.TrimSpace(h.Get("Auth-Error-Code")))
		if !loginCodes[code] {
			code = "AUTHENTICATIONFAILED"
		}
		text := oneLine(status)
		if req.Pass != "" {
			// As sent (escaped) or as typed: a service that echoes the
			// password must not get it into uidgate's log.
			for _, p := range []string{escapeAuth(req.Pass), req.Pass} {
				text = strings.ReplaceAll(text, p, "<redacted>")
			}
		}
		if text == "" {
			text = "Authentication failed"
		}
		_, hasWait := h["Auth-Wait"]
		return answer{}, -1, &Refused{Text: text, Code: code, Wait: wait, Close: !hasWait}
	}
	// nginx logs in to the backend with Auth-User and Auth-Pass when the
	// answer has them; uidgate logs in with the client's own, so an answer
	// that would change them is not followed.
	if u, ok := h["Auth-User"]; ok && len(u) > 0 && unescapeAuth(u[0]) != req.User {
		return answer{}, -1, fmt.Errorf("%w: the auth service answered another login name (Auth-User) for the backend: uidgate logs in with the client's own", ErrUnavailable)
	}
	if p, ok := h["Auth-Pass"]; ok && len(p) > 0 && unescapeAuth(p[0]) != req.Pass {
		return answer{}, -1, fmt.Errorf("%w: the auth service answered another password (Auth-Pass) for the backend: uidgate logs in with the client's own", ErrUnavailable)
	}
	server, port := h.Get("Auth-Server"), h.Get("Auth-Port")
	if server == "" || port == "" {
		return answer{}, -1, fmt.Errorf("%w: the auth service answered OK without Auth-Server and Auth-Port", ErrUnavailable)
	}
	host, p, err := rules.ParseHost(server)
	if err != nil || p != "" {
		return answer{}, -1, fmt.Errorf("%w: Auth-Server %q: want an IP address or a host name", ErrUnavailable, oneLine(server))
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return answer{}, -1, fmt.Errorf("%w: Auth-Port %q: want 1 to 65535", ErrUnavailable, oneLine(port))
	}
	return answer{host: host, port: port}, -1, nil
}

// escapeAuth escapes a login name or password as nginx does for Auth-User
// and Auth-Pass (ngx_escape_uri, NGX_ESCAPE_MAIL_AUTH): '%', space,
// control characters and bytes above 0x7e as %XX, so that a header holds
// any password on one line.
func escapeAuth(s string) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c == '%' || c >= 0x7f {
			if b == nil {
				b = append(make([]byte, 0, len(s)+16), s[:i]...)
			}
			b = append(b, '%', hex[c>>4], hex[c&15])
			continue
		}
		if b != nil {
			b = append(b, c)
		}
	}
	if b == nil {
		return s
	}
	return string(b)
}

// unescapeAuth undoes %XX escapes (an answer's Auth-User or Auth-Pass);
// a malformed escape is kept as written.
func unescapeAuth(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
