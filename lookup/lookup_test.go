package lookup

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"uidgate/configs"
	"uidgate/rules"
)

// parse builds a Router from a configuration text.
func parse(t *testing.T, src string) *Router {
	t.Helper()
	c, err := configs.Parse("t.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	r, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func TestEscapeAuth(t *testing.T) {
	for in, want := range map[string]string{
		"alice":          "alice",
		`bob pass "2"`:   `bob%20pass%20"2"`,
		"100%":           "100%25",
		"a\r\nb\x00\x7f": "a%0D%0Ab%00%7F",
		"pässwörd":       "p%C3%A4ssw%C3%B6rd",
		" lead":          "%20lead",
	} {
		if got := escapeAuth(in); got != want {
			t.Errorf("escapeAuth(%q) = %q, want %q", in, got, want)
		}
		if back := unescapeAuth(escapeAuth(in)); back != in {
			t.Errorf("unescapeAuth(escapeAuth(%q)) = %q", in, back)
		}
	}
}

func TestParseAuthAnswer(t *testing.T) {
	req := Request{User: "alice", Pass: "secret-pw"}
	h := func(kv ...string) http.Header {
		out := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			out.Set(kv[i], kv[i+1])
		}
		return out
	}
	for _, c := range []struct {
		name    string
		h       http.Header
		ans     answer
		wait    time.Duration
		refused *Refused
		unavail bool
	}{
		{name: "ok ip", h: h("Auth-Status", "OK", "Auth-Server", "10.0.0.7", "Auth-Port", "143"), ans: answer{"10.0.0.7", "143"}, wait: -1},
		{name: "ok host, user and pass echoed", h: h("Auth-Status", "OK", "Auth-Server", "Imap1.Example.org", "Auth-Port", "993", "Auth-User", "alice", "Auth-Pass", "secret-pw"), ans: answer{"imap1.example.org", "993"}, wait: -1},
		{name: "refused with wait", h: h("Auth-Status", "Invalid login", "Auth-Wait", "3"), wait: -1, refused: &Refused{Text: "Invalid login", Code: "AUTHENTICATIONFAILED", Wait: 3 * time.Second}},
		{name: "refused, no wait: close", h: h("Auth-Status", "Go away", "Auth-Error-Code", "535 5.7.8"), wait: -1, refused: &Refused{Text: "Go away", Code: "AUTHENTICATIONFAILED", Close: true}},
		{name: "refused, imap code, huge wait", h: h("Auth-Status", "Expired", "Auth-Error-Code", "expired", "Auth-Wait", "86400"), wait: -1, refused: &Refused{Text: "Expired", Code: "EXPIRED", Wait: maxWait}},
		{name: "refused, bad wait ignored", h: h("Auth-Status", "No", "Auth-Wait", "soon"), wait: -1, refused: &Refused{Text: "No", Code: "AUTHENTICATIONFAILED"}},
		{name: "refusal text holding the password", h: h("Auth-Status", "bad password secret-pw", "Auth-Wait", "0"), wait: -1, refused: &Refused{Text: "bad password <redacted>", Code: "AUTHENTICATIONFAILED"}},
		{name: "wait", h: h("Auth-Status", "WAIT", "Auth-Wait", "2"), wait: 2 * time.Second},
		{name: "no status", h: h("Auth-Server", "10.0.0.7", "Auth-Port", "143"), wait: -1, unavail: true},
		{name: "ok without server", h: h("Auth-Status", "OK", "Auth-Port", "143"), wait: -1, unavail: true},
		{name: "ok without port", h: h("Auth-Status", "OK", "Auth-Server", "10.0.0.7"), wait: -1, unavail: true},
		{name: "bad port", h: h("Auth-Status", "OK", "Auth-Server", "10.0.0.7", "Auth-Port", "99999"), wait: -1, unavail: true},
		{name: "server with a port", h: h("Auth-Status", "OK", "Auth-Server", "10.0.0.7:143", "Auth-Port", "143"), wait: -1, unavail: true},
		{name: "server not a host", h: h("Auth-Status", "OK", "Auth-Server", "x y", "Auth-Port", "143"), wait: -1, unavail: true},
		{name: "another user for the backend", h: h("Auth-Status", "OK", "Auth-Server", "10.0.0.7", "Auth-Port", "143", "Auth-User", "alice@example.org"), wait: -1, unavail: true},
		{name: "a master password for the backend", h: h("Auth-Status", "OK", "Auth-Server", "10.0.0.7", "Auth-Port", "143", "Auth-Pass", "master"), wait: -1, unavail: true},
		{name: "ok is case-sensitive, as nginx", h: h("Auth-Status", "ok", "Auth-Wait", "0"), wait: -1, refused: &Refused{Text: "ok", Code: "AUTHENTICATIONFAILED"}},
	} {
		ans, wait, err := parseAuthAnswer(c.h, req)
		var refused *Refused
		switch {
		case c.unavail:
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("%s: %+v, %v, %v; want unavailable", c.name, ans, wait, err)
			}
		case c.refused != nil:
			if !errors.As(err, &refused) || *refused != *c.refused {
				t.Errorf("%s: err %v (%+v); want %+v", c.name, err, refused, c.refused)
			}
		default:
			if err != nil || ans != c.ans || wait != c.wait {
				t.Errorf("%s: %+v, %v, %v; want %+v, %v", c.name, ans, wait, err, c.ans, c.wait)
			}
		}
		if err != nil && strings.Contains(err.Error(), "secret-pw") {
			t.Errorf("%s: the error holds the password: %v", c.name, err)
		}
	}
	// A service that echoes the password as it was sent (escaped).
	_, _, err := parseAuthAnswer(h("Auth-Status", "bad password my%20pass%25", "Auth-Wait", "0"), Request{User: "alice", Pass: "my pass%"})
	if err == nil || strings.Contains(err.Error(), "my%20pass") || !strings.Contains(err.Error(), "<redacted>") {
		t.Errorf("escaped password echoed: %v", err)
	}
}

