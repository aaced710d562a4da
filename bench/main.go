// Command bench runs uidgate's load benchmarks (issues 7 and 13) in one go
// on one machine. For each backend it starts the real server on loopback,
// uidgate in front of it and nginx's mail proxy in front of it too, drives
// the three targets (direct, uidgate, nginx) with cmd/imapload, and writes
// medians and ratios into the "Load benchmarks" section of
// docs/BENCHMARKS.md. The backends, in this order (-backends):
//
//   - cyrus23, the headline: Cyrus IMAP 2.3.18, the legacy server uidgate
//     exists for (built by .ci/install-deps, started by e2e/backends), with
//     uidgate in its deployed configuration (legacy = true, cyrus_namespace
//     = true, explicit_seen = "on"). Workloads: the small commands with a
//     mail reader's \Seen traffic (imapload -mix seen) at 1 and 50
//     sessions, the SELECT of a 10,000-message mailbox (filled over LMTP
//     at every start, ~40 s: Cyrus mailboxes cannot be generated as
//     files, and e2e/backends makes a new instance each time), and the
//     seed's two races (e2e/scenarios in their real-server mode: sessions
//     of one user storing by message number while another expunges, and
//     setting \Seen while LMTP delivers), timed and with their fault counts.
//   - dovecot: Dovecot 2.3 with uidgate as for a compliant server. Small
//     commands at several session counts, a bulk FETCH, the SELECT of a
//     1,000,000-message mailbox, thousands of sessions in IDLE, and
//     APPEND/FETCH of 50 MB messages; mail is generated straight into
//     maildirs (with -data DIR it is kept and reused between runs).
//
// Run it from the repository root, as root (the servers switch users):
//
//	go run ./bench                     # the issues' sizes, 5 runs of everything (~80 min)
//	go run ./bench -quick              # the same sizes, shorter and 1 IDLE run (~20 min)
//	go run ./bench -quick -backends cyrus23   # Cyrus 2.3 alone (~4 min)
//	go run ./bench -smoke              # CI: each backend + uidgate, a short check (~20 s)
//	go run ./bench -h                  # every size, count and duration
//
// Times are for 2 cores. Most of a full Dovecot run is the IDLE workload:
// Dovecot starts one imap process per login (~40 logins/s here), so 10,000
// sessions take ~4–5 minutes to set up, per proxy and run. Generating the
// Dovecot mail (two 1,000,000-message maildirs) takes another 3–4 minutes
// the first time; -data DIR keeps it for the next run.
//
// Runs rotate the order of the targets; memory is measured on a freshly
// started proxy from /proc/PID/status (VmRSS, and VmHWM after resetting it
// through clear_refs). Every server is started in a process group of its
// own and stopped on the way out, also on SIGINT/SIGTERM.
//
// With -profile DIR, extra runs (not counted) collect pprof profiles of
// uidgate in front of Dovecot, built with an HTTP pprof listener added
// through go build -overlay (the source tree is not touched).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"uidgate/e2e/backends"
)

// password is every generated user's password.
const password = "bench"

