package firmware

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"strings"
)

// KeyType names a kind of release key.
type KeyType string

// The release key types: the two MCUboot signature types Warden supports
// (imgtool keygen -t ecdsa-p256 / -t ed25519).
const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyEd25519   KeyType = "ed25519"
)

// keyKind is the kind of a checked public key.
type keyKind int

const (
	kindECDSAP256 keyKind = iota + 1
	kindEd25519
)

func (k keyKind) String() string {
	switch k {
	case kindECDSAP256:
		return string(KeyECDSAP256)
	case kindEd25519:
		return string(KeyEd25519)
	}
	return "unknown"
}

// publicKind checks that pub is a usable P-256 or Ed25519 public key.
func publicKind(pub crypto.PublicKey) (keyKind, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.Curve != elliptic.P256() {
			return 0, fmt.Errorf("%w: ECDSA key is not on P-256", ErrUnsupportedKey)
		}
		// ECDH rejects the point at infinity and points off the curve,
		// which a hand-built PublicKey could carry.
		if _, err := k.ECDH(); err != nil {
			return 0, fmt.Errorf("%w: invalid P-256 public key: %v", ErrUnsupportedKey, err)
		}
		return kindECDSAP256, nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return 0, fmt.Errorf("%w: Ed25519 public key is %d bytes, want %d", ErrUnsupportedKey, len(k), ed25519.PublicKeySize)
		}
		return kindEd25519, nil
	case nil:
		return 0, fmt.Errorf("%w: no key", ErrUnsupportedKey)
	}
	return 0, fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
}

// signerKind checks a signer by its public half, so that keys held in an
// HSM or a KMS (any crypto.Signer) work as well as in-memory keys.
func signerKind(s crypto.Signer) (keyKind, crypto.PublicKey, error) {
	if s == nil {
		return 0, nil, fmt.Errorf("%w: no signer", ErrUnsupportedKey)
	}
	pub := s.Public()
	kind, err := publicKind(pub)
	if err != nil {
		return 0, nil, err
	}
	return kind, pub, nil
}

// GenerateKey generates a release key of type t from crypto/rand. The
// result is an *ecdsa.PrivateKey or an ed25519.PrivateKey. A release key
// belongs on the release manager's machine or in an HSM, never on the
// Warden server.
func GenerateKey(t KeyType) (crypto.Signer, error) {
	switch t {
	case KeyECDSAP256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("firmware: generate ECDSA P-256 key: %w", err)
		}
		return k, nil
	case KeyEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("firmware: generate Ed25519 key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("%w: key type %q (want %q or %q)", ErrUnsupportedKey, t, KeyECDSAP256, KeyEd25519)
}

// MarshalPrivateKey encodes a P-256 or Ed25519 private key as unencrypted
// PKCS#8 DER, the format imgtool keygen writes (inside a "PRIVATE KEY" PEM
// block).
func MarshalPrivateKey(k crypto.Signer) ([]byte, error) {
	switch key := k.(type) {
	case *ecdsa.PrivateKey:
		if key == nil {
			return nil, fmt.Errorf("%w: no key", ErrUnsupportedKey)
		}
		if _, err := publicKind(&key.PublicKey); err != nil {
			return nil, err
		}
	case ed25519.PrivateKey:
		if len(key) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("%w: Ed25519 private key is %d bytes, want %d", ErrUnsupportedKey, len(key), ed25519.PrivateKeySize)
		}
	default:
		return nil, fmt.Errorf("%w: cannot export %T (only in-memory P-256 and Ed25519 keys)", ErrUnsupportedKey, k)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("%w: encode private key: %v", ErrMalformed, err)
	}
	return der, nil
}

// ParsePrivateKey decodes an unencrypted PKCS#8 DER private key and accepts
// only P-256 ECDSA and Ed25519 keys.
func ParsePrivateKey(der []byte) (crypto.Signer, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: private key is not PKCS#8 DER: %v", ErrMalformed, err)
	}
	switch key := k.(type) {
	case *ecdsa.PrivateKey:
		if _, err := publicKind(&key.PublicKey); err != nil {
			return nil, err
		}
		return key, nil
	case ed25519.PrivateKey:
		return key, nil
	}
	return nil, fmt.Errorf("%w: private key is %T", ErrUnsupportedKey, k)
}

