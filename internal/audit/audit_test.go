package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openTest opens a log at a fresh path (or path, if given) and closes it
// at the end of the test.
func openTest(t testing.TB, path string) *Log {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "audit.log")
	}
	l, err := Open(path, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// record appends n events numbered from first and closes nothing.
func record(l *Log, first, n int, action string) {
	for i := first; i < first+n; i++ {
		l.Record(context.Background(), Event{Action: action, Outcome: "done", Actor: "operator", Subject: fmt.Sprintf("device:d%d", i), Details: map[string]string{"i": fmt.Sprint(i)}})
	}
}

// writeLog creates a committed log with n entries and returns its path.
func writeLog(t testing.TB, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	record(l, 1, n, "test.event")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func readLines(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	return lines
}

func writeLines(t testing.TB, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func mustVerify(t testing.TB, path string, anchors ...Head) Report {
	t.Helper()
	rep, err := Verify(path, anchors...)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return rep
}

func requireOK(t testing.TB, rep Report) {
	t.Helper()
	if !rep.OK || len(rep.Problems) != 0 {
		t.Fatalf("Verify found problems in an untouched log: %+v", rep)
	}
}

func TestRecordAppendsChainedJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	details := map[string]string{"topic": "#"}
	l.Record(context.Background(), Event{Action: "mqtt.connect", Outcome: "denied", Actor: "device:abc", Reason: "device-revoked"})
	l.Record(context.Background(), Event{Action: "device.claim", Outcome: "denied", Actor: "device:c1", Subject: "device:c1", Reason: "claim-expired", Details: details})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	l.Record(context.Background(), Event{Action: "after.close", Outcome: "done"}) // a no-op, not a panic
	if len(details) != 1 {
		t.Fatal("Record changed the caller's details")
	}
	for _, p := range []string{path, HeadPath(path)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", p, fi.Mode().Perm())
		}
	}
	b, _ := os.ReadFile(path)
	// Integration tests and operators grep for these exact fragments.
	for _, frag := range []string{
		`"action":"mqtt.connect","outcome":"denied","actor":"device:abc","reason":"device-revoked"`,
		`"action":"device.claim","outcome":"denied","actor":"device:c1","subject":"device:c1","reason":"claim-expired","details":{"topic":"#"}`,
	} {
		if !bytes.Contains(b, []byte(frag)) {
			t.Errorf("log lacks %s:\n%s", frag, b)
		}
	}
	var got []Entry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var e Entry // the old Event decoding keeps working too
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, e)
	}
	if len(got) != 2 || got[0].Seq != 1 || got[1].Seq != 2 || got[0].Prev != ZeroHash || got[1].Prev != got[0].Hash || got[0].Time.IsZero() || got[1].Details["topic"] != "#" {
		t.Fatalf("entries = %+v", got)
	}
	h, err := ReadHead(path)
	if err != nil || h.Seq != 2 || h.Hash != got[1].Hash {
		t.Fatalf("head = %+v, %v; want seq 2 hash %s", h, err, got[1].Hash)
	}
	requireOK(t, mustVerify(t, path))

	// Reopening appends and continues the chain.
	l2 := openTest(t, path)
	l2.Record(context.Background(), Event{Action: "x", Outcome: "done"})
	l2.Close()
	lines := readLines(t, path)
	if len(lines) != 3 || !bytes.HasPrefix(lines[2], []byte(`{"seq":3,"prev":"`+got[1].Hash)) {
		t.Fatalf("lines after reopen = %q", lines)
	}
	requireOK(t, mustVerify(t, path))
}