// options are the command-line flags.
type options struct {
	runs          int
	quick, smoke  bool
	backends      string
	workloads     string
	smallSessions string
	smallDuration time.Duration
	users         int
	inboxMsgs     int
	inboxSize     int
	bulkCount     int
	bulkSize      int
	bulkRounds    int
	selectMsgs    int
	selectSteps   string
	selectHold    time.Duration
	idleSessions  int
	idleHold      time.Duration
	idleRuns      int
	idleDirect    bool
	appendSize    int64
	appendCount   int
	data          string
	work          string
	keep          bool
	doc           string
	results       string
	withNginx     bool
	nginxWorkers  string
	nginxBuffer   string
	profile       string
	perUserLocks  bool
	uidgateEnv    string
	reportFrom    string

	c23Users         int
	c23SmallSessions string
	c23SelectMsgs    int
	scenarioRounds   int
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&o.runs, "runs", 5, "measured runs of each workload against each target (medians are reported)")
	fs.BoolVar(&o.quick, "quick", false, "shorter: -small-duration 3s -idle-hold 20s -idle-runs 1 -bulk-rounds 1 (flags given explicitly win)")
	fs.BoolVar(&o.smoke, "smoke", false, "CI smoke test: each backend of -backends and uidgate in front of it, a short self-checking pass; nothing written")
	fs.StringVar(&o.backends, "backends", "cyrus23,dovecot", "backends, comma-separated, run in this order: cyrus23 (Cyrus 2.3.18, uidgate legacy), dovecot (Dovecot 2.3)")
	fs.StringVar(&o.workloads, "workloads", "small,bulk,select,idle,append,scenarios", "workloads to run, comma-separated, each where the backend has it (cyrus23: small, select, scenarios; dovecot: small, bulk, select, idle, append); none: only start the servers and warm them up, e.g. with -keep")
	fs.StringVar(&o.smallSessions, "small-sessions", "1,50,200", "session counts of the small-command workload (dovecot)")
	fs.StringVar(&o.c23SmallSessions, "cyrus23-small-sessions", "1,50", "session counts of the small-command workload (cyrus23)")
	fs.IntVar(&o.c23Users, "cyrus23-users", 50, "Cyrus 2.3 users with an INBOX of -inbox-msgs messages of -inbox-size bytes, delivered over LMTP")
	fs.IntVar(&o.c23SelectMsgs, "cyrus23-select-messages", 10_000, "messages in the Cyrus 2.3 mailbox of the SELECT workload (delivered over LMTP at every start, ~3 ms each)")
	fs.IntVar(&o.scenarioRounds, "scenario-rounds", 50, "rounds of each of the seed's scenarios per run and target (cyrus23)")
	fs.DurationVar(&o.smallDuration, "small-duration", 5*time.Second, "measuring time of each small-command run")
	fs.IntVar(&o.users, "users", 200, "Dovecot users (each with an INBOX); session i logs in as bench<i mod users>")
	fs.IntVar(&o.inboxMsgs, "inbox-msgs", 200, "messages in each user's INBOX")
	fs.IntVar(&o.inboxSize, "inbox-size", 2000, "size of an INBOX message in bytes")
	fs.IntVar(&o.bulkCount, "bulk-count", 2000, "messages in the bulk-FETCH mailbox")
	fs.IntVar(&o.bulkSize, "bulk-size", 50_000, "size of a bulk-FETCH message in bytes")
	fs.IntVar(&o.bulkRounds, "bulk-rounds", 2, "FETCH 1:* per bulk run (their MB/s is summed)")
	fs.IntVar(&o.selectMsgs, "select-messages", 1_000_000, "messages in the mailbox of the SELECT workload (dovecot)")
	fs.StringVar(&o.selectSteps, "select-uid-steps", "1,2", "UID steps of the large mailboxes, one mailbox each (1: dense UIDs; 2: every other UID, the map's costly case, set through dovecot-uidlist)")
	fs.DurationVar(&o.selectHold, "select-hold", time.Second, "time a SELECT session stays selected (memory is sampled meanwhile)")
	fs.IntVar(&o.idleSessions, "idle-sessions", 10_000, "sessions in IDLE (capped by RLIMIT_NOFILE: a proxy holds two descriptors per session)")
	fs.DurationVar(&o.idleHold, "idle-hold", 60*time.Second, "time the idle sessions stay in IDLE")
	fs.IntVar(&o.idleRuns, "idle-runs", 0, "runs of the idle workload (0: -runs)")
	fs.BoolVar(&o.idleDirect, "idle-direct", false, "also run the idle workload directly against Dovecot (it measures no proxy; Dovecot logs in ~45 sessions/s on 2 cores)")
	fs.Int64Var(&o.appendSize, "append-size", 50_000_000, "size of an APPENDed message in bytes (messages of a tenth of it are measured too, to see whether memory grows)")
	fs.IntVar(&o.appendCount, "append-count", 2, "messages APPENDed (and fetched back) per append run")
	fs.StringVar(&o.data, "data", "", "directory for the generated mail, kept and reused when it matches (default: a temporary one)")
	fs.StringVar(&o.work, "work", "", "working directory for configs, logs and binaries (default: a temporary one, removed)")
	fs.BoolVar(&o.keep, "keep", false, "keep the working directory")
	fs.StringVar(&o.doc, "doc", "docs/BENCHMARKS.md", "markdown file to write the results into (\"\": print only)")
	fs.StringVar(&o.results, "results", "", "also write every run's raw numbers to this file (JSON lines)")
	fs.BoolVar(&o.withNginx, "nginx", true, "compare with nginx's mail proxy (installed with apt-get if missing)")
	fs.StringVar(&o.nginxWorkers, "nginx-workers", "1", "nginx worker_processes")
	fs.StringVar(&o.nginxBuffer, "nginx-buffer", "", "nginx mail proxy_buffer (default: nginx's, one page)")
	fs.StringVar(&o.profile, "profile", "", "after the measured runs, write pprof profiles of uidgate into this directory")
	fs.StringVar(&o.reportFrom, "report-from", "", "write the report (and -doc) again from a -results file, running nothing; the machine line is this machine's")
	fs.StringVar(&o.uidgateEnv, "uidgate-env", "", "diagnostic: environment for uidgate, comma-separated (e.g. GOMAXPROCS=1)")
	fs.BoolVar(&o.perUserLocks, "uidgate-per-user-locks", false, "diagnostic: run uidgate with cyrus_namespace = true, whose only effect is per-user lock keys for INBOX (see docs/BENCHMARKS.md)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		quick := map[string]func(){
			"small-duration": func() { o.smallDuration = 3 * time.Second },
			"idle-hold":      func() { o.idleHold = 20 * time.Second },
			"idle-runs":      func() { o.idleRuns = 1 },
			"bulk-rounds":    func() { o.bulkRounds = 1 },
		}
		for name, apply := range quick {
			if !set[name] {
				apply()
			}
		}
	}
	if o.idleRuns == 0 {
		o.idleRuns = o.runs
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{o: o, ps: &procs{}, started: time.Now(), argv: args}
	if o.reportFrom != "" {
		if err := b.rereport(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		return 0
	}
	defer b.stopServers() // also on a panic: the servers must not outlive the bench
	err := b.main(ctx)
	b.stopServers()
	switch {
	case b.work == "" || o.work != "":
		// None made, or the caller's.
	case o.keep:
		b.logf("working directory kept: %s", b.work)
	default:
		os.RemoveAll(b.work)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

// bench is one benchmark run.
type bench struct {
	o       options
	argv    []string
	started time.Time
	root    string // the repository root (where go.mod is)
	work    string
	data    string
	ps      *procs
	nofile  int

	uidgateBin, imaploadBin, profBin string
	gateLimits                       string // benchLimits, if uidgate has login rate limits

	backends  []string        // -backends, in order
	workloads map[string]bool // -workloads

	dc  *dovecot
	dcs *stack // Dovecot and the proxies in front of it

	c23    *stack           // Cyrus 2.3 and the proxies in front of it
	c23srv *backends.Server // the Cyrus 2.3 instance
	c23tb  *serverTB        // owns c23srv: its cleanups stop it

	steps []int // UID steps of the large mailboxes

	samples []sample
	notes   []string // what the report must say about this run
}

// stopServers stops every server and proxy the bench started: its own
// processes, the auth_http services, and the Cyrus 2.3 instance (through
// the cleanups e2e/backends registered). Calling it again does nothing.
func (b *bench) stopServers() {
	b.ps.stopAll()
	for _, st := range []*stack{b.c23, b.dcs} {
		if st != nil && st.auth != nil {
			st.auth.close()
			st.auth = nil
		}
	}
	if b.c23tb != nil {
		if err := b.c23tb.stop(); err != nil {
			b.logf("stopping Cyrus 2.3: %v", err)
		}
		b.c23tb, b.c23srv = nil, nil
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %6.1fs: %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) main(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root (Dovecot and Cyrus switch to their own users)")
	}
	for _, f := range strings.Split(b.o.selectSteps, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("bad -select-uid-steps %q", b.o.selectSteps)
		}
		b.steps = append(b.steps, n)
	}
	if err := b.parseLists(); err != nil {
		return err
	}
	if err := b.setup(ctx); err != nil {
		return err
	}
	if b.o.smoke {
		for _, be := range b.backends {
			var err error
			switch be {
			case "cyrus23":
				err = b.smokeCyrus23(ctx)
			case "dovecot":
				err = b.smoke(ctx)
			}
			b.stopServers()
			if err != nil {
				return fmt.Errorf("%s: %w", be, err)
			}
		}
		b.logf("smoke passed")
		return nil
	}
	if b.o.perUserLocks {
		b.notes = append(b.notes, "Diagnostic run: uidgate with cyrus_namespace = true, so that each user's INBOX has a lock key of its own (-uidgate-per-user-locks).")
	}
	if b.o.uidgateEnv != "" {
		b.notes = append(b.notes, "Diagnostic run: uidgate with the environment "+b.o.uidgateEnv+" (-uidgate-env).")
	}
	for _, be := range b.backends {
		t0 := time.Now()
		var err error
		switch be {
		case "cyrus23":
			err = b.runCyrus23(ctx)
		case "dovecot":
			err = b.runDovecot(ctx)
		}
		// One backend at a time: the next one gets the machine to itself.
		b.stopServers()
		if err != nil {
			if len(b.samples) > 0 && b.o.results != "" {
				// What was measured so far, for -report-from.
				if werr := b.writeResults(); werr == nil {
					b.logf("runs so far written to %s", b.o.results)
				}
			}
			return fmt.Errorf("%s: %w", be, err)
		}
		b.logf("%s done in %.0fs", be, time.Since(t0).Seconds())
	}
	return b.report()
}

// parseLists reads -backends and -workloads.
func (b *bench) parseLists() error {
	for _, be := range strings.Split(b.o.backends, ",") {
		be = strings.TrimSpace(be)
		switch be {
		case "cyrus23", "dovecot":
		default:
			return fmt.Errorf("unknown backend %q in -backends (want cyrus23, dovecot)", be)
		}
		if slices.Contains(b.backends, be) {
			return fmt.Errorf("-backends names %s twice", be)
		}
		b.backends = append(b.backends, be)
	}
	b.workloads = map[string]bool{}
	for _, w := range strings.Split(b.o.workloads, ",") {
		w = strings.TrimSpace(w)
		switch w {
		case "small", "bulk", "select", "idle", "append", "scenarios", "none":
			b.workloads[w] = true
		default:
			return fmt.Errorf("unknown workload %q in -workloads", w)
		}
	}
	return nil
}

// runDovecot starts Dovecot and the proxies, runs its workloads and,
// with -profile, the profiling runs.
func (b *bench) runDovecot(ctx context.Context) error {
	if err := b.startServers(ctx); err != nil {
		return err
	}
	if err := b.runAll(ctx, b.dcs, []workloadStep{
		{"small", func(ctx context.Context, ts []*target) error { return b.runSmall(ctx, ts, b.o.smallSessions, nil) }},
		{"bulk", b.runBulk},
		{"select", b.runSelect},
		{"append", b.runAppend},
		{"idle", b.runIdle},
	}); err != nil {
		return err
	}
	if b.o.profile != "" {
		if err := b.profileDovecot(ctx); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	return nil
}

// rereport writes the report of an earlier run from its -results file.
func (b *bench) rereport(ctx context.Context) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	b.root = root
	b.o.results = "" // do not overwrite what is being read
	if err := b.loadResults(b.o.reportFrom); err != nil {
		return err
	}
	return b.report()
}

// moduleRoot returns the directory of the uidgate module's go.mod.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	mod := strings.TrimSpace(string(out))
	if err != nil || mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run from inside the uidgate module (go env GOMOD: %q, %v)", mod, err)
	}
	return filepath.Dir(mod), nil
}

