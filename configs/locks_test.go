package configs

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestValidateLocks covers [locks]: memory by default, etcd's settings
// checked with the file's lines.
func TestValidateLocks(t *testing.T) {
	tests := []struct {
		name string
		toml string
		want []string // substrings of the error; none means valid
		n    int
	}{
		{name: "memory spelled out", toml: validBase + "[locks]\nbackend = \"memory\"\n"},
		{name: "etcd, plain", toml: validBase + "[locks]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\", \"http://[::1]:2379\"]\n"},
		{
			name: "etcd with TLS, client certificate, auth and every setting",
			toml: validBase + "[locks]\nbackend = \"etcd\"\nendpoints = [\"https://etcd1.internal:2379\"]\nca_file = \"$CA\"\ncert = \"$CERT\"\nkey = \"$KEY\"\n" +
				"username = \"uidgate\"\npassword = \"s3cret\"\nprefix = \"/site-a/locks/\"\nlease_ttl = \"30s\"\non_unavailable = \"proceed\"\n",
		},
		{
			name: "unknown backend",
			toml: validBase + "[locks]\nbackend = \"zookeeper\"\n",
			want: []string{`t.toml:12: locks.backend: "zookeeper": want "memory" or "etcd"`},
			n:    1,
		},
		{
			name: "etcd settings with memory",
			toml: validBase + "[locks]\nendpoints = [\"http://e:2379\"]\nlease_ttl = \"15s\"\n",
			want: []string{
				`t.toml:12: locks.endpoints: has no effect with backend = "memory"`,
				`t.toml:13: locks.lease_ttl: has no effect with backend = "memory"`,
			},
			n: 2,
		},
		{
			name: "etcd without endpoints",
			toml: validBase + "[locks]\nbackend = \"etcd\"\n",
			want: []string{`t.toml:11: locks.endpoints: required with backend = "etcd"`},
			n:    1,
		},
		{
			name: "bad endpoints",
			toml: validBase + "[locks]\nbackend = \"etcd\"\nendpoints = [\"etcd1:2379\", \"http://e\", \"https://e:2379/v3\", \"http://e:2379\", \"https://f:2379\"]\n",
			want: []string{
				`locks.endpoints.0: "etcd1:2379": want "http://host:port" or "https://host:port"`,
				`locks.endpoints.1: "http://e": want`,
				`locks.endpoints.2: "https://e:2379/v3": want`,
				`t.toml:13: locks.endpoints: mixes http:// and https://`,
			},
			n: 4,
		},
		{
			name: "TLS files with http, half a key pair, half a login",
			toml: validBase + "[locks]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nca_file = \"$CA\"\nusername = \"u\"\n",
			want: []string{
				`t.toml:14: locks.ca_file: has no effect with http:// endpoints (use https://)`,
				`t.toml:11: locks.password: required with locks.username`,
			},
			n: 2,
		},
		{
			name: "TLS files wrong",
			toml: validBase + "[locks]\nbackend = \"etcd\"\nendpoints = [\"https://e:2379\"]\nca_file = \"$NOTPEM\"\ncert = \"$CERT\"\nkey = \"$OTHERKEY\"\n",
			want: []string{
				`t.toml:14: locks.ca_file: ` + "", `no PEM certificate found`,
				`t.toml:15: locks.cert: `, `private key does not match public key`,
			},
			n: 2,
		},
		{
			name: "cert without key",
			toml: validBase + "[locks]\nbackend = \"etcd\"\nendpoints = [\"https://e:2379\"]\ncert = \"$CERT\"\n",
			want: []string{`locks.key: required with locks.cert`},
			n:    1,
		},
		{
			name: "prefix, TTL and on_unavailable out of range",
			toml: validBase + "[locks]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nprefix = \"uidgate\"\nlease_ttl = \"1500ms\"\non_unavailable = \"ignore\"\n",
			want: []string{
				`t.toml:14: locks.prefix: "uidgate": want a key prefix that starts and ends with "/"`,
				`t.toml:15: locks.lease_ttl: 1.5s: want whole seconds from 5s to 10m`,
				`t.toml:16: locks.on_unavailable: "ignore": want "fail" or "proceed"`,
			},
			n: 3,
		},
		{
			name: "TTL zero and too long",
			toml: validBase + "[locks]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nlease_ttl = \"0s\"\n",
			want: []string{`locks.lease_ttl: 0s: want whole seconds`},
			n:    1,
		},
		{
			name: "misspelt key",
			toml: validBase + "[locks]\nbackend = \"etcd\"\nendpoint = [\"http://e:2379\"]\n",
			want: []string{`locks.endpoint`},
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

func TestLocksDefaults(t *testing.T) {
	var l Locks
	if l.BackendOrDefault() != "memory" || l.PrefixOrDefault() != "/uidgate/locks/" ||
		l.LeaseTTLOrDefault() != 15*time.Second || l.OnUnavailableOrDefault() != "fail" {
		t.Errorf("defaults: %q %q %v %q", l.BackendOrDefault(), l.PrefixOrDefault(), l.LeaseTTLOrDefault(), l.OnUnavailableOrDefault())
	}
	if e := Default().Effective().Locks; !reflect.DeepEqual(e, Locks{Backend: "memory"}) {
		t.Errorf("default effective [locks] = %+v, want memory and nothing else", e)
	}
}

// TestLocksEncode: the effective etcd settings round-trip, the password
// does not appear in check-config's output, and endpoints are not shared.
func TestLocksEncode(t *testing.T) {
	in := validBase + "[locks]\nbackend = \"etcd\"\nendpoints = [\"http://e1:2379\", \"http://e2:2379\"]\nusername = \"u\"\npassword = \"s3cret\"\n"
	c, err := Parse("in.toml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := c.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.Contains(out, "s3cret") || !strings.Contains(out, `password = "(redacted)"`) {
		t.Errorf("password not redacted:\n%s", out)
	}
	for _, want := range []string{`prefix = "/uidgate/locks/"`, `lease_ttl = "15s"`, `on_unavailable = "fail"`} {
		if !strings.Contains(out, want) {
			t.Errorf("effective config lacks %s:\n%s", want, out)
		}
	}
	back, err := Parse("out.toml", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := c.Effective().Locks
	want.Password = "(redacted)"
	if !reflect.DeepEqual(back.Locks, want) {
		t.Errorf("round trip: %+v, want %+v", back.Locks, want)
	}
	if c.Locks.Password != "s3cret" {
		t.Error("Encode changed its receiver")
	}
	e := c.Effective()
	e.Locks.Endpoints[0] = "x"
	if c.Locks.Endpoints[0] == "x" {
		t.Error("Effective shares [locks] endpoints with its receiver")
	}
}

func TestLocksTLSConfig(t *testing.T) {
	f := writeTestFiles(t)
	if cfg, err := (Locks{Endpoints: []string{"http://e:2379"}}).TLSConfig(); cfg != nil || err != nil {
		t.Errorf("http: %v, %v; want nil, nil", cfg, err)
	}
	cfg, err := Locks{Endpoints: []string{"https://e:2379"}, CAFile: f.ca, Cert: f.cert, Key: f.key}.TLSConfig()
	if err != nil || cfg.RootCAs == nil || len(cfg.Certificates) != 1 {
		t.Errorf("https: %+v, %v", cfg, err)
	}
}
