package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// secretEnrollment returns an unused secret enrollment; random bytes stand
// in for the keystore-sealed secret.
func secretEnrollment(id string) store.Enrollment {
	return store.Enrollment{
		DeviceID: id,
		Method:   store.EnrollSecret,
		Model:    "thermo-v2",
		Tags:     map[string]string{"site": "lyon", "line": "3"},
		Secret:   []byte("sealed-" + randHex(24)),
		Created:  base,
	}
}

// recoveryEnrollment returns an unused recovery enrollment: a secret
// enrollment without model or tags (the device keeps its own).
func recoveryEnrollment(id string) store.Enrollment {
	return store.Enrollment{
		DeviceID: id,
		Method:   store.EnrollSecret,
		Secret:   []byte("sealed-recovery-" + randHex(24)),
		Created:  base.Add(24 * time.Hour),
		Recovery: true,
	}
}

// claimEnrollment returns an unused enrollment on claim's allow-list.
func claimEnrollment(id, claim string) store.Enrollment {
	return store.Enrollment{DeviceID: id, Method: store.EnrollClaim, Claim: claim, Model: "gw-1", Created: base}
}

// claimCert returns a plausible claim certificate; the store does not parse
// certificates, so random bytes stand in for DER.
func claimCert(name string) store.ClaimCert {
	cert := []byte("claim-cert-" + randHex(32))
	sum := sha256.Sum256(cert)
	return store.ClaimCert{
		Name:        name,
		Serial:      randHex(16),
		Fingerprint: hex.EncodeToString(sum[:]),
		Certificate: cert,
		NotAfter:    base.Add(30 * 24 * time.Hour),
		CreatedAt:   base,
	}
}

func apiToken(id, role string, created time.Time) store.APIToken {
	sum := sha256.Sum256([]byte("secret-" + randHex(16)))
	return store.APIToken{ID: id, Hash: sum[:], Role: role, User: "alice", Note: "laptop", CreatedAt: created}
}

// caRotation returns a running rotation between two random issuers.
func caRotation(id string, created time.Time) store.Rotation {
	return store.Rotation{
		ID:         id,
		OldIssuer:  randHex(32),
		NewIssuer:  randHex(32),
		GraceUntil: created.Add(7 * 24 * time.Hour),
		State:      store.RotationRunning,
		CreatedAt:  created,
		UpdatedAt:  created,
	}
}

func claimUse(token, user, deviceID string, used time.Time) store.ClaimUse {
	return store.ClaimUse{TokenID: token, User: user, DeviceID: deviceID, ExpiresAt: used.Add(10 * time.Minute), UsedAt: used}
}

func mustAddEnrollments(t *testing.T, st store.Store, es ...store.Enrollment) {
	t.Helper()
	if err := st.AddEnrollments(context.Background(), es); err != nil {
		t.Fatalf("AddEnrollments: %v", err)
	}
}

func mustCreateClaimCert(t *testing.T, st store.Store, name string) store.ClaimCert {
	t.Helper()
	c := claimCert(name)
	if err := st.CreateClaimCert(context.Background(), c); err != nil {
		t.Fatalf("CreateClaimCert(%s): %v", name, err)
	}
	return c
}

func mustEnrollment(t *testing.T, st store.Store, id string) store.Enrollment {
	t.Helper()
	e, err := st.GetEnrollment(context.Background(), id)
	if err != nil {
		t.Fatalf("GetEnrollment(%s): %v", id, err)
	}
	return e
}

func checkEnrollment(t *testing.T, got, want store.Enrollment) {
	t.Helper()
	if want.Tags == nil {
		want.Tags = map[string]string{}
	}
	if got.DeviceID != want.DeviceID || got.Method != want.Method || got.Claim != want.Claim || got.Model != want.Model ||
		!maps.Equal(got.Tags, want.Tags) || got.Tags == nil || !bytes.Equal(got.Secret, want.Secret) ||
		!got.Created.Equal(norm(want.Created)) || !got.UsedAt.Equal(norm(want.UsedAt)) || got.Used() != want.Used() ||
		got.Serial != want.Serial || got.Recovery != want.Recovery ||
		got.Created.Location() != time.UTC || (got.Used() && got.UsedAt.Location() != time.UTC) {
		t.Errorf("enrollment mismatch:\n got %+v\nwant %+v (times normalised to UTC µs)", got, want)
	}
}

