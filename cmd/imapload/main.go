// Command imapload is uidgate's IMAP load generator. It drives an IMAP
// server, or a proxy in front of one, with one workload over plain TCP and
// prints one line of JSON per result on stdout.
//
//	imapload -addr 127.0.0.1:1143 -user 'bench%d' -users 200 -pass secret \
//	    -workload small -sessions 50 -duration 5s
//
// Workloads:
//
//	small   NOOP, FETCH n (FLAGS), STORE n +FLAGS, STORE n -FLAGS in a closed
//	        loop per session; p50/p99 latency and commands/s. -mix seen
//	        adds FETCH n BODY[] (not PEEK) and STORE n +FLAGS/-FLAGS (\Seen)
//	bulk    FETCH 1:* BODY.PEEK[] of -mailbox; MB/s
//	select  SELECT of -mailbox in a new session (then -search); time to OK
//	idle    -sessions sessions in IDLE for -duration
//	append  APPEND -count messages of -size bytes, FETCH them back; MB/s
//	seed    APPEND -count messages of -size bytes to populate -mailbox
//	stress  -sessions sessions of one user on -mailbox write a random mix
//	        (-seed) of 1–4 pipelined commands at a time and check every
//	        answer against their own model of the mailbox and RFC 3501;
//	        reports violations and exits non-zero on any. It deletes
//	        messages (it keeps the mailbox at most 200 messages, and
//	        refuses one of more than 1000): point it at a test account.
//	        -mode is another name for -workload.
//
// -smoke runs a short, self-checking pass of every workload in mailboxes
// of its own (created and deleted) and exits non-zero on any error; CI
// runs it through bench/smoke.sh.
//
// The client speaks the raw line protocol: commands are lines, literals in
// responses are streamed and dropped (or hashed), and APPEND bodies are
// generated while they are written, so 50 MB messages cost no memory. Every
// loop is bounded by -rounds or -count and by time; -max-time bounds the
// whole run.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("imapload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:1143", "server `host:port` (plain IMAP)")
	fs.StringVar(&cfg.user, "user", "bench", "login `name`; %d is replaced by the session number modulo -users")
	fs.IntVar(&cfg.users, "users", 1, "number of distinct users when -user has %d")
	fs.StringVar(&cfg.pass, "pass", "bench", "password")
	fs.StringVar(&cfg.workload, "workload", "small", "small, bulk, select, idle, append, seed or stress")
	fs.StringVar(&cfg.workload, "mode", "small", "the same as -workload")
	fs.StringVar(&cfg.mix, "mix", "flags", "small: the commands, flags (NOOP, FETCH n (FLAGS), STORE n ±FLAGS (\\Flagged)) or seen (those and FETCH n BODY[], STORE n ±FLAGS (\\Seen))")
	fs.StringVar(&cfg.label, "label", "", "label copied into every result (e.g. the target's name)")
	fs.IntVar(&cfg.sessions, "sessions", 1, "concurrent sessions")
	fs.DurationVar(&cfg.duration, "duration", 5*time.Second, "measuring time (small, bulk, stress: 0 = rounds only) or hold time (idle)")
	fs.IntVar(&cfg.rounds, "rounds", 1_000_000, "bound: commands per session (small), FETCHes per session (bulk), SELECTs (select), rounds per session (stress)")
	fs.Int64Var(&cfg.size, "size", 50_000_000, "message size in bytes (append, seed)")
	fs.IntVar(&cfg.count, "count", 1, "messages to APPEND (append, seed)")
	fs.StringVar(&cfg.mailbox, "mailbox", "INBOX", "mailbox to work on (idle: \"\" enters IDLE without SELECT)")
	fs.StringVar(&cfg.search, "search", "none", "select: after SELECT, time none, esearch (UID SEARCH RETURN (ALL) ALL) or plain (UID SEARCH ALL)")
	fs.DurationVar(&cfg.hold, "hold", 0, "select: stay selected this long before LOGOUT")
	fs.IntVar(&cfg.concurrency, "concurrency", 100, "sessions set up at the same time")
	fs.DurationVar(&cfg.timeout, "timeout", 2*time.Minute, "bound of one command's round trip")
	fs.BoolVar(&cfg.idleLogout, "idle-logout", false, "idle: end with DONE and LOGOUT (timed) instead of closing")
	fs.BoolVar(&cfg.verify, "verify", false, "append: check the SHA-256 of every message fetched back")
	fs.Int64Var(&cfg.seed, "seed", 1, "stress: seed of the random command mix")
	fs.StringVar(&cfg.mailbox2, "mailbox2", "", "stress: second mailbox for COPY and STATUS (default: imapload-stress under the personal namespace, deleted at the end)")
	fs.DurationVar(&cfg.stall, "stall", stressStallDefault, "stress: a command not answered this long is a stall (a violation)")
	fs.BoolVar(&cfg.searchAhead, "tolerate-search-ahead", false, "stress: a SEARCH naming a message no EXISTS announced by its tagged answer is counted (search_ahead), not a violation: Cyrus 3.6's own behaviour, for direct runs against it")
	maxTime := fs.Duration("max-time", time.Hour, "bound of the whole run")
	smoke := fs.Bool("smoke", false, "run a short self-checking pass of every workload (CI)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	// A load generator aims at loopback only: it is not to be pointed at
	// somebody's server by mistake.
	if host, _, err := net.SplitHostPort(cfg.addr); err != nil || !isLoopback(host) {
		fmt.Fprintf(stderr, "imapload: -addr %q: only loopback addresses (127.0.0.0/8, ::1, localhost)\n", cfg.addr)
		return 2
	}
	switch cfg.search {
	case "none", "esearch", "plain":
	default:
		fmt.Fprintf(stderr, "imapload: -search %q: want none, esearch or plain\n", cfg.search)
		return 2
	}
	if fs.NArg() > 0 || cfg.sessions < 1 || cfg.rounds < 1 || cfg.count < 0 || cfg.concurrency < 1 || cfg.stall <= 0 {
		fmt.Fprintln(stderr, "imapload: bad arguments (see -h)")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *maxTime)
	defer cancel()

	enc := json.NewEncoder(stdout)
	failed := false
	emit := func(r result) {
		r.Label = cfg.label
		if r.Errors > 0 || r.stressStats != nil && r.Violations > 0 {
			failed = true
		}
		enc.Encode(r)
	}
	if *smoke {
		if err := runSmoke(ctx, &cfg, emit); err != nil {
			fmt.Fprintln(stderr, "imapload: smoke:", err)
			return 1
		}
		return 0
	}
	switch cfg.workload {
	case "small":
		emit(runSmall(ctx, &cfg, emit))
	case "bulk":
		emit(runBulk(ctx, &cfg))
	case "select":
		emit(runSelect(ctx, &cfg))
	case "idle":
		emit(runIdle(ctx, &cfg, emit))
	case "append":
		emit(runAppend(ctx, &cfg))
	case "seed":
		emit(runSeed(ctx, &cfg))
	case "stress":
		emit(runStress(ctx, &cfg))
	default:
		fmt.Fprintf(stderr, "imapload: unknown workload %q\n", cfg.workload)
		return 2
	}
	if failed {
		return 1
	}
	return 0
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
