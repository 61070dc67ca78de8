package claimtoken

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/warden-iot/warden/internal/keystore"
)

var testNow = time.Date(2026, 11, 3, 12, 0, 0, 0, time.UTC)

func mustKey(t *testing.T) *Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustMint(t *testing.T, k *Key, user string, ttl time.Duration, now time.Time) (string, Claims) {
	t.Helper()
	tok, c, err := k.Mint(user, ttl, now)
	if err != nil {
		t.Fatalf("Mint(%q, %v): %v", user, ttl, err)
	}
	return tok, c
}

func newTestKeystore(t *testing.T, fill byte) *keystore.Keystore {
	t.Helper()
	ks, err := keystore.New(bytes.Repeat([]byte{fill}, keystore.MasterKeySize))
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// forge encrypts plaintext with go-jose directly, to build tokens that Mint
// would refuse to write.
func forge(t *testing.T, rcpt jose.Recipient, enc jose.ContentEncryption, plaintext []byte, opts *jose.EncrypterOptions) string {
	t.Helper()
	e, err := jose.NewEncrypter(enc, rcpt, opts)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := e.Encrypt(plaintext)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// to returns the recipient Mint uses for k.
func to(k *Key) jose.Recipient {
	return jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: &k.priv.PublicKey, KeyID: k.ID()}
}

// claimsJSON returns valid claims for k issued at now with lifetime ttl,
// changed by edit (which may delete or add members).
func claimsJSON(t *testing.T, k *Key, now time.Time, ttl time.Duration, edit func(m map[string]any)) []byte {
	t.Helper()
	m := map[string]any{
		"iss": k.ID(),
		"sub": "alice",
		"jti": base64.RawURLEncoding.EncodeToString(make([]byte, 16)),
		"iat": now.Unix(),
		"exp": now.Add(ttl).Unix(),
	}
	if edit != nil {
		edit(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("error = %v, want %v", err, want)
	}
	for _, other := range []error{ErrMalformed, ErrForeign, ErrTampered, ErrExpired} {
		if other != want && errors.Is(err, other) {
			t.Fatalf("error %v wraps both %v and %v", err, want, other)
		}
	}
}

func decodeSeg(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestKeyID(t *testing.T) {
	k := mustKey(t)
	spki, err := x509.MarshalPKIXPublicKey(&k.priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(spki)
	if want := hex.EncodeToString(sum[:16]); k.ID() != want {
		t.Fatalf("ID() = %s, want %s", k.ID(), want)
	}
	if !isKeyID(k.ID()) {
		t.Fatalf("ID() = %q is not 32 lowercase hex characters", k.ID())
	}
	if other := mustKey(t); other.ID() == k.ID() {
		t.Fatal("two generated keys share an ID")
	}
}

func TestMintOpenRoundTrip(t *testing.T) {
	k := mustKey(t)
	tests := []struct {
		user string
		ttl  time.Duration
	}{
		{"alice", 5 * time.Minute},
		{"bob@example.com", MaxTTL},
		{"Zoë 用户 🙂", time.Second},
		{`<script>"&'`, 90 * time.Second},
		{strings.Repeat("é", 128), MaxTTL}, // 256 bytes
		{strings.Repeat("\u2028", 85), MaxTTL},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			now := testNow.Add(700 * time.Millisecond) // not on a second boundary
			tok, minted := mustMint(t, k, tt.user, tt.ttl, now)
			if len(tok) > MaxTokenSize {
				t.Fatalf("token is %d bytes", len(tok))
			}
			want := Claims{
				Issuer:   k.ID(),
				User:     tt.user,
				ID:       minted.ID,
				IssuedAt: testNow,
				Expiry:   now.Add(tt.ttl).Truncate(time.Second),
			}
			if minted != want {
				t.Fatalf("Mint claims = %+v, want %+v", minted, want)
			}
			if b, err := base64.RawURLEncoding.DecodeString(minted.ID); err != nil || len(b) != 16 {
				t.Fatalf("ID %q is not 16 bytes of base64url", minted.ID)
			}
			got, err := k.Open(tok, now)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("Open claims = %+v, want %+v", got, want)
			}
			// The device that carries the token must not learn the user.
			for _, seg := range strings.Split(tok, ".") {
				if bytes.Contains(decodeSeg(t, seg), []byte(tt.user)) {
					t.Fatal("the token reveals the user in clear")
				}
			}
		})
	}
}

func TestMintHeader(t *testing.T) {
	k := mustKey(t)
	tok, _ := mustMint(t, k, "alice", time.Minute, testNow)
	var h map[string]any
	if err := json.Unmarshal(decodeSeg(t, strings.Split(tok, ".")[0]), &h); err != nil {
		t.Fatal(err)
	}
	if h["alg"] != "ECDH-ES+A256KW" || h["enc"] != "A256GCM" || h["kid"] != k.ID() || len(h) != 4 {
		t.Fatalf("protected header = %v", h)
	}
	epk, _ := h["epk"].(map[string]any)
	if epk["kty"] != "EC" || epk["crv"] != "P-256" {
		t.Fatalf("epk = %v", epk)
	}
}

func TestMintUniqueIDs(t *testing.T) {
	k := mustKey(t)
	seen := map[string]bool{}
	for range 50 {
		_, c := mustMint(t, k, "alice", time.Minute, testNow)
		if seen[c.ID] {
			t.Fatalf("token ID %s minted twice", c.ID)
		}
		seen[c.ID] = true
	}
}

func TestMintRefuses(t *testing.T) {
	k := mustKey(t)
	tests := []struct {
		name string
		user string
		ttl  time.Duration
	}{
		{"zero ttl", "alice", 0},
		{"negative ttl", "alice", -time.Minute},
		{"sub-second ttl", "alice", 999 * time.Millisecond},
		{"ttl over max", "alice", MaxTTL + time.Second},
		{"ttl far over max", "alice", 24 * time.Hour},
		{"empty user", "", time.Minute},
		{"user too long", strings.Repeat("a", 257), time.Minute},
		{"invalid UTF-8", "al\xffice", time.Minute},
		{"newline", "alice\nadmin", time.Minute},
		{"NUL", "alice\x00", time.Minute},
		{"DEL", "alice\x7f", time.Minute},
		{"C1 control", "alice\u0085", time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, c, err := k.Mint(tt.user, tt.ttl, testNow)
			if err == nil {
				t.Fatalf("Mint succeeded: %d-byte token, %+v", len(tok), c)
			}
			if tok != "" || c != (Claims{}) {
				t.Fatal("Mint returned a token with its error")
			}
		})
	}
	var nilKey *Key
	if _, _, err := nilKey.Mint("alice", time.Minute, testNow); err == nil {
		t.Fatal("Mint on a nil key succeeded")
	}
	if _, err := nilKey.Open("x", testNow); err == nil {
		t.Fatal("Open on a nil key succeeded")
	}
}

