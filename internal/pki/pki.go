// Package pki is Warden's certificate authority: a root CA that signs the
// issuing CAs (one current at a time, older ones kept through a grace period
// so that an issuing CA can be rotated), which sign the server certificate,
// device and service client certificates, and the CRL. It knows nothing of
// MQTT; registry decides who gets a certificate and broker decides what a
// certificate lets a client do.
//
// The layout on disk, the certificate profiles and the formats are described
// in docs/pki.md. CA private keys exist on disk only sealed by the keystore.
package pki

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

const defaultOrganization = "Warden"

// Authority is a loaded certificate authority. Its methods are safe for
// concurrent use within one process. Two processes may share a directory
// one change at a time: a process that changes the issuing CAs (a CLI
// rotating) makes the other's writes fail with ErrChangedOnDisk until it
// calls Reload, and CRL numbers continue from the file. Two changes at the
// very same moment are not detected and one can be lost.
type Authority struct {
	dir  string
	ks   *keystore.Keystore
	now  func() time.Time
	root *x509.Certificate // never changes: Reload refuses another root

	// crashAt, set only by tests, is called before each step of Rotate; an
	// error stops Rotate there as a kill -9 would.
	crashAt func(step string) error

	// opMu serialises the operations that write the directory, and is held
	// across their file I/O.
	opMu sync.Mutex
	// needReload is set (under opMu) when a rotation failed after its
	// commit point: the directory is ahead of memory, and writing memory
	// back (a CRL number, say) would undo the rotation.
	needReload error

	// mu guards the fields below. It is held only briefly and never across
	// file I/O, so that a slow disk never stalls a TLS handshake waiting in
	// ClientCAs. Fields marked (op) change only with opMu and mu both held,
	// so holding either is enough to read them.
	mu         sync.RWMutex
	org        string            // (op)
	crlURL     string            // (op)
	created    time.Time         // (op)
	crlNumber  uint64            // (op)
	issuing    *x509.Certificate // (op) the current issuing CA
	issuingKey *ecdsa.PrivateKey // (op)
	issuers    []issuerEntry     // (op) current first; replaced, never modified in place
	server     tls.Certificate   // (op)
	pool       *x509.CertPool    // what ClientCAs returns, rebuilt on change
	trusted    []string          // fingerprints of the CAs in pool
	poolUntil  time.Time         // earliest grace deadline among pool's CAs; zero if none
	generation uint64
}

// issuerEntry is an issuing CA with its record; entries are immutable once
// built, so slices of them can be shared.
type issuerEntry struct {
	rec  issuerRecord
	cert *x509.Certificate
}

// caState is what reading the directory produces; install makes it the
// Authority's.
type caState struct {
	org        string
	crlURL     string
	created    time.Time
	crlNumber  uint64
	root       *x509.Certificate
	issuing    *x509.Certificate
	issuingKey *ecdsa.PrivateKey
	issuers    []issuerEntry
	server     tls.Certificate
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
	a.issuers = []issuerEntry{{
		rec:  issuerRecord{Fingerprint: Fingerprint(a.issuing), State: IssuerCurrent, Created: a.created},
		cert: a.issuing,
	}}

	if files[fileRootKey], err = sealKey(ks, recordRootKey, rootKey); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if files[fileIssuingKey], err = sealKey(ks, recordIssuingKey, issuingKey); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	var serverPEM []byte
	a.server, serverPEM, files[fileServerKey], err = a.newServerCertificate(a.org, a.current(), names)
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	files[fileServer] = serverPEM

	a.crlNumber = 1
	crl, err := a.createCRL(a.current(), a.crlNumber, nil)
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	files[fileCRLDER] = crl
	files[fileCRLPEM] = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl})
	if files[fileAuthority], err = a.stateData(a.crlNumber, a.issuers, nil); err != nil {
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
	a.rebuildTrustLocked(now())
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

// stateData encodes authority.json (always version 2) for the Authority's
// settings and the given CRL number, issuers and pending rotation. It needs
// opMu held (or a not yet shared). Grace periods that have ended are
// written as retirements, so the file says what is true.
func (a *Authority) stateData(crlNumber uint64, issuers []issuerEntry, pending *pendingSwitch) ([]byte, error) {
	st := stateFile{
		Version:      stateVersion,
		Organization: a.org,
		CRLURL:       a.crlURL,
		CRLNumber:    crlNumber,
		Created:      a.created,
		Issuers:      make([]issuerRecord, len(issuers)),
		Pending:      pending,
	}
	now := a.now()
	for i, e := range issuers {
		st.Issuers[i] = e.settled(now)
	}
	return encodeState(&st)
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
	return unsealKey(ks, record, sealed, path)
}

// unsealKey opens a sealed key; where says where it came from, for errors.
func unsealKey(ks *keystore.Keystore, record string, sealed []byte, where string) (*ecdsa.PrivateKey, error) {
	der, err := ks.Open(record, sealed)
	if err != nil {
		return nil, fmt.Errorf("unseal %s (is this the master key the CA was created with?): %w", where, err)
	}
	defer clear(der)
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse key in %s: %w", where, err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key in %s is %T, want ECDSA", where, parsed)
	}
	if err := checkP256(&key.PublicKey, where); err != nil {
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
// Load repairs what an interrupted operation can leave: it finishes an
// issuing-CA rotation that was committed but not completed (see Rotate),
// and if server.key.sealed and server.crt do not match (a renewal was
// interrupted between the two writes) it re-issues the server certificate
// for the names in server.crt. It fails for anything else. A version 1
// authority.json (before rotation existed) is read as it is and rewritten
// as version 2 by the first change.
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
	st, err := a.readState()
	if err != nil {
		return nil, fmt.Errorf("load CA from %s: %w", dir, err)
	}
	a.root = st.root
	a.mu.Lock()
	a.install(st)
	a.mu.Unlock()
	return a, nil
}

