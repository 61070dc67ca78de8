// Package api serves the operator and app HTTPS JSON API (docs/openapi.yaml)
// on the --api listener, under /v1/ (POST /v1/claims excepted: onboarding
// serves it).
//
// Every request carries an API token (internal/apitoken) as a bearer
// token. One route table decides, for each method and path, which roles
// may call it and which handler answers, and both the mux and the role
// check are built from it, so they cannot disagree; the OpenAPI test holds
// the document to the same table.
//
// Abuse is bounded before any work is done: an address that keeps failing
// to authenticate is throttled before its token is even looked at, each
// token has its own request rate, and every refusal looks the same
// whatever its cause (a missing, garbled, unknown, revoked or expired
// token gets one byte-identical 401; an app asking for a device it does
// not own gets the 404 of a device that does not exist).
package api

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/ratelimit"
	"github.com/warden-iot/warden/internal/store"
)

// TokenAuthenticator checks an API token (apitoken.Service implements
// it). It must answer apitoken.ErrUnauthorized, and nothing else, for a
// token that does not authenticate; any other error is a server failure.
type TokenAuthenticator interface {
	Authenticate(ctx context.Context, token string) (store.APIToken, error)
}

// Presence tells whether a device has a live connection (the broker
// knows).
type Presence interface {
	Connected(id string) bool
}

// IssuerLookup names the issuing CA that signed a certificate
// (*pki.Authority implements it).
type IssuerLookup interface {
	IssuerOf(cert *x509.Certificate) (pki.IssuerInfo, bool)
}

// Defaults for Options. A token's default rate is far above what a
// person or a dashboard needs and far below what would load the store;
// failed authentications are few for anyone who holds a token.
const (
	DefaultTokenRate      = 20    // requests per second per token
	DefaultTokenBurst     = 40    // requests at once per token
	DefaultFailureRate    = 1     // failed authentications per second per address
	DefaultFailureBurst   = 10    // failed authentications at once per address
	DefaultLimiterEntries = 10000 // addresses, and tokens, tracked at once
)

// MaxBody bounds every request body.
const MaxBody = 64 << 10

// Options configures an API. Tokens and Admin are required.
type Options struct {
	Tokens TokenAuthenticator
	Admin  admin.Service
	// Presence tells whether a device is connected; nil: the API says
	// it does not know (connected is null).
	Presence Presence
	// Commands relays POST /v1/devices/{id}/commands; nil: that route
	// answers 503.
	Commands Commander
	// Streams serves GET /v1/stream; nil: that route answers 503.
	Streams Streamer
	// Firmware adds a device's last firmware report to GET
	// /v1/devices/{id}; nil: null.
	Firmware FirmwareLookup
	// AuditLog is the audit log's path, for GET /v1/audit; "": 503.
	AuditLog string
	// Alerts serves the monitor's routes (alerts, acknowledgements,
	// releases); nil: 503.
	Alerts Alerter
	// Seen adds when a device was last seen to GET /v1/devices/{id}; nil:
	// null.
	Seen SeenLookup
	// Issuers names the issuing CA of each credential a device shows; nil:
	// issuer_fingerprint is null.
	Issuers IssuerLookup
	// Onboarding preregisters devices (POST /v1/enrollments) and names the
	// chain given with a new claim certificate; nil: those routes answer
	// 503.
	Onboarding Onboarder
	// Claims issues claim certificates and extends their allow-lists;
	// nil: 503.
	Claims ClaimIssuer
	// Enrollments lists and withdraws enrollments, and lists and revokes
	// claim certificates; nil: 503.
	Enrollments EnrollmentStore
	// TokenAdmin creates, lists and revokes API tokens; nil: 503.
	TokenAdmin TokenManager
	// Quarantines lists the quarantined devices; nil: 503.
	Quarantines QuarantineLister

	Audit      audit.Recorder        // default: audit.Discard
	Logger     *slog.Logger          // default: slog.Default()
	Registerer prometheus.Registerer // nil: metrics are not exported
	Now        func() time.Time      // default: time.Now

	// TokenRate and TokenBurst bound each token's requests (a token
	// bucket); <= 0: DefaultTokenRate, DefaultTokenBurst.
	TokenRate  float64
	TokenBurst int
	// FailureRate and FailureBurst bound failed authentications per remote
	// address (IPv6 per /64); an address over the limit is refused before
	// its token is checked. <= 0: DefaultFailureRate, DefaultFailureBurst.
	FailureRate  float64
	FailureBurst int
	// LimiterEntries caps how many addresses, and how many tokens, have a
	// bucket of their own; beyond it, the newcomers share one. <= 0:
	// DefaultLimiterEntries.
	LimiterEntries int
}

