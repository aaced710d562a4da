package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"uidgate/proxy/locks"
	"uidgate/rules"
	"uidgate/upstream"
)

// lockSession is one client session through a Server to the scripted
// backend, logged in with INBOX selected (UIDs 1..3).
type lockSession struct {
	t    *testing.T
	c    net.Conn
	cr   *bufio.Reader
	b    net.Conn
	br   *bufio.Reader
	done chan struct{}
}

func (s *lockSession) send(c net.Conn, line string) {
	s.t.Helper()
	if _, err := io.WriteString(c, line+"\r\n"); err != nil {
		s.t.Fatal(err)
	}
}

func (s *lockSession) expect(r *bufio.Reader, c net.Conn, want string) {
	s.t.Helper()
	c.SetReadDeadline(time.Now().Add(stepTimeout))
	got, err := r.ReadString('\n')
	if err != nil || got != want+"\r\n" {
		s.t.Fatalf("want %q, got %q (%v)", want, got, err)
	}
}

func startLockSession(t *testing.T, srv *Server, sb *scriptedBackend) *lockSession {
	cc, sc := tcpPair(t)
	s := &lockSession{t: t, c: cc, cr: bufio.NewReader(cc), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		srv.ServeConn(t.Context(), sc, Listener{TLS: upstream.TLSNone})
	}()
	t.Cleanup(func() {
		cc.Close()
		<-s.done
	})
	s.cr.ReadString('\n') // greeting
	s.send(cc, "L LOGIN alice secret-pw")
	select {
	case s.b = <-sb.conn:
	case <-time.After(stepTimeout):
		t.Fatal("no backend connection")
	}
	t.Cleanup(func() { s.b.Close() })
	s.br = bufio.NewReader(s.b)
	io.WriteString(s.b, "* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN SASL-IR] hi\r\n")
	s.br.ReadString('\n')
	io.WriteString(s.b, "ug1 OK [CAPABILITY IMAP4rev1 LITERAL+] in\r\n")
	s.expect(s.cr, cc, "L OK [CAPABILITY IMAP4rev1 LITERAL+] in")
	s.send(cc, "s SELECT INBOX")
	s.expect(s.br, s.b, "s SELECT INBOX")
	io.WriteString(s.b, "* 3 EXISTS\r\ns OK [READ-WRITE] done\r\n")
	s.expect(s.br, s.b, "UG.1 UID SEARCH ALL")
	io.WriteString(s.b, "* SEARCH 1 2 3\r\nUG.1 OK done\r\n")
	s.expect(s.cr, cc, "* 3 EXISTS")
	s.expect(s.cr, cc, "s OK [READ-WRITE] done")
	return s
}

// TestLocksAcrossSessions: a STORE waits for another session's STORE on
// the same mailbox, times out with NO [INUSE] without reaching the backend,
// and gets the lock once the holder's connection dies.
func TestLocksAcrossSessions(t *testing.T) {
	sb := newScriptedBackend(t)
	backend := &upstream.Backend{Name: "scripted", Address: sb.ln.Addr().String(), TLS: upstream.TLSNone}
	mem := &locks.Memory{}
	srv := &Server{
		Route:       func(string) (*upstream.Backend, bool) { return backend, true },
		Locks:       mem,
		LockTimeout: 300 * time.Millisecond,
	}
	patient := &Server{Route: srv.Route, Locks: mem, LockTimeout: 10 * time.Second}
	a := startLockSession(t, srv, sb)
	b := startLockSession(t, srv, sb)
	c := startLockSession(t, patient, sb)

	a.send(a.c, "a1 STORE 1 +FLAGS (\\Deleted)")
	a.expect(a.br, a.b, "a1 UID STORE 1 +FLAGS (\\Deleted)")
	// A's STORE holds mailbox:scripted/INBOX until its tagged response.
	b.send(b.c, "b1 STORE 2 +FLAGS (\\Flagged)")
	b.expect(b.cr, b.c, "b1 NO [INUSE] Mailbox in use by another session, try again")
	// Reads never wait.
	b.send(b.c, "b2 FETCH 2 (FLAGS)")
	b.expect(b.br, b.b, "b2 UID FETCH 2 (FLAGS)")
	io.WriteString(b.b, "b2 OK done\r\n")
	b.expect(b.cr, b.c, "b2 OK done")

	// C waits (patiently); A's client goes away; C's STORE then goes upstream.
	c.send(c.c, "c1 STORE 2 +FLAGS (\\Flagged)")
	key := rules.MailboxKey("scripted", "alice/INBOX")
	for deadline := time.Now().Add(stepTimeout); mem.Waiting(key) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("C's STORE never queued for the mailbox key")
		}
		time.Sleep(time.Millisecond)
	}
	a.c.Close()
	<-a.done
	c.expect(c.br, c.b, "c1 UID STORE 2 +FLAGS (\\Flagged)")
	io.WriteString(c.b, "c1 OK done\r\n")
	c.expect(c.cr, c.c, "c1 OK done")
	if n := mem.Held(); n != 0 {
		t.Errorf("%d keys still held after every command ended", n)
	}
}

