// Package audit records security-relevant events (authentication failures,
// revocations, relayed commands, operator actions) in an append-only,
// hash-chained log and mirrors each one to the structured log.
//
// Every line of the log is one JSON object: the Event's fields plus seq
// (1, 2, 3, ...), prev (the previous entry's hash) and hash (SHA-256 over
// the entry's canonical encoding). A head file beside the log records the
// newest committed entry. Verify recomputes the chain and says where it
// breaks; Read and Tail page through it. docs/audit.md is the
// specification, with test vectors in testdata/.
//
// Several processes may append to one log at once (the server and CLI
// commands acting on the data directory): each append takes an exclusive
// flock on the log while it finds the chain's end and writes its line.
package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/warden-iot/warden/internal/fileutil"
)

// Event is one audited fact. Never put a secret in any field.
type Event struct {
	Time     time.Time         `json:"time"`
	Action   string            `json:"action"`             // e.g. "mqtt.connect", "device.revoke"
	Outcome  string            `json:"outcome"`            // "allowed", "denied", "done", "failed"
	Actor    string            `json:"actor,omitempty"`    // who did it: "device:<id>", "service:<name>", "operator"
	Subject  string            `json:"subject,omitempty"`  // what it was done to
	Reason   string            `json:"reason,omitempty"`   // machine-readable cause
	Remote   string            `json:"remote,omitempty"`   // peer address
	Listener string            `json:"listener,omitempty"` // MQTT listener name
	Details  map[string]string `json:"details,omitempty"`  // anything else worth keeping
}

// Recorder is what components depend on; *Log implements it.
type Recorder interface {
	Record(ctx context.Context, e Event)
}

// Defaults of the append path; docs/audit.md explains the choices.
const (
	// defaultLockWait bounds how long Record waits for another process's
	// append: a stuck process costs audit lines, never the audited
	// operation.
	defaultLockWait = 2 * time.Second
	// defaultCommitGap spaces commits (fsync of the log, then the head) so
	// that a flood of events costs at most about 100 fsync rounds a second
	// while a lone event is committed at once.
	defaultCommitGap = 10 * time.Millisecond
	// lockRetryAfter is how long appends fail fast after a lock timeout.
	lockRetryAfter = 5 * time.Second
)

// Log appends events to a hash-chained file. It is safe for concurrent
// use, and other processes may append to the same file at the same time.
//
// Record writes the line before it returns (readers see it at once and it
// survives a crash of the process); a background committer then fsyncs
// the log and moves the head forward, grouping whatever was written
// meanwhile, so Record never waits for the disk to flush.
type Log struct {
	path      string
	logger    *slog.Logger
	now       func() time.Time
	lockWait  time.Duration
	commitGap time.Duration

	mu             sync.Mutex // guards what follows; the flock is only taken with mu held
	f              *os.File
	st             chainState
	closed         bool
	pending        []Event   // repair entries found by refreshLocked, written before the next event
	lockStuckUntil time.Time // see lock
	writeFailing   bool      // a write failure streak is under way (logged once)
	syncFailing    bool      // the same for commits

	kick chan struct{} // an append happened: commit soon
	stop chan struct{}
	done chan struct{}
}

// chainState is where the chain ends in the file as this process last saw
// it: the last entry's seq and hash (seq 0: no entry yet, hash is the prev
// for entry 1) and the file size that state describes. A different size
// means another process appended; the end is then read again.
type chainState struct {
	seq   uint64
	hash  string
	end   int64
	valid bool
}

type options struct {
	lockWait  time.Duration
	commitGap time.Duration
	now       func() time.Time
}

// Open opens (or creates, mode 0600) the audit log at path and finds where
// its chain ends (a log from before the chain is continued, see
// docs/audit.md). Close it to commit the last entries and stop its
// committer.
func Open(path string, logger *slog.Logger) (*Log, error) {
	return open(path, logger, options{})
}

