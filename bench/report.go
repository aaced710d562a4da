package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// sample is one run's numbers for one backend, workload, parameter and
// target.
type sample struct {
	// Backend is "cyrus23" or "dovecot"; files of older runs have none:
	// they measured Dovecot.
	Backend  string             `json:"backend,omitempty"`
	Workload string             `json:"workload"`
	Param    string             `json:"param"`
	Target   string             `json:"target"`
	Run      int                `json:"run"`
	Metrics  map[string]float64 `json:"metrics"`
}

// stat is the median of a metric over the runs, and its spread.
type stat struct {
	median, min, max float64
	n                int
}

// ok reports whether there is a value.
func (s stat) ok() bool { return s.n > 0 }

// spread is half the range relative to the median, in percent.
func (s stat) spread() float64 {
	if s.median == 0 {
		return 0
	}
	return 50 * (s.max - s.min) / math.Abs(s.median)
}

func median(xs []float64) stat {
	if len(xs) == 0 {
		return stat{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{median: m, min: s[0], max: s[len(s)-1], n: len(s)}
}

// view returns b with only the samples of backend, so that the report's
// lookups (get, params) see one backend at a time.
func (b *bench) view(backend string) *bench {
	v := *b
	v.samples = nil
	for _, s := range b.samples {
		if s.Backend == backend || s.Backend == "" && backend == "dovecot" {
			v.samples = append(v.samples, s)
		}
	}
	return &v
}

// sum returns the total of metric over every run of workload/param
// against target, and how many runs had it.
func (b *bench) sum(workload, param, target, metric string) (float64, int) {
	var total float64
	n := 0
	for _, s := range b.samples {
		if s.Workload == workload && s.Param == param && s.Target == target {
			if v, ok := s.Metrics[metric]; ok {
				total += v
				n++
			}
		}
	}
	return total, n
}

// get returns the median of metric over every run of workload/param
// against target.
func (b *bench) get(workload, param, target, metric string) stat {
	var xs []float64
	for _, s := range b.samples {
		if s.Workload == workload && s.Param == param && s.Target == target {
			if v, ok := s.Metrics[metric]; ok {
				xs = append(xs, v)
			}
		}
	}
	return median(xs)
}

// params returns the parameters workload ran with, in order.
func (b *bench) params(workload string) []string {
	var ps []string
	for _, s := range b.samples {
		if s.Workload == workload && !slices.Contains(ps, s.Param) {
			ps = append(ps, s.Param)
		}
	}
	return ps
}

// row is one line of the results table: a metric for each target.
type row struct {
	what, unit string
	workload   string
	param      string
	metric     string
	digits     int
	lower      bool // lower is better (latency, memory)
}

// fmtNum formats v with d decimals and thousands separators.
func fmtNum(v float64, d int) string {
	s := fmt.Sprintf("%.*f", d, v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	intPart, frac, _ := strings.Cut(s, ".")
	var out []byte
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, byte(c))
	}
	r := string(out)
	if frac != "" {
		r += "." + frac
	}
	if neg {
		r = "−" + r
	}
	return r
}

// signed is fmtNum with an explicit sign.
func signed(v float64, d int) string {
	if v < 0 {
		return fmtNum(v, d)
	}
	return "+" + fmtNum(v, d)
}

func (b *bench) cell(st stat, digits int) string {
	if !st.ok() {
		return "—"
	}
	s := fmtNum(st.median, digits)
	if st.n > 1 {
		s += fmt.Sprintf(" ±%.0f%%", st.spread())
	}
	return s
}

func ratio(a, b stat) string {
	if !a.ok() || !b.ok() || b.median == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", a.median/b.median)
}

// check is one of the targets and whether the run met it.
type check struct {
	target, measured string
	met              bool
	known            bool // false: not measured in this run
}

// report prints the tables and writes them into the document.
func (b *bench) report() error {
	var md bytes.Buffer
	b.writeReport(&md)
	fmt.Println(md.String())
	if b.o.results != "" {
		if err := b.writeResults(); err != nil {
			return err
		}
	}
	if b.o.doc == "" {
		return nil
	}
	doc := b.o.doc
	if !filepath.IsAbs(doc) {
		doc = filepath.Join(b.root, doc)
	}
	if err := writeSection(doc, md.String()); err != nil {
		return err
	}
	b.logf("results written to %s", doc)
	return nil
}

// writeResults writes every run's numbers to the -results file.
func (b *bench) writeResults() error {
	var raw bytes.Buffer
	enc := json.NewEncoder(&raw)
	enc.Encode(resultsMeta{Meta: true, Argv: b.argv, Started: b.started, Runs: b.o.runs, IdleRuns: b.o.idleRuns,
		AppendSize: b.o.appendSize, AppendCount: b.o.appendCount, Notes: b.notes,
		C23Users: b.o.c23Users, InboxMsgs: b.o.inboxMsgs, InboxSize: b.o.inboxSize, ScenarioRounds: b.o.scenarioRounds})
	for _, s := range b.samples {
		enc.Encode(s)
	}
	return os.WriteFile(b.o.results, raw.Bytes(), 0o644)
}

// resultsMeta is the first line of a -results file: what the report
// needs besides the samples, so that -report-from can write it again.
type resultsMeta struct {
	Meta        bool      `json:"meta"`
	Argv        []string  `json:"argv"`
	Started     time.Time `json:"started"`
	Runs        int       `json:"runs"`
	IdleRuns    int       `json:"idle_runs"`
	AppendSize  int64     `json:"append_size"`
	AppendCount int       `json:"append_count"`
	Notes       []string  `json:"notes"`

	C23Users       int `json:"cyrus23_users,omitempty"`
	InboxMsgs      int `json:"inbox_msgs,omitempty"`
	InboxSize      int `json:"inbox_size,omitempty"`
	ScenarioRounds int `json:"scenario_rounds,omitempty"`
}

// loadResults reads a -results file back into b (for -report-from).
func (b *bench) loadResults(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var m resultsMeta
	if err := dec.Decode(&m); err != nil || !m.Meta {
		return fmt.Errorf("%s: no meta line (written by an older bench?): %v", file, err)
	}
	b.argv, b.started, b.notes = m.Argv, m.Started, m.Notes
	b.o.runs, b.o.idleRuns, b.o.appendSize, b.o.appendCount = m.Runs, m.IdleRuns, m.AppendSize, m.AppendCount
	b.o.c23Users, b.o.inboxMsgs, b.o.inboxSize, b.o.scenarioRounds = m.C23Users, m.InboxMsgs, m.InboxSize, m.ScenarioRounds
	for dec.More() {
		var s sample
		if err := dec.Decode(&s); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		b.samples = append(b.samples, s)
	}
	return nil
}

// command reconstructs the command line that produced the report.
func (b *bench) command() string {
	parts := []string{"go", "run", "./bench"}
	for _, a := range b.argv {
		if strings.ContainsAny(a, " '\"$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

func (b *bench) writeReport(w *bytes.Buffer) {
	o := b.o
	fmt.Fprintf(w, "Command (from the repository root, as root):\n\n    %s\n\n", b.command())
	fmt.Fprintf(w, "Run %s (UTC) on %s.\n", b.started.UTC().Format("2006-01-02 15:04"), b.machine())
	idle := ""
	if len(b.view("dovecot").params("idle")) > 0 {
		idle = fmt.Sprintf(" (idle: %d)", o.idleRuns)
	}
	fmt.Fprintf(w, "Medians of %d runs per target%s, targets in rotating order; "+
		"±x%% is half the range of the runs relative to the median. "+
		"Latency is per command, from writing it to its tagged response, closed loop. "+
		"1 MB = 10^6 bytes. Memory is the proxy's RSS from /proc (nginx: its worker), "+
		"on a freshly started proxy for SELECT, APPEND and IDLE.\n\n", o.runs, idle)
	for _, n := range b.notes {
		fmt.Fprintf(w, "Note: %s\n\n", n)
	}
	// Cyrus 2.3 first: the server uidgate is deployed in front of.
	if v := b.view("cyrus23"); len(v.samples) > 0 {
		v.writeCyrus23(w)
	}
	if v := b.view("dovecot"); len(v.samples) > 0 {
		v.writeDovecot(w)
	}
}

// writeTable writes rows as the table of medians: direct, uidgate, nginx
// and the ratios. Rows without any value are left out.
func (b *bench) writeTable(w *bytes.Buffer, rows []row) {
	fmt.Fprintln(w, "| workload | unit | direct | uidgate | nginx | uidgate ÷ direct | uidgate ÷ nginx |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		d := b.get(r.workload, r.param, "direct", r.metric)
		u := b.get(r.workload, r.param, "uidgate", r.metric)
		n := b.get(r.workload, r.param, "nginx", r.metric)
		if !d.ok() && !u.ok() && !n.ok() {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.what, r.unit,
			b.cell(d, r.digits), b.cell(u, r.digits), b.cell(n, r.digits), ratio(u, d), ratio(u, n))
	}
	fmt.Fprintln(w)
}

// smallRows are the rows of the small-command workload, what naming it.
func (b *bench) smallRows(what string) []row {
	var rows []row
	for _, p := range b.params("small") {
		rows = append(rows,
			row{what: what + ", " + p + ": p50", unit: "µs", workload: "small", param: p, metric: "p50_us", lower: true},
			row{what: what + ", " + p + ": p99", unit: "µs", workload: "small", param: p, metric: "p99_us", lower: true},
			row{what: what + ", " + p + ": throughput", unit: "cmd/s", workload: "small", param: p, metric: "ops_per_s"},
			row{what: what + ", " + p + ": proxy CPU per command", unit: "µs", workload: "small", param: p, metric: "cpu_us_per_op", lower: true},
		)
	}
	return rows
}

// byOp is one command of the small workload: its key in imapload's by_op
// (cmd/imapload smallOps, seenOps) and its column heading.
type byOp struct{ key, heading string }

// writeByOp writes the small workload's p50 by command.
func (b *bench) writeByOp(w *bytes.Buffer, title string, ops []byOp) {
	ps := b.params("small")
	if len(ps) == 0 {
		return
	}
	fmt.Fprintf(w, "%s, p50 by command (µs; direct / uidgate / nginx):\n\n", title)
	fmt.Fprint(w, "| sessions |")
	for _, op := range ops {
		fmt.Fprintf(w, " %s |", op.heading)
	}
	fmt.Fprint(w, "\n|---|")
	fmt.Fprintln(w, strings.Repeat("---:|", len(ops)))
	for _, p := range ps {
		fmt.Fprintf(w, "| %s |", p)
		for _, op := range ops {
			var cells []string
			for _, t := range []string{"direct", "uidgate", "nginx"} {
				st := b.get("small", p, t, "p50_us_"+op.key)
				if st.ok() {
					cells = append(cells, fmtNum(st.median, 0))
				} else {
					cells = append(cells, "—")
				}
			}
			fmt.Fprintf(w, " %s |", strings.Join(cells, " / "))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
}

// flagOps are the commands of imapload's default mix (-mix flags).
var flagOps = []byOp{
	{"NOOP", "NOOP"}, {"FETCH", "FETCH n (FLAGS)"}, {"STORE+", "STORE n +FLAGS"}, {"STORE-", "STORE n −FLAGS"},
}

// seenOps are the commands of imapload -mix seen.
var seenOps = []byOp{
	{"NOOP", "NOOP"}, {"FETCH", "FETCH n (FLAGS)"},
	{"STORE+", `STORE n +FLAGS (\Flagged)`}, {"STORE-", `STORE n −FLAGS (\Flagged)`},
	{"FETCHBODY", "FETCH n BODY[]"}, {"STORE+Seen", `STORE n +FLAGS (\Seen)`}, {"STORE-Seen", `STORE n −FLAGS (\Seen)`},
}

// scenarioWhat describes the seed's scenarios (e2e/scenarios).
var scenarioWhat = map[string]string{
	"A": "scenario A (STORE n +FLAGS (\\Deleted) by number while another session expunges)",
	"B": "scenario B (\\Seen by STORE n and FETCH n BODY[] in 3 sessions while LMTP delivers)",
}

// writeCyrus23 writes the Cyrus 2.3 section.
func (b *bench) writeCyrus23(w *bytes.Buffer) {
	o := b.o
	version := cyrus23Version
	fmt.Fprintf(w, "### Cyrus %s, uidgate legacy = true (the deployed configuration)\n\n", version)
	fmt.Fprintf(w, "uidgate's `[[backend]]`: `legacy = true`, `cyrus_namespace = true`, `explicit_seen = \"on\"`. "+
		"Cyrus %s built by `.ci/install-deps`, started by `e2e/backends` (an imapd forked per connection), "+
		"filled over LMTP: %d users with %d messages of %d B in their INBOX (session i logs in as user i mod %d), "+
		"and one INBOX for the SELECT. Small commands: `imapload -mix seen`, a loop of NOOP, FETCH n (FLAGS), "+
		"STORE n ±FLAGS (\\Flagged), FETCH n BODY[] (not PEEK: it sets \\Seen), STORE n ±FLAGS (\\Seen).\n\n",
		version, o.c23Users, o.inboxMsgs, o.inboxSize, o.c23Users)
	rows := b.smallRows("small commands with \\Seen")
	for _, p := range b.params("select") {
		rows = append(rows,
			row{what: "SELECT, " + p + ": time to tagged OK", unit: "ms", workload: "select", param: p, metric: "select_ms", digits: 1, lower: true},
			row{what: "then UID SEARCH ALL", unit: "ms", workload: "select", param: p, metric: "search_ms", digits: 1, lower: true},
			row{what: "SELECT, " + p + ": proxy peak RSS increase", unit: "KB", workload: "select", param: p, metric: "peak_kb", lower: true},
		)
	}
	for _, p := range b.params("scenarios") {
		rows = append(rows, row{what: scenarioWhat[p] + ": time per round", unit: "ms", workload: "scenarios", param: p, metric: "ms_per_round", lower: true})
	}
	b.writeTable(w, rows)
	b.writeByOp(w, "Small commands with \\Seen", seenOps)

	ps := b.params("scenarios")
	if len(ps) == 0 {
		return
	}
	fmt.Fprintf(w, "The seed's scenarios (`e2e/scenarios` in their real-server mode, as `TestRealScenarios` runs them: "+
		"sessions of one user, the truth read from Cyrus itself after every round), %d rounds per run, "+
		"each run with a seed of its own (Cyrus drops a delivery whose Message-ID it delivered before); "+
		"totals over the runs:\n\n", o.scenarioRounds)
	fmt.Fprintln(w, "| scenario | target | rounds | wall time | rounds/s | wrong-message writes | missed writes | lost \\Seen | spurious \\Seen | failed rounds |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, p := range ps {
		for _, t := range []string{"direct", "uidgate", "nginx"} {
			rounds, n := b.sum("scenarios", p, t, "rounds")
			if n == 0 {
				continue
			}
			wall := 0.0 // seconds: each run's time per round × its rounds
			for _, s := range b.samples {
				if s.Workload == "scenarios" && s.Param == p && s.Target == t {
					wall += s.Metrics["ms_per_round"] * s.Metrics["rounds"] / 1000
				}
			}
			perS := "—"
			if wall > 0 {
				perS = fmtNum(rounds/wall, 1)
			}
			cell := func(metric string) string {
				v, _ := b.sum("scenarios", p, t, metric)
				return fmtNum(v, 0)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s s | %s | %s | %s | %s | %s | %s |\n", p, t, fmtNum(rounds, 0), fmtNum(wall, 1), perS,
				cell("wrong"), cell("missed"), cell("lost_seen"), cell("spurious_seen"), cell("errors"))
		}
	}
	fmt.Fprintln(w)
}

// writeDovecot writes the Dovecot section.
func (b *bench) writeDovecot(w *bytes.Buffer) {
	fmt.Fprintln(w, "### Dovecot 2.3, uidgate with its defaults (legacy = false)")
	fmt.Fprintln(w)
	rows := b.smallRows("small commands")
	for _, p := range b.params("bulk") {
		rows = append(rows,
			row{what: "FETCH 1:* BODY.PEEK[], " + p, unit: "MB/s", workload: "bulk", param: p, metric: "mb_per_s"},
			row{what: "FETCH 1:* BODY.PEEK[], " + p + ": proxy CPU", unit: "% of a core", workload: "bulk", param: p, metric: "cpu_pct", lower: true},
		)
	}
	for _, p := range b.params("select") {
		rows = append(rows,
			row{what: "SELECT, " + p + ": time to tagged OK", unit: "ms", workload: "select", param: p, metric: "select_ms", lower: true},
			row{what: "then UID SEARCH RETURN (ALL) ALL", unit: "ms", workload: "select", param: p, metric: "search_ms", lower: true},
			row{what: "SELECT, " + p + ": proxy peak RSS increase", unit: "KB", workload: "select", param: p, metric: "peak_kb", lower: true},
		)
	}
	for _, p := range b.params("append") {
		rows = append(rows,
			row{what: "APPEND " + p, unit: "MB/s", workload: "append", param: p, metric: "mb_per_s"},
			row{what: "FETCH of those messages", unit: "MB/s", workload: "append", param: p, metric: "fetch_mb_per_s"},
			row{what: "APPEND + FETCH " + p + ": proxy peak RSS increase", unit: "KB", workload: "append", param: p, metric: "peak_kb", lower: true},
		)
	}
	for _, p := range b.params("idle") {
		rows = append(rows,
			row{what: "IDLE, " + p + ": sessions held", unit: "", workload: "idle", param: p, metric: "sessions"},
			row{what: "IDLE, " + p + ": set-up time", unit: "s", workload: "idle", param: p, metric: "setup_s", digits: 1, lower: true},
			row{what: "IDLE, " + p + ": proxy RSS per session", unit: "KB", workload: "idle", param: p, metric: "kb_per_session", digits: 1, lower: true},
		)
	}
	b.writeTable(w, rows)
	b.writeByOp(w, "Small commands", flagOps)

	fmt.Fprintln(w, "Targets of issue 7:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | measured | |")
	fmt.Fprintln(w, "|---|---|---|")
	for _, c := range b.checks() {
		verdict := "not measured"
		if c.known {
			verdict = "missed"
			if c.met {
				verdict = "met"
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", c.target, c.measured, verdict)
	}
}

// checks evaluates the targets against the medians.
func (b *bench) checks() []check {
	var cs []check
	for _, p := range b.params("bulk") {
		d, u, n := b.get("bulk", p, "direct", "mb_per_s"), b.get("bulk", p, "uidgate", "mb_per_s"), b.get("bulk", p, "nginx", "mb_per_s")
		if d.ok() && u.ok() {
			r := u.median / d.median
			cs = append(cs, check{"bulk FETCH ≥ 0.95 × direct", fmt.Sprintf("%.2f ×", r), r >= 0.95, true})
		}
		if n.ok() && u.ok() {
			r := u.median / n.median
			cs = append(cs, check{"bulk FETCH ≥ 1.0 × nginx", fmt.Sprintf("%.2f ×", r), r >= 1.0, true})
		}
	}
	ps := b.params("small")
	for _, p := range ps {
		d, u, n := b.get("small", p, "direct", "p50_us"), b.get("small", p, "uidgate", "p50_us"), b.get("small", p, "nginx", "p50_us")
		if d.ok() && u.ok() && n.ok() {
			ua, na := u.median-d.median, n.median-d.median
			c := check{target: "added p50 ≤ 1.1 × nginx's added p50, " + p, known: true}
			c.measured = fmt.Sprintf("uidgate %s µs, nginx %s µs", signed(ua, 0), signed(na, 0))
			if na > 0 {
				c.measured += fmt.Sprintf(" (%.2f ×)", ua/na)
			}
			c.met = ua <= 1.1*math.Max(na, 0)
			cs = append(cs, c)
		}
	}
	if len(ps) > 0 {
		p := ps[len(ps)-1]
		d, u := b.get("small", p, "direct", "p99_us"), b.get("small", p, "uidgate", "p99_us")
		if d.ok() && u.ok() {
			a := u.median - d.median
			cs = append(cs, check{"p99 added ≤ 2 ms, " + p, signed(a, 0) + " µs", a <= 2000, true})
		}
	}
	for _, p := range b.params("select") {
		u := b.get("select", p, "uidgate", "peak_kb")
		if u.ok() {
			cs = append(cs, check{"map of " + p + " ≤ 4 MB (bounded by the proxy's peak RSS increase)",
				fmt.Sprintf("≤ %s KB", fmtNum(u.median, 0)), u.median <= 4096, true})
		}
		ds, dq, us := b.get("select", p, "direct", "select_ms"), b.get("select", p, "direct", "search_ms"), b.get("select", p, "uidgate", "select_ms")
		if r, all := b.pairedBuildRatio(p); ds.ok() && dq.ok() && us.ok() && r.ok() {
			per := make([]string, len(all))
			for i, x := range all {
				per[i] = fmt.Sprintf("%.2f", x)
			}
			cs = append(cs, check{"map built in ≤ 1.5 × the backend's time to send the UIDs, " + p,
				fmt.Sprintf("SELECT %s ms through uidgate; UID SEARCH direct %s ms (medians); per run %s: median %.2f ×",
					signed(us.median-ds.median, 0), fmtNum(dq.median, 0), strings.Join(per, ", "), r.median),
				r.median <= 1.5, true})
		}
	}
	for _, p := range b.params("idle") {
		u := b.get("idle", p, "uidgate", "kb_per_session")
		if u.ok() {
			cs = append(cs, check{"≤ 40 KB RSS per idle session, " + p, fmt.Sprintf("%.1f KB", u.median), u.median <= 40, true})
		}
	}
	if sizes := b.appendSizes(); len(sizes) == 2 {
		small := b.get("append", b.appendParam(sizes[0]), "uidgate", "peak_kb")
		large := b.get("append", b.appendParam(sizes[1]), "uidgate", "peak_kb")
		if small.ok() && large.ok() {
			// Flat: the peak does not grow with the message. 5 % of the
			// extra size is well above noise and far below any copy.
			extra := float64(sizes[1]-sizes[0]) / 1024
			growth := large.median - small.median
			cs = append(cs, check{
				fmt.Sprintf("APPEND and FETCH of %s MB with flat memory (peak grows < 5 %% of the extra size from %s MB)",
					strconv.FormatFloat(float64(sizes[1])/1e6, 'f', -1, 64), strconv.FormatFloat(float64(sizes[0])/1e6, 'f', -1, 64)),
				fmt.Sprintf("%s KB at %s MB, %s KB at %s MB (%.1f %%)", signed(small.median, 0),
					strconv.FormatFloat(float64(sizes[0])/1e6, 'f', -1, 64), signed(large.median, 0),
					strconv.FormatFloat(float64(sizes[1])/1e6, 'f', -1, 64), 100*growth/extra),
				growth < 0.05*extra, true})
		}
	}
	return cs
}

// pairedBuildRatio returns, over the runs of the select workload with
// param, the median of (uidgate's SELECT − direct SELECT) ÷ direct UID
// SEARCH, each from the same run (runs are close in time, so pairing
// them cancels some of the machine's drift), and how many runs paired.
func (b *bench) pairedBuildRatio(param string) (stat, []float64) {
	byRun := map[int]map[string]map[string]float64{}
	for _, s := range b.samples {
		if s.Workload != "select" || s.Param != param {
			continue
		}
		if byRun[s.Run] == nil {
			byRun[s.Run] = map[string]map[string]float64{}
		}
		byRun[s.Run][s.Target] = s.Metrics
	}
	var rs []float64
	for r := 0; r < len(byRun); r++ {
		d, u := byRun[r]["direct"], byRun[r]["uidgate"]
		if d == nil || u == nil || d["search_ms"] <= 0 {
			continue
		}
		rs = append(rs, (u["select_ms"]-d["select_ms"])/d["search_ms"])
	}
	return median(rs), rs
}

// machine describes where the benchmark ran, and the versions of the
// servers the report has numbers of.
func (b *bench) machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %d kB", &kb)
		mem = fmt.Sprintf(", %d GB", (kb+(1<<19))>>20)
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	servers := ""
	if len(b.view("cyrus23").samples) > 0 {
		servers += ", Cyrus IMAP " + cyrus23Version
	}
	if len(b.view("dovecot").samples) > 0 {
		dv, _ := exec.Command("dovecot", "--version").Output()
		servers += ", Dovecot " + strings.Fields(string(dv) + " ?")[0]
	}
	nv, _ := exec.Command("nginx", "-v").CombinedOutput()
	return fmt.Sprintf("%d CPUs (%s)%s, Linux %s, %s%s, %s",
		runtime.NumCPU(), model, mem, strings.TrimSpace(string(kernel)), runtime.Version(),
		servers, strings.TrimPrefix(strings.TrimSpace(string(nv)), "nginx version: "))
}

// Markers delimit the generated part of the "Load benchmarks" section;
// text outside them (the analysis) is kept as it is.
const (
	sectionHeading = "## Load benchmarks"
	beginMarker    = "<!-- load-benchmarks:begin (generated by `go run ./bench`; edit outside these markers) -->"
	endMarker      = "<!-- load-benchmarks:end -->"
)

// writeSection puts body between the markers of the "Load benchmarks"
// section of file, creating the section (at the end) or the markers (right
// under the heading) if missing. Other sections are not touched.
func writeSection(file, body string) error {
	old, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	doc := string(old)
	block := beginMarker + "\n" + strings.TrimSpace(body) + "\n" + endMarker
	switch {
	case strings.Contains(doc, beginMarker) && strings.Contains(doc, endMarker):
		i := strings.Index(doc, beginMarker)
		j := strings.Index(doc, endMarker) + len(endMarker)
		if j < i {
			return fmt.Errorf("%s: %q comes before %q", file, endMarker, beginMarker)
		}
		doc = doc[:i] + block + doc[j:]
	case strings.Contains(doc, "\n"+sectionHeading+"\n"):
		i := strings.Index(doc, "\n"+sectionHeading+"\n") + len(sectionHeading) + 2
		doc = doc[:i] + "\n" + block + "\n" + doc[i:]
	default:
		doc = strings.TrimRight(doc, "\n") + "\n\n" + sectionHeading + "\n\n" + block + "\n"
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}
