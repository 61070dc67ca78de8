package api

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/onboard"
	"github.com/warden-iot/warden/internal/store"
)

// The routes here are what `warden device preregister|unregister|
// enrollments`, `warden claim-cert ...`, `warden token ...` and `warden
// alerts quarantined` do, so that the CLI acts through the running server
// like every other client. Secrets (enrollment secrets, API tokens) are
// answered once and never logged or audited.

// Onboarder preregisters devices and names the chain an enrolled
// certificate comes with; *onboard.Service implements it.
type Onboarder interface {
	Preregister(ctx context.Context, ps []onboard.Preregistration) ([]enrollproto.SecretFile, error)
	Chain() []*x509.Certificate
}

// ClaimIssuer issues fleet claim certificates and extends their
// allow-lists; *registry.Registry implements it.
type ClaimIssuer interface {
	AddClaimCert(ctx context.Context, name string, csrDER []byte, lifetime time.Duration, allow []store.Enrollment) (store.ClaimCert, *x509.Certificate, error)
	AllowClaim(ctx context.Context, name string, allow []store.Enrollment) error
}

// EnrollmentStore reads and withdraws enrollments and claim certificates;
// store.Store implements it.
type EnrollmentStore interface {
	ListEnrollments(ctx context.Context, f store.EnrollmentFilter) ([]store.Enrollment, error)
	DeleteEnrollment(ctx context.Context, deviceID string) error
	GetClaimCert(ctx context.Context, name string) (store.ClaimCert, error)
	ListClaimCerts(ctx context.Context) ([]store.ClaimCert, error)
	RevokeClaimCert(ctx context.Context, name, reason string, at time.Time) (store.ClaimCert, error)
}

// TokenManager creates, lists and revokes API tokens; *apitoken.Service
// implements it.
type TokenManager interface {
	Create(ctx context.Context, role, user, note string, ttl time.Duration) (string, store.APIToken, error)
	List(ctx context.Context) ([]store.APIToken, error)
	Revoke(ctx context.Context, id string) (store.APIToken, error)
}

// QuarantineLister lists the quarantined devices; *monitor.Monitor
// implements it.
type QuarantineLister interface {
	Quarantined(ctx context.Context) ([]store.Quarantine, error)
}

// EnrollmentRequest is the body of POST /v1/enrollments.
type EnrollmentRequest struct {
	DeviceID string            `json:"device_id"`
	Model    string            `json:"model,omitempty"`
	Tags     map[string]string `json:"tags,omitempty"`
	// Recovery re-arms a registered device that can no longer
	// authenticate instead of recording a new one; Model and Tags must
	// then be empty (the device keeps its own).
	Recovery bool `json:"recovery,omitempty"`
}

// Enrollment is a preregistration or allow-list entry as the API shows
// it; its sealed secret never leaves the server.
type Enrollment struct {
	DeviceID  string            `json:"device_id"`
	Method    string            `json:"method"` // secret or claim
	Claim     string            `json:"claim"`  // the claim certificate (method claim)
	Model     string            `json:"model"`
	Tags      map[string]string `json:"tags"`
	Recovery  bool              `json:"recovery"`
	CreatedAt time.Time         `json:"created_at"`
	UsedAt    *time.Time        `json:"used_at"` // null until the device enrolled
	Serial    string            `json:"serial"`  // the certificate it enrolled with
}

// EnrollmentList is the answer of GET /v1/enrollments.
type EnrollmentList struct {
	Enrollments []Enrollment `json:"enrollments"`
	NextAfter   string       `json:"next_after"` // "" on the last page
}

// ClaimCert is a fleet claim certificate as the API shows it.
type ClaimCert struct {
	Name        string     `json:"name"`
	Serial      string     `json:"serial"`
	Fingerprint string     `json:"fingerprint"`
	State       string     `json:"state"` // active, expired or revoked
	NotAfter    time.Time  `json:"not_after"`
	CreatedAt   time.Time  `json:"created_at"`
	RevokedAt   *time.Time `json:"revoked_at"` // null unless revoked
	Reason      string     `json:"reason"`
	// Unused counts the device IDs of its allow-list that have not
	// enrolled yet: what a stolen copy could still enroll.
	Unused int `json:"unused"`
}

