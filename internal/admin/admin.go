// Package admin is the operator surface of the registry, firmware and CA.
// Service is implemented twice: Local acts on the data directory in
// process (no server running, and inside the server behind its API), and
// internal/apiclient calls a running `warden serve` through its API (over
// the admin socket, a unix socket in the data directory with mode 0600, or
// HTTPS with a token), so that revocations take effect on live
// connections at once.
package admin

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/rotation"
	"github.com/warden-iot/warden/internal/store"
)

// Service is every registry action the CLI offers.
type Service interface {
	// AddDevice issues a certificate for the CSR and registers the device.
	AddDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte) (Issued, error)
	// IssueDevice checks everything AddDevice would and issues the
	// certificate, but registers nothing: provisioning delivers the key
	// and certificate first, then calls RegisterDevice.
	IssueDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte) (Issued, error)
	// RegisterDevice records a device whose certificate IssueDevice issued.
	RegisterDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte, certPEM string) (store.Device, error)
	AddService(ctx context.Context, name, role string, csrDER []byte) (Issued, error)
	Device(ctx context.Context, id string) (registry.DeviceInfo, error)
	ListDevices(ctx context.Context, f store.DeviceFilter) ([]store.Device, error)
	ListServices(ctx context.Context) ([]store.Service, error)
	Disable(ctx context.Context, id, reason string) (store.Device, error)
	Enable(ctx context.Context, id string) (store.Device, error)
	Revoke(ctx context.Context, id, reason string) (store.Device, error)
	// SetTags replaces all of a device's tags (an empty map removes them)
	// and returns the device as stored.
	SetTags(ctx context.Context, id string, tags map[string]string) (store.Device, error)
	RevokeService(ctx context.Context, name, reason string) (store.Service, error)
	// EnableEnvelope gives a device an envelope key (docs/envelope.md); the
	// secret is returned once, for the device's bundle, and kept only sealed.
	EnableEnvelope(ctx context.Context, id, suite string, required bool) (EnvelopeBundle, error)
	// Rekey moves an envelope device to a new epoch; it needs the running
	// server, which sends the new secret sealed under the current one.
	Rekey(ctx context.Context, id string) (uint32, error)

	Firmware
	CA
}

// EnvelopeBundle is what an envelope device must hold.
type EnvelopeBundle struct {
	DeviceID string `json:"device_id"`
	Suite    string `json:"suite"`
	Epoch    uint32 `json:"epoch"`
	Secret   []byte `json:"secret,omitempty"` // nil for sign-p256
	Required bool   `json:"required"`
}

// Issued is the result of registering a principal: its PEM certificate.
type Issued struct {
	ID             string `json:"id"`
	CertificatePEM string `json:"certificate_pem"`
}

// Local implements Service on an in-process registry. RekeyFunc is set only
// inside the running server, which can deliver the new key.
type Local struct {
	Registry  *registry.Registry
	OTA       *ota.Service // nil: firmware commands fail
	RekeyFunc func(ctx context.Context, id string) (uint32, error)
	Rotation  *rotation.Manager // nil: CA rotation commands fail
	// Progress, if set, sees how far RotateCA got re-issuing certificates
	// without a running server.
	Progress func(done, total int)
}

var _ Service = Local{}

func certPEM(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// AddDevice implements Service.
func (l Local) AddDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte) (Issued, error) {
	d, cert, err := l.Registry.AddDevice(ctx, spec, csrDER)
	if err != nil {
		return Issued{}, err
	}
	return Issued{ID: d.ID, CertificatePEM: certPEM(cert)}, nil
}

// IssueDevice implements Service.
func (l Local) IssueDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte) (Issued, error) {
	cert, err := l.Registry.IssueDevice(ctx, spec, csrDER)
	if err != nil {
		return Issued{}, err
	}
	return Issued{ID: spec.ID, CertificatePEM: certPEM(cert)}, nil
}

// RegisterDevice implements Service.
func (l Local) RegisterDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte, certPEMText string) (store.Device, error) {
	block, _ := pem.Decode([]byte(certPEMText))
	if block == nil || block.Type != "CERTIFICATE" {
		return store.Device{}, fmt.Errorf("%w: register device %s: no PEM certificate given", registry.ErrInvalid, spec.ID)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return store.Device{}, fmt.Errorf("%w: register device %s: %v", registry.ErrInvalid, spec.ID, err)
	}
	return l.Registry.RegisterDevice(ctx, spec, csrDER, cert)
}

// AddService implements Service.
func (l Local) AddService(ctx context.Context, name, role string, csrDER []byte) (Issued, error) {
	s, cert, err := l.Registry.AddService(ctx, name, role, csrDER)
	if err != nil {
		return Issued{}, err
	}
	return Issued{ID: s.Name, CertificatePEM: certPEM(cert)}, nil
}

// Device implements Service.
func (l Local) Device(ctx context.Context, id string) (registry.DeviceInfo, error) {
	return l.Registry.Device(ctx, id)
}

// ListDevices implements Service.
func (l Local) ListDevices(ctx context.Context, f store.DeviceFilter) ([]store.Device, error) {
	return l.Registry.ListDevices(ctx, f)
}

// ListServices implements Service.
func (l Local) ListServices(ctx context.Context) ([]store.Service, error) {
	return l.Registry.ListServices(ctx)
}

// Disable implements Service.
func (l Local) Disable(ctx context.Context, id, reason string) (store.Device, error) {
	return l.Registry.Disable(ctx, id, reason)
}

// Enable implements Service.
func (l Local) Enable(ctx context.Context, id string) (store.Device, error) {
	return l.Registry.Enable(ctx, id)
}

// Revoke implements Service.
func (l Local) Revoke(ctx context.Context, id, reason string) (store.Device, error) {
	return l.Registry.Revoke(ctx, id, reason)
}

// RevokeService implements Service.
func (l Local) RevokeService(ctx context.Context, name, reason string) (store.Service, error) {
	return l.Registry.RevokeService(ctx, name, reason)
}

// EnableEnvelope implements Service.
func (l Local) EnableEnvelope(ctx context.Context, id, suite string, required bool) (EnvelopeBundle, error) {
	sec, err := l.Registry.EnableEnvelope(ctx, id, suite, required)
	if err != nil {
		return EnvelopeBundle{}, err
	}
	return EnvelopeBundle{DeviceID: id, Suite: sec.Suite, Epoch: sec.Epoch, Secret: sec.Secret, Required: required}, nil
}

// errNeedsServer is returned by actions only a running server can do.
var errNeedsServer = errors.New("this needs the running server (it sends the new key to the device): start `warden serve` on this data directory and try again")

// Rekey implements Service.
func (l Local) Rekey(ctx context.Context, id string) (uint32, error) {
	if l.RekeyFunc == nil {
		return 0, errNeedsServer
	}
	return l.RekeyFunc(ctx, id)
}
