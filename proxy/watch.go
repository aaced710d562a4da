package proxy

import (
	"io"
	"math"
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// While the client goroutine waits for something other than the client
// (a barrier, a lock, the backend's "+", room for another command in
// flight) nobody reads the client's socket, so its close would go
// unnoticed and the session, its backend connection and its locks would
// outlive it. watchClient covers those waits: it sleeps in the runtime's
// poller on the client's socket, woken by each readiness edge, and asks the
// kernel for the TCP state (TCP_INFO) without reading a byte, so no input
// is consumed and TLS is undisturbed. A reset, or a FIN with nothing left
// unread, is the client gone: the session is closed at once. A FIN behind
// unread commands (a client that half-closes after a pipelined batch) is
// left to the reader: those commands are still served, and EOF then ends
// the session as always.

// tcpOf returns the TCP connection under c (TLS and PROXY-protocol
// wrappers unwrapped), or nil.
func tcpOf(c net.Conn) *net.TCPConn {
	for range 4 {
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case interface{ NetConn() net.Conn }: // *tls.Conn
			c = x.NetConn()
		case interface{ Raw() net.Conn }: // *proxyproto.Conn
			c = x.Raw()
		default:
			return nil
		}
	}
	return nil
}

// watchClient starts watching the client's socket and returns the
// function that stops it; stop waits for the watcher to be gone and
// leaves the read deadline at the idle timeout. buffered is how many
// bytes of client input uidgate has read but not yet handled.
func (ss *session) watchClient(buffered int) (stop func()) {
	tc := tcpOf(ss.rawConn)
	if tc == nil {
		return func() {}
	}
	sc, err := tc.SyscallConn()
	if err != nil {
		return func() {}
	}
	var stopped atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		gone := false
		err := sc.Read(func(fd uintptr) bool {
			if stopped.Load() {
				return true
			}
			gone = peerGone(int(fd), buffered)
			return gone
		})
		if gone && err == nil {
			ss.log.Debug().Msg("client gone while its session waited")
			ss.ending(reasonClientGone, "")
			ss.closeAll()
		}
	}()
	return func() {
		stopped.Store(true)
		// Wakes the poller wait; the watcher then sees stopped.
		tc.SetReadDeadline(time.Now())
		<-done
		ss.conn.SetReadDeadline(time.Now().Add(ss.srv.idleTimeout()))
	}
}

// quickAcker returns a function that makes the kernel acknowledge at once
// what the backend sent (TCP_QUICKACK), called before uidgate blocks on
// the backend's socket. Cyrus's imapd never sets TCP_NODELAY, so Nagle's
// algorithm holds its second response (say, a FETCH after uidgate's own
// STORE \Seen) until the first is acknowledged, and Linux delays that
// acknowledgement by 40 ms: every body fetch paid 44 ms (issue 15).
//
// TCP_QUICKACK takes the socket out of Linux's "pingpong" (interactive)
// mode, in which ACKs are delayed; reading a pushed segment then
// acknowledges it at once (tcp_cleanup_rbuf). A write that follows a
// receive closely puts the socket back into pingpong mode
// (tcp_event_data_sent). So it is set again before a wait only if
// uidgate has written to the backend since it last set it, and only if
// the backend owes an answer (upstreamToClient): one setsockopt per
// command sent, not one per wait (the profile of the Cyrus 2.3 small
// commands had one per wait, 10 % of uidgate's CPU). Setting it only when
// unacknowledged data waited was not enough: a long answer (the map
// build's UID SEARCH, 60 KB in imapd's 4 KB writes) then stalled 40 ms
// inside one line.
func quickAcker(c net.Conn) func() {
	tc := tcpOf(c)
	if tc == nil {
		return func() {}
	}
	sc, err := tc.SyscallConn()
	if err != nil {
		return func() {}
	}
	return func() {
		sc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
		})
	}
}

// notArmed: no quick ACK yet on the backend's socket.
const notArmed uint64 = math.MaxUint64

// countingWriter counts the writes to w that succeed in part or whole.
type countingWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (c countingWriter) Write(p []byte) (int, error) {
	k, err := c.w.Write(p)
	if k > 0 {
		c.n.Add(1)
	}
	return k, err
}

// owesResponses reports whether a command sent to the backend (or about
// to be) has not had its tagged answer.
func (rs *relayState) owesResponses() bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.tags) > 0
}

// peerGone reports whether the client reset the connection, or closed it
// with nothing left for uidgate to read.
func peerGone(fd, buffered int) bool {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return true // not a socket any more
	}
	switch info.State {
	case unix.BPF_TCP_CLOSE:
		return true
	case unix.BPF_TCP_CLOSE_WAIT:
		unread, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
		return err != nil || unread == 0 && buffered == 0
	}
	return false
}
