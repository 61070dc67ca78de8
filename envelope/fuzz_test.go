package envelope

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"testing"
)

// fuzzKeys are fixed keys of every suite for epochs 0 and 1, so that the
// fuzzer can reach the cryptography from the committed seeds.
func fuzzKeys(t testing.TB) []*Keys {
	t.Helper()
	secret := []byte("fuzz master key!")
	d := sha256.Sum256([]byte("envelope fuzz key"))
	priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		t.Fatal(err)
	}
	var ks []*Keys
	for _, epoch := range []uint32{0, 1} {
		for _, s := range []Suite{LegacyCBCHMAC, CCM8} {
			k, err := DeriveKeys(secret, "fuzz1", epoch, s, Uplink)
			if err != nil {
				t.Fatal(err)
			}
			ks = append(ks, k)
		}
		k, err := SignKeys(priv, "fuzz1", epoch, Uplink)
		if err != nil {
			t.Fatal(err)
		}
		ks = append(ks, k)
	}
	return ks
}

const fuzzTopic = "private/fuzz1/up/t"

var knownReasons = map[Reason]bool{ReasonMalformed: true, ReasonDowngrade: true, ReasonUnknownKey: true,
	ReasonReplay: true, ReasonBadTag: true, ReasonBadPadding: true}

// FuzzParse: Parse never panics, every failure is ErrOpen/malformed, and
// whatever it accepts is the one canonical encoding of what it returns.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "\x61", "\x61\x00", "\x61\x00\x00\x00\x00\x00\x00\x00\x00",
		"\x5d\x01\xff\xff\xff\xff\xff", "\x62\x00\x01", "\x71\x00", "\x00\x00", "\xff\xff"} {
		f.Add([]byte(s))
	}
	for _, k := range fuzzKeys(f) {
		msg, err := Seal(k, 258, fuzzTopic, []byte("seed"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(msg)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrOpen) || ReasonOf(err) != ReasonMalformed {
				t.Fatalf("Parse error %v is not ErrOpen/malformed", err)
			}
			if h != (Header{}) {
				t.Fatalf("Parse returned %+v with an error", h)
			}
			return
		}
		epoch := uint32(h.KeyID)
		if h.HasKeyID && epoch == 0 {
			epoch = 256
		}
		if !h.MatchesEpoch(epoch) {
			t.Fatalf("%+v does not match its own epoch %d", h, epoch)
		}
		enc := appendHeader(nil, h.Suite, epoch, h.Seq)
		if !bytes.HasPrefix(data, enc) {
			t.Fatalf("Parse accepted %x as %+v, whose encoding is %x", data, h, enc)
		}
		if h.Seq > MaxSeq || checkBodyLen(h.Suite, len(data)-len(enc)) != nil {
			t.Fatalf("Parse accepted an impossible message %x", data)
		}
	})
}

// FuzzOpen: Open never panics with keys of any suite, every failure is
// ErrOpen with a known reason, and a message that opens under symmetric keys
// is exactly what Seal makes of its contents (no malleability).
func FuzzOpen(f *testing.F) {
	keys := fuzzKeys(f)
	for _, k := range keys {
		for _, n := range []int{0, 1, 16, 33} {
			msg, err := Seal(k, uint64(n)*1000, fuzzTopic, bytes.Repeat([]byte{'a'}, n))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(msg, fuzzTopic)
			f.Add(msg, "private/fuzz1/up/u")
		}
	}
	f.Add([]byte{}, "")
	f.Add([]byte("\x61\x00"), fuzzTopic)
	f.Fuzz(func(t *testing.T, data []byte, topic string) {
		for _, k := range keys {
			pt, h, err := Open(k, topic, data)
			if err != nil {
				if !errors.Is(err, ErrOpen) || !knownReasons[ReasonOf(err)] {
					t.Fatalf("%v: error %v is not ErrOpen with a known reason", k, err)
				}
				if pt != nil || h != (Header{}) {
					t.Fatalf("%v: Open returned %x, %+v with an error", k, pt, h)
				}
				continue
			}
			if h.Suite != k.Suite() || !h.MatchesEpoch(k.Epoch()) {
				t.Fatalf("%v opened a message with header %+v", k, h)
			}
			if k.Suite() == SignP256 {
				continue // signatures are randomized (and malleable)
			}
			again, err := Seal(k, h.Seq, topic, pt)
			if err != nil || !bytes.Equal(again, data) {
				t.Fatalf("%v: opened %x, but sealing its contents gives %x (%v)", k, data, again, err)
			}
		}
	})
}

// FuzzReplayWindowUnmarshal: stored windows never panic, and what loads
// stores back to the same bytes and behaves.
func FuzzReplayWindowUnmarshal(f *testing.F) {
	var w ReplayWindow
	b, _ := w.MarshalBinary()
	f.Add(b, uint64(0))
	for _, s := range []uint64{5, 3, 70, MaxSeq} {
		if err := w.Commit(s); err != nil {
			f.Fatal(err)
		}
		b, _ := w.MarshalBinary()
		f.Add(b, s)
	}
	f.Add([]byte{1, 1}, uint64(1))
	f.Fuzz(func(t *testing.T, data []byte, seq uint64) {
		var w ReplayWindow
		if err := w.UnmarshalBinary(data); err != nil {
			if w != (ReplayWindow{}) {
				t.Fatal("a failed UnmarshalBinary changed the window")
			}
			return
		}
		again, err := w.MarshalBinary()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("UnmarshalBinary(%x) then MarshalBinary = %x, %v", data, again, err)
		}
		if err := w.Check(seq); err == nil {
			if err := w.Commit(seq); err != nil {
				t.Fatalf("Check(%d) passed but Commit failed: %v", seq, err)
			}
			if err := w.Check(seq); err == nil {
				t.Fatalf("seq %d accepted twice", seq)
			}
		}
	})
}

// FuzzParseCounterFile: counter files never panic and only canonical files
// load.
func FuzzParseCounterFile(f *testing.F) {
	f.Add(formatCounterFile(0))
	f.Add(formatCounterFile(1024))
	f.Add(formatCounterFile(MaxSeq + 1))
	f.Add([]byte("warden-envelope-counter-v1 12"))
	f.Add([]byte("warden-envelope-counter-v1 007\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := parseCounterFile(data)
		if err != nil {
			return
		}
		if v > MaxSeq+1 {
			t.Fatalf("loaded bound %d beyond 2^40", v)
		}
		canon := formatCounterFile(v)
		if !bytes.Equal(canon, data) && !bytes.Equal(canon, append(bytes.Clone(data), '\n')) {
			t.Fatalf("%q loaded as %d, which is written %q", data, v, canon)
		}
	})
}
