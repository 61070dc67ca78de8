package firmware_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/warden-iot/warden/firmware"
)

// fixedP256 derives a P-256 key from a name, so that tests and vectors use
// the same keys on every run.
func fixedP256(t testing.TB, name string) *ecdsa.PrivateKey {
	t.Helper()
	d := sha256.Sum256([]byte("warden firmware test key: " + name))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func fixedEd25519(t testing.TB, name string) ed25519.PrivateKey {
	t.Helper()
	seed := sha256.Sum256([]byte("warden firmware test key: " + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

// testPayload is n bytes that look like nothing in particular.
func testPayload(n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	block := sha256.Sum256([]byte("warden firmware test payload"))
	for len(out) < n {
		out = append(out, block[:]...)
		block = sha256.Sum256(block[:])
	}
	return out[:n]
}

type testKey struct {
	name    string
	signer  crypto.Signer
	pub     crypto.PublicKey
	sigType uint16
	other   crypto.Signer // another key of the same type
}

func testKeys(t testing.TB) []testKey {
	p := fixedP256(t, "release-p256")
	e := fixedEd25519(t, "release-ed25519")
	return []testKey{
		{name: "ecdsa-p256", signer: p, pub: &p.PublicKey, sigType: firmware.TLVECDSASig, other: fixedP256(t, "other-p256")},
		{name: "ed25519", signer: e, pub: e.Public(), sigType: firmware.TLVEd25519, other: fixedEd25519(t, "other-ed25519")},
	}
}

func mustSign(t testing.TB, payload []byte, signer crypto.Signer, opts firmware.SignOptions) []byte {
	t.Helper()
	img, err := firmware.Sign(payload, signer, opts)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return img
}

func mustParse(t testing.TB, b []byte) *firmware.Image {
	t.Helper()
	img, err := firmware.ParseImage(b)
	if err != nil {
		t.Fatalf("ParseImage: %v", err)
	}
	return img
}

// withUnprotected rebuilds an image with a different unprotected TLV area,
// as a tool that appends or rewrites TLVs would: the signed region is kept.
func withUnprotected(t testing.TB, b []byte, tlvs []firmware.TLV) []byte {
	t.Helper()
	img := mustParse(t, b)
	signed := int(img.Header.HeaderSize) + int(img.Header.ImageSize) + int(img.Header.ProtectedTLVSize)
	out := append([]byte(nil), b[:signed]...)
	tot := 4
	for _, tlv := range tlvs {
		tot += 4 + len(tlv.Value)
	}
	out = binary.LittleEndian.AppendUint16(out, firmware.TLVInfoMagic)
	out = binary.LittleEndian.AppendUint16(out, uint16(tot))
	for _, tlv := range tlvs {
		out = binary.LittleEndian.AppendUint16(out, tlv.Type)
		out = binary.LittleEndian.AppendUint16(out, uint16(len(tlv.Value)))
		out = append(out, tlv.Value...)
	}
	return out
}

func findTLV(tlvs []firmware.TLV, typ uint16) []byte {
	for _, t := range tlvs {
		if t.Type == typ {
			return t.Value
		}
	}
	return nil
}

func wantErr(t testing.TB, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: got error %v, want %v", what, err, target)
	}
}
