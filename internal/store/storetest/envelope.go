package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/store"
)

// envelopeKey returns a plausible key; the store does not open sealed
// secrets, so random bytes stand in for one.
func envelopeKey(id string, epoch uint32, state store.EnvelopeState, created time.Time) store.EnvelopeKey {
	k := store.EnvelopeKey{
		DeviceID:     id,
		Epoch:        epoch,
		Suite:        "ccm-8",
		SealedSecret: []byte("sealed-" + randHex(22)),
		State:        state,
		CreatedAt:    created,
	}
	if state == store.EnvelopeActive {
		k.ActivatedAt = created
	}
	return k
}

func policy(id string) store.EnvelopePolicy {
	return store.EnvelopePolicy{DeviceID: id, MinSuite: "ccm-8", Required: true, UpdatedAt: base}
}

func checkEnvelopeKey(t *testing.T, got, want store.EnvelopeKey) {
	t.Helper()
	if got.DeviceID != want.DeviceID || got.Epoch != want.Epoch || got.Suite != want.Suite ||
		!bytes.Equal(got.SealedSecret, want.SealedSecret) || got.State != want.State ||
		!got.CreatedAt.Equal(norm(want.CreatedAt)) || !got.ActivatedAt.Equal(norm(want.ActivatedAt)) ||
		!got.RetiredAt.Equal(norm(want.RetiredAt)) ||
		got.CreatedAt.Location() != time.UTC || (!got.RetiredAt.IsZero() && got.RetiredAt.Location() != time.UTC) {
		t.Errorf("envelope key mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func mustEnvelopeKeys(t *testing.T, st store.Store, id string) []store.EnvelopeKey {
	t.Helper()
	ks, err := st.EnvelopeKeys(context.Background(), id)
	if err != nil {
		t.Fatalf("EnvelopeKeys(%q): %v", id, err)
	}
	if ks == nil {
		t.Fatalf("EnvelopeKeys(%q) returned nil, want a non-nil slice", id)
	}
	return ks
}

func epochs(ks []store.EnvelopeKey) []uint32 {
	out := make([]uint32, len(ks))
	for i, k := range ks {
		out[i] = k.Epoch
	}
	return out
}

func testEnableEnvelope(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	if _, err := st.GetEnvelopePolicy(ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetEnvelopePolicy(plain device) = %v, want ErrNotFound", err)
	}
	if ks := mustEnvelopeKeys(t, st, "dev-1"); len(ks) != 0 {
		t.Fatalf("plain device has keys %v", epochs(ks))
	}

	k := envelopeKey("dev-1", 0, store.EnvelopeActive, base)
	k.ActivatedAt = time.Time{} // an active key defaults to being active since it was created
	p := policy("dev-1")
	if err := st.EnableEnvelope(ctx, k, p); err != nil {
		t.Fatalf("EnableEnvelope: %v", err)
	}
	want := k
	want.ActivatedAt = k.CreatedAt
	ks := mustEnvelopeKeys(t, st, "dev-1")
	if len(ks) != 1 {
		t.Fatalf("EnvelopeKeys = %v, want one key", epochs(ks))
	}
	checkEnvelopeKey(t, ks[0], want)
	got, err := st.GetEnvelopePolicy(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if got != (store.EnvelopePolicy{DeviceID: "dev-1", MinSuite: "ccm-8", Required: true, UpdatedAt: norm(base)}) {
		t.Errorf("policy = %+v", got)
	}

	// A second enable conflicts and changes nothing, the policy included.
	k2 := envelopeKey("dev-1", 7, store.EnvelopeActive, base.Add(time.Hour))
	p2 := store.EnvelopePolicy{DeviceID: "dev-1", MinSuite: "legacy-cbc-hmac", UpdatedAt: base.Add(time.Hour)}
	if err := st.EnableEnvelope(ctx, k2, p2); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second EnableEnvelope = %v, want ErrConflict", err)
	}
	if ks := mustEnvelopeKeys(t, st, "dev-1"); !slices.Equal(epochs(ks), []uint32{0}) {
		t.Errorf("keys after refused EnableEnvelope: %v", epochs(ks))
	}
	if got, err := st.GetEnvelopePolicy(ctx, "dev-1"); err != nil || got.MinSuite != "ccm-8" {
		t.Errorf("policy after refused EnableEnvelope: %+v, %v", got, err)
	}

	if err := st.EnableEnvelope(ctx, envelopeKey("missing", 0, store.EnvelopeActive, base), policy("missing")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("EnableEnvelope(missing device) = %v, want ErrNotFound", err)
	}
	mustCreateDevice(t, st, device("dev-2"))
	if _, _, err := st.RevokeDevice(ctx, "dev-2", "x", base); err != nil {
		t.Fatal(err)
	}
	if err := st.EnableEnvelope(ctx, envelopeKey("dev-2", 0, store.EnvelopeActive, base), policy("dev-2")); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("EnableEnvelope(revoked device) = %v, want ErrRevoked", err)
	}

	// Bad input stores neither the key nor the policy.
	mustCreateDevice(t, st, device("dev-3"))
	for _, tc := range []struct {
		name   string
		mutate func(*store.EnvelopeKey, *store.EnvelopePolicy)
	}{
		{"policy for another device", func(k *store.EnvelopeKey, p *store.EnvelopePolicy) { p.DeviceID = "dev-1" }},
		{"empty minimum suite", func(k *store.EnvelopeKey, p *store.EnvelopePolicy) { p.MinSuite = "" }},
		{"empty suite", func(k *store.EnvelopeKey, p *store.EnvelopePolicy) { k.Suite = "" }},
		{"retired key", func(k *store.EnvelopeKey, p *store.EnvelopePolicy) { k.State = store.EnvelopeRetired }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, p := envelopeKey("dev-3", 0, store.EnvelopeActive, base), policy("dev-3")
			tc.mutate(&k, &p)
			if err := st.EnableEnvelope(ctx, k, p); err == nil {
				t.Fatal("EnableEnvelope accepted it")
			}
			if ks := mustEnvelopeKeys(t, st, "dev-3"); len(ks) != 0 {
				t.Errorf("keys stored despite the error: %v", epochs(ks))
			}
			if _, err := st.GetEnvelopePolicy(ctx, "dev-3"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("policy stored despite the error: %v", err)
			}
		})
	}
	// A sign-p256 key has no secret.
	k3 := envelopeKey("dev-3", 0, store.EnvelopeActive, base)
	k3.Suite, k3.SealedSecret = "sign-p256", nil
	if err := st.EnableEnvelope(ctx, k3, policy("dev-3")); err != nil {
		t.Fatal(err)
	}
	if ks := mustEnvelopeKeys(t, st, "dev-3"); len(ks) != 1 || len(ks[0].SealedSecret) != 0 {
		t.Errorf("sign-p256 key = %+v", ks)
	}
}

