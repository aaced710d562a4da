package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"uidgate/e2e/scenarios"
	"uidgate/rules"
	"uidgate/upstream"
)

// CheckOptions say which server `uidgate check-server` examines, and how.
type CheckOptions struct {
	// Addr is the server's IMAP address (plain text: no TLS).
	Addr string
	// User and Password are a test account; its own mailboxes other than
	// the scratch one are never selected, written or deleted.
	User, Password string
	// LMTPAddr, if set, is the server's LMTP address (host:port, or a
	// unix socket path starting with "/"): scenario B's deliveries go
	// there, to USER+MAILBOX (plus addressing). Empty: APPEND.
	LMTPAddr string
	// Backend is uidgate's configuration of the server (its Address and
	// Name are set by Check).
	Backend upstream.Backend
	// Serialization is uidgate's serialization policy.
	Serialization rules.Serialization
	Rounds        int   // per scenario and target (default 20)
	Seed          int64 // default 1
	// MaxDuration bounds each scenario run (default 30 s).
	MaxDuration time.Duration
	// Log receives progress lines (nil: none).
	Log io.Writer
}

// CheckReport is what Check found.
type CheckReport struct {
	Mailbox  string // the scratch mailbox it created (and deleted)
	Delivery string // how scenario B delivered: "LMTP" or "APPEND"
	Rows     []Row
}

// scratchPrefix starts the name of every mailbox Check creates.
const scratchPrefix = "uidgate-check-"

// adminTimeout bounds each of Check's own commands (NAMESPACE, LIST,
// CREATE, DELETE, the LMTP probe).
const adminTimeout = 30 * time.Second

// Check creates a scratch mailbox with a fresh random name on the server,
// runs scenarios A and B in it directly and through an in-process uidgate,
// and deletes it. It refuses to go on if the name already exists, and
// touches no other mailbox.
func Check(ctx context.Context, o CheckOptions) (rep CheckReport, err error) {
	if o.Addr == "" || o.User == "" {
		return rep, errors.New("check-server: a server address and a user are required")
	}
	sizeDefaults(&o.Rounds, &o.Seed, &o.MaxDuration, 20, 30*time.Second)
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}

	admin, err := imapclient.DialInsecure(o.Addr, &imapclient.Options{Dialer: &net.Dialer{Timeout: adminTimeout}})
	if err != nil {
		return rep, fmt.Errorf("connect to %s: %w", o.Addr, err)
	}
	defer admin.Close()
	if err := admin.Login(o.User, o.Password).Wait(); err != nil {
		return rep, fmt.Errorf("login as %s: %w", o.User, err)
	}
	name, err := scratchName(admin)
	if err != nil {
		return rep, err
	}
	rep.Mailbox = name
	// A random name that exists already is not ours: leave it alone.
	existing, err := admin.List("", name, nil).Collect()
	if err != nil {
		return rep, fmt.Errorf("LIST %s: %w", name, err)
	}
	if len(existing) > 0 {
		return rep, fmt.Errorf("mailbox %q exists already; not touching it", name)
	}
	if err := admin.Create(name, nil).Wait(); err != nil {
		return rep, fmt.Errorf("CREATE %s: %w", name, err)
	}
	logf("created scratch mailbox %s", name)
	defer func() {
		if derr := admin.Delete(name).Wait(); derr != nil {
			err = errors.Join(err, fmt.Errorf("DELETE %s: %w (delete it by hand)", name, derr))
			return
		}
		logf("deleted scratch mailbox %s", name)
	}()

	rep.Delivery = "APPEND"
	var deliver func(ctx context.Context, msg []byte) error
	if o.LMTPAddr != "" {
		rep.Delivery = "LMTP"
		if deliver, err = lmtpInto(ctx, admin, o, name); err != nil {
			return rep, err
		}
	}

	backend := o.Backend
	backend.Name, backend.Address = "checked", o.Addr
	if backend.TLS == "" {
		backend.TLS = upstream.TLSNone
	}
	gateAddr, stopGate, err := startGate(&backend, nil, o.Serialization)
	if err != nil {
		return rep, err
	}
	defer stopGate()

	common := func(addr string) scenarios.Common {
		return scenarios.Common{Addr: addr, CheckAddr: o.Addr, User: o.User, Password: o.Password,
			Mailbox: name, Rounds: o.Rounds, Seed: o.Seed, MaxDuration: o.MaxDuration}
	}
	logf("running %d rounds of each scenario, directly and through uidgate (deliveries by %s)", o.Rounds, rep.Delivery)
	rep.Rows, err = runBoth(ctx, o.Addr, gateAddr, common, func(c scenarios.Common) scenarios.BCfg {
		return scenarios.BCfg{Common: c, Deliver: deliver}
	})
	return rep, err
}

// scratchName is a fresh name in the user's personal namespace (RFC 2342):
// "INBOX." + name on a Cyrus server in the classic namespace.
func scratchName(c *imapclient.Client) (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	leaf := scratchPrefix + hex.EncodeToString(b[:])
	if !c.Caps().Has(imap.CapNamespace) {
		return leaf, nil
	}
	ns, err := c.Namespace().Wait()
	if err != nil {
		return "", fmt.Errorf("NAMESPACE: %w", err)
	}
	if len(ns.Personal) == 0 {
		return leaf, nil
	}
	return ns.Personal[0].Prefix + leaf, nil
}

// lmtpInto returns a delivery into the scratch mailbox by LMTP with plus
// addressing (USER+LEAF, where LEAF is the mailbox's last name part). On
// Cyrus it grants "anyone" the post right on the scratch mailbox, which
// lmtpd requires for such a delivery. A probe message must then land in
// the scratch mailbox, or Check stops: the server put it elsewhere (its
// Message-ID is in the error).
func lmtpInto(ctx context.Context, admin *imapclient.Client, o CheckOptions, name string) (func(context.Context, []byte) error, error) {
	leaf := name
	if i := strings.LastIndexAny(name, "./"); i >= 0 {
		leaf = name[i+1:]
	}
	rcpt := o.User + "+" + leaf
	if admin.Caps().Has(imap.CapACL) {
		if err := admin.SetACL(name, "anyone", imap.RightModificationAdd, imap.RightSet("p")).Wait(); err != nil {
			return nil, fmt.Errorf("SETACL %s anyone +p (for LMTP plus addressing): %w", name, err)
		}
	}
	deliver := func(ctx context.Context, msg []byte) error {
		return scenarios.DeliverLMTP(ctx, o.LMTPAddr, rcpt, msg)
	}
	probeID := "probe." + leaf + "@uidgate.test"
	probe := fmt.Appendf(nil, "From: uidgate check-server <check@uidgate.test>\r\nSubject: uidgate check-server probe\r\nMessage-ID: <%s>\r\n\r\nprobe\r\n", probeID)
	pctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	if err := deliver(pctx, probe); err != nil {
		return nil, fmt.Errorf("LMTP probe to <%s> at %s: %w", rcpt, o.LMTPAddr, err)
	}
	st, err := admin.Status(name, &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		return nil, fmt.Errorf("STATUS %s: %w", name, err)
	}
	if st.NumMessages == nil || *st.NumMessages != 1 {
		return nil, fmt.Errorf("LMTP delivery to <%s> did not reach %s (the server does not deliver USER+MAILBOX there; the probe <%s> is wherever it put it, likely INBOX); run without -lmtp", rcpt, name, probeID)
	}
	return deliver, nil
}
