package backends

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// cyrus23ImapdConf is imapd.conf for one Cyrus 2.3 instance: the one of
// shared/cyrus-2.3/README.md, with the sasldb under configdirectory, and:
//   - servername: the SASL realm of imapd and lmtpd, the one saslSetPassword
//     uses; its default is the host name.
//   - temp_path: its default is /tmp, shared with everyone.
//   - imapidlepoll: the build has no idled, so a session in IDLE looks for
//     changes every imapidlepoll seconds (default 60).
//
// Options 2.3 does not know (3.6's mboxname_lockpath, proc_path,
// master_bind_errors_fatal) are left out. Placeholders: {{DIR}}.
const cyrus23ImapdConf = `configdirectory: {{DIR}}/config
partition-default: {{DIR}}/spool
sievedir: {{DIR}}/sieve
temp_path: {{DIR}}/tmp
servername: localhost
admins: cyrus
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {{DIR}}/config/sasldb2
sasl_mech_list: PLAIN LOGIN
unixhierarchysep: no
altnamespace: no
hashimapspool: no
lmtp_downcase_rcpt: yes
imapidlepoll: 1
`

// cyrus23Conf is cyrus.conf for one Cyrus 2.3 instance. As with 3.6, master
// does not pass its -C to the services, so each cmd names the instance's
// imapd.conf. The binaries are named by absolute path, so that the prefix
// compiled into master does not matter. prefork=0: a process is forked per
// connection. Placeholders: {{DIR}}, {{BIN}}, {{IMAP}}, {{LMTP}}.
const cyrus23Conf = `START {
  recover cmd="{{BIN}}/ctl_cyrusdb -C {{DIR}}/etc/imapd.conf -r"
}
SERVICES {
  imap cmd="{{BIN}}/imapd -C {{DIR}}/etc/imapd.conf" listen="127.0.0.1:{{IMAP}}" prefork=0
  lmtp cmd="{{BIN}}/lmtpd -C {{DIR}}/etc/imapd.conf -a" listen="127.0.0.1:{{LMTP}}" prefork=0
}
EVENTS {
  checkpoint cmd="{{BIN}}/ctl_cyrusdb -C {{DIR}}/etc/imapd.conf -c" period=30
}
`

// cyrus23SourcesRel is where the Cyrus 2.3 sources lie, relative to the
// repository root (the directory of go.mod).
const cyrus23SourcesRel = "../shared/cyrus-2.3"

// cyrus23Hint names what builds Cyrus 2.3, for failure messages.
const cyrus23Hint = "run `sudo .ci/install-deps` (it builds Cyrus 2.3.18 from " + cyrus23SourcesRel +
	" into $UIDGATE_CYRUS23_DIR, default /opt/uidgate-cyrus23)"

// cyrus23Prefix is where .ci/install-deps builds Cyrus 2.3.18.
func cyrus23Prefix() string {
	if d := os.Getenv("UIDGATE_CYRUS23_DIR"); d != "" {
		return d
	}
	return "/opt/uidgate-cyrus23"
}

// Cyrus23Available reports whether the Cyrus 2.3 backend is meant to run
// here: whether the directory of its sources, ../shared/cyrus-2.3 beside the
// repository root (found by walking up from the working directory to
// go.mod), exists. If not, reason says why, for t.Skip; StartCyrus23 then
// skips. When the sources are there, a missing build or a failed start is a
// test failure, never a skip.
func Cyrus23Available() (ok bool, reason string) {
	wd, err := os.Getwd()
	if err != nil {
		return false, fmt.Sprintf("Cyrus 2.3 backend: working directory: %v", err)
	}
	return cyrus23Sources(wd)
}

// cyrus23Sources is Cyrus23Available from the directory wd.
func cyrus23Sources(wd string) (ok bool, reason string) {
	root, err := repoRoot(wd)
	if err != nil {
		return false, fmt.Sprintf("Cyrus 2.3 backend: cannot locate %s: %v", cyrus23SourcesRel, err)
	}
	src := filepath.Join(root, cyrus23SourcesRel)
	fi, err := os.Stat(src)
	if errors.Is(err, fs.ErrNotExist) || err == nil && !fi.IsDir() {
		return false, fmt.Sprintf("Cyrus 2.3 backend: no Cyrus 2.3 sources at %s (%s beside the repository); the tests that need Cyrus 2.3.18 skip", src, cyrus23SourcesRel)
	}
	// Any other error (a directory we may not read, say) is not an absence:
	// the start will fail and say more.
	return true, ""
}

// repoRoot returns the nearest directory at or above dir holding go.mod.
func repoRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if fi, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil && fi.Mode().IsRegular() {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod at or above the working directory")
		}
		dir = parent
	}
}

// StartCyrus23 starts a private Cyrus IMAP 2.3.18, the legacy server itself
// built from source, on free ports of 127.0.0.1 with the given users (sasldb
// passwords; names match [a-z0-9][a-z0-9_-]*), waits until it greets and
// creates each user's INBOX, "user.NAME", as the administrator
// (Server.AdminUser, "cyrus"). Server.Kind is "cyrus23".
//
// It skips the test, saying why, when the sources are absent (see
// Cyrus23Available). Otherwise it fails the test, with the server log, if
// the build under $UIDGATE_CYRUS23_DIR (default /opt/uidgate-cyrus23) is
// missing or the server cannot start. t.Cleanup stops it (SIGTERM to the
// master's process group, which the master also sends on to it; SIGKILL to
// what is left after 10 s), waits for every process of the instance to exit
// and removes its directory.
//
// Like StartCyrus: classic namespace (INBOX.sub, separator '.'), Deliver
// over the instance's LMTP port (lmtpd -a). IDLE polls the mailbox every
// second (there is no idled), so a delivery shows within about a second.
// See shared/cyrus-2.3/README.md for how this server behaves.
func StartCyrus23(t TB, users map[string]string) *Server {
	t.Helper()
	if ok, reason := Cyrus23Available(); !ok {
		t.Skipf("backends: %s", reason)
	}
	requireRoot(t)
	checkUsers(t, users)
	bin := filepath.Join(cyrus23Prefix(), "cyrus", "bin")
	for _, name := range []string{"master", "imapd", "lmtpd", "ctl_cyrusdb"} {
		// No $PATH fallback: a "master" there is likely Postfix's.
		if p := filepath.Join(bin, name); !isExecutable(p) {
			t.Fatalf("backends: Cyrus 2.3: %s is not an executable file, but the sources are present; %s", p, cyrus23Hint)
		}
	}
	return startCyrusFlavour(t, cyrusFlavour{
		kind:      "cyrus23",
		imapdConf: cyrus23ImapdConf,
		cyrusConf: cyrus23Conf,
		replace:   []string{"{{BIN}}", bin},
		dirs:      []string{"config/sync", "spool/stage.", "spool/sync."},
		master:    filepath.Join(bin, "master"),
	}, users)
}
