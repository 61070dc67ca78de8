package sim

import (
	"bytes"
	"encoding/hex"
	"math"
	"strings"
	"testing"
	"time"
)

func TestPayloadRoundTrip(t *testing.T) {
	sent := time.Date(2026, 11, 21, 12, 0, 0, 123456789, time.UTC)
	for _, tc := range []struct {
		size, want int
		seq        uint64
	}{
		{0, HeaderSize, 0},
		{1, HeaderSize, 1},
		{HeaderSize, HeaderSize, 7},
		{64, 64, 1 << 40},
		{MaxPayloadSize, MaxPayloadSize, math.MaxUint64},
	} {
		p := AppendPayload(nil, tc.size, tc.seq, sent)
		if len(p) != tc.want {
			t.Errorf("size %d: payload of %d bytes, want %d", tc.size, len(p), tc.want)
		}
		st, err := ParsePayload(p)
		if err != nil {
			t.Fatalf("size %d: %v", tc.size, err)
		}
		if st.Seq != tc.seq || !st.Sent.Equal(sent) {
			t.Errorf("size %d: read back %+v, want seq %d sent %v", tc.size, st, tc.seq, sent)
		}
		if !bytes.Equal(p[HeaderSize:], make([]byte, len(p)-HeaderSize)) {
			t.Errorf("size %d: the padding is not zeros", tc.size)
		}
	}
	// Appending keeps what b held: a caller may reuse a buffer.
	p := AppendPayload([]byte("prefix"), 20, 5, sent)
	if string(p[:6]) != "prefix" || len(p) != 26 {
		t.Errorf("AppendPayload to a non-empty slice: %q", p)
	}
	// The wire format is fixed: big-endian sequence number, then Unix
	// nanoseconds.
	if got := hex.EncodeToString(AppendPayload(nil, 16, 0x0102, time.Unix(0, 0x0a0b))); got != "00000000000001020000000000000a0b" {
		t.Errorf("wire format %s", got)
	}
}

func TestParsePayloadRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, hex, want string
	}{
		{"empty", "", "shorter than the 16-byte header"},
		{"short", "0000000000000001000000000000", "shorter than the 16-byte header"},
		{"zero time", "00000000000000010000000000000000", "not a positive Unix time"},
		{"negative time", "0000000000000001ffffffffffffffff", "not a positive Unix time"},
	} {
		b, _ := hex.DecodeString(tc.hex)
		if _, err := ParsePayload(b); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// FuzzParsePayload: any bytes either parse to a stamp that encodes back
// to the same header, or are refused; nothing panics.
func FuzzParsePayload(f *testing.F) {
	f.Add(AppendPayload(nil, 16, 0, time.Unix(0, 1)))
	f.Add(AppendPayload(nil, 64, 12345, time.Unix(1_800_000_000, 5)))
	f.Add([]byte{})
	f.Add([]byte("not a payload at all"))
	f.Add(bytes.Repeat([]byte{0xff}, 16))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParsePayload(b)
		if err != nil {
			return
		}
		if st.Sent.UnixNano() <= 0 {
			t.Fatalf("accepted a send time of %d", st.Sent.UnixNano())
		}
		back := AppendPayload(nil, HeaderSize, st.Seq, st.Sent)
		if !bytes.Equal(back, b[:HeaderSize]) {
			t.Fatalf("header %x encodes back as %x", b[:HeaderSize], back)
		}
	})
}
