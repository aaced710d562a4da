package configs

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"
)

// lookupBase has a backend and a template, and no route.
const lookupBase = `[[listener]]
address = "127.0.0.1:1143"

[[backend]]
name = "a"
address = "127.0.0.1:143"

[[backend]]
name = "pool"
template = true
legacy = true
tls = "starttls"
`

func TestValidateLookups(t *testing.T) {
	tests := []struct {
		name string
		toml string
		want []string
		n    int
	}{
		{
			name: "http and ldap routes, every setting",
			toml: lookupBase + `
[[route]]
domain = "x.org"
kind = "http"
[route.http]
url = "https://auth.internal/mail"
timeout = "2s"
ca_file = "$CA"
headers = ["X-Auth-Key: s3cret"]
template = "pool"
cache_ttl = "0s"
cache_size = 10

[[route]]
default = true
kind = "ldap"
[route.ldap]
urls = ["ldap://ldap1.internal", "ldaps://ldap2.internal:636"]
starttls = false
ca_file = "$CA"
bind_dn = "cn=uidgate,dc=x"
bind_password_file = "$CA"
base = "ou=people,dc=x"
filter = "(&(uid=%n)(mailDomain=%d)(note=100%%))"
attribute = "mailHost"
port = 993
template = "pool"
timeout = "1s"
max_conns = 2
cache_ttl = "5m"
`,
		},
		{
			name: "lookup route with a backend, without its table",
			toml: lookupBase + "[[route]]\ndomain = \"x.org\"\nkind = \"http\"\nbackend = \"a\"\n[[route]]\ndefault = true\nkind = \"ldap\"\n",
			want: []string{
				`t.toml:16: route.0.backend: set, but a kind = "http" route's backend comes from its http answer`,
				`t.toml:13: route.0.http: required with kind = "http"`,
				`t.toml:17: route.1.ldap: required with kind = "ldap"`,
			},
			n: 3,
		},
		{
			name: "bad http table",
			toml: lookupBase + "[[route]]\ndefault = true\nkind = \"http\"\n[route.http]\nurl = \"ftp://x/\"\nheaders = [\"NoColon\", \"Auth-User: x\"]\ntemplate = \"a\"\ncache_ttl = \"2h\"\ntimeout = \"0s\"\n",
			want: []string{
				`route.0.http.url: "ftp://x/": want`,
				`route.0.http.headers.0: want "Name: value"`,
				`route.0.http.headers.1: "Auth-User" is one of the headers uidgate sends itself`,
				`route.0.http.template: "a": no [[backend]] of that name has template = true`,
				`route.0.http.cache_ttl: 2h: want 0s (no cache) to 1h`,
				`route.0.http.timeout: 0s: must be positive`,
			},
			n: 6,
		},
		{
			name: "bad ldap table",
			toml: lookupBase + "[[route]]\ndefault = true\nkind = \"ldap\"\n[route.ldap]\nurls = [\"http://x\"]\nbind_password = \"p\"\nfilter = \"uid=%s\"\nport = 0\nattribute = \"mail host\"\n",
			want: []string{
				`route.0.ldap.urls.0: "http://x": want`,
				`route.0.ldap.bind_dn: required with a bind password`,
				`route.0.ldap.base: required`,
				`route.0.ldap.filter: "uid=%s": want a filter in parentheses`,
				`route.0.ldap.attribute: "mail host"`,
				`route.0.ldap.port: 0: want 1 to 65535`,
			},
			n: 6,
		},
		{
			name: "ldap filter without the login",
			toml: lookupBase + "[[route]]\ndefault = true\nkind = \"ldap\"\n[route.ldap]\nurls = [\"ldap://x\"]\nbase = \"dc=x\"\nfilter = \"(objectClass=*)\"\n",
			want: []string{`names no part of the login`},
			n:    1,
		},
		{
			name: "static route to a template, tables on a static route, unknown kind",
			toml: lookupBase + "[[route]]\nuser = \"a\"\nbackend = \"pool\"\n[[route]]\nuser = \"b\"\nbackend = \"a\"\nhttp = { url = \"http://x/\" }\n[[route]]\ndefault = true\nkind = \"sql\"\n",
			want: []string{
				`route.0.backend: "pool" is a template`,
				`route.1.http: has no effect on a static route`,
				`route.2.kind: "sql": want "static", "http" or "ldap"`,
			},
			n: 3,
		},
		{
			name: "template with an address",
			toml: lookupBase + "[[backend]]\nname = \"t2\"\ntemplate = true\naddress = \"x:1\"\n[[route]]\ndefault = true\nbackend = \"a\"\n",
			want: []string{`backend.2.address: set, but a template's address comes from each directory answer`},
			n:    1,
		},
		{
			name: "admin token: short, both, without metrics",
			toml: lookupBase + "[[route]]\ndefault = true\nbackend = \"a\"\n[admin]\ntoken = \"short\"\n",
			want: []string{
				`admin: has no effect without metrics.address`,
				`admin.token: the token is 5 characters: want at least 16`,
			},
			n: 2,
		},
		{
			name: "admin token file",
			toml: lookupBase + "[[route]]\ndefault = true\nbackend = \"a\"\n[metrics]\naddress = \"127.0.0.1:9143\"\n[admin]\ntoken_file = \"$DIR/nonexistent\"\n",
			want: []string{`admin.token_file: open `},
			n:    1,
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

// TestLookupEffective: defaults filled in, cache_ttl "0s" kept apart from
// unset, secrets redacted, the tables not aliased, and the encoding
// parses back to the effective configuration.
func TestLookupEffective(t *testing.T) {
	src := lookupBase + `
[[route]]
user = "a*"
kind = "http"
[route.http]
url = "http://auth/"
headers = ["X-Key: k1"]
cache_ttl = "0s"

[[route]]
default = true
kind = "ldap"
[route.ldap]
urls = ["ldap://l"]
bind_dn = "cn=u"
bind_password = "pw"
base = "dc=x"
filter = "(uid=%u)"

[metrics]
address = "127.0.0.1:9143"
[admin]
token = "0123456789abcdef"
`
	c, err := Parse("t.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.LookupCacheTTL(0) != 0 || c.LookupCacheTTL(1) != DefaultLookupCacheTTL {
		t.Errorf("cache TTLs %v, %v", c.LookupCacheTTL(0), c.LookupCacheTTL(1))
	}
	e := c.Effective()
	h, l := e.Routes[0].HTTP, e.Routes[1].LDAP
	if e.Routes[0].Kind != "http" || h.Timeout.Duration != 5*time.Second || h.CacheSize != 10000 || h.CacheTTL.Duration != 0 {
		t.Errorf("http effective: %+v", h)
	}
	if l.Attribute != "mailHost" || l.Port != 143 || l.MaxConns != 4 || l.CacheTTL.Duration != time.Minute {
		t.Errorf("ldap effective: %+v", l)
	}
	h.Headers[0] = "changed"
	l.URLs[0] = "changed"
	if c.Routes[0].HTTP.Headers[0] != "X-Key: k1" || c.Routes[1].LDAP.URLs[0] != "ldap://l" || c.Routes[0].HTTP.Timeout.Duration != 0 {
		t.Error("Effective aliases or changes the lookup tables")
	}
	var buf bytes.Buffer
	if err := c.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, secret := range []string{"k1", `"pw"`, "0123456789abcdef"} {
		if strings.Contains(out, secret) {
			t.Errorf("check-config prints %s:\n%s", secret, out)
		}
	}
	back, err := Parse("e.toml", buf.Bytes())
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := withoutMeta(c.Effective().redacted())
	if got := withoutMeta(back); !reflect.DeepEqual(got, want) {
		t.Errorf("Parse(Encode(c)) =\n%+v\nwant\n%+v", got, want)
	}
	if back.LookupCacheTTL(0) != 0 {
		t.Error("cache_ttl = \"0s\" lost in the encoding")
	}
}