func testAddEnvelopeKey(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	mustCreateDevice(t, st, device("dev-2"))
	active := envelopeKey("dev-1", 3, store.EnvelopeActive, base)
	if err := st.AddEnvelopeKey(ctx, active); err != nil {
		t.Fatal(err)
	}
	pending := envelopeKey("dev-1", 4, store.EnvelopePending, base.Add(time.Hour))
	if err := st.AddEnvelopeKey(ctx, pending); err != nil {
		t.Fatal(err)
	}
	other := envelopeKey("dev-2", 3, store.EnvelopeActive, base)
	if err := st.AddEnvelopeKey(ctx, other); err != nil {
		t.Fatalf("same epoch on another device: %v", err)
	}

	ks := mustEnvelopeKeys(t, st, "dev-1")
	if len(ks) != 2 {
		t.Fatalf("EnvelopeKeys = %v, want epochs 3 and 4", epochs(ks))
	}
	checkEnvelopeKey(t, ks[0], active)
	checkEnvelopeKey(t, ks[1], pending)

	for _, tc := range []struct {
		name string
		k    store.EnvelopeKey
		want error
	}{
		{"duplicate epoch", envelopeKey("dev-1", 3, store.EnvelopePending, base), store.ErrConflict},
		{"second active", envelopeKey("dev-1", 9, store.EnvelopeActive, base), store.ErrConflict},
		{"second pending", envelopeKey("dev-1", 9, store.EnvelopePending, base), store.ErrConflict},
		{"missing device", envelopeKey("missing", 0, store.EnvelopeActive, base), store.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := st.AddEnvelopeKey(ctx, tc.k); !errors.Is(err, tc.want) {
				t.Errorf("AddEnvelopeKey = %v, want %v", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name   string
		mutate func(*store.EnvelopeKey)
	}{
		{"empty device", func(k *store.EnvelopeKey) { k.DeviceID = "" }},
		{"empty suite", func(k *store.EnvelopeKey) { k.Suite = "" }},
		{"retired", func(k *store.EnvelopeKey) { k.State = store.EnvelopeRetired }},
		{"unknown state", func(k *store.EnvelopeKey) { k.State = "dormant" }},
		{"retirement time", func(k *store.EnvelopeKey) { k.RetiredAt = base }},
		{"pending with activation time", func(k *store.EnvelopeKey) { k.ActivatedAt = base }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := envelopeKey("dev-2", 10, store.EnvelopePending, base)
			tc.mutate(&k)
			if err := st.AddEnvelopeKey(ctx, k); err == nil {
				t.Fatal("AddEnvelopeKey accepted it")
			}
			if ks := mustEnvelopeKeys(t, st, "dev-2"); !slices.Equal(epochs(ks), []uint32{3}) {
				t.Errorf("keys after refused AddEnvelopeKey: %v", epochs(ks))
			}
		})
	}
	// The whole epoch range is storable.
	for _, e := range []uint32{0, math.MaxUint32} {
		if err := st.AddEnvelopeKey(ctx, envelopeKey("dev-2", e, store.EnvelopePending, base)); err != nil {
			t.Fatalf("AddEnvelopeKey(epoch %d): %v", e, err)
		}
		if err := st.PromoteEnvelopeKey(ctx, "dev-2", e, base); err != nil {
			t.Fatal(err)
		}
	}
	if ks := mustEnvelopeKeys(t, st, "dev-2"); !slices.Equal(epochs(ks), []uint32{0, 3, math.MaxUint32}) {
		t.Errorf("epochs = %v, want ascending 0, 3, %d", epochs(ks), uint32(math.MaxUint32))
	}
	if ks := mustEnvelopeKeys(t, st, "missing"); len(ks) != 0 {
		t.Errorf("EnvelopeKeys(missing) = %v", epochs(ks))
	}
}

func testPromoteEnvelopeKey(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	mustCreateDevice(t, st, device("dev-2"))
	k0 := envelopeKey("dev-1", 0, store.EnvelopeActive, base)
	if err := st.EnableEnvelope(ctx, k0, policy("dev-1")); err != nil {
		t.Fatal(err)
	}
	o0 := envelopeKey("dev-2", 0, store.EnvelopeActive, base)
	if err := st.EnableEnvelope(ctx, o0, policy("dev-2")); err != nil {
		t.Fatal(err)
	}
	k1 := envelopeKey("dev-1", 1, store.EnvelopePending, base.Add(time.Hour))
	if err := st.AddEnvelopeKey(ctx, k1); err != nil {
		t.Fatal(err)
	}
	at := base.Add(2 * time.Hour)
	if err := st.PromoteEnvelopeKey(ctx, "dev-1", 1, at); err != nil {
		t.Fatalf("PromoteEnvelopeKey: %v", err)
	}
	ks := mustEnvelopeKeys(t, st, "dev-1")
	if len(ks) != 2 {
		t.Fatalf("keys = %v", epochs(ks))
	}
	want0 := k0
	want0.State, want0.RetiredAt, want0.SealedSecret = store.EnvelopeRetired, at, nil // the secret is erased
	checkEnvelopeKey(t, ks[0], want0)
	want1 := k1
	want1.State, want1.ActivatedAt = store.EnvelopeActive, at
	checkEnvelopeKey(t, ks[1], want1)

	// Idempotent: the active key stays as it is.
	if err := st.PromoteEnvelopeKey(ctx, "dev-1", 1, at.Add(time.Hour)); err != nil {
		t.Errorf("PromoteEnvelopeKey(active) = %v", err)
	}
	if ks := mustEnvelopeKeys(t, st, "dev-1"); len(ks) != 2 {
		t.Fatal(epochs(ks))
	} else {
		checkEnvelopeKey(t, ks[1], want1)
	}
	if err := st.PromoteEnvelopeKey(ctx, "dev-1", 0, at); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("PromoteEnvelopeKey(retired) = %v, want ErrRevoked", err)
	}
	if err := st.PromoteEnvelopeKey(ctx, "dev-1", 5, at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PromoteEnvelopeKey(missing epoch) = %v, want ErrNotFound", err)
	}
	if err := st.PromoteEnvelopeKey(ctx, "missing", 0, at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PromoteEnvelopeKey(missing device) = %v, want ErrNotFound", err)
	}
	// The other device is untouched.
	if ks := mustEnvelopeKeys(t, st, "dev-2"); len(ks) != 1 {
		t.Fatal(epochs(ks))
	} else {
		checkEnvelopeKey(t, ks[0], o0)
	}
	// The next rekey can start.
	if err := st.AddEnvelopeKey(ctx, envelopeKey("dev-1", 2, store.EnvelopePending, at)); err != nil {
		t.Errorf("AddEnvelopeKey after promotion: %v", err)
	}
	// Promoting when no key is active (possible only through the store)
	// works too.
	mustCreateDevice(t, st, device("dev-3"))
	if err := st.AddEnvelopeKey(ctx, envelopeKey("dev-3", 0, store.EnvelopePending, base)); err != nil {
		t.Fatal(err)
	}
	if err := st.PromoteEnvelopeKey(ctx, "dev-3", 0, at); err != nil {
		t.Fatal(err)
	}
	if ks := mustEnvelopeKeys(t, st, "dev-3"); len(ks) != 1 || ks[0].State != store.EnvelopeActive {
		t.Errorf("dev-3 keys = %+v", ks)
	}
}

func testRevokeRetiresEnvelopeKeys(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	mustCreateDevice(t, st, device("dev-2"))
	k0 := envelopeKey("dev-1", 0, store.EnvelopeActive, base)
	if err := st.EnableEnvelope(ctx, k0, policy("dev-1")); err != nil {
		t.Fatal(err)
	}
	k1 := envelopeKey("dev-1", 1, store.EnvelopePending, base)
	if err := st.AddEnvelopeKey(ctx, k1); err != nil {
		t.Fatal(err)
	}
	o0 := envelopeKey("dev-2", 0, store.EnvelopeActive, base)
	if err := st.EnableEnvelope(ctx, o0, policy("dev-2")); err != nil {
		t.Fatal(err)
	}
	at := base.Add(time.Hour)
	if _, _, err := st.RevokeDevice(ctx, "dev-1", "stolen", at); err != nil {
		t.Fatal(err)
	}
	ks := mustEnvelopeKeys(t, st, "dev-1")
	if len(ks) != 2 {
		t.Fatal(epochs(ks))
	}
	want0, want1 := k0, k1
	want0.State, want0.RetiredAt, want0.SealedSecret = store.EnvelopeRetired, at, nil
	want1.State, want1.RetiredAt, want1.SealedSecret = store.EnvelopeRetired, at, nil
	checkEnvelopeKey(t, ks[0], want0)
	checkEnvelopeKey(t, ks[1], want1)
	if ks := mustEnvelopeKeys(t, st, "dev-2"); len(ks) != 1 {
		t.Fatal(epochs(ks))
	} else {
		checkEnvelopeKey(t, ks[0], o0)
	}

	// Nothing brings a revoked device's envelope back into use.
	if err := st.AddEnvelopeKey(ctx, envelopeKey("dev-1", 2, store.EnvelopePending, at)); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("AddEnvelopeKey(revoked device) = %v, want ErrRevoked", err)
	}
	if err := st.PromoteEnvelopeKey(ctx, "dev-1", 1, at); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("PromoteEnvelopeKey(revoked device) = %v, want ErrRevoked", err)
	}
	if err := st.SetEnvelopePolicy(ctx, policy("dev-1")); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("SetEnvelopePolicy(revoked device) = %v, want ErrRevoked", err)
	}
	if _, err := st.ReserveSequence(ctx, "dev-1", store.EnvelopeDownlink, 0, 1); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("ReserveSequence(revoked device) = %v, want ErrRevoked", err)
	}
	if err := st.SaveReplayWindow(ctx, "dev-1", store.EnvelopeUplink, 0, []byte{1}); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("SaveReplayWindow(revoked device) = %v, want ErrRevoked", err)
	}
	// Revoking again changes nothing.
	if _, _, err := st.RevokeDevice(ctx, "dev-1", "again", at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ks := mustEnvelopeKeys(t, st, "dev-1"); len(ks) != 2 {
		t.Fatal(epochs(ks))
	} else {
		checkEnvelopeKey(t, ks[0], want0)
	}
	// The policy remains: the record still says what the device was.
	if _, err := st.GetEnvelopePolicy(ctx, "dev-1"); err != nil {
		t.Errorf("GetEnvelopePolicy(revoked device) = %v", err)
	}
}

