package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAdminGuard: without a token only loopback clients are answered;
// with one, only requests carrying it, from anywhere.
func TestAdminGuard(t *testing.T) {
	s := &Server{}
	do := func(h http.Handler, method, path, remote, auth string) int {
		r := httptest.NewRequest(method, path, nil)
		r.RemoteAddr = remote
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	open := s.AdminHandler(AdminOptions{})
	for remote, want := range map[string]int{
		"127.0.0.1:5000":        200,
		"127.8.9.1:5000":        200,
		"[::1]:5000":            200,
		"[::ffff:127.0.0.1]:50": 200,
		"192.0.2.1:5000":        403,
		"[2001:db8::1]:5000":    403,
		"garbage":               403,
	} {
		if got := do(open, "GET", "/admin/sessions", remote, ""); got != want {
			t.Errorf("no token, from %s: %d, want %d", remote, got, want)
		}
	}
	const tok = "0123456789abcdef-token"
	guarded := s.AdminHandler(AdminOptions{Token: tok})
	for _, c := range []struct {
		remote, auth string
		want         int
	}{
		{"192.0.2.1:5000", "Bearer " + tok, 200},
		{"127.0.0.1:5000", "Bearer " + tok, 200},
		{"127.0.0.1:5000", "", 401},
		{"127.0.0.1:5000", "Bearer " + tok[:10], 401},
		{"127.0.0.1:5000", "Basic " + tok, 401},
		{"192.0.2.1:5000", "Bearer " + tok + "x", 401},
	} {
		if got := do(guarded, "GET", "/admin/locks", c.remote, c.auth); got != c.want {
			t.Errorf("token, from %s with %q: %d, want %d", c.remote, c.auth, got, c.want)
		}
	}
	// Methods and parameters.
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/admin/kick?cid=1", 404},
		{"POST", "/admin/kick", 400},
		{"POST", "/admin/kick?cid=x", 400},
		{"POST", "/admin/kick?cid=1&user=a", 400},
		{"POST", "/admin/kick?cid=99", 404},
		{"POST", "/admin/kick?user=nobody", 404},
		{"GET", "/admin/nothing", 404},
	} {
		if got := do(open, c.method, c.path, "127.0.0.1:1", ""); got != c.want {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, got, c.want)
		}
	}
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/admin/locks", nil)
	r.RemoteAddr = "127.0.0.1:1"
	open.ServeHTTP(w, r)
	if !strings.Contains(w.Body.String(), `"scope": "process"`) || !strings.Contains(w.Body.String(), `"keys": []`) {
		t.Errorf("/admin/locks: %s", w.Body.String())
	}
}
