package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Entry is one chained line of the audit log: the Event plus its place in
// the chain. Readers also return unchained lines written by Warden versions
// before the chain (legacy lines) as Entries with Seq 0 and no Prev or Hash.
//
// Its JSON form (for APIs) is the Event's fields followed by seq, prev and
// hash; the on-disk line uses the canonical encoding in docs/audit.md.
type Entry struct {
	Event
	Seq  uint64 `json:"seq"`            // 1, 2, 3, ... along the file; 0 for a legacy line
	Prev string `json:"prev,omitempty"` // hex SHA-256 of the previous entry (see docs/audit.md for seq 1)
	Hash string `json:"hash,omitempty"` // hex SHA-256 of this entry's canonical encoding without "hash"
}

// MaxLineSize bounds one line of the log, newline included. A longer line
// is malformed: readers skip it and Verify reports it, so an edited file
// cannot make them allocate without bound. Record shortens events that
// would exceed it.
const MaxLineSize = 64 << 10

// ZeroHash is the prev of entry 1 in a log that had no legacy lines.
const ZeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

// TimeLayout is the canonical time format: RFC 3339 in UTC with exactly
// nine fractional digits, so one instant has one spelling.
const TimeLayout = "2006-01-02T15:04:05.000000000Z"

// chainedPrefix starts every chained line and no legacy one (legacy lines
// began with "time"); it is how readers tell the two apart without parsing.
const chainedPrefix = `{"seq":`

// hashSuffixLen is len(`,"hash":"` + 64 hex digits + `"}`): a chained line
// is its canonical body with the final '}' replaced by this suffix.
const hashSuffixLen = len(`,"hash":""}`) + 64

// appendBody appends the canonical encoding of the entry without its hash
// (docs/audit.md, "Canonical encoding"). The caller guarantees what Record
// normalises: valid UTF-8 and a time between years 0 and 9999.
func appendBody(b []byte, seq uint64, prev string, e *Event) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"prev":"`...)
	b = append(b, prev...)
	b = append(b, `","time":"`...)
	b = e.Time.UTC().AppendFormat(b, TimeLayout)
	b = append(b, `","action":`...)
	b = appendString(b, e.Action)
	b = append(b, `,"outcome":`...)
	b = appendString(b, e.Outcome)
	for _, f := range [...]struct{ key, val string }{
		{`,"actor":`, e.Actor}, {`,"subject":`, e.Subject}, {`,"reason":`, e.Reason},
		{`,"remote":`, e.Remote}, {`,"listener":`, e.Listener},
	} {
		if f.val != "" {
			b = append(b, f.key...)
			b = appendString(b, f.val)
		}
	}
	if len(e.Details) > 0 {
		b = append(b, `,"details":{`...)
		for i, k := range sortedKeys(e.Details) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, e.Details[k])
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

// appendString writes s as a JSON string the way Python's
// json.dumps(s, ensure_ascii=False) does: only '"', '\\' and the C0
// controls are escaped (\b \f \n \r \t, others as lower-case \u00xx);
// everything else, including '<', '>', '&', U+2028 and U+2029, is literal
// UTF-8. Unlike encoding/json there is no HTML escaping to disagree about.
func appendString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// sealLine turns a canonical body into the on-disk line (newline included)
// and returns the entry's hash.
func sealLine(body []byte) (line []byte, hash string) {
	sum := sha256.Sum256(body)
	hash = hex.EncodeToString(sum[:])
	line = make([]byte, 0, len(body)+hashSuffixLen)
	line = append(line, body[:len(body)-1]...)
	line = append(line, `,"hash":"`...)
	line = append(line, hash...)
	line = append(line, '"', '}', '\n')
	return line, hash
}

// errNotCanonical marks a chained line that parses but is not spelled the
// one way the writer spells it (extra spaces, reordered or unknown keys,
// escapes): hashes are over bytes, so every reader must agree on them.
var errNotCanonical = errors.New("not in canonical form")