func testEnvelopePolicy(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	if _, err := st.GetEnvelopePolicy(ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetEnvelopePolicy(none) = %v, want ErrNotFound", err)
	}
	for _, p := range []store.EnvelopePolicy{
		{DeviceID: "dev-1", MinSuite: "legacy-cbc-hmac", Required: false, UpdatedAt: base},
		{DeviceID: "dev-1", MinSuite: "ccm-8", Required: true, UpdatedAt: base.Add(time.Hour)},
		{DeviceID: "dev-1", MinSuite: "sign-p256", Required: false, UpdatedAt: base.Add(2 * time.Hour)},
	} {
		if err := st.SetEnvelopePolicy(ctx, p); err != nil {
			t.Fatalf("SetEnvelopePolicy(%+v): %v", p, err)
		}
		got, err := st.GetEnvelopePolicy(ctx, "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		p.UpdatedAt = norm(p.UpdatedAt)
		if got != p || got.UpdatedAt.Location() != time.UTC {
			t.Errorf("GetEnvelopePolicy = %+v, want %+v", got, p)
		}
	}
	if err := st.SetEnvelopePolicy(ctx, policy("missing")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetEnvelopePolicy(missing device) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetEnvelopePolicy(ctx, "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetEnvelopePolicy(missing device) = %v, want ErrNotFound", err)
	}
	for _, p := range []store.EnvelopePolicy{
		{DeviceID: "dev-1", UpdatedAt: base},
		{MinSuite: "ccm-8", UpdatedAt: base},
	} {
		if err := st.SetEnvelopePolicy(ctx, p); err == nil {
			t.Errorf("SetEnvelopePolicy(%+v) accepted", p)
		}
	}
	if got, err := st.GetEnvelopePolicy(ctx, "dev-1"); err != nil || got.MinSuite != "sign-p256" {
		t.Errorf("policy changed by refused calls: %+v, %v", got, err)
	}
}

func testReplayWindows(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	if err := st.EnableEnvelope(ctx, envelopeKey("dev-1", 0, store.EnvelopeActive, base), policy("dev-1")); err != nil {
		t.Fatal(err)
	}
	if err := st.AddEnvelopeKey(ctx, envelopeKey("dev-1", 1, store.EnvelopePending, base)); err != nil {
		t.Fatal(err)
	}
	load := func(dir string, epoch uint32) []byte {
		t.Helper()
		b, err := st.LoadReplayWindow(ctx, "dev-1", dir, epoch)
		if err != nil {
			t.Fatalf("LoadReplayWindow(%s, %d): %v", dir, epoch, err)
		}
		return b
	}
	if b := load(store.EnvelopeUplink, 0); b != nil {
		t.Fatalf("LoadReplayWindow(nothing saved) = %x, want nil", b)
	}
	if b, err := st.LoadReplayWindow(ctx, "missing", store.EnvelopeUplink, 0); b != nil || err != nil {
		t.Errorf("LoadReplayWindow(missing device) = %x, %v; want nil, nil", b, err)
	}

	w1 := bytes.Repeat([]byte{0xa1}, 18)
	w2 := bytes.Repeat([]byte{0xb2}, store.MaxReplayWindowSize)
	w3 := []byte{0xc3}
	for _, tc := range []struct {
		dir   string
		epoch uint32
		state []byte
	}{
		{store.EnvelopeUplink, 0, w1},
		{store.EnvelopeDownlink, 0, w3},
		{store.EnvelopeUplink, 1, w3},
		{store.EnvelopeUplink, 0, w2}, // upsert
	} {
		if err := st.SaveReplayWindow(ctx, "dev-1", tc.dir, tc.epoch, tc.state); err != nil {
			t.Fatalf("SaveReplayWindow(%s, %d, %d bytes): %v", tc.dir, tc.epoch, len(tc.state), err)
		}
	}
	if b := load(store.EnvelopeUplink, 0); !bytes.Equal(b, w2) {
		t.Errorf("uplink/0 = %x, want %x", b, w2)
	}
	if b := load(store.EnvelopeDownlink, 0); !bytes.Equal(b, w3) {
		t.Errorf("downlink/0 = %x, want %x", b, w3)
	}
	if b := load(store.EnvelopeUplink, 1); !bytes.Equal(b, w3) {
		t.Errorf("uplink/1 = %x, want %x", b, w3)
	}
	if b := load(store.EnvelopeDownlink, 1); b != nil {
		t.Errorf("downlink/1 = %x, want nil", b)
	}

	// Refusals leave the stored state as it was.
	for _, tc := range []struct {
		name  string
		id    string
		dir   string
		epoch uint32
		state []byte
		want  error
	}{
		{"too large", "dev-1", store.EnvelopeUplink, 0, make([]byte, store.MaxReplayWindowSize+1), nil},
		{"empty", "dev-1", store.EnvelopeUplink, 0, []byte{}, nil},
		{"nil", "dev-1", store.EnvelopeUplink, 0, nil, nil},
		{"unknown direction", "dev-1", "sideways", 0, w1, nil},
		{"no such epoch", "dev-1", store.EnvelopeUplink, 9, w1, store.ErrNotFound},
		{"no such device", "missing", store.EnvelopeUplink, 0, w1, store.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := st.SaveReplayWindow(ctx, tc.id, tc.dir, tc.epoch, tc.state)
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("SaveReplayWindow = %v, want an error (%v)", err, tc.want)
			}
		})
	}
	if b := load(store.EnvelopeUplink, 0); !bytes.Equal(b, w2) {
		t.Errorf("uplink/0 after refusals = %x, want %x", b, w2)
	}
	if _, err := st.LoadReplayWindow(ctx, "dev-1", "sideways", 0); err == nil {
		t.Error("LoadReplayWindow accepted an unknown direction")
	}

	// A retired key's window is kept but can no longer be saved.
	if err := st.PromoteEnvelopeKey(ctx, "dev-1", 1, base); err != nil {
		t.Fatal(err)
	}
	if err := st.SaveReplayWindow(ctx, "dev-1", store.EnvelopeUplink, 0, w1); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("SaveReplayWindow(retired key) = %v, want ErrRevoked", err)
	}
	if b := load(store.EnvelopeUplink, 0); !bytes.Equal(b, w2) {
		t.Errorf("retired uplink/0 = %x, want %x", b, w2)
	}
}

