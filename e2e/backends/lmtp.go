package backends

import (
	"fmt"
	"net"
	"net/textproto"
	"time"
)

// lmtpTimeout bounds one whole LMTP delivery; a loopback server answers in
// milliseconds.
const lmtpTimeout = 30 * time.Second

// deliverLMTP delivers msg to the local user rcpt through the LMTP server at
// network/addr (RFC 2033): LHLO, MAIL FROM, RCPT TO, DATA, QUIT. net/smtp
// cannot be used, as it only speaks EHLO/HELO.
func deliverLMTP(network, addr, rcpt string, msg []byte) error {
	c, err := net.DialTimeout(network, addr, lmtpTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(lmtpTimeout)); err != nil {
		return err
	}
	tc := textproto.NewConn(c)

	if _, _, err := tc.ReadResponse(220); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	// RFC 2033 §4.1: LHLO replaces EHLO; the reply is multi-line 250.
	steps := []struct {
		cmd  string
		code int
	}{
		{"LHLO localhost", 250},
		{"MAIL FROM:<uidgate-e2e@localhost>", 250},
		{"RCPT TO:<" + rcpt + ">", 250},
		{"DATA", 354},
	}
	for _, s := range steps {
		if err := cmd(tc, s.cmd, s.code); err != nil {
			return err
		}
	}
	// DotWriter dot-stuffs (RFC 5321 §4.5.2), turns bare LF into CRLF and
	// ends with the lone "." line.
	w := tc.DotWriter()
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	// RFC 2033 §4.2: after the final dot, one reply per accepted recipient;
	// there is exactly one.
	if _, _, err := tc.ReadResponse(250); err != nil {
		return fmt.Errorf("DATA to <%s>: %w", rcpt, err)
	}
	return cmd(tc, "QUIT", 221)
}

// cmd sends one LMTP command line and expects a reply with code.
func cmd(tc *textproto.Conn, line string, code int) error {
	if err := tc.PrintfLine("%s", line); err != nil {
		return fmt.Errorf("%s: %w", line, err)
	}
	if _, _, err := tc.ReadResponse(code); err != nil {
		return fmt.Errorf("%s: %w", line, err)
	}
	return nil
}