func open(path string, logger *slog.Logger, o options) (*Log, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if o.lockWait <= 0 {
		o.lockWait = defaultLockWait
	}
	if o.commitGap <= 0 {
		o.commitGap = defaultCommitGap
	}
	if o.now == nil {
		o.now = time.Now
	}
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	l := &Log{
		path: path, logger: logger.With("audit", true), now: o.now, lockWait: o.lockWait, commitGap: o.commitGap,
		f: f, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	// Finding the end now keeps the one slow case (hashing a long log from
	// before the chain) out of the first Record, and records a repair
	// (docs/audit.md, "Crashes and repairs") even if this process never
	// records anything. On failure the first Record tries again and
	// reports it.
	l.mu.Lock()
	_ = l.appendLocked(nil)
	hasEntries := l.st.seq > 0
	l.mu.Unlock()
	go l.run()
	if hasEntries {
		l.kick <- struct{}{} // the head may lag (a crash): catch it up
	}
	return l, nil
}

func openFile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("audit: create directory for %s: %w", path, err)
	}
	// Read access is for finding the chain's end; O_APPEND keeps every
	// write at the end whoever else writes.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	return f, nil
}

// Path is the file the log appends to.
func (l *Log) Path() string { return l.path }

// Record appends e, setting its time to now when unset. A write failure is
// logged loudly once per failure streak; it never fails the operation
// being audited, and it blocks only as long as another process holds the
// log's lock (at most a couple of seconds, then the line is given up and
// the failure logged).
func (l *Log) Record(ctx context.Context, e Event) {
	e = normalize(e, l.now)
	l.mirror(ctx, e)

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.f == nil {
		return
	}
	if err := l.appendLocked([]Event{e}); err != nil {
		if !l.writeFailing {
			l.logger.Error("audit: cannot append to the audit file; events are only in this log until it recovers", "path", l.path, "error", err)
		}
		l.writeFailing = true
		return
	}
	if l.writeFailing {
		l.logger.Warn("audit: appending to the audit file works again", "path", l.path)
	}
	l.writeFailing = false
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// mirror writes e to the structured log.
func (l *Log) mirror(ctx context.Context, e Event) {
	level := slog.LevelInfo
	if e.Outcome == "denied" || e.Outcome == "failed" {
		level = slog.LevelWarn
	}
	attrs := []any{"action", e.Action, "outcome", e.Outcome}
	for _, kv := range [][2]string{{"actor", e.Actor}, {"subject", e.Subject}, {"reason", e.Reason}, {"remote", e.Remote}, {"listener", e.Listener}} {
		if kv[1] != "" {
			attrs = append(attrs, kv[0], kv[1])
		}
	}
	for _, k := range sortedKeys(e.Details) {
		attrs = append(attrs, k, e.Details[k])
	}
	l.logger.Log(ctx, level, "audit", attrs...)
}

// appendLocked writes events as the next entries of the chain. l.mu is held.
func (l *Log) appendLocked(events []Event) error {
	fi, err := l.lockCurrent()
	if err != nil {
		return err
	}
	defer unlockFile(l.f)
	if !l.st.valid || fi.Size() != l.st.end {
		if err := l.refreshLocked(fi.Size()); err != nil {
			return err
		}
	}
	if len(l.pending) > 0 {
		events = append(l.pending[:len(l.pending):len(l.pending)], events...)
	}
	if len(events) == 0 {
		return nil
	}

	seq, prev := l.st.seq, l.st.hash
	var buf []byte
	for i := range events {
		seq++
		body := appendBody(nil, seq, prev, &events[i])
		if len(body)-1+hashSuffixLen >= MaxLineSize { // the line, newline not counted, would be too long
			short := shorten(events[i])
			body = appendBody(body[:0], seq, prev, &short)
		}
		line, hash := sealLine(body)
		buf = append(buf, line...)
		prev = hash
	}
	if _, err := l.f.Write(buf); err != nil {
		// A short write (a full disk) would leave half a line that every
		// later entry follows: take it back.
		if terr := l.f.Truncate(l.st.end); terr != nil {
			l.st.valid = false
		}
		return fmt.Errorf("audit: append to %s: %w", l.path, err)
	}
	l.st = chainState{seq: seq, hash: prev, end: l.st.end + int64(len(buf)), valid: true}
	l.pending = nil
	return nil
}

// lock takes the log lock on f; l.mu is held. After a lock timed out it
// tries only once for a while: otherwise every caller queued on l.mu
// behind a stuck process would wait its own full lockWait in turn.
func (l *Log) lock(f *os.File) error {
	wait := l.lockWait
	if time.Now().Before(l.lockStuckUntil) {
		wait = 0
	}
	err := lockFile(f, wait)
	if err != nil {
		l.lockStuckUntil = time.Now().Add(lockRetryAfter)
		return err
	}
	l.lockStuckUntil = time.Time{}
	return nil
}

// lockCurrent takes the log lock and returns the file's state. When the
// log was renamed or deleted under this process (an operator rotating it,
// or an intruder), it opens a new file at the path first, so events do not
// vanish into an unlinked file; that file's chain continues from the head,
// so Verify reports what is missing.
func (l *Log) lockCurrent() (os.FileInfo, error) {
	if err := l.lock(l.f); err != nil {
		return nil, err
	}
	fi, err := l.f.Stat()
	if err != nil {
		_ = unlockFile(l.f)
		return nil, fmt.Errorf("audit: stat %s: %w", l.path, err)
	}
	pfi, perr := os.Stat(l.path)
	if perr == nil && os.SameFile(pfi, fi) {
		return fi, nil
	}
	_ = unlockFile(l.f)
	if perr != nil && !errors.Is(perr, fs.ErrNotExist) {
		return nil, fmt.Errorf("audit: stat %s: %w", l.path, perr)
	}
	nf, err := openFile(l.path)
	if err != nil {
		return nil, err
	}
	l.logger.Warn("audit: the audit file was moved or deleted; appending to a new file at its path", "path", l.path)
	l.f.Close()
	l.f, l.st = nf, chainState{}
	if err := l.lock(l.f); err != nil {
		return nil, err
	}
	if fi, err = l.f.Stat(); err != nil {
		_ = unlockFile(l.f)
		return nil, fmt.Errorf("audit: stat %s: %w", l.path, err)
	}
	return fi, nil
}

// refreshLocked finds where the chain ends in the first size bytes of the
// file (the log lock is held) and sets l.st. It queues repair entries for
// the next append when it finds:
//
//   - an incomplete last line (a crash or a full disk in the middle of a
//     write) is cut off, and the repair entry keeps its length and SHA-256;
//   - when the head is ahead of the log (entries were removed from its end,
//     or the file was replaced), the chain continues from the head, not
//     from the log, so Verify keeps reporting the gap instead of the next
//     append hiding it, and the repair entry says what was found.
func (l *Log) refreshLocked(size int64) error {
	l.st.valid = false // until the end is found
	cut, err := lastLineEnd(l.f, size)
	if err != nil {
		return fmt.Errorf("audit: read %s: %w", l.path, err)
	}
	if cut < size {
		removed, err := hashRange(l.f, cut, size)
		if err != nil {
			return fmt.Errorf("audit: read %s: %w", l.path, err)
		}
		if err := l.f.Truncate(cut); err != nil {
			return fmt.Errorf("audit: cut the incomplete last line of %s: %w", l.path, err)
		}
		l.logger.Warn("audit: removed an incomplete last line (an interrupted write)", "path", l.path, "bytes", size-cut)
		l.pending = append(l.pending, Event{Time: l.now().UTC(), Action: "audit.repair", Outcome: "done", Actor: "warden", Reason: "incomplete-final-line",
			Details: map[string]string{"removed_bytes": strconv.FormatInt(size-cut, 10), "removed_sha256": removed}})
		size = cut
	}

	st := chainState{end: size, valid: true}
	found := false
	bs := newBackScanner(l.f, size)
	for {
		ln, err := bs.prev()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("audit: read %s: %w", l.path, err)
		}
		if ln.tooLong || !bytes.HasPrefix(ln.text, []byte(chainedPrefix)) {
			continue
		}
		// A damaged line is skipped (Verify reports it); an edited but
		// well-formed one is chained from as it is.
		if e, _, err := parseEntry(ln.text); err == nil || errors.Is(err, errNotCanonical) {
			st.seq, st.hash, found = e.Seq, e.Hash, true
			break
		}
	}
	if !found {
		if st.hash, err = hashPrefix(l.f, size); err != nil {
			return fmt.Errorf("audit: read %s: %w", l.path, err)
		}
	}

	h, err := ReadHead(l.path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && st.seq == 0:
		// A new log (or one from before the chain): write a head at once,
		// before any entry, so that a head missing later was removed.
		if err := fileutil.WriteFileAtomic(HeadPath(l.path), encodeHead(Head{Hash: st.hash}), 0o600); err != nil {
			l.logger.Warn("audit: cannot write the chain head", "path", HeadPath(l.path), "error", err)
		}
	case errors.Is(err, fs.ErrNotExist):
		// Chained entries but no head: it was removed. The next commit
		// writes it again; Verify reports it until then.
		l.logger.Warn("audit: the chain head is missing; the next commit writes it (run `warden audit verify`)", "path", HeadPath(l.path))
	case h.Seq == 0:
		// The log had no entries when the head was written; lines from
		// before the chain may have been added since. Nothing was removed.
	case err != nil:
		l.logger.Warn("audit: the chain head is unreadable; the next commit replaces it (run `warden audit verify`)", "error", err)
	case h.Seq > st.seq || (h.Seq == st.seq && h.Hash != st.hash):
		l.logger.Error("audit: the audit log ends before its head: entries were removed or replaced; continuing the chain from the head (run `warden audit verify`)",
			"path", l.path, "log_last_seq", st.seq, "head_seq", h.Seq)
		l.pending = append(l.pending, Event{Time: l.now().UTC(), Action: "audit.repair", Outcome: "done", Actor: "warden", Reason: "log-behind-head",
			Details: map[string]string{"log_last_seq": strconv.FormatUint(st.seq, 10), "log_last_hash": st.hash, "head_seq": strconv.FormatUint(h.Seq, 10)}})
		st.seq, st.hash = h.Seq, h.Hash
	}
	l.st = st
	return nil
}

