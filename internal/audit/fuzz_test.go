package audit

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"
)

// The log is a file an intruder may have edited: parsing any line must not
// panic, and whatever parses must be exactly what the writer would write.
func FuzzParseEntry(f *testing.F) {
	if b, err := os.ReadFile("testdata/vectors/audit.log"); err == nil {
		for _, l := range bytes.Split(b, []byte("\n")) {
			f.Add(l)
		}
	}
	f.Add([]byte(`{"seq":1,"prev":"` + ZeroHash + `","time":"2026-01-02T03:04:05.000000000Z","action":"a","outcome":""}`))
	f.Add([]byte(`{"time":"2026-01-02T03:04:05Z","action":"legacy","outcome":"done"}`))
	f.Add([]byte(`{"seq":18446744073709551615,"prev":"` + ZeroHash + `","hash":"` + ZeroHash + `"}`))
	f.Add([]byte(`{"seq":1,"hash":"` + ZeroHash + `"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, body, err := parseEntry(line)
		if err != nil && err != errNotCanonical {
			return
		}
		if len(line) >= MaxLineSize {
			t.Fatal("parsed a line longer than the limit")
		}
		sealed := append(append(bytes.Clone(body[:len(body)-1]), `,"hash":"`+e.Hash+`"}`...), '\n')
		if !bytes.Equal(sealed[:len(sealed)-1], line) {
			t.Fatalf("body and hash do not make up the line:\n%s\n%s", sealed, line)
		}
		if s, ok := quickSeq(line); err == nil && (!ok || s != e.Seq) {
			t.Fatalf("quickSeq = %d %v, entry seq %d", s, ok, e.Seq)
		}
		if err == nil && !bytes.Equal(appendBody(nil, e.Seq, e.Prev, &e.Event), body) {
			t.Fatal("canonical entry does not re-encode to its body")
		}
		if !utf8.Valid(body) && err == nil {
			t.Fatal("canonical body is not UTF-8")
		}
		// What people see of it cannot carry control characters.
		for _, c := range []byte(FormatEntry(e)) {
			if c < 0x20 || c == 0x7f {
				t.Fatalf("FormatEntry passes control byte %#x: %q", c, FormatEntry(e))
			}
		}
	})
}

// Verify and the readers take any file, never fail on content, and keep
// their reports consistent.
func FuzzVerify(f *testing.F) {
	for _, dir := range []string{"testdata/vectors", "testdata/vectors-legacy"} {
		log, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
		head, _ := os.ReadFile(filepath.Join(dir, "audit.log.head"))
		f.Add(log, head)
		lines := bytes.SplitAfter(log, []byte("\n"))
		if len(lines) > 3 {
			f.Add(bytes.Join(lines[:2], nil), head)                                  // truncated
			f.Add(bytes.Join([][]byte{lines[1], lines[0], lines[2]}, nil), head)     // reordered
			f.Add(bytes.Replace(log, []byte("alpha"), []byte("alphb"), 1), []byte{}) // edited, no head
		}
	}
	f.Add([]byte("garbage\n{\"seq\":1,\n\n"), []byte(`{"seq":0,"hash":"`+ZeroHash+`"}`))
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, log, head []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "audit.log")
		if err := os.WriteFile(path, log, 0o600); err != nil {
			t.Fatal(err)
		}
		if len(head) > 0 {
			if err := os.WriteFile(HeadPath(path), head, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		rep, err := Verify(path)
		if err != nil {
			t.Fatalf("Verify failed on content: %v", err)
		}
		if rep.OK != (len(rep.Problems) == 0 && rep.MoreProblems == 0) || len(rep.Problems) > maxProblems || len(rep.Notes) > maxNotes+1 {
			t.Fatalf("inconsistent report: %+v", rep)
		}
		for _, p := range rep.Problems {
			if p.Line > rep.Lines || p.Message == "" || p.Kind == "" {
				t.Fatalf("problem %+v in a report of %d lines", p, rep.Lines)
			}
		}
		if rep.Entries+rep.Legacy > rep.Lines {
			t.Fatalf("%d entries and %d legacy lines in %d lines", rep.Entries, rep.Legacy, rep.Lines)
		}
		n := bytes.Count(log, []byte("\n"))
		for _, flt := range []Filter{{Legacy: true, Limit: MaxLimit}, {Newest: true, Legacy: true, Limit: MaxLimit}, {AfterSeq: 1}} {
			p, err := Read(path, flt)
			if err != nil {
				t.Fatalf("Read(%+v): %v", flt, err)
			}
			if len(p.Entries) > n {
				t.Fatalf("Read(%+v) returned %d entries from %d lines", flt, len(p.Entries), n)
			}
		}
	})
}
