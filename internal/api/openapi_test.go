package api

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
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
		if op["requestBody"] != nil && key != "POST /v1/claims" && (responses["413"] == nil || responses["415"] == nil) {
			t.Errorf("%s takes a body but does not document 413 and 415", key)
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
// that JSON answers match their documented schema, properties and all.
func TestOpenAPIAgainstHandler(t *testing.T) {
	s := loadSpec(t)
	f := newFixture(t, fixtureOptions{})
	bodies := map[string]string{
		"PUT /v1/devices/{id}/tags":      `{"tags":{"room":"lab"}}`,
		"POST /v1/devices/{id}/disable":  `{"reason":"openapi"}`,
		"POST /v1/rollouts/{id}/pause":   `{"reason":"openapi"}`,
		"POST /v1/claims":                `{"ttl_seconds":60}`,
		"POST /v1/devices/{id}/revoke":   `{"reason":"openapi"}`,
		"POST /v1/rollouts/{id}/abort":   `{"reason":"openapi"}`,
		"POST /v1/devices/{id}/enable":   ``,
		"POST /v1/devices/{id}/commands": `{"name":"ping"}`,
		"POST /v1/rollouts/{id}/resume":  ``,
		"GET /v1/devices":                ``,
		"GET /v1/devices/{id}":           ``,
		"GET /v1/rollouts/{id}":          ``,
		"GET /v1/rollouts":               ``,
		"GET /v1/firmware/images":        ``,
		"GET /v1/ca":                     ``,
		"GET /v1/stream":                 ``,
		"GET /v1/audit":                  ``,
		"GET /v1/alerts":                 ``,
		"POST /v1/alerts/{id}/ack":       ``,
		"POST /v1/devices/{id}/release":  ``,
		"GET /v1/whoami":                 ``,
	}
	ops := s.operations(t)
	// Changes in an order that keeps each one possible: disable before
	// enable, revoke last; pause, resume, then abort.
	order := slices.Sorted(maps.Keys(ops))
	slices.SortStableFunc(order, func(a, b string) int { return rank(a) - rank(b) })
	for _, key := range order {
		op := ops[key]
		method, pattern, _ := strings.Cut(key, " ")
		path := pattern
		switch {
		case strings.HasPrefix(pattern, "/v1/rollouts/"):
			path = strings.ReplaceAll(path, "{id}", f.rollout)
		case strings.HasPrefix(pattern, "/v1/alerts/"):
			path = strings.ReplaceAll(path, "{id}", "a1")
		case pattern == "/v1/devices/{id}/release":
			path = strings.ReplaceAll(path, "{id}", "dev-a2") // the fixture's quarantined device
		}
		path = strings.ReplaceAll(path, "{id}", "dev-a1")
		body, known := bodies[key]
		if !known {
			t.Errorf("%s: no request in this test; add one", key)
		}
		w := f.do(req{method: method, path: path, token: "admin", body: body})
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
		}
		content, _ := s.resolve(t, doc)["content"].(map[string]any)
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
	}

	// Error answers match the Error schema too.
	errSchema := map[string]any{"$ref": "#/components/schemas/Error"}
	for _, r := range []req{
		{method: "GET", path: "/v1/whoami"},
		{method: "GET", path: "/v1/devices/nope", token: "viewer"},
		{method: "POST", path: "/v1/devices/dev-x/revoke", token: "viewer"},
		{method: "PUT", path: "/v1/devices/dev-x/tags", token: "admin", body: "{}"},
		{method: "DELETE", path: "/v1/ca", token: "admin"},
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

func rank(key string) int {
	for i, verb := range []string{"/disable", "/enable", "/pause", "/resume", "/abort", "/revoke"} {
		if strings.HasSuffix(key, verb) {
			return i + 1
		}
	}
	return 0
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
	if enum, ok := schema["enum"].([]any); ok && !slices.Contains(enum, v) {
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
