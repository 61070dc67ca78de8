package registry

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/store"
)

// Reasons for refusing an enrollment or a claim-certificate connection.
// Like the Authenticate reasons they go to logs, metrics and the audit log,
// never to the peer.
const (
	ReasonBadCSR             = "bad-csr"              // unparsable, wrong key type, bad self-signature, bad common name
	ReasonNotPreregistered   = "not-preregistered"    // no enrollment for the ID
	ReasonEnrollmentUsed     = "enrollment-used"      // the ID enrolled already
	ReasonWrongMethod        = "wrong-method"         // e.g. a secret proof for a claim-certificate enrollment
	ReasonBadProof           = "bad-proof"            // the HMAC does not verify
	ReasonClaimUnknown       = "unknown-claim-cert"   // the claim certificate is not registered
	ReasonClaimRevoked       = "claim-cert-revoked"   // revoked claim certificate
	ReasonNotOnAllowList     = "not-on-allow-list"    // the ID is not on this claim certificate's allow-list
	ReasonClaimOnly          = "claim-cert-only"      // a claim certificate used where a device is required
	ReasonDeviceExists       = "device-exists"        // enrollment for an ID that is registered (and not a recovery)
	ReasonRenewWrongIdentity = "renew-wrong-identity" // a renewal CSR naming another device
)

// EnrollError is a refusal of an enrollment, a renewal or a claim
// connection, with a stable reason.
type EnrollError struct {
	Reason string
	Err    error
}

func (e *EnrollError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("enrollment refused (%s): %v", e.Reason, e.Err)
	}
	return "enrollment refused (" + e.Reason + ")"
}

func (e *EnrollError) Unwrap() error { return e.Err }

func refuseEnroll(reason string, err error) error { return &EnrollError{Reason: reason, Err: err} }

// EnrollReason returns the reason of an *EnrollError or *AuthError in err,
// or "error" for anything else (an internal failure).
func EnrollReason(err error) string {
	var ee *EnrollError
	if errors.As(err, &ee) {
		return ee.Reason
	}
	var ae *AuthError
	if errors.As(err, &ae) {
		return ae.Reason
	}
	return "error"
}

// Preregister records enrollments: device IDs that may later enroll once,
// by the method each names. It validates every entry (ID, model, tags,
// method) and that no ID names a service; the store refuses IDs already
// preregistered or registered. All or nothing.
//
// A recovery entry (Recovery) re-arms a registered device instead: it must
// be a secret enrollment without model or tags (the device keeps its
// own), the store refuses it unless the device exists and is not revoked,
// and it replaces the device's earlier enrollment, so only the newest
// secret works.
func (r *Registry) Preregister(ctx context.Context, es []store.Enrollment) error {
	if len(es) == 0 {
		return invalidf("preregister: no devices given")
	}
	now := r.clock()
	out := make([]store.Enrollment, len(es))
	seen := make(map[string]bool, len(es))
	for i, e := range es {
		spec := DeviceSpec{ID: e.DeviceID, Model: e.Model, Tags: e.Tags}
		if err := spec.validate(); err != nil {
			return fmt.Errorf("preregister %q: %w", e.DeviceID, err)
		}
		if seen[e.DeviceID] {
			return fmt.Errorf("preregister: device %q is listed twice: %w", e.DeviceID, ErrInvalid)
		}
		seen[e.DeviceID] = true
		switch e.Method {
		case store.EnrollSecret:
			if len(e.Secret) == 0 || e.Claim != "" {
				return invalidf("preregister %q: a secret enrollment needs a sealed secret and no claim certificate", e.DeviceID)
			}
		case store.EnrollClaim:
			if err := identity.ValidateClaimName(e.Claim); err != nil || len(e.Secret) != 0 {
				return invalidf("preregister %q: a claim enrollment needs a valid claim certificate name and no secret", e.DeviceID)
			}
		default:
			return invalidf("preregister %q: unknown enrollment method %q", e.DeviceID, e.Method)
		}
		if e.Recovery {
			// A claim certificate is shared by a factory line: letting it
			// recover would let whoever holds it take over registered
			// devices.
			if e.Method != store.EnrollSecret {
				return invalidf("preregister %q: a recovery enrollment needs an enrollment secret; a claim certificate cannot recover a device", e.DeviceID)
			}
			if e.Model != "" || len(e.Tags) != 0 {
				return invalidf("preregister %q: a recovery enrollment keeps the device's model and tags; give none (change tags on the device itself)", e.DeviceID)
			}
		}
		// The device itself may exist for a recovery entry (the store checks
		// that it does); a service with the name never may.
		if err := r.clientIDFree(ctx, identity.KindDevice, e.DeviceID); err != nil {
			return fmt.Errorf("preregister %q: %w", e.DeviceID, err)
		}
		e.Tags = maps.Clone(e.Tags)
		if e.Tags == nil {
			e.Tags = map[string]string{}
		}
		e.Created, e.UsedAt, e.Serial = now, time.Time{}, ""
		out[i] = e
	}
	if err := r.st.AddEnrollments(ctx, out); err != nil {
		return fmt.Errorf("preregister: %w", err)
	}
	recoveries := 0
	for _, e := range out {
		if e.Recovery {
			recoveries++
		}
	}
	r.log.InfoContext(ctx, "devices preregistered", "count", len(out), "method", out[0].Method, "recoveries", recoveries)
	return nil
}

