package legacysim

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"runtime/debug"
	"strings"
	"time"
)

const (
	// lmtpTimeout bounds the wait for each LMTP command or the DATA body.
	lmtpTimeout = 5 * time.Minute
	// maxLMTPMessage bounds a delivered message (kept in memory).
	maxLMTPMessage = maxAppend
	// maxLMTPRecipients bounds RCPT TO per transaction.
	maxLMTPRecipients = 100
)

// ServeLMTP accepts LMTP (RFC 2033) connections on ln until Close, which
// closes ln, and delivers each message to the INBOX of every accepted
// recipient (the local part of the address names the user) through the same
// delivery path as APPEND. It returns ErrServerClosed after Close.
func (s *Server) ServeLMTP(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.lmtpListeners[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.lmtpListeners, ln)
		s.mu.Unlock()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return ErrServerClosed
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveLMTPConn(c)
	}
}

func (s *Server) serveLMTPConn(c net.Conn) {
	defer s.wg.Done()
	defer s.forgetConn(c)
	defer c.Close()
	defer func() {
		if v := recover(); v != nil {
			s.log.Error().Msgf("lmtp: panic: %v\n%s", v, debug.Stack())
		}
	}()
	tc := textproto.NewConn(c)
	reply := func(format string, args ...any) error {
		c.SetWriteDeadline(time.Now().Add(lmtpTimeout))
		return tc.PrintfLine(format, args...)
	}
	if reply("220 legacysim LMTP ready") != nil {
		return
	}
	var rcpts []string
	haveFrom := false
	for {
		c.SetReadDeadline(time.Now().Add(lmtpTimeout))
		line, err := tc.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "LHLO":
			err = reply("250-legacysim\r\n250-8BITMIME\r\n250 PIPELINING")
		case "MAIL":
			haveFrom, rcpts = true, nil
			err = reply("250 2.1.0 OK")
		case "RCPT":
			switch u := s.lmtpUser(arg); {
			case !haveFrom:
				err = reply("503 5.5.1 MAIL first")
			case u == "":
				err = reply("550 5.1.1 No such user")
			case len(rcpts) >= maxLMTPRecipients:
				err = reply("452 4.5.3 Too many recipients")
			default:
				rcpts = append(rcpts, u)
				err = reply("250 2.1.5 OK")
			}
		case "DATA":
			if len(rcpts) == 0 {
				err = reply("503 5.5.1 No valid recipients")
				break
			}
			if err = reply("354 Go ahead"); err != nil {
				break
			}
			c.SetReadDeadline(time.Now().Add(lmtpTimeout))
			var body []byte
			body, err = io.ReadAll(io.LimitReader(tc.DotReader(), maxLMTPMessage+1))
			if err != nil {
				return
			}
			// textproto's DotReader turns CRLF into LF; IMAP wants CRLF.
			body = []byte(strings.ReplaceAll(string(body), "\n", "\r\n"))
			// RFC 2033 §4.2: one reply per accepted recipient.
			for _, u := range rcpts {
				if len(body) > maxLMTPMessage {
					err = reply("552 5.3.4 Message too big")
				} else if _, derr := s.Deliver(u, "INBOX", body); derr != nil {
					err = reply("451 4.3.0 %v", derr)
				} else {
					err = reply("250 2.0.0 Delivered to %s", u)
				}
				if err != nil {
					break
				}
			}
			haveFrom, rcpts = false, nil
		case "RSET":
			haveFrom, rcpts = false, nil
			err = reply("250 2.0.0 OK")
		case "NOOP":
			err = reply("250 2.0.0 OK")
		case "QUIT":
			reply("221 2.0.0 Bye")
			return
		default:
			err = reply("500 5.5.2 %s", fmt.Sprintf("Unknown command %q", verb))
		}
		if err != nil {
			return
		}
	}
}

// lmtpUser returns the existing user an RCPT TO argument names, or "".
func (s *Server) lmtpUser(arg string) string {
	arg = strings.TrimSpace(arg)
	if len(arg) < 3 || !strings.EqualFold(arg[:3], "TO:") {
		return ""
	}
	addr := strings.TrimSpace(arg[3:])
	if i := strings.IndexByte(addr, ' '); i >= 0 { // ESMTP parameters
		addr = addr[:i]
	}
	addr = strings.TrimSuffix(strings.TrimPrefix(addr, "<"), ">")
	local := addr
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		local = addr[:i]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, name := range []string{addr, local} {
		if _, ok := s.users[name]; ok {
			return name
		}
	}
	return ""
}