func testReserveSequence(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	mustCreateDevice(t, st, device("dev-2"))
	for _, id := range []string{"dev-1", "dev-2"} {
		if err := st.EnableEnvelope(ctx, envelopeKey(id, 0, store.EnvelopeActive, base), policy(id)); err != nil {
			t.Fatal(err)
		}
		if err := st.AddEnvelopeKey(ctx, envelopeKey(id, 1, store.EnvelopePending, base)); err != nil {
			t.Fatal(err)
		}
	}
	for i, tc := range []struct {
		id    string
		dir   string
		epoch uint32
		step  uint64
		want  uint64
	}{
		{"dev-1", store.EnvelopeDownlink, 0, 1024, 0},
		{"dev-1", store.EnvelopeDownlink, 0, 1024, 1024},
		{"dev-1", store.EnvelopeDownlink, 0, 1, 2048},
		{"dev-1", store.EnvelopeDownlink, 0, 10, 2049},
		{"dev-1", store.EnvelopeUplink, 0, 5, 0},      // directions are separate
		{"dev-1", store.EnvelopeDownlink, 1, 7, 0},    // epochs are separate
		{"dev-2", store.EnvelopeDownlink, 0, 3, 0},    // devices are separate
		{"dev-1", store.EnvelopeDownlink, 0, 1, 2059}, // and none of that moved this one
		{"dev-1", store.EnvelopeDownlink, 1, 7, 7},
	} {
		got, err := st.ReserveSequence(ctx, tc.id, tc.dir, tc.epoch, tc.step)
		if err != nil || got != tc.want {
			t.Errorf("#%d ReserveSequence(%s, %s, %d, %d) = %d, %v; want %d", i, tc.id, tc.dir, tc.epoch, tc.step, got, err, tc.want)
		}
	}

	for _, tc := range []struct {
		name  string
		id    string
		dir   string
		epoch uint32
		step  uint64
		want  error
	}{
		{"zero step", "dev-1", store.EnvelopeDownlink, 0, 0, nil},
		{"step beyond int64", "dev-1", store.EnvelopeDownlink, 0, math.MaxInt64 + 1, nil},
		{"unknown direction", "dev-1", "sideways", 0, 1, nil},
		{"no such epoch", "dev-1", store.EnvelopeDownlink, 9, 1, store.ErrNotFound},
		{"no such device", "missing", store.EnvelopeDownlink, 0, 1, store.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := st.ReserveSequence(ctx, tc.id, tc.dir, tc.epoch, tc.step)
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("ReserveSequence = %d, %v; want an error (%v)", got, err, tc.want)
			}
		})
	}

	// The counter never passes math.MaxInt64, and a refused reservation
	// changes nothing.
	big := uint64(math.MaxInt64 - 7)
	if got, err := st.ReserveSequence(ctx, "dev-2", store.EnvelopeUplink, 1, big); err != nil || got != 0 {
		t.Fatalf("ReserveSequence(%d) = %d, %v", big, got, err)
	}
	if _, err := st.ReserveSequence(ctx, "dev-2", store.EnvelopeUplink, 1, 8); err == nil {
		t.Error("ReserveSequence past math.MaxInt64 accepted")
	}
	if got, err := st.ReserveSequence(ctx, "dev-2", store.EnvelopeUplink, 1, 7); err != nil || got != big {
		t.Errorf("ReserveSequence up to math.MaxInt64 = %d, %v; want %d", got, err, big)
	}
	if _, err := st.ReserveSequence(ctx, "dev-2", store.EnvelopeUplink, 1, 1); err == nil {
		t.Error("ReserveSequence past math.MaxInt64 accepted")
	}

	// A retired key hands out no more numbers.
	if err := st.PromoteEnvelopeKey(ctx, "dev-1", 1, base); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ReserveSequence(ctx, "dev-1", store.EnvelopeDownlink, 0, 1); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("ReserveSequence(retired key) = %v, want ErrRevoked", err)
	}
	if got, err := st.ReserveSequence(ctx, "dev-1", store.EnvelopeDownlink, 1, 1); err != nil || got != 14 {
		t.Errorf("ReserveSequence(promoted key) = %d, %v; want 14", got, err)
	}
}

