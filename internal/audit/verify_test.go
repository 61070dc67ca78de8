package audit

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// reseal recomputes the hash of a (possibly edited) line, as an intruder
// who knows the format would.
func reseal(line []byte) []byte {
	body := append(bytes.Clone(line[:len(line)-1-hashSuffixLen]), '}')
	out, _ := sealLine(body)
	return out
}

func mustParse(t testing.TB, line []byte) Entry {
	t.Helper()
	e, _, err := parseEntry(bytes.TrimSuffix(line, []byte("\n")))
	if err != nil {
		t.Fatalf("parse %q: %v", line, err)
	}
	return e
}

// rechain rewrites lines[from:] so that they chain again, the way an
// intruder with write access covers an edit; it returns the new head.
func rechain(t testing.TB, lines [][]byte, from int) Head {
	t.Helper()
	prev := ZeroHash
	if from > 0 {
		prev = mustParse(t, lines[from-1]).Hash
	}
	for i := from; i < len(lines); i++ {
		e := mustParse(t, lines[i])
		lines[i], prev = sealLine(appendBody(nil, e.Seq, prev, &e.Event))
	}
	return Head{Seq: mustParse(t, lines[len(lines)-1]).Seq, Hash: prev}
}

func TestVerifyDetectsTampering(t *testing.T) {
	const n = 10
	tests := []struct {
		name   string
		tamper func(t *testing.T, lines [][]byte, head *Head) [][]byte // returns the new lines; head nil after means: delete it
		kind   string
		line   int
		seq    uint64
		msg    string // part of the first problem's message
		count  int    // problems expected (0: any)
	}{
		{"edited field", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			l[4] = bytes.Replace(l[4], []byte("device:d5"), []byte("device:dX"), 1)
			return l
		}, ProblemEdited, 5, 5, "entry 5 was edited", 1},
		{"edited field, hash recomputed", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			l[4] = reseal(bytes.Replace(l[4], []byte("device:d5"), []byte("device:dX"), 1))
			return l
		}, ProblemBrokenLink, 6, 6, "prev of entry 6 does not match entry 5", 1},
		{"middle entry removed", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			return slices.Delete(l, 4, 5)
		}, ProblemMissing, 5, 6, "entry 5 is missing or entries were reordered (entry 6 follows 4)", 1},
		{"several middle entries removed", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			return slices.Delete(l, 3, 6)
		}, ProblemMissing, 4, 7, "entries 4 to 6 are missing", 1},
		{"last entries removed", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			return l[:8]
		}, ProblemTruncated, 0, 10, "the log ends at entry 8 but the head says 10", 1},
		{"every entry removed", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			return nil
		}, ProblemTruncated, 0, 0, "no entries but the head says it reached entry 10", 1},
		{"first entry removed", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			return l[1:]
		}, ProblemMissing, 1, 2, "the chain starts at entry 2", 1},
		{"two entries swapped", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			l[3], l[4] = l[4], l[3]
			return l
		}, ProblemMissing, 4, 5, "entry 4 is missing or entries were reordered (entry 5 follows 3)", 2},
		{"forged entry inserted", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			forged := reseal(bytes.Replace(l[4], []byte("device:d5"), []byte("device:evil"), 1))
			return slices.Insert(l, 5, forged)
		}, ProblemOutOfOrder, 6, 5, "entry 5 is out of order or repeated (it follows entry 5)", 1},
		{"forged entry inserted with the next seq and a valid link", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			forged := reseal(bytes.Replace(l[5], []byte("device:d6"), []byte("device:evil"), 1)) // prev is entry 5's hash
			return slices.Insert(l, 5, forged)
		}, ProblemOutOfOrder, 7, 6, "entry 6 is out of order or repeated", 2},
		{"entry duplicated", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			return slices.Insert(l, 5, l[4])
		}, ProblemOutOfOrder, 6, 5, "out of order or repeated", 1},
		{"unchained line inserted", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			return slices.Insert(l, 4, []byte(`{"time":"2026-01-01T00:00:00Z","action":"device.revoke","outcome":"done"}`+"\n"))
		}, ProblemUnchained, 5, 0, "line 5 is not a chained entry", 1},
		{"malformed line", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			l[4] = []byte(`{"seq":5,"prev":"garbage"}` + "\n")
			return l
		}, ProblemMalformed, 5, 0, "line 5 is not a valid entry", 1},
		{"line too long", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			l[4] = []byte(`{"seq":5,` + strings.Repeat("a", MaxLineSize) + "\n")
			return l
		}, ProblemMalformed, 5, 0, "longer than", 1},
		{"not canonical, hash recomputed", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			l[4] = reseal(bytes.Replace(l[4], []byte(`"outcome":"done"`), []byte(`"outcome": "done"`), 1))
			return l
		}, ProblemNotCanonical, 5, 5, "entry 5 is not in canonical form", 2},
		{"unknown field, hash recomputed", func(t *testing.T, l [][]byte, _ *Head) [][]byte {
			l[4] = reseal(bytes.Replace(l[4], []byte(`"outcome":"done"`), []byte(`"outcome":"done","admin":"yes"`), 1))
			return l
		}, ProblemMalformed, 5, 0, "line 5 is not a valid entry", 1},
		{"head hash edited", func(t *testing.T, l [][]byte, h *Head) [][]byte {
			h.Hash = mustParse(t, l[8]).Hash
			return l
		}, ProblemHeadMismatch, 0, 10, "the last entry, 10, does not have the hash the head records", 1},
		{"head seq raised", func(t *testing.T, l [][]byte, h *Head) [][]byte {
			h.Seq = 12
			return l
		}, ProblemTruncated, 0, 12, "the log ends at entry 10 but the head says 12", 1},
		{"last entry rewritten after commit", func(t *testing.T, l [][]byte, h *Head) [][]byte {
			l[9] = reseal(bytes.Replace(l[9], []byte("device:d10"), []byte("device:dX"), 1))
			return l
		}, ProblemHeadMismatch, 0, 10, "the last entry, 10, does not have the hash the head records", 1},
		{"entry under a lagging head rewritten", func(t *testing.T, l [][]byte, h *Head) [][]byte {
			*h = Head{Seq: 7, Hash: mustParse(t, l[6]).Hash}
			l[6] = bytes.Replace(l[6], []byte("device:d7"), []byte("device:dX"), 1)
			rechain(t, l, 6)
			return l
		}, ProblemHeadMismatch, 0, 7, "entry 7 does not have the hash the head records", 1},
		{"head file removed", func(t *testing.T, l [][]byte, h *Head) [][]byte {
			h.Seq = 0
			return l
		}, ProblemHeadMissing, 0, 0, "there is no head file", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLog(t, n)
			head, err := ReadHead(path)
			if err != nil {
				t.Fatal(err)
			}
			lines := tc.tamper(t, readLines(t, path), &head)
			writeLines(t, path, lines)
			if head.Seq == 0 {
				os.Remove(HeadPath(path))
			} else {
				os.WriteFile(HeadPath(path), encodeHead(head), 0o600)
			}
			rep := mustVerify(t, path)
			if rep.OK || len(rep.Problems) == 0 {
				t.Fatalf("tampering not detected: %+v", rep)
			}
			p := rep.Problems[0]
			if p.Kind != tc.kind || p.Line != tc.line || p.Seq != tc.seq || !strings.Contains(p.Message, tc.msg) {
				t.Errorf("first problem = %+v\nwant kind %s line %d seq %d message containing %q", p, tc.kind, tc.line, tc.seq, tc.msg)
			}
			if tc.count > 0 && len(rep.Problems) != tc.count {
				t.Errorf("%d problems, want %d: %+v", len(rep.Problems), tc.count, rep.Problems)
			}
			if !strings.HasPrefix(rep.Summary(), "TAMPERED") {
				t.Errorf("summary = %q", rep.Summary())
			}
		})
	}
}

