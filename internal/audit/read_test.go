package audit

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pagedLog writes n entries with actions a.0 ... a.4 in turn, subjects
// s<i%7> and times one second apart from t0.
func pagedLog(t testing.TB, n int, t0 time.Time) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		l.Record(context.Background(), Event{Time: t0.Add(time.Duration(i) * time.Second), Action: fmt.Sprintf("a.%d", i%5), Outcome: "done",
			Actor: "operator", Subject: fmt.Sprintf("s%d", i%7), Details: map[string]string{"pad": strings.Repeat("x", i%300)}})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func seqs(es []Entry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Seq
	}
	return out
}

func TestReadPagesForward(t *testing.T) {
	const n = 3000 // about 600 KiB: bisection has work to do
	path := pagedLog(t, n, time.Unix(1e9, 0))
	var got []uint64
	after, pages := uint64(0), 0
	for {
		p, err := Read(path, Filter{AfterSeq: after, Limit: 128})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		got = append(got, seqs(p.Entries)...)
		if len(p.Entries) > 0 && p.Next != p.Entries[len(p.Entries)-1].Seq {
			t.Fatalf("Next = %d after a full page ending at %d", p.Next, p.Entries[len(p.Entries)-1].Seq)
		}
		if !p.More {
			break
		}
		after = p.Next
	}
	if len(got) != n || pages != (n+127)/128 {
		t.Fatalf("%d entries in %d pages", len(got), pages)
	}
	for i, s := range got {
		if s != uint64(i+1) {
			t.Fatalf("entry %d has seq %d", i, s)
		}
	}

	// Bisection lands where a linear scan would.
	f, _ := os.Open(path)
	defer f.Close()
	fi, _ := f.Stat()
	lines := readLines(t, path)
	for _, after := range []uint64{0, 1, 2, 500, 1499, 2999, 3000, 5000} {
		off, err := seekAfter(f, fi.Size(), after)
		if err != nil {
			t.Fatal(err)
		}
		var linear int64
		for _, l := range lines {
			if s, _ := quickSeq(l); s > after {
				break
			}
			linear += int64(len(l))
		}
		if off > linear || linear-off > 4*MaxLineSize {
			t.Errorf("seekAfter(%d) = %d; the first later entry starts at %d", after, off, linear)
		}
	}
}

func TestReadFilters(t *testing.T) {
	t0 := time.Unix(1e9, 0).UTC()
	path := pagedLog(t, 200, t0)
	tests := []struct {
		name string
		f    Filter
		want func(seq uint64) bool
		more bool
	}{
		{"action prefix", Filter{Action: "a.3", Limit: 1000}, func(s uint64) bool { return s%5 == 3 }, false},
		{"action family", Filter{Action: "a.", Limit: 1000}, func(uint64) bool { return true }, false},
		{"subject", Filter{Subject: "s2", Limit: 1000}, func(s uint64) bool { return s%7 == 2 }, false},
		{"since", Filter{Since: t0.Add(150 * time.Second), Limit: 1000}, func(s uint64) bool { return s >= 150 }, false},
		{"after and filter", Filter{AfterSeq: 100, Action: "a.0", Limit: 1000}, func(s uint64) bool { return s > 100 && s%5 == 0 }, false},
		{"newest limited", Filter{Newest: true, Action: "a.1", Limit: 3}, func(s uint64) bool { return s == 186 || s == 191 || s == 196 }, true},
		{"newest after", Filter{Newest: true, AfterSeq: 195, Limit: 100}, func(s uint64) bool { return s > 195 }, false},
		{"actor and outcome", Filter{Actor: "operator", Outcome: "done", Limit: 1000}, func(uint64) bool { return true }, false},
		{"no match", Filter{Actor: "nobody"}, func(uint64) bool { return false }, false},
		{"default limit", Filter{}, func(s uint64) bool { return s <= DefaultLimit }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Read(path, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			var want []uint64
			for s := uint64(1); s <= 200; s++ {
				if tc.want(s) {
					want = append(want, s)
				}
			}
			if fmt.Sprint(seqs(p.Entries)) != fmt.Sprint(want) || p.More != tc.more {
				t.Fatalf("got %v more=%v, want %v more=%v", seqs(p.Entries), p.More, want, tc.more)
			}
			if !tc.f.Newest && !tc.more && p.Next != 200 {
				t.Errorf("Next = %d after reading to the end, want 200", p.Next)
			}
		})
	}
	tail, err := Tail(path, 3)
	if err != nil || fmt.Sprint(seqs(tail)) != "[198 199 200]" {
		t.Fatalf("Tail = %v, %v", seqs(tail), err)
	}
	if p, err := Read(filepath.Join(t.TempDir(), "none"), Filter{}); err != nil || len(p.Entries) != 0 {
		t.Fatalf("Read of a missing log = %+v, %v", p, err)
	}
}