// ClaimCertList is the answer of GET /v1/claim-certs.
type ClaimCertList struct {
	ClaimCerts []ClaimCert `json:"claim_certs"`
}

// ClaimCertRequest is the body of POST /v1/claim-certs.
type ClaimCertRequest struct {
	Name string `json:"name"`
	// CSR is the claim key's PKCS #10 request, DER (base64 in JSON); its
	// common name must be Name.
	CSR []byte `json:"csr"`
	// LifetimeSeconds bounds the certificate's validity; 0: one year.
	LifetimeSeconds int64 `json:"lifetime_seconds,omitempty"`
	// Allow lists the device IDs it may enroll, each once; more can be
	// added with POST /v1/claim-certs/{id}/allow.
	Allow []string          `json:"allow,omitempty"`
	Model string            `json:"model,omitempty"` // given to the devices it enrolls
	Tags  map[string]string `json:"tags,omitempty"`  // idem
}

// ClaimCertCreated is the answer of POST /v1/claim-certs.
type ClaimCertCreated struct {
	ClaimCert ClaimCert `json:"claim_cert"`
	// ChainPEM is the certificate, then the issuing CA that signed it.
	ChainPEM string `json:"chain_pem"`
}

// AllowRequest is the body of POST /v1/claim-certs/{id}/allow.
type AllowRequest struct {
	Allow []string          `json:"allow"`
	Model string            `json:"model,omitempty"`
	Tags  map[string]string `json:"tags,omitempty"`
}

// Token is an API token's record; never its secret or its hash.
type Token struct {
	ID         string     `json:"id"`
	Role       string     `json:"role"`
	User       string     `json:"user"`
	Note       string     `json:"note"`
	State      string     `json:"state"` // active, expired or revoked
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at"`   // null: never
	LastUsedAt *time.Time `json:"last_used_at"` // null: not used yet
	RevokedAt  *time.Time `json:"revoked_at"`   // null unless revoked
}

// TokenList is the answer of GET /v1/tokens, newest first.
type TokenList struct {
	Tokens []Token `json:"tokens"`
}

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	Role string `json:"role"`
	User string `json:"user"`
	Note string `json:"note,omitempty"`
	// TTLSeconds is the token's lifetime; 0: it does not expire.
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
}

// TokenCreated is the answer of POST /v1/tokens: the token, the only
// time it exists in the clear, and its record.
type TokenCreated struct {
	Secret string `json:"token"`
	Token
}

// QuarantineList is the answer of GET /v1/quarantine.
type QuarantineList struct {
	Quarantines []store.Quarantine `json:"quarantines"` // ordered by device ID
}

// maxSeconds is the longest lifetime a request may give: more would
// overflow a time.Duration.
const maxSeconds = math.MaxInt64 / int64(time.Second)

func unavailable(what string) error {
	return &httpError{http.StatusServiceUnavailable, codeInternal, what + " is not available on this server"}
}

// onboardingError maps what the onboarding services refuse with and
// classify does not know: a revoked subject (final, hence a conflict) and
// a token request that can never be accepted.
func onboardingError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrRevoked):
		return &httpError{http.StatusConflict, codeConflict, err.Error()}
	case errors.Is(err, apitoken.ErrInvalid):
		return &httpError{http.StatusBadRequest, codeInvalid, err.Error()}
	}
	return err
}

// record audits the onboarding action itself, under the name the CLI has
// always recorded it with, besides the api.request that c.done records.
func (c *call) record(action, subject, reason string, details map[string]string) {
	c.a.audit.Record(c.ctx(), audit.Event{Action: action, Outcome: "done", Actor: c.actor(), Subject: subject,
		Reason: reason, Remote: c.r.RemoteAddr, Details: details})
}

