package envelope

import (
	"bytes"
	"encoding/hex"
	"testing"
)

// TestOSCORENonceAppendixC4 checks the nonce construction against RFC 8613
// Appendix C.4 (empty sender ID, Partial IV 0x14) and C.2.1 (one-byte sender
// IDs 0x00 and 0x01, Partial IV 0), the shape Warden uses.
func TestOSCORENonceAppendixC4(t *testing.T) {
	var civ [ccm8NonceSize]byte
	for _, c := range []struct {
		name, commonIV string
		id             []byte
		seq            uint64
		want           string
	}{
		{"C.4", "4622d4dd6d944168eefb54987c", nil, 20, "4622d4dd6d944168eefb549868"},
		{"C.2.1 sender", "be35ae297d2dace910c52e99f9", []byte{0x00}, 0, "bf35ae297d2dace910c52e99f9"},
		{"C.2.1 recipient", "be35ae297d2dace910c52e99f9", []byte{0x01}, 0, "bf35ae297d2dace810c52e99f9"},
	} {
		b, _ := hex.DecodeString(c.commonIV)
		copy(civ[:], b)
		n := oscoreNonce(&civ, c.id, c.seq)
		if got := hex.EncodeToString(n[:]); got != c.want {
			t.Errorf("%s: nonce %s, want %s", c.name, got, c.want)
		}
	}
}

func TestHeaderEncoding(t *testing.T) {
	for _, c := range []struct {
		suite Suite
		epoch uint32
		seq   uint64
		want  string
	}{
		{CCM8, 0, 0, "6100"},                         // the spec's 0x61 example
		{LegacyCBCHMAC, 1, MaxSeq, "5d01ffffffffff"}, // the spec's 0x5d example
		{SignP256, 0, 255, "71ff"},
		{SignP256, 0, 256, "720100"},
		{CCM8, 258, 1 << 32, "6d020100000000"},
		{CCM8, 256, 1, "690001"},
	} {
		got := hex.EncodeToString(appendHeader(nil, c.suite, c.epoch, c.seq))
		if got != c.want {
			t.Errorf("%v epoch %d seq %d: header %s, want %s", c.suite, c.epoch, c.seq, got, c.want)
		}
		h, n, err := parse(append(appendHeader(nil, c.suite, c.epoch, c.seq), make([]byte, 64)...))
		if err != nil || n != len(c.want)/2 || h.Seq != c.seq || h.Suite != c.suite || !h.MatchesEpoch(c.epoch) {
			t.Errorf("%s: parse = %+v, %d, %v", c.want, h, n, err)
		}
	}
}

func TestValidPadding(t *testing.T) {
	block := func(tail ...byte) []byte {
		return append(bytes.Repeat([]byte{'x'}, 32-len(tail)), tail...)
	}
	for _, c := range []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"one byte", block(1), true},
		{"three bytes", block(3, 3, 3), true},
		{"a whole block", block(bytes.Repeat([]byte{16}, 16)...), true},
		{"zero", block(0), false},
		{"seventeen", block(bytes.Repeat([]byte{17}, 17)...), false},
		{"inconsistent", block(2, 3, 3), false},
		{"inconsistent at the far end", block(append([]byte{15}, bytes.Repeat([]byte{16}, 15)...)...), false},
		{"255", block(255), false},
	} {
		if got := validPadding(c.b); got != c.ok {
			t.Errorf("%s: validPadding = %v, want %v", c.name, got, c.ok)
		}
	}
}
