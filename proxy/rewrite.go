package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-imap/v2"

	"uidgate/proxy/imapwire"
	"uidgate/sessionmap"
)

// wireCmd is one whole client command as received: its lines with their
// literals inline, and where the literals are.
type wireCmd struct {
	buf  []byte
	lits []litSpan
}

// litSpan locates a literal: its announcement at hdr, its data at
// data..end.
type litSpan struct {
	hdr, data, end int
	lit            imapwire.Literal
	// spool holds the data instead of buf (data == end) for large
	// APPEND literals.
	spool *spool
}

// builder assembles a rewritten command, keeping track of the literals it
// copies so that they can be announced as the backend needs.
type builder struct {
	out  []byte
	lits []litSpan
}

// copySpan copies c.buf[from:to] into the output, recording the literals
// inside it.
func (b *builder) copySpan(c *wireCmd, from, to int) {
	for _, l := range c.lits {
		if l.hdr < from || l.end > to {
			continue
		}
		b.out = append(b.out, c.buf[from:l.hdr]...)
		hdr := len(b.out)
		b.out = imapwire.AppendLiteralHeader(b.out, l.lit)
		data := len(b.out)
		b.out = append(b.out, c.buf[l.data:l.end]...)
		b.lits = append(b.lits, litSpan{hdr: hdr, data: data, end: len(b.out), lit: l.lit, spool: l.spool})
		from = l.end
	}
	b.out = append(b.out, c.buf[from:to]...)
}

// errCannot is answered NO [CANNOT]: uidgate cannot translate the command
// faithfully, so it does not send it.
type errCannot struct{ why string }

func (e errCannot) Error() string { return e.why }

// rewriteResult is what the client goroutine does with a command.
type rewriteResult struct {
	// answer, if set, is the tagged response to give the client without
	// sending anything upstream ("OK ...", "BAD ...", "NO ...").
	answer string
	pc     pendingCmd
	// uidSet is the set sent upstream (UIDs, or "$").
	uidSet string
	// target is the destination mailbox of COPY/MOVE as the client named it.
	target string
	// storeSeen: a STORE whose flags name \Seen; bodyFetch: a FETCH of a
	// body part without .PEEK, which sets \Seen (RFC 9051 §6.4.5).
	storeSeen, bodyFetch bool
}

// uidSetOf translates a client sequence set with the session's map.
type uidSetOf func(set imap.SeqSet) (imap.UIDSet, error)

// rewriteCommand turns a message-number command into its UID form using
// the client's view at the moment it arrived (RFC 3501 §6.4.8, RFC 9051
// §6.4.9). It returns the bytes to send upstream in b.
//
// With peek, a FETCH that would set \Seen is sent in its .PEEK form.
// The result is at most limit bytes (Server.expansionCap of the command):
// past it the error is errCommandTooLong, found before the UID set that
// would pass it is written.
func rewriteCommand(c *wireCmd, cmd imapwire.Command, kind cmdKind, toUIDs uidSetOf, peek bool, limit int, b *builder) (rewriteResult, error) {
	res, err := rewriteInto(c, cmd, kind, toUIDs, peek, limit, b)
	if err == nil && res.answer == "" && len(b.out) > limit {
		return res, errCommandTooLong
	}
	return res, err
}

