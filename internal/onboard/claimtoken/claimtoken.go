// Package claimtoken mints and opens the claim tokens an app hands to a
// device so that Warden can bind the device to the app's user
// (docs/onboarding.md, "App claiming").
//
// A claim token is a JWE in compact serialization, alg "ECDH-ES+A256KW",
// enc "A256GCM", whose protected header holds exactly alg, enc, kid (the
// claim key's ID) and epk. It is encrypted to this server's P-256 claim key,
// so the device that carries it cannot read it. The plaintext is the JSON
// object
//
//	{"iss": key ID, "sub": user, "jti": base64url(16 random bytes), "iat": unix seconds, "exp": unix seconds}
//
// with exp at most MaxTTL after iat and no other member.
//
// ECDH-ES says nothing about who encrypted: anyone holding the claim key's
// public half could mint tokens for any user. Key therefore never exports its
// public key, and the public key must not leave the server.
//
// Open does not check single use; the caller records each token's ID
// (Claims.ID) and refuses a second use.
package claimtoken

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/warden-iot/warden/internal/fileutil"
	"github.com/warden-iot/warden/internal/keystore"
)

// MaxTTL is the longest a claim token may live. The token travels over the
// app's local link to the device and back to Warden within seconds; a short
// life limits what a leaked token is worth.
const MaxTTL = 10 * time.Minute

// MaxTokenSize bounds what Open parses. A token Mint writes is well under
// 1 KiB even for the longest user name.
const MaxTokenSize = 4096

// keyRecord names the claim key in the keystore, so a sealed blob of another
// record copied over the key file does not open as a claim key.
const keyRecord = "onboard/claim.key"

// Token algorithms: the only ones Mint writes and Open accepts.
const (
	keyAlgorithm      = jose.ECDH_ES_A256KW
	contentEncryption = jose.A256GCM
)

// iatSkew is how far in the future a token's iat may be: another Warden node
// sharing the key may mint with a slightly fast clock. No skew is allowed on
// exp, so a token never lives longer than it says.
const iatSkew = 30 * time.Second

// maxUserLen bounds Claims.User, in bytes.
const maxUserLen = 256

// jtiSize is the number of random bytes in a token ID.
const jtiSize = 16

// maxKeyFileSize bounds the sealed key file LoadOrCreate reads; a sealed
// P-256 PKCS#8 key is under 200 bytes.
const maxKeyFileSize = 64 << 10

// Compact segment sizes fixed by the algorithms: a wrapped 256-bit CEK
// (RFC 3394 adds 8 bytes), a 96-bit GCM IV and a 128-bit GCM tag.
const (
	wrappedKeySize = 40
	ivSize         = 12
	tagSize        = 16
)

// Errors Open returns. Each error from Open wraps exactly one of them; Reason
// turns them into audit reasons.
var (
	// ErrMalformed: not a compact JWE of the expected shape (five canonical
	// base64url segments, the expected header members, alg and enc), or
	// larger than MaxTokenSize.
	ErrMalformed = errors.New("claim token is malformed")
	// ErrForeign: the token names another claim key, so another server (or
	// this server before its claim key changed) issued it.
	ErrForeign = errors.New("claim token was issued by another server")
	// ErrTampered: the token does not decrypt under this server's key (its
	// ciphertext, tag, key or header was altered, or it was encrypted to
	// another key) or its plaintext is not valid claims.
	ErrTampered = errors.New("claim token was altered or is not valid")
	// ErrExpired: the token's lifetime is over, starts more than 30 seconds
	// in the future, or is longer than MaxTTL.
	ErrExpired = errors.New("claim token has expired or is not yet valid")
)

// Reason maps an error from Open to a short audit reason: "malformed",
// "foreign", "tampered", "expired", or "invalid" for anything else
// (including nil), so an audit record never carries an empty reason.
func Reason(err error) string {
	switch {
	case err == nil:
		return "invalid"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrForeign):
		return "foreign"
	case errors.Is(err, ErrTampered):
		return "tampered"
	case errors.Is(err, ErrExpired):
		return "expired"
	default:
		return "invalid"
	}
}

