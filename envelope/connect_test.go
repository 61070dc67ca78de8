package envelope

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
)

func TestConnectPassword(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, MasterSecretSize)
	for _, suite := range []Suite{LegacyCBCHMAC, CCM8} {
		t.Run(suite.String(), func(t *testing.T) {
			up, err := DeriveKeys(secret, "0badf00d", 0, suite, Uplink)
			if err != nil {
				t.Fatal(err)
			}
			pw, err := ConnectPassword(up, 42)
			if err != nil {
				t.Fatal(err)
			}
			h, err := OpenConnectPassword(up, pw)
			if err != nil || h.Seq != 42 || h.Suite != suite {
				t.Fatalf("open: %+v %v", h, err)
			}
			// The same bytes are not a valid message on any real topic, and a
			// message is not a valid password.
			_, msg, _ := ParseConnectPassword(pw)
			if _, _, err := Open(up, "private/0badf00d/up/t", msg); !errors.Is(err, ErrOpen) {
				t.Error("a password opened as a message")
			}
			m, _ := Seal(up, 43, "private/0badf00d/up/t", nil)
			hexm := []byte(hexString(m))
			if _, err := OpenConnectPassword(up, hexm); !errors.Is(err, ErrOpen) {
				t.Error("a message opened as a password")
			}
			// Another device's keys, the downlink keys, and tampering all fail.
			other, _ := DeriveKeys(secret, "0badf00e", 0, suite, Uplink)
			if _, err := OpenConnectPassword(other, pw); !errors.Is(err, ErrOpen) {
				t.Error("another device's keys opened the password")
			}
			if _, err := ConnectPassword(mustKeys(t, secret, suite, Downlink), 1); err == nil {
				t.Error("a password was made with downlink keys")
			}
			for i := range pw {
				bad := append([]byte(nil), pw...)
				bad[i] = "0123456789abcdef"[(indexHex(bad[i])+1)%16]
				if _, err := OpenConnectPassword(up, bad); !errors.Is(err, ErrOpen) {
					t.Fatalf("password with digit %d changed accepted", i)
				}
			}
			for _, junk := range []string{"", "0", "zz", "ABCD", string(bytes.Repeat([]byte("a"), 400))} {
				if _, err := OpenConnectPassword(up, []byte(junk)); !errors.Is(err, ErrOpen) || ReasonOf(err) != ReasonMalformed {
					t.Errorf("junk %q: %v", junk, err)
				}
			}
		})
	}
	t.Run("sign-p256", func(t *testing.T) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		sk, _ := SignKeys(key, "0badf00d", 0, Uplink)
		vk, _ := VerifyKeys(&key.PublicKey, "0badf00d", 0, Uplink)
		pw, err := ConnectPassword(sk, 5)
		if err != nil {
			t.Fatal(err)
		}
		if len(pw) > maxConnectPassword {
			t.Fatalf("password of %d bytes exceeds the bound %d", len(pw), maxConnectPassword)
		}
		if h, err := OpenConnectPassword(vk, pw); err != nil || h.Seq != 5 {
			t.Fatalf("open: %+v %v", h, err)
		}
	})
}

func mustKeys(t *testing.T, secret []byte, s Suite, d Direction) *Keys {
	t.Helper()
	k, err := DeriveKeys(secret, "0badf00d", 0, s, d)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func indexHex(c byte) int { return bytes.IndexByte([]byte("0123456789abcdef"), c) }

func FuzzOpenConnectPassword(f *testing.F) {
	secret := bytes.Repeat([]byte{7}, MasterSecretSize)
	up, _ := DeriveKeys(secret, "0badf00d", 0, CCM8, Uplink)
	pw, _ := ConnectPassword(up, 1)
	f.Add(pw)
	f.Add([]byte("61"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, err := OpenConnectPassword(up, b)
		if err != nil && !errors.Is(err, ErrOpen) {
			t.Fatalf("error %v is not ErrOpen", err)
		}
	})
}

func TestVerifyKeysRefusesIncompleteKeys(t *testing.T) {
	for _, pub := range []*ecdsa.PublicKey{nil, {Curve: elliptic.P256()}, {Curve: elliptic.P384()}} {
		if _, err := VerifyKeys(pub, "d", 0, Uplink); err == nil {
			t.Errorf("VerifyKeys(%v) accepted", pub)
		}
	}
}
