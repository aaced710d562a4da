package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// pyClient is a Python imaplib session: LOGIN or AUTHENTICATE PLAIN,
// CREATE, APPEND, SELECT, FETCH, STORE, SEARCH, COPY, EXPUNGE, LOGOUT. It
// prints "ok" and the SHA-256 of each fetched BODY[] so the test can
// compare with a direct run.
const pyClient = `
import hashlib, imaplib, os, sys
host, port = os.environ["IMAP_ADDR"].rsplit(":", 1)
user, pw, mech, box = os.environ["IMAP_USER"], os.environ["IMAP_PASS"], os.environ["IMAP_MECH"], os.environ["IMAP_BOX"]
M = imaplib.IMAP4(host, int(port))
if mech == "plain":
    M.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (user, pw)).encode())
else:
    M.login(user, pw)
def ok(r):
    if r[0] != "OK":
        print("FAIL", r); sys.exit(1)
    return r[1]
if os.environ.get("IMAP_CREATE") == "1":
    ok(M.create(box))
    for i in range(3):
        body = ("Subject: py %d\r\nMessage-ID: <py%d@test>\r\n\r\n" % (i, i) + "line %d\r\n" % i * (200 * (i + 1))).encode()
        ok(M.append(box, "(\\Flagged)" if i == 1 else None, None, body))
n = int(ok(M.select(box))[0])
assert n == 3, n
for num in range(1, n + 1):
    data = ok(M.fetch(str(num), "(BODY.PEEK[])"))
    print("body", num, hashlib.sha256(data[0][1]).hexdigest())
ok(M.store("2", "+FLAGS", "(\\Seen)"))
print("search", ok(M.search(None, "SEEN"))[0].decode())
print("flagged", ok(M.search(None, "FLAGGED"))[0].decode())
ok(M.copy("1:2", "INBOX"))
ok(M.store("3", "+FLAGS", "(\\Deleted)"))
print("expunge", [x.decode() for x in ok(M.expunge()) if x])
M.logout()
print("ok")
`

func runPy(t *testing.T, addr, user, mech, box string, create bool) string {
	t.Helper()
	cmd := exec.Command("python3", "-c", pyClient)
	cmd.Env = append(os.Environ(), "IMAP_ADDR="+addr, "IMAP_USER="+user, "IMAP_PASS="+testUsers[user],
		"IMAP_MECH="+mech, "IMAP_BOX="+box)
	if create {
		cmd.Env = append(cmd.Env, "IMAP_CREATE=1")
	}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "ok") {
		t.Fatalf("python imaplib via %s (%s): %v\n%s", addr, mech, err, out)
	}
	return string(out)
}

// TestPythonImaplib runs the same imaplib session through uidgate and
// directly; every answer must match.
func TestPythonImaplib(t *testing.T) {
	for _, kind := range allKinds {
		t.Run(kind, func(t *testing.T) {
			checkNoLeaks(t)
			be := startBackend(t, kind)
			g := startGate(t, gateOpts{backend: deployedBackend(kind, be.Addr)})
			viaBox, directBox := mailboxName(kind, "py-via"), mailboxName(kind, "py-direct")
			// bob's password has a space and quotes: LOGIN must quote it.
			via := runPy(t, g.Addr, "bob", "login", viaBox, true)
			direct := runPy(t, be.Addr, "bob", "login", directBox, true)
			if via != direct {
				t.Errorf("imaplib through uidgate:\n%s\ndirect:\n%s", via, direct)
			}
			// AUTHENTICATE PLAIN on a second session sees the same (expunged) box.
			via2 := runPy2(t, g.Addr, "bob", viaBox)
			direct2 := runPy2(t, be.Addr, "bob", directBox)
			if via2 != direct2 {
				t.Errorf("second session through uidgate:\n%s\ndirect:\n%s", via2, direct2)
			}
		})
	}
}

// runPy2 logs in with AUTHENTICATE PLAIN and lists what is left.
func runPy2(t *testing.T, addr, user, box string) string {
	t.Helper()
	script := `
import imaplib, os
host, port = os.environ["IMAP_ADDR"].rsplit(":", 1)
M = imaplib.IMAP4(host, int(port))
M.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (os.environ["IMAP_USER"], os.environ["IMAP_PASS"])).encode())
typ, data = M.select(os.environ["IMAP_BOX"], readonly=True)
print(typ, data)
typ, data = M.fetch("1:*", "(FLAGS RFC822.SIZE)")
for d in data:
    print(d.decode())
M.logout()
print("ok")
`
	cmd := exec.Command("python3", "-c", script)
	cmd.Env = append(os.Environ(), "IMAP_ADDR="+addr, "IMAP_USER="+user, "IMAP_PASS="+testUsers[user], "IMAP_BOX="+box)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "ok") {
		t.Fatalf("python AUTHENTICATE PLAIN via %s: %v\n%s", addr, err, out)
	}
	return string(out)
}

