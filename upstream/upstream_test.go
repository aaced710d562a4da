package upstream

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// fakeBackend greets every connection and hands it to serve.
func fakeBackend(t *testing.T, readHeader bool, serve func(c net.Conn, r *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				if readHeader {
					if _, err := proxyproto.Read(r); err != nil {
						return
					}
				}
				c.Write([]byte("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] fake ready\r\n"))
				serve(c, r)
			}()
		}
	}()
	return ln.Addr().String()
}

// answerTagged answers every command line with OK under its own tag;
// lines whose tag is not printable ASCII are dropped, as a server that
// cannot tell what to answer them with might.
func answerTagged(c net.Conn, r *bufio.Reader) {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		tag, rest, ok := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		if !ok || strings.IndexFunc(tag, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
			continue
		}
		if strings.EqualFold(rest, "CAPABILITY") {
			c.Write([]byte("* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\n"))
		}
		c.Write([]byte(tag + " OK done\r\n"))
	}
}

// TestProxyHeaderToBackendWithout: issue 18, proxy_protocol = "v2"
// towards a backend that does not expect the header held the login
// until the 30 s login timeout; now the dial timeout bounds it, with an
// error that names the likely cause.
func TestProxyHeaderToBackendWithout(t *testing.T) {
	client := Client{
		Addr:  &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000},
		Local: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 143},
	}
	for _, v := range []byte{1, 2} {
		b := &Backend{Name: "plain", Address: fakeBackend(t, false, answerTagged), TLS: TLSNone,
			ProxyProtocol: v, DialTimeout: time.Second}
		t0 := time.Now()
		c, err := Dial(context.Background(), b, client)
		if err == nil {
			_, err = c.Login(context.Background(), "alice", "pw")
			c.Close()
		}
		took := time.Since(t0)
		if err == nil {
			t.Errorf("v%d: login through a backend that ignores the PROXY header succeeded", v)
		}
		if took > 3*time.Second {
			t.Errorf("v%d: failed after %v, want about dial_timeout (1s): %v", v, took, err)
		}
		if err != nil && !strings.Contains(err.Error(), "PROXY") {
			t.Errorf("v%d: error does not name the PROXY header: %v", v, err)
		}
	}

	// A backend that reads the header: one CAPABILITY, then the login.
	b := &Backend{Name: "proxied", Address: fakeBackend(t, true, answerTagged), TLS: TLSNone,
		ProxyProtocol: 2, DialTimeout: time.Second}
	c, err := Dial(context.Background(), b, client)
	if err != nil {
		t.Fatalf("dial with PROXY v2 to a backend that reads it: %v", err)
	}
	defer c.Close()
	if st, err := c.Login(context.Background(), "alice", "pw"); err != nil || !st.OK() {
		t.Fatalf("login: %v, %v", st, err)
	}
}