func rewriteInto(c *wireCmd, cmd imapwire.Command, kind cmdKind, toUIDs uidSetOf, peek bool, limit int, b *builder) (rewriteResult, error) {
	var res rewriteResult
	res.pc = pendingCmd{kind: kind, rewritten: true}
	name := strings.ToUpper(string(cmd.Name))
	// "tag SP [UID SP] name SP" is rebuilt; the rest is copied or rewritten.
	b.out = append(b.out, cmd.Tag...)
	b.out = append(b.out, " UID "...)
	b.out = append(b.out, cmd.Name...)
	rest := cmd.Args
	switch kind {
	case cmdFetch, cmdStore, cmdCopy, cmdMove:
		res.pc.forbidsExpunge = !cmd.UID && (kind == cmdFetch || kind == cmdStore)
		res.pc.wantsUID = cmd.UID
		d2 := imapwire.NewDecoder(c.buf[rest:])
		tok, _ := d2.SeqSetToken()
		if len(tok) == 0 {
			return rewriteResult{answer: "BAD Missing sequence set"}, nil
		}
		end := rest + len(tok)
		b.out = append(b.out, ' ')
		setStart := len(b.out)
		switch {
		case string(tok) == "$" || cmd.UID:
			// RFC 5182 §2: "$" is the saved result, valid in UID commands;
			// a UID command's set is sent as it is.
			b.out = append(b.out, tok...)
		default:
			set, err := parseSeqSet(tok)
			if err != nil {
				return rewriteResult{answer: "BAD Invalid sequence set"}, nil
			}
			uids, err := toUIDs(set)
			if err != nil {
				return res, err
			}
			if len(uids) == 0 {
				// Every named message is gone upstream: a compliant server
				// (Cyrus 2.4+) succeeds doing nothing.
				return rewriteResult{answer: "OK " + name + " completed"}, nil
			}
			n := uidSetLen(uids)
			if len(b.out)+n > limit {
				return res, errCommandTooLong
			}
			b.out = appendUIDSet(growTo(b.out, n, limit), uids)
		}
		res.uidSet = string(b.out[setStart:])
		args := c.buf[end:]
		switch kind {
		case cmdFetch:
			if !cmd.UID {
				res.pc.wantsUID = fetchAsksUID(args)
			}
			res.bodyFetch = fetchSetsSeen(args)
			if res.bodyFetch && peek {
				// Explicit \Seen: fetch with .PEEK; uidgate sets \Seen itself
				// under the seen lock (see rewriteAndSend).
				items, rfc822 := peekItems(c.buf[end:])
				res.pc.renameRFC822 = rfc822
				// The \Seen set by uidgate's STORE is reported in this same
				// response, as a compliant server reports its implicit \Seen.
				b.out = append(b.out, withFlagsItem(items)...)
				return res, nil
			}
		case cmdStore:
			res.storeSeen = bytes.Contains(bytes.ToUpper(args), []byte(`\SEEN`))
		case cmdCopy, cmdMove:
			d3 := imapwire.NewDecoder(args)
			if d3.SP() {
				res.target, _ = d3.AString()
			}
		}
		b.copySpan(c, end, len(c.buf))
		return res, nil
	case cmdSearch, cmdSort, cmdThread:
		res.pc.forbidsExpunge = !cmd.UID
		res.pc.wantsUID = cmd.UID
		res.pc.resultsAreUIDs = !cmd.UID
		// For UID SEARCH only the criteria change.
		w := searchWalker{c: c, d: imapwire.NewDecoder(c.buf), b: b, toUIDs: toUIDs, limit: limit}
		if err := w.command(kind, rest); err != nil {
			var ce errCannot
			if errors.As(err, &ce) {
				return rewriteResult{answer: "NO [CANNOT] " + ce.why}, nil
			}
			if errors.Is(err, errSeqSyntax) {
				return rewriteResult{answer: "BAD Invalid sequence set"}, nil
			}
			return res, err
		}
		res.pc.esearch = w.returnOpts
		return res, nil
	}
	return res, fmt.Errorf("cannot rewrite %s", name)
}

// fetchSetsSeen reports whether FETCH items fetch a body part without
// .PEEK: BODY[...], BINARY[...], RFC822, RFC822.TEXT (RFC 9051 §6.4.5).
func fetchSetsSeen(items []byte) bool {
	_, changed := peekItemsChanged(items)
	return changed
}

// peekItems rewrites FETCH items into their .PEEK forms; rfc822 reports
// that RFC822 or RFC822.TEXT became BODY.PEEK[] or BODY.PEEK[TEXT], whose
// responses must be renamed back.
func peekItems(items []byte) ([]byte, bool) {
	out, _ := peekItemsChanged(items)
	d := imapwire.NewDecoder(items)
	rfc822 := false
	walkItems(d, items, func(name []byte) {
		if imapwire.EqualFold(name, "RFC822") || imapwire.EqualFold(name, "RFC822.TEXT") {
			rfc822 = true
		}
	})
	return out, rfc822
}

