package imapwire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
)

func TestReadLineAndLiterals(t *testing.T) {
	in := "a1 APPEND INBOX {5}\r\nhello\r\n* 1 FETCH (BODY[] {3}\r\nabc FLAGS (\\Seen))\r\nlast"
	r := NewReader(strings.NewReader(in), 0)
	line, err := r.ReadLine()
	if err != nil || string(line) != "a1 APPEND INBOX {5}\r\n" {
		t.Fatalf("line 1 = %q, %v", line, err)
	}
	lit, ok := TrailingLiteral(line)
	if !ok || lit.Size != 5 || !lit.Sync || lit.Binary || lit.Start != 16 {
		t.Fatalf("literal = %+v %v", lit, ok)
	}
	r.Expect(lit.Size)
	if _, err := r.ReadLine(); !errors.Is(err, ErrLiteralPending) {
		t.Fatalf("ReadLine with literal pending: %v", err)
	}
	var buf bytes.Buffer
	if n, err := r.CopyLiteral(&buf); err != nil || n != 5 || buf.String() != "hello" {
		t.Fatalf("CopyLiteral = %d %q %v", n, buf.String(), err)
	}
	for _, want := range []string{"\r\n", "* 1 FETCH (BODY[] {3}\r\n"} {
		line, err = r.ReadLine()
		if err != nil || string(line) != want {
			t.Fatalf("line = %q, %v; want %q", line, err, want)
		}
	}
	r.Expect(3)
	got, err := r.ReadLiteral(nil)
	if err != nil || string(got) != "abc" {
		t.Fatalf("ReadLiteral = %q %v", got, err)
	}
	line, _ = r.ReadLine()
	if string(line) != " FLAGS (\\Seen))\r\n" {
		t.Fatalf("continuation = %q", line)
	}
	// An unterminated last line is an unexpected EOF, not a line.
	if _, err := r.ReadLine(); err != io.ErrUnexpectedEOF {
		t.Fatalf("last = %v", err)
	}
}

func TestReadLineLong(t *testing.T) {
	long := strings.Repeat("x", 3*readBufSize) + "\r\nnext\r\n"
	r := NewReader(strings.NewReader(long), 4*readBufSize)
	line, err := r.ReadLine()
	if err != nil || len(line) != 3*readBufSize+2 {
		t.Fatalf("long line: %d %v", len(line), err)
	}
	if line, _ = r.ReadLine(); string(line) != "next\r\n" {
		t.Fatalf("after long line: %q", line)
	}
	r = NewReader(strings.NewReader(strings.Repeat("y", 9000)+"\r\n"), 8000)
	if _, err := r.ReadLine(); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("over bound: %v", err)
	}
}

func TestCopyLiteralSplitAcrossReads(t *testing.T) {
	// The literal is partly in the bufio buffer, partly still unread.
	body := strings.Repeat("0123456789", 2000)
	r := NewReader(iotestHalf(strings.NewReader("x {20000}\r\n"+body+"tail\r\n")), 0)
	line, _ := r.ReadLine()
	lit, _ := TrailingLiteral(line)
	r.Expect(lit.Size)
	var buf bytes.Buffer
	if _, err := r.CopyLiteral(&buf); err != nil || buf.String() != body {
		t.Fatalf("copy: %v, len %d", err, buf.Len())
	}
	if line, _ := r.ReadLine(); string(line) != "tail\r\n" {
		t.Fatalf("tail = %q", line)
	}
}

// iotestHalf returns a reader that reads at most 1000 bytes per call.
func iotestHalf(r io.Reader) io.Reader { return &smallReader{r} }

type smallReader struct{ r io.Reader }

func (s *smallReader) Read(p []byte) (int, error) {
	if len(p) > 1000 {
		p = p[:1000]
	}
	return s.r.Read(p)
}

