package ota

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/otaproto"
)

// ErrNotOffered is returned when a device asks for an image, or reports on
// a rollout, that Warden has not offered it. Transports answer it like any
// other refusal, without saying which check failed.
var ErrNotOffered = errors.New("not offered to this device")

func (s *Service) offer(r store.Rollout, img store.FirmwareImage, deviceID string) otaproto.Offer {
	o := otaproto.Offer{
		Rollout: r.ID, Statement: img.Statement, SHA256: img.SHA256, Size: img.Size, Version: img.Version,
		BlockSize: otaproto.DefaultBlockSize,
	}
	if s.imageURL != nil {
		o.URL = s.imageURL(deviceID, img.SHA256)
	}
	return o
}

// Current records what a device runs and returns the offer waiting for it,
// if any. Every transport's "check" comes here.
func (s *Service) Current(ctx context.Context, deviceID string, version string, counter uint32, sequence uint64) (*otaproto.Offer, error) {
	if _, err := firmware.ParseVersion(version); err != nil {
		return nil, invalidf("version %q: %v", version, err)
	}
	d, err := s.st.GetDevice(ctx, deviceID)
	if err != nil {
		return nil, err
	}
	if d.State != store.StateActive {
		return nil, nil
	}
	fw := store.DeviceFirmware{DeviceID: deviceID, Version: version, SecurityCounter: counter, Sequence: sequence, ReportedAt: s.now()}
	if prev, err := s.st.GetDeviceFirmware(ctx, deviceID); err == nil && prev.SecurityCounter > counter {
		// A device cannot lower its counter (the bootloader would refuse
		// to boot such an image); a report that does is wrong or forged.
		s.log.Warn("device reports a lower security counter than before; keeping the higher floor", "device", deviceID, "reported", counter, "floor", prev.SecurityCounter)
		s.audit.Record(ctx, audit.Event{Action: "ota.report", Outcome: "denied", Actor: "device:" + deviceID, Reason: "security-counter-decreased",
			Details: map[string]string{"reported": strconv.FormatUint(uint64(counter), 10), "floor": strconv.FormatUint(uint64(prev.SecurityCounter), 10)}})
		fw.SecurityCounter = prev.SecurityCounter
	}
	if err := s.st.SetDeviceFirmware(ctx, fw); err != nil {
		return nil, err
	}
	return s.offerFor(ctx, deviceID, fw)
}