// setup finds the repository, makes the working directory, raises the
// descriptor limit and builds the binaries.
func (b *bench) setup(ctx context.Context) error {
	var err error
	if b.root, err = moduleRoot(ctx); err != nil {
		return err
	}
	if b.o.work != "" {
		b.work = b.o.work
		err = os.MkdirAll(b.work, 0o755)
	} else {
		b.work, err = os.MkdirTemp("", "uidgate-bench-")
	}
	if err != nil {
		return err
	}
	// Dovecot's auth process (user dovecot) reads the users file in here.
	if err := os.Chmod(b.work, 0o755); err != nil {
		return err
	}
	b.data = b.o.data
	if b.data == "" {
		b.data = filepath.Join(b.work, "data")
	}
	if err := os.MkdirAll(b.data, 0o755); err != nil {
		return err
	}
	// Children inherit the limit: 10,000 sessions need 20,000 descriptors
	// in a proxy. Without CAP_SYS_RESOURCE the hard limit is the ceiling.
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	want := rl
	want.Max = max(rl.Max, 1<<16)
	want.Cur = want.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		want = rl
		want.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return fmt.Errorf("setrlimit NOFILE: %w", err)
		}
	}
	b.nofile = int(want.Cur)

	b.logf("building uidgate and imapload")
	b.uidgateBin = filepath.Join(b.work, "uidgate")
	b.imaploadBin = filepath.Join(b.work, "imapload")
	if err := goBuild(ctx, b.root, b.uidgateBin, "./cmd/uidgate"); err != nil {
		return err
	}
	if err := goBuild(ctx, b.root, b.imaploadBin, "./cmd/imapload"); err != nil {
		return err
	}
	if b.gateLimits, err = probeLimits(ctx, b.work, b.uidgateBin); err != nil {
		b.logf("uidgate has no login rate limits to lift (check-config: %v)", err)
	}
	if b.o.profile != "" {
		b.profBin = filepath.Join(b.work, "uidgate-pprof")
		if err := buildProfiled(ctx, b.root, b.work, b.profBin); err != nil {
			return err
		}
	}
	return nil
}

