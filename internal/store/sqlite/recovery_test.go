package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

func testRecoveryEnrollment(id string) store.Enrollment {
	return store.Enrollment{DeviceID: id, Method: store.EnrollSecret, Secret: []byte("sealed-recovery"), Created: time.Unix(5, 0), Recovery: true}
}

// columnPresent reports whether table has column.
func columnPresent(t *testing.T, db *sql.DB, table, column string) bool {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM pragma_table_info($1) WHERE name = $2`, table, column).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// A store at schema version 4 (the onboarding release) gains the recovery
// flag when a newer binary opens it: its enrollments read as first
// enrollments, and its enrolled devices can be armed for recovery.
func TestMigrateFromVersion4(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "warden.db")
	db := openVersion(t, path, "00001_init.sql", "00002_envelope.sql", "00003_firmware.sql", "00004_onboarding.sql")
	if v := schemaVersion(t, db); v != 4 {
		t.Fatalf("old schema at version %d, want 4", v)
	}
	for _, stmt := range []string{
		`INSERT INTO devices (id, model, state, created_at, updated_at) VALUES ('old', 'm1', 'active', 1, 1)`,
		`INSERT INTO credentials (serial, subject_kind, subject_id, fingerprint, not_before, not_after, csr, certificate, created_at)
		 VALUES ('0a', 'device', 'old', 'ab', 1, 2, x'01', x'02', 1)`,
		`INSERT INTO enrollments (device_id, method, claim, model, tags, secret, created_at, used_at, serial)
		 VALUES ('old', 'secret', NULL, 'm1', '{}', x'01', 1, 2, '0a')`,
		`INSERT INTO enrollments (device_id, method, claim, model, tags, secret, created_at, used_at, serial)
		 VALUES ('new', 'secret', NULL, 'm1', '{}', x'01', 1, NULL, '')`,
	} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	db.Close()

	st, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open(version 4 store): %v", err)
	}
	defer st.Close()
	if v, want := schemaVersion(t, st.ro.db), latestVersion(t); v != want {
		t.Errorf("schema version after Open = %d, want %d", v, want)
	}
	for _, id := range []string{"old", "new"} {
		if e, err := st.GetEnrollment(ctx, id); err != nil || e.Recovery {
			t.Errorf("enrollment of %s after migration: %+v, %v; want a first enrollment", id, e, err)
		}
	}
	if err := st.AddEnrollments(ctx, []store.Enrollment{testRecoveryEnrollment("old")}); err != nil {
		t.Fatalf("AddEnrollments(recovery) on a migrated store: %v", err)
	}
	if _, err := st.Recover(ctx, "old", testEnrollCredential("old", "0b"), time.Unix(9, 0)); err != nil {
		t.Fatalf("Recover on a migrated store: %v", err)
	}
	if c, err := st.CredentialBySerial(ctx, "0a"); err != nil || !c.Revoked() || c.RevocationReason != store.RecoveryRevocationReason {
		t.Errorf("earlier credential after Recover: %+v, %v", c, err)
	}
}

// Migration 5 can be rolled back: the column goes, the rows stay (a used
// recovery enrollment as history; an unused one reads as a first
// enrollment for a registered device, which Enroll refuses), and the next
// Open brings the column back.
func TestRecoveryMigrationDown(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "warden.db")
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	testDevice(t, st, "d1", "m1")
	if err := st.AddEnrollments(ctx, []store.Enrollment{testRecoveryEnrollment("d1")}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	db, err := sql.Open("sqlite", dsn(path, "_txlock=immediate"))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, sub, goose.WithDisableGlobalRegistry(true), goose.WithLogger(goose.NopLogger()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.DownTo(ctx, 4); err != nil {
		t.Fatalf("migrate down to version 4: %v", err)
	}
	if v := schemaVersion(t, db); v != 4 {
		t.Errorf("schema version after down = %d, want 4", v)
	}
	if columnPresent(t, db, "enrollments", "recovery") {
		t.Error("recovery column left after down")
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM enrollments WHERE device_id = 'd1'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("enrollment after down: %d, %v", n, err)
	}
	db.Close()

	st, err = Open(ctx, path)
	if err != nil {
		t.Fatalf("Open after down: %v", err)
	}
	defer st.Close()
	if !columnPresent(t, st.ro.db, "enrollments", "recovery") {
		t.Error("recovery column missing after the next Open")
	}
	e, err := st.GetEnrollment(ctx, "d1")
	if err != nil || e.Recovery || e.Used() {
		t.Fatalf("enrollment after down and up: %+v, %v", e, err)
	}
	d := store.Device{ID: "d1", State: store.StateActive, CreatedAt: time.Unix(2, 0)}
	if _, err := st.Enroll(ctx, d, testEnrollCredential("d1", "0c"), time.Unix(2, 0)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Enroll(registered device) = %v, want ErrConflict", err)
	}
	// Re-arming puts the flag back.
	if err := st.AddEnrollments(ctx, []store.Enrollment{testRecoveryEnrollment("d1")}); err != nil {
		t.Fatal(err)
	}
	if e, err := st.GetEnrollment(ctx, "d1"); err != nil || !e.Recovery {
		t.Errorf("re-armed enrollment: %+v, %v", e, err)
	}
}

// Recover stores the new credential, revokes the earlier ones and marks
// the enrollment used in one transaction: a failure at any step leaves
// every earlier credential valid and the enrollment unused.
func TestRecoverInSameTransaction(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	testDevice(t, st, "d1", "m1")
	earlier := testDigest("d1")[:16]
	if err := st.AddEnrollments(ctx, []store.Enrollment{testRecoveryEnrollment("d1")}); err != nil {
		t.Fatal(err)
	}
	at := time.Unix(9, 0)
	for _, trigger := range []string{
		`CREATE TRIGGER fail_step BEFORE INSERT ON credentials BEGIN SELECT RAISE(ABORT, 'injected failure'); END`,
		`CREATE TRIGGER fail_step BEFORE UPDATE ON enrollments BEGIN SELECT RAISE(ABORT, 'injected failure'); END`,
	} {
		if _, err := st.rw.ExecContext(ctx, trigger); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recover(ctx, "d1", testEnrollCredential("d1", "0a"), at); err == nil || !strings.Contains(err.Error(), "injected failure") {
			t.Fatalf("Recover with %q = %v, want the injected failure", trigger, err)
		}
		if c, err := st.CredentialBySerial(ctx, earlier); err != nil || c.Revoked() {
			t.Errorf("earlier credential after a failed Recover: %+v, %v", c, err)
		}
		if _, err := st.CredentialBySerial(ctx, "0a"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("credential left behind: %v", err)
		}
		if e, err := st.GetEnrollment(ctx, "d1"); err != nil || e.Used() || !e.Recovery {
			t.Errorf("enrollment after a failed Recover: %+v, %v", e, err)
		}
		if _, err := st.rw.ExecContext(ctx, `DROP TRIGGER fail_step`); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Recover(ctx, "d1", testEnrollCredential("d1", "0a"), at); err != nil {
		t.Fatal(err)
	}
	cs, err := st.Credentials(ctx, identity.KindDevice, "d1")
	if err != nil || len(cs) != 2 {
		t.Fatalf("credentials after Recover: %+v, %v", cs, err)
	}
	for _, c := range cs {
		if (c.Serial == "0a") == c.Revoked() {
			t.Errorf("credential %s after Recover: revoked %v", c.Serial, c.Revoked())
		}
	}
}

// A recovery enrollment never registers a new device, even if a row
// written past the Go checks names an ID that has no device.
func TestEnrollRefusesRecoveryEnrollment(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	if _, err := st.rw.ExecContext(ctx, `INSERT INTO enrollments (`+enrollmentColumns+`)
VALUES ('ghost', 'secret', NULL, '', '{}', x'01', 1, NULL, '', 1)`); err != nil {
		t.Fatal(err)
	}
	d := store.Device{ID: "ghost", State: store.StateActive, CreatedAt: time.Unix(2, 0)}
	if _, err := st.Enroll(ctx, d, testEnrollCredential("ghost", "0a"), time.Unix(2, 0)); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "recovery") {
		t.Errorf("Enroll(recovery enrollment without device) = %v, want ErrConflict about recovery", err)
	}
	if _, err := st.GetDevice(ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("device registered from a recovery enrollment: %v", err)
	}
	if _, err := st.Recover(ctx, "ghost", testEnrollCredential("ghost", "0a"), time.Unix(2, 0)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Recover(no device) = %v, want ErrNotFound", err)
	}
	if e, err := st.GetEnrollment(ctx, "ghost"); err != nil || e.Used() {
		t.Errorf("enrollment after refusals: %+v, %v", e, err)
	}
}
