package imapwire

import (
	"errors"
	"fmt"
	"strconv"
)

// Decoder parses IMAP syntax from a byte slice holding one line, or one
// whole command with its literals inline exactly as they were on the wire
// ("{n}\r\n" followed by n bytes). Methods are named after RFC 9051 §9 ABNF
// rules. The bare form tries and reports success; the Expect form also
// records the first failure, read with Err.
type Decoder struct {
	b   []byte
	pos int
	err error
}

// NewDecoder returns a Decoder over b.
func NewDecoder(b []byte) *Decoder { return &Decoder{b: b} }

// Reset makes d decode b from its start.
func (d *Decoder) Reset(b []byte) { d.b, d.pos, d.err = b, 0, nil }

// Err returns the first error recorded by an Expect method.
func (d *Decoder) Err() error { return d.err }

// Pos returns the offset of the next byte to decode.
func (d *Decoder) Pos() int { return d.pos }

// Seek moves to offset pos (clamped to the input) and clears no error.
func (d *Decoder) Seek(pos int) { d.pos = min(max(pos, 0), len(d.b)) }

// Rest returns the bytes not yet decoded.
func (d *Decoder) Rest() []byte { return d.b[d.pos:] }

func (d *Decoder) fail(what string) bool {
	if d.err == nil {
		d.err = fmt.Errorf("imapwire: expected %s at offset %d", what, d.pos)
	}
	return false
}

// peek returns the next byte, or 0 at the end.
func (d *Decoder) peek() byte {
	if d.pos < len(d.b) {
		return d.b[d.pos]
	}
	return 0
}

// Special consumes c if it is next.
func (d *Decoder) Special(c byte) bool {
	if d.peek() == c && d.pos < len(d.b) {
		d.pos++
		return true
	}
	return false
}

// ExpectSpecial consumes c or records an error.
func (d *Decoder) ExpectSpecial(c byte) bool {
	return d.Special(c) || d.fail(strconv.Quote(string(c)))
}

// SP consumes one space.
func (d *Decoder) SP() bool { return d.Special(' ') }

// ExpectSP consumes one space or records an error.
func (d *Decoder) ExpectSP() bool { return d.SP() || d.fail("SP") }

// CRLF consumes the line end (CRLF, or a bare LF).
func (d *Decoder) CRLF() bool {
	if d.Special('\r') {
		return d.Special('\n')
	}
	return d.Special('\n')
}

// EOL reports whether only the line end (or nothing) remains.
func (d *Decoder) EOL() bool {
	rest := d.b[d.pos:]
	return len(rest) == 0 || string(rest) == "\r\n" || string(rest) == "\n"
}

// ExpectCRLF consumes the line end or records an error.
func (d *Decoder) ExpectCRLF() bool {
	if len(d.b) == d.pos {
		return true
	}
	return d.CRLF() || d.fail("CRLF")
}

// IsAtomChar reports whether c is an ATOM-CHAR (RFC 9051 §9: any CHAR
// except atom-specials).
func IsAtomChar(c byte) bool {
	switch c {
	case '(', ')', '{', ' ', '%', '*', '"', '\\', ']':
		return false
	}
	return c > 0x1f && c < 0x7f
}

// isAStringChar: ATOM-CHAR / resp-specials.
func isAStringChar(c byte) bool { return IsAtomChar(c) || c == ']' }

// isTagChar: any ASTRING-CHAR except "+".
func isTagChar(c byte) bool { return isAStringChar(c) && c != '+' }

func (d *Decoder) run(ok func(byte) bool) []byte {
	start := d.pos
	for d.pos < len(d.b) && ok(d.b[d.pos]) {
		d.pos++
	}
	return d.b[start:d.pos]
}

// Tag consumes a tag (RFC 9051 §9 "tag").
func (d *Decoder) Tag() ([]byte, bool) {
	t := d.run(isTagChar)
	return t, len(t) > 0
}

// Atom consumes an atom.
func (d *Decoder) Atom() ([]byte, bool) {
	a := d.run(IsAtomChar)
	return a, len(a) > 0
}

// ExpectAtom consumes an atom or records an error.
func (d *Decoder) ExpectAtom() ([]byte, bool) {
	a, ok := d.Atom()
	if !ok {
		d.fail("atom")
	}
	return a, ok
}

// SeqSetToken consumes a run that can form a sequence-set or "$"
// (RFC 9051 §9 sequence-set, RFC 5182): digits, "*", ":", ",", "$". The
// caller validates it.
func (d *Decoder) SeqSetToken() ([]byte, bool) {
	t := d.run(func(c byte) bool {
		return c >= '0' && c <= '9' || c == '*' || c == ':' || c == ',' || c == '$'
	})
	return t, len(t) > 0
}

// Number consumes a 32-bit number (RFC 9051 §9 "number").
func (d *Decoder) Number() (uint32, bool) {
	start := d.pos
	var n uint64
	for d.pos < len(d.b) && d.b[d.pos] >= '0' && d.b[d.pos] <= '9' {
		n = n*10 + uint64(d.b[d.pos]-'0')
		if n > 0xffffffff {
			d.pos = start
			return 0, false
		}
		d.pos++
	}
	return uint32(n), d.pos > start
}

// Quoted consumes a quoted string, resolving \" and \\.
func (d *Decoder) Quoted() (string, bool) {
	if d.peek() != '"' {
		return "", false
	}
	start := d.pos
	d.pos++
	var out []byte
	for d.pos < len(d.b) {
		c := d.b[d.pos]
		d.pos++
		switch c {
		case '"':
			return string(out), true
		case '\\':
			if d.pos >= len(d.b) {
				d.pos = start
				return "", false
			}
			c = d.b[d.pos]
			if c != '"' && c != '\\' {
				d.pos = start
				return "", false
			}
			d.pos++
		case '\r', '\n', 0:
			d.pos = start
			return "", false
		}
		out = append(out, c)
	}
	d.pos = start
	return "", false
}

