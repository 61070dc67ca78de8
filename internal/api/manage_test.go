package api

import (
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/rotation"
	"github.com/warden-iot/warden/internal/store"
)

// want is what one request of a table must answer: a status and, for an
// error, its code.
type want struct {
	status int
	code   string
}

// check makes r and compares the answer with w, returning it.
func (f *fixture) check(t *testing.T, r req, w want) []byte {
	t.Helper()
	got := f.do(r)
	if got.Code != w.status {
		t.Fatalf("%s %s as %s = %d %s, want %d", r.method, r.path, r.token, got.Code, got.Body, w.status)
	}
	if w.code != "" {
		if c := errorCode(t, got); c != w.code {
			t.Fatalf("%s %s: error code %q, want %q (%s)", r.method, r.path, c, w.code, got.Body)
		}
	}
	return got.Body.Bytes()
}

// parseCertPEM returns the first certificate of a PEM text.
func parseCertPEM(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// deviceBody is a DeviceRequest with a fresh CSR for id.
func deviceBody(t *testing.T, id string, extra map[string]any) string {
	t.Helper()
	body := map[string]any{"id": id, "csr": csrFor(t, id)}
	for k, v := range extra {
		body[k] = v
	}
	return jsonBody(t, body)
}

func TestAddDevice(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	csr := csrFor(t, "new-1")
	body := jsonBody(t, DeviceRequest{ID: "new-1", Model: "meter", Tags: map[string]string{"site": "oslo"}, CSR: csr})
	var out DeviceCreated
	if err := json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/devices", token: "operator", body: body}, want{status: http.StatusCreated}), &out); err != nil {
		t.Fatal(err)
	}
	cert := parseCertPEM(t, out.CertificatePEM)
	parsed, err := x509.ParseCertificateRequest(csr)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "new-1" || !publicKeysEqual(cert.PublicKey, parsed.PublicKey) {
		t.Errorf("certificate for %q with another key", cert.Subject.CommonName)
	}
	if d := f.device("new-1"); out.Device.ID != "new-1" || out.Device.Model != "meter" || out.Device.Tags["site"] != "oslo" ||
		out.Device.State != "active" || !out.Device.CreatedAt.Equal(d.CreatedAt) {
		t.Errorf("answered %+v, stored %+v", out.Device, d)
	}
	if evs := f.audit.find("api.request", "done", ""); len(evs) != 1 || evs[0].Subject != "device:new-1" || evs[0].Details["route"] != "POST /v1/devices" {
		t.Errorf("audit: %+v", evs)
	}

	for _, tc := range []struct {
		name string
		r    req
		want want
	}{
		{"exists", req{body: deviceBody(t, "dev-a1", nil)}, want{http.StatusConflict, codeConflict}},
		{"bad id", req{body: `{"id":"bad/id","csr":"AAAA"}`}, want{http.StatusBadRequest, codeInvalid}},
		{"CSR of another ID", req{body: jsonBody(t, DeviceRequest{ID: "new-2", CSR: csrFor(t, "new-3")})}, want{http.StatusBadRequest, codeInvalid}},
		{"garbage CSR", req{body: `{"id":"new-2","csr":"AAAA"}`}, want{http.StatusBadRequest, codeInvalid}},
		{"no body", req{}, want{http.StatusBadRequest, codeInvalid}},
		{"unknown field", req{body: `{"id":"new-2","csr":"AAAA","key":"x"}`}, want{http.StatusBadRequest, codeInvalid}},
		{"not JSON", req{body: `{"id":"new-2"}`, contentType: "text/plain"}, want{http.StatusUnsupportedMediaType, codeUnsupportedType}},
		{"too large", req{body: `{"id":"` + strings.Repeat("a", MaxBody) + `"}`}, want{http.StatusRequestEntityTooLarge, codeTooLarge}},
		{"viewer", req{body: deviceBody(t, "new-2", nil), token: "viewer"}, want{http.StatusForbidden, codeForbidden}},
		{"app", req{body: deviceBody(t, "new-2", nil), token: "app"}, want{http.StatusForbidden, codeForbidden}},
		{"a certificate that is not PEM", req{body: deviceBody(t, "new-2", map[string]any{"certificate_pem": "nope"})}, want{http.StatusBadRequest, codeInvalid}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.r.method, tc.r.path = "POST", "/v1/devices"
			if tc.r.token == "" {
				tc.r.token = "admin"
			}
			f.check(t, tc.r, tc.want)
		})
	}
	if _, err := f.st.GetDevice(t.Context(), "new-2"); err == nil {
		t.Error("a refused request registered new-2")
	}
}

