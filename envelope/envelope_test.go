package envelope_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/warden-iot/warden/envelope"
)

var testSecret = []byte("0123456789abcdef")

const (
	testDevice = "0a1b2c3d"
	upTopic    = "private/0a1b2c3d/up/telemetry"
	downTopic  = "private/0a1b2c3d/down/cmd"
)

// pair holds the sealing and the opening keys of one direction.
type pair struct{ seal, open *envelope.Keys }

// testPair returns keys for suite and direction; for sign-p256 the signer is
// key (a fresh one if nil).
func testPair(t testing.TB, suite envelope.Suite, dir envelope.Direction, epoch uint32, key *ecdsa.PrivateKey) pair {
	t.Helper()
	if suite != envelope.SignP256 {
		k, err := envelope.DeriveKeys(testSecret, testDevice, epoch, suite, dir)
		if err != nil {
			t.Fatal(err)
		}
		return pair{k, k}
	}
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	s, err := envelope.SignKeys(key, testDevice, epoch, dir)
	if err != nil {
		t.Fatal(err)
	}
	o, err := envelope.VerifyKeys(&key.PublicKey, testDevice, epoch, dir)
	if err != nil {
		t.Fatal(err)
	}
	return pair{s, o}
}

var allSuites = []envelope.Suite{envelope.LegacyCBCHMAC, envelope.CCM8, envelope.SignP256}

func TestRoundTrip(t *testing.T) {
	sizes := []int{0, 1, 15, 16, 17, 64, 255, 1000, envelope.MaxPlaintext}
	seqs := []uint64{0, 1, 255, 256, 1<<32 - 1, 1 << 32, envelope.MaxSeq}
	for _, suite := range allSuites {
		for _, dir := range []envelope.Direction{envelope.Uplink, envelope.Downlink} {
			for _, epoch := range []uint32{0, 1, 300, 1<<32 - 1} {
				p := testPair(t, suite, dir, epoch, nil)
				for i, n := range sizes {
					seq := seqs[i%len(seqs)]
					pt := make([]byte, n)
					rand.Read(pt)
					msg, err := envelope.Seal(p.seal, seq, upTopic, pt)
					if err != nil {
						t.Fatalf("%v %v epoch %d: Seal(%d bytes): %v", suite, dir, epoch, n, err)
					}
					got, hdr, err := envelope.Open(p.open, upTopic, msg)
					if err != nil || !bytes.Equal(got, pt) {
						t.Fatalf("%v %v epoch %d, %d bytes: Open: %v", suite, dir, epoch, n, err)
					}
					want := envelope.Header{Suite: suite, HasKeyID: epoch != 0, KeyID: uint8(epoch), Seq: seq}
					if hdr != want {
						t.Fatalf("header %+v, want %+v", hdr, want)
					}
					if parsed, err := envelope.Parse(msg); err != nil || parsed != want {
						t.Fatalf("Parse = %+v, %v", parsed, err)
					}
					if got == nil {
						t.Fatal("Open returned a nil payload for an empty message")
					}
				}
			}
		}
	}
}

// TestOverhead pins the sizes the spec promises.
func TestOverhead(t *testing.T) {
	for _, c := range []struct {
		suite envelope.Suite
		n     int
		epoch uint32
		seq   uint64
		want  int
	}{
		{envelope.CCM8, 64, 0, 5, 2 + 64 + 8},
		{envelope.CCM8, 64, 1, 1 << 16, 1 + 1 + 3 + 64 + 8},
		{envelope.LegacyCBCHMAC, 0, 0, 0, 2 + 16 + 16},
		{envelope.LegacyCBCHMAC, 15, 0, 0, 2 + 16 + 16},
		{envelope.LegacyCBCHMAC, 16, 0, 0, 2 + 32 + 16},
		{envelope.SignP256, 10, 0, 0, 2 + 10 + 64},
		{envelope.CCM8, envelope.MaxPlaintext, 9, envelope.MaxSeq, 65550},
		{envelope.LegacyCBCHMAC, envelope.MaxPlaintext, 9, envelope.MaxSeq, 65559},
		{envelope.SignP256, envelope.MaxPlaintext, 9, envelope.MaxSeq, 65606},
	} {
		p := testPair(t, c.suite, envelope.Uplink, c.epoch, nil)
		msg, err := envelope.Seal(p.seal, c.seq, upTopic, make([]byte, c.n))
		if err != nil {
			t.Fatal(err)
		}
		if len(msg) != c.want {
			t.Errorf("%v, %d bytes, epoch %d, seq %d: envelope of %d bytes, want %d", c.suite, c.n, c.epoch, c.seq, len(msg), c.want)
		}
	}
}

