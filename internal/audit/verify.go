package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// Problem kinds, machine-readable (Problem.Kind). docs/audit.md lists what
// each means and what causes it.
const (
	ProblemMalformed     = "malformed"      // a line in the chain that is not an entry
	ProblemUnchained     = "unchained"      // a line without seq after the chain began
	ProblemEdited        = "edited"         // the entry's hash does not match its content
	ProblemNotCanonical  = "not-canonical"  // the hash matches, but the line is not spelled as Warden writes it
	ProblemMissing       = "missing"        // a gap in seq
	ProblemOutOfOrder    = "out-of-order"   // a seq repeated or going backwards
	ProblemBrokenLink    = "broken-link"    // prev does not match the previous entry's hash
	ProblemTruncated     = "truncated"      // the log ends before the head
	ProblemHeadMismatch  = "head-mismatch"  // the head's entry has another hash
	ProblemHeadMissing   = "head-missing"   // entries but no head file
	ProblemHeadMalformed = "head-malformed" // the head file is not a head
	ProblemAnchor        = "anchor-mismatch"
)

// maxProblems and maxNotes bound a Report for a thoroughly damaged log.
const (
	maxProblems = 100
	maxNotes    = 20
)

// Problem is one place where the log is not what Warden wrote.
type Problem struct {
	Kind    string `json:"kind"`
	Line    int    `json:"line,omitempty"` // 1-based line of the log; 0 when about the head or the log as a whole
	Seq     uint64 `json:"seq,omitempty"`  // the entry concerned, when known
	Message string `json:"message"`
}

// String is the problem as verify prints it: "line N: message".
func (p Problem) String() string {
	if p.Line > 0 {
		return fmt.Sprintf("line %d: %s", p.Line, p.Message)
	}
	return p.Message
}

// Report is what Verify found. OK is true when nothing is wrong; Notes
// are observations that are not tampering (legacy lines, a head that lags
// because of a crash or an append in progress).
type Report struct {
	Path         string    `json:"path"`
	OK           bool      `json:"ok"`
	Lines        int       `json:"lines"`        // complete lines read
	Entries      int       `json:"entries"`      // chained entries among them
	Legacy       int       `json:"legacy_lines"` // unchained lines from before the chain, before entry 1
	FirstSeq     uint64    `json:"first_seq,omitempty"`
	Last         *Head     `json:"last,omitempty"` // the last entry of the chain (what to ship off-box as an anchor)
	Head         *Head     `json:"head,omitempty"` // the head file as read
	HeadLag      uint64    `json:"head_lag,omitempty"`
	Problems     []Problem `json:"problems"`
	MoreProblems int       `json:"more_problems,omitempty"` // problems beyond the first 100, not listed
	Notes        []string  `json:"notes,omitempty"`
}

func (r *Report) problem(kind string, line int, seq uint64, format string, args ...any) {
	if len(r.Problems) >= maxProblems {
		r.MoreProblems++
		return
	}
	r.Problems = append(r.Problems, Problem{Kind: kind, Line: line, Seq: seq, Message: fmt.Sprintf(format, args...)})
}

func (r *Report) note(format string, args ...any) {
	switch {
	case len(r.Notes) < maxNotes:
		r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
	case len(r.Notes) == maxNotes:
		r.Notes = append(r.Notes, "(further notes left out)")
	}
}

// Verify checks the log at path and its head: every entry's hash against
// its content, every prev against the entry before, seq without gaps or
// repeats, the first entry against the legacy lines before it, and the
// last entry against the head (which catches entries removed from the
// end). Anchors are heads recorded earlier (off-box, see `warden audit
// head`): each must still be in the chain with the same hash, which
// catches a chain rewritten from that point on.
//
// It reads the log once, holding one line at a time, and takes no lock:
// it may run beside writers (entries written after it read the head show
// as head lag). Problems go into the Report; the error is for a log that
// cannot be read at all.
func Verify(path string, anchors ...Head) (Report, error) {
	rep := Report{Path: path, Problems: []Problem{}}
	// The head first: the log only grows after it, so a head read before
	// the log can never be ahead of it without tampering.
	var head *Head
	switch h, err := ReadHead(path); {
	case err == nil:
		head = &h
	case errors.Is(err, fs.ErrNotExist):
	case errors.Is(err, ErrMalformedHead):
		rep.problem(ProblemHeadMalformed, 0, 0, "the head file %s is not a head (%v): it was edited; entries removed from the end of the log cannot be detected", HeadPath(path), errors.Unwrap(err))
	default:
		return rep, err
	}
	rep.Head = head

	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) && head != nil {
		rep.problem(ProblemTruncated, 0, head.Seq, "the log %s is missing but its head exists (at entry %d): the log was deleted", path, head.Seq)
		return rep, nil
	}
	if err != nil {
		return rep, fmt.Errorf("audit: open the audit log: %w", err)
	}
	defer f.Close()

	v := verifier{rep: &rep, f: f, head: head, anchors: make(map[uint64]string, len(anchors))}
	for _, a := range anchors {
		v.anchors[a.Seq] = ""
	}
	lr := newLineReader(f, 0, 1)
	for {
		ln, err := lr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rep, fmt.Errorf("audit: read %s: %w", path, err)
		}
		if !ln.complete {
			rep.note("line %d has no newline: a write in progress, or one interrupted by a crash (the next append removes it); it was not checked", ln.num)
			break
		}
		rep.Lines++
		if err := v.line(ln); err != nil {
			return rep, fmt.Errorf("audit: read %s: %w", path, err)
		}
	}
	v.end(anchors)
	rep.OK = len(rep.Problems) == 0
	return rep, nil
}

