package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"uidgate/e2e/demo"
	"uidgate/rules"
	"uidgate/upstream"
)

// checkBudget bounds each scenario run of check-server: a slow server ends
// with fewer rounds, reported, rather than never.
const checkBudget = 60 * time.Second

// Exit statuses of check-server beyond 0 (through uidgate: no fault, no
// error) and 2 (usage).
const (
	exitCheckFaults = 1 // through uidgate a fault was counted or a round failed
	exitCheckError  = 3 // the check could not run (connection, login, mailbox)
)

// checkServer runs `uidgate check-server`: both scenarios against a real
// server, directly and through an in-process uidgate, in a scratch mailbox
// it creates and deletes.
func checkServer(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: uidgate check-server -addr HOST:PORT -user NAME [-pass PASSWORD] [flags]

Runs the two failures of legacy servers (a STORE by number after another
session's EXPUNGE; \Seen set by several sessions while mail is delivered)
against the server, directly and through uidgate running in this process,
in a scratch mailbox uidgate-check-<random> it creates in the user's
personal namespace and deletes at the end. No other mailbox is selected or
written. Plain-text IMAP only (no TLS): run it on a trusted network or
loopback. The password may come from $UIDGATE_CHECK_PASS instead of -pass.
Exit status: 0 when no fault and no error was counted through uidgate;
1 when one was; 2 on bad usage; 3 when the check could not run.

`)
		fs.PrintDefaults()
	}
	addr := fs.String("addr", "", "the server's IMAP address, host:port (plain text)")
	user := fs.String("user", "", "a test account (its \\Seen state is what the scenarios exercise)")
	pass := fs.String("pass", "", "its password (default $UIDGATE_CHECK_PASS)")
	lmtp := fs.String("lmtp", "", "the server's LMTP address (host:port or /socket) for deliveries to USER+MAILBOX; default: APPEND")
	rounds := fs.Int("rounds", 20, "rounds per scenario and target")
	seed := fs.Int64("seed", 1, "seed of the rounds' choices")
	legacy := fs.Bool("legacy", true, "uidgate's backend setting legacy (and explicit \\Seen)")
	cyrusNS := fs.Bool("cyrus-namespace", true, "uidgate's backend setting cyrus_namespace (and out_of_range = ignore)")
	selectSeen := fs.Bool("select-takes-seen", false, "uidgate's [serialization] select_takes_seen")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *addr == "" || *user == "" || fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	if *pass == "" {
		*pass = os.Getenv("UIDGATE_CHECK_PASS")
	}
	if *rounds <= 0 || *rounds > 10000 {
		fmt.Fprintln(stderr, "uidgate check-server: -rounds must be 1..10000")
		return 2
	}
	ctx, stop := signalContext()
	defer stop()

	o := demo.CheckOptions{
		Addr: *addr, User: *user, Password: *pass, LMTPAddr: *lmtp,
		Backend: upstream.Backend{Legacy: *legacy, ExplicitSeen: *legacy,
			CyrusNamespace: *cyrusNS, IgnoreOutOfRange: *cyrusNS},
		Serialization: rules.Serialization{SelectTakesSeen: *selectSeen},
		Rounds:        *rounds, Seed: *seed, MaxDuration: checkBudget, Log: stdout,
	}
	fmt.Fprintf(stdout, "uidgate check-server: %s as %s (uidgate: legacy = %t, cyrus_namespace = %t, select_takes_seen = %t)\n",
		*addr, *user, *legacy, *cyrusNS, *selectSeen)
	t0 := time.Now()
	rep, err := demo.Check(ctx, o)
	if len(rep.Rows) > 0 {
		fmt.Fprintln(stdout)
		demo.Print(stdout, rep.Rows)
		fmt.Fprintf(stdout, "\n(%s, scenario B delivered by %s)\n", time.Since(t0).Round(100*time.Millisecond), rep.Delivery)
	}
	if err != nil {
		fmt.Fprintln(stderr, "uidgate check-server:", err)
		return exitCheckError
	}
	status := 0
	for _, r := range rep.Rows {
		if r.Direct.FirstErr != nil {
			fmt.Fprintf(stdout, "%s, direct: first error: %v\n", r.Scenario, r.Direct.FirstErr)
		}
		if r.Uidgate.FirstErr != nil {
			fmt.Fprintf(stdout, "%s, through uidgate: first error: %v\n", r.Scenario, r.Uidgate.FirstErr)
		}
		if r.Uidgate.Faults() != 0 || r.Uidgate.Errors != 0 {
			status = exitCheckFaults
		}
	}
	if status == 0 {
		fmt.Fprintln(stdout, "through uidgate: no fault, no error")
	} else {
		fmt.Fprintln(stdout, "through uidgate: FAULTS OR ERRORS (see the table)")
	}
	return status
}
