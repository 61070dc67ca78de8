package envelope

import "github.com/warden-iot/warden/envelope/internal/keysched"

// ccm-8 is AES-CCM-16-64-128: 16-byte key, 8-byte tag, 13-byte nonce (L=2).
const (
	ccm8TagSize   = 8
	ccm8NonceSize = keysched.CommonIVSize
)

// oscoreNonce builds the AEAD nonce as RFC 8613 §5.2 does: the sender ID's
// length, the sender ID left-padded to nonce length - 6 bytes, the Partial
// IV (sequence number) left-padded to 5 bytes, all XORed with the common IV.
func oscoreNonce(commonIV *[ccm8NonceSize]byte, senderID []byte, seq uint64) [ccm8NonceSize]byte {
	var n [ccm8NonceSize]byte
	const idField = ccm8NonceSize - 6
	n[0] = byte(len(senderID))
	copy(n[1+idField-len(senderID):1+idField], senderID)
	putUint40(n[1+idField:], seq)
	for i := range n {
		n[i] ^= commonIV[i]
	}
	return n
}

func sealCCM8(k *Keys, hdr []byte, topic string, seq uint64, plaintext []byte) []byte {
	var aadBuf [aadStack]byte
	aad := aadFor(aadBuf[:0], k, hdr, topic)
	nonce := oscoreNonce(&k.commonIV, []byte{byte(k.dir)}, seq)
	out := make([]byte, len(hdr), len(hdr)+len(plaintext)+ccm8TagSize)
	copy(out, hdr)
	return k.aead.Seal(out, nonce[:], plaintext, aad)
}

func openCCM8(k *Keys, hdr []byte, topic string, seq uint64, body []byte) ([]byte, error) {
	var aadBuf [aadStack]byte
	aad := aadFor(aadBuf[:0], k, hdr, topic)
	nonce := oscoreNonce(&k.commonIV, []byte{byte(k.dir)}, seq)
	pt, err := k.aead.Open(nil, nonce[:], body, aad)
	if err != nil {
		return nil, openError(ReasonBadTag, "%v tag does not verify", CCM8)
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, nil
}
