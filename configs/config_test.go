package configs

import (
	"bytes"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDefault(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if len(c.Listeners) != 1 || c.Listeners[0].Address != "127.0.0.1:1143" || c.Listeners[0].TLSModeOrDefault() != TLSNone {
		t.Errorf("listeners = %+v", c.Listeners)
	}
	if len(c.Backends) != 1 || c.Backends[0].Name != "local" || c.Backends[0].Address != "127.0.0.1:143" {
		t.Errorf("backends = %+v", c.Backends)
	}
	r, err := c.Router()
	if err != nil {
		t.Fatal(err)
	}
	if b, ok := r.Backend("anyone@anywhere"); !ok || b != "local" {
		t.Errorf("default route: Backend = %q, %v", b, ok)
	}
	if c.Log.LevelOrDefault() != "info" || c.Log.FormatOrDefault() != "json" {
		t.Errorf("log = %+v", c.Log)
	}
	if c.File() != "default.toml" {
		t.Errorf("File() = %q", c.File())
	}
	// Each call is a fresh copy.
	c.Listeners[0].Address = "changed"
	if Default().Listeners[0].Address == "changed" {
		t.Error("Default shares state between calls")
	}
}

func TestAccessorDefaults(t *testing.T) {
	var (
		l   Listener
		b   = Backend{Address: "imap.example.org:993"}
		lim Limits
		lg  Log
		def = TLS{Cert: "c.pem", Key: "k.pem"}
	)
	checks := []struct {
		name      string
		got, want any
	}{
		{"listener tls", l.TLSModeOrDefault(), TLSNone},
		{"listener cert", l.CertFile(def), "c.pem"},
		{"listener key", l.KeyFile(def), "k.pem"},
		{"listener own cert", Listener{Cert: "own.pem"}.CertFile(def), "own.pem"},
		{"tls min_version", TLS{}.MinVersionOrDefault(), "1.2"},
		{"backend tls", b.TLSModeOrDefault(), TLSNone},
		{"backend server_name", b.ServerNameOrDefault(), "imap.example.org"},
		{"backend server_name ipv6", Backend{Address: "[::1]:143"}.ServerNameOrDefault(), "::1"},
		{"backend own server_name", Backend{Address: "10.0.0.1:143", ServerName: "x"}.ServerNameOrDefault(), "x"},
		{"backend min_version", b.MinVersionOrDefault(), "1.2"},
		{"backend dial_timeout", b.DialTimeoutOrDefault(), 10 * time.Second},
		{"max_line", lim.MaxLineOrDefault(), 65536},
		{"max_literal", lim.MaxLiteralOrDefault(), int64(104857600)},
		{"preauth_timeout", lim.PreauthTimeoutOrDefault(), 60 * time.Second},
		{"idle_timeout", lim.IdleTimeoutOrDefault(), 31 * time.Minute},
		{"lock_timeout", lim.LockTimeoutOrDefault(), 30 * time.Second},
		{"max_bad_commands", lim.MaxBadCommandsOrDefault(), 3},
		{"expansion_factor", lim.ExpansionFactorOrDefault(), 16},
		{"expansion_floor", lim.ExpansionFloorOrDefault(), 16 << 20},
		{"login_burst_per_ip", lim.LoginBurstPerIPOrDefault(), 200},
		{"login_interval_per_ip", lim.LoginIntervalPerIPOrDefault(), 50 * time.Millisecond},
		{"login_burst_per_user", lim.LoginBurstPerUserOrDefault(), 30},
		{"login_interval_per_user", lim.LoginIntervalPerUserOrDefault(), 2 * time.Second},
		{"set max_line", Limits{MaxLine: 9000}.MaxLineOrDefault(), 9000},
		{"log level", lg.LevelOrDefault(), "info"},
		{"log format", lg.FormatOrDefault(), "json"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v; want %v", c.name, c.got, c.want)
		}
	}
}

// TestExample parses configs/example.toml, points its file names at test
// files, and validates it. The example names files under /etc/uidgate;
// Validate reads them, so the test substitutes its own.
func TestExample(t *testing.T) {
	data, err := os.ReadFile("example.toml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("example.toml", data)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	// Unchanged, only the missing files are wrong.
	err = c.Validate()
	for _, line := range strings.Split(err.Error(), "\n") {
		if !strings.Contains(line, "no such file or directory") {
			t.Errorf("unexpected problem in example.toml: %s", line)
		}
	}

	f := writeTestFiles(t)
	for i := range c.Listeners {
		if c.Listeners[i].Cert != "" {
			c.Listeners[i].Cert, c.Listeners[i].Key = f.cert, f.key
		}
	}
	c.TLS.Cert, c.TLS.Key = f.cert, f.key
	for i := range c.Backends {
		if c.Backends[i].CAFile != "" {
			c.Backends[i].CAFile = f.ca
		}
	}
	for _, r := range c.Routes {
		if r.LDAP != nil {
			r.LDAP.CAFile, r.LDAP.BindPasswordFile = f.ca, f.ca
		}
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}

	r, err := c.Router()
	if err != nil {
		t.Fatal(err)
	}
	for user, want := range map[string]string{
		"alice@new.example.org": "dovecot",
		"ceo@example.org":       "dovecot",
		"ceo@EXAMPLE.ORG":       "dovecot",
		"xceo@example.org":      "cyrus-legacy",
		"bob@Example.org":       "cyrus-legacy",
		"carol":                 "cyrus-legacy",
	} {
		if got, ok := r.Backend(user); !ok || got != want {
			t.Errorf("Backend(%q) = %q, %v; want %q", user, got, ok, want)
		}
	}
	for user, want := range map[string]int{"dave@hosted.example.net": 3, "erin@Staff.example.org": 4} {
		if got, ok := r.Match(user); !ok || got.Lookup == "" || got.Index != want {
			t.Errorf("Match(%q) = %+v, %v; want the lookup of route %d", user, got, ok, want)
		}
	}

	for _, l := range c.Listeners {
		cfg, err := l.TLSConfig(c.TLS)
		if err != nil || cfg == nil || cfg.GetCertificate == nil || cfg.MinVersion != tls.VersionTLS12 {
			t.Errorf("listener %s: TLSConfig = %v, %v", l.Address, cfg, err)
		}
	}
	legacy, ok := c.Backend("cyrus-legacy")
	if !ok || !legacy.Legacy || !legacy.CyrusNamespace || legacy.DialTimeoutOrDefault() != 5*time.Second {
		t.Errorf("cyrus-legacy = %+v, %v", legacy, ok)
	}
	if c.Limits.MaxLiteralOrDefault() != 50<<20 {
		t.Errorf("max_literal = %d", c.Limits.MaxLiteralOrDefault())
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "uidgate.toml")
	writeFile(t, name, []byte("[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nadress = \"x\"\n"))
	_, err := Load(name)
	if m := missingFromError(err, []string{name + `:5: unknown key "listener.1.adress" (did you mean "address"?)`}); m != nil {
		t.Errorf("Load: %v; missing %q", err, m)
	}
	if _, err := Load(filepath.Join(dir, "missing.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v; want ErrNotExist", err)
	}
	writeFile(t, name, []byte("[log]\nlevel = \"debug\"\n"))
	c, err := Load(name)
	if err != nil || c.Log.Level != "debug" || c.File() != name {
		t.Errorf("Load = %+v, %v", c, err)
	}
}

// TestParseErrors covers what Parse rejects: syntax, types and unknown keys,
// each with its file:line and the key as written, array indexes included.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		toml string
		want []string // substrings of the error
		n    int      // number of problems, if > 0
	}{
		{
			name: "unknown top-level key",
			toml: "listen = \"x:1\"\n\n[log]\nlevel = \"info\"\n",
			want: []string{`t.toml:1: unknown key "listen" (did you mean "listener"?)`},
		},
		{
			name: "unknown top-level table",
			toml: "[log]\nlevel = \"info\"\n[logging]\nlevel = \"debug\"\nformat = \"json\"\n",
			want: []string{`t.toml:3: unknown key "logging"`},
			n:    1, // its keys are not reported again
		},
		{
			name: "unknown nested key",
			toml: "[limits]\nmax_line = 9000\nmax_lines = 9000\n",
			want: []string{`t.toml:3: unknown key "limits.max_lines" (did you mean "max_line"?)`},
		},
		{
			name: "unknown key in an array of tables names its index",
			toml: "[[listener]]\naddress = \"a:1\"\n\n[[listener]]\nadress = \"b:1\"\n",
			want: []string{`t.toml:5: unknown key "listener.1.adress" (did you mean "address"?)`},
			n:    1,
		},
		{
			name: "same unknown key in two elements",
			toml: "[[backend]]\nnme = \"a\"\n[[backend]]\nnme = \"b\"\n",
			want: []string{`t.toml:2: unknown key "backend.0.nme"`, `t.toml:4: unknown key "backend.1.nme"`},
			n:    2,
		},
		{
			name: "keys are case-sensitive",
			toml: "[[backend]]\nName = \"a\"\n",
			want: []string{`t.toml:2: unknown key "backend.0.Name" (keys are case-sensitive: did you mean "name"?)`},
		},
		{
			name: "dotted key",
			toml: "limits.max_line = 9000\nlimits.max_lne = 9000\n",
			want: []string{`t.toml:2: unknown key "limits.max_lne"`},
		},
		{
			name: "quoted key",
			toml: "[log]\n\"lev el\" = \"info\"\n",
			want: []string{`t.toml:2: unknown key "log.\"lev el\""`},
		},
		{
			name: "inline array of tables",
			toml: "backend = [\n  {name = \"a\", address = \"x:1\"},\n  {name = \"b\", adress = \"y:1\"},\n]\n",
			want: []string{`t.toml:3: unknown key "backend.1.adress"`},
		},
		{
			name: "unknown sub-table of an array element",
			toml: "[[backend]]\nname = \"a\"\n[backend.tls]\nca = \"x\"\n",
			want: []string{`t.toml:3: backend.0.tls: want a string, found a table`},
		},
		{
			name: "bad duration names its key and line",
			toml: "[[backend]]\nname = \"a\"\ndial_timeout = \"5s\"\n\n[[backend]]\nname = \"b\"\ndial_timeout = \"5 seconds\"\n",
			want: []string{`t.toml:7: backend.1.dial_timeout: invalid duration "5 seconds"`},
			n:    1,
		},
		{
			name: "duration without unit",
			toml: "[limits]\nidle_timeout = \"1800\"\n",
			want: []string{`t.toml:2: limits.idle_timeout: invalid duration "1800": needs a unit, as in "1800s"`},
		},
		{
			name: "duration as a number",
			toml: "[limits]\nlock_timeout = 30\n",
			want: []string{`t.toml:2: limits.lock_timeout: want a duration string such as "30s", found an integer`},
		},
		{
			name: "wrong type in a later element",
			toml: "[[backend]]\nlegacy = true\n[[backend]]\nlegacy = \"yes\"\n",
			want: []string{`t.toml:4: backend.1.legacy: want a boolean, found a string`},
		},
		{
			name: "string for integer",
			toml: "[limits]\nmax_line = \"64k\"\n",
			want: []string{`t.toml:2: limits.max_line: want an integer, found a string`},
		},
		{
			name: "table for array of tables",
			toml: "[listener]\naddress = \"x:1\"\n",
			want: []string{`t.toml:1: listener: want an array of tables, found a table`},
		},
		{
			name: "array of tables for table",
			toml: "[[log]]\nlevel = \"info\"\n",
			want: []string{`t.toml:1: log: want a table, found an array of tables`},
		},
		{
			name: "syntax error keeps its line",
			toml: "[log]\nlevel = \"info\"\nformat = json\n",
			want: []string{`t.toml:3:`},
		},
		{
			name: "bad value",
			toml: "[[listener]]\naddress = \"x:1\"\ntls = none\n",
			want: []string{`t.toml:3:`},
		},
		{
			name: "duplicate key",
			toml: "[log]\nlevel = \"info\"\nlevel = \"debug\"\n",
			want: []string{`t.toml:3:`, `level`},
		},
		{
			name: "every problem is reported, in line order",
			toml: "foo = 1\n[[listener]]\naddres = \"x\"\ntls = 1\n[limits]\nidle_timeout = \"x\"\n",
			want: []string{
				"t.toml:1: unknown key \"foo\"\nt.toml:3: unknown key \"listener.0.addres\"",
				"t.toml:4: listener.0.tls: want a string, found an integer\nt.toml:6: limits.idle_timeout: invalid duration",
			},
			n: 4,
		},
		{
			// Issue 18: array elements were not checked; a wrong one failed
			// the decoding, which reported only its first error, and none
			// at all beside other problems.
			name: "array elements of the wrong type",
			toml: "[[listener]]\ntrusted_proxies = [\"10.0.0.0/8\", 1]\n[[listener]]\ntrusted_proxies = [true]\n[locks]\nendpoints = [1, 2]\n[log]\nlevel = 1\n",
			want: []string{
				`t.toml:2: listener.0.trusted_proxies.1: want a string, found an integer`,
				`t.toml:4: listener.1.trusted_proxies.0: want a string, found a boolean`,
				`t.toml:6: locks.endpoints.0: want a string, found an integer`,
				`t.toml:8: log.level: want a string, found an integer`,
			},
			n: 4,
		},
		{
			name: "keys inside multi-line strings are not keys",
			toml: "[log]\nlevel = \"\"\"\n[[listener]]\nbogus = 1\n\"\"\"\nformat = '''\nx = 1'''\nnope = 1\n",
			want: []string{`t.toml:8: unknown key "log.nope"`},
			n:    1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("t.toml", []byte(tt.toml))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", c)
			}
			if c != nil {
				t.Errorf("Parse returned a Config with its error")
			}
			if m := missingFromError(err, tt.want); m != nil {
				t.Errorf("error:\n%v\nmissing:\n%s", err, strings.Join(m, "\n"))
			}
			if tt.n > 0 {
				if got := len(strings.Split(err.Error(), "\n")); got != tt.n {
					t.Errorf("%d problems; want %d:\n%v", got, tt.n, err)
				}
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	tests := []struct {
		name  string
		toml  string
		check func(*Config) bool
	}{
		{"empty", "", func(c *Config) bool { return len(c.Listeners) == 0 }},
		{"inline tables", "log = {level = \"debug\", format = \"console\"}\n",
			func(c *Config) bool { return c.Log.Level == "debug" && c.Log.Format == "console" }},
		{"inline array of tables", "backend = [{name = \"a\", address = \"x:1\"}, {name = \"b\"}]\n",
			func(c *Config) bool { return len(c.Backends) == 2 && c.Backends[1].Name == "b" }},
		{"dotted keys", "limits.max_line = 9000\nlog.level = \"warn\"\n",
			func(c *Config) bool { return c.Limits.MaxLine == 9000 && c.Log.Level == "warn" }},
		{"durations", "[limits]\nidle_timeout = \"1h30m\"\nlock_timeout = \"1500ms\"\n",
			func(c *Config) bool {
				return c.Limits.IdleTimeout.Duration == 90*time.Minute && c.Limits.LockTimeout.Duration == 1500*time.Millisecond
			}},
		{"escaped duration", "[limits]\nlock_timeout = \"\\u0033s\"\n",
			func(c *Config) bool { return c.Limits.LockTimeout.Duration == 3*time.Second }},
		{"comments everywhere", "# c\n[[listener]] # c\naddress = \"a:1\" # [x]\n# [[backend]]\n",
			func(c *Config) bool { return len(c.Listeners) == 1 && len(c.Backends) == 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("t.toml", []byte(tt.toml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !tt.check(c) {
				t.Errorf("unexpected result: %+v", c)
			}
		})
	}
}

const validBase = `[[listener]]
address = "127.0.0.1:1143"

[[backend]]
name = "a"
address = "127.0.0.1:143"

[[route]]
default = true
backend = "a"
`

// TestValidate covers Validate's checks. $CERT, $KEY, $OTHERKEY, $CA,
// $NOTPEM and $DIR name files the test writes.
func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		toml string
		want []string // substrings of the error; none means valid
		n    int      // number of problems, if > 0
	}{
		{name: "base", toml: validBase},
		{
			name: "starttls listener with require_tls and [tls] fallback",
			toml: validBase + "[[listener]]\naddress = \":143\"\ntls = \"starttls\"\nrequire_tls = true\n[tls]\ncert = \"$CERT\"\nkey = \"$KEY\"\nmin_version = \"1.3\"\n",
		},
		{
			name: "implicit listener with its own files, port 0",
			toml: validBase + "[[listener]]\naddress = \"[::1]:0\"\ntls = \"implicit\"\ncert = \"$CERT\"\nkey = \"$KEY\"\n",
		},
		{
			name: "TLS backend with CA, legacy TLS version",
			toml: validBase + "[[backend]]\nname = \"b\"\naddress = \"imap.internal:143\"\ntls = \"starttls\"\nca_file = \"$CA\"\nserver_name = \"localhost\"\nmin_version = \"1.0\"\ndial_timeout = \"3s\"\n",
		},
		{
			name: "limits at their bounds",
			toml: validBase + "[limits]\nmax_line = 8000\nidle_timeout = \"30m\"\nmax_bad_commands = 1\n",
		},
		{
			name: "empty file",
			toml: "",
			want: []string{
				"t.toml: listener: at least one [[listener]] is required",
				"t.toml: backend: at least one [[backend]] is required",
				"t.toml: route: at least one [[route]] is required",
			},
			n: 3,
		},
		{
			name: "route to unknown backend",
			toml: validBase + "\n[[route]]\ndomain = \"x.org\"\nbackend = \"b\"\n",
			want: []string{`t.toml:14: route.1.backend: unknown backend "b" (backends: "a")`},
		},
		{
			name: "route after default is unreachable",
			toml: validBase + "\n[[route]]\ndomain = \"x.org\"\nbackend = \"a\"\n",
			want: []string{`t.toml:12: route.1: unreachable: route.0 (default = true) matches every user first`},
			n:    1,
		},
		{
			name: "bad regex route",
			toml: "[[route]]\nregex = \"a(b\"\nbackend = \"a\"\n" + validBase,
			want: []string{"t.toml:2: route.0.regex: error parsing regexp: missing closing ): `a(b`"},
			n:    1,
		},
		{
			name: "route with two matchers",
			toml: "[[route]]\nuser = \"*\"\ndomain = \"x\"\nbackend = \"a\"\n" + validBase,
			want: []string{"t.toml:1: route.0: user, domain are all set: set exactly one"},
		},
		{
			name: "route without matcher or backend",
			toml: "[[route]]\nbackend = \"a\"\n[[route]]\nuser = \"x\"\n" + validBase,
			want: []string{"t.toml:1: route.0: no matcher", "t.toml:3: route.1.backend: required"},
			n:    2,
		},
		{
			name: "missing cert file",
			toml: validBase + "[[listener]]\naddress = \":993\"\ntls = \"implicit\"\ncert = \"$DIR/missing.pem\"\nkey = \"$KEY\"\n",
			want: []string{"t.toml:14: listener.1.cert: stat ", "missing.pem: no such file or directory"},
			n:    1,
		},
		{
			name: "missing cert from [tls]",
			toml: validBase + "[[listener]]\naddress = \":143\"\ntls = \"starttls\"\n[tls]\ncert = \"$DIR/missing.pem\"\nkey = \"$KEY\"\n",
			want: []string{"t.toml:15: tls.cert: stat "},
			n:    1,
		},
		{
			name: "no cert at all",
			toml: validBase + "[[listener]]\naddress = \":143\"\ntls = \"starttls\"\n",
			want: []string{
				`t.toml:11: listener.1.cert: required with tls = "starttls" (set it here or in [tls])`,
				`t.toml:11: listener.1.key: required with tls = "starttls"`,
			},
			n: 2,
		},
		{
			name: "cert and key do not match",
			toml: validBase + "[[listener]]\naddress = \":993\"\ntls = \"implicit\"\ncert = \"$CERT\"\nkey = \"$OTHERKEY\"\n",
			want: []string{"t.toml:14: listener.1.cert: ", "private key does not match public key"},
		},
		{
			name: "cert is a directory",
			toml: validBase + "[[listener]]\naddress = \":993\"\ntls = \"implicit\"\ncert = \"$DIR\"\nkey = \"$KEY\"\n",
			want: []string{"t.toml:14: listener.1.cert: ", "is a directory"},
		},
		{
			name: "cert with tls none",
			toml: validBase + "[[listener]]\naddress = \":143\"\ncert = \"$CERT\"\n",
			want: []string{`t.toml:13: listener.1.cert: set, but tls = "none"`},
		},
		{
			name: "require_tls without starttls",
			toml: "[[listener]]\naddress = \":143\"\nrequire_tls = true\n" +
				"[[listener]]\naddress = \":993\"\ntls = \"implicit\"\nrequire_tls = true\ncert = \"$CERT\"\nkey = \"$KEY\"\n" + validBase,
			want: []string{
				`t.toml:3: listener.0.require_tls: only applies to tls = "starttls", not "none"`,
				`t.toml:7: listener.1.require_tls: only applies to tls = "starttls", not "implicit"`,
			},
			n: 2,
		},
		{
			name: "bad tls modes",
			toml: validBase + "[[listener]]\naddress = \":1\"\ntls = \"ssl\"\n[[backend]]\nname = \"b\"\naddress = \"x:1\"\ntls = \"STARTTLS\"\n",
			want: []string{
				`t.toml:13: listener.1.tls: "ssl": want "none", "starttls" or "implicit"`,
				`t.toml:17: backend.1.tls: "STARTTLS"`,
			},
			n: 2,
		},
		{
			name: "duplicate backend",
			toml: validBase + "\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.2:143\"\n",
			want: []string{`t.toml:13: backend.1.name: "a" is also backend.0's name`},
			n:    1,
		},
		{
			name: "backend without name",
			toml: validBase + "\n[[backend]]\naddress = \"127.0.0.2:143\"\n",
			want: []string{`t.toml:12: backend.1.name: required`},
		},
		{
			name: "duplicate listener address",
			toml: validBase + "[[listener]]\naddress = \"127.0.0.1:1143\"\n",
			want: []string{`t.toml:12: listener.1.address: "127.0.0.1:1143" is also listener.0's address`},
		},
		{
			name: "bad addresses",
			toml: validBase + "[[listener]]\naddress = \"localhost\"\n[[backend]]\nname = \"b\"\naddress = \":143\"\n[[backend]]\nname = \"c\"\naddress = \"x:imap\"\n[[backend]]\nname = \"d\"\n",
			want: []string{
				`t.toml:12: listener.1.address: "localhost": want host:port`,
				`t.toml:15: backend.1.address: ":143": missing host`,
				`t.toml:18: backend.2.address: "x:imap": port "imap" is not a number`,
				`t.toml:19: backend.3.address: required`,
			},
			n: 4,
		},
		{
			name: "CA file is not PEM",
			toml: validBase + "[[backend]]\nname = \"b\"\naddress = \"x:993\"\ntls = \"implicit\"\nca_file = \"$NOTPEM\"\n",
			want: []string{"t.toml:15: backend.1.ca_file: ", "no PEM certificate found"},
		},
		{
			name: "CA file missing",
			toml: validBase + "[[backend]]\nname = \"b\"\naddress = \"x:993\"\ntls = \"implicit\"\nca_file = \"$DIR/nope.pem\"\n",
			want: []string{"t.toml:15: backend.1.ca_file: open ", "no such file or directory"},
		},
		{
			name: "TLS settings on a cleartext backend",
			toml: validBase + "[[backend]]\nname = \"b\"\naddress = \"x:143\"\nca_file = \"$CA\"\ninsecure_skip_verify = true\n",
			want: []string{
				`t.toml:14: backend.1.ca_file: has no effect with tls = "none"`,
				`t.toml:15: backend.1.insecure_skip_verify: has no effect with tls = "none"`,
			},
			n: 2,
		},
		{
			name: "bad TLS versions",
			toml: validBase + "[tls]\nmin_version = \"1.4\"\n[[backend]]\nname = \"b\"\naddress = \"x:993\"\ntls = \"implicit\"\nmin_version = \"1.4\"\n",
			want: []string{
				`t.toml:12: tls.min_version: "1.4": want "1.0", "1.1", "1.2" or "1.3"`,
				`t.toml:17: backend.1.min_version: "1.4"`,
			},
			n: 2,
		},
		{
			// Issue 18: legacy farms serve TLS 1.0 clients; allowed, and
			// warned about (TestWarnings).
			name: "TLS 1.0 and 1.1 for clients",
			toml: validBase + "[[listener]]\naddress = \":993\"\ntls = \"implicit\"\n[tls]\ncert = \"$CERT\"\nkey = \"$KEY\"\nmin_version = \"1.0\"\n",
		},
		{
			// Issue 18: an address on all interfaces takes the port on
			// every address, IPv4 and IPv6 (Go listens dual-stack).
			name: "overlapping listeners",
			toml: validBase + "[[listener]]\naddress = \"0.0.0.0:1143\"\n[[listener]]\naddress = \"[::]:1143\"\n[[listener]]\naddress = \":2143\"\n[[listener]]\naddress = \"[::1]:2143\"\n[[listener]]\naddress = \"localhost:3143\"\n[[listener]]\naddress = \"127.0.0.1:3143\"\n[[listener]]\naddress = \"127.0.0.2:1144\"\n[[listener]]\naddress = \"127.0.0.1:1144\"\n[[listener]]\naddress = \"[::1]:1144\"\n[[listener]]\naddress = \"0.0.0.0:0\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n",
			want: []string{
				`t.toml:12: listener.1.address: "0.0.0.0:1143" (all interfaces) takes the port of listener.0's "127.0.0.1:1143": both cannot be bound`,
				`t.toml:14: listener.2.address: "[::]:1143" (all interfaces) takes the port of listener.0's "127.0.0.1:1143"`,
				`t.toml:18: listener.4.address: "[::1]:2143" is taken by listener.3's ":2143"`,
				`t.toml:22: listener.6.address: "127.0.0.1:3143" is the same address as listener.5's "localhost:3143"`,
			},
			n: 4,
		},
		{
			name: "metrics on a listener's address",
			toml: validBase + "[metrics]\naddress = \"127.0.0.1:1143\"\n",
			want: []string{`t.toml:12: metrics.address: "127.0.0.1:1143" is also listener.0's address`},
			n:    1,
		},
		{
			name: "metrics on all interfaces over a listener's port",
			toml: validBase + "[metrics]\naddress = \":1143\"\n",
			want: []string{`t.toml:12: metrics.address: ":1143" (all interfaces) takes the port of listener.0's "127.0.0.1:1143"`},
			n:    1,
		},
		{
			name: "metrics on another port",
			toml: validBase + "[metrics]\naddress = \":9143\"\n",
		},
		{
			// Issue 18: these were printed as written and run as their
			// defaults (drain_timeout 30s, max_connections_per_ip 200).
			name: "zero or negative limits that would have meant their defaults",
			toml: validBase + "[limits]\ndrain_timeout = \"0s\"\nmax_connections_per_ip = -1\nmax_connections = 0\nauth_failure_delay = \"-1s\"\n",
			want: []string{
				`t.toml:12: limits.drain_timeout: 0s: must be positive`,
				`t.toml:13: limits.max_connections_per_ip: -1: must be at least 1`,
				`t.toml:14: limits.max_connections: 0: must be at least 1`,
				`t.toml:15: limits.auth_failure_delay: -1s: must be positive`,
			},
			n: 4,
		},
		{
			name: "limits out of range",
			toml: validBase + "[limits]\nmax_line = 7999\nmax_literal = -1\npreauth_timeout = \"-1s\"\nidle_timeout = \"29m\"\nlock_timeout = \"0s\"\nmax_bad_commands = 0\n",
			want: []string{
				`t.toml:12: limits.max_line: 7999: want 8000 to 16777216`,
				`t.toml:13: limits.max_literal: -1: must be positive`,
				`t.toml:14: limits.preauth_timeout: -1s: must be positive`,
				`t.toml:15: limits.idle_timeout: 29m: must be at least 30m (RFC 9051 §5.4)`,
				`t.toml:16: limits.lock_timeout: 0s: must be positive`,
				`t.toml:17: limits.max_bad_commands: 0: must be at least 1`,
			},
			n: 6,
		},
		{
			name: "expansion and login limits out of range",
			toml: validBase + "[limits]\nexpansion_factor = 0\nexpansion_floor = 1000\nlogin_burst_per_ip = -1\nlogin_interval_per_user = \"0s\"\n",
			want: []string{
				`t.toml:12: limits.expansion_factor: 0: want 1 to 1024`,
				`t.toml:13: limits.expansion_floor: 1000: want 65536 to 1073741824`,
				`t.toml:14: limits.login_burst_per_ip: -1: must be at least 1`,
				`t.toml:15: limits.login_interval_per_user: 0s: must be positive`,
			},
			n: 4,
		},
		{
			name: "dial_timeout zero",
			toml: validBase + "[[backend]]\nname = \"b\"\naddress = \"x:1\"\ndial_timeout = \"0s\"\n",
			want: []string{`t.toml:14: backend.1.dial_timeout: 0s: must be positive`},
			n:    1,
		},
		{
			name: "log enums",
			toml: validBase + "[log]\nlevel = \"verbose\"\nformat = \"text\"\n",
			want: []string{
				`t.toml:12: log.level: "verbose": want "trace", "debug", "info", "warn" or "error"`,
				`t.toml:13: log.format: "text": want "json" or "console"`,
			},
			n: 2,
		},
	}
	f := writeTestFiles(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("t.toml", []byte(f.expand(tt.toml)))
			if err == nil {
				err = c.Validate()
			}
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error:\n%v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; want %q", tt.want)
			}
			if m := missingFromError(err, tt.want); m != nil {
				t.Errorf("error:\n%v\nmissing:\n%s", err, strings.Join(m, "\n"))
			}
			if tt.n > 0 {
				if got := len(strings.Split(err.Error(), "\n")); got != tt.n {
					t.Errorf("%d problems; want %d:\n%v", got, tt.n, err)
				}
			}
		})
	}
}

