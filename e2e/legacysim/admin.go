package legacysim

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
)

// XGROUNDTRUTH, for scripts (admin user only):
//
//	C: a1 XGROUNDTRUTH alice INBOX
//	S: * XGROUNDTRUTH MAILBOX "alice" "INBOX" UIDVALIDITY 1199145601 UIDNEXT 4 MESSAGES 2 FAULTS "stale-msgno"
//	S: * XGROUNDTRUTH MESSAGE 1 FLAGS (\Seen) MESSAGE-ID "m1@example.org"
//	S: * XGROUNDTRUTH MESSAGE 3 FLAGS () MESSAGE-ID "m3@example.org"
//	S: * XGROUNDTRUTH SEEN "1"
//	S: * XGROUNDTRUTH WRITE 7 SESSION 2 OP "STORE" FLAGS (\Deleted) KIND seq NUM 2 UID 3 INTENDED 2 WRONG
//	S: a1 OK XGROUNDTRUTH completed
//
// The mailbox defaults to INBOX. WRITE lines are the write records for that
// mailbox (see WriteRecord), oldest first, ending in WRONG or RIGHT.
//
// imapserver has no hook for unknown commands, so the command is taken out
// of the byte stream before imapserver sees it, by wireConn.

const (
	adminCommand = "XGROUNDTRUTH"
	// maxWireLine bounds the lines wireConn scans; a longer line is passed
	// through in pieces (imapserver rejects lines over 50 KiB anyway).
	maxWireLine = 64 << 10
	// rawWriteTimeout bounds writes that bypass imapserver, like its own
	// respWriteTimeout.
	rawWriteTimeout = 30 * time.Second
)

// wireConn is the connection imapserver reads and writes. It passes bytes
// through, except that it answers XGROUNDTRUTH itself. It keeps track of
// literals ({n} / {n+}) so that it only looks at the start of commands, and
// answers an admin command only when imapserver asks for more input, which
// happens once it has answered every command before it.
type wireConn struct {
	net.Conn
	srv  *Server
	sess atomic.Pointer[session]

	wmu sync.Mutex // one writer at a time: imapserver, Idle, raw writes

	br      *bufio.Reader
	pending []byte // bytes ready for imapserver
	litLeft int64  // literal bytes still to pass through
	atStart bool   // the next line starts a command
	inIdle  bool   // the last command was IDLE: the next line is DONE

	// idleMu guards between. between is set while imapserver waits for the
	// first byte of a command with everything before it answered: no command
	// is in progress, and imapserver cannot write until it gets the lock
	// back. EarlyExpunge's pushes happen then (see session.pusher).
	idleMu  sync.Mutex
	between bool
}

func newWireConn(c net.Conn, srv *Server) *wireConn {
	return &wireConn{Conn: c, srv: srv, br: bufio.NewReaderSize(c, 4096), atStart: true}
}

func (c *wireConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.Conn.Write(p)
}

// writeRaw writes whole response lines that imapserver did not produce.
func (c *wireConn) writeRaw(p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.Conn.SetWriteDeadline(time.Now().Add(rawWriteTimeout))
	defer c.Conn.SetWriteDeadline(time.Time{})
	_, err := c.Conn.Write(p)
	return err
}

