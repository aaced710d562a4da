// Command bench runs uidgate's load benchmarks (issue 7) in one go on one
// machine: it starts a real Dovecot on loopback, uidgate in front of it
// and nginx's mail proxy in front of it too, drives the three (direct,
// uidgate, nginx) with cmd/imapload, and writes medians and ratios into the
// "Load benchmarks" section of docs/BENCHMARKS.md.
//
// Run it from the repository root, as root (Dovecot switches users):
//
//	go run ./bench            # the sizes, 5 runs of everything
//	go run ./bench -quick     # the same workloads, shorter (~20 min on 2 cores)
//	go run ./bench -smoke     # CI: Dovecot + uidgate + imapload -smoke (< 60 s)
//	go run ./bench -h         # every size, count and duration
//
// Workloads: small commands at several session counts, a bulk FETCH, the
// SELECT of a 1,000,000-message mailbox, thousands of sessions in IDLE, and
// APPEND/FETCH of 50 MB messages; see the flags. Mail is generated straight
// into maildirs (with -data DIR it is kept and reused between runs). Runs
// rotate the order of the targets; memory is measured on a freshly started
// proxy from /proc/PID/status (VmRSS, and VmHWM after resetting it through
// clear_refs). Every server is started in a process group of its own and
// stopped on the way out, also on SIGINT/SIGTERM.
//
// With -profile DIR, extra runs (not counted) collect pprof profiles of
// uidgate, built with an HTTP pprof listener added through go build
// -overlay (the source tree is not touched).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// password is every generated user's password.
const password = "bench"

