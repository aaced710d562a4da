package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"uidgate/rules"
	"uidgate/upstream"
)

// Transcript tests: each file in testdata/transcripts is one protocol case
// that a reader who knows IMAP can review. Lines:
//
//	C: text   the client sends text+CRLF
//	B: text   the backend (scripted upstream) sends text+CRLF
//	S: text   the client must receive exactly text+CRLF next
//	U: text   the backend must receive exactly text+CRLF next
//	S: <closed> / U: <closed>   that side must see the connection end
//	S: <nothing> / U: <nothing>  that side must receive nothing for quietTime
//	B: <close>      the backend closes its connection
//	@upcaps: caps   capabilities of the scripted backend (before @login)
//	@login          log in as "alice": the standard exchange, checked
//	@maxliteral: n  the server's literal bound
//	@maxline: n     the server's line bound
//	@legacy         the backend is marked legacy (numbers never trusted)
//	@expansion: f n the server's expansion factor and floor
//	@pause: d       wait d (a Go duration) before the next line
//	# comment
//
// Text may use \r, \n, \t, \\ and \xHH escapes; a line ending in "\c"
// is sent or expected without its CRLF.

const stepTimeout = 5 * time.Second

// quietTime is how long "<nothing>" waits for bytes that must not come.
const quietTime = 300 * time.Millisecond

func TestTranscripts(t *testing.T) {
	files, err := filepath.Glob("testdata/transcripts/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			runTranscript(t, f)
		})
	}
}

func unescape(t testing.TB, s string) []byte {
	var out []byte
	crlf := true
	if strings.HasSuffix(s, `\c`) {
		s, crlf = s[:len(s)-2], false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			out = append(out, c)
			continue
		}
		i++
		switch s[i] {
		case 'r':
			out = append(out, '\r')
		case 'n':
			out = append(out, '\n')
		case 't':
			out = append(out, '\t')
		case '\\':
			out = append(out, '\\')
		case 'x':
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				t.Fatalf("bad escape in %q", s)
			}
			out = append(out, byte(v))
			i += 2
		default:
			out = append(out, '\\', s[i])
		}
	}
	if crlf {
		out = append(out, '\r', '\n')
	}
	return out
}

type scriptedBackend struct {
	ln   net.Listener
	conn chan net.Conn
}

func newScriptedBackend(t *testing.T) *scriptedBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sb := &scriptedBackend{ln: ln, conn: make(chan net.Conn, 4)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(sb.conn)
				return
			}
			sb.conn <- c
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return sb
}

type transcript struct {
	t      *testing.T
	file   string
	lineNo int
	client net.Conn
	cr     *bufio.Reader
	back   net.Conn
	br     *bufio.Reader
	sb     *scriptedBackend
	caps   string
}

func (tr *transcript) fatalf(format string, args ...any) {
	tr.t.Helper()
	tr.t.Fatalf("%s:%d: %s", tr.file, tr.lineNo, fmt.Sprintf(format, args...))
}

// expect reads len(want) bytes from r and compares.
func (tr *transcript) expect(who string, c net.Conn, r *bufio.Reader, want []byte) {
	tr.t.Helper()
	c.SetReadDeadline(time.Now().Add(stepTimeout))
	got := make([]byte, len(want))
	n, err := io.ReadFull(r, got)
	if err != nil || !bytes.Equal(got, want) {
		tr.fatalf("%s: want %q, got %q (%v)", who, want, got[:n], err)
	}
}

func (tr *transcript) expectClosed(who string, c net.Conn, r *bufio.Reader) {
	tr.t.Helper()
	c.SetReadDeadline(time.Now().Add(stepTimeout))
	b, err := r.ReadByte()
	if err == nil {
		rest, _ := r.Peek(r.Buffered())
		tr.fatalf("%s: want connection closed, got %q", who, append([]byte{b}, rest...))
	}
	if err != io.EOF && !strings.Contains(err.Error(), "reset") {
		tr.fatalf("%s: want EOF, got %v", who, err)
	}
}

// expectNothing fails if who receives anything within quietTime.
func (tr *transcript) expectNothing(who string, c net.Conn, r *bufio.Reader) {
	tr.t.Helper()
	c.SetReadDeadline(time.Now().Add(quietTime))
	if _, err := r.Peek(1); err == nil {
		got, _ := r.Peek(r.Buffered())
		tr.fatalf("%s: want nothing yet, got %q", who, got)
	}
}

// acceptBackend takes the connection uidgate made to the scripted backend
// and greets it.
func (tr *transcript) acceptBackend() {
	tr.t.Helper()
	select {
	case c := <-tr.sb.conn:
		tr.back, tr.br = c, bufio.NewReader(c)
		tr.t.Cleanup(func() { c.Close() })
	case <-time.After(stepTimeout):
		tr.fatalf("uidgate did not dial the backend")
	}
	fmt.Fprintf(tr.back, "* OK [CAPABILITY %s] scripted backend\r\n", tr.caps)
}