// Route is one operation of the API.
type Route struct {
	Method  string   // GET, POST, PUT, DELETE
	Pattern string   // the path, with {name} wildcards, as in docs/openapi.yaml
	Roles   []string // the token roles that may call it
	Summary string
}

// API serves the operator and app API. It is safe for concurrent use.
type API struct {
	tokens   TokenAuthenticator
	admin    admin.Service
	presence Presence
	issuers  IssuerLookup
	commands Commander
	streamer Streamer
	firmware FirmwareLookup
	auditLog string
	alerts   Alerter
	seen     SeenLookup

	onboarding  Onboarder
	claims      ClaimIssuer
	enrollments EnrollmentStore
	tokenAdmin  TokenManager
	quarantines QuarantineLister

	streams streamCounts
	audit   audit.Recorder
	log     *slog.Logger
	now     func() time.Time

	routes  []*route
	handler http.Handler
	local   http.Handler
	allowed map[string][]string // path pattern -> methods, for 405

	failures *ratelimit.Set // per remote address: failed authentications
	perToken *ratelimit.Set // per token ID: requests
	used     *tokenUses     // when each token was last audited as used, per address

	requests *prometheus.CounterVec
}

// New builds the API and its route table.
func New(o Options) (*API, error) {
	if o.Tokens == nil || o.Admin == nil {
		return nil, errors.New("api: a token authenticator and an admin service are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Audit == nil {
		o.Audit = audit.Discard{Logger: o.Logger}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.TokenRate <= 0 {
		o.TokenRate = DefaultTokenRate
	}
	if o.TokenBurst <= 0 {
		o.TokenBurst = DefaultTokenBurst
	}
	if o.FailureRate <= 0 {
		o.FailureRate = DefaultFailureRate
	}
	if o.FailureBurst <= 0 {
		o.FailureBurst = DefaultFailureBurst
	}
	if o.LimiterEntries <= 0 {
		o.LimiterEntries = DefaultLimiterEntries
	}
	a := &API{
		tokens: o.Tokens, admin: o.Admin, presence: o.Presence, issuers: o.Issuers, commands: o.Commands, streamer: o.Streams, firmware: o.Firmware, auditLog: o.AuditLog, alerts: o.Alerts, seen: o.Seen,
		onboarding: o.Onboarding, claims: o.Claims, enrollments: o.Enrollments, tokenAdmin: o.TokenAdmin, quarantines: o.Quarantines,
		audit: o.Audit, log: o.Logger, now: o.Now,
		failures: ratelimit.NewSet(o.FailureRate, o.FailureBurst, o.LimiterEntries),
		perToken: ratelimit.NewSet(o.TokenRate, o.TokenBurst, o.LimiterEntries),
		used:     newTokenUses(o.LimiterEntries),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_api_requests_total",
			Help: "HTTPS API requests, by route pattern (\"unmatched\" for unknown paths) and HTTP status code.",
		}, []string{"route", "code"}),
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(a.requests); err != nil {
			return nil, fmt.Errorf("api: register metrics: %w", err)
		}
	}
	a.routes = a.table()
	mux, local := http.NewServeMux(), http.NewServeMux()
	a.allowed = map[string][]string{}
	for _, rt := range a.routes {
		if !slices.Contains(rt.Roles, apitoken.RoleAdmin) {
			// Admin may do everything; a table that says otherwise is a bug.
			return nil, fmt.Errorf("api: route %s %s does not allow the admin role", rt.Method, rt.Pattern)
		}
		mux.Handle(rt.Method+" "+rt.Pattern, a.wrap(rt, false))
		local.Handle(rt.Method+" "+rt.Pattern, a.wrap(rt, true))
		a.allowed[rt.Pattern] = append(a.allowed[rt.Pattern], rt.Method)
	}
	mux.Handle("/", a.wrap(nil, false))
	local.Handle("/", a.wrap(nil, true))
	a.handler, a.local = mux, local
	return a, nil
}