// options are the command-line flags.
type options struct {
	runs          int
	quick, smoke  bool
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
	reportFrom    string
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&o.runs, "runs", 5, "measured runs of each workload against each target (medians are reported)")
	fs.BoolVar(&o.quick, "quick", false, "shorter: -small-duration 3s -idle-hold 20s -idle-runs 1 -bulk-rounds 1 (flags given explicitly win)")
	fs.BoolVar(&o.smoke, "smoke", false, "CI smoke test: Dovecot + uidgate, imapload -smoke against both; nothing written")
	fs.StringVar(&o.workloads, "workloads", "small,bulk,select,idle,append", "workloads to run, comma-separated")
	fs.StringVar(&o.smallSessions, "small-sessions", "1,50,200", "session counts of the small-command workload")
	fs.DurationVar(&o.smallDuration, "small-duration", 5*time.Second, "measuring time of each small-command run")
	fs.IntVar(&o.users, "users", 200, "users (each with an INBOX); session i logs in as bench<i mod users>")
	fs.IntVar(&o.inboxMsgs, "inbox-msgs", 200, "messages in each user's INBOX")
	fs.IntVar(&o.inboxSize, "inbox-size", 2000, "size of an INBOX message in bytes")
	fs.IntVar(&o.bulkCount, "bulk-count", 2000, "messages in the bulk-FETCH mailbox")
	fs.IntVar(&o.bulkSize, "bulk-size", 50_000, "size of a bulk-FETCH message in bytes")
	fs.IntVar(&o.bulkRounds, "bulk-rounds", 2, "FETCH 1:* per bulk run (their MB/s is summed)")
	fs.IntVar(&o.selectMsgs, "select-messages", 1_000_000, "messages in the mailbox of the SELECT workload")
	fs.StringVar(&o.selectSteps, "select-uid-steps", "1,2", "UID steps of the large mailboxes, one mailbox each (1: dense UIDs; 2: every other UID, the map's costly case, set through dovecot-uidlist)")
	fs.DurationVar(&o.selectHold, "select-hold", time.Second, "time a SELECT session stays selected (memory is sampled meanwhile)")
	fs.IntVar(&o.idleSessions, "idle-sessions", 10_000, "sessions in IDLE (capped by RLIMIT_NOFILE: a proxy holds two descriptors per session)")
	fs.DurationVar(&o.idleHold, "idle-hold", 60*time.Second, "time the idle sessions stay in IDLE")
	fs.IntVar(&o.idleRuns, "idle-runs", 0, "runs of the idle workload (0: -runs)")
	fs.BoolVar(&o.idleDirect, "idle-direct", false, "also run the idle workload directly against Dovecot (it measures no proxy; Dovecot logs in ~45 sessions/s on 2 cores)")
	fs.Int64Var(&o.appendSize, "append-size", 50_000_000, "size of an APPENDed message in bytes")
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
	fs.BoolVar(&o.perUserLocks, "uidgate-per-user-locks", false, "diagnostic: run uidgate with cyrus_namespace = true, whose only effect is per-user lock keys for INBOX (see docs/BENCHMARKS.md)")
	if err := fs.Parse(args); err != nil {
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
	err := b.main(ctx)
	b.ps.stopAll()
	if b.auth != nil {
		b.auth.close()
	}
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

	dc   *dovecot
	ug   *uidgate
	ngx  *nginx
	auth *authHTTP

	steps []int // UID steps of the large mailboxes

	samples []sample
	notes   []string // what the report must say about this run
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %6.1fs: %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) main(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root (Dovecot switches to its own users)")
	}
	for _, f := range strings.Split(b.o.selectSteps, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("bad -select-uid-steps %q", b.o.selectSteps)
		}
		b.steps = append(b.steps, n)
	}
	if err := b.setup(ctx); err != nil {
		return err
	}
	if b.o.smoke {
		return b.smoke(ctx)
	}
	if b.o.perUserLocks {
		b.notes = append(b.notes, "Diagnostic run: uidgate with cyrus_namespace = true, so that each user's INBOX has a lock key of its own (-uidgate-per-user-locks).")
	}
	if err := b.startServers(ctx); err != nil {
		return err
	}
	if err := b.runAll(ctx); err != nil {
		return err
	}
	if b.o.profile != "" {
		if err := b.profileAll(ctx); err != nil {
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
	ctx, cancel := context.WithTimeout(ctx, 55*time.Second)
	defer cancel()
	spec := &dataSpec{Users: 1, InboxMsgs: 10, InboxSize: 2000}
	if _, err := prepareData(b.data, spec, b.logf); err != nil {
		return err
	}
	var err error
	if b.dc, err = startDovecot(ctx, b.ps, filepath.Join(b.work, "dovecot"), b.data, b.userList(1), password); err != nil {
		return err
	}
	if b.ug, err = startUidgate(ctx, b.ps, b.work, b.uidgateBin, b.dc.addr, false, b.o.perUserLocks); err != nil {
		return err
	}
	for _, t := range []struct{ name, addr string }{{"direct", b.dc.addr}, {"uidgate", b.ug.addr}} {
		b.logf("imapload -smoke against %s (%s)", t.name, t.addr)
		cmd := exec.CommandContext(ctx, b.imaploadBin, "-smoke", "-addr", t.addr, "-user", userName(0),
			"-pass", password, "-label", t.name, "-max-time", "40s")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("imapload -smoke against %s: %w\nuidgate log:\n%s\ndovecot log:\n%s", t.name, err,
				tail(b.ug.proc.log, 4096), tail(filepath.Join(b.dc.dir, "log", "dovecot.log"), 4096))
		}
	}
	if b.ug.proc.exited() {
		return fmt.Errorf("uidgate exited: %v\n%s", b.ug.proc.err, tail(b.ug.proc.log, 4096))
	}
	b.logf("smoke passed")
	return nil
}

func (b *bench) userList(n int) []string {
	users := make([]string, n)
	for i := range users {
		users[i] = userName(i)
	}
	return users
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
	b.logf("dovecot on %s; warming up (indexes every mailbox on first use)", b.dc.addr)
	direct := b.targets()[0]
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
	if b.o.withNginx {
		if err := ensureNginx(b.logf); err != nil {
			return err
		}
		if b.auth, err = startAuthHTTP(b.dc.addr); err != nil {
			return err
		}
		if err := b.restartNginx(ctx); err != nil {
			return err
		}
	}
	return b.restartUidgate(ctx)
}

