package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"uidgate/proxy"
	"uidgate/proxy/locks"
	"uidgate/rules"
)

// Issue 19: the admin view of a running uidgate (the binary), in front of
// a real Dovecot reached through a fault proxy that can stall it.

// adminGet GETs path from the admin view and decodes the JSON answer.
func adminGet(t *testing.T, base, path, token string, v any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %v\n%s", path, err, body)
		}
	}
	return resp.StatusCode
}

// runAdmin runs `uidgate admin ARGS` and returns its output and exit code.
func runAdmin(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, append([]string{"admin"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "UIDGATE_ADMIN_TOKEN=")
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("uidgate admin %v: %v", args, err)
	}
	return out.String(), code
}

// TestAdminKick: session A holds alice's INBOX lock (its STORE stalled at
// the backend), session B waits for it. /admin/locks shows A as holder
// and B as the one waiter, /admin/sessions shows each one's locks and
// commands, and `uidgate admin locks` prints them; `uidgate admin kick
// -cid A` ends A with BYE, its lock passes to B, and B's STORE goes
// through once the backend answers again.
func TestAdminKick(t *testing.T) {
	bin := buildUidgate(t)
	be := startBackend(t, "dovecot")
	for i := range 2 {
		be.Deliver(t, "alice", message(fmt.Sprintf("admin %d", i), 100))
	}
	fp := newFaultProxy(t, be.Addr)
	listen, metrics := freePort(t), freePort(t)
	cfg := filepath.Join(t.TempDir(), "uidgate.toml")
	config := fmt.Sprintf(`
[[listener]]
address = %q

[[backend]]
name = "dovecot"
address = %q

[[route]]
default = true
backend = "dovecot"

[limits]
lock_timeout = "2m"
login_burst_per_ip = 1000

[metrics]
address = %q
`, listen, fp.ln.Addr().String(), metrics)
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	_, logs := startServe(t, bin, config)
	base := "http://" + metrics

	a, b := dialIMAP(t, listen), dialIMAP(t, listen)
	for _, l := range []*imapLine{a, b} {
		if got := l.cmd("L", "LOGIN alice %s", imapQuote(testUsers["alice"])); !strings.HasPrefix(got, "L OK") {
			t.Fatalf("login: %q", got)
		}
		if got := l.cmd("S", "SELECT INBOX"); !strings.HasPrefix(got, "S OK") {
			t.Fatalf("select: %q", got)
		}
	}
	var before struct{ Sessions []proxy.SessionInfo }
	if code := adminGet(t, base, "/admin/sessions", "", &before); code != 200 || len(before.Sessions) != 2 {
		t.Fatalf("/admin/sessions: %d, %+v", code, before)
	}
	aID, bID := before.Sessions[0].ID, before.Sessions[1].ID
	for _, s := range before.Sessions {
		if s.User != "alice" || s.Backend != "dovecot" || s.Selected != "INBOX" || s.LoggedIn.IsZero() {
			t.Errorf("session %+v", s)
		}
	}

	fp.hang()
	fmt.Fprintf(a.c, "a1 STORE 1 +FLAGS (\\Flagged)\r\n")
	const key = "mailbox:dovecot/alice/INBOX"
	var snap locks.Snapshot
	if !waitFor(10*time.Second, func() bool {
		snap = locks.Snapshot{}
		adminGet(t, base, "/admin/locks", "", &snap)
		return len(snap.Keys) == 1 && snap.Keys[0].Holder.Session == aID
	}) {
		t.Fatalf("A's lock never shown: %+v", snap)
	}
	fmt.Fprintf(b.c, "b1 STORE 2 +FLAGS (\\Flagged)\r\n")
	if !waitFor(10*time.Second, func() bool {
		snap = locks.Snapshot{}
		adminGet(t, base, "/admin/locks", "", &snap)
		return len(snap.Keys) == 1 && len(snap.Keys[0].Waiters) == 1
	}) {
		t.Fatalf("B never shown waiting: %+v", snap)
	}
	k := snap.Keys[0]
	if k.Key != key || snap.Scope != locks.ScopeProcess || k.Holder.Session != aID || k.Holder.User != "alice" ||
		k.Holder.Command != "STORE" || k.Waiters[0].Session != bID || k.Waiters[0].Command != "STORE" {
		t.Errorf("/admin/locks: %+v", snap)
	}
	var during struct{ Sessions []proxy.SessionInfo }
	adminGet(t, base, "/admin/sessions", "", &during)
	for _, s := range during.Sessions {
		switch s.ID {
		case aID:
			if len(s.Holds) != 1 || s.Holds[0].Key != key || len(s.Waits) != 0 ||
				len(s.InFlight) != 1 || s.InFlight[0].Tag != "a1" || s.InFlight[0].Command != "STORE" {
				t.Errorf("A: %+v", s)
			}
		case bID:
			if len(s.Waits) != 1 || s.Waits[0].Key != key || s.Waits[0].Position != 1 || len(s.Holds) != 0 {
				t.Errorf("B: %+v", s)
			}
		}
	}
	out, code := runAdmin(t, bin, "-config", cfg, "locks")
	if code != 0 || !strings.Contains(out, key) || !strings.Contains(out, fmt.Sprintf("cid %d alice STORE", aID)) ||
		!strings.Contains(out, fmt.Sprintf("cid %d alice STORE (", bID)) {
		t.Errorf("uidgate admin locks: exit %d\n%s", code, out)
	}
	out, code = runAdmin(t, bin, "-config", cfg, "sessions")
	if code != 0 || !strings.Contains(out, "a1 STORE") || strings.Count(out, "alice") < 2 {
		t.Errorf("uidgate admin sessions: exit %d\n%s", code, out)
	}

	// The kick: A gets BYE and its connection ends; B holds the lock.
	out, code = runAdmin(t, bin, "-config", cfg, "kick", "-cid", fmt.Sprint(aID))
	if code != 0 || strings.TrimSpace(out) != fmt.Sprintf("kicked %d", aID) {
		t.Errorf("uidgate admin kick: exit %d: %s", code, out)
	}
	var bye bool
	for {
		a.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		s, err := a.r.ReadString('\n')
		if err != nil {
			break
		}
		bye = bye || strings.HasPrefix(s, "* BYE")
	}
	if !bye {
		t.Error("A was not told BYE")
	}
	snap = locks.Snapshot{}
	adminGet(t, base, "/admin/locks", "", &snap)
	if len(snap.Keys) != 1 || snap.Keys[0].Holder.Session != bID || len(snap.Keys[0].Waiters) != 0 {
		t.Errorf("after the kick: %+v", snap)
	}
	var after struct{ Sessions []proxy.SessionInfo }
	adminGet(t, base, "/admin/sessions", "", &after)
	if len(after.Sessions) != 1 || after.Sessions[0].ID != bID {
		t.Errorf("sessions after the kick: %+v", after.Sessions)
	}
	fp.resume()
	b.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if got := b.cmd("b2", "NOOP"); !strings.HasPrefix(got, "b2 OK") {
		t.Errorf("B after the kick: %q", got)
	}

	// Kicking by user; a second kick finds nobody (exit 1).
	out, code = runAdmin(t, bin, "-config", cfg, "kick", "-user", "alice")
	if code != 0 || strings.TrimSpace(out) != fmt.Sprintf("kicked %d", bID) {
		t.Errorf("kick -user alice: exit %d: %s", code, out)
	}
	if out, code = runAdmin(t, bin, "-config", cfg, "kick", "-user", "alice"); code != 1 {
		t.Errorf("kick with no session: exit %d: %s", code, out)
	}
	if !strings.Contains(logs.String(), "kicked by an administrator") {
		t.Error("no log line for the kick")
	}
}

