package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"hash"
)

// legacyTagSize is HMAC-SHA256 truncated to 16 bytes (RFC 7518 §5.2.3).
const legacyTagSize = 16

// legacyIV is E(enc_key, u8(direction) || 00×10 || u40(seq)): NIST SP
// 800-38A Appendix C's first method. The block is unique per message, so the
// IV is unpredictable without the key and never repeats; it is not sent.
func legacyIV(k *Keys, seq uint64) [aes.BlockSize]byte {
	var iv [aes.BlockSize]byte
	iv[0] = byte(k.dir)
	putUint40(iv[11:], seq)
	k.block.Encrypt(iv[:], iv[:])
	return iv
}

// legacyTag is the first 16 bytes of HMAC-SHA256(mac_key, AAD || ciphertext
// || u64(8·len(AAD))); the trailing length is RFC 7518's AL.
func legacyTag(k *Keys, aad, ciphertext []byte) []byte {
	var m hash.Hash
	if k.mac != nil {
		if c, err := k.mac.Clone(); err == nil {
			m = c
		}
	}
	if m == nil {
		m = hmac.New(sha256.New, k.macKey)
	}
	m.Write(aad)
	m.Write(ciphertext)
	var al [8]byte
	binary.BigEndian.PutUint64(al[:], uint64(len(aad))*8)
	m.Write(al[:])
	return m.Sum(nil)[:legacyTagSize]
}

func sealLegacy(k *Keys, hdr []byte, topic string, seq uint64, plaintext []byte) []byte {
	aad := aadFor(nil, k, hdr, topic)
	p := aes.BlockSize - len(plaintext)%aes.BlockSize // PKCS#7: 1..16, always present
	ctLen := len(plaintext) + p
	out := make([]byte, len(hdr)+ctLen, len(hdr)+ctLen+legacyTagSize)
	copy(out, hdr)
	ct := out[len(hdr):]
	copy(ct, plaintext)
	for i := len(plaintext); i < ctLen; i++ {
		ct[i] = byte(p)
	}
	iv := legacyIV(k, seq)
	cipher.NewCBCEncrypter(k.block, iv[:]).CryptBlocks(ct, ct)
	return append(out, legacyTag(k, aad, ct)...)
}

func openLegacy(k *Keys, hdr []byte, topic string, seq uint64, body []byte) ([]byte, error) {
	aad := aadFor(nil, k, hdr, topic)
	ct, tag := body[:len(body)-legacyTagSize], body[len(body)-legacyTagSize:]
	// The tag is checked, in constant time, before a single block is
	// decrypted: no padding oracle, no decryption of forgeries.
	if !hmac.Equal(legacyTag(k, aad, ct), tag) {
		return nil, openError(ReasonBadTag, "%v tag does not verify", LegacyCBCHMAC)
	}
	pt := make([]byte, len(ct))
	iv := legacyIV(k, seq)
	cipher.NewCBCDecrypter(k.block, iv[:]).CryptBlocks(pt, ct)
	if !validPadding(pt) {
		clear(pt)
		return nil, openError(ReasonBadPadding, "authenticated message has invalid PKCS#7 padding")
	}
	return pt[:len(pt)-int(pt[len(pt)-1])], nil
}

// validPadding checks PKCS#7 padding of a non-empty whole-block buffer. It
// runs after the tag verified, so its timing cannot serve as an oracle; it
// is constant-time anyway, as cheap insurance.
func validPadding(b []byte) bool {
	p := int(b[len(b)-1])
	good := subtle.ConstantTimeLessOrEq(1, p) & subtle.ConstantTimeLessOrEq(p, aes.BlockSize)
	for i := 1; i <= aes.BlockSize; i++ {
		inPad := subtle.ConstantTimeLessOrEq(i, p)
		same := subtle.ConstantTimeByteEq(b[len(b)-i], byte(p))
		good &= same | (inPad ^ 1)
	}
	return good == 1
}

func putUint40(b []byte, v uint64) {
	b[0] = byte(v >> 32)
	b[1] = byte(v >> 24)
	b[2] = byte(v >> 16)
	b[3] = byte(v >> 8)
	b[4] = byte(v)
}
