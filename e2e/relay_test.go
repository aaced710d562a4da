package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"uidgate/e2e/backends"
	"uidgate/upstream"
)

var testUsers = map[string]string{"alice": "alice-pass-1", "bob": "bob pass \"2\""}

func startBackend(t testing.TB, kind string) *backends.Server {
	switch kind {
	case "dovecot":
		return backends.StartDovecot(t, testUsers)
	case "cyrus":
		return backends.StartCyrus(t, testUsers)
	case "cyrus23":
		return backends.StartCyrus23(t, testUsers)
	}
	t.Fatalf("unknown backend %q", kind)
	return nil
}

// allKinds are the real backends of the matrix (issue 13), the server
// uidgate exists for first.
var allKinds = []string{"cyrus23", "cyrus", "dovecot"}

// eachKind runs test as one subtest per backend kind, each checked for
// leaked goroutines and connections.
func eachKind(t *testing.T, kinds []string, test func(t *testing.T, kind string)) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			checkNoLeaks(t)
			test(t, kind)
		})
	}
}

// deployedBackend is uidgate's configuration for kind as sites deploy it:
// for the Cyrus servers legacy, explicit \Seen and the Cyrus namespace;
// Dovecot, a compliant server, as it is.
func deployedBackend(kind, addr string) upstream.Backend {
	cyrus := kind != "dovecot"
	return upstream.Backend{Address: addr, Legacy: cyrus, ExplicitSeen: cyrus, CyrusNamespace: cyrus, IgnoreOutOfRange: cyrus}
}

// mailboxName gives a top-level mailbox name valid on the backend: Cyrus
// classic namespace puts a user's folders under INBOX.
func mailboxName(kind, name string) string {
	if kind == "cyrus" || kind == "cyrus23" {
		return "INBOX." + name
	}
	return name
}

func message(subject string, bodySize int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.org>\r\nSubject: %s\r\nMessage-ID: <%s@uidgate.test>\r\nDate: Sun, 29 Nov 2026 01:00:00 +0000\r\n\r\n", subject, strings.ReplaceAll(subject, " ", "-"))
	line := "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnop\r\n"
	for b.Len() < bodySize {
		b.WriteString(line)
	}
	return b.Bytes()
}

func login(t *testing.T, addr, user string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, testUsers[user]).Wait(); err != nil {
		t.Fatalf("login %s at %s: %v", user, addr, err)
	}
	return c
}

func appendMsg(t *testing.T, c *imapclient.Client, mbox string, msg []byte) {
	t.Helper()
	cmd := c.Append(mbox, int64(len(msg)), nil)
	if _, err := cmd.Write(msg); err != nil {
		t.Fatalf("append write: %v", err)
	}
	if err := cmd.Close(); err != nil {
		t.Fatalf("append close: %v", err)
	}
	if _, err := cmd.Wait(); err != nil {
		t.Fatalf("append: %v", err)
	}
}

