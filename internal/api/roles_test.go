package api

import (
	"encoding/base64"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/warden-iot/warden/internal/store"
)

// TestRoleBoundaries runs every route with every kind of token, in a
// fresh fixture per token, and checks the exact status. dev-a2 and dev-a3
// belong to alice (the "app" token's user); "app2" is bob's app.
func TestRoleBoundaries(t *testing.T) {
	type want map[string]int // token name -> status
	all := func(s int) want { return want{"admin": s, "operator": s, "viewer": s, "app": s, "app2": s} }
	const ok, forbidden, notFound = http.StatusOK, http.StatusForbidden, http.StatusNotFound
	const created, noContent = http.StatusCreated, http.StatusNoContent
	operate := func(s int) want {
		return want{"admin": s, "operator": s, "viewer": forbidden, "app": forbidden, "app2": forbidden}
	}
	read := func(s int) want {
		return want{"admin": s, "operator": s, "viewer": s, "app": forbidden, "app2": forbidden}
	}
	adminOnly := func(s int) want {
		return want{"admin": s, "operator": forbidden, "viewer": forbidden, "app": forbidden, "app2": forbidden}
	}
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	trust := jsonBody(t, TrustRequest{PublicKeyPEM: string(releaseKeyPEM(t)), Name: "roles"})
	rows := []struct {
		method, path, body string
		want               want
	}{
		{"GET", "/v1/whoami", "", all(ok)},
		{"GET", "/v1/devices", "", all(ok)},
		{"GET", "/v1/devices/dev-a2", "", want{"admin": ok, "operator": ok, "viewer": ok, "app": ok, "app2": notFound}},
		{"POST", "/v1/devices/dev-a2/disable", `{"reason":"test"}`, want{"admin": ok, "operator": ok, "viewer": forbidden, "app": forbidden, "app2": notFound}},
		{"POST", "/v1/devices/dev-a2/enable", "", want{"admin": ok, "operator": ok, "viewer": forbidden, "app": forbidden, "app2": notFound}},
		{"PUT", "/v1/devices/dev-a2/tags", `{"tags":{"room":"kitchen"}}`, want{"admin": ok, "operator": ok, "viewer": forbidden, "app": forbidden, "app2": notFound}},
		{"POST", "/v1/devices/dev-a3/revoke", `{"reason":"stolen"}`, want{"admin": ok, "operator": ok, "viewer": forbidden, "app": forbidden, "app2": notFound}},
		{"POST", "/v1/devices/dev-a1/commands", `{"name":"ping"}`, want{"admin": ok, "operator": ok, "viewer": forbidden, "app": ok, "app2": notFound}},
		{"GET", "/v1/rollouts", "", want{"admin": ok, "operator": ok, "viewer": ok, "app": forbidden, "app2": forbidden}},
		{"GET", "/v1/rollouts/{rollout}", "", want{"admin": ok, "operator": ok, "viewer": ok, "app": forbidden, "app2": forbidden}},
		{"POST", "/v1/rollouts/{rollout}/pause", `{"reason":"look"}`, want{"admin": ok, "operator": ok, "viewer": forbidden, "app": forbidden, "app2": forbidden}},
		{"POST", "/v1/rollouts/{rollout}/resume", "", want{"admin": ok, "operator": ok, "viewer": forbidden, "app": forbidden, "app2": forbidden}},
		{"POST", "/v1/rollouts/{rollout}/abort", `{"reason":"bad"}`, want{"admin": ok, "operator": ok, "viewer": forbidden, "app": forbidden, "app2": forbidden}},
		{"GET", "/v1/firmware/images", "", want{"admin": ok, "operator": ok, "viewer": ok, "app": forbidden, "app2": forbidden}},
		{"GET", "/v1/stream?device=dev-a2", "", want{"admin": ok, "operator": ok, "viewer": ok, "app": ok, "app2": notFound}},
		{"GET", "/v1/alerts", "", want{"admin": ok, "operator": ok, "viewer": ok, "app": forbidden, "app2": forbidden}},
		{"POST", "/v1/alerts/a1/ack", "", want{"admin": ok, "operator": ok, "viewer": forbidden, "app": forbidden, "app2": forbidden}},
		{"POST", "/v1/devices/dev-a2/release", "", want{"admin": ok, "operator": ok, "viewer": forbidden, "app": forbidden, "app2": notFound}},
		{"GET", "/v1/audit?limit=2", "", want{"admin": ok, "operator": forbidden, "viewer": forbidden, "app": forbidden, "app2": forbidden}},
		{"GET", "/v1/ca", "", want{"admin": ok, "operator": ok, "viewer": ok, "app": forbidden, "app2": forbidden}},
		{"POST", "/v1/claims", "", want{"admin": http.StatusCreated, "operator": http.StatusCreated, "viewer": forbidden, "app": http.StatusCreated, "app2": http.StatusCreated}},

		{"POST", "/v1/devices", `{"id":"rb-new","csr":"` + b64(csrFor(t, "rb-new")) + `"}`, operate(created)},
		{"POST", "/v1/device-certificates", `{"id":"rb-issued","csr":"` + b64(csrFor(t, "rb-issued")) + `"}`, operate(created)},
		{"POST", "/v1/devices/dev-a2/envelope", `{"suite":"ccm-8"}`, want{"admin": created, "operator": created, "viewer": forbidden, "app": forbidden, "app2": notFound}},
		{"POST", "/v1/devices/dev-a2/rekey", "", want{"admin": ok, "operator": ok, "viewer": forbidden, "app": forbidden, "app2": notFound}},
		{"GET", "/v1/services", "", read(ok)},
		{"POST", "/v1/services", `{"name":"rb-svc","role":"reader","csr":"` + b64(csrFor(t, "rb-svc")) + `"}`, adminOnly(created)},
		{"POST", "/v1/services/rb-svc/revoke", "", adminOnly(ok)},
		{"POST", "/v1/rollouts", `{"image":"{image}"}`, operate(created)}, // after the abort above
		{"GET", "/v1/rollouts/{rollout}/devices", "", read(ok)},
		{"POST", "/v1/firmware/images", "", operate(created)},
		{"GET", "/v1/firmware/keys", "", read(ok)},
		{"POST", "/v1/firmware/keys", trust, adminOnly(created)},
		{"POST", "/v1/firmware/keys/0000000000000000000000000000000000000000000000000000000000000000/revoke", "", adminOnly(notFound)},
		{"POST", "/v1/ca/rotate", `{"grace_seconds":3600}`, adminOnly(created)},
		{"POST", "/v1/ca/issuers/0000000000000000000000000000000000000000000000000000000000000000/retire", "", adminOnly(notFound)},
		{"POST", "/v1/ca/issuers/0000000000000000000000000000000000000000000000000000000000000000/revoke", `{"reason":"leaked"}`, adminOnly(notFound)},
		{"GET", "/v1/enrollments", "", operate(ok)},
		{"POST", "/v1/enrollments", `{"device_id":"rb-enr"}`, operate(created)},
		{"DELETE", "/v1/enrollments/rb-enr", "", operate(noContent)},
		{"GET", "/v1/claim-certs", "", adminOnly(ok)},
		{"POST", "/v1/claim-certs", `{"name":"rb-claim","csr":"` + b64(csrFor(t, "rb-claim")) + `","allow":["rb-c1"]}`, adminOnly(created)},
		{"POST", "/v1/claim-certs/rb-claim/allow", `{"allow":["rb-c2"]}`, adminOnly(ok)},
		{"POST", "/v1/claim-certs/rb-claim/revoke", "", adminOnly(ok)},
		{"GET", "/v1/tokens", "", adminOnly(ok)},
		{"POST", "/v1/tokens", `{"role":"viewer","user":"rb"}`, adminOnly(created)},
		{"POST", "/v1/tokens/0000000000000000/revoke", "", adminOnly(notFound)},
		{"GET", "/v1/quarantine", "", read(ok)},
	}

	// Every route of the table has a row, so a new route cannot skip this.
	var covered []string
	for _, r := range rows {
		covered = append(covered, r.method+" "+r.path)
	}
	for _, rt := range newFixture(t, fixtureOptions{}).api.Routes() {
		found := false
		for _, c := range covered {
			m, p, _ := strings.Cut(c, " ")
			p, _, _ = strings.Cut(p, "?")
			found = found || (m == rt.Method && matchPath(rt.Pattern, strings.ReplaceAll(p, "{rollout}", "r")))
		}
		if !found {
			t.Errorf("route %s %s has no row in TestRoleBoundaries", rt.Method, rt.Pattern)
		}
	}

	for _, name := range tokenNames {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, fixtureOptions{})
			for _, r := range rows {
				path := strings.ReplaceAll(r.path, "{rollout}", f.rollout)
				rq := req{method: r.method, path: path, token: name, body: strings.ReplaceAll(r.body, "{image}", f.image)}
				if r.method == "POST" && r.path == "/v1/firmware/images" { // a new signed image as the body
					img, stmt := f.signedImage("1.2.4+5", 2)
					rq.body, rq.contentType = string(img), "application/octet-stream"
					rq.header = http.Header{StatementHeader: {b64(stmt)}}
				}
				w := f.do(rq)
				if w.Code != r.want[name] {
					t.Errorf("%s %s as %s = %d %s, want %d", r.method, r.path, name, w.Code, w.Body, r.want[name])
					continue
				}
				switch w.Code {
				case forbidden:
					if errorCode(t, w) != codeForbidden {
						t.Errorf("%s %s as %s: 403 with code %q", r.method, r.path, name, errorCode(t, w))
					}
				case notFound:
					if errorCode(t, w) != codeNotFound {
						t.Errorf("%s %s as %s: 404 with code %q", r.method, r.path, name, errorCode(t, w))
					}
				}
			}
			// What the refused tokens tried left no trace on the devices.
			a2, a3 := f.device("dev-a2"), f.device("dev-a3")
			changed := name == "admin" || name == "operator"
			if (a3.State == store.StateRevoked) != changed || (a2.Tags["room"] == "kitchen") != changed {
				t.Errorf("as %s: dev-a2 %+v, dev-a3 %+v; changes expected: %v", name, a2, a3, changed)
			}
		})
	}
}

