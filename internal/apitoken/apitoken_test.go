package apitoken

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

var _ Store = (*sqlite.Store)(nil)

// memStore is an in-memory Store with the semantics store.OnboardStore
// documents for API tokens.
type memStore struct {
	mu      sync.Mutex
	tokens  map[string]store.APIToken
	touches int     // successful TouchAPIToken calls
	errs    []error // returned, in order, by the next CreateAPIToken calls
	getErr  error   // returned by GetAPIToken when set
	touchEr error   // returned by TouchAPIToken when set
	onTouch func()  // called by TouchAPIToken before anything else, when set
}

func newMemStore() *memStore { return &memStore{tokens: map[string]store.APIToken{}} }

func clone(t store.APIToken) store.APIToken {
	t.Hash = bytes.Clone(t.Hash)
	return t
}

func (m *memStore) CreateAPIToken(_ context.Context, t store.APIToken) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.errs) > 0 {
		err := m.errs[0]
		m.errs = m.errs[1:]
		return err
	}
	if _, ok := m.tokens[t.ID]; ok {
		return store.ErrConflict
	}
	m.tokens[t.ID] = clone(t)
	return nil
}

func (m *memStore) GetAPIToken(_ context.Context, id string) (store.APIToken, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.getErr != nil {
		return store.APIToken{}, m.getErr
	}
	t, ok := m.tokens[id]
	if !ok {
		return store.APIToken{}, store.ErrNotFound
	}
	return clone(t), nil
}

func (m *memStore) ListAPITokens(context.Context) ([]store.APIToken, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]store.APIToken, 0, len(m.tokens))
	for _, t := range m.tokens {
		out = append(out, clone(t))
	}
	slices.SortFunc(out, func(a, b store.APIToken) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return out, nil
}

func (m *memStore) RevokeAPIToken(_ context.Context, id string, at time.Time) (store.APIToken, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tokens[id]
	if !ok {
		return store.APIToken{}, store.ErrNotFound
	}
	if t.RevokedAt.IsZero() {
		t.RevokedAt = at
		m.tokens[id] = t
	}
	return clone(t), nil
}

func (m *memStore) TouchAPIToken(_ context.Context, id string, at time.Time) error {
	if m.onTouch != nil {
		m.onTouch()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.touchEr != nil {
		return m.touchEr
	}
	t, ok := m.tokens[id]
	if !ok {
		return nil
	}
	if at.After(t.LastUsedAt) {
		t.LastUsedAt = at
		m.tokens[id] = t
	}
	m.touches++
	return nil
}

func (m *memStore) touchCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.touches
}

// recorder keeps audit events.
type recorder struct {
	mu     sync.Mutex
	events []audit.Event
}

func (r *recorder) Record(_ context.Context, e audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) all() []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	t     *testing.T
	svc   *Service
	st    *memStore
	audit *recorder
	clock *clock
	logs  *syncBuffer
}

func newFixture(t *testing.T, st Store) *fixture {
	t.Helper()
	f := &fixture{t: t, audit: &recorder{}, clock: &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)}, logs: &syncBuffer{}}
	if st == nil {
		f.st = newMemStore()
		st = f.st
	}
	f.svc = New(st, Options{
		Now:    f.clock.Now,
		Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Audit:  f.audit,
	})
	return f
}

func (f *fixture) create(t *testing.T, role string, ttl time.Duration) (string, store.APIToken) {
	t.Helper()
	tok, rec, err := f.svc.Create(context.Background(), role, "alice@example.com", "ci pipeline", ttl)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return tok, rec
}

// secretPart returns the encoded secret of a well-formed token.
func secretPart(tok string) string { return tok[len(Prefix)+idLen+1:] }

func TestValidRole(t *testing.T) {
	for _, tc := range []struct {
		role string
		want bool
	}{
		{RoleAdmin, true}, {RoleOperator, true}, {RoleViewer, true}, {RoleApp, true},
		{"", false}, {"Admin", false}, {"root", false}, {"admin ", false}, {"reader", false},
	} {
		if got := ValidRole(tc.role); got != tc.want {
			t.Errorf("ValidRole(%q) = %v, want %v", tc.role, got, tc.want)
		}
	}
}

