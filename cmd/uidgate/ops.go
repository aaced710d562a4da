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

// ops serves /metrics, /healthz and /readyz.
type ops struct {
	metrics  *proxy.Metrics
	registry *prometheus.Registry
	bound    atomic.Bool // every listener is bound
	backends func() []string

	mu      sync.Mutex
	checked time.Time
	ready   bool
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
		w.Write([]byte("ok\n")) // the process is up
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !o.isReady(r.Context()) {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// isReady: listeners bound and at least one backend accepts a connection.
func (o *ops) isReady(ctx context.Context) bool {
	if !o.bound.Load() {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if time.Since(o.checked) < readyCache {
		return o.ready
	}
	o.ready = false
	for _, addr := range o.backends() {
		dctx, cancel := context.WithTimeout(ctx, readyProbeTimeout)
		c, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			o.ready = true
			break
		}
	}
	o.checked = time.Now()
	return o.ready
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
