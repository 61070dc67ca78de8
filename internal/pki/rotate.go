package pki

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ErrChangedOnDisk is returned by an operation that would write the CA
// directory when another process has changed its issuing CAs since this one
// read them (the CLI rotated, say): writing from memory would undo that
// change. Reload, then try again.
var ErrChangedOnDisk = errors.New("the CA directory was changed by another process")

// ErrUnknownIssuer is returned for a fingerprint that names none of this
// CA's issuing CAs.
var ErrUnknownIssuer = errors.New("no such issuing CA in this certificate authority")

// IssuerInfo describes one issuing CA.
type IssuerInfo struct {
	// Certificate is the issuing CA's certificate; shared, do not modify.
	Certificate *x509.Certificate
	// Fingerprint is Fingerprint(Certificate), the name operators use.
	Fingerprint string
	// State is IssuerCurrent, IssuerGrace, IssuerRetired or IssuerRevoked.
	// A grace period that has ended reads as IssuerRetired, with RetiredAt
	// its end.
	State string
	// Created is when this CA made the issuing CA.
	Created time.Time
	// GraceUntil is when a grace period ends (zero: when RetireIssuer is
	// called). Kept after retirement or revocation, as history.
	GraceUntil time.Time
	// RetiredAt and RevokedAt are when the issuing CA stopped being trusted
	// by retirement or revocation.
	RetiredAt time.Time
	RevokedAt time.Time
	// Reason is the operator's reason for a revocation.
	Reason string
}

// Steps of Rotate, in order, as the test hook crashAt sees them. A step is
// announced before it starts.
const (
	stepArchive    = "archive"     // copy the current issuer's certificate to issuers/
	stepCommit     = "commit"      // authority.json with the new issuers and the pending files
	stepIssuingKey = "issuing-key" // the pending files into place, one by one
	stepIssuingCrt = "issuing-crt"
	stepServerKey  = "server-key"
	stepServerCrt  = "server-crt"
	stepFinish     = "finish" // authority.json without the pending files
)

// settled is the record as it stands at now: a grace period that has ended
// is a retirement.
func (e issuerEntry) settled(now time.Time) issuerRecord {
	r := e.rec
	if r.State == IssuerGrace && !r.GraceUntil.IsZero() && !now.Before(r.GraceUntil) {
		r.State = IssuerRetired
		r.RetiredAt = r.GraceUntil
	}
	return r
}

func (e issuerEntry) info(now time.Time) IssuerInfo {
	r := e.settled(now)
	return IssuerInfo{
		Certificate: e.cert,
		Fingerprint: r.Fingerprint,
		State:       r.State,
		Created:     r.Created,
		GraceUntil:  r.GraceUntil,
		RetiredAt:   r.RetiredAt,
		RevokedAt:   r.RevokedAt,
		Reason:      r.Reason,
	}
}

// checkCurrent refuses to write the directory from memory that is behind
// it: after a rotation here failed past its commit point, or when
// authority.json lists other issuing CAs than memory does (another process
// changed them). Another process's CRLs do not count: it returns the CRL
// number on disk, and writers continue from the larger of that and their
// own, so numbers never repeat. It needs opMu held.
func (a *Authority) checkCurrent() (uint64, error) {
	if a.needReload != nil {
		return 0, fmt.Errorf("%w; call Reload (or restart Warden) first", a.needReload)
	}
	file, err := readStateFile(a.dir)
	if err != nil {
		return 0, err
	}
	stale := fmt.Errorf("%w: %s lists other issuing CAs than this process loaded; call Reload, then try again", ErrChangedOnDisk, fileAuthority)
	if file.Pending != nil {
		return 0, stale
	}
	if file.Version == stateVersion1 {
		if len(a.issuers) != 1 {
			return 0, stale
		}
		return file.CRLNumber, nil
	}
	if len(file.Issuers) != len(a.issuers) {
		return 0, stale
	}
	now := a.now()
	mine := make(map[string]issuerRecord, len(a.issuers))
	for _, e := range a.issuers {
		mine[e.rec.Fingerprint] = e.settled(now)
	}
	for _, r := range file.Issuers {
		m, ok := mine[r.Fingerprint]
		r = issuerEntry{rec: r}.settled(now)
		if !ok || m.State != r.State || !m.Created.Equal(r.Created) || !m.GraceUntil.Equal(r.GraceUntil) ||
			!m.RetiredAt.Equal(r.RetiredAt) || !m.RevokedAt.Equal(r.RevokedAt) || m.Reason != r.Reason {
			return 0, stale
		}
	}
	return file.CRLNumber, nil
}