// hashRange is the hex SHA-256 of r[from:to].
func hashRange(r io.ReaderAt, from, to int64) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, from, to-from)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// lastLineEnd is the offset just past the last newline in f[0:size] (0 if
// there is none).
func lastLineEnd(f io.ReaderAt, size int64) (int64, error) {
	buf := make([]byte, 4096)
	for end := size; end > 0; {
		n := min(int64(len(buf)), end)
		if _, err := f.ReadAt(buf[:n], end-n); err != nil {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return end - n + int64(i) + 1, nil
		}
		end -= n
	}
	return 0, nil
}

// run is the committer: after appends it fsyncs the log and moves the head.
func (l *Log) run() {
	defer close(l.done)
	var last time.Time
	for {
		select {
		case <-l.stop:
			return
		case <-l.kick:
		}
		if wait := l.commitGap - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-l.stop:
				t.Stop()
				return
			case <-t.C:
			}
		}
		last = time.Now()
		_ = l.commit()
	}
}

// commit makes every entry written so far durable and then records the
// newest in the head. The head is never ahead of what is on disk: the log
// is synced first, and only then is the head renamed into place.
func (l *Log) commit() error {
	l.mu.Lock()
	f, st := l.f, l.st
	l.mu.Unlock()
	if f == nil || !st.valid || st.seq == 0 {
		return nil
	}
	err := l.syncAndPublish(f, st)
	if errors.Is(err, os.ErrClosed) { // the file was replaced meanwhile; the next commit covers the new one
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if !l.syncFailing {
			l.logger.Error("audit: cannot commit the audit file (fsync or head update); recent events may not survive a power loss", "path", l.path, "error", err)
		}
		l.syncFailing = true
		return err
	}
	if l.syncFailing {
		l.logger.Warn("audit: committing the audit file works again", "path", l.path)
	}
	l.syncFailing = false
	return nil
}

