package imapwire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// divertRecorder records what ReadLineDivert hands to divert and the sink.
type divertRecorder struct {
	calls int
	head  []byte
	got   []byte
	frags int
	skip  bool // divert declines: the line is assembled
}

func (d *divertRecorder) divert(head []byte) func([]byte) {
	d.calls++
	d.head = append([]byte(nil), head...)
	if d.skip {
		return nil
	}
	return func(frag []byte) {
		d.frags++
		d.got = append(d.got, frag...)
	}
}

func searchLine(n int, eol string) string {
	var b strings.Builder
	b.WriteString("* SEARCH")
	for i := range n {
		fmt.Fprintf(&b, " %d", 1+2*i)
	}
	b.WriteString(eol)
	return b.String()
}

// TestReadLineDivert reads a short line, a long one and a short one again
// through buffers of many sizes and readers that return one byte or half
// of what is asked at a time, so that fragments end anywhere: inside a
// number, between "\r" and "\n".
func TestReadLineDivert(t *testing.T) {
	long := searchLine(40, "\r\n") // 125 bytes
	lines := []string{"* 3 EXISTS\r\n", long, "* SEARCH 9\n", searchLine(30, "\n"), "a OK done\r\n"}
	readers := map[string]func(io.Reader) io.Reader{
		"plain":   func(r io.Reader) io.Reader { return r },
		"onebyte": iotest.OneByteReader,
		"half":    iotest.HalfReader,
	}
	for name, wrap := range readers {
		for size := 16; size <= 80; size++ {
			for _, decline := range []bool{false, true} {
				r := newReaderSize(wrap(strings.NewReader(strings.Join(lines, ""))), 0, size)
				for i, want := range lines {
					rec := &divertRecorder{skip: decline}
					line, diverted, err := r.ReadLineDivert(rec.divert)
					where := fmt.Sprintf("%s, buffer %d, decline %v, line %d", name, size, decline, i)
					if err != nil {
						t.Fatalf("%s: %v", where, err)
					}
					fits := len(want) <= size
					switch {
					case fits && (rec.calls != 0 || diverted || string(line) != want):
						t.Fatalf("%s: short line: calls %d diverted %v line %q", where, rec.calls, diverted, line)
					case !fits && (rec.calls != 1 || string(rec.head) != want[:size]):
						t.Fatalf("%s: divert called %d times with head %q", where, rec.calls, rec.head)
					case !fits && decline && (diverted || string(line) != want):
						t.Fatalf("%s: declined: diverted %v line %q", where, diverted, line)
					case !fits && !decline && (!diverted || line != nil || string(rec.got) != want):
						t.Fatalf("%s: diverted %v line %q sink got %q", where, diverted, line, rec.got)
					case !fits && !decline && rec.frags != (len(want)+size-1)/size:
						t.Fatalf("%s: %d fragments for %d bytes", where, rec.frags, len(want))
					}
				}
				if _, _, err := r.ReadLineDivert(nil); err != io.EOF {
					t.Fatalf("%s, buffer %d: at the end: %v", name, size, err)
				}
			}
		}
	}
}