func peekItemsChanged(items []byte) ([]byte, bool) {
	var out []byte
	changed := false
	last := 0
	d := imapwire.NewDecoder(items)
	walkItemsAt(d, items, func(start, end int) {
		name := items[start:end]
		var repl string
		upper := strings.ToUpper(string(name))
		switch {
		case strings.HasPrefix(upper, "BODY["):
			repl = "BODY.PEEK[" + string(name[len("BODY["):])
		case strings.HasPrefix(upper, "BINARY["):
			repl = "BINARY.PEEK[" + string(name[len("BINARY["):])
		case upper == "RFC822":
			repl = "BODY.PEEK[]"
		case upper == "RFC822.TEXT":
			repl = "BODY.PEEK[TEXT]"
		default:
			return
		}
		out = append(out, items[last:start]...)
		out = append(out, repl...)
		last = end
		changed = true
	})
	return append(out, items[last:]...), changed
}

func walkItems(d *imapwire.Decoder, items []byte, fn func(name []byte)) {
	walkItemsAt(d, items, func(s, e int) { fn(items[s:e]) })
}

// walkItemsAt calls fn with the span of each top-level FETCH item.
func walkItemsAt(d *imapwire.Decoder, items []byte, fn func(start, end int)) {
	for !d.EOL() {
		if d.SP() || d.Special('(') || d.Special(')') {
			continue
		}
		start := d.Pos()
		if !d.SkipValue() {
			return
		}
		fn(start, d.Pos())
	}
}

// withFlagsItem adds FLAGS to FETCH items (" item" or " (items)", with
// CRLF) unless they name it.
func withFlagsItem(items []byte) []byte {
	has := false
	walkItems(imapwire.NewDecoder(items), items, func(name []byte) {
		if imapwire.EqualFold(name, "FLAGS") {
			has = true
		}
	})
	if has {
		return items
	}
	body := bytes.TrimRight(items, "\r\n")
	trimmed := bytes.TrimLeft(body, " ")
	var out []byte
	if len(trimmed) > 0 && trimmed[0] == '(' && trimmed[len(trimmed)-1] == ')' {
		out = append(out, body[:len(body)-1]...)
		out = append(out, " FLAGS)"...)
	} else {
		out = append(out, " ("...)
		out = append(out, trimmed...)
		out = append(out, " FLAGS)"...)
	}
	return append(out, "\r\n"...)
}

// fetchAsksUID reports whether FETCH items name UID.
func fetchAsksUID(items []byte) bool {
	d := imapwire.NewDecoder(items)
	for d.Pos() < len(items) {
		if d.SP() || d.Special('(') || d.Special(')') {
			continue
		}
		start := d.Pos()
		if !d.SkipValue() {
			return false
		}
		if imapwire.EqualFold(items[start:d.Pos()], "UID") {
			return true
		}
	}
	return false
}

// searchWalker rewrites SEARCH, SORT and THREAD commands: every sequence
// set in the criteria becomes "UID <set>"; everything else is copied.
type searchWalker struct {
	c          *wireCmd
	d          *imapwire.Decoder
	b          *builder
	toUIDs     uidSetOf
	limit      int // bytes the rewritten command may reach
	returnOpts bool
	copied     int // c.buf up to here is in b
}

// flush copies c.buf[w.copied:upto] verbatim.
func (w *searchWalker) flush(upto int) {
	if upto > w.copied {
		w.b.copySpan(w.c, w.copied, upto)
		w.copied = upto
	}
}

