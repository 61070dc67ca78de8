package admin

import (
	"context"
	"errors"
	"io"

	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/store"
)

// Firmware is every firmware and rollout action the CLI offers.
type Firmware interface {
	TrustKey(ctx context.Context, pubPEM []byte, name string) (store.ReleaseKey, error)
	UntrustKey(ctx context.Context, id string) (store.ReleaseKey, error)
	ReleaseKeys(ctx context.Context) ([]store.ReleaseKey, error)
	// UploadImage stores an image after the server verified it against its
	// statement and a trusted release key.
	UploadImage(ctx context.Context, statement []byte, image io.Reader) (store.FirmwareImage, error)
	Images(ctx context.Context, model string) ([]store.FirmwareImage, error)
	CreateRollout(ctx context.Context, spec ota.RolloutSpec) (RolloutCreated, error)
	Rollouts(ctx context.Context) ([]store.Rollout, error)
	RolloutStatus(ctx context.Context, id string) (ota.Status, error)
	RolloutDevices(ctx context.Context, id string, f store.RolloutDeviceFilter) ([]store.RolloutDevice, error)
	PauseRollout(ctx context.Context, id, reason string) (store.Rollout, error)
	ResumeRollout(ctx context.Context, id string) (store.Rollout, error)
	AbortRollout(ctx context.Context, id, reason string) (store.Rollout, error)
}

// RolloutCreated is a new rollout and how its devices were chosen.
type RolloutCreated struct {
	Rollout store.Rollout      `json:"rollout"`
	Summary ota.RolloutSummary `json:"summary"`
}

// errNoOTA is returned by a Local without an OTA service.
var errNoOTA = errors.New("firmware updates are not available here")

func (l Local) ota() (*ota.Service, error) {
	if l.OTA == nil {
		return nil, errNoOTA
	}
	return l.OTA, nil
}

// TrustKey implements Firmware.
func (l Local) TrustKey(ctx context.Context, pubPEM []byte, name string) (store.ReleaseKey, error) {
	o, err := l.ota()
	if err != nil {
		return store.ReleaseKey{}, err
	}
	return o.Trust(ctx, pubPEM, name, actor)
}

// UntrustKey implements Firmware.
func (l Local) UntrustKey(ctx context.Context, id string) (store.ReleaseKey, error) {
	o, err := l.ota()
	if err != nil {
		return store.ReleaseKey{}, err
	}
	return o.Untrust(ctx, id, actor)
}

// ReleaseKeys implements Firmware.
func (l Local) ReleaseKeys(ctx context.Context) ([]store.ReleaseKey, error) {
	o, err := l.ota()
	if err != nil {
		return nil, err
	}
	return o.Keys(ctx)
}

// UploadImage implements Firmware.
func (l Local) UploadImage(ctx context.Context, statement []byte, image io.Reader) (store.FirmwareImage, error) {
	o, err := l.ota()
	if err != nil {
		return store.FirmwareImage{}, err
	}
	return o.Upload(ctx, statement, image, actor)
}

// Images implements Firmware.
func (l Local) Images(ctx context.Context, model string) ([]store.FirmwareImage, error) {
	o, err := l.ota()
	if err != nil {
		return nil, err
	}
	return o.Images(ctx, model)
}

// CreateRollout implements Firmware.
func (l Local) CreateRollout(ctx context.Context, spec ota.RolloutSpec) (RolloutCreated, error) {
	o, err := l.ota()
	if err != nil {
		return RolloutCreated{}, err
	}
	r, sum, err := o.CreateRollout(ctx, spec, actor)
	return RolloutCreated{Rollout: r, Summary: sum}, err
}

// Rollouts implements Firmware.
func (l Local) Rollouts(ctx context.Context) ([]store.Rollout, error) {
	o, err := l.ota()
	if err != nil {
		return nil, err
	}
	return o.Rollouts(ctx)
}

// RolloutStatus implements Firmware.
func (l Local) RolloutStatus(ctx context.Context, id string) (ota.Status, error) {
	o, err := l.ota()
	if err != nil {
		return ota.Status{}, err
	}
	return o.RolloutStatus(ctx, id)
}

// RolloutDevices implements Firmware.
func (l Local) RolloutDevices(ctx context.Context, id string, f store.RolloutDeviceFilter) ([]store.RolloutDevice, error) {
	o, err := l.ota()
	if err != nil {
		return nil, err
	}
	return o.RolloutDevices(ctx, id, f)
}

// PauseRollout implements Firmware.
func (l Local) PauseRollout(ctx context.Context, id, reason string) (store.Rollout, error) {
	o, err := l.ota()
	if err != nil {
		return store.Rollout{}, err
	}
	return o.Pause(ctx, id, reason, actor)
}

// ResumeRollout implements Firmware.
func (l Local) ResumeRollout(ctx context.Context, id string) (store.Rollout, error) {
	o, err := l.ota()
	if err != nil {
		return store.Rollout{}, err
	}
	return o.Resume(ctx, id, actor)
}

// AbortRollout implements Firmware.
func (l Local) AbortRollout(ctx context.Context, id, reason string) (store.Rollout, error) {
	o, err := l.ota()
	if err != nil {
		return store.Rollout{}, err
	}
	return o.Abort(ctx, id, reason, actor)
}

// actor is who admin-socket and local actions are audited as: whoever can
// open the socket (mode 0600) or the data directory is the operator.
const actor = "operator"
