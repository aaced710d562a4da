package e2e

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"uidgate/e2e/ldaptest"
)

// Issue 19: routes whose backend a directory gives at login, through a
// real uidgate (the binary) to real Dovecot servers: an nginx auth_http
// service, and OpenLDAP.

// imapQuote quotes s as an IMAP quoted string.
func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// existsAfterSelect selects INBOX and returns its EXISTS count.
func existsAfterSelect(t *testing.T, l *imapLine, tag string) int {
	t.Helper()
	fmt.Fprintf(l.c, "%s SELECT INBOX\r\n", tag)
	n := -1
	for {
		s := l.read()
		if f := strings.Fields(s); len(f) == 3 && f[0] == "*" && f[2] == "EXISTS" {
			n, _ = strconv.Atoi(f[1])
		}
		if strings.HasPrefix(s, tag+" ") {
			if !strings.HasPrefix(s, tag+" OK") {
				t.Fatalf("SELECT: %q", s)
			}
			return n
		}
	}
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// authRequest is what the auth service was asked.
type authRequest struct {
	header http.Header
	at     time.Time
}

// TestHTTPRouting runs an nginx-style auth_http service (httptest on
// loopback) in front of two real Dovecot servers: A, a configured
// backend, and B, reached through a template backend. Each answer nginx
// can give is checked: OK to an IP or a host name, refusal with and
// without Auth-Wait (Auth-Error-Code as nginx treats it for IMAP), WAIT,
// an answer naming an unknown server on a route without a template, an
// incomplete answer and a service that does not answer in time; what the
// service was sent (nginx's headers); and the cache (an OK answer reused
// for the same password only).
func TestHTTPRouting(t *testing.T) {
	bin := buildUidgate(t)
	a, b := startBackend(t, "dovecot"), startBackend(t, "dovecot")
	a.Deliver(t, "alice", message("on A", 100))
	for i := range 2 {
		b.Deliver(t, "bob", message(fmt.Sprintf("on B %d", i), 100))
	}

	var mu sync.Mutex
	asked := map[string][]authRequest{}
	waitRounds := 0
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user := r.Header.Get("Auth-User")
		mu.Lock()
		asked[user] = append(asked[user], authRequest{r.Header.Clone(), time.Now()})
		mu.Unlock()
		h := w.Header()
		ok := func(server, port string) {
			h.Set("Auth-Status", "OK")
			h.Set("Auth-Server", server)
			h.Set("Auth-Port", port)
		}
		if r.Header.Get("X-Auth-Key") != "s3cret-key" {
			h.Set("Auth-Status", "Bad auth key")
			return
		}
		switch user {
		case "alice":
			if r.Header.Get("Auth-Pass") != "alice-pass-1" {
				h.Set("Auth-Status", "Invalid login or password")
				h.Set("Auth-Wait", "1")
				return
			}
			ok("127.0.0.1", portOf(t, a.Addr))
		case "bob":
			// A host name, and an address no backend is configured with:
			// the template serves it.
			ok("localhost", portOf(t, b.Addr))
		case "carol":
			h.Set("Auth-Status", "Invalid login or password")
			h.Set("Auth-Wait", "1")
		case "dave":
			h.Set("Auth-Status", "Account locked, call the help desk")
			h.Set("Auth-Error-Code", "535 5.7.8") // SMTP's: not used for IMAP
		case "erin":
			h.Set("Auth-Status", "Password expired")
			h.Set("Auth-Error-Code", "EXPIRED")
			h.Set("Auth-Wait", "0")
		case "frank":
			h.Set("Auth-Status", "OK") // no Auth-Server
		case "grace":
			time.Sleep(3 * time.Second) // past the route's timeout
		case "heidi":
			mu.Lock()
			waitRounds++
			n := waitRounds
			mu.Unlock()
			if n == 1 {
				h.Set("Auth-Status", "WAIT")
				h.Set("Auth-Wait", "1")
				return
			}
			ok("127.0.0.1", portOf(t, a.Addr))
		case "nt-ivan":
			ok("127.0.0.1", "1") // no configured backend; this route has no template
		default:
			h.Set("Auth-Status", "Unknown user")
		}
	}))
	defer auth.Close()

	listen, metrics := freePort(t), freePort(t)
	_, logs := startServe(t, bin, fmt.Sprintf(`
[[listener]]
address = %q

[[backend]]
name = "dovecot-a"
address = %q

[[backend]]
name = "pool"
template = true

[[route]]
user = "nt-*"
kind = "http"
[route.http]
url = %q
headers = ["X-Auth-Key: s3cret-key"]

[[route]]
default = true
kind = "http"
[route.http]
url = %q
timeout = "1s"
template = "pool"
headers = ["X-Auth-Key: s3cret-key"]
cache_ttl = "1m"

[limits]
auth_failure_delay = "1ms"
login_burst_per_ip = 1000
login_burst_per_user = 1000

[log]
level = "debug"

[metrics]
address = %q
`, listen, a.Addr, auth.URL+"/mail-auth", auth.URL+"/mail-auth", metrics))

	login := func(l *imapLine, tag, user, pass string) string {
		t.Helper()
		return l.cmd(tag, "LOGIN %s %s", imapQuote(user), imapQuote(pass))
	}
	count := func(user string) int {
		mu.Lock()
		defer mu.Unlock()
		return len(asked[user])
	}

	// alice: a wrong password first, refused with Auth-Wait: the answer
	// comes after the wait, and the session goes on; then her own, on the
	// same connection (Auth-Login-Attempt 2), routed to A.
	l := dialIMAP(t, listen)
	t0 := time.Now()
	if got := login(l, "a1", "alice", "wrong"); got != "a1 NO [AUTHENTICATIONFAILED] Invalid login or password" {
		t.Errorf("alice, wrong password: %q", got)
	}
	if d := time.Since(t0); d < time.Second {
		t.Errorf("Auth-Wait: 1 answered after %v", d)
	}
	if got := login(l, "a2", "alice", testUsers["alice"]); !strings.HasPrefix(got, "a2 OK") {
		t.Fatalf("alice: %q", got)
	}
	if n := existsAfterSelect(t, l, "a3"); n != 1 {
		t.Errorf("alice: %d messages; want A's 1", n)
	}
	mu.Lock()
	req := asked["alice"][1].header
	mu.Unlock()
	for name, want := range map[string]string{
		"Auth-Method": "plain", "Auth-User": "alice", "Auth-Pass": "alice-pass-1", "Auth-Protocol": "imap",
		"Auth-Login-Attempt": "2", "Client-IP": "127.0.0.1", "X-Auth-Key": "s3cret-key",
	} {
		if got := req.Get(name); got != want {
			t.Errorf("request header %s = %q, want %q", name, got, want)
		}
	}

	// The cache: alice again with her password is not asked again; with a
	// wrong one it is, and refused.
	l2 := dialIMAP(t, listen)
	if got := login(l2, "c1", "alice", testUsers["alice"]); !strings.HasPrefix(got, "c1 OK") {
		t.Fatalf("alice again: %q", got)
	}
	if n := count("alice"); n != 2 {
		t.Errorf("alice's second login asked the auth service: %d requests, want 2", n)
	}
	l3 := dialIMAP(t, listen)
	if got := login(l3, "d1", "alice", "wrong again"); !strings.HasPrefix(got, "d1 NO [AUTHENTICATIONFAILED]") {
		t.Errorf("alice with a wrong password after a cached OK: %q", got)
	}
	if n := count("alice"); n != 3 {
		t.Errorf("a wrong password was answered from the cache: %d requests, want 3", n)
	}

	// bob: a host name, through the template, to B. His password has
	// spaces and quotes: sent escaped as nginx does.
	lb := dialIMAP(t, listen)
	if got := login(lb, "b1", "bob", testUsers["bob"]); !strings.HasPrefix(got, "b1 OK") {
		t.Fatalf("bob: %q", got)
	}
	if n := existsAfterSelect(t, lb, "b2"); n != 2 {
		t.Errorf("bob: %d messages; want B's 2", n)
	}
	mu.Lock()
	if got := asked["bob"][0].header.Get("Auth-Pass"); got != `bob%20pass%20"2"` {
		t.Errorf("bob's Auth-Pass sent as %q", got)
	}
	mu.Unlock()

	// carol: refused with Auth-Wait; the session goes on.
	lc := dialIMAP(t, listen)
	if got := login(lc, "e1", "carol", "pw-of-carol"); got != "e1 NO [AUTHENTICATIONFAILED] Invalid login or password" {
		t.Errorf("carol: %q", got)
	}
	if got := lc.cmd("e2", "NOOP"); !strings.HasPrefix(got, "e2 OK") {
		t.Errorf("after a refusal with Auth-Wait: %q", got)
	}
	// dave: refused without Auth-Wait: NO, then the connection ends, as
	// nginx ends it; an SMTP Auth-Error-Code is not an IMAP code.
	ld := dialIMAP(t, listen)
	if got := login(ld, "f1", "dave", "pw-of-dave"); got != "f1 NO [AUTHENTICATIONFAILED] Account locked, call the help desk" {
		t.Errorf("dave: %q", got)
	}
	if s := ld.read(); !strings.HasPrefix(s, "* BYE") {
		t.Errorf("after a refusal without Auth-Wait: %q, want BYE", s)
	}
	// erin: an IMAP code in Auth-Error-Code is used; Auth-Wait: 0 keeps
	// the session.
	le := dialIMAP(t, listen)
	if got := login(le, "g1", "erin", "pw-of-erin"); got != "g1 NO [EXPIRED] Password expired" {
		t.Errorf("erin: %q", got)
	}
	if got := le.cmd("g2", "NOOP"); !strings.HasPrefix(got, "g2 OK") {
		t.Errorf("after Auth-Wait: 0: %q", got)
	}
	// frank: OK without a server; grace: no answer in time; nt-ivan: an
	// address no backend has, on a route without a template. Each is NO
	// [UNAVAILABLE], never another backend.
	for i, user := range []string{"frank", "grace", "nt-ivan"} {
		lx := dialIMAP(t, listen)
		tag := fmt.Sprintf("h%d", i)
		if got := login(lx, tag, user, "pw-of-"+user); !strings.HasPrefix(got, tag+" NO [UNAVAILABLE]") {
			t.Errorf("%s: %q, want NO [UNAVAILABLE]", user, got)
		}
	}
	// heidi: WAIT, then OK: asked again after Auth-Wait.
	lh := dialIMAP(t, listen)
	t0 = time.Now()
	if got := login(lh, "i1", "heidi", "pw-of-heidi"); !strings.HasPrefix(got, "i1 NO [AUTHENTICATIONFAILED]") {
		// heidi has no mailbox on A: the backend refuses her.
		t.Errorf("heidi: %q", got)
	}
	if n := count("heidi"); n != 2 || time.Since(t0) < time.Second {
		t.Errorf("WAIT: asked %d times in %v", n, time.Since(t0))
	}

	// Neither password, nor the shared header's value, is in the log.
	log := logs.String()
	for _, secret := range []string{testUsers["alice"], "wrong again", "s3cret-key"} {
		if strings.Contains(log, secret) {
			t.Errorf("the log holds %q", secret)
		}
	}
	if !strings.Contains(log, `"backend":"pool@`) {
		t.Errorf("no session on the template backend in the log")
	}
}

