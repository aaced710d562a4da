package configs

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// toml.MetaData records one position per key *without* array indexes, so
// for "[[backend]]" tables it only knows where the last backend's keys are,
// and it has no exported way to ask. keyScanner re-reads the (already
// syntax-checked) source and records where every key is, with array indexes,
// so errors can say "cfg.toml:12: backend.1.dial_timeout: ...".

// valueKind is the TOML type of a value, as far as the schema cares.
type valueKind uint8

const (
	kindTable valueKind = iota
	kindArray
	kindString
	kindInteger
	kindFloat
	kindBool
	kindDatetime
)

func (k valueKind) String() string {
	switch k {
	case kindTable:
		return "a table"
	case kindArray:
		return "an array"
	case kindString:
		return "a string"
	case kindInteger:
		return "an integer"
	case kindFloat:
		return "a float"
	case kindBool:
		return "a boolean"
	case kindDatetime:
		return "a datetime"
	}
	return "a value"
}

// pathElem is one part of a key: a name, and for an element of an array of
// tables its index (else -1).
type pathElem struct {
	name  string
	index int
}

// keyEntry is one key, table header or array-of-tables element found in
// the source.
type keyEntry struct {
	path []pathElem
	line int
	kind valueKind
	text string // the decoded string for kindString; the raw token for other scalars
}

// indexed returns the key with array indexes: listener.0.address.
func (e keyEntry) indexed() string { return indexedKey(e.path) }

// plain returns the key without indexes, as toml.MetaData spells it:
// listener.address.
func (e keyEntry) plain() string {
	k := make(toml.Key, len(e.path))
	for i, p := range e.path {
		k[i] = p.name
	}
	return k.String()
}

func indexedKey(path []pathElem) string {
	k := make(toml.Key, 0, 2*len(path))
	for _, p := range path {
		k = append(k, p.name)
		if p.index >= 0 {
			k = append(k, strconv.Itoa(p.index))
		}
	}
	return k.String()
}

// keyScanner is a lenient TOML reader that records key positions. It
// expects input that toml.Decode has accepted; on anything else it skips
// ahead rather than fail, and it always terminates.
type keyScanner struct {
	src        []byte
	pos        int
	lineStarts []int
	entries    []keyEntry
	arrays     map[string]int // indexed key of each array of tables → elements seen
	table      []pathElem     // current table
}

func scanKeys(src []byte) []keyEntry {
	s := &keyScanner{src: src, arrays: make(map[string]int), lineStarts: []int{0}}
	for i, c := range src {
		if c == '\n' {
			s.lineStarts = append(s.lineStarts, i+1)
		}
	}
	s.document()
	return s.entries
}

func (s *keyScanner) line(pos int) int {
	return sort.Search(len(s.lineStarts), func(i int) bool { return s.lineStarts[i] > pos })
}

func (s *keyScanner) peek() byte {
	if s.pos < len(s.src) {
		return s.src[s.pos]
	}
	return 0
}

func (s *keyScanner) eof() bool { return s.pos >= len(s.src) }

func (s *keyScanner) hasPrefix(p string) bool {
	return bytes.HasPrefix(s.src[min(s.pos, len(s.src)):], []byte(p))
}

func (s *keyScanner) skipSpace() {
	for !s.eof() && (s.src[s.pos] == ' ' || s.src[s.pos] == '\t') {
		s.pos++
	}
}

func (s *keyScanner) skipLine() {
	for !s.eof() && s.src[s.pos] != '\n' {
		s.pos++
	}
	if !s.eof() {
		s.pos++
	}
}

// skipBlank skips whitespace, newlines and comments, as allowed inside
// arrays (and, leniently, inline tables).
func (s *keyScanner) skipBlank() {
	for !s.eof() {
		switch s.src[s.pos] {
		case ' ', '\t', '\r', '\n':
			s.pos++
		case '#':
			s.skipLine()
		default:
			return
		}
	}
}

func (s *keyScanner) record(path []pathElem, start int, kind valueKind, text string) int {
	s.entries = append(s.entries, keyEntry{
		path: append([]pathElem(nil), path...),
		line: s.line(start),
		kind: kind,
		text: text,
	})
	return len(s.entries) - 1
}