func runTranscript(t *testing.T, file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sb := newScriptedBackend(t)
	logs := &bytes.Buffer{}
	log := zerolog.New(zerolog.SyncWriter(logs)).Level(zerolog.TraceLevel)
	backend := &upstream.Backend{Name: "scripted", Address: sb.ln.Addr().String(), TLS: upstream.TLSNone}
	srv := &Server{
		Route: func(user string) (*upstream.Backend, bool) {
			return backend, user != "nobody"
		},
		Logger: &log,
	}
	tr := &transcript{t: t, file: file, sb: sb, caps: "IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN"}
	lines := strings.Split(string(data), "\n")
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, "@maxliteral: "); ok {
			srv.MaxLiteral, _ = strconv.ParseInt(v, 10, 64)
		}
		if v, ok := strings.CutPrefix(l, "@maxline: "); ok {
			srv.MaxLine, _ = strconv.Atoi(v)
		}
		if v, ok := strings.CutPrefix(l, "@expansion: "); ok {
			if _, err := fmt.Sscan(v, &srv.ExpansionFactor, &srv.ExpansionFloor); err != nil {
				t.Fatalf("bad @expansion %q: %v", v, err)
			}
		}
		if strings.TrimSpace(l) == "@legacy" {
			backend.Legacy, backend.ExplicitSeen = true, true
		}
	}
	cc, sc := tcpPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(t.Context(), sc, Listener{TLS: upstream.TLSNone})
	}()
	t.Cleanup(func() {
		cc.Close()
		select {
		case <-done:
		case <-time.After(stepTimeout):
			t.Errorf("session did not end")
		}
		// Neither the password nor an AUTHENTICATE payload carrying it.
		if strings.Contains(logs.String(), "secret-pw") || strings.Contains(logs.String(), "AGFsaWNlAHNlY3JldC1wdw") || strings.Contains(logs.String(), "c2VjcmV0LXB3") {
			t.Errorf("password in log:\n%s", logs.String())
		}
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	})
	tr.client, tr.cr = cc, bufio.NewReader(cc)
	tr.expect("client", cc, tr.cr, []byte("* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN AUTH=LOGIN] uidgate ready\r\n"))
	for i, l := range lines {
		tr.lineNo = i + 1
		l = strings.TrimRight(l, "\r")
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if v, ok := strings.CutPrefix(l, "@upcaps: "); ok {
			tr.caps = v
			continue
		}
		if strings.HasPrefix(l, "@maxliteral: ") || strings.HasPrefix(l, "@maxline: ") || strings.HasPrefix(l, "@expansion: ") || l == "@legacy" {
			continue
		}
		if l == "@login" {
			fmt.Fprintf(cc, "L0 LOGIN alice secret-pw\r\n")
			tr.acceptBackend()
			tr.expect("backend", tr.back, tr.br, []byte("ug1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldC1wdw==\r\n"))
			fmt.Fprintf(tr.back, "ug1 OK [CAPABILITY %s] Logged in\r\n", tr.caps)
			want := "L0 OK [CAPABILITY " + strings.Join(rules.ClientCaps(strings.Fields(tr.caps)), " ") + "] Logged in\r\n"
			tr.expect("client", cc, tr.cr, []byte(want))
			continue
		}
		if l == "@accept" {
			tr.acceptBackend()
			continue
		}
		if v, ok := strings.CutPrefix(l, "@pause: "); ok {
			// Lets uidgate read what the client sent before the backend
			// speaks: for cases where which comes first is the point.
			d, err := time.ParseDuration(v)
			if err != nil {
				tr.fatalf("bad pause %q", v)
			}
			time.Sleep(d)
			continue
		}
		who, text, ok := strings.Cut(l, ": ")
		if !ok && strings.HasSuffix(l, ":") {
			who, text, ok = strings.TrimSuffix(l, ":"), "", true
		}
		if !ok {
			tr.fatalf("bad transcript line %q", l)
		}
		switch who {
		case "C":
			if _, err := cc.Write(unescape(t, text)); err != nil {
				tr.fatalf("client write: %v", err)
			}
		case "B":
			if tr.back == nil {
				tr.fatalf("no backend connection yet")
			}
			if text == "<close>" {
				tr.back.Close()
				continue
			}
			if _, err := tr.back.Write(unescape(t, text)); err != nil {
				tr.fatalf("backend write: %v", err)
			}
		case "S":
			if text == "<closed>" {
				tr.expectClosed("client", cc, tr.cr)
			} else if text == "<nothing>" {
				tr.expectNothing("client", cc, tr.cr)
			} else {
				tr.expect("client", cc, tr.cr, unescape(t, text))
			}
		case "U":
			if tr.back == nil {
				tr.fatalf("no backend connection yet")
			}
			if text == "<closed>" {
				tr.expectClosed("backend", tr.back, tr.br)
			} else if text == "<nothing>" {
				tr.expectNothing("backend", tr.back, tr.br)
			} else {
				tr.expect("backend", tr.back, tr.br, unescape(t, text))
			}
		default:
			tr.fatalf("unknown direction %q", who)
		}
	}
}

// tcpPair returns two ends of a loopback TCP connection: real sockets,
// since net.Pipe's synchronous writes hide buffering bugs.
func tcpPair(t *testing.T) (client, server net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	return client, server
}