// Provisioning: the certificate first, the registration after delivery.
func TestIssueThenRegister(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	csr := csrFor(t, "prov-1")
	body := jsonBody(t, DeviceRequest{ID: "prov-1", Model: "meter", CSR: csr})
	var is admin.Issued
	if err := json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/device-certificates", token: "operator", body: body}, want{status: http.StatusCreated}), &is); err != nil {
		t.Fatal(err)
	}
	if is.ID != "prov-1" || parseCertPEM(t, is.CertificatePEM).Subject.CommonName != "prov-1" {
		t.Fatalf("issued %+v", is)
	}
	// Nothing is registered yet.
	f.check(t, req{method: "GET", path: "/v1/devices/prov-1", token: "operator"}, want{http.StatusNotFound, codeNotFound})
	f.check(t, req{method: "POST", path: "/v1/device-certificates", token: "operator",
		body: jsonBody(t, DeviceRequest{ID: "prov-1", CSR: csr, CertificatePEM: is.CertificatePEM})}, want{http.StatusBadRequest, codeInvalid})

	// A certificate issued for another CSR of the same ID does not register.
	var other admin.Issued
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/device-certificates", token: "operator",
		body: jsonBody(t, DeviceRequest{ID: "prov-1", CSR: csrFor(t, "prov-1")})}, want{status: http.StatusCreated}), &other)
	f.check(t, req{method: "POST", path: "/v1/devices", token: "operator",
		body: jsonBody(t, DeviceRequest{ID: "prov-1", CSR: csr, CertificatePEM: other.CertificatePEM})}, want{http.StatusBadRequest, codeInvalid})

	var out DeviceCreated
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/devices", token: "operator",
		body: jsonBody(t, DeviceRequest{ID: "prov-1", Model: "meter", CSR: csr, CertificatePEM: is.CertificatePEM})}, want{status: http.StatusCreated}), &out)
	if out.Device.ID != "prov-1" || out.Device.Model != "meter" || out.CertificatePEM != is.CertificatePEM {
		t.Errorf("registered %+v", out)
	}
	info, err := f.reg.Device(t.Context(), "prov-1")
	if err != nil || len(info.Credentials) != 1 || info.Credentials[0].Serial != pki.SerialHex(parseCertPEM(t, is.CertificatePEM).SerialNumber) {
		t.Errorf("stored %+v, %v", info, err)
	}
	// Issuing for a registered ID is refused.
	f.check(t, req{method: "POST", path: "/v1/device-certificates", token: "operator", body: deviceBody(t, "prov-1", nil)}, want{http.StatusConflict, codeConflict})
}

