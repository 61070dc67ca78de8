package app

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/onboard"
	"github.com/warden-iot/warden/internal/onboard/claimtoken"
	"github.com/warden-iot/warden/internal/ota"
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