// writeBody answers status with body as it is, for an answer whose bytes
// matter (a file the caller stores).
func (c *call) writeBody(status int, body []byte) {
	c.w.Header().Set("Content-Type", "application/json")
	c.w.WriteHeader(status)
	_, _ = c.w.Write(body)
}

func toEnrollment(e store.Enrollment) Enrollment {
	tags := e.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	out := Enrollment{DeviceID: e.DeviceID, Method: e.Method, Claim: e.Claim, Model: e.Model, Tags: tags,
		Recovery: e.Recovery, CreatedAt: e.Created.UTC(), Serial: e.Serial}
	if e.Used() {
		t := e.UsedAt.UTC()
		out.UsedAt = &t
	}
	return out
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func toToken(t store.APIToken, now time.Time) Token {
	state := "active"
	switch {
	case t.Revoked():
		state = "revoked"
	case !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt):
		state = "expired"
	}
	return Token{ID: t.ID, Role: t.Role, User: t.User, Note: t.Note, State: state, CreatedAt: t.CreatedAt.UTC(),
		ExpiresAt: optionalTime(t.ExpiresAt), LastUsedAt: optionalTime(t.LastUsedAt), RevokedAt: optionalTime(t.RevokedAt)}
}

// preregister serves POST /v1/enrollments. The answer is the enrollment
// secret file byte for byte as `warden device preregister` writes it, so a
// client may store the body as it is; the secret exists nowhere else in
// the clear.
func (a *API) preregister(c *call) (any, error) {
	if a.onboarding == nil {
		return nil, unavailable("preregistration")
	}
	var req EnrollmentRequest
	if err := readJSON(c.r, &req, false); err != nil {
		return nil, err
	}
	if err := identity.ValidateDeviceID(req.DeviceID); err != nil {
		return nil, invalidf("%v", err)
	}
	if req.Recovery && (req.Model != "" || len(req.Tags) > 0) {
		return nil, invalidf("a recovery enrollment keeps the model and tags device %s has; give neither", req.DeviceID)
	}
	files, err := a.onboarding.Preregister(c.ctx(), []onboard.Preregistration{{DeviceID: req.DeviceID, Model: req.Model, Tags: req.Tags, Recovery: req.Recovery}})
	var body []byte
	if err == nil {
		if len(files) != 1 {
			err = fmt.Errorf("preregister %s: %d secret files for one device", req.DeviceID, len(files))
		} else {
			body, err = files[0].Marshal()
		}
	}
	for _, f := range files {
		clear(f.Secret)
	}
	c.done("device:"+req.DeviceID, err, map[string]string{"model": req.Model, "recovery": strconv.FormatBool(req.Recovery)})
	if err != nil {
		return nil, onboardingError(err)
	}
	c.writeBody(http.StatusCreated, body)
	clear(body)
	return streamed{}, nil
}

// parseEnrollmentQuery reads the filter and page of GET /v1/enrollments:
// each parameter at most once, values in range, nothing unknown.
func parseEnrollmentQuery(q url.Values) (store.EnrollmentFilter, error) {
	if err := onlyQuery(q, "claim", "unused", "after", "limit"); err != nil {
		return store.EnrollmentFilter{}, err
	}
	f := store.EnrollmentFilter{Claim: q.Get("claim"), After: q.Get("after"), Limit: store.DefaultListLimit}
	if f.Claim != "" {
		if err := identity.ValidateClaimName(f.Claim); err != nil {
			return f, invalidf("%v", err)
		}
	}
	if s := q.Get("unused"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return f, invalidf("unused %q is not true or false", s)
		}
		f.Unused = b
	}
	if f.After != "" {
		if err := identity.ValidateDeviceID(f.After); err != nil {
			return f, invalidf("after %q is not a device ID (pass the next_after of the previous page)", f.After)
		}
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > store.MaxListLimit {
			return f, invalidf("limit %q is not a number from 1 to %d", s, store.MaxListLimit)
		}
		f.Limit = n
	}
	return f, nil
}

