package backends

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// kinds lists every backend with its start function. StartCyrus23 skips
// where the Cyrus 2.3 sources are absent.
var kinds = []struct {
	name  string
	start func(TB, map[string]string) *Server
}{
	{"dovecot", StartDovecot},
	{"cyrus", StartCyrus},
	{"cyrus23", StartCyrus23},
}

// idleWait bounds the wait for an EXISTS pushed during IDLE: Dovecot pushes
// at once (inotify), Cyrus 3.6 through idled (or its 1 s poll fallback),
// Cyrus 2.3 by polling every second.
const idleWait = 10 * time.Second

func testUsers() map[string]string {
	return map[string]string{"alice": "alice-pw", "bob": "bob-pw"}
}

// TestMain fails the run if goroutines outlive the tests.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 {
		if err := checkGoroutines(before); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// checkGoroutines waits briefly for goroutines to wind down to baseline.
func checkGoroutines(baseline int) error {
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			return fmt.Errorf("goroutine leak: %d running, %d at start\n%s", runtime.NumGoroutine(), baseline, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// login dials s and logs in as user; the client is closed at cleanup.
func login(t *testing.T, s *Server, user string, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(s.Addr, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", s.Addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, s.Users[user]).Wait(); err != nil {
		t.Fatalf("%s: LOGIN %s: %v\n%s", s.Kind, user, err, s.Log())
	}
	return c
}

// fetchBody returns BODY.PEEK[] of message seq in the selected mailbox.
func fetchBody(t *testing.T, c *imapclient.Client, seq uint32) []byte {
	t.Helper()
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(seq), &imap.FetchOptions{
		BodySection: []*imap.FetchItemBodySection{section},
	}).Collect()
	if err != nil {
		t.Fatalf("FETCH %d BODY.PEEK[]: %v", seq, err)
	}
	if len(msgs) != 1 {
		t.Fatalf("FETCH %d: got %d messages", seq, len(msgs))
	}
	return msgs[0].FindBodySection(section)
}

// numMessages returns STATUS mailbox (MESSAGES).
func numMessages(t *testing.T, c *imapclient.Client, mailbox string) uint32 {
	t.Helper()
	st, err := c.Status(mailbox, &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		t.Fatalf("STATUS %s: %v", mailbox, err)
	}
	return *st.NumMessages
}

func TestAppendFetchDeliver(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			s := k.start(t, testUsers())
			if s.Kind != k.name {
				t.Errorf("Kind = %q, want %q", s.Kind, k.name)
			}
			c := login(t, s, "alice", nil)

			appended := []byte("From: bob@example.org\r\nTo: alice@example.org\r\nSubject: appended\r\n\r\nhello\r\n.leading dot\r\n")
			ac := c.Append("INBOX", int64(len(appended)), nil)
			if _, err := ac.Write(appended); err != nil {
				t.Fatalf("APPEND write: %v", err)
			}
			if err := ac.Close(); err != nil {
				t.Fatalf("APPEND close: %v", err)
			}
			if _, err := ac.Wait(); err != nil {
				t.Fatalf("APPEND: %v", err)
			}

			sel, err := c.Select("INBOX", nil).Wait()
			if err != nil {
				t.Fatalf("SELECT INBOX: %v", err)
			}
			if sel.NumMessages != 1 {
				t.Fatalf("SELECT INBOX: %d messages, want 1", sel.NumMessages)
			}
			if got := fetchBody(t, c, 1); !bytes.Equal(got, appended) {
				t.Errorf("FETCH 1 BODY[] = %q, want %q", got, appended)
			}

			// Bare LF and a line starting with '.' test the LMTP client's
			// CRLF conversion and dot-stuffing.
			// Date and Message-ID are present, or Cyrus's lmtpd adds them.
			delivered := "From: carol@example.org\nTo: alice@example.org\nSubject: delivered\n" +
				"Date: Mon, 2 Mar 2026 10:00:00 +0000\nMessage-ID: <delivered@example.org>\n" +
				"\n.\n..two dots\nend\n"
			s.Deliver(t, "alice", []byte(delivered))
			if err := c.Noop().Wait(); err != nil {
				t.Fatalf("NOOP: %v", err)
			}
			if n := c.Mailbox().NumMessages; n != 2 {
				t.Fatalf("after Deliver and NOOP: %d messages, want 2", n)
			}
			want := strings.ReplaceAll(delivered, "\n", "\r\n")
			got := string(fetchBody(t, c, 2))
			// An MTA may prepend trace fields (Return-Path, Received, ...);
			// the message itself must follow byte for byte.
			if !strings.HasSuffix(got, want) {
				t.Errorf("delivered message = %q, want suffix %q", got, want)
			}

			// Another user's INBOX is separate.
			b := login(t, s, "bob", nil)
			if n := numMessages(t, b, "INBOX"); n != 0 {
				t.Errorf("bob's INBOX has %d messages, want 0", n)
			}
			s.Deliver(t, "bob", []byte("Subject: for bob\r\n\r\nhi\r\n"))
			if n := numMessages(t, b, "INBOX"); n != 1 {
				t.Errorf("bob's INBOX has %d messages after Deliver, want 1", n)
			}

			// A wrong password is refused.
			w, err := imapclient.DialInsecure(s.Addr, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if err := w.Login("alice", "wrong").Wait(); err == nil {
				t.Error("LOGIN with a wrong password succeeded")
			}
		})
	}
}

