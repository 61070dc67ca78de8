package envelope

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Limits (docs/envelope.md, "Body and limits" and "Sequence numbers").
const (
	// MaxSeq is the last usable sequence number of a key epoch: 2^40 - 1,
	// the largest 5-byte number, as in OSCORE.
	MaxSeq = 1<<40 - 1
	// MaxPlaintext is the largest payload in every suite: the limit of CCM
	// with a 13-byte nonce.
	MaxPlaintext = 65535
	// MaxTopicLen is the longest MQTT topic name.
	MaxTopicLen = 65535
)

// Header byte layout: vv ss K lll.
const (
	version1     = 0b01
	versionShift = 6
	suiteShift   = 4
	suiteMask    = 0b11
	keyIDFlag    = 1 << 3
	seqLenMask   = 0b111
	maxSeqLen    = 5
	// maxHeaderLen is header byte + key ID + 5-byte sequence number.
	maxHeaderLen = 1 + 1 + maxSeqLen
)

// Header is what a receiver learns from a message before any cryptography.
// None of it is authenticated until Open succeeds: use it to route (pick the
// device's keys and replay window), never to act.
type Header struct {
	Suite    Suite
	HasKeyID bool   // a key ID is present: the epoch is not 0
	KeyID    uint8  // the epoch mod 256, when HasKeyID
	Seq      uint64 // the sequence number
}

// MatchesEpoch reports whether a message with this header can belong to the
// key epoch: one without a key ID belongs to epoch 0 only, one with a key ID
// to the epochs equal to it mod 256.
func (h Header) MatchesEpoch(epoch uint32) bool {
	if epoch == 0 {
		return !h.HasKeyID
	}
	return h.HasKeyID && h.KeyID == uint8(epoch)
}

// Parse reads the header, key ID and sequence number of msg and checks that
// the body's length is possible for the suite. It verifies nothing. Every
// error is an *OpenError with ReasonMalformed.
func Parse(msg []byte) (Header, error) {
	h, _, err := parse(msg)
	return h, err
}

// parse is Parse that also returns the length of the header part (header
// byte, key ID, sequence number), which begins the AAD.
func parse(msg []byte) (Header, int, error) {
	if len(msg) < 2 {
		return Header{}, 0, openError(ReasonMalformed, "%d bytes is shorter than any envelope", len(msg))
	}
	if len(msg) > maxHeaderLen+maxBody(SignP256) {
		return Header{}, 0, openError(ReasonMalformed, "%d bytes is longer than any envelope", len(msg))
	}
	b := msg[0]
	if v := b >> versionShift; v != version1 {
		return Header{}, 0, openError(ReasonMalformed, "unknown version bits %02b", v)
	}
	h := Header{Suite: Suite(b >> suiteShift & suiteMask)}
	if !h.Suite.valid() {
		return Header{}, 0, openError(ReasonMalformed, "reserved suite code %d", h.Suite)
	}
	n := 1
	if b&keyIDFlag != 0 {
		h.HasKeyID = true
		h.KeyID = msg[n]
		n++
	}
	seqLen := int(b & seqLenMask)
	if seqLen < 1 || seqLen > maxSeqLen {
		return Header{}, 0, openError(ReasonMalformed, "sequence number length %d is outside 1..5", seqLen)
	}
	if len(msg) < n+seqLen {
		return Header{}, 0, openError(ReasonMalformed, "message ends inside the sequence number")
	}
	seqBytes := msg[n : n+seqLen]
	if seqLen > 1 && seqBytes[0] == 0 {
		return Header{}, 0, openError(ReasonMalformed, "sequence number is not minimally encoded")
	}
	for _, c := range seqBytes {
		h.Seq = h.Seq<<8 | uint64(c)
	}
	n += seqLen
	if err := checkBodyLen(h.Suite, len(msg)-n); err != nil {
		return Header{}, 0, err
	}
	return h, n, nil
}

// maxBody is the largest body of a suite: a MaxPlaintext payload sealed.
func maxBody(s Suite) int {
	switch s {
	case LegacyCBCHMAC:
		return (MaxPlaintext/16+1)*16 + legacyTagSize
	case CCM8:
		return MaxPlaintext + ccm8TagSize
	default:
		return MaxPlaintext + signatureSize
	}
}

// checkBodyLen refuses a body that no plaintext could have produced, before
// any cryptography is spent on it.
func checkBodyLen(s Suite, n int) error {
	if n > maxBody(s) {
		return openError(ReasonMalformed, "%v body of %d bytes exceeds the %d-byte maximum", s, n, maxBody(s))
	}
	switch s {
	case LegacyCBCHMAC:
		if n < 16+legacyTagSize || (n-legacyTagSize)%16 != 0 {
			return openError(ReasonMalformed, "%v body of %d bytes is not whole blocks and a tag", s, n)
		}
	case CCM8:
		if n < ccm8TagSize {
			return openError(ReasonMalformed, "%v body of %d bytes is shorter than the tag", s, n)
		}
	case SignP256:
		if n < signatureSize {
			return openError(ReasonMalformed, "%v body of %d bytes is shorter than the signature", s, n)
		}
	}
	return nil
}

