package bench

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/warden-iot/warden/internal/fileutil"
	"github.com/warden-iot/warden/internal/pki"
)

// ServerCert is a server certificate for the servers Warden is compared
// with (Mosquitto, the bare TLS server), from a throwaway CA.
//
// Why not Warden's own server certificate: its key is kept sealed under
// the master key, and unsealing it to a file for another program would
// break the rule that no Warden secret is ever stored unsealed. A
// throwaway CA costs nothing and is shaped like Warden's: P-256 keys, a
// root, an intermediate below it and a leaf for localhost, 127.0.0.1 and
// ::1, the server sending leaf and intermediate. So the server signs the
// same kind of CertificateVerify and sends a chain of the same length;
// clients add CAPEM to their RootCAs (Proc.ServerRoots) instead of
// Warden's root.
type ServerCert struct {
	CAFile   string // the throwaway root (PEM)
	CertFile string // leaf, then intermediate (PEM)
	KeyFile  string // the leaf's key, PKCS#8 PEM, mode 0600
	CAPEM    []byte
}

// serverCertLifetime: a benchmark server lives minutes; a week leaves room
// for clock skew and long runs.
const serverCertLifetime = 7 * 24 * time.Hour

// WriteServerCert creates a throwaway CA and a server certificate under it
// in dir (server-ca.crt, server.crt, server.key).
func WriteServerCert(dir string) (ServerCert, error) {
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return ServerCert{}, fmt.Errorf("bench: generate a key: %w", err)
	}
	root, err := signCert(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "Warden benchmark throwaway root"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(serverCertLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}, nil, rootKey, rootKey)
	if err != nil {
		return ServerCert{}, err
	}
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return ServerCert{}, fmt.Errorf("bench: generate a key: %w", err)
	}
	inter, err := signCert(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "Warden benchmark throwaway issuing CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(serverCertLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}, root, rootKey, interKey)
	if err != nil {
		return ServerCert{}, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return ServerCert{}, fmt.Errorf("bench: generate a key: %w", err)
	}
	leaf, err := signCert(&x509.Certificate{
		Subject:     pkix.Name{CommonName: serverName},
		DNSNames:    []string{serverName},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(serverCertLifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, inter, interKey, leafKey)
	if err != nil {
		return ServerCert{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		return ServerCert{}, fmt.Errorf("bench: encode the server key: %w", err)
	}
	sc := ServerCert{
		CAFile:   filepath.Join(dir, "server-ca.crt"),
		CertFile: filepath.Join(dir, "server.crt"),
		KeyFile:  filepath.Join(dir, "server.key"),
		CAPEM:    pemCert(root),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return ServerCert{}, fmt.Errorf("bench: create %s: %w", dir, err)
	}
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{sc.CAFile, sc.CAPEM, 0o644},
		{sc.CertFile, append(pemCert(leaf), pemCert(inter)...), 0o644},
		{sc.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
	} {
		if err := fileutil.WriteFileAtomic(f.path, f.data, f.perm); err != nil {
			return ServerCert{}, fmt.Errorf("bench: %w", err)
		}
	}
	return sc, nil
}

// signCert signs tmpl with parentKey (self-signed when parent is nil).
func signCert(tmpl, parent *x509.Certificate, parentKey, key *ecdsa.PrivateKey) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("bench: certificate serial: %w", err)
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, fmt.Errorf("bench: sign %q: %w", tmpl.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// WardenCABundle returns the CA certificates client certificates of a
// Warden data directory chain to, as PEM: the root, the current issuing
// CA and any earlier issuing CAs still on disk. Device certificates carry
// only the leaf, so a server other than Warden (Mosquitto's cafile, the
// bare TLS server) needs the issuing CAs beside the root to verify them.
func WardenCABundle(dataDir string) ([]byte, error) {
	dir := filepath.Join(dataDir, "pki")
	files := []string{filepath.Join(dir, "root.crt"), filepath.Join(dir, "issuing.crt")}
	older, err := filepath.Glob(filepath.Join(dir, "issuers", "*.crt"))
	if err != nil {
		return nil, fmt.Errorf("bench: list earlier issuing CAs: %w", err)
	}
	slices.Sort(older)
	files = append(files, older...)
	var out bytes.Buffer
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			if i < 2 && errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("bench: %s has no CA (%s is missing); start Warden on it or provision a fleet first", dataDir, f)
			}
			return nil, fmt.Errorf("bench: read %w", err)
		}
		certs, err := pki.ParseCertificates(b)
		if err != nil {
			return nil, fmt.Errorf("bench: %s: %w", f, err)
		}
		for _, c := range certs {
			if !c.IsCA {
				return nil, fmt.Errorf("bench: %s holds %q, which is not a CA certificate", f, c.Subject.CommonName)
			}
			out.Write(pemCert(c))
		}
	}
	return out.Bytes(), nil
}

// rootFingerprint is the SHA-256 of a data directory's root certificate,
// which tells one CA (and so one data directory's life) from another.
func rootFingerprint(dataDir string) (string, []byte, error) {
	path := filepath.Join(dataDir, "pki", "root.crt")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, fmt.Errorf("bench: read the root certificate: %w", err)
	}
	certs, err := pki.ParseCertificates(b)
	if err != nil || len(certs) != 1 {
		return "", nil, fmt.Errorf("bench: %s is not one PEM certificate (%v)", path, err)
	}
	sum := sha256.Sum256(certs[0].Raw)
	return hex.EncodeToString(sum[:]), b, nil
}
