package keystore

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
)

func testMaster(b byte) []byte {
	return bytes.Repeat([]byte{b}, MasterKeySize)
}

func newTestKeystore(t testing.TB, b byte) *Keystore {
	t.Helper()
	ks, err := New(testMaster(b))
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func TestNewRejectsWrongKeySize(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := New(make([]byte, n)); err == nil {
			t.Errorf("New(%d-byte key) succeeded, want error", n)
		}
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	ks := newTestKeystore(t, 1)
	for _, pt := range [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte("secret"), 1000)} {
		sealed, err := ks.Seal("pki/issuing.key", pt)
		if err != nil {
			t.Fatal(err)
		}
		if len(sealed) != recordOverhead+len(pt) {
			t.Errorf("sealed length %d, want %d", len(sealed), recordOverhead+len(pt))
		}
		if sealed[0] != recordVersion1 {
			t.Errorf("version byte %#x, want %#x", sealed[0], recordVersion1)
		}
		// Only meaningful for plaintexts long enough not to occur in random
		// bytes by chance (a 1-byte one does in ~11% of records).
		if len(pt) >= 8 && bytes.Contains(sealed, pt) {
			t.Error("sealed record contains the plaintext")
		}
		got, err := ks.Open("pki/issuing.key", sealed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, pt) {
			t.Errorf("Open = %q, want %q", got, pt)
		}
	}
}

func TestSealUsesFreshNonces(t *testing.T) {
	ks := newTestKeystore(t, 1)
	a, err := ks.Seal("n", []byte("same"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ks.Seal("n", []byte("same"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a[1:1+gcmNonceSize], b[1:1+gcmNonceSize]) || bytes.Equal(a, b) {
		t.Error("two seals of the same plaintext produced the same nonce or output")
	}
}

func TestSealRejectsEmptyName(t *testing.T) {
	if _, err := newTestKeystore(t, 1).Seal("", []byte("x")); err == nil {
		t.Fatal("Seal with an empty name succeeded")
	}
}

// TestRecordFormat re-implements Open from the package documentation, so
// the documented format and the code cannot drift apart.
func TestRecordFormat(t *testing.T) {
	master := testMaster(7)
	sealed, err := newTestKeystore(t, 7).Seal("pki/root.key", []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := hkdf.Key(sha256.New, master, nil, "warden keystore v1: record sealing", 32)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	got, err := aead.Open(nil, sealed[1:13], sealed[13:], append([]byte{0x01}, "pki/root.key"...))
	if err != nil {
		t.Fatalf("documented format does not open: %v", err)
	}
	if string(got) != "hello" {
		t.Fatalf("got %q", got)
	}
}

func TestOpenFailures(t *testing.T) {
	ks := newTestKeystore(t, 1)
	other := newTestKeystore(t, 2)
	sealed, err := ks.Seal("pki/issuing.key", []byte("the issuing key"))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		c := bytes.Clone(sealed)
		c[i] ^= 0x01
		return c
	}
	tests := []struct {
		name   string
		ks     *Keystore
		record string
		sealed []byte
	}{
		{"wrong master key", other, "pki/issuing.key", sealed},
		{"wrong record name", ks, "pki/root.key", sealed},
		{"name prefix", ks, "pki/issuing.ke", sealed},
		{"flipped version", ks, "pki/issuing.key", flip(0)},
		{"flipped nonce", ks, "pki/issuing.key", flip(1)},
		{"flipped ciphertext", ks, "pki/issuing.key", flip(1 + gcmNonceSize)},
		{"flipped tag", ks, "pki/issuing.key", flip(len(sealed) - 1)},
		{"truncated", ks, "pki/issuing.key", sealed[:len(sealed)-1]},
		{"too short", ks, "pki/issuing.key", sealed[:recordOverhead-1]},
		{"empty", ks, "pki/issuing.key", nil},
		{"appended byte", ks, "pki/issuing.key", append(bytes.Clone(sealed), 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.ks.Open(tt.record, tt.sealed)
			if err == nil {
				t.Fatalf("Open succeeded with %q", got)
			}
			if !errors.Is(err, ErrCannotOpen) {
				t.Fatalf("error %v does not wrap ErrCannotOpen", err)
			}
			prefix := fmt.Sprintf("open sealed record %q: wrong master key or corrupted data", tt.record)
			if msg := err.Error(); len(msg) < len(prefix) || msg[:len(prefix)] != prefix {
				t.Fatalf("error %q does not start with %q", msg, prefix)
			}
		})
	}
}