// Enroll issues a device's first certificate from its CSR, under the
// enrollment recorded for the CSR's common name, and registers the device
// with it (one store transaction that also marks the enrollment used).
// authorize sees the enrollment and the parsed CSR before anything is
// issued and returns a non-nil error to refuse (wrap an *EnrollError to
// give the reason). A refusal is an *EnrollError; nothing is stored.
//
// Under a recovery enrollment the device must be registered and active
// instead: the certificate (from the CSR's key, new or the old one) is
// recorded as its new credential, every earlier credential is revoked and
// the enrollment is marked used, in one store transaction; the CRL is
// re-signed and EventDeviceRecovered announced. The returned device is
// the registered one, unchanged.
func (r *Registry) Enroll(ctx context.Context, csrDER []byte, authorize func(store.Enrollment, *x509.CertificateRequest) error) (store.Device, *x509.Certificate, error) {
	csr, err := pki.ParseCSR(csrDER)
	if err != nil {
		return store.Device{}, nil, refuseEnroll(ReasonBadCSR, err)
	}
	id := csr.Subject.CommonName
	if err := identity.ValidateDeviceID(id); err != nil {
		return store.Device{}, nil, refuseEnroll(ReasonBadCSR, err)
	}
	e, err := r.st.GetEnrollment(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return store.Device{}, nil, refuseEnroll(ReasonNotPreregistered, fmt.Errorf("device %q was never preregistered", id))
	case err != nil:
		return store.Device{}, nil, fmt.Errorf("enroll %q: %w", id, err)
	case e.Used():
		return store.Device{}, nil, refuseEnroll(ReasonEnrollmentUsed, fmt.Errorf("device %q enrolled at %s", id, e.UsedAt.Format(time.RFC3339)))
	}
	if err := authorize(e, csr); err != nil {
		var ee *EnrollError
		if errors.As(err, &ee) {
			return store.Device{}, nil, err
		}
		return store.Device{}, nil, fmt.Errorf("enroll %q: %w", id, err)
	}
	if e.Recovery {
		return r.recoverDevice(ctx, e, csr)
	}
	switch exists, err := r.DeviceExists(ctx, id); {
	case err != nil:
		return store.Device{}, nil, fmt.Errorf("enroll %q: %w", id, err)
	case exists:
		return store.Device{}, nil, refuseEnroll(ReasonDeviceExists, fmt.Errorf("device %q is registered", id))
	}
	cert, err := r.ca.IssueDevice(csr, id, r.deviceLifetime)
	if err != nil {
		return store.Device{}, nil, fmt.Errorf("enroll %q: %w", id, err)
	}
	if err := checkIssued(cert, csr, identity.KindDevice, id, r.now()); err != nil {
		return store.Device{}, nil, fmt.Errorf("enroll %q: the CA issued an unusable certificate: %w", id, err)
	}

	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	now := r.clock()
	cred := credentialFor(identity.KindDevice, id, csr, cert, now)
	d, err := r.st.Enroll(ctx, store.Device{ID: id, State: store.StateActive, CreatedAt: now, UpdatedAt: now}, cred, now)
	switch {
	case errors.Is(err, store.ErrConflict):
		// Another request enrolled the same ID between our checks and the
		// transaction: the store's single use decided.
		return store.Device{}, nil, refuseEnroll(ReasonEnrollmentUsed, err)
	case err != nil:
		return store.Device{}, nil, fmt.Errorf("enroll %q: %w", id, err)
	}
	r.emit(ctx, Event{Kind: EventDeviceAdded, Principal: devicePrincipal(id), Reason: "enrolled", At: now},
		"serial", cred.Serial, "method", e.Method)
	return d, cert, nil
}