func (s *keyScanner) document() {
	for !s.eof() {
		start := s.pos
		s.skipSpace()
		switch c := s.peek(); c {
		case '\r', '\n':
			s.pos++
		case '#':
			s.skipLine()
		case '[':
			s.header()
		default:
			s.keyval(s.table, true)
		}
		if s.pos == start {
			s.skipLine()
		}
	}
}

// header reads "[a.b]" or "[[a.b]]" and makes it the current table.
func (s *keyScanner) header() {
	start := s.pos
	s.pos++
	array := s.peek() == '['
	if array {
		s.pos++
	}
	comps, ok := s.key()
	if !ok || len(comps) == 0 {
		s.skipLine()
		return
	}
	var p []pathElem
	for _, c := range comps[:len(comps)-1] {
		p = s.appendResolved(p, c)
	}
	last := comps[len(comps)-1]
	if array {
		p = append(p, pathElem{name: last, index: -1})
		k := indexedKey(p)
		n := s.arrays[k]
		s.arrays[k] = n + 1
		p[len(p)-1].index = n
	} else {
		p = s.appendResolved(p, last)
	}
	s.table = p
	s.record(p, start, kindTable, "")
	s.skipLine() // "]" or "]]", then perhaps a comment
}

// appendResolved appends name to a copy of p; if that names an array of
// tables, the new element refers to its latest element, as TOML does.
func (s *keyScanner) appendResolved(p []pathElem, name string) []pathElem {
	p = append(append([]pathElem(nil), p...), pathElem{name: name, index: -1})
	if n, ok := s.arrays[indexedKey(p)]; ok && n > 0 {
		p[len(p)-1].index = n - 1
	}
	return p
}

// key reads a dotted key.
func (s *keyScanner) key() ([]string, bool) {
	var comps []string
	for {
		s.skipSpace()
		switch c := s.peek(); {
		case c == '"' || c == '\'':
			comps = append(comps, s.str())
		case isBareKeyChar(c):
			start := s.pos
			for !s.eof() && isBareKeyChar(s.src[s.pos]) {
				s.pos++
			}
			comps = append(comps, string(s.src[start:s.pos]))
		default:
			return comps, false
		}
		s.skipSpace()
		if s.peek() != '.' {
			return comps, true
		}
		s.pos++
	}
}

// isBareKeyChar accepts TOML 1.0 bare key characters and, leniently, any
// non-ASCII byte (TOML 1.1 allows Unicode letters).
func isBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c >= 0x80
}

// keyval reads "key = value" relative to base; rec says whether to record.
func (s *keyScanner) keyval(base []pathElem, rec bool) {
	start := s.pos
	comps, ok := s.key()
	if !ok {
		return
	}
	s.skipSpace()
	if s.peek() != '=' {
		return
	}
	s.pos++
	s.skipSpace()
	path := append([]pathElem(nil), base...)
	for _, c := range comps {
		path = append(path, pathElem{name: c, index: -1})
	}
	s.value(path, start, rec)
}

// value reads one value for the key at path, which started at start.
func (s *keyScanner) value(path []pathElem, start int, rec bool) {
	switch c := s.peek(); c {
	case '"', '\'':
		text := s.str()
		if rec {
			s.record(path, start, kindString, text)
		}
	case '[':
		if rec {
			s.record(path, start, kindArray, "")
		}
		s.array(path, rec)
	case '{':
		if rec {
			s.record(path, start, kindTable, "")
		}
		s.inlineTable(path, rec)
	default:
		tok := s.bare()
		if rec {
			s.record(path, start, classify(tok), tok)
		}
	}
}

// array reads "[v, v, ...]". Inline tables directly in it are recorded as
// indexed elements of path, like "[[path]]" tables.
func (s *keyScanner) array(path []pathElem, rec bool) {
	s.pos++ // '['
	i := 0
	indexable := rec && len(path) > 0 && path[len(path)-1].index < 0
	for {
		s.skipBlank()
		switch s.peek() {
		case 0:
			return
		case ']':
			s.pos++
			return
		case ',':
			s.pos++
			continue
		}
		start := s.pos
		if s.peek() == '{' && indexable {
			p := append([]pathElem(nil), path...)
			p[len(p)-1].index = i
			s.value(p, start, true)
		} else {
			s.value(nil, start, false)
		}
		i++
		if s.pos == start {
			s.pos++
		}
	}
}

