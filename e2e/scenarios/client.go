package scenarios

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

const (
	// maxResponseLine bounds one response line (literals excluded); RFC 2683
	// §3.2.1.5 asks servers for at least 8000 octets, the scenarios' lines
	// are far shorter.
	maxResponseLine = 64 << 10
	// maxResponseLiteral bounds a literal in a response: the scenarios'
	// messages are a few hundred bytes.
	maxResponseLiteral = 16 << 20
	// cmdTimeout bounds one command when the context has no earlier
	// deadline: a loopback server answers in milliseconds, a fault window
	// lasts at most a second.
	cmdTimeout = 30 * time.Second
)

// client is a deliberately simple IMAP client that speaks raw lines and uses
// message sequence numbers the way legacy clients do: it trusts the numbers
// a SEARCH returned until its next command.
type client struct {
	c      net.Conn
	br     *bufio.Reader
	tag    int
	exists uint32 // the client's message count: EXISTS, minus EXPUNGEs
	stop   func() bool
}

// response is one untagged response: its text (literals left as "{n}")
// and its literals.
type response struct {
	line string
	lits [][]byte
}

// statusError is a tagged NO or BAD.
type statusError struct {
	cmd, status, text string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s: %s %s", e.cmd, e.status, e.text)
}

// isStatus reports whether err is a tagged NO/BAD (the connection is fine).
func isStatus(err error) bool {
	var se *statusError
	return errors.As(err, &se)
}

// dialClient connects, reads the greeting and logs in.
func dialClient(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addr, user, pass string) (*client, error) {
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	nc, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	c := &client{c: nc, br: bufio.NewReader(nc)}
	c.stop = context.AfterFunc(ctx, func() { nc.Close() })
	c.deadline(ctx)
	line, err := c.readLine()
	if err != nil {
		c.close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(line, "* OK") {
		c.close()
		return nil, fmt.Errorf("greeting: %q", line)
	}
	if _, err := c.cmd(ctx, "LOGIN %s %s", quote(user), quote(pass)); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *client) close() {
	c.stop()
	c.c.Close()
}

func (c *client) deadline(ctx context.Context) {
	d := time.Now().Add(cmdTimeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	c.c.SetDeadline(d)
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// cmd sends one command and returns its untagged responses; a tagged NO or
// BAD is a *statusError.
func (c *client) cmd(ctx context.Context, format string, args ...any) ([]response, error) {
	return c.cmdLiteral(ctx, nil, format, args...)
}

// cmdLiteral sends a command whose last argument is the synchronizing
// literal lit (nil: none), waiting for the continuation request.
func (c *client) cmdLiteral(ctx context.Context, lit []byte, format string, args ...any) ([]response, error) {
	c.deadline(ctx)
	c.tag++
	tag := "s" + strconv.Itoa(c.tag)
	text := fmt.Sprintf(format, args...)
	line := tag + " " + text
	if lit != nil {
		line += " {" + strconv.Itoa(len(lit)) + "}"
	}
	name, _, _ := strings.Cut(text, " ")
	if _, err := io.WriteString(c.c, line+"\r\n"); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var out []response
	for {
		r, err := c.readResponse()
		if err != nil {
			return out, fmt.Errorf("%s: %w", name, err)
		}
		switch {
		case strings.HasPrefix(r.line, "+"):
			if lit == nil {
				return out, fmt.Errorf("%s: unexpected continuation request", name)
			}
			if _, err := c.c.Write(append(append([]byte(nil), lit...), '\r', '\n')); err != nil {
				return out, fmt.Errorf("%s: %w", name, err)
			}
			lit = nil
		case strings.HasPrefix(r.line, "* "):
			c.track(r.line)
			out = append(out, r)
		case strings.HasPrefix(r.line, tag+" "):
			status, rest, _ := strings.Cut(strings.TrimPrefix(r.line, tag+" "), " ")
			if strings.EqualFold(status, "OK") {
				return out, nil
			}
			return out, &statusError{cmd: name, status: status, text: rest}
		default:
			return out, fmt.Errorf("%s: unexpected response %q", name, r.line)
		}
	}
}

// track keeps the client's message count, as a client must (RFC 3501
// §7.3.1, §7.4.1).
func (c *client) track(line string) {
	f := strings.Fields(line)
	if len(f) < 3 {
		return
	}
	n, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return
	}
	switch strings.ToUpper(f[2]) {
	case "EXISTS":
		c.exists = uint32(n)
	case "EXPUNGE":
		if c.exists > 0 {
			c.exists--
		}
	}
}

func (c *client) readLine() (string, error) {
	var buf []byte
	for {
		chunk, err := c.br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if err == bufio.ErrBufferFull && len(buf) < maxResponseLine {
			continue
		}
		if err != nil {
			if err == bufio.ErrBufferFull {
				err = errors.New("response line too long")
			}
			return "", err
		}
		return strings.TrimRight(string(buf), "\r\n"), nil
	}
}

// readResponse reads one response with its literals.
func (c *client) readResponse() (response, error) {
	var r response
	var b strings.Builder
	for {
		line, err := c.readLine()
		if err != nil {
			return r, err
		}
		b.WriteString(line)
		n, ok := literalAtEnd(line)
		if !ok {
			r.line = b.String()
			return r, nil
		}
		if n > maxResponseLiteral {
			return r, fmt.Errorf("literal of %d bytes", n)
		}
		lit := make([]byte, n)
		if _, err := io.ReadFull(c.br, lit); err != nil {
			return r, err
		}
		r.lits = append(r.lits, lit)
	}
}

func literalAtEnd(line string) (int, bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSuffix(line[i+1:len(line)-1], "+"))
	return n, err == nil && n >= 0
}

// searchNums extracts the numbers of the untagged SEARCH responses.
func searchNums(rs []response) []uint32 {
	var nums []uint32
	for _, r := range rs {
		f := strings.Fields(r.line)
		if len(f) < 2 || !strings.EqualFold(f[1], "SEARCH") {
			continue
		}
		for _, s := range f[2:] {
			if n, err := strconv.ParseUint(s, 10, 32); err == nil {
				nums = append(nums, uint32(n))
			}
		}
	}
	return nums
}

// message builds a small RFC 5322 message.
func message(msgID, subject string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Legacy Sim <sim@uidgate.test>\r\n")
	fmt.Fprintf(&b, "To: user@uidgate.test\r\n")
	fmt.Fprintf(&b, "Subject: %s\r\n", subject)
	fmt.Fprintf(&b, "Date: Tue, 01 Jan 2008 00:00:00 +0000\r\n")
	fmt.Fprintf(&b, "Message-ID: <%s>\r\n", msgID)
	fmt.Fprintf(&b, "\r\n%s\r\n", subject)
	return b.Bytes()
}
