package pki

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// CRLValidity is how long a CRL is current (NextUpdate - ThisUpdate).
// Relying parties that fetch the CRL must do so more often than this.
const CRLValidity = 7 * 24 * time.Hour

// createCRL signs a CRL with iss, the current issuing CA. The CRL covers
// the certificates iss issued; those of an issuer in its grace period are
// covered by the registry's checks instead (see docs/pki.md).
func (a *Authority) createCRL(iss signer, number uint64, revoked []x509.RevocationListEntry) ([]byte, error) {
	for i, e := range revoked {
		if e.SerialNumber == nil || e.SerialNumber.Sign() <= 0 {
			return nil, fmt.Errorf("CRL entry %d: serial number must be positive", i)
		}
		if e.RevocationTime.IsZero() {
			return nil, fmt.Errorf("CRL entry %d (serial %s): revocation time is not set", i, SerialHex(e.SerialNumber))
		}
	}
	now := a.now()
	tmpl := &x509.RevocationList{
		Number:                    new(big.Int).SetUint64(number),
		ThisUpdate:                now,
		NextUpdate:                now.Add(CRLValidity),
		RevokedCertificateEntries: revoked,
		SignatureAlgorithm:        x509.ECDSAWithSHA256,
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, iss.cert, iss.key)
	if err != nil {
		return nil, fmt.Errorf("sign CRL %d: %w", number, err)
	}
	return der, nil
}

// SignCRL signs a new CRL with the current issuing CA listing revoked (the
// complete list: a CRL is not a delta), stores it as crl.der and crl.pem,
// and returns the DER. Every call takes the next CRL number; the number is
// saved before the CRL so a crash can skip a number but never reuse one, and
// taken after the larger of this process's last number and the file's, so
// that CRLs signed by another process (the CLI) are not repeated either.
// It fails with ErrChangedOnDisk if another process changed the issuing CAs
// since this one read them (call Reload).
func (a *Authority) SignCRL(revoked []x509.RevocationListEntry) ([]byte, error) {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	diskCRL, err := a.checkCurrent()
	if err != nil {
		return nil, fmt.Errorf("sign CRL: %w", err)
	}
	next := max(a.crlNumber, diskCRL) + 1
	der, err := a.createCRL(a.current(), next, revoked)
	if err != nil {
		return nil, err
	}
	state, err := a.stateData(next, a.issuers, nil)
	if err != nil {
		return nil, fmt.Errorf("sign CRL: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(a.dir, fileAuthority), state, filePermSecret); err != nil {
		return nil, fmt.Errorf("sign CRL: save CRL number: %w", err)
	}
	a.mu.Lock()
	a.crlNumber = next
	a.mu.Unlock()
	if err := writeFileAtomic(filepath.Join(a.dir, fileCRLDER), der, filePermPublic); err != nil {
		return nil, fmt.Errorf("sign CRL: %w", err)
	}
	crlPEM := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	if err := writeFileAtomic(filepath.Join(a.dir, fileCRLPEM), crlPEM, filePermPublic); err != nil {
		return nil, fmt.Errorf("sign CRL: %w", err)
	}
	return der, nil
}

// CurrentCRL returns the DER of the CRL last written by SignCRL (or Init).
func (a *Authority) CurrentCRL() ([]byte, error) {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	der, err := os.ReadFile(filepath.Join(a.dir, fileCRLDER))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("current CRL: none has been signed yet (call SignCRL): %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("current CRL: %w", err)
	}
	return der, nil
}