func TestTrailingLiteral(t *testing.T) {
	tests := []struct {
		line string
		ok   bool
		want Literal
	}{
		{"a LOGIN {3}\r\n", true, Literal{Size: 3, Sync: true, Start: 8}},
		{"a LOGIN {3+}\r\n", true, Literal{Size: 3, Start: 8}},
		{"a APPEND x ~{0}\r\n", true, Literal{Size: 0, Sync: true, Binary: true, Start: 11}},
		{"a APPEND x ~{12+}\n", true, Literal{Size: 12, Binary: true, Start: 11}},
		{"a NOOP\r\n", false, Literal{}},
		{"a X {}\r\n", false, Literal{}},
		{"a X {1a}\r\n", false, Literal{}},
		{"{5}\r\n", true, Literal{Size: 5, Sync: true}},
		// Too large for int64, still an announcement (issue 16): saturated.
		{"a X {99999999999999999999}\r\n", true, Literal{Size: math.MaxInt64, Sync: true, Start: 4}},
		{"a X 5}\r\n", false, Literal{}},
	}
	for _, tt := range tests {
		got, ok := TrailingLiteral([]byte(tt.line))
		if ok != tt.ok || got != tt.want {
			t.Errorf("TrailingLiteral(%q) = %+v %v, want %+v %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
	if s := string(AppendLiteralHeader(nil, Literal{Size: 7, Binary: true})); s != "~{7+}\r\n" {
		t.Errorf("AppendLiteralHeader = %q", s)
	}
}

func TestParseResponse(t *testing.T) {
	tests := []struct {
		line             string
		kind             RespKind
		tag, name, code  string
		codeArgs, text   string
		num              uint32
		hasNum, literals bool
	}{
		{line: "* 3 EXISTS\r\n", kind: RespUntagged, name: "EXISTS", num: 3, hasNum: true, literals: true},
		{line: "* 1 FETCH (BODY[] {5}\r\n", kind: RespUntagged, name: "FETCH", num: 1, hasNum: true, literals: true},
		{line: "* OK text {5}\r\n", kind: RespUntagged, name: "OK", text: "text {5}"},
		{line: "* OK [UIDVALIDITY 42] UIDs valid\r\n", kind: RespUntagged, name: "OK", code: "UIDVALIDITY", codeArgs: "42", text: "UIDs valid"},
		{line: "a1 OK [CAPABILITY IMAP4rev1 IDLE] done\r\n", kind: RespTagged, tag: "a1", name: "OK", code: "CAPABILITY", codeArgs: "IMAP4rev1 IDLE", text: "done"},
		{line: "a1 NO [CLOSED]\r\n", kind: RespTagged, tag: "a1", name: "NO", code: "CLOSED"},
		{line: "+ Ready for literal\r\n", kind: RespContinuation, text: "Ready for literal"},
		{line: "+\r\n", kind: RespContinuation},
		{line: "* CAPABILITY IMAP4rev1 {3}\r\n", kind: RespUntagged, name: "CAPABILITY", literals: true},
	}
	for _, tt := range tests {
		r, ok := ParseResponse([]byte(tt.line))
		if !ok {
			t.Errorf("ParseResponse(%q) failed", tt.line)
			continue
		}
		if r.Kind != tt.kind || string(r.Tag) != tt.tag || string(r.Name) != tt.name ||
			string(r.Code) != tt.code || string(r.CodeArgs) != tt.codeArgs ||
			string(r.Text) != tt.text || r.Num != tt.num || r.HasNum != tt.hasNum ||
			r.MayAnnounceLiteral() != tt.literals {
			t.Errorf("ParseResponse(%q) = %+v (literals %v)", tt.line, r, r.MayAnnounceLiteral())
		}
	}
	for _, bad := range []string{"", "\r\n", "*\r\n", "a1\r\n", "a1 FETCH x\r\n", "* 1\r\n"} {
		if _, ok := ParseResponse([]byte(bad)); ok {
			t.Errorf("ParseResponse(%q) accepted", bad)
		}
	}
}

func TestParseCommand(t *testing.T) {
	tests := []struct {
		line, tag, name string
		uid             bool
		rest            string
	}{
		{"a1 FETCH 1:* (FLAGS)\r\n", "a1", "FETCH", false, "1:* (FLAGS)\r\n"},
		{"x.y uid store 1 +FLAGS (\\Seen)\r\n", "x.y", "store", true, "1 +FLAGS (\\Seen)\r\n"},
		{"t NOOP\r\n", "t", "NOOP", false, "\r\n"},
		{"t NOOP", "t", "NOOP", false, ""},
	}
	for _, tt := range tests {
		c, ok := ParseCommand([]byte(tt.line))
		if !ok || string(c.Tag) != tt.tag || string(c.Name) != tt.name || c.UID != tt.uid || tt.line[c.Args:] != tt.rest {
			t.Errorf("ParseCommand(%q) = %+v %v", tt.line, c, ok)
		}
	}
	for _, bad := range []string{"", "+ NOOP\r\n", "a1\r\n", "a1 \r\n", "a1 UID\r\n", "(a NOOP\r\n"} {
		if _, ok := ParseCommand([]byte(bad)); ok {
			t.Errorf("ParseCommand(%q) accepted", bad)
		}
	}
}

func TestDecoderStrings(t *testing.T) {
	d := NewDecoder([]byte("a LOGIN \"al\\\"ice\" {6}\r\nse cr\"\r\n"))
	tag, _ := d.Tag()
	d.ExpectSP()
	name, _ := d.ExpectAtom()
	d.ExpectSP()
	user, _ := d.ExpectAString()
	d.ExpectSP()
	pass, _ := d.ExpectAString()
	d.ExpectCRLF()
	if d.Err() != nil || string(tag) != "a" || string(name) != "LOGIN" || user != `al"ice` || pass != "se cr\"" {
		t.Fatalf("got %q %q %q %q err %v", tag, name, user, pass, d.Err())
	}
	if !d.EOL() {
		t.Fatalf("rest %q", d.Rest())
	}
	d = NewDecoder([]byte(`"unterminated`))
	if _, ok := d.AString(); ok || d.Pos() != 0 {
		t.Fatalf("unterminated quoted accepted")
	}
	d = NewDecoder([]byte(`"bad\q"`))
	if _, ok := d.Quoted(); ok {
		t.Fatalf("bad escape accepted")
	}
	d = NewDecoder([]byte("{10}\r\nshort"))
	if _, ok := d.Literal(); ok {
		t.Fatalf("short literal accepted")
	}
	d = NewDecoder([]byte("NIL NILS"))
	if _, isNil, ok := d.NString(); !ok || !isNil {
		t.Fatalf("NIL not read")
	}
	d.SP()
	if _, _, ok := d.NString(); ok {
		t.Fatalf("NILS read as NIL")
	}
}

func TestSkipValue(t *testing.T) {
	d := NewDecoder([]byte("(UID 4 BODY[HEADER.FIELDS (FROM TO)] {3}\r\nabc FLAGS (\\Seen $x) X \"q)\")\r\n"))
	if !d.SkipList() || !d.EOL() {
		t.Fatalf("SkipList stopped at %d: %q", d.Pos(), d.Rest())
	}
	d = NewDecoder([]byte("(unclosed (x)\r\n"))
	if d.SkipList() || d.Pos() != 0 {
		t.Fatalf("unclosed list skipped")
	}
}

// FuzzWire feeds arbitrary bytes through the Reader and parsers, as the
// relay does, and checks they neither panic nor lose track of literals.
func FuzzWire(f *testing.F) {
	seeds := []string{
		"a1 LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
		"a2 APPEND INBOX (\\Seen) ~{4}\r\n\x00\x01\x02\x03\r\n",
		"* 1 FETCH (UID 7 BODY[] {5}\r\nhello FLAGS (\\Seen))\r\n",
		"* OK [UIDVALIDITY 1] x {5}\r\n",
		"a3 SEARCH OR (1:3 NOT 5) KEYWORD 1\r\n",
		"+ idling\r\nDONE\r\n",
		"* CAPABILITY IMAP4rev1 LITERAL+\r\na4 OK [CAPABILITY IMAP4rev1] done\r\n",
		"* 3 EXPUNGE\r\n* 4 EXISTS\r\n",
		"a5 UID STORE 1:* +FLAGS.SILENT (\\Deleted)\r\n",
		"{99999999999999999999}\r\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bufio.NewReader(bytes.NewReader(data)), 256)
		consumed := 0
		for i := 0; i < 1000; i++ {
			line, err := r.ReadLine()
			if err != nil {
				return
			}
			consumed += len(line)
			if consumed > len(data) {
				t.Fatalf("read %d bytes of %d", consumed, len(data))
			}
			ParseCommand(line)
			if resp, ok := ParseResponse(line); ok {
				_ = resp.MayAnnounceLiteral()
			}
			d := NewDecoder(line)
			for d.SkipValue() || d.SP() {
			}
			if lit, ok := TrailingLiteral(line); ok {
				if lit.Size < 0 || lit.Start >= len(line) {
					t.Fatalf("bad literal %+v in %q", lit, line)
				}
				r.Expect(lit.Size)
				n, err := r.CopyLiteral(io.Discard)
				consumed += int(n)
				if err != nil {
					return
				}
			}
		}
	})
}

// TestSkipListDeep: a million nested lists are skipped without recursion
// (issue 16: the recursive form overflowed the stack and killed the
// process), balanced or not.
func TestSkipListDeep(t *testing.T) {
	const depth = 1 << 20
	b := append(bytes.Repeat([]byte("("), depth), bytes.Repeat([]byte(")"), depth)...)
	d := NewDecoder(append(b, " x\r\n"...))
	if !d.SkipList() || d.Pos() != 2*depth {
		t.Fatalf("balanced: skipped to %d", d.Pos())
	}
	d = NewDecoder(append(bytes.Repeat([]byte("("), depth), "\r\n"...))
	if d.SkipList() || d.Pos() != 0 {
		t.Fatalf("unbalanced: skipped to %d", d.Pos())
	}
}
