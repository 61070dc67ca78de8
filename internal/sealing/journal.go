package sealing

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// The replay journal makes every accepted uplink sequence number durable
// before its message is acknowledged, without a database transaction per
// message: records are appended to a memory-mapped file. A store into a
// shared file mapping is in the page cache at once, so it survives a
// killed process, the same durability SQLite gives in WAL mode with
// synchronous=NORMAL (both lose the last moments to a power failure), at
// the cost of a memory copy instead of a system call. The journal is folded
// into the store's replay windows at start, periodically, when it fills up
// and at a clean stop.
//
// Record, fixed layout:
//
//	u8 len(id) ‖ id ‖ u32 epoch ‖ u64 seq ‖ u32 CRC-32C of the preceding bytes
//
// The unused rest of the file is zeros, which never parse as a record (an
// empty ID is invalid). A torn last record (the process died mid-copy)
// fails its CRC and is ignored: its message was neither acknowledged nor
// relayed, so the device sends it again.
type journal struct {
	mu   sync.Mutex
	path string
	f    *os.File
	mem  []byte // the mapping
	off  int    // where the next record goes
	buf  []byte
}

// journalSize is the mapped file's size; foldAt of it triggers a fold.
const (
	journalSize = 4 << 20
	foldAt      = journalSize * 3 / 4
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errJournalFull makes the caller write straight to the store.
var errJournalFull = errors.New("replay journal full")

type journalRecord struct {
	id    string
	epoch uint32
	seq   uint64
}

func appendRecord(b []byte, r journalRecord) []byte {
	start := len(b)
	b = append(b, byte(len(r.id)))
	b = append(b, r.id...)
	b = binary.BigEndian.AppendUint32(b, r.epoch)
	b = binary.BigEndian.AppendUint64(b, r.seq)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], crcTable))
}

// parseJournal returns the intact records at the start of b and how many
// bytes they take; it stops at the first that does not check out (zeros,
// a torn or damaged record).
func parseJournal(b []byte) ([]journalRecord, int) {
	var out []journalRecord
	off := 0
	for off < len(b) {
		n := int(b[off])
		size := 1 + n + 4 + 8 + 4
		if n == 0 || off+size > len(b) {
			break
		}
		rec := b[off : off+size]
		body, sum := rec[:size-4], binary.BigEndian.Uint32(rec[size-4:])
		if crc32.Checksum(body, crcTable) != sum {
			break
		}
		id := string(body[1 : 1+n])
		if identity.ValidateDeviceID(id) != nil {
			break
		}
		out = append(out, journalRecord{
			id:    id,
			epoch: binary.BigEndian.Uint32(body[1+n:]),
			seq:   binary.BigEndian.Uint64(body[1+n+4:]),
		})
		off += size
	}
	return out, off
}

// readJournal parses a whole journal read from r.
func readJournal(r io.Reader) ([]journalRecord, error) {
	b, err := io.ReadAll(io.LimitReader(r, journalSize))
	if err != nil {
		return nil, err
	}
	recs, _ := parseJournal(b)
	return recs, nil
}

func openJournal(path string) (*journal, []journalRecord, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open replay journal %s: %w", path, err)
	}
	fail := func(what string, err error) (*journal, []journalRecord, error) {
		f.Close()
		return nil, nil, fmt.Errorf("%s replay journal %s: %w", what, path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return fail("stat", err)
	}
	if fi.Size() != journalSize {
		// New, or left at another size: keep what it holds, pad with zeros.
		if err := f.Truncate(journalSize); err != nil {
			return fail("size", err)
		}
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, journalSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return fail("map", err)
	}
	recs, off := parseJournal(mem)
	// Anything after the intact records is a torn tail: clear it so later
	// records are never followed by stale bytes that happen to parse.
	clear(mem[off:])
	return &journal{path: path, f: f, mem: mem, off: off}, recs, nil
}

// append makes one accepted sequence number durable.
func (j *journal) append(r journalRecord) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.mem == nil {
		return errors.New("replay journal is closed")
	}
	j.buf = appendRecord(j.buf[:0], r)
	if j.off+len(j.buf) > len(j.mem) {
		return errJournalFull
	}
	copy(j.mem[j.off:], j.buf)
	j.off += len(j.buf)
	return nil
}

func (j *journal) full() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.off >= foldAt
}

// truncate empties the journal after its records were folded into the
// store. The caller holds every window's lock, so nothing is appended
// between the fold and the truncation.
func (j *journal) truncate() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	clear(j.mem[:j.off])
	j.off = 0
	return nil
}

func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.mem == nil {
		return nil
	}
	err := syscall.Munmap(j.mem)
	j.mem = nil
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// windowKey names one uplink replay window.
type windowKey struct {
	id    string
	epoch uint32
}

// window is one uplink replay window, authoritative in memory; dirty ones
// are not yet in the store (the journal holds them).
type window struct {
	mu     sync.Mutex
	loaded bool
	w      envelope.ReplayWindow
	dirty  bool
}

