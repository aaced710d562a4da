package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"uidgate/proxy"
)

const (
	// readyProbeTimeout bounds one backend reachability check.
	readyProbeTimeout = 2 * time.Second
	// readyCache is how long a readiness answer is reused, so that probes
	// never load the backends.
	readyCache = 5 * time.Second
)

// ops serves /metrics, /healthz, /readyz and the admin view.
type ops struct {
	metrics  *proxy.Metrics
	registry *prometheus.Registry
	bound    atomic.Bool // every listener is bound
	// stopped, once set, says why a listener no longer serves (it failed,
	// or uidgate is shutting down): /healthz and /readyz answer 503.
	stopped atomic.Pointer[string]
	// backends returns the addresses of the backends in force (those of
	// the last reload).
	backends func() []string
	// locks, if set, adds etcd's reachability ([locks] backend = "etcd").
	locks *lockReadiness
	// admin, if set, serves /admin/ (admin.go).
	admin http.Handler

	mu      sync.Mutex
	checked time.Time
	ready   bool
	note    string // why not ready, or what readiness overlooks
}

func newOps(backends func() []string) *ops {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &ops{metrics: proxy.NewMetrics(reg), registry: reg, backends: backends}
}

func (o *ops) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(o.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if ok, why := o.isHealthy(); !ok {
			http.Error(w, "unhealthy: "+why, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n")) // the process is up, every listener serving
	})
	if o.admin != nil {
		mux.Handle("/admin/", o.admin)
	}
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ready, note := o.isReady(r.Context())
		if note != "" {
			note = ": " + note
		}
		if !ready {
			http.Error(w, "not ready"+note, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready" + note + "\n"))
	})
	return mux
}

// down records that a listener stopped serving, and why; the first
// reason stays.
func (o *ops) down(why string) { o.stopped.CompareAndSwap(nil, &why) }

// invalidate forgets the cached readiness (after a reload).
func (o *ops) invalidate() {
	o.mu.Lock()
	o.checked = time.Time{}
	o.mu.Unlock()
}

// isHealthy: every listener bound and serving.
func (o *ops) isHealthy() (bool, string) {
	if why := o.stopped.Load(); why != nil {
		return false, *why
	}
	if !o.bound.Load() {
		return false, "listeners not bound"
	}
	return true, ""
}

// isReady: healthy, at least one backend (of those in force) accepts a
// connection, and etcd answers if the locks live there (note says what
// is wrong).
func (o *ops) isReady(ctx context.Context) (bool, string) {
	if ok, why := o.isHealthy(); !ok {
		return false, why
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if time.Since(o.checked) < readyCache {
		return o.ready, o.note
	}
	o.ready, o.note = false, "no backend reachable"
	for _, addr := range o.backends() {
		dctx, cancel := context.WithTimeout(ctx, readyProbeTimeout)
		c, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			o.ready, o.note = true, ""
			break
		}
	}
	if o.ready && o.locks != nil {
		o.ready, o.note = o.locks.check(ctx)
	}
	o.checked = time.Now()
	return o.ready, o.note
}

// serveOps serves on ln until ctx ends.
func serveOps(ctx context.Context, ln net.Listener, o *ops, log *zerolog.Logger) error {
	srv := &http.Server{Handler: o.handler(), ReadHeaderTimeout: 10 * time.Second}
	log.Info().Str("address", ln.Addr().String()).Msg("metrics listening")
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
