package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestTrailingLiteral(t *testing.T) {
	for _, tc := range []struct {
		line string
		want int64
	}{
		{"* 1 FETCH (BODY[] {123}\r\n", 123},
		{"* 1 FETCH (BODY[] {0}\r\n", 0},
		{"* 1 FETCH (BINARY[] ~{7}\r\n", 7},
		{"t1 APPEND x {12+}\r\n", 12},
		{"* OK done\r\n", -1},
		{"* OK {x}\r\n", -1},
		{"{5}\r\n", 5},
		{"}\r\n", -1},
		{"* 1 FETCH (BODY[] {99999999999999999999}\r\n", -1},
	} {
		if got := trailingLiteral([]byte(tc.line)); got != tc.want {
			t.Errorf("trailingLiteral(%q) = %d, want %d", tc.line, got, tc.want)
		}
	}
}

func TestUntaggedNumber(t *testing.T) {
	if n, ok := untaggedNumber([]byte("* 17 EXISTS\r\n"), "EXISTS"); !ok || n != 17 {
		t.Errorf("got %d %v", n, ok)
	}
	if _, ok := untaggedNumber([]byte("* 17 RECENT\r\n"), "EXISTS"); ok {
		t.Error("RECENT taken for EXISTS")
	}
	if _, ok := untaggedNumber([]byte("* OK [UIDNEXT 5] x\r\n"), "EXISTS"); ok {
		t.Error("OK taken for EXISTS")
	}
}

func TestPercentile(t *testing.T) {
	var l latencies
	for i := 1; i <= 100; i++ {
		l = append(l, time.Duration(101-i)*time.Microsecond)
	}
	s := l.summary()
	if s.N != 100 || s.P50us != 50 || s.P99us != 99 {
		t.Errorf("summary = %+v, want n 100, p50 50, p99 99", s)
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of nothing = %v", got)
	}
}

func TestMessageExactSize(t *testing.T) {
	for _, size := range []int64{minMessageSize, 1000, bodyBlockSize - 1, bodyBlockSize + 3, 3*bodyBlockSize + 77} {
		m, err := newMessage(size, "x")
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		n, err := m.WriteTo(&b)
		if err != nil || n != size || int64(b.Len()) != size {
			t.Fatalf("size %d: wrote %d (%d buffered), %v", size, n, b.Len(), err)
		}
		if !bytes.HasSuffix(b.Bytes(), []byte("\r\n")) || bytes.Contains(b.Bytes(), []byte("\r\r")) {
			t.Errorf("size %d: bad line ends", size)
		}
		if lines := strings.Split(b.String(), "\r\n"); strings.Contains(strings.Join(lines, ""), "\n") {
			t.Errorf("size %d: bare LF", size)
		}
	}
	if _, err := newMessage(10, "x"); err == nil {
		t.Error("a 10-byte message was accepted")
	}
}

// TestReadLineLong checks that a line longer than the buffer keeps its
// head (tag) and tail (literal), and that the literal after it is read.
func TestReadLineLong(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := &conn{nc: a, r: bufio.NewReaderSize(a, 16), w: bufio.NewWriter(a), timeout: time.Second}
	long := "* SEARCH " + strings.Repeat("12345 ", 1000) + "{3}\r\nabc)\r\nt1 OK done\r\n"
	go io.WriteString(b, long)
	var lines []string
	status, err := c.wait([]byte("t1"), func(line []byte) { lines = append(lines, string(line)) }, nil)
	if err != nil || status != "OK" {
		t.Fatalf("wait = %q, %v", status, err)
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "* SEARCH 12345") || !strings.HasSuffix(lines[0], "{3}\r\n") {
		t.Errorf("lines = %q", lines)
	}
	if c.bytesIn != int64(len(long)) {
		t.Errorf("bytesIn = %d, want %d", c.bytesIn, len(long))
	}
}

func TestLoopbackOnly(t *testing.T) {
	var out, errb strings.Builder
	if code := run([]string{"-addr", "192.0.2.1:143"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "only loopback") {
		t.Fatalf("non-loopback -addr: exit %d, %q", code, errb.String())
	}
	for _, h := range []string{"127.0.0.1", "::1", "localhost"} {
		if !isLoopback(h) {
			t.Errorf("%s not taken for loopback", h)
		}
	}
}

// TestMixOps: -mix seen is the flags mix plus the \Seen commands, and
// building it left the flags mix as it was.
func TestMixOps(t *testing.T) {
	flags, err := mixOps("flags")
	if err != nil || len(flags) != 4 {
		t.Fatalf("flags: %d ops, %v", len(flags), err)
	}
	seen, err := mixOps("seen")
	if err != nil || len(seen) != 7 {
		t.Fatalf("seen: %d ops, %v", len(seen), err)
	}
	for i, op := range flags {
		if seen[i] != op {
			t.Errorf("seen[%d] = %v, want %v", i, seen[i], op)
		}
	}
	if seen[4].format != "FETCH %d BODY[]" || seen[5].format != `STORE %d +FLAGS (\Seen)` {
		t.Errorf("seen adds %v, %v", seen[4], seen[5])
	}
	if _, err := mixOps("other"); err == nil {
		t.Error("an unknown mix is accepted")
	}
}
