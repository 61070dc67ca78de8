// Package apitoken issues and checks the bearer tokens that operators,
// services and apps present to the HTTPS API.
//
// A token is "wdn_" + ID + "_" + secret: the ID is 16 lowercase hex digits
// (8 random bytes) and names the stored record, so it may appear in logs,
// listings and audit events; the secret is 32 random bytes in unpadded
// base64url (43 characters) and exists in the clear only in the value
// Create returns. The store keeps SHA-256 of the secret. A slow password
// hash would buy nothing here: it protects low-entropy secrets against
// guessing, and a 256-bit random secret cannot be guessed, so one SHA-256
// is enough to make a stolen database useless for authenticating.
//
// Authentication fails with one error, ErrUnauthorized, whatever went
// wrong, so a caller cannot learn which IDs exist or which tokens were
// revoked; the reason goes to the log, the audit log and Failures.
package apitoken

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/store"
)

// Roles. What each may do is decided by the API; this package only
// records the role with the token.
const (
	RoleAdmin    = "admin"    // everything
	RoleOperator = "operator" // devices, rollouts, commands
	RoleViewer   = "viewer"   // read only
	RoleApp      = "app"      // only the devices its user owns
)

// ValidRole reports whether r is one of the roles above.
func ValidRole(r string) bool {
	switch r {
	case RoleAdmin, RoleOperator, RoleViewer, RoleApp:
		return true
	}
	return false
}

// Token shape.
const (
	// Prefix starts every token, so secret scanners and people can tell a
	// Warden token from other strings.
	Prefix = "wdn_"
	// Len is the length of every token in bytes.
	Len = len(Prefix) + idLen + 1 + secretLen

	idBytes     = 8
	idLen       = 2 * idBytes
	secretBytes = 32
	secretLen   = 43 // base64.RawURLEncoding.EncodedLen(secretBytes)
)

// Limits on the text stored with a token.
const (
	MaxUserLen = 256
	MaxNoteLen = 256
)

// DefaultTouchEvery is how often, at most, a token's LastUsedAt is written:
// a write per request would turn every API read into a database write.
const DefaultTouchEvery = time.Minute

// Failure reasons, as counted by Failures and logged.
const (
	ReasonMalformed = "malformed" // not a token at all
	ReasonUnknown   = "unknown"   // well formed, but no such ID
	ReasonMismatch  = "mismatch"  // known ID, wrong secret
	ReasonRevoked   = "revoked"   // right secret, revoked token
	ReasonExpired   = "expired"   // right secret, expired token
)

var (
	// ErrUnauthorized is the only error Authenticate returns for a token
	// that does not authenticate, whatever the reason.
	ErrUnauthorized = errors.New("invalid or expired API token")
	// ErrMalformed marks a string that is not a Warden API token.
	ErrMalformed = errors.New("malformed API token")
	// ErrInvalid marks a Create or Revoke argument that can never be
	// accepted (unknown role, empty user, negative lifetime, bad ID).
	ErrInvalid = errors.New("invalid API token request")
)

// Store is the part of store.Store this package needs; see
// store.OnboardStore for the semantics each method must have.
type Store interface {
	CreateAPIToken(ctx context.Context, t store.APIToken) error
	GetAPIToken(ctx context.Context, id string) (store.APIToken, error)
	ListAPITokens(ctx context.Context) ([]store.APIToken, error)
	RevokeAPIToken(ctx context.Context, id string, at time.Time) (store.APIToken, error)
	TouchAPIToken(ctx context.Context, id string, at time.Time) error
}

// Parse splits a token into its ID and its decoded secret. It accepts only
// the exact shape Create produces (so every token has one spelling), and
// its errors never contain the token, which may be a real secret with a
// typo.
func Parse(token string) (id string, secret []byte, err error) {
	if len(token) != Len {
		return "", nil, fmt.Errorf("%w: %d bytes long, want %d", ErrMalformed, len(token), Len)
	}
	if !strings.HasPrefix(token, Prefix) {
		return "", nil, fmt.Errorf("%w: does not start with %q", ErrMalformed, Prefix)
	}
	id = token[len(Prefix) : len(Prefix)+idLen]
	if !validID(id) {
		return "", nil, fmt.Errorf("%w: the ID is not %d lowercase hex digits", ErrMalformed, idLen)
	}
	if token[len(Prefix)+idLen] != '_' {
		return "", nil, fmt.Errorf("%w: no '_' after the ID", ErrMalformed)
	}
	enc := token[len(Prefix)+idLen+1:]
	// The decoder skips '\r' and '\n'; checking the alphabet first keeps
	// the one-spelling rule.
	for i := 0; i < len(enc); i++ {
		if !isBase64URL(enc[i]) {
			return "", nil, fmt.Errorf("%w: the secret is not unpadded base64url", ErrMalformed)
		}
	}
	secret, err = base64.RawURLEncoding.Strict().DecodeString(enc)
	if err != nil || len(secret) != secretBytes {
		// Strict rejects non-zero trailing bits, the only other way to
		// spell the same secret twice. The decoder's error is dropped: it
		// says nothing useful and is one step from quoting the input.
		return "", nil, fmt.Errorf("%w: the secret is not %d bytes of canonical base64url", ErrMalformed, secretBytes)
	}
	return id, secret, nil
}