func TestOpenTimes(t *testing.T) {
	k := mustKey(t)
	minted, _ := mustMint(t, k, "alice", 5*time.Minute, testNow)
	forged := func(iat time.Time, ttl time.Duration) string {
		return forge(t, to(k), jose.A256GCM, claimsJSON(t, k, iat, ttl, nil), nil)
	}
	tests := []struct {
		name  string
		token string
		now   time.Time
		want  error
	}{
		{"at issue", minted, testNow, nil},
		{"one second before expiry", minted, testNow.Add(5*time.Minute - time.Second), nil},
		{"just before expiry", minted, testNow.Add(5*time.Minute - time.Nanosecond), nil},
		{"at expiry", minted, testNow.Add(5 * time.Minute), ErrExpired},
		{"long expired", minted, testNow.Add(48 * time.Hour), ErrExpired},
		{"verifier clock 30s behind", minted, testNow.Add(-30 * time.Second), nil},
		{"verifier clock 31s behind", minted, testNow.Add(-31 * time.Second), ErrExpired},
		{"iat 30s in the future", forged(testNow.Add(30*time.Second), time.Minute), testNow, nil},
		{"iat 31s in the future", forged(testNow.Add(31*time.Second), time.Minute), testNow, ErrExpired},
		{"iat a day in the future", forged(testNow.Add(24*time.Hour), time.Minute), testNow, ErrExpired},
		{"lifetime exactly MaxTTL", forged(testNow, MaxTTL), testNow, nil},
		{"lifetime over MaxTTL", forged(testNow, MaxTTL+time.Second), testNow, ErrExpired},
		{"lifetime a year", forged(testNow, 365*24*time.Hour), testNow, ErrExpired},
		{"exp equals iat", forged(testNow, 0), testNow.Add(-time.Second), ErrExpired},
		{"exp before iat", forged(testNow, -time.Minute), testNow.Add(-2 * time.Minute), ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := k.Open(tt.token, tt.now)
			wantErr(t, err, tt.want)
			if err == nil && (c.User != "alice" || !c.Expiry.After(c.IssuedAt)) {
				t.Fatalf("claims = %+v", c)
			}
			if err != nil && c != (Claims{}) {
				t.Fatal("Open returned claims with its error")
			}
		})
	}
}