func (w *searchWalker) command(kind cmdKind, args int) error {
	d := w.d
	buf := w.c.buf
	d.Seek(args)
	w.copied = args
	if args > 0 && buf[args-1] == ' ' {
		w.copied = args - 1 // the SP after the name
	}
	switch kind {
	case cmdSearch:
		// RFC 4731: [RETURN (opts)] and RFC 9051: [CHARSET x].
		if !w.returnOptions() {
			return errSeqSyntax
		}
		if w.keyword("CHARSET") {
			d.ExpectSP()
			if _, ok := d.AString(); !ok {
				return errSeqSyntax
			}
			d.ExpectSP()
		}
	case cmdSort:
		// RFC 5256: SORT [RETURN (opts)] (criteria) charset; RFC 5267 ESORT.
		if !w.returnOptions() {
			return errSeqSyntax
		}
		if !d.SkipList() {
			return errSeqSyntax
		}
		d.ExpectSP()
		if _, ok := d.AString(); !ok {
			return errSeqSyntax
		}
		d.ExpectSP()
	case cmdThread:
		// RFC 5256: THREAD algorithm charset criteria.
		if _, ok := d.Atom(); !ok {
			return errSeqSyntax
		}
		d.ExpectSP()
		if _, ok := d.AString(); !ok {
			return errSeqSyntax
		}
		d.ExpectSP()
	}
	if d.Err() != nil {
		return errSeqSyntax
	}
	first := true
	for !d.EOL() {
		if !first && !d.SP() {
			return errSeqSyntax
		}
		first = false
		if err := w.key(0); err != nil {
			return err
		}
	}
	w.flush(len(buf))
	return nil
}

// returnOptions consumes "RETURN (opts) " if present (RFC 4731, RFC 5267):
// the results then come as ESEARCH.
func (w *searchWalker) returnOptions() bool {
	if !w.keyword("RETURN") {
		return true
	}
	w.d.ExpectSP()
	if !w.d.SkipList() {
		return false
	}
	w.returnOpts = true
	w.d.ExpectSP()
	return w.d.Err() == nil
}

// keyword consumes the atom kw (case-insensitive) if it is next.
func (w *searchWalker) keyword(kw string) bool {
	start := w.d.Pos()
	a, ok := w.d.Atom()
	if ok && imapwire.EqualFold(a, kw) {
		return true
	}
	w.d.Seek(start)
	return false
}

// maxSearchDepth bounds nesting of NOT/OR/lists: a hostile command must
// not exhaust the stack.
const maxSearchDepth = 64

// searchArgs is the number of arguments each search key takes (RFC 9051
// §6.4.4, RFC 3501 §6.4.4, RFC 5032 WITHIN, RFC 8514 SAVEDATE, RFC 8474
// OBJECTID). NOT, OR, FUZZY and MODSEQ are handled apart.
var searchArgs = map[string]int{
	"ALL": 0, "ANSWERED": 0, "DELETED": 0, "DRAFT": 0, "FLAGGED": 0, "NEW": 0, "OLD": 0,
	"RECENT": 0, "SEEN": 0, "UNANSWERED": 0, "UNDELETED": 0, "UNDRAFT": 0, "UNFLAGGED": 0,
	"UNSEEN": 0, "SAVEDATESUPPORTED": 0,
	"BCC": 1, "BEFORE": 1, "BODY": 1, "CC": 1, "FROM": 1, "KEYWORD": 1, "LARGER": 1, "ON": 1,
	"SENTBEFORE": 1, "SENTON": 1, "SENTSINCE": 1, "SINCE": 1, "SMALLER": 1, "SUBJECT": 1,
	"TEXT": 1, "TO": 1, "UID": 1, "UNKEYWORD": 1, "OLDER": 1, "YOUNGER": 1,
	"SAVEDBEFORE": 1, "SAVEDON": 1, "SAVEDSINCE": 1, "EMAILID": 1, "THREADID": 1,
	"HEADER": 2,
}

