// Package imapwire reads and writes the IMAP wire format without
// re-encoding it: a Reader hands out lines exactly as they arrived (with
// their CRLF) and the literals announced at their end as streams of known
// size; a Decoder parses a line with methods named after the ABNF rules of
// RFC 3501 §9 / RFC 9051 §9. Nothing here knows about sessions.
package imapwire

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
)

const (
	// DefaultMaxLine bounds one line (without its literals).
	// RFC 2683 §3.2.1.5 asks servers to accept lines of at least 8000
	// octets; 64 KiB leaves room for long UID sets and search programs.
	DefaultMaxLine = 64 << 10

	// readBufSize is the bufio buffer per direction. Lines longer than this
	// are assembled in a separate buffer, so an idle session costs little.
	readBufSize = 4 << 10

	// maxLiteralDigits bounds the digits of a literal size: number64 in
	// RFC 9051 §9 fits 19 decimal digits.
	maxLiteralDigits = 19
)

var (
	// ErrLineTooLong is returned when a line exceeds the Reader's bound.
	// The rest of the line has not been read; the stream cannot be resumed.
	ErrLineTooLong = errors.New("imapwire: line too long")
	// ErrLiteralPending is returned when a line is requested while a
	// literal announced by the previous line has not been consumed.
	ErrLiteralPending = errors.New("imapwire: literal not consumed")
)

// Literal describes a literal announced at the end of a line.
type Literal struct {
	Size   int64
	Sync   bool // "{n}": the sender waits for a continuation request
	Binary bool // "~{n}" (RFC 3516 literal8)
	// Start is the offset in the line of the announcement ("~" or "{").
	Start int
}

// Reader reads lines and literals from one direction of an IMAP stream.
// Lines are returned as slices valid until the next call.
type Reader struct {
	br      *bufio.Reader
	src     io.Reader
	maxLine int // a line returned whole
	// maxStreamed bounds a line that ReadLineDivert streams to a sink
	// (never held whole); below maxLine, maxLine holds.
	maxStreamed int
	line        []byte
	pending     int64 // literal bytes announced and not yet consumed
}

// NewReader returns a Reader over r with lines bounded by maxLine
// (DefaultMaxLine if ≤ 0).
func NewReader(r io.Reader, maxLine int) *Reader {
	return newReaderSize(r, maxLine, readBufSize)
}

// newReaderSize is NewReader with a bufio buffer of bufSize bytes (tests
// use tiny ones to split lines anywhere).
func newReaderSize(r io.Reader, maxLine, bufSize int) *Reader {
	if maxLine <= 0 {
		maxLine = DefaultMaxLine
	}
	return &Reader{br: bufio.NewReaderSize(r, bufSize), src: r, maxLine: maxLine}
}

// Reset makes the Reader read from r, dropping anything buffered. It is
// used after STARTTLS, where nothing may be buffered (RFC 3501 §6.2.1).
func (r *Reader) Reset(src io.Reader) {
	r.br.Reset(src)
	r.src = src
	r.pending = 0
}

// SetMaxLine changes the line bound (DefaultMaxLine if ≤ 0). It bounds
// every line a call returns whole, that is every line assembled in
// memory; see SetMaxStreamed for lines that are not.
func (r *Reader) SetMaxLine(n int) {
	if n <= 0 {
		n = DefaultMaxLine
	}
	r.maxLine = n
}

// SetMaxStreamed lets a line that ReadLineDivert passes to a sink,
// fragment by fragment, grow to n bytes: such a line is never held whole,
// so its bound may be far above the bound of lines that are (SetMaxLine).
// A bound at or below the line bound is the line bound.
func (r *Reader) SetMaxStreamed(n int) { r.maxStreamed = n }

// streamBound is the bound of a diverted line.
func (r *Reader) streamBound() int { return max(r.maxLine, r.maxStreamed) }

