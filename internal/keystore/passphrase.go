package keystore

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/bits"
	"strconv"

	"golang.org/x/crypto/scrypt"
)

// PassphraseSealedType is the PEM block type of passphrase-sealed data.
const PassphraseSealedType = "WARDEN PASSPHRASE SEALED DATA"

// MinPassphraseLen is the shortest passphrase, in bytes, that
// SealWithPassphrase accepts. Sealed data leaves the server, so an offline
// guesser has unlimited time; scrypt slows each guess but cannot save a
// short passphrase.
const MinPassphraseLen = 12

// ErrWrongPassphrase is wrapped when passphrase-sealed data does not
// authenticate: the passphrase is wrong or the data was altered.
var ErrWrongPassphrase = errors.New("wrong passphrase or corrupted data")

// PEM header names and fixed values of format version 1.
const (
	hdrVersion = "Version"
	hdrKDF     = "KDF"
	hdrN       = "KDF-N"
	hdrR       = "KDF-r"
	hdrP       = "KDF-p"
	hdrSalt    = "KDF-Salt"
	hdrCipher  = "Cipher"

	passphraseVersion = "1"
	passphraseKDF     = "scrypt"
	passphraseCipher  = "AES-256-GCM"
	passphraseAAD     = "warden passphrase sealed data v1"
	passphraseSaltLen = 16
)

// scryptParams is the scrypt cost. It is a parameter rather than a constant
// so tests can seal cheaply; production code always uses the defaults.
type scryptParams struct {
	N, R, P int
}

// The default scrypt cost: about 128 MiB and a few hundred milliseconds per
// attempt, for the user and for a guesser alike.
const (
	defaultScryptN = 1 << 17
	defaultScryptR = 8
	defaultScryptP = 1
)

// scryptLimits bounds the cost that OpenWithPassphrase will pay for
// parameters read from the (untrusted) input, so a crafted file cannot make
// it allocate gigabytes.
type scryptLimits struct {
	maxLogN   int
	maxR      int
	maxP      int
	maxMemory int // bytes: 128 * N * r
}

// defaultScryptLimits allows eight times the default cost (1 GiB).
func defaultScryptLimits() scryptLimits {
	return scryptLimits{maxLogN: 20, maxR: 32, maxP: 16, maxMemory: 1 << 30}
}

// SealWithPassphrase encrypts plaintext under a passphrase so that it can
// leave the server (for example the root CA key going to offline storage).
// The passphrase must be at least MinPassphraseLen bytes.
//
// The output is one PEM block of type "WARDEN PASSPHRASE SEALED DATA":
//
//	-----BEGIN WARDEN PASSPHRASE SEALED DATA-----
//	Cipher: AES-256-GCM
//	KDF: scrypt
//	KDF-N: 131072
//	KDF-Salt: <standard base64 with padding of 16 random bytes>
//	KDF-p: 1
//	KDF-r: 8
//	Version: 1
//
//	<standard base64 of: nonce (12 bytes) || ciphertext || tag (16 bytes)>
//	-----END WARDEN PASSPHRASE SEALED DATA-----
//
// To open it: key = scrypt(passphrase, salt, N, r, p, 32 bytes) with the
// decimal N, r, p and the salt from the headers; then AES-256-GCM open with
// that key, the 12-byte nonce that starts the body, and the additional data
// "warden passphrase sealed data v1" (ASCII, no terminator). Header order is
// not significant; every header above is required and no other is allowed.
func SealWithPassphrase(passphrase, plaintext []byte) ([]byte, error) {
	return sealWithPassphrase(passphrase, plaintext, scryptParams{N: defaultScryptN, R: defaultScryptR, P: defaultScryptP})
}

// OpenWithPassphrase opens data sealed by SealWithPassphrase. A wrong
// passphrase or altered data gives an error wrapping ErrWrongPassphrase; a
// malformed file gives an error saying what is malformed.
func OpenWithPassphrase(passphrase, sealed []byte) ([]byte, error) {
	return openWithPassphrase(passphrase, sealed, defaultScryptLimits())
}

func checkPassphrase(passphrase []byte) error {
	if len(passphrase) == 0 {
		return errors.New("the passphrase is empty")
	}
	if len(passphrase) < MinPassphraseLen {
		return fmt.Errorf("the passphrase is %d bytes; use at least %d", len(passphrase), MinPassphraseLen)
	}
	return nil
}

func sealWithPassphrase(passphrase, plaintext []byte, params scryptParams) ([]byte, error) {
	if err := checkPassphrase(passphrase); err != nil {
		return nil, fmt.Errorf("seal with passphrase: %w", err)
	}
	salt := make([]byte, passphraseSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("seal with passphrase: read random salt: %w", err)
	}
	key, err := scrypt.Key(passphrase, salt, params.N, params.R, params.P, 32)
	if err != nil {
		return nil, fmt.Errorf("seal with passphrase: derive key: %w", err)
	}
	defer clear(key)
	aead, err := newGCM(key)
	if err != nil {
		return nil, fmt.Errorf("seal with passphrase: %w", err)
	}
	body := make([]byte, gcmNonceSize, gcmNonceSize+len(plaintext)+gcmTagSize)
	if _, err := rand.Read(body); err != nil {
		return nil, fmt.Errorf("seal with passphrase: read random nonce: %w", err)
	}
	body = aead.Seal(body, body[:gcmNonceSize], plaintext, []byte(passphraseAAD))
	block := &pem.Block{
		Type: PassphraseSealedType,
		Headers: map[string]string{
			hdrVersion: passphraseVersion,
			hdrKDF:     passphraseKDF,
			hdrN:       strconv.Itoa(params.N),
			hdrR:       strconv.Itoa(params.R),
			hdrP:       strconv.Itoa(params.P),
			hdrSalt:    base64.StdEncoding.EncodeToString(salt),
			hdrCipher:  passphraseCipher,
		},
		Bytes: body,
	}
	return pem.EncodeToMemory(block), nil
}

