package registry

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// FuzzAddDevice feeds AddDevice the untrusted parts of a registration: the
// ID, model, a tag and the CSR bytes. It must never panic, must store
// nothing when it refuses, and what it accepts must be exactly a valid
// device whose certificate then authenticates.
func FuzzAddDevice(f *testing.F) {
	fx := newFixture(f, fixtureOptions{})
	ctx := context.Background()
	f.Add("dev-1", "m", "site", "lyon", csrFor(f, "dev-1"))
	f.Add("dev-2", "", "", "", csrFor(f, "other"))
	f.Add("a/b", "m", "K", "v", csrFor(f, "a/b"))
	f.Add("dev-3", "m\x00", "k", "\xff", []byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add("", "", "", "", []byte{})
	added := map[string]bool{}
	f.Fuzz(func(t *testing.T, id, model, tagKey, tagValue string, csr []byte) {
		var tags map[string]string
		if tagKey != "" || tagValue != "" {
			tags = map[string]string{tagKey: tagValue}
		}
		existed, err := fx.reg.DeviceExists(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		d, cert, err := fx.reg.AddDevice(ctx, DeviceSpec{ID: id, Model: model, Tags: tags}, csr)
		if err != nil {
			if cert != nil {
				t.Fatal("certificate returned with an error")
			}
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, store.ErrConflict) {
				t.Fatalf("AddDevice failed for a reason other than bad input or a duplicate: %v", err)
			}
			if now, _ := fx.reg.DeviceExists(ctx, id); now != existed {
				t.Fatalf("refused AddDevice(%q) changed the store: %v", id, err)
			}
			return
		}
		if existed || added[id] {
			t.Fatalf("AddDevice(%q) accepted a duplicate", id)
		}
		added[id] = true
		if identity.ValidateDeviceID(id) != nil || ValidateTags(tags) != nil || cert.Subject.CommonName != id || d.ID != id {
			t.Fatalf("AddDevice accepted invalid input: id %q tags %q", id, tags)
		}
		p, err := fx.reg.Authenticate(ctx, cert)
		if err != nil || p.ID != id {
			t.Fatalf("accepted device does not authenticate: %v, %v", p, err)
		}
	})
}

// FuzzEnableEnvelope feeds EnableEnvelope the device ID and suite name an
// operator or API client supplies. It must never panic; a refusal must be
// the caller's fault (ErrInvalid), a duplicate (ErrConflict) or an unknown
// device (ErrNotFound) and store nothing; an acceptance must be a valid
// suite for a registered device whose secret then round-trips.
func FuzzEnableEnvelope(f *testing.F) {
	fx := newFixture(f, fixtureOptions{})
	ctx := context.Background()
	for _, id := range []string{"dev-1", "dev-2", "0a1b2c3d"} {
		if _, _, err := fx.reg.AddDevice(ctx, DeviceSpec{ID: id}, csrFor(f, id)); err != nil {
			f.Fatal(err)
		}
	}
	f.Add("dev-1", "ccm-8", true)
	f.Add("dev-2", "sign-p256", false)
	f.Add("0a1b2c3d", "legacy-cbc-hmac", false)
	f.Add("missing", "ccm-8", false)
	f.Add("a/b", "ccm-8\x00", true)
	f.Add("", "", false)
	f.Fuzz(func(t *testing.T, id, suite string, required bool) {
		_, polErr := fx.st.GetEnvelopePolicy(ctx, id)
		wasEnvelope := polErr == nil
		s, err := fx.reg.EnableEnvelope(ctx, id, suite, required)
		if err != nil {
			if s.Secret != nil {
				t.Fatal("secret returned with an error")
			}
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("EnableEnvelope(%q, %q) failed for an unexpected reason: %v", id, suite, err)
			}
			if _, polErr := fx.st.GetEnvelopePolicy(ctx, id); (polErr == nil) != wasEnvelope {
				t.Fatalf("refused EnableEnvelope(%q, %q) changed the store: %v", id, suite, err)
			}
			return
		}
		if wasEnvelope {
			t.Fatalf("EnableEnvelope(%q) enabled a device twice", id)
		}
		if _, perr := envelope.ParseSuite(suite); perr != nil || identity.ValidateDeviceID(id) != nil {
			t.Fatalf("EnableEnvelope accepted id %q suite %q", id, suite)
		}
		got, err := fx.reg.EnvelopeSecrets(ctx, id)
		if err != nil || len(got) != 1 || !bytes.Equal(got[0].Secret, s.Secret) || got[0].Suite != suite {
			t.Fatalf("enabled device's secrets = %v, %v", got, err)
		}
		p, err := fx.reg.EnvelopePolicy(ctx, id)
		if err != nil || p.MinSuite != suite || p.Required != required {
			t.Fatalf("enabled device's policy = %+v, %v", p, err)
		}
	})
}