func TestDeliverWakesIdle(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			s := k.start(t, testUsers())
			exists := make(chan uint32, 16)
			c := login(t, s, "alice", &imapclient.Options{
				UnilateralDataHandler: &imapclient.UnilateralDataHandler{
					Mailbox: func(d *imapclient.UnilateralDataMailbox) {
						if d.NumMessages != nil {
							exists <- *d.NumMessages
						}
					},
				},
			})
			if _, err := c.Select("INBOX", nil).Wait(); err != nil {
				t.Fatalf("SELECT: %v", err)
			}
			idle, err := c.Idle()
			if err != nil {
				t.Fatalf("IDLE: %v", err)
			}
			s.Deliver(t, "alice", []byte("Subject: wake up\r\n\r\nhi\r\n"))
			timeout := time.NewTimer(idleWait)
			defer timeout.Stop()
			select {
			case n := <-exists:
				if n != 1 {
					t.Errorf("EXISTS %d during IDLE, want 1", n)
				}
			case <-timeout.C:
				t.Errorf("no EXISTS within %v of Deliver during IDLE\n%s", idleWait, s.Log())
			}
			if err := idle.Close(); err != nil {
				t.Errorf("IDLE close: %v", err)
			}
			if err := idle.Wait(); err != nil {
				t.Errorf("IDLE: %v", err)
			}
		})
	}
}

// TestTwoSessionsOneInbox checks that a session learns of another session's
// EXPUNGE on the same INBOX at its next NOOP, as "* 2 EXPUNGE" (RFC 9051
// §7.5.1), and then numbers the messages the same way as the other.
func TestTwoSessionsOneInbox(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			s := k.start(t, testUsers())
			a := login(t, s, "alice", nil)
			for i := 1; i <= 3; i++ {
				s.Deliver(t, "alice", fmt.Appendf(nil, "Subject: m%d\r\n\r\nbody %d\r\n", i, i))
			}
			expunged := make(chan uint32, 16)
			b := login(t, s, "alice", &imapclient.Options{
				UnilateralDataHandler: &imapclient.UnilateralDataHandler{
					Expunge: func(seq uint32) { expunged <- seq },
				},
			})
			for name, c := range map[string]*imapclient.Client{"a": a, "b": b} {
				sel, err := c.Select("INBOX", nil).Wait()
				if err != nil {
					t.Fatalf("session %s: SELECT: %v", name, err)
				}
				if sel.NumMessages != 3 {
					t.Fatalf("session %s: SELECT: %d messages, want 3", name, sel.NumMessages)
				}
			}

			deleted := &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}
			if err := a.Store(imap.SeqSetNum(2), deleted, nil).Close(); err != nil {
				t.Fatalf("session a: STORE 2 +FLAGS.SILENT (\\Deleted): %v", err)
			}
			gone, err := a.Expunge().Collect()
			if err != nil {
				t.Fatalf("session a: EXPUNGE: %v", err)
			}
			if !slices.Equal(gone, []uint32{2}) {
				t.Errorf("session a: EXPUNGE answered %v, want [2]", gone)
			}

			if err := b.Noop().Wait(); err != nil {
				t.Fatalf("session b: NOOP: %v", err)
			}
			// The handler runs on the client's reader before NOOP's tagged
			// OK completes the command, so the EXPUNGE is there already.
			var seen []uint32
			for len(expunged) > 0 {
				seen = append(seen, <-expunged)
			}
			if !slices.Equal(seen, []uint32{2}) {
				t.Fatalf("session b: NOOP brought EXPUNGE %v, want [2]\n%s", seen, s.Log())
			}
			if n := b.Mailbox().NumMessages; n != 2 {
				t.Errorf("session b: %d messages after the EXPUNGE, want 2", n)
			}
			// Cyrus's lmtpd adds trace fields, Date and Message-ID.
			if got := string(fetchBody(t, b, 2)); !strings.Contains(got, "Subject: m3\r\n") || !strings.HasSuffix(got, "\r\n\r\nbody 3\r\n") {
				t.Errorf("session b: FETCH 2 BODY.PEEK[] = %q, want message m3", got)
			}
		})
	}
}