func TestOpenForgedClaims(t *testing.T) {
	k := mustKey(t)
	other := mustKey(t)
	plain := func(edit func(m map[string]any)) []byte { return claimsJSON(t, k, testNow, time.Minute, edit) }
	tests := []struct {
		name      string
		plaintext []byte
		want      error
	}{
		{"valid", plain(nil), nil},
		{"missing sub", plain(func(m map[string]any) { delete(m, "sub") }), ErrTampered},
		{"empty sub", plain(func(m map[string]any) { m["sub"] = "" }), ErrTampered},
		{"null sub", plain(func(m map[string]any) { m["sub"] = nil }), ErrTampered},
		{"sub with control char", plain(func(m map[string]any) { m["sub"] = "a\nb" }), ErrTampered},
		{"sub too long", plain(func(m map[string]any) { m["sub"] = strings.Repeat("a", 257) }), ErrTampered},
		{"sub not a string", plain(func(m map[string]any) { m["sub"] = 42 }), ErrTampered},
		{"missing jti", plain(func(m map[string]any) { delete(m, "jti") }), ErrTampered},
		{"empty jti", plain(func(m map[string]any) { m["jti"] = "" }), ErrTampered},
		{"short jti", plain(func(m map[string]any) { m["jti"] = "AAAA" }), ErrTampered},
		{"padded jti", plain(func(m map[string]any) { m["jti"] = base64.URLEncoding.EncodeToString(make([]byte, 16)) }), ErrTampered},
		{"missing iss", plain(func(m map[string]any) { delete(m, "iss") }), ErrTampered},
		{"empty iss", plain(func(m map[string]any) { m["iss"] = "" }), ErrTampered},
		{"other iss", plain(func(m map[string]any) { m["iss"] = other.ID() }), ErrForeign},
		{"missing iat", plain(func(m map[string]any) { delete(m, "iat") }), ErrTampered},
		{"missing exp", plain(func(m map[string]any) { delete(m, "exp") }), ErrTampered},
		{"iat as string", plain(func(m map[string]any) { m["iat"] = fmt.Sprint(testNow.Unix()) }), ErrTampered},
		{"fractional exp", plain(func(m map[string]any) { m["exp"] = float64(testNow.Unix()) + 30.5 }), ErrTampered},
		{"zero iat", plain(func(m map[string]any) { m["iat"] = 0 }), ErrTampered},
		{"unknown field", plain(func(m map[string]any) { m["admin"] = true }), ErrTampered},
		{"upper-case member", plain(func(m map[string]any) { m["SUB"] = m["sub"]; delete(m, "sub") }), ErrTampered},
		{"not JSON", []byte("alice"), ErrTampered},
		{"JSON array", []byte(`["alice"]`), ErrTampered},
		{"JSON null", []byte(`null`), ErrTampered},
		{"trailing data", append(plain(nil), []byte(`{}`)...), ErrTampered},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := forge(t, to(k), jose.A256GCM, tt.plaintext, nil)
			_, err := k.Open(tok, testNow)
			wantErr(t, err, tt.want)
		})
	}
}

