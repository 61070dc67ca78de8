package sim

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/warden-iot/warden/internal/identity"
)

// writeBundle writes DIR/ID.envelope.json as `warden device add --envelope`
// does.
func writeBundle(t testing.TB, dir, id string) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"device_id": id, "suite": "ccm-8", "epoch": 0, "secret_hex": hex.EncodeToString(make([]byte, 16)), "required": false})
	if err := os.WriteFile(filepath.Join(dir, id+".envelope.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func ids(f *Fleet) []string {
	var out []string
	for _, d := range f.Devices {
		out = append(out, d.ID)
	}
	return out
}

func TestLoadFleet(t *testing.T) {
	ca := newTestCA(t)
	dir, all := writeFleet(t, ca, 5)
	// An envelope device with a certificate, one with a bundle only, a
	// service certificate and unrelated files.
	writeBundle(t, dir, all[1])
	writeBundle(t, dir, "env-only")
	writeCert(t, dir, "reader", ca.principal(t, identity.KindService, "reader"))
	for _, name := range []string{"notes.txt", "bad id!.crt", "ca.key"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub.crt"), 0o700); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	f, err := LoadFleet(ctx, dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(all), "env-only")
	slices.Sort(want)
	if !slices.Equal(ids(f), want) {
		t.Errorf("devices %v, want %v", ids(f), want)
	}
	if f.RootCAs == nil || len(f.Skipped) != 1 || !strings.Contains(f.Skipped[0], "service") {
		t.Errorf("root %v, skipped %v", f.RootCAs != nil, f.Skipped)
	}
	for _, d := range f.Devices {
		switch d.ID {
		case all[1]:
			if d.Bundle == "" || d.Certificate.Leaf == nil {
				t.Errorf("%s: bundle %q, certificate %v", d.ID, d.Bundle, d.Certificate.Leaf != nil)
			}
		case "env-only":
			if d.Bundle == "" || len(d.Certificate.Certificate) != 0 {
				t.Errorf("%s: bundle %q, certificate %d", d.ID, d.Bundle, len(d.Certificate.Certificate))
			}
		default:
			if d.Bundle != "" || d.Certificate.Leaf == nil {
				t.Errorf("%s: bundle %q, certificate %v", d.ID, d.Bundle, d.Certificate.Leaf != nil)
			}
		}
	}

	if f, err := LoadFleet(ctx, dir, LoadOptions{Envelope: EnvelopeOnly}); err != nil || !slices.Equal(ids(f), []string{all[1], "env-only"}) {
		t.Errorf("envelope only: %v %v", ids(f), err)
	}
	if f, err := LoadFleet(ctx, dir, LoadOptions{Envelope: EnvelopeOff}); err != nil || !slices.Equal(ids(f), all) || f.Devices[1].Bundle != "" {
		t.Errorf("envelope off: %v %v", ids(f), err)
	}
	if f, err := LoadFleet(ctx, dir, LoadOptions{Limit: 3}); err != nil || !slices.Equal(ids(f), want[:3]) {
		t.Errorf("limit 3: %v %v", ids(f), err)
	}
}

func TestLoadFleetRefuses(t *testing.T) {
	ca := newTestCA(t)
	ctx := context.Background()
	t.Run("missing directory", func(t *testing.T) {
		if _, err := LoadFleet(ctx, filepath.Join(t.TempDir(), "nope"), LoadOptions{}); err == nil || !strings.Contains(err.Error(), "warden device provision") {
			t.Errorf("%v", err)
		}
	})
	t.Run("empty", func(t *testing.T) {
		if _, err := LoadFleet(ctx, t.TempDir(), LoadOptions{}); err == nil || !strings.Contains(err.Error(), "no device credentials") {
			t.Errorf("%v", err)
		}
	})
	t.Run("no key", func(t *testing.T) {
		dir, all := writeFleet(t, ca, 2)
		os.Remove(filepath.Join(dir, all[1]+".key"))
		if _, err := LoadFleet(ctx, dir, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "no private key") {
			t.Errorf("%v", err)
		}
	})
	t.Run("key of another device", func(t *testing.T) {
		dir, all := writeFleet(t, ca, 2)
		k, _ := os.ReadFile(filepath.Join(dir, all[0]+".key"))
		os.WriteFile(filepath.Join(dir, all[1]+".key"), k, 0o600)
		if _, err := LoadFleet(ctx, dir, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "does not belong") {
			t.Errorf("%v", err)
		}
	})
	t.Run("renamed certificate", func(t *testing.T) {
		dir, all := writeFleet(t, ca, 1)
		for _, ext := range []string{".crt", ".key"} {
			os.Rename(filepath.Join(dir, all[0]+ext), filepath.Join(dir, "other"+ext))
		}
		if _, err := LoadFleet(ctx, dir, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "names device") {
			t.Errorf("%v", err)
		}
	})
	t.Run("bad root", func(t *testing.T) {
		dir, _ := writeFleet(t, ca, 1)
		os.WriteFile(filepath.Join(dir, "ca.crt"), []byte("junk"), 0o644)
		if _, err := LoadFleet(ctx, dir, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "export-root") {
			t.Errorf("%v", err)
		}
	})
	t.Run("named root missing", func(t *testing.T) {
		dir, _ := writeFleet(t, ca, 1)
		if _, err := LoadFleet(ctx, dir, LoadOptions{CAFile: filepath.Join(dir, "nope.crt")}); err == nil {
			t.Error("a missing --ca file was accepted")
		}
	})
	t.Run("mode", func(t *testing.T) {
		dir, _ := writeFleet(t, ca, 1)
		if _, err := LoadFleet(ctx, dir, LoadOptions{Envelope: "sometimes"}); err == nil {
			t.Error("an unknown envelope mode was accepted")
		}
	})
	t.Run("no root for TLS", func(t *testing.T) {
		dir, _ := writeFleet(t, ca, 1)
		os.Remove(filepath.Join(dir, "ca.crt"))
		f, err := LoadFleet(ctx, dir, LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := StartSwarm(ctx, SwarmOptions{Fleet: f, Servers: []string{"mqtts://127.0.0.1:1"}}); err == nil || !strings.Contains(err.Error(), "no ca.crt") {
			t.Errorf("%v", err)
		}
	})
}
