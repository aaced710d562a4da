package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"testing"

	"uidgate/upstream"
)

// echoBackend answers every command at once, as a fast backend would:
// SELECT with 100 messages, the map build's UID SEARCH, and FETCH/STORE
// by UID with one FETCH response; anything else a tagged OK.
func echoBackend(b *testing.B, c net.Conn) {
	defer c.Close()
	io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN SASL-IR] hi\r\n")
	br := bufio.NewReader(c)
	bw := bufio.NewWriter(c)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		f := bytes.Fields(line)
		if len(f) < 2 {
			continue
		}
		tag := f[0]
		switch {
		case bytes.Equal(f[1], []byte("AUTHENTICATE")):
			fmt.Fprintf(bw, "%s OK [CAPABILITY IMAP4rev1 LITERAL+] in\r\n", tag)
		case bytes.Equal(f[1], []byte("SELECT")):
			fmt.Fprintf(bw, "* 100 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n%s OK [READ-WRITE] done\r\n", tag)
		case len(f) > 3 && bytes.Equal(f[1], []byte("UID")) && bytes.Equal(f[2], []byte("SEARCH")):
			bw.WriteString("* SEARCH")
			for i := 1; i <= 100; i++ {
				bw.WriteString(" " + strconv.Itoa(i))
			}
			fmt.Fprintf(bw, "\r\n%s OK done\r\n", tag)
		case len(f) > 3 && bytes.Equal(f[1], []byte("UID")):
			uid := f[3]
			fmt.Fprintf(bw, "* %s FETCH (UID %s FLAGS (\\Flagged))\r\n%s OK done\r\n", uid, uid, tag)
		default:
			fmt.Fprintf(bw, "%s OK done\r\n", tag)
		}
		if br.Buffered() == 0 {
			if bw.Flush() != nil {
				return
			}
		}
	}
}

// BenchmarkRelayCommands measures one small command through a session
// over loopback sockets, closed loop: the proxy's own cost per command
// (both relay directions, the rewrite by number, the lock for STORE)
// plus two loopback round trips.
func BenchmarkRelayCommands(b *testing.B) {
	for _, cmd := range []string{"NOOP", "FETCH 5 (FLAGS)", "STORE 5 +FLAGS (\\Flagged)"} {
		b.Run(cmd, func(b *testing.B) {
			bl, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer bl.Close()
			go func() {
				c, err := bl.Accept()
				if err == nil {
					echoBackend(b, c)
				}
			}()
			backend := &upstream.Backend{Name: "echo", Address: bl.Addr().String(), TLS: upstream.TLSNone}
			srv := &Server{Route: func(string) (*upstream.Backend, bool) { return backend, true }}
			cl, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer cl.Close()
			done := make(chan struct{})
			go func() {
				defer close(done)
				if c, err := cl.Accept(); err == nil {
					srv.ServeConn(b.Context(), c, Listener{TLS: upstream.TLSNone})
				}
			}()
			c, err := net.Dial("tcp", cl.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer func() { c.Close(); <-done }()
			r := bufio.NewReader(c)
			until := func(tag string) {
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						b.Fatalf("waiting for %s: %v", tag, err)
					}
					if len(line) > len(tag) && line[:len(tag)+1] == tag+" " {
						return
					}
				}
			}
			r.ReadString('\n')
			io.WriteString(c, "l LOGIN alice pw\r\n")
			until("l")
			io.WriteString(c, "s SELECT INBOX\r\n")
			until("s")
			line := []byte("a " + cmd + "\r\n")
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Write(line); err != nil {
					b.Fatal(err)
				}
				until("a")
			}
		})
	}
}

// BenchmarkRawRelayNOOP is the floor for BenchmarkRelayCommands in the same
// run: the same client and backend with two io.Copy goroutines between
// them, no IMAP parsing. What uidgate adds over it is its own work; what
// both cost is Go's scheduler and the loopback round trips.
func BenchmarkRawRelayNOOP(b *testing.B) {
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer bl.Close()
	go func() {
		c, err := bl.Accept()
		if err == nil {
			echoBackend(b, c)
		}
	}()
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	go func() {
		c, err := cl.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", bl.Addr().String())
		if err != nil {
			c.Close()
			return
		}
		go func() { io.Copy(up, c); up.Close() }()
		io.Copy(c, up)
		c.Close()
	}()
	c, err := net.Dial("tcp", cl.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	r.ReadString('\n')
	line := []byte("a NOOP\r\n")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(line); err != nil {
			b.Fatal(err)
		}
		if _, err := r.ReadString('\n'); err != nil {
			b.Fatal(err)
		}
	}
}
