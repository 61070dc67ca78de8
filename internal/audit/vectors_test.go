package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var updateVectors = flag.Bool("update-vectors", false, "rewrite testdata/vectors and testdata/vectors-legacy from vectorEvents")

// vectorEvents exercise every rule of the canonical encoding: omitted
// empty fields, an empty outcome that is kept, whole seconds (nine zero
// digits), a non-UTC time, sorted detail keys (bytewise, so "Z" < "q" <
// "é"), and every kind of string escape.
func vectorEvents() []Event {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	return []Event{
		{Time: t0, Action: "mqtt.connect", Outcome: "denied", Actor: "device:alpha", Reason: "client-id-mismatch", Remote: "10.0.0.7:50122", Listener: "mqtts"},
		{Time: t0.Add(877 * time.Millisecond).Truncate(time.Second).Add(time.Second), Action: "device.revoke", Outcome: "done", Actor: "operator", Subject: "device:alpha", Reason: "key leaked"},
		{Time: t0.In(time.FixedZone("CET", 3600)), Action: "mqtt.read", Outcome: "denied", Actor: "device:b", Details: map[string]string{"topic": "#", "qos": "1", "Zeta": "z", "émoji": "🔑"}},
		{Time: t0.Add(time.Microsecond), Action: "test.escapes", Outcome: "done", Reason: "quote\" backslash\\ <tag>&amp; \x00\x01\x1f \b\f\n\r\t del\x7f ls\u2028ps\u2029 ü 𝄞"},
		{Time: t0.Add(time.Hour), Action: "x", Outcome: ""},
	}
}

// legacyPrefix is what a Warden from before the chain wrote.
const legacyPrefix = `{"time":"2025-12-31T23:59:58.5Z","action":"mqtt.connect","outcome":"denied","actor":"device:old","reason":"device-revoked"}
{"time":"2025-12-31T23:59:59Z","action":"device.revoke","outcome":"done","actor":"operator","subject":"device:old","details":{"note":"\u003cb\u003e"}}
`

type vectorFile struct {
	Comment string `json:"comment"`
	Entries []struct {
		Seq   uint64 `json:"seq"`
		Event Event  `json:"event"`
		Body  string `json:"body"`
		Hash  string `json:"hash"`
	} `json:"entries"`
}