// Rotate creates a new issuing CA under the root and makes it current: from
// then on it signs every certificate and CRL, and the server certificate is
// re-issued under it for the same names (with a new key). The previous
// current issuing CA enters its grace period: client certificates it signed
// stay trusted until now+grace, or until RetireIssuer if grace is 0.
// Re-issuing device certificates is the caller's job (IssueDevice signs
// with the new issuing CA).
//
// Rotate needs the root key on this server; without it the error wraps
// ErrNoRootKey (put it back with ImportRootKey). The old issuing CA's key is
// deleted: nothing it could still sign is needed, since certificate status
// lives in the registry and the CRL is signed by the current issuing CA.
//
// A crash at any point leaves the directory in the old state or the new
// one: everything the new state needs is written first, then one atomic
// write of authority.json commits it, and Load finishes a committed rotation
// if it was interrupted.
func (a *Authority) Rotate(grace time.Duration) (IssuerInfo, error) {
	if grace < 0 {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: grace period %s is negative; give 0 to trust the old issuing CA until it is retired", grace)
	}
	a.opMu.Lock()
	defer a.opMu.Unlock()
	diskCRL, err := a.checkCurrent()
	if err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: %w", err)
	}
	crlNumber := max(a.crlNumber, diskCRL)
	if len(a.issuers) >= maxIssuers {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: this CA has had %d issuing CAs, the most %s can list", len(a.issuers), fileAuthority)
	}
	rootKey, err := a.rootKey()
	if err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: %w", err)
	}
	now := a.now()
	if !now.Before(a.root.NotAfter) {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: the root CA expired at %s; it can sign no new issuing CA", a.root.NotAfter.UTC().Format(time.RFC3339))
	}

	key, err := GenerateKey()
	if err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: %w", err)
	}
	cert, err := a.createIssuing(key, a.root, rootKey)
	if err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: %w", err)
	}
	next := signer{cert, key}
	fp := Fingerprint(cert)
	names, err := serverNames(extraNames(a.server.Leaf))
	if err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: names of the current server certificate: %w", err)
	}
	server, serverPEM, serverSealed, err := a.newServerCertificate(a.org, next, names)
	if err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: %w", err)
	}
	issuingSealed, err := sealKey(a.ks, recordIssuingKey, key)
	if err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: %w", err)
	}

	entries := make([]issuerEntry, 0, len(a.issuers)+1)
	entries = append(entries, issuerEntry{
		rec:  issuerRecord{Fingerprint: fp, State: IssuerCurrent, Created: now.UTC().Truncate(time.Second)},
		cert: cert,
	})
	for _, e := range a.issuers {
		r := e.settled(now)
		if r.State == IssuerCurrent {
			r.State = IssuerGrace
			if grace > 0 {
				r.GraceUntil = now.UTC().Add(grace)
			}
		}
		entries = append(entries, issuerEntry{rec: r, cert: e.cert})
	}
	sortIssuers(entries)
	pending := &pendingSwitch{
		IssuingCert:      certPEM(cert),
		IssuingKeySealed: issuingSealed,
		ServerCert:       serverPEM,
		ServerKeySealed:  serverSealed,
	}
	commitData, err := a.stateData(crlNumber, entries, pending)
	if err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: %w", err)
	}
	finalData, err := a.stateData(crlNumber, entries, nil)
	if err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: %w", err)
	}

	step := func(name string) error {
		if a.crashAt != nil {
			return a.crashAt(name)
		}
		return nil
	}
	if err := step(stepArchive); err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: %w", err)
	}
	if err := a.archiveIssuer(a.issuing); err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: %w", err)
	}
	if err := step(stepCommit); err != nil {
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: %w", err)
	}
	// From here on the rotation may be on disk (a failed write can still
	// have renamed), so any failure leaves memory behind the directory.
	err = writeFileAtomic(filepath.Join(a.dir, fileAuthority), commitData, filePermSecret)
	if err == nil {
		err = applySwitch(a.dir, pending, finalData, step)
	}
	if err != nil {
		a.needReload = fmt.Errorf("the rotation to issuing CA %s failed after it may have been committed (%v)", fp, err)
		return IssuerInfo{}, fmt.Errorf("rotate issuing CA: the switch to %s may be recorded but is not finished: %w; call Reload (or restart Warden), which finishes a recorded switch", fp, err)
	}

	a.mu.Lock()
	a.issuing, a.issuingKey = cert, key
	a.issuers = entries
	a.server = server
	a.crlNumber = crlNumber
	a.generation++
	a.rebuildTrustLocked(now)
	a.mu.Unlock()
	return entries[0].info(now), nil
}