func checkClaimCert(t *testing.T, got, want store.ClaimCert) {
	t.Helper()
	if got.Name != want.Name || got.Serial != want.Serial || got.Fingerprint != want.Fingerprint ||
		!bytes.Equal(got.Certificate, want.Certificate) || !got.NotAfter.Equal(norm(want.NotAfter)) ||
		!got.CreatedAt.Equal(norm(want.CreatedAt)) || !got.RevokedAt.Equal(norm(want.RevokedAt)) ||
		got.Revoked() != want.Revoked() || got.Reason != want.Reason ||
		got.NotAfter.Location() != time.UTC || got.CreatedAt.Location() != time.UTC || (got.Revoked() && got.RevokedAt.Location() != time.UTC) {
		t.Errorf("claim certificate mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func checkAPIToken(t *testing.T, got, want store.APIToken) {
	t.Helper()
	if got.ID != want.ID || !bytes.Equal(got.Hash, want.Hash) || got.Role != want.Role || got.User != want.User ||
		got.Note != want.Note || !got.CreatedAt.Equal(norm(want.CreatedAt)) || !got.ExpiresAt.Equal(norm(want.ExpiresAt)) ||
		!got.LastUsedAt.Equal(norm(want.LastUsedAt)) || !got.RevokedAt.Equal(norm(want.RevokedAt)) || got.Revoked() != want.Revoked() ||
		got.ExpiresAt.IsZero() != want.ExpiresAt.IsZero() || got.LastUsedAt.IsZero() != want.LastUsedAt.IsZero() ||
		got.CreatedAt.Location() != time.UTC {
		t.Errorf("API token mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func checkRotation(t *testing.T, got, want store.Rotation) {
	t.Helper()
	if got.ID != want.ID || got.OldIssuer != want.OldIssuer || got.NewIssuer != want.NewIssuer ||
		!got.GraceUntil.Equal(norm(want.GraceUntil)) || got.State != want.State || got.Reason != want.Reason ||
		!got.CreatedAt.Equal(norm(want.CreatedAt)) || !got.UpdatedAt.Equal(norm(want.UpdatedAt)) ||
		got.GraceUntil.Location() != time.UTC || got.CreatedAt.Location() != time.UTC || got.UpdatedAt.Location() != time.UTC {
		t.Errorf("rotation mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func checkRotationDevice(t *testing.T, got, want store.RotationDevice) {
	t.Helper()
	if got.RotationID != want.RotationID || got.DeviceID != want.DeviceID || got.State != want.State ||
		got.Serial != want.Serial || got.Reason != want.Reason || !got.UpdatedAt.Equal(norm(want.UpdatedAt)) ||
		got.UpdatedAt.Location() != time.UTC {
		t.Errorf("rotation device mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func enrollmentIDs(es []store.Enrollment) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.DeviceID
	}
	return out
}

func rotationIDs(rs []store.Rotation) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

func rotationDeviceIDs(ds []store.RotationDevice) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.DeviceID
	}
	return out
}

// mustRotationDevice returns one device of a rotation.
func mustRotationDevice(t *testing.T, st store.Store, rotationID, deviceID string) store.RotationDevice {
	t.Helper()
	after := ""
	for {
		ds, err := st.RotationDevices(context.Background(), rotationID, "", after, store.MaxListLimit)
		if err != nil {
			t.Fatalf("RotationDevices(%s): %v", rotationID, err)
		}
		if len(ds) == 0 {
			t.Fatalf("device %s is not part of rotation %s", deviceID, rotationID)
		}
		for _, d := range ds {
			if d.DeviceID == deviceID {
				return d
			}
		}
		after = ds[len(ds)-1].DeviceID
	}
}

// enrollDevice is the device and credential a registry passes to Enroll:
// no model or tags (the store takes them from the enrollment).
func enrollDevice(id string, at time.Time) (store.Device, store.Credential) {
	d := store.Device{ID: id, State: store.StateActive, CreatedAt: at, UpdatedAt: at}
	return d, credential(identity.KindDevice, id, at)
}

// --- enrollments ---

func testAddAndGetEnrollments(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateClaimCert(t, st, "fleet")
	sec := secretEnrollment("dev-1")
	bare := secretEnrollment("dev-2")
	bare.Tags, bare.Model = nil, ""
	cl := claimEnrollment("dev-3", "fleet")
	cl.Tags = map[string]string{"empty": ""}
	if err := st.AddEnrollments(ctx, []store.Enrollment{sec, bare, cl}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []store.Enrollment{sec, bare, cl} {
		checkEnrollment(t, mustEnrollment(t, st, want.DeviceID), want)
	}
	if _, err := st.GetEnrollment(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetEnrollment(missing) = %v, want ErrNotFound", err)
	}
	// An empty batch stores nothing and is no error.
	if err := st.AddEnrollments(ctx, nil); err != nil {
		t.Errorf("AddEnrollments(nil) = %v", err)
	}
	if es, err := st.ListEnrollments(ctx, store.EnrollmentFilter{}); err != nil || len(es) != 3 {
		t.Errorf("ListEnrollments = %v, %v; want 3", enrollmentIDs(es), err)
	}
}

func testAddEnrollmentsConflicts(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustAddEnrollments(t, st, secretEnrollment("pre-1"))
	mustCreateDevice(t, st, device("dev-1"))
	sv := store.Service{Name: "svc-1", Role: identity.RoleReader, State: store.StateActive, CreatedAt: base}
	if err := st.CreateService(ctx, sv, credential(identity.KindService, "svc-1", base)); err != nil {
		t.Fatal(err)
	}
	revoked := mustCreateClaimCert(t, st, "old-fleet")
	if _, err := st.RevokeClaimCert(ctx, revoked.Name, "lost", base); err != nil {
		t.Fatal(err)
	}

	// Each batch has a valid first entry; the second one spoils the batch
	// and the first must not be stored either.
	for _, tc := range []struct {
		name string
		bad  store.Enrollment
		want error
	}{
		{"preregistered ID", secretEnrollment("pre-1"), store.ErrConflict},
		{"registered device", secretEnrollment("dev-1"), store.ErrConflict},
		{"service name", secretEnrollment("svc-1"), store.ErrConflict},
		{"unknown claim certificate", claimEnrollment("new-2", "ghost"), store.ErrNotFound},
		{"revoked claim certificate", claimEnrollment("new-2", "old-fleet"), store.ErrRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := st.AddEnrollments(ctx, []store.Enrollment{secretEnrollment("new-1"), tc.bad})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.bad.DeviceID) {
				t.Errorf("AddEnrollments(%s) = %v, want %v naming %s", tc.name, err, tc.want, tc.bad.DeviceID)
			}
			if _, err := st.GetEnrollment(ctx, "new-1"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("first enrollment of a refused batch was stored: %v", err)
			}
		})
	}
	// The stored enrollment is untouched, and the IDs are free for a
	// correct batch.
	if e := mustEnrollment(t, st, "pre-1"); e.Used() {
		t.Errorf("conflicting batch changed the stored enrollment: %+v", e)
	}
	mustAddEnrollments(t, st, secretEnrollment("new-1"), secretEnrollment("new-2"))
}

func testAddEnrollmentsRejectsBadInput(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateClaimCert(t, st, "fleet")
	for _, tc := range []struct {
		name   string
		mutate func(*store.Enrollment)
	}{
		{"empty ID", func(e *store.Enrollment) { e.DeviceID = "" }},
		{"ID with a slash", func(e *store.Enrollment) { e.DeviceID = "a/b" }},
		{"ID with a wildcard", func(e *store.Enrollment) { e.DeviceID = "a+" }},
		{"ID starting with a dash", func(e *store.Enrollment) { e.DeviceID = "-ab" }},
		{"ID of 65 characters", func(e *store.Enrollment) { e.DeviceID = strings.Repeat("a", 65) }},
		{"unknown method", func(e *store.Enrollment) { e.Method = "password" }},
		{"no method", func(e *store.Enrollment) { e.Method = "" }},
		{"secret method without secret", func(e *store.Enrollment) { e.Secret = nil }},
		{"secret method with a claim", func(e *store.Enrollment) { e.Claim = "fleet" }},
		{"claim method without claim", func(e *store.Enrollment) { e.Method, e.Secret = store.EnrollClaim, nil }},
		{"claim method with a secret", func(e *store.Enrollment) { e.Method, e.Claim = store.EnrollClaim, "fleet" }},
		{"already used", func(e *store.Enrollment) { e.UsedAt = base }},
		{"with a serial", func(e *store.Enrollment) { e.Serial = "0a" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := secretEnrollment("bad-1")
			tc.mutate(&e)
			if err := st.AddEnrollments(ctx, []store.Enrollment{e}); err == nil {
				t.Fatalf("AddEnrollments accepted %s", tc.name)
			}
			if es, err := st.ListEnrollments(ctx, store.EnrollmentFilter{}); err != nil || len(es) != 0 {
				t.Errorf("enrollments stored despite error: %v, %v", enrollmentIDs(es), err)
			}
		})
	}
	if err := st.AddEnrollments(ctx, []store.Enrollment{secretEnrollment("twice"), secretEnrollment("twice")}); err == nil {
		t.Error("AddEnrollments accepted an ID listed twice")
	}
	if _, err := st.GetEnrollment(ctx, "twice"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("enrollment stored despite error: %v", err)
	}
}

func testListEnrollments(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateClaimCert(t, st, "fleet-a")
	mustCreateClaimCert(t, st, "fleet-b")
	const n = 25
	var all, fleetA, unused []string
	var es []store.Enrollment
	for i := range n {
		id := fmt.Sprintf("e%02d", (i*7)%n) // added out of order
		var e store.Enrollment
		switch i % 3 {
		case 0:
			e = secretEnrollment(id)
		case 1:
			e = claimEnrollment(id, "fleet-a")
			fleetA = append(fleetA, id)
		default:
			e = claimEnrollment(id, "fleet-b")
		}
		es = append(es, e)
		all = append(all, id)
	}
	mustAddEnrollments(t, st, es...)
	// Every fourth ID (in ID order) enrolls.
	slices.Sort(all)
	slices.Sort(fleetA)
	for i, id := range all {
		if i%4 == 0 {
			d, c := enrollDevice(id, base)
			if _, err := st.Enroll(ctx, d, c, base.Add(time.Hour)); err != nil {
				t.Fatalf("Enroll(%s): %v", id, err)
			}
			continue
		}
		unused = append(unused, id)
	}
	var fleetAUnused []string
	for _, id := range fleetA {
		if slices.Contains(unused, id) {
			fleetAUnused = append(fleetAUnused, id)
		}
	}

	for _, tc := range []struct {
		name string
		f    store.EnrollmentFilter
		want []string
	}{
		{"all", store.EnrollmentFilter{}, all},
		{"claim", store.EnrollmentFilter{Claim: "fleet-a"}, fleetA},
		{"unused", store.EnrollmentFilter{Unused: true}, unused},
		{"claim and unused", store.EnrollmentFilter{Claim: "fleet-a", Unused: true}, fleetAUnused},
		{"unknown claim", store.EnrollmentFilter{Claim: "ghost"}, nil},
		{"cursor", store.EnrollmentFilter{After: all[20]}, all[21:]},
		{"cursor past the end", store.EnrollmentFilter{After: "zzz"}, nil},
		{"limit", store.EnrollmentFilter{Limit: 3}, all[:3]},
		{"oversized limit", store.EnrollmentFilter{Limit: store.MaxListLimit * 10}, all},
		{"injection attempt", store.EnrollmentFilter{Claim: "' OR 1=1 --"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			es, err := st.ListEnrollments(ctx, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if es == nil {
				t.Error("ListEnrollments returned nil, want a non-nil slice")
			}
			if got := enrollmentIDs(es); !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
				t.Errorf("ListEnrollments(%+v) = %v, want %v", tc.f, got, tc.want)
			}
		})
	}

	// Walk pages of 4 with the cursor.
	var walked []string
	f := store.EnrollmentFilter{Unused: true, Limit: 4}
	for page := 0; ; page++ {
		if page > n {
			t.Fatal("paging does not terminate")
		}
		es, err := st.ListEnrollments(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) > 4 {
			t.Fatalf("page of %d enrollments, limit 4", len(es))
		}
		if len(es) == 0 {
			break
		}
		walked = append(walked, enrollmentIDs(es)...)
		f.After = es[len(es)-1].DeviceID
	}
	if !slices.Equal(walked, unused) {
		t.Errorf("paged walk = %v\nwant %v", walked, unused)
	}
}

func testDeleteEnrollment(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustAddEnrollments(t, st, secretEnrollment("dev-1"), secretEnrollment("dev-2"))
	if err := st.DeleteEnrollment(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetEnrollment(ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetEnrollment(deleted) = %v, want ErrNotFound", err)
	}
	if err := st.DeleteEnrollment(ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteEnrollment(deleted) = %v, want ErrNotFound", err)
	}
	// A deleted enrollment can no longer be used, and the ID can be
	// preregistered again.
	d, c := enrollDevice("dev-1", base)
	if _, err := st.Enroll(ctx, d, c, base); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Enroll(deleted enrollment) = %v, want ErrNotFound", err)
	}
	mustAddEnrollments(t, st, secretEnrollment("dev-1"))

	d, c = enrollDevice("dev-2", base)
	if _, err := st.Enroll(ctx, d, c, base); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteEnrollment(ctx, "dev-2"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("DeleteEnrollment(used) = %v, want ErrConflict", err)
	}
	if e := mustEnrollment(t, st, "dev-2"); !e.Used() || e.Serial != c.Serial {
		t.Errorf("used enrollment changed by a refused delete: %+v", e)
	}
}

func testEnroll(t *testing.T, st store.Store) {
	ctx := context.Background()
	e := secretEnrollment("dev-1")
	mustAddEnrollments(t, st, e)

	// The caller's model and tags are ignored; the enrollment's are used.
	at := base.Add(time.Hour)
	d, c := enrollDevice("dev-1", at)
	d.Model, d.Tags = "forged", map[string]string{"site": "elsewhere", "admin": "yes"}
	got, err := st.Enroll(ctx, d, c, at)
	if err != nil {
		t.Fatal(err)
	}
	want := store.Device{ID: "dev-1", Model: e.Model, Tags: e.Tags, State: store.StateActive, CreatedAt: at, UpdatedAt: at}
	checkDevice(t, got, want)
	if again, err := st.GetDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	} else {
		checkDevice(t, again, want)
	}
	if cred, err := st.CredentialBySerial(ctx, c.Serial); err != nil {
		t.Fatal(err)
	} else {
		checkCredential(t, cred, c)
	}
	used := e
	used.UsedAt, used.Serial = at, c.Serial
	checkEnrollment(t, mustEnrollment(t, st, "dev-1"), used)
	if ds, err := st.ListDevices(ctx, store.DeviceFilter{Tags: map[string]string{"site": "lyon"}}); err != nil || !slices.Equal(ids(ds), []string{"dev-1"}) {
		t.Errorf("enrolled device not found by its enrollment's tags: %v, %v", ids(ds), err)
	}

	// A used enrollment cannot be used again, even with a new credential.
	d2, c2 := enrollDevice("dev-1", at.Add(time.Hour))
	if _, err := st.Enroll(ctx, d2, c2, at.Add(time.Hour)); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "dev-1") {
		t.Errorf("Enroll(used enrollment) = %v, want ErrConflict naming dev-1", err)
	}
	if _, err := st.CredentialBySerial(ctx, c2.Serial); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("credential of a refused Enroll stored: %v", err)
	}
	checkEnrollment(t, mustEnrollment(t, st, "dev-1"), used)

	// No enrollment.
	d3, c3 := enrollDevice("stranger", at)
	if _, err := st.Enroll(ctx, d3, c3, at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Enroll(not preregistered) = %v, want ErrNotFound", err)
	}
	if _, err := st.GetDevice(ctx, "stranger"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("device of a refused Enroll stored: %v", err)
	}

	// A disabled device may be enrolled; its owner is kept.
	mustAddEnrollments(t, st, secretEnrollment("dev-4"))
	d4, c4 := enrollDevice("dev-4", at)
	d4.State, d4.Owner = store.StateDisabled, "bob"
	if got, err := st.Enroll(ctx, d4, c4, at); err != nil || got.State != store.StateDisabled || got.Owner != "bob" {
		t.Errorf("Enroll(disabled, owned) = %+v, %v", got, err)
	}
}

// A failed Enroll stores nothing and leaves the enrollment unused, so the
// device can still enroll once the cause is gone.
func testEnrollConflicts(t *testing.T, st store.Store) {
	ctx := context.Background()
	at := base.Add(time.Hour)
	mustAddEnrollments(t, st, secretEnrollment("dev-1"), secretEnrollment("dev-2"), secretEnrollment("dev-3"))
	taken := mustCreateDevice(t, st, device("other"))

	// check that a failed Enroll of id with c left the enrollment unused
	// and stored no credential; want are the credentials id had before.
	check := func(t *testing.T, id string, c store.Credential, want ...string) {
		t.Helper()
		if e := mustEnrollment(t, st, id); e.Used() || e.Serial != "" {
			t.Errorf("enrollment of %s used by a failed Enroll: %+v", id, e)
		}
		if cs, err := st.Credentials(ctx, identity.KindDevice, id); err != nil || !slices.Equal(serials(cs), want) {
			t.Errorf("credentials of %s after a failed Enroll: %v, %v; want %v", id, serials(cs), err, want)
		}
		if c.Serial != taken.Serial {
			if _, err := st.CredentialBySerial(ctx, c.Serial); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("credential %s stored by a failed Enroll: %v", c.Serial, err)
			}
		}
	}

	// A device registered with the ID since it was preregistered.
	dev := device("dev-1")
	dev.Model = "manual"
	own := mustCreateDevice(t, st, dev)
	d, c := enrollDevice("dev-1", at)
	if _, err := st.Enroll(ctx, d, c, at); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Enroll(registered device) = %v, want ErrConflict", err)
	}
	check(t, "dev-1", c, own.Serial)
	if got, err := st.GetDevice(ctx, "dev-1"); err != nil || got.Model != "manual" {
		t.Errorf("failed Enroll changed the registered device: %+v, %v", got, err)
	}

	// A service with the name, created since: they would share a client ID.
	sv := store.Service{Name: "dev-2", Role: identity.RoleReader, State: store.StateActive, CreatedAt: base}
	if err := st.CreateService(ctx, sv, credential(identity.KindService, "dev-2", base)); err != nil {
		t.Fatal(err)
	}
	d, c = enrollDevice("dev-2", at)
	if _, err := st.Enroll(ctx, d, c, at); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Enroll(service name) = %v, want ErrConflict", err)
	}
	check(t, "dev-2", c)
	if _, err := st.GetDevice(ctx, "dev-2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("device stored by a failed Enroll: %v", err)
	}

	// A credential serial that exists: no device, no tags, enrollment unused.
	d, c = enrollDevice("dev-3", at)
	c.Serial = taken.Serial
	if _, err := st.Enroll(ctx, d, c, at); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), taken.Serial) {
		t.Errorf("Enroll(taken serial) = %v, want ErrConflict naming the serial", err)
	}
	check(t, "dev-3", c)
	if _, err := st.GetDevice(ctx, "dev-3"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("device stored by a failed Enroll: %v", err)
	}
	if ds, err := st.ListDevices(ctx, store.DeviceFilter{Tags: map[string]string{"site": "lyon"}}); err != nil || len(ds) != 0 {
		t.Errorf("tags stored by a failed Enroll: %v, %v", ids(ds), err)
	}
	// With a fresh serial the same enrollment works.
	d, c = enrollDevice("dev-3", at)
	if _, err := st.Enroll(ctx, d, c, at); err != nil {
		t.Fatalf("Enroll after a failed attempt: %v", err)
	}
}

