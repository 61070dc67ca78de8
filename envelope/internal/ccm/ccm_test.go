package ccm

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

func newAEAD(t testing.TB, key string, tagSize, nonceSize int) cipher.AEAD {
	t.Helper()
	b, err := aes.NewCipher(unhex(t, key))
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(b, tagSize, nonceSize)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// rfc3610Vectors are the 24 packet vectors of RFC 3610 §8. The RFC gives
// each packet as header (the AAD) followed by payload; here they are split,
// and "out" is the encrypted payload followed by the encrypted tag.
var rfc3610Vectors = []struct {
	key, nonce, ad, plaintext, out string
	tagSize                        int
}{
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "00000003020100a0a1a2a3a4a5", "0001020304050607", "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e", "588c979a61c663d2f066d0c2c0f989806d5f6b61dac38417e8d12cfdf926e0", 8},
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "00000004030201a0a1a2a3a4a5", "0001020304050607", "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "72c91a36e135f8cf291ca894085c87e3cc15c439c9e43a3ba091d56e10400916", 8},
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "00000005040302a0a1a2a3a4a5", "0001020304050607", "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20", "51b1e5f44a197d1da46b0f8e2d282ae871e838bb64da8596574adaa76fbd9fb0c5", 8},
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "00000006050403a0a1a2a3a4a5", "000102030405060708090a0b", "0c0d0e0f101112131415161718191a1b1c1d1e", "a28c6865939a9a79faaa5c4c2a9d4a91cdac8c96c861b9c9e61ef1", 8},
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "00000007060504a0a1a2a3a4a5", "000102030405060708090a0b", "0c0d0e0f101112131415161718191a1b1c1d1e1f", "dcf1fb7b5d9e23fb9d4e131253658ad86ebdca3e51e83f077d9c2d93", 8},
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "00000008070605a0a1a2a3a4a5", "000102030405060708090a0b", "0c0d0e0f101112131415161718191a1b1c1d1e1f20", "6fc1b011f006568b5171a42d953d469b2570a4bd87405a0443ac91cb94", 8},
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "00000009080706a0a1a2a3a4a5", "0001020304050607", "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e", "0135d1b2c95f41d5d1d4fec185d166b8094e999dfed96c048c56602c97acbb7490", 10},
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "0000000a090807a0a1a2a3a4a5", "0001020304050607", "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "7b75399ac0831dd2f0bbd75879a2fd8f6cae6b6cd9b7db24c17b4433f434963f34b4", 10},
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "0000000b0a0908a0a1a2a3a4a5", "0001020304050607", "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20", "82531a60cc24945a4b8279181ab5c84df21ce7f9b73f42e197ea9c07e56b5eb17e5f4e", 10},
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "0000000c0b0a09a0a1a2a3a4a5", "000102030405060708090a0b", "0c0d0e0f101112131415161718191a1b1c1d1e", "07342594157785152b074098330abb141b947b566aa9406b4d999988dd", 10},
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "0000000d0c0b0aa0a1a2a3a4a5", "000102030405060708090a0b", "0c0d0e0f101112131415161718191a1b1c1d1e1f", "676bb20380b0e301e8ab79590a396da78b834934f53aa2e9107a8b6c022c", 10},
	{"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "0000000e0d0c0ba0a1a2a3a4a5", "000102030405060708090a0b", "0c0d0e0f101112131415161718191a1b1c1d1e1f20", "c0ffa0d6f05bdb67f24d43a4338d2aa4bed7b20e43cd1aa31662e7ad65d6db", 10},
	{"d7828d13b2b0bdc325a76236df93cc6b", "00412b4ea9cdbe3c9696766cfa", "0be1a88bace018b1", "08e8cf97d820ea258460e96ad9cf5289054d895ceac47c", "4cb97f86a2a4689a877947ab8091ef5386a6ffbdd080f8e78cf7cb0cddd7b3", 8},
	{"d7828d13b2b0bdc325a76236df93cc6b", "0033568ef7b2633c9696766cfa", "63018f76dc8a1bcb", "9020ea6f91bdd85afa0039ba4baff9bfb79c7028949cd0ec", "4ccb1e7ca981befaa0726c55d378061298c85c92814abc33c52ee81d7d77c08a", 8},
	{"d7828d13b2b0bdc325a76236df93cc6b", "00f8b678094e3b3c9696766cfa", "77b60f011c03e1525899bcae", "e88b6a46c78d63e52eb8c546efb5de6f75e9cc0d", "5545ff1a085ee2efbf52b2e04bee1e2336c73e3f762c0c7744fe7e3c", 8},
	{"d7828d13b2b0bdc325a76236df93cc6b", "00d560912d3f703c9696766cfa", "cd9044d2b71fdb8120ea60c0", "6435acbafb11a82e2f071d7ca4a5ebd93a803ba87f", "009769ecabdf48625594c59251e6035722675e04c847099e5ae0704551", 8},
	{"d7828d13b2b0bdc325a76236df93cc6b", "0042fff8f1951c3c9696766cfa", "d85bc7e69f944fb8", "8a19b950bcf71a018e5e6701c91787659809d67dbedd18", "bc218daa947427b6db386a99ac1aef23ade0b52939cb6a637cf9bec2408897c6ba", 10},
	{"d7828d13b2b0bdc325a76236df93cc6b", "00920f40e56cdc3c9696766cfa", "74a0ebc9069f5b37", "1761433c37c5a35fc1f39f406302eb907c6163be38c98437", "5810e6fd25874022e80361a478e3e9cf484ab04f447efff6f0a477cc2fc9bf548944", 10},
	{"d7828d13b2b0bdc325a76236df93cc6b", "0027ca0c7120bc3c9696766cfa", "44a3aa3aae6475ca", "a434a8e58500c6e41530538862d686ea9e81301b5ae4226bfa", "f2beed7bc5098e83feb5b31608f8e29c38819a89c8e776f1544d4151a4ed3a8b87b9ce", 10},
	{"d7828d13b2b0bdc325a76236df93cc6b", "005b8ccbcd9af83c9696766cfa", "ec46bb63b02520c33c49fd70", "b96b49e21d621741632875db7f6c9243d2d7c2", "31d750a09da3ed7fddd49a2032aabf17ec8ebf7d22c8088c666be5c197", 10},
	{"d7828d13b2b0bdc325a76236df93cc6b", "003ebe94044b9a3c9696766cfa", "47a65ac78b3d594227e85e71", "e2fcfbb880442c731bf95167c8ffd7895e337076", "e882f1dbd38ce3eda7c23f04dd65071eb41342acdf7e00dccec7ae52987d", 10},
	{"d7828d13b2b0bdc325a76236df93cc6b", "008d493b30ae8b3c9696766cfa", "6e37a6ef546d955d34ab6059", "abf21c0b02feb88f856df4a37381bce3cc128517d4", "f32905b88a641b04b9c9ffb58cc390900f3da12ab16dce9e82efa16da62059", 10},
}

