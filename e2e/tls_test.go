package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"uidgate/proxy"
	"uidgate/upstream"
)

// TestClientTLS: implicit TLS, and STARTTLS with TLS required before
// login, on uidgate's client side, in front of each real server in its
// deployed configuration.
func TestClientTLS(t *testing.T) {
	eachKind(t, allKinds, testClientTLS)
}

func testClientTLS(t *testing.T, kind string) {
	be := startBackend(t, kind)
	cert, pool := selfSigned(t)
	srvTLS := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	cliTLS := &tls.Config{RootCAs: pool, ServerName: "localhost"}

	t.Run("implicit", func(t *testing.T) {
		g := startGate(t, gateOpts{
			backend:  deployedBackend(kind, be.Addr),
			listener: proxy.Listener{TLS: upstream.TLSImplicit, TLSConfig: srvTLS},
		})
		c, err := imapclient.DialTLS(g.Addr, &imapclient.Options{TLSConfig: cliTLS})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login("alice", testUsers["alice"]).Wait(); err != nil {
			t.Fatalf("login over TLS: %v", err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		c.Logout().Wait()
	})

	t.Run("starttls-required", func(t *testing.T) {
		g := startGate(t, gateOpts{
			backend:  deployedBackend(kind, be.Addr),
			listener: proxy.Listener{TLS: upstream.TLSStartTLS, TLSConfig: srvTLS, RequireTLS: true},
		})
		// In the clear: LOGINDISABLED, and LOGIN refused without reaching
		// the backend.
		conn, err := net.Dial("tcp", g.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		greeting, _ := r.ReadString('\n')
		if !strings.Contains(greeting, "STARTTLS") || !strings.Contains(greeting, "LOGINDISABLED") || strings.Contains(greeting, "AUTH=PLAIN") {
			t.Errorf("greeting = %q", greeting)
		}
		io.WriteString(conn, "a1 LOGIN alice "+testUsers["alice"]+"\r\n")
		if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "a1 NO [PRIVACYREQUIRED]") {
			t.Errorf("plaintext LOGIN answered %q", line)
		}
		// STARTTLS then LOGIN works.
		c, err := imapclient.DialStartTLS(g.Addr, &imapclient.Options{TLSConfig: cliTLS})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login("alice", testUsers["alice"]).Wait(); err != nil {
			t.Fatalf("login after STARTTLS: %v", err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		c.Logout().Wait()
	})

	t.Run("starttls-pipelined-injection", func(t *testing.T) {
		g := startGate(t, gateOpts{
			backend:  deployedBackend(kind, be.Addr),
			listener: proxy.Listener{TLS: upstream.TLSStartTLS, TLSConfig: srvTLS},
		})
		conn, err := net.Dial("tcp", g.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		r.ReadString('\n')
		// Bytes after STARTTLS in the same packet would be read as if they
		// came over TLS (CVE-2011-0411 class): uidgate must refuse.
		io.WriteString(conn, "a1 STARTTLS\r\na2 LOGIN alice x\r\n")
		var got []string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				break
			}
			got = append(got, line)
		}
		if len(got) != 2 || !strings.HasPrefix(got[0], "a1 OK") || !strings.HasPrefix(got[1], "* BYE") {
			t.Errorf("answers = %q", got)
		}
	})
}

// TestUpstreamStartTLS: uidgate upgrades its backend connection with
// STARTTLS, verifying the backend's certificate with a CA pool, in front
// of go-imap's own server: of the real ones, the Cyrus 2.3.18 build has no
// TLS ("starttls isn't implemented") and the others run without it.
func TestUpstreamStartTLS(t *testing.T) {
	checkNoLeaks(t)
	cert, pool := selfSigned(t)
	mem := imapmemserver.New()
	u := imapmemserver.NewUser("carol", "carol-pw")
	u.Create("INBOX", nil)
	mem.AddUser(u)
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:      imap.CapSet{imap.CapIMAP4rev1: {}},
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		Logger:    discardLogger{},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	for _, tt := range []struct {
		name   string
		tls    *tls.Config
		wantOK bool
	}{
		{"verified", &tls.Config{RootCAs: pool, ServerName: "localhost"}, true},
		{"unknown-ca", &tls.Config{ServerName: "localhost"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := startGate(t, gateOpts{backend: upstream.Backend{Address: ln.Addr().String(), TLS: upstream.TLSStartTLS, TLSConfig: tt.tls}})
			c, err := imapclient.DialInsecure(g.Addr, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = c.Login("carol", "carol-pw").Wait()
			if tt.wantOK {
				if err != nil {
					t.Fatalf("login via STARTTLS backend: %v", err)
				}
				appendMsg(t, c, "INBOX", message("over tls", 1000))
				if sel, err := c.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 1 {
					t.Fatalf("select = %+v, %v", sel, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
				t.Fatalf("login with unverifiable backend = %v, want NO [UNAVAILABLE]", err)
			}
		})
	}
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}

// writePair writes cert as PEM files (certificate, key) into dir.
func writePair(t *testing.T, dir string, cert tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeAtomic(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	writeAtomic(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	return certFile, keyFile
}

// writeAtomic replaces name with data, as certificate renewal tools do.
func writeAtomic(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name+".new", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(name+".new", name); err != nil {
		t.Fatal(err)
	}
}

// rsaCert makes an RSA certificate for localhost (RSA key exchange
// needs one).
func rsaCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "uidgate rsa test"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// startServeFile runs `uidgate serve -config FILE` until the test ends and waits
// for it to accept connections on addr.
func startServeFile(t *testing.T, bin, file, addr string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "serve", "-config", file)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("uidgate log:\n%s", tailString(logs.String(), 4000))
		}
	})
	if !waitFor(20*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatalf("uidgate does not listen on %s", addr)
	}
	return cmd, logs
}

// implicitTOML is a configuration with one implicit-TLS listener.
func implicitTOML(listen, cert, key, minVersion, backend string) string {
	mv := ""
	if minVersion != "" {
		mv = fmt.Sprintf("min_version = %q\n", minVersion)
	}
	return fmt.Sprintf("[[listener]]\naddress = %q\ntls = \"implicit\"\n\n[tls]\ncert = %q\nkey = %q\n%s\n[[backend]]\nname = \"b\"\naddress = %q\n\n[[route]]\ndefault = true\nbackend = \"b\"\n",
		listen, cert, key, mv, backend)
}

// peerCert opens a TLS session with uidgate, reads the greeting and
// returns the certificate it presented, with the session still open.
func peerCert(t *testing.T, addr string) (*tls.Conn, []byte) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if g, err := bufio.NewReader(c).ReadString('\n'); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting over TLS: %q, %v", g, err)
	}
	return c, c.ConnectionState().PeerCertificates[0].Raw
}

// TestTLSReloadOnSIGHUP: issue 18, SIGHUP did not reload certificates.
// New handshakes get the new pair; a session already secured keeps its
// own; a broken pair is logged and the one in use kept.
func TestTLSReloadOnSIGHUP(t *testing.T) {
	bin := buildUidgate(t)
	dir := t.TempDir()
	first, _ := selfSigned(t)
	certFile, keyFile := writePair(t, dir, first)
	listen := freePort(t)
	cfg := writeTemp(t, "uidgate.toml", implicitTOML(listen, certFile, keyFile, "", "127.0.0.1:1"))
	cmd, logs := startServeFile(t, bin, cfg, listen)
	hup := func(want string) {
		t.Helper()
		before := strings.Count(logs.String(), want)
		cmd.Process.Signal(syscall.SIGHUP)
		if !waitFor(20*time.Second, func() bool { return strings.Count(logs.String(), want) > before }) {
			t.Fatalf("no %q after SIGHUP", want)
		}
	}

	open, got := peerCert(t, listen)
	if !bytes.Equal(got, first.Certificate[0]) {
		t.Fatal("uidgate presents a certificate it was not given")
	}
	second, _ := selfSigned(t)
	writePair(t, dir, second)
	hup("configuration reloaded")
	if !strings.Contains(logs.String(), `"message":"certificate loaded"`) {
		t.Errorf("no log line for the certificate loaded")
	}
	if _, got := peerCert(t, listen); !bytes.Equal(got, second.Certificate[0]) {
		t.Error("after SIGHUP a new handshake still gets the old certificate")
	}
	// The session secured before goes on with its own.
	io.WriteString(open, "a NOOP\r\n")
	if l, err := bufio.NewReader(open).ReadString('\n'); !strings.HasPrefix(l, "a OK") {
		t.Errorf("session opened before the reload: %q, %v", l, err)
	}

	// A broken pair: the certificate of one, the key of another.
	third, _ := selfSigned(t)
	writeAtomic(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: third.Certificate[0]}))
	hup("reload failed")
	if !strings.Contains(logs.String(), "private key does not match public key") {
		t.Errorf("the reload failure does not say why")
	}
	if _, got := peerCert(t, listen); !bytes.Equal(got, second.Certificate[0]) {
		t.Error("after a failed reload the certificate in use changed")
	}
}

