package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/keystore"
)

var testNow = time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)

func fixedClock() time.Time { return testNow }

func newKeystore(t testing.TB, b byte) *keystore.Keystore {
	t.Helper()
	ks, err := keystore.New(bytes.Repeat([]byte{b}, keystore.MasterKeySize))
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

const testCRLURL = "http://localhost:8080/crl"

func testOptions() Options {
	return Options{
		Hostnames: []string{"broker.example.com", "192.0.2.10"},
		CRLURL:    testCRLURL,
		Now:       fixedClock,
	}
}

// newTestCA initialises a CA in a fresh temporary directory.
func newTestCA(t testing.TB) (*Authority, string, *keystore.Keystore) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	ks := newKeystore(t, 1)
	a, err := Init(dir, ks, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	return a, dir, ks
}

func newCSR(t testing.TB, cn string) (*ecdsa.PrivateKey, *x509.CertificateRequest) {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := CreateCSR(key, cn)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = data
	}
	return files
}

func TestInitLoadRoundTrip(t *testing.T) {
	a, dir, ks := newTestCA(t)

	files := snapshot(t, dir)
	want := []string{"root.crt", "root.key.sealed", "issuing.crt", "issuing.key.sealed", "server.crt", "server.key.sealed", "authority.json", "crl.der", "crl.pem"}
	if len(files) != len(want) {
		t.Errorf("directory holds %d files, want %d: %v", len(files), len(want), keys(files))
	}
	for _, name := range want {
		if _, ok := files[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
	if runtime.GOOS != "windows" {
		info, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o700 {
			t.Errorf("directory mode %04o, want 0700", info.Mode().Perm())
		}
		for _, name := range []string{"root.key.sealed", "issuing.key.sealed", "server.key.sealed"} {
			info, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if info.Mode().Perm() != 0o600 {
				t.Errorf("%s mode %04o, want 0600", name, info.Mode().Perm())
			}
		}
	}

	b, err := Load(dir, ks, fixedClock)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Root().Equal(a.Root()) || !b.Issuing().Equal(a.Issuing()) {
		t.Error("Load returned different CA certificates")
	}
	if b.CRLURL() != testCRLURL {
		t.Errorf("CRLURL = %q", b.CRLURL())
	}
	if !bytes.Equal(b.RootPEM(), files["root.crt"]) {
		t.Error("RootPEM differs from root.crt")
	}
	sa, err := a.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if !sa.Leaf.Equal(sb.Leaf) || !sb.PrivateKey.(*ecdsa.PrivateKey).Equal(sa.PrivateKey) {
		t.Error("server certificate or key changed across Load")
	}
	if len(sb.Certificate) != 2 || !bytes.Equal(sb.Certificate[1], b.Issuing().Raw) {
		t.Error("server chain is not leaf + issuing CA")
	}
	if !b.ClientCAs().Equal(a.ClientCAs()) {
		t.Error("ClientCAs differ across Load")
	}
	if !b.HasRootKey() {
		t.Error("HasRootKey false after Init")
	}
	// A certificate issued before Load verifies against the loaded CA.
	_, csr := newCSR(t, "dev1")
	cert, err := a.IssueDevice(csr, "dev1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: b.ClientCAs(), CurrentTime: testNow, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("device certificate does not verify against ClientCAs: %v", err)
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestInitRefusesExistingCA(t *testing.T) {
	_, dir, ks := newTestCA(t)
	if !Exists(dir) {
		t.Fatal("Exists = false after Init")
	}
	before := snapshot(t, dir)
	for _, ks := range []*keystore.Keystore{ks, newKeystore(t, 2)} {
		_, err := Init(dir, ks, testOptions())
		if !errors.Is(err, ErrExists) {
			t.Fatalf("second Init: %v, want ErrExists", err)
		}
	}
	// Only one certificate left is still a CA: Init must not "repair" it.
	if err := os.Remove(filepath.Join(dir, "root.crt")); err != nil {
		t.Fatal(err)
	}
	delete(before, "root.crt")
	if _, err := Init(dir, ks, testOptions()); !errors.Is(err, ErrExists) {
		t.Fatalf("Init with issuing.crt present: %v, want ErrExists", err)
	}
	after := snapshot(t, dir)
	if len(after) != len(before) {
		t.Fatalf("file set changed: %v -> %v", keys(before), keys(after))
	}
	for name, data := range before {
		if !bytes.Equal(after[name], data) {
			t.Errorf("%s was overwritten", name)
		}
	}
}

func TestInitRefusesLeftovers(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "issuing.key.sealed"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if Exists(dir) {
		t.Fatal("Exists = true without certificates")
	}
	_, err := Init(dir, newKeystore(t, 1), testOptions())
	if err == nil || errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("Init over leftovers: %v, want an interrupted-initialisation error", err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "issuing.key.sealed"))
	if string(data) != "old" {
		t.Fatal("leftover file was overwritten")
	}
}

func TestInitValidatesOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{"relative CRL URL", Options{CRLURL: "/crl"}},
		{"ftp CRL URL", Options{CRLURL: "ftp://x/crl"}},
		{"bad hostname", Options{Hostnames: []string{"bad host"}}},
		{"empty hostname", Options{Hostnames: []string{""}}},
		{"underscore", Options{Hostnames: []string{"a_b.example"}}},
		{"trailing hyphen", Options{Hostnames: []string{"a-.example"}}},
		{"zone", Options{Hostnames: []string{"fe80::1%eth0"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			if _, err := Init(dir, newKeystore(t, 1), tt.opts); err == nil {
				t.Fatal("Init accepted invalid options")
			}
			if Exists(dir) {
				t.Fatal("a failed Init left a CA behind")
			}
		})
	}
}

func TestSealedKeysAreSealed(t *testing.T) {
	a, dir, _ := newTestCA(t)
	issuingScalar, err := a.issuingKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"root.key.sealed", "issuing.key.sealed", "server.key.sealed"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte("PRIVATE KEY")) {
			t.Errorf("%s contains \"PRIVATE KEY\"", name)
		}
		if _, err := x509.ParsePKCS8PrivateKey(data); err == nil {
			t.Errorf("%s parses as a plain PKCS#8 key", name)
		}
		if bytes.Contains(data, issuingScalar) {
			t.Errorf("%s contains the issuing key scalar", name)
		}
	}
	// No file in the directory holds any key in the clear.
	for name, data := range snapshot(t, dir) {
		if bytes.Contains(data, []byte("PRIVATE KEY")) || bytes.Contains(data, issuingScalar) {
			t.Errorf("%s holds a private key in the clear", name)
		}
	}
}

