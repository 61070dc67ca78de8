package commandproto

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestTopics(t *testing.T) {
	if got := CommandTopic("dev-1"); got != "private/dev-1/down/cmd" {
		t.Errorf("CommandTopic = %q", got)
	}
	if got := ResultTopic("dev-1"); got != "private/dev-1/up/cmd-result" {
		t.Errorf("ResultTopic = %q", got)
	}
}

func TestNewID(t *testing.T) {
	seen := make(map[string]bool)
	for range 100 {
		id, err := NewID()
		if err != nil {
			t.Fatal(err)
		}
		if len(id) != 22 || !ValidID(id) {
			t.Fatalf("NewID() = %q: want 22 characters of the ID grammar", id)
		}
		if seen[id] {
			t.Fatalf("NewID() repeated %q", id)
		}
		seen[id] = true
	}
}

func TestValidIDAndName(t *testing.T) {
	for _, tc := range []struct {
		s        string
		id, name bool
	}{
		{"", false, false},
		{"a", false, true},
		{"reboot", false, true},
		{"set.led_color-2", false, true},
		{"0", false, true},
		{strings.Repeat("a", 15), false, true},
		{strings.Repeat("a", 16), true, true},
		{strings.Repeat("z", 64), true, true},
		{strings.Repeat("z", 65), false, false},
		{"AbCdEfGh_-012345", true, false},
		{"-abcdefghijklmnop", true, false},
		{".hidden", false, false},
		{"_x", false, false},
		{"Reboot", false, false},
		{"re boot", false, false},
		{"re/boot", false, false},
		{"re+boot", false, false},
		{"abcdefghijklmno.", false, true},
		{"abcdefghijklmno=", false, false},
		{"abcdefghijklmnoé", false, false},
	} {
		if got := ValidID(tc.s); got != tc.id {
			t.Errorf("ValidID(%q) = %v, want %v", tc.s, got, tc.id)
		}
		if got := ValidName(tc.s); got != tc.name {
			t.Errorf("ValidName(%q) = %v, want %v", tc.s, got, tc.name)
		}
	}
}

const testID = "AAAAAAAAAAAAAAAAAAAAAA"

