package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/internal/wardentest"
)

// `warden serve --cert-lifetime 30d` issues 30-day device certificates, to
// devices added by the operator and to renewals alike; the SDK's
// AutoRenew schedules the renewal two thirds into that life (unit-tested
// in the device package against a simulated server with a seconds-long
// lifetime, since the server refuses lifetimes under an hour).
func TestShortLivedCertificates(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--cert-lifetime", "30d")
	c := s.AddDevice("short-1")
	want := 30 * 24 * time.Hour
	// NotBefore is backdated a few minutes for clock skew.
	life := func(nb, na time.Time) time.Duration { return na.Sub(nb) }
	cert := readCert(t, c.Cert)
	if got := life(cert.NotBefore, cert.NotAfter); got < want || got > want+10*time.Minute {
		t.Fatalf("device add issued a certificate valid for %s, want 30d", got)
	}
	cl := wardentest.ConnectSDK(t, s, c, func(cfg *device.Config) { cfg.AutoRenew = true })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	renewed, err := cl.Renew(ctx, device.RenewOptions{Via: device.RenewViaMQTT})
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	if got := life(renewed.Leaf.NotBefore, renewed.Leaf.NotAfter); got < want || got > want+10*time.Minute {
		t.Fatalf("renewal issued a certificate valid for %s, want 30d", got)
	}
}
