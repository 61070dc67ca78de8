package api

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/onboard"
	"github.com/warden-iot/warden/internal/store"
)

// noSecretIn fails if the audit events or the log hold secret, in any of
// the encodings it could leak in.
func (f *fixture) noSecretIn(t *testing.T, secret []byte) {
	t.Helper()
	forms := []string{string(secret), base64.StdEncoding.EncodeToString(secret), base64.RawURLEncoding.EncodeToString(secret)}
	f.audit.mu.Lock()
	evs, _ := json.Marshal(f.audit.events)
	f.audit.mu.Unlock()
	for _, s := range forms {
		if bytes.Contains(evs, []byte(s)) {
			t.Errorf("the audit events hold a secret: %s", evs)
		}
		if strings.Contains(f.logs.String(), s) {
			t.Errorf("the log holds a secret: %s", f.logs)
		}
	}
}

func TestPreregister(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	w := f.do(req{method: "POST", path: "/v1/enrollments", token: "operator", body: `{"device_id":"fab-1","model":"meter","tags":{"line":"7"}}`})
	if w.Code != http.StatusCreated || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("preregister = %d %q %s", w.Code, w.Header().Get("Content-Type"), w.Body)
	}
	file, err := enrollproto.ParseSecretFile(w.Body.Bytes())
	if err != nil {
		t.Fatalf("the answer is not a secret file: %v\n%s", err, w.Body)
	}
	// Byte for byte what the CLI writes, so the body can be stored as is.
	if b, _ := file.Marshal(); !bytes.Equal(b, w.Body.Bytes()) || file.DeviceID != "fab-1" {
		t.Errorf("answer %q, the file would be %q", w.Body, b)
	}
	f.noSecretIn(t, file.Secret)
	if evs := f.audit.find("api.request", "done", ""); len(evs) != 1 || evs[0].Subject != "device:fab-1" || !strings.HasPrefix(evs[0].Actor, "token:") {
		t.Errorf("audit %+v", evs)
	}

	// The secret enrolls the device, once.
	csr := csrFor(t, "fab-1")
	d, _, err := f.onboard.Enroll(context.Background(), onboard.Request{CSR: csr, Proof: enrollproto.Proof(file.Secret, "fab-1", csr), Via: "est"})
	if err != nil || d.Model != "meter" || d.Tags["line"] != "7" {
		t.Fatalf("enroll with the answered secret: %+v %v", d, err)
	}

	// Recovery of the registered device: a new secret, nothing else.
	w = f.do(req{method: "POST", path: "/v1/enrollments", token: "operator", body: `{"device_id":"fab-1","recovery":true}`})
	if w.Code != http.StatusCreated {
		t.Fatalf("recovery = %d %s", w.Code, w.Body)
	}
	if again, err := enrollproto.ParseSecretFile(w.Body.Bytes()); err != nil || bytes.Equal(again.Secret, file.Secret) {
		t.Errorf("recovery secret %v, %v", again, err)
	}

	if _, err := f.reg.Revoke(context.Background(), "dev-b1", "stolen"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		r    req
		want want
	}{
		{"preregistered or registered", req{body: `{"device_id":"fab-1"}`}, want{http.StatusConflict, codeConflict}},
		{"a registered device", req{body: `{"device_id":"dev-a1"}`}, want{http.StatusConflict, codeConflict}},
		{"a recovery with a model", req{body: `{"device_id":"dev-a1","recovery":true,"model":"x"}`}, want{http.StatusBadRequest, codeInvalid}},
		{"a recovery of nothing", req{body: `{"device_id":"nope","recovery":true}`}, want{http.StatusNotFound, codeNotFound}},
		{"a recovery of a revoked device", req{body: `{"device_id":"dev-b1","recovery":true}`}, want{http.StatusConflict, codeConflict}},
		{"bad ID", req{body: `{"device_id":"a b"}`}, want{http.StatusBadRequest, codeInvalid}},
		{"bad tags", req{body: `{"device_id":"fab-2","tags":{"Bad Key":"x"}}`}, want{http.StatusBadRequest, codeInvalid}},
		{"no body", req{}, want{http.StatusBadRequest, codeInvalid}},
		{"unknown field", req{body: `{"device_id":"fab-2","secret":"x"}`}, want{http.StatusBadRequest, codeInvalid}},
		{"viewer", req{body: `{"device_id":"fab-2"}`, token: "viewer"}, want{http.StatusForbidden, codeForbidden}},
		{"app", req{body: `{"device_id":"fab-2"}`, token: "app"}, want{http.StatusForbidden, codeForbidden}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.r.method, tc.r.path = "POST", "/v1/enrollments"
			if tc.r.token == "" {
				tc.r.token = "operator"
			}
			f.check(t, tc.r, tc.want)
		})
	}
}

