package registry

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/store"
)

// DeviceSpec describes a device to register.
type DeviceSpec struct {
	ID    string
	Model string
	Tags  map[string]string
}

func (s DeviceSpec) validate() error {
	if err := identity.ValidateDeviceID(s.ID); err != nil {
		return asInvalid(err)
	}
	if err := checkText("model", s.Model, MaxModelLen); err != nil {
		return err
	}
	return ValidateTags(s.Tags)
}

// DeviceInfo is a device with its credentials, newest first.
type DeviceInfo struct {
	store.Device
	Credentials []store.Credential
}

// parseCSRFor parses an untrusted CSR and checks that it names id, so the
// certificate's common name and identity agree.
func parseCSRFor(csrDER []byte, kind identity.Kind, id string) (*x509.CertificateRequest, error) {
	csr, err := pki.ParseCSR(csrDER)
	if err != nil {
		return nil, asInvalid(err)
	}
	if csr.Subject.CommonName != id {
		return nil, invalidf("CSR common name %q does not match %s %q", csr.Subject.CommonName, kind, id)
	}
	return csr, nil
}

// checkIssued verifies that cert is the certificate for csr's key naming
// exactly kind:id and valid at now. For certificates the CA has just
// issued it guards against the CA and the registry disagreeing; for
// certificates handed back by a caller (RegisterDevice) it is the check
// that they belong to this device.
func checkIssued(cert *x509.Certificate, csr *x509.CertificateRequest, kind identity.Kind, id string, now time.Time) error {
	if cert == nil {
		return errors.New("no certificate")
	}
	k, i, err := identity.FromURIs(cert.URIs)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	if k != kind || i != id {
		return fmt.Errorf("certificate names %s:%s, not %s:%s", k, i, kind, id)
	}
	pub, ok := csr.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return errors.New("certificate key is not the CSR's key")
	}
	if cert.SerialNumber == nil || cert.SerialNumber.Sign() <= 0 {
		return errors.New("certificate serial number is not positive")
	}
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return fmt.Errorf("certificate is valid from %s to %s, not now (%s)",
			cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), now.Format(time.RFC3339))
	}
	return nil
}

func credentialFor(kind identity.Kind, id string, csr *x509.CertificateRequest, cert *x509.Certificate, now time.Time) store.Credential {
	return store.Credential{
		Serial:      pki.SerialHex(cert.SerialNumber),
		SubjectKind: kind,
		SubjectID:   id,
		Fingerprint: pki.Fingerprint(cert),
		NotBefore:   cert.NotBefore.UTC(),
		NotAfter:    cert.NotAfter.UTC(),
		CSR:         csr.Raw,
		Certificate: cert.Raw,
		CreatedAt:   now,
	}
}

// AddDevice validates spec and the CSR (whose common name must be the
// device ID), issues the device's certificate and registers the device
// with it in one transaction. On any error nothing is stored.
func (r *Registry) AddDevice(ctx context.Context, spec DeviceSpec, csrDER []byte) (store.Device, *x509.Certificate, error) {
	csr, cert, err := r.issueDevice(ctx, spec, csrDER)
	if err != nil {
		return store.Device{}, nil, err
	}
	d, err := r.storeDevice(ctx, spec, csr, cert)
	if err != nil {
		return store.Device{}, nil, err
	}
	return d, cert, nil
}

// IssueDevice makes every check AddDevice makes and issues the
// certificate, but registers nothing. Provisioning uses it to deliver the
// key and certificate to the device first and register it (RegisterDevice)
// only once that succeeded, so a failed delivery leaves no trace. A
// certificate issued but never registered cannot connect: Authenticate
// does not know its serial.
func (r *Registry) IssueDevice(ctx context.Context, spec DeviceSpec, csrDER []byte) (*x509.Certificate, error) {
	_, cert, err := r.issueDevice(ctx, spec, csrDER)
	return cert, err
}