func TestSideBySide(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			a := k.start(t, map[string]string{"alice": "a-pw"})
			b := k.start(t, map[string]string{"alice": "b-pw"})
			if a.Addr == b.Addr || a.Dir == b.Dir || a.lmtpAddr == b.lmtpAddr {
				t.Fatalf("instances share Addr, Dir or LMTP: %+v, %+v", a, b)
			}
			a.Deliver(t, "alice", []byte("Subject: to a\r\n\r\nhi\r\n"))
			ca := login(t, a, "alice", nil)
			cb := login(t, b, "alice", nil)
			if n := numMessages(t, ca, "INBOX"); n != 1 {
				t.Errorf("instance a: %d messages, want 1", n)
			}
			if n := numMessages(t, cb, "INBOX"); n != 0 {
				t.Errorf("instance b: %d messages, want 0", n)
			}
		})
	}
}

func TestCleanupStopsEverything(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			var s *Server
			t.Run("instance", func(t *testing.T) {
				s = k.start(t, map[string]string{"alice": "pw"})
				c := login(t, s, "alice", nil)
				// A session still open at cleanup must not keep a process.
				if _, err := c.Select("INBOX", nil).Wait(); err != nil {
					t.Fatalf("SELECT: %v", err)
				}
				if len(groupMembers(s.proc.pgid)) < 2 {
					t.Errorf("process group %d: want master and children, got %v", s.proc.pgid, groupMembers(s.proc.pgid))
				}
			})
			if s == nil {
				t.Fatal("no server started")
			}
			if !s.proc.exited() {
				t.Error("master process still running after cleanup")
			}
			if left := groupMembers(s.proc.pgid); len(left) > 0 {
				t.Errorf("processes %v of group %d left after cleanup", left, s.proc.pgid)
			}
			if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
				c.Close()
				t.Errorf("%s still accepts connections after cleanup", s.Addr)
			}
			if _, err := os.Stat(s.Dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("instance dir %s: %v, want removed", s.Dir, err)
			}
			if s.Log() == "" {
				t.Error("Log() empty after cleanup")
			}
		})
	}
}

// TestForeignGreetingIsNotReady checks that a greeting from a listener that
// is not the started server's (its port was taken meanwhile) is not taken
// for readiness: the start fails as retryable and leaves nothing behind.
func TestForeignGreetingIsNotReady(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "* OK foreign server\r\n")
			c.Close()
		}
	}()
	sleep := findBinary(t, "sleep", "/bin/sleep", "/usr/bin/sleep")
	var dir string
	s, err := startOnce("fake", 0, func(d string, _ []int) (*instance, error) {
		dir = d
		if err := mkdirs(d, -1, -1, "log"); err != nil {
			return nil, err
		}
		return &instance{
			server:    &Server{Kind: "fake", Addr: ln.Addr().String(), Dir: d, lmtpNetwork: "tcp", lmtpAddr: ln.Addr().String()},
			argv:      []string{sleep, "60"},
			stdoutLog: filepath.Join(d, "log", "out.log"),
		}, nil
	})
	if err == nil {
		s.shutdown(t)
		t.Fatalf("start succeeded on a foreign greeting")
	}
	var se *startError
	if !errors.Is(err, errPortTaken) || !errors.As(err, &se) || !se.retry {
		t.Errorf("err = %v, want a retryable %v", err, errPortTaken)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("instance dir %s: %v, want removed", dir, err)
	}
}