// inlineTable reads "{k = v, ...}".
func (s *keyScanner) inlineTable(path []pathElem, rec bool) {
	s.pos++ // '{'
	for {
		s.skipBlank()
		switch s.peek() {
		case 0:
			return
		case '}':
			s.pos++
			return
		case ',':
			s.pos++
			continue
		}
		start := s.pos
		s.keyval(path, rec)
		if s.pos == start {
			s.pos++
		}
	}
}

// str reads a basic, literal or multi-line string and returns its value.
func (s *keyScanner) str() string {
	q := s.src[s.pos]
	triple := strings.Repeat(string(q), 3)
	if s.hasPrefix(triple) {
		s.pos += 3
		// A newline right after the opening delimiter is not part of the
		// string (TOML 1.0, "String").
		if s.hasPrefix("\r\n") {
			s.pos += 2
		} else if s.hasPrefix("\n") {
			s.pos++
		}
		begin := s.pos
		for !s.eof() {
			if q == '"' && s.src[s.pos] == '\\' {
				s.pos += 2
				continue
			}
			if s.hasPrefix(triple) {
				// Up to two quotes may end the content just before the
				// closing delimiter.
				n := 3
				for n < 5 && s.pos+n < len(s.src) && s.src[s.pos+n] == q {
					n++
				}
				end := s.pos + n - 3
				s.pos += n
				return s.decode(q, s.src[begin:end])
			}
			s.pos++
		}
		return s.decode(q, s.src[begin:])
	}
	s.pos++
	begin := s.pos
	for !s.eof() && s.src[s.pos] != q && s.src[s.pos] != '\n' {
		if q == '"' && s.src[s.pos] == '\\' {
			s.pos++
		}
		s.pos++
	}
	end := min(s.pos, len(s.src))
	if s.peek() == q {
		s.pos++
	}
	return s.decode(q, s.src[begin:end])
}

func (s *keyScanner) decode(q byte, b []byte) string {
	if q == '\'' {
		return string(b)
	}
	return unescapeBasic(string(b))
}

// unescapeBasic undoes the escapes of a TOML basic string. Unknown escapes
// are kept as written.
func unescapeBasic(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		i++
		switch e := s[i]; e {
		case 'b':
			b.WriteByte('\b')
		case 't':
			b.WriteByte('\t')
		case 'n':
			b.WriteByte('\n')
		case 'f':
			b.WriteByte('\f')
		case 'r':
			b.WriteByte('\r')
		case 'e':
			b.WriteByte(0x1b)
		case '"', '\\':
			b.WriteByte(e)
		case 'x', 'u', 'U':
			n := 2
			switch e {
			case 'u':
				n = 4
			case 'U':
				n = 8
			}
			if i+1+n <= len(s) {
				if v, err := strconv.ParseUint(s[i+1:i+1+n], 16, 32); err == nil && utf8.ValidRune(rune(v)) {
					b.WriteRune(rune(v))
					i += n
					continue
				}
			}
			b.WriteByte('\\')
			b.WriteByte(e)
		case ' ', '\t', '\r', '\n':
			// Line-ending backslash in a multi-line string: drop all
			// whitespace up to the next non-blank.
			for i+1 < len(s) && strings.IndexByte(" \t\r\n", s[i+1]) >= 0 {
				i++
			}
		default:
			b.WriteByte('\\')
			b.WriteByte(e)
		}
	}
	return b.String()
}

