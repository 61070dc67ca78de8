package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkcs8(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func sec1(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func rawScalar(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := k.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadCredentials(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()

	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecCert, err := e.ca.deviceCert(e.id, ecKey)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edCert, err := e.ca.deviceCert(e.id, edKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := writeFile(t, dir, "root.pem", pemBlock("CERTIFICATE", e.ca.cert.Raw))
	// The certificate file carries the chain after the leaf.
	ecCertFile := writeFile(t, dir, "ec.pem", append(pemBlock("CERTIFICATE", ecCert.Certificate[0]), pemBlock("CERTIFICATE", e.ca.cert.Raw)...))
	ecCertDER := writeFile(t, dir, "ec.der", ecCert.Certificate[0])
	edCertFile := writeFile(t, dir, "ed.pem", pemBlock("CERTIFICATE", edCert.Certificate[0]))
	// openssl ecparam -genkey writes EC PARAMETERS before the key.
	ecParams := pemBlock("EC PARAMETERS", []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})

	tests := []struct {
		name     string
		certFile string
		key      []byte
		chainLen int
	}{
		{"PKCS#8 PEM", ecCertFile, pemBlock("PRIVATE KEY", pkcs8(t, ecKey)), 2},
		{"SEC1 PEM", ecCertFile, pemBlock("EC PRIVATE KEY", sec1(t, ecKey)), 2},
		{"SEC1 PEM after EC PARAMETERS", ecCertFile, append(ecParams, pemBlock("EC PRIVATE KEY", sec1(t, ecKey))...), 2},
		{"PKCS#8 DER", ecCertFile, pkcs8(t, ecKey), 2},
		{"SEC1 DER", ecCertFile, sec1(t, ecKey), 2},
		{"raw P-256 scalar", ecCertFile, rawScalar(t, ecKey), 2},
		{"DER certificate", ecCertDER, pkcs8(t, ecKey), 1},
		{"Ed25519 PKCS#8 PEM", edCertFile, pemBlock("PRIVATE KEY", pkcs8(t, edKey)), 1},
		{"raw Ed25519 seed", edCertFile, edKey.Seed(), 1},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keyFile := writeFile(t, dir, "key"+string(rune('a'+i)), tt.key)
			cert, roots, err := LoadCredentials(tt.certFile, keyFile, caFile)
			if err != nil {
				t.Fatalf("LoadCredentials: %v", err)
			}
			if len(cert.Certificate) != tt.chainLen || cert.Leaf == nil {
				t.Errorf("got a chain of %d certificates (leaf %v), want %d", len(cert.Certificate), cert.Leaf != nil, tt.chainLen)
			}
			// The loaded credentials work against a real broker.
			cfg := e.config(t)
			cfg.Certificate, cfg.RootCAs = cert, roots
			c := connect(t, cfg)
			if err := c.PublishUp(testContext(t), "hello", []byte(tt.name), 1); err != nil {
				t.Errorf("PublishUp: %v", err)
			}
			if err := c.Close(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestLoadCredentialsErrors(t *testing.T) {
	ca, err := newTestCA("warden test root")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.deviceCert("abc", key)
	if err != nil {
		t.Fatal(err)
	}
	cert384, err := ca.deviceCert("abc", p384)
	if err != nil {
		t.Fatal(err)
	}
	certFile := writeFile(t, dir, "dev.pem", pemBlock("CERTIFICATE", cert.Certificate[0]))
	cert384File := writeFile(t, dir, "dev384.pem", pemBlock("CERTIFICATE", cert384.Certificate[0]))
	caFile := writeFile(t, dir, "root.pem", pemBlock("CERTIFICATE", ca.cert.Raw))
	goodKey := writeFile(t, dir, "good.key", pemBlock("PRIVATE KEY", pkcs8(t, key)))
	missing := filepath.Join(dir, "missing")

	tests := []struct {
		name                    string
		certFile, keyData, ca   string
		keyBytes                []byte
		want                    string
		wantNotExist, wantMatch bool
	}{
		{name: "missing certificate", certFile: missing, want: "read certificate", wantNotExist: true},
		{name: "missing key", keyData: missing, want: "read private key", wantNotExist: true},
		{name: "missing CA", ca: missing, want: "read CA file", wantNotExist: true},
		{name: "certificate file is a key", certFile: goodKey, want: "no PEM CERTIFICATE block"},
		{name: "certificate file is garbage", certFile: writeFile(t, dir, "garbage.crt", []byte("hello")), want: "neither PEM nor a DER certificate"},
		{name: "CA file has no certificate", ca: goodKey, want: "CA file"},
		{name: "another key, PKCS#8", keyBytes: pemBlock("PRIVATE KEY", pkcs8(t, other)), want: "does not belong", wantMatch: true},
		{name: "another key, SEC1", keyBytes: pemBlock("EC PRIVATE KEY", sec1(t, other)), want: "does not belong", wantMatch: true},
		{name: "another key, raw scalar", keyBytes: rawScalar(t, other), want: "does not belong", wantMatch: true},
		{name: "scalar out of range", keyBytes: bytes.Repeat([]byte{0xff}, 32), want: "raw P-256 scalar"},
		{name: "zero scalar", keyBytes: make([]byte, 32), want: "raw P-256 scalar"},
		{name: "raw key for a P-384 certificate", certFile: cert384File, keyBytes: rawScalar(t, key), want: "needs a P-256 certificate"},
		{name: "encrypted key", keyBytes: pemBlock("ENCRYPTED PRIVATE KEY", []byte{1, 2, 3}), want: "encrypted"},
		{name: "PEM without a key", keyBytes: pemBlock("CERTIFICATE", cert.Certificate[0]), want: "no PEM PRIVATE KEY"},
		{name: "truncated scalar", keyBytes: make([]byte, 31), want: "raw 32-byte scalar (31 bytes)"},
		{name: "corrupt PKCS#8 PEM", keyBytes: pemBlock("PRIVATE KEY", []byte{0x30, 0x03, 0x02, 0x01, 0x00}), want: "private key file"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cf, kf, af := certFile, goodKey, caFile
			if tt.certFile != "" {
				cf = tt.certFile
			}
			if tt.keyData != "" {
				kf = tt.keyData
			}
			if tt.keyBytes != nil {
				kf = writeFile(t, dir, "k"+string(rune('a'+i)), tt.keyBytes)
			}
			if tt.ca != "" {
				af = tt.ca
			}
			_, _, err := LoadCredentials(cf, kf, af)
			if err == nil {
				t.Fatal("LoadCredentials succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if tt.wantNotExist && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("error %v does not wrap fs.ErrNotExist", err)
			}
			if tt.wantMatch && !strings.Contains(err.Error(), kf) {
				t.Errorf("error %q does not name the key file", err)
			}
		})
	}
}