// install makes st the Authority's state; it needs opMu and mu held (or a
// not yet shared).
func (a *Authority) install(st *caState) {
	a.org, a.crlURL, a.created = st.org, st.crlURL, st.created
	a.crlNumber = max(a.crlNumber, st.crlNumber)
	a.issuing, a.issuingKey = st.issuing, st.issuingKey
	a.issuers = st.issuers
	a.server = st.server
	a.rebuildTrustLocked(a.now())
}

// readState reads and checks the directory. Its only writes are the repairs
// Load describes.
func (a *Authority) readState() (*caState, error) {
	file, err := readStateFile(a.dir)
	if err != nil {
		return nil, err
	}
	root, err := readCACert(a.dir, fileRoot)
	if err != nil {
		return nil, err
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("%s is not a self-signed root CA: %w", fileRoot, err)
	}
	if file.Pending != nil {
		if err := a.finishPending(root, file); err != nil {
			return nil, fmt.Errorf("finish the issuing CA rotation that was interrupted: %w", err)
		}
		if file, err = readStateFile(a.dir); err != nil {
			return nil, err
		}
		if file.Pending != nil {
			return nil, fmt.Errorf("%s still names a pending rotation after it was finished; is another process rotating the issuing CA? Try again when it is done", fileAuthority)
		}
	}
	st := &caState{org: file.Organization, crlURL: file.CRLURL, crlNumber: file.CRLNumber, created: file.Created, root: root}

	if st.issuing, err = readCACert(a.dir, fileIssuing); err != nil {
		return nil, err
	}
	if err := st.issuing.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("%s is not signed by %s: %w", fileIssuing, fileRoot, err)
	}
	if st.issuingKey, err = openKey(a.ks, a.dir, fileIssuingKey, recordIssuingKey); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is missing, so the CA directory is incomplete; restore it from a backup: %w", fileIssuingKey, err)
		}
		return nil, err
	}
	if !st.issuingKey.PublicKey.Equal(st.issuing.PublicKey) {
		return nil, fmt.Errorf("%s does not hold the key of %s", fileIssuingKey, fileIssuing)
	}
	if st.issuers, err = a.readIssuers(file, root, st.issuing); err != nil {
		return nil, err
	}
	if st.server, err = a.loadServer(st); err != nil {
		return nil, err
	}
	return st, nil
}

func readStateFile(dir string) (*stateFile, error) {
	data, err := readCAFile(dir, fileAuthority)
	if err != nil {
		return nil, err
	}
	return parseState(data)
}

