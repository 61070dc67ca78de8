package wardentest

// Helpers for crash and soak tests (test/adversarial/faults): read the
// registry beside a running or killed server, sample a server's memory,
// and look for secrets in the clear in a data directory and in logs.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	binenc "encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

// OpenStore opens the registry database of the data directory data the
// way an operator tool would, beside a running server (SQLite in WAL mode
// allows it) or after one was killed, so that a test can check what was
// committed rather than what the CLI reports. It is closed when the test
// ends.
func OpenStore(t testing.TB, data string) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(data, "registry.db"))
	if err != nil {
		t.Fatalf("open the registry of %s: %v", data, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// ProcSample is what /proc/<pid>/status says of a process's memory.
type ProcSample struct {
	// RSS is the resident set size (VmRSS) in bytes.
	RSS int64
	// HWM is the peak resident set size (VmHWM) in bytes.
	HWM int64
	// Threads is the number of operating-system threads.
	Threads int
}

// ProcStatus reads the current server process's /proc/<pid>/status. It
// fails (returns the error) where there is no /proc, or after the process
// ended.
func (s *Server) ProcStatus() (ProcSample, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(s.Process().Pid), "status"))
	if err != nil {
		return ProcSample{}, fmt.Errorf("read the status of warden serve: %w", err)
	}
	var ps ProcSample
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			ps.RSS = n * 1024
		case "VmHWM":
			ps.HWM = n * 1024
		case "Threads":
			ps.Threads = int(n)
		}
	}
	if ps.RSS == 0 {
		return ps, errors.New("read the status of warden serve: no VmRSS line")
	}
	return ps, nil
}

// Secrets collects the secrets a test created or that Warden created for
// it (device private keys, envelope master secrets, API tokens, the CA and
// master keys), each in every form it could leak in: the raw bytes, hex,
// and base64 (standard and URL alphabets, at every alignment, so that the
// secret is found inside a longer encoded blob such as a PEM or a DER key
// too). Scan then looks for all of them at once. It is safe for concurrent
// use.
type Secrets struct {
	mu      sync.Mutex
	entries []*secretEntry
	seen    map[string]bool // raw secrets already added
}

type secretEntry struct {
	name string
	// allowed are data-directory-relative paths where the secret is meant
	// to be in the clear (the master key in master.key).
	allowed []string
	forms   []secretForm
}

type secretForm struct {
	label string
	b     []byte
}

// minSecretLen is the shortest secret worth scanning for: shorter ones
// would match random bytes.
const minSecretLen = 16

// Len is how many secrets were added.
func (s *Secrets) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// Add records a secret of at least 16 bytes under a name for reports;
// allowedIn lists the data-directory-relative paths (slash-separated)
// where it is supposed to be in the clear. Adding the same bytes twice
// keeps the first.
func (s *Secrets) Add(name string, raw []byte, allowedIn ...string) error {
	if len(raw) < minSecretLen {
		return fmt.Errorf("secret %s is %d bytes; at least %d are needed to find it without false alarms", name, len(raw), minSecretLen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]bool{}
	}
	if s.seen[string(raw)] {
		return nil
	}
	s.seen[string(raw)] = true
	e := &secretEntry{name: name, allowed: allowedIn}
	add := func(label string, b []byte) {
		for _, f := range e.forms {
			if bytes.Equal(f.b, b) {
				return
			}
		}
		e.forms = append(e.forms, secretForm{label, b})
	}
	add("raw", bytes.Clone(raw))
	add("hex", []byte(hex.EncodeToString(raw)))
	add("HEX", []byte(strings.ToUpper(hex.EncodeToString(raw))))
	// A secret inside a longer base64 text starts at some offset of the
	// encoded stream: of its bytes, those from the first 3-byte boundary
	// on are encoded the same whatever came before. One form per
	// alignment finds it anywhere.
	for k := range 3 {
		part := raw[k:]
		part = part[:len(part)/3*3]
		add("base64+"+strconv.Itoa(k), []byte(base64.RawStdEncoding.EncodeToString(part)))
		add("base64url+"+strconv.Itoa(k), []byte(base64.RawURLEncoding.EncodeToString(part)))
	}
	s.entries = append(s.entries, e)
	return nil
}

