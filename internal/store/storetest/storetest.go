// Package storetest is the conformance suite for store.Store backends. Every
// backend's tests call Run (and ConcurrentWriters, ConcurrentSequences and
// ConcurrentRolloutDevices with two handles on one database), so that callers can rely on the same
// errors, ordering, atomicity and idempotency whichever database is
// underneath.
package storetest

import (
	"context"
	"crypto/rand"
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

// Run runs the suite. open must return a new, empty store for each call
// and arrange (with t.Cleanup) for it to be closed.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st store.Store)
	}{
		{"CreateAndGetDevice", testCreateAndGetDevice},
		{"CreateDeviceConflicts", testCreateDeviceConflicts},
		{"CreateDeviceRejectsBadInput", testCreateDeviceRejectsBadInput},
		{"ListDevicesPaging", testListDevicesPaging},
		{"ListDevicesFilters", testListDevicesFilters},
		{"ListDevicesByOwner", testListDevicesByOwner},
		{"SetDeviceState", testSetDeviceState},
		{"RevokeDevice", testRevokeDevice},
		{"SetDeviceTags", testSetDeviceTags},
		{"AddCredential", testAddCredential},
		{"CredentialBySerial", testCredentialBySerial},
		{"Admission", testAdmission},
		{"CredentialsNewestFirst", testCredentialsNewestFirst},
		{"RevokedCredentials", testRevokedCredentials},
		{"Services", testServices},
		{"RevokeService", testRevokeService},
		{"ConcurrentUse", func(t *testing.T, st store.Store) { ConcurrentWriters(t, st, st) }},
		{"EnableEnvelope", testEnableEnvelope},
		{"AddEnvelopeKey", testAddEnvelopeKey},
		{"PromoteEnvelopeKey", testPromoteEnvelopeKey},
		{"RevokeRetiresEnvelopeKeys", testRevokeRetiresEnvelopeKeys},
		{"EnvelopePolicy", testEnvelopePolicy},
		{"ReplayWindows", testReplayWindows},
		{"ReserveSequence", testReserveSequence},
		{"ConcurrentSequences", func(t *testing.T, st store.Store) { ConcurrentSequences(t, st, st) }},
		{"ReleaseKeys", testReleaseKeys},
		{"RevokeReleaseKey", testRevokeReleaseKey},
		{"AddReleaseKeyRejectsBadInput", testAddReleaseKeyRejectsBadInput},
		{"PutFirmwareImage", testPutFirmwareImage},
		{"PutFirmwareImageRejectsBadInput", testPutFirmwareImageRejectsBadInput},
		{"ListFirmwareImages", testListFirmwareImages},
		{"DeleteFirmwareImage", testDeleteFirmwareImage},
		{"CreateAndGetRollout", testCreateAndGetRollout},
		{"ListRollouts", testListRollouts},
		{"CreateRolloutConflicts", testCreateRolloutConflicts},
		{"CreateRolloutRejectsBadInput", testCreateRolloutRejectsBadInput},
		{"OneLiveRolloutPerDevice", testOneLiveRolloutPerDevice},
		{"UpdateRollout", testUpdateRollout},
		{"RolloutCounts", testRolloutCounts},
		{"ListRolloutDevices", testListRolloutDevices},
		{"ActiveRollout", testActiveRollout},
		{"SetRolloutDeviceState", testSetRolloutDeviceState},
		{"TimeOutRolloutDevices", testTimeOutRolloutDevices},
		{"DeviceFirmware", testDeviceFirmware},
		{"ConcurrentRolloutDevices", func(t *testing.T, st store.Store) { ConcurrentRolloutDevices(t, st, st) }},
		{"AddAndGetEnrollments", testAddAndGetEnrollments},
		{"AddEnrollmentsConflicts", testAddEnrollmentsConflicts},
		{"AddEnrollmentsRejectsBadInput", testAddEnrollmentsRejectsBadInput},
		{"ListEnrollments", testListEnrollments},
		{"DeleteEnrollment", testDeleteEnrollment},
		{"Enroll", testEnroll},
		{"EnrollConflicts", testEnrollConflicts},
		{"EnrollRejectsBadInput", testEnrollRejectsBadInput},
		{"AddRecoveryEnrollments", testAddRecoveryEnrollments},
		{"AddRecoveryEnrollmentsRefusals", testAddRecoveryEnrollmentsRefusals},
		{"Recover", testRecover},
		{"RecoverConflicts", testRecoverConflicts},
		{"RecoverRejectsBadInput", testRecoverRejectsBadInput},
		{"ClaimCerts", testClaimCerts},
		{"CreateClaimCertRejectsBadInput", testCreateClaimCertRejectsBadInput},
		{"RevokeClaimCert", testRevokeClaimCert},
		{"Claim", testClaim},
		{"ClaimRejectsBadInput", testClaimRejectsBadInput},
		{"PurgeClaimUses", testPurgeClaimUses},
		{"SetDeviceOwner", testSetDeviceOwner},
		{"APITokens", testAPITokens},
		{"RevokeAPIToken", testRevokeAPIToken},
		{"TouchAPIToken", testTouchAPIToken},
		{"CreateAndGetRotation", testCreateAndGetRotation},
		{"CreateRotationConflicts", testCreateRotationConflicts},
		{"CreateRotationRejectsBadInput", testCreateRotationRejectsBadInput},
		{"FinishRotation", testFinishRotation},
		{"SetRotationDevice", testSetRotationDevice},
		{"RotationDevicesAndCounts", testRotationDevicesAndCounts},
		{"ConcurrentEnroll", func(t *testing.T, st store.Store) { ConcurrentEnroll(t, st, st) }},
		{"CreateAndGetAlert", testCreateAndGetAlert},
		{"CreateAlertRejectsBadInput", testCreateAlertRejectsBadInput},
		{"UpdateAlert", testUpdateAlert},
		{"AcknowledgeAlert", testAcknowledgeAlert},
		{"ListAlerts", testListAlerts},
		{"PurgeAlerts", testPurgeAlerts},
		{"Quarantines", testQuarantines},
		{"ExpiringCredentials", testExpiringCredentials},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, open(t))
		})
	}
}

