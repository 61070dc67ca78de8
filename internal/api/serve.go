package api

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warden-iot/warden/internal/apierror"
	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/ratelimit"
	"github.com/warden-iot/warden/internal/store"
)

// call is one authenticated request on its way to a route's handler.
type call struct {
	a     *API
	w     http.ResponseWriter
	r     *http.Request
	rt    *route
	tok   store.APIToken
	label string // the route pattern, for logs, metrics and audit
	local bool   // on the admin socket (LocalHandler)
}

// ctx is the request's context.
func (c *call) ctx() context.Context { return c.r.Context() }

// id is the route's {id}.
func (c *call) id() string { return c.r.PathValue("id") }

// actor is who the audit log says acted.
func (c *call) actor() string {
	if c.local {
		return "operator"
	}
	return "token:" + c.tok.ID
}

// statusWriter remembers the status for the request metric.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// wrap returns the handler of rt (nil: the catch-all for paths and methods
// the table does not have). Every request goes through the same gate, in
// this order: the address throttle, authentication, the token's rate, the
// app's device scope, the role.
func (a *API) wrap(rt *route, local bool) http.Handler {
	label := "unmatched"
	if rt != nil {
		label = rt.Method + " " + rt.Pattern
	}
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: rw}
		defer func() { a.requests.WithLabelValues(label, strconv.Itoa(sw.status)).Inc() }()
		h := sw.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		c := &call{a: a, w: sw, r: r, rt: rt, label: label, local: local}
		if local {
			a.serveLocal(c)
			return
		}
		now := a.now()
		addr := ratelimit.RemoteKey(r.RemoteAddr)

		if wait := a.failures.Wait(addr, now); wait > 0 {
			c.refuse(http.StatusTooManyRequests, wait, "too many failed authentications from this address", "address-throttled")
			return
		}
		raw := apitoken.FromRequest(r)
		tok, err := a.tokens.Authenticate(r.Context(), raw)
		if err != nil {
			if !errors.Is(err, apitoken.ErrUnauthorized) {
				c.fail(err)
				return
			}
			a.failures.Take(addr, now)
			c.unauthorized(tokenHint(raw))
			return
		}
		c.tok = tok
		a.used.note(c, addr, now)
		if wait := a.perToken.Take(tok.ID, now); wait > 0 {
			c.refuse(http.StatusTooManyRequests, wait, "too many requests with this token", "token-throttled")
			return
		}
		if rt == nil {
			c.noRoute()
			return
		}
		// An app's view of the fleet is its user's devices: any other
		// device, existing or not, is not found, before the role is even
		// considered, so no answer tells an app that a device exists.
		if rt.scope == scopeDevice && tok.Role == apitoken.RoleApp {
			if !c.ownsDevice() {
				return
			}
		}
		if !slices.Contains(rt.Roles, tok.Role) {
			c.refuse(http.StatusForbidden, 0, "this token's role ("+tok.Role+") may not call "+label, "role")
			return
		}
		c.serve()
	})
}

// serveLocal answers a request on the admin socket: the operator, an
// admin without a token or a rate (the socket's mode is the gate).
func (a *API) serveLocal(c *call) {
	c.tok = localToken()
	if c.rt == nil {
		c.noRoute()
		return
	}
	c.serve()
}

// serve runs the route and answers its result.
func (c *call) serve() {
	v, err := c.rt.serve(c)
	if err != nil {
		c.fail(err)
		return
	}
	switch v := v.(type) {
	case streamed:
		// the route wrote its own answer
	case created:
		c.writeJSON(http.StatusCreated, v.v)
	default:
		c.writeJSON(http.StatusOK, v)
	}
}

// ownsDevice reports whether the app token's user owns the route's device,
// having answered not-found if not.
func (c *call) ownsDevice() bool {
	info, err := c.a.admin.Device(c.ctx(), c.id())
	switch {
	case err != nil: // not found answers as not owned does
		c.fail(err)
		return false
	case info.Owner == "" || info.Owner != c.tok.User:
		c.a.log.Info("API request refused", "route", c.label, "remote", c.r.RemoteAddr, "token", c.tok.ID,
			"role", c.tok.Role, "reason", "not-owner", "device", c.id())
		c.a.audit.Record(c.ctx(), audit.Event{Action: "api.request", Outcome: "denied", Actor: c.actor(),
			Subject: "device:" + c.id(), Reason: "not-owner", Remote: c.r.RemoteAddr,
			Details: map[string]string{"route": c.label, "user": c.tok.User}})
		c.fail(notFoundError{})
		return false
	}
	return true
}