// restartUidgate stops uidgate if it runs and starts a fresh one.
func (b *bench) restartUidgate(ctx context.Context) error {
	if b.ug != nil {
		b.ps.stop(b.ug.proc)
		b.ug = nil
	}
	var err error
	b.ug, err = startUidgate(ctx, b.ps, b.work, b.uidgateBin, b.dc.addr, false, b.o.perUserLocks)
	return err
}

// restartNginx stops nginx if it runs and starts a fresh one.
func (b *bench) restartNginx(ctx context.Context) error {
	if b.ngx != nil {
		b.ps.stop(b.ngx.proc)
		b.ngx = nil
	}
	var err error
	b.ngx, err = startNginx(ctx, b.ps, filepath.Join(b.work, "nginx"), b.auth, b.o.nginxWorkers, b.nofile, b.o.nginxBuffer)
	return err
}

// target is one way to reach Dovecot.
type target struct {
	name    string
	addr    func() string
	pids    func() []int                    // the proxy's processes that hold sessions; nil for direct
	restart func(ctx context.Context) error // a fresh proxy, for memory measurements; nil for direct
}

// targets returns direct, uidgate and (unless disabled) nginx.
func (b *bench) targets() []*target {
	ts := []*target{
		{name: "direct", addr: func() string { return b.dc.addr }},
		{
			name:    "uidgate",
			addr:    func() string { return b.ug.addr },
			pids:    func() []int { return []int{b.ug.proc.pid()} },
			restart: b.restartUidgate,
		},
	}
	if b.o.withNginx {
		ts = append(ts, &target{
			name:    "nginx",
			addr:    func() string { return b.ngx.addr },
			pids:    func() []int { return b.ngx.workers() },
			restart: b.restartNginx,
		})
	}
	return ts
}

// loadResult is the part of imapload's output the bench uses (see
// cmd/imapload/stats.go).
type loadResult struct {
	Workload   string  `json:"workload"`
	Label      string  `json:"label"`
	Phase      string  `json:"phase"`
	Sessions   int     `json:"sessions"`
	Failed     int     `json:"failed"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error"`
	DurationS  float64 `json:"duration_s"`
	SetupS     float64 `json:"setup_s"`
	Ops        int64   `json:"ops"`
	OpsPerS    float64 `json:"ops_per_s"`
	P50us      float64 `json:"p50_us"`
	P99us      float64 `json:"p99_us"`
	ByOp       map[string]struct {
		P50us float64 `json:"p50_us"`
		P99us float64 `json:"p99_us"`
	} `json:"by_op"`
	Messages  int64   `json:"messages"`
	Bytes     int64   `json:"bytes"`
	MBps      float64 `json:"mb_per_s"`
	FetchMBps float64 `json:"fetch_mb_per_s"`
	SelectMS  float64 `json:"select_ms"`
	SearchMS  float64 `json:"search_ms"`
}

// runOut is what one imapload run measured, on the client and on the
// proxy (memory in bytes, summed over the proxy's processes).
type runOut struct {
	res   loadResult
	ready *loadResult
	cpu   time.Duration // proxy CPU time during the run (between "ready" and "done" if imapload says them)

	cpuReady, cpuDone time.Duration
	base              int64 // proxy RSS before the run
	peak              int64 // proxy VmHWM after the run (reset before it)
	sampled           int64 // largest proxy RSS sampled during the run
	midHold           int64 // proxy RSS read by the probe (idle)
}

// holdProbe is run once, after wait, when imapload says its sessions are
// "ready" (idle), while they are held.
type holdProbe struct {
	wait time.Duration
	fn   func(ctx context.Context)
}

