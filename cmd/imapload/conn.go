package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

const (
	// readBufSize is the bufio buffer per connection. Response lines are
	// short; literals bypass it (see discard), so it only needs to hold a
	// few lines at a time.
	readBufSize = 64 << 10
	// discardBufSize is the buffer a literal is read into and dropped: big
	// reads keep the client's syscall count per MB low, so that the load
	// generator is not what limits a bulk FETCH.
	discardBufSize = 256 << 10
	// maxLine bounds one response line. A plain "* SEARCH" of a 1,000,000
	// message mailbox is one ~7 MB line; only its head and tail are kept.
	maxLine = 64 << 20
	// lineHead is how much of a line longer than the buffer is kept: enough
	// for the tag and the response name.
	lineHead = 256
	// lineTail is how much of a long line's end is kept: enough for a
	// literal announcement "{n}" (at most 19 digits, RFC 9051 §9).
	lineTail = 32
)

// errNotOK reports a tagged NO or BAD (or a BYE) where OK was required.
var errNotOK = errors.New("imapload: command failed")

// conn is one IMAP client connection speaking the raw line protocol:
// commands are written as lines, responses are read as lines, literals in
// responses are streamed (discarded or fed to a sink), never buffered.
type conn struct {
	nc      net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	timeout time.Duration // bound of one command's round trip
	tagN    uint64
	tag     []byte // the last tag issued
	long    []byte // a long line's head and tail (see readLine)
	scratch []byte // literal bytes read and dropped
	bytesIn int64  // everything read, lines and literals
}

// dial connects to addr and reads the greeting, which must be "* OK".
func dial(addr string, timeout time.Duration) (*conn, error) {
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	c := &conn{
		nc:      nc,
		r:       bufio.NewReaderSize(nc, readBufSize),
		w:       bufio.NewWriterSize(nc, 4<<10),
		timeout: timeout,
	}
	nc.SetReadDeadline(time.Now().Add(timeout))
	line, _, err := c.readLine()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !bytes.HasPrefix(line, []byte("* OK")) {
		nc.Close()
		return nil, fmt.Errorf("greeting: %q", trimEOL(line))
	}
	return c, nil
}

// Close closes the connection without LOGOUT.
func (c *conn) Close() error { return c.nc.Close() }

// login sends LOGIN with user and password as quoted strings and requires
// OK.
func (c *conn) login(user, pass string) error {
	_, err := c.simple("LOGIN " + quote(user) + " " + quote(pass))
	if err != nil {
		return fmt.Errorf("login %s: %w", user, err)
	}
	return nil
}

// logout sends LOGOUT, waits for its tagged response and closes.
func (c *conn) logout() error {
	_, err := c.simple("LOGOUT")
	c.Close()
	return err
}

// selectBox SELECTs (or EXAMINEs) mailbox and returns its message count
// from the "* n EXISTS" response.
func (c *conn) selectBox(mailbox string, examine bool) (uint32, error) {
	verb := "SELECT "
	if examine {
		verb = "EXAMINE "
	}
	var exists uint32
	tag := c.send(verb + quote(mailbox))
	status, err := c.wait(tag, func(line []byte) {
		if n, ok := untaggedNumber(line, "EXISTS"); ok {
			exists = n
		}
	}, nil)
	if err == nil && status != "OK" {
		err = fmt.Errorf("%s%s: %s: %w", verb, mailbox, status, errNotOK)
	}
	return exists, err
}

// simple sends one command line (without tag and CRLF) and waits for its
// tagged response, which must be OK. It returns the time the round trip
// took.
func (c *conn) simple(cmd string) (time.Duration, error) {
	start := time.Now()
	tag := c.send(cmd)
	status, err := c.wait(tag, nil, nil)
	d := time.Since(start)
	if err == nil && status != "OK" {
		err = fmt.Errorf("%q: %s: %w", firstWord(cmd), status, errNotOK)
	}
	return d, err
}

// send writes "tag cmd\r\n", flushes, and returns the tag. Write errors
// surface on the following read.
func (c *conn) send(cmd string) []byte {
	c.startCommand()
	c.w.WriteString(cmd)
	c.w.WriteString("\r\n")
	c.w.Flush()
	return c.tag
}

// startCommand writes a fresh tag and a space, and arms the round-trip
// deadline.
func (c *conn) startCommand() {
	c.tagN++
	c.tag = strconv.AppendUint(append(c.tag[:0], 't'), c.tagN, 10)
	c.w.Write(c.tag)
	c.w.WriteByte(' ')
	deadline := time.Now().Add(c.timeout)
	c.nc.SetDeadline(deadline)
}

// literalSink receives the body of a literal in a response: it must read
// exactly n bytes from r. nil discards literals.
type literalSink func(n int64, r io.Reader) error

// wait reads responses until the tagged one for tag and returns its status
// ("OK", "NO" or "BAD"). Every other response line (without the literal
// contents and without continuation lines) goes to onLine if set; each
// literal goes to sink (or is discarded). A connection that closes after
// an untagged BYE reports the BYE; one that answers LOGOUT (BYE, then the
// tagged OK: RFC 9051 §6.1.3) is fine.
func (c *conn) wait(tag []byte, onLine func(line []byte), sink literalSink) (string, error) {
	cont := false // the line continues a response after a literal
	var bye string
	for {
		line, lit, err := c.readLine()
		if err != nil {
			if bye != "" {
				return "", fmt.Errorf("%q: %w", bye, errNotOK)
			}
			return "", err
		}
		if !cont {
			if rest, ok := bytes.CutPrefix(line, tag); ok && len(rest) > 0 && rest[0] == ' ' {
				return firstWord(string(rest[1:])), nil
			}
			if bytes.HasPrefix(line, []byte("* BYE")) {
				bye = string(trimEOL(line))
			}
			if onLine != nil {
				onLine(line)
			}
		}
		cont = lit >= 0
		if lit >= 0 {
			if sink != nil {
				lr := &io.LimitedReader{R: c.r, N: lit}
				err = sink(lit, lr)
				if err == nil && lr.N != 0 {
					err = fmt.Errorf("literal sink left %d bytes", lr.N)
				}
				c.bytesIn += lit - lr.N
			} else {
				err = c.discard(lit)
			}
			if err != nil {
				return "", err
			}
		}
	}
}

