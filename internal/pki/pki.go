// Package pki is Warden's certificate authority: a root CA that signs one
// issuing CA, which signs the server certificate, device and service client
// certificates, and the CRL. It knows nothing of MQTT; registry decides who
// gets a certificate and broker decides what a certificate lets a client do.
//
// The layout on disk, the certificate profiles and the formats are described
// in docs/pki.md. CA private keys exist on disk only sealed by the keystore.
package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/warden-iot/warden/internal/keystore"
)

// Options configures Init.
type Options struct {
	// Hostnames are extra server-certificate names; IP literals become IP
	// SANs. localhost, 127.0.0.1 and ::1 are always included.
	Hostnames []string
	// CRLURL is the CRL distribution point written into every device and
	// service certificate, e.g. "http://localhost:8080/crl". Empty leaves
	// the extension out.
	CRLURL string
	// Organization is the subject O of the CA and server certificates;
	// default "Warden".
	Organization string
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// ErrExists is returned by Init when the directory already holds a CA.
var ErrExists = errors.New("a certificate authority already exists")

// ErrNoRootKey is returned when the root CA private key has been exported
// and removed from the server (or was never there).
var ErrNoRootKey = errors.New("the root CA private key is not on this server")

const (
	defaultOrganization = "Warden"
	stateVersion        = 1
)

// authorityState is authority.json.
type authorityState struct {
	Version      int       `json:"version"`
	Organization string    `json:"organization"`
	CRLURL       string    `json:"crl_url"`
	CRLNumber    uint64    `json:"crl_number"`
	Created      time.Time `json:"created"`
}

// Authority is a loaded certificate authority. Its methods are safe for
// concurrent use within one process; two processes must not sign CRLs from
// the same directory at once (CRL numbers would repeat).
type Authority struct {
	dir string
	ks  *keystore.Keystore
	now func() time.Time

	org     string
	crlURL  string
	created time.Time

	root       *x509.Certificate
	issuing    *x509.Certificate
	issuingKey *ecdsa.PrivateKey

	mu        sync.Mutex // guards the fields below and the files they mirror
	server    tls.Certificate
	crlNumber uint64
}

// Exists reports whether dir holds a CA (root.crt or issuing.crt), which is
// the condition under which Init refuses.
func Exists(dir string) bool {
	for _, name := range []string{fileRoot, fileIssuing} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return true
		}
	}
	return false
}

// Init creates a new CA in dir: root and issuing CAs, a server certificate
// and an empty CRL (number 1). It never overwrites anything: if dir already
// holds a CA it returns an error wrapping ErrExists, and if it holds files
// left by an interrupted Init it says so and stops.
func Init(dir string, ks *keystore.Keystore, opts Options) (*Authority, error) {
	if ks == nil {
		return nil, errors.New("init CA: no keystore")
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	org := opts.Organization
	if org == "" {
		org = defaultOrganization
	}
	if err := validateCRLURL(opts.CRLURL); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	names, err := serverNames(opts.Hostnames)
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if Exists(dir) {
		return nil, fmt.Errorf("init CA in %s: %w; it was left untouched (use it, or move the directory away to start over)", dir, ErrExists)
	}
	var leftovers []string
	for _, name := range allFiles() {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			leftovers = append(leftovers, name)
		}
	}
	if len(leftovers) > 0 {
		return nil, fmt.Errorf("init CA in %s: the directory holds %v from an interrupted initialisation but no root.crt; move those files away and run init again", dir, leftovers)
	}
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return nil, fmt.Errorf("init CA: create directory: %w", err)
	}
	if err := os.Chmod(dir, dirPerm); err != nil {
		return nil, fmt.Errorf("init CA: restrict directory %s to its owner: %w", dir, err)
	}

	a := &Authority{dir: dir, ks: ks, now: now, org: org, crlURL: opts.CRLURL, created: now().UTC().Truncate(time.Second)}
	files := make(map[string][]byte, len(allFiles()))

	rootKey, err := GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if a.root, err = a.createRoot(rootKey); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	issuingKey, err := GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if a.issuing, err = a.createIssuing(issuingKey, a.root, rootKey); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	a.issuingKey = issuingKey

	if files[fileRootKey], err = sealKey(ks, recordRootKey, rootKey); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if files[fileIssuingKey], err = sealKey(ks, recordIssuingKey, issuingKey); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	var serverPEM []byte
	a.server, serverPEM, files[fileServerKey], err = a.newServerCertificate(names)
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	files[fileServer] = serverPEM

	a.crlNumber = 1
	crl, err := a.createCRL(a.crlNumber, nil)
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	files[fileCRLDER] = crl
	files[fileCRLPEM] = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl})
	if files[fileAuthority], err = a.stateJSON(a.crlNumber); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	files[fileIssuing] = certPEM(a.issuing)
	files[fileRoot] = certPEM(a.root)

	for _, name := range allFiles() {
		perm := fs.FileMode(filePermPublic)
		if name == fileRootKey || name == fileIssuingKey || name == fileServerKey || name == fileAuthority {
			perm = filePermSecret
		}
		if err := writeNewFileAtomic(filepath.Join(dir, name), files[name], perm); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return nil, fmt.Errorf("init CA in %s: another initialisation is writing the same directory: %w (%v)", dir, ErrExists, err)
			}
			return nil, fmt.Errorf("init CA: %w", err)
		}
	}
	return a, nil
}

