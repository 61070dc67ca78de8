package envelope

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"hash"

	"github.com/warden-iot/warden/envelope/internal/ccm"
	"github.com/warden-iot/warden/envelope/internal/keysched"
	"github.com/warden-iot/warden/internal/identity"
)

// MasterSecretSize is the size of a device's master secret: exactly 16
// random bytes per key epoch.
const MasterSecretSize = 16

// NewMasterSecret returns a fresh random master secret. A master secret must
// never be derived from the device ID or anything else an attacker could
// guess.
func NewMasterSecret() ([]byte, error) {
	b := make([]byte, MasterSecretSize)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("envelope: generate master secret: %w", err)
	}
	return b, nil
}

// Keys protect one direction of one device's messages in one key epoch with
// one suite. A device holds uplink keys to seal and downlink keys to open;
// Warden the reverse. One direction per value means a Keys can never be used
// for the wrong direction by mistake, and the same value serves both the
// sealing and the opening end.
//
// Keys are immutable and safe for concurrent use. They never print their
// secrets.
type Keys struct {
	suite    Suite
	dir      Direction
	deviceID string
	epoch    uint32

	// legacy-cbc-hmac
	block  cipher.Block // AES-128 under enc_key
	macKey []byte
	mac    hash.Cloner // HMAC-SHA256 keyed with macKey, cloned per message; nil if cloning is unavailable

	// ccm-8
	aead     *ccm.AEAD
	commonIV [keysched.CommonIVSize]byte

	// sign-p256
	signer crypto.Signer // nil for keys that only verify
	pub    *ecdsa.PublicKey
}

// DeriveKeys runs the key schedule (docs/envelope.md, "Key schedule") for
// one direction of a symmetric suite (LegacyCBCHMAC or CCM8).
func DeriveKeys(masterSecret []byte, deviceID string, epoch uint32, suite Suite, dir Direction) (*Keys, error) {
	if len(masterSecret) != MasterSecretSize {
		return nil, fmt.Errorf("envelope: master secret is %d bytes; it must be exactly %d random bytes", len(masterSecret), MasterSecretSize)
	}
	k, err := newKeys(suite, deviceID, epoch, dir)
	if err != nil {
		return nil, err
	}
	var alg int64
	switch suite {
	case LegacyCBCHMAC:
		alg = keysched.AlgLegacyCBCHMAC
	case CCM8:
		alg = keysched.AlgCCM8
	default:
		return nil, fmt.Errorf("envelope: suite %v has no master secret; use SignKeys or VerifyKeys with the key pair", suite)
	}
	m, _, err := keysched.ForDirection(masterSecret, deviceID, epoch, alg, byte(dir))
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	block, err := aes.NewCipher(m.EncKey)
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	switch suite {
	case LegacyCBCHMAC:
		k.block, k.macKey = block, m.MACKey
		// Keying HMAC costs two SHA-256 compressions; a keyed prototype is
		// cloned instead. Hashes cannot be cloned under GOFIPS140=v1.0.0,
		// where legacyTag keys a fresh HMAC per message.
		if c, ok := hmac.New(sha256.New, m.MACKey).(hash.Cloner); ok {
			k.mac = c
		}
	case CCM8:
		if k.aead, err = ccm.New(block, ccm8TagSize, ccm8NonceSize); err != nil {
			return nil, fmt.Errorf("envelope: %w", err)
		}
		copy(k.commonIV[:], m.CommonIV)
	}
	return k, nil
}

// SignKeys returns sign-p256 keys that seal (and open) with signer, whose
// public key must be ECDSA P-256. Any crypto.Signer works, so the key may
// live in a secure element: a device signs its uplinks with its own key;
// Warden signs downlinks to sign-p256 devices with its envelope key, which
// those devices pin.
func SignKeys(signer crypto.Signer, deviceID string, epoch uint32, dir Direction) (*Keys, error) {
	if signer == nil {
		return nil, fmt.Errorf("envelope: sign-p256 needs a signer")
	}
	pub, ok := signer.Public().(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("envelope: sign-p256 needs an ECDSA P-256 key, not %T", signer.Public())
	}
	k, err := VerifyKeys(pub, deviceID, epoch, dir)
	if err != nil {
		return nil, err
	}
	k.signer = signer
	return k, nil
}

// VerifyKeys returns sign-p256 keys that only open: they verify the sender's
// signatures with its public key and cannot seal.
func VerifyKeys(pub *ecdsa.PublicKey, deviceID string, epoch uint32, dir Direction) (*Keys, error) {
	if pub == nil || pub.Curve != elliptic.P256() || pub.X == nil || pub.Y == nil {
		return nil, fmt.Errorf("envelope: sign-p256 needs an ECDSA P-256 public key")
	}
	if _, err := pub.Bytes(); err != nil {
		return nil, fmt.Errorf("envelope: sign-p256 public key is not a valid P-256 point: %w", err)
	}
	k, err := newKeys(SignP256, deviceID, epoch, dir)
	if err != nil {
		return nil, err
	}
	k.pub = pub
	return k, nil
}

func newKeys(suite Suite, deviceID string, epoch uint32, dir Direction) (*Keys, error) {
	if err := identity.ValidateDeviceID(deviceID); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	if !dir.valid() {
		return nil, fmt.Errorf("envelope: %v is not Uplink or Downlink", dir)
	}
	if !suite.valid() {
		return nil, fmt.Errorf("envelope: %v is not a suite", suite)
	}
	return &Keys{suite: suite, dir: dir, deviceID: deviceID, epoch: epoch}, nil
}

// Suite returns the suite the keys are for.
func (k *Keys) Suite() Suite { return k.suite }

// Direction returns the direction the keys protect.
func (k *Keys) Direction() Direction { return k.dir }

// DeviceID returns the device the keys belong to.
func (k *Keys) DeviceID() string { return k.deviceID }

// Epoch returns the key epoch.
func (k *Keys) Epoch() uint32 { return k.epoch }

// String describes the keys without any secret, so that logging a Keys by
// mistake leaks nothing.
func (k *Keys) String() string {
	if k == nil {
		return "envelope.Keys(nil)"
	}
	return fmt.Sprintf("envelope.Keys{%v %v device=%s epoch=%d}", k.suite, k.dir, k.deviceID, k.epoch)
}

// GoString is String, so that %#v does not print the secrets either.
func (k *Keys) GoString() string { return k.String() }