func TestRecordShortensOversizedEvents(t *testing.T) {
	l := openTest(t, "")
	big := strings.Repeat("\x01", 100_000) // escapes to 6 bytes each
	details := map[string]string{}
	for i := range 100 {
		details[fmt.Sprintf("k%03d", i)] = big
	}
	l.Record(context.Background(), Event{Action: "big", Outcome: "done", Reason: big, Details: details})
	l.Record(context.Background(), Event{Action: "bad\xffutf8", Outcome: "done", Details: map[string]string{"k\xfe": "v\xfd"}})
	l.Close()
	lines := readLines(t, l.Path())
	if len(lines) != 2 {
		t.Fatalf("%d lines", len(lines))
	}
	if len(lines[0]) > MaxLineSize || !bytes.Contains(lines[0], []byte(`"audit.truncated":"true"`)) {
		t.Fatalf("oversized event: line of %d bytes, marked %v", len(lines[0]), bytes.Contains(lines[0], []byte("audit.truncated")))
	}
	if !bytes.Contains(lines[1], []byte("bad\uFFFDutf8")) || !bytes.Contains(lines[1], []byte("\"k\uFFFD\":\"v\uFFFD\"")) {
		t.Fatalf("invalid UTF-8 not replaced: %q", lines[1])
	}
	requireOK(t, mustVerify(t, l.Path()))
}

// A failing file costs one error line per failure streak, not one per
// event, and never a panic or a blocked caller.
func TestRecordFailureIsLoggedOncePerStreak(t *testing.T) {
	var buf syncBuffer
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Replace the file with a directory: reopening it fails.
	l.Record(context.Background(), Event{Action: "ok", Outcome: "done"})
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		l.Record(context.Background(), Event{Action: "lost", Outcome: "done"})
	}
	if n := strings.Count(buf.String(), "cannot append"); n != 1 {
		t.Fatalf("%d failure messages for one streak:\n%s", n, buf.String())
	}
	// Recovery is announced, and the next failure is logged again.
	os.Remove(path)
	l.Record(context.Background(), Event{Action: "back", Outcome: "done"})
	if !strings.Contains(buf.String(), "works again") {
		t.Fatalf("recovery not logged:\n%s", buf.String())
	}
	if b, _ := os.ReadFile(path); !bytes.Contains(b, []byte(`"action":"back"`)) {
		t.Fatalf("recovered log = %q", b)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Legacy lines (from before the chain) stay; the chain's first entry
// commits to them, so editing one afterwards is detected.
func TestLegacyLinesAreContinued(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	var legacy []byte
	for i := range 3 {
		b, _ := json.Marshal(Event{Time: time.Date(2025, 1, 1, 0, 0, i, 0, time.UTC), Action: "mqtt.connect", Outcome: "denied", Actor: fmt.Sprintf("device:old%d", i), Reason: "device-revoked"})
		legacy = append(append(legacy, b...), '\n')
	}
	if err := os.WriteFile(path, legacy, 0o600); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, path)
	if !rep.OK || rep.Legacy != 3 || rep.Entries != 0 {
		t.Fatalf("legacy-only log: %+v", rep)
	}

	l := openTest(t, path)
	record(l, 1, 2, "new.event")
	l.Close()
	lines := readLines(t, path)
	if len(lines) != 5 {
		t.Fatalf("%d lines", len(lines))
	}
	sum := sha256.Sum256(legacy)
	if !bytes.HasPrefix(lines[3], []byte(`{"seq":1,"prev":"`+hex.EncodeToString(sum[:])+`"`)) {
		t.Fatalf("entry 1 = %s, want prev = SHA-256 of the legacy lines", lines[3])
	}
	rep = mustVerify(t, path)
	requireOK(t, rep)
	if rep.Legacy != 3 || rep.Entries != 2 || len(rep.Notes) == 0 || !strings.Contains(rep.Notes[0], "3 unchained legacy lines") {
		t.Fatalf("report = %+v", rep)
	}
	tail, err := Tail(path, 10)
	if err != nil || len(tail) != 5 || tail[0].Seq != 0 || tail[0].Actor != "device:old0" || tail[4].Seq != 2 {
		t.Fatalf("Tail = %+v, %v", tail, err)
	}
	page, err := Read(path, Filter{})
	if err != nil || len(page.Entries) != 2 {
		t.Fatalf("Read without Legacy = %+v, %v", page, err)
	}

	// Editing a legacy line now breaks entry 1's link.
	lines[1] = bytes.Replace(lines[1], []byte("old1"), []byte("oldX"), 1)
	writeLines(t, path, lines)
	rep = mustVerify(t, path)
	if rep.OK || rep.Problems[0].Kind != ProblemBrokenLink || rep.Problems[0].Seq != 1 || rep.Problems[0].Line != 4 {
		t.Fatalf("edited legacy line: %+v", rep.Problems)
	}
}

