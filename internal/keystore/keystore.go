// Package keystore seals the secrets Warden keeps at rest (CA private keys,
// server keys, tokens) so that a copy of the data directory or a database
// dump without the master key reveals nothing.
//
// Records are sealed with AES-256-GCM under a subkey derived from the master
// key with HKDF-SHA256. The additional authenticated data names the record,
// so a sealed blob copied from one record to another (for example a device's
// secret moved into the slot of the issuing CA key) fails to open instead of
// being used in the wrong place.
//
// The sealed record format, version 1, is:
//
//	0x01 || nonce (12 random bytes) || AES-256-GCM ciphertext and 16-byte tag
//
// with key = HKDF-SHA256(secret = master key, salt = empty,
// info = "warden keystore v1: record sealing", length = 32) and
// AAD = 0x01 || record name (UTF-8).
package keystore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

const (
	recordVersion1 = 0x01
	recordKeyInfo  = "warden keystore v1: record sealing"
	gcmNonceSize   = 12
	gcmTagSize     = 16
	recordOverhead = 1 + gcmNonceSize + gcmTagSize
)

// ErrCannotOpen is wrapped by every failure to open a sealed record. GCM
// cannot tell a wrong key from a corrupted blob or a blob sealed under another
// record name, and guessing would mislead the operator, so all three share
// one error.
var ErrCannotOpen = errors.New("wrong master key or corrupted data")

// Keystore seals and opens named records under one master key. It is safe for
// concurrent use; it keeps only the derived subkey, never the master key.
type Keystore struct {
	aead cipher.AEAD
}

// New returns a Keystore for a MasterKeySize-byte master key.
func New(master []byte) (*Keystore, error) {
	if len(master) != MasterKeySize {
		return nil, fmt.Errorf("keystore: master key is %d bytes, want %d", len(master), MasterKeySize)
	}
	sub, err := hkdf.Key(sha256.New, master, nil, recordKeyInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("keystore: derive record key: %w", err)
	}
	defer clear(sub)
	aead, err := newGCM(sub)
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	return &Keystore{aead: aead}, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("create AES cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("create GCM: %w", err)
	}
	return aead, nil
}

func recordAAD(name string) []byte {
	aad := make([]byte, 0, 1+len(name))
	aad = append(aad, recordVersion1)
	return append(aad, name...)
}

// Seal encrypts plaintext as the record called name (for example
// "pki/issuing.key"). The same name must be given to Open.
func (k *Keystore) Seal(name string, plaintext []byte) ([]byte, error) {
	if name == "" {
		return nil, errors.New("seal record: the record name is empty; every sealed record needs a name")
	}
	out := make([]byte, 1+gcmNonceSize, recordOverhead+len(plaintext))
	out[0] = recordVersion1
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("seal record %q: read random nonce: %w", name, err)
	}
	nonce := out[1 : 1+gcmNonceSize]
	return k.aead.Seal(out, nonce, plaintext, recordAAD(name)), nil
}

// Open decrypts a record sealed by Seal under the same name. Any failure
// (wrong master key, corrupted blob, blob sealed under another name) wraps
// ErrCannotOpen.
func (k *Keystore) Open(name string, sealed []byte) ([]byte, error) {
	if len(sealed) < recordOverhead {
		return nil, fmt.Errorf("open sealed record %q: %w (only %d bytes, a sealed record has at least %d)", name, ErrCannotOpen, len(sealed), recordOverhead)
	}
	if sealed[0] != recordVersion1 {
		return nil, fmt.Errorf("open sealed record %q: %w (unknown format version %d; was it written by a newer Warden?)", name, ErrCannotOpen, sealed[0])
	}
	nonce := sealed[1 : 1+gcmNonceSize]
	plaintext, err := k.aead.Open(nil, nonce, sealed[1+gcmNonceSize:], recordAAD(name))
	if err != nil {
		return nil, fmt.Errorf("open sealed record %q: %w", name, ErrCannotOpen)
	}
	return plaintext, nil
}