// Claims is what a claim token asserts: Issuer (the claim key ID) let User
// claim a device, once (ID), between IssuedAt and Expiry (whole seconds, UTC).
type Claims struct {
	Issuer   string
	User     string
	ID       string
	IssuedAt time.Time
	Expiry   time.Time
}

// Key is the server's claim key: a P-256 key that tokens are encrypted to.
// It is safe for concurrent use.
type Key struct {
	priv *ecdsa.PrivateKey
	id   string
}

// GenerateKey returns a new random claim key.
func GenerateKey() (*Key, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate claim key: %w", err)
	}
	return newKey(priv)
}

// newKey wraps a P-256 private key and computes its ID.
func newKey(priv *ecdsa.PrivateKey) (*Key, error) {
	if priv == nil || priv.Curve != elliptic.P256() {
		return nil, errors.New("claim key must be an ECDSA P-256 key")
	}
	spki, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("encode claim public key: %w", err)
	}
	sum := sha256.Sum256(spki)
	return &Key{priv: priv, id: hex.EncodeToString(sum[:16])}, nil
}

// ID is the lowercase hex SHA-256 of the public key's SPKI DER, first 16
// bytes (32 hex chars). It names the key in tokens (kid and iss) without
// revealing the public key.
func (k *Key) ID() string {
	if k == nil {
		return ""
	}
	return k.id
}

// LoadOrCreate reads the claim key sealed by ks at path or, if the file does
// not exist, generates one and writes it sealed, atomically, with mode 0600
// (missing parent directories are created with mode 0700). Two processes
// creating the key at once end up with the same key. A file that does not
// open under ks (wrong master key, corrupted or foreign file) is an error
// wrapping keystore.ErrCannotOpen; it is never replaced.
func LoadOrCreate(path string, ks *keystore.Keystore) (*Key, error) {
	if ks == nil {
		return nil, errors.New("load claim key: no keystore")
	}
	k, err := load(path, ks)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	k, err = GenerateKey()
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		return nil, fmt.Errorf("encode claim key: %w", err)
	}
	sealed, err := ks.Seal(keyRecord, der)
	clear(der)
	if err != nil {
		return nil, fmt.Errorf("seal claim key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create claim key directory: %w", err)
	}
	if err := fileutil.WriteNewFileAtomic(path, sealed, 0o600); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Another process created it first: use its key, as the
			// tokens it mints must open here too.
			return load(path, ks)
		}
		return nil, fmt.Errorf("write claim key: %w", err)
	}
	return k, nil
}

// load reads and opens the sealed key at path. A missing file gives an error
// wrapping fs.ErrNotExist.
func load(path string, ks *keystore.Keystore) (*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read claim key: %w", err)
	}
	defer f.Close()
	sealed, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read claim key %s: %w", path, err)
	}
	if len(sealed) > maxKeyFileSize {
		return nil, fmt.Errorf("claim key file %s is larger than %d bytes, so it is not a claim key; restore it from a backup", path, maxKeyFileSize)
	}
	der, err := ks.Open(keyRecord, sealed)
	if err != nil {
		return nil, fmt.Errorf("claim key file %s does not open: the master key is not the one it was sealed with, or the file is corrupted; restore the right master key or the file from a backup (deleting it invalidates outstanding claim tokens): %w", path, err)
	}
	defer clear(der)
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("claim key file %s opens but holds no PKCS#8 private key: %w", path, err)
	}
	priv, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("claim key file %s holds a %T, not an ECDSA P-256 key", path, parsed)
	}
	k, err := newKey(priv)
	if err != nil {
		return nil, fmt.Errorf("claim key file %s: %w", path, err)
	}
	return k, nil
}

// wireClaims is the token plaintext.
type wireClaims struct {
	Iss string `json:"iss"`
	Sub string `json:"sub"`
	Jti string `json:"jti"`
	Iat int64  `json:"iat"`
	Exp int64  `json:"exp"`
}

