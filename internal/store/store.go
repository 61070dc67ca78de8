// Package store defines the records Warden keeps about devices, services and
// their credentials, and the small interface every SQL backend implements.
// The SQLite backend lives in store/sqlite; store/storetest holds the
// conformance suite that every backend must pass, so that behaviour (errors,
// ordering, atomicity, idempotency) is the same whichever database runs.
//
// The store enforces integrity (unique IDs and serials, a revoked record
// stays revoked, multi-row changes are atomic) but makes no policy
// decisions: whether a principal may connect is decided in registry.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/warden-iot/warden/internal/identity"
)

// DeviceState is the lifecycle state of a device or service.
type DeviceState string

// Lifecycle states. Revoked is final: nothing leaves it.
const (
	StateActive   DeviceState = "active"
	StateDisabled DeviceState = "disabled"
	StateRevoked  DeviceState = "revoked"
)

// Valid reports whether s is one of the known states.
func (s DeviceState) Valid() bool {
	switch s {
	case StateActive, StateDisabled, StateRevoked:
		return true
	}
	return false
}

// Device is a registered device. Times are UTC and kept to the microsecond,
// the finest resolution every supported database stores.
type Device struct {
	ID          string
	Model       string
	Tags        map[string]string // never nil when read from a store
	State       DeviceState
	StateReason string // why the device is disabled or revoked
	Owner       string // empty until claimed
	CreatedAt   time.Time
	UpdatedAt   time.Time // time of the last state change
}

// SubjectKind says whether a credential belongs to a device or a service.
type SubjectKind = identity.Kind

// Credential is one issued certificate and the CSR it was issued from. The
// CSR is kept so the certificate can be re-issued when a CA rotates without
// the device generating a new key.
type Credential struct {
	Serial           string // lowercase hex of the certificate serial; unique
	SubjectKind      identity.Kind
	SubjectID        string
	Fingerprint      string // lowercase hex SHA-256 of the certificate DER
	NotBefore        time.Time
	NotAfter         time.Time
	CSR              []byte // DER
	Certificate      []byte // DER
	CreatedAt        time.Time
	RevokedAt        time.Time // zero if not revoked
	RevocationReason string
}

// Revoked reports whether the credential has been revoked.
func (c Credential) Revoked() bool { return !c.RevokedAt.IsZero() }

// Service is a registered back-end service that connects to the broker.
type Service struct {
	Name        string
	Role        string
	State       DeviceState
	StateReason string
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// Paging bounds for ListDevices. A fixed ceiling keeps one API call from
// pulling an entire fleet into memory.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// DeviceFilter selects devices for ListDevices. Zero fields match anything.
type DeviceFilter struct {
	State DeviceState
	Model string
	Tags  map[string]string // every pair must match
	After string            // paging cursor: only IDs greater than After
	Limit int               // <= 0 means DefaultListLimit; capped at MaxListLimit
}

// PageSize is the number of rows a backend returns at most for f.
func (f DeviceFilter) PageSize() int {
	switch {
	case f.Limit <= 0:
		return DefaultListLimit
	case f.Limit > MaxListLimit:
		return MaxListLimit
	}
	return f.Limit
}

// Errors every backend wraps, so callers can test with errors.Is whatever
// database is underneath.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("already exists")
	// ErrRevoked is returned when a change would bring a revoked device or
	// service (or a credential for one) back into use.
	ErrRevoked = errors.New("revoked")
)

// Store is the persistence interface. Implementations must be safe for
// concurrent use, and several handles (or processes) on the same database
// must not corrupt each other.
type Store interface {
	// CreateDevice stores a device, its tags and its first credential in
	// one transaction: all of it or nothing. ErrConflict if the device ID or
	// the credential serial already exists.
	CreateDevice(ctx context.Context, d Device, c Credential) error
	// GetDevice returns ErrNotFound if there is no such device.
	GetDevice(ctx context.Context, id string) (Device, error)
	// ListDevices returns devices matching f, ordered by ID.
	ListDevices(ctx context.Context, f DeviceFilter) ([]Device, error)
	// SetDeviceState moves a device between active and disabled. A revoked
	// device cannot change state (ErrRevoked); use RevokeDevice to revoke.
	SetDeviceState(ctx context.Context, id string, s DeviceState, reason string, at time.Time) (Device, error)
	// RevokeDevice marks the device revoked and revokes all its unrevoked
	// credentials, in one transaction, and returns the device and the
	// credentials it newly revoked. Revoking a revoked device changes
	// nothing and returns no credentials: the first reason and time stand.
	RevokeDevice(ctx context.Context, id, reason string, at time.Time) (Device, []Credential, error)
	// SetDeviceTags replaces all of a device's tags.
	SetDeviceTags(ctx context.Context, id string, tags map[string]string) error
	// AddCredential stores a further credential for an existing subject.
	// ErrNotFound if the subject does not exist, ErrRevoked if it is
	// revoked, ErrConflict if the serial exists.
	AddCredential(ctx context.Context, c Credential) error
	// CredentialBySerial returns ErrNotFound if the serial is unknown.
	CredentialBySerial(ctx context.Context, serial string) (Credential, error)
	// Credentials returns a subject's credentials, newest first.
	Credentials(ctx context.Context, kind identity.Kind, id string) ([]Credential, error)
	// RevokedCredentials returns every revoked credential, for the CRL.
	RevokedCredentials(ctx context.Context) ([]Credential, error)
	// CreateService stores a service and its first credential atomically.
	CreateService(ctx context.Context, s Service, c Credential) error
	// GetService returns ErrNotFound if there is no such service.
	GetService(ctx context.Context, name string) (Service, error)
	// ListServices returns all services ordered by name.
	ListServices(ctx context.Context) ([]Service, error)
	// RevokeService is RevokeDevice for services.
	RevokeService(ctx context.Context, name, reason string, at time.Time) (Service, []Credential, error)
	// Close releases the database.
	Close() error
}