// listEnrollments serves GET /v1/enrollments.
func (a *API) listEnrollments(c *call) (any, error) {
	if a.enrollments == nil {
		return nil, unavailable("the enrollment list")
	}
	f, err := parseEnrollmentQuery(c.r.URL.Query())
	if err != nil {
		return nil, err
	}
	page := f.Limit
	// One row more than asked tells whether there is a next page.
	if f.Limit < store.MaxListLimit {
		f.Limit++
	}
	es, err := a.enrollments.ListEnrollments(c.ctx(), f)
	if err != nil {
		return nil, err
	}
	out := EnrollmentList{Enrollments: make([]Enrollment, 0, min(len(es), page))}
	for i, e := range es {
		if i == page {
			break
		}
		out.Enrollments = append(out.Enrollments, toEnrollment(e))
	}
	if len(es) > page || (len(es) == page && page == store.MaxListLimit) {
		out.NextAfter = out.Enrollments[len(out.Enrollments)-1].DeviceID
	}
	return out, nil
}

// unregister serves DELETE /v1/enrollments/{id}: 204 when withdrawn.
func (a *API) unregister(c *call) (any, error) {
	if a.enrollments == nil {
		return nil, unavailable("withdrawing enrollments")
	}
	if err := onlyQuery(c.r.URL.Query()); err != nil {
		return nil, err
	}
	id := c.id()
	if err := identity.ValidateDeviceID(id); err != nil {
		return nil, invalidf("%v", err)
	}
	err := a.enrollments.DeleteEnrollment(c.ctx(), id)
	if err == nil {
		c.record("device.unregister", "device:"+id, "", nil)
	}
	c.done("device:"+id, err, nil)
	if err != nil {
		return nil, err
	}
	c.w.WriteHeader(http.StatusNoContent)
	return streamed{}, nil
}

// claimCertOf shows a claim certificate, without its unused count.
func (a *API) claimCertOf(cc store.ClaimCert) ClaimCert {
	out := ClaimCert{Name: cc.Name, Serial: cc.Serial, Fingerprint: cc.Fingerprint, State: "active",
		NotAfter: cc.NotAfter.UTC(), CreatedAt: cc.CreatedAt.UTC(), RevokedAt: optionalTime(cc.RevokedAt), Reason: cc.Reason}
	switch {
	case cc.Revoked():
		out.State = "revoked"
	case !a.now().Before(cc.NotAfter):
		out.State = "expired"
	}
	return out
}

// toClaimCert shows a claim certificate with its unused allow-list.
func (a *API) toClaimCert(ctx context.Context, cc store.ClaimCert) (ClaimCert, error) {
	out := a.claimCertOf(cc)
	if cc.Revoked() {
		return out, nil // revoking dropped its unused allow-list
	}
	f := store.EnrollmentFilter{Claim: cc.Name, Unused: true, Limit: store.MaxListLimit}
	for {
		page, err := a.enrollments.ListEnrollments(ctx, f)
		if err != nil {
			return ClaimCert{}, fmt.Errorf("count the unused allow-list of claim certificate %q: %w", cc.Name, err)
		}
		out.Unused += len(page)
		if len(page) < f.Limit {
			return out, nil
		}
		f.After = page[len(page)-1].DeviceID
	}
}

// claimAllowList turns a request's device IDs into the allow-list entries
// the registry takes, checking each ID.
func claimAllowList(ids []string, model string, tags map[string]string) ([]store.Enrollment, error) {
	out := make([]store.Enrollment, len(ids))
	for i, id := range ids {
		if err := identity.ValidateDeviceID(id); err != nil {
			return nil, invalidf("allow[%d]: %v", i, err)
		}
		out[i] = store.Enrollment{DeviceID: id, Model: model, Tags: tags}
	}
	return out, nil
}

