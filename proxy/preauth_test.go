package proxy

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestPreauthTimeoutFromConnect: preauth_timeout runs from connect to
// login; NOOPs meanwhile do not restart it (issue 16: a NOOP every 14 s
// kept an anonymous connection 58 s with a 20 s timeout).
func TestPreauthTimeoutFromConnect(t *testing.T) {
	srv := &Server{PreauthTimeout: time.Second}
	client, server := tcpPair(t)
	defer client.Close()
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
