package enrollproto

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// SecretSize is the size of an enrollment secret in bytes: a full HMAC-SHA256
// key, so the proof is as strong as the MAC.
const SecretSize = 32

// proofSize is the size of a proof: one HMAC-SHA256 output.
const proofSize = sha256.Size

// proofLabel separates this use of the secret from any other, so a proof
// can never be replayed as some other MAC under the same key.
const proofLabel = "warden-enroll-v1"

// NewSecret returns a fresh enrollment secret from crypto/rand.
func NewSecret() ([]byte, error) {
	s := make([]byte, SecretSize)
	if _, err := rand.Read(s); err != nil {
		return nil, fmt.Errorf("generate enrollment secret: %w", err)
	}
	return s, nil
}

// Proof returns the enrollment proof of a CSR:
//
//	HMAC-SHA256(key = secret,
//	            msg = "warden-enroll-v1" || 0x00 || deviceID || 0x00 || csrDER)
//
// Binding the device ID and the whole CSR means a captured proof enrolls
// neither another device nor another key. The 0x00 separators are
// unambiguous because a device ID never contains one.
func Proof(secret []byte, deviceID string, csrDER []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(proofLabel))
	m.Write([]byte{0})
	m.Write([]byte(deviceID))
	m.Write([]byte{0})
	m.Write(csrDER)
	return m.Sum(nil)
}

// VerifyProof reports whether proof is Proof(secret, deviceID, csrDER),
// comparing in constant time. It is false for a secret that is not
// SecretSize bytes, since no such secret was ever issued.
func VerifyProof(secret []byte, deviceID string, csrDER, proof []byte) bool {
	if len(secret) != SecretSize || len(proof) != proofSize {
		return false
	}
	return hmac.Equal(Proof(secret, deviceID, csrDER), proof)
}

// EncodeProofHeader returns the HeaderProof value of a proof: base64url
// without padding.
func EncodeProofHeader(proof []byte) string {
	return base64.RawURLEncoding.EncodeToString(proof)
}

// DecodeProofHeader reads a HeaderProof value. It refuses anything that is
// not the canonical unpadded base64url of exactly 32 bytes.
func DecodeProofHeader(s string) ([]byte, error) {
	if want := base64.RawURLEncoding.EncodedLen(proofSize); len(s) != want {
		return nil, fmt.Errorf("%s header: %d characters, want %d (unpadded base64url of the 32-byte proof)", HeaderProof, len(s), want)
	}
	p, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s header: not unpadded base64url: %w", HeaderProof, err)
	}
	// Go's base64 decoders skip CR and LF, so 43 characters can decode to
	// fewer than 32 bytes; a header of that shape is not canonical.
	if len(p) != proofSize {
		return nil, fmt.Errorf("%s header: decodes to %d bytes, want %d (unpadded base64url without line breaks)", HeaderProof, len(p), proofSize)
	}
	return p, nil
}

// SecretFileVersion is the only SecretFile version this package reads and
// writes.
const SecretFileVersion = 1

// maxSecretFile bounds a secret file: a few hundred bytes when well formed.
const maxSecretFile = 4 << 10

// SecretFile is what `warden device preregister --enroll-secret-out FILE`
// writes and the factory programs into the device. It holds a secret: the
// writer creates it with mode 0600, and nothing logs it.
type SecretFile struct {
	Version  int    `json:"version"`   // SecretFileVersion
	DeviceID string `json:"device_id"` // the ID the secret enrolls
	Secret   []byte `json:"secret"`    // SecretSize bytes, base64 in JSON
}

// validate checks a secret file's shape, naming the field to fix.
func (f SecretFile) validate() error {
	if f.Version != SecretFileVersion {
		return fmt.Errorf("enrollment secret file: version %d is not supported (want %d)", f.Version, SecretFileVersion)
	}
	if !validDeviceID(f.DeviceID) {
		return deviceIDError("enrollment secret file", f.DeviceID)
	}
	if len(f.Secret) != SecretSize {
		return fmt.Errorf("enrollment secret file: secret is %d bytes, want %d", len(f.Secret), SecretSize)
	}
	return nil
}

// Marshal returns the file's contents: indented JSON and a final newline.
// It refuses a file that ParseSecretFile would refuse.
func (f SecretFile) Marshal() ([]byte, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("enrollment secret file: encode: %w", err)
	}
	return append(b, '\n'), nil
}

// ParseSecretFile reads a secret file strictly: at most 4 KiB, one JSON
// object with no unknown or repeated fields and nothing after it, version 1,
// a valid device ID and a SecretSize-byte secret.
func ParseSecretFile(b []byte) (SecretFile, error) {
	var f SecretFile
	if err := decodeStrictJSON(b, maxSecretFile, "enrollment secret file", &f); err != nil {
		return SecretFile{}, err
	}
	if err := f.validate(); err != nil {
		return SecretFile{}, err
	}
	return f, nil
}