func testEnrollRejectsBadInput(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustAddEnrollments(t, st, secretEnrollment("bad-1"))
	for _, tc := range []struct {
		name   string
		mutate func(*store.Device, *store.Credential, *time.Time)
	}{
		{"invalid ID", func(d *store.Device, c *store.Credential, _ *time.Time) { d.ID, c.SubjectID = "bad 1", "bad 1" }},
		{"revoked state", func(d *store.Device, _ *store.Credential, _ *time.Time) { d.State = store.StateRevoked }},
		{"unknown state", func(d *store.Device, _ *store.Credential, _ *time.Time) { d.State = "sleeping" }},
		{"credential for another device", func(_ *store.Device, c *store.Credential, _ *time.Time) { c.SubjectID = "other" }},
		{"credential for a service", func(_ *store.Device, c *store.Credential, _ *time.Time) { c.SubjectKind = identity.KindService }},
		{"uppercase serial", func(_ *store.Device, c *store.Credential, _ *time.Time) { c.Serial = strings.ToUpper(c.Serial) + "AB" }},
		{"no certificate", func(_ *store.Device, c *store.Credential, _ *time.Time) { c.Certificate = nil }},
		{"no enrollment time", func(_ *store.Device, _ *store.Credential, at *time.Time) { *at = time.Time{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, c := enrollDevice("bad-1", base)
			at := base
			tc.mutate(&d, &c, &at)
			if _, err := st.Enroll(ctx, d, c, at); err == nil {
				t.Fatalf("Enroll accepted %s", tc.name)
			}
			if _, err := st.GetDevice(ctx, "bad-1"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("device stored despite error: %v", err)
			}
			if e := mustEnrollment(t, st, "bad-1"); e.Used() {
				t.Errorf("enrollment used despite error: %+v", e)
			}
		})
	}
}

// --- recovery enrollments ---

// mustCredentials returns a device's credentials, newest first.
func mustCredentials(t *testing.T, st store.Store, id string) []store.Credential {
	t.Helper()
	cs, err := st.Credentials(context.Background(), identity.KindDevice, id)
	if err != nil {
		t.Fatalf("Credentials(%s): %v", id, err)
	}
	return cs
}

// unrevoked returns the serials of the credentials that are not revoked.
func unrevoked(cs []store.Credential) []string {
	var out []string
	for _, c := range cs {
		if !c.Revoked() {
			out = append(out, c.Serial)
		}
	}
	return out
}

func testAddRecoveryEnrollments(t *testing.T, st store.Store) {
	ctx := context.Background()
	at := base.Add(time.Hour)

	// A device that enrolled: its used enrollment is replaced, and the new
	// one is unused, a recovery one, with the new secret.
	mustAddEnrollments(t, st, secretEnrollment("enrolled"))
	d, c := enrollDevice("enrolled", at)
	if _, err := st.Enroll(ctx, d, c, at); err != nil {
		t.Fatal(err)
	}
	rec := recoveryEnrollment("enrolled")
	mustAddEnrollments(t, st, rec)
	checkEnrollment(t, mustEnrollment(t, st, "enrolled"), rec)

	// An unused recovery enrollment is replaced by the next one: only the
	// newest secret works.
	again := recoveryEnrollment("enrolled")
	again.Created = rec.Created.Add(time.Hour)
	mustAddEnrollments(t, st, again)
	checkEnrollment(t, mustEnrollment(t, st, "enrolled"), again)

	// A device registered without enrolling (no enrollment at all), one
	// registered after it was preregistered (an unused first enrollment),
	// a disabled one (Recover refuses it until it is enabled) and a device
	// enrolled with a claim certificate: all may be armed, in one batch.
	mustCreateDevice(t, st, device("manual"))
	mustAddEnrollments(t, st, secretEnrollment("pre"))
	mustCreateDevice(t, st, device("pre"))
	mustCreateDevice(t, st, device("off"))
	if _, err := st.SetDeviceState(ctx, "off", store.StateDisabled, "maintenance", at); err != nil {
		t.Fatal(err)
	}
	mustCreateClaimCert(t, st, "fleet")
	mustAddEnrollments(t, st, claimEnrollment("claimed", "fleet"))
	d, c = enrollDevice("claimed", at)
	if _, err := st.Enroll(ctx, d, c, at); err != nil {
		t.Fatal(err)
	}
	batch := []store.Enrollment{recoveryEnrollment("manual"), recoveryEnrollment("pre"), recoveryEnrollment("off"), recoveryEnrollment("claimed")}
	mustAddEnrollments(t, st, batch...)
	for _, want := range batch {
		checkEnrollment(t, mustEnrollment(t, st, want.DeviceID), want)
	}
	if es, err := st.ListEnrollments(ctx, store.EnrollmentFilter{Claim: "fleet"}); err != nil || len(es) != 0 {
		t.Errorf("claim allow-list still names the recovered device: %v, %v", enrollmentIDs(es), err)
	}
	if es, err := st.ListEnrollments(ctx, store.EnrollmentFilter{Unused: true}); err != nil ||
		!slices.Equal(enrollmentIDs(es), []string{"claimed", "enrolled", "manual", "off", "pre"}) {
		t.Errorf("unused enrollments = %v, %v; want every armed recovery", enrollmentIDs(es), err)
	}

	// A first enrollment for a registered device stays refused.
	if err := st.AddEnrollments(ctx, []store.Enrollment{secretEnrollment("enrolled")}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("AddEnrollments(first enrollment of a registered device) = %v, want ErrConflict", err)
	}
	checkEnrollment(t, mustEnrollment(t, st, "enrolled"), again)
}

func testAddRecoveryEnrollmentsRefusals(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("gone"))
	if _, _, err := st.RevokeDevice(ctx, "gone", "stolen", base); err != nil {
		t.Fatal(err)
	}
	mustCreateDevice(t, st, device("live"))
	mustCreateClaimCert(t, st, "fleet")
	byClaim := claimEnrollment("live", "fleet")
	byClaim.Recovery = true

	// Each batch has a valid first entry (a recovery of live); the second
	// spoils the batch, and the first must not be stored either.
	for _, tc := range []struct {
		name string
		bad  store.Enrollment
		want error
	}{
		{"unknown device", recoveryEnrollment("stranger"), store.ErrNotFound},
		{"revoked device", recoveryEnrollment("gone"), store.ErrRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := st.AddEnrollments(ctx, []store.Enrollment{recoveryEnrollment("live"), tc.bad})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.bad.DeviceID) {
				t.Errorf("AddEnrollments(%s) = %v, want %v naming %s", tc.name, err, tc.want, tc.bad.DeviceID)
			}
			if _, err := st.GetEnrollment(ctx, "live"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("first enrollment of a refused batch was stored: %v", err)
			}
			if _, err := st.GetEnrollment(ctx, tc.bad.DeviceID); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("refused recovery enrollment was stored: %v", err)
			}
		})
	}
	// A claim certificate can never recover a device: its holder is a
	// factory line, not the device's operator.
	if err := st.AddEnrollments(ctx, []store.Enrollment{byClaim}); err == nil {
		t.Error("AddEnrollments accepted a recovery enrollment by claim certificate")
	}
	// A refused recovery in a batch leaves the replaced enrollment as it
	// was.
	mustAddEnrollments(t, st, secretEnrollment("armed"))
	d, c := enrollDevice("armed", base)
	if _, err := st.Enroll(ctx, d, c, base); err != nil {
		t.Fatal(err)
	}
	first := mustEnrollment(t, st, "armed")
	if err := st.AddEnrollments(ctx, []store.Enrollment{recoveryEnrollment("armed"), recoveryEnrollment("gone")}); !errors.Is(err, store.ErrRevoked) {
		t.Fatalf("AddEnrollments(batch with a revoked device) = %v, want ErrRevoked", err)
	}
	checkEnrollment(t, mustEnrollment(t, st, "armed"), first)
	if e := mustEnrollment(t, st, "armed"); e.Recovery || !e.Used() {
		t.Errorf("refused batch replaced the used enrollment: %+v", e)
	}
}