func TestCreateAuthenticateRoundTrip(t *testing.T) {
	for _, role := range []string{RoleAdmin, RoleOperator, RoleViewer, RoleApp} {
		t.Run(role, func(t *testing.T) {
			f := newFixture(t, nil)
			tok, rec, err := f.svc.Create(context.Background(), role, "Zoë Müller", "phone app", 24*time.Hour)
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			if len(tok) != Len || !strings.HasPrefix(tok, Prefix+rec.ID+"_") {
				t.Fatalf("token has the wrong shape: len %d, want %d with prefix %s%s_", len(tok), Len, Prefix, rec.ID)
			}
			now := f.clock.Now().UTC().Truncate(time.Microsecond)
			if rec.Role != role || rec.User != "Zoë Müller" || rec.Note != "phone app" ||
				!rec.CreatedAt.Equal(now) || !rec.ExpiresAt.Equal(now.Add(24*time.Hour)) || rec.Revoked() {
				t.Fatalf("record = %+v", rec)
			}
			got, err := f.svc.Authenticate(context.Background(), tok)
			if err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			want := rec
			want.LastUsedAt = now
			if got.ID != want.ID || got.Role != want.Role || got.User != want.User || !got.LastUsedAt.Equal(want.LastUsedAt) ||
				!got.CreatedAt.Equal(want.CreatedAt) || !got.ExpiresAt.Equal(want.ExpiresAt) {
				t.Fatalf("Authenticate = %+v, want %+v", got, want)
			}
			for reason, n := range f.svc.Failures() {
				if n != 0 {
					t.Errorf("Failures()[%s] = %d after a success", reason, n)
				}
			}
		})
	}
}

func TestCreateNoExpiry(t *testing.T) {
	f := newFixture(t, nil)
	tok, rec := f.create(t, RoleViewer, 0)
	if !rec.ExpiresAt.IsZero() {
		t.Fatalf("ExpiresAt = %v, want zero for ttl 0", rec.ExpiresAt)
	}
	f.clock.Advance(100 * 365 * 24 * time.Hour)
	if _, err := f.svc.Authenticate(context.Background(), tok); err != nil {
		t.Fatalf("a token without expiry failed after 100 years: %v", err)
	}
}

// openSQLite opens a real store in a temporary directory and returns it
// with the path of its database file.
func openSQLite(t *testing.T) (*sqlite.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "warden.db")
	st, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatalf("sqlite.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st, path
}

// backends returns a fresh store of each kind the tests run against.
func backends(t *testing.T) map[string]func() Store {
	return map[string]func() Store{
		"memory": func() Store { return newMemStore() },
		"sqlite": func() Store { st, _ := openSQLite(t); return st },
	}
}

func TestAuthenticateFailures(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) { testAuthenticateFailures(t, open) })
	}
}