// Handler serves the API. Mount it for every path under /v1/ but
// /v1/claims.
func (a *API) Handler() http.Handler { return a.handler }

// LocalTokenID is the token ID of every request on LocalHandler: the
// operator, as an admin.
const LocalTokenID = "local"

// localToken is the principal of every request on LocalHandler.
func localToken() store.APIToken {
	return store.APIToken{ID: LocalTokenID, Role: apitoken.RoleAdmin, User: "operator"}
}

// LocalHandler serves the same routes, with the same checks and answers,
// to the admin socket (mode 0600 in the data directory): whoever can open
// it may do what an admin token may, without a token, and is audited as
// "operator". It is how the CLI acts on a running server.
func (a *API) LocalHandler() http.Handler { return a.local }

// Routes returns the route table, in the order it was declared.
func (a *API) Routes() []Route {
	out := make([]Route, len(a.routes))
	for i, rt := range a.routes {
		out[i] = rt.Route
		out[i].Roles = slices.Clone(rt.Roles)
	}
	return out
}

// Role sets of the route table.
var (
	// Read-only fleet data: not for apps, which see only their devices.
	rolesRead = []string{apitoken.RoleAdmin, apitoken.RoleOperator, apitoken.RoleViewer}
	// Device reads: apps too, limited to the devices their user owns.
	rolesDeviceRead = []string{apitoken.RoleAdmin, apitoken.RoleOperator, apitoken.RoleViewer, apitoken.RoleApp}
	// Changes to devices (enrollments too) and rollouts.
	rolesOperate = []string{apitoken.RoleAdmin, apitoken.RoleOperator}
	// The audit log names every device and token: administrators only.
	rolesAudit = []string{apitoken.RoleAdmin}
	// Commands: operators, and apps to their user's devices.
	rolesCommand = []string{apitoken.RoleAdmin, apitoken.RoleOperator, apitoken.RoleApp}
	// Identities and trust: services, release keys, the CA, claim
	// certificates, tokens.
	rolesAdmin = []string{apitoken.RoleAdmin}
	// Anyone with a valid token.
	rolesAny = []string{apitoken.RoleAdmin, apitoken.RoleOperator, apitoken.RoleViewer, apitoken.RoleApp}
)

// scope says what a route's {id} names, for app tokens: an app may only
// reach a device its user owns.
type scope int

const (
	scopeNone   scope = iota
	scopeDevice       // {id} is a device ID
)

// route is a Route with what serves it.
type route struct {
	Route
	scope scope
	// resource names what {id} is in not-found answers ("device"), so that
	// every not-found for a resource reads the same.
	resource string
	serve    func(c *call) (any, error)
}