// measure runs imapload against t with args and samples the proxy. With
// probe set (idle), the proxy's RSS is also read probe.wait after imapload
// says "ready", and then probe.fn runs (if set).
func (b *bench) measure(ctx context.Context, t *target, args []string, probe *holdProbe) (runOut, error) {
	var out runOut
	var pids []int
	if t.pids != nil {
		pids = t.pids()
	}
	for _, pid := range pids {
		resetHWM(pid)
	}
	out.base = sumMem(pids).RSS
	cpu0 := sumCPU(pids)
	smp := startSampler(pids, 25*time.Millisecond)

	full := append([]string{"-addr", t.addr(), "-label", t.name, "-user", "bench%d",
		"-users", strconv.Itoa(b.o.users), "-pass", password, "-max-time", "50m"}, args...)
	cctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	cmd := exec.CommandContext(cctx, b.imaploadBin, full...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return out, err
	}
	if err := cmd.Start(); err != nil {
		return out, err
	}
	midDone := make(chan struct{})
	midStarted := false
	dec := json.NewDecoder(stdout)
	var final *loadResult
	for {
		var r loadResult
		if err := dec.Decode(&r); err != nil {
			if err != io.EOF {
				io.Copy(io.Discard, stdout)
			}
			break
		}
		if r.Phase == "done" {
			out.cpuDone = sumCPU(pids)
			continue
		}
		if r.Phase == "ready" {
			out.cpuReady = sumCPU(pids)
			out.ready = &r
			if probe != nil && !midStarted {
				midStarted = true
				go func() {
					defer close(midDone)
					if sleepCtx(cctx, probe.wait) {
						out.midHold = sumMem(pids).RSS
						if probe.fn != nil {
							probe.fn(cctx)
						}
					}
				}()
			}
			continue
		}
		final = &r
	}
	werr := cmd.Wait()
	if midStarted {
		<-midDone
	}
	out.sampled = smp.finish()
	out.peak = sumMem(pids).HWM
	out.cpu = sumCPU(pids) - cpu0
	if out.cpuDone > 0 && out.cpuReady > 0 {
		out.cpu = out.cpuDone - out.cpuReady
	}
	if final == nil {
		return out, fmt.Errorf("imapload %s: no result (%v)\n%s", strings.Join(full, " "), werr, stderr.String())
	}
	out.res = *final
	if final.Errors > 0 || werr != nil {
		return out, fmt.Errorf("imapload against %s: %d errors, first: %s (%v)\n%s", t.name, final.Errors, final.FirstError, werr, stderr.String())
	}
	return out, nil
}

// rotate returns ts starting at index k mod len(ts): each run puts another
// target first, so that drift over time does not favour one.
func rotate(ts []*target, k int) []*target {
	out := make([]*target, 0, len(ts))
	for i := range ts {
		out = append(out, ts[(i+k)%len(ts)])
	}
	return out
}

// runAll runs every selected workload, then writes the report.
func (b *bench) runAll(ctx context.Context) error {
	ts := b.targets()
	want := map[string]bool{}
	for _, w := range strings.Split(b.o.workloads, ",") {
		want[strings.TrimSpace(w)] = true
	}
	// Warm every target once: the proxies' first sessions pay for heap
	// growth and code paging that later ones do not.
	for _, t := range ts {
		if _, err := b.measure(ctx, t, []string{"-workload", "small", "-sessions", "20", "-duration", "1s"}, nil); err != nil {
			return fmt.Errorf("warm-up of %s: %w", t.name, err)
		}
	}
	steps := []struct {
		name string
		fn   func(context.Context, []*target) error
	}{
		{"small", b.runSmall},
		{"bulk", b.runBulk},
		{"select", b.runSelect},
		{"append", b.runAppend},
		{"idle", b.runIdle},
	}
	for _, s := range steps {
		if !want[s.name] {
			continue
		}
		t0 := time.Now()
		if err := s.fn(ctx, ts); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		b.logf("%s done in %.0fs", s.name, time.Since(t0).Seconds())
	}
	return b.report()
}

// record keeps one measurement.
func (b *bench) record(workload, param, tgt string, run int, m map[string]float64) {
	b.samples = append(b.samples, sample{Workload: workload, Param: param, Target: tgt, Run: run, Metrics: m})
}

