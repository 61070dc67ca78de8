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

// Admission is a credential and the state of its subject, read together
// for the check every connection makes (Store.Admission). Credential has
// no CSR or Certificate: the check needs the fingerprint only.
type Admission struct {
	Credential Credential
	// SubjectState is the device's or service's state; "" when no such
	// subject exists.
	SubjectState       DeviceState
	SubjectStateReason string
	// Role is a service's role; "" for a device.
	Role string
}

// Service is a registered back-end service that connects to the broker.
type Service struct {
	Name        string
	Role        string
	State       DeviceState
	StateReason string
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// EnvelopeState is the state of one key epoch of a sealed-envelope device
// (docs/envelope.md).
type EnvelopeState string

// Envelope key states. A key is pending from the rekey that issued it until
// the device confirms it, then active; the key it replaces, and every key of
// a revoked device, is retired. Retired is final.
const (
	EnvelopePending EnvelopeState = "pending"
	EnvelopeActive  EnvelopeState = "active"
	EnvelopeRetired EnvelopeState = "retired"
)

// Valid reports whether s is one of the known envelope key states.
func (s EnvelopeState) Valid() bool {
	switch s {
	case EnvelopePending, EnvelopeActive, EnvelopeRetired:
		return true
	}
	return false
}

// EnvelopeKey is one key epoch of a sealed-envelope device. The store never
// sees a master secret in the clear: SealedSecret is sealed by the keystore
// under a record name that names the device and the epoch, so a blob copied
// to another row does not open.
type EnvelopeKey struct {
	DeviceID string
	Epoch    uint32 // the envelope spec's key epoch; the first key is epoch 0
	Suite    string // the envelope suite this secret is for
	// SealedSecret is the keystore-sealed 16-byte master secret; empty for
	// sign-p256 (the device's certificate key is used) and for retired
	// keys, whose secrets the store erases.
	SealedSecret []byte
	State        EnvelopeState
	CreatedAt    time.Time
	ActivatedAt  time.Time // zero while pending (and if retired before activation)
	RetiredAt    time.Time // zero unless retired
}

// EnvelopePolicy is what Warden accepts from a sealed-envelope device. A
// device with a policy is an envelope device; one without is not.
type EnvelopePolicy struct {
	DeviceID  string
	MinSuite  string // weakest suite accepted from the device (no downgrade)
	Required  bool   // uplinks must be sealed even over TLS
	UpdatedAt time.Time
}

// Envelope directions, as the replay-window and sequence methods name them.
// They are the names envelope.Direction prints.
const (
	EnvelopeUplink   = "uplink"   // device to Warden
	EnvelopeDownlink = "downlink" // Warden to device
)

// MaxReplayWindowSize bounds the replay-window state a backend stores per
// (device, direction, epoch). The envelope window encodes in 18 bytes; the
// bound leaves room for a later format without letting a bug grow rows.
const MaxReplayWindowSize = 64

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
	// Owner selects the devices claimed by this user. Empty matches any
	// device, owned or not: there is no filter for "unclaimed".
	Owner string
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
	// RevokeDevice marks the device revoked, revokes all its unrevoked
	// credentials and retires all its unretired envelope keys (erasing
	// their sealed secrets), in one transaction, and returns the device and
	// the credentials it newly revoked. Revoking a revoked device changes
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
	// Admission returns, in one read, what authenticating a certificate
	// with this serial needs: its credential (without the CSR and the
	// certificate) and the state of the credential's subject, as one
	// snapshot. ErrNotFound if the serial is unknown; a credential whose
	// subject does not exist comes back with Admission.SubjectState "".
	Admission(ctx context.Context, serial string) (Admission, error)
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

	// EnableEnvelope makes a device an envelope device: it stores its first
	// envelope key (as AddEnvelopeKey) and its policy in one transaction.
	// ErrConflict if the device already has envelope keys, ErrNotFound if it
	// does not exist, ErrRevoked if it is revoked.
	EnableEnvelope(ctx context.Context, k EnvelopeKey, p EnvelopePolicy) error
	// AddEnvelopeKey stores a pending or active key. ErrNotFound if the
	// device does not exist, ErrRevoked if it is revoked, ErrConflict if the
	// (device, epoch) exists or the device already has a key in that state
	// (at most one active and one pending per device).
	AddEnvelopeKey(ctx context.Context, k EnvelopeKey) error
	// EnvelopeKeys returns a device's keys in ascending epoch order; an
	// empty, non-nil slice if it has none (or does not exist).
	EnvelopeKeys(ctx context.Context, deviceID string) ([]EnvelopeKey, error)
	// PromoteEnvelopeKey makes a pending key active and retires (erasing
	// its secret) the key that was active, in one transaction, at time at.
	// Promoting the active key changes nothing. ErrNotFound if there is no
	// such key, ErrRevoked if it is retired.
	PromoteEnvelopeKey(ctx context.Context, deviceID string, epoch uint32, at time.Time) error
	// SetEnvelopePolicy creates or replaces a device's policy. ErrNotFound
	// if the device does not exist, ErrRevoked if it is revoked.
	SetEnvelopePolicy(ctx context.Context, p EnvelopePolicy) error
	// GetEnvelopePolicy returns ErrNotFound if the device has no policy,
	// that is, if it is not an envelope device.
	GetEnvelopePolicy(ctx context.Context, deviceID string) (EnvelopePolicy, error)
	// LoadReplayWindow returns the replay-window state saved for (device,
	// direction, epoch), or nil and no error if none is saved (also when
	// there is no such key).
	LoadReplayWindow(ctx context.Context, deviceID, direction string, epoch uint32) ([]byte, error)
	// SaveReplayWindow creates or replaces the replay-window state of
	// (device, direction, epoch): 1 to MaxReplayWindowSize bytes.
	// ErrNotFound if the device has no key of that epoch, ErrRevoked if the
	// key is retired.
	SaveReplayWindow(ctx context.Context, deviceID, direction string, epoch uint32, state []byte) error
	// ReserveSequence is the persist-ahead counter of RFC 8613 Appendix
	// B.1.1 for a sender: in one atomic step it returns the stored next
	// sequence number of (device, direction, epoch) (0 if none is stored)
	// and stores next+step, so the caller owns [start, start+step) and may
	// use those numbers without touching the store. No number is handed
	// out twice, whatever the number of handles or processes. step must be
	// at least 1, and next+step at most math.MaxInt64. ErrNotFound if the
	// device has no key of that epoch, ErrRevoked if the key is retired.
	ReserveSequence(ctx context.Context, deviceID, direction string, epoch uint32, step uint64) (start uint64, err error)

	// FirmwareStore keeps release keys, firmware images, rollouts and what
	// devices report running (firmware.go).
	FirmwareStore

	// OnboardStore keeps enrollments, claims, API tokens and CA rotations (onboard.go).
	OnboardStore

	// AlertStore keeps the anomaly monitor's alerts and quarantines (alerts.go).
	AlertStore

	// Close releases the database.
	Close() error
}