// recoverDevice is Enroll under a recovery enrollment e, whose
// authorization has been checked.
func (r *Registry) recoverDevice(ctx context.Context, e store.Enrollment, csr *x509.CertificateRequest) (store.Device, *x509.Certificate, error) {
	id := e.DeviceID
	d, err := r.st.GetDevice(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		// The store arms recovery only for registered devices, and devices
		// are never deleted: this is an inconsistent store, not a request
		// to register a device.
		return store.Device{}, nil, refuseEnroll(ReasonNotPreregistered, fmt.Errorf("device %q of the recovery enrollment is not registered", id))
	case err != nil:
		return store.Device{}, nil, fmt.Errorf("recover %q: %w", id, err)
	}
	switch d.State {
	case store.StateActive:
	case store.StateDisabled:
		return store.Device{}, nil, refuseEnroll(ReasonDeviceDisabled, fmt.Errorf("recover %q (enable the device first): %w", id, stateError(d.State, d.StateReason)))
	default:
		return store.Device{}, nil, refuseEnroll(ReasonDeviceRevoked, stateError(d.State, d.StateReason))
	}
	cert, err := r.ca.IssueDevice(csr, id, r.deviceLifetime)
	if err != nil {
		return store.Device{}, nil, fmt.Errorf("recover %q: %w", id, err)
	}
	if err := checkIssued(cert, csr, identity.KindDevice, id, r.now()); err != nil {
		return store.Device{}, nil, fmt.Errorf("recover %q: the CA issued an unusable certificate: %w", id, err)
	}

	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	now := r.clock()
	cred := credentialFor(identity.KindDevice, id, csr, cert, now)
	d, err = r.st.Recover(ctx, id, cred, now)
	switch {
	case errors.Is(err, store.ErrRevoked):
		return store.Device{}, nil, refuseEnroll(ReasonDeviceRevoked, err)
	case errors.Is(err, store.ErrNotFound):
		// The operator withdrew the enrollment since our checks.
		return store.Device{}, nil, refuseEnroll(ReasonNotPreregistered, err)
	case errors.Is(err, store.ErrConflict):
		// Since our checks another request used the enrollment (the store's
		// single use decided), or the device was disabled.
		if cur, gerr := r.st.GetDevice(ctx, id); gerr == nil && cur.State == store.StateDisabled {
			return store.Device{}, nil, refuseEnroll(ReasonDeviceDisabled, err)
		}
		return store.Device{}, nil, refuseEnroll(ReasonEnrollmentUsed, err)
	case err != nil:
		return store.Device{}, nil, fmt.Errorf("recover %q: %w", id, err)
	}
	// The recovery is committed: finish the CRL and the announcement even
	// if the caller has gone away. A CRL failure does not undo it: the
	// registry refuses the revoked credentials at once whatever the CRL
	// says, and the device must get its certificate.
	ctx = context.WithoutCancel(ctx)
	_, crlErr := r.RefreshCRL(ctx)
	r.emit(ctx, Event{Kind: EventDeviceRecovered, Principal: devicePrincipal(id), Reason: "recovery enrollment", At: now},
		"serial", cred.Serial, "method", e.Method)
	if crlErr != nil {
		r.log.ErrorContext(ctx, "CRL not re-signed after a recovery enrollment revoked the device's earlier certificates; retry with a CRL refresh",
			"device", id, "error", crlErr)
	}
	return d, cert, nil
}