// TestParseValid: issue 18, one type error hid every other problem:
// Validate ran only on a file that decoded whole. ParseValid reports both
// kinds at once, and not a second time for a value that did not decode.
func TestParseValid(t *testing.T) {
	src := "[[listener]]\naddress = 1143\n\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:143\"\nlegacy = \"yes\"\n\n" +
		"[[route]]\ndefault = true\nbackend = \"b\"\n\n[limits]\nmax_line = \"big\"\nmax_connections_per_ip = -1\ndrain_timeout = \"0s\"\n\n[metrics]\naddress = \"127.0.0.1:x\"\n"
	_, err := ParseValid("t.toml", []byte(src))
	want := []string{
		`t.toml:2: listener.0.address: want a string, found an integer`,
		`t.toml:7: backend.0.legacy: want a boolean, found a string`,
		`t.toml:11: route.0.backend: unknown backend "b" (backends: "a")`,
		`t.toml:14: limits.max_line: want an integer, found a string`,
		`t.toml:15: limits.max_connections_per_ip: -1: must be at least 1`,
		`t.toml:16: limits.drain_timeout: 0s: must be positive`,
		`t.toml:19: metrics.address: "127.0.0.1:x": port "x" is not a number from 0 to 65535`,
	}
	if m := missingFromError(err, want); m != nil {
		t.Errorf("error:\n%v\nmissing:\n%s", err, strings.Join(m, "\n"))
	}
	// listener.0.address is not also "required".
	if got := len(strings.Split(err.Error(), "\n")); got != len(want) {
		t.Errorf("%d problems; want %d:\n%v", got, len(want), err)
	}
	c, err := ParseValid("t.toml", []byte(validBase))
	if err != nil || c.Listeners[0].Address != "127.0.0.1:1143" {
		t.Errorf("ParseValid(validBase) = %+v, %v", c, err)
	}
	if _, err := ParseValid("t.toml", []byte("[log]\nlevel = \"x\nformat = 1\n")); err == nil || !strings.Contains(err.Error(), "t.toml:2:") {
		t.Errorf("syntax error: %v", err)
	}
}

