package keystore

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/scrypt"
)

// cheapScrypt keeps tests fast; the format is identical at any cost.
var cheapScrypt = scryptParams{N: 1 << 4, R: 8, P: 1}

var testPassphrase = []byte("correct horse battery staple")

func sealCheap(t testing.TB, plaintext []byte) []byte {
	t.Helper()
	sealed, err := sealWithPassphrase(testPassphrase, plaintext, cheapScrypt)
	if err != nil {
		t.Fatal(err)
	}
	return sealed
}

func TestPassphraseRoundTrip(t *testing.T) {
	for _, pt := range [][]byte{{}, []byte("root key"), bytes.Repeat([]byte{0xAB}, 4096)} {
		sealed := sealCheap(t, pt)
		got, err := OpenWithPassphrase(testPassphrase, sealed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("round trip changed the data")
		}
	}
}

func TestPassphraseDefaultCost(t *testing.T) {
	if testing.Short() {
		t.Skip("default scrypt cost takes about 128 MiB and a second")
	}
	sealed, err := SealWithPassphrase(testPassphrase, []byte("root key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(sealed)
	if block == nil || block.Headers[hdrN] != "131072" || block.Headers[hdrR] != "8" || block.Headers[hdrP] != "1" {
		t.Fatalf("default parameters not N=2^17 r=8 p=1: %v", block)
	}
	got, err := OpenWithPassphrase(testPassphrase, sealed)
	if err != nil || string(got) != "root key" {
		t.Fatalf("OpenWithPassphrase = %q, %v", got, err)
	}
}

// TestPassphraseFormat opens sealed data following only the doc comment of
// SealWithPassphrase, so the documentation stays precise enough to
// re-implement.
func TestPassphraseFormat(t *testing.T) {
	sealed := sealCheap(t, []byte("plain"))
	block, rest := pem.Decode(sealed)
	if block == nil || block.Type != "WARDEN PASSPHRASE SEALED DATA" || len(rest) != 0 {
		t.Fatalf("not a single WARDEN PASSPHRASE SEALED DATA block: %q", sealed)
	}
	wantHeaders := map[string]string{"Version": "1", "KDF": "scrypt", "Cipher": "AES-256-GCM", "KDF-N": "16", "KDF-r": "8", "KDF-p": "1"}
	for k, v := range wantHeaders {
		if block.Headers[k] != v {
			t.Errorf("header %s = %q, want %q", k, block.Headers[k], v)
		}
	}
	if len(block.Headers) != 7 {
		t.Errorf("%d headers, want 7: %v", len(block.Headers), block.Headers)
	}
	salt, err := base64.StdEncoding.DecodeString(block.Headers["KDF-Salt"])
	if err != nil || len(salt) != 16 {
		t.Fatalf("salt %q: %v", block.Headers["KDF-Salt"], err)
	}
	n, _ := strconv.Atoi(block.Headers["KDF-N"])
	key, err := scrypt.Key(testPassphrase, salt, n, 8, 1, 32)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(c)
	got, err := aead.Open(nil, block.Bytes[:12], block.Bytes[12:], []byte("warden passphrase sealed data v1"))
	if err != nil || string(got) != "plain" {
		t.Fatalf("documented format does not open: %q, %v", got, err)
	}
}

func TestPassphraseRules(t *testing.T) {
	for _, p := range [][]byte{nil, {}, []byte("short"), []byte("elevenbytes")} {
		if _, err := SealWithPassphrase(p, []byte("x")); err == nil {
			t.Errorf("SealWithPassphrase accepted a %d-byte passphrase", len(p))
		}
		if _, err := OpenWithPassphrase(p, sealCheap(t, []byte("x"))); err == nil {
			t.Errorf("OpenWithPassphrase accepted a %d-byte passphrase", len(p))
		}
	}
	if _, err := sealWithPassphrase([]byte("twelve bytes"), []byte("x"), cheapScrypt); err != nil {
		t.Errorf("a 12-byte passphrase was refused: %v", err)
	}
}

func TestOpenWithWrongPassphrase(t *testing.T) {
	sealed := sealCheap(t, []byte("secret"))
	_, err := OpenWithPassphrase([]byte("correct horse battery stapl3"), sealed)
	if !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("error %v does not wrap ErrWrongPassphrase", err)
	}
}

// rewrite decodes sealed, lets edit change the block, and re-encodes it.
func rewrite(t *testing.T, sealed []byte, edit func(*pem.Block)) []byte {
	t.Helper()
	block, _ := pem.Decode(sealed)
	if block == nil {
		t.Fatal("no PEM block")
	}
	edit(block)
	return pem.EncodeToMemory(block)
}

func TestOpenWithPassphraseMalformed(t *testing.T) {
	sealed := sealCheap(t, []byte("secret"))
	tests := []struct {
		name    string
		data    []byte
		wantErr string
		wrong   bool // must fail as ErrWrongPassphrase rather than as malformed
	}{
		{"empty", nil, "no PEM block", false},
		{"garbage", []byte("hello"), "no PEM block", false},
		{"other type", rewrite(t, sealed, func(b *pem.Block) { b.Type = "PRIVATE KEY" }), "expected", false},
		{"trailing data", append(bytes.Clone(sealed), "junk"...), "after the PEM block", false},
		{"two blocks", append(bytes.Clone(sealed), sealed...), "after the PEM block", false},
		{"unknown header", rewrite(t, sealed, func(b *pem.Block) { b.Headers["Comment"] = "x" }), "unknown header", false},
		{"missing salt", rewrite(t, sealed, func(b *pem.Block) { delete(b.Headers, hdrSalt) }), "missing header", false},
		{"version 2", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrVersion] = "2" }), "unsupported version", false},
		{"other kdf", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrKDF] = "argon2id" }), "unsupported KDF", false},
		{"other cipher", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrCipher] = "AES-128-GCM" }), "unsupported cipher", false},
		{"N not power of two", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrN] = "24" }), "power of two", false},
		{"N one", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrN] = "1" }), "power of two", false},
		{"N huge", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrN] = "4294967296" }), "KDF-N", false},
		{"N leading zero", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrN] = "016" }), "KDF-N", false},
		{"N negative", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrN] = "-16" }), "KDF-N", false},
		{"memory too large", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrN] = "1048576"; b.Headers[hdrR] = "16" }), "MiB", false},
		{"r zero", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrR] = "0" }), "KDF-r", false},
		{"p huge", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrP] = "1000" }), "KDF-p", false},
		{"salt not base64", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrSalt] = "***" }), "base64", false},
		{"salt short", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrSalt] = "AAAA" }), "want 16", false},
		{"body short", rewrite(t, sealed, func(b *pem.Block) { b.Bytes = b.Bytes[:27] }), "shorter than", false},
		{"body flipped", rewrite(t, sealed, func(b *pem.Block) { b.Bytes[len(b.Bytes)-1] ^= 1 }), "wrong passphrase", true},
		{"salt changed", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrSalt] = base64.StdEncoding.EncodeToString(make([]byte, 16)) }), "wrong passphrase", true},
		{"N changed", rewrite(t, sealed, func(b *pem.Block) { b.Headers[hdrN] = "32" }), "wrong passphrase", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := OpenWithPassphrase(testPassphrase, tt.data)
			if err == nil {
				t.Fatalf("opened %q", got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
			if errors.Is(err, ErrWrongPassphrase) != tt.wrong {
				t.Fatalf("errors.Is(ErrWrongPassphrase) = %v, want %v (%v)", !tt.wrong, tt.wrong, err)
			}
		})
	}
}