func TestEnvelopeAndRekey(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	var b admin.EnvelopeBundle
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/devices/dev-x/envelope", token: "operator", body: `{"suite":"ccm-8","required":true}`},
		want{status: http.StatusCreated}), &b)
	if b.DeviceID != "dev-x" || b.Suite != "ccm-8" || b.Epoch != 0 || !b.Required || len(b.Secret) != 16 {
		t.Errorf("bundle %+v", b)
	}
	for _, e := range f.audit.find("api.request", "done", "") {
		if strings.Contains(e.Details["secret"], base64.StdEncoding.EncodeToString(b.Secret)) {
			t.Errorf("the secret was audited: %+v", e)
		}
	}
	if strings.Contains(f.logs.String(), base64.StdEncoding.EncodeToString(b.Secret)) {
		t.Error("the secret was logged")
	}
	var signed admin.EnvelopeBundle
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/devices/dev-a3/envelope", token: "admin", body: `{"suite":"sign-p256"}`},
		want{status: http.StatusCreated}), &signed)
	if signed.Suite != "sign-p256" || signed.Secret != nil {
		t.Errorf("sign-p256 bundle %+v", signed)
	}

	for _, tc := range []struct {
		name string
		r    req
		want want
	}{
		{"unknown suite", req{method: "POST", path: "/v1/devices/dev-a1/envelope", body: `{"suite":"rot13"}`}, want{http.StatusBadRequest, codeInvalid}},
		{"no body", req{method: "POST", path: "/v1/devices/dev-a1/envelope"}, want{http.StatusBadRequest, codeInvalid}},
		{"no device", req{method: "POST", path: "/v1/devices/nope/envelope", body: `{"suite":"ccm-8"}`}, want{http.StatusNotFound, codeNotFound}},
		{"viewer", req{method: "POST", path: "/v1/devices/dev-a1/envelope", body: `{"suite":"ccm-8"}`, token: "viewer"}, want{http.StatusForbidden, codeForbidden}},
		{"rekey without an envelope key", req{method: "POST", path: "/v1/devices/dev-a1/rekey"}, want{http.StatusNotFound, codeNotFound}},
		{"rekey with a body", req{method: "POST", path: "/v1/devices/dev-x/rekey", body: `{"epoch":7}`}, want{http.StatusBadRequest, codeInvalid}},
		{"rekey as viewer", req{method: "POST", path: "/v1/devices/dev-x/rekey", token: "viewer"}, want{http.StatusForbidden, codeForbidden}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.r.token == "" {
				tc.r.token = "operator"
			}
			f.check(t, tc.r, tc.want)
		})
	}
	if w := f.do(req{method: "POST", path: "/v1/devices/nope/envelope", token: "operator", body: `{"suite":"ccm-8"}`}); !strings.Contains(w.Body.String(), `device \"nope\" not found`) {
		t.Errorf("not-found text: %s", w.Body)
	}

	for _, wantEpoch := range []uint32{1, 1} { // a pending rekey is sent again, not replaced
		var r RekeyResult
		_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/devices/dev-x/rekey", token: "operator"}, want{status: http.StatusOK}), &r)
		if r.Epoch != wantEpoch {
			t.Errorf("rekey epoch %d, want %d", r.Epoch, wantEpoch)
		}
	}
}

