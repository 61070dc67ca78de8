package firmware_test

// Cross-checks against an independent implementation of the MCUboot image
// format: Apache Mynewt's artifact library (what the newt tool uses).
// Two things differ by design and are accounted for below:
//   - Mynewt's key hash TLV holds the first 4 bytes of SHA-256 of the key's
//     SubjectPublicKeyInfo, Warden's (like imgtool's) all 32; bootutil
//     compares only as many bytes as the TLV holds.
//   - Mynewt names TLV 0x50 "AES_NONCE_LEGACY"; for MCUboot it is the
//     security counter, which is how Warden uses it.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"fmt"
	"testing"

	mimage "github.com/apache/mynewt-artifact/image"
	"github.com/apache/mynewt-artifact/sec"

	"github.com/warden-iot/warden/firmware"
)

func mynewtPub(t *testing.T, k testKey) sec.PubSignKey {
	t.Helper()
	switch p := k.pub.(type) {
	case *ecdsa.PublicKey:
		return sec.PubSignKey{Ec: p}
	case ed25519.PublicKey:
		return sec.PubSignKey{Ed25519: p}
	}
	t.Fatalf("key %T", k.pub)
	return sec.PubSignKey{}
}

// TestMynewtParsesWardenImages parses every kind of image Warden signs with
// Mynewt's parser and checks that both agree on every field, on the hash
// and on the signature.
func TestMynewtParsesWardenImages(t *testing.T) {
	version := firmware.Version{Major: 3, Minor: 14, Revision: 159, Build: 2653}
	for _, k := range testKeys(t) {
		for _, tc := range []struct {
			hdr  int
			n    int
			slot int
			pad  bool
		}{
			{32, 0, 0, false},
			{32, 1000, 0, false},
			{0x200, 1000, 0, false},
			{0x200, 1 << 20, 0, false},
			{0x200, 4096, 0x4000, true},
			{0x400, 12345, 0x10000, true},
		} {
			name := fmt.Sprintf("%s/hdr%#x/%d/pad%v", k.name, tc.hdr, tc.n, tc.pad)
			t.Run(name, func(t *testing.T) {
				b := mustSign(t, testPayload(tc.n), k.signer, firmware.SignOptions{
					Version: version, SecurityCounter: 0x01020304, HeaderSize: tc.hdr, SlotSize: tc.slot, Pad: tc.pad,
				})
				ours := mustParse(t, b)
				theirs, err := mimage.ParseImage(b)
				if err != nil {
					t.Fatalf("mynewt ParseImage: %v", err)
				}
				h := theirs.Header
				if h.Magic != firmware.ImageMagic || int(h.HdrSz) != tc.hdr || int(h.ImgSz) != tc.n ||
					h.ProtSz != ours.Header.ProtectedTLVSize || h.ProtSz != 12 || h.Flags != 0 ||
					h.Vers.Major != version.Major || h.Vers.Minor != version.Minor ||
					h.Vers.Rev != version.Revision || h.Vers.BuildNum != version.Build {
					t.Fatalf("mynewt header %+v", h)
				}
				if !bytes.Equal(theirs.Body, ours.Payload) {
					t.Fatal("bodies differ")
				}
				if size, err := theirs.TotalSize(); err != nil || size != ours.Size {
					t.Errorf("mynewt total size %d (%v), Warden %d", size, err, ours.Size)
				}
				if len(theirs.ProtTlvs) != 1 || theirs.ProtTlvs[0].Header.Type != firmware.TLVSecurityCounter ||
					!bytes.Equal(theirs.ProtTlvs[0].Data, []byte{4, 3, 2, 1}) {
					t.Errorf("mynewt protected TLVs %+v", theirs.ProtTlvs)
				}
				var types []uint8
				for _, tlv := range theirs.Tlvs {
					types = append(types, tlv.Header.Type)
				}
				if !bytes.Equal(types, []byte{firmware.TLVSHA256, firmware.TLVKeyHash, byte(k.sigType)}) {
					t.Errorf("mynewt TLV types % x", types)
				}

				// Hash: Mynewt recomputes it from its parsed pieces.
				if _, err := theirs.VerifyHash(nil); err != nil {
					t.Errorf("mynewt VerifyHash: %v", err)
				}
				hash, err := theirs.Hash()
				digest := ours.Digest()
				if err != nil || !bytes.Equal(hash, digest[:]) {
					t.Errorf("mynewt hash %x (%v), Warden digest %x", hash, err, digest)
				}

				// Key hash: Mynewt's 4-byte form is a prefix of ours, so
				// both hash the same SubjectPublicKeyInfo.
				mk := mynewtPub(t, k)
				short, err := mk.Hash()
				if err != nil {
					t.Fatal(err)
				}
				sigs, err := theirs.CollectSigs()
				if err != nil || len(sigs) != 1 {
					t.Fatalf("mynewt CollectSigs: %d, %v", len(sigs), err)
				}
				if !bytes.HasPrefix(sigs[0].KeyHash, short) || len(sigs[0].KeyHash) != 32 {
					t.Errorf("key hash %x does not start with Mynewt's %x", sigs[0].KeyHash, short)
				}

				// Signature: Mynewt verifies Ed25519 itself (over the
				// digest); it has no ECDSA verifier, so check its parsed
				// signature and hash with the standard library instead.
				switch p := k.pub.(type) {
				case ed25519.PublicKey:
					idx, err := sec.VerifySigs(mk, []sec.Sig{{Type: sigs[0].Type, KeyHash: short, Data: sigs[0].Data}}, hash)
					if err != nil || idx != 0 {
						t.Errorf("mynewt Ed25519 verification: index %d, %v", idx, err)
					}
				case *ecdsa.PublicKey:
					if sigs[0].Type != sec.SIG_TYPE_ECDSA256 || !ecdsa.VerifyASN1(p, hash, sigs[0].Data) {
						t.Errorf("ECDSA signature as Mynewt parsed it does not verify (type %v)", sigs[0].Type)
					}
				}
				if err := ours.Verify(k.pub); err != nil {
					t.Errorf("Warden Verify: %v", err)
				}
			})
		}
	}
}