func (r *Registry) issueDevice(ctx context.Context, spec DeviceSpec, csrDER []byte) (*x509.CertificateRequest, *x509.Certificate, error) {
	if err := spec.validate(); err != nil {
		return nil, nil, fmt.Errorf("add device: %w", err)
	}
	csr, err := parseCSRFor(csrDER, identity.KindDevice, spec.ID)
	if err != nil {
		return nil, nil, fmt.Errorf("add device %q: %w", spec.ID, err)
	}
	// Refuse early so no certificate is signed for an ID that cannot be
	// registered; the store's unique key remains the real guard.
	switch exists, err := r.DeviceExists(ctx, spec.ID); {
	case err != nil:
		return nil, nil, fmt.Errorf("add device %q: %w", spec.ID, err)
	case exists:
		return nil, nil, fmt.Errorf("add device %q: device %w", spec.ID, store.ErrConflict)
	}
	if err := r.clientIDFree(ctx, identity.KindDevice, spec.ID); err != nil {
		return nil, nil, fmt.Errorf("add device %q: %w", spec.ID, err)
	}
	cert, err := r.ca.IssueDevice(csr, spec.ID, r.deviceLifetime)
	if err != nil {
		return nil, nil, fmt.Errorf("add device %q: %w", spec.ID, err)
	}
	if err := checkIssued(cert, csr, identity.KindDevice, spec.ID, r.now()); err != nil {
		return nil, nil, fmt.Errorf("add device %q: the CA issued an unusable certificate: %w", spec.ID, err)
	}
	r.log.InfoContext(ctx, "certificate issued", "device", spec.ID, "serial", pki.SerialHex(cert.SerialNumber),
		"not_after", cert.NotAfter.UTC())
	return csr, cert, nil
}

// clientIDFree refuses a device ID that names a service, or a service name
// that is a device ID. Both connect with their name as MQTT client ID, and
// the broker has one client-ID namespace: a collision would let one take
// over the other's session.
func (r *Registry) clientIDFree(ctx context.Context, kind identity.Kind, id string) error {
	var err error
	other := identity.KindService
	if kind == identity.KindDevice {
		_, err = r.st.GetService(ctx, id)
	} else {
		other = identity.KindDevice
		_, err = r.st.GetDevice(ctx, id)
	}
	switch {
	case err == nil:
		return fmt.Errorf("the name is already used by a %s (devices and services share the MQTT client-ID namespace): %w", other, store.ErrConflict)
	case errors.Is(err, store.ErrNotFound):
		return nil
	default:
		return err
	}
}

// RegisterDevice registers a device with a certificate that IssueDevice
// issued for the same CSR. It checks that the certificate carries the CSR's
// key and names the device; that it chains to the CA is checked where it
// matters, by TLS at every connection.
func (r *Registry) RegisterDevice(ctx context.Context, spec DeviceSpec, csrDER []byte, cert *x509.Certificate) (store.Device, error) {
	if err := spec.validate(); err != nil {
		return store.Device{}, fmt.Errorf("register device: %w", err)
	}
	csr, err := parseCSRFor(csrDER, identity.KindDevice, spec.ID)
	if err != nil {
		return store.Device{}, fmt.Errorf("register device %q: %w", spec.ID, err)
	}
	if err := checkIssued(cert, csr, identity.KindDevice, spec.ID, r.now()); err != nil {
		return store.Device{}, fmt.Errorf("register device %q: %w", spec.ID, invalid(err))
	}
	if err := r.clientIDFree(ctx, identity.KindDevice, spec.ID); err != nil {
		return store.Device{}, fmt.Errorf("register device %q: %w", spec.ID, err)
	}
	return r.storeDevice(ctx, spec, csr, cert)
}

func (r *Registry) storeDevice(ctx context.Context, spec DeviceSpec, csr *x509.CertificateRequest, cert *x509.Certificate) (store.Device, error) {
	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	now := r.clock()
	cred := credentialFor(identity.KindDevice, spec.ID, csr, cert, now)
	tags := maps.Clone(spec.Tags)
	if tags == nil {
		tags = map[string]string{}
	}
	d := store.Device{ID: spec.ID, Model: spec.Model, Tags: tags, State: store.StateActive, CreatedAt: now, UpdatedAt: now}
	if err := r.st.CreateDevice(ctx, d, cred); err != nil {
		return store.Device{}, fmt.Errorf("register device %q: %w", spec.ID, err)
	}
	r.emit(ctx, Event{Kind: EventDeviceAdded, Principal: devicePrincipal(spec.ID), At: now},
		"serial", cred.Serial, "model", spec.Model)
	return d, nil
}