func (w *searchWalker) key(depth int) error {
	if depth > maxSearchDepth {
		return errCannot{"search program nested too deeply"}
	}
	d := w.d
	start := d.Pos()
	if d.Special('(') {
		first := true
		for !d.Special(')') {
			if d.EOL() {
				return errSeqSyntax
			}
			if !first && !d.SP() {
				return errSeqSyntax
			}
			first = false
			if err := w.key(depth + 1); err != nil {
				return err
			}
		}
		return nil
	}
	if tok, ok := d.SeqSetToken(); ok {
		if string(tok) == "$" {
			return nil // RFC 5182 saved result: the same messages either way
		}
		// A sequence set as a search key: the messages with those numbers
		// in the client's view become the same messages by UID.
		set, err := parseSeqSet(tok)
		if err != nil {
			return err
		}
		uids, err := w.toUIDs(set)
		var se *sessionmap.SeqError
		if errors.As(err, &se) && se.Kind != sessionmap.SeqZero {
			// As a search key a set only selects messages: numbers beyond
			// the mailbox select none (Dovecot and Cyrus answer an empty
			// result, not BAD; RFC 9051 §6.4.4).
			uids, err = w.toUIDs(clipSeqSet(set, se.Count))
		}
		if err != nil {
			return err
		}
		w.flush(start)
		if len(uids) == 0 {
			w.b.out = append(w.b.out, "NOT ALL"...) // matches nothing
		} else {
			// Each sequence-set key becomes a UID set as long as the
			// mailbox is fragmented: a 64 KB line of "1:* 1:* …" cost
			// hundreds of MB before this bound (issue 16).
			if len(w.b.out)+len("UID ")+uidSetLen(uids) > w.limit {
				return errCommandTooLong
			}
			w.b.out = growTo(w.b.out, len("UID ")+uidSetLen(uids), w.limit)
			w.b.out = append(w.b.out, "UID "...)
			w.b.out = appendUIDSet(w.b.out, uids)
		}
		w.copied = d.Pos()
		return nil
	}
	tok, ok := d.Atom()
	if !ok {
		return errSeqSyntax
	}
	upper := strings.ToUpper(string(tok))
	switch upper {
	case "NOT", "FUZZY":
		if !d.SP() {
			return errSeqSyntax
		}
		return w.key(depth + 1)
	case "OR":
		if !d.SP() {
			return errSeqSyntax
		}
		if err := w.key(depth + 1); err != nil {
			return err
		}
		if !d.SP() {
			return errSeqSyntax
		}
		return w.key(depth + 1)
	case "MODSEQ":
		// RFC 7162 §3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence.
		if !d.SP() {
			return errSeqSyntax
		}
		if c := d.Rest(); len(c) > 0 && c[0] == '"' {
			d.Quoted()
			if !d.SP() || !d.SkipValue() || !d.SP() {
				return errSeqSyntax
			}
		}
		if !d.SkipValue() {
			return errSeqSyntax
		}
		return nil
	}
	n, known := searchArgs[upper]
	if !known {
		return errCannot{fmt.Sprintf("uidgate cannot translate search key %s", upper)}
	}
	for i := 0; i < n; i++ {
		if !d.SP() || !d.SkipValue() {
			return errSeqSyntax
		}
	}
	return nil
}

// clipSeqSet keeps of set the numbers up to count ("*" being count).
func clipSeqSet(set imap.SeqSet, count uint32) imap.SeqSet {
	var out imap.SeqSet
	for _, r := range set {
		a, z := r.Start, r.Stop
		if a == 0 {
			a = count
		}
		if z == 0 {
			z = count
		}
		if a > z {
			a, z = z, a
		}
		if a == 0 || a > count {
			continue
		}
		out = append(out, imap.SeqRange{Start: a, Stop: min(z, count)})
	}
	return out
}

// errNoMatching: every number of a FETCH, STORE, COPY or MOVE is beyond
// the client's view, and the backend is configured out_of_range = ignore.
var errNoMatching = errors.New("no message numbers in the view")

// outOfRange is Cyrus's answer (2.3 and 3.x alike) to a command whose
// every message number is beyond the mailbox: Cyrus ignores numbers beyond
// the last message (a partly-beyond set acts on the rest), answers FETCH,
// COPY and MOVE "NO No matching messages" and STORE OK. uidgate answers
// the same in front of it (out_of_range = ignore), so that clients written
// against it keep working; otherwise BAD (seqErrAnswer), as RFC 9051 §9
// recommends and Dovecot does.
func outOfRange(kind cmdKind) string {
	if kind == cmdStore {
		return "OK Completed"
	}
	return "NO No matching messages"
}

// seqErrAnswer is the tagged answer for a number the client may not use.
func seqErrAnswer(err error) (string, bool) {
	var se *sessionmap.SeqError
	if errors.As(err, &se) {
		// RFC 9051 §6.4: a message number beyond the mailbox is an error in
		// the command; Dovecot and Cyrus answer BAD.
		return "BAD Message sequence number out of range", true
	}
	return "", false
}
