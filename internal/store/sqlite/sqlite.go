// Package sqlite is the default store backend: one SQLite file in WAL mode,
// through the pure-Go driver modernc.org/sqlite, so Warden builds with
// CGO_ENABLED=0.
//
// Writes go through a pool of exactly one connection, so writers in one
// process queue in Go (honouring their contexts) rather than spinning in
// SQLite's busy handler; reads use a separate pool and run concurrently
// with writes, which WAL allows. Several processes (or several Stores) may
// open the same file: their writers serialise on SQLite's lock, waiting up
// to the busy timeout.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/pressly/goose/v3"
	sqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/warden-iot/warden/internal/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Connection settings every connection gets. busy_timeout lets a writer in
// another process wait for the lock instead of failing at once; NORMAL
// synchronous is durable across application crashes in WAL mode and only
// risks the last transactions on power loss, the usual trade for WAL.
const pragmas = "_pragma=busy_timeout(5000)" +
	"&_pragma=journal_mode(WAL)" +
	"&_pragma=foreign_keys(1)" +
	"&_pragma=synchronous(NORMAL)"

// Store is the SQLite implementation of store.Store.
type Store struct {
	path string
	rw   *sql.DB   // one connection; every write transaction
	ro   *readPool // query-only connections for reads, statements prepared once
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed, with mode 0600) the SQLite database at
// path and brings its schema up to date. It refuses a file that is not a
// SQLite database, a SQLite database that is not a Warden store, and a
// store whose schema is newer than this binary understands.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("open SQLite store: no database path given")
	}
	path = filepath.Clean(path)
	if err := createFile(path); err != nil {
		return nil, err
	}

	rw, err := sql.Open("sqlite", dsn(path, "_txlock=immediate"))
	if err != nil {
		return nil, fmt.Errorf("open SQLite store %s: %w", path, err)
	}
	// One writer connection: BEGIN IMMEDIATE takes the write lock up front,
	// so a transaction never fails half-way on a lock upgrade, and writers
	// from this process wait in database/sql's pool.
	rw.SetMaxOpenConns(1)
	rw.SetMaxIdleConns(1)
	rw.SetConnMaxLifetime(0)
	rw.SetConnMaxIdleTime(0)
	if err := ping(ctx, rw); err != nil {
		rw.Close()
		return nil, openError(path, err)
	}
	if err := migrate(ctx, rw, path); err != nil {
		rw.Close()
		return nil, err
	}

	ro, err := sql.Open("sqlite", dsn(path, "_txlock=deferred&_query_only=1"))
	if err != nil {
		rw.Close()
		return nil, fmt.Errorf("open SQLite store %s: %w", path, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	ro.SetMaxOpenConns(n)
	ro.SetMaxIdleConns(n)
	if err := ping(ctx, ro); err != nil {
		rw.Close()
		ro.Close()
		return nil, openError(path, err)
	}
	return &Store{path: path, rw: rw, ro: newReadPool(ro)}, nil
}

// Close closes both connection pools.
func (s *Store) Close() error {
	return errors.Join(s.ro.Close(), s.rw.Close())
}

// dsn builds a modernc URI filename. The path is percent-escaped where
// SQLite's URI parser would otherwise read '?', '#' or '%' as syntax.
func dsn(path, extra string) string {
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	return "file:" + esc + "?" + pragmas + "&" + extra
}

// createFile makes the database file with mode 0600 before SQLite opens it,
// because SQLite would create it with 0644 (less umask). SQLite gives the
// -wal and -shm files the same mode as the database.
func createFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		if err := f.Close(); err != nil {
			return fmt.Errorf("create SQLite store %s: %w", path, err)
		}
		return nil
	case errors.Is(err, fs.ErrExist):
		return nil
	default:
		return fmt.Errorf("create SQLite store %s: %w (check that the directory exists and is writable)", path, err)
	}
}