// noRoute answers a path or method the table does not have.
func (c *call) noRoute() {
	for pattern, methods := range c.a.allowed {
		if matchPath(pattern, c.r.URL.Path) {
			methods = slices.Sorted(slices.Values(methods))
			c.w.Header().Set("Allow", strings.Join(methods, ", "))
			c.writeError(http.StatusMethodNotAllowed, codeMethodNotAllowed, c.r.Method+" is not allowed here; use "+strings.Join(methods, " or "))
			return
		}
	}
	c.writeError(http.StatusNotFound, codeNotFound, "no such API endpoint; docs/openapi.yaml lists them")
}

// matchPath reports whether path fits pattern, whose {name} wildcards each
// match one non-empty segment.
func matchPath(pattern, path string) bool {
	ps, xs := strings.Split(pattern, "/"), strings.Split(path, "/")
	if len(ps) != len(xs) {
		return false
	}
	for i, p := range ps {
		if strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}") {
			if xs[i] == "" {
				return false
			}
			continue
		}
		if p != xs[i] {
			return false
		}
	}
	return true
}

// unauthorized answers a request without a valid token. hint is the token
// ID if the token had the shape of one (never the secret).
func (c *call) unauthorized(hint string) {
	c.recordUnauthorized(hint)
	apierror.WriteUnauthorized(c.w)
}

// recordUnauthorized logs and audits a request refused for want of a
// valid token.
func (c *call) recordUnauthorized(hint string) {
	attrs := []any{"route", c.label, "remote", c.r.RemoteAddr, "reason", "unauthorized"}
	ev := audit.Event{Action: "api.request", Outcome: "denied", Reason: "unauthorized", Remote: c.r.RemoteAddr,
		Details: map[string]string{"route": c.label}}
	if hint != "" {
		attrs = append(attrs, "token", hint)
		ev.Subject = "token:" + hint
	}
	c.a.log.Info("API request refused", attrs...)
	c.a.audit.Record(c.ctx(), ev)
}

// refuse answers 403 or 429 (wait > 0 sets Retry-After), logs it and
// audits a 403.
func (c *call) refuse(status int, wait time.Duration, msg, reason string) {
	attrs := []any{"route", c.label, "remote", c.r.RemoteAddr, "reason", reason}
	if c.tok.ID != "" {
		attrs = append(attrs, "token", c.tok.ID, "role", c.tok.Role)
	}
	code := codeForbidden
	if status == http.StatusTooManyRequests {
		code = codeRateLimited
		secs := int64((wait + time.Second - 1) / time.Second)
		if secs < 1 {
			secs = 1
		}
		c.w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		msg += "; retry after " + strconv.FormatInt(secs, 10) + " s"
		attrs = append(attrs, "retry_after_s", secs)
	} else {
		ev := audit.Event{Action: "api.request", Outcome: "denied", Actor: c.actor(), Reason: reason,
			Remote: c.r.RemoteAddr, Details: map[string]string{"route": c.label, "role": c.tok.Role, "user": c.tok.User}}
		if c.rt != nil && c.rt.resource != "" {
			ev.Subject = c.rt.resource + ":" + c.id()
		}
		c.a.audit.Record(c.ctx(), ev)
	}
	c.a.log.Info("API request refused", attrs...)
	c.writeError(status, code, msg)
}

// fail answers an error from a handler or a service.
func (c *call) fail(err error) {
	e := classify(err)
	switch {
	case e.status == http.StatusNotFound && c.rt != nil && c.rt.resource != "":
		// One text for every not-found of a resource: an app must not tell
		// "not yours" from "no such device" by the message either.
		e.msg = c.rt.resource + " " + strconv.Quote(c.id()) + " not found"
	case e.status == http.StatusInternalServerError:
		c.a.log.Error("API request failed", "route", c.label, "token", c.tok.ID, "error", err)
	}
	c.writeError(e.status, e.code, e.msg)
}

// errorBody is the shape of every error answer.
type errorBody struct {
	Error Error `json:"error"`
}

// Error is what an error answer says: a stable code and a message for
// people.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (c *call) writeError(status int, code, msg string) {
	c.writeJSON(status, errorBody{Error: Error{Code: code, Message: msg}})
}

func (c *call) writeJSON(status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		c.a.log.Error("API response does not encode", "route", c.label, "error", err)
		status, body = http.StatusInternalServerError, []byte(`{"error":{"code":"internal","message":"internal error; the server log has the details"}}`)
	}
	c.w.Header().Set("Content-Type", "application/json")
	c.w.WriteHeader(status)
	_, _ = c.w.Write(append(body, '\n'))
}

