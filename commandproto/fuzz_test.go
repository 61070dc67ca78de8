package commandproto

import (
	"bytes"
	"encoding/json"
	"testing"
)

// sameJSON reports whether Marshal's copy of a body is the body as it came,
// compacted: Marshal may drop insignificant whitespace, nothing else.
func sameJSON(t *testing.T, got, want json.RawMessage) bool {
	t.Helper()
	if len(want) == 0 {
		return len(got) == 0
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, want); err != nil {
		t.Fatalf("an accepted body does not compact: %v", err)
	}
	return bytes.Equal(got, buf.Bytes())
}

// FuzzParseCommand: anything accepted validates, and Marshal encodes it
// within MaxMessage to bytes that parse back to the same command (the body
// compacted) and encode again to the same bytes.
func FuzzParseCommand(f *testing.F) {
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","name":"reboot","deadline":"2031-05-06T07:08:09Z"}`))
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","name":"set-led","body":{ "color" : "<red>" },"deadline":"2031-05-06T07:08:09.5Z"}`))
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","name":"x","body":null,"deadline":"2031-05-06T07:08:09Z"}`))
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","name":"x","deadline":"2031-05-06T08:08:09+01:00"}`))
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","name":"x","name":"y","deadline":"2031-05-06T07:08:09Z"}`))
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","Name":"x","deadline":"2031-05-06T07:08:09Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCommand(b)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted a command that does not validate: %v", err)
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("accepted a command that does not marshal: %v", err)
		}
		back, err := ParseCommand(out)
		if err != nil {
			t.Fatalf("re-encoding %.200s does not parse: %v", out, err)
		}
		if back.ID != c.ID || back.Name != c.Name || !back.Deadline.Equal(c.Deadline) || !sameJSON(t, back.Body, c.Body) {
			t.Fatalf("re-encoding changed the command: %+v vs %+v", back, c)
		}
		if again, err := back.Marshal(); err != nil || !bytes.Equal(again, out) {
			t.Fatalf("encoding is not stable: %.200s vs %.200s (%v)", again, out, err)
		}
	})
}

// FuzzParseResult: anything accepted validates, and round-trips through
// Marshal as for FuzzParseCommand.
func FuzzParseResult(f *testing.F) {
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","status":"ok","body":{"uptime":12}}`))
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","status":"ok"}`))
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","status":"error","error":"sensor \"t1\" not found"}`))
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","status":"rejected","error":"busy"}`))
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","status":"error","error":"two\nlines"}`))
	f.Add([]byte(`{"id":"AAAAAAAAAAAAAAAAAAAAAA","status":"rejected","error":"busy","body":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseResult(b)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted a result that does not validate: %v", err)
		}
		if r.Error != "" && CleanError(r.Error) != r.Error {
			t.Fatalf("accepted error text %q that CleanError changes", r.Error)
		}
		out, err := r.Marshal()
		if err != nil {
			t.Fatalf("accepted a result that does not marshal: %v", err)
		}
		back, err := ParseResult(out)
		if err != nil {
			t.Fatalf("re-encoding %.200s does not parse: %v", out, err)
		}
		if back.ID != r.ID || back.Status != r.Status || back.Error != r.Error || !sameJSON(t, back.Body, r.Body) {
			t.Fatalf("re-encoding changed the result: %+v vs %+v", back, r)
		}
		if again, err := back.Marshal(); err != nil || !bytes.Equal(again, out) {
			t.Fatalf("encoding is not stable: %.200s vs %.200s (%v)", again, out, err)
		}
	})
}

// FuzzCleanError: the output is always a valid error text (or empty), and
// cleaning it again changes nothing.
func FuzzCleanError(f *testing.F) {
	f.Add("sensor not found")
	f.Add(" two\nlines\u2028\xff ")
	f.Fuzz(func(t *testing.T, s string) {
		out := CleanError(s)
		if out == "" {
			return
		}
		if err := validErrorText(out); err != nil {
			t.Fatalf("CleanError(%q) = %q: %v", s, out, err)
		}
		if CleanError(out) != out {
			t.Fatalf("CleanError is not idempotent on %q", out)
		}
	})
}
