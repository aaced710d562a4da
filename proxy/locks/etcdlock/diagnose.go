package etcdlock

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// probeRead is how long a probe waits, after its TLS handshake, for a
// server that refuses the client's certificate to say so (TLS 1.3 ends
// the client's handshake before the server has checked it). A server that
// accepts it says nothing: it waits for the client's first frame.
const probeRead = 300 * time.Millisecond

// permanent reports whether err is etcd's answer that this client may not
// do what it asked (a wrong password, a role without the prefix): sending
// it again gets the same answer.
func permanent(err error) bool {
	return errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrAuthFailed) ||
		errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrAuthNotEnabled)
}

// explain adds to err, a request that timed out, why etcd could not be
// reached, if a probe of the endpoints finds out: etcd's client retries a
// connection that fails (refused, a certificate not trusted or refused)
// until the request's deadline, and reports the deadline only.
func (m *Manager) explain(err error) error {
	if !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var whys []error
	for _, ep := range m.cfg.Endpoints {
		why := m.probe(ep)
		if why == nil {
			return err // one answers: the deadline is all there is to say
		}
		whys = append(whys, why)
	}
	return fmt.Errorf("%w (%w)", err, errors.Join(whys...))
}

// probe connects to endpoint as the client does (TCP, then TLS with the
// client's settings for https) and returns what fails, or nil.
func (m *Manager) probe(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return err
	}
	d := net.Dialer{Timeout: m.cfg.OpTimeout}
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.OpTimeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return err
	}
	defer c.Close()
	if u.Scheme != "https" {
		return nil
	}
	cfg := &tls.Config{}
	if m.cfg.TLS != nil {
		cfg = m.cfg.TLS.Clone()
	}
	cfg.ServerName = u.Hostname()
	cfg.NextProtos = []string{"h2"}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("%s: %w", u.Host, err)
	}
	tc.SetReadDeadline(time.Now().Add(probeRead))
	if _, err := tc.Read(make([]byte, 1)); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return fmt.Errorf("%s: %w", u.Host, err)
	}
	return nil
}