func TestServices(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	if body := f.check(t, req{method: "GET", path: "/v1/services", token: "viewer"}, want{status: http.StatusOK}); strings.TrimSpace(string(body)) != `{"services":[]}` {
		t.Errorf("no services: %s", body)
	}
	csr := csrFor(t, "billing")
	var is admin.Issued
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/services", token: "admin", body: jsonBody(t, ServiceRequest{Name: "billing", Role: "reader", CSR: csr})},
		want{status: http.StatusCreated}), &is)
	if cert := parseCertPEM(t, is.CertificatePEM); is.ID != "billing" || len(cert.URIs) != 1 || cert.URIs[0].String() != "urn:warden:service:billing" {
		t.Errorf("issued %+v", is)
	}
	for _, tc := range []struct {
		name string
		r    req
		want want
	}{
		{"operator", req{method: "POST", path: "/v1/services", token: "operator", body: jsonBody(t, ServiceRequest{Name: "ops", Role: "reader", CSR: csrFor(t, "ops")})}, want{http.StatusForbidden, codeForbidden}},
		{"exists", req{method: "POST", path: "/v1/services", body: jsonBody(t, ServiceRequest{Name: "billing", Role: "reader", CSR: csrFor(t, "billing")})}, want{http.StatusConflict, codeConflict}},
		{"a device's name", req{method: "POST", path: "/v1/services", body: jsonBody(t, ServiceRequest{Name: "dev-a1", Role: "reader", CSR: csrFor(t, "dev-a1")})}, want{http.StatusConflict, codeConflict}},
		{"unknown role", req{method: "POST", path: "/v1/services", body: jsonBody(t, ServiceRequest{Name: "x", Role: "god", CSR: csrFor(t, "x")})}, want{http.StatusBadRequest, codeInvalid}},
		{"revoke unknown", req{method: "POST", path: "/v1/services/nope/revoke"}, want{http.StatusNotFound, codeNotFound}},
		{"revoke as operator", req{method: "POST", path: "/v1/services/billing/revoke", token: "operator"}, want{http.StatusForbidden, codeForbidden}},
		{"revoke with a bad reason", req{method: "POST", path: "/v1/services/billing/revoke", body: `{"reason":"a\u0000b"}`}, want{http.StatusBadRequest, codeInvalid}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.r.token == "" {
				tc.r.token = "admin"
			}
			f.check(t, tc.r, tc.want)
		})
	}
	var list ServiceList
	_ = json.Unmarshal(f.check(t, req{method: "GET", path: "/v1/services", token: "operator"}, want{status: http.StatusOK}), &list)
	if len(list.Services) != 1 || list.Services[0].Name != "billing" || list.Services[0].Role != "reader" || list.Services[0].State != "active" {
		t.Errorf("services %+v", list)
	}
	var s Service
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/services/billing/revoke", token: "admin", body: `{"reason":"retired"}`}, want{status: http.StatusOK}), &s)
	if s.State != "revoked" || s.StateReason != "retired" {
		t.Errorf("revoked %+v", s)
	}
	if evs := f.audit.find("api.request", "done", ""); len(evs) != 2 || evs[1].Subject != "service:billing" || evs[1].Details["reason"] != "retired" {
		t.Errorf("audit %+v", evs)
	}
}

func TestCreateRolloutAndItsDevices(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	// The fixture's rollout holds every sensor: a second one finds none.
	if body := f.check(t, req{method: "POST", path: "/v1/rollouts", token: "operator", body: `{"image":"` + f.image[:12] + `"}`},
		want{http.StatusBadRequest, codeInvalid}); !strings.Contains(string(body), "another unfinished rollout") {
		t.Errorf("busy devices: %s", body)
	}
	f.check(t, req{method: "POST", path: "/v1/rollouts/" + f.rollout + "/abort", token: "operator"}, want{status: http.StatusOK})

	var out admin.RolloutCreated
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/rollouts", token: "operator", body: `{"image":"` + f.image + `","stages":[50,100],"tags":{"site":"lyon"}}`},
		want{status: http.StatusCreated}), &out)
	if out.Rollout.State != store.RolloutRunning || out.Summary.Members != len(fixtureDevices) || len(out.Rollout.Stages) != 2 {
		t.Errorf("rollout %+v summary %+v", out.Rollout, out.Summary)
	}

	for _, tc := range []struct {
		name string
		r    req
		want want
	}{
		{"stages that shrink", req{method: "POST", path: "/v1/rollouts", body: `{"image":"` + f.image + `","stages":[50,20]}`}, want{http.StatusBadRequest, codeInvalid}},
		{"unknown image", req{method: "POST", path: "/v1/rollouts", body: `{"image":"` + strings.Repeat("0", 64) + `"}`}, want{http.StatusNotFound, codeNotFound}},
		{"unknown field", req{method: "POST", path: "/v1/rollouts", body: `{"image":"x","speed":3}`}, want{http.StatusBadRequest, codeInvalid}},
		{"viewer", req{method: "POST", path: "/v1/rollouts", body: `{"image":"` + f.image + `"}`, token: "viewer"}, want{http.StatusForbidden, codeForbidden}},
		{"devices: bad limit", req{method: "GET", path: "/v1/rollouts/" + out.Rollout.ID + "/devices?limit=0"}, want{http.StatusBadRequest, codeInvalid}},
		{"devices: bad after", req{method: "GET", path: "/v1/rollouts/" + out.Rollout.ID + "/devices?after=a/b"}, want{http.StatusBadRequest, codeInvalid}},
		{"devices: unknown parameter", req{method: "GET", path: "/v1/rollouts/" + out.Rollout.ID + "/devices?stage=1"}, want{http.StatusBadRequest, codeInvalid}},
		{"devices: unknown rollout", req{method: "GET", path: "/v1/rollouts/nope/devices"}, want{http.StatusNotFound, codeNotFound}},
		{"devices: app", req{method: "GET", path: "/v1/rollouts/" + out.Rollout.ID + "/devices", token: "app"}, want{http.StatusForbidden, codeForbidden}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.r.token == "" {
				tc.r.token = "operator"
			}
			f.check(t, tc.r, tc.want)
		})
	}

	// Paged by device ID: every member once, in order.
	var seen []string
	after := ""
	for range len(fixtureDevices) + 1 {
		var page RolloutDeviceList
		_ = json.Unmarshal(f.check(t, req{method: "GET", path: "/v1/rollouts/" + out.Rollout.ID + "/devices?limit=2&after=" + after, token: "viewer"},
			want{status: http.StatusOK}), &page)
		for _, d := range page.Devices {
			seen = append(seen, d.DeviceID)
			if d.RolloutID != out.Rollout.ID || d.State == "" {
				t.Errorf("member %+v", d)
			}
		}
		if after = page.NextAfter; after == "" {
			break
		}
	}
	if len(seen) != len(fixtureDevices) || !strings.HasPrefix(strings.Join(seen, ","), "dev-a1,dev-a2,dev-a3,dev-b1") {
		t.Errorf("paged members %v", seen)
	}
}

