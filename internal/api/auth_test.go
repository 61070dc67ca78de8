package api

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/store"
)

// flipSecret changes the first character of a token's secret.
func flipSecret(tok string) string {
	i := len(apitoken.Prefix) + 16 + 1
	c := byte('A')
	if tok[i] == 'A' {
		c = 'B'
	}
	return tok[:i] + string(c) + tok[i+1:]
}

// TestUnauthorizedIsUniform: whatever is wrong with the token, the answer
// is the same bytes and headers, and the secret never reaches the log.
func TestUnauthorizedIsUniform(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	revoked, rec, err := f.tokens.Create(ctx, "admin", "gone@example.com", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.tokens.Revoke(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	expired, _, err := f.tokens.Create(ctx, "admin", "old@example.com", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f.clk.add(2 * time.Hour)
	unknown := apitoken.Prefix + "0123456789abcdef_" + strings.Repeat("A", 43)
	admin := f.tok["admin"]

	cases := []struct{ name, header string }{
		{"missing", ""},
		{"empty bearer", "raw:Bearer "},
		{"other scheme", "raw:Basic " + admin},
		{"garbled", "raw:Bearer not-a-token"},
		{"truncated", "raw:Bearer " + admin[:len(admin)-1]},
		{"unknown ID", "raw:Bearer " + unknown},
		{"wrong secret", "raw:Bearer " + flipSecret(admin)},
		{"revoked", "raw:Bearer " + revoked},
		{"expired", "raw:Bearer " + expired},
	}
	var first string
	for _, tc := range cases {
		// POST /v1/claims is onboarding's, not this package's: it answers
		// the same bytes.
		for _, call := range []struct{ method, path string }{{"GET", "/v1/whoami"}, {"GET", "/v1/devices/dev-b1"},
			{"GET", "/v1/no-such-endpoint"}, {"POST", "/v1/claims"}} {
			path := call.path
			w := f.do(req{method: call.method, path: path, token: tc.header})
			if w.Code != http.StatusUnauthorized {
				t.Errorf("%s on %s: %d %s, want 401", tc.name, path, w.Code, w.Body)
				continue
			}
			if first == "" {
				first = w.Body.String()
			}
			if w.Body.String() != first || errorCode(t, w) != codeUnauthorized {
				t.Errorf("%s on %s: body %q differs from %q", tc.name, path, w.Body, first)
			}
			if got := w.Header().Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
				t.Errorf("%s: WWW-Authenticate %q", tc.name, got)
			}
			if got := w.Header().Get("Content-Type"); got != "application/json" {
				t.Errorf("%s: Content-Type %q", tc.name, got)
			}
		}
	}
	// Two Authorization headers are none, even when one is valid.
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: "raw:Bearer " + admin}); w.Code != http.StatusOK {
		t.Fatalf("the admin token itself fails: %d", w.Code)
	}
	two := httptest.NewRequest("GET", "/v1/whoami", nil)
	two.Header.Add("Authorization", "Bearer "+admin)
	two.Header.Add("Authorization", "Bearer "+admin)
	w := httptest.NewRecorder()
	f.handler.ServeHTTP(w, two)
	if w.Code != http.StatusUnauthorized || w.Body.String() != first {
		t.Errorf("two Authorization headers: %d %s", w.Code, w.Body)
	}
	logs := f.logs.String()
	for _, tok := range []string{admin, revoked, expired, flipSecret(admin)} {
		if secret := tok[len(apitoken.Prefix)+17:]; strings.Contains(logs, secret) {
			t.Errorf("the log holds a token secret: %s", logs)
		}
	}
	if !strings.Contains(logs, `"token":"`+rec.ID+`"`) {
		t.Errorf("the log does not name the revoked token's ID: %s", logs)
	}
	// Every refusal is audited, those of POST /v1/claims too (Guard).
	if n := len(f.audit.find("api.request", "denied", "unauthorized")); n != len(cases)*4+1 {
		t.Errorf("%d unauthorized requests audited, want %d", n, len(cases)*4+1)
	}
	if n := f.counter("POST /v1/claims", "401"); n != float64(len(cases)) {
		t.Errorf("warden_api_requests_total{POST /v1/claims,401} = %v, want %d", n, len(cases))
	}
	if n := f.counter("GET /v1/whoami", "401"); n != float64(len(cases)+1) {
		t.Errorf("warden_api_requests_total{GET /v1/whoami,401} = %v, want %d", n, len(cases)+1)
	}
	if n := f.counter("unmatched", "401"); n != float64(len(cases)) {
		t.Errorf("warden_api_requests_total{unmatched,401} = %v, want %d", n, len(cases))
	}
}

