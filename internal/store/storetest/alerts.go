package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// alert returns a plausible new alert about a device.
func alert(id, detector, deviceID string, created time.Time) store.Alert {
	return store.Alert{
		ID:        id,
		Detector:  detector,
		Severity:  store.SeverityWarning,
		Device:    deviceID,
		Remote:    "192.0.2.7",
		Summary:   "10 authentication failures in 5m for device " + deviceID,
		Details:   map[string]string{"count": "10", "window": "5m"},
		Response:  store.ResponseNone,
		Count:     1,
		CreatedAt: created,
		LastSeen:  created,
	}
}

func mustCreateAlert(t *testing.T, st store.Store, a store.Alert) {
	t.Helper()
	if err := st.CreateAlert(context.Background(), a); err != nil {
		t.Fatalf("CreateAlert(%s): %v", a.ID, err)
	}
}

func checkAlert(t *testing.T, got, want store.Alert) {
	t.Helper()
	if want.Details == nil {
		want.Details = map[string]string{}
	}
	if want.LastSeen.IsZero() {
		want.LastSeen = want.CreatedAt
	}
	if got.ID != want.ID || got.Detector != want.Detector || got.Severity != want.Severity || got.Device != want.Device ||
		got.Service != want.Service || got.Remote != want.Remote || got.Summary != want.Summary ||
		!maps.Equal(got.Details, want.Details) || got.Details == nil || got.Response != want.Response || got.Count != want.Count ||
		!got.CreatedAt.Equal(norm(want.CreatedAt)) || !got.LastSeen.Equal(norm(want.LastSeen)) ||
		!got.AcknowledgedAt.Equal(norm(want.AcknowledgedAt)) || got.AcknowledgedBy != want.AcknowledgedBy ||
		got.Acknowledged() != want.Acknowledged() ||
		got.CreatedAt.Location() != time.UTC || got.LastSeen.Location() != time.UTC ||
		(got.Acknowledged() && got.AcknowledgedAt.Location() != time.UTC) {
		t.Errorf("alert mismatch:\n got %+v\nwant %+v (times normalised to UTC µs)", got, want)
	}
}

func alertIDs(as []store.Alert) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.ID
	}
	return out
}

func testCreateAndGetAlert(t *testing.T, st store.Store) {
	ctx := context.Background()
	a := alert("0a1b2c3d4e5f6071", "auth_failures", "dev-1", base)
	a.Service = ""
	a.Severity = store.SeverityCritical
	a.Response = store.ResponseQuarantine
	a.LastSeen = base.Add(time.Minute)
	a.Count = 3
	mustCreateAlert(t, st, a)
	got, err := st.GetAlert(ctx, a.ID)
	if err != nil {
		t.Fatalf("GetAlert: %v", err)
	}
	checkAlert(t, got, a)

	// No details read back as an empty map; an unset LastSeen is the
	// creation time. A service alert names no device.
	bare := alert("ff00", "acl_denials", "", base)
	bare.Service, bare.Details, bare.LastSeen, bare.Remote = "billing", nil, time.Time{}, ""
	mustCreateAlert(t, st, bare)
	got, err = st.GetAlert(ctx, bare.ID)
	if err != nil {
		t.Fatal(err)
	}
	checkAlert(t, got, bare)

	if err := st.CreateAlert(ctx, alert(a.ID, "other", "dev-2", base)); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), a.ID) {
		t.Errorf("CreateAlert(duplicate ID) = %v, want ErrConflict naming the ID", err)
	}
	if got, err := st.GetAlert(ctx, a.ID); err != nil {
		t.Fatal(err)
	} else {
		checkAlert(t, got, a)
	}
	if _, err := st.GetAlert(ctx, "abcdef"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetAlert(missing) = %v, want ErrNotFound", err)
	}
	// An alert may name a device that does not exist (a made-up client ID).
	if _, err := st.GetDevice(ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("dev-1 exists: %v", err)
	}
}