// MustAdd is Add failing the test on a secret too short to scan for.
func (s *Secrets) MustAdd(t testing.TB, name string, raw []byte, allowedIn ...string) {
	t.Helper()
	if err := s.Add(name, raw, allowedIn...); err != nil {
		t.Fatal(err)
	}
}

// AddECKey records an ECDSA private key by its scalar, which every
// encoding of the key (PKCS #8, SEC 1, PEM, JWK, a raw scalar) contains.
func (s *Secrets) AddECKey(t testing.TB, name string, k *ecdsa.PrivateKey, allowedIn ...string) {
	t.Helper()
	d, err := k.Bytes()
	if err != nil {
		t.Fatalf("secret %s: %v", name, err)
	}
	s.MustAdd(t, name, d, allowedIn...)
}

// AddKeyFile records the private key in a file `warden device add` or
// `warden device provision` wrote (PEM, DER or raw).
func (s *Secrets) AddKeyFile(t testing.TB, name, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read the key file %s: %v", path, err)
	}
	k, err := pki.ParsePrivateKey(b)
	if err != nil {
		t.Fatalf("key file %s: %v", path, err)
	}
	s.AddECKey(t, name, k)
}

// AddCredentialDir records every private key and envelope secret in a
// directory of device or service credentials as `warden device provision
// --out DIR` and `warden device add --envelope` write it, including a
// complete temporary file an interrupted write left (.ID.key.tmp-*). It
// returns how many secrets it found.
func (s *Secrets) AddCredentialDir(t testing.TB, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read the credential directory %s: %v", dir, err)
	}
	n := 0
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		if !e.Type().IsRegular() {
			continue
		}
		switch {
		case strings.HasSuffix(name, ".envelope.json"):
			s.AddEnvelopeBundle(t, path)
			n++
		case strings.Contains(name, ".key"):
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read %s: %v", path, err)
			}
			k, err := pki.ParsePrivateKey(b)
			if err != nil && strings.HasPrefix(name, ".") {
				// A temporary file cut short by a kill: part of a key,
				// or nothing, and no key was delivered from it.
				continue
			}
			if err != nil {
				t.Fatalf("key file %s: %v", path, err)
			}
			s.AddECKey(t, "device key "+name, k)
			n++
		}
	}
	return n
}

// AddEnvelopeBundle records the master secret of an envelope bundle
// (ID.envelope.json); a sign-p256 bundle has none.
func (s *Secrets) AddEnvelopeBundle(t testing.TB, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read the envelope bundle %s: %v", path, err)
	}
	var bundle struct {
		DeviceID  string `json:"device_id"`
		SecretHex string `json:"secret_hex"`
	}
	if err := json.Unmarshal(b, &bundle); err != nil {
		t.Fatalf("envelope bundle %s: %v", path, err)
	}
	if bundle.SecretHex == "" {
		return
	}
	secret, err := hex.DecodeString(bundle.SecretHex)
	if err != nil {
		t.Fatalf("envelope bundle %s: secret_hex: %v", path, err)
	}
	s.MustAdd(t, "envelope secret of "+bundle.DeviceID, secret)
}

// AddAPIToken records an API token as `warden token create` printed it:
// its 32-byte secret (the ID half may be logged).
func (s *Secrets) AddAPIToken(t testing.TB, token string) {
	t.Helper()
	id, secret, err := apitoken.Parse(strings.TrimSpace(token))
	if err != nil {
		t.Fatalf("not an API token: %v", err)
	}
	s.MustAdd(t, "API token "+id, secret)
}

// sealedKey is one key file the keystore seals under the master key.
type sealedKey struct {
	file, record string
	cert         string // the certificate the key must match; "" for none
}

func sealedKeys() []sealedKey {
	return []sealedKey{
		{"pki/root.key.sealed", "pki/root.key", "pki/root.crt"},
		{"pki/issuing.key.sealed", "pki/issuing.key", "pki/issuing.crt"},
		{"pki/server.key.sealed", "pki/server.key", "pki/server.crt"},
		{"claim.key.sealed", "onboard/claim.key", ""},
	}
}

