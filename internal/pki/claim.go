package pki

import (
	"crypto/x509"
	"fmt"
	"time"

	"github.com/warden-iot/warden/internal/identity"
)

// DefaultClaimLifetime is the lifetime of a fleet claim certificate unless
// the operator asks for another: claim certificates are shared by a batch
// of devices on a factory line, so they should not outlive it by years.
const DefaultClaimLifetime = 365 * 24 * time.Hour

// IssueClaim is IssueDevice for a fleet claim certificate named name
// (URI SAN urn:warden:claim:<name>). What it may do is decided by the
// registry: enroll the device IDs on its allow-list, nothing else.
func (a *Authority) IssueClaim(csr *x509.CertificateRequest, name string, lifetime time.Duration) (*x509.Certificate, error) {
	if err := identity.ValidateClaimName(name); err != nil {
		return nil, fmt.Errorf("issue claim certificate: %w", err)
	}
	if lifetime == 0 {
		lifetime = DefaultClaimLifetime
	}
	cert, err := a.issueClient(csr, identity.KindClaim, name, "claim certificate name", lifetime)
	if err != nil {
		return nil, fmt.Errorf("issue claim certificate for %q: %w", name, err)
	}
	return cert, nil
}