// waitContinuation reads until the "+" continuation request (true) or the
// tagged response for tag (false, with its status).
func (c *conn) waitContinuation(tag []byte) (bool, string, error) {
	for {
		line, lit, err := c.readLine()
		if err != nil {
			return false, "", err
		}
		if line[0] == '+' {
			return true, "", nil
		}
		if rest, ok := bytes.CutPrefix(line, tag); ok && len(rest) > 0 && rest[0] == ' ' {
			return false, firstWord(string(rest[1:])), nil
		}
		if lit >= 0 {
			if err := c.discard(lit); err != nil {
				return false, "", err
			}
		}
	}
}

// discard reads and drops n literal bytes: what bufio holds first, then
// straight from the socket in large reads.
func (c *conn) discard(n int64) error {
	if b := int64(c.r.Buffered()); b > 0 {
		k, _ := c.r.Discard(int(min(b, n)))
		n -= int64(k)
		c.bytesIn += int64(k)
	}
	if n == 0 {
		return nil
	}
	if c.scratch == nil {
		c.scratch = make([]byte, discardBufSize)
	}
	for n > 0 {
		// bufio is empty, so reading the socket directly keeps the order.
		k, err := c.nc.Read(c.scratch[:min(n, int64(len(c.scratch)))])
		n -= int64(k)
		c.bytesIn += int64(k)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// readLine returns the next response line with its CRLF and the size of
// the literal it announces (-1 if none). The slice is valid until the next
// call. A line longer than the buffer is returned as its first lineHead
// bytes followed by its last lineTail bytes: enough to find the tag and a
// literal, without holding megabytes.
func (c *conn) readLine() ([]byte, int64, error) {
	frag, err := c.r.ReadSlice('\n')
	if err == nil {
		c.bytesIn += int64(len(frag))
		return frag, trailingLiteral(frag), nil
	}
	if err != bufio.ErrBufferFull {
		return nil, -1, eofUnexpected(err, len(frag))
	}
	n := len(frag)
	c.long = append(c.long[:0], frag[:min(len(frag), lineHead)]...)
	head := len(c.long)
	c.long = appendTail(c.long, head, frag)
	for err == bufio.ErrBufferFull {
		if n > maxLine {
			return nil, -1, fmt.Errorf("response line longer than %d bytes", maxLine)
		}
		frag, err = c.r.ReadSlice('\n')
		n += len(frag)
		c.long = appendTail(c.long, head, frag)
	}
	c.bytesIn += int64(n)
	if err != nil {
		return nil, -1, eofUnexpected(err, n)
	}
	return c.long, trailingLiteral(c.long), nil
}

// appendTail keeps in b[head:] the last lineTail bytes of everything
// appended so far, frag included.
func appendTail(b []byte, head int, frag []byte) []byte {
	if len(frag) >= lineTail {
		return append(b[:head], frag[len(frag)-lineTail:]...)
	}
	b = append(b, frag...)
	if extra := len(b) - head - lineTail; extra > 0 {
		copy(b[head:], b[head+extra:])
		b = b[:len(b)-extra]
	}
	return b
}

func eofUnexpected(err error, n int) error {
	if err == io.EOF && n > 0 {
		return io.ErrUnexpectedEOF
	}
	return err
}

// trailingLiteral returns the size announced by "{n}" or "{n+}" (or with a
// "~" for literal8) at the end of line, or -1.
func trailingLiteral(line []byte) int64 {
	b := trimEOL(line)
	if len(b) < 3 || b[len(b)-1] != '}' {
		return -1
	}
	end := len(b) - 1
	if b[end-1] == '+' {
		end--
	}
	i := end
	for i > 0 && b[i-1] >= '0' && b[i-1] <= '9' {
		i--
	}
	if i == end || end-i > 18 || i == 0 || b[i-1] != '{' {
		return -1
	}
	n, err := strconv.ParseInt(string(b[i:end]), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// untaggedNumber parses "* <n> <name>" (e.g. "* 17 EXISTS").
func untaggedNumber(line []byte, name string) (uint32, bool) {
	rest, ok := bytes.CutPrefix(line, []byte("* "))
	if !ok {
		return 0, false
	}
	sp := bytes.IndexByte(rest, ' ')
	if sp <= 0 {
		return 0, false
	}
	word := trimEOL(rest[sp+1:])
	if end := bytes.IndexByte(word, ' '); end >= 0 {
		word = word[:end]
	}
	if !bytes.EqualFold(word, []byte(name)) {
		return 0, false
	}
	n, err := strconv.ParseUint(string(rest[:sp]), 10, 32)
	return uint32(n), err == nil
}

func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

func firstWord(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' || s[i] == '\r' || s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}

// quote returns s as an IMAP quoted string (RFC 9051 §4.3).
func quote(s string) string {
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return string(append(b, '"'))
}
