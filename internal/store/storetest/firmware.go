package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/store"
)

// releaseKey returns a key whose ID is the SHA-256 of its public key; the
// store does not parse keys, so random bytes stand in for DER.
func releaseKey(name string, created time.Time) store.ReleaseKey {
	pub := []byte("spki-" + randHex(32))
	sum := sha256.Sum256(pub)
	return store.ReleaseKey{ID: hex.EncodeToString(sum[:]), Name: name, PublicKey: pub, CreatedAt: created}
}

func mustAddReleaseKey(t *testing.T, st store.Store, name string) store.ReleaseKey {
	t.Helper()
	k := releaseKey(name, base)
	if err := st.AddReleaseKey(context.Background(), k); err != nil {
		t.Fatalf("AddReleaseKey(%s): %v", name, err)
	}
	return k
}

// firmwareImage returns a plausible image row signed by k; random bytes
// stand in for the image digest and the COSE statement.
func firmwareImage(k store.ReleaseKey, model string, seq uint64, uploaded time.Time) store.FirmwareImage {
	return store.FirmwareImage{
		SHA256:          randHex(32),
		Model:           model,
		Version:         fmt.Sprintf("1.%d.0+0", seq),
		SecurityCounter: 3,
		Size:            65536,
		KeyID:           k.ID,
		Statement:       []byte("statement-" + randHex(24)),
		Sequence:        seq,
		ExpiresAt:       uploaded.Add(90 * 24 * time.Hour),
		UploadedAt:      uploaded,
		UpdatedAt:       uploaded,
	}
}

func mustPutImage(t *testing.T, st store.Store, img store.FirmwareImage) store.FirmwareImage {
	t.Helper()
	got, err := st.PutFirmwareImage(context.Background(), img)
	if err != nil {
		t.Fatalf("PutFirmwareImage(%s): %v", img.SHA256, err)
	}
	return got
}

func modelDevice(t *testing.T, st store.Store, id, model string) {
	t.Helper()
	d := device(id)
	d.Model = model
	mustCreateDevice(t, st, d)
}

// rollout returns a running three-stage rollout of img.
func rollout(id string, img store.FirmwareImage) store.Rollout {
	return store.Rollout{
		ID:               id,
		ImageSHA256:      img.SHA256,
		Model:            img.Model,
		Tags:             map[string]string{"site": "lyon", "ring": "beta"},
		Stages:           []int{10, 50, 100},
		FailureThreshold: 0.25,
		MinFinished:      3,
		Timeout:          2 * time.Hour,
		State:            store.RolloutRunning,
		StageStartedAt:   base,
		CreatedAt:        base,
		UpdatedAt:        base,
	}
}

func member(id string, stage int) store.RolloutDevice {
	return store.RolloutDevice{DeviceID: id, Stage: stage, State: store.DevicePending, UpdatedAt: base}
}

// firmwareFixture is a trusted key and one image of model "m1", the model
// of device().
type firmwareFixture struct {
	key store.ReleaseKey
	img store.FirmwareImage
}

func newFirmwareFixture(t *testing.T, st store.Store) firmwareFixture {
	t.Helper()
	k := mustAddReleaseKey(t, st, "release")
	return firmwareFixture{key: k, img: mustPutImage(t, st, firmwareImage(k, "m1", 1, base))}
}

// mustCreateRollout creates a rollout of f.img over new devices of model
// m1, one per stage index given.
func (f firmwareFixture) mustCreateRollout(t *testing.T, st store.Store, id string, stages map[string]int) store.Rollout {
	t.Helper()
	r := rollout(id, f.img)
	var members []store.RolloutDevice
	for _, dev := range slices.Sorted(maps.Keys(stages)) {
		members = append(members, member(dev, stages[dev]))
	}
	if err := st.CreateRollout(context.Background(), r, members); err != nil {
		t.Fatalf("CreateRollout(%s): %v", id, err)
	}
	return r
}