func TestDirectionsNeverShareKeys(t *testing.T) {
	for _, suite := range []envelope.Suite{envelope.LegacyCBCHMAC, envelope.CCM8} {
		up := testPair(t, suite, envelope.Uplink, 0, nil)
		down := testPair(t, suite, envelope.Downlink, 0, nil)
		msg, err := envelope.Seal(up.seal, 7, upTopic, []byte("hi"))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := envelope.Open(down.open, upTopic, msg); envelope.ReasonOf(err) != envelope.ReasonBadTag {
			t.Errorf("%v: an uplink opened with downlink keys: %v", suite, err)
		}
		// Same sequence number, same plaintext, other direction: different
		// bytes (no reflection, no nonce reuse across directions).
		msg2, err := envelope.Seal(down.seal, 7, upTopic, []byte("hi"))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(msg, msg2) {
			t.Errorf("%v: uplink and downlink envelopes are identical", suite)
		}
	}
}

func TestSealDeterministicForSymmetricSuites(t *testing.T) {
	for _, suite := range []envelope.Suite{envelope.LegacyCBCHMAC, envelope.CCM8} {
		p := testPair(t, suite, envelope.Uplink, 0, nil)
		a, _ := envelope.Seal(p.seal, 9, upTopic, []byte("same"))
		b, _ := envelope.Seal(p.seal, 9, upTopic, []byte("same"))
		c, _ := envelope.Seal(p.seal, 10, upTopic, []byte("same"))
		if !bytes.Equal(a, b) || bytes.Equal(a[2:], c[2:]) {
			t.Errorf("%v: sealing is not a function of (keys, seq, topic, payload)", suite)
		}
	}
}

func TestSealErrors(t *testing.T) {
	ccm := testPair(t, envelope.CCM8, envelope.Uplink, 0, nil)
	sign := testPair(t, envelope.SignP256, envelope.Uplink, 0, nil)
	for name, c := range map[string]struct {
		keys  *envelope.Keys
		seq   uint64
		topic string
		n     int
		is    error
		text  string
	}{
		"nil keys":          {nil, 0, upTopic, 1, nil, "needs keys"},
		"zero keys":         {&envelope.Keys{}, 0, upTopic, 1, nil, "needs keys"},
		"past MaxSeq":       {ccm.seal, envelope.MaxSeq + 1, upTopic, 1, envelope.ErrRekeyRequired, "rekey"},
		"payload too large": {ccm.seal, 0, upTopic, envelope.MaxPlaintext + 1, nil, "split it"},
		"empty topic":       {ccm.seal, 0, "", 1, nil, "topic"},
		"topic too long":    {ccm.seal, 0, strings.Repeat("a", envelope.MaxTopicLen+1), 1, nil, "topic"},
		"verify-only keys":  {sign.open, 0, upTopic, 1, nil, "SignKeys"},
	} {
		_, err := envelope.Seal(c.keys, c.seq, c.topic, make([]byte, c.n))
		if err == nil {
			t.Errorf("%s: Seal succeeded", name)
			continue
		}
		if c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("%s: %v is not %v", name, err, c.is)
		}
		if !strings.Contains(err.Error(), c.text) {
			t.Errorf("%s: %q does not say %q", name, err, c.text)
		}
	}
	// The longest topic works.
	if _, err := envelope.Seal(ccm.seal, 0, strings.Repeat("a", envelope.MaxTopicLen), nil); err != nil {
		t.Errorf("a %d-byte topic: %v", envelope.MaxTopicLen, err)
	}
}