// TestMbsync syncs a maildir both ways through uidgate against each real
// server, in its deployed configuration, with isync's mbsync, and checks
// the messages round-trip byte for byte. mbsync prefixes folder names with
// the server's personal NAMESPACE ("INBOX." on Cyrus), so its
// configuration is the same for all.
func TestMbsync(t *testing.T) {
	if _, err := exec.LookPath("mbsync"); err != nil {
		t.Fatalf("mbsync not installed (run .ci/install-deps): %v", err)
	}
	eachKind(t, allKinds, testMbsync)
}

func testMbsync(t *testing.T, kind string) {
	be := startBackend(t, kind)
	g := startGate(t, gateOpts{backend: deployedBackend(kind, be.Addr)})
	dir := t.TempDir()
	local := filepath.Join(dir, "local") + "/"
	for _, sub := range []string{"INBOX", "Work"} {
		for _, d := range []string{"cur", "new", "tmp"} {
			if err := os.MkdirAll(filepath.Join(local, sub, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := map[string][]byte{}
	for i, sub := range []string{"INBOX", "INBOX", "Work"} {
		msg := message(fmt.Sprintf("mbsync %d", i), 2000+i*40000)
		want[subjectOf(msg)] = msg
		name := fmt.Sprintf("100%d.M%dP1.host", i, i)
		if err := os.WriteFile(filepath.Join(local, sub, "new", name), msg, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	host, port, _ := strings.Cut(g.Addr, ":")
	rc := fmt.Sprintf(`IMAPAccount gate
Host %s
Port %s
User alice
Pass %s
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account gate

MaildirStore local
Path %s
Inbox %sINBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
`, host, port, testUsers["alice"], local, local)
	rcFile := filepath.Join(dir, "mbsyncrc")
	if err := os.WriteFile(rcFile, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	mbsync := func() {
		t.Helper()
		out, err := exec.Command("mbsync", "-c", rcFile, "-a").CombinedOutput()
		if err != nil {
			t.Fatalf("mbsync: %v\n%s", err, out)
		}
	}
	mbsync()
	// The server now holds the three messages, byte for byte.
	d := login(t, be.Addr, "alice")
	got := map[string][]byte{}
	for _, box := range []string{"INBOX", mailboxName(kind, "Work")} {
		if _, err := d.Select(box, nil).Wait(); err != nil {
			t.Fatalf("select %s: %v", box, err)
		}
		for _, b := range fetchBodies(t, d) {
			got[subjectOf(b)] = stripTUID(b)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("server has %d messages, want %d", len(got), len(want))
	}
	for k, w := range want {
		if !bytes.Equal(got[k], w) {
			t.Errorf("message %q changed on the way up:\n%q\nwant\n%q", k, tailString(string(got[k]), 200), tailString(string(w), 200))
		}
	}
	// A message delivered on the server comes down on the next sync.
	delivered := message("delivered for mbsync", 3000)
	be.Deliver(t, "alice", delivered)
	if _, err := d.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := d.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	mbsync()
	var names []string
	found := false
	for _, sub := range []string{"cur", "new"} {
		entries, _ := os.ReadDir(filepath.Join(local, "INBOX", sub))
		for _, e := range entries {
			names = append(names, sub+"/"+e.Name())
			b, _ := os.ReadFile(filepath.Join(local, "INBOX", sub, e.Name()))
			// The maildir holds LF line ends; LMTP added trace headers on top.
			tail := bytes.ReplaceAll(delivered[bytes.Index(delivered, []byte("Subject:")):], []byte("\r\n"), []byte("\n"))
			if bytes.HasSuffix(stripTUID(b), tail) {
				found = true
			}
		}
	}
	sort.Strings(names)
	if !found {
		t.Errorf("delivered message not synced down; INBOX has %v", names)
	}
	flagged := 0
	for _, n := range names {
		if strings.Contains(n, ":2,") && strings.Contains(n[strings.Index(n, ":2,"):], "F") {
			flagged++
		}
	}
	if flagged != 1 {
		t.Errorf("want 1 flagged message locally after sync, got %d in %v", flagged, names)
	}
}

func subjectOf(msg []byte) string {
	_, rest, _ := bytes.Cut(msg, []byte("Subject: "))
	subj, _, _ := bytes.Cut(rest, []byte("\r\n"))
	return string(subj)
}

// stripTUID removes the X-TUID header mbsync adds to messages it moves.
func stripTUID(msg []byte) []byte {
	i := bytes.Index(msg, []byte("X-TUID: "))
	if i < 0 {
		return msg
	}
	j := bytes.IndexByte(msg[i:], '\n')
	return append(append([]byte{}, msg[:i]...), msg[i+j+1:]...)
}