func checkReleaseKey(t *testing.T, got, want store.ReleaseKey) {
	t.Helper()
	if got.ID != want.ID || got.Name != want.Name || !bytes.Equal(got.PublicKey, want.PublicKey) ||
		!got.CreatedAt.Equal(norm(want.CreatedAt)) || !got.RevokedAt.Equal(norm(want.RevokedAt)) ||
		got.Revoked() != want.Revoked() || got.CreatedAt.Location() != time.UTC ||
		(got.Revoked() && got.RevokedAt.Location() != time.UTC) {
		t.Errorf("release key mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func checkImage(t *testing.T, got, want store.FirmwareImage) {
	t.Helper()
	if want.UpdatedAt.IsZero() {
		want.UpdatedAt = want.UploadedAt
	}
	if got.SHA256 != want.SHA256 || got.Model != want.Model || got.Version != want.Version ||
		got.SecurityCounter != want.SecurityCounter || got.Size != want.Size || got.KeyID != want.KeyID ||
		!bytes.Equal(got.Statement, want.Statement) || got.Sequence != want.Sequence ||
		!got.ExpiresAt.Equal(norm(want.ExpiresAt)) || !got.UploadedAt.Equal(norm(want.UploadedAt)) ||
		!got.UpdatedAt.Equal(norm(want.UpdatedAt)) ||
		got.ExpiresAt.Location() != time.UTC || got.UploadedAt.Location() != time.UTC || got.UpdatedAt.Location() != time.UTC {
		t.Errorf("firmware image mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func checkRollout(t *testing.T, got, want store.Rollout) {
	t.Helper()
	if want.Tags == nil {
		want.Tags = map[string]string{}
	}
	if want.UpdatedAt.IsZero() {
		want.UpdatedAt = want.CreatedAt
	}
	if got.ID != want.ID || got.ImageSHA256 != want.ImageSHA256 || got.Model != want.Model ||
		!maps.Equal(got.Tags, want.Tags) || got.Tags == nil || !slices.Equal(got.Stages, want.Stages) ||
		got.Stage != want.Stage || got.FailureThreshold != want.FailureThreshold || got.MinFinished != want.MinFinished ||
		got.Timeout != want.Timeout || got.State != want.State || got.Reason != want.Reason ||
		!got.StageStartedAt.Equal(norm(want.StageStartedAt)) || !got.CreatedAt.Equal(norm(want.CreatedAt)) ||
		!got.UpdatedAt.Equal(norm(want.UpdatedAt)) ||
		got.CreatedAt.Location() != time.UTC || got.UpdatedAt.Location() != time.UTC || got.StageStartedAt.Location() != time.UTC {
		t.Errorf("rollout mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func checkRolloutDevice(t *testing.T, got, want store.RolloutDevice) {
	t.Helper()
	if got.RolloutID != want.RolloutID || got.DeviceID != want.DeviceID || got.Stage != want.Stage ||
		got.State != want.State || got.Reason != want.Reason || !got.UpdatedAt.Equal(norm(want.UpdatedAt)) ||
		got.UpdatedAt.Location() != time.UTC {
		t.Errorf("rollout member mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func memberIDs(ms []store.RolloutDevice) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.DeviceID
	}
	return out
}

func rolloutIDs(rs []store.Rollout) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

// mustMember returns one member of a rollout, walking every page.
func mustMember(t *testing.T, st store.Store, rolloutID, deviceID string) store.RolloutDevice {
	t.Helper()
	f := store.RolloutDeviceFilter{Limit: store.MaxListLimit}
	for {
		ms, err := st.ListRolloutDevices(context.Background(), rolloutID, f)
		if err != nil {
			t.Fatalf("ListRolloutDevices(%s): %v", rolloutID, err)
		}
		if len(ms) == 0 {
			t.Fatalf("device %s is not a member of rollout %s", deviceID, rolloutID)
		}
		for _, m := range ms {
			if m.DeviceID == deviceID {
				return m
			}
		}
		f.After = ms[len(ms)-1].DeviceID
	}
}

// --- release keys ---

func testReleaseKeys(t *testing.T, st store.Store) {
	ctx := context.Background()
	if ks, err := st.ReleaseKeys(ctx); err != nil || len(ks) != 0 {
		t.Fatalf("ReleaseKeys(empty store) = %v, %v", ks, err)
	}
	// Added out of creation order; listed oldest first.
	k2 := releaseKey("second", base.Add(time.Hour))
	k1 := releaseKey("first", base)
	k3 := releaseKey("", base.Add(2*time.Hour))
	for _, k := range []store.ReleaseKey{k2, k1, k3} {
		if err := st.AddReleaseKey(ctx, k); err != nil {
			t.Fatalf("AddReleaseKey(%s): %v", k.Name, err)
		}
	}
	got, err := st.GetReleaseKey(ctx, k1.ID)
	if err != nil {
		t.Fatal(err)
	}
	checkReleaseKey(t, got, k1)
	// Operators paste IDs in either case.
	if got, err := st.GetReleaseKey(ctx, strings.ToUpper(k1.ID)); err != nil || got.ID != k1.ID {
		t.Errorf("GetReleaseKey(uppercase) = %+v, %v", got, err)
	}
	ks, err := st.ReleaseKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 3 {
		t.Fatalf("ReleaseKeys = %d keys, want 3", len(ks))
	}
	for i, want := range []store.ReleaseKey{k1, k2, k3} {
		checkReleaseKey(t, ks[i], want)
	}

	// Adding a trusted key again changes nothing: the first name and time
	// stand.
	again := k1
	again.Name, again.CreatedAt = "renamed", base.Add(time.Hour)
	if err := st.AddReleaseKey(ctx, again); err != nil {
		t.Errorf("AddReleaseKey(already trusted) = %v, want nil", err)
	}
	if got, err := st.GetReleaseKey(ctx, k1.ID); err != nil {
		t.Fatal(err)
	} else {
		checkReleaseKey(t, got, k1)
	}

	if _, err := st.GetReleaseKey(ctx, releaseKey("x", base).ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetReleaseKey(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetReleaseKey(ctx, ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetReleaseKey(empty) = %v, want ErrNotFound", err)
	}
}

func testRevokeReleaseKey(t *testing.T, st store.Store) {
	ctx := context.Background()
	k := mustAddReleaseKey(t, st, "old")
	other := mustAddReleaseKey(t, st, "other")
	at := base.Add(time.Hour)
	got, err := st.RevokeReleaseKey(ctx, k.ID, at)
	if err != nil {
		t.Fatal(err)
	}
	want := k
	want.RevokedAt = at
	checkReleaseKey(t, got, want)
	if got, err := st.GetReleaseKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	} else {
		checkReleaseKey(t, got, want)
	}
	// Revoking again keeps the first time.
	if got, err := st.RevokeReleaseKey(ctx, k.ID, at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	} else {
		checkReleaseKey(t, got, want)
	}
	// Trust does not come back, whatever the name or time.
	again := k
	again.Name, again.CreatedAt = "again", at.Add(2*time.Hour)
	if err := st.AddReleaseKey(ctx, again); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("AddReleaseKey(revoked) = %v, want ErrRevoked", err)
	}
	if got, err := st.GetReleaseKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	} else {
		checkReleaseKey(t, got, want)
	}
	// The other key is untouched.
	if got, err := st.GetReleaseKey(ctx, other.ID); err != nil || got.Revoked() {
		t.Errorf("other key: %+v, %v", got, err)
	}
	if _, err := st.RevokeReleaseKey(ctx, releaseKey("x", base).ID, at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeReleaseKey(missing) = %v, want ErrNotFound", err)
	}
	for _, id := range []string{"", "abc", strings.Repeat("g", 64)} {
		if _, err := st.RevokeReleaseKey(ctx, id, at); err == nil {
			t.Errorf("RevokeReleaseKey(%q) accepted", id)
		}
	}
}

func testAddReleaseKeyRejectsBadInput(t *testing.T, st store.Store) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		mutate func(*store.ReleaseKey)
	}{
		{"empty ID", func(k *store.ReleaseKey) { k.ID = "" }},
		{"uppercase ID", func(k *store.ReleaseKey) { k.ID = strings.ToUpper(k.ID) }},
		{"short ID", func(k *store.ReleaseKey) { k.ID = k.ID[:62] }},
		{"ID of another key", func(k *store.ReleaseKey) { k.ID = releaseKey("x", base).ID }},
		{"empty public key", func(k *store.ReleaseKey) { k.PublicKey = nil }},
		{"already revoked", func(k *store.ReleaseKey) { k.RevokedAt = base }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := releaseKey("bad", base)
			tc.mutate(&k)
			if err := st.AddReleaseKey(ctx, k); err == nil {
				t.Fatal("AddReleaseKey accepted it")
			}
			if ks, err := st.ReleaseKeys(ctx); err != nil || len(ks) != 0 {
				t.Errorf("keys stored despite the error: %d, %v", len(ks), err)
			}
		})
	}
}

// --- firmware images ---

func testPutFirmwareImage(t *testing.T, st store.Store) {
	ctx := context.Background()
	k := mustAddReleaseKey(t, st, "release")
	img := firmwareImage(k, "m1", 5, base)
	img.SecurityCounter = math.MaxUint32
	img.UpdatedAt = time.Time{} // defaults to UploadedAt
	got := mustPutImage(t, st, img)
	checkImage(t, got, img)
	if g, err := st.GetFirmwareImage(ctx, img.SHA256); err != nil {
		t.Fatal(err)
	} else {
		checkImage(t, g, img)
	}
	if g, err := st.GetFirmwareImage(ctx, strings.ToUpper(img.SHA256)); err != nil || g.SHA256 != img.SHA256 {
		t.Errorf("GetFirmwareImage(uppercase) = %+v, %v", g, err)
	}
	if _, err := st.GetFirmwareImage(ctx, randHex(32)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetFirmwareImage(missing) = %v, want ErrNotFound", err)
	}

	// The same statement again changes nothing, whatever the times say.
	same := img
	same.UploadedAt, same.UpdatedAt = base.Add(time.Hour), base.Add(time.Hour)
	if g, err := st.PutFirmwareImage(ctx, same); err != nil {
		t.Errorf("PutFirmwareImage(same statement) = %v", err)
	} else {
		checkImage(t, g, img)
	}

	// A higher sequence replaces the statement, sequence and expiry, and
	// UpdatedAt; UploadedAt stays the first upload's.
	refresh := img
	refresh.Statement = []byte("statement-" + randHex(24))
	refresh.Sequence = 9
	refresh.ExpiresAt = base.Add(180 * 24 * time.Hour)
	refresh.UploadedAt = base.Add(3 * time.Hour)
	refresh.UpdatedAt = base.Add(3 * time.Hour)
	want := refresh
	want.UploadedAt = img.UploadedAt
	if g, err := st.PutFirmwareImage(ctx, refresh); err != nil {
		t.Fatalf("PutFirmwareImage(higher sequence) = %v", err)
	} else {
		checkImage(t, g, want)
	}
	if g, err := st.GetFirmwareImage(ctx, img.SHA256); err != nil {
		t.Fatal(err)
	} else {
		checkImage(t, g, want)
	}

	// Another image of the same model at sequence 7; of another model at 9.
	other := mustPutImage(t, st, firmwareImage(k, "m1", 7, base.Add(time.Hour)))
	elsewhere := firmwareImage(k, "m2", 9, base.Add(time.Hour))
	mustPutImage(t, st, elsewhere)

	for _, tc := range []struct {
		name   string
		mutate func(*store.FirmwareImage)
	}{
		{"lower sequence", func(i *store.FirmwareImage) { i.Sequence, i.Statement = 8, []byte("older") }},
		{"lower sequence, stored statement", func(i *store.FirmwareImage) { i.Sequence = 8 }},
		{"same sequence, other statement", func(i *store.FirmwareImage) { i.Statement = []byte("forked") }},
		{"same statement, other expiry", func(i *store.FirmwareImage) { i.ExpiresAt = i.ExpiresAt.Add(time.Hour) }},
		{"sequence of another image of the model", func(i *store.FirmwareImage) { i.Sequence, i.Statement = 7, []byte("s7") }},
		{"other model", func(i *store.FirmwareImage) { i.Model, i.Sequence, i.Statement = "m2", 10, []byte("s10") }},
		{"other version", func(i *store.FirmwareImage) { i.Version, i.Sequence, i.Statement = "9.9.9+0", 10, []byte("s10") }},
		{"other security counter", func(i *store.FirmwareImage) { i.SecurityCounter, i.Sequence, i.Statement = 1, 10, []byte("s10") }},
		{"other size", func(i *store.FirmwareImage) { i.Size, i.Sequence, i.Statement = 1, 10, []byte("s10") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := want
			tc.mutate(&bad)
			if _, err := st.PutFirmwareImage(ctx, bad); !errors.Is(err, store.ErrConflict) {
				t.Errorf("PutFirmwareImage = %v, want ErrConflict", err)
			}
			if g, err := st.GetFirmwareImage(ctx, img.SHA256); err != nil {
				t.Fatal(err)
			} else {
				checkImage(t, g, want)
			}
		})
	}
	// Signed by another trusted key: the image's signature cannot change.
	k2 := mustAddReleaseKey(t, st, "second")
	bad := want
	bad.KeyID, bad.Sequence, bad.Statement = k2.ID, 10, []byte("s10")
	if _, err := st.PutFirmwareImage(ctx, bad); !errors.Is(err, store.ErrConflict) {
		t.Errorf("PutFirmwareImage(other key) = %v, want ErrConflict", err)
	}

	// A new image whose (model, sequence) is taken.
	clash := firmwareImage(k, "m1", 7, base)
	if _, err := st.PutFirmwareImage(ctx, clash); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), other.SHA256) {
		t.Errorf("PutFirmwareImage(taken sequence) = %v, want ErrConflict naming %s", err, other.SHA256)
	}
	if _, err := st.GetFirmwareImage(ctx, clash.SHA256); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("image stored despite the conflict: %v", err)
	}

	// Unknown and revoked keys.
	unknown := firmwareImage(releaseKey("x", base), "m1", 20, base)
	if _, err := st.PutFirmwareImage(ctx, unknown); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PutFirmwareImage(unknown key) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetFirmwareImage(ctx, unknown.SHA256); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("image with an unknown key stored: %v", err)
	}
	if _, err := st.RevokeReleaseKey(ctx, k.ID, base); err != nil {
		t.Fatal(err)
	}
	revoked := firmwareImage(k, "m1", 21, base)
	if _, err := st.PutFirmwareImage(ctx, revoked); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("PutFirmwareImage(revoked key) = %v, want ErrRevoked", err)
	}
	if _, err := st.GetFirmwareImage(ctx, revoked.SHA256); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("image with a revoked key stored: %v", err)
	}
	// A statement refresh signed by a revoked key is refused too, and so is
	// a repeat of the stored one.
	late := want
	late.Sequence, late.Statement = 30, []byte("s30")
	for _, i := range []store.FirmwareImage{late, want} {
		if _, err := st.PutFirmwareImage(ctx, i); !errors.Is(err, store.ErrRevoked) {
			t.Errorf("PutFirmwareImage(sequence %d, revoked key) = %v, want ErrRevoked", i.Sequence, err)
		}
	}
	if g, err := st.GetFirmwareImage(ctx, img.SHA256); err != nil {
		t.Fatal(err)
	} else {
		checkImage(t, g, want)
	}
}