func (c *wireConn) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		if c.litLeft > 0 {
			if int64(len(p)) > c.litLeft {
				p = p[:c.litLeft]
			}
			n, err := c.br.Read(p)
			c.litLeft -= int64(n)
			return n, err
		}
		var line []byte
		var err error
		if c.atStart && !c.inIdle && c.br.Buffered() == 0 {
			c.idleMu.Lock()
			c.between = true
			c.idleMu.Unlock()
			if sess := c.sess.Load(); sess != nil {
				sess.pushWake()
			}
			line, err = c.br.ReadSlice('\n')
			c.idleMu.Lock() // waits for a push in progress
			c.between = false
			c.idleMu.Unlock()
		} else {
			line, err = c.br.ReadSlice('\n')
		}
		if err == bufio.ErrBufferFull {
			// Over-long line: pass it on; it cannot be ours.
			c.pending = append(c.pending[:0], line...)
			c.atStart = false
			break
		}
		if len(line) == 0 {
			return 0, err
		}
		start := c.atStart
		c.atStart = true
		if start {
			c.inIdle = !c.inIdle && isIdle(line)
		}
		if err == nil {
			if n, ok := literalSize(line); ok {
				c.litLeft = n
				c.atStart = false
			}
		}
		if start && err == nil {
			if tag, args, ok := parseAdmin(line); ok {
				if werr := c.answerAdmin(tag, args); werr != nil {
					return 0, werr
				}
				continue
			}
		}
		c.pending = append(c.pending[:0], line...)
		if err != nil && len(c.pending) == 0 {
			return 0, err
		}
		break
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// literalSize reports the size of a literal announced at the end of line
// ("{n}\r\n" or "{n+}\r\n", RFC 7888).
func literalSize(line []byte) (int64, bool) {
	line = bytes.TrimRight(line, "\r\n")
	if !bytes.HasSuffix(line, []byte("}")) {
		return 0, false
	}
	i := bytes.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	num := bytes.TrimSuffix(line[i+1:len(line)-1], []byte("+"))
	n, err := strconv.ParseInt(string(num), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// isIdle recognises "tag IDLE" (RFC 2177).
func isIdle(line []byte) bool {
	_, name, ok := strings.Cut(strings.TrimRight(string(line), "\r\n"), " ")
	return ok && strings.EqualFold(name, "IDLE")
}

// parseAdmin recognises "tag XGROUNDTRUTH args...".
func parseAdmin(line []byte) (tag string, args []string, ok bool) {
	s := strings.TrimRight(string(line), "\r\n")
	tag, rest, found := strings.Cut(s, " ")
	if !found || tag == "" {
		return "", nil, false
	}
	name, rest, _ := strings.Cut(rest, " ")
	if !strings.EqualFold(name, adminCommand) {
		return "", nil, false
	}
	return tag, splitAStrings(rest), true
}

// splitAStrings splits atoms and quoted strings.
func splitAStrings(s string) []string {
	var out []string
	for {
		s = strings.TrimLeft(s, " ")
		if s == "" {
			return out
		}
		if s[0] != '"' {
			word, rest, _ := strings.Cut(s, " ")
			out = append(out, word)
			s = rest
			continue
		}
		var b strings.Builder
		i := 1
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
			}
			b.WriteByte(s[i])
		}
		out = append(out, b.String())
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func flagList(flags []imap.Flag) string {
	l := make([]string, len(flags))
	for i, f := range flags {
		l[i] = string(f)
	}
	return "(" + strings.Join(l, " ") + ")"
}

func (c *wireConn) answerAdmin(tag string, args []string) error {
	var b bytes.Buffer
	c.groundTruth(&b, tag, args)
	return c.writeRaw(b.Bytes())
}

func (c *wireConn) groundTruth(b *bytes.Buffer, tag string, args []string) {
	srv := c.srv
	sess := c.sess.Load()
	srv.mu.Lock()
	isAdmin := sess != nil && sess.user != nil && srv.cfg.Admin != "" && sess.user.name == srv.cfg.Admin
	srv.mu.Unlock()
	if !isAdmin {
		fmt.Fprintf(b, "%s NO [NOPERM] %s is for the admin user only\r\n", tag, adminCommand)
		return
	}
	if len(args) < 1 || len(args) > 2 {
		fmt.Fprintf(b, "%s BAD Usage: %s user [mailbox]\r\n", tag, adminCommand)
		return
	}
	mailboxName := "INBOX"
	if len(args) == 2 {
		mailboxName = args[1]
	}
	srv.mu.Lock()
	mb, err := srv.mailboxLocked(args[0], mailboxName)
	if err != nil {
		srv.mu.Unlock()
		fmt.Fprintf(b, "%s NO [NONEXISTENT] %v\r\n", tag, err)
		return
	}
	fmt.Fprintf(b, "* %s MAILBOX %s %s UIDVALIDITY %d UIDNEXT %d MESSAGES %d FAULTS %s\r\n",
		adminCommand, quote(mb.user.name), quote(mb.name), mb.uidValidity, mb.uidNext, len(mb.msgs), quote(srv.cfg.Faults()))
	var seen imap.UIDSet
	for _, msg := range mb.msgs {
		fs := srv.trueFlagsLocked(mb, msg)
		if fs.has(imap.FlagSeen) {
			seen.AddNum(msg.uid)
		}
		fmt.Fprintf(b, "* %s MESSAGE %d FLAGS %s MESSAGE-ID %s\r\n", adminCommand, msg.uid, flagList(fs.list()), quote(msg.msgID))
	}
	fmt.Fprintf(b, "* %s SEEN %s\r\n", adminCommand, quote(seen.String()))
	for _, w := range srv.writes {
		if w.User != mb.user.name || w.Mailbox != mb.name {
			continue
		}
		verdict := "RIGHT"
		if w.Wrong() {
			verdict = "WRONG"
		}
		kind := "none"
		if w.Num != 0 {
			kind = w.Kind.String()
		}
		fmt.Fprintf(b, "* %s WRITE %d SESSION %d OP %s FLAGS %s KIND %s NUM %d UID %d INTENDED %d %s\r\n",
			adminCommand, w.Seq, w.Session, quote(string(w.Op)), flagList(w.Flags), kind, w.Num, w.UID, w.Intended, verdict)
	}
	srv.mu.Unlock()
	fmt.Fprintf(b, "%s OK %s completed\r\n", tag, adminCommand)
}