func TestUploadImage(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	img, stmt := f.signedImage("2.0.0+1", 2)
	upload := func(token, contentType, statement string, body []byte) req {
		r := req{method: "POST", path: "/v1/firmware/images", token: token, body: string(body), contentType: contentType}
		if statement != "" {
			r.header = http.Header{StatementHeader: {statement}}
		}
		return r
	}
	good := base64.StdEncoding.EncodeToString(stmt)
	_, other := f.signedImage("2.0.1+1", 3)
	for _, tc := range []struct {
		name string
		r    req
		want want
	}{
		{"JSON", upload("operator", "application/json", good, img), want{http.StatusUnsupportedMediaType, codeUnsupportedType}},
		{"no statement", upload("operator", "application/octet-stream", "", img), want{http.StatusBadRequest, codeInvalid}},
		{"statement not base64", upload("operator", "application/octet-stream", "%%%", img), want{http.StatusBadRequest, codeInvalid}},
		{"another image's statement", upload("operator", "application/octet-stream", base64.StdEncoding.EncodeToString(other), img), want{http.StatusUnprocessableEntity, codeRefused}},
		{"tampered image", upload("operator", "application/octet-stream", good, append(append([]byte{}, img[:len(img)-1]...), img[len(img)-1]^1)), want{http.StatusUnprocessableEntity, codeRefused}},
		{"viewer", upload("viewer", "application/octet-stream", good, img), want{http.StatusForbidden, codeForbidden}},
	} {
		t.Run(tc.name, func(t *testing.T) { f.check(t, tc.r, tc.want) })
	}
	var out store.FirmwareImage
	_ = json.Unmarshal(f.check(t, upload("operator", "application/octet-stream", good, img), want{status: http.StatusCreated}), &out)
	if out.Version != "2.0.0+1" || out.Model != "sensor" || out.Size != int64(len(img)) {
		t.Errorf("stored %+v", out)
	}
	var list ImageList
	_ = json.Unmarshal(f.check(t, req{method: "GET", path: "/v1/firmware/images?model=sensor", token: "viewer"}, want{status: http.StatusOK}), &list)
	if len(list.Images) != 2 {
		t.Errorf("images %+v", list.Images)
	}
	if evs := f.audit.find("api.request", "done", ""); len(evs) != 1 || evs[0].Subject != "firmware:"+out.SHA256 || evs[0].Details["version"] != "2.0.0+1" {
		t.Errorf("audit %+v", evs)
	}
	// A refused upload is audited under the release its statement claims.
	otherStmt, err := firmware.ParseStatement(other)
	if err != nil {
		t.Fatal(err)
	}
	claimed := "firmware:" + hex.EncodeToString(otherStmt.Statement.ImageSHA256[:])
	var refused []audit.Event
	for _, ev := range f.audit.find("api.request", "failed", "") {
		if ev.Details["route"] == "POST /v1/firmware/images" {
			refused = append(refused, ev)
		}
	}
	found := false
	for _, ev := range refused {
		if ev.Subject == "" || ev.Subject == "firmware:" {
			t.Errorf("a refused upload was audited without a subject: %+v", ev)
		}
		if ev.Subject == claimed && ev.Details["claimed"] == "true" && ev.Details["version"] == "2.0.1+1" && ev.Details["model"] == "sensor" {
			found = true
		}
	}
	if !found {
		t.Errorf("the upload with another image's statement was not audited as %s: %+v", claimed, refused)
	}
}