func TestListAndWithdrawEnrollments(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	for _, id := range []string{"e-1", "e-2", "e-3"} {
		f.check(t, req{method: "POST", path: "/v1/enrollments", token: "operator", body: `{"device_id":"` + id + `"}`}, want{status: http.StatusCreated})
	}
	f.check(t, req{method: "POST", path: "/v1/claim-certs", token: "admin",
		body: jsonBody(t, ClaimCertRequest{Name: "line-1", CSR: csrFor(t, "line-1"), Allow: []string{"c-1", "c-2"}, Model: "meter"})}, want{status: http.StatusCreated})

	list := func(query string) EnrollmentList {
		t.Helper()
		var l EnrollmentList
		if err := json.Unmarshal(f.check(t, req{method: "GET", path: "/v1/enrollments" + query, token: "operator"}, want{status: http.StatusOK}), &l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	ids := func(l EnrollmentList) string {
		var out []string
		for _, e := range l.Enrollments {
			out = append(out, e.DeviceID)
		}
		return strings.Join(out, ",")
	}
	all := list("")
	if ids(all) != "c-1,c-2,e-1,e-2,e-3" || all.NextAfter != "" {
		t.Fatalf("enrollments %s next %q", ids(all), all.NextAfter)
	}
	for _, e := range all.Enrollments {
		if e.Tags == nil || e.UsedAt != nil || e.Serial != "" || e.CreatedAt.IsZero() {
			t.Errorf("enrollment %+v", e)
		}
		if want := map[bool]string{true: "claim", false: "secret"}[strings.HasPrefix(e.DeviceID, "c-")]; e.Method != want {
			t.Errorf("%s: method %q, want %q", e.DeviceID, e.Method, want)
		}
	}
	if l := list("?claim=line-1"); ids(l) != "c-1,c-2" || l.Enrollments[0].Model != "meter" || l.Enrollments[0].Claim != "line-1" {
		t.Errorf("claim filter: %+v", l)
	}
	p1 := list("?limit=2")
	p2 := list("?limit=2&after=" + p1.NextAfter)
	p3 := list("?limit=2&after=" + p2.NextAfter)
	if ids(p1) != "c-1,c-2" || ids(p2) != "e-1,e-2" || ids(p3) != "e-3" || p3.NextAfter != "" {
		t.Errorf("pages %s | %s | %s (next %q)", ids(p1), ids(p2), ids(p3), p3.NextAfter)
	}
	for _, q := range []string{"?limit=0", "?limit=1001", "?after=a/b", "?claim=a/b", "?unused=maybe", "?device=e-1", "?limit=1&limit=2"} {
		f.check(t, req{method: "GET", path: "/v1/enrollments" + q, token: "operator"}, want{http.StatusBadRequest, codeInvalid})
	}
	f.check(t, req{method: "GET", path: "/v1/enrollments", token: "viewer"}, want{http.StatusForbidden, codeForbidden})

	// Used enrollments stay; unused ones can be withdrawn.
	w := f.do(req{method: "POST", path: "/v1/enrollments", token: "operator", body: `{"device_id":"e-9"}`})
	file, err := enrollproto.ParseSecretFile(w.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	csr := csrFor(t, "e-9")
	if _, _, err := f.onboard.Enroll(context.Background(), onboard.Request{CSR: csr, Proof: enrollproto.Proof(file.Secret, "e-9", csr), Via: "est"}); err != nil {
		t.Fatal(err)
	}
	if l := list("?unused=true"); strings.Contains(ids(l), "e-9") {
		t.Errorf("unused lists a used enrollment: %s", ids(l))
	}
	if l := list("?after=e-3"); len(l.Enrollments) != 1 || l.Enrollments[0].UsedAt == nil || l.Enrollments[0].Serial == "" {
		t.Errorf("used enrollment %+v", l.Enrollments)
	}

	w = f.do(req{method: "DELETE", path: "/v1/enrollments/e-2", token: "operator"})
	if w.Code != http.StatusNoContent || w.Body.Len() != 0 {
		t.Fatalf("withdraw = %d %q", w.Code, w.Body)
	}
	if ids(list("?after=e-1&limit=1")) != "e-3" {
		t.Error("e-2 is still listed")
	}
	for _, tc := range []struct {
		path  string
		token string
		want  want
	}{
		{"/v1/enrollments/e-2", "operator", want{http.StatusNotFound, codeNotFound}},
		{"/v1/enrollments/e-9", "operator", want{http.StatusConflict, codeConflict}},
		{"/v1/enrollments/a%20b", "operator", want{http.StatusBadRequest, codeInvalid}},
		{"/v1/enrollments/e-3", "viewer", want{http.StatusForbidden, codeForbidden}},
		{"/v1/enrollments/e-3?force=1", "operator", want{http.StatusBadRequest, codeInvalid}},
	} {
		f.check(t, req{method: "DELETE", path: tc.path, token: tc.token}, tc.want)
	}
	if w := f.do(req{method: "DELETE", path: "/v1/enrollments/e-2", token: "operator"}); !strings.Contains(w.Body.String(), `enrollment \"e-2\" not found`) {
		t.Errorf("not-found text: %s", w.Body)
	}
	if w := f.do(req{method: "PUT", path: "/v1/enrollments/e-3", token: "operator"}); w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "DELETE" {
		t.Errorf("PUT = %d Allow %q", w.Code, w.Header().Get("Allow"))
	}
	if evs := f.audit.find("device.unregister", "done", ""); len(evs) != 1 || evs[0].Subject != "device:e-2" || !strings.HasPrefix(evs[0].Actor, "token:") {
		t.Errorf("unregister audit %+v", evs)
	}
}

func TestClaimCerts(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	csr := csrFor(t, "line-7")
	var out ClaimCertCreated
	if err := json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/claim-certs", token: "admin",
		body: jsonBody(t, ClaimCertRequest{Name: "line-7", CSR: csr, LifetimeSeconds: 86400, Allow: []string{"m-1", "m-2"}, Model: "meter", Tags: map[string]string{"line": "7"}})},
		want{status: http.StatusCreated}), &out); err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for rest := []byte(out.ChainPEM); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	parsed, _ := x509.ParseCertificateRequest(csr)
	if len(chain) != 2 || !chain[1].Equal(f.ca.Issuing()) || chain[0].CheckSignatureFrom(chain[1]) != nil ||
		len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != "urn:warden:claim:line-7" || !publicKeysEqual(chain[0].PublicKey, parsed.PublicKey) {
		t.Fatalf("chain %v", chain)
	}
	if cc := out.ClaimCert; cc.Name != "line-7" || cc.State != "active" || cc.Unused != 2 || cc.RevokedAt != nil ||
		cc.NotAfter.Sub(f.clk.Now()) > 86400e9 || cc.Serial == "" || len(cc.Fingerprint) != 64 {
		t.Errorf("claim cert %+v", cc)
	}

	for _, tc := range []struct {
		name string
		r    req
		want want
	}{
		{"name in use", req{path: "/v1/claim-certs", body: jsonBody(t, ClaimCertRequest{Name: "line-7", CSR: csrFor(t, "line-7")})}, want{http.StatusConflict, codeConflict}},
		{"bad name", req{path: "/v1/claim-certs", body: jsonBody(t, ClaimCertRequest{Name: "a/b", CSR: csrFor(t, "a")})}, want{http.StatusBadRequest, codeInvalid}},
		{"CSR of another name", req{path: "/v1/claim-certs", body: jsonBody(t, ClaimCertRequest{Name: "line-8", CSR: csrFor(t, "line-9")})}, want{http.StatusBadRequest, codeInvalid}},
		{"negative lifetime", req{path: "/v1/claim-certs", body: jsonBody(t, ClaimCertRequest{Name: "line-8", CSR: csrFor(t, "line-8"), LifetimeSeconds: -1})}, want{http.StatusBadRequest, codeInvalid}},
		{"bad allowed ID", req{path: "/v1/claim-certs", body: jsonBody(t, ClaimCertRequest{Name: "line-8", CSR: csrFor(t, "line-8"), Allow: []string{"ok", "not ok"}})}, want{http.StatusBadRequest, codeInvalid}},
		{"an allowed ID in use", req{path: "/v1/claim-certs", body: jsonBody(t, ClaimCertRequest{Name: "line-8", CSR: csrFor(t, "line-8"), Allow: []string{"dev-a1"}})}, want{http.StatusConflict, codeConflict}},
		{"operator", req{path: "/v1/claim-certs", token: "operator", body: jsonBody(t, ClaimCertRequest{Name: "line-8", CSR: csrFor(t, "line-8")})}, want{http.StatusForbidden, codeForbidden}},
		{"allow nothing", req{path: "/v1/claim-certs/line-7/allow", body: `{"allow":[]}`}, want{http.StatusBadRequest, codeInvalid}},
		{"allow twice", req{path: "/v1/claim-certs/line-7/allow", body: `{"allow":["m-2"]}`}, want{http.StatusConflict, codeConflict}},
		{"allow on nothing", req{path: "/v1/claim-certs/nope/allow", body: `{"allow":["m-3"]}`}, want{http.StatusNotFound, codeNotFound}},
		{"allow as operator", req{path: "/v1/claim-certs/line-7/allow", token: "operator", body: `{"allow":["m-3"]}`}, want{http.StatusForbidden, codeForbidden}},
		{"revoke nothing", req{path: "/v1/claim-certs/nope/revoke"}, want{http.StatusNotFound, codeNotFound}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.r.method = "POST"
			if tc.r.token == "" {
				tc.r.token = "admin"
			}
			f.check(t, tc.r, tc.want)
		})
	}
	// A certificate whose allow-list could not be stored is revoked again.
	var list ClaimCertList
	_ = json.Unmarshal(f.check(t, req{method: "GET", path: "/v1/claim-certs", token: "admin"}, want{status: http.StatusOK}), &list)
	if len(list.ClaimCerts) != 2 || list.ClaimCerts[0].Name != "line-7" || list.ClaimCerts[1].Name != "line-8" || list.ClaimCerts[1].State != "revoked" {
		t.Fatalf("claim certs %+v", list)
	}

	var allowed ClaimCert
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/claim-certs/line-7/allow", token: "admin", body: `{"allow":["m-3","m-4"],"model":"meter"}`},
		want{status: http.StatusOK}), &allowed)
	if allowed.Unused != 4 {
		t.Errorf("after allow: %+v", allowed)
	}
	var revoked ClaimCert
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/claim-certs/line-7/revoke", token: "admin", body: `{"reason":"line closed"}`},
		want{status: http.StatusOK}), &revoked)
	if revoked.State != "revoked" || revoked.RevokedAt == nil || revoked.Reason != "line closed" || revoked.Unused != 0 {
		t.Errorf("revoked %+v", revoked)
	}
	if es, _ := f.st.ListEnrollments(context.Background(), store.EnrollmentFilter{Claim: "line-7"}); len(es) != 0 {
		t.Errorf("the revoked certificate's allow-list stayed: %+v", es)
	}
	f.check(t, req{method: "POST", path: "/v1/claim-certs/line-7/allow", token: "admin", body: `{"allow":["m-5"]}`}, want{http.StatusConflict, codeConflict})

	for action, n := range map[string]int{"claim-cert.create": 1, "claim-cert.allow": 1, "claim-cert.revoke": 1} {
		evs := f.audit.find(action, "done", "")
		if len(evs) != n || evs[0].Subject != "claim:line-7" || !strings.HasPrefix(evs[0].Actor, "token:") {
			t.Errorf("%s audited %+v", action, evs)
		}
	}
	if evs := f.audit.find("claim-cert.revoke", "done", ""); evs[0].Reason != "line closed" {
		t.Errorf("revoke audited %+v", evs)
	}
}

