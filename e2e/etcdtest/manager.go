package etcdtest

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"uidgate/proxy/locks/etcdlock"
)

// managerOpTimeout is the op timeout of a test's manager unless its
// configuration says: short, so that etcd out of reach is seen quickly.
const managerOpTimeout = time.Second

// NewManager makes an etcd lock manager for a test, as one uidgate
// instance would, with cfg's settings; unset, the lease TTL is the
// minimum (5 s: expiry and loss are seen quickly, and a loaded machine
// does not make a lease pass for lost) and the op timeout 1 s. It waits
// until the manager holds a lease, and closes it at the test's end
// (showing its log if the test failed). The log is returned for tests that
// look for an event.
func NewManager(t testing.TB, cfg etcdlock.Config) (*etcdlock.Manager, *Log) {
	t.Helper()
	logs := &Log{}
	log := zerolog.New(logs).With().Timestamp().Logger()
	cfg.Logger = &log
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = etcdlock.MinLeaseTTL
	}
	if cfg.OpTimeout == 0 {
		cfg.OpTimeout = managerOpTimeout
	}
	m, err := etcdlock.New(cfg)
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("etcdtest: close: %v", err)
		}
		if t.Failed() {
			t.Logf("etcdlock log:\n%s", logs.Tail(4000))
		}
	})
	for deadline := time.Now().Add(readyTimeout); !m.Live(); {
		if time.Now().After(deadline) {
			t.Fatalf("etcdtest: no lease after %v:\n%s", readyTimeout, logs.Tail(4000))
		}
		time.Sleep(readyPoll) // polling a lease taken in the background
	}
	return m, logs
}

// Log is a buffer safe for concurrent use: a manager's log.
type Log struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Tail returns the last n bytes of the log.
func (l *Log) Tail(n int) string {
	s := l.String()
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Contains reports whether the log has s.
func (l *Log) Contains(s string) bool { return strings.Contains(l.String(), s) }

// Keys returns the etcd keys under prefix (a lock's holders and waiters),
// oldest first.
func (c *Cluster) Keys(t testing.TB, prefix string) []string {
	t.Helper()
	cli := c.admin(t)
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		t.Fatalf("etcdtest: reading %s: %v", prefix, err)
	}
	out := make([]string, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out[i] = string(kv.Key)
	}
	return out
}

// admin returns the cluster's own client (as Client), made on first use
// and closed when the cluster stops.
func (c *Cluster) admin(t testing.TB) *clientv3.Client {
	c.adminMu.Lock()
	defer c.adminMu.Unlock()
	if c.adminCli == nil {
		cli, err := c.newClient()
		if err != nil {
			t.Fatalf("etcdtest: client: %v", err)
		}
		c.adminCli = cli
	}
	return c.adminCli
}
