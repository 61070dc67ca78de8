package api

import (
	"net/http"
	"testing"
)

// TestCommands: the relay's answers on the API, for a device that is
// connected (dev-a1) and one that is not (dev-a2).
func TestCommands(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	cases := []struct {
		token, path, body string
		code              int
		errCode, status   string
	}{
		{"app", "/v1/devices/dev-a1/commands", `{"name":"ping","body":{"n":1}}`, http.StatusOK, "", "ok"},
		{"operator", "/v1/devices/dev-a1/commands", `{"name":"fail"}`, http.StatusOK, "", "error"},
		{"operator", "/v1/devices/dev-a2/commands", `{"name":"ping"}`, http.StatusConflict, codeOffline, ""},
		{"operator", "/v1/devices/dev-a1/commands", `{"name":"silent","timeout_seconds":1}`, http.StatusGatewayTimeout, codeTimeout, ""},
		{"operator", "/v1/devices/dev-a1/commands", `{"name":"Not A Name"}`, http.StatusBadRequest, codeInvalid, ""},
		{"operator", "/v1/devices/dev-a1/commands", `{"name":"ping","timeout_seconds":301}`, http.StatusBadRequest, codeInvalid, ""},
		{"operator", "/v1/devices/dev-a1/commands", `{"name":"ping","body":{nope}`, http.StatusBadRequest, codeInvalid, ""},
		{"app2", "/v1/devices/dev-a1/commands", `{"name":"ping"}`, http.StatusNotFound, codeNotFound, ""},
		{"viewer", "/v1/devices/dev-a1/commands", `{"name":"ping"}`, http.StatusForbidden, codeForbidden, ""},
	}
	for _, c := range cases {
		w := f.do(req{method: "POST", path: c.path, token: c.token, body: c.body})
		if w.Code != c.code {
			t.Errorf("%s %s as %s = %d %s, want %d", c.body, c.path, c.token, w.Code, w.Body, c.code)
			continue
		}
		if c.errCode != "" {
			if got := errorCode(t, w); got != c.errCode {
				t.Errorf("%s: code %q, want %q", c.body, got, c.errCode)
			}
			continue
		}
		var res CommandResult
		decode(t, w, &res)
		if res.Status != c.status || res.ID == "" {
			t.Errorf("%s: %+v, want status %s", c.body, res, c.status)
		}
		if c.status == "ok" && string(res.Body) != `{"n":1}` {
			t.Errorf("echo body %s", res.Body)
		}
		if c.status == "error" && res.Error != "the relay is stuck" {
			t.Errorf("error %q", res.Error)
		}
	}
}
