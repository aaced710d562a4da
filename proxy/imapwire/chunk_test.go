package imapwire

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestReadLiteralChunk(t *testing.T) {
	body := strings.Repeat("x", 10000)
	in := "* 1 FETCH (BODY[] {10000}\r\n" + body + ")\r\n"
	for name, src := range map[string]io.Reader{
		"whole": strings.NewReader(in),
		"half":  iotest.HalfReader(strings.NewReader(in)),
		"byte":  iotest.OneByteReader(strings.NewReader(in)),
	} {
		r := NewReader(src, 0)
		if _, err := r.ReadLine(); err != nil {
			t.Fatal(err)
		}
		r.Expect(10000)
		var got bytes.Buffer
		p := make([]byte, 3000)
		for r.Pending() > 0 {
			n, err := r.ReadLiteralChunk(p)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got.Write(p[:n])
		}
		if got.String() != body {
			t.Fatalf("%s: literal differs (%d bytes)", name, got.Len())
		}
		// Never beyond the literal: the line's end is still there.
		if n, err := r.ReadLiteralChunk(p); n != 0 || err != nil {
			t.Fatalf("%s: read %d past the literal (%v)", name, n, err)
		}
		if line, err := r.ReadLine(); err != nil || string(line) != ")\r\n" {
			t.Fatalf("%s: next line %q, %v", name, line, err)
		}
	}
	r := NewReader(strings.NewReader("{5}\r\nab"), 0)
	r.ReadLine()
	r.Expect(5)
	p := make([]byte, 8)
	n, _ := r.ReadLiteralChunk(p)
	if _, err := r.ReadLiteralChunk(p[n:]); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated literal: %v, want ErrUnexpectedEOF", err)
	}
}