// windowFor returns the in-memory window, locked; the caller unlocks.
func (s *Sealing) windowFor(ctx context.Context, id string, epoch uint32) (*window, error) {
	s.wmu.Lock()
	w := s.windows[windowKey{id, epoch}]
	if w == nil {
		w = &window{}
		s.windows[windowKey{id, epoch}] = w
	}
	s.wmu.Unlock()
	w.mu.Lock()
	if !w.loaded {
		stored, err := s.dir.ReplayWindow(ctx, id, envelope.Uplink, epoch)
		if err != nil {
			w.mu.Unlock()
			return nil, fmt.Errorf("uplink replay window of device %s epoch %d: %w", id, epoch, err)
		}
		w.w, w.loaded = stored, true
	}
	return w, nil
}

// commit makes seq durable in the window: through the journal when there
// is one, else straight into the store.
func (s *Sealing) commit(ctx context.Context, id string, epoch uint32, w *window, seq uint64) error {
	next := w.w
	if err := next.Commit(seq); err != nil {
		return err
	}
	if s.journal != nil {
		err := s.journal.append(journalRecord{id: id, epoch: epoch, seq: seq})
		if errors.Is(err, errJournalFull) {
			// Rare (a fold is overdue): write this one through.
			select {
			case s.foldNow <- struct{}{}:
			default:
			}
			if err := s.dir.SaveReplayWindow(ctx, id, envelope.Uplink, epoch, next); err != nil {
				return fmt.Errorf("save uplink replay window of device %s: %w", id, err)
			}
			w.w = next
			return nil
		}
		if err != nil {
			return err
		}
		w.w, w.dirty = next, true
		if s.journal.full() {
			select {
			case s.foldNow <- struct{}{}:
			default:
			}
		}
		return nil
	}
	if err := s.dir.SaveReplayWindow(ctx, id, envelope.Uplink, epoch, next); err != nil {
		return fmt.Errorf("save uplink replay window of device %s: %w", id, err)
	}
	w.w = next
	return nil
}

// replayJournal applies a journal's records at start.
func (s *Sealing) replayJournal(ctx context.Context, recs []journalRecord) error {
	for _, r := range recs {
		w, err := s.windowFor(ctx, r.id, r.epoch)
		if err != nil {
			return err
		}
		next := w.w
		if next.Commit(r.seq) == nil {
			w.w, w.dirty = next, true
		}
		w.mu.Unlock()
	}
	return nil
}

// Fold writes every dirty window to the store and empties the journal.
// Windows of retired epochs (the store refuses them) are dropped.
func (s *Sealing) Fold(ctx context.Context) error {
	if s.journal == nil {
		return nil
	}
	s.foldMu.Lock()
	defer s.foldMu.Unlock()
	s.wmu.Lock()
	ws := make(map[windowKey]*window, len(s.windows))
	for k, w := range s.windows {
		ws[k] = w
	}
	s.wmu.Unlock()
	// Hold every window so no commit lands between the fold and the
	// truncation (commits wait for at most one fold).
	for _, w := range ws {
		w.mu.Lock()
	}
	defer func() {
		for _, w := range ws {
			w.mu.Unlock()
		}
	}()
	for k, w := range ws {
		if !w.dirty {
			continue
		}
		if err := s.dir.SaveReplayWindow(ctx, k.id, envelope.Uplink, k.epoch, w.w); err != nil {
			if isGone(err) {
				s.wmu.Lock()
				delete(s.windows, k)
				s.wmu.Unlock()
				continue
			}
			return fmt.Errorf("fold the replay journal: %w", err)
		}
		w.dirty = false
	}
	return s.journal.truncate()
}

func isGone(err error) bool {
	return errors.Is(err, store.ErrRevoked) || errors.Is(err, store.ErrNotFound)
}

// OpenJournal starts journaling accepted uplink sequence numbers in path,
// first folding what a previous run left there into the store. Call it
// before the first uplink; without it every accepted number costs a store
// write.
func (s *Sealing) OpenJournal(ctx context.Context, path string) error {
	j, recs, err := openJournal(path)
	if err != nil {
		return err
	}
	s.journal = j
	if err := s.replayJournal(ctx, recs); err != nil {
		return err
	}
	if len(recs) > 0 {
		s.log.Info("replayed the uplink replay journal left by the previous run", "records", len(recs))
	}
	return s.Fold(ctx)
}

// Run folds the journal into the store every interval, and sooner when it
// grows large, until ctx ends; then it folds once more.
func (s *Sealing) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := s.Fold(fctx); err != nil {
				s.log.Error("final fold of the replay journal failed; it is replayed at the next start", "error", err)
			}
			cancel()
			return
		case <-t.C:
		case <-s.foldNow:
		}
		if err := s.Fold(ctx); err != nil {
			s.log.Error("folding the replay journal into the store failed; retrying", "error", err)
		}
	}
}

// CloseJournal closes the journal file (after Run has returned).
func (s *Sealing) CloseJournal() error {
	if s.journal == nil {
		return nil
	}
	return s.journal.close()
}