// bare reads a number, boolean or datetime.
func (s *keyScanner) bare() string {
	start := s.pos
	for !s.eof() && strings.IndexByte(" \t\r\n,]}#", s.src[s.pos]) < 0 {
		s.pos++
	}
	tok := string(s.src[start:s.pos])
	// "1979-05-27 07:32:00Z": a date and a time separated by one space.
	if isDate(tok) && s.hasPrefix(" ") && s.pos+1 < len(s.src) && isDigit(s.src[s.pos+1]) {
		s.pos++
		for !s.eof() && strings.IndexByte(" \t\r\n,]}#", s.src[s.pos]) < 0 {
			s.pos++
		}
		tok = string(s.src[start:s.pos])
	}
	return tok
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isDate(tok string) bool {
	return len(tok) == 10 && tok[4] == '-' && tok[7] == '-' &&
		isDigit(tok[0]) && isDigit(tok[3]) && isDigit(tok[5]) && isDigit(tok[9])
}

func classify(tok string) valueKind {
	switch tok {
	case "true", "false":
		return kindBool
	case "inf", "+inf", "-inf", "nan", "+nan", "-nan":
		return kindFloat
	}
	switch {
	case len(tok) >= 10 && isDate(tok[:10]), strings.Contains(tok, ":"):
		return kindDatetime
	case strings.HasPrefix(tok, "0x"), strings.HasPrefix(tok, "0o"), strings.HasPrefix(tok, "0b"):
		return kindInteger
	case strings.ContainsAny(tok, ".eE"):
		return kindFloat
	}
	return kindInteger
}

// problem is one error found in a configuration, for sorting by line.
type problem struct {
	line int    // 0 if unknown
	key  string // plain key (no indexes) it is about, if any
	ikey string // the same with array indexes ("listener.0.tls")
	msg  string // full text, with file:line
}

func joinProblems(ps []problem) error {
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].line < ps[j].line })
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = errors.New(p.msg)
	}
	return errors.Join(errs...)
}

// syntaxError formats a TOML syntax error as "file:line:col: message".
func syntaxError(file string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s:%d:%d: %s", file, pe.Position.Line, pe.Position.Col, pe.Message)
	}
	return fmt.Errorf("%s: %w", file, err)
}

var (
	configType   = reflect.TypeFor[Config]()
	durationType = reflect.TypeFor[Duration]()
)

// tomlFields maps the TOML names of t's exported fields to their types.
func tomlFields(t reflect.Type) map[string]reflect.Type {
	m := make(map[string]reflect.Type, t.NumField())
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}

// checkSchema checks every entry against Config's fields: unknown keys
// (also those differing only in case, which toml.Decode would accept),
// values of the wrong type, array elements of the wrong type (looked up
// in doc, the decoded document), and durations that do not parse.
func checkSchema(file string, entries []keyEntry, doc map[string]any) []problem {
	var ps []problem
	reported := make(map[string]bool) // indexed keys reported; their children are skipped
	add := func(e keyEntry, upto int, format string, args ...any) {
		k := indexedKey(e.path[:upto+1])
		reported[k] = true
		ps = append(ps, problem{
			line: e.line,
			key:  keyEntry{path: e.path[:upto+1]}.plain(),
			ikey: k,
			msg:  fmt.Sprintf("%s:%d: ", file, e.line) + fmt.Sprintf(format, args...),
		})
	}
entries:
	for _, e := range entries {
		for i := range e.path {
			if reported[indexedKey(e.path[:i+1])] {
				continue entries
			}
		}
		t := configType
		for i, p := range e.path {
			if t.Kind() != reflect.Struct {
				continue entries // the parent's type error is reported
			}
			fields := tomlFields(t)
			ft, ok := fields[p.name]
			if !ok {
				key := indexedKey(append(e.path[:i:i], pathElem{name: p.name, index: -1}))
				add(e, i, "unknown key %q%s", key, suggest(p.name, fields))
				continue entries
			}
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem() // an optional table ([route.http])
			}
			last := i == len(e.path)-1
			if p.index >= 0 {
				if ft.Kind() != reflect.Slice {
					key := indexedKey(append(e.path[:i:i], pathElem{name: p.name, index: -1}))
					add(e, i, "%s: want %s, found an array of tables", key, describe(ft))
					continue entries
				}
				ft = ft.Elem()
			}
			if !last {
				t = ft
				continue
			}
			key := indexedKey(e.path)
			want := expectedKind(ft)
			if e.kind != want {
				add(e, i, "%s: want %s, found %s", key, describe(ft), e.kind)
				continue entries
			}
			if ft == durationType {
				if _, err := parseDuration(e.text); err != nil {
					add(e, i, "%s: %v", key, err)
				}
			}
			if ft.Kind() == reflect.Slice && ft.Elem().Kind() != reflect.Struct {
				elems, _ := lookup(doc, e.path).([]any)
				want := expectedKind(ft.Elem())
				for j, el := range elems {
					if k := kindOf(el); k != want {
						add(e, i, "%s.%d: want %s, found %s", key, j, describe(ft.Elem()), k)
						break // the array is reported once, at its first bad element
					}
				}
			}
		}
	}
	return ps
}