func TestVerifyHeadMalformedAndLogMissing(t *testing.T) {
	path := writeLog(t, 3)
	os.WriteFile(HeadPath(path), []byte("not a head"), 0o600)
	rep := mustVerify(t, path)
	if rep.OK || len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemHeadMalformed {
		t.Fatalf("malformed head: %+v", rep.Problems)
	}

	path = writeLog(t, 3)
	os.Remove(path)
	rep = mustVerify(t, path)
	if rep.OK || rep.Problems[0].Kind != ProblemTruncated || !strings.Contains(rep.Problems[0].Message, "missing but its head exists (at entry 3)") {
		t.Fatalf("deleted log: %+v", rep.Problems)
	}

	// Neither log nor head: nothing was ever written.
	_, err := Verify(filepath.Join(t.TempDir(), "audit.log"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Verify of nothing: %v", err)
	}
}

// An intruder who rewrites the chain from some entry on and the head to
// match is not caught by the chain alone (docs/audit.md, "What it does not
// prove"); an anchor taken before, kept off the box, catches it.
func TestAnchorsCatchARewrittenChain(t *testing.T) {
	path := writeLog(t, 10)
	rep := mustVerify(t, path)
	requireOK(t, rep)
	anchor := *rep.Last // shipped off-box
	early := Head{Seq: 3, Hash: mustParse(t, readLines(t, path)[2]).Hash}

	lines := readLines(t, path)
	lines[4] = bytes.Replace(lines[4], []byte("device:d5"), []byte("device:dX"), 1)
	head := rechain(t, lines, 4)
	writeLines(t, path, lines)
	os.WriteFile(HeadPath(path), encodeHead(head), 0o600)

	requireOK(t, mustVerify(t, path))        // consistent rewrite: the chain alone cannot tell
	requireOK(t, mustVerify(t, path, early)) // entry 3 is untouched
	rep = mustVerify(t, path, early, anchor)
	if rep.OK || len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemAnchor || rep.Problems[0].Seq != 10 {
		t.Fatalf("rewritten chain with an anchor: %+v", rep.Problems)
	}
	rep = mustVerify(t, path, Head{Seq: 11, Hash: ZeroHash})
	if rep.OK || !strings.Contains(rep.Problems[0].Message, "anchored entry 11 is not in the log") {
		t.Fatalf("anchor past the end: %+v", rep.Problems)
	}
}

func TestVerifyBoundsItsReport(t *testing.T) {
	path := writeLog(t, 3)
	var junk []byte
	for range 300 {
		junk = append(junk, "{\"seq\":x}\n"...)
	}
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(junk)
	f.Close()
	rep := mustVerify(t, path)
	if len(rep.Problems) != maxProblems || rep.MoreProblems != 300-maxProblems {
		t.Fatalf("%d problems listed, %d more", len(rep.Problems), rep.MoreProblems)
	}
}

func TestVerifyEmptyAndFreshLogs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	rep := mustVerify(t, path)
	requireOK(t, rep)
	if rep.Entries != 0 || rep.Last != nil || !strings.HasPrefix(rep.Summary(), "OK: ") {
		t.Fatalf("empty log: %+v", rep)
	}
	// A new log gets its head at once, so that deleting it later shows.
	h, err := ReadHead(path)
	if err != nil || h != (Head{Seq: 0, Hash: ZeroHash}) {
		t.Fatalf("head of a new log = %+v, %v", h, err)
	}
	// Entries written but not yet committed: the head still precedes them.
	l = openTest(t, path)
	record(l, 1, 2, "x")
	l.Close()
	os.WriteFile(HeadPath(path), encodeHead(h), 0o600)
	rep = mustVerify(t, path)
	requireOK(t, rep)
	if rep.HeadLag != 2 {
		t.Fatalf("uncommitted first entries: %+v", rep)
	}
}
