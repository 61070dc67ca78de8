package sim

import (
	"encoding/binary"
	"fmt"
	"time"
)

// HeaderSize is the size of the header that starts every telemetry
// payload: the device's sequence number (8 bytes, big-endian) and the time
// it was sent (8 bytes, big-endian Unix nanoseconds). A payload is the
// header padded with zeros to the configured size, so the smallest payload
// is the header alone.
const HeaderSize = 16

// MaxPayloadSize bounds a telemetry payload: what an envelope device can
// seal (envelope.MaxPlaintext), and far below any broker's packet limit.
const MaxPayloadSize = 65535

// Stamp is what the consumer reads back from a telemetry payload.
type Stamp struct {
	Seq  uint64    // the device's sequence number, from 0 in each run
	Sent time.Time // when the device handed the message to the SDK
}

// AppendPayload appends a payload of size bytes (at least HeaderSize)
// carrying seq and sent to b.
func AppendPayload(b []byte, size int, seq uint64, sent time.Time) []byte {
	size = max(size, HeaderSize)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint64(b, uint64(sent.UnixNano()))
	return append(b, make([]byte, size-HeaderSize)...)
}

// ParsePayload reads the header of a telemetry payload. The padding is not
// checked: a payload is the simulator's own, but it crossed a broker, and
// anything else published on the channel must not be mistaken for it, so
// only a payload too short to hold a header, or with a send time of zero,
// is refused.
func ParsePayload(p []byte) (Stamp, error) {
	if len(p) < HeaderSize {
		return Stamp{}, fmt.Errorf("sim: payload of %d bytes is shorter than the %d-byte header (sequence number, send time)", len(p), HeaderSize)
	}
	seq := binary.BigEndian.Uint64(p[0:8])
	ns := int64(binary.BigEndian.Uint64(p[8:16]))
	if ns <= 0 {
		return Stamp{}, fmt.Errorf("sim: payload send time %d is not a positive Unix time in nanoseconds", ns)
	}
	return Stamp{Seq: seq, Sent: time.Unix(0, ns)}, nil
}