func testAuthenticateFailures(t *testing.T, open func() Store) {
	// One store for every case: each case makes its own token, and sharing
	// keeps the SQLite run (a migration per open) fast under -race.
	st := open()
	for _, tc := range []struct {
		name   string
		reason string
		// token returns the token to present, given a valid one, after
		// changing whatever it needs to.
		token func(f *fixture, valid string, rec store.APIToken) string
	}{
		{"empty", ReasonMalformed, func(*fixture, string, store.APIToken) string { return "" }},
		{"garbage", ReasonMalformed, func(*fixture, string, store.APIToken) string { return "hunter2" }},
		{"right length, wrong prefix", ReasonMalformed, func(_ *fixture, v string, _ store.APIToken) string { return "xyz_" + v[4:] }},
		{"upper-case prefix", ReasonMalformed, func(_ *fixture, v string, _ store.APIToken) string { return "WDN_" + v[4:] }},
		{"upper-case ID", ReasonMalformed, func(_ *fixture, v string, r store.APIToken) string {
			return strings.Replace(v, r.ID, strings.ToUpper(r.ID), 1)
		}},
		{"truncated", ReasonMalformed, func(_ *fixture, v string, _ store.APIToken) string { return v[:len(v)-1] }},
		{"trailing newline", ReasonMalformed, func(_ *fixture, v string, _ store.APIToken) string { return v + "\n" }},
		{"padded secret", ReasonMalformed, func(_ *fixture, v string, _ store.APIToken) string { return v[:len(v)-1] + "=" }},
		{"bearer prefix kept", ReasonMalformed, func(_ *fixture, v string, _ store.APIToken) string { return "Bearer " + v }},
		{"unknown ID", ReasonUnknown, func(_ *fixture, v string, r store.APIToken) string {
			return strings.Replace(v, r.ID, "0123456789abcdef", 1)
		}},
		{"wrong secret", ReasonMismatch, func(_ *fixture, v string, _ store.APIToken) string {
			return v[:len(v)-secretLen] + base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{7}, secretBytes))
		}},
		{"secret of another token", ReasonMismatch, func(f *fixture, v string, _ store.APIToken) string {
			other, _, err := f.svc.Create(context.Background(), RoleAdmin, "mallory", "", 0)
			if err != nil {
				f.t.Fatal(err)
			}
			return v[:len(v)-secretLen] + secretPart(other)
		}},
		{"revoked", ReasonRevoked, func(f *fixture, v string, r store.APIToken) string {
			if _, err := f.svc.Revoke(context.Background(), r.ID); err != nil {
				f.t.Fatal(err)
			}
			return v
		}},
		{"expired", ReasonExpired, func(f *fixture, v string, _ store.APIToken) string {
			f.clock.Advance(time.Hour + time.Microsecond)
			return v
		}},
		{"expires this instant", ReasonExpired, func(f *fixture, v string, _ store.APIToken) string {
			f.clock.Advance(time.Hour)
			return v
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, st)
			valid, rec := f.create(t, RoleOperator, time.Hour)
			tok := tc.token(f, valid, rec)
			before := len(f.audit.all())
			got, err := f.svc.Authenticate(context.Background(), tok)
			if err != ErrUnauthorized { //nolint:errorlint // the very same error, not one wrapping it
				t.Fatalf("Authenticate error = %v, want exactly ErrUnauthorized", err)
			}
			if got.ID != "" || got.Hash != nil {
				t.Fatalf("a failed Authenticate returned a record: %+v", got)
			}
			for reason, n := range f.svc.Failures() {
				want := uint64(0)
				if reason == tc.reason {
					want = 1
				}
				if n != want {
					t.Errorf("Failures()[%s] = %d, want %d", reason, n, want)
				}
			}
			if len(f.svc.Failures()) != 5 {
				t.Errorf("Failures() has %d reasons, want 5", len(f.svc.Failures()))
			}
			evs := f.audit.all()[before:]
			if len(evs) != 1 || evs[0].Action != "token.authenticate" || evs[0].Outcome != "denied" || evs[0].Reason != tc.reason {
				t.Fatalf("audit events = %+v, want one token.authenticate denied %s", evs, tc.reason)
			}
			if tc.reason != ReasonMalformed && evs[0].Subject != "token:"+tokenID(tok) {
				t.Errorf("audit subject = %q, want token:<id>", evs[0].Subject)
			}
			logs := f.logs.String()
			if !strings.Contains(logs, "reason="+tc.reason) {
				t.Errorf("log does not give the reason %s:\n%s", tc.reason, logs)
			}
			if strings.Contains(logs, secretPart(valid)) || (len(tok) > 21 && strings.Contains(logs, tok[21:])) {
				t.Errorf("the log contains a secret:\n%s", logs)
			}
			if strings.Contains(fmt.Sprint(evs), secretPart(valid)) {
				t.Errorf("the audit log contains the secret: %+v", evs)
			}
		})
	}
}

// tokenID returns the ID part of a token of the right shape.
func tokenID(tok string) string {
	if len(tok) < len(Prefix)+idLen {
		return ""
	}
	return tok[len(Prefix) : len(Prefix)+idLen]
}

func TestAuthenticateLogsIDOfMangledToken(t *testing.T) {
	f := newFixture(t, nil)
	valid, rec := f.create(t, RoleViewer, 0)
	if _, err := f.svc.Authenticate(context.Background(), valid[:len(valid)-3]); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Authenticate(truncated) = %v", err)
	}
	if logs := f.logs.String(); !strings.Contains(logs, "token="+rec.ID) {
		t.Errorf("the log does not name the token whose secret was truncated:\n%s", logs)
	}
}