func testRecover(t *testing.T, st store.Store) {
	ctx := context.Background()
	at := base.Add(time.Hour)
	e := secretEnrollment("dev-1")
	mustAddEnrollments(t, st, e)
	d, c0 := enrollDevice("dev-1", at)
	if _, err := st.Enroll(ctx, d, c0, at); err != nil {
		t.Fatal(err)
	}
	enrolled, err := st.Claim(ctx, claimUse("jti-1", "alice", "dev-1", at))
	if err != nil || enrolled.Owner != "alice" {
		t.Fatalf("Claim = %+v, %v", enrolled, err)
	}
	// A renewal, and a credential revoked on its own earlier: its
	// revocation must keep its own reason and time.
	c1 := credential(identity.KindDevice, "dev-1", at.Add(time.Hour))
	if err := st.AddCredential(ctx, c1); err != nil {
		t.Fatal(err)
	}
	old := credential(identity.KindDevice, "dev-1", at.Add(2*time.Hour))
	old.RevokedAt, old.RevocationReason = at.Add(2*time.Hour), "lost"
	if err := st.AddCredential(ctx, old); err != nil {
		t.Fatal(err)
	}
	// Another device's credentials are untouched.
	other := mustCreateDevice(t, st, device("dev-2"))

	rec := recoveryEnrollment("dev-1")
	mustAddEnrollments(t, st, rec)

	// The first-enrollment path refuses a recovery enrollment and stores
	// nothing.
	d, cx := enrollDevice("dev-1", at)
	if _, err := st.Enroll(ctx, d, cx, at); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Enroll(recovery enrollment) = %v, want ErrConflict", err)
	}
	if _, err := st.CredentialBySerial(ctx, cx.Serial); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("credential of a refused Enroll stored: %v", err)
	}
	checkEnrollment(t, mustEnrollment(t, st, "dev-1"), rec)

	rat := at.Add(30 * 24 * time.Hour)
	c2 := credential(identity.KindDevice, "dev-1", rat)
	got, err := st.Recover(ctx, "dev-1", c2, rat)
	if err != nil {
		t.Fatal(err)
	}
	// The device is the same device: model, tags, owner, state and times.
	checkDevice(t, got, enrolled)
	if again, err := st.GetDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	} else {
		checkDevice(t, again, enrolled)
	}
	// Every earlier credential is revoked; only the new one is not.
	cs := mustCredentials(t, st, "dev-1")
	if u := unrevoked(cs); !slices.Equal(u, []string{c2.Serial}) {
		t.Errorf("unrevoked credentials after Recover = %v, want only %s", u, c2.Serial)
	}
	for _, want := range []store.Credential{c0, c1} {
		want.RevokedAt, want.RevocationReason = rat, store.RecoveryRevocationReason
		got, err := st.CredentialBySerial(ctx, want.Serial)
		if err != nil {
			t.Fatal(err)
		}
		checkCredential(t, got, want)
	}
	if got, err := st.CredentialBySerial(ctx, old.Serial); err != nil {
		t.Fatal(err)
	} else {
		checkCredential(t, got, old)
	}
	if got, err := st.CredentialBySerial(ctx, c2.Serial); err != nil {
		t.Fatal(err)
	} else {
		checkCredential(t, got, c2)
	}
	if got, err := st.CredentialBySerial(ctx, other.Serial); err != nil || got.Revoked() {
		t.Errorf("another device's credential after Recover: %+v, %v", got, err)
	}
	if rs, err := st.RevokedCredentials(ctx); err != nil || !slices.Contains(serials(rs), c0.Serial) || !slices.Contains(serials(rs), c1.Serial) {
		t.Errorf("RevokedCredentials after Recover = %v, %v; want %s and %s listed", serials(rs), err, c0.Serial, c1.Serial)
	}
	used := rec
	used.UsedAt, used.Serial = rat, c2.Serial
	checkEnrollment(t, mustEnrollment(t, st, "dev-1"), used)

	// Single use: a second Recover, even with a fresh credential, is
	// refused and changes nothing.
	c3 := credential(identity.KindDevice, "dev-1", rat.Add(time.Hour))
	if _, err := st.Recover(ctx, "dev-1", c3, rat.Add(time.Hour)); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "dev-1") {
		t.Errorf("Recover(used recovery enrollment) = %v, want ErrConflict naming dev-1", err)
	}
	if _, err := st.CredentialBySerial(ctx, c3.Serial); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("credential of a refused Recover stored: %v", err)
	}
	if u := unrevoked(mustCredentials(t, st, "dev-1")); !slices.Equal(u, []string{c2.Serial}) {
		t.Errorf("unrevoked credentials after a refused Recover = %v, want only %s", u, c2.Serial)
	}
	checkEnrollment(t, mustEnrollment(t, st, "dev-1"), used)
	// A used recovery enrollment stays as history, like a used first one.
	if err := st.DeleteEnrollment(ctx, "dev-1"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("DeleteEnrollment(used recovery) = %v, want ErrConflict", err)
	}

	// The device can be armed and recover again.
	rec2 := recoveryEnrollment("dev-1")
	mustAddEnrollments(t, st, rec2)
	c4 := credential(identity.KindDevice, "dev-1", rat.Add(2*time.Hour))
	if _, err := st.Recover(ctx, "dev-1", c4, rat.Add(2*time.Hour)); err != nil {
		t.Fatalf("second recovery: %v", err)
	}
	if u := unrevoked(mustCredentials(t, st, "dev-1")); !slices.Equal(u, []string{c4.Serial}) {
		t.Errorf("unrevoked credentials after the second recovery = %v, want only %s", u, c4.Serial)
	}

	// An unused recovery enrollment can be withdrawn.
	mustAddEnrollments(t, st, recoveryEnrollment("dev-2"))
	if err := st.DeleteEnrollment(ctx, "dev-2"); err != nil {
		t.Errorf("DeleteEnrollment(unused recovery) = %v", err)
	}
	c5 := credential(identity.KindDevice, "dev-2", rat)
	if _, err := st.Recover(ctx, "dev-2", c5, rat); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Recover(withdrawn recovery) = %v, want ErrNotFound", err)
	}
	if u := unrevoked(mustCredentials(t, st, "dev-2")); !slices.Equal(u, []string{other.Serial}) {
		t.Errorf("credentials of dev-2 after a refused Recover = %v", u)
	}
}

// A refused Recover stores nothing, revokes nothing and leaves the
// enrollment unused, so the device can still recover once the cause is
// gone.
func testRecoverConflicts(t *testing.T, st store.Store) {
	ctx := context.Background()
	at := base.Add(time.Hour)
	taken := mustCreateDevice(t, st, device("other"))

	// check that a refused Recover of id with c stored nothing: id's
	// credentials are still want, unrevoked, and its enrollment is as it
	// was.
	check := func(t *testing.T, id string, c store.Credential, want []string, e store.Enrollment) {
		t.Helper()
		if cs := mustCredentials(t, st, id); !slices.Equal(unrevoked(cs), want) || len(cs) != len(want) {
			t.Errorf("credentials of %s after a refused Recover: %v (unrevoked %v), want %v unrevoked", id, serials(cs), unrevoked(cs), want)
		}
		if c.Serial != taken.Serial {
			if _, err := st.CredentialBySerial(ctx, c.Serial); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("credential %s stored by a refused Recover: %v", c.Serial, err)
			}
		}
		checkEnrollment(t, mustEnrollment(t, st, id), e)
	}

	// No enrollment at all.
	first := mustCreateDevice(t, st, device("plain"))
	c := credential(identity.KindDevice, "plain", at)
	if _, err := st.Recover(ctx, "plain", c, at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Recover(no enrollment) = %v, want ErrNotFound", err)
	}
	if cs := mustCredentials(t, st, "plain"); !slices.Equal(unrevoked(cs), []string{first.Serial}) {
		t.Errorf("credentials after a refused Recover: %v", serials(cs))
	}

	// A first enrollment, unused or used, is not a recovery one.
	mustAddEnrollments(t, st, secretEnrollment("new"))
	c = credential(identity.KindDevice, "new", at)
	if _, err := st.Recover(ctx, "new", c, at); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Recover(unused first enrollment, no device) = %v, want ErrConflict", err)
	}
	if _, err := st.GetDevice(ctx, "new"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("device stored by a refused Recover: %v", err)
	}
	d, c0 := enrollDevice("new", at)
	if _, err := st.Enroll(ctx, d, c0, at); err != nil {
		t.Fatal(err)
	}
	c = credential(identity.KindDevice, "new", at)
	if _, err := st.Recover(ctx, "new", c, at); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Recover(used first enrollment) = %v, want ErrConflict", err)
	}
	check(t, "new", c, []string{c0.Serial}, mustEnrollment(t, st, "new"))

	// A disabled device: refused until it is enabled.
	c1 := mustCreateDevice(t, st, device("off"))
	rec := recoveryEnrollment("off")
	mustAddEnrollments(t, st, rec)
	if _, err := st.SetDeviceState(ctx, "off", store.StateDisabled, "maintenance", at); err != nil {
		t.Fatal(err)
	}
	c = credential(identity.KindDevice, "off", at)
	if _, err := st.Recover(ctx, "off", c, at); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "disabled") {
		t.Errorf("Recover(disabled device) = %v, want ErrConflict saying it is disabled", err)
	}
	check(t, "off", c, []string{c1.Serial}, rec)
	if _, err := st.SetDeviceState(ctx, "off", store.StateActive, "", at); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recover(ctx, "off", c, at); err != nil {
		t.Errorf("Recover after enabling the device: %v", err)
	}

	// A device revoked after it was armed.
	c2 := mustCreateDevice(t, st, device("gone"))
	rec = recoveryEnrollment("gone")
	mustAddEnrollments(t, st, rec)
	if _, _, err := st.RevokeDevice(ctx, "gone", "stolen", at); err != nil {
		t.Fatal(err)
	}
	c = credential(identity.KindDevice, "gone", at)
	if _, err := st.Recover(ctx, "gone", c, at.Add(time.Hour)); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("Recover(revoked device) = %v, want ErrRevoked", err)
	}
	if cs := mustCredentials(t, st, "gone"); len(cs) != 1 || cs[0].Serial != c2.Serial || cs[0].RevocationReason != "stolen" {
		t.Errorf("credentials of a revoked device after a refused Recover: %+v", cs)
	}
	checkEnrollment(t, mustEnrollment(t, st, "gone"), rec)

	// A credential serial that exists: nothing revoked, enrollment unused.
	c3 := mustCreateDevice(t, st, device("dup"))
	rec = recoveryEnrollment("dup")
	mustAddEnrollments(t, st, rec)
	c = credential(identity.KindDevice, "dup", at)
	c.Serial = taken.Serial
	if _, err := st.Recover(ctx, "dup", c, at); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), taken.Serial) {
		t.Errorf("Recover(taken serial) = %v, want ErrConflict naming the serial", err)
	}
	check(t, "dup", c, []string{c3.Serial}, rec)
	if got, err := st.CredentialBySerial(ctx, taken.Serial); err != nil || got.SubjectID != "other" || got.Revoked() {
		t.Errorf("credential with the taken serial: %+v, %v", got, err)
	}
	// With a fresh serial the same enrollment works.
	c = credential(identity.KindDevice, "dup", at)
	if _, err := st.Recover(ctx, "dup", c, at); err != nil {
		t.Fatalf("Recover after a refused attempt: %v", err)
	}
}

