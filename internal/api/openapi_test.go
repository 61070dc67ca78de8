package api

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/pki"
)

// openapiPath is docs/openapi.yaml, from this package's directory.
const openapiPath = "../../docs/openapi.yaml"

// claimsRoles are the roles onboarding lets mint claim tokens (everyone
// but viewers); POST /v1/claims is documented but not in the table.
var claimsRoles = []string{"admin", "app", "operator"}

type spec struct {
	doc map[string]any
}

func loadSpec(t *testing.T) spec {
	t.Helper()
	data, err := os.ReadFile(openapiPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", openapiPath, err)
	}
	return spec{doc: doc}
}

// resolve follows a local $ref ("#/components/...").
func (s spec) resolve(t *testing.T, v any) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("not an object: %v", v)
	}
	for {
		ref, ok := m["$ref"].(string)
		if !ok {
			return m
		}
		var cur any = s.doc
		for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
			node, ok := cur.(map[string]any)
			if !ok || node[part] == nil {
				t.Fatalf("$ref %s does not resolve", ref)
			}
			cur = node[part]
		}
		m = cur.(map[string]any)
	}
}

// operations returns "METHOD /path" -> operation object.
func (s spec) operations(t *testing.T) map[string]map[string]any {
	t.Helper()
	ops := map[string]map[string]any{}
	paths, _ := s.doc["paths"].(map[string]any)
	for path, item := range paths {
		for method, op := range item.(map[string]any) {
			switch method {
			case "get", "put", "post", "delete", "patch", "head", "options", "trace":
				ops[strings.ToUpper(method)+" "+path] = op.(map[string]any)
			default:
				t.Errorf("%s: unexpected key %q (path-level parameters are not used here)", path, method)
			}
		}
	}
	return ops
}

func strs(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// TestOpenAPIMatchesRoutes: the document and the route table list the same
// operations with the same roles, and every reference resolves.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	s := loadSpec(t)
	if s.doc["openapi"] != "3.0.3" {
		t.Errorf("openapi: %v, want 3.0.3", s.doc["openapi"])
	}
	f := newFixture(t, fixtureOptions{})
	want := map[string][]string{"POST /v1/claims": claimsRoles}
	for _, rt := range f.api.Routes() {
		want[rt.Method+" "+rt.Pattern] = slices.Sorted(slices.Values(rt.Roles))
	}
	ops := s.operations(t)
	if got, w := slices.Sorted(maps.Keys(ops)), slices.Sorted(maps.Keys(want)); !slices.Equal(got, w) {
		t.Errorf("documented operations differ from the routes:\n doc    %v\n routes %v", got, w)
	}
	ids := map[string]string{}
	for key, op := range ops {
		roles := slices.Sorted(slices.Values(strs(op["x-warden-roles"])))
		if !slices.Equal(roles, want[key]) {
			t.Errorf("%s: x-warden-roles %v, routes say %v", key, roles, want[key])
		}
		id, _ := op["operationId"].(string)
		if id == "" || ids[id] != "" {
			t.Errorf("%s: operationId %q missing or also on %s", key, id, ids[id])
		}
		ids[id] = key
		responses, _ := op["responses"].(map[string]any)
		for _, code := range []string{"401", "429"} {
			if responses[code] == nil {
				t.Errorf("%s does not document %s", key, code)
			}
		}
		if len(want[key]) < 4 && responses["403"] == nil {
			t.Errorf("%s is not for every role but does not document 403", key)
		}
		if strings.Contains(key, "{id}") && responses["404"] == nil {
			t.Errorf("%s names a resource but does not document 404", key)
		}
		if op["requestBody"] != nil && key != "POST /v1/claims" {
			// A JSON body may be too large; any body may be of the wrong type.
			content, _ := s.resolve(t, op["requestBody"])["content"].(map[string]any)
			if _, isJSON := content["application/json"]; (isJSON && responses["413"] == nil) || responses["415"] == nil {
				t.Errorf("%s takes a body but does not document 415, and 413 for a JSON body", key)
			}
		}
	}
	// Every $ref anywhere resolves.
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if _, ok := x["$ref"]; ok {
				s.resolve(t, x)
			}
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(s.doc)
	if sec := s.resolve(t, s.doc["components"].(map[string]any)["securitySchemes"].(map[string]any)["bearer"]); sec["scheme"] != "bearer" {
		t.Errorf("security scheme: %v", sec)
	}
}

