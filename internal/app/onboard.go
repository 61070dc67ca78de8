package app

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/onboard"
	"github.com/warden-iot/warden/internal/onboard/claimtoken"
	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/rotation"
)

// OpenOnboard builds the onboarding service (enrollment, renewal, app
// claiming) on the environment, creating the claim-token key on first use.
func (e *Env) OpenOnboard(rec audit.Recorder, reg prometheus.Registerer) (*onboard.Service, error) {
	key, err := claimtoken.LoadOrCreate(e.Paths.ClaimKey, e.Keystore)
	if err != nil {
		return nil, fmt.Errorf("claim-token key: %w", err)
	}
	return onboard.New(onboard.Options{
		Registry:   e.Registry,
		Store:      e.Store,
		CA:         e.CA,
		Keystore:   e.Keystore,
		ClaimKey:   key,
		Audit:      rec,
		Logger:     e.Log.With("component", "onboard"),
		Registerer: reg,
	})
}

// OpenTokens builds the API-token service on the environment's store.
func (e *Env) OpenTokens(rec audit.Recorder) *apitoken.Service {
	return apitoken.New(e.Store, apitoken.Options{Logger: e.Log.With("component", "apitoken"), Audit: rec})
}

// router sends a device's OTA topics to the OTA service, certificate and
// claim topics to onboarding, and everything else to the relay.
type router struct {
	ota     *ota.MQTT
	onboard *onboard.MQTT
	relay   broker.Router
}

func (r router) Route(ctx context.Context, from broker.Origin, topic string, payload []byte, qos byte) (broker.Verdict, string) {
	switch {
	case ota.IsOTATopic(topic):
		return r.ota.Route(ctx, from, topic, payload, qos)
	case onboard.IsOnboardTopic(topic):
		return r.onboard.Route(ctx, from, topic, payload, qos)
	}
	return r.relay.Route(ctx, from, topic, payload, qos)
}

// OpenRotation returns the CA rotation manager. b is nil outside the
// server: rotations are then re-issued but not delivered.
func (e *Env) OpenRotation(rec audit.Recorder, reg prometheus.Registerer, b rotation.Broker) (*rotation.Manager, error) {
	return rotation.New(rotation.Options{
		Store:      e.Store,
		CA:         e.CA,
		Registry:   e.Registry,
		Broker:     b,
		Chain:      func() []*x509.Certificate { return []*x509.Certificate{e.CA.Issuing()} },
		Audit:      rec,
		Logger:     e.Log.With("component", "rotation"),
		Registerer: reg,
		OnRotated: func(ctx context.Context) {
			if _, err := refreshCRLIfDue(ctx, e.CA, e.Registry, time.Now()); err != nil {
				e.Log.Error("could not re-sign the CRL with the new issuing CA; the maintenance loop retries", "error", err)
			}
		},
	})
}
