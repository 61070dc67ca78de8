package envelope_test

import (
	"encoding/hex"
	"math/rand/v2"
	"testing"

	"github.com/warden-iot/warden/envelope"
)

// TestReplayWindowMatchesModel drives the window with random sequence
// numbers and compares every decision with a plain set and the spec's rule:
// accept s if it is new and not 64 or more below the highest accepted.
func TestReplayWindowMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		var w envelope.ReplayWindow
		seen := map[uint64]bool{}
		var highest uint64
		var any bool
		base := uint64(rng.IntN(1000))
		if round%10 == 0 {
			base = envelope.MaxSeq - 400
		}
		for range 2000 {
			seq := min(base+uint64(rng.IntN(200)), envelope.MaxSeq)
			if rng.IntN(10) == 0 {
				base += uint64(rng.IntN(100))
			}
			want := !seen[seq] && (!any || seq > highest || highest-seq < envelope.ReplayWindowSize)
			err := w.Check(seq)
			if (err == nil) != want {
				t.Fatalf("round %d: Check(%d) = %v, model says accept=%v (highest %d)", round, seq, err, want, highest)
			}
			if err != nil && envelope.ReasonOf(err) != envelope.ReasonReplay {
				t.Fatalf("reason %q", envelope.ReasonOf(err))
			}
			if !want {
				continue
			}
			// Half the accepted messages fail to authenticate and are never
			// committed: they must stay acceptable.
			if rng.IntN(2) == 0 {
				continue
			}
			if err := w.Commit(seq); err != nil {
				t.Fatalf("Commit(%d): %v", seq, err)
			}
			seen[seq] = true
			if !any || seq > highest {
				highest, any = seq, true
			}
			if err := w.Commit(seq); envelope.ReasonOf(err) != envelope.ReasonReplay {
				t.Fatalf("second Commit(%d) = %v", seq, err)
			}
			// Survive a restart.
			b, err := w.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			var restored envelope.ReplayWindow
			if err := restored.UnmarshalBinary(b); err != nil {
				t.Fatalf("UnmarshalBinary(%x): %v", b, err)
			}
			if restored != w {
				t.Fatalf("restored %+v, want %+v", restored, w)
			}
		}
	}
}

func TestReplayWindowRefusesBeyondMaxSeq(t *testing.T) {
	var w envelope.ReplayWindow
	if err := w.Check(envelope.MaxSeq + 1); envelope.ReasonOf(err) != envelope.ReasonMalformed {
		t.Errorf("Check(2^40) = %v", err)
	}
	if err := w.Commit(envelope.MaxSeq + 1); err == nil {
		t.Error("Commit(2^40) succeeded")
	}
}

func TestReplayWindowMarshal(t *testing.T) {
	var w envelope.ReplayWindow
	for _, s := range []uint64{10, 3, 12} {
		if err := w.Commit(s); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := w.MarshalBinary()
	// H = 12, bits 0 (12), 2 (10), 9 (3).
	if got, want := hex.EncodeToString(b), "0101"+"000000000000000c"+"0000000000000205"; got != want {
		t.Fatalf("MarshalBinary = %s, want %s", got, want)
	}
	var empty envelope.ReplayWindow
	if b, _ := empty.MarshalBinary(); hex.EncodeToString(b) != "0100"+"0000000000000000"+"0000000000000000" {
		t.Fatalf("empty window = %x", b)
	}

	for name, h := range map[string]string{
		"empty":              "",
		"short":              "0101000000000000000c00000000000002",
		"long":               "0101000000000000000c000000000000020500",
		"version 2":          "0201000000000000000c0000000000000205",
		"unknown flag":       "0103000000000000000c0000000000000205",
		"empty with state":   "0100000000000000000c0000000000000205",
		"highest not marked": "0101000000000000000c0000000000000204",
		"beyond 2^40-1":      "01010000010000000000" + "0000000000000001",
		"bits below zero":    "01010000000000000002" + "0000000000000009",
	} {
		w2 := w
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		if err := w2.UnmarshalBinary(b); err == nil {
			t.Errorf("%s: UnmarshalBinary(%s) succeeded", name, h)
		}
		if w2 != w {
			t.Errorf("%s: a failed UnmarshalBinary changed the window", name)
		}
	}
}
