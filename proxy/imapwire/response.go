package imapwire

import "bytes"

// RespKind tells the three shapes of a server line (RFC 9051 §7).
type RespKind uint8

const (
	RespUntagged     RespKind = iota + 1 // "* ..."
	RespTagged                           // "tag OK|NO|BAD ..."
	RespContinuation                     // "+ ..."
)

// Response is the start of one server response, as slices of its line.
type Response struct {
	Kind RespKind
	Tag  []byte // tagged responses
	// Num is the number of "* n EXISTS|EXPUNGE|FETCH|RECENT".
	Num    uint32
	HasNum bool
	// Name is the keyword: OK, NO, BAD, BYE, PREAUTH, CAPABILITY, EXISTS,
	// FETCH, SEARCH, ... as it appeared (compare with EqualFold).
	Name []byte
	// Code and CodeArgs are the response code of a status response
	// ("[CAPABILITY IMAP4rev1 ...]" gives CAPABILITY and "IMAP4rev1 ...").
	Code, CodeArgs []byte
	// CodeStart, CodeEnd delimit "[...]" in the line (CodeEnd after ']').
	CodeStart, CodeEnd int
	// Text is resp-text after the code.
	Text []byte
	// After is the offset just after Name (and its SP, if any).
	After int
}

// IsStatus reports whether the response is OK, NO, BAD, BYE or PREAUTH,
// whose remainder is resp-text (RFC 9051 §7.1).
func (r *Response) IsStatus() bool {
	return EqualFold(r.Name, "OK") || EqualFold(r.Name, "NO") || EqualFold(r.Name, "BAD") ||
		EqualFold(r.Name, "BYE") || EqualFold(r.Name, "PREAUTH")
}

// MayAnnounceLiteral reports whether a literal announced at the end of
// this (first) line is a literal. resp-text is free text to the end of the
// line, so "* OK text {5}" or a continuation "+ {5}" is not a literal.
func (r *Response) MayAnnounceLiteral() bool {
	return r.Kind == RespUntagged && !r.IsStatus()
}

// ParseResponse classifies the first line of a server response.
func ParseResponse(line []byte) (Response, bool) {
	var r Response
	d := NewDecoder(line)
	switch {
	case d.Special('+'):
		r.Kind = RespContinuation
		d.SP()
		r.Text = TrimEOL(d.Rest())
		return r, true
	case d.Special('*'):
		r.Kind = RespUntagged
		if !d.SP() {
			return r, false
		}
		if n, ok := d.Number(); ok {
			r.Num, r.HasNum = n, true
			if !d.SP() {
				return r, false
			}
		}
	default:
		tag, ok := d.Tag()
		if !ok || !d.SP() {
			return r, false
		}
		r.Kind, r.Tag = RespTagged, tag
	}
	name, ok := d.Atom()
	if !ok {
		return r, false
	}
	r.Name = name
	d.SP()
	r.After = d.Pos()
	if r.Kind == RespTagged && !r.IsStatus() {
		return r, false
	}
	if r.IsStatus() {
		parseRespText(&r, line, d)
	}
	return r, true
}

// parseRespText fills Code, CodeArgs and Text (RFC 9051 §9 resp-text).
func parseRespText(r *Response, line []byte, d *Decoder) {
	rest := TrimEOL(d.Rest())
	if len(rest) > 0 && rest[0] == '[' {
		end := bytes.IndexByte(rest, ']')
		if end > 0 {
			inner := rest[1:end]
			r.CodeStart = d.Pos()
			r.CodeEnd = d.Pos() + end + 1
			if sp := bytes.IndexByte(inner, ' '); sp >= 0 {
				r.Code, r.CodeArgs = inner[:sp], inner[sp+1:]
			} else {
				r.Code = inner
			}
			rest = bytes.TrimPrefix(rest[end+1:], []byte{' '})
		}
	}
	r.Text = rest
}

// Command is the start of one client command line.
type Command struct {
	Tag  []byte
	Name []byte // as sent; compare with EqualFold
	UID  bool   // "UID FETCH" etc.: Name is then the second word
	// Args is the offset where the arguments start (after Name's SP).
	Args int
}

// ParseCommand parses "tag SP [UID SP] name [SP args]".
func ParseCommand(line []byte) (Command, bool) {
	var c Command
	d := NewDecoder(line)
	tag, ok := d.Tag()
	if !ok || !d.SP() {
		return c, false
	}
	c.Tag = tag
	name, ok := d.Atom()
	if !ok {
		return c, false
	}
	if EqualFold(name, "UID") {
		if !d.SP() {
			return c, false
		}
		c.UID = true
		if name, ok = d.Atom(); !ok {
			return c, false
		}
	}
	c.Name = name
	d.SP()
	c.Args = d.Pos()
	return c, true
}
