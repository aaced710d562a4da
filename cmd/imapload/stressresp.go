package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"strconv"
)

const (
	// stressMaxText bounds one response's text (its lines, without the
	// literals): a "* SEARCH" of the few hundred messages stress keeps is
	// a few kB; a FETCH with several literals a few hundred bytes.
	stressMaxText = 1 << 20
	// litMark stands in a response's text where a literal was cut out:
	// NUL is not allowed in IMAP text (RFC 9051 §4.3), so it cannot be
	// confused with a byte the server sent.
	litMark = 0
	// reportMax bounds a response or command quoted in a violation.
	reportMax = 200
)

// stressLit is what is kept of a literal in a response: its size and the
// SHA-256 of its bytes (read by length, streamed into the hash).
type stressLit struct {
	size int64
	sum  [sha256.Size]byte
}

// stressResp is one whole response as read: its lines without CRLF, one
// after the other, with each literal cut out and litMark in its place,
// and the literals in order.
type stressResp struct {
	text []byte
	lits []stressLit
}

// readStressResp reads one response: a line, and while it ends with a
// literal announcement "{n}" (or "{n+}", "~{n}"), the n bytes of the
// literal and the line that continues the response. Literals are read by
// their announced length, never by looking for CRLF.
func readStressResp(r *bufio.Reader) (*stressResp, error) {
	resp := &stressResp{}
	for {
		start := len(resp.text)
		var err error
		resp.text, err = appendLine(r, resp.text)
		if err != nil {
			return nil, err
		}
		line := resp.text[start:]
		n := trailingLiteral(line)
		resp.text = append(resp.text[:start], trimEOL(line)...)
		if n < 0 {
			return resp, nil
		}
		// Cut "{n}", "{n+}" or "~{n}" and mark the literal's place.
		brace := bytes.LastIndexByte(resp.text, '{')
		if brace > start && resp.text[brace-1] == '~' {
			brace--
		}
		resp.text = append(resp.text[:brace], litMark)
		h := sha256.New()
		if _, err := io.CopyN(h, r, n); err != nil {
			return nil, eofUnexpected(err, 1)
		}
		lit := stressLit{size: n}
		h.Sum(lit.sum[:0])
		resp.lits = append(resp.lits, lit)
	}
}

// appendLine appends the next line, with its LF, to dst, failing when
// dst would outgrow stressMaxText.
func appendLine(r *bufio.Reader, dst []byte) ([]byte, error) {
	for {
		frag, err := r.ReadSlice('\n')
		if len(dst)+len(frag) > stressMaxText {
			return nil, fmt.Errorf("response longer than %d bytes", stressMaxText)
		}
		dst = append(dst, frag...)
		if err == nil {
			return dst, nil
		}
		if err != bufio.ErrBufferFull {
			return nil, eofUnexpected(err, len(dst))
		}
	}
}

// report returns text fit for a violation: literals shown as "{…}",
// cut to reportMax bytes.
func report(text []byte) string {
	s := string(bytes.ReplaceAll(text, []byte{litMark}, []byte("{…}")))
	if len(s) > reportMax {
		s = s[:reportMax] + "…"
	}
	return s
}

// respParser reads a response's text in the shape of RFC 9051 §9's
// rules: the bare methods try and report whether they matched, at the
// current position, consuming only what they matched.
type respParser struct {
	b    []byte
	pos  int
	lits []stressLit
	nlit int // literals passed so far
}

func newRespParser(resp *stressResp) *respParser {
	return &respParser{b: resp.text, lits: resp.lits}
}

func (p *respParser) peek() int {
	if p.pos >= len(p.b) {
		return -1
	}
	return int(p.b[p.pos])
}

// byte consumes c if it is next.
func (p *respParser) byte(c byte) bool {
	if p.peek() == int(c) {
		p.pos++
		return true
	}
	return false
}

// SP consumes one space.
func (p *respParser) SP() bool { return p.byte(' ') }