// Mint returns a token for user valid for ttl from now, and the claims it
// carries. ttl must be between one second (claims carry whole seconds) and
// MaxTTL. user is 1 to 256 bytes of valid UTF-8 without control characters.
func (k *Key) Mint(user string, ttl time.Duration, now time.Time) (string, Claims, error) {
	if k == nil || k.priv == nil {
		return "", Claims{}, errors.New("mint claim token: no claim key")
	}
	if err := checkUser(user); err != nil {
		return "", Claims{}, fmt.Errorf("mint claim token: %w", err)
	}
	if ttl < time.Second || ttl > MaxTTL {
		return "", Claims{}, fmt.Errorf("mint claim token: lifetime %v is outside 1s..%v", ttl, MaxTTL)
	}
	var raw [jtiSize]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", Claims{}, fmt.Errorf("mint claim token: token ID: %w", err)
	}
	w := wireClaims{
		Iss: k.id,
		Sub: user,
		Jti: base64.RawURLEncoding.EncodeToString(raw[:]),
		Iat: now.Unix(),
		Exp: now.Add(ttl).Unix(),
	}
	plaintext, err := json.Marshal(w)
	if err != nil {
		return "", Claims{}, fmt.Errorf("mint claim token: encode claims: %w", err)
	}
	enc, err := jose.NewEncrypter(contentEncryption, jose.Recipient{
		Algorithm: keyAlgorithm,
		Key:       &k.priv.PublicKey,
		KeyID:     k.id,
	}, nil)
	if err != nil {
		return "", Claims{}, fmt.Errorf("mint claim token: %w", err)
	}
	obj, err := enc.Encrypt(plaintext)
	if err != nil {
		return "", Claims{}, fmt.Errorf("mint claim token: encrypt: %w", err)
	}
	token, err := obj.CompactSerialize()
	if err != nil {
		return "", Claims{}, fmt.Errorf("mint claim token: serialize: %w", err)
	}
	if len(token) > MaxTokenSize {
		// Cannot happen with a 256-byte user, but Open would refuse it.
		return "", Claims{}, fmt.Errorf("mint claim token: token is %d bytes, more than the %d Open accepts", len(token), MaxTokenSize)
	}
	return token, w.claims(), nil
}

func (w wireClaims) claims() Claims {
	return Claims{
		Issuer:   w.Iss,
		User:     w.Sub,
		ID:       w.Jti,
		IssuedAt: time.Unix(w.Iat, 0).UTC(),
		Expiry:   time.Unix(w.Exp, 0).UTC(),
	}
}

// checkUser keeps user names printable: they end up in audit records and
// logs.
func checkUser(user string) error {
	if len(user) == 0 || len(user) > maxUserLen {
		return fmt.Errorf("user must be 1 to %d bytes, not %d", maxUserLen, len(user))
	}
	if !utf8.ValidString(user) {
		return errors.New("user is not valid UTF-8")
	}
	for _, r := range user {
		if unicode.IsControl(r) {
			return errors.New("user contains a control character")
		}
	}
	return nil
}