// TestOpenBinding moves a message to every context it must not open in.
func TestOpenBinding(t *testing.T) {
	for _, suite := range allSuites {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		p := testPair(t, suite, envelope.Uplink, 5, key)
		msg, err := envelope.Seal(p.seal, 42, upTopic, []byte(`{"t":1}`))
		if err != nil {
			t.Fatal(err)
		}
		other := func(device string, epoch uint32, dir envelope.Direction) *envelope.Keys {
			if suite == envelope.SignP256 {
				k, err := envelope.VerifyKeys(&key.PublicKey, device, epoch, dir)
				if err != nil {
					t.Fatal(err)
				}
				return k
			}
			k, err := envelope.DeriveKeys(testSecret, device, epoch, suite, dir)
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
		for name, c := range map[string]struct {
			keys   *envelope.Keys
			topic  string
			reason envelope.Reason
		}{
			"other topic":                {p.open, "private/0a1b2c3d/up/other", envelope.ReasonBadTag},
			"downlink topic":             {p.open, downTopic, envelope.ReasonBadTag},
			"other device":               {other("0a1b2c3e", 5, envelope.Uplink), upTopic, envelope.ReasonBadTag},
			"other direction":            {other(testDevice, 5, envelope.Downlink), upTopic, envelope.ReasonBadTag},
			"epoch 261, same key ID":     {other(testDevice, 261, envelope.Uplink), upTopic, envelope.ReasonBadTag},
			"epoch 6":                    {other(testDevice, 6, envelope.Uplink), upTopic, envelope.ReasonUnknownKey},
			"epoch 0":                    {other(testDevice, 0, envelope.Uplink), upTopic, envelope.ReasonUnknownKey},
			"nil keys":                   {nil, upTopic, envelope.ReasonUnknownKey},
			"zero keys":                  {&envelope.Keys{}, upTopic, envelope.ReasonUnknownKey},
			"receiver supplies no topic": {p.open, "", envelope.ReasonMalformed},
		} {
			pt, hdr, err := envelope.Open(c.keys, c.topic, msg)
			if !errors.Is(err, envelope.ErrOpen) || envelope.ReasonOf(err) != c.reason || pt != nil || hdr != (envelope.Header{}) {
				t.Errorf("%v, %s: Open = %x, %+v, %v; want reason %s", suite, name, pt, hdr, err, c.reason)
			}
		}
	}
}

func TestOpenDetectsEveryBitFlip(t *testing.T) {
	for _, suite := range allSuites {
		p := testPair(t, suite, envelope.Uplink, 1, nil)
		msg, err := envelope.Seal(p.seal, 0x0102, upTopic, []byte("twenty bytes payload"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range msg {
			for bit := range 8 {
				mod := bytes.Clone(msg)
				mod[i] ^= 1 << bit
				if pt, _, err := envelope.Open(p.open, upTopic, mod); err == nil {
					t.Fatalf("%v: flipping bit %d of byte %d went unnoticed (opened to %q)", suite, bit, i, pt)
				} else if !errors.Is(err, envelope.ErrOpen) {
					t.Fatalf("%v: %v is not ErrOpen", suite, err)
				}
			}
		}
	}
}

func TestOpenSuiteMismatch(t *testing.T) {
	for _, c := range []struct {
		msgSuite, keySuite envelope.Suite
		reason             envelope.Reason
	}{
		{envelope.LegacyCBCHMAC, envelope.CCM8, envelope.ReasonDowngrade},
		{envelope.CCM8, envelope.SignP256, envelope.ReasonDowngrade},
		{envelope.LegacyCBCHMAC, envelope.SignP256, envelope.ReasonDowngrade},
		{envelope.CCM8, envelope.LegacyCBCHMAC, envelope.ReasonUnknownKey},
		{envelope.SignP256, envelope.CCM8, envelope.ReasonUnknownKey},
	} {
		msg, err := envelope.Seal(testPair(t, c.msgSuite, envelope.Uplink, 0, nil).seal, 1, upTopic, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = envelope.Open(testPair(t, c.keySuite, envelope.Uplink, 0, nil).open, upTopic, msg)
		if envelope.ReasonOf(err) != c.reason {
			t.Errorf("%v message, %v keys: %v, want %s", c.msgSuite, c.keySuite, err, c.reason)
		}
	}
}

func TestSignP256IsNotForgeableWithThePublicKey(t *testing.T) {
	dev := testPair(t, envelope.SignP256, envelope.Uplink, 0, nil)
	attacker := testPair(t, envelope.SignP256, envelope.Uplink, 0, nil)
	forged, err := envelope.Seal(attacker.seal, 1, upTopic, []byte("open the door"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := envelope.Open(dev.open, upTopic, forged); envelope.ReasonOf(err) != envelope.ReasonBadTag {
		t.Fatalf("a message signed by another key: %v", err)
	}
	// Randomized signatures: sealing twice gives two valid, different envelopes.
	a, _ := envelope.Seal(dev.seal, 1, upTopic, []byte("x"))
	b, _ := envelope.Seal(dev.seal, 1, upTopic, []byte("x"))
	if bytes.Equal(a, b) {
		t.Error("two sign-p256 seals are identical; signing should be randomized")
	}
	for _, m := range [][]byte{a, b} {
		if _, _, err := envelope.Open(dev.open, upTopic, m); err != nil {
			t.Fatal(err)
		}
	}
}

func TestKeysConstructors(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for name, f := range map[string]func() (*envelope.Keys, error){
		"short secret": func() (*envelope.Keys, error) {
			return envelope.DeriveKeys(testSecret[:15], testDevice, 0, envelope.CCM8, envelope.Uplink)
		},
		"long secret": func() (*envelope.Keys, error) {
			return envelope.DeriveKeys(append(testSecret, 0), testDevice, 0, envelope.CCM8, envelope.Uplink)
		},
		"bad device ID": func() (*envelope.Keys, error) {
			return envelope.DeriveKeys(testSecret, "dev/1", 0, envelope.CCM8, envelope.Uplink)
		},
		"empty device ID": func() (*envelope.Keys, error) {
			return envelope.DeriveKeys(testSecret, "", 0, envelope.CCM8, envelope.Uplink)
		},
		"zero direction": func() (*envelope.Keys, error) {
			return envelope.DeriveKeys(testSecret, testDevice, 0, envelope.CCM8, 0)
		},
		"zero suite": func() (*envelope.Keys, error) {
			return envelope.DeriveKeys(testSecret, testDevice, 0, 0, envelope.Uplink)
		},
		"sign-p256 derived": func() (*envelope.Keys, error) {
			return envelope.DeriveKeys(testSecret, testDevice, 0, envelope.SignP256, envelope.Uplink)
		},
		"nil signer":     func() (*envelope.Keys, error) { return envelope.SignKeys(nil, testDevice, 0, envelope.Uplink) },
		"P-384 signer":   func() (*envelope.Keys, error) { return envelope.SignKeys(p384, testDevice, 0, envelope.Uplink) },
		"Ed25519 signer": func() (*envelope.Keys, error) { return envelope.SignKeys(ed, testDevice, 0, envelope.Uplink) },
		"P-384 public key": func() (*envelope.Keys, error) {
			return envelope.VerifyKeys(&p384.PublicKey, testDevice, 0, envelope.Uplink)
		},
		"nil public key":     func() (*envelope.Keys, error) { return envelope.VerifyKeys(nil, testDevice, 0, envelope.Uplink) },
		"sign bad device ID": func() (*envelope.Keys, error) { return envelope.SignKeys(p256, "-x", 0, envelope.Uplink) },
	} {
		if k, err := f(); err == nil {
			t.Errorf("%s: got keys %v", name, k)
		}
	}
	k, err := envelope.DeriveKeys(testSecret, testDevice, 3, envelope.LegacyCBCHMAC, envelope.Downlink)
	if err != nil {
		t.Fatal(err)
	}
	if k.Suite() != envelope.LegacyCBCHMAC || k.Direction() != envelope.Downlink || k.DeviceID() != testDevice || k.Epoch() != 3 {
		t.Errorf("accessors: %v", k)
	}
}

// TestKeysDoNotPrintSecrets guards against a Keys reaching a log line.
func TestKeysDoNotPrintSecrets(t *testing.T) {
	k, err := envelope.DeriveKeys(testSecret, testDevice, 0, envelope.LegacyCBCHMAC, envelope.Uplink)
	if err != nil {
		t.Fatal(err)
	}
	const want = "envelope.Keys{legacy-cbc-hmac uplink device=0a1b2c3d epoch=0}"
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(verb, k); out != want {
			t.Errorf("%s prints %q, want %q", verb, out, want)
		}
	}
	if out := fmt.Sprintf("%v", struct{ K *envelope.Keys }{k}); !strings.Contains(out, want) {
		t.Errorf("a struct holding Keys prints %q", out)
	}
}

func TestSuiteNamesAndOrder(t *testing.T) {
	for _, s := range allSuites {
		got, err := envelope.ParseSuite(s.String())
		if err != nil || got != s {
			t.Errorf("ParseSuite(%q) = %v, %v", s.String(), got, err)
		}
	}
	if _, err := envelope.ParseSuite("aes-gcm"); err == nil || !strings.Contains(err.Error(), "ccm-8") {
		t.Errorf("ParseSuite(aes-gcm) = %v; want an error listing the suites", err)
	}
	if envelope.Suite(0).String() != "suite(0)" || envelope.Direction(9).String() != "direction(9)" {
		t.Error("invalid values do not print as such")
	}
	for _, c := range []struct {
		got, min envelope.Suite
		ok       bool
	}{
		{envelope.LegacyCBCHMAC, envelope.LegacyCBCHMAC, true},
		{envelope.CCM8, envelope.LegacyCBCHMAC, true},
		{envelope.SignP256, envelope.CCM8, true},
		{envelope.LegacyCBCHMAC, envelope.CCM8, false},
		{envelope.CCM8, envelope.SignP256, false},
		{envelope.CCM8, 0, false}, // no minimum refuses, it does not allow
		{0, envelope.LegacyCBCHMAC, false},
		{4, envelope.LegacyCBCHMAC, false},
	} {
		if c.got.AtLeast(c.min) != c.ok {
			t.Errorf("%v.AtLeast(%v) = %v", c.got, c.min, !c.ok)
		}
		err := envelope.RequireSuite(c.got, c.min)
		if (err == nil) != c.ok || (err != nil && (envelope.ReasonOf(err) != envelope.ReasonDowngrade || !errors.Is(err, envelope.ErrOpen))) {
			t.Errorf("RequireSuite(%v, %v) = %v", c.got, c.min, err)
		}
	}
}

func TestOpenErrorIdentity(t *testing.T) {
	_, err := envelope.Parse([]byte{0x00})
	if !errors.Is(err, envelope.ErrOpen) || envelope.ReasonOf(err) != envelope.ReasonMalformed {
		t.Fatalf("Parse error %v", err)
	}
	if !strings.HasPrefix(err.Error(), envelope.ErrOpen.Error()+": malformed") {
		t.Errorf("Error() = %q", err)
	}
	wrapped := fmt.Errorf("relay: %w", err)
	if envelope.ReasonOf(wrapped) != envelope.ReasonMalformed || !errors.Is(wrapped, envelope.ErrOpen) {
		t.Error("the reason does not survive wrapping")
	}
	if envelope.ReasonOf(errors.New("other")) != "" || envelope.ReasonOf(nil) != "" {
		t.Error("ReasonOf invents a reason")
	}
	if errors.Is(envelope.ErrRekeyRequired, envelope.ErrOpen) {
		t.Error("ErrRekeyRequired matches ErrOpen")
	}
}

func TestNewMasterSecret(t *testing.T) {
	a, err := envelope.NewMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := envelope.NewMasterSecret()
	if len(a) != envelope.MasterSecretSize || bytes.Equal(a, b) {
		t.Errorf("NewMasterSecret = %x, %x", a, b)
	}
	if _, err := envelope.DeriveKeys(a, testDevice, 0, envelope.CCM8, envelope.Uplink); err != nil {
		t.Error(err)
	}
}