// ConcurrentSequences has workers on two handles on the same database (they
// may be the same handle) reserve sequence-number ranges for one (device,
// direction, epoch) at once, and checks that no number is handed out twice
// and none is skipped.
func ConcurrentSequences(t *testing.T, a, b store.Store) {
	t.Helper()
	ctx := context.Background()
	id := "seq-" + randHex(4)
	mustCreateDevice(t, a, device(id))
	if err := a.EnableEnvelope(ctx, envelopeKey(id, 0, store.EnvelopeActive, base), policy(id)); err != nil {
		t.Fatal(err)
	}
	const (
		workers = 4
		each    = 40
	)
	type reservation struct{ start, step uint64 }
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		got  []reservation
		errs []error
	)
	for w := range workers {
		st := a
		if w%2 == 1 {
			st = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				step := uint64(1 + (w+i)%5)
				start, err := st.ReserveSequence(ctx, id, store.EnvelopeDownlink, 0, step)
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("ReserveSequence: %w", err))
				} else {
					got = append(got, reservation{start, step})
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d reservations failed; first: %v", len(errs), errs[0])
	}
	slices.SortFunc(got, func(x, y reservation) int {
		switch {
		case x.start < y.start:
			return -1
		case x.start > y.start:
			return 1
		}
		return 0
	})
	var next uint64
	for _, r := range got {
		if r.start != next {
			t.Fatalf("reservation starts at %d, want %d: numbers handed out twice or skipped", r.start, next)
		}
		next += r.step
	}
	if start, err := b.ReserveSequence(ctx, id, store.EnvelopeDownlink, 0, 1); err != nil || start != next {
		t.Errorf("after the workers: ReserveSequence = %d, %v; want %d", start, err, next)
	}
}