// TestAppIsolation: an app token sees and reaches only its user's
// devices, and cannot tell another user's device from a missing one.
func TestAppIsolation(t *testing.T) {
	f := newFixture(t, fixtureOptions{})

	for _, q := range []string{"", "?owner=" + bob, "?owner=", "?state=active&tag=site:lyon"} {
		w := f.do(req{method: "GET", path: "/v1/devices" + q, token: "app"})
		var list DeviceList
		decode(t, w, &list)
		var ids []string
		for _, d := range list.Devices {
			ids = append(ids, d.ID)
			if d.Owner != alice {
				t.Errorf("app of %s listed %s owned by %q", alice, d.ID, d.Owner)
			}
		}
		if want := []string{"dev-a1", "dev-a2", "dev-a3"}; !slices.Equal(ids, want) {
			t.Errorf("GET /v1/devices%s as app = %v, want %v", q, ids, want)
		}
	}

	// Another user's device, an unclaimed one and a missing one answer
	// alike on every device route, byte for byte but for the ID.
	for _, op := range []struct{ method, suffix, body string }{
		{"GET", "", ""},
		{"PUT", "/tags", `{"tags":{}}`},
		{"POST", "/revoke", `{"reason":"mine now"}`},
		{"POST", "/disable", ""},
	} {
		missing := f.do(req{method: op.method, path: "/v1/devices/no-such-device" + op.suffix, token: "app", body: op.body})
		if missing.Code != http.StatusNotFound {
			t.Fatalf("%s missing device as app = %d %s", op.method, missing.Code, missing.Body)
		}
		for _, id := range []string{"dev-b1", "dev-x"} {
			w := f.do(req{method: op.method, path: "/v1/devices/" + id + op.suffix, token: "app", body: op.body})
			got := strings.ReplaceAll(w.Body.String(), id, "no-such-device")
			if w.Code != http.StatusNotFound || got != missing.Body.String() {
				t.Errorf("%s /v1/devices/%s%s as app = %d %q, want the answer for a missing device %q", op.method, id, op.suffix, w.Code, w.Body, missing.Body)
			}
			if !headersEqual(w.Header(), missing.Header()) {
				t.Errorf("%s %s: headers %v differ from a missing device's %v", op.method, id, w.Header(), missing.Header())
			}
		}
	}
	if d := f.device("dev-b1"); d.State != store.StateActive || d.Tags["site"] != "lyon" {
		t.Errorf("bob's device changed: %+v", d)
	}
	if len(f.audit.find("api.request", "denied", "not-owner")) == 0 {
		t.Error("attempts on another user's device are not audited")
	}
	// The owner's own device works.
	if w := f.do(req{method: "GET", path: "/v1/devices/dev-a1", token: "app"}); w.Code != http.StatusOK {
		t.Errorf("app GET own device = %d %s", w.Code, w.Body)
	}
}