func TestTokenRateLimit(t *testing.T) {
	f := newFixture(t, fixtureOptions{tune: func(o *Options) { o.TokenRate, o.TokenBurst = 1, 3 }})
	for i := range 3 {
		if w := f.do(req{method: "GET", path: "/v1/whoami", token: "viewer"}); w.Code != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, w.Code, w.Body)
		}
	}
	w := f.do(req{method: "GET", path: "/v1/devices", token: "viewer"})
	if w.Code != http.StatusTooManyRequests || errorCode(t, w) != codeRateLimited || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("4th request = %d %s Retry-After %q; want 429 rate_limited, Retry-After 1", w.Code, w.Body, w.Header().Get("Retry-After"))
	}
	// The limit is the token's, not the address's: another token goes on.
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: "operator"}); w.Code != http.StatusOK {
		t.Errorf("another token from the same address: %d", w.Code)
	}
	f.clk.add(time.Second)
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: "viewer"}); w.Code != http.StatusOK {
		t.Errorf("after a second: %d %s", w.Code, w.Body)
	}
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: "viewer"}); w.Code != http.StatusTooManyRequests {
		t.Errorf("one token per second: second request = %d", w.Code)
	}
	if n := f.counter("GET /v1/devices", "429"); n != 1 {
		t.Errorf("warden_api_requests_total{GET /v1/devices,429} = %v", n)
	}
	if !strings.Contains(f.logs.String(), "token-throttled") {
		t.Error("throttled requests are not logged")
	}
}

func TestFailureThrottle(t *testing.T) {
	f := newFixture(t, fixtureOptions{tune: func(o *Options) { o.FailureRate, o.FailureBurst = 0.5, 2 }})
	bad := "raw:Bearer " + flipSecret(f.tok["admin"])
	const from, other = "198.51.100.7:5000", "198.51.100.8:5000"
	for i := range 2 {
		if w := f.do(req{method: "GET", path: "/v1/whoami", token: bad, remote: from}); w.Code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i, w.Code)
		}
	}
	// Over the limit: refused before the token is looked at, even a good one.
	for _, tok := range []string{bad, "admin"} {
		w := f.do(req{method: "GET", path: "/v1/whoami", token: tok, remote: from})
		if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "2" || errorCode(t, w) != codeRateLimited {
			t.Errorf("throttled address with %s: %d %s Retry-After %q, want 429 after 2 s", tok, w.Code, w.Body, w.Header().Get("Retry-After"))
		}
	}
	// Another address is not affected, nor is /v1/claims a way around it.
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: "admin", remote: other}); w.Code != http.StatusOK {
		t.Errorf("another address: %d", w.Code)
	}
	if w := f.do(req{method: "POST", path: "/v1/claims", token: bad, remote: from}); w.Code != http.StatusTooManyRequests {
		t.Errorf("POST /v1/claims from a throttled address = %d, want 429", w.Code)
	}
	f.clk.add(2 * time.Second)
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: "admin", remote: from}); w.Code != http.StatusOK {
		t.Errorf("after the wait, a good token: %d", w.Code)
	}
	// Failures on /v1/claims count too.
	f.clk.add(10 * time.Second)
	for range 2 {
		f.do(req{method: "POST", path: "/v1/claims", token: bad, remote: other})
	}
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: bad, remote: other}); w.Code != http.StatusTooManyRequests {
		t.Errorf("after two failed claims: %d, want 429", w.Code)
	}
	// IPv6 addresses of one /64 share a bucket.
	for i := range 2 {
		f.do(req{method: "GET", path: "/v1/whoami", token: bad, remote: fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1)})
	}
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: bad, remote: "[2001:db8:1:2:ffff::9]:443"}); w.Code != http.StatusTooManyRequests {
		t.Errorf("a third address of the same /64: %d, want 429", w.Code)
	}
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: bad, remote: "[2001:db8:1:3::1]:443"}); w.Code != http.StatusUnauthorized {
		t.Errorf("an address of another /64: %d, want 401", w.Code)
	}
	if len(f.audit.find("api.request", "denied", "address-throttled")) != 0 {
		t.Error("throttled requests are audited; only 401 and 403 should be")
	}
}

// TestLimiterMapsAreBounded: many addresses do not grow the map beyond
// its cap, and the newcomers beyond it share one bucket.
func TestLimiterMapsAreBounded(t *testing.T) {
	f := newFixture(t, fixtureOptions{tune: func(o *Options) { o.FailureRate, o.FailureBurst, o.LimiterEntries = 1, 2, 4 }})
	bad := "raw:Bearer garbage"
	for i := range 50 {
		f.do(req{method: "GET", path: "/v1/whoami", token: bad, remote: fmt.Sprintf("203.0.113.%d:1", i)})
	}
	if n := f.api.failures.Size(); n != 4 {
		t.Errorf("%d addresses tracked, want the cap, 4", n)
	}
	// The 46 beyond the cap emptied the shared bucket: a fifth address is refused.
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: "admin", remote: "203.0.113.200:1"}); w.Code != http.StatusTooManyRequests {
		t.Errorf("a newcomer while the map is full of throttled addresses: %d, want 429", w.Code)
	}
	// Once the buckets have filled again they are dropped, and newcomers get their own.
	f.clk.add(time.Minute)
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: bad, remote: "203.0.113.201:1"}); w.Code != http.StatusUnauthorized {
		t.Errorf("after a minute: %d, want 401", w.Code)
	}
	if n := f.api.failures.Size(); n != 1 {
		t.Errorf("%d addresses tracked after the sweep, want 1", n)
	}
}

