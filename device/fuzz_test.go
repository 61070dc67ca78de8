package device

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"
)

// FuzzParseCredentials feeds arbitrary bytes to the key and certificate
// parsers behind LoadCredentials: they must never panic, and a key they
// return must be able to sign.
func FuzzParseCredentials(f *testing.F) {
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	certKeys := []crypto.PublicKey{p256.Public(), p384.Public(), edPub}

	// Real keys are generated here rather than committed to testdata.
	pk8, err := x509.MarshalPKCS8PrivateKey(p256)
	if err != nil {
		f.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(p256)
	if err != nil {
		f.Fatal(err)
	}
	raw, err := p256.Bytes()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8}), byte(0))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), byte(0))
	f.Add(pk8, byte(0))
	f.Add(sec1, byte(0))
	f.Add(raw, byte(0))
	f.Add(edKey.Seed(), byte(2))
	f.Add(raw, byte(1))

	f.Fuzz(func(t *testing.T, data []byte, which byte) {
		certKey := certKeys[int(which)%len(certKeys)]
		if k, err := parsePrivateKey(data, certKey); err == nil {
			if k == nil || k.Public() == nil {
				t.Fatal("parsePrivateKey returned no error and no usable key")
			}
		}
		if certs, err := parseCertificates(data); err == nil && len(certs) == 0 {
			t.Fatal("parseCertificates returned no error and no certificate")
		}
	})
}