func TestReleaseKeys(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	var keys KeyList
	_ = json.Unmarshal(f.check(t, req{method: "GET", path: "/v1/firmware/keys", token: "viewer"}, want{status: http.StatusOK}), &keys)
	if len(keys.Keys) != 1 || keys.Keys[0].Revoked() {
		t.Fatalf("keys %+v", keys)
	}
	pub := releaseKeyPEM(t)
	var k store.ReleaseKey
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/firmware/keys", token: "admin", body: jsonBody(t, TrustRequest{PublicKeyPEM: string(pub), Name: "ci"})},
		want{status: http.StatusCreated}), &k)
	if len(k.ID) != 64 || k.Name != "ci" || k.Revoked() {
		t.Errorf("trusted %+v", k)
	}
	for _, tc := range []struct {
		name string
		r    req
		want want
	}{
		{"operator", req{method: "POST", path: "/v1/firmware/keys", token: "operator", body: jsonBody(t, TrustRequest{PublicKeyPEM: string(pub)})}, want{http.StatusForbidden, codeForbidden}},
		{"not a key", req{method: "POST", path: "/v1/firmware/keys", body: `{"public_key_pem":"nope"}`}, want{http.StatusBadRequest, codeInvalid}},
		{"revoke unknown", req{method: "POST", path: "/v1/firmware/keys/" + strings.Repeat("0", 64) + "/revoke"}, want{http.StatusNotFound, codeNotFound}},
		{"revoke with a body", req{method: "POST", path: "/v1/firmware/keys/" + k.ID + "/revoke", body: `{"reason":"x"}`}, want{http.StatusBadRequest, codeInvalid}},
		{"revoke as operator", req{method: "POST", path: "/v1/firmware/keys/" + k.ID + "/revoke", token: "operator"}, want{http.StatusForbidden, codeForbidden}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.r.token == "" {
				tc.r.token = "admin"
			}
			f.check(t, tc.r, tc.want)
		})
	}
	var revoked store.ReleaseKey
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/firmware/keys/" + k.ID + "/revoke", token: "admin"}, want{status: http.StatusOK}), &revoked)
	if revoked.ID != k.ID || !revoked.Revoked() {
		t.Errorf("revoked %+v", revoked)
	}
	// Trust does not come back.
	f.check(t, req{method: "POST", path: "/v1/firmware/keys", token: "admin", body: jsonBody(t, TrustRequest{PublicKeyPEM: string(pub)})}, want{http.StatusUnprocessableEntity, codeRefused})
}

