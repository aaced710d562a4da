package e2e

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"

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