func TestRFC3610PacketVectors(t *testing.T) {
	for i, v := range rfc3610Vectors {
		a := newAEAD(t, v.key, v.tagSize, 13)
		nonce, ad, pt, want := unhex(t, v.nonce), unhex(t, v.ad), unhex(t, v.plaintext), unhex(t, v.out)
		got := a.Seal(nil, nonce, pt, ad)
		if !bytes.Equal(got, want) {
			t.Errorf("packet vector #%d: Seal = %x, want %x", i+1, got, want)
			continue
		}
		back, err := a.Open(nil, nonce, want, ad)
		if err != nil || !bytes.Equal(back, pt) {
			t.Errorf("packet vector #%d: Open = %x, %v; want %x", i+1, back, err, pt)
		}
	}
}

// TestOSCOREAppendixC4 is RFC 8613 Appendix C.4, the protected request of
// the client whose keys Appendix C.1.1 derives: AES-CCM-16-64-128.
func TestOSCOREAppendixC4(t *testing.T) {
	a := newAEAD(t, "f0910ed7295e6ad4b54fc793154302ff", 8, 13)
	nonce := unhex(t, "4622d4dd6d944168eefb549868")
	aad := unhex(t, "8368456e63727970743040488501810a40411440")
	pt := unhex(t, "01b3747631")
	want := unhex(t, "612f1092f1776f1c1668b3825e")
	if got := a.Seal(nil, nonce, pt, aad); !bytes.Equal(got, want) {
		t.Fatalf("Seal = %x, want %x", got, want)
	}
	if got, err := a.Open(nil, nonce, want, aad); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open = %x, %v; want %x", got, err, pt)
	}
}

