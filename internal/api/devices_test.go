package api

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/warden-iot/warden/internal/store"
)

func TestStrictBodies(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	big := `{"reason":"` + strings.Repeat("x", MaxBody) + `"}`
	for _, tc := range []struct {
		name string
		r    req
		want int
		code string
	}{
		{"unknown field", req{method: "POST", path: "/v1/devices/dev-x/disable", body: `{"reason":"x","force":true}`}, 400, codeInvalid},
		{"text body", req{method: "POST", path: "/v1/devices/dev-x/disable", body: `{"reason":"x"}`, contentType: "text/plain"}, 415, codeUnsupportedType},
		{"form body", req{method: "POST", path: "/v1/devices/dev-x/disable", body: `reason=x`, contentType: "application/x-www-form-urlencoded"}, 415, codeUnsupportedType},
		{"bad content type", req{method: "PUT", path: "/v1/devices/dev-x/tags", body: `{"tags":{}}`, contentType: "application/json; charset"}, 415, codeUnsupportedType},
		{"too large", req{method: "POST", path: "/v1/devices/dev-x/disable", body: big}, 413, codeTooLarge},
		{"trailing data", req{method: "POST", path: "/v1/devices/dev-x/disable", body: `{"reason":"x"} {}`}, 400, codeInvalid},
		{"array", req{method: "POST", path: "/v1/devices/dev-x/disable", body: `["x"]`}, 400, codeInvalid},
		{"null", req{method: "POST", path: "/v1/devices/dev-x/disable", body: `null`}, 400, codeInvalid},
		{"wrong type", req{method: "POST", path: "/v1/devices/dev-x/disable", body: `{"reason":3}`}, 400, codeInvalid},
		{"truncated", req{method: "POST", path: "/v1/devices/dev-x/disable", body: `{"reason":"x"`}, 400, codeInvalid},
		{"control character in reason", req{method: "POST", path: "/v1/devices/dev-x/enable", body: `{"reason":"a\u0007b"}`}, 400, codeInvalid},
		{"reason too long", req{method: "POST", path: "/v1/rollouts/RID/resume", body: `{"reason":"` + strings.Repeat("x", 1025) + `"}`}, 400, codeInvalid},
		{"tags without a body", req{method: "PUT", path: "/v1/devices/dev-x/tags"}, 400, codeInvalid},
		{"tags missing", req{method: "PUT", path: "/v1/devices/dev-x/tags", body: `{}`}, 400, codeInvalid},
		{"tags null", req{method: "PUT", path: "/v1/devices/dev-x/tags", body: `{"tags":null}`}, 400, codeInvalid},
		{"tag key refused", req{method: "PUT", path: "/v1/devices/dev-x/tags", body: `{"tags":{"Bad Key":"v"}}`}, 400, codeInvalid},
		{"tag value not a string", req{method: "PUT", path: "/v1/devices/dev-x/tags", body: `{"tags":{"k":1}}`}, 400, codeInvalid},
		{"missing device", req{method: "PUT", path: "/v1/devices/nope/tags", body: `{"tags":{}}`}, 404, codeNotFound},
		{"empty body is no reason", req{method: "POST", path: "/v1/devices/dev-x/disable"}, 200, ""},
		{"charset is fine", req{method: "POST", path: "/v1/devices/dev-x/disable", body: `{"reason":"x"}`, contentType: "application/json; charset=utf-8"}, 200, ""},
		{"pause twice", req{method: "POST", path: "/v1/rollouts/RID/pause"}, 200, ""},
		{"pause a paused rollout", req{method: "POST", path: "/v1/rollouts/RID/pause"}, 409, codeConflict},
		{"missing rollout", req{method: "POST", path: "/v1/rollouts/nope/abort"}, 404, codeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.r.token = "admin"
			tc.r.path = strings.ReplaceAll(tc.r.path, "RID", f.rollout)
			w := f.do(tc.r)
			if w.Code != tc.want {
				t.Fatalf("%d %s, want %d", w.Code, w.Body, tc.want)
			}
			if tc.code != "" && errorCode(t, w) != tc.code {
				t.Errorf("code %q, want %q", errorCode(t, w), tc.code)
			}
		})
	}
	if d := f.device("dev-x"); len(d.Tags) != 1 {
		t.Errorf("refused tag changes changed the tags: %v", d.Tags)
	}

	// The tags endpoint replaces the whole set; {} removes every tag.
	w := f.do(req{method: "PUT", path: "/v1/devices/dev-x/tags", token: "operator", body: `{"tags":{"room":"lab","floor":"2"}}`})
	var d Device
	decode(t, w, &d)
	if want := map[string]string{"room": "lab", "floor": "2"}; !maps.Equal(d.Tags, want) || !maps.Equal(f.device("dev-x").Tags, want) {
		t.Errorf("after PUT tags: answer %v, stored %v", d.Tags, f.device("dev-x").Tags)
	}
	w = f.do(req{method: "PUT", path: "/v1/devices/dev-x/tags", token: "operator", body: `{"tags":{}}`})
	d = Device{} // Unmarshal would merge into the old map
	decode(t, w, &d)
	if d.Tags == nil || len(d.Tags) != 0 || len(f.device("dev-x").Tags) != 0 {
		t.Errorf("after PUT {}: answer %#v, stored %v", d.Tags, f.device("dev-x").Tags)
	}
}

