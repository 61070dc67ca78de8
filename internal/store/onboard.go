package store

import (
	"context"
	"time"
)

// Enrollment methods: how a preregistered device proves it may enroll.
const (
	EnrollSecret = "secret" // an HMAC with a secret recorded at the factory
	EnrollClaim  = "claim"  // a fleet claim certificate whose allow-list names the device
)

// RecoveryRevocationReason is the revocation reason Recover gives a
// device's earlier credentials.
const RecoveryRevocationReason = "superseded by recovery enrollment"

// Enrollment authorizes one device ID to enroll once. A device enrolls
// with a CSR of its own key; Warden registers it (device, tags and first
// credential) and marks the enrollment used in one transaction, so an
// enrollment can never be used twice and a device is never half-enrolled.
//
// A recovery enrollment (Recovery true, EnrollSecret only) is for a device
// that is registered already but can no longer authenticate: its
// certificate expired, its issuing CA is no longer trusted, or it lost its
// key. Enrolling with it issues a new credential to the existing device and
// revokes all its earlier ones (Recover); the device keeps its model, tags
// and owner, so a recovery enrollment's Model and Tags are not used.
type Enrollment struct {
	DeviceID string            `json:"device_id"`
	Method   string            `json:"method"`     // EnrollSecret or EnrollClaim
	Claim    string            `json:"claim"`      // the claim certificate's name (EnrollClaim only)
	Model    string            `json:"model"`      // given to the device when it enrolls
	Tags     map[string]string `json:"tags"`       // idem; never nil when read
	Secret   []byte            `json:"-"`          // keystore-sealed enrollment secret (EnrollSecret only)
	Created  time.Time         `json:"created_at"` //
	UsedAt   time.Time         `json:"used_at"`    // zero until the device enrolled
	Serial   string            `json:"serial"`     // the certificate it enrolled with; empty until used
	Recovery bool              `json:"recovery"`   // re-enrolls a registered device (Recover), not a new one (Enroll)
}

// Used reports whether the device has enrolled with it.
func (e Enrollment) Used() bool { return !e.UsedAt.IsZero() }

// EnrollmentFilter selects enrollments. Zero fields match anything.
type EnrollmentFilter struct {
	Claim  string // only this claim certificate's allow-list
	Unused bool   // only enrollments not used yet
	After  string // paging cursor: device IDs greater than After
	Limit  int    // <= 0 means DefaultListLimit; capped at MaxListLimit
}

// ClaimCert is a fleet claim certificate: a credential that may only
// enroll the device IDs on its allow-list (Enrollments with Claim = Name).
type ClaimCert struct {
	Name        string    `json:"name"`
	Serial      string    `json:"serial"`      // lowercase hex, unique among claim certificates
	Fingerprint string    `json:"fingerprint"` // lowercase hex SHA-256 of Certificate
	Certificate []byte    `json:"certificate"` // DER
	NotAfter    time.Time `json:"not_after"`
	CreatedAt   time.Time `json:"created_at"`
	RevokedAt   time.Time `json:"revoked_at"` // zero unless revoked; revoked is final
	Reason      string    `json:"reason"`
}

// Revoked reports whether the claim certificate may no longer be used.
func (c ClaimCert) Revoked() bool { return !c.RevokedAt.IsZero() }

// ClaimUse records the use of an app claim token: its single-use ID, the
// user it binds and the device it bound.
type ClaimUse struct {
	TokenID   string    `json:"token_id"` // the JWE's jti
	User      string    `json:"user"`
	DeviceID  string    `json:"device_id"`
	ExpiresAt time.Time `json:"expires_at"` // the token's exp: the row may be purged after it
	UsedAt    time.Time `json:"used_at"`
}

// APIToken is an operator or app credential for the HTTPS API. Only a hash
// of the secret part is stored; the token is shown once, when created.
type APIToken struct {
	ID         string    `json:"id"`   // public, unique; the token's prefix
	Hash       []byte    `json:"-"`    // SHA-256 of the secret part
	Role       string    `json:"role"` // admin, operator, viewer or app
	User       string    `json:"user"`
	Note       string    `json:"note"`
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at"` // zero: no expiry
	LastUsedAt time.Time `json:"last_used_at"`
	RevokedAt  time.Time `json:"revoked_at"`
}