func testCreateAlertRejectsBadInput(t *testing.T, st store.Store) {
	ctx := context.Background()
	long := strings.Repeat("x", store.MaxAlertFieldLength+1)
	for _, tc := range []struct {
		name   string
		mutate func(*store.Alert)
	}{
		{"empty ID", func(a *store.Alert) { a.ID = "" }},
		{"uppercase ID", func(a *store.Alert) { a.ID = "ABCD" }},
		{"ID not hex", func(a *store.Alert) { a.ID = "a-1" }},
		{"ID too long", func(a *store.Alert) { a.ID = strings.Repeat("a", store.MaxAlertIDLength+1) }},
		{"no detector", func(a *store.Alert) { a.Detector = "" }},
		{"unknown severity", func(a *store.Alert) { a.Severity = "urgent" }},
		{"unknown response", func(a *store.Alert) { a.Response = "alert" }},
		{"no summary", func(a *store.Alert) { a.Summary = "" }},
		{"summary too long", func(a *store.Alert) { a.Summary = strings.Repeat("s", store.MaxAlertSummaryLength+1) }},
		{"device too long", func(a *store.Alert) { a.Device = long }},
		{"remote too long", func(a *store.Alert) { a.Remote = long }},
		{"device not UTF-8", func(a *store.Alert) { a.Device = "dev\xff" }},
		{"summary with NUL", func(a *store.Alert) { a.Summary = "a\x00b" }},
		{"detail value too long", func(a *store.Alert) {
			a.Details = map[string]string{"k": strings.Repeat("v", store.MaxAlertDetailLength+1)}
		}},
		{"too many details", func(a *store.Alert) {
			a.Details = map[string]string{}
			for i := range store.MaxAlertDetails + 1 {
				a.Details[fmt.Sprint(i)] = "v"
			}
		}},
		{"zero count", func(a *store.Alert) { a.Count = 0 }},
		{"no creation time", func(a *store.Alert) { a.CreatedAt = time.Time{} }},
		{"last seen before creation", func(a *store.Alert) { a.LastSeen = a.CreatedAt.Add(-time.Second) }},
		{"acknowledged", func(a *store.Alert) { a.AcknowledgedAt, a.AcknowledgedBy = base, "alice" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := alert("abc123", "auth_failures", "dev-1", base)
			tc.mutate(&a)
			if err := st.CreateAlert(ctx, a); err == nil {
				t.Fatalf("CreateAlert accepted %s", tc.name)
			}
			if as, err := st.ListAlerts(ctx, store.AlertFilter{}); err != nil || len(as) != 0 {
				t.Errorf("alert stored despite error: %v, %v", alertIDs(as), err)
			}
		})
	}
}