// verifier carries the chain along the lines.
type verifier struct {
	rep     *Report
	f       *os.File
	head    *Head
	anchors map[uint64]string // seq -> hash found in the log

	inChain  bool
	resync   bool   // the line before was damaged: take the next entry as it is
	expect   uint64 // the next seq
	prev     string // the hash the next entry's prev must be
	last     Head   // the last entry accepted in order
	headHash string // the hash of the entry with the head's seq, if seen
}

func (v *verifier) line(ln line) error {
	rep := v.rep
	if !v.inChain && !ln.chained {
		rep.Legacy++
		if ln.tooLong || !isJSONObject(ln.text) {
			rep.note("line %d, from before the chain, is not a JSON object", ln.num)
		}
		return nil
	}
	if !v.inChain {
		// The chain begins: its first entry's prev commits to every byte
		// before it.
		genesis, err := hashPrefix(v.f, ln.start)
		if err != nil {
			return err
		}
		v.inChain, v.expect, v.prev = true, 1, genesis
		if rep.Legacy > 0 {
			rep.note("%d unchained legacy lines (from before the chain) precede the first entry; its prev covers them", rep.Legacy)
		}
	}
	if !ln.chained {
		rep.problem(ProblemUnchained, ln.num, 0, "line %d is not a chained entry (no seq): it was inserted, or written by a Warden version from before the chain after this one started", ln.num)
		return nil
	}
	if ln.tooLong {
		rep.problem(ProblemMalformed, ln.num, 0, "line %d is longer than %d bytes: not an entry Warden wrote", ln.num, MaxLineSize-1)
		v.resync = true
		return nil
	}
	e, body, err := parseEntry(ln.text)
	if err != nil && !errors.Is(err, errNotCanonical) {
		rep.problem(ProblemMalformed, ln.num, 0, "line %d is not a valid entry (%v): it was edited or damaged", ln.num, err)
		v.resync = true
		return nil
	}
	rep.Entries++
	if rep.FirstSeq == 0 {
		rep.FirstSeq = e.Seq
	}
	switch {
	case hashBody(body) != e.Hash:
		rep.problem(ProblemEdited, ln.num, e.Seq, "entry %d was edited: its hash does not match its content", e.Seq)
	case err != nil:
		rep.problem(ProblemNotCanonical, ln.num, e.Seq, "entry %d is not in canonical form (its hash matches its bytes, but Warden never spells an entry this way): it was rewritten", e.Seq)
	}

	switch {
	case v.resync && e.Seq > v.last.Seq:
		// The damaged line before it was reported; start again here.
	case e.Seq == v.expect && e.Prev != v.prev:
		switch {
		case e.Seq > 1:
			rep.problem(ProblemBrokenLink, ln.num, e.Seq, "prev of entry %d does not match entry %d: entry %d was rewritten, or entries were inserted or removed between them", e.Seq, e.Seq-1, e.Seq-1)
		case rep.Legacy > 0:
			rep.problem(ProblemBrokenLink, ln.num, e.Seq, "prev of entry 1 does not match the %d legacy lines before it: lines before entry 1 were edited, added or removed", rep.Legacy)
		default:
			rep.problem(ProblemBrokenLink, ln.num, e.Seq, "prev of entry 1 is not 64 zeros although no line precedes it: the lines before entry 1 were removed")
		}
	case e.Seq > v.expect:
		switch {
		case v.expect == 1:
			rep.problem(ProblemMissing, ln.num, e.Seq, "the chain starts at entry %d: entries 1 to %d are missing (removed, or the log was replaced)", e.Seq, e.Seq-1)
		case e.Seq == v.expect+1:
			rep.problem(ProblemMissing, ln.num, e.Seq, "entry %d is missing or entries were reordered (entry %d follows %d)", v.expect, e.Seq, v.expect-1)
		default:
			rep.problem(ProblemMissing, ln.num, e.Seq, "entries %d to %d are missing or entries were reordered (entry %d follows %d)", v.expect, e.Seq-1, e.Seq, v.expect-1)
		}
	case e.Seq < v.expect:
		rep.problem(ProblemOutOfOrder, ln.num, e.Seq, "entry %d is out of order or repeated (it follows entry %d)", e.Seq, v.expect-1)
		return nil // the chain goes on from the entry before it
	}
	v.resync = false
	v.expect, v.prev, v.last = e.Seq+1, e.Hash, Head{Seq: e.Seq, Hash: e.Hash}
	if v.head != nil && e.Seq == v.head.Seq {
		v.headHash = e.Hash
	}
	if _, ok := v.anchors[e.Seq]; ok {
		v.anchors[e.Seq] = e.Hash
	}
	return nil
}