// TestLockKeysPerCommand checks through a session which commands wait
// behind a held mailbox key and which pass.
func TestLockKeysPerCommand(t *testing.T) {
	sb := newScriptedBackend(t)
	backend := &upstream.Backend{Name: "scripted", Address: sb.ln.Addr().String(), TLS: upstream.TLSNone, ExplicitSeen: true}
	mem := &locks.Memory{}
	srv := &Server{
		Route:         func(string) (*upstream.Backend, bool) { return backend, true },
		Locks:         mem,
		LockTimeout:   200 * time.Millisecond,
		Serialization: rules.Serialization{SelectTakesSeen: true},
	}
	s := startLockSession(t, srv, sb)
	release, err := mem.Acquire(t.Context(), []string{rules.MailboxKey("scripted", "alice/INBOX"), rules.SeenKey("scripted", "alice")})
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	waits := []string{
		"STORE 1 +FLAGS (\\Seen)", "UID STORE 1 -FLAGS (\\Seen)", "FETCH 1 BODY[]", "EXPUNGE",
		"UID EXPUNGE 1", "COPY 1 INBOX", "MOVE 1 Trash", "APPEND INBOX {1+}\r\nx", "CLOSE", "UNSELECT",
	}
	for i, cmd := range waits {
		tag := fmt.Sprintf("w%d", i)
		s.send(s.c, tag+" "+cmd)
		s.expect(s.cr, s.c, tag+" NO [INUSE] Mailbox in use by another session, try again")
	}
	passes := []string{"FETCH 1 (FLAGS)", "SEARCH ALL", "STATUS INBOX (MESSAGES)", "NOOP", "COPY 1 Archive"}
	for i, cmd := range passes {
		tag := fmt.Sprintf("p%d", i)
		s.send(s.c, tag+" "+cmd)
		s.b.SetReadDeadline(time.Now().Add(stepTimeout))
		got, err := s.br.ReadString('\n')
		if err != nil || !strings.HasPrefix(got, tag+" ") {
			t.Fatalf("%s: backend got %q (%v)", cmd, got, err)
		}
		io.WriteString(s.b, tag+" OK done\r\n")
		s.expect(s.cr, s.c, tag+" OK done")
	}
}

// TestLocksPerUserMailbox: on a backend without the Cyrus namespace, one
// user's INBOX lock does not hold back another user's STORE.
func TestLocksPerUserMailbox(t *testing.T) {
	sb := newScriptedBackend(t)
	backend := &upstream.Backend{Name: "scripted", Address: sb.ln.Addr().String(), TLS: upstream.TLSNone}
	mem := &locks.Memory{}
	srv := &Server{
		Route:       func(string) (*upstream.Backend, bool) { return backend, true },
		Locks:       mem,
		LockTimeout: 200 * time.Millisecond,
	}
	s := startLockSession(t, srv, sb) // logs in as alice
	// bob holds his own INBOX: alice is not held back.
	release, err := mem.Acquire(t.Context(), []string{rules.MailboxKey("scripted", "bob/INBOX")})
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	s.send(s.c, "a1 STORE 1 +FLAGS (\\Flagged)")
	s.expect(s.br, s.b, "a1 UID STORE 1 +FLAGS (\\Flagged)")
	io.WriteString(s.b, "a1 OK done\r\n")
	s.expect(s.cr, s.c, "a1 OK done")
	// alice's own INBOX held: she waits, and gets INUSE.
	rel2, err := mem.Acquire(t.Context(), []string{rules.MailboxKey("scripted", "alice/INBOX")})
	if err != nil {
		t.Fatal(err)
	}
	defer rel2()
	s.send(s.c, "a2 STORE 1 +FLAGS (\\Flagged)")
	s.expect(s.cr, s.c, "a2 NO [INUSE] Mailbox in use by another session, try again")
}