func (b *bench) runSmall(ctx context.Context, ts []*target) error {
	for _, s := range strings.Split(b.o.smallSessions, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("bad -small-sessions %q", b.o.smallSessions)
		}
		param := fmt.Sprintf("%d sessions", n)
		args := []string{"-workload", "small", "-sessions", strconv.Itoa(n), "-duration", b.o.smallDuration.String(), "-concurrency", "50"}
		for r := 0; r < b.o.runs; r++ {
			for _, t := range rotate(ts, r) {
				out, err := b.measure(ctx, t, args, nil)
				if err != nil {
					return err
				}
				m := map[string]float64{
					"p50_us":    out.res.P50us,
					"p99_us":    out.res.P99us,
					"ops_per_s": out.res.OpsPerS,
				}
				for op, st := range out.res.ByOp {
					m["p50_us_"+op] = st.P50us
				}
				if t.pids != nil && out.res.Ops > 0 {
					m["cpu_us_per_op"] = float64(out.cpu.Microseconds()) / float64(out.res.Ops)
				}
				b.record("small", param, t.name, r, m)
				b.logf("small %s %-7s run %d: p50 %.0f µs p99 %.0f µs %.0f cmd/s", param, t.name, r+1, out.res.P50us, out.res.P99us, out.res.OpsPerS)
			}
		}
	}
	return nil
}

func (b *bench) runBulk(ctx context.Context, ts []*target) error {
	param := fmt.Sprintf("%d × %d B", b.o.bulkCount, b.o.bulkSize)
	args := []string{"-workload", "bulk", "-mailbox", "bulk", "-rounds", strconv.Itoa(b.o.bulkRounds), "-duration", "0"}
	for r := 0; r < b.o.runs; r++ {
		for _, t := range rotate(ts, r) {
			out, err := b.measure(ctx, t, args, nil)
			if err != nil {
				return err
			}
			m := map[string]float64{"mb_per_s": out.res.MBps}
			if t.pids != nil && out.res.DurationS > 0 {
				m["cpu_pct"] = 100 * out.cpu.Seconds() / out.res.DurationS
			}
			b.record("bulk", param, t.name, r, m)
			b.logf("bulk %-7s run %d: %.0f MB/s", t.name, r+1, out.res.MBps)
		}
	}
	return nil
}

