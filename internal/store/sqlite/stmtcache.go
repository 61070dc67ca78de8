package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"sync"
)

// maxCachedStatements bounds the read pool's statement cache. The store's
// queries are built from constant fragments (filters add placeholders,
// never values), so the distinct texts are a few dozen; the bound only
// guards against a future caller that builds texts from data.
const maxCachedStatements = 256

// readPool is the query-only connection pool with its statements prepared
// once. Parsing and planning a statement costs SQLite more than running
// these point lookups: before the cache, preparing the two lookups that
// authenticate every MQTT connection (credential by serial, device by ID)
// was a tenth of the broker's CPU in a reconnect storm
// (docs/performance.md). database/sql re-prepares a statement on each
// pooled connection on first use and keeps it.
type readPool struct {
	db *sql.DB

	mu    sync.RWMutex
	stmts map[string]*sql.Stmt
}

func newReadPool(db *sql.DB) *readPool {
	return &readPool{db: db, stmts: map[string]*sql.Stmt{}}
}

// stmt returns the prepared statement for query, preparing it on first
// use; nil when the cache is full (the caller then runs the text as is).
func (p *readPool) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	p.mu.RLock()
	st, ok := p.stmts[query]
	full := len(p.stmts) >= maxCachedStatements
	p.mu.RUnlock()
	if ok || full {
		return st, nil
	}
	// Preparing outside the lock: two goroutines may both prepare the same
	// text; the loser closes its copy.
	st, err := p.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if prev, ok := p.stmts[query]; ok {
		st.Close()
		return prev, nil
	}
	if len(p.stmts) >= maxCachedStatements {
		st.Close()
		return nil, nil
	}
	p.stmts[query] = st
	return st, nil
}

// ExecContext implements querier. The pool is query-only, so an Exec
// here is a programming error that SQLite refuses; it goes through
// uncached.
func (p *readPool) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return p.db.ExecContext(ctx, query, args...)
}

// QueryContext implements querier with the cached statement.
func (p *readPool) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := p.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return p.db.QueryContext(ctx, query, args...)
	}
	return st.QueryContext(ctx, args...)
}

// QueryRowContext implements querier with the cached statement. A
// statement that fails to prepare reports its error from Row.Scan, as
// sql.DB.QueryRowContext does.
func (p *readPool) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	st, err := p.stmt(ctx, query)
	if err != nil || st == nil {
		// The uncached call reports the same preparation error itself.
		return p.db.QueryRowContext(ctx, query, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// Close closes the cached statements, then the pool.
func (p *readPool) Close() error {
	p.mu.Lock()
	var errs []error
	for q, st := range p.stmts {
		errs = append(errs, st.Close())
		delete(p.stmts, q)
	}
	p.mu.Unlock()
	return errors.Join(append(errs, p.db.Close())...)
}