// table is the API. Later phases (commands, event streams, alerts, audit)
// add rows here; a streaming route will need its own kind of serve
// function beside the JSON one.
func (a *API) table() []*route {
	r := func(method, pattern string, roles []string, summary string, serve func(*call) (any, error)) *route {
		return &route{Route: Route{Method: method, Pattern: pattern, Roles: roles, Summary: summary}, serve: serve}
	}
	device := func(rt *route) *route { rt.scope, rt.resource = scopeDevice, "device"; return rt }
	rollout := func(rt *route) *route { rt.resource = "rollout"; return rt }
	alert := func(rt *route) *route { rt.resource = "alert"; return rt }
	service := func(rt *route) *route { rt.resource = "service"; return rt }
	key := func(rt *route) *route { rt.resource = "release key"; return rt }
	issuer := func(rt *route) *route { rt.resource = "issuing CA"; return rt }
	enrollment := func(rt *route) *route { rt.resource = "enrollment"; return rt }
	claim := func(rt *route) *route { rt.resource = "claim certificate"; return rt }
	return []*route{
		r(http.MethodGet, "/v1/whoami", rolesAny, "The calling token's ID, role and user", a.whoami),

		r(http.MethodGet, "/v1/devices", rolesDeviceRead, "List devices (apps: their user's only), filtered and paged", a.listDevices),
		r(http.MethodPost, "/v1/devices", rolesOperate, "Register a device: issue its certificate from a CSR, or register one issued by POST /v1/device-certificates", a.addDevice),
		r(http.MethodPost, "/v1/device-certificates", rolesOperate, "Issue a certificate for a device not registered yet (provisioning's first step)", a.issueDeviceCert),
		device(r(http.MethodGet, "/v1/devices/{id}", rolesDeviceRead, "Show a device: state, owner, connection, certificates", a.showDevice)),
		device(r(http.MethodPost, "/v1/devices/{id}/disable", rolesOperate, "Disable a device (cuts its connections now)", a.disableDevice)),
		device(r(http.MethodPost, "/v1/devices/{id}/enable", rolesOperate, "Enable a disabled device", a.enableDevice)),
		device(r(http.MethodPost, "/v1/devices/{id}/revoke", rolesOperate, "Revoke a device for good (CRL, cuts its connections now)", a.revokeDevice)),
		device(r(http.MethodPut, "/v1/devices/{id}/tags", rolesOperate, "Replace a device's tags", a.setTags)),
		device(r(http.MethodPost, "/v1/devices/{id}/release", rolesOperate, "Lift a device's quarantine", a.releaseDevice)),
		device(r(http.MethodPost, "/v1/devices/{id}/commands", rolesCommand, "Send a command to a device and wait for its answer", a.sendCommand)),
		device(r(http.MethodPost, "/v1/devices/{id}/envelope", rolesOperate, "Give a device an envelope key (the secret is answered once)", a.enableEnvelope)),
		device(r(http.MethodPost, "/v1/devices/{id}/rekey", rolesOperate, "Move an envelope device to a new key epoch", a.rekeyDevice)),

		r(http.MethodGet, "/v1/enrollments", rolesOperate, "List preregistered devices and claim-certificate allow-lists, paged", a.listEnrollments),
		r(http.MethodPost, "/v1/enrollments", rolesOperate, "Preregister a device that enrolls itself, or re-arm one for recovery (its secret file is answered once)", a.preregister),
		enrollment(r(http.MethodDelete, "/v1/enrollments/{id}", rolesOperate, "Withdraw an enrollment the device has not used", a.unregister)),
		r(http.MethodGet, "/v1/claim-certs", rolesAdmin, "List fleet claim certificates", a.listClaimCerts),
		r(http.MethodPost, "/v1/claim-certs", rolesAdmin, "Issue a claim certificate from a CSR, with an allow-list of device IDs", a.createClaimCert),
		claim(r(http.MethodPost, "/v1/claim-certs/{id}/allow", rolesAdmin, "Add device IDs to a claim certificate's allow-list", a.allowClaim)),
		claim(r(http.MethodPost, "/v1/claim-certs/{id}/revoke", rolesAdmin, "Revoke a claim certificate; its unused allow-list is dropped", a.revokeClaimCert)),

		r(http.MethodGet, "/v1/services", rolesRead, "List back-end service identities", a.listServices),
		r(http.MethodPost, "/v1/services", rolesAdmin, "Register a back-end service and issue its certificate from a CSR", a.addService),
		service(r(http.MethodPost, "/v1/services/{id}/revoke", rolesAdmin, "Revoke a service for good (cuts its connections now)", a.revokeService)),

		r(http.MethodGet, "/v1/rollouts", rolesRead, "List firmware rollouts", a.listRollouts),
		rollout(r(http.MethodGet, "/v1/rollouts/{id}", rolesRead, "A rollout's progress per stage", a.rolloutStatus)),
		rollout(r(http.MethodPost, "/v1/rollouts/{id}/pause", rolesOperate, "Pause a running rollout", a.pauseRollout)),
		rollout(r(http.MethodPost, "/v1/rollouts/{id}/resume", rolesOperate, "Resume a paused rollout", a.resumeRollout)),
		rollout(r(http.MethodPost, "/v1/rollouts/{id}/abort", rolesOperate, "Abort a rollout for good", a.abortRollout)),
		r(http.MethodPost, "/v1/rollouts", rolesOperate, "Create a staged rollout of a stored image", a.createRollout),
		rollout(r(http.MethodGet, "/v1/rollouts/{id}/devices", rolesRead, "A rollout's devices and their states, paged", a.rolloutDevices)),
		r(http.MethodGet, "/v1/firmware/images", rolesRead, "List stored firmware images", a.listImages),
		r(http.MethodPost, "/v1/firmware/images", rolesOperate, "Upload a signed image with its release statement (verified before it is stored)", a.uploadImage),
		r(http.MethodGet, "/v1/firmware/keys", rolesRead, "List release keys", a.listKeys),
		r(http.MethodPost, "/v1/firmware/keys", rolesAdmin, "Trust a release public key", a.trustKey),
		key(r(http.MethodPost, "/v1/firmware/keys/{id}/revoke", rolesAdmin, "Stop trusting a release key, for good", a.untrustKey)),

		r(http.MethodGet, "/v1/ca", rolesRead, "Issuing CAs and the latest CA rotation", a.caStatus),
		r(http.MethodPost, "/v1/ca/rotate", rolesAdmin, "Start a CA rotation: new issuing CA, every device re-issued and delivered", a.rotateCA),
		issuer(r(http.MethodPost, "/v1/ca/issuers/{id}/retire", rolesAdmin, "Stop trusting an old issuing CA now", a.retireIssuer)),
		issuer(r(http.MethodPost, "/v1/ca/issuers/{id}/revoke", rolesAdmin, "Revoke an issuing CA for good, cutting its devices", a.revokeIssuer)),

		r(http.MethodGet, "/v1/alerts", rolesRead, "The anomaly monitor's alerts, newest first", a.listAlerts),
		alert(r(http.MethodPost, "/v1/alerts/{id}/ack", rolesOperate, "Acknowledge an alert", a.ackAlert)),
		r(http.MethodGet, "/v1/quarantine", rolesRead, "The quarantined devices", a.listQuarantines),
		// The token ID is checked by the handler before it is echoed or
		// audited (it may be a whole token pasted by mistake), so this
		// route names no resource.
		r(http.MethodGet, "/v1/tokens", rolesAdmin, "List API tokens (never their secrets)", a.listTokens),
		r(http.MethodPost, "/v1/tokens", rolesAdmin, "Create an API token (answered once)", a.createToken),
		r(http.MethodPost, "/v1/tokens/{id}/revoke", rolesAdmin, "Revoke an API token at once", a.revokeToken),
		r(http.MethodGet, "/v1/audit", rolesAudit, "Read the hash-chained audit log, paged and filtered", a.readAudit),
		r(http.MethodGet, "/v1/stream", rolesDeviceRead, "Server-Sent Events: device telemetry and connections (apps: their user's devices)", a.openStream),
	}
}
