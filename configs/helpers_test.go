package configs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testFiles are PEM files written for a test.
type testFiles struct {
	cert, key   string // a self-signed certificate for localhost and its key
	otherKey    string // a key that does not match cert
	ca          string // cert, used as a CA bundle
	notPEM      string // a file with no PEM block
	dir         string
	replacerSet *strings.Replacer
}

// writeTestFiles writes certificates and keys into a temporary directory.
func writeTestFiles(t *testing.T) *testFiles {
	t.Helper()
	dir := t.TempDir()
	f := &testFiles{
		dir:      dir,
		cert:     filepath.Join(dir, "cert.pem"),
		key:      filepath.Join(dir, "key.pem"),
		otherKey: filepath.Join(dir, "other-key.pem"),
		ca:       filepath.Join(dir, "ca.pem"),
		notPEM:   filepath.Join(dir, "not.pem"),
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	writeFile(t, f.cert, certPEM)
	writeFile(t, f.ca, certPEM)
	writeFile(t, f.key, keyPEM(t, key))
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, f.otherKey, keyPEM(t, other))
	writeFile(t, f.notPEM, []byte("not a certificate\n"))
	f.replacerSet = strings.NewReplacer(
		"$CERT", f.cert, "$KEY", f.key, "$OTHERKEY", f.otherKey,
		"$CA", f.ca, "$NOTPEM", f.notPEM, "$DIR", f.dir)
	return f
}

// expand replaces $CERT, $KEY, $OTHERKEY, $CA, $NOTPEM and $DIR in s.
func (f *testFiles) expand(s string) string { return f.replacerSet.Replace(s) }

func keyPEM(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// withoutMeta returns a copy of c without its positions, for comparisons.
func withoutMeta(c *Config) Config {
	cc := *c
	cc.file, cc.lines = "", nil
	return cc
}

// missingFromError returns the substrings of want missing from err's text.
func missingFromError(err error, want []string) []string {
	var missing []string
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) {
			missing = append(missing, w)
		}
	}
	return missing
}
