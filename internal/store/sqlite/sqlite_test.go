package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/storetest"
)

func openTemp(t *testing.T) *Store {
	t.Helper()
	st, err := Open(context.Background(), filepath.Join(t.TempDir(), "warden.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return st
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openTemp(t) })
}

// Two Stores on one file stand in for two processes: they share nothing but
// the file, so they contend on SQLite's lock and rely on WAL and the busy
// timeout.
func TestConcurrentHandles(t *testing.T) {
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
	storetest.ConcurrentWriters(t, a, b)
	storetest.ConcurrentSequences(t, a, b)
}

// Several processes starting at once on a new file must all end up with a
// migrated store, whoever wins the race to create the schema.
func TestConcurrentOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "warden.db")
	const n = 4
	var (
		wg     sync.WaitGroup
		stores [n]*Store
		errs   [n]error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stores[i], errs[i] = Open(context.Background(), path)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Errorf("Open #%d: %v", i, errs[i])
			continue
		}
		if _, err := stores[i].ListDevices(context.Background(), store.DeviceFilter{}); err != nil {
			t.Errorf("store #%d not usable: %v", i, err)
		}
		stores[i].Close()
	}
}

func TestPragmasInEffect(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	for _, pool := range []struct {
		name      string
		db        *sql.DB
		queryOnly int
	}{{"writer", st.rw, 0}, {"reader", st.ro.db, 1}} {
		for _, tc := range []struct {
			pragma string
			want   string
		}{
			{"journal_mode", "wal"},
			{"busy_timeout", "5000"},
			{"foreign_keys", "1"},
			{"synchronous", "1"}, // NORMAL
			{"query_only", map[int]string{0: "0", 1: "1"}[pool.queryOnly]},
		} {
			var got string
			if err := pool.db.QueryRowContext(ctx, "PRAGMA "+tc.pragma).Scan(&got); err != nil {
				t.Fatalf("%s: PRAGMA %s: %v", pool.name, tc.pragma, err)
			}
			if got != tc.want {
				t.Errorf("%s: PRAGMA %s = %q, want %q", pool.name, tc.pragma, got, tc.want)
			}
		}
	}
	// Foreign keys are enforced, not merely reported as on.
	_, err := st.rw.ExecContext(ctx, `INSERT INTO device_tags (device_id, key, value) VALUES ('ghost', 'k', 'v')`)
	if err == nil {
		t.Error("tag for a missing device accepted: foreign keys not enforced")
	}
	// The reader pool cannot write.
	if _, err := st.ro.ExecContext(ctx, `DELETE FROM devices`); err == nil {
		t.Error("reader pool accepted a write")
	}
}

func TestFileMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "warden.db")
	st, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// A write makes sure the WAL exists.
	d := store.Device{ID: "d1", State: store.StateActive, CreatedAt: time.Now()}
	c := store.Credential{Serial: "01", SubjectKind: identity.KindDevice, SubjectID: "d1", Fingerprint: "ab", Certificate: []byte{1}}
	if err := st.CreateDevice(context.Background(), d, c); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode != 0o600 {
			t.Errorf("%s has mode %o, want 600", filepath.Base(name), mode)
		}
	}
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "warden.db")
	ctx := context.Background()
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	d := store.Device{ID: "d1", Model: "m", Tags: map[string]string{"a": "b"}, State: store.StateActive, CreatedAt: time.Now()}
	c := store.Credential{Serial: "0a", SubjectKind: identity.KindDevice, SubjectID: "d1", Fingerprint: "ab", Certificate: []byte{1}}
	if err := st.CreateDevice(ctx, d, c); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = Open(ctx, path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer st.Close()
	got, err := st.GetDevice(ctx, "d1")
	if err != nil || got.Tags["a"] != "b" {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
}

func TestOpenRejects(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	junk := filepath.Join(dir, "junk.db")
	if err := os.WriteFile(junk, []byte(strings.Repeat("this is not a database\n", 200)), 0o600); err != nil {
		t.Fatal(err)
	}

	foreign := filepath.Join(dir, "foreign.db")
	db, err := sql.Open("sqlite", "file:"+foreign)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE customers (id INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	newer := filepath.Join(dir, "newer.db")
	st, err := Open(ctx, newer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.rw.Exec(`INSERT INTO goose_db_version (version_id, is_applied) VALUES (999, 1)`); err != nil {
		t.Fatal(err)
	}
	st.Close()

	for _, tc := range []struct {
		name, path, want string
	}{
		{"empty path", "", "no database path"},
		{"missing directory", filepath.Join(dir, "nope", "warden.db"), "directory exists"},
		{"not a database", junk, "not a SQLite database"},
		{"foreign database", foreign, "not a Warden store"},
		{"newer schema", newer, "newer than this binary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Open(ctx, tc.path)
			if err == nil {
				st.Close()
				t.Fatalf("Open(%s) succeeded", tc.name)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open(%s) = %v, want it to mention %q", tc.name, err, tc.want)
			}
		})
	}
}

// A cancelled context stops a writer that is queued behind another.
func TestWriteHonoursContext(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	tx, err := st.rw.BeginTx(ctx, nil) // hold the only writer connection
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	err = st.SetDeviceTags(short, "d1", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SetDeviceTags with the writer busy = %v, want context.DeadlineExceeded", err)
	}
}

func TestPathEscaping(t *testing.T) {
	path := filepath.Join(t.TempDir(), "odd?name#with%chars.db")
	st, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at the literal path: %v", err)
	}
}

// The owner filter of ListDevices (the app's "my devices") is answered
// from the devices_owner_id index (migration 7), not by reading every
// device in ID order. The statement is ListDevices' own for that filter.
func TestListDevicesByOwnerUsesItsIndex(t *testing.T) {
	st := openTemp(t)
	rows, err := st.ro.db.QueryContext(context.Background(),
		`EXPLAIN QUERY PLAN SELECT `+deviceColumns+` FROM devices WHERE owner = $1 ORDER BY id LIMIT $2`, "user-1", 100)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(plan) != 1 || !strings.Contains(plan[0], "USING INDEX devices_owner_id (owner=?)") {
		t.Errorf("query plan %q, want one search of devices_owner_id by owner (and no sort)", plan)
	}
}
