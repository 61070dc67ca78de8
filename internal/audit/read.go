package audit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// Read limits.
const (
	DefaultLimit = 100    // Filter.Limit 0
	MaxLimit     = 10_000 // the most one Read returns
)

// Filter selects entries for Read. Zero fields select everything.
type Filter struct {
	// AfterSeq keeps entries with a greater seq: pass Page.Next to get the
	// next page. Legacy lines are never returned when it is set.
	AfterSeq uint64
	Since    time.Time // entries at or after this time
	Action   string    // entries whose action starts with this ("mqtt." for every MQTT event)
	Actor    string    // entries with exactly this actor
	Subject  string    // entries with exactly this subject
	Outcome  string    // entries with exactly this outcome
	// Limit is the most entries to return: 0 means DefaultLimit, and more
	// than MaxLimit means MaxLimit.
	Limit int
	// Newest returns the newest Limit matches, read from the end of the
	// file (what tail shows), instead of the oldest after AfterSeq.
	Newest bool
	// Legacy also returns the lines from before the chain, as entries with
	// Seq 0; they cannot be paged with AfterSeq.
	Legacy bool
}

func (f *Filter) match(e *Entry) bool {
	return (e.Seq > f.AfterSeq || (e.Seq == 0 && f.Legacy && f.AfterSeq == 0)) &&
		strings.HasPrefix(e.Action, f.Action) &&
		(f.Actor == "" || e.Actor == f.Actor) &&
		(f.Subject == "" || e.Subject == f.Subject) &&
		(f.Outcome == "" || e.Outcome == f.Outcome) &&
		(f.Since.IsZero() || !e.Time.Before(f.Since))
}

// Page is one answer of Read, oldest entry first.
type Page struct {
	Entries []Entry `json:"entries"`
	// Next is the highest seq Read looked at (0 if none): Filter.AfterSeq
	// for the next page, or for new entries when following the log. It
	// moves past entries the filter skipped, so paging never rescans them.
	Next uint64 `json:"next"`
	// More is set when Read stopped at the limit with lines left to read.
	More bool `json:"more"`
}

// Read returns the entries of the log at path that f selects. It reads
// what readers may trust to be complete lines and never holds more than a
// page plus one line in memory: lines that are not entries (damaged, too
// long) are skipped here; Verify is what reports them. Entries are shown
// as they are in the file, whether or not their hashes hold.
//
// Forward reads (the default) find AfterSeq by bisecting the file, so a
// page costs about the same at the start and at the end of a large log;
// Newest reads from the end. A missing log reads as empty.
func Read(path string, f Filter) (Page, error) {
	if f.Limit <= 0 {
		f.Limit = DefaultLimit
	}
	f.Limit = min(f.Limit, MaxLimit)
	file, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return Page{Entries: []Entry{}}, nil
	}
	if err != nil {
		return Page{}, fmt.Errorf("audit: open the audit log: %w", err)
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return Page{}, fmt.Errorf("audit: stat %s: %w", path, err)
	}
	// Only complete lines: a line still being written is left for later.
	end, err := lastLineEnd(file, fi.Size())
	if err != nil {
		return Page{}, fmt.Errorf("audit: read %s: %w", path, err)
	}
	var p Page
	if f.Newest {
		p, err = readNewest(file, end, &f)
	} else {
		p, err = readForward(file, end, &f)
	}
	if err != nil {
		return Page{}, fmt.Errorf("audit: read %s: %w", path, err)
	}
	if p.Entries == nil {
		p.Entries = []Entry{}
	}
	return p, nil
}

// Tail returns the last n entries of the log at path (legacy lines
// included when the chain is shorter), oldest first.
func Tail(path string, n int) ([]Entry, error) {
	p, err := Read(path, Filter{Limit: n, Newest: true, Legacy: true})
	return p.Entries, err
}

// decode turns a line into an entry; ok is false for lines that are not.
func decode(ln line) (Entry, bool) {
	if ln.tooLong || !ln.complete {
		return Entry{}, false
	}
	if ln.chained {
		e, _, err := parseEntry(ln.text)
		return e, err == nil || errors.Is(err, errNotCanonical)
	}
	e, err := parseLegacy(ln.text)
	return e, err == nil
}

func readForward(file *os.File, end int64, f *Filter) (Page, error) {
	var p Page
	start := int64(0)
	if f.AfterSeq > 0 {
		var err error
		if start, err = seekAfter(file, end, f.AfterSeq); err != nil {
			return Page{}, err
		}
	}
	lr := newLineReader(io.NewSectionReader(file, start, end-start), start, 0)
	for {
		ln, err := lr.next()
		if errors.Is(err, io.EOF) {
			return p, nil
		}
		if err != nil {
			return Page{}, err
		}
		e, ok := decode(ln)
		if !ok {
			continue
		}
		p.Next = max(p.Next, e.Seq)
		if !f.match(&e) {
			continue
		}
		p.Entries = append(p.Entries, e)
		if len(p.Entries) == f.Limit {
			p.More = lr.off < end
			return p, nil
		}
	}
}

func readNewest(file *os.File, end int64, f *Filter) (Page, error) {
	var p Page
	bs := newBackScanner(file, end)
	for {
		ln, err := bs.prev()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Page{}, err
		}
		e, ok := decode(ln)
		if !ok {
			continue
		}
		p.Next = max(p.Next, e.Seq)
		if e.Seq != 0 && e.Seq <= f.AfterSeq {
			break // everything before is older still
		}
		if !f.match(&e) {
			continue
		}
		p.Entries = append(p.Entries, e)
		if len(p.Entries) == f.Limit {
			p.More = ln.start > 0
			break
		}
	}
	slices.Reverse(p.Entries)
	return p, nil
}

// seekAfter bisects file[0:end] for a line start before which no chained
// line has a seq greater than after, as close to the first such line as it
// cheaply can. It relies on seq growing along the file, which holds for
// any log Verify accepts; on a damaged log the result is still a line
// start, and the forward scan filters by seq anyway.
func seekAfter(file *os.File, end int64, after uint64) (int64, error) {
	lo, hi := int64(0), end
	for hi-lo > 2*MaxLineSize {
		mid := lo + (hi-lo)/2
		seq, start, found, err := chainedAfter(file, mid, end)
		if err != nil {
			return 0, err
		}
		if found && seq <= after && start > lo {
			lo = start
		} else {
			hi = mid
		}
	}
	return lo, nil
}

// chainedAfter finds the first chained line that starts at or after from
// (looking at most a few lines' worth ahead) and returns its seq and start.
func chainedAfter(file *os.File, from, end int64) (uint64, int64, bool, error) {
	// Start one byte early so that a line starting exactly at from is seen
	// after the (partial) line that the first read consumes.
	begin := from - 1
	lr := newLineReader(io.NewSectionReader(file, begin, end-begin), begin, 0)
	if _, err := lr.next(); err != nil {
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return 0, 0, false, err
	}
	for lr.off < from+4*MaxLineSize {
		ln, err := lr.next()
		if errors.Is(err, io.EOF) {
			return 0, 0, false, nil
		}
		if err != nil {
			return 0, 0, false, err
		}
		if seq, ok := quickSeq(ln.text); ok && ln.complete {
			return seq, ln.start, true, nil
		}
	}
	return 0, 0, false, nil
}
