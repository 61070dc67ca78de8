package sqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"testing/fstest"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// A store created by the first release (schema version 1) gains the
// envelope tables when a newer binary opens it, and keeps its devices.
func TestMigrateFromVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "warden.db")
	if err := createFile(path); err != nil {
		t.Fatal(err)
	}
	init1, err := migrations.ReadFile("migrations/00001_init.sql")
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", dsn(path, "_txlock=immediate"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, fstest.MapFS{"00001_init.sql": {Data: init1}},
		goose.WithDisableGlobalRegistry(true), goose.WithLogger(goose.NopLogger()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO devices (id, state, created_at, updated_at) VALUES ('old', 'active', 1, 1)`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	st, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open(version 1 store): %v", err)
	}
	defer st.Close()
	k := store.EnvelopeKey{DeviceID: "old", Epoch: 0, Suite: "ccm-8", SealedSecret: []byte{1, 2, 3}, State: store.EnvelopeActive, CreatedAt: time.Now()}
	if err := st.EnableEnvelope(ctx, k, store.EnvelopePolicy{DeviceID: "old", MinSuite: "ccm-8", UpdatedAt: time.Now()}); err != nil {
		t.Fatalf("EnableEnvelope on a migrated store: %v", err)
	}
	if ks, err := st.EnvelopeKeys(ctx, "old"); err != nil || len(ks) != 1 {
		t.Fatalf("EnvelopeKeys = %+v, %v", ks, err)
	}
}

// The schema itself holds the envelope invariants, so a writer that
// bypasses the Go checks (another backend version, a hand-run statement)
// cannot break them either.
func TestEnvelopeSchemaConstraints(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	d := store.Device{ID: "d1", State: store.StateActive, CreatedAt: time.Now()}
	c := store.Credential{Serial: "01", SubjectKind: identity.KindDevice, SubjectID: "d1", Fingerprint: "ab", Certificate: []byte{1}}
	if err := st.CreateDevice(ctx, d, c); err != nil {
		t.Fatal(err)
	}
	if _, err := st.rw.ExecContext(ctx, `INSERT INTO envelope_keys (device_id, epoch, suite, sealed_secret, state, created_at, activated_at)
VALUES ('d1', 0, 'ccm-8', x'01', 'active', 1, 1), ('d1', 1, 'ccm-8', x'01', 'pending', 1, NULL)`); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, stmt string }{
		{"second active key", `INSERT INTO envelope_keys (device_id, epoch, suite, sealed_secret, state, created_at, activated_at) VALUES ('d1', 2, 'ccm-8', x'01', 'active', 1, 1)`},
		{"second pending key", `INSERT INTO envelope_keys (device_id, epoch, suite, sealed_secret, state, created_at) VALUES ('d1', 2, 'ccm-8', x'01', 'pending', 1)`},
		{"key for a missing device", `INSERT INTO envelope_keys (device_id, epoch, suite, sealed_secret, state, created_at) VALUES ('ghost', 0, 'ccm-8', x'01', 'pending', 1)`},
		{"epoch beyond u32", `INSERT INTO envelope_keys (device_id, epoch, suite, sealed_secret, state, created_at, retired_at) VALUES ('d1', 4294967296, 'ccm-8', x'', 'retired', 1, 1)`},
		{"retired without a time", `INSERT INTO envelope_keys (device_id, epoch, suite, sealed_secret, state, created_at) VALUES ('d1', 5, 'ccm-8', x'', 'retired', 1)`},
		{"active without activation time", `UPDATE envelope_keys SET activated_at = NULL WHERE epoch = 0`},
		{"oversized replay window", `INSERT INTO envelope_replay_windows (device_id, direction, epoch, window_state) VALUES ('d1', 'uplink', 0, zeroblob(65))`},
		{"replay window without a key", `INSERT INTO envelope_replay_windows (device_id, direction, epoch, window_state) VALUES ('d1', 'uplink', 7, x'01')`},
		{"negative sequence", `INSERT INTO envelope_sequences (device_id, direction, epoch, next_seq) VALUES ('d1', 'uplink', 0, -1)`},
		{"unknown direction", `INSERT INTO envelope_sequences (device_id, direction, epoch, next_seq) VALUES ('d1', 'up', 0, 1)`},
		{"policy as text", `INSERT INTO envelope_policies (device_id, min_suite, required, updated_at) VALUES ('d1', 'ccm-8', 'yes', 1)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := st.rw.ExecContext(ctx, tc.stmt); err == nil {
				t.Errorf("schema accepted %s", tc.name)
			}
		})
	}
}

// Revocation retires envelope keys in the revoking transaction: if
// retiring fails, nothing of the revocation is committed either, so a
// revoked device can never keep a usable envelope key.
func TestRevokeRetiresKeysInSameTransaction(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	d := store.Device{ID: "d1", State: store.StateActive, CreatedAt: time.Now()}
	c := store.Credential{Serial: "01", SubjectKind: identity.KindDevice, SubjectID: "d1", Fingerprint: "ab", Certificate: []byte{1}}
	if err := st.CreateDevice(ctx, d, c); err != nil {
		t.Fatal(err)
	}
	k := store.EnvelopeKey{DeviceID: "d1", Suite: "ccm-8", SealedSecret: []byte{1}, State: store.EnvelopeActive, CreatedAt: time.Now()}
	if err := st.EnableEnvelope(ctx, k, store.EnvelopePolicy{DeviceID: "d1", MinSuite: "ccm-8", UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.rw.ExecContext(ctx, `CREATE TRIGGER fail_retire BEFORE UPDATE ON envelope_keys
BEGIN SELECT RAISE(ABORT, 'injected failure'); END`); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.RevokeDevice(ctx, "d1", "stolen", time.Now()); err == nil {
		t.Fatal("RevokeDevice succeeded although retiring the keys failed")
	}
	if got, err := st.GetDevice(ctx, "d1"); err != nil || got.State != store.StateActive {
		t.Errorf("device after the failed revocation: %+v, %v; want it unchanged", got, err)
	}
	if cred, err := st.CredentialBySerial(ctx, "01"); err != nil || cred.Revoked() {
		t.Errorf("credential after the failed revocation: %+v, %v; want it unrevoked", cred, err)
	}
	if _, err := st.rw.ExecContext(ctx, `DROP TRIGGER fail_retire`); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.RevokeDevice(ctx, "d1", "stolen", time.Now()); err != nil {
		t.Fatal(err)
	}
	ks, err := st.EnvelopeKeys(ctx, "d1")
	if err != nil || len(ks) != 1 || ks[0].State != store.EnvelopeRetired {
		t.Errorf("keys after revocation: %+v, %v", ks, err)
	}
}