// done audits a change made through the API, whoever made it, whether or
// not it succeeded: the registry and OTA logs say what changed, this says
// which token asked.
func (c *call) done(subject string, err error, details map[string]string) {
	ev := audit.Event{Action: "api.request", Outcome: "done", Actor: c.actor(), Subject: subject, Remote: c.r.RemoteAddr,
		Details: map[string]string{"route": c.label, "role": c.tok.Role, "user": c.tok.User}}
	for k, v := range details {
		if v != "" {
			ev.Details[k] = v
		}
	}
	if err != nil {
		ev.Outcome, ev.Reason = "failed", classify(err).code
	}
	c.a.audit.Record(c.ctx(), ev)
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelWarn
	}
	c.a.log.Log(c.ctx(), level, "API change", "route", c.label, "token", c.tok.ID, "subject", subject, "outcome", ev.Outcome)
}

// tokenHint returns the ID part of something shaped like a token
// ("wdn_" + 16 lowercase hex + "_"), for the log; never the secret.
func tokenHint(tok string) string {
	const idLen = 16
	if len(tok) <= len(apitoken.Prefix)+idLen || !strings.HasPrefix(tok, apitoken.Prefix) || tok[len(apitoken.Prefix)+idLen] != '_' {
		return ""
	}
	id := tok[len(apitoken.Prefix) : len(apitoken.Prefix)+idLen]
	for i := 0; i < len(id); i++ {
		if (id[i] < '0' || id[i] > '9') && (id[i] < 'a' || id[i] > 'f') {
			return ""
		}
	}
	return id
}

// Guard puts the address throttle in front of h, a handler that checks
// API tokens itself (onboarding's POST /v1/claims): otherwise a client
// refused here could try tokens there at full speed. An address over its
// failure limit gets 429 before h runs; every 401 that h answers counts
// as a failure of its address. Requests are counted in
// warden_api_requests_total under route ("POST /v1/claims").
func (a *API) Guard(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: rw}
		defer func() { a.requests.WithLabelValues(route, strconv.Itoa(sw.status)).Inc() }()
		addr := ratelimit.RemoteKey(r.RemoteAddr)
		if wait := a.failures.Wait(addr, a.now()); wait > 0 {
			sw.Header().Set("Cache-Control", "no-store")
			c := &call{a: a, w: sw, r: r, label: route}
			c.refuse(http.StatusTooManyRequests, wait, "too many failed authentications from this address", "address-throttled")
			return
		}
		h.ServeHTTP(sw, r)
		if sw.status == http.StatusUnauthorized {
			// Refused for its token by the handler: counted towards the
			// address's throttle, logged and audited as the API's own.
			a.failures.Take(addr, a.now())
			c := &call{a: a, w: sw, r: r, label: route}
			c.recordUnauthorized(tokenHint(apitoken.FromRequest(r)))
		}
	})
}

// tokenUseEvery is how often a token's use from one address is audited:
// every use would drown the log in a dashboard's polling, none would
// leave a stolen token's first use from a new place unrecorded.
const tokenUseEvery = time.Hour

// tokenUses remembers when each token was last audited as used from each
// address (IPv6 per /64).
type tokenUses struct {
	mu   sync.Mutex
	last map[string]time.Time
	max  int
}

func newTokenUses(max int) *tokenUses {
	return &tokenUses{last: map[string]time.Time{}, max: max}
}

// note audits the call's token use if it was not audited from this
// address within tokenUseEvery.
func (u *tokenUses) note(c *call, addr string, now time.Time) {
	key := c.tok.ID + "|" + addr
	u.mu.Lock()
	last, ok := u.last[key]
	fresh := !ok || now.Sub(last) >= tokenUseEvery || now.Before(last)
	if fresh {
		if !ok && len(u.last) >= u.max {
			// Full: start over. At worst some uses are audited again
			// early, never is one missed.
			clear(u.last)
		}
		u.last[key] = now
	}
	u.mu.Unlock()
	if !fresh {
		return
	}
	c.a.audit.Record(c.ctx(), audit.Event{Action: "api.token.used", Outcome: "done", Actor: c.actor(), Subject: "token:" + c.tok.ID,
		Remote: c.r.RemoteAddr, Details: map[string]string{"route": c.label, "role": c.tok.Role, "user": c.tok.User}})
}