func TestCARoutes(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	current := f.ca.Issuers()[0].Fingerprint
	for _, tc := range []struct {
		name string
		r    req
		want want
	}{
		{"rotate with a negative grace period", req{method: "POST", path: "/v1/ca/rotate", body: `{"grace_seconds":-1}`}, want{http.StatusBadRequest, codeInvalid}},
		{"rotate as operator", req{method: "POST", path: "/v1/ca/rotate", body: `{"grace_seconds":60}`, token: "operator"}, want{http.StatusForbidden, codeForbidden}},
		{"retire the current one", req{method: "POST", path: "/v1/ca/issuers/" + current + "/retire"}, want{http.StatusBadRequest, codeInvalid}},
		{"retire an unknown one", req{method: "POST", path: "/v1/ca/issuers/" + strings.Repeat("ab", 32) + "/retire"}, want{http.StatusNotFound, codeNotFound}},
		{"revoke without a reason", req{method: "POST", path: "/v1/ca/issuers/" + current + "/revoke"}, want{http.StatusBadRequest, codeInvalid}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.r.token == "" {
				tc.r.token = "admin"
			}
			f.check(t, tc.r, tc.want)
		})
	}
	var rot store.Rotation
	// No grace period given: the CLI's default, 30 days.
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/ca/rotate", token: "admin", body: `{}`}, want{status: http.StatusCreated}), &rot)
	if rot.OldIssuer != current || rot.NewIssuer == current || rot.State != store.RotationRunning {
		t.Fatalf("rotation %+v", rot)
	}
	if d := rot.GraceUntil.Sub(rot.CreatedAt); d < DefaultRotationGrace-time.Minute || d > DefaultRotationGrace+time.Minute {
		t.Errorf("grace without grace_seconds = %v, want %v", d, DefaultRotationGrace)
	}
	f.check(t, req{method: "POST", path: "/v1/ca/rotate", token: "admin", body: `{"grace_seconds":3600}`}, want{http.StatusConflict, codeConflict})

	var retired admin.IssuerChange
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/ca/issuers/" + current + "/retire", token: "admin"}, want{status: http.StatusOK}), &retired)
	if state := issuerState(retired.Status, current); state != "retired" {
		t.Errorf("after retire: %s is %q", current, state)
	}
	var revoked admin.IssuerChange
	_ = json.Unmarshal(f.check(t, req{method: "POST", path: "/v1/ca/issuers/" + current + "/revoke", token: "admin", body: `{"reason":"key leaked"}`}, want{status: http.StatusOK}), &revoked)
	if state := issuerState(revoked.Status, current); state != "revoked" {
		t.Errorf("after revoke: %s is %q", current, state)
	}
	evs := f.audit.find("api.request", "done", "")
	if len(evs) != 3 || evs[2].Subject != "issuer:"+current || evs[2].Details["reason"] != "key leaked" {
		t.Errorf("audit %+v", evs)
	}
}

func issuerState(st rotation.Status, fp string) string {
	for _, is := range st.Issuers {
		if is.Fingerprint == fp {
			return string(is.State)
		}
	}
	return ""
}

// Malformed path and query values are the caller's mistake (400), never a
// server failure.
func TestManageRefusesMalformedValues(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.check(t, req{method: "GET", path: "/v1/rollouts/" + f.rollout + "/devices?state=bogus", token: "viewer"}, want{http.StatusBadRequest, codeInvalid})
	f.check(t, req{method: "GET", path: "/v1/rollouts/" + f.rollout + "/devices?state=pending", token: "viewer"}, want{status: http.StatusOK})
	f.check(t, req{method: "POST", path: "/v1/firmware/keys/not-hex/revoke", token: "admin"}, want{http.StatusBadRequest, codeInvalid})
	f.check(t, req{method: "POST", path: "/v1/firmware/keys/" + strings.Repeat("0", 64) + "/revoke", token: "admin"}, want{http.StatusNotFound, codeNotFound})
}