func TestLoadWrongMasterKey(t *testing.T) {
	_, dir, _ := newTestCA(t)
	_, err := Load(dir, newKeystore(t, 2), fixedClock)
	if !errors.Is(err, keystore.ErrCannotOpen) {
		t.Fatalf("Load with another master key: %v, want keystore.ErrCannotOpen", err)
	}
	if !strings.Contains(err.Error(), "master key") {
		t.Errorf("error %q does not mention the master key", err)
	}
}

func TestLoadFailures(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, dir string)
		wantErr string
	}{
		{"empty dir", func(t *testing.T, dir string) { removeAll(t, dir) }, "no certificate authority"},
		{"no root.crt", func(t *testing.T, dir string) { remove(t, dir, "root.crt") }, "root.crt is missing"},
		{"no issuing.crt", func(t *testing.T, dir string) { remove(t, dir, "issuing.crt") }, "issuing.crt is missing"},
		{"no issuing key", func(t *testing.T, dir string) { remove(t, dir, "issuing.key.sealed") }, "issuing.key.sealed is missing"},
		{"no server.crt", func(t *testing.T, dir string) { remove(t, dir, "server.crt") }, "server.crt is missing"},
		{"no server key", func(t *testing.T, dir string) { remove(t, dir, "server.key.sealed") }, "server.key.sealed is missing"},
		{"no authority.json", func(t *testing.T, dir string) { remove(t, dir, "authority.json") }, "authority.json is missing"},
		{"corrupt authority.json", func(t *testing.T, dir string) { write(t, dir, "authority.json", []byte("{")) }, "authority.json is corrupt"},
		{"future authority.json", func(t *testing.T, dir string) {
			write(t, dir, "authority.json", []byte(`{"version":3}`))
		}, "version 3"},
		{"version 2 without issuers", func(t *testing.T, dir string) {
			write(t, dir, "authority.json", []byte(`{"version":2}`))
		}, "lists no issuing CA"},
		{"version 1 with issuers", func(t *testing.T, dir string) {
			write(t, dir, "authority.json", bytes.Replace(read(t, dir, "authority.json"), []byte(`"version": 2`), []byte(`"version": 1`), 1))
		}, "version 1 has no issuer list"},
		{"corrupt root.crt", func(t *testing.T, dir string) { write(t, dir, "root.crt", []byte("garbage")) }, "root.crt is corrupt"},
		{"issuing.crt is the root", func(t *testing.T, dir string) { copyFile(t, dir, "root.crt", "issuing.crt") }, "issuing.key.sealed does not hold the key"},
		{"root.crt is the server cert", func(t *testing.T, dir string) { copyFile(t, dir, "server.crt", "root.crt") }, "root.crt"},
		{"corrupt issuing key", func(t *testing.T, dir string) {
			data := read(t, dir, "issuing.key.sealed")
			data[len(data)-1] ^= 1
			write(t, dir, "issuing.key.sealed", data)
		}, "wrong master key or corrupted data"},
		{"server key swapped in for issuing key", func(t *testing.T, dir string) {
			copyFile(t, dir, "server.key.sealed", "issuing.key.sealed")
		}, "wrong master key or corrupted data"},
		{"foreign server.crt", func(t *testing.T, dir string) {
			other, _, _ := newTestCA(t)
			write(t, dir, "server.crt", certPEM(other.server.Leaf))
		}, "not signed by the issuing CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, dir, ks := newTestCA(t)
			tt.damage(t, dir)
			_, err := Load(dir, ks, fixedClock)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func remove(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func removeAll(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		remove(t, dir, e.Name())
	}
}

func read(t *testing.T, dir, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func write(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, dir, from, to string) {
	t.Helper()
	write(t, dir, to, read(t, dir, from))
}

func TestLoadWithoutOptionalFiles(t *testing.T) {
	_, dir, ks := newTestCA(t)
	for _, name := range []string{"root.key.sealed", "crl.der", "crl.pem"} {
		remove(t, dir, name)
	}
	a, err := Load(dir, ks, fixedClock)
	if err != nil {
		t.Fatal(err)
	}
	if a.HasRootKey() {
		t.Error("HasRootKey true without root.key.sealed")
	}
	if _, err := a.CurrentCRL(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CurrentCRL without crl.der: %v", err)
	}
}

func TestCAProfiles(t *testing.T) {
	a, _, _ := newTestCA(t)
	root, issuing := a.Root(), a.Issuing()

	if !strings.HasPrefix(root.Subject.CommonName, "Warden Root CA ") || len(root.Subject.CommonName) != len("Warden Root CA ")+8 {
		t.Errorf("root CN %q", root.Subject.CommonName)
	}
	if !strings.HasPrefix(issuing.Subject.CommonName, "Warden Issuing CA ") || len(issuing.Subject.CommonName) != len("Warden Issuing CA ")+8 {
		t.Errorf("issuing CN %q", issuing.Subject.CommonName)
	}
	for _, c := range []*x509.Certificate{root, issuing} {
		if got := c.Subject.Organization; len(got) != 1 || got[0] != "Warden" {
			t.Errorf("%s: O = %v, want [Warden]", c.Subject.CommonName, got)
		}
		if !c.IsCA || !c.BasicConstraintsValid {
			t.Errorf("%s: not a CA", c.Subject.CommonName)
		}
		if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
			t.Errorf("%s: key usage %v", c.Subject.CommonName, c.KeyUsage)
		}
		if len(c.SubjectKeyId) == 0 {
			t.Errorf("%s: no subject key ID", c.Subject.CommonName)
		}
		if c.SignatureAlgorithm != x509.ECDSAWithSHA256 || c.PublicKeyAlgorithm != x509.ECDSA {
			t.Errorf("%s: algorithms %v / %v", c.Subject.CommonName, c.SignatureAlgorithm, c.PublicKeyAlgorithm)
		}
		if !c.NotBefore.Equal(testNow.Add(-5 * time.Minute)) {
			t.Errorf("%s: NotBefore %v", c.Subject.CommonName, c.NotBefore)
		}
	}
	if root.MaxPathLen != 1 || root.MaxPathLenZero {
		t.Errorf("root MaxPathLen = %d (zero %v), want 1", root.MaxPathLen, root.MaxPathLenZero)
	}
	if issuing.MaxPathLen != 0 || !issuing.MaxPathLenZero {
		t.Errorf("issuing MaxPathLen = %d (zero %v), want 0 with MaxPathLenZero", issuing.MaxPathLen, issuing.MaxPathLenZero)
	}
	if got := root.NotAfter.Sub(testNow); got != 20*365*24*time.Hour {
		t.Errorf("root lifetime %v, want 20 years", got)
	}
	if got := issuing.NotAfter.Sub(testNow); got != 10*365*24*time.Hour {
		t.Errorf("issuing lifetime %v, want 10 years", got)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if err := issuing.CheckSignatureFrom(root); err != nil {
		t.Errorf("issuing not signed by root: %v", err)
	}
	if !bytes.Equal(issuing.AuthorityKeyId, root.SubjectKeyId) {
		t.Error("issuing AuthorityKeyId does not match root SubjectKeyId")
	}
}

func TestOrganizationOption(t *testing.T) {
	opts := testOptions()
	opts.Organization = "Acme Sensors"
	dir := filepath.Join(t.TempDir(), "pki")
	ks := newKeystore(t, 1)
	if _, err := Init(dir, ks, opts); err != nil {
		t.Fatal(err)
	}
	a, err := Load(dir, ks, fixedClock)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Root().Subject.Organization; len(got) != 1 || got[0] != "Acme Sensors" {
		t.Errorf("root O = %v", got)
	}
	if err := a.RenewServerCertificate(nil); err != nil {
		t.Fatal(err)
	}
	sc, _ := a.ServerCertificate()
	if got := sc.Leaf.Subject.Organization; len(got) != 1 || got[0] != "Acme Sensors" {
		t.Errorf("server O after Load and renewal = %v", got)
	}
}

func verifyClient(t *testing.T, a *Authority, cert *x509.Certificate) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(a.Root())
	inter := x509.NewCertPool()
	inter.AddCert(a.Issuing())
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   testNow,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		t.Fatalf("certificate does not verify for client auth: %v", err)
	}
	if len(chains) != 1 || len(chains[0]) != 3 {
		t.Fatalf("chains %v, want one chain of leaf, issuing, root", chains)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: testNow, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatal("client certificate verifies for server auth")
	}
}

func TestClientProfiles(t *testing.T) {
	a, _, _ := newTestCA(t)
	tests := []struct {
		name  string
		kind  identity.Kind
		id    string
		issue func(*x509.CertificateRequest, string, time.Duration) (*x509.Certificate, error)
	}{
		{"device", identity.KindDevice, "0badf00d", a.IssueDevice},
		{"service", identity.KindService, "dashboard", a.IssueService},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, csr := newCSR(t, tt.id)
			cert, err := tt.issue(csr, tt.id, 90*24*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			verifyClient(t, a, cert)
			if !cert.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
				t.Error("certificate is not for the CSR's key")
			}
			if cert.Subject.String() != "CN="+tt.id {
				t.Errorf("subject %q, want CN=%s only", cert.Subject, tt.id)
			}
			if len(cert.URIs) != 1 || cert.URIs[0].String() != identity.URI(tt.kind, tt.id).String() {
				t.Errorf("URIs %v", cert.URIs)
			}
			kind, id, err := identity.FromURIs(cert.URIs)
			if err != nil || kind != tt.kind || id != tt.id {
				t.Errorf("identity.FromURIs = %v %v %v", kind, id, err)
			}
			if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
				t.Errorf("unexpected SANs: %v %v %v", cert.DNSNames, cert.IPAddresses, cert.EmailAddresses)
			}
			if cert.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("key usage %v, want DigitalSignature only", cert.KeyUsage)
			}
			if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || len(cert.UnknownExtKeyUsage) != 0 {
				t.Errorf("EKU %v %v, want clientAuth only", cert.ExtKeyUsage, cert.UnknownExtKeyUsage)
			}
			if !cert.BasicConstraintsValid || cert.IsCA {
				t.Error("BasicConstraints is not CA:false")
			}
			if len(cert.CRLDistributionPoints) != 1 || cert.CRLDistributionPoints[0] != testCRLURL {
				t.Errorf("CRL distribution points %v", cert.CRLDistributionPoints)
			}
			if !cert.NotBefore.Equal(testNow.Add(-5*time.Minute)) || !cert.NotAfter.Equal(testNow.Add(90*24*time.Hour)) {
				t.Errorf("validity %v - %v", cert.NotBefore, cert.NotAfter)
			}
			if cert.SignatureAlgorithm != x509.ECDSAWithSHA256 {
				t.Errorf("signature algorithm %v", cert.SignatureAlgorithm)
			}
			if !bytes.Equal(cert.AuthorityKeyId, a.Issuing().SubjectKeyId) {
				t.Error("AuthorityKeyId does not name the issuing CA")
			}
			if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 {
				t.Errorf("serial %v is not a positive 128-bit number", cert.SerialNumber)
			}
			// Exactly these extensions: KU, EKU, BC, SAN, AKI, CRL DP.
			want := map[string]bool{"2.5.29.15": true, "2.5.29.37": true, "2.5.29.19": true, "2.5.29.17": true, "2.5.29.35": true, "2.5.29.31": true}
			if len(cert.Extensions) != len(want) {
				t.Errorf("%d extensions, want %d", len(cert.Extensions), len(want))
			}
			for _, ext := range cert.Extensions {
				if !want[ext.Id.String()] {
					t.Errorf("unexpected extension %v", ext.Id)
				}
			}
		})
	}
}