// TestMynewtTamperingAgrees checks that both parsers see a flipped payload
// byte and a flipped security counter as a hash mismatch.
func TestMynewtTamperingAgrees(t *testing.T) {
	k := testKeys(t)[1]
	good := mustSign(t, testPayload(1000), k.signer, firmware.SignOptions{SecurityCounter: 7})
	for _, off := range []int{0x200 + 10, 0x200 + 1000 + 8} {
		b := bytes.Clone(good)
		b[off] ^= 0x80
		theirs, err := mimage.ParseImage(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := theirs.VerifyHash(nil); err == nil {
			t.Errorf("offset %d: mynewt accepts the tampered hash", off)
		}
		wantErr(t, mustParse(t, b).Verify(k.pub), firmware.ErrDigest, fmt.Sprintf("offset %d", off))
	}
}

// TestWardenVerifiesMynewtImages goes the other way: images made by
// Mynewt's image creator parse and verify here.
func TestWardenVerifiesMynewtImages(t *testing.T) {
	for _, k := range testKeys(t) {
		for _, hdr := range []int{32, 0x200} {
			t.Run(fmt.Sprintf("%s/hdr%#x", k.name, hdr), func(t *testing.T) {
				var key sec.PrivSignKey
				switch s := k.signer.(type) {
				case *ecdsa.PrivateKey:
					key.Ec = s
				case ed25519.PrivateKey:
					key.Ed25519 = &s
				}
				ic := mimage.NewImageCreator()
				ic.Body = testPayload(3000)
				ic.Version = mimage.ImageVersion{Major: 2, Minor: 0, Rev: 1, BuildNum: 9}
				ic.SigKeys = []sec.PrivSignKey{key}
				ic.HeaderSize = hdr
				ic.HWKeyIndex = -1 // no hardware-encryption TLVs
				ic.Sections = []mimage.Section{{Name: "text", Size: 3000, Offset: 0}}
				mi, err := ic.Create()
				if err != nil {
					t.Fatal(err)
				}
				b, err := mi.Bin()
				if err != nil {
					t.Fatal(err)
				}
				img := mustParse(t, b)
				if img.Header.Version != (firmware.Version{Major: 2, Revision: 1, Build: 9}) || int(img.Header.HeaderSize) != hdr {
					t.Errorf("header %+v", img.Header)
				}
				// Mynewt put a section TLV (0xa3) in the protected area and no
				// security counter.
				if _, ok := img.SecurityCounter(); ok {
					t.Error("security counter found in a Mynewt image")
				}
				if len(img.Protected) != 1 || img.Protected[0].Type != 0xa3 {
					t.Errorf("protected TLVs %v", img.Protected)
				}
				if kh, _ := img.KeyHash(); len(kh) != 4 {
					t.Errorf("Mynewt key hash is %d bytes", len(kh))
				}
				if err := img.Verify(k.pub); err != nil {
					t.Fatalf("Verify: %v", err)
				}
				wantErr(t, img.Verify(k.other.Public()), firmware.ErrKeyMismatch, "other key")
				flipped := bytes.Clone(b)
				flipped[hdr+100] ^= 1
				wantErr(t, mustParse(t, flipped).Verify(k.pub), firmware.ErrDigest, "flipped body")
				// Its unprotected area ends with nothing we do not know.
				if u := img.Unknown(); len(u) != 0 {
					t.Errorf("Unknown() = %v", u)
				}
			})
		}
	}
}