func testRecoverRejectsBadInput(t *testing.T, st store.Store) {
	ctx := context.Background()
	first := mustCreateDevice(t, st, device("bad-1"))
	rec := recoveryEnrollment("bad-1")
	mustAddEnrollments(t, st, rec)
	for _, tc := range []struct {
		name   string
		mutate func(id *string, c *store.Credential, at *time.Time)
	}{
		{"invalid ID", func(id *string, c *store.Credential, _ *time.Time) { *id, c.SubjectID = "bad 1", "bad 1" }},
		{"credential for another device", func(_ *string, c *store.Credential, _ *time.Time) { c.SubjectID = "other" }},
		{"credential for a service", func(_ *string, c *store.Credential, _ *time.Time) { c.SubjectKind = identity.KindService }},
		{"revoked credential", func(_ *string, c *store.Credential, _ *time.Time) { c.RevokedAt, c.RevocationReason = base, "x" }},
		{"uppercase serial", func(_ *string, c *store.Credential, _ *time.Time) { c.Serial = strings.ToUpper(c.Serial) + "AB" }},
		{"no certificate", func(_ *string, c *store.Credential, _ *time.Time) { c.Certificate = nil }},
		{"no recovery time", func(_ *string, _ *store.Credential, at *time.Time) { *at = time.Time{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, at := "bad-1", base.Add(time.Hour)
			c := credential(identity.KindDevice, id, at)
			tc.mutate(&id, &c, &at)
			if _, err := st.Recover(ctx, id, c, at); err == nil {
				t.Fatalf("Recover accepted %s", tc.name)
			}
			if cs := mustCredentials(t, st, "bad-1"); !slices.Equal(serials(cs), []string{first.Serial}) || cs[0].Revoked() {
				t.Errorf("credentials changed despite error: %+v", cs)
			}
			checkEnrollment(t, mustEnrollment(t, st, "bad-1"), rec)
		})
	}
}

// --- claim certificates ---

func testClaimCerts(t *testing.T, st store.Store) {
	ctx := context.Background()
	if cs, err := st.ListClaimCerts(ctx); err != nil || cs == nil || len(cs) != 0 {
		t.Fatalf("ListClaimCerts(empty store) = %v, %v; want an empty, non-nil slice", cs, err)
	}
	var want []store.ClaimCert
	for _, name := range []string{"zeta", "alpha", "mid"} {
		c := mustCreateClaimCert(t, st, name)
		got, err := st.GetClaimCert(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		checkClaimCert(t, got, c)
		want = append(want, c)
	}
	got, err := st.ClaimCertBySerial(ctx, strings.ToUpper(want[1].Serial))
	if err != nil {
		t.Fatalf("ClaimCertBySerial(uppercase): %v", err)
	}
	checkClaimCert(t, got, want[1])
	slices.SortFunc(want, func(a, b store.ClaimCert) int { return strings.Compare(a.Name, b.Name) })
	cs, err := st.ListClaimCerts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != len(want) {
		t.Fatalf("ListClaimCerts = %d certificates, want %d", len(cs), len(want))
	}
	for i := range cs {
		checkClaimCert(t, cs[i], want[i])
	}

	dupName := claimCert("alpha")
	if err := st.CreateClaimCert(ctx, dupName); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "alpha") {
		t.Errorf("CreateClaimCert(duplicate name) = %v, want ErrConflict naming alpha", err)
	}
	dupSerial := claimCert("beta")
	dupSerial.Serial = want[0].Serial
	if err := st.CreateClaimCert(ctx, dupSerial); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CreateClaimCert(duplicate serial) = %v, want ErrConflict", err)
	}
	if _, err := st.GetClaimCert(ctx, "beta"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("claim certificate stored despite a conflict: %v", err)
	}
	// A device credential's serial is another namespace.
	dc := mustCreateDevice(t, st, device("dev-1"))
	other := claimCert("gamma")
	other.Serial = dc.Serial
	if err := st.CreateClaimCert(ctx, other); err != nil {
		t.Errorf("CreateClaimCert(serial of a device credential) = %v", err)
	}
	if _, err := st.GetClaimCert(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetClaimCert(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.ClaimCertBySerial(ctx, "00"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ClaimCertBySerial(missing) = %v, want ErrNotFound", err)
	}
}

func testCreateClaimCertRejectsBadInput(t *testing.T, st store.Store) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		mutate func(*store.ClaimCert)
	}{
		{"empty name", func(c *store.ClaimCert) { c.Name = "" }},
		{"name with a slash", func(c *store.ClaimCert) { c.Name = "a/b" }},
		{"uppercase serial", func(c *store.ClaimCert) { c.Serial = strings.ToUpper(c.Serial) + "AB" }},
		{"empty serial", func(c *store.ClaimCert) { c.Serial = "" }},
		{"short fingerprint", func(c *store.ClaimCert) { c.Fingerprint = "abcd" }},
		{"fingerprint of another certificate", func(c *store.ClaimCert) { c.Fingerprint = randHex(32) }},
		{"no certificate", func(c *store.ClaimCert) { c.Certificate = nil }},
		{"revoked", func(c *store.ClaimCert) { c.RevokedAt = base }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := claimCert("bad")
			tc.mutate(&c)
			if err := st.CreateClaimCert(ctx, c); err == nil {
				t.Fatalf("CreateClaimCert accepted %s", tc.name)
			}
			if cs, err := st.ListClaimCerts(ctx); err != nil || len(cs) != 0 {
				t.Errorf("claim certificate stored despite error: %v, %v", cs, err)
			}
		})
	}
}

func testRevokeClaimCert(t *testing.T, st store.Store) {
	ctx := context.Background()
	c := mustCreateClaimCert(t, st, "fleet")
	mustCreateClaimCert(t, st, "other")
	mustAddEnrollments(t, st, claimEnrollment("c-1", "fleet"), claimEnrollment("c-2", "fleet"), claimEnrollment("c-3", "fleet"),
		claimEnrollment("o-1", "other"), secretEnrollment("s-1"))
	d, cred := enrollDevice("c-2", base)
	if _, err := st.Enroll(ctx, d, cred, base); err != nil {
		t.Fatal(err)
	}

	at := base.Add(time.Hour)
	got, err := st.RevokeClaimCert(ctx, "fleet", "leaked", at)
	if err != nil {
		t.Fatal(err)
	}
	want := c
	want.RevokedAt, want.Reason = at, "leaked"
	checkClaimCert(t, got, want)
	if again, err := st.GetClaimCert(ctx, "fleet"); err != nil {
		t.Fatal(err)
	} else {
		checkClaimCert(t, again, want)
	}
	// Unused enrollments of its allow-list are gone; the used one stays as
	// history; other enrollments are untouched.
	es, err := st.ListEnrollments(ctx, store.EnrollmentFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if got := enrollmentIDs(es); !slices.Equal(got, []string{"c-2", "o-1", "s-1"}) {
		t.Errorf("enrollments after revocation = %v, want [c-2 o-1 s-1]", got)
	}
	if e := mustEnrollment(t, st, "c-2"); !e.Used() || e.Claim != "fleet" {
		t.Errorf("used enrollment after revocation: %+v", e)
	}
	d, cred = enrollDevice("c-1", at)
	if _, err := st.Enroll(ctx, d, cred, at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Enroll(allow-list of a revoked claim certificate) = %v, want ErrNotFound", err)
	}
	if err := st.AddEnrollments(ctx, []store.Enrollment{claimEnrollment("c-4", "fleet")}); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("AddEnrollments(revoked claim certificate) = %v, want ErrRevoked", err)
	}

	// Idempotent: the first time and reason stand.
	got, err = st.RevokeClaimCert(ctx, "fleet", "again", at.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	checkClaimCert(t, got, want)
	if _, err := st.RevokeClaimCert(ctx, "ghost", "x", at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeClaimCert(missing) = %v, want ErrNotFound", err)
	}
	if o, err := st.GetClaimCert(ctx, "other"); err != nil || o.Revoked() {
		t.Errorf("other claim certificate: %+v, %v", o, err)
	}
}

// --- claims and owners ---

func testClaim(t *testing.T, st store.Store) {
	ctx := context.Background()
	d := device("dev-1")
	d.Tags = map[string]string{"k": "v"}
	mustCreateDevice(t, st, d)

	at := base.Add(time.Hour)
	got, err := st.Claim(ctx, claimUse("jti-1", "alice", "dev-1", at))
	if err != nil {
		t.Fatal(err)
	}
	want := d
	want.Owner, want.UpdatedAt = "alice", at
	checkDevice(t, got, want)
	if again, err := st.GetDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	} else {
		checkDevice(t, again, want)
	}

	// A replay is refused, whoever presents the token and for whichever
	// device.
	mustCreateDevice(t, st, device("dev-2"))
	for _, u := range []store.ClaimUse{
		claimUse("jti-1", "alice", "dev-1", at.Add(time.Minute)),
		claimUse("jti-1", "mallory", "dev-2", at.Add(time.Minute)),
	} {
		if _, err := st.Claim(ctx, u); !errors.Is(err, store.ErrConflict) {
			t.Errorf("Claim(replayed token, %s, %s) = %v, want ErrConflict", u.User, u.DeviceID, err)
		}
	}
	if got, err := st.GetDevice(ctx, "dev-2"); err != nil || got.Owner != "" {
		t.Errorf("replayed token claimed a device: %+v, %v", got, err)
	}

	// The same user again with a new token: recorded, owner unchanged.
	at2 := at.Add(time.Hour)
	if got, err := st.Claim(ctx, claimUse("jti-2", "alice", "dev-1", at2)); err != nil || got.Owner != "alice" {
		t.Errorf("Claim(same user) = %+v, %v", got, err)
	}
	if _, err := st.Claim(ctx, claimUse("jti-2", "alice", "dev-1", at2)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Claim(replay of the same user's token) = %v, want ErrConflict", err)
	}

	// Another user: refused, and the refused token is not used up (the
	// claim is one transaction), so it works once the owner is cleared.
	if _, err := st.Claim(ctx, claimUse("jti-3", "bob", "dev-1", at2)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Claim(owned by another user) = %v, want ErrConflict", err)
	}
	if got, err := st.GetDevice(ctx, "dev-1"); err != nil || got.Owner != "alice" {
		t.Errorf("refused claim changed the owner: %+v, %v", got, err)
	}
	if _, err := st.SetDeviceOwner(ctx, "dev-1", "", at2); err != nil {
		t.Fatal(err)
	}
	if got, err := st.Claim(ctx, claimUse("jti-3", "bob", "dev-1", at2)); err != nil || got.Owner != "bob" {
		t.Errorf("Claim after the owner was cleared = %+v, %v", got, err)
	}

	if _, err := st.Claim(ctx, claimUse("jti-4", "alice", "missing", at2)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Claim(missing device) = %v, want ErrNotFound", err)
	}
	if _, _, err := st.RevokeDevice(ctx, "dev-2", "stolen", at2); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Claim(ctx, claimUse("jti-5", "alice", "dev-2", at2)); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("Claim(revoked device) = %v, want ErrRevoked", err)
	}
	// Neither refusal used its token up.
	mustCreateDevice(t, st, device("dev-3"))
	for _, token := range []string{"jti-4", "jti-5"} {
		if _, err := st.Claim(ctx, claimUse(token, "carol", "dev-3", at2)); err != nil {
			t.Errorf("Claim(%s after a refusal) = %v", token, err)
		}
	}
}