// TestLDAPRouting routes through a real slapd: alice's mailHost is
// A's address, bob's a host name without a port (completed by the
// route's port) that backend B is configured with. A user without
// mailHost, one not in the directory and a login name that tries to
// widen the filter get no route; with slapd down, NO [UNAVAILABLE]; back
// up, logins go through again on a new connection.
func TestLDAPRouting(t *testing.T) {
	bin := buildUidgate(t)
	a, b := startBackend(t, "dovecot"), startBackend(t, "dovecot")
	a.Deliver(t, "alice", message("on A", 100))
	for i := range 2 {
		b.Deliver(t, "bob", message(fmt.Sprintf("on B %d", i), 100))
	}
	dir := ldaptest.Start(t, []ldaptest.User{
		{UID: "alice", MailHost: a.Addr},
		{UID: "bob", MailHost: "localhost"},
		{UID: "carol"},
	})
	pwFile := filepath.Join(t.TempDir(), "bind.pw")
	if err := os.WriteFile(pwFile, []byte(dir.BindPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	listen, metrics := freePort(t), freePort(t)
	_, logs := startServe(t, bin, fmt.Sprintf(`
[[listener]]
address = %q

[[backend]]
name = "dovecot-a"
address = %q

[[backend]]
name = "dovecot-b"
address = "localhost:%s"

[[route]]
default = true
kind = "ldap"
[route.ldap]
urls = [%q]
bind_dn = %q
bind_password_file = %q
base = %q
filter = "(&(objectClass=inetOrgPerson)(uid=%%u))"
attribute = "mailHost"
port = %s
timeout = "2s"
cache_ttl = "0s"

[limits]
auth_failure_delay = "1ms"
login_burst_per_ip = 1000

[log]
level = "debug"

[metrics]
address = %q
`, listen, a.Addr, portOf(t, b.Addr), dir.URL, ldaptest.BindDN, pwFile, ldaptest.People, portOf(t, b.Addr), metrics))

	login := func(user string) (*imapLine, string) {
		t.Helper()
		l := dialIMAP(t, listen)
		pass := testUsers[user]
		if pass == "" {
			pass = "x"
		}
		return l, l.cmd("L", "LOGIN %s %s", imapQuote(user), imapQuote(pass))
	}
	for user, want := range map[string]int{"alice": 1, "bob": 2} {
		l, got := login(user)
		if !strings.HasPrefix(got, "L OK") {
			t.Fatalf("%s: %q", user, got)
		}
		if n := existsAfterSelect(t, l, "S"); n != want {
			t.Errorf("%s: %d messages, want %d (routed to the wrong server?)", user, n, want)
		}
	}
	for _, user := range []string{"carol", "nobody", "*)(uid=*", "*", "alice)(|(uid=*"} {
		if _, got := login(user); got != "L NO [AUTHENTICATIONFAILED] Authentication failed" {
			t.Errorf("%q: %q, want no route", user, got)
		}
	}

	dir.Stop(t)
	for _, user := range []string{"alice", "bob"} {
		if _, got := login(user); !strings.HasPrefix(got, "L NO [UNAVAILABLE]") {
			t.Errorf("%s with the directory down: %q", user, got)
		}
	}
	dir.Restart(t)
	if _, got := login("alice"); !strings.HasPrefix(got, "L OK") {
		t.Errorf("alice with the directory back: %q", got)
	}
	// A user moved in the directory is routed to the new server at once
	// (no cache here).
	dir.SetMailHost(t, "alice", "localhost")
	l, got := login("alice")
	if !strings.HasPrefix(got, "L OK") {
		t.Fatalf("alice moved: %q", got)
	}
	if n := existsAfterSelect(t, l, "S"); n != 0 {
		t.Errorf("alice moved to B: %d messages, want B's alice's 0", n)
	}
	if log := logs.String(); strings.Contains(log, dir.BindPassword) || strings.Contains(log, testUsers["alice"]) {
		t.Errorf("a password is in the log")
	}
}
