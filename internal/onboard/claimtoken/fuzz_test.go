package claimtoken

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// fuzzNow is the fixed clock of the fuzz target, so that the committed valid
// seed (minted at fuzzNow with MaxTTL by fuzzKey) stays valid forever.
var fuzzNow = time.Unix(1_900_000_000, 0).UTC()

// fuzzSeedToken is testdata/fuzz/FuzzOpen/valid: a token fuzzKey minted at
// fuzzNow for user "fuzz-user" with MaxTTL.
const fuzzSeedToken = "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyIsImVuYyI6IkEyNTZHQ00iLCJlcGsiOnsia3R5IjoiRUMiLCJjcnYiOiJQLTI1NiIsIngiOiJKOGF3UkFXSjkwSkd6ZEk5TmhGSWJWNHpEVDh3aGMyM1ZOaVcyN3JhRkprIiwieSI6ImlRS1V0QTVTUE15cExkS3ViNWkwa3dtSUZXMnd3VmJiZGMyaEE0VzVCaUUifSwia2lkIjoiNDkyMzQ2M2NhYjE0MzBkMWFmYTg1OTRmODkzZjNjZmEifQ.zI9B74Mt5MQ_QRtXVrDDVOOeJRPgADODA1nqC3oAAag1WvP_CCNrVA.-LOxts0GW2CmPmJT.cGUOkhesKdZOmxrGmcIAU9I0kbsiQwe0oDFE4GJUAeSEWW9ee2IIBpRZYO_7ErBw3uy38tB0DnabeerQyKaOk3-ncLhAFQZ179bWxilm13ePx2O7eK16mo4_g6Ourmzj3HpeWzM3hTiP6JQdTOG7uUZjDH2IwwbiCLYJ6DE.D291ydbwd1VeUZnNbvZqiA"

// fuzzKey derives a fixed claim key from a fixed scalar, so seeds minted by
// it open in every run.
func fuzzKey(tb testing.TB) *Key {
	tb.Helper()
	scalar := sha256.Sum256([]byte("warden claimtoken fuzz key v1"))
	priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), scalar[:])
	if err != nil {
		tb.Fatal(err)
	}
	k, err := newKey(priv)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// TestFuzzSeedOpens keeps the committed seed corpus meaningful: its valid
// token must open, or the fuzzer never explores past decryption.
func TestFuzzSeedOpens(t *testing.T) {
	k := fuzzKey(t)
	c, err := k.Open(fuzzSeedToken, fuzzNow.Add(time.Minute))
	if err != nil {
		t.Fatalf("the fuzz seed token does not open: %v", err)
	}
	if c.User != "fuzz-user" || !c.IssuedAt.Equal(fuzzNow) || c.Expiry.Sub(c.IssuedAt) != MaxTTL {
		t.Fatalf("fuzz seed claims = %+v", c)
	}
	data, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzOpen", "valid"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "go test fuzz v1\nstring(\"" + fuzzSeedToken + "\")\n"; string(data) != want {
		t.Fatalf("testdata/fuzz/FuzzOpen/valid does not hold fuzzSeedToken")
	}
}

// FuzzOpen: Open must never panic, every error must map to one audit
// reason, and nothing the fuzzer builds may open. The fuzzer does not know
// fuzzKey's public key, so it cannot encrypt to it, and canonical-encoding
// checks leave it no way to respell the seed: the only token that opens is
// the seed itself.
func FuzzOpen(f *testing.F) {
	k := fuzzKey(f)
	segs := strings.Split(fuzzSeedToken, ".")
	f.Add(fuzzSeedToken)
	f.Add(fuzzSeedToken[:len(fuzzSeedToken)/2])
	f.Add(fuzzSeedToken + "A")
	f.Add(strings.Join(segs[:4], "."))
	f.Add(segs[0] + "....")
	f.Add("")
	f.Add("not a token")
	f.Add("eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..AAAAAAAAAAAAAAAA.AAAA.AAAAAAAAAAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, token string) {
		c, err := k.Open(token, fuzzNow.Add(time.Minute))
		if err != nil {
			n := 0
			for _, e := range []error{ErrMalformed, ErrForeign, ErrTampered, ErrExpired} {
				if errors.Is(err, e) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("error %q wraps %d of the Err values, want exactly 1", err, n)
			}
			if len(token) >= 16 && strings.Contains(err.Error(), token) {
				t.Fatalf("error quotes the token: %q", err)
			}
			if !utf8.ValidString(err.Error()) {
				t.Fatalf("error is not valid UTF-8: %q", err)
			}
			return
		}
		if c.User == "" || c.ID == "" || !c.Expiry.After(c.IssuedAt) || c.Issuer != k.ID() {
			t.Fatalf("opened token has claims %+v", c)
		}
		if token != fuzzSeedToken {
			t.Fatalf("a token other than the seed opened: %q", token)
		}
	})
}