func testClaimRejectsBadInput(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	for _, tc := range []struct {
		name   string
		mutate func(*store.ClaimUse)
	}{
		{"empty token ID", func(u *store.ClaimUse) { u.TokenID = "" }},
		{"empty user", func(u *store.ClaimUse) { u.User = "" }},
		{"empty device ID", func(u *store.ClaimUse) { u.DeviceID = "" }},
		{"invalid device ID", func(u *store.ClaimUse) { u.DeviceID = "dev-1/#" }},
		{"no expiry", func(u *store.ClaimUse) { u.ExpiresAt = time.Time{} }},
		{"no use time", func(u *store.ClaimUse) { u.UsedAt = time.Time{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := claimUse("jti-"+randHex(4), "alice", "dev-1", base)
			tc.mutate(&u)
			if _, err := st.Claim(ctx, u); err == nil {
				t.Fatalf("Claim accepted %s", tc.name)
			}
			if got, err := st.GetDevice(ctx, "dev-1"); err != nil || got.Owner != "" {
				t.Errorf("owner set despite error: %+v, %v", got, err)
			}
		})
	}
}

func testPurgeClaimUses(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	var tokens []string
	for i := range 4 {
		u := claimUse(fmt.Sprintf("jti-%d", i), "alice", "dev-1", base)
		u.ExpiresAt = base.Add(time.Duration(i+1) * time.Minute)
		if _, err := st.Claim(ctx, u); err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, u.TokenID)
	}
	if n, err := st.PurgeClaimUses(ctx, base); err != nil || n != 0 {
		t.Errorf("PurgeClaimUses(before any expiry) = %d, %v; want 0", n, err)
	}
	// Strictly before: the token expiring at the cut-off stays.
	if n, err := st.PurgeClaimUses(ctx, base.Add(2*time.Minute)); err != nil || n != 1 {
		t.Errorf("PurgeClaimUses(after the first expiry) = %d, %v; want 1", n, err)
	}
	if n, err := st.PurgeClaimUses(ctx, base.Add(2*time.Minute)); err != nil || n != 0 {
		t.Errorf("PurgeClaimUses again = %d, %v; want 0", n, err)
	}
	// Unexpired uses still refuse a replay; the purged one is forgotten.
	for _, token := range tokens[1:] {
		if _, err := st.Claim(ctx, claimUse(token, "alice", "dev-1", base)); !errors.Is(err, store.ErrConflict) {
			t.Errorf("Claim(replay of unpurged %s) = %v, want ErrConflict", token, err)
		}
	}
	if _, err := st.Claim(ctx, claimUse(tokens[0], "alice", "dev-1", base)); err != nil {
		t.Errorf("Claim(purged %s) = %v: the use should have been deleted", tokens[0], err)
	}
	if n, err := st.PurgeClaimUses(ctx, base.Add(time.Hour)); err != nil || n != 4 {
		t.Errorf("PurgeClaimUses(after every expiry) = %d, %v; want 4", n, err)
	}
}

func testSetDeviceOwner(t *testing.T, st store.Store) {
	ctx := context.Background()
	d := device("dev-1")
	d.Tags = map[string]string{"k": "v"}
	mustCreateDevice(t, st, d)
	at := base.Add(time.Hour)
	got, err := st.SetDeviceOwner(ctx, "dev-1", "alice", at)
	if err != nil {
		t.Fatal(err)
	}
	want := d
	want.Owner, want.UpdatedAt = "alice", at
	checkDevice(t, got, want)
	at = at.Add(time.Hour)
	if got, err = st.SetDeviceOwner(ctx, "dev-1", "", at); err != nil {
		t.Fatal(err)
	}
	want.Owner, want.UpdatedAt = "", at
	checkDevice(t, got, want)
	if again, err := st.GetDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	} else {
		checkDevice(t, again, want)
	}
	if _, err := st.SetDeviceOwner(ctx, "missing", "alice", at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetDeviceOwner(missing) = %v, want ErrNotFound", err)
	}
	if _, _, err := st.RevokeDevice(ctx, "dev-1", "stolen", at); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SetDeviceOwner(ctx, "dev-1", "mallory", at.Add(time.Hour)); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("SetDeviceOwner(revoked) = %v, want ErrRevoked", err)
	}
	if got, err := st.GetDevice(ctx, "dev-1"); err != nil || got.Owner != "" {
		t.Errorf("revoked device's owner changed: %+v, %v", got, err)
	}
}

// --- API tokens ---

func testAPITokens(t *testing.T, st store.Store) {
	ctx := context.Background()
	if ts, err := st.ListAPITokens(ctx); err != nil || ts == nil || len(ts) != 0 {
		t.Fatalf("ListAPITokens(empty store) = %v, %v; want an empty, non-nil slice", ts, err)
	}
	var want []store.APIToken
	for i, role := range []string{"admin", "operator", "viewer", "app"} {
		tok := apiToken(fmt.Sprintf("wdn_%d", i), role, base.Add(time.Duration(i)*time.Hour))
		if i%2 == 1 {
			tok.ExpiresAt = base.Add(24 * time.Hour)
		}
		if err := st.CreateAPIToken(ctx, tok); err != nil {
			t.Fatalf("CreateAPIToken(%s): %v", role, err)
		}
		got, err := st.GetAPIToken(ctx, tok.ID)
		if err != nil {
			t.Fatal(err)
		}
		checkAPIToken(t, got, tok)
		want = append([]store.APIToken{tok}, want...) // newest first
	}
	ts, err := st.ListAPITokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != len(want) {
		t.Fatalf("ListAPITokens = %d tokens, want %d", len(ts), len(want))
	}
	for i := range ts {
		checkAPIToken(t, ts[i], want[i])
	}

	dup := apiToken("wdn_0", "viewer", base)
	if err := st.CreateAPIToken(ctx, dup); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "wdn_0") {
		t.Errorf("CreateAPIToken(duplicate) = %v, want ErrConflict naming wdn_0", err)
	}
	if got, err := st.GetAPIToken(ctx, "wdn_0"); err != nil || got.Role != "admin" {
		t.Errorf("duplicate CreateAPIToken changed the token: %+v, %v", got, err)
	}
	if _, err := st.GetAPIToken(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetAPIToken(missing) = %v, want ErrNotFound", err)
	}

	for _, tc := range []struct {
		name   string
		mutate func(*store.APIToken)
	}{
		{"empty ID", func(t *store.APIToken) { t.ID = "" }},
		{"short hash", func(t *store.APIToken) { t.Hash = t.Hash[:31] }},
		{"no hash", func(t *store.APIToken) { t.Hash = nil }},
		{"unknown role", func(t *store.APIToken) { t.Role = "root" }},
		{"no role", func(t *store.APIToken) { t.Role = "" }},
		{"revoked", func(t *store.APIToken) { t.RevokedAt = base }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := apiToken("bad", "admin", base)
			tc.mutate(&tok)
			if err := st.CreateAPIToken(ctx, tok); err == nil {
				t.Fatalf("CreateAPIToken accepted %s", tc.name)
			}
			if _, err := st.GetAPIToken(ctx, "bad"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("token stored despite error: %v", err)
			}
		})
	}
}

func testRevokeAPIToken(t *testing.T, st store.Store) {
	ctx := context.Background()
	tok := apiToken("wdn_1", "operator", base)
	if err := st.CreateAPIToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	other := apiToken("wdn_2", "viewer", base)
	if err := st.CreateAPIToken(ctx, other); err != nil {
		t.Fatal(err)
	}
	at := base.Add(time.Hour)
	got, err := st.RevokeAPIToken(ctx, "wdn_1", at)
	if err != nil {
		t.Fatal(err)
	}
	want := tok
	want.RevokedAt = at
	checkAPIToken(t, got, want)
	// Idempotent: the first time stands.
	if got, err = st.RevokeAPIToken(ctx, "wdn_1", at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	checkAPIToken(t, got, want)
	if again, err := st.GetAPIToken(ctx, "wdn_1"); err != nil {
		t.Fatal(err)
	} else {
		checkAPIToken(t, again, want)
	}
	if got, err := st.GetAPIToken(ctx, "wdn_2"); err != nil || got.Revoked() {
		t.Errorf("other token: %+v, %v", got, err)
	}
	if _, err := st.RevokeAPIToken(ctx, "nope", at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeAPIToken(missing) = %v, want ErrNotFound", err)
	}
}

func testTouchAPIToken(t *testing.T, st store.Store) {
	ctx := context.Background()
	tok := apiToken("wdn_1", "app", base)
	if err := st.CreateAPIToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		at, want time.Time
	}{
		{base.Add(time.Hour), base.Add(time.Hour)},
		{base.Add(30 * time.Minute), base.Add(time.Hour)}, // earlier: ignored
		{base.Add(time.Hour), base.Add(time.Hour)},        // same: no change
		{base.Add(2 * time.Hour), base.Add(2 * time.Hour)},
	} {
		if err := st.TouchAPIToken(ctx, "wdn_1", step.at); err != nil {
			t.Fatalf("TouchAPIToken(%v): %v", step.at, err)
		}
		got, err := st.GetAPIToken(ctx, "wdn_1")
		if err != nil {
			t.Fatal(err)
		}
		if !got.LastUsedAt.Equal(norm(step.want)) || got.LastUsedAt.Location() != time.UTC {
			t.Errorf("after TouchAPIToken(%v): LastUsedAt = %v, want %v", step.at, got.LastUsedAt, norm(step.want))
		}
	}
	if err := st.TouchAPIToken(ctx, "nope", base); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TouchAPIToken(missing) = %v, want ErrNotFound", err)
	}
}

// --- CA rotations ---

