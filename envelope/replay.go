package envelope

import (
	"encoding/binary"
	"fmt"
)

// ReplayWindowSize is how many sequence numbers a ReplayWindow remembers:
// the highest accepted and the 63 below it.
const ReplayWindowSize = 64

// ReplayWindow remembers which sequence numbers of one (device, direction,
// epoch) were accepted (docs/envelope.md, "Replay window"). The zero value is
// a fresh window that has accepted nothing. Check and Commit are O(1).
//
// A ReplayWindow is not safe for concurrent use; the caller serializes
// Check, Open and Commit per device (Commit re-checks, so two concurrent
// copies of one message cannot both be accepted as long as the Commits are
// serialized). Persist it with MarshalBinary after each Commit, or at least
// often enough that a restart cannot accept an old message again.
type ReplayWindow struct {
	highest uint64 // H, valid when seen
	bitmap  uint64 // bit i: H - i was accepted
	seen    bool   // anything accepted yet
}

// Check reports, without changing the window, whether seq may be accepted.
// Call it before Open, so that replays cost no cryptography. A refusal is an
// *OpenError with ReasonReplay.
func (w *ReplayWindow) Check(seq uint64) error {
	if seq > MaxSeq {
		return openError(ReasonMalformed, "sequence number %d exceeds 2^40-1", seq)
	}
	if !w.seen || seq > w.highest {
		return nil
	}
	diff := w.highest - seq
	if diff >= ReplayWindowSize {
		return openError(ReasonReplay, "sequence number %d is more than %d below the highest accepted, %d", seq, ReplayWindowSize-1, w.highest)
	}
	if w.bitmap&(1<<diff) != 0 {
		return openError(ReasonReplay, "sequence number %d was already accepted", seq)
	}
	return nil
}

// Commit records seq as accepted. Call it only after Open succeeded. It
// checks again and refuses (ReasonReplay) if seq was accepted in the meantime;
// the message must then be dropped.
func (w *ReplayWindow) Commit(seq uint64) error {
	if err := w.Check(seq); err != nil {
		return err
	}
	switch {
	case !w.seen:
		w.highest, w.bitmap, w.seen = seq, 1, true
	case seq > w.highest:
		if shift := seq - w.highest; shift >= ReplayWindowSize {
			w.bitmap = 1
		} else {
			w.bitmap = w.bitmap<<shift | 1
		}
		w.highest = seq
	default:
		w.bitmap |= 1 << (w.highest - seq)
	}
	return nil
}

// replayWindowVersion starts the 18-byte encoding:
// version (1) || flags (1, bit 0 = something accepted) || u64(H) || u64(bitmap).
const (
	replayWindowVersion = 1
	replayWindowLen     = 18
)

// MarshalBinary encodes the window in 18 bytes for storage.
func (w ReplayWindow) MarshalBinary() ([]byte, error) {
	b := make([]byte, 2, replayWindowLen)
	b[0] = replayWindowVersion
	if w.seen {
		b[1] = 1
	}
	b = binary.BigEndian.AppendUint64(b, w.highest)
	return binary.BigEndian.AppendUint64(b, w.bitmap), nil
}

// UnmarshalBinary restores a window stored by MarshalBinary. It refuses
// anything MarshalBinary could not have produced, and leaves the window
// unchanged when it does.
func (w *ReplayWindow) UnmarshalBinary(data []byte) error {
	if len(data) != replayWindowLen {
		return fmt.Errorf("envelope: replay window is %d bytes, want %d; the stored state is corrupt", len(data), replayWindowLen)
	}
	if data[0] != replayWindowVersion {
		return fmt.Errorf("envelope: replay window has version %d, want %d", data[0], replayWindowVersion)
	}
	flags := data[1]
	h := binary.BigEndian.Uint64(data[2:])
	bm := binary.BigEndian.Uint64(data[10:])
	switch {
	case flags > 1:
		return fmt.Errorf("envelope: replay window has unknown flags %#02x; the stored state is corrupt", flags)
	case flags == 0 && (h != 0 || bm != 0):
		return fmt.Errorf("envelope: empty replay window has a non-zero state; the stored state is corrupt")
	case flags == 1 && (h > MaxSeq || bm&1 == 0 || (h < ReplayWindowSize-1 && bm>>(h+1) != 0)):
		return fmt.Errorf("envelope: replay window state (highest %d, bitmap %#x) is impossible; the stored state is corrupt", h, bm)
	}
	*w = ReplayWindow{highest: h, bitmap: bm, seen: flags == 1}
	return nil
}