// Renew issues a further certificate for an active device from a CSR
// naming it (the device's current key or a new one) and records it. The
// caller has authenticated the device by its current certificate; earlier
// certificates stay valid until they expire or are revoked.
func (r *Registry) Renew(ctx context.Context, id string, csrDER []byte) (*x509.Certificate, error) {
	csr, err := pki.ParseCSR(csrDER)
	if err != nil {
		return nil, refuseEnroll(ReasonBadCSR, err)
	}
	if csr.Subject.CommonName != id {
		return nil, refuseEnroll(ReasonRenewWrongIdentity, fmt.Errorf("CSR names %q, the device is %q", csr.Subject.CommonName, id))
	}
	return r.issueFurther(ctx, id, csr, "renewed")
}

// Reissue issues a new certificate for an active device from the CSR of
// its newest unrevoked credential, under the CA's current issuer, and
// records it. It is how a CA rotation replaces certificates without
// touching any device's private key.
func (r *Registry) Reissue(ctx context.Context, id string) (*x509.Certificate, error) {
	creds, err := r.st.Credentials(ctx, identity.KindDevice, id)
	if err != nil {
		return nil, fmt.Errorf("reissue %q: %w", id, err)
	}
	for _, c := range creds {
		if c.Revoked() || len(c.CSR) == 0 {
			continue
		}
		csr, err := pki.ParseCSR(c.CSR)
		if err != nil {
			return nil, fmt.Errorf("reissue %q: stored CSR of credential %s: %w", id, c.Serial, err)
		}
		return r.issueFurther(ctx, id, csr, "reissued")
	}
	return nil, fmt.Errorf("reissue %q: no unrevoked credential with a CSR: %w", id, store.ErrNotFound)
}

func (r *Registry) issueFurther(ctx context.Context, id string, csr *x509.CertificateRequest, why string) (*x509.Certificate, error) {
	d, err := r.st.GetDevice(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", why, id, err)
	}
	switch d.State {
	case store.StateActive:
	case store.StateDisabled:
		return nil, refuseEnroll(ReasonDeviceDisabled, stateError(d.State, d.StateReason))
	default:
		return nil, refuseEnroll(ReasonDeviceRevoked, stateError(d.State, d.StateReason))
	}
	cert, err := r.ca.IssueDevice(csr, id, r.deviceLifetime)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", why, id, err)
	}
	if err := checkIssued(cert, csr, identity.KindDevice, id, r.now()); err != nil {
		return nil, fmt.Errorf("%s %q: the CA issued an unusable certificate: %w", why, id, err)
	}
	now := r.clock()
	cred := credentialFor(identity.KindDevice, id, csr, cert, now)
	if err := r.st.AddCredential(ctx, cred); err != nil {
		if errors.Is(err, store.ErrRevoked) {
			return nil, refuseEnroll(ReasonDeviceRevoked, err)
		}
		return nil, fmt.Errorf("%s %q: %w", why, id, err)
	}
	r.log.InfoContext(ctx, "certificate "+why, "device", id, "serial", cred.Serial, "not_after", cert.NotAfter.UTC())
	return cert, nil
}