func headersEqual(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// TestViewerCannotChange: a viewer reads everything an operator reads and
// changes nothing.
func TestViewerCannotChange(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	before := f.device("dev-x")
	for _, r := range []req{
		{method: "POST", path: "/v1/devices/dev-x/revoke", body: `{"reason":"x"}`},
		{method: "POST", path: "/v1/devices/dev-x/disable"},
		{method: "PUT", path: "/v1/devices/dev-x/tags", body: `{"tags":{}}`},
		{method: "POST", path: "/v1/rollouts/" + f.rollout + "/pause"},
		{method: "POST", path: "/v1/rollouts/" + f.rollout + "/abort"},
		// A device that does not exist: refused for the role, not looked up.
		{method: "POST", path: "/v1/devices/nope/revoke"},
	} {
		r.token = "viewer"
		w := f.do(r)
		if w.Code != http.StatusForbidden || errorCode(t, w) != codeForbidden {
			t.Errorf("viewer %s %s = %d %s, want 403 forbidden", r.method, r.path, w.Code, w.Body)
		}
	}
	after := f.device("dev-x")
	if after.State != before.State || len(after.Tags) != len(before.Tags) {
		t.Errorf("viewer changed dev-x: %+v -> %+v", before, after)
	}
	st := f.do(req{method: "GET", path: "/v1/rollouts/" + f.rollout, token: "viewer"})
	var status struct {
		Rollout store.Rollout `json:"rollout"`
	}
	decode(t, st, &status)
	if status.Rollout.State != store.RolloutRunning {
		t.Errorf("rollout is %s after the viewer's attempts", status.Rollout.State)
	}
	denied := f.audit.find("api.request", "denied", "role")
	if len(denied) != 6 {
		t.Errorf("%d role denials audited, want 6", len(denied))
	}
	for _, e := range denied {
		if !strings.HasPrefix(e.Actor, "token:") || e.Details["route"] == "" || e.Subject == "" {
			t.Errorf("denial audited without actor or route: %+v", e)
		}
	}
	if n := f.counter("POST /v1/devices/{id}/revoke", "403"); n != 2 {
		t.Errorf("warden_api_requests_total{route=revoke,code=403} = %v, want 2", n)
	}
}

// TestChangesAreAudited: a change made through the API names the token.
func TestChangesAreAudited(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	w := f.do(req{method: "POST", path: "/v1/devices/dev-x/disable", token: "operator", body: `{"reason":"maintenance"}`})
	if w.Code != http.StatusOK {
		t.Fatalf("disable = %d %s", w.Code, w.Body)
	}
	var d Device
	decode(t, w, &d)
	if d.State != "disabled" || d.StateReason != "maintenance" {
		t.Errorf("disable answered %+v", d)
	}
	evs := f.audit.find("api.request", "done", "")
	if len(evs) != 1 || evs[0].Subject != "device:dev-x" || evs[0].Details["reason"] != "maintenance" ||
		!strings.HasPrefix(evs[0].Actor, "token:") || evs[0].Details["route"] != "POST /v1/devices/{id}/disable" {
		t.Errorf("audit of the change: %+v", evs)
	}
	// A refused change is audited as failed.
	f.do(req{method: "POST", path: "/v1/devices/dev-x/revoke", token: "operator"})
	w = f.do(req{method: "POST", path: "/v1/devices/dev-x/enable", token: "operator"})
	if w.Code != http.StatusBadRequest {
		t.Errorf("enable of a revoked device = %d %s, want 400", w.Code, w.Body)
	}
	if evs := f.audit.find("api.request", "failed", codeInvalid); len(evs) != 1 {
		t.Errorf("failed change audited %d times: %+v", len(evs), evs)
	}
}