func testCreateAndGetRotation(t *testing.T, st store.Store) {
	ctx := context.Background()
	if _, err := st.RunningRotation(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RunningRotation(none) = %v, want ErrNotFound", err)
	}
	if rs, err := st.ListRotations(ctx); err != nil || rs == nil || len(rs) != 0 {
		t.Errorf("ListRotations(empty store) = %v, %v; want an empty, non-nil slice", rs, err)
	}
	for _, id := range []string{"b", "a", "c"} {
		mustCreateDevice(t, st, device(id))
	}
	r := caRotation("rot-1", base)
	r.UpdatedAt = time.Time{} // defaults to CreatedAt
	if err := st.CreateRotation(ctx, r, []string{"b", "a", "c"}); err != nil {
		t.Fatal(err)
	}
	want := r
	want.UpdatedAt = r.CreatedAt
	got, err := st.GetRotation(ctx, "rot-1")
	if err != nil {
		t.Fatal(err)
	}
	checkRotation(t, got, want)
	if got, err := st.RunningRotation(ctx); err != nil {
		t.Fatal(err)
	} else {
		checkRotation(t, got, want)
	}
	ds, err := st.RotationDevices(ctx, "rot-1", "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rotationDeviceIDs(ds), []string{"a", "b", "c"}) {
		t.Fatalf("RotationDevices = %v, want [a b c] in ID order", rotationDeviceIDs(ds))
	}
	for _, d := range ds {
		checkRotationDevice(t, d, store.RotationDevice{RotationID: "rot-1", DeviceID: d.DeviceID, State: store.RotationDevicePending, UpdatedAt: base})
	}
	if _, err := st.GetRotation(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetRotation(missing) = %v, want ErrNotFound", err)
	}

	// A rotation without devices (an empty fleet) is fine once the first
	// one has finished, and the list is newest first.
	if err := st.FinishRotation(ctx, "rot-1", store.RotationCompleted, "all switched", base.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	r2 := caRotation("rot-2", base.Add(2*time.Hour))
	r2.State = "" // a rotation is created running
	if err := st.CreateRotation(ctx, r2, nil); err != nil {
		t.Fatal(err)
	}
	r2.State = store.RotationRunning
	rs, err := st.ListRotations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rotationIDs(rs), []string{"rot-2", "rot-1"}) {
		t.Fatalf("ListRotations = %v, want [rot-2 rot-1]", rotationIDs(rs))
	}
	checkRotation(t, rs[0], r2)
	if got, err := st.RunningRotation(ctx); err != nil || got.ID != "rot-2" {
		t.Errorf("RunningRotation = %+v, %v; want rot-2", got, err)
	}
	if ds, err := st.RotationDevices(ctx, "rot-2", "", "", 0); err != nil || ds == nil || len(ds) != 0 {
		t.Errorf("RotationDevices(no devices) = %v, %v; want an empty, non-nil slice", ds, err)
	}
}

func testCreateRotationConflicts(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	mustCreateDevice(t, st, device("dev-2"))
	first := caRotation("rot-1", base)
	if err := st.CreateRotation(ctx, first, []string{"dev-1"}); err != nil {
		t.Fatal(err)
	}
	// One running rotation at a time.
	if err := st.CreateRotation(ctx, caRotation("rot-2", base), []string{"dev-2"}); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "rot-1") {
		t.Errorf("CreateRotation(while rot-1 runs) = %v, want ErrConflict naming rot-1", err)
	}
	if _, err := st.GetRotation(ctx, "rot-2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second running rotation stored: %v", err)
	}
	if err := st.FinishRotation(ctx, "rot-1", store.RotationAborted, "operator", base); err != nil {
		t.Fatal(err)
	}
	// The ID exists, even though it is finished.
	if err := st.CreateRotation(ctx, caRotation("rot-1", base), nil); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CreateRotation(duplicate ID) = %v, want ErrConflict", err)
	}
	if got, err := st.GetRotation(ctx, "rot-1"); err != nil || got.State != store.RotationAborted || got.OldIssuer != first.OldIssuer {
		t.Errorf("duplicate CreateRotation changed rot-1: %+v, %v", got, err)
	}
	// A missing device: nothing stored, the ID is still free.
	if err := st.CreateRotation(ctx, caRotation("rot-3", base), []string{"dev-1", "ghost"}); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "ghost") {
		t.Errorf("CreateRotation(missing device) = %v, want ErrNotFound naming ghost", err)
	}
	if _, err := st.GetRotation(ctx, "rot-3"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("rotation stored despite a missing device: %v", err)
	}
	if _, err := st.RunningRotation(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RunningRotation after a refused create = %v, want ErrNotFound", err)
	}
	if err := st.CreateRotation(ctx, caRotation("rot-3", base), []string{"dev-1", "dev-2"}); err != nil {
		t.Fatalf("CreateRotation after a refused attempt: %v", err)
	}
}

func testCreateRotationRejectsBadInput(t *testing.T, st store.Store) {
	ctx := context.Background()
	mustCreateDevice(t, st, device("dev-1"))
	for _, tc := range []struct {
		name    string
		mutate  func(*store.Rotation)
		devices []string
	}{
		{"empty ID", func(r *store.Rotation) { r.ID = "" }, nil},
		{"old issuer not hex", func(r *store.Rotation) { r.OldIssuer = strings.Repeat("z", 64) }, nil},
		{"new issuer uppercase", func(r *store.Rotation) { r.NewIssuer = strings.ToUpper(r.NewIssuer) }, nil},
		{"short issuer", func(r *store.Rotation) { r.OldIssuer = "abcd" }, nil},
		{"same issuers", func(r *store.Rotation) { r.NewIssuer = r.OldIssuer }, nil},
		{"no grace period", func(r *store.Rotation) { r.GraceUntil = time.Time{} }, nil},
		{"completed", func(r *store.Rotation) { r.State = store.RotationCompleted }, nil},
		{"unknown state", func(r *store.Rotation) { r.State = "paused" }, nil},
		{"device listed twice", func(*store.Rotation) {}, []string{"dev-1", "dev-1"}},
		{"invalid device ID", func(*store.Rotation) {}, []string{"dev 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := caRotation("bad", base)
			tc.mutate(&r)
			if err := st.CreateRotation(ctx, r, tc.devices); err == nil {
				t.Fatalf("CreateRotation accepted %s", tc.name)
			}
			if rs, err := st.ListRotations(ctx); err != nil || len(rs) != 0 {
				t.Errorf("rotation stored despite error: %v, %v", rotationIDs(rs), err)
			}
		})
	}
}

func testFinishRotation(t *testing.T, st store.Store) {
	ctx := context.Background()
	for _, state := range []string{store.RotationCompleted, store.RotationAborted} {
		r := caRotation("rot-"+state, base)
		if err := st.CreateRotation(ctx, r, nil); err != nil {
			t.Fatal(err)
		}
		if err := st.FinishRotation(ctx, r.ID, "running", "x", base); err == nil {
			t.Errorf("FinishRotation(to running) accepted")
		}
		if err := st.FinishRotation(ctx, r.ID, "paused", "x", base); err == nil {
			t.Errorf("FinishRotation(unknown state) accepted")
		}
		at := base.Add(time.Hour)
		if err := st.FinishRotation(ctx, r.ID, state, "why "+state, at); err != nil {
			t.Fatal(err)
		}
		want := r
		want.State, want.Reason, want.UpdatedAt = state, "why "+state, at
		got, err := st.GetRotation(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		checkRotation(t, got, want)
		// Finished is final: neither state can be entered again.
		for _, again := range []string{store.RotationCompleted, store.RotationAborted} {
			if err := st.FinishRotation(ctx, r.ID, again, "again", at.Add(time.Hour)); !errors.Is(err, store.ErrConflict) {
				t.Errorf("FinishRotation(%s rotation, %s) = %v, want ErrConflict", state, again, err)
			}
		}
		if got, err := st.GetRotation(ctx, r.ID); err != nil {
			t.Fatal(err)
		} else {
			checkRotation(t, got, want)
		}
		if _, err := st.RunningRotation(ctx); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("RunningRotation after finishing = %v, want ErrNotFound", err)
		}
	}
	if err := st.FinishRotation(ctx, "ghost", store.RotationCompleted, "", base); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("FinishRotation(missing) = %v, want ErrNotFound", err)
	}
}

func testSetRotationDevice(t *testing.T, st store.Store) {
	ctx := context.Background()
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		mustCreateDevice(t, st, device(id))
	}
	if err := st.CreateRotation(ctx, caRotation("rot-1", base), []string{"dev-1", "dev-2"}); err != nil {
		t.Fatal(err)
	}
	serial := randHex(16)
	at := base.Add(time.Minute)
	want := store.RotationDevice{RotationID: "rot-1", DeviceID: "dev-1", State: store.RotationDevicePending, UpdatedAt: base}

	steps := []struct {
		state, serial, reason string
		from                  []string
	}{
		{store.RotationDeviceIssued, serial, "", []string{store.RotationDevicePending}},
		{store.RotationDeviceDelivered, "", "", []string{store.RotationDeviceIssued}}, // serial kept
		{store.RotationDeviceSwitched, "", "connected", []string{store.RotationDeviceIssued, store.RotationDeviceDelivered}},
	}
	for i, s := range steps {
		at := at.Add(time.Duration(i) * time.Minute)
		if err := st.SetRotationDevice(ctx, "rot-1", "dev-1", s.state, s.serial, s.reason, at, s.from...); err != nil {
			t.Fatalf("SetRotationDevice(%s): %v", s.state, err)
		}
		want.State, want.Reason, want.UpdatedAt = s.state, s.reason, at
		if s.serial != "" {
			want.Serial = s.serial
		}
		checkRotationDevice(t, mustRotationDevice(t, st, "rot-1", "dev-1"), want)
	}

	// Compare and set: from a state it is not in.
	late := at.Add(time.Hour)
	if err := st.SetRotationDevice(ctx, "rot-1", "dev-1", store.RotationDeviceDelivered, "", "", late,
		store.RotationDeviceIssued); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), store.RotationDeviceSwitched) {
		t.Errorf("SetRotationDevice(from issued, is switched) = %v, want ErrConflict naming the state", err)
	}
	checkRotationDevice(t, mustRotationDevice(t, st, "rot-1", "dev-1"), want)

	// No from: any state. A new serial replaces the kept one.
	serial2 := randHex(16)
	if err := st.SetRotationDevice(ctx, "rot-1", "dev-1", store.RotationDeviceIssued, serial2, "reissued", late); err != nil {
		t.Fatal(err)
	}
	want.State, want.Serial, want.Reason, want.UpdatedAt = store.RotationDeviceIssued, serial2, "reissued", late
	checkRotationDevice(t, mustRotationDevice(t, st, "rot-1", "dev-1"), want)

	// A failure needs no serial; a re-issued state does.
	if err := st.SetRotationDevice(ctx, "rot-1", "dev-2", store.RotationDeviceIssued, "", "", late, store.RotationDevicePending); err == nil ||
		errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetRotationDevice(issued, no serial) = %v, want a plain error", err)
	}
	checkRotationDevice(t, mustRotationDevice(t, st, "rot-1", "dev-2"),
		store.RotationDevice{RotationID: "rot-1", DeviceID: "dev-2", State: store.RotationDevicePending, UpdatedAt: base})
	if err := st.SetRotationDevice(ctx, "rot-1", "dev-2", store.RotationDeviceFailed, "", "no CSR stored", late, store.RotationDevicePending); err != nil {
		t.Fatal(err)
	}
	checkRotationDevice(t, mustRotationDevice(t, st, "rot-1", "dev-2"),
		store.RotationDevice{RotationID: "rot-1", DeviceID: "dev-2", State: store.RotationDeviceFailed, Reason: "no CSR stored", UpdatedAt: late})

	if err := st.SetRotationDevice(ctx, "rot-1", "dev-3", store.RotationDeviceFailed, "", "", late); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetRotationDevice(not part of it) = %v, want ErrNotFound", err)
	}
	if err := st.SetRotationDevice(ctx, "ghost", "dev-1", store.RotationDeviceFailed, "", "", late); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetRotationDevice(missing rotation) = %v, want ErrNotFound", err)
	}
	for _, tc := range []struct {
		name, state, serial string
		from                []string
	}{
		{"unknown state", "lost", "", nil},
		{"unknown from state", store.RotationDeviceFailed, "", []string{"lost"}},
		{"uppercase serial", store.RotationDeviceIssued, "AB", nil},
	} {
		if err := st.SetRotationDevice(ctx, "rot-1", "dev-1", tc.state, tc.serial, "", late, tc.from...); err == nil {
			t.Errorf("SetRotationDevice accepted %s", tc.name)
		}
	}
	checkRotationDevice(t, mustRotationDevice(t, st, "rot-1", "dev-1"), want)
}