func TestOpenRejectsEveryChange(t *testing.T) {
	a := newAEAD(t, "f0910ed7295e6ad4b54fc793154302ff", 8, 13)
	nonce := unhex(t, "4622d4dd6d944168eefb549868")
	aad := []byte("additional data")
	sealed := a.Seal(nil, nonce, []byte("a payload longer than one block"), aad)

	for i := range sealed {
		for bit := range 8 {
			mod := bytes.Clone(sealed)
			mod[i] ^= 1 << bit
			if _, err := a.Open(nil, nonce, mod, aad); err == nil {
				t.Fatalf("flipping bit %d of byte %d was not detected", bit, i)
			}
		}
	}
	for i := range aad {
		mod := bytes.Clone(aad)
		mod[i] ^= 0x80
		if _, err := a.Open(nil, nonce, sealed, mod); err == nil {
			t.Fatalf("changing AAD byte %d was not detected", i)
		}
	}
	otherNonce := bytes.Clone(nonce)
	otherNonce[12] ^= 1
	for name, c := range map[string]struct{ nonce, ct, ad []byte }{
		"other nonce":        {otherNonce, sealed, aad},
		"short nonce":        {nonce[:12], sealed, aad},
		"no AAD":             {nonce, sealed, nil},
		"truncated":          {nonce, sealed[:len(sealed)-1], aad},
		"shorter than a tag": {nonce, sealed[:7], aad},
		"empty":              {nonce, nil, aad},
	} {
		if got, err := a.Open(nil, c.nonce, c.ct, c.ad); err == nil {
			t.Errorf("%s: Open succeeded with %x", name, got)
		}
	}
}

// TestInPlaceAndAppend checks the cipher.AEAD buffer contract: results are
// appended to dst, and dst may be the input's own storage.
func TestInPlaceAndAppend(t *testing.T) {
	a := newAEAD(t, "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", 8, 13)
	nonce := unhex(t, "00000003020100a0a1a2a3a4a5")
	for _, n := range []int{0, 1, 15, 16, 17, 64, 1000} {
		pt := make([]byte, n)
		for i := range pt {
			pt[i] = byte(i * 7)
		}
		ad := []byte{1, 2, 3}
		want := a.Seal(nil, nonce, pt, ad)

		prefix := []byte("prefix")
		got := a.Seal(bytes.Clone(prefix), nonce, pt, ad)
		if !bytes.Equal(got[:len(prefix)], prefix) || !bytes.Equal(got[len(prefix):], want) {
			t.Fatalf("n=%d: Seal did not append to dst", n)
		}

		buf := make([]byte, n, n+a.Overhead())
		copy(buf, pt)
		inPlace := a.Seal(buf[:0], nonce, buf, ad)
		if !bytes.Equal(inPlace, want) {
			t.Fatalf("n=%d: in-place Seal = %x, want %x", n, inPlace, want)
		}
		opened, err := a.Open(inPlace[:0], nonce, inPlace, ad)
		if err != nil || !bytes.Equal(opened, pt) {
			t.Fatalf("n=%d: in-place Open = %x, %v", n, opened, err)
		}
	}
}

// TestFailedOpenLeavesNoPlaintext checks that a forged message leaves no
// decrypted bytes behind in the caller's buffer.
func TestFailedOpenLeavesNoPlaintext(t *testing.T) {
	a := newAEAD(t, "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", 8, 13)
	nonce := unhex(t, "00000003020100a0a1a2a3a4a5")
	pt := bytes.Repeat([]byte("secret!"), 10)
	sealed := a.Seal(nil, nonce, pt, nil)
	sealed[len(sealed)-1] ^= 1
	dst := make([]byte, 0, len(pt))
	if _, err := a.Open(dst, nonce, sealed, nil); err == nil {
		t.Fatal("forged message opened")
	}
	if !bytes.Equal(dst[:cap(dst)], make([]byte, len(pt))) {
		t.Fatalf("failed Open left %x in dst", dst[:cap(dst)])
	}
}

