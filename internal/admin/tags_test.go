package admin

import (
	"context"
	"crypto/rand"
	"errors"
	"maps"
	"path/filepath"
	"testing"

	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

// TestSetTags sets tags through Local (internal/apiclient checks the same
// through the API on a real admin socket).
func TestSetTags(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	master := make([]byte, keystore.MasterKeySize)
	_, _ = rand.Read(master)
	ks, err := keystore.New(master)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Init(filepath.Join(dir, "pki"), ks, pki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(ctx, filepath.Join(dir, "warden.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	reg := registry.New(st, ca, registry.Options{})
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CreateCSR(key, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := reg.AddDevice(ctx, registry.DeviceSpec{ID: "dev1", Tags: map[string]string{"old": "1"}}, csr); err != nil {
		t.Fatal(err)
	}

	local := Local{Registry: reg}
	for name, svc := range map[string]Service{"local": local} {
		t.Run(name, func(t *testing.T) {
			for _, tags := range []map[string]string{{"site": "lyon", "floor": "2"}, {}, nil, {"via": name}} {
				d, err := svc.SetTags(ctx, "dev1", tags)
				if err != nil {
					t.Fatalf("SetTags(%v): %v", tags, err)
				}
				stored, err := st.GetDevice(ctx, "dev1")
				if err != nil {
					t.Fatal(err)
				}
				if d.ID != "dev1" || !maps.Equal(d.Tags, tags) || !maps.Equal(stored.Tags, tags) {
					t.Errorf("SetTags(%v) = %+v; stored %v", tags, d, stored.Tags)
				}
			}
			if _, err := svc.SetTags(ctx, "missing", map[string]string{"a": "1"}); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("SetTags(missing) = %v, want ErrNotFound", err)
			}
			if _, err := svc.SetTags(ctx, "dev1", map[string]string{"Bad Key": "1"}); !errors.Is(err, registry.ErrInvalid) {
				t.Errorf("SetTags(bad key) = %v, want ErrInvalid", err)
			}
		})
	}
}
