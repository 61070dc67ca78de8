package otaproto

import (
	"bytes"
	"testing"
)

// FuzzParseBlock: any bytes either parse into a block that lies within the
// image size it states and re-encodes to the same frame, or are refused.
func FuzzParseBlock(f *testing.F) {
	f.Add(EncodeBlock(0, 10, []byte("0123456789")))
	f.Add(EncodeBlock(4096, 5000, bytes.Repeat([]byte{1}, 904)))
	f.Add([]byte{0, 0, 0, 9, 0, 0, 0, 8, 1})
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		off, total, data, err := ParseBlock(b)
		if err != nil {
			return
		}
		if off < 0 || off > total || int64(len(data)) > total-off {
			t.Fatalf("block %d+%d outside size %d accepted", off, len(data), total)
		}
		if !bytes.Equal(EncodeBlock(off, total, data), b) {
			t.Fatal("re-encoding differs")
		}
	})
}