func TestClientLifetime(t *testing.T) {
	a, _, _ := newTestCA(t)
	_, csr := newCSR(t, "dev1")
	tests := []struct {
		lifetime time.Duration
		want     time.Time
	}{
		{0, a.Issuing().NotAfter}, // 10 years, which is also the issuing CA's end
		{time.Hour, testNow.Add(time.Hour)},
		{30 * 365 * 24 * time.Hour, a.Issuing().NotAfter},
	}
	for _, tt := range tests {
		cert, err := a.IssueDevice(csr, "dev1", tt.lifetime)
		if err != nil {
			t.Fatal(err)
		}
		if !cert.NotAfter.Equal(tt.want) {
			t.Errorf("lifetime %v: NotAfter %v, want %v", tt.lifetime, cert.NotAfter, tt.want)
		}
		if cert.NotAfter.After(a.Issuing().NotAfter) {
			t.Errorf("lifetime %v: outlives the issuing CA", tt.lifetime)
		}
	}
	if _, err := a.IssueDevice(csr, "dev1", -time.Second); err == nil {
		t.Error("negative lifetime accepted")
	}
	// An expired issuing CA issues nothing.
	a.now = func() time.Time { return a.Issuing().NotAfter.Add(time.Minute) }
	if _, err := a.IssueDevice(csr, "dev1", 0); err == nil || !strings.Contains(err.Error(), "issuing CA expired") {
		t.Errorf("issuance after the issuing CA expired: %v", err)
	}
}

