package monitor

import (
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// FuzzVerifySignature feeds arbitrary headers and bodies to the verifier a
// Go receiver would run on untrusted requests. It must never panic, must
// accept only a header that carries the body's signature, and must accept
// what Sign produces.
func FuzzVerifySignature(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	f.Add("t=1800000000,v1=0000000000000000000000000000000000000000000000000000000000000000", []byte("{}"))
	f.Add(Sign(testSecret, now, []byte(`{"id":"ab"}`)), []byte(`{"id":"ab"}`))
	f.Add("t=1800000000,v1=zz,v1=", []byte(""))
	f.Add("t=-1,v1=00", []byte("x"))
	f.Add("t=99999999999999999999,v1=00", []byte("x"))
	f.Add(",,,=,t==,v1==", []byte("x"))
	f.Add("t=1800000000, v1="+strings.Repeat("a", 64)+",v0=x", []byte("body"))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		err := VerifySignature(testSecret, header, body, now, 0)
		if err == nil && !strings.Contains(header, "v1="+Sign(testSecret, now, body)[len("t=1800000000,v1="):]) {
			// Accepted: the header must hold the body's signature for
			// its timestamp (within the tolerance, so another t).
			ok := false
			for d := -DefaultSignatureTolerance; d <= DefaultSignatureTolerance; d += time.Second {
				sig := Sign(testSecret, now.Add(d), body)
				_, v1, _ := strings.Cut(sig, ",")
				if strings.Contains(header, v1) {
					ok = true
					break
				}
			}
			if !ok {
				t.Fatalf("accepted %q for body %q without its signature", header, body)
			}
		}
		if err := VerifySignature(testSecret, Sign(testSecret, now, body), body, now, 0); err != nil {
			t.Fatalf("rejected its own signature: %v", err)
		}
	})
}

// FuzzClean feeds arbitrary strings, as peers send them in client IDs and
// topics, to the cleaner that makes them safe to store and show.
func FuzzClean(f *testing.F) {
	f.Add("dev-1", 128)
	f.Add("evil\x1b[31m\n\x00", 16)
	f.Add("\xff\xfe\xfd", 4)
	f.Add(strings.Repeat("é", 100), 7)
	f.Add("\u2028\u2029\u0085", 256)
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 8 || max > 4096 {
			return
		}
		got := clean(s, max)
		if len(got) > max || !utf8.ValidString(got) {
			t.Fatalf("clean(%q, %d) = %q: too long or not UTF-8", s, max, got)
		}
		for _, r := range got {
			if unicode.IsControl(r) {
				t.Fatalf("clean(%q, %d) = %q keeps a control character", s, max, got)
			}
		}
		if len(s) <= max && utf8.ValidString(s) && strings.IndexFunc(s, unicode.IsControl) < 0 && !strings.ContainsRune(s, utf8.RuneError) && got != s {
			t.Fatalf("clean changed a clean string %q into %q", s, got)
		}
	})
}