func TestReadLineDivertErrors(t *testing.T) {
	long := searchLine(100, "\r\n") // 400 bytes or so

	// Past the bound: the sink got no more than the bound.
	rec := &divertRecorder{}
	r := newReaderSize(strings.NewReader(long), 100, 16)
	if _, diverted, err := r.ReadLineDivert(rec.divert); !errors.Is(err, ErrLineTooLong) || !diverted || len(rec.got) > 100 {
		t.Fatalf("over the bound: %v, diverted %v, sink got %d bytes", err, diverted, len(rec.got))
	}

	// The stream ends inside the line.
	rec = &divertRecorder{}
	r = newReaderSize(strings.NewReader(long[:300]), 0, 16)
	if _, diverted, err := r.ReadLineDivert(rec.divert); err != io.ErrUnexpectedEOF || !diverted {
		t.Fatalf("cut short: %v, diverted %v", err, diverted)
	}

	// A literal still pending.
	r = newReaderSize(strings.NewReader("* 1 FETCH (BODY[] {3}\r\nabc)\r\n"), 0, 16)
	line, _, err := r.ReadLineDivert(nil)
	if err != nil {
		t.Fatal(err)
	}
	lit, _ := TrailingLiteral(line)
	r.Expect(lit.Size)
	if _, _, err := r.ReadLineDivert(rec.divert); !errors.Is(err, ErrLiteralPending) {
		t.Fatalf("literal pending: %v", err)
	}

	// No divert func: ReadLine.
	r = newReaderSize(strings.NewReader(long), 0, 16)
	if line, diverted, err := r.ReadLineDivert(nil); err != nil || diverted || string(line) != long {
		t.Fatalf("nil divert: %q %v %v", line, diverted, err)
	}

	// A bound below the buffer: the line is too long before divert is asked.
	rec = &divertRecorder{}
	r = newReaderSize(strings.NewReader(long), 20, 32)
	if _, _, err := r.ReadLineDivert(rec.divert); !errors.Is(err, ErrLineTooLong) || rec.calls != 0 {
		t.Fatalf("bound below the buffer: %v, %d calls", err, rec.calls)
	}
}

// TestReadLineDivertLarge diverts a 7 MB line through the default buffer
// without the Reader growing a line buffer.
func TestReadLineDivertLarge(t *testing.T) {
	long := searchLine(1_000_000, "\r\n")
	r := NewReader(strings.NewReader(long+"next\r\n"), 64<<20)
	var n int
	var last byte
	_, diverted, err := r.ReadLineDivert(func(head []byte) func([]byte) {
		return func(frag []byte) {
			n += len(frag)
			last = frag[len(frag)-1]
		}
	})
	if err != nil || !diverted || n != len(long) || last != '\n' {
		t.Fatalf("diverted %v, %v, %d of %d bytes", diverted, err, n, len(long))
	}
	if cap(r.line) != 0 {
		t.Fatalf("line buffer of %d bytes", cap(r.line))
	}
	if line, err := r.ReadLine(); err != nil || !bytes.Equal(line, []byte("next\r\n")) {
		t.Fatalf("next: %q %v", line, err)
	}
}

// TestReadLineStreamedBound: a diverted line may grow to the streamed
// bound, every line held whole only to the line bound (issue 16: a
// backend line that is not streamed must not grow to the streamed bound).
func TestReadLineStreamedBound(t *testing.T) {
	long := searchLine(100, "\r\n") // about 400 bytes
	newR := func(s string) *Reader {
		r := newReaderSize(strings.NewReader(s), 100, 16)
		r.SetMaxStreamed(1000)
		return r
	}

	rec := &divertRecorder{}
	if _, diverted, err := newR(long).ReadLineDivert(rec.divert); err != nil || !diverted || string(rec.got) != long {
		t.Fatalf("diverted, within the streamed bound: %v, diverted %v, sink got %d bytes", err, diverted, len(rec.got))
	}
	rec = &divertRecorder{skip: true}
	if _, diverted, err := newR(long).ReadLineDivert(rec.divert); !errors.Is(err, ErrLineTooLong) || diverted {
		t.Fatalf("declined, assembled past the line bound: %v, diverted %v", err, diverted)
	}
	if _, err := newR(long).ReadLine(); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("ReadLine past the line bound: %v", err)
	}
	if _, _, err := newR(long).ReadLineDivert(nil); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("no divert, past the line bound: %v", err)
	}
	rec = &divertRecorder{}
	huge := searchLine(1000, "\r\n")
	if _, diverted, err := newR(huge).ReadLineDivert(rec.divert); !errors.Is(err, ErrLineTooLong) || !diverted || len(rec.got) > 1000 {
		t.Fatalf("diverted, past the streamed bound: %v, diverted %v, sink got %d bytes", err, diverted, len(rec.got))
	}
	// A streamed bound below the line bound is the line bound.
	r := newReaderSize(strings.NewReader(long), 1000, 16)
	r.SetMaxStreamed(10)
	rec = &divertRecorder{}
	if _, diverted, err := r.ReadLineDivert(rec.divert); err != nil || !diverted {
		t.Fatalf("streamed bound below the line bound: %v", err)
	}
}
