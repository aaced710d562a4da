package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"

	"uidgate/upstream"
)

// TestClientAddressThrough: a PROXY v2 header from a trusted network gives
// the client's address; uidgate logs it, sends it to the backend in a
// PROXY v1 header and in ID before login. From an untrusted network the
// header is not honoured.
func TestClientAddressThrough(t *testing.T) {
	sb := newScriptedBackend(t)
	backend := &upstream.Backend{Name: "scripted", Address: sb.ln.Addr().String(), TLS: upstream.TLSNone,
		ProxyProtocol: 1, SendClientID: true}
	logs := &bytes.Buffer{}
	log := zerolog.New(zerolog.SyncWriter(logs))
	srv := &Server{Route: func(string) (*upstream.Backend, bool) { return backend, true }, Logger: &log}
	serve := func(trusted string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.Serve(ln, Listener{TLS: upstream.TLSNone, TrustedProxies: []netip.Prefix{netip.MustParsePrefix(trusted)}})
		}()
		t.Cleanup(func() { ln.Close(); <-done })
		return ln.Addr().String()
	}
	client := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 5555}
	hdr := func(dst string) []byte {
		d, _ := net.ResolveTCPAddr("tcp", dst)
		var b bytes.Buffer
		proxyproto.HeaderProxyFromAddrs(2, client, d).WriteTo(&b)
		return b.Bytes()
	}

	addr := serve("127.0.0.0/8")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(hdr(addr))
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(stepTimeout))
	if g, _ := r.ReadString('\n'); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting %q", g)
	}
	io.WriteString(c, "a LOGIN alice secret-pw\r\n")
	var b net.Conn
	select {
	case b = <-sb.conn:
	case <-time.After(stepTimeout):
		t.Fatal("no backend connection")
	}
	defer b.Close()
	br := bufio.NewReader(b)
	b.SetReadDeadline(time.Now().Add(stepTimeout))
	pp, _ := br.ReadString('\n')
	if !strings.HasPrefix(pp, "PROXY TCP4 192.0.2.7 127.0.0.1 5555 ") {
		t.Errorf("PROXY header to the backend: %q", pp)
	}
	io.WriteString(b, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n")
	// After a PROXY header, a CAPABILITY within the dial timeout shows
	// the backend read it as one (upstream.checkProxyHeader).
	if capa, _ := br.ReadString('\n'); capa != "ug1 CAPABILITY\r\n" {
		t.Errorf("after the greeting: %q", capa)
	}
	io.WriteString(b, "* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\nug1 OK done\r\n")
	id, _ := br.ReadString('\n')
	if !strings.HasPrefix(id, `ug2 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "5555" "x-connected-ip" "127.0.0.1"`) {
		t.Errorf("ID to the backend: %q", id)
	}
	io.WriteString(b, "ug2 OK ID done\r\n")
	if auth, _ := br.ReadString('\n'); !strings.HasPrefix(auth, "ug3 AUTHENTICATE PLAIN") {
		t.Errorf("after ID: %q", auth)
	}
	io.WriteString(b, "ug3 OK [CAPABILITY IMAP4rev1] in\r\n")
	if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login: %q", l)
	}
	if !strings.Contains(logs.String(), `"remote":"192.0.2.7:5555"`) {
		t.Errorf("log does not name the client's address:\n%s", logs.String())
	}

	// Untrusted source: the header is not parsed, so it is a bad command.
	addr2 := serve("10.0.0.0/8")
	c2, err := net.Dial("tcp", addr2)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	r2 := bufio.NewReader(c2)
	c2.SetReadDeadline(time.Now().Add(stepTimeout))
	r2.ReadString('\n')
	c2.Write([]byte("PROXY TCP4 192.0.2.8 127.0.0.1 1 2\r\n"))
	if l, _ := r2.ReadString('\n'); !strings.Contains(l, "BAD") {
		t.Errorf("untrusted PROXY header answered %q", l)
	}
}