// AddSealedKeys records the master key of the data directory data (allowed
// in master.key only) and every private key Warden keeps sealed under it
// (the root, issuing and server CA keys, the claim key), after checking
// that each is sealed at rest: the file is a keystore record (version
// byte, nonce, ciphertext and tag), it opens under the master key with its
// record name, and what it opens to is the key of its certificate. Scan
// then proves that no form of the key is in the file, or anywhere else.
// It returns how many sealed keys it checked.
func (s *Secrets) AddSealedKeys(t testing.TB, data string) int {
	t.Helper()
	mkPath := filepath.Join(data, "master.key")
	mk, err := keystore.LoadMasterKey(mkPath)
	if err != nil {
		t.Fatalf("load the master key: %v", err)
	}
	s.MustAdd(t, "master key", mk, "master.key")
	ks, err := keystore.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, sk := range sealedKeys() {
		path := filepath.Join(data, filepath.FromSlash(sk.file))
		sealed, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatalf("read %s: %v", sk.file, err)
		}
		if len(sealed) < 1+12+16 || sealed[0] != 0x01 {
			t.Errorf("%s is not a sealed keystore record (%d bytes, first byte %#x): the key is not encrypted at rest", sk.file, len(sealed), sealed[:min(1, len(sealed))])
			continue
		}
		if _, err := pki.ParsePrivateKey(sealed); err == nil {
			t.Errorf("%s parses as a private key in the clear", sk.file)
		}
		der, err := ks.Open(sk.record, sealed)
		if err != nil {
			t.Errorf("%s does not open as record %s under the master key: %v", sk.file, sk.record, err)
			continue
		}
		if len(sealed) != len(der)+1+12+16 {
			t.Errorf("%s: %d bytes seal %d bytes of key; a record adds exactly 29", sk.file, len(sealed), len(der))
		}
		key, err := pki.ParsePrivateKey(der)
		if err != nil {
			t.Errorf("%s opens to something that is not a P-256 key: %v", sk.file, err)
			continue
		}
		if sk.cert != "" {
			cb, err := os.ReadFile(filepath.Join(data, filepath.FromSlash(sk.cert)))
			if err != nil {
				t.Fatalf("read %s: %v", sk.cert, err)
			}
			certs, err := pki.ParseCertificates(cb)
			if err != nil || len(certs) == 0 {
				t.Fatalf("%s: %v", sk.cert, err)
			}
			if !key.PublicKey.Equal(certs[0].PublicKey) {
				t.Errorf("%s does not hold the key of %s", sk.file, sk.cert)
			}
		}
		if bytes.Contains(sealed, der) {
			t.Errorf("%s contains its key's DER in the clear", sk.file)
		}
		s.AddECKey(t, "sealed key "+sk.record, key)
		n++
	}
	return n
}

// Leak is one secret found in the clear.
type Leak struct {
	Secret string // the name it was added under
	Form   string // raw, hex, base64+k, ...
	Where  string // a data-relative file path, or the name of a text
	Offset int    // in the file or text (after removing line breaks, for an encoded form)
}

// String says which secret was found where, for a test failure.
func (l Leak) String() string {
	return fmt.Sprintf("%s (%s) in %s at %d", l.Secret, l.Form, l.Where, l.Offset)
}

// ScanReport says what Scan looked at.
type ScanReport struct {
	Files, Bytes int
	// Images are firmware blobs (data/firmware/<sha256>.img) that were
	// not searched because their content hashes to their name: they hold
	// exactly an uploaded image, which the test made.
	Images int
	Leaks  []Leak
}

// Scan looks for every secret, in each of its forms, in every regular file
// under the data directory data (a secret is allowed only in the paths it
// was added with) and in each text (logs, a process's output), also after
// removing line breaks and escaped line breaks, which a PEM or a JSON log
// puts inside encoded secrets.
func (s *Secrets) Scan(t testing.TB, data string, texts map[string]string) ScanReport {
	t.Helper()
	s.mu.Lock()
	idx := newSecretIndex(s.entries)
	s.mu.Unlock()
	var rep ScanReport
	err := filepath.WalkDir(data, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(data, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // a temporary file renamed away meanwhile
		}
		if err != nil {
			return err
		}
		if isVerifiedImage(rel, b) {
			rep.Images++
			return nil
		}
		rep.Files++
		rep.Bytes += len(b)
		rep.Leaks = append(rep.Leaks, idx.find(rel, b)...)
		return nil
	})
	if err != nil {
		t.Fatalf("scan %s for secrets: %v", data, err)
	}
	names := make([]string, 0, len(texts))
	for n := range texts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		rep.Bytes += len(texts[n])
		rep.Leaks = append(rep.Leaks, idx.find(n, []byte(texts[n]))...)
	}
	return rep
}