// MarshalPublicKey encodes a P-256 or Ed25519 public key as DER
// SubjectPublicKeyInfo: the bytes MCUboot keeps in its key table and hashes
// to find the key an image names.
func MarshalPublicKey(pub crypto.PublicKey) ([]byte, error) {
	if _, err := publicKind(pub); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: encode public key: %v", ErrUnsupportedKey, err)
	}
	return der, nil
}

// ParsePublicKey decodes a DER SubjectPublicKeyInfo and accepts only P-256
// ECDSA and Ed25519 keys. It refuses any encoding other than the one
// MarshalPublicKey produces, so that the key hash of a parsed key is the
// hash of the bytes that were parsed.
func ParsePublicKey(der []byte) (crypto.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: public key is not DER SubjectPublicKeyInfo: %v", ErrMalformed, err)
	}
	if _, err := publicKind(pub); err != nil {
		return nil, err
	}
	canon, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil || !bytes.Equal(canon, der) {
		// For example a compressed P-256 point: MCUboot's parsers expect
		// the uncompressed form, and the key hash would differ.
		return nil, fmt.Errorf("%w: public key is not in canonical SubjectPublicKeyInfo form (uncompressed point, no parameters for Ed25519)", ErrMalformed)
	}
	return pub, nil
}

const pemPublicKey = "PUBLIC KEY"

// EncodePublicKeyPEM encodes a P-256 or Ed25519 public key as a PEM
// "PUBLIC KEY" block, the format imgtool getpub -e pem writes.
func EncodePublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := MarshalPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: der}), nil
}

// ParsePublicKeyPEM decodes exactly one PEM "PUBLIC KEY" block (surrounding
// whitespace allowed, nothing else) holding a P-256 or Ed25519 key.
func ParsePublicKeyPEM(b []byte) (crypto.PublicKey, error) {
	b = bytes.TrimSpace(b)
	if !bytes.HasPrefix(b, []byte("-----BEGIN ")) {
		return nil, fmt.Errorf("%w: no PEM block at the start of the data", ErrMalformed)
	}
	block, rest := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block found", ErrMalformed)
	}
	if block.Type != pemPublicKey {
		return nil, fmt.Errorf("%w: PEM block is %q, want %q", ErrMalformed, block.Type, pemPublicKey)
	}
	if len(block.Headers) != 0 {
		return nil, fmt.Errorf("%w: PEM public key has headers", ErrMalformed)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: data after the PEM public key", ErrMalformed)
	}
	return ParsePublicKey(block.Bytes)
}

// KeyHash returns SHA-256 of the key's DER SubjectPublicKeyInfo. It is what
// imgtool writes into the key hash TLV (0x01), what MCUboot computes over
// each key in its table to find the one an image names, and the kid of a
// release statement.
func KeyHash(pub crypto.PublicKey) ([32]byte, error) {
	der, err := MarshalPublicKey(pub)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(der), nil
}

// KeyID returns the lowercase hex of KeyHash: how Warden names a release
// key in its store, its API and its logs.
func KeyID(pub crypto.PublicKey) (string, error) {
	h, err := KeyHash(pub)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h[:]), nil
}

// PublicKeyCArray returns C source declaring the key's DER
// SubjectPublicKeyInfo the way imgtool getpub prints it:
//
//	const unsigned char <name>_pub_key[] = { 0x30, ... };
//	const unsigned int <name>_pub_key_len = N;
//
// With name "ecdsa" (P-256) or "ed25519" it can replace the file MCUboot's
// Zephyr port generates from CONFIG_BOOT_SIGNATURE_KEY_FILE
// (boot/zephyr/keys.c refers to ecdsa_pub_key / ed25519_pub_key). name
// must be a C identifier.
func PublicKeyCArray(pub crypto.PublicKey, name string) (string, error) {
	if !isCIdentifier(name) {
		return "", fmt.Errorf("%w: %q is not a C identifier", ErrMalformed, name)
	}
	der, err := MarshalPublicKey(pub)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("/* Autogenerated by Warden (firmware.PublicKeyCArray), do not edit. */\n")
	fmt.Fprintf(&b, "const unsigned char %s_pub_key[] = {", name)
	for i, c := range der {
		if i%8 == 0 {
			b.WriteString("\n    ")
		} else {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "0x%02x,", c)
	}
	b.WriteString("\n};\n")
	fmt.Fprintf(&b, "const unsigned int %s_pub_key_len = %d;\n", name, len(der))
	return b.String(), nil
}

func isCIdentifier(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
