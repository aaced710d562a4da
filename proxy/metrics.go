package proxy

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Prometheus collectors of a Server. A nil *Metrics
// records nothing.
type Metrics struct {
	sessionsActive   *prometheus.GaugeVec
	sessionsTotal    *prometheus.CounterVec
	logins           *prometheus.CounterVec
	commands         *prometheus.CounterVec
	expungesHeld     prometheus.Counter
	expungesReleased prometheus.Counter
	resyncs          prometheus.Counter
	lockWait         prometheus.Histogram
	lockTimeouts     prometheus.Counter
	bytes            *prometheus.CounterVec
	dial             *prometheus.HistogramVec
	upstreamErrors   *prometheus.CounterVec
	tlsFailures      *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sessionsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "uidgate_sessions_active", Help: "Client sessions open now.",
		}, []string{"listener"}),
		sessionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "uidgate_sessions_total", Help: "Client sessions accepted.",
		}, []string{"listener"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "uidgate_logins_total", Help: "Logins by backend and result (ok, failed, unavailable, no_route, rate_limited; refused by an auth service, lookup_unavailable).",
		}, []string{"backend", "result"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "uidgate_commands_total", Help: "Client commands after login, by name and whether uidgate rewrote them.",
		}, []string{"command", "rewritten"}),
		expungesHeld: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "uidgate_expunges_held_total", Help: "Upstream expunges held until the client may be told.",
		}),
		expungesReleased: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "uidgate_expunges_released_total", Help: "EXPUNGE responses sent to clients.",
		}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "uidgate_resyncs_total", Help: "UID resyncs of legacy backends.",
		}),
		lockWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "uidgate_lock_wait_seconds", Help: "Time commands waited for mailbox and seen locks.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		lockTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "uidgate_lock_timeouts_total", Help: "Commands answered NO [INUSE].",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "uidgate_bytes_total", Help: "Bytes relayed, by direction (in: from clients, out: to clients).",
		}, []string{"direction"}),
		dial: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "uidgate_upstream_login_seconds", Help: "Backend dial, TLS and login time.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}, []string{"backend"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "uidgate_upstream_errors_total", Help: "Backend dial or login failures.",
		}, []string{"backend"}),
		tlsFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "uidgate_tls_handshake_failures_total", Help: "Client TLS handshakes that failed after a ClientHello (implicit TLS or STARTTLS).",
		}, []string{"listener"}),
	}
	reg.MustRegister(m.sessionsActive, m.sessionsTotal, m.logins, m.commands, m.expungesHeld,
		m.expungesReleased, m.resyncs, m.lockWait, m.lockTimeouts, m.bytes, m.dial, m.upstreamErrors, m.tlsFailures)
	return m
}

// knownCommands bounds the command label's values.
var knownCommands = map[string]bool{
	"APPEND": true, "CAPABILITY": true, "CHECK": true, "CLOSE": true, "COPY": true, "CREATE": true,
	"DELETE": true, "ENABLE": true, "EXAMINE": true, "EXPUNGE": true, "FETCH": true, "GETQUOTA": true,
	"GETQUOTAROOT": true, "ID": true, "IDLE": true, "LIST": true, "LOGOUT": true, "LSUB": true,
	"MOVE": true, "NAMESPACE": true, "NOOP": true, "RENAME": true, "SEARCH": true, "SELECT": true,
	"SORT": true, "STATUS": true, "STORE": true, "SUBSCRIBE": true, "THREAD": true, "UNSELECT": true,
	"UNSUBSCRIBE": true, "GETMETADATA": true, "SETMETADATA": true, "GETACL": true, "SETACL": true, "MYRIGHTS": true,
}

func (m *Metrics) command(name []byte, uid, rewritten bool) {
	if m == nil {
		return
	}
	n := strings.ToUpper(string(name))
	if !knownCommands[n] {
		n = "other"
	}
	if uid {
		n = "UID " + n
	}
	r := "false"
	if rewritten {
		r = "true"
	}
	m.commands.WithLabelValues(n, r).Inc()
}

func (m *Metrics) sessionStart(listener string) {
	if m != nil {
		m.sessionsActive.WithLabelValues(listener).Inc()
		m.sessionsTotal.WithLabelValues(listener).Inc()
	}
}

func (m *Metrics) sessionEnd(listener string, in, out int64) {
	if m != nil {
		m.sessionsActive.WithLabelValues(listener).Dec()
		m.bytes.WithLabelValues("in").Add(float64(in))
		m.bytes.WithLabelValues("out").Add(float64(out))
	}
}

func (m *Metrics) login(backend, result string, d time.Duration) {
	if m == nil {
		return
	}
	m.logins.WithLabelValues(backend, result).Inc()
	if result == "unavailable" {
		m.upstreamErrors.WithLabelValues(backend).Inc()
	} else if result == "ok" || result == "failed" {
		m.dial.WithLabelValues(backend).Observe(d.Seconds())
	}
}

func (m *Metrics) held(n int) {
	if m != nil && n > 0 {
		m.expungesHeld.Add(float64(n))
	}
}

func (m *Metrics) released(n int) {
	if m != nil && n > 0 {
		m.expungesReleased.Add(float64(n))
	}
}

func (m *Metrics) resync() {
	if m != nil {
		m.resyncs.Inc()
	}
}

func (m *Metrics) lockWaited(d time.Duration, timedOut bool) {
	if m == nil {
		return
	}
	m.lockWait.Observe(d.Seconds())
	if timedOut {
		m.lockTimeouts.Inc()
	}
}

func (m *Metrics) tlsFailure(listener string) {
	if m == nil {
		return
	}
	m.tlsFailures.WithLabelValues(listener).Inc()
}