func (b *bench) runSelect(ctx context.Context, ts []*target) error {
	for _, step := range b.steps {
		if err := b.runSelectStep(ctx, ts, step); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) runSelectStep(ctx context.Context, ts []*target, step int) error {
	param := fmt.Sprintf("%s messages, dense UIDs", fmtNum(float64(b.o.selectMsgs), 0))
	if step > 1 {
		param = fmt.Sprintf("%s messages, UIDs 1+%dk", fmtNum(float64(b.o.selectMsgs), 0), step)
	}
	args := []string{"-workload", "select", "-mailbox", bigFolder(step), "-rounds", "1", "-search", "esearch",
		"-hold", b.o.selectHold.String(), "-timeout", "10m"}
	for r := 0; r < b.o.runs; r++ {
		for _, t := range rotate(ts, r) {
			if t.restart != nil {
				if err := t.restart(ctx); err != nil {
					return err
				}
			}
			out, err := b.measure(ctx, t, args, nil)
			if err != nil {
				return err
			}
			if out.res.Messages != int64(b.o.selectMsgs) {
				return fmt.Errorf("SELECT through %s saw %d messages, want %d", t.name, out.res.Messages, b.o.selectMsgs)
			}
			m := map[string]float64{"select_ms": out.res.SelectMS, "search_ms": out.res.SearchMS}
			if t.pids != nil {
				m["peak_kb"] = float64(out.peak-out.base) / 1024
			}
			b.record("select", param, t.name, r, m)
			b.logf("select %-7s run %d: SELECT %.0f ms, UID SEARCH %.0f ms, peak +%.0f KB", t.name, r+1, out.res.SelectMS, out.res.SearchMS, float64(out.peak-out.base)/1024)
		}
	}
	return nil
}

// appendSizes are the message sizes of the append workload: a tenth of
// -append-size, then -append-size, so that the report can tell whether the
// proxy's peak memory grows with the message.
func (b *bench) appendSizes() []int64 {
	return []int64{max(b.o.appendSize/10, 1000), b.o.appendSize}
}

// appendParam names an append workload's parameter.
func (b *bench) appendParam(size int64) string {
	return fmt.Sprintf("%d × %s MB", b.o.appendCount, strconv.FormatFloat(float64(size)/1e6, 'f', -1, 64))
}

func (b *bench) runAppend(ctx context.Context, ts []*target) error {
	for _, size := range b.appendSizes() {
		if err := b.runAppendSize(ctx, ts, size); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) runAppendSize(ctx context.Context, ts []*target, size int64) error {
	param := b.appendParam(size)
	args := []string{"-workload", "append", "-mailbox", "append", "-count", strconv.Itoa(b.o.appendCount),
		"-size", strconv.FormatInt(size, 10)}
	for r := 0; r < b.o.runs; r++ {
		for _, t := range rotate(ts, r) {
			if t.restart != nil {
				if err := t.restart(ctx); err != nil {
					return err
				}
			}
			out, err := b.measure(ctx, t, args, nil)
			if err != nil {
				return err
			}
			m := map[string]float64{"mb_per_s": out.res.MBps, "fetch_mb_per_s": out.res.FetchMBps}
			if t.pids != nil {
				m["peak_kb"] = float64(out.peak-out.base) / 1024
				m["base_kb"] = float64(out.base) / 1024
			}
			b.record("append", param, t.name, r, m)
			b.logf("append %-7s run %d: APPEND %.0f MB/s, FETCH %.0f MB/s, peak +%.0f KB", t.name, r+1, out.res.MBps, out.res.FetchMBps, float64(out.peak-out.base)/1024)
		}
	}
	return nil
}

// idleCap is the number of sessions a proxy can hold under the
// descriptor limit: two per session, and some for the process itself.
func (b *bench) idleCap() int { return (b.nofile - 64) / 2 }

func (b *bench) runIdle(ctx context.Context, ts []*target) error {
	n := b.o.idleSessions
	if c := b.idleCap(); n > c {
		b.notes = append(b.notes, fmt.Sprintf("IDLE ran %d sessions, not %d: RLIMIT_NOFILE here is %d (hard; raising it needs CAP_SYS_RESOURCE, which this machine does not grant), and a proxy holds two descriptors per session.", c, n, b.nofile))
		b.logf("idle: %d sessions capped to %d by RLIMIT_NOFILE %d", n, c, b.nofile)
		n = c
	}
	param := fmt.Sprintf("%d sessions", n)
	args := []string{"-workload", "idle", "-sessions", strconv.Itoa(n), "-duration", b.o.idleHold.String(), "-concurrency", "100", "-timeout", "5m"}
	if !b.o.idleDirect {
		// Nothing to measure there but Dovecot's own login rate.
		ts = ts[1:]
		b.notes = append(b.notes, "IDLE does not run direct (-idle-direct): there is no proxy to measure, and Dovecot's login rate (one imap process per session) sets the set-up time.")
	}
	for r := 0; r < b.o.idleRuns; r++ {
		for _, t := range rotate(ts, r) {
			if t.restart != nil {
				if err := t.restart(ctx); err != nil {
					return err
				}
			}
			out, err := b.measure(ctx, t, args, &holdProbe{wait: b.o.idleHold / 2})
			if err != nil {
				return err
			}
			m := map[string]float64{"sessions": float64(out.res.Sessions), "setup_s": out.res.SetupS}
			if out.ready != nil {
				m["setup_s"] = out.ready.SetupS
			}
			if t.pids != nil && out.midHold > 0 && out.res.Sessions > 0 {
				m["kb_per_session"] = float64(out.midHold-out.base) / 1024 / float64(out.res.Sessions)
				m["rss_mb"] = float64(out.midHold) / 1e6
			}
			b.record("idle", param, t.name, r, m)
			b.logf("idle %-7s run %d: %d sessions set up in %.1fs, %.1f KB RSS per session", t.name, r+1, out.res.Sessions, m["setup_s"], m["kb_per_session"])
			// Let Dovecot drop the closed sessions before the next target.
			if !sleepCtx(ctx, 3*time.Second) {
				return ctx.Err()
			}
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// profileAll runs workloads once more through a uidgate built with pprof
// (each on a fresh process) and writes into -profile DIR: CPU profiles of
// small (largest session count), bulk, append and select, a heap profile
// while the large mailbox is selected, and heap and goroutine profiles
// while the idle sessions are held. These runs are not measurements.
func (b *bench) profileAll(ctx context.Context) error {
	if err := os.MkdirAll(b.o.profile, 0o755); err != nil {
		return err
	}
	t := b.targets()[1]
	maxSessions := "1"
	for _, s := range strings.Split(b.o.smallSessions, ",") {
		maxSessions = strings.TrimSpace(s)
	}
	idleN := strconv.Itoa(min(b.o.idleSessions, b.idleCap()))
	type job struct {
		name     string
		args     []string
		cpuSecs  int           // CPU profile of this many seconds from the start
		heapWait time.Duration // heap profile this long after the start
		idle     bool          // heap and goroutine profiles while held
	}
	jobs := []job{
		{name: "small", args: []string{"-workload", "small", "-sessions", maxSessions, "-duration", "10s", "-concurrency", "50"}, cpuSecs: 9},
		{name: "bulk", args: []string{"-workload", "bulk", "-mailbox", "bulk", "-rounds", "1000", "-duration", "10s"}, cpuSecs: 9},
		{name: "append", args: []string{"-workload", "append", "-mailbox", "append", "-count", "4", "-size", strconv.FormatInt(b.o.appendSize, 10)}, cpuSecs: 4},
		{name: "select", args: []string{"-workload", "select", "-mailbox", bigFolder(b.steps[len(b.steps)-1]), "-rounds", "1", "-search", "none", "-hold", "4s", "-timeout", "10m"}, cpuSecs: 2, heapWait: 3 * time.Second},
		{name: "idle", args: []string{"-workload", "idle", "-sessions", idleN, "-duration", "20s", "-concurrency", "100", "-timeout", "5m"}, idle: true},
	}
	for _, j := range jobs {
		b.logf("profiling %s", j.name)
		if err := b.startProfiled(ctx); err != nil {
			return err
		}
		prof := func(ctx context.Context, kind, file string) error {
			return fetchProfile(ctx, "http://"+b.ug.pprof+"/debug/pprof/"+kind, filepath.Join(b.o.profile, file))
		}
		var wg syncErrs
		if j.cpuSecs > 0 {
			wg.run(func() error { return prof(ctx, fmt.Sprintf("profile?seconds=%d", j.cpuSecs), j.name+".cpu.pprof") })
		}
		if j.heapWait > 0 {
			wg.run(func() error {
				if !sleepCtx(ctx, j.heapWait) {
					return ctx.Err()
				}
				return prof(ctx, "heap?gc=1", j.name+".heap.pprof")
			})
		}
		var probe *holdProbe
		if j.idle {
			probe = &holdProbe{wait: 5 * time.Second, fn: func(ctx context.Context) {
				wg.run(func() error {
					return errors.Join(prof(ctx, "heap?gc=1", "idle.heap.pprof"), prof(ctx, "goroutine", "idle.goroutine.pprof"))
				})
			}}
		}
		_, err := b.measure(ctx, t, j.args, probe)
		if err = errors.Join(err, wg.wait()); err != nil {
			return fmt.Errorf("%s: %w", j.name, err)
		}
	}
	b.logf("profiles written to %s", b.o.profile)
	return nil
}

// startProfiled replaces uidgate with a fresh one built with pprof.
func (b *bench) startProfiled(ctx context.Context) error {
	if b.ug != nil {
		b.ps.stop(b.ug.proc)
		b.ug = nil
	}
	var err error
	b.ug, err = startUidgate(ctx, b.ps, b.work, b.profBin, b.dc.addr, true, b.o.perUserLocks)
	return err
}

// syncErrs runs functions in goroutines and joins their errors.
type syncErrs struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func (s *syncErrs) run(fn func() error) {
	s.wg.Go(func() {
		if err := fn(); err != nil {
			s.mu.Lock()
			s.errs = append(s.errs, err)
			s.mu.Unlock()
		}
	})
}

func (s *syncErrs) wait() error {
	s.wg.Wait()
	return errors.Join(s.errs...)
}

// fetchProfile saves a pprof endpoint's answer to file.
func fetchProfile(ctx context.Context, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