// base has nanoseconds and a non-UTC zone, to check that stores normalise
// to UTC and keep at least microseconds.
var base = time.Date(2026, 11, 3, 10, 4, 5, 123456789, time.FixedZone("CET", 3600))

// norm is what a store must give back for t.
func norm(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.Truncate(time.Microsecond).UTC()
}

// randHex is safe to call from any goroutine: crypto/rand.Read never
// fails (it crashes the program instead, since Go 1.24).
func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// credential returns a plausible credential; the store does not parse
// certificates, so random bytes stand in for DER.
func credential(kind identity.Kind, id string, created time.Time) store.Credential {
	cert := []byte("cert-" + randHex(32))
	sum := sha256.Sum256(cert)
	return store.Credential{
		Serial:      randHex(16),
		SubjectKind: kind,
		SubjectID:   id,
		Fingerprint: hex.EncodeToString(sum[:]),
		NotBefore:   created.Add(-time.Minute),
		NotAfter:    created.Add(365 * 24 * time.Hour),
		CSR:         []byte("csr-" + randHex(16)),
		Certificate: cert,
		CreatedAt:   created,
	}
}

func device(id string) store.Device {
	return store.Device{
		ID:        id,
		Model:     "m1",
		Tags:      map[string]string{},
		State:     store.StateActive,
		CreatedAt: base,
		UpdatedAt: base,
	}
}

func mustCreateDevice(t *testing.T, st store.Store, d store.Device) store.Credential {
	t.Helper()
	c := credential(identity.KindDevice, d.ID, d.CreatedAt)
	if err := st.CreateDevice(context.Background(), d, c); err != nil {
		t.Fatalf("CreateDevice(%q): %v", d.ID, err)
	}
	return c
}

func checkDevice(t *testing.T, got, want store.Device) {
	t.Helper()
	if want.Tags == nil {
		want.Tags = map[string]string{}
	}
	if want.UpdatedAt.IsZero() {
		want.UpdatedAt = want.CreatedAt
	}
	if got.ID != want.ID || got.Model != want.Model || got.State != want.State ||
		got.StateReason != want.StateReason || got.Owner != want.Owner ||
		!maps.Equal(got.Tags, want.Tags) || got.Tags == nil ||
		!got.CreatedAt.Equal(norm(want.CreatedAt)) || !got.UpdatedAt.Equal(norm(want.UpdatedAt)) ||
		got.CreatedAt.Location() != time.UTC || got.UpdatedAt.Location() != time.UTC {
		t.Errorf("device mismatch:\n got %+v\nwant %+v (times normalised to UTC µs)", got, want)
	}
}

func checkCredential(t *testing.T, got, want store.Credential) {
	t.Helper()
	if got.Serial != want.Serial || got.SubjectKind != want.SubjectKind || got.SubjectID != want.SubjectID ||
		got.Fingerprint != want.Fingerprint || string(got.CSR) != string(want.CSR) ||
		string(got.Certificate) != string(want.Certificate) || got.RevocationReason != want.RevocationReason ||
		!got.NotBefore.Equal(norm(want.NotBefore)) || !got.NotAfter.Equal(norm(want.NotAfter)) ||
		!got.CreatedAt.Equal(norm(want.CreatedAt)) || !got.RevokedAt.Equal(norm(want.RevokedAt)) ||
		got.Revoked() != want.Revoked() {
		t.Errorf("credential mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func serials(cs []store.Credential) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Serial
	}
	return out
}

func ids(ds []store.Device) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

func testCreateAndGetDevice(t *testing.T, st store.Store) {
	ctx := context.Background()
	d := device("dev-1")
	d.Model = "thermo-v2"
	d.Tags = map[string]string{"site": "lyon", "floor": "3", "empty": ""}
	d.Owner = "alice"
	d.UpdatedAt = base.Add(time.Second)
	c := mustCreateDevice(t, st, d)

	got, err := st.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	checkDevice(t, got, d)

	// A device without tags reads back with an empty, non-nil map, and an
	// unset UpdatedAt defaults to CreatedAt.
	bare := device("dev-2")
	bare.Tags, bare.UpdatedAt = nil, time.Time{}
	mustCreateDevice(t, st, bare)
	got, err = st.GetDevice(ctx, "dev-2")
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	checkDevice(t, got, bare)

	cred, err := st.CredentialBySerial(ctx, c.Serial)
	if err != nil {
		t.Fatalf("CredentialBySerial: %v", err)
	}
	checkCredential(t, cred, c)

	if _, err := st.GetDevice(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetDevice(missing) = %v, want ErrNotFound", err)
	}
}

func testCreateDeviceConflicts(t *testing.T, st store.Store) {
	ctx := context.Background()
	first := device("dev-1")
	first.Tags = map[string]string{"k": "v"}
	c1 := mustCreateDevice(t, st, first)

	// Same ID, fresh serial.
	dup := device("dev-1")
	dup.Model = "other"
	err := st.CreateDevice(ctx, dup, credential(identity.KindDevice, "dev-1", base))
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "dev-1") {
		t.Errorf("CreateDevice(duplicate ID) = %v, want ErrConflict naming dev-1", err)
	}
	got, err := st.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	checkDevice(t, got, first)

	// New ID, but the credential serial is taken: nothing of the device,
	// its tags or the credential may remain.
	second := device("dev-2")
	second.Tags = map[string]string{"k": "v"}
	c2 := credential(identity.KindDevice, "dev-2", base)
	c2.Serial = c1.Serial
	err = st.CreateDevice(ctx, second, c2)
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), c1.Serial) {
		t.Errorf("CreateDevice(duplicate serial) = %v, want ErrConflict naming the serial", err)
	}
	if _, err := st.GetDevice(ctx, "dev-2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("device row left behind after failed CreateDevice: %v", err)
	}
	if ds, err := st.ListDevices(ctx, store.DeviceFilter{Tags: map[string]string{"k": "v"}}); err != nil || len(ds) != 1 {
		t.Errorf("ListDevices(tag) = %v, %v; want only dev-1", ids(ds), err)
	}
	if cs, err := st.Credentials(ctx, identity.KindDevice, "dev-2"); err != nil || len(cs) != 0 {
		t.Errorf("Credentials(dev-2) = %v, %v; want none", serials(cs), err)
	}
	cred, err := st.CredentialBySerial(ctx, c1.Serial)
	if err != nil {
		t.Fatal(err)
	}
	checkCredential(t, cred, c1)

	// The ID is still free for a correct attempt.
	mustCreateDevice(t, st, second)
}