func TestOpenWrongAlgorithms(t *testing.T) {
	k := mustKey(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pt := claimsJSON(t, k, testNow, time.Minute, nil)
	withHeader := func(name jose.HeaderKey, v any) *jose.EncrypterOptions {
		return (&jose.EncrypterOptions{}).WithHeader(name, v)
	}
	tests := []struct {
		name  string
		rcpt  jose.Recipient
		enc   jose.ContentEncryption
		opts  *jose.EncrypterOptions
		plain []byte
	}{
		{"enc A128GCM", to(k), jose.A128GCM, nil, pt},
		{"enc A256CBC-HS512", to(k), jose.A256CBC_HS512, nil, pt},
		{"alg ECDH-ES direct", jose.Recipient{Algorithm: jose.ECDH_ES, Key: &k.priv.PublicKey, KeyID: k.ID()}, jose.A256GCM, nil, pt},
		{"alg ECDH-ES+A128KW", jose.Recipient{Algorithm: jose.ECDH_ES_A128KW, Key: &k.priv.PublicKey, KeyID: k.ID()}, jose.A256GCM, nil, pt},
		{"alg dir", jose.Recipient{Algorithm: jose.DIRECT, Key: bytes.Repeat([]byte{7}, 32), KeyID: k.ID()}, jose.A256GCM, nil, pt},
		{"alg A256KW", jose.Recipient{Algorithm: jose.A256KW, Key: bytes.Repeat([]byte{7}, 32), KeyID: k.ID()}, jose.A256GCM, nil, pt},
		{"alg RSA-OAEP-256", jose.Recipient{Algorithm: jose.RSA_OAEP_256, Key: &rsaKey.PublicKey, KeyID: k.ID()}, jose.A256GCM, nil, pt},
		{"compressed", to(k), jose.A256GCM, &jose.EncrypterOptions{Compression: jose.DEFLATE}, pt},
		{"typ header", to(k), jose.A256GCM, withHeader("typ", "JWT"), pt},
		{"crit header", to(k), jose.A256GCM, withHeader("crit", []string{"exp"}), pt},
		{"no kid", jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: &k.priv.PublicKey}, jose.A256GCM, nil, pt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := forge(t, tt.rcpt, tt.enc, tt.plain, tt.opts)
			_, err := k.Open(tok, testNow)
			wantErr(t, err, ErrMalformed)
		})
	}
}

func TestOpenForeign(t *testing.T) {
	k := mustKey(t)
	other := mustKey(t)
	tok, _ := mustMint(t, other, "alice", time.Minute, testNow)
	_, err := k.Open(tok, testNow)
	wantErr(t, err, ErrForeign)
	if !strings.Contains(err.Error(), other.ID()) || !strings.Contains(err.Error(), k.ID()) {
		t.Fatalf("error %q should name both key IDs", err)
	}
	// The other server still opens its own token.
	if _, err := other.Open(tok, testNow); err != nil {
		t.Fatal(err)
	}
	// A kid that is not a key ID is not quoted.
	odd := forge(t, jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: &k.priv.PublicKey, KeyID: "\u202eevil"}, jose.A256GCM, claimsJSON(t, k, testNow, time.Minute, nil), nil)
	_, err = k.Open(odd, testNow)
	wantErr(t, err, ErrForeign)
	if strings.Contains(err.Error(), "evil") {
		t.Fatalf("error %q quotes an untrusted kid", err)
	}
}