// TestWarnings: TLS below 1.2 towards clients is allowed, and said.
func TestWarnings(t *testing.T) {
	f := writeTestFiles(t)
	for _, tt := range []struct {
		tls  string
		want string
	}{
		{"[[listener]]\naddress = \":993\"\ntls = \"implicit\"\n[tls]\ncert = \"$CERT\"\nkey = \"$KEY\"\nmin_version = \"1.0\"\n", `tls.min_version = "1.0": clients may connect with TLS 1.0`},
		{"[[listener]]\naddress = \":993\"\ntls = \"implicit\"\n[tls]\ncert = \"$CERT\"\nkey = \"$KEY\"\nmin_version = \"1.1\"\n", `TLS 1.1`},
		{"[[listener]]\naddress = \":993\"\ntls = \"implicit\"\n[tls]\ncert = \"$CERT\"\nkey = \"$KEY\"\n", ""},
		{"[tls]\nmin_version = \"1.0\"\n", ""}, // no listener uses TLS
	} {
		c, err := ParseValid("t.toml", []byte(f.expand(validBase+tt.tls)))
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(c.Warnings(), "\n")
		if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
			t.Errorf("%s: warnings %q; want %q", tt.tls, got, tt.want)
		}
	}
}

// TestValidateInCode checks messages for a Config built without Parse:
// no file or line, just the key.
func TestValidateInCode(t *testing.T) {
	c := &Config{
		Listeners: []Listener{{Address: "127.0.0.1:1143"}},
		Backends:  []Backend{{Name: "a", Address: "127.0.0.1:143", DialTimeout: Duration{-time.Second}}},
		Routes:    []Route{{Default: true, Backend: "a"}},
	}
	err := c.Validate()
	if err == nil || err.Error() != "backend.0.dial_timeout: -1s: must be positive" {
		t.Errorf("Validate = %v", err)
	}
	c.Backends[0].DialTimeout = Duration{}
	if err := c.Validate(); err != nil {
		t.Errorf("zero values mean defaults in code: %v", err)
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	example, err := os.ReadFile("example.toml")
	if err != nil {
		t.Fatal(err)
	}
	inputs := map[string]string{
		"default": string(defaultTOML),
		"example": string(example),
		"sparse":  validBase,
		"odd values": `[[listener]]
address = "[::]:143"
tls = "starttls"
cert = "c \"quoted\" \\ path.pem"
key = 'C:\keys\k.pem'
[[backend]]
name = "ünïcode"
address = "x:1"
tls = "implicit"
dial_timeout = "1h2m3.5s"
[[route]]
regex = '^\w+@(a|b)\.org$'
backend = "ünïcode"
[limits]
preauth_timeout = "90s"
lock_timeout = "250ms"
`,
	}
	for name, in := range inputs {
		t.Run(name, func(t *testing.T) {
			c, err := Parse("in.toml", []byte(in))
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := c.Encode(&buf); err != nil {
				t.Fatal(err)
			}
			back, err := Parse("encoded.toml", buf.Bytes())
			if err != nil {
				t.Fatalf("Parse(Encode(c)): %v\n%s", err, buf.String())
			}
			want := withoutMeta(c.Effective())
			if got := withoutMeta(back); !reflect.DeepEqual(got, want) {
				t.Errorf("Parse(Encode(c)) =\n%+v\nwant c.Effective() =\n%+v\nencoded:\n%s", got, want, buf.String())
			}
			// The effective config is a fixed point.
			if got := withoutMeta(back.Effective()); !reflect.DeepEqual(got, withoutMeta(back)) {
				t.Errorf("Effective is not idempotent:\n%+v\n%+v", got, withoutMeta(back))
			}
			var again bytes.Buffer
			if err := back.Encode(&again); err != nil {
				t.Fatal(err)
			}
			if again.String() != buf.String() {
				t.Errorf("second Encode differs:\n%s\nfirst:\n%s", again.String(), buf.String())
			}
		})
	}
}

func TestEncodeFullConfigUnchanged(t *testing.T) {
	// A config that spells out every default is its own effective config.
	c, err := Parse("d.toml", defaultTOML)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := c.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	full, err := Parse("full.toml", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if err := full.Validate(); err != nil {
		t.Fatalf("encoded default does not validate: %v\n%s", err, buf.String())
	}
	if got, want := withoutMeta(full.Effective()), withoutMeta(full); !reflect.DeepEqual(got, want) {
		t.Errorf("Effective changed a full config:\n%+v\n%+v", got, want)
	}
}

func TestEffectiveDoesNotAlias(t *testing.T) {
	c := Default()
	e := c.Effective()
	e.Listeners[0].Address = "x"
	e.Backends[0].Name = "y"
	e.Routes[0].Backend = "z"
	if c.Listeners[0].Address == "x" || c.Backends[0].Name == "y" || c.Routes[0].Backend == "z" {
		t.Error("Effective shares slices with its receiver")
	}
	if c.Limits.MaxLine != 0 {
		t.Error("Effective modified its receiver")
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
		out     string
	}{
		{in: "10s", want: 10 * time.Second, out: "10s"},
		{in: "31m", want: 31 * time.Minute, out: "31m"},
		{in: "1h", want: time.Hour, out: "1h"},
		{in: "90m", want: 90 * time.Minute, out: "90m"},
		{in: "120m", want: 2 * time.Hour, out: "2h"},
		{in: "1m30s", want: 90 * time.Second, out: "90s"},
		{in: "1.5s", want: 1500 * time.Millisecond, out: "1.5s"},
		{in: "250ms", want: 250 * time.Millisecond, out: "250ms"},
		{in: "0s", want: 0, out: "0s"},
		{in: "-5s", want: -5 * time.Second, out: "-5s"},
		{in: "0", want: 0, wantErr: `invalid duration "0": needs a unit`},
		{in: "10", wantErr: `invalid duration "10": needs a unit, as in "10s"`},
		{in: "", wantErr: `invalid duration ""`},
		{in: "ten seconds", wantErr: `invalid duration "ten seconds"`},
	}
	for _, tt := range tests {
		var d Duration
		err := d.UnmarshalText([]byte(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("UnmarshalText(%q) = %v; want error containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || d.Duration != tt.want {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", tt.in, d.Duration, err, tt.want)
			continue
		}
		out, _ := d.MarshalText()
		if string(out) != tt.out || d.String() != tt.out {
			t.Errorf("MarshalText(%v) = %q; want %q", d.Duration, out, tt.out)
		}
		var back Duration
		if err := back.UnmarshalText(out); err != nil || back != d {
			t.Errorf("round trip of %q: %v, %v", out, back, err)
		}
	}
}

func TestTLSConfig(t *testing.T) {
	f := writeTestFiles(t)

	t.Run("listener", func(t *testing.T) {
		cfg, err := Listener{Address: ":143"}.TLSConfig(TLS{})
		if cfg != nil || err != nil {
			t.Errorf("cleartext listener: %v, %v; want nil, nil", cfg, err)
		}
		cfg, err = Listener{Address: ":143", TLS: TLSStartTLS}.TLSConfig(TLS{Cert: f.cert, Key: f.key, MinVersion: "1.3"})
		if err != nil || cfg.GetCertificate == nil || cfg.MinVersion != tls.VersionTLS13 {
			t.Errorf("starttls listener: %+v, %v", cfg, err)
		}
		cfg, err = Listener{Address: ":993", TLS: TLSImplicit}.TLSConfig(TLS{Cert: f.cert, Key: f.key, MinVersion: "1.0"})
		if err != nil || cfg.MinVersion != tls.VersionTLS10 || !slices.Contains(cfg.CipherSuites, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA) ||
			!slices.Contains(cfg.CipherSuites, tls.TLS_RSA_WITH_AES_128_CBC_SHA) || slices.Contains(cfg.CipherSuites, tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA) {
			t.Errorf("legacy listener: %+v, %v", cfg, err)
		}
		if _, err := (Listener{Address: ":993", TLS: TLSImplicit}).TLSConfig(TLS{}); err == nil {
			t.Error("implicit listener without cert: no error")
		}
		if _, err := (Listener{Address: ":993", TLS: TLSImplicit, Cert: f.cert, Key: f.otherKey}).TLSConfig(TLS{}); err == nil {
			t.Error("mismatched key: no error")
		}
	})

	t.Run("backend", func(t *testing.T) {
		cfg, err := Backend{Name: "a", Address: "x:143"}.TLSConfig()
		if cfg != nil || err != nil {
			t.Errorf("cleartext backend: %v, %v; want nil, nil", cfg, err)
		}
		cfg, err = Backend{Name: "a", Address: "imap.internal:993", TLS: TLSImplicit}.TLSConfig()
		if err != nil || cfg.ServerName != "imap.internal" || cfg.RootCAs != nil || cfg.MinVersion != tls.VersionTLS12 || cfg.InsecureSkipVerify {
			t.Errorf("default backend TLS: %+v, %v", cfg, err)
		}
		cfg, err = Backend{Name: "a", Address: "10.0.0.5:143", TLS: TLSStartTLS, CAFile: f.ca, ServerName: "localhost", MinVersion: "1.0"}.TLSConfig()
		if err != nil || cfg.ServerName != "localhost" || cfg.RootCAs == nil || cfg.MinVersion != tls.VersionTLS10 {
			t.Errorf("legacy backend TLS: %+v, %v", cfg, err)
		}
		if _, err := (Backend{Name: "a", Address: "x:1", TLS: TLSImplicit, CAFile: f.notPEM}).TLSConfig(); err == nil {
			t.Error("CA file without PEM: no error")
		}
	})
}

// TestKeyPairReload: a listener's configuration serves the pair last
// loaded; a broken pair is refused and the old one kept (issue 18).
func TestKeyPairReload(t *testing.T) {
	f := writeTestFiles(t)
	cfg, kp, err := Listener{Address: ":993", TLS: TLSImplicit, Cert: f.cert, Key: f.key}.ServerTLS(TLS{})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := cfg.GetCertificate(nil)
	g := writeTestFiles(t) // another certificate
	if err := kp.Reload(g.cert, g.key); err != nil {
		t.Fatal(err)
	}
	second, _ := cfg.GetCertificate(nil)
	if bytes.Equal(first.Certificate[0], second.Certificate[0]) {
		t.Error("Reload did not change the certificate served")
	}
	if err := kp.Reload(f.cert, g.key); err == nil {
		t.Error("Reload of a mismatched pair: no error")
	}
	if now, _ := cfg.GetCertificate(nil); !bytes.Equal(now.Certificate[0], second.Certificate[0]) {
		t.Error("a failed Reload replaced the certificate")
	}
}

// FuzzParse checks that no input crashes Parse or Validate, and that what
// parses also encodes and parses back.
func FuzzParse(f *testing.F) {
	f.Add(defaultTOML)
	if ex, err := os.ReadFile("example.toml"); err == nil {
		f.Add(ex)
	}
	f.Add([]byte(validBase + "[limits]\nidle_timeout = \"\"\"\n1h\"\"\"\n"))
	f.Add([]byte("backend = [{name = \"a\", x = [1, {y = 2}]}]\n[[backend.z]]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.toml", data)
		if err != nil {
			return
		}
		// Validate reads the files a config names; keep it off the
		// fuzzer's paths.
		v := *c
		v.TLS.Cert, v.TLS.Key = "", ""
		v.Listeners = nil
		for _, l := range c.Listeners {
			l.Cert, l.Key = "", ""
			v.Listeners = append(v.Listeners, l)
		}
		v.Backends = nil
		for _, b := range c.Backends {
			b.CAFile = ""
			v.Backends = append(v.Backends, b)
		}
		_ = v.Validate()
		var buf bytes.Buffer
		if err := c.Encode(&buf); err != nil {
			return // e.g. invalid UTF-8 the encoder refuses
		}
		if _, err := Parse("f2.toml", buf.Bytes()); err != nil {
			t.Fatalf("Parse(Encode(c)): %v\n%s", err, buf.String())
		}
	})
}
