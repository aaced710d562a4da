package configs

import (
	"crypto/tls"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Locks says where the mailbox and seen locks (see [serialization]) live.
type Locks struct {
	// Backend is "memory" (default: in this process; right for one
	// uidgate) or "etcd" (shared by every uidgate in front of the same
	// servers; required as soon as there are two).
	Backend string `toml:"backend"`
	// Endpoints are etcd's client URLs, "http://host:port" or
	// "https://host:port", all of one scheme; required with etcd.
	Endpoints []string `toml:"endpoints,omitempty"`
	// CAFile is a PEM bundle of CAs trusted for etcd's certificates
	// (https endpoints); default the system roots.
	CAFile string `toml:"ca_file,omitempty"`
	// Cert and Key are a PEM client certificate and its key, for etcd
	// with client certificate authentication (https endpoints).
	Cert string `toml:"cert,omitempty"`
	Key  string `toml:"key,omitempty"`
	// Username and Password authenticate to etcd (etcd's auth); both or
	// neither. check-config prints the password redacted.
	Username string `toml:"username,omitempty"`
	Password string `toml:"password,omitempty"`
	// Prefix is where the lock keys live in etcd; it ends with '/'.
	// Default "/uidgate/locks/". Instances that must serialize with each
	// other share it.
	Prefix string `toml:"prefix,omitempty"`
	// LeaseTTL is the etcd lease's TTL, whole seconds from 5s to 10m:
	// how long a crashed instance's locks outlive it. Default "15s".
	LeaseTTL Duration `toml:"lease_ttl,omitempty"`
	// OnUnavailable is what a command that needs a lock gets while etcd
	// is out of reach: "fail" (default: NO [UNAVAILABLE], nothing sent)
	// or "proceed" (sent with this instance's locks only, logged: other
	// instances' sessions are not serialized with it meanwhile).
	OnUnavailable string `toml:"on_unavailable,omitempty"`
}

// Lock backends and on_unavailable values.
const (
	LocksMemory        = "memory"
	LocksEtcd          = "etcd"
	UnavailableFail    = "fail"
	UnavailableProceed = "proceed"
)

// Defaults and bounds of [locks]. MinLeaseTTL matches etcdlock.MinLeaseTTL.
const (
	DefaultLocksPrefix = "/uidgate/locks/"
	DefaultLeaseTTL    = 15 * time.Second
	MinLeaseTTL        = 5 * time.Second
	MaxLeaseTTL        = 10 * time.Minute
)

// BackendOrDefault returns l.Backend, or "memory" if unset.
func (l Locks) BackendOrDefault() string { return orDefault(l.Backend, LocksMemory) }

// PrefixOrDefault returns l.Prefix, or "/uidgate/locks/" if unset.
func (l Locks) PrefixOrDefault() string { return orDefault(l.Prefix, DefaultLocksPrefix) }

// LeaseTTLOrDefault returns l.LeaseTTL, or 15s if unset.
func (l Locks) LeaseTTLOrDefault() time.Duration {
	return orDefault(l.LeaseTTL.Duration, DefaultLeaseTTL)
}

// OnUnavailableOrDefault returns l.OnUnavailable, or "fail" if unset.
func (l Locks) OnUnavailableOrDefault() string {
	return orDefault(l.OnUnavailable, UnavailableFail)
}

// effective is l with its defaults written out (etcd's only with etcd).
func (l Locks) effective() Locks {
	e := l
	e.Endpoints = slices.Clone(l.Endpoints)
	e.Backend = l.BackendOrDefault()
	if e.Backend == LocksEtcd {
		e.Prefix = l.PrefixOrDefault()
		e.LeaseTTL.Duration = l.LeaseTTLOrDefault()
		e.OnUnavailable = l.OnUnavailableOrDefault()
	}
	return e
}

// redacted is c with secrets replaced, for printing.
func (c *Config) redacted() *Config {
	if c.Locks.Password != "" {
		c.Locks.Password = "(redacted)"
	}
	c.redactSecrets()
	return c
}

// TLSConfig returns the client TLS configuration for https endpoints: CA
// bundle (default the system roots) and client certificate. It returns
// nil, nil for http endpoints.
func (l Locks) TLSConfig() (*tls.Config, error) {
	if len(l.Endpoints) == 0 || !strings.HasPrefix(l.Endpoints[0], "https://") {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if l.CAFile != "" {
		pool, err := loadCAFile(l.CAFile)
		if err != nil {
			return nil, fmt.Errorf("locks.ca_file: %w", err)
		}
		cfg.RootCAs = pool
	}
	if l.Cert != "" {
		cert, err := tls.LoadX509KeyPair(l.Cert, l.Key)
		if err != nil {
			return nil, fmt.Errorf("locks.cert: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func (v *validator) locks() {
	c, l := v.c, v.c.Locks
	switch b := l.BackendOrDefault(); b {
	case LocksMemory:
		for _, f := range []struct {
			key string
			set bool
		}{
			{"endpoints", len(l.Endpoints) > 0},
			{"ca_file", l.CAFile != ""},
			{"cert", l.Cert != ""},
			{"key", l.Key != ""},
			{"username", l.Username != ""},
			{"password", l.Password != ""},
			{"prefix", l.Prefix != ""},
			{"lease_ttl", l.LeaseTTL.Duration != 0 || c.has("locks.lease_ttl")},
			{"on_unavailable", l.OnUnavailable != ""},
		} {
			if f.set {
				v.add("locks."+f.key, "has no effect with backend = \"memory\" (set backend = \"etcd\" to share locks between instances)")
			}
		}
		return
	case LocksEtcd:
	default:
		v.add("locks.backend", "%q: want \"memory\" or \"etcd\"", b)
		return
	}
	if len(l.Endpoints) == 0 {
		v.add("locks.endpoints", "required with backend = \"etcd\" (etcd's client URLs, such as \"https://etcd1.internal:2379\")")
	}
	schemes := map[string]bool{}
	for i, e := range l.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			v.add(fmt.Sprintf("locks.endpoints.%d", i), "%q: want \"http://host:port\" or \"https://host:port\"", e)
			continue
		}
		schemes[u.Scheme] = true
	}
	if len(schemes) > 1 {
		v.add("locks.endpoints", "mixes http:// and https://: use one scheme for every member")
	}
	tlsUsed := schemes["https"]
	if !tlsUsed && len(schemes) > 0 {
		for _, f := range []struct{ key, val string }{{"ca_file", l.CAFile}, {"cert", l.Cert}, {"key", l.Key}} {
			if f.val != "" {
				v.add("locks."+f.key, "has no effect with http:// endpoints (use https://)")
			}
		}
	} else {
		if l.CAFile != "" {
			if _, err := loadCAFile(l.CAFile); err != nil {
				v.add("locks.ca_file", "%v", err)
			}
		}
		switch {
		case l.Cert != "" && l.Key == "":
			v.add("locks.key", "required with locks.cert")
		case l.Cert == "" && l.Key != "":
			v.add("locks.cert", "required with locks.key")
		case l.Cert != "":
			ok := true
			for _, f := range []struct{ key, file string }{{"locks.cert", l.Cert}, {"locks.key", l.Key}} {
				if err := checkFile(f.file); err != nil {
					v.add(f.key, "%v", err)
					ok = false
				}
			}
			if ok {
				if _, err := tls.LoadX509KeyPair(l.Cert, l.Key); err != nil {
					v.add("locks.cert", "%s and %s: %v", l.Cert, l.Key, err)
				}
			}
		}
	}
	switch {
	case l.Username != "" && l.Password == "":
		v.add("locks.password", "required with locks.username")
	case l.Username == "" && l.Password != "":
		v.add("locks.username", "required with locks.password")
	}
	if c.has("locks.prefix") || l.Prefix != "" {
		if p := l.Prefix; !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") || len(p) < 2 {
			v.add("locks.prefix", "%q: want a key prefix that starts and ends with \"/\", such as %q", p, DefaultLocksPrefix)
		}
	}
	if c.has("locks.lease_ttl") || l.LeaseTTL.Duration != 0 {
		if d := l.LeaseTTL.Duration; d < MinLeaseTTL || d > MaxLeaseTTL || d%time.Second != 0 {
			v.add("locks.lease_ttl", "%s: want whole seconds from %s to %s (etcd leases count seconds; a crashed instance's locks outlive it this long)",
				formatDuration(d), formatDuration(MinLeaseTTL), formatDuration(MaxLeaseTTL))
		}
	}
	switch o := l.OnUnavailableOrDefault(); o {
	case UnavailableFail, UnavailableProceed:
	default:
		v.add("locks.on_unavailable", "%q: want \"fail\" or \"proceed\"", o)
	}
}