// Atom returns the bytes up to a space, a parenthesis, a literal or the
// end. A "[…]" inside (a FETCH item's section, a response code) is taken
// whole, spaces and parentheses included, and so is a "<…>" partial.
func (p *respParser) Atom() []byte {
	start := p.pos
	depth := 0
	for p.pos < len(p.b) {
		c := p.b[p.pos]
		switch {
		case c == '[':
			depth++
		case c == ']' && depth > 0:
			depth--
		case depth > 0:
		case c == ' ', c == '(', c == ')', c == litMark, c == '"':
			return p.b[start:p.pos]
		}
		p.pos++
	}
	return p.b[start:p.pos]
}

// Number reads a number (RFC 9051 §9 "number", 32 bits).
func (p *respParser) Number() (uint32, bool) {
	start := p.pos
	for p.pos < len(p.b) && p.b[p.pos] >= '0' && p.b[p.pos] <= '9' {
		p.pos++
	}
	n, err := strconv.ParseUint(string(p.b[start:p.pos]), 10, 32)
	if err != nil {
		p.pos = start
		return 0, false
	}
	return uint32(n), true
}

// Literal consumes a literal's mark and returns what was kept of it.
func (p *respParser) Literal() (stressLit, bool) {
	if p.peek() != litMark || p.nlit >= len(p.lits) {
		return stressLit{}, false
	}
	p.pos++
	p.nlit++
	return p.lits[p.nlit-1], true
}

// Quoted reads a quoted string and returns its content, unescaped.
func (p *respParser) Quoted() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	var s []byte
	for p.pos < len(p.b) {
		c := p.b[p.pos]
		p.pos++
		switch c {
		case '"':
			return s, true
		case '\\':
			if p.pos < len(p.b) {
				s = append(s, p.b[p.pos])
				p.pos++
			}
		default:
			s = append(s, c)
		}
	}
	return nil, false
}

// AString reads an atom or a quoted string (a literal gives nil, true:
// its bytes are not kept).
func (p *respParser) AString() ([]byte, bool) {
	switch p.peek() {
	case '"':
		return p.Quoted()
	case litMark:
		_, ok := p.Literal()
		return nil, ok
	}
	a := p.Atom()
	return a, len(a) > 0
}

// SkipValue passes one value of any kind: a number, an atom or NIL, a
// quoted string, a literal or a parenthesized list of values.
func (p *respParser) SkipValue() bool {
	switch p.peek() {
	case '(':
		p.pos++
		for {
			p.SP()
			if p.byte(')') {
				return true
			}
			if !p.SkipValue() {
				return false
			}
		}
	case '"':
		_, ok := p.Quoted()
		return ok
	case litMark:
		_, ok := p.Literal()
		return ok
	}
	return len(p.Atom()) > 0
}

// fetchData is what stress uses of a FETCH response.
type fetchData struct {
	uid      uint32
	hasUID   bool
	flags    [][]byte
	hasFlags bool
	body     stressLit // BODY[] as a literal
	hasBody  bool
}

// Fetch reads a FETCH response's "(item value …)" (RFC 9051 §7.5.2).
func (p *respParser) Fetch() (fetchData, bool) {
	var d fetchData
	if !p.byte('(') {
		return d, false
	}
	if p.byte(')') {
		return d, true
	}
	for {
		name := p.Atom()
		if len(name) == 0 || !p.SP() {
			return d, false
		}
		switch {
		case bytes.EqualFold(name, []byte("UID")):
			if d.uid, d.hasUID = p.Number(); !d.hasUID {
				return d, false
			}
		case bytes.EqualFold(name, []byte("FLAGS")):
			if !p.byte('(') {
				return d, false
			}
			d.hasFlags = true
			for !p.byte(')') {
				p.SP()
				f := p.Atom()
				if len(f) == 0 {
					return d, false
				}
				d.flags = append(d.flags, f)
			}
		case bytes.EqualFold(name, []byte("BODY[]")) && p.peek() == litMark:
			d.body, d.hasBody = p.Literal()
		default:
			if !p.SkipValue() {
				return d, false
			}
		}
		if p.byte(')') {
			return d, true
		}
		if !p.SP() {
			return d, false
		}
	}
}