// parseEntry parses one chained line (without its newline). It returns the
// entry and the canonical body its hash is over; it checks the form, not the
// hash (Verify does), so a reader can still show an edited entry.
func parseEntry(line []byte) (Entry, []byte, error) {
	if len(line) >= MaxLineSize {
		return Entry{}, nil, fmt.Errorf("longer than %d bytes", MaxLineSize-1)
	}
	if !bytes.HasPrefix(line, []byte(chainedPrefix)) {
		return Entry{}, nil, fmt.Errorf("does not start with %s", chainedPrefix)
	}
	if len(line) < len(chainedPrefix)+hashSuffixLen {
		return Entry{}, nil, errors.New("too short for a chained entry")
	}
	suffix := line[len(line)-hashSuffixLen:]
	hash := suffix[len(`,"hash":"`) : len(suffix)-2]
	if !bytes.HasPrefix(suffix, []byte(`,"hash":"`)) || !bytes.HasSuffix(suffix, []byte(`"}`)) || !isHexHash(hash) {
		return Entry{}, nil, errors.New(`does not end with ,"hash":"<64 lower-case hex digits>"}`)
	}
	body := make([]byte, 0, len(line)-hashSuffixLen+1)
	body = append(body, line[:len(line)-hashSuffixLen]...)
	body = append(body, '}')

	var w struct {
		Seq  *uint64 `json:"seq"`
		Prev string  `json:"prev"`
		Event
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return Entry{}, nil, fmt.Errorf("not a JSON entry: %w", err)
	}
	if dec.More() {
		return Entry{}, nil, errors.New("data after the JSON object")
	}
	if w.Seq == nil || *w.Seq == 0 {
		return Entry{}, nil, errors.New("seq must be a positive integer")
	}
	if !isHexHash([]byte(w.Prev)) {
		return Entry{}, nil, errors.New("prev must be 64 lower-case hex digits")
	}
	if y := w.Time.Year(); y < 0 || y > 9999 {
		return Entry{}, nil, errors.New("time out of range")
	}
	e := Entry{Event: w.Event, Seq: *w.Seq, Prev: w.Prev, Hash: string(hash)}
	e.Time = e.Time.UTC()
	if !bytes.Equal(appendBody(nil, e.Seq, e.Prev, &e.Event), body) {
		return e, body, errNotCanonical
	}
	return e, body, nil
}

// parseLegacy parses a line written before the chain (a bare Event).
func parseLegacy(line []byte) (Entry, error) {
	var e Event
	if err := json.Unmarshal(line, &e); err != nil {
		return Entry{}, err
	}
	return Entry{Event: e}, nil
}

// quickSeq reads the seq of a chained line without parsing the rest; ok is
// false for anything else. Readers use it to skip ahead cheaply.
func quickSeq(line []byte) (uint64, bool) {
	if !bytes.HasPrefix(line, []byte(chainedPrefix)) {
		return 0, false
	}
	rest := line[len(chainedPrefix):]
	i := 0
	for i < len(rest) && i < 20 && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	if i == 0 || i == len(rest) || rest[i] != ',' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	return n, err == nil && n > 0
}

func isHexHash(b []byte) bool {
	if len(b) != 64 {
		return false
	}
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// hashBody is the entry hash over a canonical body.
func hashBody(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

// normalize makes e encodable canonically: UTC time (now when unset or out
// of range) and valid UTF-8 everywhere. It never changes the caller's
// Details map.
func normalize(e Event, now func() time.Time) Event {
	if e.Time.IsZero() || e.Time.Year() < 0 || e.Time.Year() > 9999 {
		e.Time = now()
	}
	e.Time = e.Time.UTC()
	for _, s := range []*string{&e.Action, &e.Outcome, &e.Actor, &e.Subject, &e.Reason, &e.Remote, &e.Listener} {
		*s = validUTF8(*s)
	}
	if len(e.Details) > 0 {
		d := make(map[string]string, len(e.Details))
		for k, v := range e.Details {
			d[validUTF8(k)] = validUTF8(v)
		}
		e.Details = d
	}
	return e
}

// shorten cuts every field to 512 bytes and keeps the first 16 details
// (keys cut to 64 bytes, values to 256), marking the entry, so an event too
// large for one line still leaves a trace. Even if every byte needed a
// six-byte escape the result fits MaxLineSize.
func shorten(e Event) Event {
	const maxField, maxKey, maxValue, maxDetails = 512, 64, 256, 16
	for _, s := range []*string{&e.Action, &e.Outcome, &e.Actor, &e.Subject, &e.Reason, &e.Remote, &e.Listener} {
		*s = truncateUTF8(*s, maxField)
	}
	d := make(map[string]string, maxDetails+1)
	for _, k := range sortedKeys(e.Details) {
		if len(d) == maxDetails {
			break
		}
		d[truncateUTF8(k, maxKey)] = truncateUTF8(e.Details[k], maxValue)
	}
	d["audit.truncated"] = "true"
	e.Details = d
	return e
}

func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return string(bytes.ToValidUTF8([]byte(s), []byte("\uFFFD")))
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}