// archiveIssuer copies an issuing CA's certificate to issuers/, where it
// must be before authority.json stops calling it current.
func (a *Authority) archiveIssuer(cert *x509.Certificate) error {
	if err := os.Mkdir(filepath.Join(a.dir, dirIssuers), dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", filepath.Join(a.dir, dirIssuers), err)
	}
	if err := syncDir(a.dir); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(a.dir, issuerFile(Fingerprint(cert))), certPEM(cert), filePermPublic)
}

// applySwitch writes a committed rotation's files into place and then
// final, authority.json without them. Every write is whole and the same
// bytes each time, so a switch interrupted anywhere is finished by running
// it again. step, if not nil, is told each step before it starts.
func applySwitch(dir string, p *pendingSwitch, final []byte, step func(string) error) error {
	writes := []struct {
		step, file string
		data       []byte
		perm       fs.FileMode
	}{
		{stepIssuingKey, fileIssuingKey, p.IssuingKeySealed, filePermSecret},
		{stepIssuingCrt, fileIssuing, p.IssuingCert, filePermPublic},
		{stepServerKey, fileServerKey, p.ServerKeySealed, filePermSecret},
		{stepServerCrt, fileServer, p.ServerCert, filePermPublic},
		{stepFinish, fileAuthority, final, filePermSecret},
	}
	for _, w := range writes {
		if step != nil {
			if err := step(w.step); err != nil {
				return err
			}
		}
		if err := writeFileAtomic(filepath.Join(dir, w.file), w.data, w.perm); err != nil {
			return err
		}
	}
	return nil
}

// finishPending completes a committed rotation found in file: it checks
// every pending file before writing any, then applies the switch.
func (a *Authority) finishPending(root *x509.Certificate, file *stateFile) error {
	p := file.Pending
	cert, err := parseCACert(p.IssuingCert, "the pending issuing CA certificate in "+fileAuthority)
	if err != nil {
		return err
	}
	if err := cert.CheckSignatureFrom(root); err != nil {
		return fmt.Errorf("the pending issuing CA certificate is not signed by %s: %w", fileRoot, err)
	}
	fp := Fingerprint(cert)
	i := slices.IndexFunc(file.Issuers, func(r issuerRecord) bool { return r.State == IssuerCurrent })
	if file.Issuers[i].Fingerprint != fp {
		return fmt.Errorf("the pending issuing CA is %s but %s names %s as current", fp, fileAuthority, file.Issuers[i].Fingerprint)
	}
	key, err := unsealKey(a.ks, recordIssuingKey, p.IssuingKeySealed, "the pending issuing CA key in "+fileAuthority)
	if err != nil {
		return err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return errors.New("the pending issuing CA key does not match its certificate")
	}
	chain, err := ParseCertificates(p.ServerCert)
	if err != nil {
		return fmt.Errorf("the pending server certificate is corrupt: %w", err)
	}
	if err := chain[0].CheckSignatureFrom(cert); err != nil {
		return fmt.Errorf("the pending server certificate is not signed by the pending issuing CA: %w", err)
	}
	serverKey, err := unsealKey(a.ks, recordServerKey, p.ServerKeySealed, "the pending server key in "+fileAuthority)
	if err != nil {
		return err
	}
	if !serverKey.PublicKey.Equal(chain[0].PublicKey) {
		return errors.New("the pending server key does not match its certificate")
	}
	final := *file
	final.Pending = nil
	data, err := encodeState(&final)
	if err != nil {
		return err
	}
	return applySwitch(a.dir, p, data, nil)
}

