package configs

import (
	"crypto/tls"
	"fmt"
	"sync/atomic"
)

// KeyPair is a listener's certificate and key, served through
// tls.Config.GetCertificate so that Reload can replace them while the
// listener runs: handshakes that start after Reload present the new pair,
// sessions already secured keep theirs.
type KeyPair struct {
	cur atomic.Pointer[tls.Certificate]
}

// LoadKeyPair reads a PEM certificate chain and its key.
func LoadKeyPair(certFile, keyFile string) (*KeyPair, error) {
	k := &KeyPair{}
	if err := k.Reload(certFile, keyFile); err != nil {
		return nil, err
	}
	return k, nil
}

// Reload reads certFile and keyFile and, if they hold a matching pair,
// serves it from now on. On error the pair served so far stays.
func (k *KeyPair) Reload(certFile, keyFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	k.cur.Store(&cert)
	return nil
}

// Certificate returns the pair served now.
func (k *KeyPair) Certificate() *tls.Certificate { return k.cur.Load() }

// GetCertificate is for tls.Config.GetCertificate.
func (k *KeyPair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return k.cur.Load(), nil
}

// TLSConfig returns the server-side TLS configuration for l, taking
// certificate, key and minimum version defaults from def (the [tls] table).
// It returns nil, nil when l does not use TLS. It reads the key pair from
// disk on every call; see ServerTLS for one that can be reloaded.
func (l Listener) TLSConfig(def TLS) (*tls.Config, error) {
	cfg, _, err := l.ServerTLS(def)
	return cfg, err
}

// ServerTLS is TLSConfig, also returning the KeyPair the configuration
// serves its certificate from (nil when l does not use TLS), for reloads.
func (l Listener) ServerTLS(def TLS) (*tls.Config, *KeyPair, error) {
	mode := l.TLSModeOrDefault()
	if mode == TLSNone {
		return nil, nil, nil
	}
	certFile, keyFile := l.CertFile(def), l.KeyFile(def)
	if certFile == "" || keyFile == "" {
		return nil, nil, fmt.Errorf("listener %s: tls = %q needs cert and key", l.Address, mode)
	}
	kp, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("listener %s: %w", l.Address, err)
	}
	minVersion, err := tlsVersion(def.MinVersionOrDefault())
	if err != nil {
		return nil, nil, fmt.Errorf("tls.min_version: %w", err)
	}
	cfg := &tls.Config{
		// No Certificates: crypto/tls would serve them to clients that
		// send no server name (SNI) without asking GetCertificate, which
		// serves the pair Reload last loaded.
		GetCertificate: kp.GetCertificate,
		MinVersion:     minVersion,
	}
	if minVersion < tls.VersionTLS12 {
		cfg.CipherSuites = legacyCipherSuites()
	}
	return cfg, kp, nil
}

// legacyCipherSuites is what a listener with min_version "1.0" or "1.1"
// offers: Go's default suites, of which the ECDHE ones with AES-CBC-SHA
// serve TLS 1.0 and 1.1 clients with forward secrecy (Windows Vista and
// later, Android 4, OpenSSL 1.0, NSS), and the two RSA key exchange
// suites with AES-CBC-SHA (no forward secrecy: Go leaves them out by
// default since 1.22) for clients older still, such as OpenSSL 0.9.8 and
// Windows XP with an RSA certificate. Go prefers its own order, so a
// client that can do better gets better. RC4 and 3DES are never offered.
func legacyCipherSuites() []uint16 {
	var ids []uint16
	for _, cs := range tls.CipherSuites() {
		for _, v := range cs.SupportedVersions {
			if v <= tls.VersionTLS12 { // TLS 1.3 suites are not configurable
				ids = append(ids, cs.ID)
				break
			}
		}
	}
	return append(ids, tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_256_CBC_SHA)
}

// Warnings returns what is allowed in c but weakens it, one sentence
// each, for check-config and the log at start.
func (c *Config) Warnings() []string {
	var w []string
	usesTLS := false
	for _, l := range c.Listeners {
		usesTLS = usesTLS || l.TLSModeOrDefault() != TLSNone
	}
	if mv := c.TLS.MinVersionOrDefault(); usesTLS && (mv == "1.0" || mv == "1.1") {
		w = append(w, fmt.Sprintf("tls.min_version = %q: clients may connect with TLS %s, deprecated by RFC 8996, "+
			"and with RSA key exchange (no forward secrecy); keep it only while such clients remain", mv, mv))
	}
	return w
}

// TLSConfig returns the client-side TLS configuration for connecting to b:
// its server name, CA bundle (default: the system roots), verification and
// minimum version. It returns nil, nil when b does not use TLS.
func (b Backend) TLSConfig() (*tls.Config, error) {
	if b.TLSModeOrDefault() == TLSNone {
		return nil, nil
	}
	minVersion, err := tlsVersion(b.MinVersionOrDefault())
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

// tlsVersion maps "1.0" … "1.3" to a crypto/tls version. Versions below
// 1.2 are allowed towards clients and backends alike, for legacy peers;
// towards clients Warnings says so.
func tlsVersion(s string) (uint16, error) {
	switch s {
	case "1.0":
		return tls.VersionTLS10, nil
	case "1.1":
		return tls.VersionTLS11, nil
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%q: want \"1.0\", \"1.1\", \"1.2\" or \"1.3\"", s)
}
