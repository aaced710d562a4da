package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"

	"uidgate/configs"
	"uidgate/proxy"
	"uidgate/proxy/locks"
)

// adminHandler builds the admin view for the metrics listener, guarded as
// [admin] says: loopback only without a token, the token otherwise.
func adminHandler(c *configs.Config, srv *proxy.Server, log *zerolog.Logger) (http.Handler, error) {
	tok, err := c.Admin.TokenValue()
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	return srv.AdminHandler(proxy.AdminOptions{Token: tok, Logger: log}), nil
}

// adminTokenEnv may hold the token for `uidgate admin`.
const adminTokenEnv = "UIDGATE_ADMIN_TOKEN"

const adminUsage = `usage: uidgate admin [-config FILE | -url URL] [-token-file FILE] [-json] COMMAND
  sessions [-user NAME]   who is connected: user, client, backend, selected mailbox,
                          commands in flight, locks held and waited for
  locks                   each lock key: its holder and the FIFO of its waiters
  kick -cid N | -user NAME
                          end those sessions (BYE; their locks go back)

The admin view is served on [metrics] address. -url defaults to it (from
-config); the token to -token-file, $` + adminTokenEnv + `, or the config's [admin].
`

// adminCmd runs `uidgate admin`.
func adminCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("admin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, adminUsage) }
	file := fs.String("config", "", "uidgate's configuration file: where the admin view is, and its token")
	base := fs.String("url", "", "the metrics listener, such as http://127.0.0.1:9143 (default: from -config)")
	tokenFile := fs.String("token-file", "", "a file holding the admin token")
	raw := fs.Bool("json", false, "print the JSON answer as it is")
	timeout := fs.Duration("timeout", 40*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	sub := flag.NewFlagSet("admin "+cmd, flag.ContinueOnError)
	sub.SetOutput(stderr)
	user := sub.String("user", "", "login name")
	cid := sub.Uint64("cid", 0, "session id (cid)")
	if err := sub.Parse(rest); err != nil || sub.NArg() > 0 {
		fmt.Fprint(stderr, adminUsage)
		return 2
	}
	var method, path string
	q := url.Values{}
	switch cmd {
	case "sessions":
		method, path = http.MethodGet, "/admin/sessions"
		if *user != "" {
			q.Set("user", *user)
		}
		if *cid != 0 {
			fmt.Fprintln(stderr, "uidgate admin sessions: -cid is for kick")
			return 2
		}
	case "locks":
		method, path = http.MethodGet, "/admin/locks"
		if *user != "" || *cid != 0 {
			fmt.Fprintln(stderr, "uidgate admin locks: takes no flags")
			return 2
		}
	case "kick":
		method, path = http.MethodPost, "/admin/kick"
		switch {
		case (*user == "") == (*cid == 0):
			fmt.Fprintln(stderr, "uidgate admin kick: give -cid N or -user NAME")
			return 2
		case *cid != 0:
			q.Set("cid", strconv.FormatUint(*cid, 10))
		default:
			q.Set("user", *user)
		}
	default:
		fmt.Fprintf(stderr, "uidgate admin: unknown command %q\n", cmd)
		fmt.Fprint(stderr, adminUsage)
		return 2
	}
	endpoint, token, err := adminTarget(*file, *base, *tokenFile)
	if err != nil {
		fmt.Fprintln(stderr, "uidgate admin:", err)
		return 1
	}
	u := strings.TrimRight(endpoint, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	body, status, err := adminRequest(ctx, method, u, token)
	if err != nil {
		fmt.Fprintln(stderr, "uidgate admin:", err)
		return 1
	}
	if status != http.StatusOK && !(cmd == "kick" && status == http.StatusNotFound) {
		fmt.Fprintf(stderr, "uidgate admin: %s %s: %d %s\n", method, path, status, strings.TrimSpace(string(body)))
		return 1
	}
	if *raw {
		stdout.Write(body)
		return 0
	}
	switch cmd {
	case "sessions":
		err = printSessions(stdout, body)
	case "locks":
		err = printLocks(stdout, body)
	case "kick":
		var ans struct{ Kicked []uint64 }
		if err = json.Unmarshal(body, &ans); err == nil {
			if len(ans.Kicked) == 0 {
				fmt.Fprintln(stderr, "uidgate admin kick: no such session")
				return 1
			}
			ids := make([]string, len(ans.Kicked))
			for i, id := range ans.Kicked {
				ids[i] = strconv.FormatUint(id, 10)
			}
			fmt.Fprintf(stdout, "kicked %s\n", strings.Join(ids, " "))
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "uidgate admin: unreadable answer:", err)
		return 1
	}
	return 0
}

// adminTarget finds the admin view's URL and token.
func adminTarget(file, base, tokenFile string) (endpoint, token string, err error) {
	var c *configs.Config
	if file != "" {
		// Parsed, not validated: the operator may not be able to read
		// the certificates the server reads.
		if c, err = configs.Load(file); err != nil {
			return "", "", err
		}
	}
	endpoint = base
	if endpoint == "" {
		if c == nil || c.Metrics.Address == "" {
			return "", "", errors.New("no admin view to call: give -url, or -config with [metrics] address")
		}
		host, port, err := net.SplitHostPort(c.Metrics.Address)
		if err != nil {
			return "", "", fmt.Errorf("metrics.address: %v", err)
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			host = "127.0.0.1"
		}
		endpoint = "http://" + net.JoinHostPort(host, port)
	}
	switch {
	case tokenFile != "":
		token, err = configs.Admin{TokenFile: tokenFile}.TokenValue()
	case os.Getenv(adminTokenEnv) != "":
		token = os.Getenv(adminTokenEnv)
	case c != nil:
		token, err = c.Admin.TokenValue()
	}
	if err != nil {
		return "", "", fmt.Errorf("admin token: %w", err)
	}
	return endpoint, token, nil
}

func adminRequest(ctx context.Context, method, u, token string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return body, resp.StatusCode, err
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Second).String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printSessions(w io.Writer, body []byte) error {
	var ans struct{ Sessions []proxy.SessionInfo }
	if err := json.Unmarshal(body, &ans); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CID\tUSER\tCLIENT\tBACKEND\tSELECTED\tIN FLIGHT\tLOCKS HELD\tLOCKS WAITED\tCONNECTED")
	for _, s := range ans.Sessions {
		var fl, held, waited []string
		for _, c := range s.InFlight {
			fl = append(fl, c.Tag+" "+c.Command)
		}
		for _, l := range s.Holds {
			held = append(held, l.Key)
		}
		for _, l := range s.Waits {
			waited = append(waited, fmt.Sprintf("%s (#%d, %s)", l.Key, l.Position, ago(l.Since)))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, dash(s.User), s.Client, dash(s.Backend),
			dash(s.Selected), dash(strings.Join(fl, ", ")), dash(strings.Join(held, ", ")),
			dash(strings.Join(waited, ", ")), ago(s.Since))
	}
	return tw.Flush()
}

func printLocks(w io.Writer, body []byte) error {
	var snap locks.Snapshot
	if err := json.Unmarshal(body, &snap); err != nil {
		return err
	}
	if snap.Scope == locks.ScopeInstance {
		fmt.Fprintln(w, "# locks in etcd: this instance's holders and waiters only")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tHOLDER\tHELD FOR\tWAITERS (FIFO)")
	who := func(o locks.Owner) string {
		return strings.TrimSpace(fmt.Sprintf("cid %d %s %s", o.Session, o.User, o.Command))
	}
	for _, k := range snap.Keys {
		holder := who(k.Holder.Owner)
		if k.Queued {
			holder += " (queued in etcd behind another instance)"
		}
		var ws []string
		for _, wt := range k.Waiters {
			ws = append(ws, fmt.Sprintf("%s (%s)", who(wt.Owner), ago(wt.Since)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.Key, holder, ago(k.Holder.Since), dash(strings.Join(ws, "; ")))
	}
	return tw.Flush()
}