// Open parses, decrypts and checks token at now. It does not check single
// use. Every error about the token wraps exactly one of ErrMalformed,
// ErrForeign, ErrTampered and ErrExpired, and none includes the token.
func (k *Key) Open(token string, now time.Time) (Claims, error) {
	if k == nil || k.priv == nil {
		return Claims{}, errors.New("open claim token: no claim key")
	}
	if err := k.checkShape(token); err != nil {
		return Claims{}, err
	}
	obj, err := jose.ParseEncryptedCompact(token, []jose.KeyAlgorithm{keyAlgorithm}, []jose.ContentEncryption{contentEncryption})
	if err != nil {
		// checkShape accepted it, so this is a header go-jose reads
		// differently; its message may quote the header, so it is left out.
		return Claims{}, fmt.Errorf("%w: the JWE does not parse", ErrMalformed)
	}
	plaintext, err := obj.Decrypt(k.priv)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: it does not decrypt under this server's claim key", ErrTampered)
	}
	w, err := parseClaims(plaintext)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: %w", ErrTampered, err)
	}
	if w.Iss != k.id {
		return Claims{}, fmt.Errorf("%w: its issuer is not this server's claim key %s", ErrForeign, k.id)
	}
	c := w.claims()
	switch {
	case w.Exp <= w.Iat:
		return Claims{}, fmt.Errorf("%w: it expires before it is issued", ErrExpired)
	case w.Exp-w.Iat > int64(MaxTTL/time.Second):
		return Claims{}, fmt.Errorf("%w: its lifetime %v is longer than %v", ErrExpired, c.Expiry.Sub(c.IssuedAt), MaxTTL)
	case c.IssuedAt.After(now.Add(iatSkew)):
		return Claims{}, fmt.Errorf("%w: it is issued %v in the future (check the clocks)", ErrExpired, c.IssuedAt.Sub(now).Round(time.Second))
	case !now.Before(c.Expiry):
		return Claims{}, fmt.Errorf("%w: it expired at %s", ErrExpired, c.Expiry.Format(time.RFC3339))
	}
	return c, nil
}

// checkShape validates what go-jose is lenient about before it parses: the
// size, canonical base64url (go-jose ignores padding bits and line breaks,
// which would let a changed character still open), the segment sizes, and
// the protected header's exact members. It also refuses another server's
// token before any ECDH work.
func (k *Key) checkShape(token string) error {
	if len(token) > MaxTokenSize {
		return fmt.Errorf("%w: %d bytes is more than the %d allowed", ErrMalformed, len(token), MaxTokenSize)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c != '.' && !isBase64URL(c) {
			return fmt.Errorf("%w: a character at offset %d is neither base64url nor a dot", ErrMalformed, i)
		}
	}
	segs := strings.Split(token, ".")
	if len(segs) != 5 {
		return fmt.Errorf("%w: %d segments, a compact JWE has 5", ErrMalformed, len(segs))
	}
	names := [5]string{"protected header", "encrypted key", "IV", "ciphertext", "tag"}
	var dec [5][]byte
	for i, s := range segs {
		b, err := base64.RawURLEncoding.Strict().DecodeString(s)
		if err != nil {
			return fmt.Errorf("%w: the %s is not canonical base64url", ErrMalformed, names[i])
		}
		dec[i] = b
	}
	switch {
	case len(dec[0]) == 0:
		return fmt.Errorf("%w: empty protected header", ErrMalformed)
	case len(dec[1]) != wrappedKeySize:
		return fmt.Errorf("%w: the encrypted key is %d bytes, want %d", ErrMalformed, len(dec[1]), wrappedKeySize)
	case len(dec[2]) != ivSize:
		return fmt.Errorf("%w: the IV is %d bytes, want %d", ErrMalformed, len(dec[2]), ivSize)
	case len(dec[3]) == 0:
		return fmt.Errorf("%w: empty ciphertext", ErrMalformed)
	case len(dec[4]) != tagSize:
		return fmt.Errorf("%w: the tag is %d bytes, want %d", ErrMalformed, len(dec[4]), tagSize)
	}
	return k.checkHeader(dec[0])
}