// A crash between writing an entry and moving the head leaves the head
// behind the log: Verify accepts that (a note, not a problem), and the
// next writer catches the head up.
func TestCrashBetweenEntryAndHead(t *testing.T) {
	path := writeLog(t, 5)
	before, _ := os.ReadFile(HeadPath(path))
	l := openTest(t, path)
	record(l, 6, 2, "test.event")
	l.Close()
	// Put back the head as it was before entries 6 and 7: as if the process
	// had died after writing them but before its commit.
	if err := os.WriteFile(HeadPath(path), before, 0o600); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, path)
	requireOK(t, rep)
	if rep.HeadLag != 2 || rep.Last.Seq != 7 || !strings.Contains(strings.Join(rep.Notes, "\n"), "lags the log by 2") {
		t.Fatalf("report after the crash = %+v", rep)
	}
	// Opening the log is enough to catch the head up.
	l = openTest(t, path)
	l.Close()
	if h, _ := ReadHead(path); h.Seq != 7 {
		t.Fatalf("head after reopening = %d, want 7", h.Seq)
	}
	l = openTest(t, path)
	record(l, 8, 1, "test.event")
	l.Close()
	rep = mustVerify(t, path)
	requireOK(t, rep)
	if rep.HeadLag != 0 || rep.Head.Seq != 8 {
		t.Fatalf("head not caught up: %+v", rep)
	}
}

// A crash (or a full disk) in the middle of a write leaves half a line.
// Readers ignore it, Verify notes it, and the next writer cuts it off and
// says so in the chain.
func TestIncompleteLastLineIsRepaired(t *testing.T) {
	path := writeLog(t, 3)
	torn := []byte(`{"seq":4,"prev":"abc`)
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(torn)
	f.Close()
	rep := mustVerify(t, path)
	requireOK(t, rep)
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "line 4 has no newline") {
		t.Fatalf("notes = %q", rep.Notes)
	}
	if tail, _ := Tail(path, 10); len(tail) != 3 {
		t.Fatalf("Tail returned the incomplete line: %+v", tail)
	}
	l := openTest(t, path)
	record(l, 4, 1, "test.event")
	l.Close()
	rep = mustVerify(t, path)
	requireOK(t, rep)
	tail, _ := Tail(path, 2)
	sum := sha256.Sum256(torn)
	if len(tail) != 2 || tail[0].Seq != 4 || tail[0].Action != "audit.repair" || tail[0].Reason != "incomplete-final-line" ||
		tail[0].Details["removed_bytes"] != fmt.Sprint(len(torn)) || tail[0].Details["removed_sha256"] != hex.EncodeToString(sum[:]) || tail[1].Seq != 5 {
		t.Fatalf("after the repair: %+v", tail)
	}
}

// Entries removed from the end are not papered over by the next append:
// the writer continues from the head, and Verify keeps pointing at the gap.
func TestWriterContinuesFromHeadAfterTruncation(t *testing.T) {
	path := writeLog(t, 6)
	lines := readLines(t, path)
	writeLines(t, path, lines[:4])
	l := openTest(t, path)
	record(l, 7, 1, "test.event")
	l.Close()
	rep := mustVerify(t, path)
	if rep.OK || len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemMissing || rep.Problems[0].Seq != 7 || rep.Problems[0].Line != 5 ||
		!strings.Contains(rep.Problems[0].Message, "entries 5 to 6 are missing") {
		t.Fatalf("problems = %+v", rep.Problems)
	}
	tail, _ := Tail(path, 2)
	if tail[0].Action != "audit.repair" || tail[0].Reason != "log-behind-head" || tail[0].Details["log_last_seq"] != "4" || tail[0].Details["head_seq"] != "6" {
		t.Fatalf("repair entry = %+v", tail[0])
	}
}