// LiteralHeader consumes a literal announcement "{n}", "{n+}" or a
// literal8 "~{n}" and its CRLF.
func (d *Decoder) LiteralHeader() (Literal, bool) {
	start := d.pos
	lit := Literal{Sync: true, Start: start}
	if d.Special('~') {
		lit.Binary = true
	}
	if !d.Special('{') {
		d.pos = start
		return Literal{}, false
	}
	digits := d.pos
	var n int64
	for d.pos < len(d.b) && d.b[d.pos] >= '0' && d.b[d.pos] <= '9' {
		n = n*10 + int64(d.b[d.pos]-'0')
		d.pos++
	}
	if d.pos == digits || d.pos-digits > maxLiteralDigits || n < 0 {
		d.pos = start
		return Literal{}, false
	}
	if d.Special('+') {
		lit.Sync = false
	}
	if !d.Special('}') || !d.CRLF() {
		d.pos = start
		return Literal{}, false
	}
	lit.Size = n
	return lit, true
}

// Literal consumes an inline literal (header, CRLF and its bytes).
func (d *Decoder) Literal() ([]byte, bool) {
	start := d.pos
	lit, ok := d.LiteralHeader()
	if !ok || lit.Binary {
		d.pos = start
		return nil, false
	}
	if int64(len(d.b)-d.pos) < lit.Size {
		d.pos = start
		return nil, false
	}
	v := d.b[d.pos : d.pos+int(lit.Size)]
	d.pos += int(lit.Size)
	return v, true
}

// String consumes a quoted string or a literal (RFC 9051 §9 "string").
func (d *Decoder) String() (string, bool) {
	if s, ok := d.Quoted(); ok {
		return s, true
	}
	if b, ok := d.Literal(); ok {
		return string(b), true
	}
	return "", false
}

// AString consumes an astring: 1*ASTRING-CHAR or a string.
func (d *Decoder) AString() (string, bool) {
	if a := d.run(isAStringChar); len(a) > 0 {
		return string(a), true
	}
	return d.String()
}

// ExpectAString consumes an astring or records an error.
func (d *Decoder) ExpectAString() (string, bool) {
	s, ok := d.AString()
	if !ok {
		d.fail("astring")
	}
	return s, ok
}

// NString consumes NIL or a string; ok with nil=true for NIL.
func (d *Decoder) NString() (s string, isNil, ok bool) {
	if d.pos+3 <= len(d.b) && equalFoldASCII(d.b[d.pos:d.pos+3], "NIL") &&
		(d.pos+3 == len(d.b) || !IsAtomChar(d.b[d.pos+3])) {
		d.pos += 3
		return "", true, true
	}
	s, ok = d.String()
	return s, false, ok
}

// SkipValue skips one value of any kind: an atom-like run (including
// flags, sequence sets and section specs such as BODY[HEADER]<0.10>), a
// quoted string, a literal, or a parenthesised list.
func (d *Decoder) SkipValue() bool {
	switch c := d.peek(); {
	case c == '(':
		return d.SkipList()
	case c == '"':
		_, ok := d.Quoted()
		return ok
	case c == '{' || c == '~':
		start := d.pos
		lit, ok := d.LiteralHeader()
		if !ok || int64(len(d.b)-d.pos) < lit.Size {
			d.pos = start
			return false
		}
		d.pos += int(lit.Size)
		return true
	default:
		start := d.pos
		for d.pos < len(d.b) {
			c := d.b[d.pos]
			if c == '[' {
				if !d.skipBracket() {
					d.pos = start
					return false
				}
				continue
			}
			if c == ' ' || c == '(' || c == ')' || c == '\r' || c == '\n' {
				break
			}
			d.pos++
		}
		return d.pos > start
	}
}

// skipBracket skips "[...]" (section specs contain spaces and lists).
func (d *Decoder) skipBracket() bool {
	d.pos++ // '['
	for d.pos < len(d.b) {
		switch d.b[d.pos] {
		case ']':
			d.pos++
			return true
		case '"':
			if _, ok := d.Quoted(); !ok {
				return false
			}
		case '{', '~':
			if !d.SkipValue() {
				d.pos++
			}
		case '\r', '\n':
			return false
		default:
			d.pos++
		}
	}
	return false
}

// SkipList skips a parenthesised list and everything nested in it. It
// counts depth instead of recursing: a line of millions of "(" from a
// client or a backend must not exhaust the stack (issue 16).
func (d *Decoder) SkipList() bool {
	start := d.pos
	if !d.Special('(') {
		return false
	}
	for depth := 1; depth > 0; {
		switch {
		case d.Special('('):
			depth++
		case d.Special(')'):
			depth--
		case d.SP():
		case d.pos >= len(d.b) || !d.SkipValue():
			d.pos = start
			return false
		}
	}
	return true
}

// ErrSyntax is wrapped by errors about malformed input.
var ErrSyntax = errors.New("syntax error")

func equalFoldASCII(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		t := s[i]
		if 'a' <= t && t <= 'z' {
			t -= 'a' - 'A'
		}
		if c != t {
			return false
		}
	}
	return true
}

// EqualFold reports whether b equals s, ASCII case-insensitively, without
// allocating.
func EqualFold(b []byte, s string) bool { return equalFoldASCII(b, s) }
