package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
)

// bodyBlockSize is the size of the text block a generated message body
// repeats; it is also the size of each write of a body.
const bodyBlockSize = 256 << 10

// bodyBlock holds lines of printable text of 78 bytes with their CRLF
// (RFC 5322 §2.1.1), cut to bodyBlockSize.
var bodyBlock = func() []byte {
	b := make([]byte, 0, bodyBlockSize+100)
	for i := 0; len(b) < bodyBlockSize; i++ {
		b = fmt.Appendf(b, "%06d %s\r\n", i, strings.Repeat("imapload-", 8)[:69])
	}
	return b[:bodyBlockSize]
}()

// message is a generated RFC 5322 message of an exact size: a header that
// names it, then lines of text. It is produced while written, never held
// in memory, so a 50 MB APPEND costs the load generator nothing.
type message struct {
	header string
	size   int64
}

// minMessageSize is the smallest size newMessage accepts: the header and
// one line of body.
const minMessageSize = 512

// newMessage returns a message of size bytes named by id.
func newMessage(size int64, id string) (message, error) {
	h := fmt.Sprintf("From: imapload <load@example.invalid>\r\n"+
		"To: bench <bench@example.invalid>\r\n"+
		"Subject: imapload %s\r\n"+
		"Message-ID: <%s@imapload.invalid>\r\n"+
		"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"+
		"MIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=us-ascii\r\n\r\n", id, id)
	if size < minMessageSize || int64(len(h)) > size/2 {
		return message{}, fmt.Errorf("message size %d too small (at least %d)", size, minMessageSize)
	}
	return message{header: h, size: size}, nil
}

// WriteTo writes the message: the header, then the body block repeated and
// cut so that the message ends in CRLF at exactly m.size bytes.
func (m message) WriteTo(w io.Writer) (int64, error) {
	n, err := io.WriteString(w, m.header)
	done := int64(n)
	for err == nil && done < m.size {
		rest := m.size - done
		chunk := bodyBlock[:min(rest, int64(len(bodyBlock)))]
		if rest <= int64(len(bodyBlock)) {
			// The last chunk: end on CRLF, without a bare CR before it.
			chunk = chunk[:len(chunk)-2]
			if chunk[len(chunk)-1] == '\r' {
				chunk = chunk[:len(chunk)-1]
				if n, err = w.Write(chunk); err == nil {
					n, err = io.WriteString(w, "x\r\n")
					n += len(chunk)
				}
			} else if n, err = w.Write(chunk); err == nil {
				var k int
				k, err = io.WriteString(w, "\r\n")
				n += k
			}
		} else {
			n, err = w.Write(chunk)
		}
		done += int64(n)
	}
	return done, err
}

// digest returns the SHA-256 of the message's bytes.
func (m message) digest() [sha256.Size]byte {
	h := sha256.New()
	m.WriteTo(h)
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}