// offerFor returns the offer for the device's rollout, or nil.
func (s *Service) offerFor(ctx context.Context, deviceID string, fw store.DeviceFirmware) (*otaproto.Offer, error) {
	r, m, err := s.st.ActiveRollout(ctx, deviceID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if r.State != store.RolloutRunning || m.Stage > r.Stage {
		return nil, nil
	}
	img, err := s.st.GetFirmwareImage(ctx, r.ImageSHA256)
	if err != nil {
		return nil, err
	}
	switch m.State {
	case store.DeviceBooted, store.DeviceFailed, store.DeviceRolledBack, store.DeviceSkipped:
		return nil, nil
	case store.DeviceInstalling, store.DeviceVerified:
		// The device installed the image and came back: its report says
		// whether the new image runs.
		next, reason := store.DeviceBooted, ""
		if fw.Version != img.Version {
			next, reason = store.DeviceRolledBack, "device came back running "+fw.Version+", not "+img.Version
		}
		return nil, s.finish(ctx, r, deviceID, next, reason, m.State)
	}
	if reason := skipReason(img, fw); reason != "" {
		if err := s.st.SetRolloutDeviceState(ctx, r.ID, deviceID, store.DeviceSkipped, reason, s.now(), m.State); err != nil && !errors.Is(err, store.ErrConflict) {
			return nil, err
		}
		s.audit.Record(ctx, audit.Event{Action: "ota.skip", Outcome: "done", Actor: "warden", Subject: "device:" + deviceID, Reason: reason,
			Details: map[string]string{"rollout": r.ID}})
		return nil, nil
	}
	if !s.now().Before(img.ExpiresAt) {
		s.mu.Lock()
		first := !s.expired[r.ID]
		s.expired[r.ID] = true
		s.mu.Unlock()
		if first {
			s.raise(ctx, Alert{Kind: "rollout.statement-expired", Subject: "rollout:" + r.ID,
				Message: fmt.Sprintf("the release statement of image %s expired at %s; devices refuse it: sign and upload a fresh statement", img.SHA256[:12], img.ExpiresAt.Format("2006-01-02T15:04:05Z07:00"))})
		}
		return nil, nil
	}
	if key, err := s.st.GetReleaseKey(ctx, img.KeyID); err != nil || key.Revoked() {
		return nil, nil // an untrusted key's image is never offered
	}
	if m.State == store.DevicePending || m.State == store.DeviceTimedOut {
		if err := s.st.SetRolloutDeviceState(ctx, r.ID, deviceID, store.DeviceOffered, "", s.now(), m.State); err != nil && !errors.Is(err, store.ErrConflict) {
			return nil, err
		}
	}
	s.offers.Inc()
	o := s.offer(r, img, deviceID)
	return &o, nil
}

// finish records a device's end state in a rollout and judges the rollout.
func (s *Service) finish(ctx context.Context, r store.Rollout, deviceID, state, reason string, from ...string) error {
	if err := s.st.SetRolloutDeviceState(ctx, r.ID, deviceID, state, reason, s.now(), from...); err != nil {
		return err
	}
	outcome := "done"
	if state != store.DeviceBooted {
		outcome = "failed"
	}
	s.audit.Record(ctx, audit.Event{Action: "ota." + state, Outcome: outcome, Actor: "device:" + deviceID, Subject: "rollout:" + r.ID, Reason: reason,
		Details: map[string]string{"image": r.ImageSHA256}})
	return s.evaluate(ctx, r.ID)
}

// Report handles a device's status message and returns an offer when the
// report is a "current" check that has one.
func (s *Service) Report(ctx context.Context, deviceID string, rep otaproto.Report) (*otaproto.Offer, error) {
	if err := rep.Validate(); err != nil {
		s.reports.WithLabelValues("invalid", "refused").Inc()
		return nil, invalidf("%v", err)
	}
	if rep.Version != "" && s.events != nil {
		ev := events.Event{Kind: events.FirmwareReported, At: s.now(), Device: deviceID, Version: rep.Version}
		if d, err := s.st.GetDevice(ctx, deviceID); err == nil {
			ev.Model = d.Model
		}
		s.events.Observe(ev)
	}
	if rep.State == otaproto.StateCurrent {
		o, err := s.Current(ctx, deviceID, rep.Version, rep.SecurityCounter, rep.Sequence)
		s.count(rep.State, err)
		return o, err
	}
	err := s.report(ctx, deviceID, rep)
	s.count(rep.State, err)
	return nil, err
}

func (s *Service) count(state string, err error) {
	outcome := "accepted"
	if err != nil {
		outcome = "refused"
	}
	s.reports.WithLabelValues(state, outcome).Inc()
}

// allowedFrom is where each reported state may come from. Finished states
// are final, except that a device the stage timed out may still finish.
var allowedFrom = map[string][]string{
	store.DeviceDownloading: {store.DevicePending, store.DeviceOffered, store.DeviceDownloading, store.DeviceTimedOut},
	store.DeviceVerified:    {store.DevicePending, store.DeviceOffered, store.DeviceDownloading, store.DeviceVerified, store.DeviceTimedOut},
	store.DeviceInstalling:  {store.DeviceOffered, store.DeviceDownloading, store.DeviceVerified, store.DeviceInstalling, store.DeviceTimedOut},
	store.DeviceBooted:      {store.DeviceOffered, store.DeviceDownloading, store.DeviceVerified, store.DeviceInstalling, store.DeviceTimedOut},
	store.DeviceFailed:      {store.DevicePending, store.DeviceOffered, store.DeviceDownloading, store.DeviceVerified, store.DeviceInstalling, store.DeviceTimedOut},
	store.DeviceRolledBack:  {store.DeviceOffered, store.DeviceDownloading, store.DeviceVerified, store.DeviceInstalling, store.DeviceTimedOut},
}

func (s *Service) report(ctx context.Context, deviceID string, rep otaproto.Report) error {
	r, m, err := s.st.ActiveRollout(ctx, deviceID)
	if errors.Is(err, store.ErrNotFound) || (err == nil && (r.ID != rep.Rollout || r.ImageSHA256 != rep.SHA256)) {
		s.log.Warn("device reported on a rollout it is not in", "device", deviceID, "rollout", rep.Rollout, "state", rep.State)
		return fmt.Errorf("report on rollout %q: %w", rep.Rollout, ErrNotOffered)
	}
	if err != nil {
		return err
	}
	state := rep.State // the protocol's names are the store's
	from := allowedFrom[state]
	if !containsState(from, m.State) {
		if m.State == state {
			return nil // a repeated report
		}
		s.log.Warn("device report out of order; ignored", "device", deviceID, "rollout", r.ID, "from", m.State, "to", state)
		return fmt.Errorf("report %s after %s: %w", state, m.State, store.ErrConflict)
	}
	switch state {
	case store.DeviceBooted:
		img, err := s.st.GetFirmwareImage(ctx, r.ImageSHA256)
		if err != nil {
			return err
		}
		if rep.Version != img.Version {
			return s.finish(ctx, r, deviceID, store.DeviceRolledBack, "device reports booting "+rep.Version+", not "+img.Version, from...)
		}
		if err := s.st.SetDeviceFirmware(ctx, store.DeviceFirmware{DeviceID: deviceID, Version: rep.Version,
			SecurityCounter: max(rep.SecurityCounter, img.SecurityCounter), ImageSHA256: img.SHA256, Sequence: img.Sequence, ReportedAt: s.now()}); err != nil {
			return err
		}
		return s.finish(ctx, r, deviceID, state, "", from...)
	case store.DeviceFailed, store.DeviceRolledBack:
		reason := rep.Reason
		if reason == "" {
			reason = "no reason given"
		}
		return s.finish(ctx, r, deviceID, state, reason, from...)
	}
	if err := s.st.SetRolloutDeviceState(ctx, r.ID, deviceID, state, "", s.now(), from...); err != nil {
		return err
	}
	return nil
}

func containsState(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// CanFetch reports whether the device may download the image: only the
// image of its open rollout stage (also while the rollout is paused, so
// downloads under way finish). It keeps one device's credentials from
// pulling every model's firmware.
func (s *Service) CanFetch(ctx context.Context, deviceID, sha string) (store.FirmwareImage, error) {
	r, m, err := s.st.ActiveRollout(ctx, deviceID)
	if errors.Is(err, store.ErrNotFound) || (err == nil && (r.ImageSHA256 != sha || m.Stage > r.Stage)) {
		return store.FirmwareImage{}, ErrNotOffered
	}
	if err != nil {
		return store.FirmwareImage{}, err
	}
	switch m.State {
	case store.DeviceBooted, store.DeviceFailed, store.DeviceRolledBack, store.DeviceSkipped:
		return store.FirmwareImage{}, ErrNotOffered
	}
	return s.st.GetFirmwareImage(ctx, sha)
}

// OpenImage opens a stored image for reading.
func (s *Service) OpenImage(sha string) (Blob, error) {
	return s.blobs.Open(sha)
}
