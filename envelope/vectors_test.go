package envelope_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/envelope/internal/keysched"
	"github.com/warden-iot/warden/envelope/internal/vectors"
)

const vectorDir = "../testdata/envelope"

// TestVectorsAreCurrent checks that the committed vectors are exactly what
// the generator produces now. If this fails after an intended change to the
// format, run: go run ./envelope/internal/vectorgen -out testdata/envelope
func TestVectorsAreCurrent(t *testing.T) {
	files, err := vectors.Generate()
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(vectorDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(files) {
		t.Errorf("%s holds %d files, the generator writes %d", vectorDir, len(entries), len(files))
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(vectorDir, name))
		if err != nil {
			t.Errorf("%v; run go run ./envelope/internal/vectorgen -out testdata/envelope", err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the generator's output; run go run ./envelope/internal/vectorgen -out testdata/envelope", name)
		}
	}
}

// TestVectors runs every committed case through the public API as another
// implementation would: from the JSON alone.
func TestVectors(t *testing.T) {
	for _, name := range []string{"legacy-cbc-hmac.json", "ccm-8.json", "sign-p256.json"} {
		t.Run(name, func(t *testing.T) {
			var f vectors.File
			readJSON(t, name, &f)
			suite, err := envelope.ParseSuite(f.Suite)
			if err != nil || int(suite) != f.SuiteCode || f.Format != vectors.FileFormat {
				t.Fatalf("file header: suite %q code %d format %q (%v)", f.Suite, f.SuiteCode, f.Format, err)
			}
			if len(f.Valid) < 5 || len(f.Invalid) < 20 {
				t.Fatalf("only %d valid and %d invalid cases", len(f.Valid), len(f.Invalid))
			}
			for _, s := range f.KeySchedule {
				out, err := keysched.Derive(unhex(t, s.MasterSecret), []byte(keysched.MasterSalt), unhex(t, s.Info), s.Length)
				if err != nil || hex.EncodeToString(out) != s.Output {
					t.Errorf("key schedule %q: got %x (%v), want %s", s.Name, out, err, s.Output)
				}
			}
			for _, v := range f.Valid {
				checkValid(t, suite, v)
			}
			for _, c := range f.Invalid {
				checkInvalid(t, suite, c)
			}
		})
	}
}

func checkValid(t *testing.T, suite envelope.Suite, v vectors.Valid) {
	t.Helper()
	dir := parseDirection(t, v.Direction)
	env, pt := unhex(t, v.Envelope), unhex(t, v.Plaintext)

	opener := receiverKeys(t, suite, v.Context)
	got, hdr, err := envelope.Open(opener, v.Topic, env)
	if err != nil || !bytes.Equal(got, pt) || hdr.Seq != v.Seq || hdr.Suite != suite || !hdr.MatchesEpoch(v.Epoch) {
		t.Errorf("%s: Open = %x, %+v, %v; want %x seq %d", v.Name, got, hdr, err, pt, v.Seq)
		return
	}

	var sealer *envelope.Keys
	if suite == envelope.SignP256 {
		priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), unhex(t, v.PrivateKey))
		if err != nil {
			t.Fatalf("%s: private key: %v", v.Name, err)
		}
		if sealer, err = envelope.SignKeys(vectors.DeterministicSigner(priv), v.DeviceID, v.Epoch, dir); err != nil {
			t.Fatal(err)
		}
	} else {
		sealer = opener
		alg := keysched.AlgCCM8
		if suite == envelope.LegacyCBCHMAC {
			alg = keysched.AlgLegacyCBCHMAC
		}
		m, _, err := keysched.ForDirection(unhex(t, v.MasterSecret), v.DeviceID, v.Epoch, alg, byte(dir))
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(m.EncKey) != v.EncKey || hexOrEmpty(m.MACKey) != v.MACKey || hexOrEmpty(m.CommonIV) != v.CommonIV {
			t.Errorf("%s: derived keys differ from the vector", v.Name)
		}
	}
	resealed, err := envelope.Seal(sealer, v.Seq, v.Topic, pt)
	if err != nil {
		t.Fatalf("%s: Seal: %v", v.Name, err)
	}
	// The malleated case is valid but is not what a signer produces.
	if !bytes.Equal(resealed, env) && v.Name != "uplink-json-malleated-signature" {
		t.Errorf("%s: Seal = %x, want %s", v.Name, resealed, v.Envelope)
	}
}

func checkInvalid(t *testing.T, suite envelope.Suite, c vectors.Invalid) {
	t.Helper()
	k := receiverKeys(t, suite, c.Context)
	pt, hdr, err := envelope.Open(k, c.Topic, unhex(t, c.Envelope))
	if err == nil {
		t.Errorf("%s: opened to %x", c.Name, pt)
		return
	}
	if !errors.Is(err, envelope.ErrOpen) || pt != nil || hdr != (envelope.Header{}) {
		t.Errorf("%s: Open = %x, %+v, %v; want nil, zero header, ErrOpen", c.Name, pt, hdr, err)
	}
	if got := envelope.ReasonOf(err); string(got) != c.Reason {
		t.Errorf("%s: reason %q, want %q (%v)", c.Name, got, c.Reason, err)
	}
}

func receiverKeys(t *testing.T, suite envelope.Suite, c vectors.Context) *envelope.Keys {
	t.Helper()
	dir := parseDirection(t, c.Direction)
	if suite == envelope.SignP256 {
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), unhex(t, c.PublicKey))
		if err != nil {
			t.Fatal(err)
		}
		k, err := envelope.VerifyKeys(pub, c.DeviceID, c.Epoch, dir)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k, err := envelope.DeriveKeys(unhex(t, c.MasterSecret), c.DeviceID, c.Epoch, suite, dir)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestReplayVectors(t *testing.T) {
	var f vectors.ReplayFile
	readJSON(t, "replay.json", &f)
	if f.Format != vectors.ReplayFormat || f.Window != envelope.ReplayWindowSize || len(f.Steps) == 0 {
		t.Fatalf("replay.json header: %q, window %d, %d steps", f.Format, f.Window, len(f.Steps))
	}
	var w envelope.ReplayWindow
	for i, s := range f.Steps {
		err := w.Check(s.Seq)
		if (err == nil) != s.Accept {
			t.Fatalf("step %d (seq %d): Check = %v, want accept=%v", i, s.Seq, err, s.Accept)
		}
		if err != nil && envelope.ReasonOf(err) != envelope.ReasonReplay {
			t.Fatalf("step %d: reason %q", i, envelope.ReasonOf(err))
		}
		if s.Accept {
			if err := w.Commit(s.Seq); err != nil {
				t.Fatalf("step %d: Commit: %v", i, err)
			}
		}
	}
}

func readJSON(t *testing.T, name string, v any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(vectorDir, name))
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func parseDirection(t *testing.T, s string) envelope.Direction {
	t.Helper()
	for _, d := range []envelope.Direction{envelope.Uplink, envelope.Downlink} {
		if d.String() == s {
			return d
		}
	}
	t.Fatalf("unknown direction %q", s)
	return 0
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex: %v", err)
	}
	return b
}

func hexOrEmpty(b []byte) string {
	if b == nil {
		return ""
	}
	return hex.EncodeToString(b)
}