func TestListDevicesPaging(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	want := slices.Sorted(maps.Keys(fixtureDevices))
	for i := range 20 {
		id := fmt.Sprintf("page-%02d", i)
		tags := map[string]string{"batch": fmt.Sprint(i % 2)}
		f.addDevice(id, "meter", tags)
		want = append(want, id)
	}
	slices.Sort(want)

	for _, limit := range []int{1, 7, 25, 26, 1000} {
		var got []string
		after, pages := "", 0
		for {
			w := f.do(req{method: "GET", path: fmt.Sprintf("/v1/devices?limit=%d&after=%s", limit, after), token: "viewer"})
			var list DeviceList
			decode(t, w, &list)
			if len(list.Devices) > limit {
				t.Fatalf("limit %d: a page of %d", limit, len(list.Devices))
			}
			for _, d := range list.Devices {
				got = append(got, d.ID)
			}
			pages++
			if list.NextAfter == "" {
				break
			}
			if list.NextAfter != list.Devices[len(list.Devices)-1].ID || pages > len(want)+1 {
				t.Fatalf("limit %d: next_after %q after %v", limit, list.NextAfter, got)
			}
			after = list.NextAfter
		}
		if !slices.Equal(got, want) {
			t.Errorf("limit %d: paged through %v, want %v", limit, got, want)
		}
		if wantPages := (len(want) + limit - 1) / limit; pages != wantPages {
			t.Errorf("limit %d: %d pages, want %d (no empty last page)", limit, pages, wantPages)
		}
	}

	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"model=meter&tag=batch:1&limit=3", []string{"page-01", "page-03", "page-05"}},
		{"tag=batch:0&tag=batch:0&after=page-14", []string{"page-16", "page-18"}},
		{"state=active&owner=" + bob, []string{"dev-b1"}},
		{"tag=site:lyon&owner=" + alice, []string{"dev-a1", "dev-a2", "dev-a3"}},
		{"tag=site:paris", nil},
	} {
		w := f.do(req{method: "GET", path: "/v1/devices?" + tc.query, token: "operator"})
		var list DeviceList
		decode(t, w, &list)
		var got []string
		for _, d := range list.Devices {
			got = append(got, d.ID)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("?%s = %v, want %v", tc.query, got, tc.want)
		}
		if list.Devices == nil {
			t.Errorf("?%s: devices is null, want []", tc.query)
		}
	}

	for _, q := range []string{"limit=0", "limit=-1", "limit=1001", "limit=ten", "state=sleeping", "tag=site", "tag=:x",
		"tag=Site:x", "tag=a:1&tag=a:2", "after=../etc", "sort=id", "state=active&state=revoked", "model=" + strings.Repeat("m", 129)} {
		w := f.do(req{method: "GET", path: "/v1/devices?" + q, token: "admin"})
		if w.Code != http.StatusBadRequest || errorCode(t, w) != codeInvalid {
			t.Errorf("?%s = %d %s, want 400 invalid", q, w.Code, w.Body)
		}
	}
}