// claimCertFor checks that leaf is a registered, unrevoked, unexpired
// claim certificate (same fingerprint rule as Authenticate).
func (r *Registry) claimCertFor(ctx context.Context, leaf *x509.Certificate) (store.ClaimCert, error) {
	if leaf == nil {
		return store.ClaimCert{}, refuseEnroll(ReasonNoIdentity, errors.New("no certificate"))
	}
	kind, name, err := identity.FromURIs(leaf.URIs)
	if err != nil {
		return store.ClaimCert{}, refuseEnroll(ReasonNoIdentity, err)
	}
	if kind != identity.KindClaim {
		return store.ClaimCert{}, refuseEnroll(ReasonNoIdentity, fmt.Errorf("certificate names a %s, not a claim certificate", kind))
	}
	c, err := r.st.ClaimCertBySerial(ctx, pki.SerialHex(leaf.SerialNumber))
	switch {
	case errors.Is(err, store.ErrNotFound):
		return store.ClaimCert{}, refuseEnroll(ReasonClaimUnknown, err)
	case err != nil:
		return store.ClaimCert{}, fmt.Errorf("claim certificate %q: %w", name, err)
	}
	if c.Name != name || subtle.ConstantTimeCompare([]byte(pki.Fingerprint(leaf)), []byte(c.Fingerprint)) != 1 {
		return store.ClaimCert{}, refuseEnroll(ReasonCredentialMismatch, fmt.Errorf("serial is registered to claim certificate %q with another certificate", c.Name))
	}
	if c.Revoked() {
		return store.ClaimCert{}, refuseEnroll(ReasonClaimRevoked, fmt.Errorf("claim certificate %q was revoked", c.Name))
	}
	if now := r.now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return store.ClaimCert{}, refuseEnroll(ReasonExpired, fmt.Errorf("claim certificate %q is not valid now", c.Name))
	}
	return c, nil
}

// AuthorizeClaim returns an Enroll authorizer for a request made with the
// claim certificate leaf: the enrollment must be on that certificate's
// allow-list.
func (r *Registry) AuthorizeClaim(ctx context.Context, leaf *x509.Certificate) (func(store.Enrollment, *x509.CertificateRequest) error, error) {
	c, err := r.claimCertFor(ctx, leaf)
	if err != nil {
		return nil, err
	}
	return func(e store.Enrollment, _ *x509.CertificateRequest) error {
		if e.Method != store.EnrollClaim || e.Claim != c.Name {
			return refuseEnroll(ReasonNotOnAllowList, fmt.Errorf("device %q is not on the allow-list of claim certificate %q", e.DeviceID, c.Name))
		}
		return nil
	}, nil
}

// AuthenticateClaim decides whether a broker connection made with the
// claim certificate leaf may use client ID deviceID: the ID must be on the
// certificate's allow-list and not enrolled yet. The principal it returns
// (Kind claim, ID the device ID, Role the claim name) may only enroll.
func (r *Registry) AuthenticateClaim(ctx context.Context, leaf *x509.Certificate, deviceID string) (identity.Principal, error) {
	c, err := r.claimCertFor(ctx, leaf)
	if err != nil {
		return identity.Principal{}, err
	}
	p := identity.Principal{Kind: identity.KindClaim, ID: deviceID, Role: c.Name}
	if identity.ValidateDeviceID(deviceID) != nil {
		return identity.Principal{}, refuseEnroll(ReasonNotOnAllowList, errors.New("the client ID is not a device ID"))
	}
	e, err := r.st.GetEnrollment(ctx, deviceID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return identity.Principal{}, refuseEnroll(ReasonNotOnAllowList, fmt.Errorf("device %q is not on the allow-list of %q", deviceID, c.Name))
	case err != nil:
		return identity.Principal{}, fmt.Errorf("claim connection %s: %w", p, err)
	case e.Method != store.EnrollClaim || e.Claim != c.Name:
		return identity.Principal{}, refuseEnroll(ReasonNotOnAllowList, fmt.Errorf("device %q is not on the allow-list of %q", deviceID, c.Name))
	case e.Used():
		return identity.Principal{}, refuseEnroll(ReasonEnrollmentUsed, fmt.Errorf("device %q enrolled already", deviceID))
	}
	return p, nil
}