// TestOpenAPIAgainstHandler calls every documented operation on the real
// handler with an admin token (an app token for POST /v1/claims is not
// needed: admin may mint) and checks that it exists (no 404 or 405) and
// that JSON answers match their documented schema, properties and all; an
// answer without a body must be documented without content.
func TestOpenAPIAgainstHandler(t *testing.T) {
	s := loadSpec(t)
	f := newFixture(t, fixtureOptions{})
	deviceCSR := base64.StdEncoding.EncodeToString(csrFor(t, "oa-new"))
	issueCSR := base64.StdEncoding.EncodeToString(csrFor(t, "oa-issued"))
	serviceCSR := base64.StdEncoding.EncodeToString(csrFor(t, "oa-svc"))
	claimCSR := base64.StdEncoding.EncodeToString(csrFor(t, "oa-claim"))
	img, stmt := f.signedImage("1.2.4+5", 2)
	// Values later requests need from earlier answers.
	got := map[string]string{}
	bodies := map[string]string{
		"PUT /v1/devices/{id}/tags":          `{"tags":{"room":"lab"}}`,
		"POST /v1/devices/{id}/disable":      `{"reason":"openapi"}`,
		"POST /v1/rollouts/{id}/pause":       `{"reason":"openapi"}`,
		"POST /v1/claims":                    `{"ttl_seconds":60}`,
		"POST /v1/devices/{id}/revoke":       `{"reason":"openapi"}`,
		"POST /v1/rollouts/{id}/abort":       `{"reason":"openapi"}`,
		"POST /v1/devices/{id}/enable":       ``,
		"POST /v1/devices/{id}/commands":     `{"name":"ping"}`,
		"POST /v1/rollouts/{id}/resume":      ``,
		"GET /v1/devices":                    ``,
		"GET /v1/devices/{id}":               ``,
		"GET /v1/rollouts/{id}":              ``,
		"GET /v1/rollouts":                   ``,
		"GET /v1/firmware/images":            ``,
		"GET /v1/ca":                         ``,
		"GET /v1/stream":                     ``,
		"GET /v1/audit":                      ``,
		"GET /v1/alerts":                     ``,
		"POST /v1/alerts/{id}/ack":           ``,
		"POST /v1/devices/{id}/release":      ``,
		"GET /v1/whoami":                     ``,
		"POST /v1/devices":                   `{"id":"oa-new","model":"sensor","tags":{"site":"lyon"},"csr":"` + deviceCSR + `"}`,
		"POST /v1/device-certificates":       `{"id":"oa-issued","csr":"` + issueCSR + `"}`,
		"POST /v1/devices/{id}/envelope":     `{"suite":"ccm-8","required":true}`,
		"POST /v1/devices/{id}/rekey":        ``,
		"GET /v1/services":                   ``,
		"POST /v1/services":                  `{"name":"oa-svc","role":"reader","csr":"` + serviceCSR + `"}`,
		"POST /v1/services/{id}/revoke":      `{"reason":"openapi"}`,
		"POST /v1/rollouts":                  `{"image":"` + f.image + `","stages":[50,100]}`,
		"GET /v1/rollouts/{id}/devices":      ``,
		"POST /v1/firmware/images":           string(img),
		"GET /v1/firmware/keys":              ``,
		"POST /v1/firmware/keys":             jsonBody(t, TrustRequest{PublicKeyPEM: string(releaseKeyPEM(t)), Name: "openapi"}),
		"POST /v1/firmware/keys/{id}/revoke": ``,
		"POST /v1/ca/rotate":                 `{"grace_seconds":3600}`,
		"POST /v1/ca/issuers/{id}/retire":    ``,
		"POST /v1/ca/issuers/{id}/revoke":    `{"reason":"openapi"}`,
		"GET /v1/enrollments":                ``,
		"POST /v1/enrollments":               `{"device_id":"oa-enr","model":"sensor"}`,
		"DELETE /v1/enrollments/{id}":        ``,
		"GET /v1/claim-certs":                ``,
		"POST /v1/claim-certs":               `{"name":"oa-claim","csr":"` + claimCSR + `","allow":["oa-c1"]}`,
		"POST /v1/claim-certs/{id}/allow":    `{"allow":["oa-c2"],"model":"meter"}`,
		"POST /v1/claim-certs/{id}/revoke":   `{"reason":"openapi"}`,
		"GET /v1/quarantine":                 ``,
		"GET /v1/tokens":                     ``,
		"POST /v1/tokens":                    `{"role":"viewer","user":"vera","note":"openapi","ttl_seconds":3600}`,
		"POST /v1/tokens/{id}/revoke":        ``,
	}
	// {id} of each route that has one.
	device := func(id string) func() string { return func() string { return id } }
	rollout := func() string { return f.rollout }
	ids := map[string]func() string{
		"/v1/devices/{id}":              device("dev-a1"),
		"/v1/devices/{id}/disable":      device("dev-a1"),
		"/v1/devices/{id}/enable":       device("dev-a1"),
		"/v1/devices/{id}/revoke":       device("dev-a1"),
		"/v1/devices/{id}/tags":         device("dev-a1"),
		"/v1/devices/{id}/commands":     device("dev-a1"),
		"/v1/devices/{id}/release":      device("dev-a2"), // the fixture's quarantined device
		"/v1/devices/{id}/envelope":     device("dev-x"),
		"/v1/devices/{id}/rekey":        device("dev-x"),
		"/v1/rollouts/{id}":             rollout,
		"/v1/rollouts/{id}/devices":     rollout,
		"/v1/rollouts/{id}/pause":       rollout,
		"/v1/rollouts/{id}/resume":      rollout,
		"/v1/rollouts/{id}/abort":       rollout,
		"/v1/alerts/{id}/ack":           device("a1"),
		"/v1/services/{id}/revoke":      device("oa-svc"),
		"/v1/firmware/keys/{id}/revoke": func() string { return got["key"] },
		"/v1/ca/issuers/{id}/retire":    func() string { return got["old_issuer"] },
		"/v1/ca/issuers/{id}/revoke":    func() string { return got["old_issuer"] },
		"/v1/enrollments/{id}":          device("oa-enr"),
		"/v1/claim-certs/{id}/allow":    device("oa-claim"),
		"/v1/claim-certs/{id}/revoke":   device("oa-claim"),
		"/v1/tokens/{id}/revoke":        func() string { return got["token"] },
	}
	ops := s.operations(t)
	order := slices.Sorted(maps.Keys(ops))
	slices.SortStableFunc(order, func(a, b string) int { return rank(a) - rank(b) })
	for _, key := range order {
		op := ops[key]
		method, pattern, _ := strings.Cut(key, " ")
		path := pattern
		if strings.Contains(pattern, "{id}") {
			id := ids[pattern]
			if id == nil {
				t.Fatalf("%s: no {id} for this path in the test; add one", key)
			}
			path = strings.ReplaceAll(pattern, "{id}", id())
		}
		body, known := bodies[key]
		if !known {
			t.Errorf("%s: no request in this test; add one", key)
		}
		r := req{method: method, path: path, token: "admin", body: body}
		if key == "POST /v1/firmware/images" {
			r.contentType = "application/octet-stream"
			r.header = http.Header{StatementHeader: {base64.StdEncoding.EncodeToString(stmt)}}
		}
		w := f.do(r)
		if w.Code == http.StatusNotFound || w.Code == http.StatusMethodNotAllowed {
			t.Errorf("%s: %d %s: documented but not served", key, w.Code, w.Body)
			continue
		}
		responses := op["responses"].(map[string]any)
		doc, ok := responses[fmt.Sprint(w.Code)]
		if !ok {
			t.Errorf("%s answered %d, which is not documented: %s", key, w.Code, w.Body)
			continue
		}
		if w.Code >= 300 {
			t.Errorf("%s answered %d %s for an admin", key, w.Code, w.Body)
			continue
		}
		content, _ := s.resolve(t, doc)["content"].(map[string]any)
		if content == nil {
			if w.Body.Len() != 0 || w.Header().Get("Content-Type") != "" {
				t.Errorf("%s: %d is documented without a body, but the answer has one (%q): %s", key, w.Code, w.Header().Get("Content-Type"), w.Body)
			}
			continue
		}
		media, ok := content[w.Header().Get("Content-Type")]
		if !ok {
			t.Errorf("%s: Content-Type %q is not documented for %d", key, w.Header().Get("Content-Type"), w.Code)
			continue
		}
		if w.Header().Get("Content-Type") != "application/json" {
			continue // an event stream: its events are described in prose
		}
		var v any
		if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		for _, err := range s.validate(t, media.(map[string]any)["schema"], v, "body") {
			t.Errorf("%s: %v\n%s", key, err, w.Body)
		}
		// What later requests name.
		obj, _ := v.(map[string]any)
		switch key {
		case "POST /v1/firmware/keys":
			got["key"], _ = obj["id"].(string)
		case "POST /v1/ca/rotate":
			got["old_issuer"], _ = obj["old_issuer"].(string)
		case "POST /v1/tokens":
			got["token"], _ = obj["id"].(string)
		}
	}

	// Error answers match the Error schema too.
	errSchema := map[string]any{"$ref": "#/components/schemas/Error"}
	for _, r := range []req{
		{method: "GET", path: "/v1/whoami"},
		{method: "GET", path: "/v1/devices/nope", token: "viewer"},
		{method: "POST", path: "/v1/devices/dev-x/revoke", token: "viewer"},
		{method: "PUT", path: "/v1/devices/dev-x/tags", token: "admin", body: "{}"},
		{method: "DELETE", path: "/v1/ca", token: "admin"},
		{method: "DELETE", path: "/v1/enrollments/nope", token: "admin"},
		{method: "POST", path: "/v1/tokens/nope/revoke", token: "admin"},
	} {
		w := f.do(r)
		var v any
		if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
			t.Fatalf("%s %s: %v", r.method, r.path, err)
		}
		for _, err := range s.validate(t, errSchema, v, "body") {
			t.Errorf("%s %s (%d): %v", r.method, r.path, w.Code, err)
		}
	}
}

