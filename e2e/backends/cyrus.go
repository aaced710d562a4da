package backends

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// cyrusAdmin is the administrator that imapd.conf names in "admins".
const cyrusAdmin = "cyrus"

// imapTimeout bounds the administrator session that creates mailboxes.
const imapTimeout = 30 * time.Second

// cyrusLibexec holds Cyrus's service binaries from the cyrus-common package.
const cyrusLibexec = "/usr/lib/cyrus/bin"

// cyrusImapdConf is imapd.conf for one instance; see shared/BACKENDS.md.
// Placeholders: {{DIR}}. No option may be left empty: Cyrus treats that as
// fatal, and with no syslog it exits (code 78) without a word.
const cyrusImapdConf = `configdirectory: {{DIR}}/config
partition-default: {{DIR}}/spool
defaultpartition: default
sievedir: {{DIR}}/sieve
temp_path: {{DIR}}/tmp
mboxname_lockpath: {{DIR}}/config/lock
proc_path: {{DIR}}/config/proc
lmtpsocket: {{DIR}}/config/socket/lmtp
idlesocket: {{DIR}}/config/socket/idle
notifysocket: {{DIR}}/config/socket/notify
servername: localhost
admins: cyrus
allowplaintext: yes
sasl_mech_list: PLAIN LOGIN
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {{DIR}}/config/sasldb2
altnamespace: no
unixhierarchysep: no
virtdomains: off
lmtp_downcase_rcpt: yes
delete_mode: immediate
master_bind_errors_fatal: yes
imapidlepoll: 1
`

// cyrusConf is cyrus.conf for one instance. cyrmaster does not pass its -C
// to the services, so each cmd names the instance's imapd.conf, or it would
// use /var/lib/cyrus. idled pushes mailbox changes to imapd sessions in
// IDLE; imapidlepoll above is the fallback. Placeholders: {{DIR}}, {{LIB}},
// {{PKG}}, {{IMAP}}, {{LMTP}}.
const cyrusConf = `START {
  recover cmd="{{LIB}}/ctl_cyrusdb -C {{DIR}}/etc/imapd.conf -r"
}
SERVICES {
  imap cmd="{{PKG}}/imapd -C {{DIR}}/etc/imapd.conf" listen="127.0.0.1:{{IMAP}}" prefork=1 maxchild=200
  lmtp cmd="{{LIB}}/lmtpd -C {{DIR}}/etc/imapd.conf -a" listen="127.0.0.1:{{LMTP}}" prefork=0 maxchild=20
}
EVENTS {
  checkpoint cmd="{{LIB}}/ctl_cyrusdb -C {{DIR}}/etc/imapd.conf -c" period=30
}
DAEMON {
  idled cmd="{{PKG}}/idled -C {{DIR}}/etc/imapd.conf"
}
`

// cyrusPkgDir is where .ci/install-deps extracts the cyrus-imapd package.
func cyrusPkgDir() string {
	if d := os.Getenv("UIDGATE_CYRUS_DIR"); d != "" {
		return d
	}
	return "/opt/uidgate-cyrus"
}

// StartCyrus starts a private Cyrus IMAP 3.6 on free ports of 127.0.0.1 with
// the given users (sasldb passwords; names match [a-z0-9][a-z0-9_-]*), waits
// until it greets and creates each user's INBOX, "user.NAME", as the
// administrator (Server.AdminUser, "cyrus"). It fails the test, with the
// server log, if Cyrus is missing or cannot start; t.Cleanup stops it, waits
// for every process of the instance to exit and removes its directory.
//
// The namespace is Cyrus's classic one: folders are INBOX.sub, the separator
// is '.', and users cannot create top-level folders. Deliver uses the
// instance's LMTP port (lmtpd -a: no authentication).
func StartCyrus(t TB, users map[string]string) *Server {
	t.Helper()
	requireRoot(t)
	checkUsers(t, users)
	pkg := filepath.Join(cyrusPkgDir(), "usr/lib/cyrus/bin")
	master := findBinary(t, "cyrmaster", "/usr/sbin/cyrmaster")
	findBinary(t, "imapd (from the cyrus-imapd .deb)", filepath.Join(pkg, "imapd"))
	findBinary(t, "idled (from the cyrus-imapd .deb)", filepath.Join(pkg, "idled"))
	findBinary(t, "lmtpd", filepath.Join(cyrusLibexec, "lmtpd"))
	findBinary(t, "ctl_cyrusdb", filepath.Join(cyrusLibexec, "ctl_cyrusdb"))
	return startCyrusFlavour(t, cyrusFlavour{
		kind:      "cyrus",
		imapdConf: cyrusImapdConf,
		cyrusConf: cyrusConf,
		replace:   []string{"{{LIB}}", cyrusLibexec, "{{PKG}}", pkg},
		dirs:      []string{"config/lock"},
		master:    master,
	}, users)
}

// cyrusFlavour is what differs between the Cyrus versions that
// startCyrusFlavour runs: the rest of an instance is the same.
type cyrusFlavour struct {
	kind string // Server.Kind
	// imapdConf and cyrusConf are the templates of DIR/etc/imapd.conf and
	// DIR/etc/cyrus.conf; startCyrusFlavour fills in {{DIR}}, {{IMAP}} and
	// {{LMTP}}, and the pairs of replace.
	imapdConf, cyrusConf string
	replace              []string // old, new, ... for the templates
	// dirs are created below DIR for cyrus:mail besides cyrusDirs.
	dirs   []string
	master string // the master process's binary
}

