package firmware_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/warden-iot/warden/firmware"
)

func TestSignParseVerifyRoundTrip(t *testing.T) {
	version := firmware.Version{Major: 1, Minor: 2, Revision: 3, Build: 4}
	for _, k := range testKeys(t) {
		for _, hdr := range []int{0, 32, 0x200, 0x1000} {
			for _, n := range []int{0, 1, 1000, 1 << 20} {
				t.Run(fmt.Sprintf("%s/hdr%#x/%d", k.name, hdr, n), func(t *testing.T) {
					payload := testPayload(n)
					b := mustSign(t, payload, k.signer, firmware.SignOptions{Version: version, SecurityCounter: 7, HeaderSize: hdr})
					img := mustParse(t, b)
					wantHdr := hdr
					if hdr == 0 {
						wantHdr = firmware.DefaultHeaderSize
					}
					h := img.Header
					if h.Magic != firmware.ImageMagic || int(h.HeaderSize) != wantHdr || h.ImageSize != uint32(n) ||
						h.ProtectedTLVSize != 12 || h.Flags != 0 || h.LoadAddr != 0 || h.Version != version {
						t.Fatalf("header %+v", h)
					}
					if !bytes.Equal(img.Payload, payload) || img.Size != len(b) {
						t.Fatalf("payload or size wrong: size %d of %d", img.Size, len(b))
					}
					if !bytes.Equal(b[32:wantHdr], make([]byte, wantHdr-32)) {
						t.Error("the gap after the header is not zero")
					}
					// The protected area, byte for byte.
					prot := b[wantHdr+n : wantHdr+n+12]
					if want := []byte{0x08, 0x69, 0x0c, 0x00, 0x50, 0x00, 0x04, 0x00, 7, 0, 0, 0}; !bytes.Equal(prot, want) {
						t.Errorf("protected area % x, want % x", prot, want)
					}
					if ctr, ok := img.SecurityCounter(); !ok || ctr != 7 {
						t.Errorf("SecurityCounter() = %d, %v", ctr, ok)
					}
					if len(img.Unprotected) != 3 || img.Unprotected[0].Type != firmware.TLVSHA256 ||
						img.Unprotected[1].Type != firmware.TLVKeyHash || img.Unprotected[2].Type != k.sigType {
						t.Fatalf("unprotected TLVs %v", img.Unprotected)
					}
					digest := sha256.Sum256(b[:wantHdr+n+12])
					if img.Digest() != digest || !bytes.Equal(img.Unprotected[0].Value, digest[:]) {
						t.Error("digest does not cover header, gap, payload and protected area")
					}
					kh, ok := img.KeyHash()
					want, _ := firmware.KeyHash(k.pub)
					if !ok || !bytes.Equal(kh, want[:]) {
						t.Errorf("KeyHash() = %x, want %x", kh, want)
					}
					if u := img.Unknown(); len(u) != 0 {
						t.Errorf("Unknown() = %v", u)
					}
					if err := img.Verify(k.pub); err != nil {
						t.Fatalf("Verify: %v", err)
					}
				})
			}
		}
	}
}

// trailerSize is imgtool's _trailer_size, written out independently.
func trailerSize(align int) int {
	maxAlign := align
	if maxAlign < 8 {
		maxAlign = 8
	}
	magic := 16
	if maxAlign > 16 {
		magic = maxAlign
	}
	return 128*3*align + 4*maxAlign + magic
}