func testPutFirmwareImageRejectsBadInput(t *testing.T, st store.Store) {
	ctx := context.Background()
	k := mustAddReleaseKey(t, st, "release")
	for _, tc := range []struct {
		name   string
		mutate func(*store.FirmwareImage)
	}{
		{"empty SHA-256", func(i *store.FirmwareImage) { i.SHA256 = "" }},
		{"uppercase SHA-256", func(i *store.FirmwareImage) { i.SHA256 = strings.ToUpper(i.SHA256) }},
		{"short SHA-256", func(i *store.FirmwareImage) { i.SHA256 = i.SHA256[:40] }},
		{"non-hex SHA-256", func(i *store.FirmwareImage) { i.SHA256 = strings.Repeat("z", 64) }},
		{"empty model", func(i *store.FirmwareImage) { i.Model = "" }},
		{"empty version", func(i *store.FirmwareImage) { i.Version = "" }},
		{"zero size", func(i *store.FirmwareImage) { i.Size = 0 }},
		{"negative size", func(i *store.FirmwareImage) { i.Size = -1 }},
		{"empty key ID", func(i *store.FirmwareImage) { i.KeyID = "" }},
		{"uppercase key ID", func(i *store.FirmwareImage) { i.KeyID = strings.ToUpper(i.KeyID) }},
		{"empty statement", func(i *store.FirmwareImage) { i.Statement = nil }},
		{"sequence beyond int64", func(i *store.FirmwareImage) { i.Sequence = math.MaxInt64 + 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := firmwareImage(k, "m1", 1, base)
			tc.mutate(&img)
			if _, err := st.PutFirmwareImage(ctx, img); err == nil {
				t.Fatal("PutFirmwareImage accepted it")
			}
			if imgs, err := st.ListFirmwareImages(ctx, ""); err != nil || len(imgs) != 0 {
				t.Errorf("images stored despite the error: %d, %v", len(imgs), err)
			}
		})
	}
	// The largest storable sequence is fine.
	img := firmwareImage(k, "m1", math.MaxInt64, base)
	if got, err := st.PutFirmwareImage(ctx, img); err != nil || got.Sequence != math.MaxInt64 {
		t.Errorf("PutFirmwareImage(sequence MaxInt64) = %d, %v", got.Sequence, err)
	}
}

func testListFirmwareImages(t *testing.T, st store.Store) {
	ctx := context.Background()
	if imgs, err := st.ListFirmwareImages(ctx, ""); err != nil || len(imgs) != 0 {
		t.Fatalf("ListFirmwareImages(empty store) = %v, %v", imgs, err)
	}
	k := mustAddReleaseKey(t, st, "release")
	a := mustPutImage(t, st, firmwareImage(k, "m1", 1, base.Add(time.Hour)))
	b := mustPutImage(t, st, firmwareImage(k, "m2", 1, base.Add(3*time.Hour)))
	c := mustPutImage(t, st, firmwareImage(k, "m1", 2, base.Add(2*time.Hour)))
	d := mustPutImage(t, st, firmwareImage(k, "m1", 3, base))
	// A statement refresh does not make an image newer.
	refresh := d
	refresh.Sequence, refresh.Statement, refresh.UpdatedAt = 4, []byte("s4"), base.Add(5*time.Hour)
	mustPutImage(t, st, refresh)

	shas := func(imgs []store.FirmwareImage) []string {
		out := make([]string, len(imgs))
		for i, img := range imgs {
			out[i] = img.SHA256
		}
		return out
	}
	for _, tc := range []struct {
		model string
		want  []string
	}{
		{"", []string{b.SHA256, c.SHA256, a.SHA256, d.SHA256}},
		{"m1", []string{c.SHA256, a.SHA256, d.SHA256}},
		{"m2", []string{b.SHA256}},
		{"m3", nil},
	} {
		imgs, err := st.ListFirmwareImages(ctx, tc.model)
		if err != nil {
			t.Fatal(err)
		}
		if got := shas(imgs); !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
			t.Errorf("ListFirmwareImages(%q) = %v, want newest upload first %v", tc.model, got, tc.want)
		}
	}
	imgs, err := st.ListFirmwareImages(ctx, "m2")
	if err != nil || len(imgs) != 1 {
		t.Fatal(imgs, err)
	}
	checkImage(t, imgs[0], b)
}

func testDeleteFirmwareImage(t *testing.T, st store.Store) {
	ctx := context.Background()
	f := newFirmwareFixture(t, st)
	modelDevice(t, st, "dev-1", "m1")
	modelDevice(t, st, "dev-2", "m1")
	unused := mustPutImage(t, st, firmwareImage(f.key, "m1", 2, base))

	if err := st.DeleteFirmwareImage(ctx, unused.SHA256); err != nil {
		t.Fatalf("DeleteFirmwareImage(unused): %v", err)
	}
	if _, err := st.GetFirmwareImage(ctx, unused.SHA256); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetFirmwareImage(deleted) = %v, want ErrNotFound", err)
	}
	if err := st.DeleteFirmwareImage(ctx, unused.SHA256); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteFirmwareImage(deleted) = %v, want ErrNotFound", err)
	}
	for _, sha := range []string{"", "abc", strings.Repeat("z", 64)} {
		if err := st.DeleteFirmwareImage(ctx, sha); err == nil {
			t.Errorf("DeleteFirmwareImage(%q) accepted", sha)
		}
	}

	// Running and paused rollouts keep their image; a finished one does not.
	r := f.mustCreateRollout(t, st, "r1", map[string]int{"dev-1": 0})
	if err := st.DeleteFirmwareImage(ctx, f.img.SHA256); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "r1") {
		t.Errorf("DeleteFirmwareImage(used by a running rollout) = %v, want ErrConflict naming r1", err)
	}
	paused := r
	paused.State, paused.Reason = store.RolloutPaused, "operator"
	if err := st.UpdateRollout(ctx, paused, store.RolloutRunning); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteFirmwareImage(ctx, f.img.SHA256); !errors.Is(err, store.ErrConflict) {
		t.Errorf("DeleteFirmwareImage(used by a paused rollout) = %v, want ErrConflict", err)
	}
	if _, err := st.GetFirmwareImage(ctx, f.img.SHA256); err != nil {
		t.Errorf("image gone after a refused delete: %v", err)
	}
	aborted := paused
	aborted.State, aborted.Reason = store.RolloutAborted, "enough"
	if err := st.UpdateRollout(ctx, aborted, store.RolloutPaused); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteFirmwareImage(ctx, strings.ToUpper(f.img.SHA256)); err != nil {
		t.Fatalf("DeleteFirmwareImage(used by an aborted rollout only): %v", err)
	}
	// The finished rollout remains as history.
	if got, err := st.GetRollout(ctx, "r1"); err != nil || got.ImageSHA256 != f.img.SHA256 {
		t.Errorf("GetRollout after its image was deleted = %+v, %v", got, err)
	}
}