// TestLegacyTLSClients: issue 18, min_version refused "1.0" and "1.1".
// Allowed now, with a warning at start: TLS 1.0 clients connect with
// ECDHE and, for those older still, RSA key exchange; TLS 1.3 clients
// still get 1.3. At the default (1.2) a TLS 1.0 client is refused, and
// the refusal logged at info with what it offered.
func TestLegacyTLSClients(t *testing.T) {
	bin := buildUidgate(t)
	certFile, keyFile := writePair(t, t.TempDir(), rsaCert(t))
	listen := freePort(t)
	_, logs := startServeFile(t, bin, writeTemp(t, "legacy.toml", implicitTOML(listen, certFile, keyFile, "1.0", "127.0.0.1:1")), listen)
	if !waitFor(10*time.Second, func() bool {
		return strings.Contains(logs.String(), `{"level":"warn","config":`) && strings.Contains(logs.String(), `tls.min_version = \"1.0\": clients may connect with TLS 1.0`)
	}) {
		t.Errorf("no warning at start for min_version 1.0:\n%s", logs.String())
	}
	for _, tt := range []struct {
		name    string
		cfg     *tls.Config
		version uint16
	}{
		{"TLS 1.0, ECDHE", &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10}, tls.VersionTLS10},
		{"TLS 1.1, ECDHE", &tls.Config{MinVersion: tls.VersionTLS11, MaxVersion: tls.VersionTLS11}, tls.VersionTLS11},
		{"TLS 1.0, RSA key exchange only", &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10,
			CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA}}, tls.VersionTLS10},
		{"TLS 1.3", &tls.Config{}, tls.VersionTLS13},
	} {
		tt.cfg.InsecureSkipVerify = true
		c, err := tls.Dial("tcp", listen, tt.cfg)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		g, _ := bufio.NewReader(c).ReadString('\n')
		if v := c.ConnectionState().Version; v != tt.version || !strings.HasPrefix(g, "* OK") {
			t.Errorf("%s: %s, greeting %q", tt.name, tls.VersionName(v), g)
		}
		c.Close()
	}

	// The default: 1.2.
	listen2 := freePort(t)
	_, logs2 := startServeFile(t, bin, writeTemp(t, "default.toml", implicitTOML(listen2, certFile, keyFile, "", "127.0.0.1:1")), listen2)
	c, err := tls.Dial("tcp", listen2, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10})
	if err == nil {
		c.Close()
		t.Fatal("a TLS 1.0 client connected to a listener at the default min_version")
	}
	if !waitFor(10*time.Second, func() bool { return strings.Contains(logs2.String(), `"message":"TLS handshake failed"`) }) {
		t.Fatalf("refused handshake not logged at info:\n%s", logs2.String())
	}
	for _, want := range []string{`"level":"info"`, `"remote":"127.0.0.1:`, `"offered_versions":["TLS 1.0"]`, `"offered_ciphers":[`, `"error":"tls: client offered only unsupported versions`, `"reason":"tls_failed"`} {
		if !strings.Contains(logs2.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs2.String())
		}
	}
}
