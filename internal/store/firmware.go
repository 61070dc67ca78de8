package store

import (
	"context"
	"time"
)

// ReleaseKey is a firmware release public key the server trusts to have
// signed images and release statements. Only the public half is ever
// stored: the server cannot forge a release.
type ReleaseKey struct {
	ID        string    `json:"id"`         // lowercase hex SHA-256 of PublicKey: the MCUboot key hash and the statement's kid
	Name      string    `json:"name"`       // operator's label, e.g. the file it was trusted from; not unique
	PublicKey []byte    `json:"public_key"` // DER SubjectPublicKeyInfo (ECDSA P-256 or Ed25519)
	CreatedAt time.Time `json:"created_at"`
	RevokedAt time.Time `json:"revoked_at"` // zero while trusted; a revoked key stays revoked
}

// Revoked reports whether the key is no longer trusted.
func (k ReleaseKey) Revoked() bool { return !k.RevokedAt.IsZero() }

// FirmwareImage is a stored firmware image and its current release
// statement. The image bytes live in a blob store keyed by SHA256; the
// row is written only after the blob is durable, so a row always names a
// complete image.
type FirmwareImage struct {
	SHA256          string    `json:"sha256"` // lowercase hex SHA-256 of the whole image file
	Model           string    `json:"model"`
	Version         string    `json:"version"` // MCUboot version, "major.minor.revision+build"
	SecurityCounter uint32    `json:"security_counter"`
	Size            int64     `json:"size"`
	KeyID           string    `json:"key_id"`    // the ReleaseKey that signed image and statement
	Statement       []byte    `json:"statement"` // the signed release statement (COSE_Sign1)
	Sequence        uint64    `json:"sequence"`  // the statement's sequence number
	ExpiresAt       time.Time `json:"expires_at"`
	UploadedAt      time.Time `json:"uploaded_at"` // first upload; a statement refresh keeps it
	UpdatedAt       time.Time `json:"updated_at"`  // last statement change
}

// RolloutState is the state of a rollout. Aborted and completed are final.
type RolloutState string

// Rollout states.
const (
	RolloutRunning   RolloutState = "running"
	RolloutPaused    RolloutState = "paused"
	RolloutAborted   RolloutState = "aborted"
	RolloutCompleted RolloutState = "completed"
)

// Final reports whether nothing can leave s.
func (s RolloutState) Final() bool { return s == RolloutAborted || s == RolloutCompleted }

// Valid reports whether s is one of the known rollout states.
func (s RolloutState) Valid() bool {
	switch s {
	case RolloutRunning, RolloutPaused, RolloutAborted, RolloutCompleted:
		return true
	}
	return false
}

// Rollout is a staged deployment of one image to a frozen set of devices.
type Rollout struct {
	ID               string            `json:"id"`
	ImageSHA256      string            `json:"image_sha256"`
	Model            string            `json:"model"`             // selector: devices of this model
	Tags             map[string]string `json:"tags"`              // selector: every pair must match; never nil when read
	Stages           []int             `json:"stages"`            // cumulative percentages, ascending, the last 100
	Stage            int               `json:"stage"`             // index into Stages of the stage now open
	FailureThreshold float64           `json:"failure_threshold"` // fraction (0..1) of finished devices that may fail
	MinFinished      int               `json:"min_finished"`      // finished devices needed before a stage is judged
	Timeout          time.Duration     `json:"timeout_ns"`        // how long a stage waits for a device to finish
	State            RolloutState      `json:"state"`
	Reason           string            `json:"reason"` // why it is paused, aborted or completed
	StageStartedAt   time.Time         `json:"stage_started_at"`
	CreatedAt        time.Time         `json:"created_at"`
	UpdatedAt        time.Time         `json:"updated_at"`
}

// Per-device rollout states. Booted is success; failed, rolled-back and
// timed-out are unsuccessful ends; skipped devices were never offered the
// image (already running it, or it would lower their security counter).
const (
	DevicePending     = "pending"     // not yet offered
	DeviceOffered     = "offered"     // offered; the device has not reported yet
	DeviceDownloading = "downloading" // the device reports progress
	DeviceVerified    = "verified"    // image hash and signature checked on the device
	DeviceInstalling  = "installing"  // handed to the installer / bootloader
	DeviceBooted      = "booted"      // running the new image: success
	DeviceFailed      = "failed"      // the device reported a failure
	DeviceRolledBack  = "rolled-back" // the bootloader went back to the old image
	DeviceTimedOut    = "timed-out"   // did not finish within the stage timeout
	DeviceSkipped     = "skipped"     // never offered
)

// RolloutDeviceStateFinished reports whether a per-device state is an end.
func RolloutDeviceStateFinished(s string) bool {
	switch s {
	case DeviceBooted, DeviceFailed, DeviceRolledBack, DeviceTimedOut, DeviceSkipped:
		return true
	}
	return false
}

// RolloutDeviceStateValid reports whether s is a known per-device state.
func RolloutDeviceStateValid(s string) bool {
	switch s {
	case DevicePending, DeviceOffered, DeviceDownloading, DeviceVerified, DeviceInstalling,
		DeviceBooted, DeviceFailed, DeviceRolledBack, DeviceTimedOut, DeviceSkipped:
		return true
	}
	return false
}

// RolloutDevice is one device's membership in a rollout.
type RolloutDevice struct {
	RolloutID string    `json:"rollout_id"`
	DeviceID  string    `json:"device_id"`
	Stage     int       `json:"stage"`  // index of the first stage that includes the device
	State     string    `json:"state"`  // one of the Device* states
	Reason    string    `json:"reason"` // the device's or Warden's reason for a failure or skip
	UpdatedAt time.Time `json:"updated_at"`
}