// --- rollouts ---

func testCreateAndGetRollout(t *testing.T, st store.Store) {
	ctx := context.Background()
	f := newFirmwareFixture(t, st)
	for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
		modelDevice(t, st, id, "m1")
	}
	r := rollout("r1", f.img)
	r.Stage, r.Reason = 1, "resumed"
	r.FailureThreshold, r.MinFinished, r.Timeout = 1, 0, 90*time.Second
	r.StageStartedAt = base.Add(time.Minute)
	r.UpdatedAt = base.Add(2 * time.Minute)
	members := []store.RolloutDevice{
		{RolloutID: "r1", DeviceID: "dev-c", Stage: 2, State: store.DevicePending, UpdatedAt: base.Add(time.Second)},
		{DeviceID: "dev-a", Stage: 0, State: store.DeviceSkipped, Reason: "already running 1.1.0+0"}, // rollout ID and time filled in
		{DeviceID: "dev-b", Stage: 1, State: store.DevicePending, UpdatedAt: base},
	}
	if err := st.CreateRollout(ctx, r, members); err != nil {
		t.Fatalf("CreateRollout: %v", err)
	}
	got, err := st.GetRollout(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	checkRollout(t, got, r)
	ms, err := st.ListRolloutDevices(ctx, "r1", store.RolloutDeviceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(memberIDs(ms), []string{"dev-a", "dev-b", "dev-c"}) {
		t.Fatalf("members = %v, want in device ID order", memberIDs(ms))
	}
	wantA := members[1]
	wantA.RolloutID, wantA.UpdatedAt = "r1", r.CreatedAt
	checkRolloutDevice(t, ms[0], wantA)
	wantB := members[2]
	wantB.RolloutID = "r1"
	checkRolloutDevice(t, ms[1], wantB)
	checkRolloutDevice(t, ms[2], members[0])

	// Nil tags read back empty; an unset UpdatedAt is CreatedAt; a rollout
	// may be created paused, and without members.
	bare := rollout("r2", f.img)
	bare.Tags, bare.UpdatedAt, bare.State = nil, time.Time{}, store.RolloutPaused
	bare.Stages, bare.Stage = []int{100}, 0
	if err := st.CreateRollout(ctx, bare, nil); err != nil {
		t.Fatalf("CreateRollout(bare): %v", err)
	}
	if got, err := st.GetRollout(ctx, "r2"); err != nil {
		t.Fatal(err)
	} else {
		checkRollout(t, got, bare)
	}
	if ms, err := st.ListRolloutDevices(ctx, "r2", store.RolloutDeviceFilter{}); err != nil || len(ms) != 0 {
		t.Errorf("ListRolloutDevices(no members) = %v, %v", memberIDs(ms), err)
	}
	if _, err := st.GetRollout(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetRollout(missing) = %v, want ErrNotFound", err)
	}
}

func testListRollouts(t *testing.T, st store.Store) {
	ctx := context.Background()
	if rs, err := st.ListRollouts(ctx); err != nil || len(rs) != 0 {
		t.Fatalf("ListRollouts(empty store) = %v, %v", rolloutIDs(rs), err)
	}
	f := newFirmwareFixture(t, st)
	for i, id := range []string{"b", "a", "d", "c"} {
		r := rollout(id, f.img)
		r.CreatedAt = base.Add(time.Duration([]int{2, 1, 2, 3}[i]) * time.Hour)
		if err := st.CreateRollout(ctx, r, nil); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := st.ListRollouts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Newest first; among rollouts created at the same time, the order
	// must merely be stable, so only the times are checked there.
	if got := rolloutIDs(rs); len(got) != 4 || got[0] != "c" || got[3] != "a" || !slices.Contains(got, "b") || !slices.Contains(got, "d") {
		t.Errorf("ListRollouts = %v, want c, {b, d}, a", got)
	}
	for i := 1; i < len(rs); i++ {
		if rs[i].CreatedAt.After(rs[i-1].CreatedAt) {
			t.Errorf("ListRollouts not newest first: %v", rolloutIDs(rs))
		}
	}
}

func testCreateRolloutConflicts(t *testing.T, st store.Store) {
	ctx := context.Background()
	f := newFirmwareFixture(t, st)
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		modelDevice(t, st, id, "m1")
	}
	modelDevice(t, st, "other-model", "m2")
	f.mustCreateRollout(t, st, "r1", map[string]int{"dev-1": 0})

	// Each failure must store nothing: no rollout, no membership (dev-3 is
	// first in the member list of every failing case, and must stay free).
	for _, tc := range []struct {
		name    string
		id      string
		image   string
		model   string
		members []string
		want    error
	}{
		{"duplicate ID", "r1", f.img.SHA256, "m1", []string{"dev-3"}, store.ErrConflict},
		{"missing image", "r2", randHex(32), "m1", []string{"dev-3"}, store.ErrNotFound},
		{"missing member device", "r2", f.img.SHA256, "m1", []string{"dev-3", "ghost"}, store.ErrNotFound},
		{"member in a running rollout", "r2", f.img.SHA256, "m1", []string{"dev-3", "dev-1"}, store.ErrConflict},
		{"model other than the image's", "r2", f.img.SHA256, "m2", []string{"dev-3"}, store.ErrConflict},
		{"member of another model", "r2", f.img.SHA256, "m1", []string{"dev-3", "other-model"}, store.ErrConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rollout(tc.id, f.img)
			r.ImageSHA256, r.Model = tc.image, tc.model
			var ms []store.RolloutDevice
			for _, id := range tc.members {
				ms = append(ms, member(id, 0))
			}
			if err := st.CreateRollout(ctx, r, ms); !errors.Is(err, tc.want) {
				t.Fatalf("CreateRollout = %v, want %v", err, tc.want)
			}
			if tc.id != "r1" {
				if _, err := st.GetRollout(ctx, tc.id); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("rollout stored despite the error: %v", err)
				}
			}
			if _, _, err := st.ActiveRollout(ctx, "dev-3"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("dev-3 became a member despite the error: %v", err)
			}
		})
	}
	if got, err := st.GetRollout(ctx, "r1"); err != nil || got.Model != "m1" {
		t.Errorf("r1 after the refused duplicate: %+v, %v", got, err)
	}
	if ms, err := st.ListRolloutDevices(ctx, "r1", store.RolloutDeviceFilter{}); err != nil || !slices.Equal(memberIDs(ms), []string{"dev-1"}) {
		t.Errorf("r1 members after the refused duplicate: %v, %v", memberIDs(ms), err)
	}
	// dev-3 is free for a correct attempt.
	f.mustCreateRollout(t, st, "r2", map[string]int{"dev-2": 0, "dev-3": 2})
}