// listClaimCerts serves GET /v1/claim-certs.
func (a *API) listClaimCerts(c *call) (any, error) {
	if a.enrollments == nil {
		return nil, unavailable("the claim certificate list")
	}
	if err := onlyQuery(c.r.URL.Query()); err != nil {
		return nil, err
	}
	cs, err := a.enrollments.ListClaimCerts(c.ctx())
	if err != nil {
		return nil, err
	}
	out := ClaimCertList{ClaimCerts: make([]ClaimCert, 0, len(cs))}
	for _, cc := range cs {
		v, err := a.toClaimCert(c.ctx(), cc)
		if err != nil {
			return nil, err
		}
		out.ClaimCerts = append(out.ClaimCerts, v)
	}
	return out, nil
}

// createClaimCert serves POST /v1/claim-certs: the certificate is issued
// for the caller's CSR, so its key never reaches the server.
func (a *API) createClaimCert(c *call) (any, error) {
	if a.claims == nil || a.enrollments == nil || a.onboarding == nil {
		return nil, unavailable("issuing claim certificates")
	}
	var req ClaimCertRequest
	if err := readJSON(c.r, &req, false); err != nil {
		return nil, err
	}
	if err := identity.ValidateClaimName(req.Name); err != nil {
		return nil, invalidf("%v", err)
	}
	if req.LifetimeSeconds < 0 || req.LifetimeSeconds > maxSeconds {
		return nil, invalidf("lifetime_seconds must be 0 (one year) to %d", maxSeconds)
	}
	allow, err := claimAllowList(req.Allow, req.Model, req.Tags)
	if err != nil {
		return nil, err
	}
	cc, cert, err := a.claims.AddClaimCert(c.ctx(), req.Name, req.CSR, time.Duration(req.LifetimeSeconds)*time.Second, allow)
	details := map[string]string{"allowed": strconv.Itoa(len(allow))}
	if err == nil {
		details["serial"] = cc.Serial
		c.record("claim-cert.create", "claim:"+req.Name, "", details)
	}
	c.done("claim:"+req.Name, err, details)
	if err != nil {
		return nil, onboardingError(err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	for _, ca := range a.onboarding.Chain() {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})...)
	}
	// Nothing has enrolled with a certificate this new: its whole
	// allow-list is unused, and no read can fail the answer of a change
	// that was made.
	v := a.claimCertOf(cc)
	v.Unused = len(allow)
	return created{ClaimCertCreated{ClaimCert: v, ChainPEM: string(chain)}}, nil
}

// allowClaim serves POST /v1/claim-certs/{id}/allow.
func (a *API) allowClaim(c *call) (any, error) {
	if a.claims == nil || a.enrollments == nil {
		return nil, unavailable("claim certificate allow-lists")
	}
	var req AllowRequest
	if err := readJSON(c.r, &req, false); err != nil {
		return nil, err
	}
	name := c.id()
	if err := identity.ValidateClaimName(name); err != nil {
		return nil, invalidf("%v", err)
	}
	if len(req.Allow) == 0 {
		return nil, invalidf("allow lists no device IDs")
	}
	allow, err := claimAllowList(req.Allow, req.Model, req.Tags)
	if err != nil {
		return nil, err
	}
	err = a.claims.AllowClaim(c.ctx(), name, allow)
	details := map[string]string{"allowed": strconv.Itoa(len(allow))}
	if err == nil {
		c.record("claim-cert.allow", "claim:"+name, "", details)
	}
	c.done("claim:"+name, err, details)
	if err != nil {
		return nil, onboardingError(err)
	}
	cc, err := a.enrollments.GetClaimCert(c.ctx(), name)
	if err != nil {
		return nil, err
	}
	return a.toClaimCert(c.ctx(), cc)
}

