package envelope_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/warden-iot/warden/envelope"
)

// memStore is a CounterStore in memory that records every Save and can be
// told to fail.
type memStore struct {
	mu    sync.Mutex
	bound uint64
	saves []uint64
	fail  error
}

func (m *memStore) Load() (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bound, nil
}

func (m *memStore) Save(b uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.bound = b
	m.saves = append(m.saves, b)
	return nil
}

func TestCounterPersistsAhead(t *testing.T) {
	store := &memStore{}
	c, err := envelope.NewCounter(store)
	if err != nil {
		t.Fatal(err)
	}
	for want := range uint64(2500) {
		got, err := c.Next()
		if err != nil || got != want {
			t.Fatalf("Next = %d, %v; want %d", got, err, want)
		}
		if store.bound <= got {
			t.Fatalf("number %d handed out with the saved bound at %d", got, store.bound)
		}
	}
	if len(store.saves) != 3 || store.saves[0] != 1024 || store.saves[2] != 3072 {
		t.Errorf("saves = %v; want one per 1024 numbers, ahead of use", store.saves)
	}
}

// TestCounterNeverReusesAfterCrash restarts the counter after every few
// numbers, as a device that loses power would, and checks that no number
// repeats.
func TestCounterNeverReusesAfterCrash(t *testing.T) {
	store := &memStore{}
	used := map[uint64]bool{}
	for boot := range 20 {
		c, err := envelope.NewCounter(store)
		if err != nil {
			t.Fatal(err)
		}
		for range boot * 37 {
			n, err := c.Next()
			if err != nil {
				t.Fatal(err)
			}
			if used[n] {
				t.Fatalf("boot %d: number %d used twice", boot, n)
			}
			used[n] = true
		}
	}
}

func TestCounterSaveFailureHandsOutNothing(t *testing.T) {
	store := &memStore{fail: errors.New("flash worn out")}
	c, err := envelope.NewCounter(store)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := c.Next(); err == nil || !strings.Contains(err.Error(), "flash worn out") {
		t.Fatalf("Next = %d, %v; want the store's error", n, err)
	}
	store.fail = nil
	if n, err := c.Next(); err != nil || n != 0 {
		t.Fatalf("after the store recovered: Next = %d, %v; want 0", n, err)
	}
}

func TestCounterEndOfEpoch(t *testing.T) {
	store := &memStore{bound: envelope.MaxSeq - 1}
	c, err := envelope.NewCounter(store)
	if err != nil {
		t.Fatal(err)
	}
	if !c.RekeySoon() {
		t.Error("RekeySoon is false two numbers before the end")
	}
	for _, want := range []uint64{envelope.MaxSeq - 1, envelope.MaxSeq} {
		if n, err := c.Next(); err != nil || n != want {
			t.Fatalf("Next = %d, %v; want %d", n, err, want)
		}
	}
	if store.bound != envelope.MaxSeq+1 {
		t.Errorf("saved bound %d, want 2^40 (never beyond)", store.bound)
	}
	if _, err := c.Next(); !errors.Is(err, envelope.ErrRekeyRequired) {
		t.Fatalf("Next past MaxSeq = %v", err)
	}
	// After a reboot, still exhausted.
	c2, err := envelope.NewCounter(store)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Next(); !errors.Is(err, envelope.ErrRekeyRequired) {
		t.Fatalf("Next after reboot = %v", err)
	}
	if _, err := envelope.NewCounter(&memStore{bound: envelope.MaxSeq + 2}); err == nil {
		t.Error("NewCounter accepted a bound beyond 2^40")
	}
	if _, err := envelope.NewCounter(nil); err == nil {
		t.Error("NewCounter(nil) succeeded")
	}
}

func TestCounterRekeySoonThreshold(t *testing.T) {
	c, err := envelope.NewCounter(&memStore{bound: envelope.RekeyThreshold - 1})
	if err != nil {
		t.Fatal(err)
	}
	if c.RekeySoon() {
		t.Error("RekeySoon before the threshold")
	}
	if _, err := c.Next(); err != nil {
		t.Fatal(err)
	}
	if !c.RekeySoon() {
		t.Error("RekeySoon is false at the threshold")
	}
}

func TestCounterConcurrentUse(t *testing.T) {
	c, err := envelope.NewCounter(&memStore{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	used := map[uint64]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				n, err := c.Next()
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if used[n] {
					t.Errorf("number %d handed out twice", n)
				}
				used[n] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(used) != 4000 {
		t.Errorf("%d distinct numbers, want 4000", len(used))
	}
}

func TestFileCounterStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "uplink.counter")
	store := envelope.NewFileCounterStore(path)
	if b, err := store.Load(); err != nil || b != 0 {
		t.Fatalf("Load of a missing file = %d, %v; want 0", b, err)
	}
	c, err := envelope.NewCounter(store)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := c.Next(); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != "warden-envelope-counter-v1 1024\n" {
		t.Errorf("file holds %q", data)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	// A reboot continues past everything that might have been used.
	c2, err := envelope.NewCounter(envelope.NewFileCounterStore(path))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := c2.Next(); err != nil || n != 1024 {
		t.Fatalf("after reboot: Next = %d, %v; want 1024", n, err)
	}

	if err := envelope.NewFileCounterStore(filepath.Join(t.TempDir(), "no", "such", "dir", "c")).Save(1); err == nil {
		t.Error("Save into a missing directory succeeded")
	}
	if err := os.Chmod(path, 0o000); err == nil && os.Getuid() != 0 {
		if _, err := store.Load(); err == nil {
			t.Error("Load of an unreadable file succeeded")
		}
	}
}

func TestFileCounterStoreRefusesCorruption(t *testing.T) {
	for name, content := range map[string]string{
		"empty":           "",
		"no magic":        "1024\n",
		"other magic":     "warden-envelope-counter-v2 1024\n",
		"no number":       "warden-envelope-counter-v1 \n",
		"negative":        "warden-envelope-counter-v1 -5\n",
		"leading zero":    "warden-envelope-counter-v1 01024\n",
		"trailing junk":   "warden-envelope-counter-v1 1024x\n",
		"two newlines":    "warden-envelope-counter-v1 1024\n\n",
		"beyond 2^40":     "warden-envelope-counter-v1 1099511627777\n",
		"uint64 overflow": "warden-envelope-counter-v1 99999999999999999999\n",
		"spaces":          "warden-envelope-counter-v1  1024\n",
	} {
		path := filepath.Join(t.TempDir(), "c")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if b, err := envelope.NewFileCounterStore(path).Load(); err == nil {
			t.Errorf("%s: Load = %d", name, b)
		} else if !strings.Contains(err.Error(), "rekey") {
			t.Errorf("%s: %v does not say what to do", name, err)
		}
	}
	for content, want := range map[string]uint64{
		"warden-envelope-counter-v1 0":               0,
		"warden-envelope-counter-v1 1099511627776\n": envelope.MaxSeq + 1,
	} {
		path := filepath.Join(t.TempDir(), "c")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if b, err := envelope.NewFileCounterStore(path).Load(); err != nil || b != want {
			t.Errorf("%q: Load = %d, %v; want %d", content, b, err, want)
		}
	}
}