func testCreateRolloutRejectsBadInput(t *testing.T, st store.Store) {
	ctx := context.Background()
	f := newFirmwareFixture(t, st)
	modelDevice(t, st, "dev-1", "m1")
	modelDevice(t, st, "dev-2", "m1")
	for _, tc := range []struct {
		name   string
		mutate func(*store.Rollout, *[]store.RolloutDevice)
	}{
		{"empty ID", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.ID = "" }},
		{"empty image", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.ImageSHA256 = "" }},
		{"uppercase image", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.ImageSHA256 = strings.ToUpper(r.ImageSHA256) }},
		{"empty model", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.Model = "" }},
		{"no stages", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.Stages, r.Stage = nil, 0 }},
		{"stages not ending at 100", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.Stages = []int{10, 50, 90} }},
		{"stages descending", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.Stages = []int{50, 10, 100} }},
		{"stages repeated", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.Stages = []int{10, 10, 100} }},
		{"stage of 0%", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.Stages = []int{0, 50, 100} }},
		{"stage over 100%", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.Stages = []int{10, 100, 101} }},
		{"negative stage", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.Stage = -1 }},
		{"stage past the last", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.Stage = 3 }},
		{"negative failure threshold", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.FailureThreshold = -0.1 }},
		{"failure threshold over 1", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.FailureThreshold = 1.01 }},
		{"NaN failure threshold", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.FailureThreshold = math.NaN() }},
		{"negative minimum finished", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.MinFinished = -1 }},
		{"negative timeout", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.Timeout = -time.Second }},
		{"unknown state", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.State = "sleeping" }},
		{"empty state", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.State = "" }},
		{"created aborted", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.State = store.RolloutAborted }},
		{"created completed", func(r *store.Rollout, _ *[]store.RolloutDevice) { r.State = store.RolloutCompleted }},
		{"member without device", func(_ *store.Rollout, ms *[]store.RolloutDevice) { (*ms)[1].DeviceID = "" }},
		{"member listed twice", func(_ *store.Rollout, ms *[]store.RolloutDevice) { (*ms)[1].DeviceID = "dev-1" }},
		{"member of another rollout", func(_ *store.Rollout, ms *[]store.RolloutDevice) { (*ms)[1].RolloutID = "other" }},
		{"member stage negative", func(_ *store.Rollout, ms *[]store.RolloutDevice) { (*ms)[1].Stage = -1 }},
		{"member stage past the last", func(_ *store.Rollout, ms *[]store.RolloutDevice) { (*ms)[1].Stage = 3 }},
		{"member state unknown", func(_ *store.Rollout, ms *[]store.RolloutDevice) { (*ms)[1].State = "lost" }},
		{"member state empty", func(_ *store.Rollout, ms *[]store.RolloutDevice) { (*ms)[1].State = "" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rollout("bad", f.img)
			ms := []store.RolloutDevice{member("dev-1", 0), member("dev-2", 2)}
			tc.mutate(&r, &ms)
			if err := st.CreateRollout(ctx, r, ms); err == nil {
				t.Fatal("CreateRollout accepted it")
			}
			if _, err := st.GetRollout(ctx, "bad"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("rollout stored despite the error: %v", err)
			}
			if _, _, err := st.ActiveRollout(ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("member stored despite the error: %v", err)
			}
		})
	}
	// Boundary values are accepted.
	r := rollout("edge", f.img)
	r.Stages, r.Stage = []int{1, 2, 99, 100}, 3
	r.FailureThreshold, r.MinFinished, r.Timeout = 0, 0, 0
	if err := st.CreateRollout(ctx, r, []store.RolloutDevice{member("dev-1", 3), member("dev-2", 0)}); err != nil {
		t.Fatalf("CreateRollout(boundary values): %v", err)
	}
	if got, err := st.GetRollout(ctx, "edge"); err != nil {
		t.Fatal(err)
	} else {
		checkRollout(t, got, r)
	}
	full := make([]int, 100)
	for i := range full {
		full[i] = i + 1
	}
	r = rollout("hundred", f.img)
	r.Stages, r.Stage = full, 99
	if err := st.CreateRollout(ctx, r, nil); err != nil {
		t.Fatalf("CreateRollout(100 stages): %v", err)
	}
}

// A device is in at most one rollout that is running or paused; once that
// rollout is aborted or completed, the device may join another.
func testOneLiveRolloutPerDevice(t *testing.T, st store.Store) {
	ctx := context.Background()
	f := newFirmwareFixture(t, st)
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		modelDevice(t, st, id, "m1")
	}
	r1 := f.mustCreateRollout(t, st, "r1", map[string]int{"dev-1": 0, "dev-2": 1})
	if err := st.CreateRollout(ctx, rollout("r2", f.img), []store.RolloutDevice{member("dev-2", 0)}); !errors.Is(err, store.ErrConflict) ||
		!strings.Contains(err.Error(), "dev-2") || !strings.Contains(err.Error(), "r1") {
		t.Errorf("CreateRollout(member of running r1) = %v, want ErrConflict naming dev-2 and r1", err)
	}
	f.mustCreateRollout(t, st, "r2", map[string]int{"dev-3": 0})

	// Paused is not final.
	paused := r1
	paused.State = store.RolloutPaused
	if err := st.UpdateRollout(ctx, paused, store.RolloutRunning); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateRollout(ctx, rollout("r3", f.img), []store.RolloutDevice{member("dev-1", 0)}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CreateRollout(member of paused r1) = %v, want ErrConflict", err)
	}
	aborted := paused
	aborted.State, aborted.Reason = store.RolloutAborted, "threshold"
	if err := st.UpdateRollout(ctx, aborted, store.RolloutPaused); err != nil {
		t.Fatal(err)
	}
	r3 := f.mustCreateRollout(t, st, "r3", map[string]int{"dev-1": 0, "dev-2": 0})
	completed := r3
	completed.State = store.RolloutCompleted
	if err := st.UpdateRollout(ctx, completed, store.RolloutRunning); err != nil {
		t.Fatal(err)
	}
	// dev-1 is now in two finished rollouts and may join a third.
	f.mustCreateRollout(t, st, "r4", map[string]int{"dev-1": 0})
	if r, _, err := st.ActiveRollout(ctx, "dev-1"); err != nil || r.ID != "r4" {
		t.Errorf("ActiveRollout(dev-1) = %q, %v; want r4", r.ID, err)
	}
}

func testUpdateRollout(t *testing.T, st store.Store) {
	ctx := context.Background()
	f := newFirmwareFixture(t, st)
	modelDevice(t, st, "dev-1", "m1")
	r := f.mustCreateRollout(t, st, "r1", map[string]int{"dev-1": 0})

	// Only Stage, State, Reason, StageStartedAt and UpdatedAt are written.
	next := r
	next.Stage, next.Reason = 1, "stage 0 passed"
	next.StageStartedAt, next.UpdatedAt = base.Add(time.Hour), base.Add(time.Hour)
	next.Model, next.Tags, next.Stages, next.FailureThreshold, next.Timeout = "ignored", nil, []int{100}, 0.9, time.Minute
	next.MinFinished, next.ImageSHA256, next.CreatedAt = 99, randHex(32), base.Add(time.Hour)
	if err := st.UpdateRollout(ctx, next, store.RolloutRunning); err != nil {
		t.Fatalf("UpdateRollout: %v", err)
	}
	want := r
	want.Stage, want.Reason, want.StageStartedAt, want.UpdatedAt = 1, "stage 0 passed", next.StageStartedAt, next.UpdatedAt
	got, err := st.GetRollout(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	checkRollout(t, got, want)

	// Compare and set: a stale from is refused and changes nothing.
	stale := want
	stale.State, stale.Reason = store.RolloutPaused, "stale"
	if err := st.UpdateRollout(ctx, stale, store.RolloutPaused); !errors.Is(err, store.ErrConflict) {
		t.Errorf("UpdateRollout(stale from) = %v, want ErrConflict", err)
	}
	if got, err := st.GetRollout(ctx, "r1"); err != nil {
		t.Fatal(err)
	} else {
		checkRollout(t, got, want)
	}
	missing := want
	missing.ID = "nope"
	if err := st.UpdateRollout(ctx, missing, store.RolloutRunning); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateRollout(missing) = %v, want ErrNotFound", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*store.Rollout) store.RolloutState
	}{
		{"empty ID", func(r *store.Rollout) store.RolloutState { r.ID = ""; return store.RolloutRunning }},
		{"unknown state", func(r *store.Rollout) store.RolloutState { r.State = "sleeping"; return store.RolloutRunning }},
		{"unknown from", func(r *store.Rollout) store.RolloutState { return "sleeping" }},
		{"negative stage", func(r *store.Rollout) store.RolloutState { r.Stage = -1; return store.RolloutRunning }},
		{"stage past the last", func(r *store.Rollout) store.RolloutState { r.Stage = 3; return store.RolloutRunning }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := want
			from := tc.mutate(&bad)
			if err := st.UpdateRollout(ctx, bad, from); err == nil {
				t.Fatal("UpdateRollout accepted it")
			}
			if got, err := st.GetRollout(ctx, "r1"); err != nil {
				t.Fatal(err)
			} else {
				checkRollout(t, got, want)
			}
		})
	}

	// Running to paused to running to completed; then nothing leaves it.
	steps := []struct {
		from, to store.RolloutState
		stage    int
	}{
		{store.RolloutRunning, store.RolloutPaused, 1},
		{store.RolloutPaused, store.RolloutRunning, 2},
		{store.RolloutRunning, store.RolloutCompleted, 2},
	}
	for i, s := range steps {
		want.State, want.Stage, want.Reason = s.to, s.stage, fmt.Sprintf("step %d", i)
		want.UpdatedAt = base.Add(time.Duration(i+2) * time.Hour)
		if err := st.UpdateRollout(ctx, want, s.from); err != nil {
			t.Fatalf("UpdateRollout(%s to %s): %v", s.from, s.to, err)
		}
	}
	if got, err := st.GetRollout(ctx, "r1"); err != nil {
		t.Fatal(err)
	} else {
		checkRollout(t, got, want)
	}
	for _, to := range []store.RolloutState{store.RolloutRunning, store.RolloutPaused, store.RolloutAborted, store.RolloutCompleted} {
		back := want
		back.State = to
		if err := st.UpdateRollout(ctx, back, store.RolloutCompleted); err == nil {
			t.Errorf("UpdateRollout(completed to %s) accepted", to)
		}
	}
	if got, err := st.GetRollout(ctx, "r1"); err != nil {
		t.Fatal(err)
	} else {
		checkRollout(t, got, want)
	}
}