// smoke is CI's check that the load tool still works: Dovecot and uidgate
// with one small user, imapload -smoke against Dovecot (the tool itself)
// and then through uidgate.
func (b *bench) smoke(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, smokeBound)
	defer cancel()
	spec := &dataSpec{Users: 1, InboxMsgs: 10, InboxSize: 2000}
	if _, err := prepareData(b.data, spec, b.logf); err != nil {
		return err
	}
	var err error
	if b.dc, err = startDovecot(ctx, b.ps, filepath.Join(b.work, "dovecot"), b.data, b.userList(1), password); err != nil {
		return err
	}
	b.dcs = b.dovecotStack(1)
	if err := b.restartUidgate(ctx, b.dcs); err != nil {
		return err
	}
	ug := b.dcs.ug
	for _, t := range []struct{ name, addr string }{{"direct", b.dc.addr}, {"uidgate", ug.addr}} {
		b.logf("imapload -smoke against %s (%s)", t.name, t.addr)
		cmd := exec.CommandContext(ctx, b.imaploadBin, "-smoke", "-addr", t.addr, "-user", userName(0),
			"-pass", password, "-label", t.name, "-max-time", "40s")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("imapload -smoke against %s: %w\nuidgate log:\n%s\ndovecot log:\n%s", t.name, err,
				tail(ug.proc.log, 4096), tail(filepath.Join(b.dc.dir, "log", "dovecot.log"), 4096))
		}
	}
	if ug.proc.exited() {
		return fmt.Errorf("uidgate exited: %v\n%s", ug.proc.err, tail(ug.proc.log, 4096))
	}
	return nil
}