// Revoked reports whether the token was revoked.
func (t APIToken) Revoked() bool { return !t.RevokedAt.IsZero() }

// Rotation states. Completed and aborted are final.
const (
	RotationRunning   = "running"   // re-issuing and delivering; old issuer trusted
	RotationCompleted = "completed" // every device switched or the grace ended; old issuer retired
	RotationAborted   = "aborted"
)

// Rotation is a CA rotation: re-issuing every active device's certificate
// under a new issuing CA, and tracking which devices switched.
type Rotation struct {
	ID         string    `json:"id"`
	OldIssuer  string    `json:"old_issuer"` // fingerprint of the issuing CA being replaced
	NewIssuer  string    `json:"new_issuer"` // fingerprint of its replacement
	GraceUntil time.Time `json:"grace_until"`
	State      string    `json:"state"`
	Reason     string    `json:"reason"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// Per-device rotation states, in order.
const (
	RotationDevicePending   = "pending"   // not re-issued yet
	RotationDeviceIssued    = "issued"    // new credential stored; not yet delivered
	RotationDeviceDelivered = "delivered" // published on private/<id>/cert/new
	RotationDeviceSwitched  = "switched"  // connected with the new certificate
	RotationDeviceFailed    = "failed"    // could not be re-issued (reason says why)
)

// RotationDevice is one device of a rotation.
type RotationDevice struct {
	RotationID string    `json:"rotation_id"`
	DeviceID   string    `json:"device_id"`
	State      string    `json:"state"`
	Serial     string    `json:"serial"` // the re-issued credential, once issued
	Reason     string    `json:"reason"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// OnboardStore keeps what onboarding and the certificate lifecycle need:
// preregistered enrollments, fleet claim certificates, used claim tokens,
// API tokens and CA rotations. Every backend implements it.
type OnboardStore interface {
	// AddEnrollments stores enrollments in one transaction: all or none.
	// ErrConflict if an enrollment for one of the IDs exists or a device
	// with one of the IDs is registered; ErrNotFound if an EnrollClaim
	// enrollment names a claim certificate that does not exist.
	//
	// A recovery enrollment (Recovery, EnrollSecret only) is the exception:
	// its device must be registered (ErrNotFound otherwise) and not revoked
	// (ErrRevoked), and it replaces the ID's enrollment if there is one,
	// used (the device's first enrollment) or not (an earlier recovery the
	// device never used), so that only the newest secret works.
	AddEnrollments(ctx context.Context, es []Enrollment) error
	// GetEnrollment returns ErrNotFound if the ID was never preregistered.
	GetEnrollment(ctx context.Context, deviceID string) (Enrollment, error)
	// ListEnrollments returns enrollments matching f, ordered by device ID.
	ListEnrollments(ctx context.Context, f EnrollmentFilter) ([]Enrollment, error)
	// DeleteEnrollment removes an unused enrollment. ErrNotFound if there
	// is none, ErrConflict if it was used (the record stays as history).
	DeleteEnrollment(ctx context.Context, deviceID string) error
	// Enroll registers d with its first credential c and marks d's
	// enrollment used (UsedAt = at, Serial = c.Serial), in one transaction.
	// ErrNotFound if d.ID has no enrollment; ErrConflict if it is used
	// already, is a recovery enrollment (use Recover) or a device with the
	// ID exists. d.Model and d.Tags are taken from the enrollment, whatever
	// the caller passed.
	Enroll(ctx context.Context, d Device, c Credential, at time.Time) (Device, error)
	// Recover uses the recovery enrollment of the registered device id: in
	// one transaction it stores c as the device's new credential, revokes
	// every earlier unrevoked credential of the device (reason
	// RecoveryRevocationReason, time at) and marks the enrollment used
	// (UsedAt = at, Serial = c.Serial), and returns the device, whose model,
	// tags, owner and state are unchanged. ErrNotFound if id has no
	// enrollment or no device; ErrConflict if the enrollment is used
	// already, is not a recovery enrollment, the device is disabled
	// (enable it first) or c's serial exists; ErrRevoked if the device is
	// revoked.
	Recover(ctx context.Context, id string, c Credential, at time.Time) (Device, error)

	// CreateClaimCert stores a claim certificate. ErrConflict if the name
	// or serial exists.
	CreateClaimCert(ctx context.Context, c ClaimCert) error
	// GetClaimCert returns ErrNotFound if there is no such name.
	GetClaimCert(ctx context.Context, name string) (ClaimCert, error)
	// ClaimCertBySerial returns ErrNotFound if the serial is unknown.
	ClaimCertBySerial(ctx context.Context, serial string) (ClaimCert, error)
	// ListClaimCerts returns all claim certificates ordered by name.
	ListClaimCerts(ctx context.Context) ([]ClaimCert, error)
	// RevokeClaimCert revokes a claim certificate and deletes the unused
	// enrollments of its allow-list, in one transaction. Revoking a revoked
	// one changes nothing. ErrNotFound if there is no such name.
	RevokeClaimCert(ctx context.Context, name, reason string, at time.Time) (ClaimCert, error)

	// Claim records a claim token's use and sets the device's owner to
	// u.User, in one transaction. ErrConflict if the token ID was used
	// before (a replay) or the device is owned by another user; ErrNotFound
	// if the device does not exist; ErrRevoked if it is revoked. Claiming a
	// device already owned by the same user records the use and succeeds.
	Claim(ctx context.Context, u ClaimUse) (Device, error)
	// PurgeClaimUses deletes uses whose token expired before before, and
	// returns how many. A purged token cannot be replayed: it has expired.
	PurgeClaimUses(ctx context.Context, before time.Time) (int, error)
	// SetDeviceOwner sets (or, with "", clears) a device's owner.
	// ErrNotFound if there is no such device, ErrRevoked if it is revoked.
	SetDeviceOwner(ctx context.Context, deviceID, owner string, at time.Time) (Device, error)

	// CreateAPIToken stores a token. ErrConflict if the ID exists.
	CreateAPIToken(ctx context.Context, t APIToken) error
	// GetAPIToken returns ErrNotFound if there is no such ID.
	GetAPIToken(ctx context.Context, id string) (APIToken, error)
	// ListAPITokens returns all tokens, newest first.
	ListAPITokens(ctx context.Context) ([]APIToken, error)
	// RevokeAPIToken revokes a token; revoking a revoked one keeps the
	// first time. ErrNotFound if there is no such ID.
	RevokeAPIToken(ctx context.Context, id string, at time.Time) (APIToken, error)
	// TouchAPIToken sets LastUsedAt if at is later than the stored value.
	TouchAPIToken(ctx context.Context, id string, at time.Time) error

	// CreateRotation stores a running rotation and its devices (state
	// pending) in one transaction. ErrConflict if the ID exists or another
	// rotation is running; ErrNotFound if a device does not exist.
	CreateRotation(ctx context.Context, r Rotation, deviceIDs []string) error
	// GetRotation returns ErrNotFound if there is no such rotation.
	GetRotation(ctx context.Context, id string) (Rotation, error)
	// RunningRotation returns the running rotation, ErrNotFound if none.
	RunningRotation(ctx context.Context) (Rotation, error)
	// ListRotations returns all rotations, newest first.
	ListRotations(ctx context.Context) ([]Rotation, error)
	// FinishRotation moves a running rotation to state (completed or
	// aborted) with reason. ErrConflict if it is not running.
	FinishRotation(ctx context.Context, id, state, reason string, at time.Time) error
	// SetRotationDevice moves a device of a rotation to state, with serial
	// (kept if empty) and reason, if its current state is one of from (any
	// if from is empty). ErrConflict if it is in another state,
	// ErrNotFound if it is not part of the rotation.
	SetRotationDevice(ctx context.Context, rotationID, deviceID, state, serial, reason string, at time.Time, from ...string) error
	// RotationDevices returns a rotation's devices in state (all if
	// empty), ordered by device ID, after the cursor, at most limit
	// (DefaultListLimit if <= 0, capped at MaxListLimit).
	RotationDevices(ctx context.Context, rotationID, state, after string, limit int) ([]RotationDevice, error)
	// RotationCounts returns the number of devices per state.
	RotationCounts(ctx context.Context, rotationID string) (map[string]int, error)
}
