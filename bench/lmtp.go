package main

import (
	"fmt"
	"net"
	"net/textproto"
	"time"
)

// lmtpTimeout bounds one LMTP transaction: a loopback server answers in
// milliseconds.
const lmtpTimeout = 30 * time.Second

// lmtpClient is one LMTP connection (RFC 2033) that fills mailboxes: many
// transactions in a row, each to one or more recipients. (e2e/backends'
// Deliver opens a connection per message and recipient.)
type lmtpClient struct {
	nc net.Conn
	tc *textproto.Conn
}

// dialLMTP connects to the LMTP server at network/addr and greets it.
func dialLMTP(network, addr string) (*lmtpClient, error) {
	nc, err := net.DialTimeout(network, addr, lmtpTimeout)
	if err != nil {
		return nil, err
	}
	c := &lmtpClient{nc: nc, tc: textproto.NewConn(nc)}
	nc.SetDeadline(time.Now().Add(lmtpTimeout))
	if _, _, err := c.tc.ReadResponse(220); err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	// RFC 2033 §4.1: LHLO replaces EHLO; the reply is multi-line 250.
	if err := c.cmd(250, "LHLO localhost"); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// deliver delivers msg (CRLF line ends) to every one of rcpts in one
// transaction.
func (c *lmtpClient) deliver(rcpts []string, msg []byte) error {
	c.nc.SetDeadline(time.Now().Add(lmtpTimeout))
	if err := c.cmd(250, "MAIL FROM:<uidgate-bench@localhost>"); err != nil {
		return err
	}
	for _, r := range rcpts {
		if err := c.cmd(250, "RCPT TO:<"+r+">"); err != nil {
			return err
		}
	}
	if err := c.cmd(354, "DATA"); err != nil {
		return err
	}
	// DotWriter dot-stuffs (RFC 5321 §4.5.2) and ends with the lone ".".
	w := c.tc.DotWriter()
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	// RFC 2033 §4.2: after the final dot, one reply per accepted recipient.
	for _, r := range rcpts {
		if _, _, err := c.tc.ReadResponse(250); err != nil {
			return fmt.Errorf("DATA for <%s>: %w", r, err)
		}
	}
	return nil
}

// close ends the session with QUIT and closes the connection; calling it
// again does nothing.
func (c *lmtpClient) close() error {
	if c.tc == nil {
		return nil
	}
	c.nc.SetDeadline(time.Now().Add(lmtpTimeout))
	err := c.cmd(221, "QUIT")
	c.tc.Close()
	c.tc = nil
	return err
}

// cmd sends one command line and expects a reply with code.
func (c *lmtpClient) cmd(code int, line string) error {
	if err := c.tc.PrintfLine("%s", line); err != nil {
		return fmt.Errorf("%s: %w", line, err)
	}
	if _, _, err := c.tc.ReadResponse(code); err != nil {
		return fmt.Errorf("%s: %w", line, err)
	}
	return nil
}
