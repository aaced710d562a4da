package lookup

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"uidgate/e2e/ldaptest"
)

// ldapRouter routes every user through the directory dir.
func ldapRouter(t *testing.T, dir *ldaptest.Server, filter, password string) *Router {
	t.Helper()
	return parse(t, fmt.Sprintf(`[[listener]]
address = "127.0.0.1:1143"
[[backend]]
name = "one"
address = "10.0.0.1:143"
[[backend]]
name = "pool"
template = true
[[route]]
default = true
kind = "ldap"
[route.ldap]
urls = ["ldap://127.0.0.1:1", %q]
bind_dn = %q
bind_password = %q
base = %q
filter = %q
template = "pool"
timeout = "2s"
max_conns = 2
cache_ttl = "0s"
`, dir.URL, ldaptest.BindDN, password, ldaptest.People, filter))
}

// TestLDAPDirectory runs the LDAP lookup against a real slapd.
func TestLDAPDirectory(t *testing.T) {
	dir := ldaptest.Start(t, []ldaptest.User{
		{UID: "alice", MailHost: "10.0.0.1:143"},
		{UID: "bob", MailHost: "one"},
		{UID: "carol"},
		{UID: "dave", MailHost: "IMAP7.internal"},
		{UID: "erin", MailHost: "10.0.0.1:143"},
		{UID: "erin-alias", MailHost: "10.0.0.2:143"},
		{UID: "frank", MailHost: "not a host"},
	})
	r := ldapRouter(t, dir, "(|(uid=%u)(uid=%u-alias))", dir.BindPassword)
	ctx := context.Background()
	for user, want := range map[string]string{"alice": "one", "bob": "one", "dave": "pool@imap7.internal:143"} {
		b, err := r.Route(ctx, Request{User: user})
		if err != nil || b.Name != want {
			t.Errorf("%s: %+v, %v; want %s", user, b, err, want)
		}
	}
	for _, user := range []string{"carol", "nobody", "*", "*)(uid=*", "alice)(uid=*"} {
		if _, err := r.Route(ctx, Request{User: user}); !errors.Is(err, ErrNoRoute) {
			t.Errorf("%q: %v; want no route", user, err)
		}
	}
	for _, user := range []string{"erin", "frank"} {
		if _, err := r.Route(ctx, Request{User: user}); !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s: %v; want unavailable (two entries; a mailHost that is no host)", user, err)
		}
	}

	// Connections are reused: many lookups, at most max_conns binds.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.Route(ctx, Request{User: []string{"alice", "bob"}[i%2]}); err != nil {
				t.Errorf("concurrent lookup: %v", err)
			}
		}()
	}
	wg.Wait()
	if n := strings.Count(dir.Log(), `BIND dn="cn=uidgate,dc=example,dc=org" method=128`); n > 1+2 {
		t.Errorf("%d binds for 20 lookups over at most 2 connections (+1 for the harness)", n)
	}

	// Down: unavailable, at once (nothing listens). Up again: the pooled
	// connections are dead and replaced.
	dir.Stop(t)
	t0 := time.Now()
	if _, err := r.Route(ctx, Request{User: "alice"}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("directory down: %v", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("directory down answered after %v", d)
	}
	dir.Restart(t)
	if b, err := r.Route(ctx, Request{User: "alice"}); err != nil || b.Name != "one" {
		t.Errorf("directory back: %+v, %v", b, err)
	}

	// A wrong bind password: unavailable, and the error does not hold it.
	bad := ldapRouter(t, dir, "(uid=%u)", "wrong-bind-password")
	_, err := bad.Route(ctx, Request{User: "alice"})
	if !errors.Is(err, ErrUnavailable) || strings.Contains(err.Error(), "wrong-bind-password") {
		t.Errorf("wrong bind password: %v", err)
	}
	// After Close, lookups fail rather than dial.
	r.Close()
	if _, err := r.Route(ctx, Request{User: "alice"}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("after Close: %v", err)
	}
}