// smokeBound bounds each backend's part of -smoke.
const smokeBound = 55 * time.Second

func (b *bench) userList(n int) []string {
	users := make([]string, n)
	for i := range users {
		users[i] = userName(i)
	}
	return users
}

// dovecotStack is Dovecot (b.dc) as a stack, its proxies not started yet;
// users is the number of bench users it has.
func (b *bench) dovecotStack(users int) *stack {
	gate := ""
	if b.o.perUserLocks {
		gate = "cyrus_namespace = true  # diagnostic: per-user INBOX lock keys"
	}
	return &stack{backend: "dovecot", addr: b.dc.addr, dir: b.work, users: users, gateConf: gate}
}

// startServers generates the mail, starts Dovecot, warms it up (the first
// SELECT of a large maildir builds Dovecot's index), then starts nginx and
// uidgate.
func (b *bench) startServers(ctx context.Context) error {
	spec := &dataSpec{
		Users: b.o.users, InboxMsgs: b.o.inboxMsgs, InboxSize: b.o.inboxSize,
		BulkMsgs: b.o.bulkCount, BulkSize: b.o.bulkSize,
		BigMsgs: b.o.selectMsgs, BigSize: 300, BigUIDSteps: b.steps,
	}
	t0 := time.Now()
	written, err := prepareData(b.data, spec, b.logf)
	if err != nil {
		return err
	}
	b.logf("mail in %s: %d messages written in %.1fs, the rest reused", b.data, written, time.Since(t0).Seconds())
	if b.dc, err = startDovecot(ctx, b.ps, filepath.Join(b.work, "dovecot"), b.data, b.userList(b.o.users), password); err != nil {
		return err
	}
	b.dcs = b.dovecotStack(b.o.users)
	b.logf("dovecot on %s; warming up (indexes every mailbox on first use)", b.dc.addr)
	direct := b.targets(b.dcs)[0]
	warm := [][]string{
		{"-workload", "small", "-sessions", strconv.Itoa(b.o.users), "-duration", "1s", "-concurrency", "50"},
		{"-workload", "bulk", "-mailbox", "bulk", "-rounds", "1", "-duration", "0"},
	}
	for _, step := range b.steps {
		warm = append(warm, []string{"-workload", "select", "-mailbox", bigFolder(step), "-rounds", "2", "-search", "esearch", "-timeout", "30m"})
	}
	for _, args := range warm {
		t0 := time.Now()
		if _, err := b.measure(ctx, direct, args, nil); err != nil {
			return fmt.Errorf("warm-up %v: %w", args, err)
		}
		b.logf("warm-up %s: %.1fs", args[1], time.Since(t0).Seconds())
	}
	return b.startProxies(ctx, b.dcs)
}