// AddService validates name, role and the CSR (whose common name must be
// the service name), issues the service's certificate and registers the
// service with it in one transaction. On any error nothing is stored.
func (r *Registry) AddService(ctx context.Context, name, role string, csrDER []byte) (store.Service, *x509.Certificate, error) {
	if err := identity.ValidateServiceName(name); err != nil {
		return store.Service{}, nil, fmt.Errorf("add service: %w", asInvalid(err))
	}
	if err := identity.ValidateRole(role); err != nil {
		return store.Service{}, nil, fmt.Errorf("add service %q: %w", name, asInvalid(err))
	}
	csr, err := parseCSRFor(csrDER, identity.KindService, name)
	if err != nil {
		return store.Service{}, nil, fmt.Errorf("add service %q: %w", name, err)
	}
	switch _, err := r.st.GetService(ctx, name); {
	case err == nil:
		return store.Service{}, nil, fmt.Errorf("add service %q: service %w", name, store.ErrConflict)
	case !errors.Is(err, store.ErrNotFound):
		return store.Service{}, nil, fmt.Errorf("add service %q: %w", name, err)
	}
	if err := r.clientIDFree(ctx, identity.KindService, name); err != nil {
		return store.Service{}, nil, fmt.Errorf("add service %q: %w", name, err)
	}
	cert, err := r.ca.IssueService(csr, name, r.serviceLifetime)
	if err != nil {
		return store.Service{}, nil, fmt.Errorf("add service %q: %w", name, err)
	}
	if err := checkIssued(cert, csr, identity.KindService, name, r.now()); err != nil {
		return store.Service{}, nil, fmt.Errorf("add service %q: the CA issued an unusable certificate: %w", name, err)
	}

	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	now := r.clock()
	cred := credentialFor(identity.KindService, name, csr, cert, now)
	sv := store.Service{Name: name, Role: role, State: store.StateActive, CreatedAt: now, UpdatedAt: now}
	if err := r.st.CreateService(ctx, sv, cred); err != nil {
		return store.Service{}, nil, fmt.Errorf("add service %q: %w", name, err)
	}
	r.emit(ctx, Event{Kind: EventServiceAdded, Principal: servicePrincipal(name, role), At: now},
		"serial", cred.Serial, "role", role)
	return sv, cert, nil
}

// Device returns a device and its credentials.
func (r *Registry) Device(ctx context.Context, id string) (DeviceInfo, error) {
	d, err := r.st.GetDevice(ctx, id)
	if err != nil {
		return DeviceInfo{}, err
	}
	creds, err := r.st.Credentials(ctx, identity.KindDevice, id)
	if err != nil {
		return DeviceInfo{}, err
	}
	return DeviceInfo{Device: d, Credentials: creds}, nil
}

// DeviceExists reports whether a device is registered, in any state. It is
// one primary-key lookup.
func (r *Registry) DeviceExists(ctx context.Context, id string) (bool, error) {
	_, err := r.st.GetDevice(ctx, id)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	}
	return false, err
}

// ListDevices returns devices matching f, ordered by ID (see
// store.DeviceFilter for paging).
func (r *Registry) ListDevices(ctx context.Context, f store.DeviceFilter) ([]store.Device, error) {
	if f.State != "" && !f.State.Valid() {
		return nil, fmt.Errorf("list devices: %w", invalidf("unknown state %q (want %s, %s or %s)",
			f.State, store.StateActive, store.StateDisabled, store.StateRevoked))
	}
	return r.st.ListDevices(ctx, f)
}

// ListServices returns all services ordered by name.
func (r *Registry) ListServices(ctx context.Context) ([]store.Service, error) {
	return r.st.ListServices(ctx)
}

// SetTags replaces a device's tags.
func (r *Registry) SetTags(ctx context.Context, id string, tags map[string]string) error {
	if err := ValidateTags(tags); err != nil {
		return fmt.Errorf("set tags of device %q: %w", id, err)
	}
	if err := r.st.SetDeviceTags(ctx, id, tags); err != nil {
		return err
	}
	r.log.InfoContext(ctx, "device tags set", "device", id, "tags", len(tags))
	return nil
}

// revokedFinal is the error for trying to change a revoked principal.
func revokedFinal(verb string, kind identity.Kind, id string) error {
	return invalid(fmt.Errorf("%s %s %q: it is %w, which is final; register a replacement under a new ID",
		verb, kind, id, store.ErrRevoked))
}

// Disable stops a device from connecting until Enable; the broker cuts its
// live connections on the event. Disabling a disabled device changes
// nothing.
func (r *Registry) Disable(ctx context.Context, id, reason string) (store.Device, error) {
	if err := checkText("reason", reason, MaxReasonLen); err != nil {
		return store.Device{}, fmt.Errorf("disable device %q: %w", id, err)
	}
	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	d, err := r.st.GetDevice(ctx, id)
	if err != nil {
		return store.Device{}, fmt.Errorf("disable: %w", err)
	}
	switch d.State {
	case store.StateDisabled:
		return d, nil
	case store.StateRevoked:
		return d, revokedFinal("disable", identity.KindDevice, id)
	}
	now := r.clock()
	d, err = r.st.SetDeviceState(ctx, id, store.StateDisabled, reason, now)
	if errors.Is(err, store.ErrRevoked) {
		return d, revokedFinal("disable", identity.KindDevice, id)
	}
	if err != nil {
		return store.Device{}, fmt.Errorf("disable: %w", err)
	}
	r.emit(ctx, Event{Kind: EventDeviceDisabled, Principal: devicePrincipal(id), Reason: reason, At: now})
	return d, nil
}