func TestOpenOurKidOtherKey(t *testing.T) {
	k := mustKey(t)
	other := mustKey(t)

	// Encrypted to another key but labelled with ours.
	rcpt := jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: &other.priv.PublicKey, KeyID: k.ID()}
	tok := forge(t, rcpt, jose.A256GCM, claimsJSON(t, k, testNow, time.Minute, nil), nil)
	_, err := k.Open(tok, testNow)
	wantErr(t, err, ErrTampered)

	// Another server's real token with its kid rewritten to ours.
	theirs, _ := mustMint(t, other, "alice", time.Minute, testNow)
	segs := strings.Split(theirs, ".")
	var h map[string]json.RawMessage
	if err := json.Unmarshal(decodeSeg(t, segs[0]), &h); err != nil {
		t.Fatal(err)
	}
	h["kid"], _ = json.Marshal(k.ID())
	hb, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	segs[0] = base64.RawURLEncoding.EncodeToString(hb)
	_, err = k.Open(strings.Join(segs, "."), testNow)
	wantErr(t, err, ErrTampered)
}

// TestOpenByteFlips changes one character of a valid token at every
// position, several ways: nothing may open, and every error must be one of
// the token errors.
func TestOpenByteFlips(t *testing.T) {
	k := mustKey(t)
	tok, _ := mustMint(t, k, "alice", time.Minute, testNow)
	if _, err := k.Open(tok, testNow); err != nil {
		t.Fatal(err)
	}
	segOf := make([]int, len(tok))
	seg := 0
	for i := range tok {
		if tok[i] == '.' {
			seg++
		}
		segOf[i] = seg
	}
	counts := map[string]int{}
	for i := range len(tok) {
		for _, mask := range []byte{0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80} {
			b := []byte(tok)
			b[i] ^= mask
			_, err := k.Open(string(b), testNow)
			if err == nil {
				t.Fatalf("token with byte %d (segment %d) xor %#x opened", i, segOf[i], mask)
			}
			if !errors.Is(err, ErrTampered) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrForeign) {
				t.Fatalf("byte %d xor %#x: error %v is not a token error", i, mask, err)
			}
			counts[fmt.Sprintf("segment %d: %s", segOf[i], Reason(err))]++
		}
	}
	// Each segment's bytes are covered, and flips past the header reach
	// decryption rather than all stopping at parsing.
	for s := range 5 {
		if counts[fmt.Sprintf("segment %d: malformed", s)] == 0 {
			t.Errorf("no flip in segment %d was reported malformed", s)
		}
	}
	for s := 1; s < 5; s++ {
		if counts[fmt.Sprintf("segment %d: tampered", s)] == 0 {
			t.Errorf("no flip in segment %d reached decryption", s)
		}
	}
	t.Logf("outcomes: %v", counts)

	// Truncating or extending any segment by one character never opens.
	segs := strings.Split(tok, ".")
	for s := range segs {
		for _, edit := range []func(string) string{
			func(x string) string { return x[:len(x)-1] },
			func(x string) string { return x + "A" },
			func(x string) string { return x + "==" },
			func(x string) string { return x[:len(x)/2] + "\n" + x[len(x)/2:] },
		} {
			c := append([]string(nil), segs...)
			c[s] = edit(c[s])
			if _, err := k.Open(strings.Join(c, "."), testNow); err == nil {
				t.Fatalf("edited segment %d opened", s)
			}
		}
	}
}