// writeVectorLog writes the vector events with the real writer into dir.
func writeVectorLog(t *testing.T, dir, prefix string) {
	t.Helper()
	path := filepath.Join(dir, "audit.log")
	if err := os.WriteFile(path, []byte(prefix), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range vectorEvents() {
		l.Record(context.Background(), e)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestVectors(t *testing.T) {
	for _, tc := range []struct{ dir, prefix string }{{"testdata/vectors", ""}, {"testdata/vectors-legacy", legacyPrefix}} {
		t.Run(filepath.Base(tc.dir), func(t *testing.T) {
			fresh := t.TempDir()
			writeVectorLog(t, fresh, tc.prefix)
			if *updateVectors {
				os.MkdirAll(tc.dir, 0o755)
				for _, name := range []string{"audit.log", "audit.log.head"} {
					b, _ := os.ReadFile(filepath.Join(fresh, name))
					if err := os.WriteFile(filepath.Join(tc.dir, name), b, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				if tc.prefix == "" {
					writeVectorJSON(t, tc.dir)
				}
			}
			// The writer still produces the committed bytes exactly.
			for _, name := range []string{"audit.log", "audit.log.head"} {
				want, err := os.ReadFile(filepath.Join(tc.dir, name))
				if err != nil {
					t.Fatal(err)
				}
				got, _ := os.ReadFile(filepath.Join(fresh, name))
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs from %s/%s:\ngot  %s\nwant %s", name, tc.dir, name, got, want)
				}
			}
			rep := mustVerify(t, filepath.Join(tc.dir, "audit.log"))
			requireOK(t, rep)
			if rep.Entries != len(vectorEvents()) || rep.HeadLag != 0 {
				t.Fatalf("report = %+v", rep)
			}
			lines := readLines(t, filepath.Join(tc.dir, "audit.log"))
			first := mustParse(t, lines[len(lines)-len(vectorEvents())])
			sum := sha256.Sum256([]byte(tc.prefix))
			if want := hex.EncodeToString(sum[:]); tc.prefix != "" && first.Prev != want {
				t.Errorf("prev of entry 1 = %s, want SHA-256 of the legacy lines %s", first.Prev, want)
			}
		})
	}

	// vectors.json spells out each body and hash for other implementations.
	b, err := os.ReadFile("testdata/vectors/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vf vectorFile
	if err := json.Unmarshal(b, &vf); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, "testdata/vectors/audit.log")
	if len(vf.Entries) != len(lines) || len(lines) != len(vectorEvents()) {
		t.Fatalf("%d vectors, %d lines", len(vf.Entries), len(lines))
	}
	prev := ZeroHash
	for i, v := range vf.Entries {
		sum := sha256.Sum256([]byte(v.Body))
		if hex.EncodeToString(sum[:]) != v.Hash {
			t.Errorf("vector %d: SHA-256(body) = %x, want %s", v.Seq, sum, v.Hash)
		}
		ev := normalize(v.Event, time.Now)
		if got := appendBody(nil, v.Seq, prev, &ev); string(got) != v.Body {
			t.Errorf("vector %d: canonical encoding\ngot  %s\nwant %s", v.Seq, got, v.Body)
		}
		line, hash := sealLine([]byte(v.Body))
		if !bytes.Equal(line, lines[i]) || hash != v.Hash {
			t.Errorf("vector %d: line %s, want %s", v.Seq, line, lines[i])
		}
		prev = v.Hash
	}
}

func writeVectorJSON(t *testing.T, dir string) {
	vf := vectorFile{Comment: "Each entry: the event as given to Record, the canonical body (the line without its hash), and hash = SHA-256(body). See docs/audit.md."}
	prev := ZeroHash
	for i, e := range vectorEvents() {
		ev := normalize(e, time.Now)
		body := appendBody(nil, uint64(i+1), prev, &ev)
		prev = hashBody(body)
		vf.Entries = append(vf.Entries, struct {
			Seq   uint64 `json:"seq"`
			Event Event  `json:"event"`
			Body  string `json:"body"`
			Hash  string `json:"hash"`
		}{uint64(i + 1), e, string(body), prev})
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(vf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vectors.json"), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The canonical encoding, spelled out by hand for the cases that matter.
func TestCanonicalEncoding(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	prev := ZeroHash
	head := `{"seq":7,"prev":"` + prev + `","time":"2026-01-02T03:04:05.000000000Z",`
	tests := []struct {
		e    Event
		want string
	}{
		{Event{Time: t0, Action: "a", Outcome: ""}, head + `"action":"a","outcome":""}`},
		{Event{Time: t0.In(time.FixedZone("X", -7*3600)), Action: "a", Outcome: "done", Listener: "l", Remote: "r", Reason: "why", Subject: "s", Actor: "act"},
			head + `"action":"a","outcome":"done","actor":"act","subject":"s","reason":"why","remote":"r","listener":"l"}`},
		{Event{Time: t0, Action: "<&>", Outcome: "\u2028\u2029\x7f"}, head + "\"action\":\"<&>\",\"outcome\":\"\u2028\u2029\x7f\"}"},
		{Event{Time: t0, Action: "\"\\/", Outcome: "\x00\x07\x08\x09\x0a\x0b\x0c\x0d\x1b\x1f"}, head + `"action":"\"\\/","outcome":"\u0000\u0007\b\t\n\u000b\f\r\u001b\u001f"}`},
		{Event{Time: t0, Action: "a", Outcome: "o", Details: map[string]string{"b": "2", "a": "1", "é": "3", "Z": "0", "": "e"}},
			head + `"action":"a","outcome":"o","details":{"":"e","Z":"0","a":"1","b":"2","é":"3"}}`},
		{Event{Time: t0, Action: "a", Outcome: "o", Details: map[string]string{}}, head + `"action":"a","outcome":"o"}`},
	}
	for _, tc := range tests {
		got := string(appendBody(nil, 7, prev, &tc.e))
		if got != tc.want {
			t.Errorf("canonical encoding\ngot  %s\nwant %s", got, tc.want)
		}
		// It parses back to itself.
		line, hash := sealLine([]byte(got))
		e, body, err := parseEntry(line[:len(line)-1])
		if err != nil || string(body) != got || e.Hash != hash || e.Seq != 7 {
			t.Errorf("parse back %s: %+v %v", line, e, err)
		}
		// encoding/json reads it as it reads any JSON.
		var ev Event
		if err := json.Unmarshal([]byte(got), &ev); err != nil || ev.Action != tc.e.Action || !ev.Time.Equal(tc.e.Time) {
			t.Errorf("encoding/json reads %s as %+v, %v", got, ev, err)
		}
	}
}

func TestParseEntryRejects(t *testing.T) {
	good, _ := sealLine(appendBody(nil, 1, ZeroHash, &Event{Time: time.Unix(0, 0), Action: "a", Outcome: "o"}))
	good = good[:len(good)-1]
	if _, _, err := parseEntry(good); err != nil {
		t.Fatalf("good line: %v", err)
	}
	resealed := func(body string) string { l, _ := sealLine([]byte(body)); return string(l[:len(l)-1]) }
	for _, tc := range []struct{ line, why string }{
		{"", "empty"},
		{`{"time":"2026-01-01T00:00:00Z","action":"a","outcome":"o"}`, "legacy"},
		{string(good[:len(good)-3]) + `"}`, "short hash"},
		{string(good[:len(good)-66]) + strings.ToUpper(string(good[len(good)-66:len(good)-2])) + `"}`, "upper-case hash"},
		{resealed(`{"seq":0,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","action":"a","outcome":"o"}`), "seq 0"},
		{resealed(`{"seq":1,"prev":"xyz","time":"1970-01-01T00:00:00.000000000Z","action":"a","outcome":"o"}`), "bad prev"},
		{resealed(`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","action":"a","outcome":"o","evil":1}`), "unknown field"},
		{resealed(`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","action":"a","outcome":"o","hash":"x"}`), "hash inside"},
		{resealed(`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","action":"a","outcome":"o"} {}`), "trailing data"},
		{resealed(`{"seq":-1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","action":"a","outcome":"o"}`), "negative seq"},
	} {
		if _, _, err := parseEntry([]byte(tc.line)); err == nil {
			t.Errorf("%s: %q parsed", tc.why, tc.line)
		}
	}
	for _, tc := range []struct{ body, why string }{
		{`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00Z","action":"a","outcome":"o"}`, "short time"},
		{`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T01:00:00.000000000+01:00","action":"a","outcome":"o"}`, "offset"},
		{`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","outcome":"o","action":"a"}`, "order"},
		{`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","action":"\u0061","outcome":"o"}`, "needless escape"},
		{`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","action":"a","outcome":"o","actor":""}`, "empty kept"},
		{`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","action":"a","action":"b","outcome":"o"}`, "duplicate key"},
		{`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","ACTION":"a","outcome":"o"}`, "key case"},
		{`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","action":"a","outcome":"o","details":{"b":"1","a":"2"}}`, "unsorted details"},
		{`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","action":"a","outcome":"o","details":{}}`, "empty details"},
		{"{\"seq\":1,\"prev\":\"" + ZeroHash + "\",\"time\":\"1970-01-01T00:00:00.000000000Z\",\"action\":\"\xff\",\"outcome\":\"o\"}", "invalid UTF-8"},
		{`{"seq":1,"prev":"` + ZeroHash + `","time":"1970-01-01T00:00:00.000000000Z","action":"a","outcome":"o"` + "\t}", "space"},
	} {
		if _, _, err := parseEntry([]byte(resealed(tc.body))); !errors.Is(err, errNotCanonical) {
			t.Errorf("%s: %q: err = %v, want not canonical", tc.why, tc.body, err)
		}
	}
}