// startProxies starts nginx (unless -nginx=false) with its auth_http
// service, and uidgate, in front of st's backend.
func (b *bench) startProxies(ctx context.Context, st *stack) error {
	if b.o.withNginx {
		if err := ensureNginx(b.logf); err != nil {
			return err
		}
		var err error
		if st.auth, err = startAuthHTTP(st.addr); err != nil {
			return err
		}
		if err := b.restartNginx(ctx, st); err != nil {
			return err
		}
	}
	return b.restartUidgate(ctx, st)
}

// restartUidgate stops st's uidgate if it runs and starts a fresh one.
func (b *bench) restartUidgate(ctx context.Context, st *stack) error {
	if st.ug != nil {
		b.ps.stop(st.ug.proc)
		st.ug = nil
	}
	var err error
	st.ug, err = startUidgate(ctx, b.ps, st.dir, b.uidgateBin, st.backend, st.addr, false, st.gateConf, b.gateLimits, b.envList())
	return err
}

// restartNginx stops st's nginx if it runs and starts a fresh one.
func (b *bench) restartNginx(ctx context.Context, st *stack) error {
	if st.ngx != nil {
		b.ps.stop(st.ngx.proc)
		st.ngx = nil
	}
	var err error
	st.ngx, err = startNginx(ctx, b.ps, filepath.Join(st.dir, "nginx"), st.auth, b.o.nginxWorkers, b.nofile, b.o.nginxBuffer)
	return err
}

// envList is -uidgate-env as a list.
func (b *bench) envList() []string {
	if b.o.uidgateEnv == "" {
		return nil
	}
	return strings.Split(b.o.uidgateEnv, ",")
}

// stack is one backend with uidgate and nginx in front of it: where a
// backend's three targets lead.
type stack struct {
	backend  string // "cyrus23" or "dovecot": names the report's section
	addr     string // the backend's IMAP listener
	dir      string // uidgate's config and log; nginx's in dir/nginx
	users    int    // session i logs in as bench<i mod users>
	gateConf string // lines added to uidgate's [[backend]] table
	ug       *uidgate
	ngx      *nginx
	auth     *authHTTP
}

// target is one way to reach a backend.
type target struct {
	name    string // direct, uidgate or nginx
	backend string // the stack's
	users   int    // the stack's
	addr    func() string
	pids    func() []int                    // the proxy's processes that hold sessions; nil for direct
	restart func(ctx context.Context) error // a fresh proxy, for memory measurements; nil for direct
}

// targets returns direct, uidgate and (unless disabled) nginx in front of
// st's backend.
func (b *bench) targets(st *stack) []*target {
	ts := []*target{
		{name: "direct", addr: func() string { return st.addr }},
		{
			name:    "uidgate",
			addr:    func() string { return st.ug.addr },
			pids:    func() []int { return []int{st.ug.proc.pid()} },
			restart: func(ctx context.Context) error { return b.restartUidgate(ctx, st) },
		},
	}
	if b.o.withNginx {
		ts = append(ts, &target{
			name:    "nginx",
			addr:    func() string { return st.ngx.addr },
			pids:    func() []int { return st.ngx.workers() },
			restart: func(ctx context.Context) error { return b.restartNginx(ctx, st) },
		})
	}
	for _, t := range ts {
		t.backend, t.users = st.backend, st.users
	}
	return ts
}