// TestOpenNonCanonicalBase64 respells a segment's final character with
// different unused low bits: it decodes to the same bytes under lenient
// base64, so only the canonical-encoding check stops it opening.
func TestOpenNonCanonicalBase64(t *testing.T) {
	k := mustKey(t)
	tok, _ := mustMint(t, k, "alice", time.Minute, testNow)
	segs := strings.Split(tok, ".")
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	respelled := 0
	for s, seg := range segs {
		if len(seg)%4 == 0 {
			continue // no unused bits
		}
		want := decodeSeg(t, seg)
		for _, c := range alphabet {
			if byte(c) == seg[len(seg)-1] {
				continue
			}
			alt := seg[:len(seg)-1] + string(c)
			got, err := base64.RawURLEncoding.DecodeString(alt)
			if err != nil || !bytes.Equal(got, want) {
				continue
			}
			respelled++
			cp := append([]string(nil), segs...)
			cp[s] = alt
			_, err = k.Open(strings.Join(cp, "."), testNow)
			wantErr(t, err, ErrMalformed)
		}
	}
	if respelled == 0 {
		t.Fatal("no segment could be respelled; the test exercised nothing")
	}
}

func TestOpenMalformed(t *testing.T) {
	k := mustKey(t)
	tok, _ := mustMint(t, k, "alice", time.Minute, testNow)
	segs := strings.Split(tok, ".")
	withSeg := func(i int, v string) string {
		c := append([]string(nil), segs...)
		c[i] = v
		return strings.Join(c, ".")
	}
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(decodeSeg(t, segs[0]), &hdr); err != nil {
		t.Fatal(err)
	}
	withHeader := func(edit func(h map[string]json.RawMessage)) string {
		h := map[string]json.RawMessage{}
		for name, v := range hdr {
			h[name] = v
		}
		edit(h)
		b, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		return withSeg(0, base64.RawURLEncoding.EncodeToString(b))
	}
	offCurve := fmt.Sprintf(`{"kty":"EC","crv":"P-256","x":%q,"y":%q}`, b64(strings.Repeat("\x01", 32)), b64(strings.Repeat("\x02", 32)))
	tests := []struct {
		name  string
		token string
	}{
		{"empty", ""},
		{"four segments", strings.Join(segs[:4], ".")},
		{"six segments", tok + ".AAAA"},
		{"oversized", tok + strings.Repeat("A", MaxTokenSize)},
		{"oversized garbage", strings.Repeat("A", MaxTokenSize+1)},
		{"leading space", " " + tok},
		{"trailing newline", tok + "\n"},
		{"padding", withSeg(4, segs[4]+"==")},
		{"standard base64 characters", withSeg(3, strings.NewReplacer("-", "+", "_", "/").Replace(segs[3])+"+/")},
		{"non-ASCII", withSeg(3, segs[3]+"é")},
		{"JSON serialization", `{"protected":"` + segs[0] + `"}`},
		{"empty header", withSeg(0, "")},
		{"header not JSON", withSeg(0, b64("alg"))},
		{"header array", withSeg(0, b64(`["alg"]`))},
		{"header null", withSeg(0, b64(`null`))},
		{"empty encrypted key", withSeg(1, "")},
		{"short encrypted key", withSeg(1, b64(strings.Repeat("k", 32)))},
		{"short IV", withSeg(2, b64("iv"))},
		{"empty ciphertext", withSeg(3, "")},
		{"short tag", withSeg(4, b64("tag"))},
		{"alg none", withHeader(func(h map[string]json.RawMessage) { h["alg"] = json.RawMessage(`"none"`) })},
		{"alg not a string", withHeader(func(h map[string]json.RawMessage) { h["alg"] = json.RawMessage(`1`) })},
		{"enc A128GCM", withHeader(func(h map[string]json.RawMessage) { h["enc"] = json.RawMessage(`"A128GCM"`) })},
		{"missing epk", withHeader(func(h map[string]json.RawMessage) { delete(h, "epk"); h["cty"] = json.RawMessage(`"x"`) })},
		{"extra zip", withHeader(func(h map[string]json.RawMessage) { h["zip"] = json.RawMessage(`"DEF"`) })},
		{"extra apu", withHeader(func(h map[string]json.RawMessage) { h["apu"] = json.RawMessage(`"AAAA"`) })},
		{"epk off curve", withHeader(func(h map[string]json.RawMessage) { h["epk"] = json.RawMessage(offCurve) })},
		{"epk P-384", withHeader(func(h map[string]json.RawMessage) {
			h["epk"] = json.RawMessage(strings.Replace(string(h["epk"]), "P-256", "P-384", 1))
		})},
		{"epk extra member", withHeader(func(h map[string]json.RawMessage) {
			h["epk"] = json.RawMessage(strings.Replace(string(h["epk"]), `{`, `{"d":"AAAA",`, 1))
		})},
		{"epk not an object", withHeader(func(h map[string]json.RawMessage) { h["epk"] = json.RawMessage(`"EC"`) })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := k.Open(tt.token, testNow)
			wantErr(t, err, ErrMalformed)
			if c != (Claims{}) {
				t.Fatal("Open returned claims with its error")
			}
			if len(tt.token) > 20 && strings.Contains(err.Error(), tt.token) {
				t.Fatal("the error quotes the token")
			}
		})
	}
}

