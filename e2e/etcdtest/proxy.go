package etcdtest

import (
	"net"
	"strings"
	"sync"
	"testing"
)

// Proxy is a TCP proxy on loopback in front of one member, which a test
// can cut as a network partition between one client and etcd would,
// without root's network tools: Blackhole stops forwarding and leaves
// every socket open (packets dropped: the client hears nothing, not even
// an error), Reset resets every connection and each new one (a partition
// that a router answers). Restore forwards again. TLS passes through it
// untouched: its URL has the member's scheme, and the member's certificate
// names 127.0.0.1. The test that starts it owns it: t.Cleanup closes it
// and waits for its goroutines.
type Proxy struct {
	// URL is the client URL to give the client instead of the member's.
	URL    string
	ln     net.Listener
	target string // the member's host:port
	wg     sync.WaitGroup

	mu    sync.Mutex
	mode  proxyMode
	links map[*link]bool // connections being forwarded
	held  map[net.Conn]bool
}

type proxyMode int

const (
	forwarding proxyMode = iota
	blackhole            // accept and hold; drop what comes on open links
	resetting            // reset every connection
)

// link is one client connection and its connection to the member. Once
// anything was dropped on it (dead), it never forwards again: the stream
// has a hole.
type link struct {
	client, up net.Conn
	dead       bool
}

// copyBuf is the size of one read of a forwarding copy.
const copyBuf = 32 << 10

// Proxy starts a proxy to m.
func (c *Cluster) Proxy(t testing.TB, m *Member) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcdtest: proxy: %v", err)
	}
	scheme, target, _ := strings.Cut(m.ClientURL, "://")
	p := &Proxy{URL: scheme + "://" + ln.Addr().String(), ln: ln, target: target,
		links: make(map[*link]bool), held: make(map[net.Conn]bool)}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for l := range p.links {
			l.client.Close()
			l.up.Close()
		}
		for c := range p.held {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// Blackhole stops forwarding: what either side sends on an open
// connection is read and dropped, and new connections are accepted and
// never answered.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = blackhole
	for l := range p.links {
		l.dead = true
	}
}

// Reset resets every connection through the proxy (TCP RST to both
// sides) and each new one as it comes.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = resetting
	for l := range p.links {
		reset(l.client)
		reset(l.up)
		delete(p.links, l)
	}
	for c := range p.held {
		reset(c)
		delete(p.held, c)
	}
}

// Restore forwards again. The connections that had something dropped, or
// were held, are closed: their client connects again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = forwarding
	for l := range p.links {
		if l.dead {
			l.client.Close()
			l.up.Close()
			delete(p.links, l)
		}
	}
	for c := range p.held {
		c.Close()
		delete(p.held, c)
	}
}

// reset closes c with an RST rather than a FIN (SO_LINGER 0).
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		switch p.mode {
		case resetting:
			reset(c)
		case blackhole:
			p.held[c] = true
		default:
			p.wg.Add(1)
			go p.forward(c)
		}
		p.mu.Unlock()
	}
}

// forward copies between c and a new connection to the member until
// either side ends or the proxy closes both.
func (p *Proxy) forward(c net.Conn) {
	defer p.wg.Done()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	l := &link{client: c, up: up}
	p.mu.Lock()
	if p.mode != forwarding {
		// Cut while dialling.
		p.mu.Unlock()
		reset(c)
		up.Close()
		return
	}
	p.links[l] = true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go p.copyLink(l, up, c, done)
	go p.copyLink(l, c, up, done)
	<-done
	c.Close()
	up.Close()
	<-done
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// copyLink copies src to dst while l forwards; once l is dead it reads
// and drops.
func (p *Proxy) copyLink(l *link, dst, src net.Conn, done chan<- struct{}) {
	defer func() { done <- struct{}{} }()
	buf := make([]byte, copyBuf)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			dead := l.dead
			p.mu.Unlock()
			if !dead {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// Partition is one way a Proxy parts its client from etcd.
type Partition struct {
	Name string
	Cut  func(*Proxy)
}

// Partitions are the ways a test parts a client from etcd: a black hole
// and resets.
var Partitions = []Partition{
	{"black hole", (*Proxy).Blackhole},
	{"reset", (*Proxy).Reset},
}
