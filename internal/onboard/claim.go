package onboard

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/onboard/claimtoken"
	"github.com/warden-iot/warden/internal/store"
)

// DefaultClaimTTL is how long a minted claim token stays valid unless the
// app asks for less; claimtoken.MaxTTL is the ceiling.
const DefaultClaimTTL = 10 * time.Minute

// ErrClaimsOff is returned when the server has no claim key.
var ErrClaimsOff = errors.New("app claiming is not enabled on this server")

// Claim-token refusal reasons beside claimtoken.Reason's.
const (
	reasonReplayed     = "replayed"
	reasonOwned        = "owned-by-another-user"
	reasonUnknown      = "unknown-device"
	reasonRevoked      = "device-revoked"
	reasonClaimsOff    = "claims-off"
	reasonClaimFailure = "error"
)

// claimError carries a refusal reason for the audit log; the device is
// told only "refused".
type claimError struct {
	reason string
	err    error
}

func (e *claimError) Error() string { return "claim refused (" + e.reason + "): " + e.err.Error() }
func (e *claimError) Unwrap() error { return e.err }

func claimReason(err error) string {
	var ce *claimError
	if errors.As(err, &ce) {
		return ce.reason
	}
	return reasonClaimFailure
}

// MintClaim returns a claim token binding whoever redeems it to user, valid
// for ttl (0 means DefaultClaimTTL; at most claimtoken.MaxTTL). actor names
// the caller for the audit log ("token:<id>").
func (s *Service) MintClaim(ctx context.Context, user, actor string, ttl time.Duration) (string, claimtoken.Claims, error) {
	if s.claimKey == nil {
		return "", claimtoken.Claims{}, ErrClaimsOff
	}
	if ttl == 0 {
		ttl = DefaultClaimTTL
	}
	tok, c, err := s.claimKey.Mint(user, ttl, s.now())
	if err != nil {
		s.claims.WithLabelValues("mint", "error").Inc()
		return "", claimtoken.Claims{}, err
	}
	s.claims.WithLabelValues("mint", "minted").Inc()
	s.audit.Record(ctx, audit.Event{Action: "claim.mint", Outcome: "done", Actor: actor,
		Details: map[string]string{"user": user, "claim_id": c.ID, "expires": c.Expiry.UTC().Format(time.RFC3339)}})
	return tok, c, nil
}

// Redeem checks a claim token a device forwarded and binds the device to
// the token's user: the token must be this server's, intact, unexpired and
// never used. Every outcome is audited with its reason.
func (s *Service) Redeem(ctx context.Context, deviceID, token, remote string) (store.Device, error) {
	d, c, err := s.redeem(ctx, deviceID, token)
	ev := audit.Event{Action: "device.claim", Outcome: "done", Actor: "device:" + deviceID, Subject: "device:" + deviceID, Remote: remote}
	if c.ID != "" {
		ev.Details = map[string]string{"user": c.User, "claim_id": c.ID}
	}
	outcome := "bound"
	if err != nil {
		outcome = claimReason(err)
		ev.Outcome, ev.Reason = "denied", outcome
		if outcome == reasonClaimFailure {
			ev.Outcome = "failed"
			s.log.Error("claim failed", "device", deviceID, "error", err)
		} else {
			s.log.Warn("claim refused", "device", deviceID, "reason", outcome)
		}
	} else {
		s.log.Info("device claimed", "device", deviceID, "user", c.User)
	}
	s.claims.WithLabelValues("redeem", outcome).Inc()
	s.audit.Record(ctx, ev)
	return d, err
}

func (s *Service) redeem(ctx context.Context, deviceID, token string) (store.Device, claimtoken.Claims, error) {
	if s.claimKey == nil {
		return store.Device{}, claimtoken.Claims{}, &claimError{reasonClaimsOff, ErrClaimsOff}
	}
	now := s.now()
	c, err := s.claimKey.Open(token, now)
	if err != nil {
		return store.Device{}, claimtoken.Claims{}, &claimError{claimtoken.Reason(err), err}
	}
	d, err := s.st.Claim(ctx, store.ClaimUse{TokenID: c.ID, User: c.User, DeviceID: deviceID,
		ExpiresAt: c.Expiry.UTC(), UsedAt: now.UTC().Truncate(time.Microsecond)})
	switch {
	case err == nil:
		return d, c, nil
	case errors.Is(err, store.ErrNotFound):
		return store.Device{}, c, &claimError{reasonUnknown, err}
	case errors.Is(err, store.ErrRevoked):
		return store.Device{}, c, &claimError{reasonRevoked, err}
	case errors.Is(err, store.ErrConflict):
		// Either the token was used before or the device has another
		// owner; say which in the audit log.
		if cur, gerr := s.st.GetDevice(ctx, deviceID); gerr == nil && cur.Owner != "" && cur.Owner != c.User {
			return store.Device{}, c, &claimError{reasonOwned, err}
		}
		return store.Device{}, c, &claimError{reasonReplayed, err}
	}
	return store.Device{}, c, &claimError{reasonClaimFailure, fmt.Errorf("claim %q: %w", deviceID, err)}
}

// PurgeClaims forgets used claim tokens that have expired (they cannot be
// replayed anyway) and returns how many.
func (s *Service) PurgeClaims(ctx context.Context) (int, error) {
	return s.st.PurgeClaimUses(ctx, s.now().Add(-time.Minute))
}

func claimIdentity(leaf *x509.Certificate) (identity.Kind, string, error) {
	return identity.FromURIs(leaf.URIs)
}