// Buffered reports how many bytes are read ahead.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// ReadLine returns the next line including its CRLF (a bare LF is
// accepted and returned as is). The slice is valid until the next call.
// With ErrLineTooLong it returns the start of the line (to find its tag).
func (r *Reader) ReadLine() ([]byte, error) {
	if r.pending > 0 {
		return nil, ErrLiteralPending
	}
	frag, err := r.br.ReadSlice('\n')
	if err == nil {
		if len(frag) > r.maxLine {
			return nil, ErrLineTooLong
		}
		return frag, nil
	}
	return r.assemble(frag, err)
}

// assemble reads the rest of a line that did not fit the buffer (frag and
// err from the first ReadSlice) into r.line.
func (r *Reader) assemble(frag []byte, err error) ([]byte, error) {
	r.line = append(r.line[:0], frag...)
	for err == bufio.ErrBufferFull {
		if len(r.line) > r.maxLine {
			return r.line, ErrLineTooLong
		}
		frag, err = r.br.ReadSlice('\n')
		r.line = r.grow(r.line, len(frag))
		r.line = append(r.line, frag...)
	}
	if err != nil {
		if err == io.EOF && len(r.line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if len(r.line) > r.maxLine {
		return r.line, ErrLineTooLong
	}
	line := r.line
	if cap(r.line) > 4*readBufSize {
		r.line = nil // do not keep a huge buffer for the session's life
	}
	return line, nil
}

// grow makes room in line for n more bytes, doubling its capacity (append
// grows a large slice by a quarter, and the copies left behind add up to
// four times the line before they are collected), but never past the line
// bound and one buffer: a line longer than that is refused.
func (r *Reader) grow(line []byte, n int) []byte {
	if len(line)+n <= cap(line) {
		return line
	}
	c := min(max(2*cap(line), len(line)+n), r.maxLine+r.br.Size())
	c = max(c, len(line)+n)
	return append(make([]byte, 0, c), line...)
}

// ReadLineDivert is ReadLine for a line that may be too long to be worth
// holding, such as the UID list of a large mailbox ("* SEARCH" of
// 1,000,000 UIDs is 7 MB). A line that fits the buffer is returned as
// ReadLine returns it, and divert is not called. Otherwise divert is
// called with the head of the line: the first full buffer, without its
// line end. If it returns nil, the line is assembled and returned as by
// ReadLine. If it returns a sink, the head and then every further fragment
// of the line, the last one ending with LF, are passed to the sink in
// order, each valid only during the call; nothing is assembled, and the
// call returns a nil line with diverted set. A diverted line is bounded by
// SetMaxStreamed's bound (the line bound if not set), every other line by
// the line bound: past it the sink gets nothing more and the error is
// ErrLineTooLong. A
// line cut short by the end of the stream is io.ErrUnexpectedEOF; a
// diverted line that fails has reached its sink only in part.
func (r *Reader) ReadLineDivert(divert func(head []byte) (sink func(frag []byte))) (line []byte, diverted bool, err error) {
	if r.pending > 0 {
		return nil, false, ErrLiteralPending
	}
	frag, err := r.br.ReadSlice('\n')
	if err == nil {
		if len(frag) > r.maxLine {
			return nil, false, ErrLineTooLong
		}
		return frag, false, nil
	}
	if err != bufio.ErrBufferFull || divert == nil || len(frag) > r.maxLine {
		line, err = r.assemble(frag, err)
		return line, false, err
	}
	sink := divert(frag)
	if sink == nil {
		line, err = r.assemble(frag, err)
		return line, false, err
	}
	n, bound := len(frag), r.streamBound()
	sink(frag)
	for err == bufio.ErrBufferFull {
		frag, err = r.br.ReadSlice('\n')
		if n += len(frag); n > bound {
			return nil, true, ErrLineTooLong
		}
		if err == nil || err == bufio.ErrBufferFull {
			sink(frag)
		}
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return nil, true, err
}

// Expect marks n literal bytes as announced; they must be consumed with
// CopyLiteral or ReadLiteral before the next ReadLine.
func (r *Reader) Expect(n int64) { r.pending = n }

// Pending reports the literal bytes still to be consumed.
func (r *Reader) Pending() int64 { return r.pending }

// CopyLiteral copies the pending literal to w. Bytes already buffered are
// written first; the rest is copied from the underlying reader directly, so
// that a *net.TCPConn pair can splice without touching user space.
func (r *Reader) CopyLiteral(w io.Writer) (int64, error) {
	var done int64
	if b := r.br.Buffered(); b > 0 && r.pending > 0 {
		n := int64(b)
		if n > r.pending {
			n = r.pending
		}
		buf, _ := r.br.Peek(int(n))
		k, err := w.Write(buf)
		r.br.Discard(k)
		done += int64(k)
		r.pending -= int64(k)
		if err != nil {
			return done, err
		}
	}
	if r.pending == 0 {
		return done, nil
	}
	k, err := io.CopyN(w, r.src, r.pending)
	done += k
	r.pending -= k
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return done, err
}

// ReadLiteral reads the whole pending literal into dst (appending). Only
// for literals whose size the caller has already bounded.
func (r *Reader) ReadLiteral(dst []byte) ([]byte, error) {
	n := int(r.pending)
	start := len(dst)
	dst = append(dst, make([]byte, n)...)
	_, err := io.ReadFull(r.br, dst[start:])
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return dst[:start], err
	}
	r.pending = 0
	return dst, nil
}

// ReadLiteralChunk reads the next bytes of the pending literal into p: at
// most len(p) and never beyond the literal. What is buffered comes first;
// with nothing buffered one read of the underlying reader fills p directly.
func (r *Reader) ReadLiteralChunk(p []byte) (int, error) {
	if int64(len(p)) > r.pending {
		p = p[:r.pending]
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := r.br.Read(p)
	r.pending -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if n > 0 && err != nil && r.pending == 0 {
		err = nil
	}
	return n, err
}

// DiscardLiteral skips the pending literal.
func (r *Reader) DiscardLiteral() error {
	_, err := r.CopyLiteral(io.Discard)
	return err
}

// TrailingLiteral reports the literal announced at the end of line, if
// any: "{n}", "{n+}", "~{n}" or "~{n+}" just before the CRLF
// (RFC 9051 §4.3, RFC 7888 §3, RFC 3516 §4.1).
func TrailingLiteral(line []byte) (Literal, bool) {
	b := trimEOL(line)
	if len(b) < 3 || b[len(b)-1] != '}' {
		return Literal{}, false
	}
	end := len(b) - 1
	lit := Literal{Sync: true}
	if b[end-1] == '+' {
		lit.Sync = false
		end--
	}
	i := end
	for i > 0 && b[i-1] >= '0' && b[i-1] <= '9' {
		i--
	}
	digits := end - i
	if digits == 0 || i == 0 || b[i-1] != '{' {
		return Literal{}, false
	}
	// A count too large for int64 is still a literal announcement: the
	// peer will treat it as one, so uidgate must too (issue 16: otherwise
	// the two disagree on where the next command starts). It saturates,
	// and every size bound then refuses it.
	var n int64
	for _, c := range b[i:end] {
		if n > (math.MaxInt64-9)/10 {
			n = math.MaxInt64
			break
		}
		n = n*10 + int64(c-'0')
	}
	lit.Size = n
	lit.Start = i - 1
	if lit.Start > 0 && b[lit.Start-1] == '~' {
		lit.Binary = true
		lit.Start--
	}
	return lit, true
}

// AppendLiteralHeader appends the announcement of lit ("~{n+}" etc.)
// followed by CRLF.
func AppendLiteralHeader(dst []byte, lit Literal) []byte {
	if lit.Binary {
		dst = append(dst, '~')
	}
	dst = append(dst, '{')
	dst = fmt.Appendf(dst, "%d", lit.Size)
	if !lit.Sync {
		dst = append(dst, '+')
	}
	return append(dst, '}', '\r', '\n')
}

func trimEOL(line []byte) []byte {
	line = bytes.TrimSuffix(line, []byte{'\n'})
	return bytes.TrimSuffix(line, []byte{'\r'})
}

// TrimEOL returns line without its CRLF (or LF).
func TrimEOL(line []byte) []byte { return trimEOL(line) }