// TestAdminToken: with [admin] token_file, every request needs the
// bearer token (loopback too); `uidgate admin -config` finds it; the
// token is never logged.
func TestAdminToken(t *testing.T) {
	bin := buildUidgate(t)
	listen, metrics := freePort(t), freePort(t)
	dir := t.TempDir()
	const token = "0123456789abcdef-admin-token"
	tokenFile := filepath.Join(dir, "admin.token")
	os.WriteFile(tokenFile, []byte(token+"\n"), 0o600)
	cfg := filepath.Join(dir, "uidgate.toml")
	config := fmt.Sprintf(`
[[listener]]
address = %q

[[backend]]
name = "nowhere"
address = "127.0.0.1:1"

[[route]]
default = true
backend = "nowhere"

[metrics]
address = %q

[admin]
token_file = %q
`, listen, metrics, tokenFile)
	os.WriteFile(cfg, []byte(config), 0o600)
	_, logs := startServe(t, bin, config)
	base := "http://" + metrics
	dialIMAP(t, listen) // started
	for _, tok := range []string{"", "wrong-token-0123456789", token + "x"} {
		if code := adminGet(t, base, "/admin/sessions", tok, nil); code != http.StatusUnauthorized {
			t.Errorf("token %q: %d, want 401", tok, code)
		}
	}
	var got struct{ Sessions []proxy.SessionInfo }
	if code := adminGet(t, base, "/admin/sessions", token, &got); code != 200 || len(got.Sessions) != 1 {
		t.Errorf("with the token: %d %+v", code, got)
	}
	if out, code := runAdmin(t, bin, "-config", cfg, "locks"); code != 0 || !strings.Contains(out, "KEY") {
		t.Errorf("uidgate admin -config locks: exit %d\n%s", code, out)
	}
	if out, code := runAdmin(t, bin, "-url", base, "sessions"); code != 1 || !strings.Contains(out, "401") {
		t.Errorf("uidgate admin without the token: exit %d\n%s", code, out)
	}
	if out, code := runAdmin(t, bin, "-url", base, "-token-file", tokenFile, "-json", "sessions"); code != 0 || !strings.Contains(out, `"sessions"`) {
		t.Errorf("uidgate admin -token-file -json: exit %d\n%s", code, out)
	}
	if strings.Contains(logs.String(), token) || strings.Contains(logs.String(), "wrong-token") {
		t.Error("a token is in the log")
	}
	if !strings.Contains(logs.String(), "wrong or missing bearer token") {
		t.Error("refused requests are not logged")
	}
}