// revokeClaimCert serves POST /v1/claim-certs/{id}/revoke.
func (a *API) revokeClaimCert(c *call) (any, error) {
	if a.enrollments == nil {
		return nil, unavailable("revoking claim certificates")
	}
	why, err := reason(c)
	if err != nil {
		return nil, err
	}
	name := c.id()
	if err := identity.ValidateClaimName(name); err != nil {
		return nil, invalidf("%v", err)
	}
	cc, err := a.enrollments.RevokeClaimCert(c.ctx(), name, why, a.now())
	if err == nil {
		c.record("claim-cert.revoke", "claim:"+name, why, nil)
	}
	c.done("claim:"+name, err, map[string]string{"reason": why})
	if err != nil {
		return nil, err
	}
	return a.toClaimCert(c.ctx(), cc)
}

// listTokens serves GET /v1/tokens.
func (a *API) listTokens(c *call) (any, error) {
	if a.tokenAdmin == nil {
		return nil, unavailable("token management")
	}
	if err := onlyQuery(c.r.URL.Query()); err != nil {
		return nil, err
	}
	ts, err := a.tokenAdmin.List(c.ctx())
	if err != nil {
		return nil, err
	}
	now := a.now()
	out := TokenList{Tokens: make([]Token, 0, len(ts))}
	for _, t := range ts {
		out.Tokens = append(out.Tokens, toToken(t, now))
	}
	return out, nil
}

// createToken serves POST /v1/tokens. The token is in the answer and
// nowhere else: not in the log, not in the audit log.
func (a *API) createToken(c *call) (any, error) {
	if a.tokenAdmin == nil {
		return nil, unavailable("token management")
	}
	var req TokenRequest
	if err := readJSON(c.r, &req, false); err != nil {
		return nil, err
	}
	if req.TTLSeconds < 0 || req.TTLSeconds > maxSeconds {
		return nil, invalidf("ttl_seconds must be 0 (no expiry) to %d", maxSeconds)
	}
	secret, rec, err := a.tokenAdmin.Create(c.ctx(), req.Role, req.User, req.Note, time.Duration(req.TTLSeconds)*time.Second)
	subject := "token:"
	if err == nil {
		subject += rec.ID
	}
	c.done(subject, err, map[string]string{"token_role": req.Role, "token_user": req.User})
	if err != nil {
		return nil, onboardingError(err)
	}
	return created{TokenCreated{Secret: secret, Token: toToken(rec, a.now())}}, nil
}

// tokenIDLen is the length of a token ID: 16 lowercase hex digits.
const tokenIDLen = 16

// validTokenID reports whether s has the shape of a token ID. Anything
// else is refused before it is echoed or audited: it may be a whole token
// pasted by mistake.
func validTokenID(s string) bool {
	if len(s) != tokenIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && (s[i] < 'a' || s[i] > 'f') {
			return false
		}
	}
	return true
}

// revokeToken serves POST /v1/tokens/{id}/revoke.
func (a *API) revokeToken(c *call) (any, error) {
	if a.tokenAdmin == nil {
		return nil, unavailable("token management")
	}
	if err := readJSON(c.r, &struct{}{}, true); err != nil {
		return nil, err
	}
	id := c.id()
	if !validTokenID(id) {
		return nil, invalidf("a token ID is %d lowercase hex digits (the part after %q), as GET /v1/tokens shows", tokenIDLen, apitoken.Prefix)
	}
	t, err := a.tokenAdmin.Revoke(c.ctx(), id)
	c.done("token:"+id, err, nil)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, &httpError{http.StatusNotFound, codeNotFound, "token " + id + " not found"}
	case err != nil:
		return nil, onboardingError(err)
	}
	return toToken(t, a.now()), nil
}

// listQuarantines serves GET /v1/quarantine.
func (a *API) listQuarantines(c *call) (any, error) {
	if a.quarantines == nil {
		return nil, unavailable("the anomaly monitor")
	}
	if err := onlyQuery(c.r.URL.Query()); err != nil {
		return nil, err
	}
	qs, err := a.quarantines.Quarantined(c.ctx())
	if err != nil {
		return nil, err
	}
	if qs == nil {
		qs = []store.Quarantine{}
	}
	return QuarantineList{Quarantines: qs}, nil
}