// Enable lets a disabled device connect again. A revoked device can never
// be enabled. Enabling an active device changes nothing.
func (r *Registry) Enable(ctx context.Context, id string) (store.Device, error) {
	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	d, err := r.st.GetDevice(ctx, id)
	if err != nil {
		return store.Device{}, fmt.Errorf("enable: %w", err)
	}
	switch d.State {
	case store.StateActive:
		return d, nil
	case store.StateRevoked:
		return d, revokedFinal("enable", identity.KindDevice, id)
	}
	now := r.clock()
	d, err = r.st.SetDeviceState(ctx, id, store.StateActive, "", now)
	if errors.Is(err, store.ErrRevoked) {
		return d, revokedFinal("enable", identity.KindDevice, id)
	}
	if err != nil {
		return store.Device{}, fmt.Errorf("enable: %w", err)
	}
	r.emit(ctx, Event{Kind: EventDeviceEnabled, Principal: devicePrincipal(id), At: now})
	return d, nil
}

// Revoke revokes a device and all its credentials for good, retires its
// envelope keys, re-signs the CRL, then announces the change. Revoking a
// revoked device changes nothing and announces nothing. If only the CRL
// fails, the device is revoked all the same (Authenticate refuses it at
// once) and the error says to retry RefreshCRL.
func (r *Registry) Revoke(ctx context.Context, id, reason string) (store.Device, error) {
	if err := checkText("reason", reason, MaxReasonLen); err != nil {
		return store.Device{}, fmt.Errorf("revoke device %q: %w", id, err)
	}
	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	prev, err := r.st.GetDevice(ctx, id)
	if err != nil {
		return store.Device{}, fmt.Errorf("revoke: %w", err)
	}
	now := r.clock()
	d, creds, err := r.st.RevokeDevice(ctx, id, reason, now)
	if err != nil {
		return store.Device{}, fmt.Errorf("revoke: %w", err)
	}
	// The revocation is committed: finish the CRL and the announcement even
	// if the caller has gone away.
	ctx = context.WithoutCancel(ctx)
	var crlErr error
	if prev.State != store.StateRevoked || len(creds) > 0 {
		_, crlErr = r.RefreshCRL(ctx)
	}
	if prev.State != store.StateRevoked {
		r.emit(ctx, Event{Kind: EventDeviceRevoked, Principal: devicePrincipal(id), Reason: reason, At: now},
			"credentials", len(creds))
		if r.envelopeRetiredBy(ctx, id, now) {
			r.emit(ctx, Event{Kind: EventEnvelopeChanged, Principal: devicePrincipal(id), Reason: "revoked", At: now})
		}
	}
	if crlErr != nil {
		r.log.ErrorContext(ctx, "CRL not re-signed after revocation", "device", id, "error", crlErr)
		return d, fmt.Errorf("device %q is revoked, but the CRL could not be re-signed (retry with a CRL refresh): %w", id, crlErr)
	}
	return d, nil
}

// RevokeService is Revoke for a service.
func (r *Registry) RevokeService(ctx context.Context, name, reason string) (store.Service, error) {
	if err := checkText("reason", reason, MaxReasonLen); err != nil {
		return store.Service{}, fmt.Errorf("revoke service %q: %w", name, err)
	}
	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	prev, err := r.st.GetService(ctx, name)
	if err != nil {
		return store.Service{}, fmt.Errorf("revoke: %w", err)
	}
	now := r.clock()
	sv, creds, err := r.st.RevokeService(ctx, name, reason, now)
	if err != nil {
		return store.Service{}, fmt.Errorf("revoke: %w", err)
	}
	ctx = context.WithoutCancel(ctx)
	var crlErr error
	if prev.State != store.StateRevoked || len(creds) > 0 {
		_, crlErr = r.RefreshCRL(ctx)
	}
	if prev.State != store.StateRevoked {
		r.emit(ctx, Event{Kind: EventServiceRevoked, Principal: servicePrincipal(name, sv.Role), Reason: reason, At: now},
			"credentials", len(creds))
	}
	if crlErr != nil {
		r.log.ErrorContext(ctx, "CRL not re-signed after revocation", "service", name, "error", crlErr)
		return sv, fmt.Errorf("service %q is revoked, but the CRL could not be re-signed (retry with a CRL refresh): %w", name, crlErr)
	}
	return sv, nil
}