func testUpdateAlert(t *testing.T, st store.Store) {
	ctx := context.Background()
	a := alert("a1", "publish_rate", "dev-1", base)
	mustCreateAlert(t, st, a)

	got, err := st.UpdateAlert(ctx, "a1", 2, base.Add(10*time.Minute))
	if err != nil {
		t.Fatalf("UpdateAlert: %v", err)
	}
	want := a
	want.Count, want.LastSeen = 3, base.Add(10*time.Minute)
	checkAlert(t, got, want)

	// LastSeen never moves backwards; the count still grows.
	got, err = st.UpdateAlert(ctx, "a1", 1, base.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	want.Count = 4
	checkAlert(t, got, want)
	if got, err := st.GetAlert(ctx, "a1"); err != nil {
		t.Fatal(err)
	} else {
		checkAlert(t, got, want)
	}

	if _, err := st.UpdateAlert(ctx, "a1", 0, base); err == nil {
		t.Error("UpdateAlert accepted adding 0 findings")
	}
	if _, err := st.UpdateAlert(ctx, "b2", 1, base); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateAlert(missing) = %v, want ErrNotFound", err)
	}

	// An acknowledged alert takes no more findings: the caller raises a
	// new one, and the acknowledged alert is left as it was.
	if _, err := st.AcknowledgeAlert(ctx, "a1", "alice", base.Add(20*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.UpdateAlert(ctx, "a1", 1, base.Add(30*time.Minute)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("UpdateAlert(acknowledged) = %v, want ErrConflict", err)
	}
	want.AcknowledgedAt, want.AcknowledgedBy = base.Add(20*time.Minute), "alice"
	if got, err := st.GetAlert(ctx, "a1"); err != nil {
		t.Fatal(err)
	} else {
		checkAlert(t, got, want)
	}
}

func testAcknowledgeAlert(t *testing.T, st store.Store) {
	ctx := context.Background()
	a := alert("c0ffee", "firmware", "dev-1", base)
	mustCreateAlert(t, st, a)
	got, err := st.AcknowledgeAlert(ctx, "c0ffee", "alice", base.Add(time.Hour))
	if err != nil {
		t.Fatalf("AcknowledgeAlert: %v", err)
	}
	want := a
	want.AcknowledgedAt, want.AcknowledgedBy = base.Add(time.Hour), "alice"
	checkAlert(t, got, want)

	// The first acknowledgement stands.
	got, err = st.AcknowledgeAlert(ctx, "c0ffee", "bob", base.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	checkAlert(t, got, want)

	if _, err := st.AcknowledgeAlert(ctx, "dead", "alice", base); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AcknowledgeAlert(missing) = %v, want ErrNotFound", err)
	}
	mustCreateAlert(t, st, alert("beef", "firmware", "dev-1", base))
	if _, err := st.AcknowledgeAlert(ctx, "beef", "", base); err == nil {
		t.Error("AcknowledgeAlert accepted an empty acknowledger")
	}
	if got, err := st.GetAlert(ctx, "beef"); err != nil || got.Acknowledged() {
		t.Errorf("refused acknowledgement changed the alert: %+v, %v", got, err)
	}
}

func testListAlerts(t *testing.T, st store.Store) {
	ctx := context.Background()
	// Created out of order; two share a creation time, so the ID breaks
	// the tie.
	mk := func(id, detector, deviceID string, created, seen time.Duration) {
		a := alert(id, detector, deviceID, base.Add(created))
		a.LastSeen = base.Add(seen)
		mustCreateAlert(t, st, a)
	}
	mk("05", "auth_failures", "dev-1", 5*time.Minute, 5*time.Minute)
	mk("01", "publish_rate", "dev-2", 1*time.Minute, 50*time.Minute)
	mk("04", "auth_failures", "dev-2", 4*time.Minute, 4*time.Minute)
	mk("03", "silence", "dev-1", 3*time.Minute, 3*time.Minute)
	mk("02", "auth_failures", "dev-1", 4*time.Minute, 4*time.Minute)
	if _, err := st.AcknowledgeAlert(ctx, "04", "alice", base.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		f    store.AlertFilter
		want []string
	}{
		{"all, newest first", store.AlertFilter{}, []string{"05", "04", "02", "03", "01"}},
		{"detector", store.AlertFilter{Detector: "auth_failures"}, []string{"05", "04", "02"}},
		{"device", store.AlertFilter{Device: "dev-2"}, []string{"04", "01"}},
		{"unacknowledged", store.AlertFilter{Unacknowledged: true}, []string{"05", "02", "03", "01"}},
		{"since is on last seen", store.AlertFilter{Since: base.Add(4 * time.Minute)}, []string{"05", "04", "02", "01"}},
		{"everything at once", store.AlertFilter{Detector: "auth_failures", Device: "dev-1", Unacknowledged: true, Since: base.Add(5 * time.Minute)}, []string{"05"}},
		{"limit", store.AlertFilter{Limit: 2}, []string{"05", "04"}},
		{"cursor", store.AlertFilter{Before: "04", Limit: 2}, []string{"02", "03"}},
		{"cursor on a tie", store.AlertFilter{Before: "02"}, []string{"03", "01"}},
		{"cursor and filter", store.AlertFilter{Before: "05", Device: "dev-1"}, []string{"02", "03"}},
		{"last page", store.AlertFilter{Before: "01"}, nil},
		{"no match", store.AlertFilter{Detector: "nope"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			as, err := st.ListAlerts(ctx, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if as == nil {
				t.Error("ListAlerts returned nil, want an empty slice")
			}
			if got := alertIDs(as); !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
				t.Errorf("ListAlerts(%+v) = %v, want %v", tc.f, got, tc.want)
			}
		})
	}
	if _, err := st.ListAlerts(ctx, store.AlertFilter{Before: "99"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ListAlerts(unknown cursor) = %v, want ErrNotFound", err)
	}

	// Walk pages of 2 with the cursor.
	var walked []string
	f := store.AlertFilter{Limit: 2}
	for range 10 {
		as, err := st.ListAlerts(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		if len(as) == 0 {
			break
		}
		walked = append(walked, alertIDs(as)...)
		f.Before = as[len(as)-1].ID
	}
	if want := []string{"05", "04", "02", "03", "01"}; !slices.Equal(walked, want) {
		t.Errorf("paged walk = %v, want %v", walked, want)
	}
}

func testPurgeAlerts(t *testing.T, st store.Store) {
	ctx := context.Background()
	old := alert("0001", "silence", "dev-1", base)
	mustCreateAlert(t, st, old)
	// Created as long ago, but seen recently: kept.
	busy := alert("0002", "silence", "dev-2", base)
	busy.LastSeen = base.Add(48 * time.Hour)
	mustCreateAlert(t, st, busy)
	acked := alert("0003", "silence", "dev-3", base)
	mustCreateAlert(t, st, acked)
	if _, err := st.AcknowledgeAlert(ctx, "0003", "alice", base.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	n, err := st.PurgeAlerts(ctx, base.Add(24*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("PurgeAlerts = %d, %v; want 2", n, err)
	}
	as, err := st.ListAlerts(ctx, store.AlertFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if got := alertIDs(as); !slices.Equal(got, []string{"0002"}) {
		t.Errorf("after purge: %v, want [0002]", got)
	}
	if n, err := st.PurgeAlerts(ctx, base.Add(24*time.Hour)); err != nil || n != 0 {
		t.Errorf("second PurgeAlerts = %d, %v; want 0", n, err)
	}
}

func checkQuarantine(t *testing.T, got, want store.Quarantine) {
	t.Helper()
	if got.DeviceID != want.DeviceID || got.Reason != want.Reason || got.AlertID != want.AlertID || got.Actor != want.Actor ||
		!got.CreatedAt.Equal(norm(want.CreatedAt)) || got.CreatedAt.Location() != time.UTC {
		t.Errorf("quarantine mismatch:\n got %+v\nwant %+v", got, want)
	}
}

func testQuarantines(t *testing.T, st store.Store) {
	ctx := context.Background()
	if qs, err := st.ListQuarantines(ctx); err != nil || qs == nil || len(qs) != 0 {
		t.Fatalf("ListQuarantines(empty) = %v, %v; want an empty slice", qs, err)
	}
	for _, id := range []string{"dev-b", "dev-a", "dev-c"} {
		mustCreateDevice(t, st, device(id))
	}
	qb := store.Quarantine{DeviceID: "dev-b", Reason: "cloned identity", AlertID: "0abc", Actor: "monitor", CreatedAt: base}
	qa := store.Quarantine{DeviceID: "dev-a", Reason: "", Actor: "alice", CreatedAt: base.Add(time.Minute)}
	for _, q := range []store.Quarantine{qb, qa} {
		if err := st.SetQuarantine(ctx, q); err != nil {
			t.Fatalf("SetQuarantine(%s): %v", q.DeviceID, err)
		}
	}
	dup := qb
	dup.Reason, dup.Actor = "again", "bob"
	if err := st.SetQuarantine(ctx, dup); !errors.Is(err, store.ErrConflict) {
		t.Errorf("SetQuarantine(quarantined) = %v, want ErrConflict", err)
	}
	if err := st.SetQuarantine(ctx, store.Quarantine{DeviceID: "ghost", Actor: "monitor", CreatedAt: base}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetQuarantine(missing device) = %v, want ErrNotFound", err)
	}
	qs, err := st.ListQuarantines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 2 {
		t.Fatalf("ListQuarantines = %+v, want dev-a and dev-b", qs)
	}
	checkQuarantine(t, qs[0], qa)
	checkQuarantine(t, qs[1], qb) // the first quarantine stands

	got, err := st.ClearQuarantine(ctx, "dev-b")
	if err != nil {
		t.Fatalf("ClearQuarantine: %v", err)
	}
	checkQuarantine(t, got, qb)
	if _, err := st.ClearQuarantine(ctx, "dev-b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ClearQuarantine(released) = %v, want ErrNotFound", err)
	}
	if _, err := st.ClearQuarantine(ctx, "dev-c"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ClearQuarantine(never quarantined) = %v, want ErrNotFound", err)
	}
	qs, err = st.ListQuarantines(ctx)
	if err != nil || len(qs) != 1 || qs[0].DeviceID != "dev-a" {
		t.Errorf("after release: %+v, %v; want only dev-a", qs, err)
	}
	// Released, it can be quarantined again.
	if err := st.SetQuarantine(ctx, qb); err != nil {
		t.Errorf("SetQuarantine after release: %v", err)
	}

	for _, tc := range []struct {
		name string
		q    store.Quarantine
	}{
		{"bad device ID", store.Quarantine{DeviceID: "bad id", Actor: "monitor", CreatedAt: base}},
		{"no actor", store.Quarantine{DeviceID: "dev-c", CreatedAt: base}},
		{"no time", store.Quarantine{DeviceID: "dev-c", Actor: "monitor"}},
		{"alert ID not hex", store.Quarantine{DeviceID: "dev-c", AlertID: "xyz", Actor: "monitor", CreatedAt: base}},
		{"reason not UTF-8", store.Quarantine{DeviceID: "dev-c", Reason: "\xfe", Actor: "monitor", CreatedAt: base}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := st.SetQuarantine(ctx, tc.q); err == nil {
				t.Fatalf("SetQuarantine accepted %s", tc.name)
			}
			if _, err := st.ClearQuarantine(ctx, "dev-c"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("dev-c quarantined despite error: %v", err)
			}
		})
	}
}

func testExpiringCredentials(t *testing.T, st store.Store) {
	ctx := context.Background()
	now := base.Add(365 * 24 * time.Hour)
	day := 24 * time.Hour
	// mk registers a device whose only credential expires at notAfter.
	mk := func(id string, notAfter time.Time) store.Credential {
		t.Helper()
		c := credential(identity.KindDevice, id, base)
		c.NotAfter = notAfter
		if err := st.CreateDevice(ctx, device(id), c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	soon := mk("soon", now.Add(10*day))
	edge := mk("edge", now.Add(30*day)) // exactly at To: not included
	mk("later", now.Add(90*day))
	expired := mk("expired", now.Add(-2*day))
	renewed := mk("renewed", now.Add(5*day))
	fresh := credential(identity.KindDevice, "renewed", base.Add(day))
	fresh.NotAfter = now.Add(400 * day)
	if err := st.AddCredential(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	// Renewed with a certificate that expires within the window too: only
	// the newer one is news.
	short := mk("short", now.Add(3*day))
	shortNext := credential(identity.KindDevice, "short", base.Add(day))
	shortNext.NotAfter = now.Add(20 * day)
	if err := st.AddCredential(ctx, shortNext); err != nil {
		t.Fatal(err)
	}
	mk("disabled", now.Add(10*day))
	if _, err := st.SetDeviceState(ctx, "disabled", store.StateDisabled, "test", base); err != nil {
		t.Fatal(err)
	}
	mk("revoked", now.Add(10*day))
	if _, _, err := st.RevokeDevice(ctx, "revoked", "test", base); err != nil {
		t.Fatal(err)
	}
	// Recovery revokes the earlier credential, which expires later than
	// the new one: a revoked credential is neither reported nor hides the
	// live one.
	revokedLater := mk("recovered", now.Add(25*day))
	mustAddEnrollments(t, st, recoveryEnrollment("recovered"))
	live := credential(identity.KindDevice, "recovered", base.Add(day))
	live.NotAfter = now.Add(12 * day)
	if _, err := st.Recover(ctx, "recovered", live, base.Add(day)); err != nil {
		t.Fatal(err)
	}
	sc := credential(identity.KindService, "billing", base)
	sc.NotAfter = now.Add(7 * day)
	if err := st.CreateService(ctx, store.Service{Name: "billing", Role: identity.RoleReader, State: store.StateActive, CreatedAt: base}, sc); err != nil {
		t.Fatal(err)
	}

	want := map[string]string{
		soon.Serial:      "soon",
		expired.Serial:   "expired",
		shortNext.Serial: "short",
		live.Serial:      "recovered",
		sc.Serial:        "billing",
	}
	from, to := now.Add(-7*day), now.Add(30*day)
	got := map[string]string{}
	f := store.ExpiryFilter{From: from, To: to, Limit: 2}
	for range 10 {
		cs, err := st.ExpiringCredentials(ctx, f)
		if err != nil {
			t.Fatalf("ExpiringCredentials: %v", err)
		}
		if len(cs) > 2 {
			t.Fatalf("page of %d, limit 2", len(cs))
		}
		if len(cs) == 0 {
			break
		}
		for i, c := range cs {
			if i > 0 && c.Serial <= cs[i-1].Serial {
				t.Errorf("not ordered by serial: %s after %s", c.Serial, cs[i-1].Serial)
			}
			got[c.Serial] = c.SubjectID
			wantKind := identity.KindDevice
			if c.SubjectID == "billing" {
				wantKind = identity.KindService
			}
			if c.SubjectKind != wantKind || c.NotAfter.Location() != time.UTC {
				t.Errorf("credential %s: %+v", c.Serial, c)
			}
			if c.Serial == soon.Serial && (!c.NotAfter.Equal(norm(soon.NotAfter)) || !c.NotBefore.Equal(norm(soon.NotBefore))) {
				t.Errorf("validity = %v..%v, want %v..%v", c.NotBefore, c.NotAfter, norm(soon.NotBefore), norm(soon.NotAfter))
			}
		}
		f.After = cs[len(cs)-1].Serial
	}
	if !maps.Equal(got, want) {
		t.Errorf("ExpiringCredentials = %v\nwant %v\n(not %s %s %s %s)", got, want, edge.Serial, renewed.Serial, short.Serial, revokedLater.Serial)
	}
	if cs, err := st.ExpiringCredentials(ctx, store.ExpiryFilter{From: now, To: now}); err != nil || cs == nil || len(cs) != 0 {
		t.Errorf("ExpiringCredentials(empty range) = %v, %v; want an empty slice", cs, err)
	}
}
