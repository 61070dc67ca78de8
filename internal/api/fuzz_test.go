package api

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// FuzzParseTagFilter feeds tag=KEY:VALUE parameters (one per line) to
// parseTagFilter: it never panics, refuses only with a 400, and what it
// accepts is a valid tag set in which every parameter's pair is present.
func FuzzParseTagFilter(f *testing.F) {
	for _, s := range []string{
		"site:lyon",
		"site:lyon\nfloor:2",
		"url:http://x:80/a?b=c",
		"k:v\nk:w",
		"k:v\nk:v",
		":v",
		"nocolon",
		"K:v",
		"k:\x00",
		"k:\xff",
		"",
		strings.Repeat("k", 65) + ":v",
		"a.b-c_d:",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		vs := strings.Split(in, "\n")
		tags, err := parseTagFilter(vs)
		if err != nil {
			if e := classify(err); e.status != http.StatusBadRequest || e.code != codeInvalid {
				t.Fatalf("parseTagFilter(%q): %v answers %d %s, want 400 invalid", vs, err, e.status, e.code)
			}
			return
		}
		if err := registry.ValidateTags(tags); err != nil {
			t.Fatalf("parseTagFilter(%q) accepted invalid tags %v: %v", vs, tags, err)
		}
		for _, kv := range vs {
			k, v, _ := strings.Cut(kv, ":")
			if tags[k] != v {
				t.Fatalf("parseTagFilter(%q) = %v: %q lost", vs, tags, kv)
			}
		}
	})
}

// FuzzParseDeviceQuery feeds raw query strings of GET /v1/devices to
// parseDeviceQuery: it never panics, refuses only with a 400, and an
// accepted filter is one the store takes as it is.
func FuzzParseDeviceQuery(f *testing.F) {
	for _, s := range []string{
		"",
		"state=active&model=sensor&tag=site:lyon&tag=floor:2&after=dev-1&limit=50",
		"owner=alice%40example.com",
		"limit=1000",
		"limit=1001",
		"limit=-1",
		"limit=0x10",
		"state=sleeping",
		"after=%00",
		"sort=id",
		"state=active&state=active",
		"tag=a:1&tag=a:2",
		"%zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, err := parseDeviceQuery(q)
		if err != nil {
			if e := classify(err); e.status != http.StatusBadRequest {
				t.Fatalf("parseDeviceQuery(%q): %v answers %d", raw, err, e.status)
			}
			return
		}
		if flt.Limit < 1 || flt.Limit > store.MaxListLimit || flt.PageSize() != flt.Limit {
			t.Fatalf("parseDeviceQuery(%q): limit %d", raw, flt.Limit)
		}
		if flt.State != "" && !flt.State.Valid() {
			t.Fatalf("parseDeviceQuery(%q): state %q", raw, flt.State)
		}
		if err := registry.ValidateTags(flt.Tags); err != nil {
			t.Fatalf("parseDeviceQuery(%q): tags %v: %v", raw, flt.Tags, err)
		}
	})
}

// FuzzParseListQueries feeds raw query strings to the parsers of GET
// /v1/audit and GET /v1/alerts: they never panic, refuse only with a 400,
// and keep an accepted limit within its bounds.
func FuzzParseListQueries(f *testing.F) {
	for _, s := range []string{
		"",
		"after=10&limit=50",
		"tail=true&action=mqtt.",
		"since=2026-11-21T10:00:00Z&subject=device:abc",
		"limit=0",
		"limit=100000",
		"after=-1",
		"after=1&after=2",
		"since=yesterday",
		"unacknowledged=true&detector=acl_denials&device=d1&before=a1",
		"unknown=1",
		"%zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		check := func(what string, err error) {
			if err == nil {
				return
			}
			if e := classify(err); e.status != http.StatusBadRequest || e.code != codeInvalid {
				t.Fatalf("%s(%q): %v answers %d %s, want 400 invalid", what, raw, err, e.status, e.code)
			}
		}
		af, err := parseAuditQuery(q)
		check("parseAuditQuery", err)
		if err == nil && (af.Limit < 0 || af.Limit > audit.MaxLimit) {
			t.Fatalf("parseAuditQuery(%q) accepted limit %d", raw, af.Limit)
		}
		lf, err := parseAlertQuery(q)
		check("parseAlertQuery", err)
		if err == nil && (lf.Limit < 0 || lf.Limit > store.MaxListLimit) {
			t.Fatalf("parseAlertQuery(%q) accepted limit %d", raw, lf.Limit)
		}
	})
}