// Issuers lists the issuing CAs: the current one first, then the others
// newest first.
func (a *Authority) Issuers() []IssuerInfo {
	now := a.now()
	a.mu.RLock()
	entries := a.issuers
	a.mu.RUnlock()
	out := make([]IssuerInfo, len(entries))
	for i, e := range entries {
		out[i] = e.info(now)
	}
	return out
}

// IssuerOf tells which of this CA's issuing CAs signed cert, by checking the
// signature (names alone can be copied), whatever that issuer's state. It
// reports false for a certificate none of them signed.
func (a *Authority) IssuerOf(cert *x509.Certificate) (IssuerInfo, bool) {
	if cert == nil {
		return IssuerInfo{}, false
	}
	now := a.now()
	a.mu.RLock()
	entries := a.issuers
	a.mu.RUnlock()
	for _, e := range entries {
		if !bytes.Equal(cert.RawIssuer, e.cert.RawSubject) {
			continue
		}
		if cert.CheckSignatureFrom(e.cert) == nil {
			return e.info(now), true
		}
	}
	return IssuerInfo{}, false
}

// RetireIssuer stops trusting an issuing CA in its grace period (fingerprint
// as Fingerprint or OpenSSL prints it). Retiring a retired one does nothing;
// the current one and a revoked one are refused.
func (a *Authority) RetireIssuer(fingerprint string) error {
	return a.updateIssuer("retire", fingerprint, func(r *issuerRecord, now time.Time) (bool, error) {
		switch r.State {
		case IssuerCurrent:
			return false, errors.New("it is the current issuing CA, which signs everything; rotate first (Rotate), then retire it")
		case IssuerRetired:
			return false, nil
		case IssuerRevoked:
			return false, errors.New("it is revoked already, which is final")
		}
		r.State = IssuerRetired
		r.RetiredAt = now.UTC().Truncate(time.Second)
		return true, nil
	})
}

// RevokeIssuer stops trusting an issuing CA at once and for good, because
// it must not be trusted (a leaked key, say); reason (at most
// MaxRevocationReason bytes of one-line text, may be empty) is recorded. An
// issuer in its grace period or retired can be revoked; the current one is
// refused (rotate first), and revoking a revoked one does nothing (the first
// reason stays). Connections already open with its certificates are the
// caller's to close; Generation tells that trust changed.
func (a *Authority) RevokeIssuer(fingerprint, reason string) error {
	reason = strings.TrimSpace(reason)
	if err := validateReason(reason); err != nil {
		return fmt.Errorf("revoke issuing CA: %w", err)
	}
	return a.updateIssuer("revoke", fingerprint, func(r *issuerRecord, now time.Time) (bool, error) {
		switch r.State {
		case IssuerCurrent:
			return false, errors.New("it is the current issuing CA, which signs everything; rotate first (Rotate), then revoke it")
		case IssuerRevoked:
			return false, nil
		}
		r.State = IssuerRevoked
		r.RevokedAt = now.UTC().Truncate(time.Second)
		r.Reason = reason
		return true, nil
	})
}

