package legacysim

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// fetchSnap is what a FETCH response needs, copied under the lock.
type fetchSnap struct {
	uid   imap.UID
	buf   []byte // immutable, shared
	t     time.Time
	flags []imap.Flag
}

func writeFetch(w *imapserver.FetchResponseWriter, m fetchSnap, options *imap.FetchOptions, withUID, withFlags bool) error {
	if withUID {
		w.WriteUID(m.uid)
	}
	if withFlags {
		w.WriteFlags(m.flags)
	}
	if options.InternalDate {
		w.WriteInternalDate(m.t)
	}
	if options.RFC822Size {
		w.WriteRFC822Size(int64(len(m.buf)))
	}
	if options.Envelope {
		h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(m.buf)))
		if err != nil {
			h = textproto.Header{}
		}
		w.WriteEnvelope(imapserver.ExtractEnvelope(h))
	}
	if options.BodyStructure != nil {
		w.WriteBodyStructure(imapserver.ExtractBodyStructure(bytes.NewReader(m.buf)))
	}
	for _, bs := range options.BodySection {
		b := imapserver.ExtractBodySection(bytes.NewReader(m.buf), bs)
		if err := writeLiteral(w.WriteBodySection(bs, int64(len(b))), b); err != nil {
			return err
		}
	}
	for _, bs := range options.BinarySection {
		b := imapserver.ExtractBinarySection(bytes.NewReader(m.buf), bs)
		if err := writeLiteral(w.WriteBinarySection(bs, int64(len(b))), b); err != nil {
			return err
		}
	}
	for _, bss := range options.BinarySectionSize {
		w.WriteBinarySectionSize(bss, imapserver.ExtractBinarySectionSize(bytes.NewReader(m.buf), bss))
	}
	return w.Close()
}

func writeLiteral(wc io.WriteCloser, b []byte) error {
	_, err := wc.Write(b)
	if cerr := wc.Close(); err == nil {
		err = cerr
	}
	return err
}

// staticCriteria replaces "*" in sequence sets with maxSeq and in UID sets
// with maxUID, recursively.
func staticCriteria(c *imap.SearchCriteria, maxSeq uint32, maxUID imap.UID) {
	for i, set := range c.SeqNum {
		out := make(imap.SeqSet, len(set))
		for j, r := range set {
			if r.Start == 0 {
				r.Start = maxSeq
			}
			if r.Stop == 0 {
				r.Stop = maxSeq
			}
			if r.Start > r.Stop {
				r.Start, r.Stop = r.Stop, r.Start
			}
			out[j] = r
		}
		c.SeqNum[i] = out
	}
	for i, set := range c.UID {
		c.UID[i] = staticUIDSet(set, maxUID)
	}
	for i := range c.Not {
		staticCriteria(&c.Not[i], maxSeq, maxUID)
	}
	for i := range c.Or {
		staticCriteria(&c.Or[i][0], maxSeq, maxUID)
		staticCriteria(&c.Or[i][1], maxSeq, maxUID)
	}
}

// matchMessage evaluates SEARCH criteria (RFC 3501 §6.4.4) against msg,
// whose number is seqNum and whose flags, as the session sees them, are fs.
func matchMessage(msg *message, seqNum uint32, fs flagSet, c *imap.SearchCriteria) bool {
	for _, set := range c.SeqNum {
		if !set.Contains(seqNum) {
			return false
		}
	}
	for _, set := range c.UID {
		if !set.Contains(msg.uid) {
			return false
		}
	}
	if !matchDate(msg.t, c.Since, c.Before) {
		return false
	}
	for _, f := range c.Flag {
		if !fs.has(f) {
			return false
		}
	}
	for _, f := range c.NotFlag {
		if fs.has(f) {
			return false
		}
	}
	if c.Larger != 0 && int64(len(msg.buf)) <= c.Larger {
		return false
	}
	if c.Smaller != 0 && int64(len(msg.buf)) >= c.Smaller {
		return false
	}
	if len(c.Header) > 0 || !c.SentSince.IsZero() || !c.SentBefore.IsZero() {
		h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(msg.buf)))
		if err != nil {
			return false
		}
		mh := mail.Header{Header: gomessage.Header{Header: h}}
		for _, hc := range c.Header {
			if !matchFields(mh.FieldsByKey(hc.Key), hc.Value) {
				return false
			}
		}
		if !c.SentSince.IsZero() || !c.SentBefore.IsZero() {
			t, err := mh.Date()
			if err != nil || !matchDate(t, c.SentSince, c.SentBefore) {
				return false
			}
		}
	}
	for _, text := range c.Text {
		if !bytes.Contains(bytes.ToLower(msg.buf), bytes.ToLower([]byte(text))) {
			return false
		}
	}
	if len(c.Body) > 0 {
		body := msg.buf
		if i := bytes.Index(body, []byte("\r\n\r\n")); i >= 0 {
			body = body[i+4:]
		}
		for _, text := range c.Body {
			if !bytes.Contains(bytes.ToLower(body), bytes.ToLower([]byte(text))) {
				return false
			}
		}
	}
	for i := range c.Not {
		if matchMessage(msg, seqNum, fs, &c.Not[i]) {
			return false
		}
	}
	for i := range c.Or {
		if !matchMessage(msg, seqNum, fs, &c.Or[i][0]) && !matchMessage(msg, seqNum, fs, &c.Or[i][1]) {
			return false
		}
	}
	return true
}

// matchDate compares dates without time or zone (RFC 3501 §6.4.4).
func matchDate(t, since, before time.Time) bool {
	t = time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	if !since.IsZero() && t.Before(since) {
		return false
	}
	if !before.IsZero() && !t.Before(before) {
		return false
	}
	return true
}

// matchFields: an empty pattern matches any message with the field; else a
// case-insensitive substring of a value (RFC 3501 §6.4.4 HEADER).
func matchFields(fields gomessage.HeaderFields, pattern string) bool {
	if pattern == "" {
		return fields.Len() > 0
	}
	pattern = strings.ToLower(pattern)
	for fields.Next() {
		v, err := fields.Text()
		if err != nil {
			v = fields.Value()
		}
		if strings.Contains(strings.ToLower(v), pattern) {
			return true
		}
	}
	return false
}