func TestSignPadAndSlotSize(t *testing.T) {
	k := testKeys(t)[1] // Ed25519: fixed signature length, so exact sizes
	payload := testPayload(1000)
	base := mustSign(t, payload, k.signer, firmware.SignOptions{SecurityCounter: 1})
	if trailerSize(8) != 3120 {
		t.Fatalf("trailer at align 8 is %d, imgtool gives 3120", trailerSize(8))
	}
	for _, align := range []int{0, 1, 2, 4, 8, 16, 32} {
		a := align
		if a == 0 {
			a = 8
		}
		exact := len(base) + trailerSize(a)
		t.Run(fmt.Sprintf("align%d", align), func(t *testing.T) {
			// Exactly fits, padded.
			b := mustSign(t, payload, k.signer, firmware.SignOptions{SecurityCounter: 1, Align: align, SlotSize: exact, Pad: true})
			if len(b) != exact || !bytes.Equal(b[:len(base)], base) {
				t.Fatalf("padded image is %d bytes, want %d with the image first", len(b), exact)
			}
			magic := b[len(b)-16:]
			if a <= 8 {
				if !bytes.Equal(magic, []byte{0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f, 0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80}) {
					t.Errorf("boot magic % x", magic)
				}
			} else if binary.LittleEndian.Uint16(magic) != uint16(a) || magic[2] != 0x2d || magic[15] != 0x8a {
				t.Errorf("aligned boot magic % x", magic)
			}
			if !bytes.Equal(b[len(base):len(b)-16], bytes.Repeat([]byte{0xff}, len(b)-16-len(base))) {
				t.Error("padding is not 0xff")
			}
			img := mustParse(t, b)
			if img.Size != len(base) {
				t.Errorf("Size %d, want %d (padding excluded)", img.Size, len(base))
			}
			if err := img.Verify(k.pub); err != nil {
				t.Errorf("Verify padded: %v", err)
			}
			// One byte short.
			_, err := firmware.Sign(payload, k.signer, firmware.SignOptions{SecurityCounter: 1, Align: align, SlotSize: exact - 1})
			wantErr(t, err, firmware.ErrMalformed, "slot one byte short")
			if err != nil && (!strings.Contains(err.Error(), fmt.Sprint(len(base))) || !strings.Contains(err.Error(), fmt.Sprint(exact-1))) {
				t.Errorf("error does not give both sizes: %v", err)
			}
			// Fits without padding: same bytes as without a slot.
			if b := mustSign(t, payload, k.signer, firmware.SignOptions{SecurityCounter: 1, Align: align, SlotSize: exact}); !bytes.Equal(b, base) {
				t.Error("a slot size without Pad changed the image")
			}
		})
	}
}

func TestSignOptionsAndKeys(t *testing.T) {
	k := testKeys(t)[0]
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		signer crypto.Signer
		opts   firmware.SignOptions
		want   error
	}{
		{"rsa", rsaKey, firmware.SignOptions{}, firmware.ErrUnsupportedKey},
		{"p384", p384, firmware.SignOptions{}, firmware.ErrUnsupportedKey},
		{"header 31", k.signer, firmware.SignOptions{HeaderSize: 31}, firmware.ErrMalformed},
		{"header 65536", k.signer, firmware.SignOptions{HeaderSize: 65536}, firmware.ErrMalformed},
		{"align 3", k.signer, firmware.SignOptions{Align: 3}, firmware.ErrMalformed},
		{"align 64", k.signer, firmware.SignOptions{Align: 64}, firmware.ErrMalformed},
		{"pad without slot", k.signer, firmware.SignOptions{Pad: true}, firmware.ErrMalformed},
		{"negative slot", k.signer, firmware.SignOptions{SlotSize: -1}, firmware.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := firmware.Sign(nil, tc.signer, tc.opts)
			wantErr(t, err, tc.want, tc.name)
		})
	}
	if _, err := firmware.Sign(nil, nil, firmware.SignOptions{}); err == nil {
		t.Error("Sign with a nil signer succeeded")
	}

	// A load address makes a RAM-load image, as imgtool --load-addr does.
	b := mustSign(t, []byte("x"), k.signer, firmware.SignOptions{LoadAddr: 0x20000000})
	img := mustParse(t, b)
	if img.Header.LoadAddr != 0x20000000 || img.Header.Flags != 0x20 {
		t.Errorf("load address header %+v", img.Header)
	}
	if err := img.Verify(k.pub); err != nil {
		t.Error(err)
	}
}

// hsm hides the concrete key type, as an HSM-backed signer does.
type hsm struct{ crypto.Signer }

// brokenSigner returns signatures that do not verify.
type brokenSigner struct{ crypto.Signer }

func (b brokenSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := b.Signer.Sign(r, digest, opts)
	if err == nil {
		sig[len(sig)-1] ^= 0x01
	}
	return sig, err
}

func TestSignWithOpaqueSigner(t *testing.T) {
	for _, k := range testKeys(t) {
		b := mustSign(t, []byte("hsm"), hsm{k.signer}, firmware.SignOptions{})
		if err := mustParse(t, b).Verify(k.pub); err != nil {
			t.Errorf("%s: %v", k.name, err)
		}
	}
	// A signer whose signatures do not verify must not produce an image.
	bad := brokenSigner{testKeys(t)[1].signer}
	_, err := firmware.Sign([]byte("x"), bad, firmware.SignOptions{})
	wantErr(t, err, firmware.ErrSignature, "broken signer")
}