// TestTTLCache: entries expire at their TTL, looked up or not, and the
// LRU bound holds.
func TestTTLCache(t *testing.T) {
	c, err := newTTLCache(2, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	c.Add("a", rules.Resolution{Backend: "one"})
	if res, ok := c.Get("a"); !ok || res.Backend != "one" {
		t.Errorf("fresh entry: %+v %v", res, ok)
	}
	c.Add("b", rules.Resolution{})
	c.Add("c", rules.Resolution{})
	if _, ok := c.Get("a"); ok {
		t.Error("the least recently used entry outlived the bound")
	}
	time.Sleep(60 * time.Millisecond) // past the TTL: what is tested is expiry
	if _, ok := c.Get("c"); ok {
		t.Error("an entry outlived its TTL")
	}
}

// TestHTTPRouter: the router against an auth service: configured and
// template backends, the cache (per password; OK answers only), and no
// other backend on failure.
func TestHTTPRouter(t *testing.T) {
	var asked atomic.Int32
	var status atomic.Value
	status.Store("OK")
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		h := w.Header()
		if r.Header.Get("Auth-Pass") != "right" {
			h.Set("Auth-Status", "Invalid login")
			h.Set("Auth-Wait", "0")
			return
		}
		h.Set("Auth-Status", status.Load().(string))
		switch r.Header.Get("Auth-User") {
		case "alice":
			h.Set("Auth-Server", "10.0.0.1")
			h.Set("Auth-Port", "143")
		case "bob":
			h.Set("Auth-Server", "imap9.example.org")
			h.Set("Auth-Port", "993")
		default:
			h.Set("Auth-Server", "10.9.9.9")
			h.Set("Auth-Port", "143")
		}
	}))
	defer auth.Close()
	r := parse(t, fmt.Sprintf(`[[listener]]
address = "127.0.0.1:1143"
[[backend]]
name = "one"
address = "10.0.0.1:143"
[[backend]]
name = "pool"
template = true
tls = "implicit"
legacy = true
cyrus_namespace = true
[[route]]
user = "nt-*"
kind = "http"
http = { url = %q }
[[route]]
default = true
kind = "http"
http = { url = %q, template = "pool" }
`, auth.URL, auth.URL))
	ctx := context.Background()
	b, err := r.Route(ctx, Request{User: "alice", Pass: "right"})
	if err != nil || b.Name != "one" || b.Address != "10.0.0.1:143" {
		t.Fatalf("alice: %+v, %v", b, err)
	}
	b, err = r.Route(ctx, Request{User: "bob", Pass: "right"})
	if err != nil || b.Name != "pool@imap9.example.org:993" || b.Address != "imap9.example.org:993" ||
		!b.Legacy || !b.CyrusNamespace || b.TLS != "implicit" || b.TLSConfig.ServerName != "imap9.example.org" {
		t.Fatalf("bob: %+v, %v", b, err)
	}
	b2, _ := r.Route(ctx, Request{User: "bob", Pass: "right"})
	if b2 != b {
		t.Error("the template's backend is made again for the same address")
	}
	if n := asked.Load(); n != 2 {
		t.Errorf("bob's second login asked again: %d requests", n)
	}
	// A wrong password is never answered from the cache.
	var refused *Refused
	if _, err := r.Route(ctx, Request{User: "alice", Pass: "wrong"}); !errors.As(err, &refused) {
		t.Errorf("alice, wrong password: %v", err)
	}
	if n := asked.Load(); n != 3 {
		t.Errorf("%d requests; the wrong password must reach the auth service", n)
	}
	// Refusals are not cached: the same (wrong) password is asked again.
	r.Route(ctx, Request{User: "alice", Pass: "wrong"})
	if n := asked.Load(); n != 4 {
		t.Errorf("%d requests; a refusal must not be cached", n)
	}
	// What the service was told besides the password is part of the key:
	// an answer for plain text is not one for TLS, nor for another address.
	r.Route(ctx, Request{User: "alice", Pass: "right", Secure: true})
	r.Route(ctx, Request{User: "alice", Pass: "right", ClientIP: "192.0.2.9"})
	if n := asked.Load(); n != 6 {
		t.Errorf("%d requests; a cached answer was reused for TLS or another client address", n)
	}
	// No template on this route: an unknown address is unavailable.
	if _, err := r.Route(ctx, Request{User: "nt-x", Pass: "right"}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("unknown address without a template: %v", err)
	}
	// The auth service down: unavailable (alice is cached: still routed).
	auth.Close()
	if _, err := r.Route(ctx, Request{User: "carol", Pass: "right"}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("auth service down: %v", err)
	}
	if b, err := r.Route(ctx, Request{User: "alice", Pass: "right"}); err != nil || b.Name != "one" {
		t.Errorf("alice from the cache: %+v, %v", b, err)
	}
}