// fetchBodies returns BODY[] of every message, keyed by UID.
func fetchBodies(t *testing.T, c *imapclient.Client) map[imap.UID][]byte {
	t.Helper()
	var all imap.SeqSet
	all.AddRange(1, 0)
	msgs, err := c.Fetch(all, &imap.FetchOptions{
		UID:         true,
		BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	out := make(map[imap.UID][]byte)
	for _, m := range msgs {
		for _, b := range m.BodySection {
			out[m.UID] = b.Bytes
		}
	}
	return out
}

// TestRelay drives go-imap's client through uidgate against each real
// server: every basic command, a 20 MB APPEND, IDLE with a delivery, and
// byte equality of BODY[] with a direct fetch.
func TestRelay(t *testing.T) {
	for _, kind := range allKinds {
		t.Run(kind, func(t *testing.T) {
			checkNoLeaks(t)
			be := startBackend(t, kind)
			g := startGate(t, gateOpts{backend: deployedBackend(kind, be.Addr)})
			testRelay(t, kind, be, g)
		})
	}
}

func testRelay(t *testing.T, kind string, be *backends.Server, g *gate) {
	c := login(t, g.Addr, "alice")
	if c.Caps().Has("COMPRESS=DEFLATE") || c.Caps().Has("NOTIFY") || c.Caps().Has(imap.Cap("CONTEXT=UPDATE")) {
		t.Errorf("filtered capability shown: %v", c.Caps())
	}
	if !c.Caps().Has(imap.CapIMAP4rev1) {
		t.Errorf("IMAP4rev1 missing: %v", c.Caps())
	}
	box := mailboxName(kind, "Project X")
	if err := c.Create(box, nil).Wait(); err != nil {
		t.Fatalf("create: %v", err)
	}
	small := [][]byte{message("one", 300), message("two", 5000), message("three", 70000)}
	for _, m := range small {
		appendMsg(t, c, box, m)
	}
	big := message("big", 20<<20)
	appendMsg(t, c, box, big)
	sel, err := c.Select(box, nil).Wait()
	if err != nil {
		t.Fatalf("select: %v", err)
	}
	if sel.NumMessages != 4 {
		t.Fatalf("EXISTS = %d, want 4", sel.NumMessages)
	}
	via := fetchBodies(t, c)
	d := login(t, be.Addr, "alice")
	if _, err := d.Select(box, nil).Wait(); err != nil {
		t.Fatalf("direct select: %v", err)
	}
	direct := fetchBodies(t, d)
	if len(via) != 4 || len(direct) != 4 {
		t.Fatalf("fetched %d through uidgate, %d direct", len(via), len(direct))
	}
	for uid, b := range direct {
		if !bytes.Equal(via[uid], b) {
			t.Errorf("UID %d: %d bytes through uidgate differ from %d direct", uid, len(via[uid]), len(b))
		}
	}
	want := append(append([][]byte{}, small...), big)
	for i, m := range want {
		if !bytes.Equal(direct[imap.UID(i+1)], m) {
			t.Errorf("UID %d does not hold what was appended", i+1)
		}
	}

	// STORE and SEARCH by message number.
	if err := c.Store(imap.SeqSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}, Silent: true}, nil).Close(); err != nil {
		t.Fatalf("store: %v", err)
	}
	res, err := c.Search(&imap.SearchCriteria{Flag: []imap.Flag{imap.FlagFlagged}}, nil).Wait()
	if err != nil {
		t.Fatalf("search: %v", err)
	}
	if got := res.AllSeqNums(); len(got) != 1 || got[0] != 2 {
		t.Errorf("SEARCH FLAGGED = %v, want [2]", got)
	}
	hdr, err := c.Search(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "three"}}}, nil).Wait()
	if err != nil || len(hdr.AllSeqNums()) != 1 || hdr.AllSeqNums()[0] != 3 {
		t.Errorf("SEARCH SUBJECT three = %v, %v", hdr, err)
	}

	// COPY, then EXPUNGE the first message.
	dst := mailboxName(kind, "Archive")
	if err := c.Create(dst, nil).Wait(); err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := c.Copy(imap.SeqSetNum(1, 3), dst).Wait(); err != nil {
		t.Fatalf("copy: %v", err)
	}
	if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		t.Fatalf("store deleted: %v", err)
	}
	expunged, err := c.Expunge().Collect()
	if err != nil || len(expunged) != 1 || expunged[0] != 1 {
		t.Fatalf("expunge = %v, %v; want [1]", expunged, err)
	}
	st, err := c.Status(dst, &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || st.NumMessages == nil || *st.NumMessages != 2 {
		t.Fatalf("status %s = %+v, %v", dst, st, err)
	}

	// IDLE through uidgate sees a delivery made by the MTA path (LMTP).
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("select INBOX: %v", err)
	}
	idleClient := newIdleClient(t, g.Addr, "alice")
	be.Deliver(t, "alice", message("delivered while idling", 1000))
	select {
	case n := <-idleClient.exists:
		if n < 1 {
			t.Errorf("EXISTS %d after delivery", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no EXISTS during IDLE within 30s")
	}
	idleClient.stop(t)

	if err := c.Logout().Wait(); err != nil {
		t.Errorf("logout: %v", err)
	}
	if strings.Contains(g.Logs.String(), testUsers["alice"]) {
		t.Errorf("password in uidgate log")
	}
}

type idler struct {
	c      *imapclient.Client
	cmd    *imapclient.IdleCommand
	exists chan uint32
}

func newIdleClient(t *testing.T, addr, user string) *idler {
	t.Helper()
	id := &idler{exists: make(chan uint32, 16)}
	c, err := imapclient.DialInsecure(addr, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(data *imapclient.UnilateralDataMailbox) {
				if data.NumMessages != nil {
					id.exists <- *data.NumMessages
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, testUsers[user]).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	id.c = c
	if id.cmd, err = c.Idle(); err != nil {
		t.Fatalf("idle: %v", err)
	}
	return id
}

func (id *idler) stop(t *testing.T) {
	t.Helper()
	if err := id.cmd.Close(); err != nil {
		t.Errorf("idle done: %v", err)
	}
	if err := id.cmd.Wait(); err != nil {
		t.Errorf("idle: %v", err)
	}
	if err := id.c.Noop().Wait(); err != nil {
		t.Errorf("noop after idle: %v", err)
	}
	id.c.Logout().Wait()
}

// randomBytes returns n random bytes (binary content for BINARY tests).
func randomBytes(n int) []byte {
	b := make([]byte, n)
	io.ReadFull(rand.Reader, b)
	return b
}