func TestVerifyTampering(t *testing.T) {
	for _, k := range testKeys(t) {
		t.Run(k.name, func(t *testing.T) {
			payload := testPayload(1000)
			opts := firmware.SignOptions{SecurityCounter: 7, HeaderSize: 0x200}
			good := mustSign(t, payload, k.signer, opts)
			img := mustParse(t, good)
			if err := img.Verify(k.pub); err != nil {
				t.Fatal(err)
			}

			flip := func(off int) []byte {
				b := bytes.Clone(good)
				b[off] ^= 0x01
				return b
			}
			// Payload byte.
			err := mustParse(t, flip(0x200+500)).Verify(k.pub)
			wantErr(t, err, firmware.ErrDigest, "payload flipped")
			// Header byte (version build).
			err = mustParse(t, flip(24)).Verify(k.pub)
			wantErr(t, err, firmware.ErrDigest, "header flipped")
			// Security counter 7 -> 6: structurally fine, digest wrong.
			tampered := mustParse(t, flip(0x200+1000+8))
			if c, _ := tampered.SecurityCounter(); c != 6 {
				t.Fatalf("tampered counter reads %d", c)
			}
			wantErr(t, tampered.Verify(k.pub), firmware.ErrDigest, "counter flipped")

			// Another key of the same type, and one of the other type.
			wantErr(t, img.Verify(k.other.Public()), firmware.ErrKeyMismatch, "other key")
			for _, o := range testKeys(t) {
				if o.name != k.name {
					wantErr(t, img.Verify(o.pub), firmware.ErrKeyMismatch, "other key type")
				}
			}

			// A valid signature by another key, relabelled with our key hash.
			byOther := mustParse(t, mustSign(t, payload, k.other, opts))
			kh, _ := firmware.KeyHash(k.pub)
			relabelled := withUnprotected(t, good, []firmware.TLV{
				{Type: firmware.TLVSHA256, Value: findTLV(byOther.Unprotected, firmware.TLVSHA256)},
				{Type: firmware.TLVKeyHash, Value: kh[:]},
				{Type: k.sigType, Value: findTLV(byOther.Unprotected, k.sigType)},
			})
			wantErr(t, mustParse(t, relabelled).Verify(k.pub), firmware.ErrSignature, "other key's signature")

			// A flipped signature bit.
			sig := bytes.Clone(findTLV(img.Unprotected, k.sigType))
			sig[len(sig)-1] ^= 0x01
			badSig := withUnprotected(t, good, []firmware.TLV{img.Unprotected[0], img.Unprotected[1], {Type: k.sigType, Value: sig}})
			wantErr(t, mustParse(t, badSig).Verify(k.pub), firmware.ErrSignature, "signature flipped")

			// An unknown TLV appended, totals fixed: MCUboot ignores it.
			extra := firmware.TLV{Type: 0xa0, Value: []byte("build-id 42")}
			withExtra := withUnprotected(t, good, append(append([]firmware.TLV(nil), img.Unprotected...), extra))
			ex := mustParse(t, withExtra)
			if err := ex.Verify(k.pub); err != nil {
				t.Errorf("unknown TLV: Verify: %v", err)
			}
			if u := ex.Unknown(); len(u) != 1 || u[0].Type != 0xa0 || string(u[0].Value) != "build-id 42" {
				t.Errorf("Unknown() = %v", u)
			}

			// Duplicated SHA-256 TLV.
			dup := withUnprotected(t, good, append([]firmware.TLV{img.Unprotected[0]}, img.Unprotected...))
			_, err = firmware.ParseImage(dup)
			wantErr(t, err, firmware.ErrMalformed, "duplicated SHA-256")

			// Missing pieces.
			noHash := withUnprotected(t, good, img.Unprotected[1:])
			wantErr(t, mustParse(t, noHash).Verify(k.pub), firmware.ErrDigest, "no SHA-256 TLV")
			noKey := withUnprotected(t, good, []firmware.TLV{img.Unprotected[0], img.Unprotected[2]})
			wantErr(t, mustParse(t, noKey).Verify(k.pub), firmware.ErrKeyMismatch, "no key hash TLV")
			noSig := withUnprotected(t, good, img.Unprotected[:2])
			wantErr(t, mustParse(t, noSig).Verify(k.pub), firmware.ErrSignature, "no signature TLV")
			// bootutil only checks a signature that follows its key hash.
			sigFirst := withUnprotected(t, good, []firmware.TLV{img.Unprotected[0], img.Unprotected[2], img.Unprotected[1]})
			wantErr(t, mustParse(t, sigFirst).Verify(k.pub), firmware.ErrSignature, "signature before key hash")

			// A key hash prefix, as Mynewt's newt writes (4 bytes), selects
			// the key in bootutil and so here.
			prefix := withUnprotected(t, good, []firmware.TLV{img.Unprotected[0], {Type: firmware.TLVKeyHash, Value: kh[:4]}, img.Unprotected[2]})
			if err := mustParse(t, prefix).Verify(k.pub); err != nil {
				t.Errorf("4-byte key hash: %v", err)
			}

			// The encrypted flags: the hash would cover plaintext.
			enc := bytes.Clone(good)
			enc[16] |= 0x04
			wantErr(t, mustParse(t, enc).Verify(k.pub), firmware.ErrMalformed, "encrypted flag")

			// Truncated at every length.
			small := mustSign(t, []byte("tiny"), k.signer, firmware.SignOptions{HeaderSize: 32, SecurityCounter: 1})
			for i := range small {
				if _, err := firmware.ParseImage(small[:i]); err == nil {
					t.Fatalf("image truncated to %d of %d bytes parsed", i, len(small))
				}
			}
		})
	}
}