// format is Parse's inverse.
func format(id string, secret []byte) string {
	return Prefix + id + "_" + base64.RawURLEncoding.EncodeToString(secret)
}

func validID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func isBase64URL(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// idHint returns the ID of a token that is malformed only after its ID,
// so the log can say which token was mangled; "" if there is no such ID.
func idHint(token string) string {
	if len(token) <= len(Prefix)+idLen || !strings.HasPrefix(token, Prefix) || token[len(Prefix)+idLen] != '_' {
		return ""
	}
	if id := token[len(Prefix) : len(Prefix)+idLen]; validID(id) {
		return id
	}
	return ""
}

// FromRequest returns the bearer token of r's Authorization header
// ("Bearer <token>", the scheme in any case), or "" if there is none. A
// request with several Authorization headers has none: which one counts
// would otherwise depend on the proxy in front.
func FromRequest(r *http.Request) string {
	vs := r.Header.Values("Authorization")
	if len(vs) != 1 {
		return ""
	}
	scheme, tok, ok := strings.Cut(vs[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// Options configures a Service. Every field is optional.
type Options struct {
	Now        func() time.Time // default time.Now
	Logger     *slog.Logger     // default slog.Default()
	Audit      audit.Recorder   // default audit.Discard
	TouchEvery time.Duration    // <= 0: DefaultTouchEvery
}

// Service creates, checks, lists and revokes API tokens. It is safe for
// concurrent use.
type Service struct {
	st         Store
	log        *slog.Logger
	audit      audit.Recorder
	now        func() time.Time
	touchEvery time.Duration
	// dummy stands in for the stored hash when the ID is unknown, so an
	// unknown ID costs the same hash and comparison as a known one. Nothing
	// hashes to it: finding a secret that does is a SHA-256 preimage.
	dummy [sha256.Size]byte

	mu      sync.Mutex
	touched map[string]time.Time // token ID -> last LastUsedAt write from this process

	failures failureCounts
}

// failureCounts counts authentication failures by reason.
type failureCounts struct {
	malformed, unknown, mismatch, revoked, expired atomic.Uint64
}

func (c *failureCounts) of(reason string) *atomic.Uint64 {
	switch reason {
	case ReasonMalformed:
		return &c.malformed
	case ReasonUnknown:
		return &c.unknown
	case ReasonMismatch:
		return &c.mismatch
	case ReasonRevoked:
		return &c.revoked
	default:
		return &c.expired
	}
}

// maxTouched bounds the touch map; only authenticated IDs enter it, so it
// outgrows this only with that many tokens in use.
const maxTouched = 4096

// New returns a Service over st.
func New(st Store, o Options) *Service {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Audit == nil {
		o.Audit = audit.Discard{Logger: o.Logger}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.TouchEvery <= 0 {
		o.TouchEvery = DefaultTouchEvery
	}
	return &Service{
		st: st, log: o.Logger, audit: o.Audit, now: o.Now, touchEvery: o.TouchEvery,
		dummy:   sha256.Sum256([]byte("warden apitoken: no such token")),
		touched: map[string]time.Time{},
	}
}

// clock returns the current time as the store keeps it (UTC,
// microseconds), so a returned record equals a later read of it.
func (s *Service) clock() time.Time {
	return s.now().UTC().Truncate(time.Microsecond)
}

// Create makes a token for user with role and returns it with its record.
// The returned string is the only copy of the token in the clear: show it
// once and drop it. note (at most MaxNoteLen bytes) says what the token is
// for; ttl 0 means it never expires.
func (s *Service) Create(ctx context.Context, role, user, note string, ttl time.Duration) (string, store.APIToken, error) {
	if !ValidRole(role) {
		return "", store.APIToken{}, fmt.Errorf("%w: role %q is not one of admin, operator, viewer, app", ErrInvalid, role)
	}
	if err := checkText("user", user, 1, MaxUserLen); err != nil {
		return "", store.APIToken{}, err
	}
	if err := checkText("note", note, 0, MaxNoteLen); err != nil {
		return "", store.APIToken{}, err
	}
	if ttl < 0 {
		return "", store.APIToken{}, fmt.Errorf("%w: lifetime %v is negative; use 0 for a token that does not expire", ErrInvalid, ttl)
	}
	now := s.clock()
	rec := store.APIToken{Role: role, User: user, Note: note, CreatedAt: now}
	if ttl > 0 {
		rec.ExpiresAt = now.Add(ttl).Truncate(time.Microsecond)
	}
	// 64-bit IDs do not collide in practice; retrying covers the
	// impossible without ever overwriting a record.
	const attempts = 3
	for range attempts {
		var idb [idBytes]byte
		secret := make([]byte, secretBytes)
		rand.Read(idb[:]) // never fails (crypto/rand since Go 1.24)
		rand.Read(secret)
		sum := sha256.Sum256(secret)
		rec.ID = hex.EncodeToString(idb[:])
		rec.Hash = sum[:]
		err := s.st.CreateAPIToken(ctx, rec)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return "", store.APIToken{}, fmt.Errorf("apitoken: store the new token: %w", err)
		}
		expires := "never"
		if !rec.ExpiresAt.IsZero() {
			expires = rec.ExpiresAt.Format(time.RFC3339)
		}
		s.audit.Record(ctx, audit.Event{Action: "token.create", Outcome: "done", Actor: "operator", Subject: "token:" + rec.ID,
			Details: map[string]string{"role": role, "user": user, "expires_at": expires}})
		s.log.Info("API token created", "token", rec.ID, "role", role, "user", user, "expires_at", expires)
		return format(rec.ID, secret), rec, nil
	}
	return "", store.APIToken{}, fmt.Errorf("apitoken: %d random token IDs in a row already exist; check the random source and the api_tokens table", attempts)
}

// checkText accepts printable UTF-8 of min to max bytes: it ends up in
// listings and logs, where control characters could forge lines.
func checkText(field, v string, minLen, maxLen int) error {
	if len(v) < minLen || len(v) > maxLen {
		if minLen > 0 && v == "" {
			return fmt.Errorf("%w: %s is required", ErrInvalid, field)
		}
		return fmt.Errorf("%w: %s is %d bytes, at most %d allowed", ErrInvalid, field, len(v), maxLen)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, field)
	}
	for _, r := range v {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%w: %s contains the unprintable character %U", ErrInvalid, field, r)
		}
	}
	return nil
}

// Authenticate returns the record of token if it is well formed, known,
// carries the right secret, and is neither revoked nor expired. Any of
// those failing gives ErrUnauthorized and nothing else; the reason is
// logged (with the token ID when there is one, never the secret), audited
// and counted. Only a store failure gives another error, which says
// nothing about the token and should be answered as a server error.
//
// The secret is checked before revocation and expiry, so only a holder of
// the secret ever learns, even from the logs, that a token is revoked.
func (s *Service) Authenticate(ctx context.Context, token string) (store.APIToken, error) {
	id, secret, err := Parse(token)
	if err != nil {
		s.fail(ctx, ReasonMalformed, idHint(token), err.Error())
		return store.APIToken{}, ErrUnauthorized
	}
	sum := sha256.Sum256(secret)
	rec, err := s.st.GetAPIToken(ctx, id)
	found := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.APIToken{}, fmt.Errorf("apitoken: look up token %s: %w", id, err)
	}
	want := s.dummy[:]
	if found {
		want = rec.Hash
	}
	// One comparison on both paths: an unknown ID costs what a known one
	// costs, and the result is always used.
	match := subtle.ConstantTimeCompare(sum[:], want) == 1
	switch {
	case !found:
		s.fail(ctx, ReasonUnknown, id, "")
		return store.APIToken{}, ErrUnauthorized
	case !match:
		s.fail(ctx, ReasonMismatch, id, "")
		return store.APIToken{}, ErrUnauthorized
	case rec.Revoked():
		s.fail(ctx, ReasonRevoked, id, "")
		return store.APIToken{}, ErrUnauthorized
	}
	now := s.clock()
	if !rec.ExpiresAt.IsZero() && !now.Before(rec.ExpiresAt) {
		s.fail(ctx, ReasonExpired, id, "")
		return store.APIToken{}, ErrUnauthorized
	}
	s.touch(ctx, &rec, now)
	return rec, nil
}

// fail records an authentication failure.
func (s *Service) fail(ctx context.Context, reason, id, detail string) {
	s.failures.of(reason).Add(1)
	attrs := []any{"reason", reason}
	ev := audit.Event{Action: "token.authenticate", Outcome: "denied", Reason: reason}
	if id != "" {
		attrs = append(attrs, "token", id)
		ev.Subject = "token:" + id
	}
	if detail != "" {
		attrs = append(attrs, "detail", detail)
	}
	// A wrong secret for a real ID is someone holding a token ID, which is
	// worth more attention than noise from scanners.
	level := slog.LevelInfo
	if reason == ReasonMismatch {
		level = slog.LevelWarn
	}
	s.log.Log(ctx, level, "API token refused", attrs...)
	s.audit.Record(ctx, ev)
}

// touch writes rec's LastUsedAt if neither the store nor this process has
// written it within touchEvery. The stored value throttles across
// processes; the map throttles a burst of requests that all read the old
// value. A failed write is logged, never fatal: the token is valid.
func (s *Service) touch(ctx context.Context, rec *store.APIToken, now time.Time) {
	s.mu.Lock()
	last := s.touched[rec.ID]
	if rec.LastUsedAt.After(last) {
		last = rec.LastUsedAt
	}
	if !last.IsZero() && now.Sub(last) < s.touchEvery {
		s.mu.Unlock()
		return
	}
	if len(s.touched) >= maxTouched {
		for id, t := range s.touched {
			if now.Sub(t) >= s.touchEvery {
				delete(s.touched, id)
			}
		}
	}
	s.touched[rec.ID] = now
	s.mu.Unlock()

	if err := s.st.TouchAPIToken(ctx, rec.ID, now); err != nil {
		s.log.Warn("could not record an API token's last use", "token", rec.ID, "error", err)
		s.mu.Lock()
		if s.touched[rec.ID].Equal(now) {
			delete(s.touched, rec.ID) // let the next request try again
		}
		s.mu.Unlock()
		return
	}
	rec.LastUsedAt = now
}

// List returns every token record, newest first. Records hold hashes,
// never tokens.
func (s *Service) List(ctx context.Context) ([]store.APIToken, error) {
	ts, err := s.st.ListAPITokens(ctx)
	if err != nil {
		return nil, fmt.Errorf("apitoken: list tokens: %w", err)
	}
	return ts, nil
}

// Revoke revokes the token with ID id (the 16 hex digits after "wdn_", as
// List shows them) at once and for good. Revoking a revoked token keeps
// its first revocation time. The error wraps store.ErrNotFound if there is
// no such token.
func (s *Service) Revoke(ctx context.Context, id string) (store.APIToken, error) {
	if !validID(id) {
		// Never quote it: it may be a whole token pasted by mistake.
		return store.APIToken{}, fmt.Errorf("%w: a token ID is %d lowercase hex digits (the part after %q), as `warden token list` shows", ErrInvalid, idLen, Prefix)
	}
	now := s.clock()
	rec, err := s.st.RevokeAPIToken(ctx, id, now)
	if err != nil {
		return store.APIToken{}, fmt.Errorf("apitoken: revoke token %s: %w", id, err)
	}
	s.mu.Lock()
	delete(s.touched, id)
	s.mu.Unlock()
	ev := audit.Event{Action: "token.revoke", Outcome: "done", Actor: "operator", Subject: "token:" + id,
		Details: map[string]string{"role": rec.Role, "user": rec.User}}
	if !rec.RevokedAt.Equal(now) {
		ev.Reason = "already-revoked"
	}
	s.audit.Record(ctx, ev)
	s.log.Info("API token revoked", "token", id, "role", rec.Role, "user", rec.User, "revoked_at", rec.RevokedAt)
	return rec, nil
}

// Failures returns how many authentications failed, by reason (every
// Reason constant is a key), since the Service was made.
func (s *Service) Failures() map[string]uint64 {
	m := map[string]uint64{}
	for _, r := range []string{ReasonMalformed, ReasonUnknown, ReasonMismatch, ReasonRevoked, ReasonExpired} {
		m[r] = s.failures.of(r).Load()
	}
	return m
}