// rank orders the operations of TestOpenAPIAgainstHandler so that each
// change is possible: what a later one names is created first, disable
// comes before enable, pause before resume before abort, a new rollout
// after the fixture's was aborted, revocations last, and the CA is
// rotated before the old issuing CA is retired, then revoked.
func rank(key string) int {
	for i, k := range []string{
		"POST /v1/devices/{id}/envelope", "POST /v1/devices/{id}/rekey",
		"POST /v1/devices/{id}/disable", "POST /v1/devices/{id}/enable",
		"POST /v1/rollouts/{id}/pause", "POST /v1/rollouts/{id}/resume", "POST /v1/rollouts/{id}/abort", "POST /v1/rollouts",
		"DELETE /v1/enrollments/{id}",
		"POST /v1/ca/rotate", "POST /v1/ca/issuers/{id}/retire",
	} {
		if key == k {
			return i + 1
		}
	}
	if strings.HasSuffix(key, "/revoke") {
		return 100
	}
	return 0
}

// jsonBody encodes v as a request body.
func jsonBody(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// csrFor returns a PKCS #10 request, DER, of a new key with common name cn.
func csrFor(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CreateCSR(key, cn)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// releaseKeyPEM returns a new release public key, PEM.
func releaseKeyPEM(t *testing.T) []byte {
	t.Helper()
	key, err := firmware.GenerateKey(firmware.KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := firmware.EncodePublicKeyPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// validate checks v against the subset of OpenAPI 3.0 schemas the
// document uses: $ref, allOf, type, nullable, enum, properties, required,
// additionalProperties and items.
func (s spec) validate(t *testing.T, schemaV, v any, at string) []error {
	t.Helper()
	schema := s.resolve(t, schemaV)
	if all, ok := schema["allOf"].([]any); ok {
		var errs []error
		for _, sub := range all {
			errs = append(errs, s.validate(t, sub, v, at)...)
		}
		return errs
	}
	if v == nil {
		if schema["nullable"] == true {
			return nil
		}
		return []error{fmt.Errorf("%s is null, which the schema does not allow", at)}
	}
	if enum, ok := schema["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return sameValue(e, v) }) {
		return []error{fmt.Errorf("%s = %v, not one of %v", at, v, enum)}
	}
	switch typ := schema["type"]; typ {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			return []error{fmt.Errorf("%s is %T, want an object", at, v)}
		}
		var errs []error
		props, _ := schema["properties"].(map[string]any)
		for _, r := range strs(schema["required"]) {
			if _, ok := obj[r]; !ok {
				errs = append(errs, fmt.Errorf("%s lacks the required %q", at, r))
			}
		}
		for k, val := range obj {
			if p, ok := props[k]; ok {
				errs = append(errs, s.validate(t, p, val, at+"."+k)...)
				continue
			}
			switch extra := schema["additionalProperties"].(type) {
			case bool:
				if !extra {
					errs = append(errs, fmt.Errorf("%s has %q, which is not documented", at, k))
				}
			case map[string]any:
				errs = append(errs, s.validate(t, extra, val, at+"."+k)...)
			case nil:
				if props != nil {
					errs = append(errs, fmt.Errorf("%s has %q, which is not documented (and additionalProperties is not given)", at, k))
				}
			}
		}
		return errs
	case "array":
		arr, ok := v.([]any)
		if !ok {
			return []error{fmt.Errorf("%s is %T, want an array", at, v)}
		}
		var errs []error
		for i, x := range arr {
			errs = append(errs, s.validate(t, schema["items"], x, fmt.Sprintf("%s[%d]", at, i))...)
		}
		return errs
	case "string":
		if _, ok := v.(string); !ok {
			return []error{fmt.Errorf("%s is %T, want a string", at, v)}
		}
	case "integer":
		if n, ok := v.(float64); !ok || n != float64(int64(n)) {
			return []error{fmt.Errorf("%s = %v, want an integer", at, v)}
		}
	case "number":
		if _, ok := v.(float64); !ok {
			return []error{fmt.Errorf("%s is %T, want a number", at, v)}
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return []error{fmt.Errorf("%s is %T, want a boolean", at, v)}
		}
	default:
		return []error{fmt.Errorf("%s: schema without a type: %v", at, schema)}
	}
	return nil
}

// sameValue compares a value of the document (YAML: integers are ints)
// with one of an answer (JSON: numbers are float64s).
func sameValue(doc, answer any) bool {
	if n, ok := doc.(int); ok {
		doc = float64(n)
	}
	return doc == answer
}

// TestValidateCatchesDrift: the schema check in these tests does fail on
// an undocumented field, a missing one and a wrong type.
func TestValidateCatchesDrift(t *testing.T) {
	s := loadSpec(t)
	ref := map[string]any{"$ref": "#/components/schemas/WhoAmI"}
	for _, body := range []string{
		`{"token_id":"0123456789abcdef","role":"admin","user":"u","extra":1}`,
		`{"token_id":"0123456789abcdef","role":"admin"}`,
		`{"token_id":"0123456789abcdef","role":"root","user":"u"}`,
		`{"token_id":5,"role":"admin","user":"u"}`,
	} {
		var v any
		_ = json.Unmarshal([]byte(body), &v)
		if errs := s.validate(t, ref, v, "body"); len(errs) == 0 {
			t.Errorf("%s validated as WhoAmI", body)
		}
	}
}
