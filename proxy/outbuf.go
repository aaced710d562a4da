package proxy

import (
	"io"
	"sync"

	"uidgate/proxy/imapwire"
)

// outBufSize is the write buffer of one direction while it has something
// to send. It holds a 50 KB message with its FETCH line, so that a typical
// body leaves in one write; buffers are pooled and held only between the
// first write and the flush, so an idle session holds none.
const outBufSize = 64 << 10

var outBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, outBufSize)
	return &b
}}

// flushWriter buffers writes to w in a pooled buffer, taken at the first
// write and given back at Flush. Not safe for concurrent use.
type flushWriter struct {
	w   io.Writer
	buf *[]byte
	err error // sticky, as bufio.Writer's
}

func newFlushWriter(w io.Writer) *flushWriter { return &flushWriter{w: w} }

// Write buffers p, writing full buffers through. A p larger than the
// buffer when nothing is buffered goes out directly.
func (f *flushWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if f.err != nil {
			return n, f.err
		}
		if f.buf == nil && len(p) >= outBufSize {
			k, err := f.w.Write(p)
			f.err = err
			return n + k, err
		}
		free := f.Free()
		k := copy(free, p)
		f.Commit(k)
		n += k
		p = p[k:]
		if len(f.Free()) == 0 {
			if err := f.Flush(); err != nil {
				return n, err
			}
		}
	}
	return n, f.err
}

// Free returns the buffer's unused space (taking a buffer from the pool if
// none is held), for a reader to fill directly; Commit(n) then adds the
// first n bytes of it.
func (f *flushWriter) Free() []byte {
	if f.buf == nil {
		f.buf = outBufs.Get().(*[]byte)
	}
	b := *f.buf
	return b[len(b):cap(b)]
}

// Commit adds n bytes written into Free's slice.
func (f *flushWriter) Commit(n int) {
	b := *f.buf
	*f.buf = b[:len(b)+n]
}

// Buffered reports the bytes waiting for Flush.
func (f *flushWriter) Buffered() int {
	if f.buf == nil {
		return 0
	}
	return len(*f.buf)
}

// Flush writes what is buffered and gives the buffer back to the pool.
func (f *flushWriter) Flush() error {
	if f.buf == nil {
		return f.err
	}
	b := *f.buf
	if len(b) > 0 && f.err == nil {
		_, f.err = f.w.Write(b)
	}
	*f.buf = b[:0]
	outBufs.Put(f.buf)
	f.buf = nil
	return f.err
}

// Reset drops anything buffered and writes to w from now on.
func (f *flushWriter) Reset(w io.Writer) {
	if f.buf != nil {
		*f.buf = (*f.buf)[:0]
		outBufs.Put(f.buf)
		f.buf = nil
	}
	f.w, f.err = w, nil
}

// spliceMin is the literal size from which a literal is spliced between
// the sockets instead of copied through the buffer: below it, the fixed
// cost of a splice (a pipe, two calls per chunk, a write of its own)
// outweighs copying, and through the buffer the FETCH line, the body and
// the rest of the response leave in one write.
const spliceMin = 1 << 20

// copyLiteral relays the literal pending in r after the line that
// announced it (already written, not flushed). Must hold mu.
func (w *syncWriter) copyLiteral(r *imapwire.Reader) (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	if r.Pending() >= spliceMin {
		if w.err = w.fw.Flush(); w.err != nil {
			return 0, w.err
		}
		n, err := r.CopyLiteral(deadlineWriter{w.conn})
		w.err = err
		return n, err
	}
	var total int64
	for r.Pending() > 0 {
		// Before waiting on the backend, let the client have what is here
		// once it is worth a write.
		if len(w.fw.Free()) == 0 || r.Buffered() == 0 && w.fw.Buffered() >= outBufSize/2 {
			if w.err = w.fw.Flush(); w.err != nil {
				return total, w.err
			}
		}
		n, err := r.ReadLiteralChunk(w.fw.Free())
		w.fw.Commit(n)
		total += int64(n)
		if err != nil {
			// The backend failed: the client gets what arrived, then the
			// connection ends (no BYE can be sent inside a literal).
			w.fw.Flush()
			w.err = err
			return total, err
		}
	}
	// Not flushed: the rest of the line follows at once (a server sends a
	// response whole), and the line's end flushes when nothing more waits.
	return total, nil
}
