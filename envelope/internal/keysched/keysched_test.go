package keysched

import (
	"bytes"
	"encoding/hex"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRFC8613AppendixC11 reproduces RFC 8613 Appendix C.1.1 (client, with
// master salt) byte for byte: the info encodings and all three outputs.
func TestRFC8613AppendixC11(t *testing.T) {
	secret := unhex(t, "0102030405060708090a0b0c0d0e0f10")
	salt := unhex(t, "9e7ca92223786340")
	for _, c := range []struct {
		name      string
		id        []byte
		typ       string
		length    int
		info, out string
	}{
		{"sender key", []byte{}, TypeKey, 16, "8540f60a634b657910", "f0910ed7295e6ad4b54fc793154302ff"},
		{"recipient key", []byte{0x01}, TypeKey, 16, "854101f60a634b657910", "ffb14e093c94c9cac9471648b4f98710"},
		{"common IV", []byte{}, TypeIV, 13, "8540f60a6249560d", "4622d4dd6d944168eefb54987c"},
	} {
		info := Info(c.id, nil, AlgCCM8, c.typ, c.length)
		if !bytes.Equal(info, unhex(t, c.info)) {
			t.Errorf("%s: info = %x, want %s", c.name, info, c.info)
		}
		out, err := Derive(secret, salt, info, c.length)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, unhex(t, c.out)) {
			t.Errorf("%s: output = %x, want %s", c.name, out, c.out)
		}
	}
}

// TestRFC8613AppendixC21AndC31 covers a one-byte sender ID without a salt
// (C.2.1) and an ID context (C.3.1), the two features Warden's parameters
// rely on.
func TestRFC8613AppendixC21AndC31(t *testing.T) {
	secret := unhex(t, "0102030405060708090a0b0c0d0e0f10")
	for _, c := range []struct {
		name           string
		salt, idCtx    []byte
		sender, recip  []byte
		key, rkey, civ string
	}{
		{"C.2.1", nil, nil, []byte{0x00}, []byte{0x01},
			"321b26943253c7ffb6003b0b64d74041", "e57b5635815177cd679ab4bcec9d7dda", "be35ae297d2dace910c52e99f9"},
		{"C.3.1", unhex(t, "9e7ca92223786340"), unhex(t, "37cbf3210017a2d3"), []byte{}, []byte{0x01},
			"af2a1300a5e95788b356336eeecd2b92", "e39a0c7c77b43f03b4b39ab9a268699f", "2ca58fb85ff1b81c0b7181b85e"},
	} {
		for _, d := range []struct {
			what string
			id   []byte
			typ  string
			n    int
			want string
		}{
			{"sender key", c.sender, TypeKey, 16, c.key},
			{"recipient key", c.recip, TypeKey, 16, c.rkey},
			{"common IV", []byte{}, TypeIV, 13, c.civ},
		} {
			out, err := Derive(secret, c.salt, Info(d.id, c.idCtx, AlgCCM8, d.typ, d.n), d.n)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(out); got != d.want {
				t.Errorf("%s %s = %s, want %s", c.name, d.what, got, d.want)
			}
		}
	}
}

// TestInfoEncoding pins the CBOR that docs/envelope.md spells out byte by
// byte, including the private-use algorithm and long ID contexts.
func TestInfoEncoding(t *testing.T) {
	ctx := IDContext("0a1b2c3d", 1)
	if got, want := hex.EncodeToString(ctx), "000000013061316232633364"; got != want {
		t.Fatalf("IDContext = %s, want %s", got, want)
	}
	for _, c := range []struct {
		name string
		got  []byte
		want string
	}{
		{"ccm-8 uplink key (the spec's example)", Info([]byte{SenderUplink}, ctx, AlgCCM8, TypeKey, 16),
			"8541014c000000013061316232633364" + "0a" + "634b6579" + "10"},
		{"legacy downlink MAC key", Info([]byte{SenderDownlink}, ctx, AlgLegacyCBCHMAC, TypeMAC, 16),
			"8541024c000000013061316232633364" + "3a00010000" + "634d4143" + "10"},
		{"ccm-8 common IV", Info([]byte{}, ctx, AlgCCM8, TypeIV, 13),
			"85404c000000013061316232633364" + "0a" + "624956" + "0d"},
		{"24-byte ID context takes a one-byte length", Info([]byte{1}, IDContext("abcdefghijklmnopqrst", 0), AlgCCM8, TypeKey, 16),
			"8541015818000000006162636465666768696a6b6c6d6e6f7071727374" + "0a634b657910"},
	} {
		if got := hex.EncodeToString(c.got); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}

func TestForDirectionSeparatesEverything(t *testing.T) {
	secret := unhex(t, "0102030405060708090a0b0c0d0e0f10")
	base, _, err := ForDirection(secret, "dev1", 0, AlgCCM8, SenderUplink)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		device string
		epoch  uint32
		alg    int64
		sender byte
	}{
		"direction": {"dev1", 0, AlgCCM8, SenderDownlink},
		"epoch":     {"dev1", 1, AlgCCM8, SenderUplink},
		"device":    {"dev2", 0, AlgCCM8, SenderUplink},
		"suite":     {"dev1", 0, AlgLegacyCBCHMAC, SenderUplink},
	} {
		m, _, err := ForDirection(secret, c.device, c.epoch, c.alg, c.sender)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(m.EncKey, base.EncKey) {
			t.Errorf("changing the %s did not change the key", name)
		}
	}
	down, _, err := ForDirection(secret, "dev1", 0, AlgCCM8, SenderDownlink)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(down.CommonIV, base.CommonIV) {
		t.Error("the common IV differs between directions; OSCORE shares it")
	}
	if _, _, err := ForDirection(secret, "dev1", 0, -7, SenderUplink); err == nil {
		t.Error("ForDirection accepted an algorithm with no key schedule")
	}
	legacy, steps, err := ForDirection(secret, "dev1", 0, AlgLegacyCBCHMAC, SenderUplink)
	if err != nil {
		t.Fatal(err)
	}
	if len(legacy.MACKey) != KeySize || bytes.Equal(legacy.MACKey, legacy.EncKey) || len(steps) != 2 {
		t.Errorf("legacy material = %+v, %d steps", legacy, len(steps))
	}
}