// updateIssuer applies change to the record of the issuer named by
// fingerprint, stores the result and installs it.
func (a *Authority) updateIssuer(verb, fingerprint string, change func(*issuerRecord, time.Time) (bool, error)) error {
	fp, err := normaliseFingerprint(fingerprint)
	if err != nil {
		return fmt.Errorf("%s issuing CA: %w", verb, err)
	}
	a.opMu.Lock()
	defer a.opMu.Unlock()
	diskCRL, err := a.checkCurrent()
	if err != nil {
		return fmt.Errorf("%s issuing CA %s: %w", verb, fp, err)
	}
	crlNumber := max(a.crlNumber, diskCRL)
	i := slices.IndexFunc(a.issuers, func(e issuerEntry) bool { return e.rec.Fingerprint == fp })
	if i < 0 {
		return fmt.Errorf("%s issuing CA %s: %w (Issuers lists them)", verb, fp, ErrUnknownIssuer)
	}
	now := a.now()
	entries := make([]issuerEntry, len(a.issuers))
	for j, e := range a.issuers {
		entries[j] = issuerEntry{rec: e.settled(now), cert: e.cert}
	}
	changed, err := change(&entries[i].rec, now)
	if err != nil {
		return fmt.Errorf("%s issuing CA %s: %w", verb, fp, err)
	}
	if !changed {
		return nil
	}
	data, err := a.stateData(crlNumber, entries, nil)
	if err != nil {
		return fmt.Errorf("%s issuing CA %s: %w", verb, fp, err)
	}
	if err := writeFileAtomic(filepath.Join(a.dir, fileAuthority), data, filePermSecret); err != nil {
		return fmt.Errorf("%s issuing CA %s: %w", verb, fp, err)
	}
	a.mu.Lock()
	a.issuers = entries
	a.crlNumber = crlNumber
	a.rebuildTrustLocked(now)
	a.mu.Unlock()
	return nil
}

// Generation is a number that changes whenever what ClientCAs returns, the
// current issuing CA or the server certificate changes: by Rotate,
// RetireIssuer, RevokeIssuer, RenewServerCertificate, a Reload that found
// changes, or a grace period ending (noticed when ClientCAs or Generation is
// called). A server compares it with the value it last saw to know when to
// rebuild TLS settings or drop connections. It is per Authority value, not
// stored.
func (a *Authority) Generation() uint64 {
	_, gen := a.trust()
	return gen
}

// trust returns the ClientCAs pool and the generation, first rebuilding the
// pool if a grace period in it has ended.
func (a *Authority) trust() (*x509.CertPool, uint64) {
	now := a.now()
	a.mu.RLock()
	if a.poolUntil.IsZero() || now.Before(a.poolUntil) {
		pool, gen := a.pool, a.generation
		a.mu.RUnlock()
		return pool, gen
	}
	a.mu.RUnlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.poolUntil.IsZero() && !now.Before(a.poolUntil) {
		a.rebuildTrustLocked(now)
	}
	return a.pool, a.generation
}

// rebuildTrustLocked recomputes the trusted issuing CAs at now and, if they
// changed, builds a new pool and advances the generation. It needs mu held
// for writing.
func (a *Authority) rebuildTrustLocked(now time.Time) {
	var fps []string
	var certs []*x509.Certificate
	var until time.Time
	for _, e := range a.issuers {
		r := e.rec
		switch {
		case r.State == IssuerCurrent, r.State == IssuerGrace && r.GraceUntil.IsZero():
		case r.State == IssuerGrace && now.Before(r.GraceUntil):
			if until.IsZero() || r.GraceUntil.Before(until) {
				until = r.GraceUntil
			}
		default:
			continue
		}
		fps = append(fps, r.Fingerprint)
		certs = append(certs, e.cert)
	}
	a.poolUntil = until
	if a.pool != nil && slices.Equal(fps, a.trusted) {
		return
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	a.pool, a.trusted = pool, fps
	a.generation++
}

// Reload re-reads the directory, for when another process (the CLI) has
// changed it: rotated, retired or revoked an issuing CA, renewed the server
// certificate. Like Load it finishes an interrupted rotation. Issuance,
// ClientCAs and the rest keep working during a Reload, with the old state
// until it ends; if Reload fails they keep the old state. It refuses a
// directory with another root CA (restart for that).
func (a *Authority) Reload() error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	st, err := a.readState()
	if err != nil {
		return fmt.Errorf("reload CA from %s: %w", a.dir, err)
	}
	if !st.root.Equal(a.root) {
		return fmt.Errorf("reload CA from %s: %s is no longer the root CA this process loaded (%s); restart Warden to use another root", a.dir, fileRoot, a.root.Subject.CommonName)
	}
	a.mu.Lock()
	changed := !st.issuing.Equal(a.issuing) || !st.server.Leaf.Equal(a.server.Leaf)
	a.install(st)
	if changed {
		a.generation++
	}
	a.mu.Unlock()
	a.needReload = nil
	return nil
}