func TestCSRExtensionsAreIgnored(t *testing.T) {
	a, _, _ := newTestCA(t)
	key, _ := GenerateKey()
	bc, err := asn1BasicConstraintsCA()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{
		Subject:         pkix.Name{CommonName: "dev1", Organization: []string{"Evil"}, OrganizationalUnit: []string{"x"}},
		DNSNames:        []string{"broker.example.com"},
		IPAddresses:     []net.IP{net.ParseIP("10.0.0.1")},
		EmailAddresses:  []string{"a@example.com"},
		ExtraExtensions: []pkix.Extension{bc},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := a.IssueDevice(csr, "dev1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if cert.IsCA || len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 || cert.Subject.String() != "CN=dev1" {
		t.Fatalf("CSR content leaked into the certificate: CA=%v %v %v %v %q", cert.IsCA, cert.DNSNames, cert.IPAddresses, cert.EmailAddresses, cert.Subject)
	}
}

// asn1BasicConstraintsCA is a requested CA:TRUE basic constraints
// extension, which must never make it into an issued certificate.
func asn1BasicConstraintsCA() (pkix.Extension, error) {
	return pkix.Extension{Id: []int{2, 5, 29, 19}, Critical: true, Value: []byte{0x30, 0x03, 0x01, 0x01, 0xff}}, nil
}

func TestSerialsAreUnique(t *testing.T) {
	a, _, _ := newTestCA(t)
	_, csr := newCSR(t, "dev1")
	seen := map[string]bool{}
	for range 200 {
		cert, err := a.IssueDevice(csr, "dev1", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		s := SerialHex(cert.SerialNumber)
		if seen[s] {
			t.Fatalf("serial %s issued twice", s)
		}
		seen[s] = true
	}
}

func TestIssueRejects(t *testing.T) {
	a, _, _ := newTestCA(t)
	_, good := newCSR(t, "dev1")
	_, other := newCSR(t, "dev2")

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev1"}}, rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaCSR, _ := x509.ParseCertificateRequest(rsaDER)

	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev1"}}, p384)
	p384CSR, _ := x509.ParseCertificateRequest(p384DER)

	tampered := tamperCSR(t, good.Raw)
	tamperedCSR, err := x509.ParseCertificateRequest(tampered)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		csr     *x509.CertificateRequest
		id      string
		wantErr string
	}{
		{"wrong CN", other, "dev1", `CSR common name "dev2" does not match device ID "dev1"`},
		{"invalid ID", good, "dev/1", "invalid identifier"},
		{"empty ID", good, "", "invalid identifier"},
		{"RSA", rsaCSR, "dev1", "only ECDSA P-256"},
		{"P-384", p384CSR, "dev1", "only ECDSA P-256"},
		{"bad signature", tamperedCSR, "dev1", "signature does not verify"},
		{"nil", nil, "dev1", "no CSR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, err := a.IssueDevice(tt.csr, tt.id, 0)
			if err == nil {
				t.Fatalf("issued %v", cert.Subject)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
	if _, err := a.IssueService(other, "dev1", 0); err == nil || !strings.Contains(err.Error(), `does not match service name "dev1"`) {
		t.Errorf("IssueService with wrong CN: %v", err)
	}
}

// tamperCSR changes the subject CN inside a CSR's DER without re-signing it.
func tamperCSR(t *testing.T, der []byte) []byte {
	t.Helper()
	out := bytes.Clone(der)
	i := bytes.Index(out, []byte("dev1"))
	if i < 0 {
		t.Fatal("CN not found in CSR")
	}
	out[i+3] = '9'
	return out
}

func TestServerCertificate(t *testing.T) {
	a, _, _ := newTestCA(t)
	sc, err := a.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	leaf := sc.Leaf
	if leaf.Subject.CommonName != "broker.example.com" {
		t.Errorf("CN %q, want the first hostname", leaf.Subject.CommonName)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature || len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("KU %v EKU %v", leaf.KeyUsage, leaf.ExtKeyUsage)
	}
	if got := leaf.NotAfter.Sub(testNow); got != 397*24*time.Hour {
		t.Errorf("lifetime %v, want 397 days", got)
	}
	if fmt.Sprint(leaf.DNSNames) != "[localhost broker.example.com]" {
		t.Errorf("DNS SANs %v", leaf.DNSNames)
	}
	if fmt.Sprint(leaf.IPAddresses) != "[127.0.0.1 ::1 192.0.2.10]" {
		t.Errorf("IP SANs %v", leaf.IPAddresses)
	}
	roots := x509.NewCertPool()
	roots.AddCert(a.Root())
	inter := x509.NewCertPool()
	inter.AddCert(a.Issuing())
	for _, name := range []string{"localhost", "127.0.0.1", "::1", "broker.example.com", "192.0.2.10"} {
		_, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter, CurrentTime: testNow})
		if err != nil {
			t.Errorf("server certificate does not verify for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "other.example.com", Roots: roots, Intermediates: inter, CurrentTime: testNow}); err == nil {
		t.Error("server certificate verifies for a name it does not carry")
	}

	a.now = func() time.Time { return leaf.NotAfter.Add(time.Second) }
	if _, err := a.ServerCertificate(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired server certificate: %v", err)
	}
}

func TestDefaultServerNames(t *testing.T) {
	a, err := Init(filepath.Join(t.TempDir(), "pki"), newKeystore(t, 1), Options{Now: fixedClock})
	if err != nil {
		t.Fatal(err)
	}
	sc, _ := a.ServerCertificate()
	if sc.Leaf.Subject.CommonName != "localhost" || fmt.Sprint(sc.Leaf.DNSNames) != "[localhost]" || len(sc.Leaf.IPAddresses) != 2 {
		t.Errorf("CN %q DNS %v IP %v", sc.Leaf.Subject.CommonName, sc.Leaf.DNSNames, sc.Leaf.IPAddresses)
	}
	// Without a CRL URL, client certificates carry no distribution point.
	_, csr := newCSR(t, "dev1")
	cert, err := a.IssueDevice(csr, "dev1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.CRLDistributionPoints) != 0 {
		t.Errorf("CRL distribution points %v", cert.CRLDistributionPoints)
	}
}

// TestMutualTLS runs a real handshake: the server presents ServerCertificate
// and requires a client certificate from ClientCAs; the device trusts only
// RootPEM.
func TestMutualTLS(t *testing.T) {
	a, _, _ := newTestCA(t)
	devKey, csr := newCSR(t, "0badf00d")
	devCert, err := a.IssueDevice(csr, "0badf00d", 0)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := a.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(a.RootPEM()) {
		t.Fatal("RootPEM is not PEM")
	}
	serverConf := &tls.Config{
		Certificates: []tls.Certificate{sc},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    a.ClientCAs(),
		Time:         fixedClock,
		MinVersion:   tls.VersionTLS13,
	}
	clientConf := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{devCert.Raw}, PrivateKey: devKey}},
		RootCAs:      roots,
		ServerName:   "localhost",
		Time:         fixedClock,
		MinVersion:   tls.VersionTLS13,
	}
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	server := tls.Server(c1, serverConf)
	client := tls.Client(c2, clientConf)
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	peer := server.ConnectionState().PeerCertificates
	if len(peer) == 0 {
		t.Fatal("no client certificate")
	}
	if _, id, err := identity.FromURIs(peer[0].URIs); err != nil || id != "0badf00d" {
		t.Fatalf("peer identity %q, %v", id, err)
	}
}

func TestRenewServerCertificate(t *testing.T) {
	a, dir, ks := newTestCA(t)
	old, _ := a.ServerCertificate()
	if err := a.RenewServerCertificate([]string{"mqtt.example.org", "10.1.2.3"}); err != nil {
		t.Fatal(err)
	}
	sc, _ := a.ServerCertificate()
	if sc.Leaf.Equal(old.Leaf) || sc.PrivateKey.(*ecdsa.PrivateKey).Equal(old.PrivateKey) {
		t.Fatal("renewal kept the old certificate or key")
	}
	if sc.Leaf.Subject.CommonName != "mqtt.example.org" || fmt.Sprint(sc.Leaf.DNSNames) != "[localhost mqtt.example.org]" || fmt.Sprint(sc.Leaf.IPAddresses) != "[127.0.0.1 ::1 10.1.2.3]" {
		t.Errorf("renewed names: %q %v %v", sc.Leaf.Subject.CommonName, sc.Leaf.DNSNames, sc.Leaf.IPAddresses)
	}
	b, err := Load(dir, ks, fixedClock)
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := b.ServerCertificate()
	if !sb.Leaf.Equal(sc.Leaf) {
		t.Error("renewed certificate not persisted")
	}
	if err := a.RenewServerCertificate([]string{"bad name"}); err == nil {
		t.Error("invalid hostname accepted")
	}
	if s2, _ := a.ServerCertificate(); !s2.Leaf.Equal(sc.Leaf) {
		t.Error("failed renewal replaced the certificate")
	}
}

func TestLoadRepairsInterruptedRenewal(t *testing.T) {
	a, dir, ks := newTestCA(t)
	old, _ := a.ServerCertificate()
	// Simulate a crash after the new key was written but before the
	// certificate: the sealed key no longer matches server.crt.
	newKey, _ := GenerateKey()
	sealed, err := sealKey(ks, recordServerKey, newKey)
	if err != nil {
		t.Fatal(err)
	}
	write(t, dir, "server.key.sealed", sealed)
	b, err := Load(dir, ks, fixedClock)
	if err != nil {
		t.Fatal(err)
	}
	sc, _ := b.ServerCertificate()
	if sc.Leaf.Equal(old.Leaf) {
		t.Fatal("mismatched certificate kept")
	}
	if !sc.PrivateKey.(*ecdsa.PrivateKey).PublicKey.Equal(sc.Leaf.PublicKey) {
		t.Fatal("repaired certificate does not match its key")
	}
	if fmt.Sprint(sc.Leaf.DNSNames) != fmt.Sprint(old.Leaf.DNSNames) || fmt.Sprint(sc.Leaf.IPAddresses) != fmt.Sprint(old.Leaf.IPAddresses) || sc.Leaf.Subject.CommonName != old.Leaf.Subject.CommonName {
		t.Errorf("repaired names %v %v %q, want %v %v %q", sc.Leaf.DNSNames, sc.Leaf.IPAddresses, sc.Leaf.Subject.CommonName, old.Leaf.DNSNames, old.Leaf.IPAddresses, old.Leaf.Subject.CommonName)
	}
	if _, err := Load(dir, ks, fixedClock); err != nil {
		t.Fatalf("second Load after repair: %v", err)
	}
}

func TestSignCRL(t *testing.T) {
	a, dir, ks := newTestCA(t)
	initial, err := a.CurrentCRL()
	if err != nil {
		t.Fatal(err)
	}
	crl0, err := x509.ParseRevocationList(initial)
	if err != nil {
		t.Fatal(err)
	}
	if crl0.Number.Int64() != 1 || len(crl0.RevokedCertificateEntries) != 0 {
		t.Errorf("initial CRL number %v with %d entries, want 1 and 0", crl0.Number, len(crl0.RevokedCertificateEntries))
	}

	_, csr := newCSR(t, "dev1")
	var entries []x509.RevocationListEntry
	for range 3 {
		cert, err := a.IssueDevice(csr, "dev1", 0)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: cert.SerialNumber, RevocationTime: testNow.Add(-time.Hour), ReasonCode: 1})
	}
	der, err := a.SignCRL(entries)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(a.Issuing()); err != nil {
		t.Fatalf("CRL does not verify against the issuing CA: %v", err)
	}
	if crl.Number.Int64() != 2 {
		t.Errorf("CRL number %v, want 2", crl.Number)
	}
	if !crl.ThisUpdate.Equal(testNow) || !crl.NextUpdate.Equal(testNow.Add(7*24*time.Hour)) {
		t.Errorf("CRL validity %v - %v", crl.ThisUpdate, crl.NextUpdate)
	}
	if !bytes.Equal(crl.AuthorityKeyId, a.Issuing().SubjectKeyId) {
		t.Error("CRL AuthorityKeyId does not name the issuing CA")
	}
	if len(crl.RevokedCertificateEntries) != len(entries) {
		t.Fatalf("CRL lists %d serials, want %d", len(crl.RevokedCertificateEntries), len(entries))
	}
	for i, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(entries[i].SerialNumber) != 0 || !e.RevocationTime.Equal(entries[i].RevocationTime) || e.ReasonCode != 1 {
			t.Errorf("entry %d: %v %v %d", i, e.SerialNumber, e.RevocationTime, e.ReasonCode)
		}
	}
	if cur, _ := a.CurrentCRL(); !bytes.Equal(cur, der) {
		t.Error("CurrentCRL differs from the CRL just signed")
	}
	if !bytes.Equal(read(t, dir, "crl.der"), der) {
		t.Error("crl.der differs")
	}
	block, _ := pem.Decode(read(t, dir, "crl.pem"))
	if block == nil || block.Type != "X509 CRL" || !bytes.Equal(block.Bytes, der) {
		t.Error("crl.pem is not the PEM of the CRL")
	}

	der3, err := a.SignCRL(nil)
	if err != nil {
		t.Fatal(err)
	}
	crl3, _ := x509.ParseRevocationList(der3)
	if crl3.Number.Int64() != 3 {
		t.Errorf("third CRL number %v", crl3.Number)
	}

	b, err := Load(dir, ks, fixedClock)
	if err != nil {
		t.Fatal(err)
	}
	der4, err := b.SignCRL(entries[:1])
	if err != nil {
		t.Fatal(err)
	}
	crl4, _ := x509.ParseRevocationList(der4)
	if crl4.Number.Int64() != 4 {
		t.Errorf("CRL number after Load %v, want 4", crl4.Number)
	}

	bad := []x509.RevocationListEntry{{SerialNumber: big.NewInt(5)}}
	if _, err := b.SignCRL(bad); err == nil {
		t.Error("entry without revocation time accepted")
	}
	if _, err := b.SignCRL([]x509.RevocationListEntry{{SerialNumber: big.NewInt(-1), RevocationTime: testNow}}); err == nil {
		t.Error("negative serial accepted")
	}
	if cur, _ := b.CurrentCRL(); !bytes.Equal(cur, der4) {
		t.Error("a refused CRL replaced the current one")
	}
}

