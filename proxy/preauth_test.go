package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"uidgate/upstream"
)

// serveOne serves one client connection of srv over loopback and returns
// the client's end, its reader past the greeting, and a channel closed
// when the session has ended.
func serveOne(t *testing.T, srv *Server) (net.Conn, *bufio.Reader, <-chan struct{}) {
	client, server := tcpPair(t)
	t.Cleanup(func() { client.Close() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(context.Background(), server, Listener{})
	}()
	r := bufio.NewReader(client)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "* OK") {
		t.Fatalf("greeting: %q %v", l, err)
	}
	return client, r, done
}

// TestPreauthTimeoutFromConnect: preauth_timeout runs from connect to
// login; NOOPs meanwhile do not restart it (issue 16: a NOOP every 14 s
// kept an anonymous connection 58 s with a 20 s timeout).
func TestPreauthTimeoutFromConnect(t *testing.T) {
	client, r, done := serveOne(t, &Server{PreauthTimeout: time.Second})
	start := time.Now()
	for i := 0; time.Since(start) < 5*time.Second; i++ {
		if _, err := fmt.Fprintf(client, "n%d NOOP\r\n", i); err != nil {
			break
		}
		l, err := r.ReadString('\n')
		if err != nil || strings.HasPrefix(l, "* BYE") {
			break
		}
		time.Sleep(200 * time.Millisecond) // the client's own pace: a NOOP every 200 ms
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("a client sending NOOPs stayed %v with preauth_timeout 1s", took)
	}
	<-done
}

// TestTraceRedactsByPosition: at trace level, a line before login is
// logged as tag and command word only unless the command is harmless, so
// a password in a line that does not parse as expected stays out of the
// log (issue 16: "a  LOGIN user secret" was logged whole).
func TestTraceRedactsByPosition(t *testing.T) {
	var logs logBuffer
	log := zerolog.New(&logs).Level(zerolog.TraceLevel)
	client, r, done := serveOne(t, &Server{Logger: &log, Route: func(string) (*upstream.Backend, bool) { return nil, false }, MaxBadCommands: 10})
	for _, l := range []string{
		"a  LOGIN user s3cret-1",
		"b LOGIN user s3cret-2",
		"c XLOGIN user s3cret-3",
		"d\tLOGIN user s3cret-4",
		"e AUTHENTICATE PLAIN s3cret-5",
		"f NOOP",
	} {
		fmt.Fprintf(client, "%s\r\nsync NOOP\r\n", l)
		for {
			resp, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("%q: %v", l, err)
			}
			if strings.HasPrefix(resp, "+") {
				fmt.Fprintf(client, "*\r\n") // cancel the exchange
			}
			if strings.HasPrefix(resp, "sync ") {
				break
			}
		}
	}
	fmt.Fprintf(client, "z LOGOUT\r\n")
	<-done
	if strings.Contains(logs.String(), "s3cret") {
		t.Fatalf("secret in the trace log:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `"C":"f NOOP"`) {
		t.Fatalf("harmless commands not traced:\n%s", logs.String())
	}
}
