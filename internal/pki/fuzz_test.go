package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/pem"
	"strings"
	"testing"
)

// The fuzz targets check that the parsers of untrusted bytes never panic and
// that whatever they accept meets the promises in their doc comments.

func FuzzParseCSR(f *testing.F) {
	key, err := GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	der, err := CreateCSR(key, "0badf00d")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(der)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: der}))
	f.Add(der[:len(der)/2])
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := ParseCSR(data)
		if err != nil {
			return
		}
		if len(data) > MaxCSRSize {
			t.Fatalf("accepted %d bytes", len(data))
		}
		pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			t.Fatalf("accepted a %T key", csr.PublicKey)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR whose signature does not verify: %v", err)
		}
	})
}

func FuzzParsePrivateKey(f *testing.F) {
	key, err := GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	for _, format := range []string{KeyFormatPEM, KeyFormatDER, KeyFormatRaw} {
		data, err := EncodePrivateKey(key, format)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\n-----END EC PRIVATE KEY-----\n"))
	f.Add(make([]byte, 32))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParsePrivateKey(data)
		if err != nil {
			return
		}
		if k.Curve != elliptic.P256() {
			t.Fatalf("accepted a %s key", k.Curve.Params().Name)
		}
		// An accepted key must survive every encoding Warden writes.
		for _, format := range []string{KeyFormatPEM, KeyFormatDER, KeyFormatRaw} {
			enc, err := EncodePrivateKey(k, format)
			if err != nil {
				t.Fatalf("accepted key does not encode as %s: %v", format, err)
			}
			back, err := ParsePrivateKey(enc)
			if err != nil || !back.Equal(k) {
				t.Fatalf("%s round trip failed: %v", format, err)
			}
		}
	})
}

func FuzzParseCertificates(f *testing.F) {
	a, _, _ := newTestCA(f)
	f.Add(a.Root().Raw)
	f.Add(certPEM(a.Root()))
	f.Add(append(certPEM(a.Root()), certPEM(a.Issuing())...))
	f.Add(append(append([]byte{}, a.Root().Raw...), a.Issuing().Raw...))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := ParseCertificates(data)
		if err != nil {
			return
		}
		if len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
		for _, c := range certs {
			if c == nil || len(c.Raw) == 0 {
				t.Fatal("nil or empty certificate returned")
			}
			_ = Fingerprint(c)
			_ = SerialHex(c.SerialNumber)
		}
	})
}

func FuzzParseState(f *testing.F) {
	fp := func(c byte) string { return strings.Repeat(string(c), 64) }
	f.Add([]byte(`{"version":1,"organization":"Warden","crl_url":"","crl_number":1,"created":"2026-11-03T10:00:00Z"}`))
	f.Add([]byte(`{"version":2,"organization":"Warden","crl_url":"http://localhost:8080/crl","crl_number":4,"created":"2026-11-03T10:00:00Z","issuers":[` +
		`{"fingerprint":"` + fp('a') + `","state":"current","created":"2027-01-01T00:00:00Z"},` +
		`{"fingerprint":"` + fp('b') + `","state":"grace","created":"2026-11-03T10:00:00Z","grace_until":"2027-01-08T00:00:00+01:00"},` +
		`{"fingerprint":"` + fp('c') + `","state":"retired","created":"2026-01-03T10:00:00Z","retired_at":"2026-11-03T10:00:00Z"},` +
		`{"fingerprint":"` + fp('d') + `","state":"revoked","created":"2025-01-03T10:00:00Z","revoked_at":"2026-11-03T10:00:00Z","reason":"leaked"}]}`))
	f.Add([]byte(`{"version":2,"organization":"Warden","crl_url":"","crl_number":1,"created":"2026-11-03T10:00:00Z","issuers":[` +
		`{"fingerprint":"` + fp('a') + `","state":"current","created":"2027-01-01T00:00:00Z"}],` +
		`"pending":{"issuing_crt":"AQ==","issuing_key_sealed":"Ag==","server_crt":"Aw==","server_key_sealed":"BA=="}}`))
	f.Add([]byte(`{"version":2,"issuers":[{"fingerprint":"` + fp('a') + `","state":"current","created":"2027-01-01T00:00:00Z"},{"fingerprint":"` + fp('a') + `","state":"grace","created":"2027-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"version":3}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := parseState(data)
		if err != nil {
			return
		}
		if st.Version == 2 {
			if err := validateIssuers(st.Issuers); err != nil {
				t.Fatalf("accepted invalid issuers: %v", err)
			}
		}
		// What is accepted survives being written and read back unchanged.
		enc, err := encodeState(st)
		if err != nil {
			t.Fatalf("accepted state does not encode: %v", err)
		}
		back, err := parseState(enc)
		if err != nil {
			t.Fatalf("re-encoded state is refused: %v\n%s", err, enc)
		}
		enc2, err := encodeState(back)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("state round trip changed:\n%s\n%s", enc, enc2)
		}
	})
}