func TestRootKeyExportAndRemoval(t *testing.T) {
	a, dir, ks := newTestCA(t)
	pass := []byte("a long enough passphrase")
	sealed, err := a.ExportRootKey(pass)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("PRIVATE KEY")) || !bytes.HasPrefix(sealed, []byte("-----BEGIN WARDEN PASSPHRASE SEALED DATA-----")) {
		t.Fatalf("export is not passphrase-sealed PEM:\n%s", sealed)
	}
	der, err := keystore.OpenWithPassphrase(pass, sealed)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ParsePrivateKey(der)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(a.Root().PublicKey) {
		t.Fatal("exported key does not match the root certificate")
	}
	if _, err := keystore.OpenWithPassphrase([]byte("the wrong passphrase"), sealed); !errors.Is(err, keystore.ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	if _, err := a.ExportRootKey([]byte("short")); err == nil {
		t.Fatal("short passphrase accepted")
	}
	if !a.HasRootKey() {
		t.Fatal("export removed the key")
	}

	if err := a.RemoveRootKey(); err != nil {
		t.Fatal(err)
	}
	if a.HasRootKey() {
		t.Fatal("HasRootKey true after RemoveRootKey")
	}
	if _, err := os.Stat(filepath.Join(dir, "root.key.sealed")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("root.key.sealed still there: %v", err)
	}
	if _, err := a.ExportRootKey(pass); !errors.Is(err, ErrNoRootKey) {
		t.Fatalf("ExportRootKey after removal: %v, want ErrNoRootKey", err)
	}
	if err := a.RemoveRootKey(); !errors.Is(err, ErrNoRootKey) {
		t.Fatalf("second RemoveRootKey: %v, want ErrNoRootKey", err)
	}

	// The CA keeps working, also after a restart.
	b, err := Load(dir, ks, fixedClock)
	if err != nil {
		t.Fatal(err)
	}
	for _, ca := range []*Authority{a, b} {
		_, csr := newCSR(t, "dev1")
		cert, err := ca.IssueDevice(csr, "dev1", 0)
		if err != nil {
			t.Fatal(err)
		}
		verifyClient(t, ca, cert)
		if _, err := ca.SignCRL(nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.ExportRootKey(pass); !errors.Is(err, ErrNoRootKey) {
		t.Fatalf("ExportRootKey after Load: %v, want ErrNoRootKey", err)
	}
}

func TestFingerprintAndSerialHex(t *testing.T) {
	a, _, _ := newTestCA(t)
	sum := sha256.Sum256(a.Root().Raw)
	if got := Fingerprint(a.Root()); got != fmt.Sprintf("%x", sum) {
		t.Errorf("Fingerprint = %s", got)
	}
	if Fingerprint(nil) != "" {
		t.Error("Fingerprint(nil) not empty")
	}
	tests := []struct {
		serial *big.Int
		want   string
	}{
		{big.NewInt(1), "1"},
		{big.NewInt(0xABCDEF), "abcdef"},
		{new(big.Int).Lsh(big.NewInt(1), 127), "80000000000000000000000000000000"},
		{nil, ""},
	}
	for _, tt := range tests {
		if got := SerialHex(tt.serial); got != tt.want {
			t.Errorf("SerialHex(%v) = %q, want %q", tt.serial, got, tt.want)
		}
	}
}

func TestConcurrentInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ks := newKeystore(t, 1)
	const n = 4
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := Init(dir, ks, testOptions())
			errs <- err
		}()
	}
	ok := 0
	for range n {
		err := <-errs
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrExists) || strings.Contains(err.Error(), "interrupted"):
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	// The first to link root.key.sealed wins; every other Init stops at
	// its first write at the latest.
	if ok != 1 {
		t.Fatalf("%d concurrent Inits succeeded, want exactly 1", ok)
	}
	if _, err := Load(dir, ks, fixedClock); err != nil {
		t.Fatalf("Load after concurrent Init: %v", err)
	}
}