func TestCommand(t *testing.T) {
	deadline := time.Date(2031, 5, 6, 7, 8, 9, 123000000, time.UTC)
	for _, c := range []Command{
		{ID: testID, Name: "reboot", Deadline: deadline},
		{ID: testID, Name: "set-led", Body: json.RawMessage(`{"color":"red","on":true}`), Deadline: deadline},
		{ID: testID, Name: "x", Body: json.RawMessage(`null`), Deadline: deadline},
		{ID: testID, Name: "x", Body: json.RawMessage(`[1,2.5e3,"<&>"]`), Deadline: deadline},
		{ID: testID, Name: "x", Body: json.RawMessage(`"\u00e9t\u00e9"`), Deadline: deadline},
		{ID: testID, Name: "x", Body: json.RawMessage(`"` + strings.Repeat("<", MaxBody-2) + `"`), Deadline: deadline},
		{ID: strings.Repeat("-", 64), Name: strings.Repeat("9", 64), Body: json.RawMessage(`0`), Deadline: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)},
	} {
		b, err := c.Marshal()
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", c, err)
		}
		if len(b) > MaxMessage {
			t.Fatalf("Marshal made %d bytes", len(b))
		}
		got, err := ParseCommand(b)
		if err != nil {
			t.Fatalf("ParseCommand(%.200s): %v", b, err)
		}
		if got.ID != c.ID || got.Name != c.Name || !bytes.Equal(got.Body, c.Body) || !got.Deadline.Equal(c.Deadline) {
			t.Fatalf("round trip changed the command: %+v vs %+v", got, c)
		}
	}

	// What a server writes by hand parses too: body whitespace is kept
	// as it came (Marshal compacts it).
	in := `{"id":"` + testID + `","name":"reboot","body": { "delay" : 5 } ,"deadline":"2031-05-06T07:08:09Z"}`
	c, err := ParseCommand([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if string(c.Body) != `{ "delay" : 5 }` || c.Deadline.Location() != time.UTC {
		t.Errorf("parsed %+v", c)
	}
	if b, _ := c.Marshal(); !strings.Contains(string(b), `"body":{"delay":5}`) {
		t.Errorf("Marshal = %s, want the body compacted", b)
	}

	for _, tc := range []struct{ name, in, want string }{
		{"empty", ``, "not JSON"},
		{"not an object", `["x"]`, "expected a JSON object"},
		{"unknown field", `{"id":"` + testID + `","name":"x","deadline":"2031-01-01T00:00:00Z","args":1}`, `unknown field "args"`},
		{"case variant", `{"ID":"` + testID + `","name":"x","deadline":"2031-01-01T00:00:00Z"}`, `unknown field "ID"`},
		{"duplicate", `{"id":"` + testID + `","name":"x","name":"y","deadline":"2031-01-01T00:00:00Z"}`, "appears twice"},
		{"trailing", `{"id":"` + testID + `","name":"x","deadline":"2031-01-01T00:00:00Z"} {}`, "trailing data"},
		{"short id", `{"id":"abc","name":"x","deadline":"2031-01-01T00:00:00Z"}`, "id \"abc\" must be"},
		{"no id", `{"name":"x","deadline":"2031-01-01T00:00:00Z"}`, "id \"\" must be"},
		{"bad name", `{"id":"` + testID + `","name":"Reboot","deadline":"2031-01-01T00:00:00Z"}`, "name \"Reboot\" must be"},
		{"no deadline", `{"id":"` + testID + `","name":"x"}`, "deadline is required"},
		{"null deadline", `{"id":"` + testID + `","name":"x","deadline":null}`, "deadline is required"},
		{"zero deadline", `{"id":"` + testID + `","name":"x","deadline":"0001-01-01T00:00:00Z"}`, "deadline is required"},
		{"offset deadline", `{"id":"` + testID + `","name":"x","deadline":"2031-01-01T01:00:00+01:00"}`, "must be in UTC"},
		{"+00:00 deadline", `{"id":"` + testID + `","name":"x","deadline":"2031-01-01T00:00:00+00:00"}`, "must be in UTC"},
		{"not RFC 3339", `{"id":"` + testID + `","name":"x","deadline":"2031-01-01 00:00:00Z"}`, "cannot parse"},
		{"unix deadline", `{"id":"` + testID + `","name":"x","deadline":1924992000}`, "command:"},
		{"bad body", `{"id":"` + testID + `","name":"x","body":{"a":},"deadline":"2031-01-01T00:00:00Z"}`, "invalid character"},
		{"body not UTF-8", "{\"id\":\"" + testID + "\",\"name\":\"x\",\"body\":\"\xff\",\"deadline\":\"2031-01-01T00:00:00Z\"}", "not valid UTF-8"},
		{"body too big", `{"id":"` + testID + `","name":"x","body":"` + strings.Repeat("a", MaxBody-1) + `","deadline":"2031-01-01T00:00:00Z"}`, "exceeds the 16384-byte limit"},
		{"message too big", strings.Repeat(" ", MaxMessage+1), "exceed the 20480-byte limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCommand([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseCommand = %v, want an error containing %q", err, tc.want)
			}
		})
	}

	// Validate refuses what a server might build by mistake.
	for _, c := range []Command{
		{ID: testID, Name: "x", Deadline: deadline.In(time.FixedZone("CET", 3600))},
		{ID: testID, Name: "x", Deadline: deadline.In(time.Local)}, // not time.UTC even where Local is UTC
		{ID: testID, Name: "x", Deadline: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{ID: testID, Name: "x", Body: json.RawMessage(` `), Deadline: deadline},
		{ID: testID, Name: "x", Body: json.RawMessage(`{} {}`), Deadline: deadline},
	} {
		if _, err := c.Marshal(); err == nil {
			t.Errorf("Marshal(%+v) succeeded", c)
		}
	}
}

