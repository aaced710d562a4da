package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// patternReader yields n bytes of a repeating mail-like line, never
// holding more than one line in memory.
type patternReader struct {
	n    int64
	line []byte
	off  int
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.n == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	k := 0
	for k < len(b) {
		c := copy(b[k:], p.line[p.off:])
		k += c
		p.off = (p.off + c) % len(p.line)
	}
	p.n -= int64(k)
	return k, nil
}

func bigMessage(size int64) io.Reader {
	hdr := "From: big@example.org\r\nSubject: fifty megabytes\r\nDate: Sun, 29 Nov 2026 01:00:00 +0000\r\nMessage-ID: <big@uidgate.test>\r\n\r\n"
	return io.MultiReader(strings.NewReader(hdr), &patternReader{
		n:    size - int64(len(hdr)),
		line: []byte("0123456789 The quick brown fox jumps over the lazy dog, streaming.\r\n"),
	})
}

// rawConn is a line-oriented IMAP client that streams literals.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{t: t, c: c, r: bufio.NewReaderSize(c, 32<<10)}
	rc.line() // greeting
	return rc
}

func (rc *rawConn) line() string {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(60 * time.Second))
	l, err := rc.r.ReadString('\n')
	if err != nil {
		rc.t.Fatalf("read: %v (got %q)", err, l)
	}
	return l
}

// until reads lines up to the tagged response for tag and returns it.
func (rc *rawConn) until(tag string) string {
	rc.t.Helper()
	for {
		l := rc.line()
		if strings.HasPrefix(l, tag+" ") {
			return l
		}
	}
}

func (rc *rawConn) send(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, s+"\r\n"); err != nil {
		rc.t.Fatal(err)
	}
}

// TestBigLiteralsFlatMemory APPENDs and FETCHes a 50 MB message through
// uidgate (in this process) and checks the bytes arrive unchanged while
// the process allocates far less than the message size. It is heavy, so
// it runs where the relay of literals differs: Cyrus 2.3 in the deployed
// (legacy, explicit \Seen) mode, and Dovecot in the compliant one.
func TestBigLiteralsFlatMemory(t *testing.T) {
	for _, kind := range []string{"cyrus23", "dovecot"} {
		t.Run(kind, func(t *testing.T) {
			checkNoLeaks(t)
			be := startBackend(t, kind)
			g := startGate(t, gateOpts{backend: deployedBackend(kind, be.Addr), maxLit: 64 << 20})
			testBigLiterals(t, g)
		})
	}
}

func testBigLiterals(t *testing.T, g *gate) {
	const size = 50 << 20
	rc := dialRaw(t, g.Addr)
	rc.send("a1 LOGIN alice " + testUsers["alice"])
	if l := rc.until("a1"); !strings.HasPrefix(l, "a1 OK") {
		t.Fatalf("login: %q", l)
	}

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	rc.send(fmt.Sprintf("a2 APPEND INBOX {%d}", size))
	if l := rc.line(); !strings.HasPrefix(l, "+") {
		t.Fatalf("APPEND literal: %q", l)
	}
	sum := sha256.New()
	if _, err := io.Copy(io.MultiWriter(rc.c, sum), bigMessage(size)); err != nil {
		t.Fatal(err)
	}
	rc.send("")
	if l := rc.until("a2"); !strings.HasPrefix(l, "a2 OK") {
		t.Fatalf("APPEND: %q", l)
	}
	want := sum.Sum(nil)

	rc.send("a3 SELECT INBOX")
	if l := rc.until("a3"); !strings.HasPrefix(l, "a3 OK") {
		t.Fatalf("SELECT: %q", l)
	}
	rc.send("a4 FETCH 1 BODY.PEEK[]")
	l := rc.line()
	i := strings.LastIndexByte(l, '{')
	n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(l[i+1:]), "}"), 10, 64)
	if i < 0 || err != nil || n != size {
		t.Fatalf("FETCH response %q", l)
	}
	sum.Reset()
	if _, err := io.CopyN(sum, rc.r, n); err != nil {
		t.Fatal(err)
	}
	if l := rc.until("a4"); !strings.HasPrefix(l, "a4 OK") {
		t.Fatalf("FETCH: %q", l)
	}
	if !bytes.Equal(sum.Sum(nil), want) {
		t.Errorf("50 MB body changed in transit")
	}

	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	// 100 MB crossed the proxy; a relay that buffered either literal would
	// allocate at least 50 MB. Buffers and test overhead stay far below.
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KB while relaying 100 MB", alloc>>10)
	if alloc > 8<<20 {
		t.Errorf("allocated %d MB while relaying 2 × 50 MB", alloc>>20)
	}
	rc.send("a5 LOGOUT")
	rc.until("a5")
}