func openWithPassphrase(passphrase, sealed []byte, limits scryptLimits) ([]byte, error) {
	if err := checkPassphrase(passphrase); err != nil {
		return nil, fmt.Errorf("open passphrase-sealed data: %w", err)
	}
	params, salt, body, err := parsePassphraseSealed(sealed, limits)
	if err != nil {
		return nil, fmt.Errorf("open passphrase-sealed data: %w", err)
	}
	key, err := scrypt.Key(passphrase, salt, params.N, params.R, params.P, 32)
	if err != nil {
		return nil, fmt.Errorf("open passphrase-sealed data: derive key: %w", err)
	}
	defer clear(key)
	aead, err := newGCM(key)
	if err != nil {
		return nil, fmt.Errorf("open passphrase-sealed data: %w", err)
	}
	plaintext, err := aead.Open(nil, body[:gcmNonceSize], body[gcmNonceSize:], []byte(passphraseAAD))
	if err != nil {
		return nil, fmt.Errorf("open passphrase-sealed data: %w", ErrWrongPassphrase)
	}
	return plaintext, nil
}

// parsePassphraseSealed checks everything that can be checked before paying
// for scrypt.
func parsePassphraseSealed(data []byte, limits scryptLimits) (scryptParams, []byte, []byte, error) {
	var params scryptParams
	block, rest := pem.Decode(data)
	if block == nil {
		return params, nil, nil, fmt.Errorf("no PEM block found; expected %q", PassphraseSealedType)
	}
	if block.Type != PassphraseSealedType {
		return params, nil, nil, fmt.Errorf("PEM block is %q, expected %q", block.Type, PassphraseSealedType)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return params, nil, nil, errors.New("unexpected data after the PEM block")
	}
	want := map[string]bool{hdrVersion: true, hdrKDF: true, hdrN: true, hdrR: true, hdrP: true, hdrSalt: true, hdrCipher: true}
	for name := range block.Headers {
		if !want[name] {
			return params, nil, nil, fmt.Errorf("unknown header %q", name)
		}
	}
	for name := range want {
		if _, ok := block.Headers[name]; !ok {
			return params, nil, nil, fmt.Errorf("missing header %q", name)
		}
	}
	if v := block.Headers[hdrVersion]; v != passphraseVersion {
		return params, nil, nil, fmt.Errorf("unsupported version %q (this Warden reads version %s)", v, passphraseVersion)
	}
	if v := block.Headers[hdrKDF]; v != passphraseKDF {
		return params, nil, nil, fmt.Errorf("unsupported KDF %q (want %q)", v, passphraseKDF)
	}
	if v := block.Headers[hdrCipher]; v != passphraseCipher {
		return params, nil, nil, fmt.Errorf("unsupported cipher %q (want %q)", v, passphraseCipher)
	}
	var err error
	if params.N, err = parseSmallInt(block.Headers, hdrN, 1<<limits.maxLogN); err != nil {
		return params, nil, nil, err
	}
	if params.N < 2 || params.N&(params.N-1) != 0 {
		return params, nil, nil, fmt.Errorf("header %s: %d is not a power of two greater than 1", hdrN, params.N)
	}
	if params.R, err = parseSmallInt(block.Headers, hdrR, limits.maxR); err != nil {
		return params, nil, nil, err
	}
	if params.P, err = parseSmallInt(block.Headers, hdrP, limits.maxP); err != nil {
		return params, nil, nil, err
	}
	// 128*N*r bytes is what scrypt allocates.
	if hi, lo := bits.Mul64(uint64(128*params.R), uint64(params.N)); hi != 0 || lo > uint64(limits.maxMemory) {
		return params, nil, nil, fmt.Errorf("scrypt parameters N=%d r=%d need more than %d MiB; refusing", params.N, params.R, limits.maxMemory>>20)
	}
	salt, err := base64.StdEncoding.Strict().DecodeString(block.Headers[hdrSalt])
	if err != nil {
		return params, nil, nil, fmt.Errorf("header %s is not valid base64: %w", hdrSalt, err)
	}
	if len(salt) != passphraseSaltLen {
		return params, nil, nil, fmt.Errorf("header %s is %d bytes, want %d", hdrSalt, len(salt), passphraseSaltLen)
	}
	if len(block.Bytes) < gcmNonceSize+gcmTagSize {
		return params, nil, nil, fmt.Errorf("body is %d bytes, shorter than a nonce and tag (%d)", len(block.Bytes), gcmNonceSize+gcmTagSize)
	}
	return params, salt, block.Bytes, nil
}

func parseSmallInt(headers map[string]string, name string, max int) (int, error) {
	s := headers[name]
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 || v > max || strconv.Itoa(v) != s {
		return 0, fmt.Errorf("header %s: %q is not a decimal integer from 1 to %d", name, s, max)
	}
	return v, nil
}