// isVerifiedImage reports whether rel is a firmware blob whose content
// hashes to its name.
func isVerifiedImage(rel string, b []byte) bool {
	name, ok := strings.CutPrefix(rel, "firmware/")
	if !ok {
		return false
	}
	sha, ok := strings.CutSuffix(name, ".img")
	if !ok || strings.Contains(sha, "/") {
		return false
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]) == sha
}

// secretIndex finds many patterns of at least 16 bytes in one pass: each
// is keyed by its first 8 bytes, and a bit table of those keys' hashes
// rules out almost every position with one load.
type secretIndex struct {
	bits []uint64
	by   map[uint64][]indexedForm
}

type indexedForm struct {
	e *secretEntry
	f secretForm
}

const indexBits = 20

func keyHash(v uint64) uint64 { return (v * 0x9E3779B97F4A7C15) >> (64 - indexBits) }

func newSecretIndex(entries []*secretEntry) *secretIndex {
	idx := &secretIndex{bits: make([]uint64, (1<<indexBits)/64), by: map[uint64][]indexedForm{}}
	for _, e := range entries {
		for _, f := range e.forms {
			v := binenc.LittleEndian.Uint64(f.b)
			h := keyHash(v)
			idx.bits[h/64] |= 1 << (h % 64)
			idx.by[v] = append(idx.by[v], indexedForm{e, f})
		}
	}
	return idx
}

// find returns the leaks in b, which is named where; it also searches b
// with its line breaks and escaped line breaks removed.
func (idx *secretIndex) find(where string, b []byte) []Leak {
	var leaks []Leak
	seen := map[string]bool{}
	report := func(i int, c indexedForm) {
		for _, a := range c.e.allowed {
			if a == where {
				return
			}
		}
		key := c.e.name + "\x00" + c.f.label
		if !seen[key] {
			seen[key] = true
			leaks = append(leaks, Leak{Secret: c.e.name, Form: c.f.label, Where: where, Offset: i})
		}
	}
	idx.scan(b, report)
	if bytes.ContainsAny(b, "\r\n") {
		idx.scan(strip(b, "\r", "\n"), report)
	}
	if bytes.Contains(b, []byte(`\n`)) || bytes.Contains(b, []byte(`\r`)) {
		idx.scan(strip(b, `\r`, `\n`), report)
	}
	return leaks
}

// scan calls found for every form that occurs in h. It reads every byte
// of every file of a data directory; the race detector would make it a
// hundred times slower for nothing (h and the index are not shared while
// it runs), hence norace.
//
//go:norace
func (idx *secretIndex) scan(h []byte, found func(int, indexedForm)) {
	for i := 0; i+8 <= len(h); i++ {
		v := binenc.LittleEndian.Uint64(h[i:])
		hb := keyHash(v)
		if idx.bits[hb/64]&(1<<(hb%64)) == 0 {
			continue
		}
		for _, c := range idx.by[v] {
			if bytes.HasPrefix(h[i:], c.f.b) {
				found(i, c)
			}
		}
	}
}

// strip returns b without any of the sequences cut.
func strip(b []byte, cut ...string) []byte {
	out := bytes.Clone(b)
	for _, c := range cut {
		out = bytes.ReplaceAll(out, []byte(c), nil)
	}
	return out
}

// CertificateMatchesKey reports whether the PEM certificate file certPath
// holds the public half of the private key file keyPath, as a device's
// credential files must.
func CertificateMatchesKey(certPath, keyPath string) (*x509.Certificate, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	certs, err := pki.ParseCertificates(cb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no certificate", certPath)
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	k, err := pki.ParsePrivateKey(kb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !k.PublicKey.Equal(certs[0].PublicKey) {
		return certs[0], fmt.Errorf("%s does not hold the key of %s", keyPath, certPath)
	}
	return certs[0], nil
}

// IssuingCA reads the data directory's current issuing CA certificate.
func IssuingCA(t testing.TB, data string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(data, "pki", "issuing.crt"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCertificates(b)
	if err != nil || len(certs) != 1 {
		t.Fatalf("pki/issuing.crt: %v", err)
	}
	return certs[0]
}
