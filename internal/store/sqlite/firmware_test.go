package sqlite

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/storetest"
)

// firmwareTables are the tables migration 3 adds.
var firmwareTables = []string{"release_keys", "firmware_images", "rollouts", "rollout_devices", "device_firmware"}

func testKey(t *testing.T, seed string) store.ReleaseKey {
	t.Helper()
	pub := []byte("spki-" + seed)
	sum := sha256.Sum256(pub)
	return store.ReleaseKey{ID: hex.EncodeToString(sum[:]), Name: seed, PublicKey: pub, CreatedAt: time.Unix(1, 0)}
}

func testDigest(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return hex.EncodeToString(sum[:])
}

func testDevice(t *testing.T, st *Store, id, model string) {
	t.Helper()
	d := store.Device{ID: id, Model: model, State: store.StateActive, CreatedAt: time.Unix(1, 0)}
	c := store.Credential{Serial: testDigest(id)[:16], SubjectKind: identity.KindDevice, SubjectID: id, Fingerprint: "ab", Certificate: []byte{1}}
	if err := st.CreateDevice(context.Background(), d, c); err != nil {
		t.Fatalf("CreateDevice(%q): %v", id, err)
	}
}

// testImage stores a key and one image of model m1 and returns the image.
func testImage(t *testing.T, st *Store) store.FirmwareImage {
	t.Helper()
	ctx := context.Background()
	k := testKey(t, "release")
	if err := st.AddReleaseKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	img, err := st.PutFirmwareImage(ctx, store.FirmwareImage{
		SHA256: testDigest("image"), Model: "m1", Version: "1.0.0+0", Size: 10, KeyID: k.ID,
		Statement: []byte("statement"), Sequence: 1, ExpiresAt: time.Unix(100, 0), UploadedAt: time.Unix(1, 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func testRollout(id string, img store.FirmwareImage) store.Rollout {
	return store.Rollout{ID: id, ImageSHA256: img.SHA256, Model: img.Model, Stages: []int{50, 100},
		State: store.RolloutRunning, Timeout: time.Hour, CreatedAt: time.Unix(2, 0)}
}

func schemaVersion(t *testing.T, db *sql.DB) int64 {
	t.Helper()
	var v int64
	if err := db.QueryRow(`SELECT max(version_id) FROM ` + gooseTable + ` WHERE is_applied`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func tablesPresent(t *testing.T, db *sql.DB, names []string) int {
	t.Helper()
	n := 0
	for _, name := range names {
		var one int
		switch err := db.QueryRow(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1`, name).Scan(&one); {
		case err == nil:
			n++
		case !errors.Is(err, sql.ErrNoRows):
			t.Fatal(err)
		}
	}
	return n
}

// A store at schema version 2 (the envelope release) gains the firmware
// tables when a newer binary opens it, and keeps its devices and envelope
// keys.
func TestMigrateFromVersion2(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "warden.db")
	if err := createFile(path); err != nil {
		t.Fatal(err)
	}
	old := fstest.MapFS{}
	for _, name := range []string{"00001_init.sql", "00002_envelope.sql"} {
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
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if v := schemaVersion(t, db); v != 2 {
		t.Fatalf("old schema at version %d, want 2", v)
	}
	for _, stmt := range []string{
		`INSERT INTO devices (id, model, state, created_at, updated_at) VALUES ('old', 'm1', 'active', 1, 1)`,
		`INSERT INTO device_tags (device_id, key, value) VALUES ('old', 'site', 'lyon')`,
		`INSERT INTO envelope_keys (device_id, epoch, suite, sealed_secret, state, created_at, activated_at) VALUES ('old', 0, 'ccm-8', x'0102', 'active', 1, 1)`,
		`INSERT INTO envelope_policies (device_id, min_suite, required, updated_at) VALUES ('old', 'ccm-8', 1, 1)`,
	} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	db.Close()

	st, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open(version 2 store): %v", err)
	}
	defer st.Close()
	if v, want := schemaVersion(t, st.ro.db), latestVersion(t); v != want {
		t.Errorf("schema version after Open = %d, want %d", v, want)
	}
	if d, err := st.GetDevice(ctx, "old"); err != nil || d.Tags["site"] != "lyon" {
		t.Errorf("device after migration: %+v, %v", d, err)
	}
	if ks, err := st.EnvelopeKeys(ctx, "old"); err != nil || len(ks) != 1 || string(ks[0].SealedSecret) != "\x01\x02" {
		t.Errorf("envelope keys after migration: %+v, %v", ks, err)
	}
	if p, err := st.GetEnvelopePolicy(ctx, "old"); err != nil || !p.Required {
		t.Errorf("envelope policy after migration: %+v, %v", p, err)
	}
	// The old device takes part in firmware updates.
	img := testImage(t, st)
	if err := st.CreateRollout(ctx, testRollout("r1", img), []store.RolloutDevice{{DeviceID: "old", State: store.DevicePending}}); err != nil {
		t.Fatalf("CreateRollout on a migrated store: %v", err)
	}
	fw := store.DeviceFirmware{DeviceID: "old", Version: "0.9.0+0", ReportedAt: time.Unix(3, 0).UTC()}
	if err := st.SetDeviceFirmware(ctx, fw); err != nil {
		t.Fatal(err)
	}
	if got, err := st.GetDeviceFirmware(ctx, "old"); err != nil || got != fw {
		t.Errorf("GetDeviceFirmware = %+v, %v; want %+v", got, err, fw)
	}
}

// Migration 3 can be rolled back (an operator returning to the previous
// release): its tables go, everything older stays, and the next Open
// brings them back.
func TestFirmwareMigrationDown(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "warden.db")
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	testDevice(t, st, "d1", "m1")
	img := testImage(t, st)
	if err := st.CreateRollout(ctx, testRollout("r1", img), []store.RolloutDevice{{DeviceID: "d1", State: store.DevicePending}}); err != nil {
		t.Fatal(err)
	}
	if err := st.SetDeviceFirmware(ctx, store.DeviceFirmware{DeviceID: "d1", Version: "1.0.0+0"}); err != nil {
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
	if _, err := p.DownTo(ctx, 2); err != nil {
		t.Fatalf("migrate down to version 2: %v", err)
	}
	if v := schemaVersion(t, db); v != 2 {
		t.Errorf("schema version after down = %d, want 2", v)
	}
	if n := tablesPresent(t, db, firmwareTables); n != 0 {
		t.Errorf("%d firmware tables left after down", n)
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
	if n := tablesPresent(t, st.ro.db, firmwareTables); n != len(firmwareTables) {
		t.Errorf("%d of %d firmware tables after the next Open", n, len(firmwareTables))
	}
	if _, err := st.GetDevice(ctx, "d1"); err != nil {
		t.Errorf("device after down and up: %v", err)
	}
	testImage(t, st)
}

// The schema itself holds the firmware invariants it can express, so a
// writer that bypasses the Go checks cannot break them either.
func TestFirmwareSchemaConstraints(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	testDevice(t, st, "d1", "m1")
	testDevice(t, st, "d2", "m1")
	img := testImage(t, st)
	k := testKey(t, "release")
	if err := st.CreateRollout(ctx, testRollout("r1", img), []store.RolloutDevice{{DeviceID: "d1", State: store.DevicePending}}); err != nil {
		t.Fatal(err)
	}
	sha := testDigest("other")
	imageRow := func(col, val string) string {
		cols := map[string]string{
			"sha256": "'" + sha + "'", "model": "'m1'", "version": "'1.0.0+0'", "security_counter": "0", "size": "1",
			"key_id": "'" + k.ID + "'", "statement": "x'01'", "sequence": "2", "expires_at": "1", "uploaded_at": "1", "updated_at": "1",
		}
		cols[col] = val
		names := strings.Split(imageColumns, ", ")
		vals := make([]string, len(names))
		for i, n := range names {
			vals[i] = cols[n]
		}
		return `INSERT INTO firmware_images (` + imageColumns + `) VALUES (` + strings.Join(vals, ", ") + `)`
	}
	rolloutRow := func(col, val string) string {
		cols := map[string]string{
			"id": "'r9'", "image_sha256": "'" + img.SHA256 + "'", "model": "'m1'", "tags": `'{}'`, "stages": "'[50,100]'",
			"stage": "0", "failure_threshold": "0.5", "min_finished": "0", "timeout_us": "0", "state": "'running'",
			"reason": "''", "stage_started_at": "1", "created_at": "1", "updated_at": "1",
		}
		cols[col] = val
		names := strings.Split(rolloutColumns, ", ")
		vals := make([]string, len(names))
		for i, n := range names {
			vals[i] = cols[n]
		}
		return `INSERT INTO rollouts (` + rolloutColumns + `) VALUES (` + strings.Join(vals, ", ") + `)`
	}
	// The row builders make valid rows when nothing is changed.
	for _, stmt := range []string{imageRow("", ""), rolloutRow("", "")} {
		if _, err := st.rw.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("valid row refused: %s: %v", stmt, err)
		}
	}
	if _, err := st.rw.ExecContext(ctx, `DELETE FROM firmware_images WHERE sha256 = $1`, sha); err != nil {
		t.Fatal(err)
	}
	if _, err := st.rw.ExecContext(ctx, `DELETE FROM rollouts WHERE id = 'r9'`); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ name, stmt string }{
		{"key ID not hex", `INSERT INTO release_keys (id, name, public_key, created_at) VALUES ('` + strings.Repeat("g", 64) + `', '', x'01', 1)`},
		{"key ID uppercase", `INSERT INTO release_keys (id, name, public_key, created_at) VALUES ('` + strings.ToUpper(testDigest("k")) + `', '', x'01', 1)`},
		{"key ID short", `INSERT INTO release_keys (id, name, public_key, created_at) VALUES ('abcd', '', x'01', 1)`},
		{"empty public key", `INSERT INTO release_keys (id, name, public_key, created_at) VALUES ('` + testDigest("k") + `', '', x'', 1)`},
		{"public key as text", `INSERT INTO release_keys (id, name, public_key, created_at) VALUES ('` + testDigest("k") + `', '', 'pem', 1)`},
		{"image digest not hex", imageRow("sha256", "'"+strings.Repeat("Z", 64)+"'")},
		{"image of an unknown key", imageRow("key_id", "'"+testDigest("nokey")+"'")},
		{"image without model", imageRow("model", "''")},
		{"image without version", imageRow("version", "''")},
		{"image of size 0", imageRow("size", "0")},
		{"image with empty statement", imageRow("statement", "x''")},
		{"negative sequence", imageRow("sequence", "-1")},
		{"security counter beyond u32", imageRow("security_counter", "4294967296")},
		{"model and sequence taken", imageRow("sequence", "1")},
		{"rollout without ID", rolloutRow("id", "''")},
		{"rollout image not hex", rolloutRow("image_sha256", "'abc'")},
		{"tags not JSON", rolloutRow("tags", "'site=lyon'")},
		{"tags an array", rolloutRow("tags", `'["a"]'`)},
		{"stages not JSON", rolloutRow("stages", "'50,100'")},
		{"stages empty", rolloutRow("stages", "'[]'")},
		{"stages not ending at 100", rolloutRow("stages", "'[50,90]'")},
		{"stages starting at 0", rolloutRow("stages", "'[0,100]'")},
		{"stages of fractions", rolloutRow("stages", "'[50.5,100]'")},
		{"stage past the last", rolloutRow("stage", "2")},
		{"negative stage", rolloutRow("stage", "-1")},
		{"failure threshold over 1", rolloutRow("failure_threshold", "1.5")},
		{"negative minimum finished", rolloutRow("min_finished", "-1")},
		{"negative timeout", rolloutRow("timeout_us", "-1")},
		{"unknown rollout state", rolloutRow("state", "'sleeping'")},
		{"member of an unknown rollout", `INSERT INTO rollout_devices (` + rolloutDeviceColumns + `) VALUES ('ghost', 'd2', 0, 'pending', '', 1)`},
		{"member of an unknown device", `INSERT INTO rollout_devices (` + rolloutDeviceColumns + `) VALUES ('r1', 'ghost', 0, 'pending', '', 1)`},
		{"member twice", `INSERT INTO rollout_devices (` + rolloutDeviceColumns + `) VALUES ('r1', 'd1', 0, 'pending', '', 1)`},
		{"unknown member state", `INSERT INTO rollout_devices (` + rolloutDeviceColumns + `) VALUES ('r1', 'd2', 0, 'lost', '', 1)`},
		{"member stage 100", `INSERT INTO rollout_devices (` + rolloutDeviceColumns + `) VALUES ('r1', 'd2', 100, 'pending', '', 1)`},
		{"firmware of an unknown device", `INSERT INTO device_firmware (device_id, version, security_counter, image_sha256, sequence, reported_at) VALUES ('ghost', '1', 0, '', 0, 1)`},
		{"firmware without version", `INSERT INTO device_firmware (device_id, version, security_counter, image_sha256, sequence, reported_at) VALUES ('d2', '', 0, '', 0, 1)`},
		{"firmware image not hex", `INSERT INTO device_firmware (device_id, version, security_counter, image_sha256, sequence, reported_at) VALUES ('d2', '1', 0, 'abc', 0, 1)`},
		{"firmware sequence negative", `INSERT INTO device_firmware (device_id, version, security_counter, image_sha256, sequence, reported_at) VALUES ('d2', '1', 0, '', -1, 1)`},
		{"deleting a key an image names", `DELETE FROM release_keys WHERE id = '` + k.ID + `'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := st.rw.ExecContext(ctx, tc.stmt); err == nil {
				t.Errorf("schema accepted %s", tc.name)
			}
		})
	}
}

// The ID of a key is the hash of its public key, so only a row written
// around the store can hold an ID with another key; AddReleaseKey must not
// take such a row for the same key.
func TestAddReleaseKeyStoredWithOtherPublicKey(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	k := testKey(t, "real")
	if _, err := st.rw.ExecContext(ctx, `INSERT INTO release_keys (id, name, public_key, created_at) VALUES ($1, 'forged', x'0badc0de', 1)`, k.ID); err != nil {
		t.Fatal(err)
	}
	if err := st.AddReleaseKey(ctx, k); !errors.Is(err, store.ErrConflict) {
		t.Errorf("AddReleaseKey over a row with another public key = %v, want ErrConflict", err)
	}
}

// Only a writer that bypasses CreateRollout can put a device in two live
// rollouts; ActiveRollout then refuses to guess which image the device
// should get.
func TestActiveRolloutRefusesTwoLiveRollouts(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	testDevice(t, st, "d1", "m1")
	img := testImage(t, st)
	for _, id := range []string{"r1", "r2"} {
		if err := st.CreateRollout(ctx, testRollout(id, img), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := st.rw.ExecContext(ctx, `INSERT INTO rollout_devices (`+rolloutDeviceColumns+`) VALUES ($1, 'd1', 0, 'pending', '', 1)`, id); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err := st.ActiveRollout(ctx, "d1")
	if err == nil || errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "r1") || !strings.Contains(err.Error(), "r2") {
		t.Errorf("ActiveRollout(device in two live rollouts) = %v, want an error naming both", err)
	}
}

// CreateRollout stores the rollout and its members in one transaction: a
// failure on the last member leaves nothing behind, the rollout row
// included.
func TestCreateRolloutInSameTransaction(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	testDevice(t, st, "d1", "m1")
	testDevice(t, st, "d2", "m1")
	img := testImage(t, st)
	if _, err := st.rw.ExecContext(ctx, `CREATE TRIGGER fail_member BEFORE INSERT ON rollout_devices WHEN NEW.device_id = 'd2'
BEGIN SELECT RAISE(ABORT, 'injected failure'); END`); err != nil {
		t.Fatal(err)
	}
	members := []store.RolloutDevice{{DeviceID: "d1", State: store.DevicePending}, {DeviceID: "d2", State: store.DevicePending}}
	if err := st.CreateRollout(ctx, testRollout("r1", img), members); err == nil {
		t.Fatal("CreateRollout succeeded although storing a member failed")
	}
	if _, err := st.GetRollout(ctx, "r1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("rollout row left behind: %v", err)
	}
	if _, _, err := st.ActiveRollout(ctx, "d1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("membership left behind: %v", err)
	}
	if _, err := st.rw.ExecContext(ctx, `DROP TRIGGER fail_member`); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateRollout(ctx, testRollout("r1", img), members); err != nil {
		t.Fatal(err)
	}
}

// The stage timeout is kept to the microsecond, like times.
func TestRolloutTimeoutResolution(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	img := testImage(t, st)
	r := testRollout("r1", img)
	r.Timeout = 90*time.Second + 1500*time.Nanosecond
	if err := st.CreateRollout(ctx, r, nil); err != nil {
		t.Fatal(err)
	}
	got, err := st.GetRollout(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if want := 90*time.Second + time.Microsecond; got.Timeout != want {
		t.Errorf("Timeout = %v, want %v", got.Timeout, want)
	}
}

// Two Stores on one file contend for the same rollout members as two
// Warden processes would.
func TestConcurrentHandlesRollouts(t *testing.T) {
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
	storetest.ConcurrentRolloutDevices(t, a, b)
}

// FuzzListRolloutDevices feeds ListRolloutDevices the rollout ID and filter
// fields an API client controls. Besides not failing, every result must be
// exactly the page computed in Go: anything else would mean input leaked
// into the query text.
func FuzzListRolloutDevices(f *testing.F) {
	st, err := Open(context.Background(), filepath.Join(f.TempDir(), "fuzz.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	ctx := context.Background()
	k := store.ReleaseKey{PublicKey: []byte("spki"), CreatedAt: time.Unix(1, 0)}
	sum := sha256.Sum256(k.PublicKey)
	k.ID = hex.EncodeToString(sum[:])
	if err := st.AddReleaseKey(ctx, k); err != nil {
		f.Fatal(err)
	}
	img, err := st.PutFirmwareImage(ctx, store.FirmwareImage{SHA256: testDigest("image"), Model: "m1", Version: "1.0.0+0",
		Size: 1, KeyID: k.ID, Statement: []byte{1}, Sequence: 1, UploadedAt: time.Unix(1, 0)})
	if err != nil {
		f.Fatal(err)
	}
	ids := []string{"a1", "b2", "c3", "' OR 1=1 --", "$1", "%", "", "zz", "d4-other"}
	for i, id := range ids {
		if id == "" {
			continue
		}
		d := store.Device{ID: id, Model: "m1", State: store.StateActive, CreatedAt: time.Unix(1, 0)}
		c := store.Credential{Serial: fmt.Sprintf("%02x", i+1), SubjectKind: identity.KindDevice, SubjectID: id, Fingerprint: "ab", Certificate: []byte{1}}
		if err := st.CreateDevice(ctx, d, c); err != nil {
			f.Fatal(err)
		}
	}
	states := []string{store.DevicePending, store.DeviceOffered, store.DeviceBooted, store.DeviceFailed}
	var want []store.RolloutDevice // r1's members in device ID order
	var members []store.RolloutDevice
	for i, id := range ids {
		if id == "" || id == "d4-other" {
			continue
		}
		m := store.RolloutDevice{RolloutID: "r1", DeviceID: id, Stage: i % 2, State: states[i%len(states)], UpdatedAt: time.Unix(2, 0).UTC()}
		members = append(members, m)
		want = append(want, m)
	}
	r := store.Rollout{ID: "r1", ImageSHA256: img.SHA256, Model: "m1", Stages: []int{50, 100}, State: store.RolloutRunning, CreatedAt: time.Unix(2, 0)}
	if err := st.CreateRollout(ctx, r, members); err != nil {
		f.Fatal(err)
	}
	r.ID = "r2"
	if err := st.CreateRollout(ctx, r, []store.RolloutDevice{{DeviceID: "d4-other", State: store.DevicePending}}); err != nil {
		f.Fatal(err)
	}
	slices.SortFunc(want, func(x, y store.RolloutDevice) int { return strings.Compare(x.DeviceID, y.DeviceID) })

	f.Add("r1", "", "", 0)
	f.Add("r1", "offered", "a1", 2)
	f.Add("r1", "bogus", "", 1)
	f.Add("' OR 1=1 --", "", "' OR 1=1 --", 5000)
	f.Add("r1", "$1", "$2", -5)
	f.Fuzz(func(t *testing.T, rolloutID, state, after string, limit int) {
		flt := store.RolloutDeviceFilter{State: state, After: after, Limit: limit}
		got, err := st.ListRolloutDevices(ctx, rolloutID, flt)
		switch {
		case state != "" && !store.RolloutDeviceStateValid(state):
			if err == nil {
				t.Fatalf("unknown state %q accepted", state)
			}
			return
		case rolloutID != "r1" && rolloutID != "r2":
			if !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("ListRolloutDevices(%q) = %v, want ErrNotFound", rolloutID, err)
			}
			return
		case err != nil:
			t.Fatalf("ListRolloutDevices(%q, %+v): %v", rolloutID, flt, err)
		}
		page := pageSize(limit)
		var exp []store.RolloutDevice
		if rolloutID == "r1" {
			for _, m := range want {
				if len(exp) == page {
					break
				}
				if m.DeviceID > after && (state == "" || m.State == state) {
					exp = append(exp, m)
				}
			}
		} else if "d4-other" > after && (state == "" || state == store.DevicePending) && page > 0 {
			exp = []store.RolloutDevice{{RolloutID: "r2", DeviceID: "d4-other", State: store.DevicePending, UpdatedAt: time.Unix(2, 0).UTC()}}
		}
		if len(got) != len(exp) {
			t.Fatalf("ListRolloutDevices(%q, %+v) = %d members, want %d", rolloutID, flt, len(got), len(exp))
		}
		for i := range got {
			if got[i] != exp[i] {
				t.Fatalf("member %d = %+v, want %+v", i, got[i], exp[i])
			}
		}
	})
}