func validateCRLURL(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("CRL URL %q: %w", s, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("CRL URL %q must be an absolute http:// or https:// URL", s)
	}
	return nil
}

func (a *Authority) stateJSON(crlNumber uint64) ([]byte, error) {
	st := authorityState{
		Version:      stateVersion,
		Organization: a.org,
		CRLURL:       a.crlURL,
		CRLNumber:    crlNumber,
		Created:      a.created,
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", fileAuthority, err)
	}
	return append(data, '\n'), nil
}

func sealKey(ks *keystore.Keystore, record string, key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", record, err)
	}
	defer clear(der)
	sealed, err := ks.Seal(record, der)
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", record, err)
	}
	return sealed, nil
}

// openKey reads and unseals one of the CA's key files. A missing file wraps
// fs.ErrNotExist.
func openKey(ks *keystore.Keystore, dir, file, record string) (*ecdsa.PrivateKey, error) {
	path := filepath.Join(dir, file)
	sealed, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	der, err := ks.Open(record, sealed)
	if err != nil {
		return nil, fmt.Errorf("unseal %s (is this the master key the CA was created with?): %w", path, err)
	}
	defer clear(der)
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse key in %s: %w", path, err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key in %s is %T, want ECDSA", path, parsed)
	}
	if err := checkP256(&key.PublicKey, path); err != nil {
		return nil, err
	}
	return key, nil
}

func certPEM(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// Load opens the CA in dir. It checks that the certificates chain, that the
// sealed keys open with ks (a different master key fails here, clearly) and
// match their certificates. now may be nil for time.Now.
//
// If server.key.sealed and server.crt do not match (a renewal was
// interrupted between the two writes), Load re-issues the server
// certificate for the names in server.crt; it fails for anything else.
func Load(dir string, ks *keystore.Keystore, now func() time.Time) (*Authority, error) {
	if ks == nil {
		return nil, errors.New("load CA: no keystore")
	}
	if now == nil {
		now = time.Now
	}
	if !Exists(dir) {
		return nil, fmt.Errorf("load CA: no certificate authority in %s (no %s); initialise one first: %w", dir, fileRoot, fs.ErrNotExist)
	}
	a := &Authority{dir: dir, ks: ks, now: now}
	if err := a.load(); err != nil {
		return nil, fmt.Errorf("load CA from %s: %w", dir, err)
	}
	return a, nil
}

func (a *Authority) load() error {
	stateData, err := readCAFile(a.dir, fileAuthority)
	if err != nil {
		return err
	}
	var st authorityState
	dec := json.NewDecoder(bytes.NewReader(stateData))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return fmt.Errorf("%s is corrupt: %w", fileAuthority, err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("%s has version %d; this Warden reads version %d", fileAuthority, st.Version, stateVersion)
	}
	if err := validateCRLURL(st.CRLURL); err != nil {
		return fmt.Errorf("%s: %w", fileAuthority, err)
	}
	a.org, a.crlURL, a.crlNumber, a.created = st.Organization, st.CRLURL, st.CRLNumber, st.Created

	if a.root, err = readCACert(a.dir, fileRoot); err != nil {
		return err
	}
	if err := a.root.CheckSignatureFrom(a.root); err != nil {
		return fmt.Errorf("%s is not a self-signed root CA: %w", fileRoot, err)
	}
	if a.issuing, err = readCACert(a.dir, fileIssuing); err != nil {
		return err
	}
	if err := a.issuing.CheckSignatureFrom(a.root); err != nil {
		return fmt.Errorf("%s is not signed by %s: %w", fileIssuing, fileRoot, err)
	}
	if a.issuingKey, err = openKey(a.ks, a.dir, fileIssuingKey, recordIssuingKey); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s is missing, so the CA directory is incomplete; restore it from a backup: %w", fileIssuingKey, err)
		}
		return err
	}
	if !a.issuingKey.PublicKey.Equal(a.issuing.PublicKey) {
		return fmt.Errorf("%s does not hold the key of %s", fileIssuingKey, fileIssuing)
	}
	return a.loadServer()
}