func TestTokens(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	var tc TokenCreated
	if err := json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/tokens", token: "admin", body: `{"role":"viewer","user":"vera","note":"grafana","ttl_seconds":3600}`},
		want{status: http.StatusCreated}), &tc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tc.Secret, "wdn_"+tc.ID+"_") || tc.Role != "viewer" || tc.User != "vera" || tc.Note != "grafana" || tc.State != "active" ||
		tc.ExpiresAt == nil || tc.ExpiresAt.Sub(tc.CreatedAt) != 3600e9 || tc.LastUsedAt != nil || tc.RevokedAt != nil {
		t.Fatalf("created %+v", tc)
	}
	secret := strings.TrimPrefix(tc.Secret, "wdn_"+tc.ID+"_")
	f.noSecretIn(t, []byte(secret))
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: "raw:Bearer " + tc.Secret}); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"user":"vera"`) {
		t.Fatalf("the new token does not work: %d %s", w.Code, w.Body)
	}

	body := f.check(t, req{method: "GET", path: "/v1/tokens", token: "admin"}, want{status: http.StatusOK})
	var list TokenList
	_ = json.Unmarshal(body, &list)
	// The fixture's clock stands still: every token is as new as the others.
	i := slices.IndexFunc(list.Tokens, func(x Token) bool { return x.ID == tc.ID })
	if len(list.Tokens) != len(tokenNames)+1 || i < 0 || list.Tokens[i].LastUsedAt == nil || list.Tokens[i].Note != "grafana" {
		t.Errorf("tokens %+v", list.Tokens)
	}
	if bytes.Contains(body, []byte(secret)) || bytes.Contains(body, []byte(`"hash"`)) {
		t.Errorf("the list shows a secret or a hash: %s", body)
	}

	for _, c := range []struct {
		name string
		r    req
		want want
	}{
		{"unknown role", req{path: "/v1/tokens", body: `{"role":"root","user":"x"}`}, want{http.StatusBadRequest, codeInvalid}},
		{"no user", req{path: "/v1/tokens", body: `{"role":"viewer"}`}, want{http.StatusBadRequest, codeInvalid}},
		{"negative lifetime", req{path: "/v1/tokens", body: `{"role":"viewer","user":"x","ttl_seconds":-5}`}, want{http.StatusBadRequest, codeInvalid}},
		{"operator", req{path: "/v1/tokens", token: "operator", body: `{"role":"admin","user":"x"}`}, want{http.StatusForbidden, codeForbidden}},
		{"revoke unknown", req{path: "/v1/tokens/0123456789abcdef/revoke"}, want{http.StatusNotFound, codeNotFound}},
		{"revoke as operator", req{path: "/v1/tokens/" + tc.ID + "/revoke", token: "operator"}, want{http.StatusForbidden, codeForbidden}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.r.method = "POST"
			if c.r.token == "" {
				c.r.token = "admin"
			}
			f.check(t, c.r, c.want)
		})
	}
	// A whole token pasted as the ID is refused and repeated nowhere.
	w := f.do(req{method: "POST", path: "/v1/tokens/" + tc.Secret + "/revoke", token: "admin"})
	if w.Code != http.StatusBadRequest || strings.Contains(w.Body.String(), secret) {
		t.Errorf("a pasted token: %d %s", w.Code, w.Body)
	}
	w = f.do(req{method: "POST", path: "/v1/tokens/" + tc.Secret + "/revoke", token: "viewer"})
	if w.Code != http.StatusForbidden {
		t.Errorf("a pasted token as viewer: %d %s", w.Code, w.Body)
	}
	f.noSecretIn(t, []byte(secret))

	var revoked Token
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/tokens/" + tc.ID + "/revoke", token: "admin"}, want{status: http.StatusOK}), &revoked)
	if revoked.State != "revoked" || revoked.RevokedAt == nil {
		t.Errorf("revoked %+v", revoked)
	}
	if w := f.do(req{method: "GET", path: "/v1/whoami", token: "raw:Bearer " + tc.Secret}); w.Code != http.StatusUnauthorized {
		t.Errorf("a revoked token: %d", w.Code)
	}
	evs := f.audit.find("api.request", "done", "")
	if len(evs) != 2 || evs[0].Subject != "token:"+tc.ID || evs[0].Details["token_role"] != "viewer" || evs[1].Subject != "token:"+tc.ID {
		t.Errorf("audit %+v", evs)
	}
	if len(f.audit.find("token.create", "done", "")) != len(tokenNames)+1 || len(f.audit.find("token.revoke", "done", "")) != 1 {
		t.Error("the token service's own events are missing")
	}
}

func TestQuarantineList(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	var list QuarantineList
	_ = json.Unmarshal(f.check(t, req{method: "GET", path: "/v1/quarantine", token: "viewer"}, want{status: http.StatusOK}), &list)
	if len(list.Quarantines) != 1 || list.Quarantines[0].DeviceID != "dev-a2" || list.Quarantines[0].Reason != "test" {
		t.Fatalf("quarantines %+v", list)
	}
	f.check(t, req{method: "GET", path: "/v1/quarantine", token: "app"}, want{http.StatusForbidden, codeForbidden})
	f.check(t, req{method: "GET", path: "/v1/quarantine?device=dev-a2", token: "viewer"}, want{http.StatusBadRequest, codeInvalid})
	f.check(t, req{method: "POST", path: "/v1/devices/dev-a2/release", token: "operator"}, want{status: http.StatusOK})
	if body := f.check(t, req{method: "GET", path: "/v1/quarantine", token: "viewer"}, want{status: http.StatusOK}); strings.TrimSpace(string(body)) != `{"quarantines":[]}` {
		t.Errorf("after the release: %s", body)
	}
}

// A server without the onboarding services answers 503 on their routes,
// and nothing else.
func TestOnboardingUnavailable(t *testing.T) {
	f := newFixture(t, fixtureOptions{tune: func(o *Options) {
		o.Onboarding, o.Claims, o.Enrollments, o.TokenAdmin, o.Quarantines = nil, nil, nil, nil, nil
	}})
	for _, r := range []req{
		{method: "POST", path: "/v1/enrollments", body: `{"device_id":"x"}`},
		{method: "GET", path: "/v1/enrollments"},
		{method: "DELETE", path: "/v1/enrollments/x"},
		{method: "GET", path: "/v1/claim-certs"},
		{method: "POST", path: "/v1/claim-certs", body: `{"name":"x","csr":"AAAA"}`},
		{method: "POST", path: "/v1/claim-certs/x/allow", body: `{"allow":["y"]}`},
		{method: "POST", path: "/v1/claim-certs/x/revoke"},
		{method: "GET", path: "/v1/tokens"},
		{method: "POST", path: "/v1/tokens", body: `{"role":"viewer","user":"x"}`},
		{method: "POST", path: "/v1/tokens/0123456789abcdef/revoke"},
		{method: "GET", path: "/v1/quarantine"},
	} {
		r.token = "admin"
		if w := f.do(r); w.Code != http.StatusServiceUnavailable {
			t.Errorf("%s %s = %d %s, want 503", r.method, r.path, w.Code, w.Body)
		}
	}
	f.check(t, req{method: "GET", path: "/v1/whoami", token: "admin"}, want{status: http.StatusOK})
}

// The admin socket's handler serves the same routes without a token, as
// the operator.
func TestLocalHandler(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	do := func(method, path, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		if body != "" {
			r.Header.Set("Content-Type", "application/json")
		}
		w := httptest.NewRecorder()
		f.api.LocalHandler().ServeHTTP(w, r)
		return w
	}
	if w := do("GET", "/v1/whoami", ""); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"token_id":"local"`) {
		t.Errorf("whoami on the socket: %d %s", w.Code, w.Body)
	}
	if w := do("POST", "/v1/tokens", `{"role":"app","user":"alice"}`); w.Code != http.StatusCreated {
		t.Errorf("token on the socket: %d %s", w.Code, w.Body)
	}
	if w := do("DELETE", "/v1/enrollments/nope", ""); w.Code != http.StatusNotFound {
		t.Errorf("withdraw on the socket: %d %s", w.Code, w.Body)
	}
	if w := do("DELETE", "/v1/devices", ""); w.Code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /v1/devices on the socket: %d", w.Code)
	}
	if evs := f.audit.find("api.request", "done", ""); len(evs) != 1 || evs[0].Actor != "operator" || evs[0].Details["route"] != "POST /v1/tokens" {
		t.Errorf("socket audit %+v", evs)
	}
}

