package configs

import (
	"crypto/tls"
	"fmt"
)

// TLSConfig returns the server-side TLS configuration for l, taking
// certificate, key and minimum version defaults from def (the [tls] table).
// It returns nil, nil when l does not use TLS. It reads the key pair from
// disk on every call.
func (l Listener) TLSConfig(def TLS) (*tls.Config, error) {
	mode := l.TLSModeOrDefault()
	if mode == TLSNone {
		return nil, nil
	}
	certFile, keyFile := l.CertFile(def), l.KeyFile(def)
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("listener %s: tls = %q needs cert and key", l.Address, mode)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", l.Address, err)
	}
	minVersion, err := tlsVersion(def.MinVersionOrDefault(), false)
	if err != nil {
		return nil, fmt.Errorf("tls.min_version: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   minVersion,
	}, nil
}

// TLSConfig returns the client-side TLS configuration for connecting to b:
// its server name, CA bundle (default: the system roots), verification and
// minimum version. It returns nil, nil when b does not use TLS.
func (b Backend) TLSConfig() (*tls.Config, error) {
	if b.TLSModeOrDefault() == TLSNone {
		return nil, nil
	}
	minVersion, err := tlsVersion(b.MinVersionOrDefault(), true)
	if err != nil {
		return nil, fmt.Errorf("backend %s: min_version: %w", b.Name, err)
	}
	cfg := &tls.Config{
		ServerName:         b.ServerNameOrDefault(),
		InsecureSkipVerify: b.InsecureSkipVerify,
		MinVersion:         minVersion,
	}
	if b.CAFile != "" {
		pool, err := loadCAFile(b.CAFile)
		if err != nil {
			return nil, fmt.Errorf("backend %s: ca_file: %w", b.Name, err)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// tlsVersion maps "1.0" … "1.3" to a crypto/tls version. Versions below 1.2
// are allowed only towards backends (legacy), never for clients.
func tlsVersion(s string, legacyOK bool) (uint16, error) {
	switch s {
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	case "1.0", "1.1":
		if legacyOK {
			if s == "1.0" {
				return tls.VersionTLS10, nil
			}
			return tls.VersionTLS11, nil
		}
	}
	if legacyOK {
		return 0, fmt.Errorf("%q: want \"1.0\", \"1.1\", \"1.2\" or \"1.3\"", s)
	}
	return 0, fmt.Errorf("%q: want \"1.2\" or \"1.3\"", s)
}
