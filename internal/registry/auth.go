package registry

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/store"
)

// Reasons Authenticate gives for refusing a certificate. They are stable
// strings for metrics and audit records; the peer is never told which one.
const (
	ReasonNoIdentity         = "no-identity"         // no, or no valid, urn:warden URI SAN
	ReasonUnknownCredential  = "unknown-credential"  // serial not registered
	ReasonCredentialMismatch = "credential-mismatch" // serial registered to another subject, or another certificate
	ReasonCredentialRevoked  = "credential-revoked"
	ReasonExpired            = "expired" // outside NotBefore/NotAfter by the registry clock
	ReasonUnknownDevice      = "unknown-device"
	ReasonUnknownService     = "unknown-service"
	ReasonDeviceDisabled     = "device-disabled"
	ReasonDeviceRevoked      = "device-revoked"
	ReasonServiceDisabled    = "service-disabled" // no API disables services yet; kept so the state is never mistaken for active
	ReasonServiceRevoked     = "service-revoked"
)

// AuthError is a refusal by Authenticate. Principal is what the certificate
// claims (empty when it claims nothing usable); it is not authenticated.
type AuthError struct {
	Reason    string
	Principal identity.Principal
	Err       error
}

func (e *AuthError) Error() string {
	who := "certificate"
	if e.Principal.ID != "" {
		who = e.Principal.String()
	}
	if e.Err != nil {
		return fmt.Sprintf("%s refused (%s): %v", who, e.Reason, e.Err)
	}
	return fmt.Sprintf("%s refused (%s)", who, e.Reason)
}

func (e *AuthError) Unwrap() error { return e.Err }

// Authenticate decides whether an already TLS-verified leaf certificate
// names a principal that may connect now. The certificate must carry
// exactly one Warden identity, its serial must be registered to that same
// principal with the same certificate (fingerprint), unrevoked, and within
// its validity by the registry clock, and the principal must be active.
//
// A refusal is an *AuthError naming the reason. Any other error means the
// decision could not be made (the store failed); the caller must refuse
// the connection then too.
func (r *Registry) Authenticate(ctx context.Context, leaf *x509.Certificate) (identity.Principal, error) {
	if leaf == nil {
		return identity.Principal{}, &AuthError{Reason: ReasonNoIdentity, Err: errors.New("no certificate")}
	}
	kind, id, err := identity.FromURIs(leaf.URIs)
	if err != nil {
		return identity.Principal{}, &AuthError{Reason: ReasonNoIdentity, Err: err}
	}
	p := identity.Principal{Kind: kind, ID: id}
	refuse := func(reason string, err error) (identity.Principal, error) {
		return identity.Principal{}, &AuthError{Reason: reason, Principal: p, Err: err}
	}
	if kind == identity.KindClaim {
		// A claim certificate may only enroll (AuthenticateClaim); it never
		// stands for a device or service.
		return refuse(ReasonClaimOnly, errors.New("a claim certificate cannot act as a device or service"))
	}

	serial := pki.SerialHex(leaf.SerialNumber)
	// One read gives the credential and its subject's state together
	// (store.Admission): this runs for every connection.
	a, err := r.st.Admission(ctx, serial)
	if errors.Is(err, store.ErrNotFound) {
		return refuse(ReasonUnknownCredential, err)
	}
	if err != nil {
		return identity.Principal{}, fmt.Errorf("authenticate %s: %w", p, err)
	}
	cred := a.Credential
	// The fingerprint check matters even though TLS verified the chain: a
	// second certificate with a registered serial (a CA bug, or a re-issue
	// that reused one) must not inherit the first one's standing. Serials
	// are not secret, but the comparison is constant-time anyway so it
	// leaks nothing about stored values.
	fp := pki.Fingerprint(leaf)
	if cred.SubjectKind != kind || cred.SubjectID != id ||
		subtle.ConstantTimeCompare([]byte(fp), []byte(cred.Fingerprint)) != 1 {
		return refuse(ReasonCredentialMismatch,
			fmt.Errorf("serial %s is registered to %s:%s with another certificate", serial, cred.SubjectKind, cred.SubjectID))
	}
	if cred.Revoked() {
		return refuse(ReasonCredentialRevoked,
			fmt.Errorf("credential %s was revoked at %s", serial, cred.RevokedAt.Format(time.RFC3339)))
	}
	now := r.now()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return refuse(ReasonExpired, fmt.Errorf("certificate %s is valid from %s to %s, not at %s", serial,
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339)))
	}

	// FromURIs admits no kinds but device, service and claim, and claims
	// were refused above.
	unknown, disabled, revoked := ReasonUnknownDevice, ReasonDeviceDisabled, ReasonDeviceRevoked
	if kind == identity.KindService {
		unknown, disabled, revoked = ReasonUnknownService, ReasonServiceDisabled, ReasonServiceRevoked
		p.Role = a.Role
	}
	switch a.SubjectState {
	case store.StateActive:
		return p, nil
	case "":
		return refuse(unknown, fmt.Errorf("%s %q: %w", kind, id, store.ErrNotFound))
	case store.StateDisabled:
		return refuse(disabled, stateError(a.SubjectState, a.SubjectStateReason))
	default:
		return refuse(revoked, stateError(a.SubjectState, a.SubjectStateReason))
	}
}

func stateError(s store.DeviceState, reason string) error {
	if reason == "" {
		return fmt.Errorf("state %s", s)
	}
	return fmt.Errorf("state %s (%s)", s, reason)
}
