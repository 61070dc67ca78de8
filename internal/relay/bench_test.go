package relay

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/sealing"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

type nullPub struct{}

func (nullPub) Publish(string, []byte, byte, ...broker.Property) error { return nil }

// BenchmarkSealedUplink measures the relay's whole path for one sealed
// 64-byte ccm-8 uplink (policy lookup, parse, replay check, open, durable
// replay-window save, republish) against envelope.Open alone.
func BenchmarkSealedUplink(b *testing.B) {
	dir := b.TempDir()
	master := make([]byte, 32)
	rand.Read(master)
	ks, _ := keystore.New(master)
	ca, err := pki.Init(filepath.Join(dir, "pki"), ks, pki.Options{})
	if err != nil {
		b.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "r.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := registry.New(st, ca, registry.Options{Logger: log, Sealer: ks})
	key, _ := pki.GenerateKey()
	csr, _ := pki.CreateCSR(key, "dev1")
	if _, _, err := reg.AddDevice(context.Background(), registry.DeviceSpec{ID: "dev1"}, csr); err != nil {
		b.Fatal(err)
	}
	sec, err := reg.EnableEnvelope(context.Background(), "dev1", "ccm-8", false)
	if err != nil {
		b.Fatal(err)
	}
	up, _ := envelope.DeriveKeys(sec.Secret, "dev1", 0, envelope.CCM8, envelope.Uplink)
	topic := "private/dev1/up/telemetry"
	next := uint64(0)
	seal := func(n int) [][]byte {
		msgs := make([][]byte, n)
		for i := range msgs {
			msgs[i], _ = envelope.Seal(up, next, topic, make([]byte, 64))
			next++
		}
		return msgs
	}
	b.Run("open-only", func(b *testing.B) {
		msgs := seal(b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, _, err := envelope.Open(up, topic, msgs[i]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("relay", func(b *testing.B) {
		sl := sealing.New(reg, log, nil, nil)
		if err := sl.OpenJournal(context.Background(), filepath.Join(b.TempDir(), "replay.journal")); err != nil {
			b.Fatal(err)
		}
		// Fold as the server does, so the cost of folding is in the figure.
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		go sl.Run(ctx, 30*time.Second)
		r := New(nullPub{}, nil, sl, log, nil, nil)
		from := broker.Origin{Principal: identity.Principal{Kind: identity.KindDevice, ID: "dev1"}, Plain: true}
		msgs := seal(b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if v, reason := r.Route(context.Background(), from, topic, msgs[i], 1); v != broker.Consume {
				b.Fatalf("verdict %v %s", v, reason)
			}
		}
	})
}