// readCAFile reads a file the CA cannot work without.
func readCAFile(dir, file string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(dir, file))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is missing, so the CA directory is incomplete; restore it from a backup: %w", file, err)
	}
	return data, err
}

func readCACert(dir, file string) (*x509.Certificate, error) {
	path := filepath.Join(dir, file)
	data, err := readCAFile(dir, file)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", path, err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%s holds %d certificates, want 1", path, len(certs))
	}
	if !certs[0].IsCA || !certs[0].BasicConstraintsValid {
		return nil, fmt.Errorf("%s is not a CA certificate", path)
	}
	if err := checkP256(certs[0].PublicKey, path); err != nil {
		return nil, err
	}
	return certs[0], nil
}

func (a *Authority) loadServer() error {
	path := filepath.Join(a.dir, fileServer)
	data, err := readCAFile(a.dir, fileServer)
	if err != nil {
		return err
	}
	chain, err := ParseCertificates(data)
	if err != nil {
		return fmt.Errorf("%s is corrupt: %w", path, err)
	}
	leaf := chain[0]
	if err := leaf.CheckSignatureFrom(a.issuing); err != nil {
		return fmt.Errorf("%s is not signed by the issuing CA: %w", path, err)
	}
	key, err := openKey(a.ks, a.dir, fileServerKey, recordServerKey)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s is missing, so the CA directory is incomplete; restore it from a backup: %w", fileServerKey, err)
		}
		return err
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return a.renewServer(extraNames(leaf))
	}
	a.server = tls.Certificate{
		Certificate: [][]byte{leaf.Raw, a.issuing.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}
	return nil
}

// Root returns the root CA certificate.
func (a *Authority) Root() *x509.Certificate { return a.root }

// Issuing returns the issuing CA certificate.
func (a *Authority) Issuing() *x509.Certificate { return a.issuing }

// RootPEM returns the root CA certificate as PEM, the trust anchor devices
// and services are given.
func (a *Authority) RootPEM() []byte { return certPEM(a.root) }

// CRLURL returns the CRL distribution point written into client
// certificates ("" if none).
func (a *Authority) CRLURL() string { return a.crlURL }

// ClientCAs returns a new pool of the issuing CA(s) that client certificates
// must chain to. Anchoring at the issuing CA rather than the root means a
// retired issuing CA stops being trusted as soon as it leaves this pool.
func (a *Authority) ClientCAs() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(a.issuing)
	return pool
}

// ServerCertificate returns the server certificate chain (leaf, issuing CA)
// with its private key and Leaf set, ready for tls.Config.Certificates. It
// fails once the certificate has expired, so a server that has run past it
// notices instead of serving a certificate every client rejects.
func (a *Authority) ServerCertificate() (tls.Certificate, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.server.Leaf == nil {
		return tls.Certificate{}, errors.New("server certificate: none loaded")
	}
	if now := a.now(); now.After(a.server.Leaf.NotAfter) {
		return tls.Certificate{}, fmt.Errorf("server certificate expired at %s; renew it (RenewServerCertificate)", a.server.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	c := a.server
	c.Certificate = append([][]byte(nil), a.server.Certificate...)
	return c, nil
}

// HasRootKey reports whether the sealed root CA key is still on this server.
func (a *Authority) HasRootKey() bool {
	_, err := os.Lstat(filepath.Join(a.dir, fileRootKey))
	return err == nil
}

// ExportRootKey returns the root CA private key (PKCS#8 DER) sealed with
// keystore.SealWithPassphrase, for offline storage. It leaves the sealed key
// on the server; RemoveRootKey deletes it.
func (a *Authority) ExportRootKey(passphrase []byte) ([]byte, error) {
	key, err := openKey(a.ks, a.dir, fileRootKey, recordRootKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("export root key: %w (it was removed; use the exported copy)", ErrNoRootKey)
	}
	if err != nil {
		return nil, fmt.Errorf("export root key: %w", err)
	}
	if !key.PublicKey.Equal(a.root.PublicKey) {
		return nil, fmt.Errorf("export root key: %s does not hold the key of %s", fileRootKey, fileRoot)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("export root key: %w", err)
	}
	defer clear(der)
	out, err := keystore.SealWithPassphrase(passphrase, der)
	if err != nil {
		return nil, fmt.Errorf("export root key: %w", err)
	}
	return out, nil
}

// RemoveRootKey deletes the sealed root CA key, so that a compromise of this
// server and its master key cannot mint a new issuing CA. Export it first:
// without it the root can sign nothing again. Everyday issuance uses only
// the issuing CA and keeps working.
func (a *Authority) RemoveRootKey() error {
	path := filepath.Join(a.dir, fileRootKey)
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove root key: %w", ErrNoRootKey)
		}
		return fmt.Errorf("remove root key: %w", err)
	}
	return syncDir(a.dir)
}
