package apiclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/api"
	"github.com/warden-iot/warden/internal/store"
)

// Preregister records a device that enrolls itself with an enrollment
// secret or, with req.Recovery, re-arms a registered one
// (POST /v1/enrollments), and returns its secret file: the only copy of
// the secret there is. Clear its Secret when it is written.
func (c *Client) Preregister(ctx context.Context, req api.EnrollmentRequest) (enrollproto.SecretFile, error) {
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodPost, "/v1/enrollments", req, &raw); err != nil {
		return enrollproto.SecretFile{}, err
	}
	defer clear(raw)
	f, err := enrollproto.ParseSecretFile(raw)
	if err != nil {
		return enrollproto.SecretFile{}, fmt.Errorf("the server's answer to the preregistration of %s: %w", req.DeviceID, err)
	}
	if f.DeviceID != req.DeviceID {
		clear(f.Secret)
		return enrollproto.SecretFile{}, fmt.Errorf("the server answered a secret file for device %q to the preregistration of %q", f.DeviceID, req.DeviceID)
	}
	return f, nil
}

// Enrollments returns one page of enrollments matching f (GET
// /v1/enrollments): f.Limit of them (default store.DefaultListLimit)
// after f.After. The list's NextAfter is the After of the next page.
func (c *Client) Enrollments(ctx context.Context, f store.EnrollmentFilter) (api.EnrollmentList, error) {
	q := url.Values{}
	if f.Claim != "" {
		q.Set("claim", f.Claim)
	}
	if f.Unused {
		q.Set("unused", "true")
	}
	if f.After != "" {
		q.Set("after", f.After)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(min(f.Limit, store.MaxListLimit)))
	}
	var out api.EnrollmentList
	err := c.do(ctx, http.MethodGet, "/v1/enrollments?"+q.Encode(), nil, &out)
	return out, err
}

// Unregister withdraws an enrollment no device has used (DELETE
// /v1/enrollments/{id}).
func (c *Client) Unregister(ctx context.Context, deviceID string) error {
	return c.do(ctx, http.MethodDelete, "/v1/enrollments/"+esc(deviceID), nil, nil)
}

// ClaimCerts lists the claim certificates (GET /v1/claim-certs).
func (c *Client) ClaimCerts(ctx context.Context) ([]api.ClaimCert, error) {
	var out api.ClaimCertList
	err := c.do(ctx, http.MethodGet, "/v1/claim-certs", nil, &out)
	return out.ClaimCerts, err
}

// CreateClaimCert issues a claim certificate for req.CSR with the
// allow-list req.Allow (POST /v1/claim-certs). An allow-list too long for
// one request body goes in several; if a later part is refused, the
// certificate is revoked again, as the server does when a whole list
// cannot be stored, so that no certificate is left with half its list.
func (c *Client) CreateClaimCert(ctx context.Context, req api.ClaimCertRequest) (api.ClaimCertCreated, error) {
	allow := req.Allow
	req.Allow = nil
	parts, err := allowParts(req, allow)
	if err != nil {
		return api.ClaimCertCreated{}, err
	}
	req.Allow = parts[0]
	var out api.ClaimCertCreated
	if err := c.do(ctx, http.MethodPost, "/v1/claim-certs", req, &out); err != nil {
		return api.ClaimCertCreated{}, err
	}
	for _, part := range parts[1:] {
		cc, err := c.allow(ctx, req.Name, api.AllowRequest{Allow: part, Model: req.Model, Tags: req.Tags})
		if err != nil {
			// The caller's context may be what failed; the revocation must
			// still happen.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultTimeout)
			_, rerr := c.RevokeClaimCert(rctx, req.Name, "allow-list not stored")
			cancel()
			if rerr != nil {
				return api.ClaimCertCreated{}, fmt.Errorf("claim certificate %s was issued but its allow-list could not be stored (%w), and revoking it failed too (%w): revoke it by hand", req.Name, err, rerr)
			}
			return api.ClaimCertCreated{}, fmt.Errorf("claim certificate %s: its allow-list could not be stored, so it was revoked again: %w", req.Name, err)
		}
		out.ClaimCert = cc
	}
	return out, nil
}

// AllowClaim adds device IDs to a claim certificate's allow-list (POST
// /v1/claim-certs/{id}/allow), in as many requests as the list needs. The
// server adds each request's IDs all or none; when a later request fails,
// the error says how many IDs were added before it.
func (c *Client) AllowClaim(ctx context.Context, name string, req api.AllowRequest) (api.ClaimCert, error) {
	if len(req.Allow) == 0 {
		return api.ClaimCert{}, errors.New("no device IDs to allow")
	}
	parts, err := allowParts(api.AllowRequest{Model: req.Model, Tags: req.Tags}, req.Allow)
	if err != nil {
		return api.ClaimCert{}, err
	}
	var out api.ClaimCert
	done := 0
	for _, part := range parts {
		cc, err := c.allow(ctx, name, api.AllowRequest{Allow: part, Model: req.Model, Tags: req.Tags})
		if err != nil {
			if done > 0 {
				return api.ClaimCert{}, fmt.Errorf("%d of %d device IDs were allowed on %s before: %w", done, len(req.Allow), name, err)
			}
			return api.ClaimCert{}, err
		}
		out, done = cc, done+len(part)
	}
	return out, nil
}

