package apitoken

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, refuses with ErrMalformed
// without quoting its input, and accepts only the one spelling of each
// token: an accepted token formats back to exactly the same string.
func FuzzParse(f *testing.F) {
	valid := format("0123456789abcdef", bytes.Repeat([]byte{0xa5}, secretBytes))
	for _, s := range []string{
		valid,
		"wdn_ffffffffffffffff_" + strings.Repeat("_", secretLen-1) + "w",
		"wdn_0000000000000000_" + strings.Repeat("A", secretLen),
		"",
		Prefix,
		valid[:Len-1],
		valid + "=",
		"WDN_" + valid[4:],
		"wdn_0123456789ABCDEF_" + valid[21:],
		valid[:Len-1] + "V",
		valid[:40] + "\n" + valid[41:],
		"Bearer " + valid,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		id, secret, err := Parse(token)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse error %v does not wrap ErrMalformed", err)
			}
			if id != "" || secret != nil {
				t.Fatalf("refused, yet returned %q, %x", id, secret)
			}
			if len(token) >= 8 && strings.Contains(err.Error(), token) {
				t.Fatalf("error quotes the input: %v", err)
			}
			return
		}
		if !validID(id) || len(secret) != secretBytes {
			t.Fatalf("accepted ID %q and a %d-byte secret", id, len(secret))
		}
		if got := format(id, secret); got != token {
			t.Fatalf("Parse(%q) formats back to %q", token, got)
		}
	})
}
