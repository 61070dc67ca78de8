package sqlite

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"io/fs"
	"maps"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/storetest"
)

// onboardingTables are the tables migration 4 adds.
var onboardingTables = []string{"claim_certs", "enrollments", "claim_uses", "api_tokens", "rotations", "rotation_devices"}

func testClaimCert(name, serial string) store.ClaimCert {
	cert := []byte("claim-cert-" + name)
	sum := sha256.Sum256(cert)
	return store.ClaimCert{Name: name, Serial: serial, Fingerprint: hex.EncodeToString(sum[:]), Certificate: cert,
		NotAfter: time.Unix(1000, 0), CreatedAt: time.Unix(1, 0)}
}

func testEnrollCredential(id, serial string) store.Credential {
	return store.Credential{Serial: serial, SubjectKind: identity.KindDevice, SubjectID: id, Fingerprint: "ab", Certificate: []byte{1}}
}

// latestVersion is the version of the newest embedded migration: what
// Open brings every store to.
func latestVersion(t *testing.T) int64 {
	t.Helper()
	entries, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	var latest int64
	for _, e := range entries {
		prefix, _, _ := strings.Cut(e.Name(), "_")
		v, err := strconv.ParseInt(prefix, 10, 64)
		if err != nil {
			t.Fatalf("migration %s: no version prefix: %v", e.Name(), err)
		}
		latest = max(latest, v)
	}
	return latest
}

