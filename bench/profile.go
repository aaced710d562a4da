package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// profileJob is one profiled run of imapload through uidgate.
type profileJob struct {
	name     string
	args     []string
	cpuSecs  int           // CPU profile of this many seconds from the start
	heapWait time.Duration // heap profile this long after the start
	idle     bool          // heap and goroutine profiles while held
}

// profileDovecot profiles uidgate in front of Dovecot: CPU profiles of
// small (largest session count), bulk, append and select, a heap profile
// while the large mailbox is selected, and heap and goroutine profiles
// while the idle sessions are held.
func (b *bench) profileDovecot(ctx context.Context) error {
	maxSessions := "1"
	for _, s := range strings.Split(b.o.smallSessions, ",") {
		maxSessions = strings.TrimSpace(s)
	}
	idleN := strconv.Itoa(min(b.o.idleSessions, b.idleCap()))
	return b.profileAll(ctx, b.dcs, "", []profileJob{
		{name: "small", args: []string{"-workload", "small", "-sessions", maxSessions, "-duration", "10s", "-concurrency", "50"}, cpuSecs: 9},
		{name: "bulk", args: []string{"-workload", "bulk", "-mailbox", "bulk", "-rounds", "1000", "-duration", "10s"}, cpuSecs: 9},
		{name: "append", args: []string{"-workload", "append", "-mailbox", "append", "-count", "4", "-size", strconv.FormatInt(b.o.appendSize, 10)}, cpuSecs: 4},
		{name: "select", args: []string{"-workload", "select", "-mailbox", bigFolder(b.steps[len(b.steps)-1]), "-rounds", "1", "-search", "none", "-hold", "4s", "-timeout", "10m"}, cpuSecs: 2, heapWait: 3 * time.Second},
		{name: "idle", args: []string{"-workload", "idle", "-sessions", idleN, "-duration", "20s", "-concurrency", "100", "-timeout", "5m"}, idle: true},
	})
}

// profileCyrus23 profiles uidgate in legacy mode in front of Cyrus 2.3:
// a CPU profile of the small commands with \Seen at each session count
// of -cyrus23-small-sessions (files cyrus23.small<n>.cpu.pprof).
func (b *bench) profileCyrus23(ctx context.Context) error {
	var jobs []profileJob
	for _, s := range strings.Split(b.o.c23SmallSessions, ",") {
		n := strings.TrimSpace(s)
		jobs = append(jobs, profileJob{name: "small" + n, args: []string{"-workload", "small", "-sessions", n, "-duration", "10s", "-concurrency", "50", "-mix", "seen"}, cpuSecs: 9})
	}
	return b.profileAll(ctx, b.c23, "cyrus23.", jobs)
}

// profileAll runs each job once more through a uidgate of st built with
// pprof (a fresh process for each) and writes its profiles into
// -profile DIR, their names starting with prefix. These runs are not
// measurements.
func (b *bench) profileAll(ctx context.Context, st *stack, prefix string, jobs []profileJob) error {
	if err := os.MkdirAll(b.o.profile, 0o755); err != nil {
		return err
	}
	t := b.targets(st)[1]
	for _, j := range jobs {
		b.logf("profiling %s", j.name)
		if err := b.startProfiled(ctx, st); err != nil {
			return err
		}
		prof := func(ctx context.Context, kind, file string) error {
			return fetchProfile(ctx, "http://"+st.ug.pprof+"/debug/pprof/"+kind, filepath.Join(b.o.profile, prefix+file))
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

// startProfiled replaces st's uidgate with a fresh one built with pprof.
func (b *bench) startProfiled(ctx context.Context, st *stack) error {
	if st.ug != nil {
		b.ps.stop(st.ug.proc)
		st.ug = nil
	}
	var err error
	st.ug, err = startUidgate(ctx, b.ps, st.dir, b.profBin, st.backend, st.addr, true, st.gateConf, b.gateLimits, b.envList())
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