func TestAuthenticateStoreFailureIsNotUnauthorized(t *testing.T) {
	f := newFixture(t, nil)
	tok, _ := f.create(t, RoleAdmin, 0)
	boom := errors.New("database is locked")
	f.st.getErr = boom
	_, err := f.svc.Authenticate(context.Background(), tok)
	if !errors.Is(err, boom) || errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Authenticate with a failing store = %v, want it to wrap the store error and not be ErrUnauthorized", err)
	}
	if strings.Contains(err.Error(), secretPart(tok)) {
		t.Fatalf("error quotes the secret: %v", err)
	}
	for reason, n := range f.svc.Failures() {
		if n != 0 {
			t.Errorf("a store failure counted as %s", reason)
		}
	}
}

func TestTokenNeverStored(t *testing.T) {
	f := newFixture(t, nil)
	var toks []string
	for i := range 5 {
		tok, _, err := f.svc.Create(context.Background(), RoleApp, fmt.Sprintf("user-%d", i), "note", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	if _, err := f.svc.Authenticate(context.Background(), toks[0]); err != nil {
		t.Fatal(err)
	}
	if len(f.st.tokens) != len(toks) {
		t.Fatalf("store holds %d tokens, want %d", len(f.st.tokens), len(toks))
	}
	everything := fmt.Sprintf("%+v %#v %s", f.st.tokens, f.audit.all(), f.logs.String())
	for _, tok := range toks {
		id, secret, err := Parse(tok)
		if err != nil {
			t.Fatalf("Parse(created token): %v", err)
		}
		rec := f.st.tokens[id]
		sum := sha256.Sum256(secret)
		if !bytes.Equal(rec.Hash, sum[:]) {
			t.Errorf("stored hash of %s is not SHA-256 of its secret", id)
		}
		if strings.Contains(everything, secretPart(tok)) || strings.Contains(everything, tok) {
			t.Errorf("the token %s appears in the store, the audit log or the log", id)
		}
		if bytes.Contains([]byte(everything), secret) || strings.Contains(everything, fmt.Sprint(secret)) {
			t.Errorf("the raw secret of %s appears in the store, the audit log or the log", id)
		}
	}
	// Every token is different, in ID and in secret.
	seen := map[string]bool{}
	for _, tok := range toks {
		for _, part := range []string{tokenID(tok), secretPart(tok)} {
			if seen[part] {
				t.Fatalf("two tokens share %q", part)
			}
			seen[part] = true
		}
	}
}

func TestTouchThrottling(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	tok, rec := f.create(t, RoleViewer, 0)
	start := f.clock.Now()
	base := start.UTC().Truncate(time.Microsecond)
	auth := func(svc *Service, at time.Duration) store.APIToken {
		t.Helper()
		f.clock.Set(start.Add(at))
		got, err := svc.Authenticate(ctx, tok)
		if err != nil {
			t.Fatalf("at +%v: %v", at, err)
		}
		return got
	}

	for _, step := range []struct {
		at          time.Duration // since the token was created
		wantTouches int
		wantLast    time.Duration
	}{
		{0, 1, 0},                               // the first use is written
		{30 * time.Second, 1, 0},                // within a minute: not written
		{59 * time.Second, 1, 0},                // still within
		{time.Minute, 2, time.Minute},           // a minute after the last write
		{119 * time.Second, 2, time.Minute},     // within again
		{10 * time.Minute, 3, 10 * time.Minute}, // long after
		{10*time.Minute + time.Millisecond, 3, 10 * time.Minute},
		{11 * time.Minute, 4, 11 * time.Minute},
		{6 * time.Minute, 4, 11 * time.Minute}, // the clock went back: nothing written
	} {
		got := auth(f.svc, step.at)
		if n := f.st.touchCount(); n != step.wantTouches {
			t.Fatalf("at +%v: %d touches, want %d", step.at, n, step.wantTouches)
		}
		want := base.Add(step.wantLast)
		if stored := f.st.tokens[rec.ID].LastUsedAt; !stored.Equal(want) || !got.LastUsedAt.Equal(want) {
			t.Fatalf("at +%v: LastUsedAt stored %v, returned %v, want %v", step.at, stored, got.LastUsedAt, want)
		}
	}

	// Another process (a second Service on the same store) throttles on
	// the stored LastUsedAt, and the first one on what the second wrote.
	other := New(f.st, Options{Now: f.clock.Now, Logger: slog.New(slog.DiscardHandler), TouchEvery: time.Minute})
	auth(other, 11*time.Minute+30*time.Second)
	if n := f.st.touchCount(); n != 4 {
		t.Fatalf("second service wrote LastUsedAt 30s after the first did: %d touches, want 4", n)
	}
	auth(other, 12*time.Minute+time.Second)
	if n := f.st.touchCount(); n != 5 {
		t.Fatalf("second service: %d touches, want 5", n)
	}
	auth(f.svc, 12*time.Minute+2*time.Second)
	if n := f.st.touchCount(); n != 5 {
		t.Fatalf("first service wrote LastUsedAt a second after the second service did: %d touches, want 5", n)
	}
}

func TestTouchEveryOption(t *testing.T) {
	st := newMemStore()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	svc := New(st, Options{Now: c.Now, Logger: slog.New(slog.DiscardHandler), TouchEvery: 10 * time.Second})
	tok, _, err := svc.Create(context.Background(), RoleViewer, "bob", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		advance time.Duration
		want    int
	}{{0, 1}, {9 * time.Second, 1}, {time.Second, 2}, {5 * time.Second, 2}} {
		c.Advance(step.advance)
		if _, err := svc.Authenticate(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
		if n := st.touchCount(); n != step.want {
			t.Fatalf("after +%v: %d touches, want %d", step.advance, n, step.want)
		}
	}
}

// TestTouchConcurrentBurst checks that requests arriving while the first
// LastUsedAt write is still in flight (so they all read the old value from
// the store) do not write it again.
func TestTouchConcurrentBurst(t *testing.T) {
	f := newFixture(t, nil)
	tok, _ := f.create(t, RoleOperator, 0)
	var calls atomic.Int32
	entered, release := make(chan struct{}), make(chan struct{})
	f.st.onTouch = func() {
		if calls.Add(1) == 1 {
			close(entered)
			<-release
		}
	}
	first := make(chan error, 1)
	go func() {
		_, err := f.svc.Authenticate(context.Background(), tok)
		first <- err
	}()
	<-entered
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := f.svc.Authenticate(context.Background(), tok); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("21 requests during one in-flight write called TouchAPIToken %d times, want 1", n)
	}
}

func TestTouchFailureIsNotFatal(t *testing.T) {
	f := newFixture(t, nil)
	tok, _ := f.create(t, RoleOperator, 0)
	f.st.touchEr = errors.New("disk full")
	if _, err := f.svc.Authenticate(context.Background(), tok); err != nil {
		t.Fatalf("a failed LastUsedAt write failed authentication: %v", err)
	}
	if !strings.Contains(f.logs.String(), "disk full") {
		t.Errorf("the failed write was not logged:\n%s", f.logs.String())
	}
	// The next request tries again rather than waiting for the interval.
	f.st.touchEr = nil
	if _, err := f.svc.Authenticate(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if n := f.st.touchCount(); n != 1 {
		t.Fatalf("%d touches after the store recovered, want 1", n)
	}
}

func TestCreateValidation(t *testing.T) {
	for _, tc := range []struct {
		name, role, user, note string
		ttl                    time.Duration
		ok                     bool
	}{
		{"longest user and note", RoleAdmin, strings.Repeat("u", 256), strings.Repeat("n", 256), 0, true},
		{"unicode and spaces", RoleApp, "Zoë Müller 🙂", "her phone", time.Minute, true},
		{"empty note", RoleViewer, "bob", "", 0, true},
		{"unknown role", "root", "bob", "", 0, false},
		{"empty role", "", "bob", "", 0, false},
		{"capitalised role", "Admin", "bob", "", 0, false},
		{"empty user", RoleAdmin, "", "", 0, false},
		{"user too long", RoleAdmin, strings.Repeat("u", 257), "", 0, false},
		{"user with newline", RoleAdmin, "bob\nINFO forged line", "", 0, false},
		{"user with NUL", RoleAdmin, "bob\x00", "", 0, false},
		{"user with escape", RoleAdmin, "\x1b[31mbob", "", 0, false},
		{"user not UTF-8", RoleAdmin, "bob\xff", "", 0, false},
		{"note too long", RoleAdmin, "bob", strings.Repeat("n", 257), 0, false},
		{"note with tab", RoleAdmin, "bob", "a\tb", 0, false},
		{"negative ttl", RoleAdmin, "bob", "", -time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			tok, rec, err := f.svc.Create(context.Background(), tc.role, tc.user, tc.note, tc.ttl)
			if tc.ok {
				if err != nil {
					t.Fatalf("Create: %v", err)
				}
				if got, err := f.svc.Authenticate(context.Background(), tok); err != nil || got.User != tc.user || got.Note != tc.note {
					t.Fatalf("Authenticate = %+v, %v", got, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Create error = %v, want ErrInvalid", err)
			}
			if tok != "" || rec.ID != "" || len(f.st.tokens) != 0 || len(f.audit.all()) != 0 {
				t.Fatalf("a refused Create left something behind: token %q, record %+v, %d stored, %d audited",
					tok, rec, len(f.st.tokens), len(f.audit.all()))
			}
		})
	}
}

func TestCreateRetriesOnIDConflict(t *testing.T) {
	f := newFixture(t, nil)
	f.st.errs = []error{store.ErrConflict, store.ErrConflict}
	tok, rec, err := f.svc.Create(context.Background(), RoleAdmin, "bob", "", 0)
	if err != nil {
		t.Fatalf("Create after two conflicts: %v", err)
	}
	if _, err := f.svc.Authenticate(context.Background(), tok); err != nil || len(f.st.tokens) != 1 {
		t.Fatalf("Authenticate = %v with %d stored", err, len(f.st.tokens))
	}
	if evs := f.audit.all(); len(evs) != 1 || evs[0].Subject != "token:"+rec.ID {
		t.Fatalf("audit = %+v, want one token.create for %s", evs, rec.ID)
	}

	f.st.errs = []error{store.ErrConflict, store.ErrConflict, store.ErrConflict}
	if _, _, err := f.svc.Create(context.Background(), RoleAdmin, "bob", "", 0); err == nil {
		t.Fatal("Create succeeded although every ID conflicted")
	}
	boom := errors.New("read-only database")
	f.st.errs = []error{boom}
	if _, _, err := f.svc.Create(context.Background(), RoleAdmin, "bob", "", 0); !errors.Is(err, boom) {
		t.Fatalf("Create with a failing store = %v, want it to wrap the store error", err)
	}
}

func TestAuditEvents(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	tok, rec := f.create(t, RoleApp, 2*time.Hour)

	evs := f.audit.all()
	if len(evs) != 1 {
		t.Fatalf("%d audit events after Create, want 1", len(evs))
	}
	e := evs[0]
	wantExp := rec.ExpiresAt.Format(time.RFC3339)
	if e.Action != "token.create" || e.Outcome != "done" || e.Subject != "token:"+rec.ID ||
		e.Details["role"] != RoleApp || e.Details["user"] != "alice@example.com" || e.Details["expires_at"] != wantExp {
		t.Fatalf("create event = %+v", e)
	}

	f.clock.Advance(time.Minute)
	revoked, err := f.svc.Revoke(ctx, rec.ID)
	if err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	firstRevoke := f.clock.Now().UTC().Truncate(time.Microsecond)
	if !revoked.RevokedAt.Equal(firstRevoke) {
		t.Fatalf("RevokedAt = %v, want %v", revoked.RevokedAt, firstRevoke)
	}
	f.clock.Advance(time.Minute)
	again, err := f.svc.Revoke(ctx, rec.ID)
	if err != nil || !again.RevokedAt.Equal(firstRevoke) {
		t.Fatalf("second Revoke = %+v, %v; want the first revocation time kept", again, err)
	}
	evs = f.audit.all()
	if len(evs) != 3 {
		t.Fatalf("%d audit events, want 3: %+v", len(evs), evs)
	}
	for i, reason := range []string{"", "already-revoked"} {
		e := evs[1+i]
		if e.Action != "token.revoke" || e.Outcome != "done" || e.Subject != "token:"+rec.ID || e.Reason != reason ||
			e.Details["role"] != RoleApp || e.Details["user"] != "alice@example.com" {
			t.Errorf("revoke event %d = %+v", i, e)
		}
	}
	if strings.Contains(fmt.Sprintf("%#v", evs), secretPart(tok)) {
		t.Fatal("an audit event contains the secret")
	}

	// Unknown and malformed IDs: errors, and nothing audited.
	if _, err := f.svc.Revoke(ctx, "0000000000000000"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Revoke(unknown) = %v, want ErrNotFound", err)
	}
	other, _ := f.create(t, RoleAdmin, 0)
	_, err = f.svc.Revoke(ctx, other) // a whole token instead of its ID
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("Revoke(whole token) = %v, want ErrInvalid", err)
	}
	if err != nil && strings.Contains(err.Error(), secretPart(other)) {
		t.Errorf("Revoke's error quotes the token: %v", err)
	}
	if n := len(f.audit.all()); n != 4 {
		t.Errorf("%d audit events after failed revocations, want 4 (3 + the second create)", n)
	}
}

func TestRevokeTakesEffectAtOnce(t *testing.T) {
	f := newFixture(t, nil)
	tok, rec := f.create(t, RoleAdmin, 0)
	if _, err := f.svc.Authenticate(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Revoke(context.Background(), rec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Authenticate(context.Background(), tok); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Authenticate right after Revoke = %v, want ErrUnauthorized", err)
	}
}

func TestList(t *testing.T) {
	f := newFixture(t, nil)
	var ids []string
	for range 3 {
		_, rec := f.create(t, RoleViewer, 0)
		ids = append(ids, rec.ID)
		f.clock.Advance(time.Second)
	}
	got, err := f.svc.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var gotIDs []string
	for _, r := range got {
		gotIDs = append(gotIDs, r.ID)
	}
	slices.Reverse(ids)
	if !slices.Equal(gotIDs, ids) {
		t.Fatalf("List IDs = %v, want newest first %v", gotIDs, ids)
	}
}

func TestParse(t *testing.T) {
	secret := bytes.Repeat([]byte{0xa5}, secretBytes)
	valid := format("0123456789abcdef", secret)
	if valid != "wdn_0123456789abcdef_paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaU" {
		t.Fatalf("format = %q; the token format changed", valid)
	}
	id, got, err := Parse(valid)
	if err != nil || id != "0123456789abcdef" || !bytes.Equal(got, secret) {
		t.Fatalf("Parse(valid) = %q, %x, %v", id, got, err)
	}

	sec := valid[21:]
	for _, tc := range []struct{ name, token string }{
		{"empty", ""},
		{"prefix only", Prefix},
		{"one short", valid[:Len-1]},
		{"one long", valid + "A"},
		{"very long", strings.Repeat(valid, 1000)},
		{"leading space", " " + valid[:Len-1]},
		{"trailing space", valid[1:] + " "},
		{"wrong prefix", "wdx_" + valid[4:]},
		{"upper-case prefix", "WDN_" + valid[4:]},
		{"upper-case ID", "wdn_0123456789ABCDEF_" + sec},
		{"non-hex ID", "wdn_0123456789abcdeg_" + sec},
		{"dash separator", "wdn_0123456789abcdef-" + sec},
		{"ID one short", "wdn_0123456789abcde__" + sec},
		{"padding", valid[:Len-1] + "="},
		{"standard alphabet plus", valid[:Len-1] + "+"},
		{"standard alphabet slash", valid[:Len-1] + "/"},
		{"newline in secret", valid[:40] + "\n" + valid[41:]},
		{"CR in secret", valid[:40] + "\r" + valid[41:]},
		{"non-zero trailing bits", valid[:Len-1] + "V"},
		{"non-ASCII", valid[:Len-2] + "é"},
		{"NUL", valid[:Len-1] + "\x00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, secret, err := Parse(tc.token)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse = %q, %x, %v; want ErrMalformed", id, secret, err)
			}
			if id != "" || secret != nil {
				t.Fatalf("a refused Parse returned %q, %x", id, secret)
			}
			msg := err.Error()
			if len(tc.token) > 21 && strings.Contains(msg, tc.token[21:]) || len(msg) > 120 {
				t.Fatalf("error echoes the token: %q", msg)
			}
		})
	}
}

func TestFromRequest(t *testing.T) {
	tok := "wdn_0123456789abcdef_paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaU"
	for _, tc := range []struct {
		name    string
		headers []string
		want    string
	}{
		{"none", nil, ""},
		{"bearer", []string{"Bearer " + tok}, tok},
		{"lower-case scheme", []string{"bearer " + tok}, tok},
		{"upper-case scheme", []string{"BEARER " + tok}, tok},
		{"extra spaces", []string{"Bearer   " + tok + "  "}, tok},
		{"basic", []string{"Basic dXNlcjpwYXNz"}, ""},
		{"scheme only", []string{"Bearer"}, ""},
		{"scheme and space", []string{"Bearer "}, ""},
		{"bare token", []string{tok}, ""},
		{"two headers", []string{"Bearer " + tok, "Bearer " + tok}, ""},
		{"empty", []string{""}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/v1/devices", nil)
			for _, h := range tc.headers {
				r.Header.Add("Authorization", h)
			}
			if got := FromRequest(r); got != tc.want {
				t.Fatalf("FromRequest = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestSQLite runs the token life cycle against the real store: what is
// returned equals what is read back, LastUsedAt throttling survives a
// restart, and neither the token nor its secret reaches the database file.
func TestSQLite(t *testing.T) {
	ctx := context.Background()
	st, path := openSQLite(t)
	f := newFixture(t, st)

	tok, rec, err := f.svc.Create(ctx, RoleApp, "alice@example.com", "kitchen app", 48*time.Hour)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	stored, err := st.GetAPIToken(ctx, rec.ID)
	if err != nil {
		t.Fatalf("GetAPIToken: %v", err)
	}
	if stored.ID != rec.ID || !bytes.Equal(stored.Hash, rec.Hash) || stored.Role != rec.Role || stored.User != rec.User ||
		stored.Note != rec.Note || !stored.CreatedAt.Equal(rec.CreatedAt) || !stored.ExpiresAt.Equal(rec.ExpiresAt) {
		t.Fatalf("stored %+v, Create returned %+v", stored, rec)
	}

	got, err := f.svc.Authenticate(ctx, tok)
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	firstUse := f.clock.Now().UTC().Truncate(time.Microsecond)
	if got.ID != rec.ID || got.Role != RoleApp || got.User != "alice@example.com" || !got.LastUsedAt.Equal(firstUse) {
		t.Fatalf("Authenticate = %+v", got)
	}

	// A restarted process reads LastUsedAt from the store: 30s later it
	// does not write, 61s later it does.
	restarted := New(st, Options{Now: f.clock.Now, Logger: slog.New(slog.DiscardHandler)})
	for _, step := range []struct {
		advance time.Duration
		want    time.Time
	}{{30 * time.Second, firstUse}, {31 * time.Second, firstUse.Add(61 * time.Second)}} {
		f.clock.Advance(step.advance)
		if _, err := restarted.Authenticate(ctx, tok); err != nil {
			t.Fatal(err)
		}
		if r, err := st.GetAPIToken(ctx, rec.ID); err != nil || !r.LastUsedAt.Equal(step.want) {
			t.Fatalf("after +%v: stored LastUsedAt %v (%v), want %v", step.advance, r.LastUsedAt, err, step.want)
		}
	}

	list, err := f.svc.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != rec.ID {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if _, err := f.svc.Revoke(ctx, rec.ID); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if _, err := f.svc.Authenticate(ctx, tok); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Authenticate after Revoke = %v", err)
	}
	if _, err := f.svc.Revoke(ctx, "0000000000000000"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Revoke(unknown) = %v, want ErrNotFound", err)
	}

	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	_, secret, err := Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(path + "*") // the database and any -wal or -shm left behind
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(secretPart(tok))) || bytes.Contains(b, secret) {
			t.Fatalf("%s contains the token's secret", filepath.Base(p))
		}
	}
	if sum := sha256.Sum256(secret); !bytes.Equal(stored.Hash, sum[:]) {
		t.Fatal("the stored hash is not SHA-256 of the secret")
	}
}
