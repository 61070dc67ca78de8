package enrollproto

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smallstep/pkcs7"
)

func TestCSRBodyRoundTrip(t *testing.T) {
	csr := newCSR(t, "dev-1")
	for _, der := range [][]byte{
		{0x30},
		bytes.Repeat([]byte{0x30}, 57), // exactly one line
		bytes.Repeat([]byte{0x30}, 58),
		csr,
		bytes.Repeat([]byte{0x42}, 47889), // the largest that fits MaxBody
	} {
		body := EncodeCSRBody(der)
		if len(body) > MaxBody {
			t.Fatalf("%d-byte CSR encoded to %d bytes, over MaxBody", len(der), len(body))
		}
		for i, line := range strings.Split(strings.TrimSuffix(string(body), "\r\n"), "\r\n") {
			if len(line) > 76 {
				t.Fatalf("%d-byte CSR: line %d is %d characters", len(der), i, len(line))
			}
		}
		got, err := DecodeCSRBody(body)
		if err != nil {
			t.Fatalf("%d-byte CSR: DecodeCSRBody(EncodeCSRBody(x)): %v", len(der), err)
		}
		if !bytes.Equal(got, der) {
			t.Fatalf("%d-byte CSR: round trip changed the DER", len(der))
		}
	}
	if _, err := DecodeCSRBody(EncodeCSRBody(make([]byte, 47890))); err == nil {
		t.Fatal("a CSR whose encoding exceeds MaxBody was accepted")
	}
}

func TestDecodeCSRBody(t *testing.T) {
	csr := newCSR(t, "dev-1")
	b64 := base64.StdEncoding.EncodeToString(csr)
	pemCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})
	for _, tc := range []struct {
		name    string
		body    string
		wantErr string // substring; empty means success
	}{
		{"one line", b64, ""},
		{"LF lines", wrapLines(b64, 64, "\n"), ""},
		{"CRLF lines and trailing CRLF", wrapLines(b64, 76, "\r\n") + "\r\n", ""},
		{"spaces and tabs", " \t" + wrapLines(b64, 10, " \t ") + "\n", ""},
		{"PEM", string(pemCSR), ""},
		{"PEM with CRLF and leading blank line", "\r\n" + strings.ReplaceAll(string(pemCSR), "\n", "\r\n"), ""},
		{"empty", "", "empty"},
		{"whitespace only", " \r\n\t", "empty"},
		{"not base64", "this is not base64!", "not valid base64"},
		{"URL alphabet", strings.NewReplacer("+", "-", "/", "_").Replace(b64) + "-_", "not valid base64"},
		{"missing padding", strings.TrimRight(base64.StdEncoding.EncodeToString([]byte{1, 2}), "="), "not valid base64"},
		{"non-canonical padding bits", "MR==", "not valid base64"},
		{"raw DER", string(csr), "not valid base64"},
		{"empty base64 payload", "====", "not valid base64"},
		{"PEM of a certificate", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: csr})), `not "CERTIFICATE REQUEST"`},
		{"PEM with headers", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: csr})), "headers"},
		{"two PEM blocks", string(pemCSR) + string(pemCSR), "after the PEM block"},
		{"PEM then junk", string(pemCSR) + "junk", "after the PEM block"},
		{"broken PEM", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "malformed PEM"},
		{"empty PEM", "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n", "empty"},
		{"over MaxBody", strings.Repeat("A", MaxBody+4), "limit"},
		{"re-encoding over MaxBody", strings.Repeat("A", MaxBody), "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der, err := DecodeCSRBody([]byte(tc.body))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one mentioning %q", err, tc.wantErr)
				}
				if der != nil {
					t.Fatal("returned DER with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !bytes.Equal(der, csr) {
				t.Fatal("decoded DER differs from the CSR")
			}
		})
	}
}

// wrapLines splits s into lines of n characters joined by sep.
func wrapLines(s string, n int, sep string) string {
	var parts []string
	for len(s) > n {
		parts = append(parts, s[:n])
		s = s[n:]
	}
	return strings.Join(append(parts, s), sep)
}

