package envelope

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"fmt"
	"math/big"
)

// signatureSize is r || s, each a 32-byte big-endian integer.
const signatureSize = 64

// signContext prefixes what sign-p256 signs, so that an envelope signature
// is never valid in another protocol the same key signs for (a CSR, a TLS
// handshake, a sign-up proof).
const signContext = "warden-envelope-v1/sign-p256"

// signDigest is SHA-256(signContext || AAD || plaintext).
func signDigest(aad, plaintext []byte) []byte {
	h := sha256.New()
	h.Write([]byte(signContext))
	h.Write(aad)
	h.Write(plaintext)
	return h.Sum(nil)
}

func sealSign(k *Keys, hdr []byte, topic string, plaintext []byte) ([]byte, error) {
	aad := aadFor(nil, k, hdr, topic)
	der, err := k.signer.Sign(rand.Reader, signDigest(aad, plaintext), crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("envelope: sign-p256: %w", err)
	}
	// crypto.Signer returns ECDSA signatures as ASN.1 DER; the envelope
	// carries the fixed 64-byte form an MCU can handle without ASN.1.
	var sig struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &sig); err != nil || len(rest) != 0 ||
		sig.R.Sign() <= 0 || sig.S.Sign() <= 0 || sig.R.BitLen() > 256 || sig.S.BitLen() > 256 {
		return nil, fmt.Errorf("envelope: sign-p256: the signer returned a malformed ECDSA P-256 signature")
	}
	out := make([]byte, len(hdr)+len(plaintext)+signatureSize)
	n := copy(out, hdr)
	n += copy(out[n:], plaintext)
	sig.R.FillBytes(out[n : n+32])
	sig.S.FillBytes(out[n+32:])
	return out, nil
}

func openSign(k *Keys, hdr []byte, topic string, body []byte) ([]byte, error) {
	aad := aadFor(nil, k, hdr, topic)
	pt, sig := body[:len(body)-signatureSize], body[len(body)-signatureSize:]
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	// Verify refuses r or s outside 1..n-1.
	if !ecdsa.Verify(k.pub, signDigest(aad, pt), r, s) {
		return nil, openError(ReasonBadTag, "%v signature does not verify", SignP256)
	}
	return append([]byte{}, pt...), nil
}