func TestShowDevice(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	if _, err := f.reg.Revoke(ctx, "dev-b1", "stolen"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id        string
		connected bool
	}{{"dev-a1", true}, {"dev-b1", false}} {
		w := f.do(req{method: "GET", path: "/v1/devices/" + tc.id, token: "viewer"})
		var d DeviceDetail
		decode(t, w, &d)
		info, err := f.reg.Device(ctx, tc.id)
		if err != nil {
			t.Fatal(err)
		}
		if d.ID != tc.id || d.Owner != fixtureDevices[tc.id] || d.Model != "sensor" || d.Tags["site"] != "lyon" ||
			d.State != string(info.State) || d.Connected == nil || *d.Connected != tc.connected {
			t.Errorf("GET %s = %+v", tc.id, d)
		}
		if len(d.Credentials) != 1 || len(info.Credentials) != 1 {
			t.Fatalf("%s: credentials %+v", tc.id, d.Credentials)
		}
		c, want := d.Credentials[0], info.Credentials[0]
		if c.Serial != want.Serial || c.Fingerprint != want.Fingerprint || !c.NotAfter.Equal(want.NotAfter) || !c.NotBefore.Equal(want.NotBefore) {
			t.Errorf("%s: credential %+v, stored %+v", tc.id, c, want)
		}
		if c.IssuerFingerprint == nil || *c.IssuerFingerprint != f.ca.Issuers()[0].Fingerprint {
			t.Errorf("%s: issuer_fingerprint %v, want %s", tc.id, c.IssuerFingerprint, f.ca.Issuers()[0].Fingerprint)
		}
		if revoked := tc.id == "dev-b1"; (c.RevokedAt != nil) != revoked || (revoked && c.RevocationReason != "stolen") {
			t.Errorf("%s: revoked_at %v reason %q", tc.id, c.RevokedAt, c.RevocationReason)
		}
		if !strings.Contains(c.CertificatePEM, "BEGIN CERTIFICATE") {
			t.Errorf("%s: certificate_pem %q", tc.id, c.CertificatePEM)
		}
		for _, secret := range []string{"csr", "private", "key"} {
			if strings.Contains(strings.ToLower(w.Body.String()), `"`+secret) {
				t.Errorf("%s: the answer has a %q field: %s", tc.id, secret, w.Body)
			}
		}
	}
	if w := f.do(req{method: "GET", path: "/v1/devices/dev-a1?verbose=1", token: "viewer"}); w.Code != http.StatusBadRequest {
		t.Errorf("unknown query parameter: %d", w.Code)
	}

	// Without presence the API says it does not know.
	g := newFixture(t, fixtureOptions{noPresence: true})
	w := g.do(req{method: "GET", path: "/v1/devices/dev-a1", token: "admin"})
	if !strings.Contains(w.Body.String(), `"connected":null`) {
		t.Errorf("without presence: %s", w.Body)
	}
}

func TestWhoAmI(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	for name, want := range map[string]WhoAmI{"app": {Role: "app", User: alice}, "viewer": {Role: "viewer", User: "ops@example.com"}} {
		w := f.do(req{method: "GET", path: "/v1/whoami", token: name})
		var got WhoAmI
		decode(t, w, &got)
		if got.Role != want.Role || got.User != want.User || !strings.HasPrefix(f.tok[name], "wdn_"+got.TokenID+"_") {
			t.Errorf("whoami as %s = %+v", name, got)
		}
		if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control %q", cc)
		}
	}
}

func TestParseTagFilter(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want map[string]string
		ok   bool
	}{
		{nil, nil, true},
		{[]string{"site:lyon"}, map[string]string{"site": "lyon"}, true},
		{[]string{"url:http://x:80", "a.b-c_d:"}, map[string]string{"url": "http://x:80", "a.b-c_d": ""}, true},
		{[]string{"k:v", "k:v"}, map[string]string{"k": "v"}, true},
		{[]string{"k:v", "k:w"}, nil, false},
		{[]string{"nocolon"}, nil, false},
		{[]string{":v"}, nil, false},
		{[]string{"K:v"}, nil, false},
		{[]string{"k:\x00"}, nil, false},
		{[]string{strings.Repeat("k", 65) + ":v"}, nil, false},
		{strings.Split(strings.Repeat("k:v,", 65), ",")[:65], nil, false},
	} {
		got, err := parseTagFilter(tc.in)
		if (err == nil) != tc.ok || !maps.Equal(got, tc.want) {
			t.Errorf("parseTagFilter(%q) = %v, %v; want %v (ok %v)", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && classify(err).status != http.StatusBadRequest {
			t.Errorf("parseTagFilter(%q): error %v is not a 400", tc.in, err)
		}
	}
	f, err := parseDeviceQuery(map[string][]string{})
	if err != nil || f.Limit != store.DefaultListLimit || f.Tags != nil {
		t.Errorf("empty query = %+v, %v", f, err)
	}
}