// readIssuers pairs the records of authority.json with their certificates:
// issuing.crt for the current one, issuers/<fingerprint>.crt for the rest.
func (a *Authority) readIssuers(file *stateFile, root, current *x509.Certificate) ([]issuerEntry, error) {
	currentFP := Fingerprint(current)
	if file.Version == stateVersion1 {
		return []issuerEntry{{
			rec:  issuerRecord{Fingerprint: currentFP, State: IssuerCurrent, Created: file.Created},
			cert: current,
		}}, nil
	}
	entries := make([]issuerEntry, 0, len(file.Issuers))
	for _, r := range file.Issuers {
		if r.State == IssuerCurrent {
			if r.Fingerprint != currentFP {
				return nil, fmt.Errorf("%s is issuing CA %s, but %s names %s as the current one; restore the directory from a backup", fileIssuing, currentFP, fileAuthority, r.Fingerprint)
			}
			entries = append(entries, issuerEntry{rec: r, cert: current})
			continue
		}
		if r.Fingerprint == currentFP {
			return nil, fmt.Errorf("%s is issuing CA %s, which %s lists as %s, not current; restore the directory from a backup", fileIssuing, currentFP, fileAuthority, r.State)
		}
		file := issuerFile(r.Fingerprint)
		cert, err := readCACert(a.dir, file)
		if err != nil {
			return nil, err
		}
		if got := Fingerprint(cert); got != r.Fingerprint {
			return nil, fmt.Errorf("%s holds issuing CA %s, not the one its name says", file, got)
		}
		if err := cert.CheckSignatureFrom(root); err != nil {
			return nil, fmt.Errorf("%s is not signed by %s: %w", file, fileRoot, err)
		}
		entries = append(entries, issuerEntry{rec: r, cert: cert})
	}
	sortIssuers(entries)
	return entries, nil
}

// sortIssuers puts the current issuer first, then the others newest first.
func sortIssuers(entries []issuerEntry) {
	slices.SortStableFunc(entries, func(x, y issuerEntry) int {
		if (x.rec.State == IssuerCurrent) != (y.rec.State == IssuerCurrent) {
			if x.rec.State == IssuerCurrent {
				return -1
			}
			return 1
		}
		if c := y.rec.Created.Compare(x.rec.Created); c != 0 {
			return c
		}
		return strings.Compare(x.rec.Fingerprint, y.rec.Fingerprint)
	})
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
	data, err := readCAFile(dir, file)
	if err != nil {
		return nil, err
	}
	return parseCACert(data, filepath.Join(dir, file))
}

// parseCACert parses data as exactly one P-256 CA certificate; where names
// it in errors.
func parseCACert(data []byte, where string) (*x509.Certificate, error) {
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", where, err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%s holds %d certificates, want 1", where, len(certs))
	}
	if !certs[0].IsCA || !certs[0].BasicConstraintsValid {
		return nil, fmt.Errorf("%s is not a CA certificate", where)
	}
	if err := checkP256(certs[0].PublicKey, where); err != nil {
		return nil, err
	}
	return certs[0], nil
}

