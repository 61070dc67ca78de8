package envelope

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"sync"

	"github.com/warden-iot/warden/internal/fileutil"
)

// RekeyThreshold is the sequence number at which Counter.RekeySoon turns
// true: half of the epoch's numbers. At 100 messages a second it takes 174
// years to reach, so reaching it means a fault (such as a reboot loop that
// burns counterStep numbers per boot) that a new epoch fixes, long before
// ErrRekeyRequired stops the device.
const RekeyThreshold = 1 << 39

// counterStep is how far ahead a Counter persists (RFC 8613 Appendix B.1.1):
// one write per 1024 messages, at most 1024 numbers lost per crash.
const counterStep = 1024

// CounterStore keeps a Counter's bound in non-volatile storage. Save must
// not return until the value is durable: a Counter hands out numbers below
// the saved bound only.
type CounterStore interface {
	// Load returns the saved bound, or 0 if nothing was ever saved.
	Load() (uint64, error)
	// Save durably replaces the bound.
	Save(bound uint64) error
}

// Counter hands out the sequence numbers of one (device, direction, epoch),
// never the same twice, even across reboots (docs/envelope.md, "Sequence
// numbers"). It persists a bound B ahead of use: no number ≥ B has been
// handed out, and B is saved before any number ≥ the old B is. Use one
// Counter per store; a Counter is safe for concurrent use.
type Counter struct {
	mu    sync.Mutex
	store CounterStore
	next  uint64
	bound uint64
}

// NewCounter starts a counter at the bound its store holds.
func NewCounter(store CounterStore) (*Counter, error) {
	if store == nil {
		return nil, fmt.Errorf("envelope: NewCounter needs a CounterStore")
	}
	b, err := store.Load()
	if err != nil {
		return nil, fmt.Errorf("envelope: load sequence counter: %w", err)
	}
	if b > MaxSeq+1 {
		return nil, fmt.Errorf("envelope: stored sequence bound %d exceeds 2^40; the counter store is corrupt", b)
	}
	return &Counter{store: store, next: b, bound: b}, nil
}

// Next returns the next sequence number. When the number reaches the saved
// bound it first saves a new bound; if that fails, it returns the error and
// no number, and the caller must not send. Past MaxSeq it returns
// ErrRekeyRequired.
func (c *Counter) Next() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next > MaxSeq {
		return 0, ErrRekeyRequired
	}
	if c.next >= c.bound {
		nb := min(c.next+counterStep, MaxSeq+1)
		if err := c.store.Save(nb); err != nil {
			return 0, fmt.Errorf("envelope: persist sequence counter: %w; do not send until it can be saved", err)
		}
		c.bound = nb
	}
	seq := c.next
	c.next++
	return seq, nil
}

// RekeySoon reports whether the next number has reached RekeyThreshold: time
// to move the device to a new key epoch.
func (c *Counter) RekeySoon() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.next >= RekeyThreshold
}

// FileCounterStore is a CounterStore in one small file, written atomically
// (temporary file, fsync, rename, directory fsync) with mode 0600. Replacing
// the file with an older copy, or losing it, would let numbers repeat: never
// restore it from a backup, and rekey the device if it is lost.
type FileCounterStore struct {
	path string
}

// NewFileCounterStore returns a store in the file at path. The file is
// created by the first Save.
func NewFileCounterStore(path string) *FileCounterStore {
	return &FileCounterStore{path: path}
}

const counterFileMagic = "warden-envelope-counter-v1 "

// Load reads the bound; a missing file is a fresh counter (0).
func (s *FileCounterStore) Load() (uint64, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read counter file: %w", err)
	}
	v, err := parseCounterFile(data)
	if err != nil {
		return 0, fmt.Errorf("counter file %s: %w; rekey the device rather than guess", s.path, err)
	}
	return v, nil
}

// Save replaces the bound atomically and durably.
func (s *FileCounterStore) Save(bound uint64) error {
	return fileutil.WriteFileAtomic(s.path, formatCounterFile(bound), 0o600)
}

func formatCounterFile(v uint64) []byte {
	return append(strconv.AppendUint([]byte(counterFileMagic), v, 10), '\n')
}

// parseCounterFile accepts exactly what formatCounterFile writes; the final
// newline may be missing, for files written by hand.
func parseCounterFile(data []byte) (uint64, error) {
	rest, ok := bytes.CutPrefix(data, []byte(counterFileMagic))
	if !ok {
		return 0, fmt.Errorf("not a %q file", counterFileMagic[:len(counterFileMagic)-1])
	}
	rest = bytes.TrimSuffix(rest, []byte("\n"))
	if len(rest) == 0 || len(rest) > 14 || (rest[0] == '0' && len(rest) > 1) {
		return 0, fmt.Errorf("bad number %q", rest)
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad number %q", rest)
		}
	}
	v, err := strconv.ParseUint(string(rest), 10, 64)
	if err != nil || v > MaxSeq+1 {
		return 0, fmt.Errorf("bound %q is outside 0..2^40", rest)
	}
	return v, nil
}