func TestResult(t *testing.T) {
	for _, r := range []Result{
		{ID: testID, Status: StatusOK},
		{ID: testID, Status: StatusOK, Body: json.RawMessage(`{"uptime":12}`)},
		{ID: testID, Status: StatusOK, Body: json.RawMessage(`"` + strings.Repeat(`\"`, MaxBody/2-1) + `"`)},
		{ID: testID, Status: StatusError, Error: "sensor not found"},
		{ID: testID, Status: StatusRejected, Error: RejectBusy},
		{ID: testID, Status: StatusRejected, Error: strings.Repeat(`"\`, MaxError/2)},
		{ID: testID, Status: StatusError, Error: strings.Repeat("é", MaxError/2)},
	} {
		b, err := r.Marshal()
		if err != nil {
			t.Fatalf("Marshal(%.100v): %v", r, err)
		}
		got, err := ParseResult(b)
		if err != nil {
			t.Fatalf("ParseResult(%.200s): %v", b, err)
		}
		if got.ID != r.ID || got.Status != r.Status || !bytes.Equal(got.Body, r.Body) || got.Error != r.Error {
			t.Fatalf("round trip changed the result: %.100v", got)
		}
	}

	for _, tc := range []struct{ name, in, want string }{
		{"unknown status", `{"id":"` + testID + `","status":"done"}`, `unknown status "done"`},
		{"ok with error", `{"id":"` + testID + `","status":"ok","error":"x"}`, "status ok carries an error"},
		{"error without text", `{"id":"` + testID + `","status":"error"}`, "needs an error text"},
		{"rejected with body", `{"id":"` + testID + `","status":"rejected","error":"busy","body":{}}`, "carries a body"},
		{"error with body", `{"id":"` + testID + `","status":"error","error":"x","body":null}`, "carries a body"},
		{"error two lines", `{"id":"` + testID + `","status":"error","error":"a\nb"}`, "one line"},
		{"error with NUL", `{"id":"` + testID + `","status":"error","error":"a\u0000b"}`, "one line"},
		{"error with C1", `{"id":"` + testID + `","status":"error","error":"a\u0085b"}`, "one line"},
		{"error with line separator", `{"id":"` + testID + `","status":"error","error":"a\u2028b"}`, "one line"},
		{"error padded", `{"id":"` + testID + `","status":"error","error":" busy"}`, "surrounding spaces"},
		{"error too long", `{"id":"` + testID + `","status":"error","error":"` + strings.Repeat("x", MaxError+1) + `"}`, "exceeds the 512-byte limit"},
		{"bad id", `{"id":"r1","status":"ok"}`, `id "r1" must be`},
		{"duplicate", `{"id":"` + testID + `","status":"ok","status":"error"}`, "appears twice"},
		{"unknown field", `{"id":"` + testID + `","status":"ok","code":0}`, `unknown field "code"`},
		{"escaped key", `{"\u0069d":"` + testID + `","status":"ok"}`, ""},
		{"bad body", `{"id":"` + testID + `","status":"ok","body":tru}`, "invalid character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseResult([]byte(tc.in))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("ParseResult: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseResult = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestLimitsHold checks the arithmetic behind MaxMessage: the largest
// command and result Validate accepts, in the worst escaping, encode within
// it.
func TestLimitsHold(t *testing.T) {
	body := json.RawMessage(`"` + strings.Repeat(`\u0000`, (MaxBody-2)/6) + `"`)
	c := Command{ID: strings.Repeat("a", MaxIDLength), Name: strings.Repeat("b", MaxNameLength), Body: body,
		Deadline: time.Date(2031, 1, 1, 0, 0, 0, 999999999, time.UTC)}
	b, err := c.Marshal()
	if err != nil || len(b) > MaxMessage {
		t.Fatalf("largest command: %d bytes, %v", len(b), err)
	}
	r := Result{ID: c.ID, Status: StatusOK, Body: body}
	if b, err := r.Marshal(); err != nil || len(b) > MaxMessage {
		t.Fatalf("largest ok result: %d bytes, %v", len(b), err)
	}
	r = Result{ID: c.ID, Status: StatusRejected, Error: strings.Repeat(`\`, MaxError)}
	if b, err := r.Marshal(); err != nil || len(b) > MaxMessage {
		t.Fatalf("largest error result: %d bytes, %v", len(b), err)
	}
}

func TestCleanError(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"sensor not found", "sensor not found"},
		{"  two\nlines\r\n", "two lines"},
		{"tab\there", "tab here"},
		{"nul\x00del\x7fc1\u0085", "nul del c1"},
		{"ls\u2028ps\u2029", "ls ps"},
		{"bad \xff utf-8", "bad \uFFFD utf-8"},
		{"\n\t ", ""},
		{strings.Repeat("x", 600), strings.Repeat("x", MaxError)},
		{strings.Repeat("x", 511) + "é", strings.Repeat("x", 511)},
		{strings.Repeat("x", 510) + "é", strings.Repeat("x", 510) + "é"},
		{strings.Repeat("x", 510) + " é", strings.Repeat("x", 510)},
	} {
		got := CleanError(tc.in)
		if got != tc.want {
			t.Errorf("CleanError(%.40q) = %.40q (%d bytes), want %.40q", tc.in, got, len(got), tc.want)
		}
		if got != "" {
			if err := validErrorText(got); err != nil {
				t.Errorf("CleanError(%.40q) is not a valid error text: %v", tc.in, err)
			}
		}
	}
}
