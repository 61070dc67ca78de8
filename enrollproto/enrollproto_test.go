package enrollproto

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// newKey returns a fresh P-256 key, the kind a device generates.
func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	return k
}

// newCSR returns the DER of a real P-256 CSR with CN = deviceID.
func newCSR(t testing.TB, deviceID string) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: deviceID},
	}, newKey(t))
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	return der
}

// newChain returns a real chain, leaf first: a device leaf, the issuing CA
// that signed it, and the root that signed the issuing CA; extra adds more
// issuing CAs (signed by the root) after those three.
func newChain(t testing.TB, extra int) []*x509.Certificate {
	t.Helper()
	now := time.Now()
	serial := int64(1)
	issue := func(tmpl *x509.Certificate, parent *x509.Certificate, pub, signer any) *x509.Certificate {
		t.Helper()
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore = now.Add(-time.Hour)
		tmpl.NotAfter = now.Add(24 * time.Hour)
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatalf("create certificate %q: %v", tmpl.Subject.CommonName, err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("parse certificate %q: %v", tmpl.Subject.CommonName, err)
		}
		return c
	}
	ca := func(name string) *x509.Certificate {
		return &x509.Certificate{
			Subject:               pkix.Name{CommonName: name},
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		}
	}
	rootKey, issKey, leafKey := newKey(t), newKey(t), newKey(t)
	root := issue(ca("Warden test root"), nil, rootKey.Public(), rootKey)
	iss := issue(ca("Warden test issuing CA"), root, issKey.Public(), rootKey)
	leaf := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "dev-1"},
		URIs:        []*url.URL{{Scheme: "urn", Opaque: "warden:device:dev-1"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, iss, leafKey.Public(), issKey)
	chain := []*x509.Certificate{leaf, iss, root}
	for i := range extra {
		k := newKey(t)
		chain = append(chain, issue(ca("Warden test extra CA "+string(rune('A'+i%26))), root, k.Public(), rootKey))
	}
	return chain
}

// requireOpenSSL returns openssl's path. Tests that use it check this
// package against an independent implementation, so CI must have it.
func requireOpenSSL(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatal("openssl not found; CI must install it (apt-get install openssl, see `make deps`)")
	}
	t.Skip("openssl not found; install it (apt-get install openssl) to check enrollproto against an independent implementation")
	return ""
}

// runOpenSSL runs openssl with stdin and returns its stdout.
func runOpenSSL(t testing.TB, stdin []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(requireOpenSSL(t), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes()
}

func TestValidDeviceID(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want bool
	}{
		{"a", true},
		{"dev-1_A", true},
		{"0a1b2c3d", true},
		{strings.Repeat("x", 64), true},
		{"", false},
		{strings.Repeat("x", 65), false},
		{"-dev", false},
		{"_dev", false},
		{"dev/1", false},
		{"dev+", false},
		{"dev#", false},
		{"dev 1", false},
		{"dév", false},
		{"dev\x00", false},
	} {
		if got := validDeviceID(tc.id); got != tc.want {
			t.Errorf("validDeviceID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

func TestEncodeBase64Lines(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 56, 57, 58, 114, 1000, 4096} {
		der := bytes.Repeat([]byte{0xa5}, n)
		out := encodeBase64Lines(der)
		if len(out) != base64LinesLen(n) {
			t.Errorf("%d bytes: encoded to %d bytes, base64LinesLen says %d", n, len(out), base64LinesLen(n))
		}
		if n == 0 {
			if len(out) != 0 {
				t.Errorf("empty input encoded to %q", out)
			}
			continue
		}
		if !bytes.HasSuffix(out, []byte("\r\n")) {
			t.Errorf("%d bytes: output does not end in CRLF", n)
		}
		lines := strings.Split(strings.TrimSuffix(string(out), "\r\n"), "\r\n")
		for i, l := range lines {
			if len(l) > base64LineLength || strings.ContainsAny(l, "\r\n") {
				t.Errorf("%d bytes: line %d is %q (%d chars)", n, i, l, len(l))
			}
			if i < len(lines)-1 && len(l) != base64LineLength {
				t.Errorf("%d bytes: inner line %d has %d chars, want %d", n, i, len(l), base64LineLength)
			}
		}
		got, err := base64.StdEncoding.DecodeString(strings.Join(lines, ""))
		if err != nil || !bytes.Equal(got, der) {
			t.Errorf("%d bytes: does not decode back (err %v)", n, err)
		}
	}
}

func TestFitsBody(t *testing.T) {
	// Find the boundary by brute force and check it against what the
	// encoder really produces.
	n := MaxBody * 3 / 4
	for !fitsBody(n) {
		n--
	}
	if got := len(encodeBase64Lines(make([]byte, n))); got > MaxBody {
		t.Fatalf("fitsBody(%d) but the encoding is %d bytes", n, got)
	}
	if got := len(encodeBase64Lines(make([]byte, n+1))); got <= MaxBody {
		t.Fatalf("!fitsBody(%d) but the encoding is only %d bytes", n+1, got)
	}
	if n != 47889 { // EncodeCSRBody's doc states this number
		t.Fatalf("largest DER that fits is %d bytes; update EncodeCSRBody's doc", n)
	}
}

func TestDecodeStrictJSON(t *testing.T) {
	type msg struct {
		A string `json:"a"`
		B int    `json:"b,omitempty"`
	}
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"plain", `{"a":"x","b":1}`, true},
		{"whitespace", " \n{ \"a\" : \"x\" }\n ", true},
		{"empty object", `{}`, true},
		{"escaped key", `{"\u0061":"x"}`, true},
		{"unknown key", `{"a":"x","c":1}`, false},
		{"case variant", `{"A":"x"}`, false},
		{"duplicate", `{"a":"x","a":"y"}`, false},
		{"trailing object", `{"a":"x"}{}`, false},
		{"trailing garbage", `{"a":"x"} x`, false},
		{"array", `[{"a":"x"}]`, false},
		{"null", `null`, false},
		{"string", `"a"`, false},
		{"empty", ``, false},
		{"truncated", `{"a":"x"`, false},
		{"wrong type", `{"a":1}`, false},
		{"nested unknown skipped only when known", `{"z":{"a":"x"}}`, false},
		{"too long", `{"a":"` + strings.Repeat("x", 100) + `"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m msg
			err := decodeStrictJSON([]byte(tc.in), 64, "test message", &m)
			if (err == nil) != tc.ok {
				t.Fatalf("decodeStrictJSON(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "test message: ") {
				t.Errorf("error %q does not say what failed", err)
			}
			if tc.ok && tc.in != `{}` && m.A != "x" {
				t.Errorf("decoded %+v, want A=x", m)
			}
		})
	}
}