// end compares the end of the chain with the head and the anchors.
func (v *verifier) end(anchors []Head) {
	rep, head := v.rep, v.head
	if v.inChain && v.last.Seq > 0 {
		last := v.last
		rep.Last = &last
	}
	switch {
	case rep.Last == nil && head != nil && head.Seq > 0:
		rep.problem(ProblemTruncated, 0, 0, "the log has no entries but the head says it reached entry %d: entries were removed, or the log was replaced", head.Seq)
	case rep.Last == nil:
		if rep.Legacy > 0 {
			rep.note("no chained entries yet: %d legacy lines only (the chain starts with the next event)", rep.Legacy)
		}
	case rep.Last != nil && head != nil && head.Seq == 0:
		rep.HeadLag = rep.Last.Seq
		rep.note("the head precedes the first entry: %d entries were written but not yet committed (an append in progress, or a crash before its commit)", rep.HeadLag)
	case head == nil:
		if !hasKind(rep.Problems, ProblemHeadMalformed) {
			rep.problem(ProblemHeadMissing, 0, 0, "there is no head file %s: Warden writes it when it creates the log and after each commit, so it was deleted; entries removed from the end cannot be detected", HeadPath(rep.Path))
		}
	case head.Seq > rep.Last.Seq:
		rep.problem(ProblemTruncated, 0, head.Seq, "the log ends at entry %d but the head says %d: entries were removed from the end (or the head file was edited)", rep.Last.Seq, head.Seq)
	case head.Seq == rep.Last.Seq && head.Hash != rep.Last.Hash:
		rep.problem(ProblemHeadMismatch, 0, head.Seq, "the last entry, %d, does not have the hash the head records: it was rewritten after it was committed (or the head file was edited)", head.Seq)
	case head.Seq < rep.Last.Seq && v.headHash == "":
		rep.problem(ProblemHeadMismatch, 0, head.Seq, "the head's entry %d is not in the log", head.Seq)
	case head.Seq < rep.Last.Seq && v.headHash != head.Hash:
		rep.problem(ProblemHeadMismatch, 0, head.Seq, "entry %d does not have the hash the head records: it was rewritten after it was committed (or the head file was edited)", head.Seq)
	case head.Seq < rep.Last.Seq:
		rep.HeadLag = rep.Last.Seq - head.Seq
		rep.note("the head lags the log by %d entries: they were written but not yet committed (an append in progress, or a crash before its commit); the next commit catches up", rep.HeadLag)
	}
	for _, a := range anchors {
		switch got := v.anchors[a.Seq]; {
		case got == a.Hash:
		case got == "":
			rep.problem(ProblemAnchor, 0, a.Seq, "anchored entry %d is not in the log: entries were removed", a.Seq)
		default:
			rep.problem(ProblemAnchor, 0, a.Seq, "entry %d does not have the anchored hash %s…: the chain was rewritten since the anchor was taken", a.Seq, a.Hash[:12])
		}
	}
}

func hasKind(ps []Problem, kind string) bool {
	for _, p := range ps {
		if p.Kind == kind {
			return true
		}
	}
	return false
}

func isJSONObject(b []byte) bool {
	return len(b) > 0 && b[0] == '{' && json.Valid(b)
}

// Summary is the report in one line for people.
func (r *Report) Summary() string {
	var b strings.Builder
	if r.OK {
		b.WriteString("OK: ")
	} else {
		fmt.Fprintf(&b, "TAMPERED: %d problem(s) in ", len(r.Problems)+r.MoreProblems)
	}
	fmt.Fprintf(&b, "%s: %d entries", r.Path, r.Entries)
	if r.Last != nil {
		fmt.Fprintf(&b, " (%d to %d)", r.FirstSeq, r.Last.Seq)
	}
	if r.Legacy > 0 {
		fmt.Fprintf(&b, ", %d legacy lines", r.Legacy)
	}
	if r.Head != nil {
		fmt.Fprintf(&b, ", head at %d", r.Head.Seq)
	}
	return b.String()
}
