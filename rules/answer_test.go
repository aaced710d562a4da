package rules

import (
	"errors"
	"testing"
)

func TestParseHost(t *testing.T) {
	for _, c := range []struct {
		in, host, port string
		bad            bool
	}{
		{in: "imap2.example.org", host: "imap2.example.org"},
		{in: "IMAP2.Example.ORG.", host: "imap2.example.org"},
		{in: "imap2.example.org:993", host: "imap2.example.org", port: "993"},
		{in: " 10.0.0.7:143 ", host: "10.0.0.7", port: "143"},
		{in: "10.0.0.7", host: "10.0.0.7"},
		{in: "2001:db8::7", host: "2001:db8::7"},
		{in: "[2001:DB8::7]:143", host: "2001:db8::7", port: "143"},
		{in: "::ffff:10.0.0.7", host: "::ffff:10.0.0.7"},
		{in: "dovecot-b", host: "dovecot-b"},
		{in: "", bad: true},
		{in: "imap2.example.org:0", bad: true},
		{in: "imap2.example.org:65536", bad: true},
		{in: "imap2.example.org:imap", bad: true},
		{in: "imap://imap2.example.org", bad: true},
		{in: "alice@imap2", bad: true},
		{in: "imap2 example", bad: true},
		{in: "a..b", bad: true},
		{in: "fe80::1%eth0", bad: true},
		{in: "*)(uid=*", bad: true},
	} {
		host, port, err := ParseHost(c.in)
		if c.bad {
			if err == nil || !errors.Is(err, ErrBadAnswer) {
				t.Errorf("ParseHost(%q) = %q, %q, %v; want ErrBadAnswer", c.in, host, port, err)
			}
			continue
		}
		if err != nil || host != c.host || port != c.port {
			t.Errorf("ParseHost(%q) = %q, %q, %v; want %q, %q", c.in, host, port, err, c.host, c.port)
		}
	}
}

func TestResolve(t *testing.T) {
	backends := []BackendAddr{
		{Name: "cyrus", Address: "Imap1.Example.org:143"},
		{Name: "dovecot", Address: "10.0.0.8:993"},
		{Name: "v6", Address: "[2001:db8::9]:143"},
	}
	for _, c := range []struct {
		host, port, def, tpl string
		want                 Resolution
		err                  error
	}{
		{host: "imap1.example.org", port: "143", want: Resolution{Backend: "cyrus", Address: "Imap1.Example.org:143"}},
		{host: "imap1.example.org", def: "143", want: Resolution{Backend: "cyrus", Address: "Imap1.Example.org:143"}},
		{host: "10.0.0.8", port: "993", want: Resolution{Backend: "dovecot", Address: "10.0.0.8:993"}},
		{host: "2001:db8::9", port: "143", want: Resolution{Backend: "v6", Address: "[2001:db8::9]:143"}},
		// A backend's name, answered without a port.
		{host: "dovecot", want: Resolution{Backend: "dovecot", Address: "10.0.0.8:993"}},
		{host: "dovecot", def: "143", want: Resolution{Backend: "dovecot", Address: "10.0.0.8:993"}},
		// The same host on another port is another server.
		{host: "10.0.0.8", port: "143", err: ErrUnknownBackend},
		{host: "10.0.0.8", port: "143", tpl: "pool", want: Resolution{Backend: "pool", Address: "10.0.0.8:143", Template: true}},
		{host: "imap9.example.org", def: "143", tpl: "pool", want: Resolution{Backend: "pool", Address: "imap9.example.org:143", Template: true}},
		// No port, no default, not a name: nothing to dial.
		{host: "imap9.example.org", tpl: "pool", err: ErrUnknownBackend},
		// Host names are not resolved: 10.0.0.5 is not imap1.
		{host: "10.0.0.5", port: "143", err: ErrUnknownBackend},
		{host: "bad host", port: "143", tpl: "pool", err: ErrBadAnswer},
	} {
		got, err := Resolve(c.host, c.port, c.def, backends, c.tpl)
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("Resolve(%q, %q, %q, tpl %q) = %+v, %v; want %v", c.host, c.port, c.def, c.tpl, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Resolve(%q, %q, %q, tpl %q) = %+v, %v; want %+v", c.host, c.port, c.def, c.tpl, got, err, c.want)
		}
	}
}

func TestMatchLookupRoutes(t *testing.T) {
	r, err := NewRouter([]Route{
		{User: "admin", Backend: "local"},
		{Domain: "example.org", Lookup: "ldap"},
		{Default: true, Backend: "rest"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for user, want := range map[string]Target{
		"admin":            {Backend: "local", Index: 0},
		"bob@Example.ORG":  {Lookup: "ldap", Index: 1},
		"carol@other.org":  {Backend: "rest", Index: 2},
		"*)(uid=*@x.org":   {Backend: "rest", Index: 2},
		"a@example.org.uk": {Backend: "rest", Index: 2},
	} {
		if got, ok := r.Match(user); !ok || got != want {
			t.Errorf("Match(%q) = %+v, %v; want %+v", user, got, ok, want)
		}
	}
	// Backend reports static routes only.
	if b, ok := r.Backend("bob@example.org"); ok {
		t.Errorf("Backend on a lookup route = %q, true", b)
	}
	if _, err := NewRouter([]Route{{Default: true, Backend: "a", Lookup: "b"}}); err == nil {
		t.Error("a route with both backend and lookup compiled")
	}
}