func (c *Client) allow(ctx context.Context, name string, req api.AllowRequest) (api.ClaimCert, error) {
	var out api.ClaimCert
	err := c.do(ctx, http.MethodPost, "/v1/claim-certs/"+esc(name)+"/allow", req, &out)
	return out, err
}

// RevokeClaimCert revokes a claim certificate; its unused allow-list is
// dropped (POST /v1/claim-certs/{id}/revoke).
func (c *Client) RevokeClaimCert(ctx context.Context, name, reason string) (api.ClaimCert, error) {
	var out api.ClaimCert
	err := c.do(ctx, http.MethodPost, "/v1/claim-certs/"+esc(name)+"/revoke", api.ReasonRequest{Reason: reason}, &out)
	return out, err
}

// bodyMargin is room left in a request body for what JSON encoding
// adds around the allow-list.
const bodyMargin = 256

// allowParts splits ids into allow-lists that each fit in one request
// body beside fixed, the rest of the request (which must encode without
// an allow-list). There is always at least one part, perhaps empty.
func allowParts(fixed any, ids []string) ([][]string, error) {
	b, err := json.Marshal(fixed)
	if err != nil {
		return nil, err
	}
	budget := api.MaxBody - len(b) - len(`,"allow":[]`) - bodyMargin
	if budget <= 0 {
		return [][]string{ids}, nil // the server answers why it is too large
	}
	parts := [][]string{nil}
	size := 0
	for _, id := range ids {
		enc, err := json.Marshal(id)
		if err != nil {
			return nil, err
		}
		n := len(enc) + 1 // and a comma
		if n > budget {
			return nil, fmt.Errorf("device ID %.40q... is too long to send", id)
		}
		if size+n > budget {
			parts, size = append(parts, nil), 0
		}
		parts[len(parts)-1] = append(parts[len(parts)-1], id)
		size += n
	}
	return parts, nil
}

// CreateToken creates an API token (POST /v1/tokens); the answer's Secret
// is the only copy of the token. A ttl of 0 never expires; any other is
// rounded up to whole seconds (down could make a short lifetime 0, which
// never expires).
func (c *Client) CreateToken(ctx context.Context, role, user, note string, ttl time.Duration) (api.TokenCreated, error) {
	if ttl < 0 {
		return api.TokenCreated{}, fmt.Errorf("token lifetime %v is negative; use 0 for a token that does not expire", ttl)
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	var out api.TokenCreated
	err := c.do(ctx, http.MethodPost, "/v1/tokens", api.TokenRequest{Role: role, User: user, Note: note, TTLSeconds: secs}, &out)
	return out, err
}

// Tokens lists the API tokens, newest first (GET /v1/tokens).
func (c *Client) Tokens(ctx context.Context) ([]api.Token, error) {
	var out api.TokenList
	err := c.do(ctx, http.MethodGet, "/v1/tokens", nil, &out)
	return out.Tokens, err
}

// RevokeToken revokes the API token with ID id (POST
// /v1/tokens/{id}/revoke).
func (c *Client) RevokeToken(ctx context.Context, id string) (api.Token, error) {
	var out api.Token
	err := c.do(ctx, http.MethodPost, "/v1/tokens/"+esc(id)+"/revoke", nil, &out)
	return out, err
}

// Quarantined lists the quarantined devices (GET /v1/quarantine).
func (c *Client) Quarantined(ctx context.Context) ([]store.Quarantine, error) {
	var out api.QuarantineList
	err := c.do(ctx, http.MethodGet, "/v1/quarantine", nil, &out)
	return out.Quarantines, err
}

// Alerts returns one page of the anomaly monitor's alerts, newest first
// (GET /v1/alerts); the list's NextBefore is the Before of the next page.
func (c *Client) Alerts(ctx context.Context, f store.AlertFilter) (api.AlertList, error) {
	q := url.Values{}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.UTC().Format(time.RFC3339Nano))
	}
	if f.Detector != "" {
		q.Set("detector", f.Detector)
	}
	if f.Device != "" {
		q.Set("device", f.Device)
	}
	if f.Unacknowledged {
		q.Set("unacknowledged", "true")
	}
	if f.Before != "" {
		q.Set("before", f.Before)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(min(f.Limit, store.MaxListLimit)))
	}
	var out api.AlertList
	err := c.do(ctx, http.MethodGet, "/v1/alerts?"+q.Encode(), nil, &out)
	return out, err
}

// AcknowledgeAlert acknowledges an alert (POST /v1/alerts/{id}/ack); the
// server records the caller as who did.
func (c *Client) AcknowledgeAlert(ctx context.Context, id string) (store.Alert, error) {
	var out store.Alert
	err := c.do(ctx, http.MethodPost, "/v1/alerts/"+esc(id)+"/ack", nil, &out)
	return out, err
}
