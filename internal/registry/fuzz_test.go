package registry

import (
	"context"
	"errors"
	"testing"

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