// TestAdminViewUnderLoad reads the admin view over and over while two
// sessions of alice store flags on the same mailbox, in each server's
// deployed mode, then kicks alice: run with -race, it shows the view
// reads sessions without racing with their relays; each session is seen
// with its backend, its mailbox and, at some point, a lock held.
func TestAdminViewUnderLoad(t *testing.T) {
	eachKind(t, allKinds, func(t *testing.T, kind string) {
		be := startBackend(t, kind)
		for i := range 5 {
			be.Deliver(t, "alice", message(fmt.Sprintf("load %d", i), 100))
		}
		g := startGate(t, gateOpts{backend: deployedBackend(kind, be.Addr),
			serialization: rules.Serialization{SelectTakesSeen: kind == "cyrus23"}})
		done := make(chan struct{})
		var wg sync.WaitGroup
		for s := range 2 {
			rc := rawLogin(t, g.Addr, "alice")
			selectInbox(t, rc)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-done:
						return
					default:
					}
					tag := fmt.Sprintf("s%d-%d", s, i)
					rc.send(fmt.Sprintf(`%s STORE %d %sFLAGS (\Flagged)`, tag, i%5+1, []string{"+", "-"}[i%2]))
					if l := rc.until(tag); status(l) != "OK" {
						t.Errorf("%s: %q", tag, l)
						return
					}
				}
			}()
		}
		sawLock := false
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			for _, si := range g.Srv.Sessions() {
				if si.User != "alice" || si.Backend != "test" || si.Selected != "INBOX" {
					t.Fatalf("session %+v", si)
				}
				sawLock = sawLock || len(si.Holds) > 0
			}
			g.Srv.LockSnapshot()
		}
		close(done)
		wg.Wait()
		if !sawLock {
			t.Error("no session was ever seen holding a lock")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if ids := g.Srv.Kick(ctx, 0, "alice"); len(ids) != 2 {
			t.Errorf("kicked %v", ids)
		}
		if n := g.Srv.ActiveSessions(); n != 0 {
			t.Errorf("%d sessions after the kick", n)
		}
		if snap, _ := g.Srv.LockSnapshot(); len(snap.Keys) != 0 {
			t.Errorf("locks after the kick: %+v", snap)
		}
	})
}