// openVersion creates a store at path migrated only up to the given
// migration files, as an older release left it, and returns its database.
func openVersion(t *testing.T, path string, files ...string) *sql.DB {
	t.Helper()
	if err := createFile(path); err != nil {
		t.Fatal(err)
	}
	old := fstest.MapFS{}
	for _, name := range files {
		b, err := migrations.ReadFile("migrations/" + name)
		if err != nil {
			t.Fatal(err)
		}
		old[name] = &fstest.MapFile{Data: b}
	}
	db, err := sql.Open("sqlite", dsn(path, "_txlock=immediate"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, old, goose.WithDisableGlobalRegistry(true), goose.WithLogger(goose.NopLogger()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	return db
}

// A store at schema version 3 (the firmware release) gains the onboarding
// tables when a newer binary opens it, keeps its devices, services,
// credentials and rollouts, and its devices take part in rotations and
// claims.
func TestMigrateFromVersion3(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "warden.db")
	db := openVersion(t, path, "00001_init.sql", "00002_envelope.sql", "00003_firmware.sql")
	if v := schemaVersion(t, db); v != 3 {
		t.Fatalf("old schema at version %d, want 3", v)
	}
	k := testKey(t, "release")
	img := testDigest("image")
	for _, stmt := range []string{
		`INSERT INTO devices (id, model, state, owner, created_at, updated_at) VALUES ('old', 'm1', 'active', 'alice', 1, 1)`,
		`INSERT INTO device_tags (device_id, key, value) VALUES ('old', 'site', 'lyon')`,
		`INSERT INTO credentials (serial, subject_kind, subject_id, fingerprint, not_before, not_after, csr, certificate, created_at)
		 VALUES ('0a', 'device', 'old', 'ab', 1, 2, x'01', x'02', 1)`,
		`INSERT INTO services (name, role, state, created_at, updated_at) VALUES ('svc', 'reader', 'active', 1, 1)`,
		`INSERT INTO release_keys (id, name, public_key, created_at) VALUES ('` + k.ID + `', 'k', x'` + hex.EncodeToString(k.PublicKey) + `', 1)`,
		`INSERT INTO firmware_images (sha256, model, version, security_counter, size, key_id, statement, sequence, expires_at, uploaded_at, updated_at)
		 VALUES ('` + img + `', 'm1', '1.0.0+0', 0, 1, '` + k.ID + `', x'01', 1, 9, 1, 1)`,
		`INSERT INTO rollouts (id, image_sha256, model, tags, stages, stage, failure_threshold, min_finished, timeout_us, state, stage_started_at, created_at, updated_at)
		 VALUES ('r1', '` + img + `', 'm1', '{}', '[100]', 0, 0, 0, 0, 'running', 1, 1, 1)`,
		`INSERT INTO rollout_devices (rollout_id, device_id, stage, state, updated_at) VALUES ('r1', 'old', 0, 'offered', 1)`,
	} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	db.Close()

	st, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open(version 3 store): %v", err)
	}
	defer st.Close()
	if v, want := schemaVersion(t, st.ro.db), latestVersion(t); v != want {
		t.Errorf("schema version after Open = %d, want %d", v, want)
	}
	if n := tablesPresent(t, st.ro.db, onboardingTables); n != len(onboardingTables) {
		t.Errorf("%d of %d onboarding tables after migration", n, len(onboardingTables))
	}
	if d, err := st.GetDevice(ctx, "old"); err != nil || d.Tags["site"] != "lyon" || d.Owner != "alice" {
		t.Errorf("device after migration: %+v, %v", d, err)
	}
	if c, err := st.CredentialBySerial(ctx, "0a"); err != nil || c.SubjectID != "old" {
		t.Errorf("credential after migration: %+v, %v", c, err)
	}
	if _, err := st.GetService(ctx, "svc"); err != nil {
		t.Errorf("service after migration: %v", err)
	}
	if _, m, err := st.ActiveRollout(ctx, "old"); err != nil || m.State != store.DeviceOffered {
		t.Errorf("rollout membership after migration: %+v, %v", m, err)
	}

	// The old device is part of a rotation, can be claimed by its owner,
	// and its ID can be neither preregistered nor enrolled.
	r := store.Rotation{ID: "rot1", OldIssuer: testDigest("old-ca"), NewIssuer: testDigest("new-ca"),
		GraceUntil: time.Unix(100, 0), CreatedAt: time.Unix(2, 0)}
	if err := st.CreateRotation(ctx, r, []string{"old"}); err != nil {
		t.Fatalf("CreateRotation on a migrated store: %v", err)
	}
	if counts, err := st.RotationCounts(ctx, "rot1"); err != nil || counts[store.RotationDevicePending] != 1 {
		t.Errorf("RotationCounts = %v, %v", counts, err)
	}
	u := store.ClaimUse{TokenID: "jti-1", User: "alice", DeviceID: "old", ExpiresAt: time.Unix(50, 0), UsedAt: time.Unix(3, 0)}
	if d, err := st.Claim(ctx, u); err != nil || d.Owner != "alice" {
		t.Errorf("Claim on a migrated store: %+v, %v", d, err)
	}
	e := store.Enrollment{DeviceID: "old", Method: store.EnrollSecret, Secret: []byte{1}, Created: time.Unix(1, 0)}
	if err := st.AddEnrollments(ctx, []store.Enrollment{e}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("AddEnrollments(registered device) = %v, want ErrConflict", err)
	}
}

// Migration 4 can be rolled back (an operator returning to the previous
// release): its tables go, everything older stays, and the next Open
// brings them back.
func TestOnboardingMigrationDown(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "warden.db")
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	testDevice(t, st, "d1", "m1")
	if err := st.CreateClaimCert(ctx, testClaimCert("fleet", "0c")); err != nil {
		t.Fatal(err)
	}
	if err := st.AddEnrollments(ctx, []store.Enrollment{{DeviceID: "d2", Method: store.EnrollClaim, Claim: "fleet", Created: time.Unix(1, 0)}}); err != nil {
		t.Fatal(err)
	}
	r := store.Rotation{ID: "rot1", OldIssuer: testDigest("a"), NewIssuer: testDigest("b"), GraceUntil: time.Unix(9, 0)}
	if err := st.CreateRotation(ctx, r, []string{"d1"}); err != nil {
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
	if _, err := p.DownTo(ctx, 3); err != nil {
		t.Fatalf("migrate down to version 3: %v", err)
	}
	if v := schemaVersion(t, db); v != 3 {
		t.Errorf("schema version after down = %d, want 3", v)
	}
	if n := tablesPresent(t, db, onboardingTables); n != 0 {
		t.Errorf("%d onboarding tables left after down", n)
	}
	if n := tablesPresent(t, db, firmwareTables); n != len(firmwareTables) {
		t.Errorf("%d of %d firmware tables left after down", n, len(firmwareTables))
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM devices WHERE id = 'd1'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("device after down: %d, %v", n, err)
	}
	db.Close()

	st, err = Open(ctx, path)
	if err != nil {
		t.Fatalf("Open after down: %v", err)
	}
	defer st.Close()
	if n := tablesPresent(t, st.ro.db, onboardingTables); n != len(onboardingTables) {
		t.Errorf("%d of %d onboarding tables after the next Open", n, len(onboardingTables))
	}
	if err := st.CreateClaimCert(ctx, testClaimCert("fleet", "0c")); err != nil {
		t.Errorf("CreateClaimCert after down and up: %v", err)
	}
}

// The schema itself holds the onboarding invariants it can express, so a
// writer that bypasses the Go checks cannot break them either.
func TestOnboardingSchemaConstraints(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	testDevice(t, st, "d1", "m1")
	if err := st.CreateClaimCert(ctx, testClaimCert("fleet", "0c")); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateRotation(ctx, store.Rotation{ID: "rot1", OldIssuer: testDigest("a"), NewIssuer: testDigest("b"),
		GraceUntil: time.Unix(9, 0)}, []string{"d1"}); err != nil {
		t.Fatal(err)
	}
	if err := st.AddEnrollments(ctx, []store.Enrollment{{DeviceID: "allowed", Method: store.EnrollClaim, Claim: "fleet", Created: time.Unix(1, 0)}}); err != nil {
		t.Fatal(err)
	}
	fp := testDigest("fp")
	hash := "x'" + strings.Repeat("00", 32) + "'"
	row := func(table string, defaults map[string]string, order []string) func(col, val string) string {
		return func(col, val string) string {
			cols := maps.Clone(defaults)
			if col != "" {
				cols[col] = val
			}
			vals := make([]string, len(order))
			for i, n := range order {
				vals[i] = cols[n]
			}
			return `INSERT INTO ` + table + ` (` + strings.Join(order, ", ") + `) VALUES (` + strings.Join(vals, ", ") + `)`
		}
	}
	enrollment := row("enrollments", map[string]string{
		"device_id": "'e1'", "method": "'secret'", "claim": "NULL", "model": "''", "tags": "'{}'", "secret": "x'01'",
		"created_at": "1", "used_at": "NULL", "serial": "''", "recovery": "0",
	}, strings.Split(enrollmentColumns, ", "))
	claimCert := row("claim_certs", map[string]string{
		"name": "'c2'", "serial": "'0d'", "fingerprint": "'" + fp + "'", "certificate": "x'01'", "not_after": "1",
		"created_at": "1", "revoked_at": "NULL", "reason": "''",
	}, strings.Split(claimCertColumns, ", "))
	token := row("api_tokens", map[string]string{
		"id": "'t1'", "hash": hash, "role": "'admin'", "user_name": "''", "note": "''", "created_at": "1",
		"expires_at": "NULL", "last_used_at": "NULL", "revoked_at": "NULL",
	}, strings.Split(apiTokenColumns, ", "))
	rotation := row("rotations", map[string]string{
		"id": "'rot2'", "old_issuer": "'" + testDigest("c") + "'", "new_issuer": "'" + testDigest("d") + "'", "grace_until": "1",
		"state": "'completed'", "reason": "''", "created_at": "1", "updated_at": "1",
	}, strings.Split(rotationColumns, ", "))
	use := row("claim_uses", map[string]string{
		"token_id": "'j1'", "user_name": "'u'", "device_id": "'d1'", "expires_at": "1", "used_at": "1",
	}, []string{"token_id", "user_name", "device_id", "expires_at", "used_at"})
	testDevice(t, st, "d2", "m1")
	rotDevice := row("rotation_devices", map[string]string{
		"rotation_id": "'rot1'", "device_id": "'d2'", "state": "'pending'", "serial": "''", "reason": "''", "updated_at": "1",
	}, strings.Split(rotationDeviceColumns, ", "))

	// The row builders make valid rows when nothing is changed; each is
	// removed again so that every refusal below is about one column.
	for _, tc := range []struct{ insert, cleanup string }{
		{enrollment("", ""), `DELETE FROM enrollments WHERE device_id = 'e1'`},
		{enrollment("recovery", "1"), `DELETE FROM enrollments WHERE device_id = 'e1'`},
		{`INSERT INTO enrollments (` + enrollmentColumns + `) VALUES ('e2', 'claim', 'fleet', '', '{"a":"b"}', NULL, 1, 2, '0e', 0)`, `DELETE FROM enrollments WHERE device_id = 'e2'`},
		{claimCert("", ""), `DELETE FROM claim_certs WHERE name = 'c2'`},
		{token("", ""), `DELETE FROM api_tokens WHERE id = 't1'`},
		{rotation("", ""), `DELETE FROM rotations WHERE id = 'rot2'`},
		{use("", ""), `DELETE FROM claim_uses WHERE token_id = 'j1'`},
		{rotDevice("", ""), `DELETE FROM rotation_devices WHERE device_id = 'd2'`},
	} {
		if _, err := st.rw.ExecContext(ctx, tc.insert); err != nil {
			t.Fatalf("valid row refused: %s: %v", tc.insert, err)
		}
		if _, err := st.rw.ExecContext(ctx, tc.cleanup); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct{ name, stmt string }{
		{"device ID empty", enrollment("device_id", "''")},
		{"device ID starting with a dash", enrollment("device_id", "'-e1'")},
		{"device ID with a slash", enrollment("device_id", "'e/1'")},
		{"device ID with a wildcard", enrollment("device_id", "'e+'")},
		{"device ID of 65 characters", enrollment("device_id", "'"+strings.Repeat("e", 65)+"'")},
		{"unknown method", enrollment("method", "'password'")},
		{"secret method without secret", enrollment("secret", "NULL")},
		{"secret method with empty secret", enrollment("secret", "x''")},
		{"secret method naming a claim", enrollment("claim", "'fleet'")},
		{"claim method without claim", enrollment("method", "'claim'")},
		{"claim method with a secret", `INSERT INTO enrollments (` + enrollmentColumns + `) VALUES ('e1', 'claim', 'fleet', '', '{}', x'01', 1, NULL, '', 0)`},
		{"claim of an unknown certificate", `INSERT INTO enrollments (` + enrollmentColumns + `) VALUES ('e1', 'claim', 'ghost', '', '{}', NULL, 1, NULL, '', 0)`},
		{"tags not JSON", enrollment("tags", "'site=lyon'")},
		{"tags an array", enrollment("tags", `'["a"]'`)},
		{"used without serial", enrollment("used_at", "2")},
		{"serial without use", enrollment("serial", "'0a'")},
		{"serial uppercase", `INSERT INTO enrollments (` + enrollmentColumns + `) VALUES ('e1', 'secret', NULL, '', '{}', x'01', 1, 2, '0A', 0)`},
		{"secret as text", enrollment("secret", "'s'")},
		{"recovery of 2", enrollment("recovery", "2")},
		{"recovery as text", enrollment("recovery", "'yes'")},
		{"recovery by claim certificate", `INSERT INTO enrollments (` + enrollmentColumns + `) VALUES ('e1', 'claim', 'fleet', '', '{}', NULL, 1, NULL, '', 1)`},
		{"claim certificate without name", claimCert("name", "''")},
		{"claim certificate serial taken", claimCert("serial", "'0c'")},
		{"claim certificate serial not hex", claimCert("serial", "'0g'")},
		{"claim certificate serial empty", claimCert("serial", "''")},
		{"claim certificate fingerprint short", claimCert("fingerprint", "'abcd'")},
		{"claim certificate fingerprint uppercase", claimCert("fingerprint", "'"+strings.ToUpper(fp)+"'")},
		{"claim certificate empty", claimCert("certificate", "x''")},
		{"deleting a claim certificate an enrollment names", `DELETE FROM claim_certs WHERE name = 'fleet'`},
		{"token hash of 31 bytes", token("hash", "x'"+strings.Repeat("00", 31)+"'")},
		{"token hash as text", token("hash", "'"+strings.Repeat("0", 32)+"'")},
		{"token of unknown role", token("role", "'root'")},
		{"token without ID", token("id", "''")},
		{"second running rotation", rotation("state", "'running'")},
		{"rotation of unknown state", rotation("state", "'paused'")},
		{"rotation to the same issuer", rotation("new_issuer", "'"+testDigest("c")+"'")},
		{"rotation issuer not hex", rotation("old_issuer", "'"+strings.Repeat("z", 64)+"'")},
		{"rotation without ID", rotation("id", "''")},
		{"claim use without user", use("user_name", "''")},
		{"claim use without token ID", use("token_id", "''")},
		{"rotation device of an unknown rotation", rotDevice("rotation_id", "'ghost'")},
		{"rotation device of an unknown device", rotDevice("device_id", "'ghost'")},
		{"rotation device twice", rotDevice("device_id", "'d1'")},
		{"rotation device of unknown state", rotDevice("state", "'lost'")},
		{"issued without serial", rotDevice("state", "'issued'")},
		{"switched without serial", rotDevice("state", "'switched'")},
		{"rotation device serial not hex", rotDevice("serial", "'xy'")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := st.rw.ExecContext(ctx, tc.stmt); err == nil {
				t.Errorf("schema accepted %s", tc.name)
			}
		})
	}
}

// Enroll stores the device, its tags and credential and marks the
// enrollment used in one transaction: a failure at either end leaves the
// enrollment unused and nothing of the device behind.
func TestEnrollInSameTransaction(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	e := store.Enrollment{DeviceID: "d1", Method: store.EnrollSecret, Secret: []byte("sealed"), Model: "m1",
		Tags: map[string]string{"site": "lyon"}, Created: time.Unix(1, 0)}
	if err := st.AddEnrollments(ctx, []store.Enrollment{e}); err != nil {
		t.Fatal(err)
	}
	d := store.Device{ID: "d1", State: store.StateActive, CreatedAt: time.Unix(2, 0)}
	at := time.Unix(2, 0)
	for _, trigger := range []string{
		`CREATE TRIGGER fail_step BEFORE INSERT ON credentials BEGIN SELECT RAISE(ABORT, 'injected failure'); END`,
		`CREATE TRIGGER fail_step BEFORE UPDATE ON enrollments BEGIN SELECT RAISE(ABORT, 'injected failure'); END`,
	} {
		if _, err := st.rw.ExecContext(ctx, trigger); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Enroll(ctx, d, testEnrollCredential("d1", "0a"), at); err == nil || !strings.Contains(err.Error(), "injected failure") {
			t.Fatalf("Enroll with %q = %v, want the injected failure", trigger, err)
		}
		if _, err := st.GetDevice(ctx, "d1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("device left behind: %v", err)
		}
		if _, err := st.CredentialBySerial(ctx, "0a"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("credential left behind: %v", err)
		}
		var tags int
		if err := st.ro.QueryRowContext(ctx, `SELECT count(*) FROM device_tags`).Scan(&tags); err != nil || tags != 0 {
			t.Errorf("%d tags left behind, %v", tags, err)
		}
		if got, err := st.GetEnrollment(ctx, "d1"); err != nil || got.Used() || got.Serial != "" {
			t.Errorf("enrollment after a failed Enroll: %+v, %v", got, err)
		}
		if _, err := st.rw.ExecContext(ctx, `DROP TRIGGER fail_step`); err != nil {
			t.Fatal(err)
		}
	}
	got, err := st.Enroll(ctx, d, testEnrollCredential("d1", "0a"), at)
	if err != nil {
		t.Fatal(err)
	}
	if got.Model != "m1" || got.Tags["site"] != "lyon" {
		t.Errorf("enrolled device %+v does not carry the enrollment's model and tags", got)
	}
}

// Two Stores on one file race to enroll the same devices and to claim with
// the same tokens, as two Warden processes would.
func TestConcurrentHandlesOnboarding(t *testing.T) {
	path := filepath.Join(t.TempDir(), "warden.db")
	ctx := context.Background()
	a, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	storetest.ConcurrentEnroll(t, a, b)
}