// AddClaimCert issues a fleet claim certificate named name from csrDER
// (whose common name must be name) and records it with its allow-list of
// device IDs, which may each enroll once with it. The certificate and the
// allow-list are stored before the certificate is returned; if the
// allow-list cannot be stored the certificate is revoked at once.
func (r *Registry) AddClaimCert(ctx context.Context, name string, csrDER []byte, lifetime time.Duration, allow []store.Enrollment) (store.ClaimCert, *x509.Certificate, error) {
	if err := identity.ValidateClaimName(name); err != nil {
		return store.ClaimCert{}, nil, fmt.Errorf("add claim certificate: %w", asInvalid(err))
	}
	csr, err := parseCSRFor(csrDER, identity.KindClaim, name)
	if err != nil {
		return store.ClaimCert{}, nil, fmt.Errorf("add claim certificate %q: %w", name, err)
	}
	switch _, err := r.st.GetClaimCert(ctx, name); {
	case err == nil:
		return store.ClaimCert{}, nil, fmt.Errorf("add claim certificate %q: %w", name, store.ErrConflict)
	case !errors.Is(err, store.ErrNotFound):
		return store.ClaimCert{}, nil, fmt.Errorf("add claim certificate %q: %w", name, err)
	}
	cert, err := r.ca.IssueClaim(csr, name, lifetime)
	if err != nil {
		return store.ClaimCert{}, nil, fmt.Errorf("add claim certificate %q: %w", name, err)
	}
	if err := checkIssued(cert, csr, identity.KindClaim, name, r.now()); err != nil {
		return store.ClaimCert{}, nil, fmt.Errorf("add claim certificate %q: the CA issued an unusable certificate: %w", name, err)
	}
	now := r.clock()
	c := store.ClaimCert{
		Name: name, Serial: pki.SerialHex(cert.SerialNumber), Fingerprint: pki.Fingerprint(cert),
		Certificate: cert.Raw, NotAfter: cert.NotAfter.UTC(), CreatedAt: now,
	}
	if err := r.st.CreateClaimCert(ctx, c); err != nil {
		return store.ClaimCert{}, nil, fmt.Errorf("add claim certificate %q: %w", name, err)
	}
	if len(allow) > 0 {
		for i := range allow {
			allow[i].Method, allow[i].Claim, allow[i].Secret = store.EnrollClaim, name, nil
		}
		if err := r.Preregister(ctx, allow); err != nil {
			if _, rerr := r.st.RevokeClaimCert(context.WithoutCancel(ctx), name, "allow-list not stored", now); rerr != nil {
				err = errors.Join(err, rerr)
			}
			return store.ClaimCert{}, nil, fmt.Errorf("add claim certificate %q (revoked again): %w", name, err)
		}
	}
	r.log.InfoContext(ctx, "claim certificate issued", "claim", name, "serial", c.Serial, "allowed", len(allow))
	return c, cert, nil
}

// AllowClaim adds device IDs to a claim certificate's allow-list.
func (r *Registry) AllowClaim(ctx context.Context, name string, allow []store.Enrollment) error {
	c, err := r.st.GetClaimCert(ctx, name)
	if err != nil {
		return fmt.Errorf("allow on claim certificate %q: %w", name, err)
	}
	if c.Revoked() {
		return fmt.Errorf("allow on claim certificate %q: %w", name, store.ErrRevoked)
	}
	for i := range allow {
		allow[i].Method, allow[i].Claim, allow[i].Secret = store.EnrollClaim, name, nil
	}
	return r.Preregister(ctx, allow)
}