func (l *Log) syncAndPublish(f *os.File, st chainState) error {
	h := Head{Seq: st.seq, Hash: st.hash}
	if cur, err := ReadHead(l.path); err == nil && cur.Seq >= h.Seq {
		return nil // committed already (by another process, or nothing new)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("audit: sync %s: %w", l.path, err)
	}
	staged, err := stageHead(l.path, h)
	if err != nil {
		return err
	}
	l.mu.Lock()
	if l.f != f { // reopened: st describes a file no longer at the path
		l.mu.Unlock()
		os.Remove(staged)
		return nil
	}
	if err := l.lock(f); err != nil {
		l.mu.Unlock()
		os.Remove(staged)
		return err
	}
	published, err := publishHead(l.path, staged, h)
	_ = unlockFile(f)
	l.mu.Unlock()
	if err != nil || !published {
		return err
	}
	return syncHeadDir(l.path)
}

// Close commits what was written and closes the file. Record does nothing
// after Close.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	err := l.commit()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		if cerr := l.f.Close(); err == nil {
			err = cerr
		}
		l.f = nil
	}
	return err
}

// Discard is a Recorder that only logs; for tools that have no data directory.
type Discard struct{ Logger *slog.Logger }

// Record logs e at debug level.
func (d Discard) Record(ctx context.Context, e Event) {
	if d.Logger != nil {
		d.Logger.DebugContext(ctx, "audit", "action", e.Action, "outcome", e.Outcome, "reason", e.Reason)
	}
}