// cyrusDirs are the directories, relative to the instance directory, that
// every Cyrus version needs and that belong to cyrus:mail: configdirectory
// (config) with its subdirectories, the partition, sieve, temp, pid and log.
var cyrusDirs = []string{"log",
	"config/db", "config/log", "config/msg", "config/quota", "config/user",
	"config/ptclient", "config/socket", "config/proc",
	"spool", "sieve", "tmp", "run"}

// startCyrusFlavour starts one Cyrus instance of flavour f: the instance
// directory with etc/ (root's) and the directories of cyrus:mail, the
// configuration, a sasldb with the administrator and users, the master in the
// foreground; then it creates the users' INBOXes. The caller has checked the
// binaries that f names, that it runs as root and the users.
func startCyrusFlavour(t TB, f cyrusFlavour, users map[string]string) *Server {
	t.Helper()
	saslpasswd := findBinary(t, "saslpasswd2", "/usr/sbin/saslpasswd2")
	uid, gid := lookupIDs(t, "cyrus", "mail")

	adminPassword := randomHex(t, 12)
	s := start(t, f.kind, 2, func(dir string, ports []int) (*instance, error) {
		if err := mkdirs(dir, -1, -1, "etc"); err != nil {
			return nil, err
		}
		if err := mkdirs(dir, uid, gid, append(slices.Clone(cyrusDirs), f.dirs...)...); err != nil {
			return nil, err
		}
		r := strings.NewReplacer(append([]string{
			"{{DIR}}", dir,
			"{{IMAP}}", fmt.Sprint(ports[0]),
			"{{LMTP}}", fmt.Sprint(ports[1]),
		}, f.replace...)...)
		imapdConf := filepath.Join(dir, "etc", "imapd.conf")
		if err := os.WriteFile(imapdConf, []byte(r.Replace(f.imapdConf)), 0o644); err != nil {
			return nil, err
		}
		masterConf := filepath.Join(dir, "etc", "cyrus.conf")
		if err := os.WriteFile(masterConf, []byte(r.Replace(f.cyrusConf)), 0o644); err != nil {
			return nil, err
		}
		sasldb := filepath.Join(dir, "config", "sasldb2")
		if err := saslSetPassword(saslpasswd, sasldb, cyrusAdmin, adminPassword); err != nil {
			return nil, err
		}
		for u, p := range users {
			if err := saslSetPassword(saslpasswd, sasldb, u, p); err != nil {
				return nil, err
			}
		}
		if err := chownTree(filepath.Join(dir, "config"), uid, gid); err != nil {
			return nil, err
		}
		return &instance{
			server: &Server{
				Kind:          f.kind,
				Addr:          fmt.Sprintf("127.0.0.1:%d", ports[0]),
				Dir:           dir,
				Users:         copyUsers(users),
				AdminUser:     cyrusAdmin,
				AdminPassword: adminPassword,
				lmtpNetwork:   "tcp",
				lmtpAddr:      fmt.Sprintf("127.0.0.1:%d", ports[1]),
			},
			// No -d: the master stays in the foreground, so the process
			// is ours to stop; -D keeps stdout and stderr, our only log.
			// Both 3.6's cyrmaster and 2.3's master read these flags alike.
			argv: []string{f.master, "-D",
				"-C", imapdConf, "-M", masterConf,
				"-p", filepath.Join(dir, "run", "master.pid")},
			stdoutLog: filepath.Join(dir, "log", "master.log"),
		}, nil
	})

	if err := createCyrusInboxes(s); err != nil {
		t.Fatalf("backends: %s: creating users' mailboxes: %v\n%s", f.kind, err, s.Log())
	}
	return s
}

// saslSetPassword sets user's password in the sasldb file (realm localhost,
// the servername of imapd.conf), creating the file if needed.
func saslSetPassword(saslpasswd, sasldb, user, password string) error {
	cmd := exec.Command(saslpasswd, "-p", "-c", "-f", sasldb, "-u", "localhost", user)
	cmd.Stdin = strings.NewReader(password)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("saslpasswd2 %s: %v: %s", user, err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// createCyrusInboxes logs in as the administrator and creates user.NAME, the
// INBOX of each of s.Users. It speaks raw IMAP so that this package needs
// nothing beyond the standard library; names and passwords are atoms (see
// checkUsers and randomHex), so no quoting is needed.
func createCyrusInboxes(s *Server) error {
	c, err := net.DialTimeout("tcp", s.Addr, imapTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(imapTimeout)); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	cmds := []string{"LOGIN " + s.AdminUser + " " + s.AdminPassword}
	for _, u := range slices.Sorted(maps.Keys(s.Users)) {
		cmds = append(cmds, "CREATE user."+u)
	}
	cmds = append(cmds, "LOGOUT")
	for i, cmd := range cmds {
		tag := fmt.Sprintf("a%d", i)
		if _, err := fmt.Fprintf(c, "%s %s\r\n", tag, cmd); err != nil {
			return err
		}
		shown := cmd
		if i == 0 {
			shown = "LOGIN " + s.AdminUser + " ***"
		}
		if err := imapTagged(r, tag); err != nil {
			return fmt.Errorf("%s: %w", shown, err)
		}
	}
	return nil
}

// imapTagged reads responses up to the one tagged tag and fails unless it is
// OK. The untagged responses that LOGIN, CREATE and LOGOUT draw carry no
// literals, so reading by lines is enough.
func imapTagged(r *bufio.Reader, tag string) error {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		rest, ok := strings.CutPrefix(line, tag+" ")
		if !ok {
			continue
		}
		if strings.HasPrefix(strings.ToUpper(rest), "OK") {
			return nil
		}
		return fmt.Errorf("%s", strings.TrimRight(rest, "\r\n"))
	}
}

// randomHex returns n random bytes in hex.
func randomHex(t TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("backends: random: %v", err)
	}
	return hex.EncodeToString(b)
}