// Damaged lines are skipped by readers (Verify reports them); a huge line
// costs bounded memory, not an allocation of its size.
func TestReadSkipsDamagedLines(t *testing.T) {
	path := writeLog(t, 6)
	lines := readLines(t, path)
	lines[1] = []byte("garbage\n")
	lines[2] = append([]byte(`{"seq":3,`+strings.Repeat("z", 3*MaxLineSize)), '\n')
	lines = append(lines, []byte(`{"seq":7,"prev":"tor`)) // incomplete: a write in progress
	writeLines(t, path, lines)
	for _, f := range []Filter{{}, {Newest: true}, {AfterSeq: 3}} {
		p, err := Read(path, f)
		if err != nil {
			t.Fatal(err)
		}
		want := "[1 4 5 6]"
		if f.AfterSeq == 3 {
			want = "[4 5 6]"
		}
		if fmt.Sprint(seqs(p.Entries)) != want {
			t.Errorf("%+v: %v, want %s", f, seqs(p.Entries), want)
		}
	}
}

func TestBackScannerLongLines(t *testing.T) {
	long := strings.Repeat("y", MaxLineSize)
	data := "a\n" + long + "\nb\n\n" + long[:MaxLineSize-1] + "\nc\n"
	bs := newBackScanner(strings.NewReader(data), int64(len(data)))
	var got []string
	for {
		ln, err := bs.prev()
		if err != nil {
			break
		}
		switch {
		case ln.tooLong:
			got = append(got, "LONG")
		case len(ln.text) > 10:
			got = append(got, fmt.Sprint(len(ln.text)))
		default:
			got = append(got, string(ln.text))
		}
		if !bytes.Equal(ln.text, []byte(data[ln.start:ln.start+int64(len(ln.text))])) {
			t.Fatalf("line at %d does not match its offset", ln.start)
		}
	}
	if want := fmt.Sprint([]string{"c", fmt.Sprint(MaxLineSize - 1), "", "b", "LONG", "a"}); fmt.Sprint(got) != want {
		t.Fatalf("lines from the end = %v, want %v", got, want)
	}
	lr := newLineReader(strings.NewReader(data+"tail"), 0, 1)
	got = nil
	for {
		ln, err := lr.next()
		if err != nil {
			break
		}
		s := string(ln.text)
		if ln.tooLong {
			s = "LONG"
		} else if len(s) > 10 {
			s = fmt.Sprint(len(s))
		}
		if !ln.complete {
			s += "(incomplete)"
		}
		got = append(got, fmt.Sprintf("%d:%s", ln.num, s))
	}
	if want := fmt.Sprint([]string{"1:a", "2:LONG", "3:b", "4:", fmt.Sprintf("5:%d", MaxLineSize-1), "6:c", "7:tail(incomplete)"}); fmt.Sprint(got) != want {
		t.Fatalf("lines = %v, want %v", got, want)
	}
}

func TestFormatEntry(t *testing.T) {
	t0 := time.Date(2026, 11, 3, 10, 15, 4, 999, time.UTC)
	tests := []struct {
		e    Entry
		want string
	}{
		{Entry{Seq: 57, Event: Event{Time: t0, Action: "mqtt.connect", Outcome: "denied", Actor: "device:alpha", Subject: "device:alpha", Reason: "client-id-mismatch", Listener: "mqtts", Remote: "10.0.0.7:50122"}},
			"2026-11-03T10:15:04Z  #57  denied  mqtt.connect  device:alpha → device:alpha  client-id-mismatch  listener=mqtts remote=10.0.0.7:50122"},
		{Entry{Event: Event{Time: t0, Action: "ca.revoke-issuer", Outcome: "done", Subject: "issuer:ab", Reason: "key leaked", Details: map[string]string{"b": "2", "a": "x y"}}},
			`2026-11-03T10:15:04Z  -  done  ca.revoke-issuer  - → issuer:ab  "key leaked"  a="x y" b=2`},
		{Entry{Seq: 1, Event: Event{Action: "evil", Outcome: "done", Actor: "device:\x1b[2Jx\u202e"}},
			`-  #1  done  evil  "device:\x1b[2Jx\u202e"`},
	}
	for _, tc := range tests {
		if got := FormatEntry(tc.e); got != tc.want {
			t.Errorf("FormatEntry\ngot  %s\nwant %s", got, tc.want)
		}
	}
}