// TestLongAAD exercises the 6-byte l(a) encoding (AAD of 2^16-2^8 bytes or
// more), which MQTT topics near their 65535-byte limit reach.
func TestLongAAD(t *testing.T) {
	a := newAEAD(t, "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", 8, 13)
	nonce := unhex(t, "00000003020100a0a1a2a3a4a5")
	for _, n := range []int{1<<16 - 1<<8 - 1, 1<<16 - 1<<8, 70000} {
		ad := bytes.Repeat([]byte{0x5a}, n)
		sealed := a.Seal(nil, nonce, []byte("x"), ad)
		if _, err := a.Open(nil, nonce, sealed, ad); err != nil {
			t.Fatalf("AAD of %d bytes: %v", n, err)
		}
		if _, err := a.Open(nil, nonce, sealed, ad[1:]); err == nil {
			t.Fatalf("AAD of %d bytes: a shorter AAD was accepted", n)
		}
	}
}

func TestMaximumLength(t *testing.T) {
	a := newAEAD(t, "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", 8, 13)
	nonce := unhex(t, "00000003020100a0a1a2a3a4a5")
	pt := make([]byte, 65535)
	sealed := a.Seal(nil, nonce, pt, nil)
	if _, err := a.Open(nil, nonce, sealed, nil); err != nil {
		t.Fatalf("65535-byte message: %v", err)
	}
	if _, err := a.Open(nil, nonce, append(sealed, 0), nil); err == nil {
		t.Fatal("a ciphertext longer than L=2 allows opened")
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("Seal of 65536 bytes with a 13-byte nonce did not panic")
			}
		}()
		a.Seal(nil, nonce, make([]byte, 65536), nil)
	}()
}

func TestNewRejectsBadParameters(t *testing.T) {
	b, err := aes.NewCipher(make([]byte, 16))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ tag, nonce int }{{0, 13}, {3, 13}, {5, 13}, {18, 13}, {8, 6}, {8, 14}} {
		if _, err := New(b, c.tag, c.nonce); err == nil {
			t.Errorf("New(tag %d, nonce %d) succeeded", c.tag, c.nonce)
		}
	}
	for _, c := range []struct{ tag, nonce int }{{4, 7}, {16, 13}, {8, 13}, {10, 11}} {
		if _, err := New(b, c.tag, c.nonce); err != nil {
			t.Errorf("New(tag %d, nonce %d): %v", c.tag, c.nonce, err)
		}
	}
}

func BenchmarkSeal64(b *testing.B) {
	a := newAEAD(b, "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", 8, 13)
	nonce := unhex(b, "00000003020100a0a1a2a3a4a5")
	pt, ad := make([]byte, 64), make([]byte, 48)
	buf := make([]byte, 0, 128)
	b.SetBytes(64)
	for b.Loop() {
		a.Seal(buf[:0], nonce, pt, ad)
	}
}

// TestLongAndShortCTRAgree checks the two key-stream paths against each
// other: the key stream does not depend on the message length, so a message
// above shortCTR and its prefix below it must encrypt to the same prefix.
// The RFC vectors only reach the short path.
func TestLongAndShortCTRAgree(t *testing.T) {
	a := newAEAD(t, "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", 8, 13)
	nonce := unhex(t, "00000003020100a0a1a2a3a4a5")
	long := make([]byte, 3*shortCTR+5)
	for i := range long {
		long[i] = byte(i*31 + 7)
	}
	short := long[:shortCTR-3]
	cl := a.Seal(nil, nonce, long, nil)
	cs := a.Seal(nil, nonce, short, nil)
	if !bytes.Equal(cl[:len(short)], cs[:len(short)]) {
		t.Fatal("the pipelined and the block-by-block key streams differ")
	}
}
