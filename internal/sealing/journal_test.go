package sealing

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/warden-iot/warden/envelope"
)

func TestJournalSurvivesAKilledServer(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	secret := f.addEnvelopeDevice(t, "dev1", "ccm-8")
	up := keys(t, secret, "dev1", 0, envelope.CCM8, envelope.Uplink)
	topic := "private/dev1/up/t"
	path := filepath.Join(t.TempDir(), "replay.journal")

	first := New(f.reg, nil, nil, nil)
	if err := first.OpenJournal(ctx, path); err != nil {
		t.Fatal(err)
	}
	var accepted [][]byte
	for i := 0; i < 5; i++ {
		m, _ := envelope.Seal(up, uint64(i), topic, []byte("x"))
		if _, err := first.OpenUplink(ctx, "dev1", topic, m); err != nil {
			t.Fatal(err)
		}
		accepted = append(accepted, m)
	}
	// Killed: no fold, the store never saw these numbers.
	if b, _ := f.st.LoadReplayWindow(ctx, "dev1", "uplink", 0); b != nil {
		var w envelope.ReplayWindow
		w.UnmarshalBinary(b)
		if w.Check(0) != nil {
			t.Fatal("the store already holds the window; the journal was not what kept it")
		}
	}
	// A torn half-record at the tail, as a crash mid-copy leaves.
	fh, _ := os.OpenFile(path, os.O_WRONLY, 0)
	fh.WriteAt([]byte{4, 'd', 'e'}, int64(first.journal.off))
	fh.Close()

	second := New(f.reg, nil, nil, nil)
	if err := second.OpenJournal(ctx, path); err != nil {
		t.Fatalf("reopen after the kill: %v", err)
	}
	for i, m := range accepted {
		if _, err := second.OpenUplink(ctx, "dev1", topic, m); !errors.Is(err, envelope.ErrOpen) {
			t.Fatalf("message %d replayed after the restart", i)
		}
	}
	if second.journal.off != 0 {
		t.Fatalf("journal not folded at start (%d bytes in use)", second.journal.off)
	}
	if recs, _ := parseJournal(second.journal.mem); len(recs) != 0 {
		t.Fatalf("folded journal still holds %d records", len(recs))
	}
	// A store-only reader (another node, or a later start) sees the fold.
	third := New(f.reg, nil, nil, nil)
	if _, err := third.OpenUplink(ctx, "dev1", topic, accepted[4]); !errors.Is(err, envelope.ErrOpen) {
		t.Fatal("the folded window is not in the store")
	}
	m, _ := envelope.Seal(up, 5, topic, []byte("fresh"))
	if _, err := second.OpenUplink(ctx, "dev1", topic, m); err != nil {
		t.Fatalf("a fresh message after the restart: %v", err)
	}
	// Cache invalidation (a policy change) does not forget accepted numbers.
	second.Invalidate("dev1")
	if _, err := second.OpenUplink(ctx, "dev1", topic, m); !errors.Is(err, envelope.ErrOpen) {
		t.Fatal("invalidating the cache forgot an accepted number")
	}
}

func TestParseJournalStopsAtDamage(t *testing.T) {
	var b []byte
	b = appendRecord(b, journalRecord{id: "a1", epoch: 2, seq: 7})
	b = appendRecord(b, journalRecord{id: "b2", epoch: 0, seq: 1 << 39})
	good := len(b)
	b = appendRecord(b, journalRecord{id: "c3", epoch: 1, seq: 9})
	b[len(b)-1] ^= 1 // damaged CRC
	recs, n := parseJournal(b)
	if len(recs) != 2 || recs[1].seq != 1<<39 || recs[0].id != "a1" || n != good {
		t.Fatalf("records = %+v, %d bytes", recs, n)
	}
	if recs, _ := parseJournal(b[:good-3]); len(recs) != 1 {
		t.Fatalf("torn record: %d records", len(recs))
	}
	if recs, _ := parseJournal(make([]byte, 64)); len(recs) != 0 {
		t.Fatal("zeros parsed as records")
	}
}

func TestJournalFullWritesThrough(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	secret := f.addEnvelopeDevice(t, "dev1", "ccm-8")
	up := keys(t, secret, "dev1", 0, envelope.CCM8, envelope.Uplink)
	s := New(f.reg, nil, nil, nil)
	if err := s.OpenJournal(ctx, filepath.Join(t.TempDir(), "j")); err != nil {
		t.Fatal(err)
	}
	s.journal.off = len(s.journal.mem) - 3 // no room for another record
	m, _ := envelope.Seal(up, 9, "private/dev1/up/t", nil)
	if _, err := s.OpenUplink(ctx, "dev1", "private/dev1/up/t", m); err != nil {
		t.Fatalf("open with a full journal: %v", err)
	}
	restarted := New(f.reg, nil, nil, nil)
	if _, err := restarted.OpenUplink(ctx, "dev1", "private/dev1/up/t", m); !errors.Is(err, envelope.ErrOpen) {
		t.Fatal("a number accepted with a full journal was not written through")
	}
}

func FuzzReadJournal(f *testing.F) {
	f.Add(appendRecord(nil, journalRecord{id: "dev1", epoch: 1, seq: 2}))
	f.Add([]byte{0xff, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, _ := parseJournal(b)
		var again []byte
		for _, r := range recs {
			again = appendRecord(again, r)
		}
		if !bytes.HasPrefix(b, again) {
			t.Fatal("records read do not re-encode to a prefix of the input")
		}
	})
}