// lookup returns the value at path in doc, a document as toml.Decode
// gives it, or nil.
func lookup(doc map[string]any, path []pathElem) any {
	var v any = doc
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p.name]
		if p.index < 0 {
			continue
		}
		switch a := v.(type) {
		case []map[string]any:
			if p.index >= len(a) {
				return nil
			}
			v = a[p.index]
		case []any:
			if p.index >= len(a) {
				return nil
			}
			v = a[p.index]
		default:
			return nil
		}
	}
	return v
}

// kindOf is the kind of a value decoded by toml.Decode into an any.
func kindOf(v any) valueKind {
	switch v.(type) {
	case string:
		return kindString
	case int64:
		return kindInteger
	case float64:
		return kindFloat
	case bool:
		return kindBool
	case map[string]any:
		return kindTable
	case []any, []map[string]any:
		return kindArray
	}
	return kindDatetime
}

func expectedKind(t reflect.Type) valueKind {
	switch {
	case t == durationType:
		return kindString
	case t.Kind() == reflect.Struct:
		return kindTable
	case t.Kind() == reflect.Slice:
		return kindArray
	case t.Kind() == reflect.Bool:
		return kindBool
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return kindInteger
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return kindFloat
	}
	return kindString
}

func describe(t reflect.Type) string {
	switch {
	case t == durationType:
		return `a duration string such as "30s"`
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		return "an array of tables"
	}
	return expectedKind(t).String()
}

// suggest returns ` (did you mean "x"?)` for the known key closest to name,
// if one is close enough: equal but for case, or within one edit per three
// characters.
func suggest(name string, fields map[string]reflect.Type) string {
	best, bestDist := "", max(1, len(name)/3)+1
	for f := range fields {
		var d int
		if strings.EqualFold(f, name) {
			d = 0
		} else {
			d = editDistance(strings.ToLower(f), strings.ToLower(name))
		}
		if d < bestDist || d == bestDist && f < best {
			best, bestDist = f, d
		}
	}
	switch {
	case best == "":
		return ""
	case bestDist == 0:
		return fmt.Sprintf(" (keys are case-sensitive: did you mean %q?)", best)
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// undecodedProblems reports the keys toml.Decode left undecoded that
// checkSchema has not already reported. Only the outermost undecoded key of
// a subtree is reported.
func undecodedProblems(file string, undecoded []toml.Key, entries []keyEntry, already []problem) []problem {
	covered := make(map[string]bool)
	for _, p := range already {
		covered[p.key] = true
	}
	und := make(map[string]bool, len(undecoded))
	for _, k := range undecoded {
		und[k.String()] = true
	}
	var ps []problem
	done := make(map[string]bool)
outer:
	for _, k := range undecoded {
		ks := k.String()
		for i := 1; i <= len(k); i++ {
			anc := k[:i].String()
			if covered[anc] || (i < len(k) && und[anc]) {
				continue outer
			}
		}
		if done[ks] {
			continue
		}
		done[ks] = true
		found := false
		for _, e := range entries {
			if e.plain() == ks {
				found = true
				ps = append(ps, problem{line: e.line, key: ks, ikey: e.indexed(),
					msg: fmt.Sprintf("%s:%d: unknown key %q", file, e.line, e.indexed())})
			}
		}
		if !found {
			ps = append(ps, problem{key: ks, ikey: ks, msg: fmt.Sprintf("%s: unknown key %q", file, ks)})
		}
	}
	return ps
}
