package app

import (
	"context"
	"slices"

	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/monitor"
	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/sealing"
	"github.com/warden-iot/warden/internal/store"
)

// responder carries out the monitor's responses on the broker. Quarantine
// and release cut the device's connection: its next session gets the
// rights that now apply (the broker asks the monitor at session start).
type responder struct{ b *broker.Broker }

func (r *responder) Disconnect(_ context.Context, id, reason string) {
	r.b.Cut(identity.Principal{Kind: identity.KindDevice, ID: id}, "monitor-"+reason, false)
}

func (r *responder) Quarantine(_ context.Context, id, reason string) error {
	r.b.Cut(identity.Principal{Kind: identity.KindDevice, ID: id}, "quarantine", false)
	return nil
}

func (r *responder) Release(_ context.Context, id string) error {
	r.b.Cut(identity.Principal{Kind: identity.KindDevice, ID: id}, "quarantine-released", false)
	return nil
}

// firmwarePolicy says which versions a model may run: those of the
// firmware images stored for it (uploaded under a trusted release key). A
// model with no image is unknown, and its reports are not judged.
type firmwarePolicy struct{ o *ota.Service }

func (f firmwarePolicy) AllowedVersions(ctx context.Context, model string) ([]string, bool, error) {
	if f.o == nil || model == "" {
		return nil, false, nil
	}
	imgs, err := f.o.Images(ctx, model)
	if err != nil {
		return nil, false, err
	}
	var out []string
	for _, img := range imgs {
		if !slices.Contains(out, img.Version) {
			out = append(out, img.Version)
		}
	}
	return out, len(out) > 0, nil
}

// otaAlerts turns the firmware service's alerts (a rollout paused at its
// failure threshold) into monitor alerts.
type otaAlerts struct{ m *monitor.Monitor }

func (a otaAlerts) Alert(_ context.Context, al ota.Alert) {
	a.m.Raise(monitor.Finding{Detector: "ota." + al.Kind, Severity: store.SeverityWarning, Subject: al.Subject, Summary: al.Message})
}

// httpOpener opens sealed HTTPS requests (envelope devices without TLS
// client certificates): the device ID there is the request's claim, so a
// failure is not the device's in the monitor's eyes.
type httpOpener struct{ s *sealing.Sealing }

func (o httpOpener) Policy(ctx context.Context, id string) (store.EnvelopePolicy, bool, error) {
	return o.s.Policy(ctx, id)
}

func (o httpOpener) OpenUplink(ctx context.Context, id, topic string, msg []byte) (sealing.Opened, error) {
	return o.s.OpenUplink(sealing.Unverified(ctx), id, topic, msg)
}