// loadServer reads the server certificate of st's current issuer, and
// replaces it if its key does not match (see Load).
func (a *Authority) loadServer(st *caState) (tls.Certificate, error) {
	path := filepath.Join(a.dir, fileServer)
	data, err := readCAFile(a.dir, fileServer)
	if err != nil {
		return tls.Certificate{}, err
	}
	chain, err := ParseCertificates(data)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s is corrupt: %w", path, err)
	}
	leaf := chain[0]
	if err := leaf.CheckSignatureFrom(st.issuing); err != nil {
		return tls.Certificate{}, fmt.Errorf("%s is not signed by the issuing CA: %w", path, err)
	}
	key, err := openKey(a.ks, a.dir, fileServerKey, recordServerKey)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return tls.Certificate{}, fmt.Errorf("%s is missing, so the CA directory is incomplete; restore it from a backup: %w", fileServerKey, err)
		}
		return tls.Certificate{}, err
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return a.writeServer(st.org, signer{st.issuing, st.issuingKey}, extraNames(leaf))
	}
	return tls.Certificate{
		Certificate: [][]byte{leaf.Raw, st.issuing.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// current returns the current issuing CA; it needs mu or opMu held.
func (a *Authority) current() signer { return signer{a.issuing, a.issuingKey} }

// Root returns the root CA certificate.
func (a *Authority) Root() *x509.Certificate { return a.root }

// Issuing returns the current issuing CA certificate, the one that signs
// everything issued from now on.
func (a *Authority) Issuing() *x509.Certificate {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.issuing
}

// RootPEM returns the root CA certificate as PEM, the trust anchor devices
// and services are given.
func (a *Authority) RootPEM() []byte { return certPEM(a.root) }

// CRLURL returns the CRL distribution point written into client
// certificates ("" if none).
func (a *Authority) CRLURL() string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.crlURL
}

// ClientCAs returns the pool of issuing CAs that client certificates must
// chain to: the current one and those in their grace period (grace_until
// zero or later than now). Anchoring at the issuing CAs rather than the
// root is what makes retiring or revoking an issuing CA take effect: it
// simply leaves this pool.
//
// The pool is built when the set changes and shared after that, so calling
// this for every TLS handshake (from tls.Config.GetConfigForClient) is
// cheap; callers must not modify it. Generation tells when it changed.
func (a *Authority) ClientCAs() *x509.CertPool {
	pool, _ := a.trust()
	return pool
}

// ServerCertificate returns the server certificate chain (leaf, current
// issuing CA) with its private key and Leaf set, ready for
// tls.Config.Certificates. It fails once the certificate has expired, so a
// server that has run past it notices instead of serving a certificate every
// client rejects.
func (a *Authority) ServerCertificate() (tls.Certificate, error) {
	a.mu.RLock()
	c := a.server
	a.mu.RUnlock()
	if c.Leaf == nil {
		return tls.Certificate{}, errors.New("server certificate: none loaded")
	}
	if now := a.now(); now.After(c.Leaf.NotAfter) {
		return tls.Certificate{}, fmt.Errorf("server certificate expired at %s; renew it (RenewServerCertificate)", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	c.Certificate = slices.Clone(c.Certificate)
	return c, nil
}

// HasRootKey reports whether the sealed root CA key is still on this server.
func (a *Authority) HasRootKey() bool {
	_, err := os.Lstat(filepath.Join(a.dir, fileRootKey))
	return err == nil
}

// ExportRootKey returns the root CA private key (PKCS#8 DER) sealed with
// keystore.SealWithPassphrase, for offline storage. It leaves the sealed key
// on the server; RemoveRootKey deletes it, ImportRootKey puts it back.
func (a *Authority) ExportRootKey(passphrase []byte) ([]byte, error) {
	key, err := a.rootKey()
	if err != nil {
		return nil, fmt.Errorf("export root key: %w", err)
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

// rootKey opens the sealed root key; without it the error wraps
// ErrNoRootKey.
func (a *Authority) rootKey() (*ecdsa.PrivateKey, error) {
	key, err := openKey(a.ks, a.dir, fileRootKey, recordRootKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (it was removed; import the exported copy with ImportRootKey)", ErrNoRootKey)
	}
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(a.root.PublicKey) {
		return nil, fmt.Errorf("%s does not hold the key of %s", fileRootKey, fileRoot)
	}
	return key, nil
}

// ImportRootKey puts back on the server a root key exported by
// ExportRootKey (sealed is its output, passphrase the one it was sealed
// with), for the rare operation that needs it: rotating the issuing CA. It
// refuses a key that is not the one of root.crt. Remove it again afterwards
// (RemoveRootKey).
func (a *Authority) ImportRootKey(sealed, passphrase []byte) error {
	der, err := keystore.OpenWithPassphrase(passphrase, sealed)
	if err != nil {
		return fmt.Errorf("import root key: %w", err)
	}
	defer clear(der)
	key, err := ParsePrivateKey(der)
	if err != nil {
		return fmt.Errorf("import root key: %w", err)
	}
	if !key.PublicKey.Equal(a.root.PublicKey) {
		return fmt.Errorf("import root key: it is not the key of this CA's root (%s, fingerprint %s); was it exported from another Warden installation?", a.root.Subject.CommonName, Fingerprint(a.root))
	}
	blob, err := sealKey(a.ks, recordRootKey, key)
	if err != nil {
		return fmt.Errorf("import root key: %w", err)
	}
	a.opMu.Lock()
	defer a.opMu.Unlock()
	if err := writeFileAtomic(filepath.Join(a.dir, fileRootKey), blob, filePermSecret); err != nil {
		return fmt.Errorf("import root key: %w", err)
	}
	return nil
}

// RemoveRootKey deletes the sealed root CA key, so that a compromise of this
// server and its master key cannot mint a new issuing CA. Export it first:
// without it the root can sign nothing again. Everyday issuance uses only
// the issuing CA and keeps working.
func (a *Authority) RemoveRootKey() error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	path := filepath.Join(a.dir, fileRootKey)
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove root key: %w", ErrNoRootKey)
		}
		return fmt.Errorf("remove root key: %w", err)
	}
	return syncDir(a.dir)
}