func testCreateDeviceRejectsBadInput(t *testing.T, st store.Store) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		mutate func(*store.Device, *store.Credential)
	}{
		{"empty ID", func(d *store.Device, c *store.Credential) { d.ID, c.SubjectID = "", "" }},
		{"revoked state", func(d *store.Device, c *store.Credential) { d.State = store.StateRevoked }},
		{"unknown state", func(d *store.Device, c *store.Credential) { d.State = "sleeping" }},
		{"credential for another device", func(d *store.Device, c *store.Credential) { c.SubjectID = "other" }},
		{"credential for a service", func(d *store.Device, c *store.Credential) { c.SubjectKind = identity.KindService }},
		{"uppercase serial", func(d *store.Device, c *store.Credential) { c.Serial = strings.ToUpper(c.Serial) + "AB" }},
		{"empty serial", func(d *store.Device, c *store.Credential) { c.Serial = "" }},
		{"no certificate", func(d *store.Device, c *store.Credential) { c.Certificate = nil }},
		{"no fingerprint", func(d *store.Device, c *store.Credential) { c.Fingerprint = "" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := device("bad-1")
			c := credential(identity.KindDevice, d.ID, base)
			tc.mutate(&d, &c)
			if err := st.CreateDevice(ctx, d, c); err == nil {
				t.Fatalf("CreateDevice accepted %s", tc.name)
			}
			if _, err := st.GetDevice(ctx, "bad-1"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("device stored despite error: %v", err)
			}
		})
	}
	// A credential without a CSR is acceptable (imported certificates).
	d := device("no-csr")
	c := credential(identity.KindDevice, d.ID, base)
	c.CSR = nil
	if err := st.CreateDevice(ctx, d, c); err != nil {
		t.Fatalf("CreateDevice without CSR: %v", err)
	}
	got, err := st.CredentialBySerial(ctx, c.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.CSR) != 0 {
		t.Errorf("CSR = %x, want empty", got.CSR)
	}
}

