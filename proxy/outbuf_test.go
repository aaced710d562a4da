package proxy

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
	"testing/iotest"
	"time"

	"uidgate/proxy/imapwire"
)

// recConn records the writes made to it; nothing else is used.
type recConn struct {
	net.Conn
	out    bytes.Buffer
	writes []int
}

func (c *recConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, len(p))
	return c.out.Write(p)
}

func (c *recConn) SetWriteDeadline(time.Time) error { return nil }

func TestFlushWriter(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var want bytes.Buffer
	c := &recConn{}
	f := newFlushWriter(c)
	for i := 0; i < 500; i++ {
		p := make([]byte, rng.IntN(3*outBufSize/2))
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		want.Write(p)
		if _, err := f.Write(p); err != nil {
			t.Fatal(err)
		}
		if f.Buffered() >= outBufSize {
			t.Fatalf("%d bytes buffered, more than the buffer", f.Buffered())
		}
		if rng.IntN(4) == 0 {
			if err := f.Flush(); err != nil {
				t.Fatal(err)
			}
			if f.buf != nil {
				t.Fatal("buffer kept after Flush")
			}
		}
	}
	f.Flush()
	if !bytes.Equal(c.out.Bytes(), want.Bytes()) {
		t.Fatal("bytes differ")
	}
	for _, n := range c.writes {
		if n == 0 {
			t.Fatal("empty write")
		}
	}
}

// relayLines copies a backend's responses the way upstreamToClient does
// (line, then its literal; flush when nothing more is buffered).
func relayLines(t *testing.T, r *imapwire.Reader, w *syncWriter) {
	t.Helper()
	for {
		line, err := r.ReadLine()
		if err != nil {
			return
		}
		lit, has := imapwire.TrailingLiteral(line)
		if err := w.write(line, !has && r.Buffered() == 0); err != nil {
			t.Fatal(err)
		}
		if has {
			r.Expect(lit.Size)
			if _, err := w.copyLiteral(r); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func fetchResponses(n, size int) []byte {
	var b bytes.Buffer
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz\r\n"), size/38+1)[:size]
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "* %d FETCH (UID %d BODY[] {%d}\r\n", i, i+100, size)
		b.Write(body)
		b.WriteString(")\r\n")
	}
	b.WriteString("a1 OK FETCH completed\r\n")
	return b.Bytes()
}

// TestCopyLiteralBatches: FETCH lines, bodies and the lines' ends leave in
// writes of at least half a buffer, not in a write per piece (the three sends per message that
// held bulk FETCH to 0.73 × direct).
func TestCopyLiteralBatches(t *testing.T) {
	for _, size := range []int{100, 50000, 200000} {
		in := fetchResponses(40, size)
		c := &recConn{}
		w := newSyncWriter(c)
		relayLines(t, imapwire.NewReader(bytes.NewReader(in), 0), w)
		if !bytes.Equal(c.out.Bytes(), in) {
			t.Fatalf("size %d: bytes differ", size)
		}
		most := len(in)/(outBufSize/2) + 2
		if len(c.writes) > most {
			t.Errorf("size %d: %d writes for %d bytes, want ≤ %d", size, len(c.writes), len(in), most)
		}
		if w.fw.buf != nil {
			t.Errorf("size %d: buffer kept after the response", size)
		}
	}
}

// TestCopyLiteralShortReads: a backend whose bytes trickle in (every
// read returns half of what was asked) still relays every byte.
func TestCopyLiteralShortReads(t *testing.T) {
	for _, size := range []int{1, 5000, 70000, spliceMin + 12345} {
		in := fetchResponses(3, size)
		c := &recConn{}
		w := newSyncWriter(c)
		relayLines(t, imapwire.NewReader(iotest.HalfReader(bytes.NewReader(in)), 0), w)
		if !bytes.Equal(c.out.Bytes(), in) {
			t.Fatalf("size %d: bytes differ", size)
		}
	}
}