// RolloutCount is the number of a rollout's devices in one stage and state.
type RolloutCount struct {
	Stage int    `json:"stage"`
	State string `json:"state"`
	N     int    `json:"n"`
}

// DeviceFirmware is what a device last reported running.
type DeviceFirmware struct {
	DeviceID        string    `json:"device_id"`
	Version         string    `json:"version"`
	SecurityCounter uint32    `json:"security_counter"`
	ImageSHA256     string    `json:"image_sha256"` // empty if the device did not say
	Sequence        uint64    `json:"sequence"`     // the statement sequence of the running image, 0 if unknown
	ReportedAt      time.Time `json:"reported_at"`
}

// RolloutDeviceFilter selects a rollout's devices for ListRolloutDevices.
type RolloutDeviceFilter struct {
	State string // empty: any
	After string // paging cursor: only device IDs greater than After
	Limit int    // <= 0 means DefaultListLimit; capped at MaxListLimit
}

// FirmwareStore keeps release keys, firmware images, rollouts and what
// each device reports running. Every backend implements it.
type FirmwareStore interface {
	// AddReleaseKey stores a trusted key. Adding a key that is already
	// trusted with the same public key changes nothing; ErrRevoked if the
	// key was revoked (trust does not come back); ErrConflict if the ID
	// exists with a different public key.
	AddReleaseKey(ctx context.Context, k ReleaseKey) error
	// GetReleaseKey returns ErrNotFound if the key was never added.
	GetReleaseKey(ctx context.Context, id string) (ReleaseKey, error)
	// ReleaseKeys returns every key, trusted and revoked, oldest first.
	ReleaseKeys(ctx context.Context) ([]ReleaseKey, error)
	// RevokeReleaseKey marks a key revoked; revoking a revoked key keeps
	// the first time. ErrNotFound if there is no such key.
	RevokeReleaseKey(ctx context.Context, id string, at time.Time) (ReleaseKey, error)

	// PutFirmwareImage stores an image row. If the SHA256 exists, a
	// statement with a higher sequence replaces the stored statement,
	// sequence and expiry (UpdatedAt := img.UpdatedAt, UploadedAt kept);
	// the same sequence and statement changes nothing; anything else is
	// ErrConflict. ErrConflict too if another image of the same model has
	// the same sequence, and ErrNotFound if KeyID names no key, ErrRevoked
	// if it names a revoked key. Returns the row as stored.
	PutFirmwareImage(ctx context.Context, img FirmwareImage) (FirmwareImage, error)
	// GetFirmwareImage returns ErrNotFound if there is no such image.
	GetFirmwareImage(ctx context.Context, sha256 string) (FirmwareImage, error)
	// ListFirmwareImages returns images of model (all if empty), newest
	// upload first.
	ListFirmwareImages(ctx context.Context, model string) ([]FirmwareImage, error)
	// DeleteFirmwareImage removes an image row. ErrConflict if a rollout
	// that is not final uses it, ErrNotFound if there is no such image.
	DeleteFirmwareImage(ctx context.Context, sha256 string) error

	// CreateRollout stores a rollout and its members in one transaction.
	// ErrConflict if the ID exists or a member is already in a rollout
	// that is not final; ErrNotFound if the image or a member device does
	// not exist.
	CreateRollout(ctx context.Context, r Rollout, members []RolloutDevice) error
	// GetRollout returns ErrNotFound if there is no such rollout.
	GetRollout(ctx context.Context, id string) (Rollout, error)
	// ListRollouts returns all rollouts, newest first.
	ListRollouts(ctx context.Context) ([]Rollout, error)
	// UpdateRollout writes r's Stage, State, Reason, StageStartedAt and
	// UpdatedAt if the stored state is from (compare and set). ErrConflict
	// if the stored state differs, ErrNotFound if there is no such rollout.
	UpdateRollout(ctx context.Context, r Rollout, from RolloutState) error
	// RolloutCounts returns the number of members per (stage, state), in
	// ascending stage then state order; only non-zero counts.
	RolloutCounts(ctx context.Context, id string) ([]RolloutCount, error)
	// ListRolloutDevices returns members of a rollout ordered by device ID.
	ListRolloutDevices(ctx context.Context, id string, f RolloutDeviceFilter) ([]RolloutDevice, error)
	// ActiveRollout returns the rollout that is not final (running or
	// paused) and has the device as a member, with its membership.
	// ErrNotFound if there is none.
	ActiveRollout(ctx context.Context, deviceID string) (Rollout, RolloutDevice, error)
	// SetRolloutDeviceState moves a member to state (with reason, at) if
	// its current state is one of from (any state if from is empty).
	// ErrConflict if it is in another state, ErrNotFound if it is not a
	// member.
	SetRolloutDeviceState(ctx context.Context, rolloutID, deviceID, state, reason string, at time.Time, from ...string) error
	// TimeOutRolloutDevices moves every member of stages <= maxStage whose
	// state is not finished to timed-out (reason "stage timeout"), and
	// returns how many it moved.
	TimeOutRolloutDevices(ctx context.Context, rolloutID string, maxStage int, at time.Time) (int, error)

	// SetDeviceFirmware records what a device reports running, replacing
	// the previous report. ErrNotFound if the device does not exist.
	SetDeviceFirmware(ctx context.Context, f DeviceFirmware) error
	// GetDeviceFirmware returns ErrNotFound if the device never reported.
	GetDeviceFirmware(ctx context.Context, deviceID string) (DeviceFirmware, error)
}

// PageSize is the number of rows a backend returns at most for f.
func (f RolloutDeviceFilter) PageSize() int {
	return DeviceFilter{Limit: f.Limit}.PageSize()
}