func TestVerifyPaddedECDSASignature(t *testing.T) {
	k := testKeys(t)[0]
	good := mustSign(t, []byte("pad-sig"), k.signer, firmware.SignOptions{})
	img := mustParse(t, good)
	sig := findTLV(img.Unprotected, firmware.TLVECDSASig)
	padded := append(bytes.Clone(sig), make([]byte, 72-len(sig)+1)...) // imgtool --pad-sig, and then some
	b := withUnprotected(t, good, []firmware.TLV{img.Unprotected[0], img.Unprotected[1], {Type: firmware.TLVECDSASig, Value: padded}})
	if err := mustParse(t, b).Verify(k.pub); err != nil {
		t.Errorf("zero-padded DER signature: %v", err)
	}
	padded[len(padded)-1] = 1
	b = withUnprotected(t, good, []firmware.TLV{img.Unprotected[0], img.Unprotected[1], {Type: firmware.TLVECDSASig, Value: padded}})
	wantErr(t, mustParse(t, b).Verify(k.pub), firmware.ErrSignature, "non-zero padding")
}

func TestVerifyRejectsBadKeys(t *testing.T) {
	k := testKeys(t)[0]
	img := mustParse(t, mustSign(t, nil, k.signer, firmware.SignOptions{}))
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, pub := range map[string]any{
		"nil":         nil,
		"rsa":         &rsaKey.PublicKey,
		"short ed":    ed25519.PublicKey(make([]byte, 31)),
		"ecdsa value": k.signer.Public().(*ecdsa.PublicKey).X,
		"private key": k.signer,
	} {
		wantErr(t, img.Verify(pub), firmware.ErrUnsupportedKey, name)
	}
	var nilImage *firmware.Image
	wantErr(t, nilImage.Verify(k.pub), firmware.ErrMalformed, "nil image")
	wantErr(t, (&firmware.Image{}).Verify(k.pub), firmware.ErrMalformed, "zero image")
}