// appendHeader appends the header byte, the key ID (epochs other than 0)
// and the minimally encoded sequence number.
func appendHeader(b []byte, s Suite, epoch uint32, seq uint64) []byte {
	seqLen := max(1, (bits.Len64(seq)+7)/8)
	hb := byte(version1<<versionShift) | byte(s)<<suiteShift | byte(seqLen)
	if epoch != 0 {
		b = append(b, hb|keyIDFlag, byte(epoch))
	} else {
		b = append(b, hb)
	}
	for i := seqLen - 1; i >= 0; i-- {
		b = append(b, byte(seq>>(8*i)))
	}
	return b
}

// appendAAD appends the additional authenticated data (docs/envelope.md,
// "Additional authenticated data"): the header part of the message as sent,
// then the context the receiver supplies, every variable-length field
// length-prefixed and the topic last.
func appendAAD(b, header []byte, dir Direction, epoch uint32, deviceID, topic string) []byte {
	b = append(b, header...)
	b = append(b, byte(dir))
	b = binary.BigEndian.AppendUint32(b, epoch)
	b = append(b, byte(len(deviceID)))
	b = append(b, deviceID...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(topic)))
	return append(b, topic...)
}

// aadFor appends the AAD of a message with the given header part under k,
// received or sent on topic. Each suite builds its own so that the ccm-8
// path can keep it on the stack; a nil b gets exactly the capacity needed.
func aadFor(b []byte, k *Keys, header []byte, topic string) []byte {
	if b == nil {
		b = make([]byte, 0, len(header)+1+4+1+len(k.deviceID)+2+len(topic))
	}
	return appendAAD(b, header, k.dir, k.epoch, k.deviceID, topic)
}

// aadStack is enough for the AAD of a typical topic without a heap
// allocation: 7 + 1 + 4 + 1 + 64 + 2 header and context bytes, and a topic of
// up to about 170.
const aadStack = 256

func checkTopic(topic string) error {
	if len(topic) == 0 || len(topic) > MaxTopicLen {
		return fmt.Errorf("envelope: topic of %d bytes; an MQTT topic name has 1 to %d", len(topic), MaxTopicLen)
	}
	return nil
}

// Seal protects plaintext as message number seq of keys' direction and
// epoch, to be published on topic. seq must never repeat within the epoch:
// take it from a Counter. Seal fails with ErrRekeyRequired past MaxSeq.
func Seal(keys *Keys, seq uint64, topic string, plaintext []byte) ([]byte, error) {
	if keys == nil || !keys.suite.valid() {
		return nil, fmt.Errorf("envelope: Seal needs keys from DeriveKeys or SignKeys")
	}
	if seq > MaxSeq {
		return nil, fmt.Errorf("%w (sequence number %d > 2^40-1)", ErrRekeyRequired, seq)
	}
	if len(plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("envelope: payload of %d bytes exceeds the %d-byte maximum; split it", len(plaintext), MaxPlaintext)
	}
	if err := checkTopic(topic); err != nil {
		return nil, err
	}
	if keys.suite == SignP256 && keys.signer == nil {
		return nil, fmt.Errorf("envelope: these sign-p256 keys hold only a public key; sealing needs SignKeys")
	}
	var hdrBuf [maxHeaderLen]byte
	hdr := appendHeader(hdrBuf[:0], keys.suite, keys.epoch, seq)
	switch keys.suite {
	case LegacyCBCHMAC:
		return sealLegacy(keys, hdr, topic, seq, plaintext), nil
	case CCM8:
		return sealCCM8(keys, hdr, topic, seq, plaintext), nil
	default: // SignP256
		return sealSign(keys, hdr, topic, plaintext)
	}
}

// Open verifies msg as received on topic and returns its payload and
// header. It does not check replay: call a ReplayWindow's Check before and
// Commit after. Every failure is an *OpenError (errors.Is(err, ErrOpen));
// on failure the payload is nil and the Header zero.
func Open(keys *Keys, topic string, msg []byte) ([]byte, Header, error) {
	h, n, err := parse(msg)
	if err != nil {
		return nil, Header{}, err
	}
	if keys == nil {
		return nil, Header{}, openError(ReasonUnknownKey, "no keys")
	}
	if h.Suite != keys.suite {
		if h.Suite < keys.suite {
			return nil, Header{}, openError(ReasonDowngrade, "suite %v is weaker than the keys' %v", h.Suite, keys.suite)
		}
		return nil, Header{}, openError(ReasonUnknownKey, "message is %v, keys are %v", h.Suite, keys.suite)
	}
	if !h.MatchesEpoch(keys.epoch) {
		return nil, Header{}, openError(ReasonUnknownKey, "key ID does not name epoch %d", keys.epoch)
	}
	if len(topic) == 0 || len(topic) > MaxTopicLen {
		return nil, Header{}, openError(ReasonMalformed, "topic of %d bytes", len(topic))
	}
	var pt []byte
	switch h.Suite {
	case LegacyCBCHMAC:
		pt, err = openLegacy(keys, msg[:n], topic, h.Seq, msg[n:])
	case CCM8:
		pt, err = openCCM8(keys, msg[:n], topic, h.Seq, msg[n:])
	default: // SignP256
		pt, err = openSign(keys, msg[:n], topic, msg[n:])
	}
	if err != nil {
		return nil, Header{}, err
	}
	return pt, h, nil
}
