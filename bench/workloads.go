package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

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
		"-users", strconv.Itoa(t.users), "-pass", password, "-max-time", "50m"}, args...)
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
		return out, fmt.Errorf("imapload against %s: no result (%v)\n%s", t.name, werr, stderr.String()) // argv holds -pass: not printed
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

// workloadStep is one workload of a backend: its name in -workloads and
// what runs it against the targets.
type workloadStep struct {
	name string
	fn   func(context.Context, []*target) error
}

// runAll warms up st's targets and runs every step that -workloads
// selects against them.
func (b *bench) runAll(ctx context.Context, st *stack, steps []workloadStep) error {
	ts := b.targets(st)
	// Warm every target once: the proxies' first sessions pay for heap
	// growth and code paging that later ones do not.
	for _, t := range ts {
		if _, err := b.measure(ctx, t, []string{"-workload", "small", "-sessions", "20", "-duration", "1s"}, nil); err != nil {
			return fmt.Errorf("warm-up of %s: %w", t.name, err)
		}
	}
	for _, s := range steps {
		if !b.workloads[s.name] {
			continue
		}
		t0 := time.Now()
		if err := s.fn(ctx, ts); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		b.logf("%s %s done in %.0fs", st.backend, s.name, time.Since(t0).Seconds())
	}
	return nil
}

// record keeps one measurement of target t.
func (b *bench) record(workload, param string, t *target, run int, m map[string]float64) {
	b.samples = append(b.samples, sample{Backend: t.backend, Workload: workload, Param: param, Target: t.name, Run: run, Metrics: m})
}

// runSmall runs the small-command workload at each of the comma-separated
// session counts; extra is added to imapload's arguments (-mix).
func (b *bench) runSmall(ctx context.Context, ts []*target, sessions string, extra []string) error {
	for _, s := range strings.Split(sessions, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("bad session counts %q", sessions)
		}
		param := fmt.Sprintf("%d sessions", n)
		args := []string{"-workload", "small", "-sessions", strconv.Itoa(n), "-duration", b.o.smallDuration.String(), "-concurrency", "50"}
		args = append(args, extra...)
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
				b.record("small", param, t, r, m)
				b.logf("%s small %s %-7s run %d: p50 %.0f µs p99 %.0f µs %.0f cmd/s", t.backend, param, t.name, r+1, out.res.P50us, out.res.P99us, out.res.OpsPerS)
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
			b.record("bulk", param, t, r, m)
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
	return b.runSelectBox(ctx, ts, param, args, b.o.selectMsgs)
}

// runSelectBox runs imapload's select workload (args) against each target,
// each on a freshly started proxy, and checks that every SELECT saw want
// messages.
func (b *bench) runSelectBox(ctx context.Context, ts []*target, param string, args []string, want int) error {
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
			if out.res.Messages != int64(want) {
				return fmt.Errorf("SELECT through %s saw %d messages, want %d", t.name, out.res.Messages, want)
			}
			m := map[string]float64{"select_ms": out.res.SelectMS, "search_ms": out.res.SearchMS}
			if t.pids != nil {
				m["peak_kb"] = float64(out.peak-out.base) / 1024
			}
			b.record("select", param, t, r, m)
			b.logf("%s select %-7s run %d: SELECT %.0f ms, UID SEARCH %.0f ms, peak +%.0f KB", t.backend, t.name, r+1, out.res.SelectMS, out.res.SearchMS, float64(out.peak-out.base)/1024)
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
			b.record("append", param, t, r, m)
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
			b.record("idle", param, t, r, m)
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