func TestParseImageStructure(t *testing.T) {
	k := testKeys(t)[1]
	good := mustSign(t, []byte("structure"), k.signer, firmware.SignOptions{HeaderSize: 32, SecurityCounter: 5})
	img := mustParse(t, good)
	protOff := 32 + len("structure")
	unprotOff := protOff + 12
	le16 := func(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
	set := func(b []byte, off int, v []byte) []byte {
		b = bytes.Clone(b)
		copy(b[off:], v)
		return b
	}
	protWith := func(tlvs ...firmware.TLV) []byte {
		// Rebuild the protected area (hash now wrong, structure is what counts).
		var area []byte
		for _, tlv := range tlvs {
			area = binary.LittleEndian.AppendUint16(area, tlv.Type)
			area = binary.LittleEndian.AppendUint16(area, uint16(len(tlv.Value)))
			area = append(area, tlv.Value...)
		}
		tot := uint16(4 + len(area))
		b := bytes.Clone(good[:protOff])
		binary.LittleEndian.PutUint16(b[10:], tot)
		b = append(b, le16(firmware.ProtectedTLVInfoMagic)...)
		b = append(b, le16(tot)...)
		b = append(b, area...)
		return append(b, good[unprotOff:]...)
	}
	magic := []byte{0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f, 0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80}
	aligned := []byte{0x20, 0x00, 0x2d, 0xe1, 0x5d, 0x29, 0x41, 0x0b, 0x8d, 0x77, 0x67, 0x9c, 0x11, 0x0f, 0x1f, 0x8a}
	ctr := func(n int) firmware.TLV {
		return firmware.TLV{Type: firmware.TLVSecurityCounter, Value: make([]byte, n)}
	}

	for _, tc := range []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"good", good, true},
		{"bad magic", set(good, 0, []byte{0x3c}), false},
		{"header size 31", set(good, 8, le16(31)), false},
		{"header size past end", set(good, 8, le16(0xffff)), false},
		{"image size past end", set(good, 12, []byte{0xff, 0xff, 0xff, 0xff}), false},
		{"image size one too big", set(good, 12, []byte{byte(len("structure") + 1)}), false},
		{"protected size mismatch", set(good, 10, le16(16)), false},
		{"protected size 0 with protected area", set(good, 10, le16(0)), false},
		{"protected magic wrong", set(good, protOff, le16(firmware.TLVInfoMagic)), false},
		{"unprotected magic wrong", set(good, unprotOff, le16(0x6906)), false},
		{"unprotected total 3", set(good, unprotOff+2, le16(3)), false},
		{"unprotected total past end", set(good, unprotOff+2, le16(0x200)), false},
		{"unprotected total short by one", set(good, unprotOff+2, le16(uint16(len(good)-unprotOff-1))), false},
		{"TLV length past area", set(good, unprotOff+6, le16(33)), false},
		{"empty protected area", protWith(), true},
		{"counter of 3 bytes", protWith(ctr(3)), false},
		{"counter of 8 bytes", protWith(ctr(8)), false},
		{"two counters", protWith(ctr(4), ctr(4)), false},
		{"unknown protected TLV", protWith(ctr(4), firmware.TLV{Type: 0x40, Value: make([]byte, 12)}), true},
		{"SHA-256 in the protected area", protWith(firmware.TLV{Type: firmware.TLVSHA256, Value: make([]byte, 32)}), false},
		{"key hash in the protected area", protWith(firmware.TLV{Type: firmware.TLVKeyHash, Value: make([]byte, 32)}), false},
		{"counter unprotected", withUnprotected(t, good, append([]firmware.TLV{ctr(4)}, img.Unprotected...)), false},
		{"SHA-256 of 31 bytes", withUnprotected(t, good, []firmware.TLV{{Type: firmware.TLVSHA256, Value: make([]byte, 31)}}), false},
		{"key hash of 0 bytes", withUnprotected(t, good, []firmware.TLV{{Type: firmware.TLVKeyHash}}), false},
		{"key hash of 33 bytes", withUnprotected(t, good, []firmware.TLV{{Type: firmware.TLVKeyHash, Value: make([]byte, 33)}}), false},
		{"Ed25519 signature of 63 bytes", withUnprotected(t, good, []firmware.TLV{{Type: firmware.TLVEd25519, Value: make([]byte, 63)}}), false},
		{"ECDSA signature of 129 bytes", withUnprotected(t, good, []firmware.TLV{{Type: firmware.TLVECDSASig, Value: make([]byte, 129)}}), false},
		{"two key hashes", withUnprotected(t, good, []firmware.TLV{img.Unprotected[1], img.Unprotected[1]}), false},
		{"257 TLVs", withUnprotected(t, good, make([]firmware.TLV, 257)), false},
		{"256 TLVs", withUnprotected(t, good, make([]firmware.TLV, 256)), true},
		{"trailing 0xff", append(bytes.Clone(good), bytes.Repeat([]byte{0xff}, 100)...), true},
		{"trailing 0x00", append(bytes.Clone(good), make([]byte, 100)...), true},
		{"trailing magic only", append(bytes.Clone(good), magic...), true},
		{"trailing 0xff and magic", append(append(bytes.Clone(good), bytes.Repeat([]byte{0xff}, 64)...), magic...), true},
		{"trailing 0xff and aligned magic", append(append(bytes.Clone(good), bytes.Repeat([]byte{0xff}, 64)...), aligned...), true},
		{"trailing mixed padding", append(append(bytes.Clone(good), 0xff, 0xff), 0, 0), false},
		{"trailing garbage", append(bytes.Clone(good), "hello"...), false},
		{"trailing 0x01", append(bytes.Clone(good), 1), false},
		{"magic with wrong alignment", append(bytes.Clone(good), set(aligned, 0, []byte{0x08})...), false},
		{"garbage before magic", append(append(bytes.Clone(good), 0x42), magic...), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := firmware.ParseImage(tc.b)
			if tc.ok && err != nil {
				t.Errorf("refused: %v", err)
			}
			if !tc.ok {
				wantErr(t, err, firmware.ErrMalformed, tc.name)
			}
		})
	}
}