func testListDevicesPaging(t *testing.T, st store.Store) {
	ctx := context.Background()
	const n = 125
	var want []string
	for i := range n {
		id := fmt.Sprintf("d%03d", (i*37)%n) // created out of order
		want = append(want, id)
		mustCreateDevice(t, st, device(id))
	}
	slices.Sort(want)

	// Default limit.
	all, err := st.ListDevices(ctx, store.DeviceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != store.DefaultListLimit || !slices.Equal(ids(all), want[:store.DefaultListLimit]) {
		t.Fatalf("ListDevices(default) returned %d devices, want the first %d in ID order", len(all), store.DefaultListLimit)
	}

	// Walk pages of 10 with the cursor.
	var walked []string
	after := ""
	for page := 0; ; page++ {
		if page > n {
			t.Fatal("paging does not terminate")
		}
		ds, err := st.ListDevices(ctx, store.DeviceFilter{After: after, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) > 10 {
			t.Fatalf("page of %d devices, limit 10", len(ds))
		}
		if len(ds) == 0 {
			break
		}
		walked = append(walked, ids(ds)...)
		after = ds[len(ds)-1].ID
	}
	if !slices.Equal(walked, want) {
		t.Errorf("paged walk = %v\nwant %v", walked, want)
	}

	// An oversized limit is capped, not refused.
	big, err := st.ListDevices(ctx, store.DeviceFilter{Limit: store.MaxListLimit * 10})
	if err != nil || len(big) != n {
		t.Errorf("ListDevices(limit %d) = %d devices, %v; want %d", store.MaxListLimit*10, len(big), err, n)
	}
	// A cursor past the end gives an empty page.
	if ds, err := st.ListDevices(ctx, store.DeviceFilter{After: "zzz"}); err != nil || len(ds) != 0 {
		t.Errorf("ListDevices(after end) = %v, %v", ids(ds), err)
	}
}

func testListDevicesFilters(t *testing.T, st store.Store) {
	ctx := context.Background()
	mk := func(id, model string, state store.DeviceState, tags map[string]string) {
		d := device(id)
		d.Model, d.Tags = model, tags
		mustCreateDevice(t, st, d)
		if state == store.StateDisabled {
			if _, err := st.SetDeviceState(ctx, id, state, "test", base); err != nil {
				t.Fatal(err)
			}
		}
		if state == store.StateRevoked {
			if _, _, err := st.RevokeDevice(ctx, id, "test", base); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("a", "m1", store.StateActive, map[string]string{"site": "lyon", "floor": "1"})
	mk("b", "m1", store.StateDisabled, map[string]string{"site": "lyon", "floor": "2"})
	mk("c", "m2", store.StateActive, map[string]string{"site": "paris", "floor": "1"})
	mk("d", "m2", store.StateRevoked, map[string]string{"site": "lyon"})
	mk("e", "m1", store.StateActive, nil)

	for _, tc := range []struct {
		name string
		f    store.DeviceFilter
		want []string
	}{
		{"all", store.DeviceFilter{}, []string{"a", "b", "c", "d", "e"}},
		{"active", store.DeviceFilter{State: store.StateActive}, []string{"a", "c", "e"}},
		{"disabled", store.DeviceFilter{State: store.StateDisabled}, []string{"b"}},
		{"revoked", store.DeviceFilter{State: store.StateRevoked}, []string{"d"}},
		{"model", store.DeviceFilter{Model: "m2"}, []string{"c", "d"}},
		{"one tag", store.DeviceFilter{Tags: map[string]string{"site": "lyon"}}, []string{"a", "b", "d"}},
		{"all tags must match", store.DeviceFilter{Tags: map[string]string{"site": "lyon", "floor": "1"}}, []string{"a"}},
		{"tag value mismatch", store.DeviceFilter{Tags: map[string]string{"site": "berlin"}}, nil},
		{"tag and state", store.DeviceFilter{State: store.StateActive, Tags: map[string]string{"floor": "1"}}, []string{"a", "c"}},
		{"model, state and cursor", store.DeviceFilter{Model: "m1", State: store.StateActive, After: "a"}, []string{"e"}},
		{"tag and limit", store.DeviceFilter{Tags: map[string]string{"site": "lyon"}, Limit: 2}, []string{"a", "b"}},
		{"tag, cursor and limit", store.DeviceFilter{Tags: map[string]string{"site": "lyon"}, After: "b", Limit: 2}, []string{"d"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds, err := st.ListDevices(ctx, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(ds); !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
				t.Errorf("ListDevices(%+v) = %v, want %v", tc.f, got, tc.want)
			}
			for _, d := range ds {
				if d.Tags == nil {
					t.Errorf("device %s has nil tags", d.ID)
				}
			}
		})
	}
	// Listed devices carry all their tags, not only the filtered ones.
	ds, err := st.ListDevices(ctx, store.DeviceFilter{Tags: map[string]string{"floor": "2"}})
	if err != nil || len(ds) != 1 || !maps.Equal(ds[0].Tags, map[string]string{"site": "lyon", "floor": "2"}) {
		t.Errorf("ListDevices(floor=2) = %+v, %v", ds, err)
	}
	if _, err := st.ListDevices(ctx, store.DeviceFilter{State: "sleeping"}); err == nil {
		t.Error("ListDevices accepted an unknown state")
	}
}

// testListDevicesByOwner checks the owner filter the API forces for app
// tokens: only exact matches, combined with the other filters and paging,
// and an empty owner matching everything.
func testListDevicesByOwner(t *testing.T, st store.Store) {
	ctx := context.Background()
	owners := map[string]string{"a": "alice", "b": "bob", "c": "alice", "d": "", "e": "alice", "f": "Alice"}
	for _, id := range slices.Sorted(maps.Keys(owners)) {
		d := device(id)
		if id == "e" {
			d.Model = "m2"
		}
		mustCreateDevice(t, st, d)
		if owners[id] != "" {
			if _, err := st.SetDeviceOwner(ctx, id, owners[id], base); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name string
		f    store.DeviceFilter
		want []string
	}{
		{"any owner", store.DeviceFilter{}, []string{"a", "b", "c", "d", "e", "f"}},
		{"alice", store.DeviceFilter{Owner: "alice"}, []string{"a", "c", "e"}},
		{"case matters", store.DeviceFilter{Owner: "Alice"}, []string{"f"}},
		{"nobody's", store.DeviceFilter{Owner: "mallory"}, nil},
		{"owner and model", store.DeviceFilter{Owner: "alice", Model: "m2"}, []string{"e"}},
		{"owner and paging", store.DeviceFilter{Owner: "alice", After: "a", Limit: 1}, []string{"c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds, err := st.ListDevices(ctx, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(ds); !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
				t.Errorf("ListDevices(%+v) = %v, want %v", tc.f, got, tc.want)
			}
			for _, d := range ds {
				if tc.f.Owner != "" && d.Owner != tc.f.Owner {
					t.Errorf("device %s has owner %q, want %q", d.ID, d.Owner, tc.f.Owner)
				}
			}
		})
	}
}

func testSetDeviceState(t *testing.T, st store.Store) {
	ctx := context.Background()
	d := device("dev-1")
	d.Tags = map[string]string{"k": "v"}
	mustCreateDevice(t, st, d)

	at := base.Add(time.Hour)
	got, err := st.SetDeviceState(ctx, "dev-1", store.StateDisabled, "maintenance", at)
	if err != nil {
		t.Fatal(err)
	}
	want := d
	want.State, want.StateReason, want.UpdatedAt = store.StateDisabled, "maintenance", at
	checkDevice(t, got, want)
	if again, err := st.GetDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	} else {
		checkDevice(t, again, want)
	}

	at = at.Add(time.Hour)
	got, err = st.SetDeviceState(ctx, "dev-1", store.StateActive, "", at)
	if err != nil {
		t.Fatal(err)
	}
	want.State, want.StateReason, want.UpdatedAt = store.StateActive, "", at
	checkDevice(t, got, want)

	if _, err := st.SetDeviceState(ctx, "missing", store.StateDisabled, "", at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetDeviceState(missing) = %v, want ErrNotFound", err)
	}
	if _, err := st.SetDeviceState(ctx, "dev-1", store.StateRevoked, "", at); err == nil {
		t.Error("SetDeviceState(revoked) accepted: revocation must also revoke credentials")
	}
	if _, err := st.SetDeviceState(ctx, "dev-1", "sleeping", "", at); err == nil {
		t.Error("SetDeviceState accepted an unknown state")
	}

	if _, _, err := st.RevokeDevice(ctx, "dev-1", "stolen", at); err != nil {
		t.Fatal(err)
	}
	for _, s := range []store.DeviceState{store.StateActive, store.StateDisabled} {
		if _, err := st.SetDeviceState(ctx, "dev-1", s, "", at.Add(time.Hour)); !errors.Is(err, store.ErrRevoked) {
			t.Errorf("SetDeviceState(revoked device, %s) = %v, want ErrRevoked", s, err)
		}
	}
	got, err = st.GetDevice(ctx, "dev-1")
	if err != nil || got.State != store.StateRevoked || got.StateReason != "stolen" {
		t.Errorf("revoked device changed: %+v, %v", got, err)
	}
}

func testRevokeDevice(t *testing.T, st store.Store) {
	ctx := context.Background()
	d := device("dev-1")
	c1 := mustCreateDevice(t, st, d)
	c2 := credential(identity.KindDevice, "dev-1", base.Add(time.Minute))
	if err := st.AddCredential(ctx, c2); err != nil {
		t.Fatal(err)
	}
	other := mustCreateDevice(t, st, device("dev-2"))

	at := base.Add(2 * time.Hour)
	got, revoked, err := st.RevokeDevice(ctx, "dev-1", "stolen", at)
	if err != nil {
		t.Fatal(err)
	}
	want := d
	want.State, want.StateReason, want.UpdatedAt = store.StateRevoked, "stolen", at
	checkDevice(t, got, want)
	if s := serials(revoked); len(s) != 2 || !slices.Contains(s, c1.Serial) || !slices.Contains(s, c2.Serial) {
		t.Fatalf("RevokeDevice returned credentials %v, want %s and %s", s, c1.Serial, c2.Serial)
	}
	for _, c := range revoked {
		if !c.RevokedAt.Equal(norm(at)) || c.RevocationReason != "stolen" {
			t.Errorf("returned credential %s: revoked at %v reason %q", c.Serial, c.RevokedAt, c.RevocationReason)
		}
	}
	for _, want := range []store.Credential{c1, c2} {
		want.RevokedAt, want.RevocationReason = at, "stolen"
		got, err := st.CredentialBySerial(ctx, want.Serial)
		if err != nil {
			t.Fatal(err)
		}
		checkCredential(t, got, want)
	}
	// The other device is untouched.
	if c, err := st.CredentialBySerial(ctx, other.Serial); err != nil || c.Revoked() {
		t.Errorf("other device's credential: %+v, %v", c, err)
	}

	// Idempotent: nothing newly revoked, first reason and time stand.
	got, revoked, err = st.RevokeDevice(ctx, "dev-1", "again", at.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(revoked) != 0 {
		t.Errorf("second RevokeDevice returned %v, want none", serials(revoked))
	}
	checkDevice(t, got, want)
	if c, err := st.CredentialBySerial(ctx, c1.Serial); err != nil || !c.RevokedAt.Equal(norm(at)) || c.RevocationReason != "stolen" {
		t.Errorf("second RevokeDevice changed a credential: %+v, %v", c, err)
	}

	if _, _, err := st.RevokeDevice(ctx, "missing", "x", at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeDevice(missing) = %v, want ErrNotFound", err)
	}

	// A disabled device can be revoked too.
	mustCreateDevice(t, st, device("dev-3"))
	if _, err := st.SetDeviceState(ctx, "dev-3", store.StateDisabled, "x", at); err != nil {
		t.Fatal(err)
	}
	if got, revoked, err := st.RevokeDevice(ctx, "dev-3", "gone", at); err != nil || got.State != store.StateRevoked || len(revoked) != 1 {
		t.Errorf("RevokeDevice(disabled) = %+v, %d creds, %v", got, len(revoked), err)
	}
}

func testSetDeviceTags(t *testing.T, st store.Store) {
	ctx := context.Background()
	d := device("dev-1")
	d.Tags = map[string]string{"a": "1", "b": "2"}
	mustCreateDevice(t, st, d)
	mustCreateDevice(t, st, device("dev-2"))

	for _, tags := range []map[string]string{
		{"b": "3", "c": "4"},
		{},
		nil,
		{"x": ""},
	} {
		if err := st.SetDeviceTags(ctx, "dev-1", tags); err != nil {
			t.Fatalf("SetDeviceTags(%v): %v", tags, err)
		}
		got, err := st.GetDevice(ctx, "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got.Tags, tags) || got.Tags == nil {
			t.Errorf("after SetDeviceTags(%v): tags %v", tags, got.Tags)
		}
	}
	if ds, err := st.ListDevices(ctx, store.DeviceFilter{Tags: map[string]string{"a": "1"}}); err != nil || len(ds) != 0 {
		t.Errorf("old tag still matches: %v, %v", ids(ds), err)
	}
	if err := st.SetDeviceTags(ctx, "missing", map[string]string{"a": "1"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetDeviceTags(missing) = %v, want ErrNotFound", err)
	}
}

func testAddCredential(t *testing.T, st store.Store) {
	ctx := context.Background()
	c1 := mustCreateDevice(t, st, device("dev-1"))

	c2 := credential(identity.KindDevice, "dev-1", base.Add(time.Hour))
	if err := st.AddCredential(ctx, c2); err != nil {
		t.Fatal(err)
	}
	got, err := st.CredentialBySerial(ctx, c2.Serial)
	if err != nil {
		t.Fatal(err)
	}
	checkCredential(t, got, c2)

	dup := credential(identity.KindDevice, "dev-1", base)
	dup.Serial = c1.Serial
	if err := st.AddCredential(ctx, dup); !errors.Is(err, store.ErrConflict) {
		t.Errorf("AddCredential(duplicate serial) = %v, want ErrConflict", err)
	}
	if got, err := st.CredentialBySerial(ctx, c1.Serial); err != nil {
		t.Fatal(err)
	} else {
		checkCredential(t, got, c1)
	}
	if err := st.AddCredential(ctx, credential(identity.KindDevice, "missing", base)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AddCredential(missing device) = %v, want ErrNotFound", err)
	}
	if err := st.AddCredential(ctx, credential(identity.KindService, "dev-1", base)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AddCredential(service named like a device) = %v, want ErrNotFound", err)
	}
	bad := credential(identity.KindDevice, "dev-1", base)
	bad.SubjectKind = "robot"
	if err := st.AddCredential(ctx, bad); err == nil {
		t.Error("AddCredential accepted an unknown subject kind")
	}

	if _, _, err := st.RevokeDevice(ctx, "dev-1", "x", base); err != nil {
		t.Fatal(err)
	}
	late := credential(identity.KindDevice, "dev-1", base.Add(2*time.Hour))
	if err := st.AddCredential(ctx, late); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("AddCredential(revoked device) = %v, want ErrRevoked", err)
	}
	if _, err := st.CredentialBySerial(ctx, late.Serial); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("credential for a revoked device was stored: %v", err)
	}
}

func testCredentialBySerial(t *testing.T, st store.Store) {
	ctx := context.Background()
	c := mustCreateDevice(t, st, device("dev-1"))
	got, err := st.CredentialBySerial(ctx, strings.ToUpper(c.Serial))
	if err != nil {
		t.Fatalf("CredentialBySerial(uppercase): %v", err)
	}
	checkCredential(t, got, c)
	if got.NotAfter.Location() != time.UTC || got.Revoked() {
		t.Errorf("times not normalised: %+v", got)
	}
	if _, err := st.CredentialBySerial(ctx, "00"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CredentialBySerial(missing) = %v, want ErrNotFound", err)
	}
	// Certificate dates far from now must survive (9999-12-31 is the
	// RFC 5280 "no expiry" date).
	sv := store.Service{Name: "svc", Role: identity.RoleReader, State: store.StateActive, CreatedAt: base}
	sc := credential(identity.KindService, "svc", base)
	sc.NotBefore = time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC)
	sc.NotAfter = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	if err := st.CreateService(ctx, sv, sc); err != nil {
		t.Fatal(err)
	}
	got, err = st.CredentialBySerial(ctx, sc.Serial)
	if err != nil {
		t.Fatal(err)
	}
	checkCredential(t, got, sc)
}

// checkAdmission compares an Admission with the credential it should
// carry (less its blobs) and the subject's state, reason and role.
func checkAdmission(t *testing.T, got store.Admission, c store.Credential, state store.DeviceState, reason, role string) {
	t.Helper()
	c.CSR, c.Certificate = nil, nil
	checkCredential(t, got.Credential, c)
	if len(got.Credential.CSR) != 0 || len(got.Credential.Certificate) != 0 {
		t.Errorf("Admission(%s) read the CSR or certificate", c.Serial)
	}
	if got.SubjectState != state || got.SubjectStateReason != reason || got.Role != role {
		t.Errorf("Admission(%s) subject = %q %q role %q, want %q %q role %q", c.Serial,
			got.SubjectState, got.SubjectStateReason, got.Role, state, reason, role)
	}
}

func testAdmission(t *testing.T, st store.Store) {
	ctx := context.Background()
	// A device and a service with the same name: each credential must be
	// joined with its own kind of subject.
	dc := mustCreateDevice(t, st, device("shared"))
	sv := store.Service{Name: "shared", Role: identity.RoleCommander, State: store.StateActive, CreatedAt: base}
	sc := credential(identity.KindService, "shared", base)
	if err := st.CreateService(ctx, sv, sc); err != nil {
		t.Fatal(err)
	}
	a, err := st.Admission(ctx, strings.ToUpper(dc.Serial))
	if err != nil {
		t.Fatalf("Admission(device, uppercase): %v", err)
	}
	checkAdmission(t, a, dc, store.StateActive, "", "")
	if a, err = st.Admission(ctx, sc.Serial); err != nil {
		t.Fatal(err)
	}
	checkAdmission(t, a, sc, store.StateActive, "", identity.RoleCommander)

	// Each change of state shows in the next read.
	at := base.Add(time.Hour)
	if _, err := st.SetDeviceState(ctx, "shared", store.StateDisabled, "lost", at); err != nil {
		t.Fatal(err)
	}
	if a, err = st.Admission(ctx, dc.Serial); err != nil {
		t.Fatal(err)
	}
	checkAdmission(t, a, dc, store.StateDisabled, "lost", "")
	if _, _, err := st.RevokeDevice(ctx, "shared", "stolen", at); err != nil {
		t.Fatal(err)
	}
	if a, err = st.Admission(ctx, dc.Serial); err != nil {
		t.Fatal(err)
	}
	dc.RevokedAt, dc.RevocationReason = at, "stolen"
	checkAdmission(t, a, dc, store.StateRevoked, "stolen", "")
	// The service of the same name is untouched; then revoked too.
	if a, err = st.Admission(ctx, sc.Serial); err != nil {
		t.Fatal(err)
	}
	checkAdmission(t, a, sc, store.StateActive, "", identity.RoleCommander)
	if _, _, err := st.RevokeService(ctx, "shared", "retired", at); err != nil {
		t.Fatal(err)
	}
	if a, err = st.Admission(ctx, sc.Serial); err != nil {
		t.Fatal(err)
	}
	sc.RevokedAt, sc.RevocationReason = at, "retired"
	checkAdmission(t, a, sc, store.StateRevoked, "retired", identity.RoleCommander)

	if _, err := st.Admission(ctx, "00"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Admission(missing) = %v, want ErrNotFound", err)
	}
}

func testCredentialsNewestFirst(t *testing.T, st store.Store) {
	ctx := context.Background()
	c0 := mustCreateDevice(t, st, device("dev-1"))
	mustCreateDevice(t, st, device("dev-2"))
	want := []string{c0.Serial}
	for i := 1; i <= 4; i++ {
		c := credential(identity.KindDevice, "dev-1", base.Add(time.Duration(i)*time.Hour))
		if err := st.AddCredential(ctx, c); err != nil {
			t.Fatal(err)
		}
		want = append([]string{c.Serial}, want...)
	}
	cs, err := st.Credentials(ctx, identity.KindDevice, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if got := serials(cs); !slices.Equal(got, want) {
		t.Errorf("Credentials = %v, want newest first %v", got, want)
	}
	if cs, err := st.Credentials(ctx, identity.KindService, "dev-1"); err != nil || len(cs) != 0 {
		t.Errorf("Credentials(service dev-1) = %v, %v; want none", serials(cs), err)
	}
	if cs, err := st.Credentials(ctx, identity.KindDevice, "missing"); err != nil || len(cs) != 0 {
		t.Errorf("Credentials(missing) = %v, %v; want none", serials(cs), err)
	}
}

func testRevokedCredentials(t *testing.T, st store.Store) {
	ctx := context.Background()
	if cs, err := st.RevokedCredentials(ctx); err != nil || len(cs) != 0 {
		t.Fatalf("RevokedCredentials(empty store) = %v, %v", serials(cs), err)
	}
	a := mustCreateDevice(t, st, device("a"))
	mustCreateDevice(t, st, device("b"))
	sv := store.Service{Name: "svc", Role: identity.RoleCommander, State: store.StateActive, CreatedAt: base}
	sc := credential(identity.KindService, "svc", base)
	if err := st.CreateService(ctx, sv, sc); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.RevokeDevice(ctx, "a", "keyCompromise", base.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.RevokeService(ctx, "svc", "retired", base.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	cs, err := st.RevokedCredentials(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := serials(cs); !slices.Equal(got, []string{a.Serial, sc.Serial}) {
		t.Fatalf("RevokedCredentials = %v, want %v", got, []string{a.Serial, sc.Serial})
	}
	if cs[0].RevocationReason != "keyCompromise" || !cs[0].RevokedAt.Equal(norm(base.Add(time.Hour))) {
		t.Errorf("revoked credential: %+v", cs[0])
	}
}

func checkService(t *testing.T, got, want store.Service) {
	t.Helper()
	if want.UpdatedAt.IsZero() {
		want.UpdatedAt = want.CreatedAt
	}
	if got.Name != want.Name || got.Role != want.Role || got.State != want.State || got.StateReason != want.StateReason ||
		!got.CreatedAt.Equal(norm(want.CreatedAt)) || !got.UpdatedAt.Equal(norm(want.UpdatedAt)) ||
		got.CreatedAt.Location() != time.UTC {
		t.Errorf("service mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func testServices(t *testing.T, st store.Store) {
	ctx := context.Background()
	if ss, err := st.ListServices(ctx); err != nil || len(ss) != 0 {
		t.Fatalf("ListServices(empty) = %v, %v", ss, err)
	}
	var want []store.Service
	for _, name := range []string{"zeta", "alpha", "mid"} {
		sv := store.Service{Name: name, Role: identity.RoleReader, State: store.StateActive, CreatedAt: base}
		c := credential(identity.KindService, name, base)
		if err := st.CreateService(ctx, sv, c); err != nil {
			t.Fatalf("CreateService(%s): %v", name, err)
		}
		got, err := st.GetService(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		checkService(t, got, sv)
		want = append(want, sv)
	}
	slices.SortFunc(want, func(a, b store.Service) int { return strings.Compare(a.Name, b.Name) })
	ss, err := st.ListServices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != len(want) {
		t.Fatalf("ListServices = %d services, want %d", len(ss), len(want))
	}
	for i := range ss {
		checkService(t, ss[i], want[i])
	}

	dup := store.Service{Name: "alpha", Role: identity.RoleCommander, State: store.StateActive, CreatedAt: base}
	if err := st.CreateService(ctx, dup, credential(identity.KindService, "alpha", base)); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "alpha") {
		t.Errorf("CreateService(duplicate) = %v, want ErrConflict naming alpha", err)
	}
	if got, err := st.GetService(ctx, "alpha"); err != nil || got.Role != identity.RoleReader {
		t.Errorf("duplicate CreateService changed the service: %+v, %v", got, err)
	}

	// Serial conflict with a device credential: nothing stored.
	dc := mustCreateDevice(t, st, device("dev-1"))
	sc := credential(identity.KindService, "beta", base)
	sc.Serial = dc.Serial
	if err := st.CreateService(ctx, store.Service{Name: "beta", Role: identity.RoleReader, State: store.StateActive, CreatedAt: base}, sc); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CreateService(duplicate serial) = %v, want ErrConflict", err)
	}
	if _, err := st.GetService(ctx, "beta"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("service row left behind after failed CreateService: %v", err)
	}
	if _, err := st.GetService(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetService(missing) = %v, want ErrNotFound", err)
	}
	// Credential naming another subject is refused.
	if err := st.CreateService(ctx, store.Service{Name: "gamma", Role: identity.RoleReader, State: store.StateActive, CreatedAt: base},
		credential(identity.KindDevice, "gamma", base)); err == nil {
		t.Error("CreateService accepted a device credential")
	}
}

func testRevokeService(t *testing.T, st store.Store) {
	ctx := context.Background()
	sv := store.Service{Name: "billing", Role: identity.RoleCommander, State: store.StateActive, CreatedAt: base}
	c1 := credential(identity.KindService, "billing", base)
	if err := st.CreateService(ctx, sv, c1); err != nil {
		t.Fatal(err)
	}
	c2 := credential(identity.KindService, "billing", base.Add(time.Hour))
	if err := st.AddCredential(ctx, c2); err != nil {
		t.Fatal(err)
	}
	at := base.Add(3 * time.Hour)
	got, revoked, err := st.RevokeService(ctx, "billing", "retired", at)
	if err != nil {
		t.Fatal(err)
	}
	want := sv
	want.State, want.StateReason, want.UpdatedAt = store.StateRevoked, "retired", at
	checkService(t, got, want)
	if s := serials(revoked); len(s) != 2 || !slices.Contains(s, c1.Serial) || !slices.Contains(s, c2.Serial) {
		t.Errorf("RevokeService returned %v", s)
	}
	got, revoked, err = st.RevokeService(ctx, "billing", "again", at.Add(time.Hour))
	if err != nil || len(revoked) != 0 {
		t.Errorf("second RevokeService = %v creds, %v", serials(revoked), err)
	}
	checkService(t, got, want)
	if err := st.AddCredential(ctx, credential(identity.KindService, "billing", at)); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("AddCredential(revoked service) = %v, want ErrRevoked", err)
	}
	if _, _, err := st.RevokeService(ctx, "missing", "x", at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeService(missing) = %v, want ErrNotFound", err)
	}
}

// ConcurrentWriters hammers two handles on the same database (they may be
// the same handle) with interleaved writes and reads, and checks that no
// operation fails and every write landed. Backends with several processes
// or connection pools must pass it with two independently opened handles.
func ConcurrentWriters(t *testing.T, a, b store.Store) {
	t.Helper()
	ctx := context.Background()
	const (
		workers = 4
		each    = 25
	)
	prefix := randHex(4)
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
	for w := range workers {
		st := a
		if w%2 == 1 {
			st = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("%s-w%d-%03d", prefix, w, i)
				d := device(id)
				d.Tags = map[string]string{"worker": fmt.Sprint(w)}
				if err := st.CreateDevice(ctx, d, credential(identity.KindDevice, id, base)); err != nil {
					fail(fmt.Errorf("CreateDevice(%s): %w", id, err))
					continue
				}
				if _, err := st.SetDeviceState(ctx, id, store.StateDisabled, "test", base); err != nil {
					fail(fmt.Errorf("SetDeviceState(%s): %w", id, err))
				}
				if i%5 == 0 {
					if _, _, err := st.RevokeDevice(ctx, id, "test", base); err != nil {
						fail(fmt.Errorf("RevokeDevice(%s): %w", id, err))
					}
				}
				if _, err := st.ListDevices(ctx, store.DeviceFilter{Tags: map[string]string{"worker": fmt.Sprint(w)}}); err != nil {
					fail(fmt.Errorf("ListDevices: %w", err))
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d concurrent operations failed; first: %v", len(errs), errs[0])
	}
	for _, st := range []store.Store{a, b} {
		var n int
		after := ""
		for {
			ds, err := st.ListDevices(ctx, store.DeviceFilter{After: after, Limit: store.MaxListLimit})
			if err != nil {
				t.Fatal(err)
			}
			if len(ds) == 0 {
				break
			}
			for _, d := range ds {
				if strings.HasPrefix(d.ID, prefix+"-") {
					n++
				}
			}
			after = ds[len(ds)-1].ID
		}
		if n != workers*each {
			t.Errorf("handle sees %d devices, want %d", n, workers*each)
		}
	}
	revoked, err := a.RevokedCredentials(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for _, c := range revoked {
		if strings.HasPrefix(c.SubjectID, prefix+"-") {
			n++
		}
	}
	if want := workers * ((each + 4) / 5); n != want {
		t.Errorf("%d revoked credentials, want %d", n, want)
	}
}
