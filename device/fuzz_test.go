package device

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"testing"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/identity"
)

// FuzzParseCredentials feeds arbitrary bytes to the key and certificate
// parsers behind LoadCredentials: they must never panic, and a key they
// return must be able to sign.
func FuzzParseCredentials(f *testing.F) {
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	certKeys := []crypto.PublicKey{p256.Public(), p384.Public(), edPub}

	// Real keys are generated here rather than committed to testdata.
	pk8, err := x509.MarshalPKCS8PrivateKey(p256)
	if err != nil {
		f.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(p256)
	if err != nil {
		f.Fatal(err)
	}
	raw, err := p256.Bytes()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8}), byte(0))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), byte(0))
	f.Add(pk8, byte(0))
	f.Add(sec1, byte(0))
	f.Add(raw, byte(0))
	f.Add(edKey.Seed(), byte(2))
	f.Add(raw, byte(1))

	f.Fuzz(func(t *testing.T, data []byte, which byte) {
		certKey := certKeys[int(which)%len(certKeys)]
		if k, err := parsePrivateKey(data, certKey); err == nil {
			if k == nil || k.Public() == nil {
				t.Fatal("parsePrivateKey returned no error and no usable key")
			}
		}
		if certs, err := parseCertificates(data); err == nil && len(certs) == 0 {
			t.Fatal("parseCertificates returned no error and no certificate")
		}
	})
}

// FuzzParseEnvelopeBundle feeds arbitrary bytes to the envelope bundle
// parser: it must never panic, and what it accepts must be a usable
// Envelope for a valid device ID.
func FuzzParseEnvelopeBundle(f *testing.F) {
	f.Add([]byte(`{"device_id":"0a1b2c3d","suite":"ccm-8","epoch":0,"secret_hex":"000102030405060708090a0b0c0d0e0f","required":false}`))
	f.Add([]byte(`{"device_id":"dev-1","suite":"legacy-cbc-hmac","epoch":7,"secret_hex":"000102030405060708090A0B0C0D0E0F","required":true,"extra":[1,2]}`))
	f.Add([]byte(`{"device_id":"dev1","suite":"sign-p256","epoch":0,"required":false}`))
	f.Add([]byte(`{"device_id":"dev1","suite":"ccm-8","epoch":-1,"secret_hex":"00","required":false}`))
	f.Add([]byte(`{"device_id":"dev1"} {}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		id, env, err := parseEnvelopeBundle(data)
		if err != nil {
			if env != nil || id != "" {
				t.Fatal("an error came with a result")
			}
			return
		}
		if identity.ValidateDeviceID(id) != nil {
			t.Fatalf("accepted device ID %q", id)
		}
		switch env.Suite {
		case envelope.LegacyCBCHMAC, envelope.CCM8:
			if len(env.Secret) != envelope.MasterSecretSize {
				t.Fatalf("accepted a %d-byte secret", len(env.Secret))
			}
		case envelope.SignP256:
			if env.Secret != nil {
				t.Fatal("accepted a secret for sign-p256")
			}
		default:
			t.Fatalf("accepted suite %v", env.Suite)
		}
	})
}

// fuzzSecret and fuzzDevice are fixed so that the committed corpus can hold
// downlinks that open.
var (
	fuzzSecret = []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	fuzzDevice = "fuzzdev"
)

// FuzzOpenDownlink feeds arbitrary bytes to an envelope client's downlink
// path, as a command and as a rekey message: nothing may panic, a message
// accepted once must be refused the second time, and a rekey is applied
// only to the epoch above with the secret it carries.
func FuzzOpenDownlink(f *testing.F) {
	keys, err := envelope.DeriveKeys(fuzzSecret, fuzzDevice, 0, envelope.CCM8, envelope.Downlink)
	if err != nil {
		f.Fatal(err)
	}
	down := "private/" + fuzzDevice + "/down/"
	for i, pt := range [][]byte{nil, []byte("reboot"), append([]byte{0, 0, 0, 1}, fuzzSecret...)} {
		for _, rekey := range []bool{false, true} {
			topic := down + "cmd"
			if rekey {
				topic = down + RekeyChannel
			}
			msg, err := envelope.Seal(keys, uint64(i), topic, pt)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(msg, rekey)
		}
	}
	f.Add([]byte{0x61, 0x00}, false)
	f.Fuzz(func(t *testing.T, msg []byte, rekey bool) {
		var rekeyed []byte
		ec := &envelopeConfig{
			suite:      envelope.CCM8,
			secret:     fuzzSecret,
			counter:    memCounter(t),
			newCounter: func(uint32) (*envelope.Counter, error) { return memCounter(t), nil },
			onRekey:    func(_ uint32, s []byte) error { rekeyed = s; return nil },
			sealUp:     true,
		}
		st, err := newEnvelopeState(ec, fuzzDevice, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if rekey {
			st.handleRekey(down+RekeyChannel, msg)
			if s := st.stats(); s.Epoch != 0 && (s.Epoch != 1 || len(rekeyed) != envelope.MasterSecretSize) {
				t.Fatalf("rekeyed to epoch %d with a %d-byte secret", s.Epoch, len(rekeyed))
			}
			return
		}
		_, _, _, ok := st.openDownlink(down+"cmd", "cmd", msg)
		if ok {
			if _, _, _, again := st.openDownlink(down+"cmd", "cmd", msg); again {
				t.Fatal("a downlink was accepted twice")
			}
		}
		s := st.stats()
		var dropped uint64
		for _, n := range s.Dropped {
			dropped += n
		}
		if s.Opened+dropped == 0 {
			t.Fatal("a downlink was neither opened nor dropped")
		}
	})
}