// TestStaticRoutes: a configuration without directories routes as
// rules does.
func TestStaticRoutes(t *testing.T) {
	r := parse(t, `[[listener]]
address = "127.0.0.1:1143"
[[backend]]
name = "a"
address = "127.0.0.1:143"
[[route]]
domain = "example.org"
backend = "a"
`)
	if b, err := r.Route(context.Background(), Request{User: "x@EXAMPLE.org"}); err != nil || b.Name != "a" {
		t.Errorf("static: %+v, %v", b, err)
	}
	if _, err := r.Route(context.Background(), Request{User: "x@other.org"}); err != ErrNoRoute {
		t.Errorf("no route: %v", err)
	}
}

func TestFilter(t *testing.T) {
	const tpl = "(&(objectClass=inetOrgPerson)(uid=%u)(l=%n)(dc=%d)(x=100%%))"
	for user, want := range map[string]string{
		"alice@example.org": `(&(objectClass=inetOrgPerson)(uid=alice@example.org)(l=alice)(dc=example.org)(x=100%))`,
		"bob":               `(&(objectClass=inetOrgPerson)(uid=bob)(l=bob)(dc=)(x=100%))`,
		"*)(uid=*":          `(&(objectClass=inetOrgPerson)(uid=\2a\29\28uid=\2a)(l=\2a\29\28uid=\2a)(dc=)(x=100%))`,
		`a\b`:               `(&(objectClass=inetOrgPerson)(uid=a\5cb)(l=a\5cb)(dc=)(x=100%))`,
	} {
		if got := Filter(tpl, user); got != want {
			t.Errorf("Filter(%q) = %s\nwant %s", user, got, want)
		}
	}
}