func TestUnknownPathsAndMethods(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	w := f.do(req{method: "GET", path: "/v1/nothing/here", token: "admin"})
	if w.Code != http.StatusNotFound || errorCode(t, w) != codeNotFound {
		t.Errorf("unknown path = %d %s", w.Code, w.Body)
	}
	w = f.do(req{method: "DELETE", path: "/v1/devices/dev-x", token: "admin"})
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET" || errorCode(t, w) != codeMethodNotAllowed {
		t.Errorf("DELETE a device = %d %s Allow %q", w.Code, w.Body, w.Header().Get("Allow"))
	}
	// Without a token, nothing is revealed about the route.
	if w := f.do(req{method: "DELETE", path: "/v1/devices/dev-x"}); w.Code != http.StatusUnauthorized {
		t.Errorf("DELETE without a token = %d", w.Code)
	}
	if n := f.counter("unmatched", "405"); n != 1 {
		t.Errorf("warden_api_requests_total{unmatched,405} = %v", n)
	}
}

func TestNewChecksOptions(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Error("New without tokens and admin succeeded")
	}
}

// TestTokenUseIsAudited: a token's use is audited the first time from each
// address and again after tokenUseEvery, not on every request.
func TestTokenUseIsAudited(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	used := func() []audit.Event { return f.audit.find("api.token.used", "done", "") }
	for range 3 {
		if w := f.do(req{method: "GET", path: "/v1/whoami", token: "viewer"}); w.Code != http.StatusOK {
			t.Fatalf("whoami: %d %s", w.Code, w.Body)
		}
	}
	if n := len(used()); n != 1 {
		t.Fatalf("%d uses audited after 3 requests from one address, want 1", n)
	}
	e := used()[0]
	if e.Subject != "token:"+tokenHint(f.tok["viewer"]) || e.Remote != "192.0.2.1:40000" || e.Details["route"] != "GET /v1/whoami" {
		t.Errorf("audited use = %+v", e)
	}
	if strings.Contains(fmt.Sprint(e), f.tok["viewer"]) {
		t.Fatal("the audit entry holds the token")
	}
	f.do(req{method: "GET", path: "/v1/whoami", token: "viewer", remote: "198.51.100.7:1234"})
	if n := len(used()); n != 2 {
		t.Fatalf("%d uses audited after a request from a new address, want 2", n)
	}
	f.do(req{method: "GET", path: "/v1/whoami", token: "operator"})
	if n := len(used()); n != 3 {
		t.Fatalf("%d uses audited after another token's request, want 3", n)
	}
	f.clk.add(tokenUseEvery)
	f.do(req{method: "GET", path: "/v1/whoami", token: "viewer"})
	if n := len(used()); n != 4 {
		t.Fatalf("%d uses audited an hour later, want 4", n)
	}
	// Refused tokens are audited as refusals, not as uses.
	f.do(req{method: "GET", path: "/v1/whoami", token: "raw:Bearer wdn_0123456789abcdef_nope"})
	if n := len(used()); n != 4 {
		t.Fatalf("a refused token was audited as used")
	}
}

func TestTokenUsesBounded(t *testing.T) {
	u := newTokenUses(2)
	f := newFixture(t, fixtureOptions{})
	c := &call{a: f.api, r: httptest.NewRequest("GET", "/v1/whoami", nil), tok: store.APIToken{ID: "t1"}}
	now := time.Unix(1e9, 0)
	for _, addr := range []string{"a", "b", "c", "d"} {
		u.note(c, addr, now)
		if len(u.last) > 2 {
			t.Fatalf("%d entries, bound 2", len(u.last))
		}
	}
}

// POST /v1/claims (served by onboarding) answers its errors as the rest
// of the API does: JSON with the API's codes.
func TestClaimsErrorsAreAPIErrors(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	for _, tc := range []struct {
		name   string
		r      req
		status int
		code   string
	}{
		{"viewer", req{method: "POST", path: "/v1/claims", token: "viewer"}, http.StatusForbidden, codeForbidden},
		{"not JSON", req{method: "POST", path: "/v1/claims", token: "app", body: "ttl=5"}, http.StatusBadRequest, codeInvalid},
		{"unknown field", req{method: "POST", path: "/v1/claims", token: "app", body: `{"ttl":5}`}, http.StatusBadRequest, codeInvalid},
		{"ttl too long", req{method: "POST", path: "/v1/claims", token: "app", body: `{"ttl_seconds":601}`}, http.StatusBadRequest, codeInvalid},
	} {
		w := f.do(tc.r)
		if w.Code != tc.status || w.Header().Get("Content-Type") != "application/json" || errorCode(t, w) != tc.code {
			t.Errorf("%s: %d %s %q, want %d with code %q", tc.name, w.Code, w.Header().Get("Content-Type"), w.Body, tc.status, tc.code)
		}
	}
}