func TestErrorsDoNotQuoteToken(t *testing.T) {
	k := mustKey(t)
	other := mustKey(t)
	tok, _ := mustMint(t, other, "alice", time.Minute, testNow)
	good, _ := mustMint(t, k, "alice", time.Minute, testNow)
	segs := strings.Split(good, ".")
	segs[3] = "A" + segs[3][1:]
	for _, bad := range []string{tok, strings.Join(segs, ".")} {
		_, err := k.Open(bad, testNow)
		if err == nil {
			t.Fatal("opened")
		}
		for _, seg := range strings.Split(bad, ".") {
			if len(seg) > 8 && strings.Contains(err.Error(), seg) {
				t.Fatalf("error %q quotes a token segment", err)
			}
		}
	}
	_, err := k.Open(good, testNow.Add(time.Hour))
	wantErr(t, err, ErrExpired)
	if strings.Contains(err.Error(), "alice") {
		t.Fatalf("error %q names the user", err)
	}
}

func TestReason(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{ErrMalformed, "malformed"},
		{ErrForeign, "foreign"},
		{ErrTampered, "tampered"},
		{ErrExpired, "expired"},
		{fmt.Errorf("%w: detail", ErrTampered), "tampered"},
		{fmt.Errorf("outer: %w", fmt.Errorf("%w: detail", ErrExpired)), "expired"},
		{errors.New("disk full"), "invalid"},
		{nil, "invalid"},
	}
	for _, tt := range tests {
		if got := Reason(tt.err); got != tt.want {
			t.Errorf("Reason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}

	// The reasons of real refusals.
	k := mustKey(t)
	other := mustKey(t)
	tok, _ := mustMint(t, k, "alice", time.Minute, testNow)
	theirs, _ := mustMint(t, other, "alice", time.Minute, testNow)
	segs := strings.Split(tok, ".")
	segs[4] = strings.Repeat("A", len(segs[4]))
	for token, want := range map[string]string{
		"garbage":               "malformed",
		theirs:                  "foreign",
		strings.Join(segs, "."): "tampered",
	} {
		_, err := k.Open(token, testNow)
		if got := Reason(err); got != want {
			t.Errorf("Reason(%v) = %q, want %q", err, got, want)
		}
	}
	_, err := k.Open(tok, testNow.Add(time.Hour))
	if got := Reason(err); got != "expired" {
		t.Errorf("Reason(%v) = %q, want expired", err, got)
	}
}

func TestLoadOrCreate(t *testing.T) {
	ks := newTestKeystore(t, 1)
	path := filepath.Join(t.TempDir(), "keys", "claim.key")

	k1, err := LoadOrCreate(path, ks)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, want 0600", fi.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k1.priv)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, der) || bytes.Contains(raw, k1.priv.D.Bytes()) {
		t.Fatal("the key file holds the private key in clear")
	}

	k2, err := LoadOrCreate(path, ks)
	if err != nil {
		t.Fatal(err)
	}
	if k2.ID() != k1.ID() {
		t.Fatalf("reloaded ID %s, created %s", k2.ID(), k1.ID())
	}
	tok, _ := mustMint(t, k1, "alice", time.Minute, testNow)
	if _, err := k2.Open(tok, testNow); err != nil {
		t.Fatalf("reloaded key cannot open a token of the original: %v", err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, after) {
		t.Fatal("reloading rewrote the key file")
	}
}

func TestLoadOrCreateRefuses(t *testing.T) {
	ks := newTestKeystore(t, 1)
	dir := t.TempDir()
	good := filepath.Join(dir, "claim.key")
	if _, err := LoadOrCreate(good, ks); err != nil {
		t.Fatal(err)
	}
	sealed, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)/2] ^= 1
	otherRecord, err := ks.Seal("pki/issuing.key", []byte("not this"))
	if err != nil {
		t.Fatal(err)
	}
	notAKey, err := ks.Seal(keyRecord, []byte("not a key"))
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, err := x509.MarshalPKCS8PrivateKey(rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaSealed, err := ks.Seal(keyRecord, rsaDER)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384DER, err := x509.MarshalPKCS8PrivateKey(p384)
	if err != nil {
		t.Fatal(err)
	}
	p384Sealed, err := ks.Seal(keyRecord, p384DER)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		path       string
		ks         *keystore.Keystore
		cannotOpen bool   // the error must wrap keystore.ErrCannotOpen
		mention    string // and say this
	}{
		{"wrong master key", good, newTestKeystore(t, 2), true, "master key"},
		{"corrupted", write("flipped.key", flipped), ks, true, "corrupted"},
		{"truncated", write("truncated.key", sealed[:10]), ks, true, "corrupted"},
		{"empty", write("empty.key", nil), ks, true, "corrupted"},
		{"another record", write("other.key", otherRecord), ks, true, "does not open"},
		{"not a key", write("notakey.key", notAKey), ks, false, "PKCS#8"},
		{"RSA key", write("rsa.key", rsaSealed), ks, false, "P-256"},
		{"P-384 key", write("p384.key", p384Sealed), ks, false, "P-256"},
		{"oversized", write("big.key", make([]byte, maxKeyFileSize+1)), ks, false, "larger"},
		{"a directory", dir, ks, false, "claim key"},
		{"no keystore", good, nil, false, "keystore"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := os.ReadFile(tt.path)
			k, err := LoadOrCreate(tt.path, tt.ks)
			if err == nil {
				t.Fatalf("loaded key %s", k.ID())
			}
			if tt.cannotOpen != errors.Is(err, keystore.ErrCannotOpen) {
				t.Fatalf("error %v: wraps ErrCannotOpen = %v, want %v", err, !tt.cannotOpen, tt.cannotOpen)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %q does not mention %q", err, tt.mention)
			}
			if errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("error %v claims the file is missing", err)
			}
			after, _ := os.ReadFile(tt.path)
			if !bytes.Equal(before, after) {
				t.Fatal("a key file that did not load was replaced")
			}
		})
	}
}

// TestLoadOrCreateConcurrent: processes starting together must agree on one
// key, or tokens minted by one would not open on the other.
func TestLoadOrCreateConcurrent(t *testing.T) {
	ks := newTestKeystore(t, 1)
	path := filepath.Join(t.TempDir(), "claim.key")
	const n = 8
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			k, err := LoadOrCreate(path, ks)
			errs[i] = err
			if err == nil {
				ids[i] = k.ID()
			}
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if ids[i] != ids[0] {
			t.Fatalf("LoadOrCreate %d got key %s, %d got %s", i, ids[i], 0, ids[0])
		}
	}
	k, err := LoadOrCreate(path, ks)
	if err != nil {
		t.Fatal(err)
	}
	if k.ID() != ids[0] {
		t.Fatalf("file holds key %s, callers got %s", k.ID(), ids[0])
	}
}