func testRotationDevicesAndCounts(t *testing.T, st store.Store) {
	ctx := context.Background()
	const n = 23
	var all []string
	for i := range n {
		id := fmt.Sprintf("d%02d", (i*5)%n) // created out of order
		mustCreateDevice(t, st, device(id))
		all = append(all, id)
	}
	mustCreateDevice(t, st, device("outside"))
	if err := st.CreateRotation(ctx, caRotation("rot-1", base), all); err != nil {
		t.Fatal(err)
	}
	slices.Sort(all)
	byState := map[string][]string{}
	for i, id := range all {
		state := []string{store.RotationDevicePending, store.RotationDeviceIssued, store.RotationDeviceSwitched}[i%3]
		if i == 7 {
			state = store.RotationDeviceFailed
		}
		if state != store.RotationDevicePending {
			serial := ""
			if state != store.RotationDeviceFailed {
				serial = randHex(16)
			}
			if err := st.SetRotationDevice(ctx, "rot-1", id, state, serial, "", base, store.RotationDevicePending); err != nil {
				t.Fatal(err)
			}
		}
		byState[state] = append(byState[state], id)
	}

	counts, err := st.RotationCounts(ctx, "rot-1")
	if err != nil {
		t.Fatal(err)
	}
	wantCounts := map[string]int{
		store.RotationDevicePending: len(byState[store.RotationDevicePending]), store.RotationDeviceIssued: len(byState[store.RotationDeviceIssued]),
		store.RotationDeviceDelivered: 0, store.RotationDeviceSwitched: len(byState[store.RotationDeviceSwitched]),
		store.RotationDeviceFailed: 1,
	}
	if !maps.Equal(counts, wantCounts) {
		t.Errorf("RotationCounts = %v, want %v", counts, wantCounts)
	}

	for _, tc := range []struct {
		name, state, after string
		limit              int
		want               []string
	}{
		{"all", "", "", 0, all},
		{"issued", store.RotationDeviceIssued, "", 0, byState[store.RotationDeviceIssued]},
		{"failed", store.RotationDeviceFailed, "", 0, byState[store.RotationDeviceFailed]},
		{"none delivered", store.RotationDeviceDelivered, "", 0, nil},
		{"cursor", "", all[19], 0, all[20:]},
		{"state and cursor", store.RotationDeviceSwitched, all[10], 0, slices.DeleteFunc(slices.Clone(byState[store.RotationDeviceSwitched]), func(id string) bool { return id <= all[10] })},
		{"limit", "", "", 4, all[:4]},
		{"oversized limit", "", "", store.MaxListLimit * 10, all},
		{"cursor past the end", "", "zzz", 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds, err := st.RotationDevices(ctx, "rot-1", tc.state, tc.after, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if ds == nil {
				t.Error("RotationDevices returned nil, want a non-nil slice")
			}
			if got := rotationDeviceIDs(ds); !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
				t.Errorf("RotationDevices(%q, after %q, limit %d) = %v, want %v", tc.state, tc.after, tc.limit, got, tc.want)
			}
			for _, d := range ds {
				if d.RotationID != "rot-1" || (tc.state != "" && d.State != tc.state) {
					t.Errorf("device %+v does not match", d)
				}
			}
		})
	}

	// Walk pages of 5 with the cursor.
	var walked []string
	after := ""
	for page := 0; ; page++ {
		if page > n {
			t.Fatal("paging does not terminate")
		}
		ds, err := st.RotationDevices(ctx, "rot-1", "", after, 5)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) > 5 {
			t.Fatalf("page of %d devices, limit 5", len(ds))
		}
		if len(ds) == 0 {
			break
		}
		walked = append(walked, rotationDeviceIDs(ds)...)
		after = ds[len(ds)-1].DeviceID
	}
	if !slices.Equal(walked, all) {
		t.Errorf("paged walk = %v\nwant %v", walked, all)
	}

	if _, err := st.RotationDevices(ctx, "rot-1", "lost", "", 0); err == nil {
		t.Error("RotationDevices accepted an unknown state")
	}
	if _, err := st.RotationDevices(ctx, "ghost", "", "", 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RotationDevices(missing rotation) = %v, want ErrNotFound", err)
	}
	if _, err := st.RotationCounts(ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RotationCounts(missing rotation) = %v, want ErrNotFound", err)
	}
	// An empty rotation counts zero in every state.
	if err := st.FinishRotation(ctx, "rot-1", store.RotationCompleted, "", base); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateRotation(ctx, caRotation("rot-2", base), nil); err != nil {
		t.Fatal(err)
	}
	counts, err = st.RotationCounts(ctx, "rot-2")
	if err != nil {
		t.Fatal(err)
	}
	for state, n := range wantCounts {
		if c, ok := counts[state]; !ok || c != 0 {
			t.Errorf("RotationCounts(empty rotation)[%s] = %d, %v; want 0, present (had %d in rot-1)", state, c, ok, n)
		}
	}
}

// ConcurrentEnroll races workers on two handles on the same database (they
// may be the same handle) to enroll the same devices, each with its own
// credential, to claim devices with the same tokens, and to recover the
// same devices with one recovery enrollment each. Exactly one worker may
// win each enrollment, each token and each recovery; every other attempt
// must fail with ErrConflict and leave nothing behind. Backends with several
// processes or connection pools must pass it with two independently opened
// handles.
func ConcurrentEnroll(t *testing.T, a, b store.Store) {
	t.Helper()
	ctx := context.Background()
	const (
		workers = 4
		devices = 8
	)
	prefix := randHex(4)
	var ids []string
	var es []store.Enrollment
	for i := range devices {
		id := fmt.Sprintf("%s-e%02d", prefix, i)
		ids = append(ids, id)
		es = append(es, secretEnrollment(id))
	}
	mustAddEnrollments(t, a, es...)
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

	// Phase 1: every worker enrolls every device.
	winners := make(map[string][]string) // device -> winning serials
	start := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for _, id := range ids {
				d, c := enrollDevice(id, base)
				_, err := handle(w).Enroll(ctx, d, c, base.Add(time.Duration(w)*time.Second))
				switch {
				case err == nil:
					mu.Lock()
					winners[id] = append(winners[id], c.Serial)
					mu.Unlock()
				case !errors.Is(err, store.ErrConflict):
					fail(fmt.Errorf("Enroll(%s): %w", id, err))
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d concurrent enrollments failed unexpectedly; first: %v", len(errs), errs[0])
	}
	for _, id := range ids {
		if len(winners[id]) != 1 {
			t.Errorf("device %s enrolled %d times, want exactly once", id, len(winners[id]))
			continue
		}
		for _, st := range []store.Store{a, b} {
			cs, err := st.Credentials(ctx, identity.KindDevice, id)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(serials(cs), winners[id]) {
				t.Errorf("device %s has credentials %v, want only the winner's %v", id, serials(cs), winners[id])
			}
			if e, err := st.GetEnrollment(ctx, id); err != nil || !e.Used() || e.Serial != winners[id][0] {
				t.Errorf("enrollment of %s = %+v, %v; want used with the winner's serial", id, e, err)
			}
		}
	}

	// Phase 2: every worker presents the same tokens, each for its own
	// user: one claim per token wins, and the device is that user's.
	tokens := make(map[string][]string) // token -> winning users
	start = make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			user := fmt.Sprintf("user-%d", w)
			for i, id := range ids {
				token := fmt.Sprintf("%s-jti-%d", prefix, i)
				_, err := handle(w).Claim(ctx, claimUse(token, user, id, base))
				switch {
				case err == nil:
					mu.Lock()
					tokens[token] = append(tokens[token], user)
					mu.Unlock()
				case !errors.Is(err, store.ErrConflict):
					fail(fmt.Errorf("Claim(%s, %s): %w", id, token, err))
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d concurrent claims failed unexpectedly; first: %v", len(errs), errs[0])
	}
	for i, id := range ids {
		token := fmt.Sprintf("%s-jti-%d", prefix, i)
		if len(tokens[token]) != 1 {
			t.Errorf("token %s used %d times, want exactly once", token, len(tokens[token]))
			continue
		}
		if d, err := b.GetDevice(ctx, id); err != nil || d.Owner != tokens[token][0] {
			t.Errorf("device %s = %+v, %v; want owned by the winner %s", id, d, err, tokens[token][0])
		}
	}

	// Phase 3: each device is armed for recovery once, and every worker
	// recovers every device: one recovery per device wins, the winner's
	// credential is the device's only unrevoked one, and the losers'
	// credentials are not stored.
	var recs []store.Enrollment
	for _, id := range ids {
		recs = append(recs, recoveryEnrollment(id))
	}
	mustAddEnrollments(t, b, recs...)
	recovered := make(map[string][]string) // device -> winning serials
	var lost []string                      // serials of refused recoveries
	start = make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for _, id := range ids {
				at := base.Add(time.Hour + time.Duration(w)*time.Second)
				c := credential(identity.KindDevice, id, at)
				_, err := handle(w).Recover(ctx, id, c, at)
				mu.Lock()
				switch {
				case err == nil:
					recovered[id] = append(recovered[id], c.Serial)
				case errors.Is(err, store.ErrConflict):
					lost = append(lost, c.Serial)
				default:
					errs = append(errs, fmt.Errorf("Recover(%s): %w", id, err))
				}
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d concurrent recoveries failed unexpectedly; first: %v", len(errs), errs[0])
	}
	for _, id := range ids {
		if len(recovered[id]) != 1 {
			t.Errorf("device %s recovered %d times, want exactly once", id, len(recovered[id]))
			continue
		}
		for _, st := range []store.Store{a, b} {
			cs, err := st.Credentials(ctx, identity.KindDevice, id)
			if err != nil {
				t.Fatal(err)
			}
			if u := unrevoked(cs); !slices.Equal(u, recovered[id]) || len(cs) != 2 {
				t.Errorf("device %s has credentials %v (unrevoked %v), want its enrollment's and the winner's %v, only the winner's unrevoked",
					id, serials(cs), u, recovered[id])
			}
			if e, err := st.GetEnrollment(ctx, id); err != nil || !e.Recovery || !e.Used() || e.Serial != recovered[id][0] {
				t.Errorf("recovery enrollment of %s = %+v, %v; want used with the winner's serial", id, e, err)
			}
		}
	}
	for _, serial := range lost {
		if _, err := a.CredentialBySerial(ctx, serial); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("credential %s of a refused recovery stored: %v", serial, err)
		}
	}
}
