package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func TestRecordAppendsJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	l.Record(context.Background(), Event{Action: "mqtt.connect", Outcome: "denied", Actor: "device:abc", Reason: "device-revoked"})
	l.Record(context.Background(), Event{Action: "device.revoke", Outcome: "done", Subject: "device:abc"})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("audit file mode = %v, want 0600", fi.Mode().Perm())
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, e)
	}
	if len(got) != 2 || got[0].Reason != "device-revoked" || got[1].Action != "device.revoke" || got[0].Time.IsZero() {
		t.Fatalf("events = %+v", got)
	}
	// Reopening appends rather than truncating.
	l2, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	l2.Record(context.Background(), Event{Action: "x", Outcome: "done"})
	l2.Close()
	b, _ := os.ReadFile(path)
	if n := countLines(b); n != 3 {
		t.Fatalf("lines after reopen = %d, want 3", n)
	}
}

func countLines(b []byte) int {
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}