// FuzzParseEnrollmentQuery feeds raw query strings of GET
// /v1/enrollments to parseEnrollmentQuery: it never panics, refuses only
// with a 400, and an accepted filter is one the store takes as it is.
func FuzzParseEnrollmentQuery(f *testing.F) {
	for _, s := range []string{
		"",
		"claim=line-7&unused=true&after=dev-1&limit=1000",
		"unused=1",
		"unused=maybe",
		"limit=0",
		"limit=0x10",
		"after=a%2Fb",
		"claim=%00",
		"claim=a&claim=b",
		"device=x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return // net/http answers a query it cannot parse before any route
		}
		flt, err := parseEnrollmentQuery(q)
		if err != nil {
			if e := classify(err); e.status != http.StatusBadRequest || e.code != codeInvalid {
				t.Fatalf("parseEnrollmentQuery(%q): %v answers %d %s, want 400 invalid", raw, err, e.status, e.code)
			}
			return
		}
		if flt.Limit < 1 || flt.Limit > store.MaxListLimit {
			t.Fatalf("parseEnrollmentQuery(%q): limit %d", raw, flt.Limit)
		}
		if flt.After != "" && identity.ValidateDeviceID(flt.After) != nil {
			t.Fatalf("parseEnrollmentQuery(%q): after %q is not a device ID", raw, flt.After)
		}
		if flt.Claim != "" && identity.ValidateClaimName(flt.Claim) != nil {
			t.Fatalf("parseEnrollmentQuery(%q): claim %q is not a claim name", raw, flt.Claim)
		}
	})
}

// FuzzValidTokenID: what validTokenID accepts is exactly what a token's
// ID part looks like, so nothing else is echoed or audited.
func FuzzValidTokenID(f *testing.F) {
	for _, s := range []string{"0123456789abcdef", "0123456789ABCDEF", "0123456789abcde", "wdn_0123456789abcdef_x", "", "g123456789abcdef"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := len(s) == 16 && strings.Trim(s, "0123456789abcdef") == ""
		if got := validTokenID(s); got != want {
			t.Fatalf("validTokenID(%q) = %v, want %v", s, got, want)
		}
	})
}
