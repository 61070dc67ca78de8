package firmware_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/warden-iot/warden/firmware"
)

func TestKeyRoundTrips(t *testing.T) {
	for _, typ := range []firmware.KeyType{firmware.KeyECDSAP256, firmware.KeyEd25519} {
		t.Run(string(typ), func(t *testing.T) {
			k, err := firmware.GenerateKey(typ)
			if err != nil {
				t.Fatal(err)
			}
			der, err := firmware.MarshalPrivateKey(k)
			if err != nil {
				t.Fatal(err)
			}
			k2, err := firmware.ParsePrivateKey(der)
			if err != nil {
				t.Fatal(err)
			}
			pubDER, err := firmware.MarshalPublicKey(k.Public())
			if err != nil {
				t.Fatal(err)
			}
			pub2DER, _ := firmware.MarshalPublicKey(k2.Public())
			if !bytes.Equal(pubDER, pub2DER) {
				t.Fatal("private key round trip changed the public key")
			}
			pub, err := firmware.ParsePublicKey(pubDER)
			if err != nil {
				t.Fatal(err)
			}
			pemBytes, err := firmware.EncodePublicKeyPEM(pub)
			if err != nil || !bytes.HasPrefix(pemBytes, []byte("-----BEGIN PUBLIC KEY-----\n")) {
				t.Fatalf("PEM %q, %v", pemBytes, err)
			}
			pub3, err := firmware.ParsePublicKeyPEM(append(append([]byte("\n\t"), pemBytes...), "\n\n"...))
			if err != nil {
				t.Fatal(err)
			}
			h, err := firmware.KeyHash(pub3)
			if err != nil || h != sha256.Sum256(pubDER) {
				t.Fatalf("KeyHash = %x, %v; want SHA-256 of the SubjectPublicKeyInfo", h, err)
			}
			id, err := firmware.KeyID(pub)
			if err != nil || id != hex.EncodeToString(h[:]) || id != strings.ToLower(id) {
				t.Fatalf("KeyID = %q, %v", id, err)
			}
			// A key signs what its parsed public half verifies.
			img := mustParse(t, mustSign(t, []byte("k"), k2, firmware.SignOptions{}))
			if err := img.Verify(pub3); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := firmware.GenerateKey("rsa-2048"); err == nil {
		t.Error("GenerateKey(rsa-2048) succeeded")
	}
}

func TestKeyParsersRefuse(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256 := fixedP256(t, "refuse")
	rsaPKCS8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	p384PKCS8, _ := x509.MarshalPKCS8PrivateKey(p384)
	sec1, _ := x509.MarshalECPrivateKey(p256)
	rsaSPKI, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	p384SPKI, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	good, _ := x509.MarshalPKIXPublicKey(&p256.PublicKey)

	for name, tc := range map[string]struct {
		der  []byte
		want error
	}{
		"rsa":          {rsaPKCS8, firmware.ErrUnsupportedKey},
		"p384":         {p384PKCS8, firmware.ErrUnsupportedKey},
		"sec1 not p8":  {sec1, firmware.ErrMalformed},
		"garbage":      {[]byte("not a key"), firmware.ErrMalformed},
		"empty":        {nil, firmware.ErrMalformed},
		"public as p8": {good, firmware.ErrMalformed},
	} {
		_, err := firmware.ParsePrivateKey(tc.der)
		wantErr(t, err, tc.want, "ParsePrivateKey "+name)
	}

	// A compressed P-256 point: a different encoding of the same key would
	// give a different key hash.
	compressed := elliptic.MarshalCompressed(elliptic.P256(), p256.X, p256.Y)
	spkiCompressed := append(append([]byte(nil), good[:26]...), compressed...)
	spkiCompressed[1] = byte(len(spkiCompressed) - 2)
	spkiCompressed[24] = byte(len(compressed) + 1)
	for name, tc := range map[string]struct {
		der  []byte
		want error
	}{
		"rsa":         {rsaSPKI, firmware.ErrUnsupportedKey},
		"p384":        {p384SPKI, firmware.ErrUnsupportedKey},
		"trailing":    {append(bytes.Clone(good), 0), firmware.ErrMalformed},
		"truncated":   {good[:len(good)-1], firmware.ErrMalformed},
		"compressed":  {spkiCompressed, firmware.ErrMalformed},
		"private DER": {sec1, firmware.ErrMalformed},
	} {
		_, err := firmware.ParsePublicKey(tc.der)
		wantErr(t, err, tc.want, "ParsePublicKey "+name)
	}

	goodPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: good})
	for name, in := range map[string][]byte{
		"empty":          nil,
		"not PEM":        []byte("hello"),
		"private block":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: good}),
		"headers":        pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Headers: map[string]string{"a": "b"}, Bytes: good}),
		"two blocks":     append(bytes.Clone(goodPEM), goodPEM...),
		"trailing text":  append(bytes.Clone(goodPEM), "junk"...),
		"leading text":   append([]byte("junk\n"), goodPEM...),
		"rsa public key": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaSPKI}),
	} {
		if _, err := firmware.ParsePublicKeyPEM(in); err == nil {
			t.Errorf("ParsePublicKeyPEM %s succeeded", name)
		}
	}

	for name, pub := range map[string]any{
		"rsa": &rsaKey.PublicKey, "p384": &p384.PublicKey, "nil": nil, "short ed25519": ed25519.PublicKey{1, 2},
		"private": p256, "off curve": &ecdsa.PublicKey{Curve: elliptic.P256(), X: p256.X, Y: p256.X},
	} {
		_, err := firmware.KeyHash(pub)
		wantErr(t, err, firmware.ErrUnsupportedKey, "KeyHash "+name)
		_, err = firmware.EncodePublicKeyPEM(pub)
		wantErr(t, err, firmware.ErrUnsupportedKey, "EncodePublicKeyPEM "+name)
	}
	_, err = firmware.MarshalPrivateKey(rsaKey)
	wantErr(t, err, firmware.ErrUnsupportedKey, "MarshalPrivateKey rsa")
	_, err = firmware.MarshalPrivateKey(hsm{p256})
	wantErr(t, err, firmware.ErrUnsupportedKey, "MarshalPrivateKey opaque")
}