func openError(path string, err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_NOTADB {
		return fmt.Errorf("open SQLite store %s: the file is not a SQLite database (wrong path, or a corrupt or encrypted file): %w", path, err)
	}
	return fmt.Errorf("open SQLite store %s: %w", path, err)
}

// startupWait bounds how long Open retries while another process is
// creating or migrating the same file; it matches the busy timeout.
const startupWait = 5 * time.Second

// untilSettled runs fn until it succeeds, fails in a way fn says is not
// worth retrying, ctx ends or startupWait has passed, and returns fn's last
// error. It exists for first use of a file by several processes at once:
// some of SQLite's locks then (switching a new file to WAL) fail with
// SQLITE_BUSY at once instead of waiting in the busy handler, and a
// migration can lose a race to another process's migration.
func untilSettled(ctx context.Context, fn func() (retry bool, err error)) error {
	deadline := time.Now().Add(startupWait)
	delay := 5 * time.Millisecond
	for {
		retry, err := fn()
		if err == nil || !retry || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

func isBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

// ping opens a first connection, which applies the pragmas.
func ping(ctx context.Context, db *sql.DB) error {
	return untilSettled(ctx, func() (bool, error) {
		err := db.PingContext(ctx)
		return isBusy(err), err
	})
}

const gooseTable = "goose_db_version"

// migrate applies the embedded migrations. Several processes may open a new
// file at once: if ours loses the race, the migrations fail on "table
// already exists" inside their rolled-back transaction, and what matters is
// only whether the schema ended up current.
func migrate(ctx context.Context, db *sql.DB, path string) error {
	if err := checkWardenDB(ctx, db, path); err != nil {
		return err
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("open SQLite store %s: embedded migrations: %w", path, err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, sub,
		goose.WithDisableGlobalRegistry(true),
		goose.WithLogger(goose.NopLogger()),
	)
	if err != nil {
		return fmt.Errorf("open SQLite store %s: load migrations: %w", path, err)
	}
	var known int64
	for _, src := range p.ListSources() {
		known = max(known, src.Version)
	}
	// Another process may be part-way through the same migrations: if ours
	// fail while the schema version moves on (or on a busy lock), try again
	// from the new version.
	return untilSettled(ctx, func() (bool, error) {
		current, err := p.GetDBVersion(ctx)
		if err != nil {
			return isBusy(err), fmt.Errorf("open SQLite store %s: read schema version: %w", path, err)
		}
		if current > known {
			return false, fmt.Errorf("open SQLite store %s: schema version %d is newer than this binary supports (%d): run a newer warden, or restore a backup made by this version", path, current, known)
		}
		if current == known {
			return false, nil
		}
		_, upErr := p.Up(ctx)
		if upErr == nil {
			return false, nil
		}
		if pending, err := p.HasPending(ctx); err == nil && !pending {
			return false, nil
		}
		after, err := p.GetDBVersion(ctx)
		moved := err == nil && after > current
		return moved || isBusy(upErr), fmt.Errorf("open SQLite store %s: migrate schema from version %d to %d: %w", path, current, known, upErr)
	})
}

// checkWardenDB refuses a SQLite file that holds some other application's
// tables, so that Warden never adds its schema to someone else's database.
func checkWardenDB(ctx context.Context, db *sql.DB, path string) error {
	rows, err := db.QueryContext(ctx,
		`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\'`)
	if err != nil {
		return openError(path, err)
	}
	defer rows.Close()
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return fmt.Errorf("open SQLite store %s: list tables: %w", path, err)
		}
		if name == gooseTable {
			return nil
		}
		tables = append(tables, name)
	}
	if err := rows.Err(); err != nil {
		return openError(path, err)
	}
	if len(tables) > 0 {
		return fmt.Errorf("open SQLite store %s: the file is a SQLite database but not a Warden store (it has tables %q and no %s): point Warden at a new file", path, tables, gooseTable)
	}
	return nil
}

// isUnique reports whether err is a UNIQUE or PRIMARY KEY violation.
func isUnique(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	c := se.Code()
	return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
}
