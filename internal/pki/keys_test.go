package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"strings"
	"testing"
)

func TestEncodeParsePrivateKeyRoundTrip(t *testing.T) {
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	// A scalar with leading zero bytes must still encode to 32 bytes.
	small := make([]byte, 32)
	small[31] = 7
	smallKey, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), small)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []*ecdsa.PrivateKey{key, smallKey} {
		for _, format := range []string{"pem", "der", "raw"} {
			data, err := EncodePrivateKey(k, format)
			if err != nil {
				t.Fatalf("%s: %v", format, err)
			}
			switch format {
			case "raw":
				if len(data) != 32 {
					t.Fatalf("raw encoding is %d bytes, want 32", len(data))
				}
			case "pem":
				if !bytes.HasPrefix(data, []byte("-----BEGIN PRIVATE KEY-----\n")) {
					t.Fatalf("pem encoding is not PKCS#8 PEM: %q", data[:30])
				}
			case "der":
				if _, err := x509.ParsePKCS8PrivateKey(data); err != nil {
					t.Fatalf("der encoding is not PKCS#8: %v", err)
				}
			}
			back, err := ParsePrivateKey(data)
			if err != nil {
				t.Fatalf("%s: %v", format, err)
			}
			if !back.Equal(k) {
				t.Fatalf("%s round trip changed the key", format)
			}
		}
	}
	raw, _ := EncodePrivateKey(smallKey, "raw")
	if !bytes.Equal(raw, small) {
		t.Fatalf("raw encoding %x, want left-padded %x", raw, small)
	}
}

func TestEncodePrivateKeyRejects(t *testing.T) {
	key, _ := GenerateKey()
	_, err := EncodePrivateKey(key, "jwk")
	if err == nil || !strings.Contains(err.Error(), `"pem", "der", "raw"`) {
		t.Fatalf("unknown format: %v, want an error listing pem, der, raw", err)
	}
	if _, err := EncodePrivateKey(nil, "pem"); err == nil {
		t.Fatal("nil key accepted")
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := EncodePrivateKey(p384, "raw"); err == nil {
		t.Fatal("P-384 key accepted")
	}
}

func TestParsePrivateKeyFormats(t *testing.T) {
	key, _ := GenerateKey()
	sec1, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sec1PEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})
	params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}})
	for name, data := range map[string][]byte{
		"SEC 1 PEM":              sec1PEM,
		"SEC 1 DER":              sec1,
		"openssl ecparam output": append(params, sec1PEM...),
		"PEM with comment":       append([]byte("# device 42\n"), sec1PEM...),
	} {
		got, err := ParsePrivateKey(data)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !got.Equal(key) {
			t.Errorf("%s: different key", name)
		}
	}
}