// TestCSRBodyOpenSSL checks both directions against OpenSSL: a CSR OpenSSL
// made and base64-encoded decodes here, and a body encoded here decodes in
// OpenSSL to a CSR whose signature verifies.
func TestCSRBodyOpenSSL(t *testing.T) {
	requireOpenSSL(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	csrDER := runOpenSSL(t, nil, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
		"-nodes", "-keyout", key, "-subj", "/CN=dev-openssl", "-outform", "DER")
	body := runOpenSSL(t, csrDER, "base64") // 64-character LF lines
	got, err := DecodeCSRBody(body)
	if err != nil {
		t.Fatalf("DecodeCSRBody(openssl base64): %v", err)
	}
	if !bytes.Equal(got, csrDER) {
		t.Fatal("DER decoded from OpenSSL's body differs from OpenSSL's CSR")
	}
	csr, err := x509.ParseCertificateRequest(got)
	if err != nil || csr.Subject.CommonName != "dev-openssl" {
		t.Fatalf("decoded CSR does not parse as OpenSSL's (CN %q, err %v)", csr.Subject.CommonName, err)
	}

	goCSR := newCSR(t, "dev-go")
	der := runOpenSSL(t, EncodeCSRBody(goCSR), "base64", "-d")
	if !bytes.Equal(der, goCSR) {
		t.Fatal("OpenSSL decoded EncodeCSRBody's output to different bytes")
	}
	out := runOpenSSL(t, der, "req", "-inform", "DER", "-verify", "-noout", "-subject")
	if !strings.Contains(string(out), "dev-go") {
		t.Fatalf("openssl req did not see the CSR's subject: %s", out)
	}
}

func TestCertsOnlyRoundTrip(t *testing.T) {
	chain := newChain(t, maxCerts-3)
	for _, n := range []int{1, 2, 3, maxCerts} {
		certs := chain[:n]
		body, err := EncodeCertsOnly(certs)
		if err != nil {
			t.Fatalf("%d certificates: EncodeCertsOnly: %v", n, err)
		}
		for i, line := range strings.Split(strings.TrimSuffix(string(body), "\r\n"), "\r\n") {
			if len(line) > 76 {
				t.Fatalf("%d certificates: line %d is %d characters", n, i, len(line))
			}
		}
		got, err := DecodeCertsOnly(body)
		if err != nil {
			t.Fatalf("%d certificates: DecodeCertsOnly: %v", n, err)
		}
		assertSameCerts(t, got, certs)
	}
}

func TestEncodeCertsOnlyRefuses(t *testing.T) {
	chain := newChain(t, maxCerts-2)
	for _, tc := range []struct {
		name  string
		certs []*x509.Certificate
	}{
		{"none", nil},
		{"too many", chain[:maxCerts+1]},
		{"nil certificate", []*x509.Certificate{chain[0], nil}},
		{"certificate without DER", []*x509.Certificate{{Subject: chain[0].Subject}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if body, err := EncodeCertsOnly(tc.certs); err == nil {
				t.Fatalf("EncodeCertsOnly accepted it: %q", body)
			}
		})
	}
}

// TestDecodeCertsOnlyOpenSSL decodes bodies OpenSSL built with crl2pkcs7:
// as raw DER, as OpenSSL's own base64 (64-character LF lines), and as PEM
// base64 wrapped the RFC 2045 way.
func TestDecodeCertsOnlyOpenSSL(t *testing.T) {
	requireOpenSSL(t)
	chain := newChain(t, 0)
	var pemChain []byte
	for _, c := range chain {
		pemChain = append(pemChain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	file := filepath.Join(t.TempDir(), "chain.pem")
	if err := os.WriteFile(file, pemChain, 0o600); err != nil {
		t.Fatal(err)
	}
	der := runOpenSSL(t, nil, "crl2pkcs7", "-nocrl", "-certfile", file, "-outform", "DER")
	for name, body := range map[string][]byte{
		"raw DER":        der,
		"openssl base64": runOpenSSL(t, der, "base64"),
		"RFC 2045 lines": encodeBase64Lines(der),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := DecodeCertsOnly(body)
			if err != nil {
				t.Fatalf("DecodeCertsOnly: %v", err)
			}
			assertSameCerts(t, got, chain)
		})
	}
}

// TestEncodeCertsOnlyOpenSSL has OpenSSL read EncodeCertsOnly's body, base64
// and all, and print the certificates back in order.
func TestEncodeCertsOnlyOpenSSL(t *testing.T) {
	requireOpenSSL(t)
	chain := newChain(t, 1)
	body, err := EncodeCertsOnly(chain)
	if err != nil {
		t.Fatal(err)
	}
	der := runOpenSSL(t, body, "base64", "-d")
	out := runOpenSSL(t, der, "pkcs7", "-inform", "DER", "-print_certs")
	var got []*x509.Certificate
	for rest := out; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatalf("OpenSSL printed a certificate that does not parse: %v", err)
		}
		got = append(got, c)
	}
	assertSameCerts(t, got, chain)
}

func TestDecodeCertsOnlyRefuses(t *testing.T) {
	chain := newChain(t, maxCerts-2)
	degenerate := func(certs [][]byte) []byte {
		t.Helper()
		der, err := pkcs7.DegenerateCertificate(bytes.Join(certs, nil))
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	var all [][]byte
	for _, c := range chain {
		all = append(all, c.Raw)
	}
	good := degenerate(all[:2])
	for _, tc := range []struct {
		name    string
		body    []byte
		wantErr string
	}{
		{"empty", nil, "empty"},
		{"whitespace", []byte(" \r\n"), "empty"},
		{"garbage", []byte("not a body!"), "not DER either"},
		{"base64 of garbage", []byte("bm90IGEgYm9keQ=="), "not a DER PKCS#7"},
		{"base64 of a bare certificate", encodeBase64Lines(chain[0].Raw), "parse PKCS#7"},
		{"trailing data", encodeBase64Lines(append(append([]byte{}, good...), 0x00, 0x00)), "trailing data"},
		{"trailing data in raw DER", append(append([]byte{}, good...), 0xff), "trailing data"},
		{"truncated", encodeBase64Lines(good[:len(good)-10]), "not a DER PKCS#7"},
		{"no certificates", encodeBase64Lines(degenerate(nil)), "no certificates"},
		{"too many certificates", encodeBase64Lines(degenerate(all[:maxCerts+1])), "exceed the limit"},
		{"a certificate that does not parse", encodeBase64Lines(degenerate([][]byte{all[0], {0x30, 0x03, 0x02, 0x01, 0x01}})), "parse PKCS#7"},
		{"over MaxBody", bytes.Repeat([]byte("A"), MaxBody+1), "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certs, err := DecodeCertsOnly(tc.body)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one mentioning %q", err, tc.wantErr)
			}
			if certs != nil {
				t.Fatal("returned certificates with an error")
			}
		})
	}
}

func assertSameCerts(t *testing.T, got, want []*x509.Certificate) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d certificates, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i].Raw, want[i].Raw) {
			t.Fatalf("certificate %d is %q, want %q (order must be kept)", i, got[i].Subject.CommonName, want[i].Subject.CommonName)
		}
	}
}