func testRolloutCounts(t *testing.T, st store.Store) {
	ctx := context.Background()
	f := newFirmwareFixture(t, st)
	layout := map[string]int{}
	for i := range 9 {
		id := fmt.Sprintf("dev-%d", i)
		modelDevice(t, st, id, "m1")
		layout[id] = []int{2, 0, 1, 0, 2, 0, 1, 2, 2}[i]
	}
	f.mustCreateRollout(t, st, "r1", layout)
	// Stage 0: dev-1 booted, dev-3 and dev-5 pending. Stage 1: dev-2
	// failed, dev-6 offered. Stage 2: dev-0, dev-4 skipped; dev-7, dev-8
	// pending.
	for _, s := range []struct{ dev, state string }{
		{"dev-1", store.DeviceBooted}, {"dev-2", store.DeviceFailed}, {"dev-6", store.DeviceOffered},
		{"dev-0", store.DeviceSkipped}, {"dev-4", store.DeviceSkipped},
	} {
		if err := st.SetRolloutDeviceState(ctx, "r1", s.dev, s.state, "", base); err != nil {
			t.Fatal(err)
		}
	}
	got, err := st.RolloutCounts(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	want := []store.RolloutCount{
		{Stage: 0, State: store.DeviceBooted, N: 1}, {Stage: 0, State: store.DevicePending, N: 2},
		{Stage: 1, State: store.DeviceFailed, N: 1}, {Stage: 1, State: store.DeviceOffered, N: 1},
		{Stage: 2, State: store.DevicePending, N: 2}, {Stage: 2, State: store.DeviceSkipped, N: 2},
	}
	if !slices.Equal(got, want) {
		t.Errorf("RolloutCounts = %v\nwant %v", got, want)
	}

	// Another rollout's members are not counted; a rollout without members
	// has no counts; a missing one is not found.
	modelDevice(t, st, "dev-x", "m1")
	f.mustCreateRollout(t, st, "r2", map[string]int{"dev-x": 0})
	if err := st.CreateRollout(ctx, rollout("r3", f.img), nil); err != nil {
		t.Fatal(err)
	}
	if got, err := st.RolloutCounts(ctx, "r1"); err != nil || !slices.Equal(got, want) {
		t.Errorf("RolloutCounts(r1) with r2 present = %v, %v", got, err)
	}
	if got, err := st.RolloutCounts(ctx, "r3"); err != nil || len(got) != 0 {
		t.Errorf("RolloutCounts(no members) = %v, %v; want none", got, err)
	}
	if _, err := st.RolloutCounts(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RolloutCounts(missing) = %v, want ErrNotFound", err)
	}
}

func testListRolloutDevices(t *testing.T, st store.Store) {
	ctx := context.Background()
	f := newFirmwareFixture(t, st)
	const n = 125
	layout := map[string]int{}
	var all []string
	for i := range n {
		id := fmt.Sprintf("d%03d", (i*37)%n) // created out of order
		modelDevice(t, st, id, "m1")
		layout[id] = i % 3
		all = append(all, id)
	}
	slices.Sort(all)
	f.mustCreateRollout(t, st, "r1", layout)
	modelDevice(t, st, "d000x", "m1") // sorts among r1's members, but is in r2
	f.mustCreateRollout(t, st, "r2", map[string]int{"d000x": 0})
	var offered []string
	for i, id := range all {
		if i%4 == 1 {
			if err := st.SetRolloutDeviceState(ctx, "r1", id, store.DeviceOffered, "", base); err != nil {
				t.Fatal(err)
			}
			offered = append(offered, id)
		}
	}

	def, err := st.ListRolloutDevices(ctx, "r1", store.RolloutDeviceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(memberIDs(def), all[:store.DefaultListLimit]) {
		t.Fatalf("ListRolloutDevices(default) = %d members, want the first %d in ID order", len(def), store.DefaultListLimit)
	}
	for _, m := range def {
		if m.RolloutID != "r1" || m.Stage != layout[m.DeviceID] {
			t.Fatalf("member %+v: wrong rollout or stage", m)
		}
	}

	walk := func(f store.RolloutDeviceFilter) []string {
		t.Helper()
		var out []string
		for page := 0; ; page++ {
			if page > n {
				t.Fatal("paging does not terminate")
			}
			ms, err := st.ListRolloutDevices(ctx, "r1", f)
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) > f.Limit {
				t.Fatalf("page of %d members, limit %d", len(ms), f.Limit)
			}
			if len(ms) == 0 {
				return out
			}
			for _, m := range ms {
				if f.State != "" && m.State != f.State {
					t.Fatalf("member %+v does not match state %q", m, f.State)
				}
			}
			out = append(out, memberIDs(ms)...)
			f.After = ms[len(ms)-1].DeviceID
		}
	}
	if got := walk(store.RolloutDeviceFilter{Limit: 10}); !slices.Equal(got, all) {
		t.Errorf("paged walk = %v\nwant %v", got, all)
	}
	if got := walk(store.RolloutDeviceFilter{Limit: 7, State: store.DeviceOffered}); !slices.Equal(got, offered) {
		t.Errorf("paged walk of offered = %v\nwant %v", got, offered)
	}
	pending := slices.DeleteFunc(slices.Clone(all), func(id string) bool { return slices.Contains(offered, id) })
	if got := walk(store.RolloutDeviceFilter{Limit: 9, State: store.DevicePending}); !slices.Equal(got, pending) {
		t.Errorf("paged walk of pending = %d members, want %d", len(got), len(pending))
	}
	if ms, err := st.ListRolloutDevices(ctx, "r1", store.RolloutDeviceFilter{State: store.DeviceBooted}); err != nil || len(ms) != 0 {
		t.Errorf("ListRolloutDevices(booted) = %v, %v; want none", memberIDs(ms), err)
	}
	if ms, err := st.ListRolloutDevices(ctx, "r1", store.RolloutDeviceFilter{Limit: store.MaxListLimit * 10}); err != nil || len(ms) != n {
		t.Errorf("ListRolloutDevices(limit %d) = %d members, %v; want %d", store.MaxListLimit*10, len(ms), err, n)
	}
	if ms, err := st.ListRolloutDevices(ctx, "r1", store.RolloutDeviceFilter{After: "zzz"}); err != nil || len(ms) != 0 {
		t.Errorf("ListRolloutDevices(after end) = %v, %v", memberIDs(ms), err)
	}
	if ms, err := st.ListRolloutDevices(ctx, "r2", store.RolloutDeviceFilter{}); err != nil || !slices.Equal(memberIDs(ms), []string{"d000x"}) {
		t.Errorf("ListRolloutDevices(r2) = %v, %v", memberIDs(ms), err)
	}
	if _, err := st.ListRolloutDevices(ctx, "r1", store.RolloutDeviceFilter{State: "lost"}); err == nil {
		t.Error("ListRolloutDevices accepted an unknown state")
	}
	if _, err := st.ListRolloutDevices(ctx, "nope", store.RolloutDeviceFilter{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ListRolloutDevices(missing rollout) = %v, want ErrNotFound", err)
	}
}

func testActiveRollout(t *testing.T, st store.Store) {
	ctx := context.Background()
	f := newFirmwareFixture(t, st)
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		modelDevice(t, st, id, "m1")
	}
	if _, _, err := st.ActiveRollout(ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ActiveRollout(no rollout) = %v, want ErrNotFound", err)
	}
	if _, _, err := st.ActiveRollout(ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ActiveRollout(missing device) = %v, want ErrNotFound", err)
	}
	r1 := f.mustCreateRollout(t, st, "r1", map[string]int{"dev-1": 0, "dev-2": 2})
	r, m, err := st.ActiveRollout(ctx, "dev-2")
	if err != nil {
		t.Fatal(err)
	}
	checkRollout(t, r, r1)
	checkRolloutDevice(t, m, store.RolloutDevice{RolloutID: "r1", DeviceID: "dev-2", Stage: 2, State: store.DevicePending, UpdatedAt: base})
	if _, _, err := st.ActiveRollout(ctx, "dev-3"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ActiveRollout(non-member) = %v, want ErrNotFound", err)
	}

	// A finished member is still in the rollout while it runs or pauses.
	if err := st.SetRolloutDeviceState(ctx, "r1", "dev-1", store.DeviceBooted, "", base.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	paused := r1
	paused.State, paused.UpdatedAt = store.RolloutPaused, base.Add(time.Hour)
	if err := st.UpdateRollout(ctx, paused, store.RolloutRunning); err != nil {
		t.Fatal(err)
	}
	r, m, err = st.ActiveRollout(ctx, "dev-1")
	if err != nil || r.ID != "r1" || r.State != store.RolloutPaused || m.State != store.DeviceBooted {
		t.Errorf("ActiveRollout(member of paused rollout) = %+v, %+v, %v", r, m, err)
	}

	// Aborted: no longer active; a newer rollout is.
	aborted := paused
	aborted.State = store.RolloutAborted
	if err := st.UpdateRollout(ctx, aborted, store.RolloutPaused); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.ActiveRollout(ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ActiveRollout(member of aborted rollout) = %v, want ErrNotFound", err)
	}
	f.mustCreateRollout(t, st, "r2", map[string]int{"dev-1": 1})
	if r, m, err := st.ActiveRollout(ctx, "dev-1"); err != nil || r.ID != "r2" || m.RolloutID != "r2" || m.Stage != 1 {
		t.Errorf("ActiveRollout(dev-1) = %+v, %+v, %v; want r2", r, m, err)
	}
}

func testSetRolloutDeviceState(t *testing.T, st store.Store) {
	ctx := context.Background()
	f := newFirmwareFixture(t, st)
	for _, id := range []string{"dev-1", "dev-2"} {
		modelDevice(t, st, id, "m1")
	}
	f.mustCreateRollout(t, st, "r1", map[string]int{"dev-1": 0, "dev-2": 1})
	at := base.Add(time.Minute)
	if err := st.SetRolloutDeviceState(ctx, "r1", "dev-1", store.DeviceOffered, "", at, store.DevicePending); err != nil {
		t.Fatalf("SetRolloutDeviceState(pending to offered): %v", err)
	}
	want := store.RolloutDevice{RolloutID: "r1", DeviceID: "dev-1", Stage: 0, State: store.DeviceOffered, UpdatedAt: at}
	checkRolloutDevice(t, mustMember(t, st, "r1", "dev-1"), want)

	// A from that does not hold is refused and changes nothing.
	if err := st.SetRolloutDeviceState(ctx, "r1", "dev-1", store.DeviceDownloading, "", at.Add(time.Minute), store.DevicePending); !errors.Is(err, store.ErrConflict) {
		t.Errorf("SetRolloutDeviceState(stale from) = %v, want ErrConflict", err)
	}
	checkRolloutDevice(t, mustMember(t, st, "r1", "dev-1"), want)

	// Any of several from states.
	at = at.Add(time.Minute)
	if err := st.SetRolloutDeviceState(ctx, "r1", "dev-1", store.DeviceFailed, "flash write error", at,
		store.DeviceOffered, store.DeviceDownloading, store.DeviceVerified, store.DeviceInstalling); err != nil {
		t.Fatalf("SetRolloutDeviceState(one of several from): %v", err)
	}
	want.State, want.Reason, want.UpdatedAt = store.DeviceFailed, "flash write error", at
	checkRolloutDevice(t, mustMember(t, st, "r1", "dev-1"), want)

	// No from: any state, finished ones included.
	at = at.Add(time.Minute)
	if err := st.SetRolloutDeviceState(ctx, "r1", "dev-1", store.DevicePending, "", at); err != nil {
		t.Fatalf("SetRolloutDeviceState(no from): %v", err)
	}
	want.State, want.Reason, want.UpdatedAt = store.DevicePending, "", at
	checkRolloutDevice(t, mustMember(t, st, "r1", "dev-1"), want)

	// The other member is untouched.
	checkRolloutDevice(t, mustMember(t, st, "r1", "dev-2"), store.RolloutDevice{RolloutID: "r1", DeviceID: "dev-2", Stage: 1, State: store.DevicePending, UpdatedAt: base})

	for _, tc := range []struct {
		name            string
		rollout, device string
		state           string
		from            []string
		want            error
	}{
		{"not a member", "r1", "ghost", store.DeviceOffered, nil, store.ErrNotFound},
		{"not a member, with from", "r1", "ghost", store.DeviceOffered, []string{store.DevicePending}, store.ErrNotFound},
		{"missing rollout", "nope", "dev-1", store.DeviceOffered, nil, store.ErrNotFound},
		{"empty rollout", "", "dev-1", store.DeviceOffered, nil, nil},
		{"empty device", "r1", "", store.DeviceOffered, nil, nil},
		{"unknown state", "r1", "dev-1", "lost", nil, nil},
		{"empty state", "r1", "dev-1", "", nil, nil},
		{"unknown from", "r1", "dev-1", store.DeviceOffered, []string{store.DevicePending, "lost"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := st.SetRolloutDeviceState(ctx, tc.rollout, tc.device, tc.state, "x", at.Add(time.Hour), tc.from...)
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("SetRolloutDeviceState = %v, want an error (%v)", err, tc.want)
			}
			checkRolloutDevice(t, mustMember(t, st, "r1", "dev-1"), want)
		})
	}
}

func testTimeOutRolloutDevices(t *testing.T, st store.Store) {
	ctx := context.Background()
	f := newFirmwareFixture(t, st)
	states := map[string]struct {
		stage int
		state string
	}{
		"a-pending":     {0, store.DevicePending},
		"a-offered":     {0, store.DeviceOffered},
		"a-booted":      {0, store.DeviceBooted},
		"b-downloading": {1, store.DeviceDownloading},
		"b-verified":    {1, store.DeviceVerified},
		"b-installing":  {1, store.DeviceInstalling},
		"b-failed":      {1, store.DeviceFailed},
		"b-rolled-back": {1, store.DeviceRolledBack},
		"b-skipped":     {1, store.DeviceSkipped},
		"b-timed-out":   {1, store.DeviceTimedOut},
		"c-pending":     {2, store.DevicePending},
		"c-offered":     {2, store.DeviceOffered},
	}
	layout := map[string]int{}
	for id, s := range states {
		modelDevice(t, st, id, "m1")
		layout[id] = s.stage
	}
	f.mustCreateRollout(t, st, "r1", layout)
	for id, s := range states {
		if err := st.SetRolloutDeviceState(ctx, "r1", id, s.state, "before", base); err != nil {
			t.Fatal(err)
		}
	}
	modelDevice(t, st, "other", "m1")
	f.mustCreateRollout(t, st, "r2", map[string]int{"other": 0})

	at := base.Add(time.Hour)
	n, err := st.TimeOutRolloutDevices(ctx, "r1", 1, at)
	if err != nil {
		t.Fatal(err)
	}
	moved := []string{"a-offered", "a-pending", "b-downloading", "b-installing", "b-verified"}
	if n != len(moved) {
		t.Errorf("TimeOutRolloutDevices moved %d, want %d", n, len(moved))
	}
	ms, err := st.ListRolloutDevices(ctx, "r1", store.RolloutDeviceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		want := store.RolloutDevice{RolloutID: "r1", DeviceID: m.DeviceID, Stage: states[m.DeviceID].stage,
			State: states[m.DeviceID].state, Reason: "before", UpdatedAt: base}
		if slices.Contains(moved, m.DeviceID) {
			want.State, want.Reason, want.UpdatedAt = store.DeviceTimedOut, "stage timeout", at
		}
		checkRolloutDevice(t, m, want)
	}
	checkRolloutDevice(t, mustMember(t, st, "r2", "other"), store.RolloutDevice{RolloutID: "r2", DeviceID: "other", Stage: 0, State: store.DevicePending, UpdatedAt: base})

	// Nothing left to time out in those stages.
	if n, err := st.TimeOutRolloutDevices(ctx, "r1", 1, at.Add(time.Hour)); err != nil || n != 0 {
		t.Errorf("second TimeOutRolloutDevices = %d, %v; want 0", n, err)
	}
	if n, err := st.TimeOutRolloutDevices(ctx, "r1", 2, at); err != nil || n != 2 {
		t.Errorf("TimeOutRolloutDevices(last stage) = %d, %v; want 2", n, err)
	}
	if _, err := st.TimeOutRolloutDevices(ctx, "nope", 0, at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TimeOutRolloutDevices(missing rollout) = %v, want ErrNotFound", err)
	}
	for _, tc := range []struct {
		id       string
		maxStage int
	}{{"", 0}, {"r1", -1}, {"r1", 3}, {"r1", 100}} {
		if _, err := st.TimeOutRolloutDevices(ctx, tc.id, tc.maxStage, at); err == nil {
			t.Errorf("TimeOutRolloutDevices(%q, %d) accepted", tc.id, tc.maxStage)
		}
	}
}

// --- what devices run ---

func testDeviceFirmware(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	mustCreateDevice(t, st, device("dev-2"))
	if _, err := st.GetDeviceFirmware(ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetDeviceFirmware(never reported) = %v, want ErrNotFound", err)
	}
	check := func(want store.DeviceFirmware) {
		t.Helper()
		got, err := st.GetDeviceFirmware(ctx, want.DeviceID)
		if err != nil {
			t.Fatalf("GetDeviceFirmware(%s): %v", want.DeviceID, err)
		}
		want.ReportedAt = norm(want.ReportedAt)
		if got != want || got.ReportedAt.Location() != time.UTC {
			t.Errorf("GetDeviceFirmware = %+v\nwant %+v", got, want)
		}
	}
	first := store.DeviceFirmware{DeviceID: "dev-1", Version: "1.2.3+4", SecurityCounter: 2, ReportedAt: base}
	if err := st.SetDeviceFirmware(ctx, first); err != nil {
		t.Fatal(err)
	}
	check(first)
	// Each report replaces the last, a lower counter or an unknown image
	// included: the store records, ota decides.
	for _, f := range []store.DeviceFirmware{
		{DeviceID: "dev-1", Version: "1.3.0+0", SecurityCounter: math.MaxUint32, ImageSHA256: randHex(32), Sequence: math.MaxInt64, ReportedAt: base.Add(time.Hour)},
		{DeviceID: "dev-1", Version: "1.0.0+0", SecurityCounter: 0, ReportedAt: base.Add(2 * time.Hour)},
	} {
		if err := st.SetDeviceFirmware(ctx, f); err != nil {
			t.Fatal(err)
		}
		check(f)
	}
	last := store.DeviceFirmware{DeviceID: "dev-1", Version: "1.0.0+0", SecurityCounter: 0, ReportedAt: base.Add(2 * time.Hour)}
	if _, err := st.GetDeviceFirmware(ctx, "dev-2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetDeviceFirmware(other device) = %v, want ErrNotFound", err)
	}

	if err := st.SetDeviceFirmware(ctx, store.DeviceFirmware{DeviceID: "ghost", Version: "1.0.0+0", ReportedAt: base}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetDeviceFirmware(missing device) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetDeviceFirmware(ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetDeviceFirmware(missing device) = %v, want ErrNotFound", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*store.DeviceFirmware)
	}{
		{"empty device", func(f *store.DeviceFirmware) { f.DeviceID = "" }},
		{"empty version", func(f *store.DeviceFirmware) { f.Version = "" }},
		{"uppercase image", func(f *store.DeviceFirmware) { f.ImageSHA256 = strings.ToUpper(randHex(32)) }},
		{"short image", func(f *store.DeviceFirmware) { f.ImageSHA256 = "abcd" }},
		{"sequence beyond int64", func(f *store.DeviceFirmware) { f.Sequence = math.MaxInt64 + 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := store.DeviceFirmware{DeviceID: "dev-1", Version: "9.9.9+9", SecurityCounter: 9, ImageSHA256: randHex(32), Sequence: 9, ReportedAt: base}
			tc.mutate(&f)
			if err := st.SetDeviceFirmware(ctx, f); err == nil {
				t.Fatal("SetDeviceFirmware accepted it")
			}
			check(last)
		})
	}
}

// ConcurrentRolloutDevices has workers on two handles on the same database
// (they may be the same handle) race to create rollouts over the same
// devices, and then to move the members of the winner through the same
// chain of states with compare-and-set. Exactly one rollout may win, each
// step must succeed exactly once per device, no worker may see an error
// other than ErrConflict, and no update may be lost.
func ConcurrentRolloutDevices(t *testing.T, a, b store.Store) {
	t.Helper()
	ctx := context.Background()
	const (
		workers = 4
		devices = 12
	)
	prefix := randHex(4)
	model := "conc-" + prefix
	k := mustAddReleaseKey(t, a, "conc")
	img := mustPutImage(t, a, firmwareImage(k, model, 1, base))
	var ids []string
	for i := range devices {
		id := fmt.Sprintf("%s-d%02d", prefix, i)
		modelDevice(t, a, id, model)
		ids = append(ids, id)
	}
	handle := func(w int) store.Store {
		if w%2 == 1 {
			return b
		}
		return a
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}

	// Phase 1: every worker creates its own rollout over all devices.
	created := make([]bool, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rollout(fmt.Sprintf("%s-r%d", prefix, w), img)
			ms := make([]store.RolloutDevice, len(ids))
			for i, id := range ids {
				ms[i] = member(id, i%3)
			}
			switch err := handle(w).CreateRollout(ctx, r, ms); {
			case err == nil:
				created[w] = true
			case !errors.Is(err, store.ErrConflict):
				fail(fmt.Errorf("CreateRollout(%s): %w", r.ID, err))
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d concurrent creations failed unexpectedly; first: %v", len(errs), errs[0])
	}
	winner := slices.Index(created, true)
	if n := len(slices.DeleteFunc(slices.Clone(created), func(c bool) bool { return !c })); n != 1 {
		t.Fatalf("%d concurrent rollouts over the same devices were created, want exactly 1", n)
	}
	rolloutID := fmt.Sprintf("%s-r%d", prefix, winner)
	for w := range workers {
		if w == winner {
			continue
		}
		if _, err := a.GetRollout(ctx, fmt.Sprintf("%s-r%d", prefix, w)); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("losing rollout %d was stored: %v", w, err)
		}
	}

	// Phase 2: every worker walks every device through the same steps.
	steps := []struct{ from, to string }{
		{store.DevicePending, store.DeviceOffered},
		{store.DeviceOffered, store.DeviceDownloading},
		{store.DeviceDownloading, store.DeviceVerified},
		{store.DeviceVerified, store.DeviceInstalling},
		{store.DeviceInstalling, store.DeviceBooted},
	}
	wins := make(map[string][]int, devices) // device -> successes per step
	for _, id := range ids {
		wins[id] = make([]int, len(steps))
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := handle(w)
			for i := range ids {
				id := ids[(i+w*devices/workers)%devices] // workers start at different devices
				for s, step := range steps {
					err := st.SetRolloutDeviceState(ctx, rolloutID, id, step.to, fmt.Sprintf("worker %d", w), base.Add(time.Duration(s)*time.Minute), step.from)
					switch {
					case err == nil:
						mu.Lock()
						wins[id][s]++
						mu.Unlock()
					case !errors.Is(err, store.ErrConflict):
						fail(fmt.Errorf("SetRolloutDeviceState(%s, %s): %w", id, step.to, err))
					}
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d concurrent state changes failed unexpectedly; first: %v", len(errs), errs[0])
	}
	for _, id := range ids {
		for s, n := range wins[id] {
			if n != 1 {
				t.Errorf("device %s step %s -> %s succeeded %d times, want exactly once", id, steps[s].from, steps[s].to, n)
			}
		}
	}
	for _, st := range []store.Store{a, b} {
		counts, err := st.RolloutCounts(ctx, rolloutID)
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for _, c := range counts {
			if c.State != store.DeviceBooted {
				t.Errorf("after the workers: %d devices of stage %d are %s, want all booted", c.N, c.Stage, c.State)
			}
			total += c.N
		}
		if total != devices {
			t.Errorf("after the workers: %d members counted, want %d", total, devices)
		}
	}
}