func TestPublicKeyCArray(t *testing.T) {
	for _, k := range testKeys(t) {
		der, _ := firmware.MarshalPublicKey(k.pub)
		name := map[string]string{"ecdsa-p256": "ecdsa", "ed25519": "ed25519"}[k.name]
		src, err := firmware.PublicKeyCArray(k.pub, name)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(src, "\n"), "\n")
		if !strings.HasPrefix(lines[0], "/* ") || lines[1] != fmt.Sprintf("const unsigned char %s_pub_key[] = {", name) ||
			lines[len(lines)-2] != "};" || lines[len(lines)-1] != fmt.Sprintf("const unsigned int %s_pub_key_len = %d;", name, len(der)) {
			t.Fatalf("layout:\n%s", src)
		}
		// imgtool's layout: 8 bytes a line, four spaces, each "0x.." with a comma.
		line := regexp.MustCompile(`^    0x[0-9a-f]{2},( 0x[0-9a-f]{2},){0,7}$`)
		var got []byte
		for i, l := range lines[2 : len(lines)-2] {
			if !line.MatchString(l) || (i < len(lines)-5 && strings.Count(l, "0x") != 8) {
				t.Fatalf("line %q", l)
			}
			for _, f := range strings.Fields(l) {
				b, err := hex.DecodeString(strings.TrimSuffix(strings.TrimPrefix(f, "0x"), ","))
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, b...)
			}
		}
		if !bytes.Equal(got, der) {
			t.Errorf("%s: array holds % x, want % x", k.name, got, der)
		}
	}
	for _, bad := range []string{"", "1key", "my-key", "a b", "ключ", strings.Repeat("a", 65)} {
		if _, err := firmware.PublicKeyCArray(testKeys(t)[0].pub, bad); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
	if _, err := firmware.PublicKeyCArray(nil, "ok"); err == nil {
		t.Error("nil key accepted")
	}
}