// A log deleted under a running server is recreated at its path, and the
// chain goes on from the head, so the deletion shows.
func TestLogDeletedUnderWriter(t *testing.T) {
	l := openTest(t, "")
	record(l, 1, 3, "test.event")
	if err := l.commit(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(l.Path()); err != nil {
		t.Fatal(err)
	}
	record(l, 4, 1, "test.event")
	l.Close()
	rep := mustVerify(t, l.Path())
	if rep.OK || rep.Problems[0].Kind != ProblemMissing || !strings.Contains(rep.Problems[0].Message, "the chain starts at entry 4") {
		t.Fatalf("after deletion: %+v", rep)
	}
}

func TestCommitNeverMovesTheHeadBack(t *testing.T) {
	path := writeLog(t, 3)
	a := openTest(t, path)
	b := openTest(t, path)
	record(a, 4, 1, "a")
	record(b, 5, 1, "b")
	if err := b.commit(); err != nil {
		t.Fatal(err)
	}
	if err := a.commit(); err != nil { // a knows only entry 4
		t.Fatal(err)
	}
	if h, _ := ReadHead(path); h.Seq != 5 {
		t.Fatalf("head = %d, want 5", h.Seq)
	}
}

func TestReadHeadAndAnchors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	if _, err := ReadHead(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing head: %v", err)
	}
	for _, bad := range []string{"", "{}", `{"seq":-1,"hash":"` + ZeroHash + `"}`, `{"seq":1,"hash":"ABC"}`, `{"seq":1,"hash":"` + ZeroHash + `","x":1}`, `{"seq":1,"hash":"` + ZeroHash + `"}{}`, strings.Repeat(" ", maxHeadSize+1)} {
		os.WriteFile(HeadPath(path), []byte(bad), 0o600)
		if _, err := ReadHead(path); !errors.Is(err, ErrMalformedHead) {
			t.Errorf("head %q: err = %v, want ErrMalformedHead", bad, err)
		}
	}
	h := Head{Seq: 0, Hash: ZeroHash} // written with a new log
	os.WriteFile(HeadPath(path), encodeHead(h), 0o600)
	if got, err := ReadHead(path); err != nil || got != h {
		t.Fatalf("ReadHead = %+v, %v", got, err)
	}
	h = Head{Seq: 42, Hash: strings.Repeat("ab", 32)}
	os.WriteFile(HeadPath(path), encodeHead(h), 0o600)
	if got, err := ReadHead(path); err != nil || got != h {
		t.Fatalf("ReadHead = %+v, %v", got, err)
	}
	if got, err := ParseAnchor(h.String()); err != nil || got != h {
		t.Fatalf("ParseAnchor(%s) = %+v, %v", h, got, err)
	}
	for _, bad := range []string{"", "42", "0:" + h.Hash, "x:" + h.Hash, "42:" + h.Hash[1:], "42:" + strings.ToUpper(h.Hash)} {
		if _, err := ParseAnchor(bad); err == nil {
			t.Errorf("ParseAnchor(%q) succeeded", bad)
		}
	}
}

func TestDiscard(t *testing.T) {
	var buf syncBuffer
	d := Discard{Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	d.Record(context.Background(), Event{Action: "a", Outcome: "done"})
	Discard{}.Record(context.Background(), Event{Action: "b"})
	if !strings.Contains(buf.String(), "action=a") {
		t.Fatalf("Discard logged %q", buf.String())
	}
}