func isBase64URL(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// checkHeader requires the protected header to be exactly {alg, enc, kid,
// epk} with our algorithms, a P-256 epk, and our kid. Anything else (zip,
// crit, jku, apu...) is refused rather than interpreted.
func (k *Key) checkHeader(raw []byte) error {
	var h map[string]json.RawMessage
	if err := json.Unmarshal(raw, &h); err != nil || h == nil {
		return fmt.Errorf("%w: the protected header is not a JSON object", ErrMalformed)
	}
	if len(h) != 4 {
		return fmt.Errorf("%w: the protected header has %d members, want alg, enc, kid and epk", ErrMalformed, len(h))
	}
	var alg, enc, kid string
	for name, dst := range map[string]*string{"alg": &alg, "enc": &enc, "kid": &kid} {
		v, ok := h[name]
		if !ok {
			return fmt.Errorf("%w: the protected header has no %s", ErrMalformed, name)
		}
		if err := json.Unmarshal(v, dst); err != nil {
			return fmt.Errorf("%w: the protected header's %s is not a string", ErrMalformed, name)
		}
	}
	if alg != string(keyAlgorithm) || enc != string(contentEncryption) {
		return fmt.Errorf("%w: the token is not %s with %s", ErrMalformed, keyAlgorithm, contentEncryption)
	}
	epk, ok := h["epk"]
	if !ok {
		return fmt.Errorf("%w: the protected header has no epk", ErrMalformed)
	}
	if err := checkEPK(epk); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if kid != k.id {
		if isKeyID(kid) {
			return fmt.Errorf("%w: it names claim key %s, this server's is %s", ErrForeign, kid, k.id)
		}
		return fmt.Errorf("%w: it does not name this server's claim key %s", ErrForeign, k.id)
	}
	return nil
}

// isKeyID reports whether s looks like an ID that Key.ID returns, and so is
// safe to quote in an error.
func isKeyID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// checkEPK requires the ephemeral key to be a valid P-256 point, so that no
// off-curve or foreign-curve point reaches the key agreement.
func checkEPK(raw json.RawMessage) error {
	var jwk map[string]json.RawMessage
	if err := json.Unmarshal(raw, &jwk); err != nil || jwk == nil {
		return errors.New("epk is not a JSON object")
	}
	if len(jwk) != 4 {
		return errors.New("epk must have exactly kty, crv, x and y")
	}
	fields := map[string]string{}
	for _, name := range []string{"kty", "crv", "x", "y"} {
		v, ok := jwk[name]
		var s string
		if !ok || json.Unmarshal(v, &s) != nil {
			return fmt.Errorf("epk has no string %s", name)
		}
		fields[name] = s
	}
	if fields["kty"] != "EC" || fields["crv"] != "P-256" {
		return errors.New("epk is not an EC P-256 key")
	}
	point := []byte{4}
	for _, name := range []string{"x", "y"} {
		b, err := base64.RawURLEncoding.Strict().DecodeString(fields[name])
		if err != nil || len(b) != 32 || strings.ContainsAny(fields[name], "\r\n") {
			return fmt.Errorf("epk %s is not 32 bytes of canonical base64url", name)
		}
		point = append(point, b...)
	}
	if _, err := ecdh.P256().NewPublicKey(point); err != nil {
		return errors.New("epk is not a point on P-256")
	}
	return nil
}

// parseClaims decodes the plaintext strictly: exactly the five members, each
// of the right type, no trailing data.
func parseClaims(plaintext []byte) (wireClaims, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(plaintext, &m); err != nil || m == nil {
		return wireClaims{}, errors.New("its plaintext is not a JSON object")
	}
	if len(m) != 5 {
		return wireClaims{}, fmt.Errorf("its claims have %d members, want iss, sub, jti, iat and exp", len(m))
	}
	var w wireClaims
	for name, dst := range map[string]any{"iss": &w.Iss, "sub": &w.Sub, "jti": &w.Jti, "iat": &w.Iat, "exp": &w.Exp} {
		v, ok := m[name]
		if !ok {
			return wireClaims{}, fmt.Errorf("its claims have no %s", name)
		}
		if err := json.Unmarshal(v, dst); err != nil {
			return wireClaims{}, fmt.Errorf("its %s claim has the wrong type", name)
		}
	}
	if w.Iss == "" {
		return wireClaims{}, errors.New("its iss claim is empty")
	}
	if err := checkUser(w.Sub); err != nil {
		return wireClaims{}, fmt.Errorf("its sub claim is not a valid user: %w", err)
	}
	if b, err := base64.RawURLEncoding.Strict().DecodeString(w.Jti); err != nil || len(b) != jtiSize || strings.ContainsAny(w.Jti, "\r\n") {
		return wireClaims{}, errors.New("its jti claim is not 16 bytes of base64url")
	}
	if w.Iat <= 0 || w.Exp <= 0 {
		return wireClaims{}, errors.New("its iat and exp claims must be positive")
	}
	return w, nil
}