func TestParsePrivateKeyRejects(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	edDER, _ := x509.MarshalPKCS8PrivateKey(edKey)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.MarshalPKCS8PrivateKey(p384)
	order := elliptic.P256().Params().N.FillBytes(make([]byte, 32))

	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"empty", nil, "no data"},
		{"31 bytes", bytes.Repeat([]byte{0x42}, 31), "exactly 32 bytes; this is 31"},
		{"33 bytes", bytes.Repeat([]byte{0x42}, 33), "exactly 32 bytes; this is 33"},
		{"raw zero", make([]byte, 32), "not valid"},
		{"raw order", order, "not valid"},
		{"RSA PKCS#8", rsaDER, "only ECDSA P-256"},
		{"RSA PEM", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsaDER}), "only ECDSA P-256"},
		{"Ed25519", edDER, "only ECDSA P-256"},
		{"P-384", p384DER, "only ECDSA P-256"},
		{"encrypted PKCS#8", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}}), "encrypted"},
		{"legacy encrypted", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte{1}}), "encrypted"},
		{"certificate", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), "want \"PRIVATE KEY\""},
		{"only parameters", pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{1}}), "no private key block"},
		{"bad PKCS#8 PEM", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), "invalid PKCS#8"},
		{"broken PEM", []byte("-----BEGIN PRIVATE KEY-----\nAAAA"), "malformed PEM"},
		{"garbage DER", bytes.Repeat([]byte{0x30}, 100), "neither PKCS#8 nor SEC 1"},
		{"garbage text", []byte("hello, this is not a key"), "neither PEM nor DER"},
		{"huge", make([]byte, 65<<10), "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParsePrivateKey(tt.data)
			if err == nil {
				t.Fatalf("parsed %v", k.Curve.Params().Name)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseCSR(t *testing.T) {
	key, _ := GenerateKey()
	der, err := CreateCSR(key, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	pemCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	newPEM := pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: der})
	for name, data := range map[string][]byte{
		"DER":                     der,
		"PEM":                     pemCSR,
		"NEW CERTIFICATE REQUEST": newPEM,
		"PEM with trailing blank": append(bytes.Clone(pemCSR), "\n\n"...),
	} {
		csr, err := ParseCSR(data)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if csr.Subject.CommonName != "dev1" || !csr.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
			t.Errorf("%s: wrong content", name)
		}
	}

	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev1"}}, rsaKey)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p224DER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev1"}}, p224)
	tampered := bytes.Clone(der)
	tampered[bytes.Index(tampered, []byte("dev1"))+3] = '9'

	// DER that happens to contain a PEM marker is still DER (found by
	// FuzzParsePrivateKey for keys; the same holds for CSRs).
	markerDER, err := CreateCSR(key, "-----BEGIN CERTIFICATE REQUEST-----")
	if err != nil {
		t.Fatal(err)
	}
	if csr, err := ParseCSR(markerDER); err != nil || csr.Subject.CommonName != "-----BEGIN CERTIFICATE REQUEST-----" {
		t.Errorf("DER CSR containing a PEM marker: %v", err)
	}

	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"empty", nil, "no data"},
		{"garbage", []byte("hello world"), "neither PEM nor DER"},
		{"truncated DER", der[:len(der)-5], "not a valid certificate request"},
		{"trailing DER", append(bytes.Clone(der), 0), "not a valid certificate request"},
		{"PEM body not a CSR", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2}}), "not a valid certificate request"},
		{"wrong PEM type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), `PEM block is "CERTIFICATE"`},
		{"two CSRs", append(bytes.Clone(pemCSR), pemCSR...), "after the PEM block"},
		{"broken PEM", []byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB"), "malformed PEM"},
		{"RSA", rsaDER, "only ECDSA P-256"},
		{"P-224", p224DER, "only ECDSA P-256"},
		{"bad signature", tampered, "signature does not verify"},
		{"too large", append(bytes.Clone(pemCSR), make([]byte, 64<<10)...), "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := ParseCSR(tt.data)
			if err == nil {
				t.Fatalf("parsed CSR for %q", csr.Subject.CommonName)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseCertificates(t *testing.T) {
	a, _, _ := newTestCA(t)
	root, issuing := a.Root(), a.Issuing()
	bundle := append(certPEM(root), certPEM(issuing)...)
	tests := []struct {
		name string
		data []byte
		want []*x509.Certificate
	}{
		{"one PEM", certPEM(root), []*x509.Certificate{root}},
		{"PEM bundle", bundle, []*x509.Certificate{root, issuing}},
		{"bundle with comments", append([]byte("subject=CN = x\n"), bundle...), []*x509.Certificate{root, issuing}},
		{"DER", root.Raw, []*x509.Certificate{root}},
		{"concatenated DER", append(bytes.Clone(root.Raw), issuing.Raw...), []*x509.Certificate{root, issuing}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCertificates(tt.data)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("%d certificates, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if !got[i].Equal(tt.want[i]) {
					t.Errorf("certificate %d differs", i)
				}
			}
		})
	}
	for name, data := range map[string][]byte{
		"empty":          nil,
		"blank":          []byte("\n \n"),
		"garbage":        []byte("garbage"),
		"key in bundle":  append(bytes.Clone(bundle), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})...),
		"bad DER in PEM": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}),
		"broken PEM":     []byte("-----BEGIN CERTIFICATE-----\nMIIB"),
		"truncated DER":  root.Raw[:len(root.Raw)-1],
	} {
		if certs, err := ParseCertificates(data); err == nil {
			t.Errorf("%s: parsed %d certificates", name, len(certs))
		}
	}
}
