// Package keysched is the envelope key schedule: OSCORE's HKDF derivation
// (RFC 8613 §3.2.1) with Warden's parameters (docs/envelope.md, "Key
// schedule"). It is separate from package envelope so that the test-vector
// generator can publish the derived values, which envelope keeps private.
package keysched

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// MasterSalt is the HKDF salt of every envelope key. It separates envelope
// keys from anything else that might be derived from the same secret.
const MasterSalt = "warden-envelope-v1"

// alg_aead values in the info array.
const (
	// AlgLegacyCBCHMAC is a COSE private-use value (below -65536): AES-128-CBC
	// with HMAC-SHA256/128 as the envelope composes them has no COSE number.
	AlgLegacyCBCHMAC int64 = -65537
	// AlgCCM8 is COSE's AES-CCM-16-64-128.
	AlgCCM8 int64 = 10
)

// Type strings in the info array: RFC 8613 defines "Key" and "IV"; "MAC"
// names legacy-cbc-hmac's separate MAC key.
const (
	TypeKey = "Key"
	TypeMAC = "MAC"
	TypeIV  = "IV"
)

// Lengths of the derived values.
const (
	KeySize      = 16
	CommonIVSize = 13
)

// Sender IDs: one byte naming the direction. Uplink is device to server.
const (
	SenderUplink   byte = 0x01
	SenderDownlink byte = 0x02
)

// IDContext is u32(epoch) || device ID: it makes every device's and every
// epoch's keys independent.
func IDContext(deviceID string, epoch uint32) []byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(deviceID)), epoch)
	return append(b, deviceID...)
}

// Info encodes RFC 8613's info array
// [id : bstr, id_context : bstr / nil, alg_aead : int, type : tstr, L : uint]
// in CBOR. A nil idContext encodes as CBOR null, as RFC 8613 does when there
// is no ID context; Warden always has one.
func Info(id, idContext []byte, alg int64, typ string, length int) []byte {
	b := []byte{0x85} // array of 5
	b = appendHead(b, 2, uint64(len(id)))
	b = append(b, id...)
	if idContext == nil {
		b = append(b, 0xf6)
	} else {
		b = appendHead(b, 2, uint64(len(idContext)))
		b = append(b, idContext...)
	}
	if alg >= 0 {
		b = appendHead(b, 0, uint64(alg))
	} else {
		b = appendHead(b, 1, uint64(-1-alg))
	}
	b = appendHead(b, 3, uint64(len(typ)))
	b = append(b, typ...)
	return appendHead(b, 0, uint64(length))
}

// appendHead appends a CBOR data item head (RFC 8949 §3) with the shortest
// encoding of n.
func appendHead(b []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(b, m|byte(n))
	case n <= 0xff:
		return append(b, m|24, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, m|25), uint16(n))
	case n <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(b, m|26), uint32(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, m|27), n)
	}
}

// Derive is HKDF-SHA256 with PRK = Extract(salt, secret) and output =
// Expand(PRK, info, length).
func Derive(secret, salt, info []byte, length int) ([]byte, error) {
	prk, err := hkdf.Extract(sha256.New, secret, salt)
	if err != nil {
		return nil, fmt.Errorf("derive envelope key: %w", err)
	}
	out, err := hkdf.Expand(sha256.New, prk, string(info), length)
	if err != nil {
		return nil, fmt.Errorf("derive envelope key: %w", err)
	}
	return out, nil
}

// Material is what one direction of one suite needs.
type Material struct {
	EncKey   []byte // "Key": AES-128 key
	MACKey   []byte // "MAC": legacy-cbc-hmac only
	CommonIV []byte // "IV": ccm-8 only; shared by both directions
}

// Step is one HKDF derivation, for test vectors.
type Step struct {
	Name   string
	Info   []byte
	Length int
	Output []byte
}

// ForDirection derives the material of one suite (alg) for one direction
// (sender) of one device and epoch, and returns the individual steps.
func ForDirection(secret []byte, deviceID string, epoch uint32, alg int64, sender byte) (Material, []Step, error) {
	ctx := IDContext(deviceID, epoch)
	id := []byte{sender}
	type want struct {
		name string
		id   []byte
		typ  string
		n    int
		dst  *[]byte
	}
	var m Material
	var wants []want
	switch alg {
	case AlgLegacyCBCHMAC:
		wants = []want{{"enc_key", id, TypeKey, KeySize, &m.EncKey}, {"mac_key", id, TypeMAC, KeySize, &m.MACKey}}
	case AlgCCM8:
		wants = []want{{"enc_key", id, TypeKey, KeySize, &m.EncKey}, {"common_iv", []byte{}, TypeIV, CommonIVSize, &m.CommonIV}}
	default:
		return Material{}, nil, fmt.Errorf("derive envelope key: no key schedule for algorithm %d", alg)
	}
	steps := make([]Step, 0, len(wants))
	for _, w := range wants {
		info := Info(w.id, ctx, alg, w.typ, w.n)
		out, err := Derive(secret, []byte(MasterSalt), info, w.n)
		if err != nil {
			return Material{}, nil, err
		}
		*w.dst = out
		steps = append(steps, Step{Name: w.name, Info: info, Length: w.n, Output: out})
	}
	return m, steps, nil
}
