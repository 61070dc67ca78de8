package bench

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/envelope"
)

// TestEnvelopeDevices loads provisioned envelope devices and checks what
// they produce as Warden would receive it: each message opens under the
// device's uplink keys on its topic and nowhere else, the CONNECT password
// opens, sequence numbers never repeat, and a second load of the fleet
// (the next benchmark run) continues above every number the first one
// handed out, so that Warden's replay windows accept it.
func TestEnvelopeDevices(t *testing.T) {
	for _, suite := range []string{"ccm-8", "sign-p256"} {
		t.Run(suite, func(t *testing.T) {
			f := provision(t, 2, suite)
			devs, err := LoadEnvelopeDevices(f, 1)
			if err != nil {
				t.Fatal(err)
			}
			if len(devs) != 1 || devs[0].ID != f.Devices[0] || devs[0].Suite.String() != suite {
				t.Fatalf("loaded %+v, want the first device of %v with %s", devs, f.Devices, suite)
			}
			d := devs[0]
			open := receiverKeys(t, f, d.ID)

			topic := "private/" + d.ID + "/up/bench1"
			payload := []byte("sixteen bytes!!!")
			msg, err := d.Seal(topic, payload)
			if err != nil {
				t.Fatal(err)
			}
			pt, h, err := envelope.Open(open, topic, msg)
			if err != nil || string(pt) != string(payload) {
				t.Fatalf("open the sealed message: %q, %v", pt, err)
			}
			if _, _, err := envelope.Open(open, "private/"+d.ID+"/up/other", msg); !errors.Is(err, envelope.ErrOpen) {
				t.Errorf("the message opened on another topic: %v", err)
			}
			pw, err := d.ConnectPassword()
			if err != nil {
				t.Fatal(err)
			}
			ph, err := envelope.OpenConnectPassword(open, pw)
			if err != nil {
				t.Fatalf("CONNECT password: %v", err)
			}
			if ph.Seq <= h.Seq {
				t.Errorf("the password's sequence number %d does not follow the message's %d", ph.Seq, h.Seq)
			}

			again, err := LoadEnvelopeDevices(f, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(again) != 2 {
				t.Fatalf("%d devices loaded with n = 0, want the whole fleet (2)", len(again))
			}
			msg, err = again[0].Seal(topic, payload)
			if err != nil {
				t.Fatal(err)
			}
			_, h2, err := envelope.Open(open, topic, msg)
			if err != nil {
				t.Fatal(err)
			}
			if h2.Seq <= ph.Seq {
				t.Errorf("after a reload the counter handed out %d again (last used: %d)", h2.Seq, ph.Seq)
			}
		})
	}
}

// receiverKeys derives the keys Warden opens device id's uplinks with,
// from the files the fleet holds.
func receiverKeys(t *testing.T, f *FleetDir, id string) *envelope.Keys {
	t.Helper()
	_, env, err := device.LoadEnvelopeBundle(f.BundleFile(id))
	if err != nil {
		t.Fatal(err)
	}
	if env.Suite == envelope.SignP256 {
		pair, err := tls.LoadX509KeyPair(f.CertFile(id), f.KeyFile(id))
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
		if !ok {
			t.Fatalf("device %s has a %T key", id, cert.PublicKey)
		}
		k, err := envelope.VerifyKeys(pub, id, env.Epoch, envelope.Uplink)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k, err := envelope.DeriveKeys(env.Secret, id, env.Epoch, env.Suite, envelope.Uplink)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestEnvelopeDevicesRefused covers what cannot be loaded or connected.
func TestEnvelopeDevicesRefused(t *testing.T) {
	tlsFleet := &FleetDir{Dir: t.TempDir(), Devices: []string{"0a1b2c3d"}}
	if _, err := LoadEnvelopeDevices(tlsFleet, 0); err == nil {
		t.Error("a fleet without envelope devices was loaded as one")
	}
	missing := &FleetDir{Dir: t.TempDir(), Envelope: "ccm-8", Devices: []string{"0a1b2c3d"}}
	if _, err := LoadEnvelopeDevices(missing, 0); err == nil {
		t.Error("a device without a bundle was loaded")
	}
	if _, err := WardenPlainTarget(&Proc{Name: "warden", Addr: "127.0.0.1:1"}); err == nil {
		t.Error("a plain target of a Warden without its plain listener")
	}
	tlsTarget := Target{Name: "warden", Endpoint: Endpoint{Addr: "127.0.0.1:1"}}
	if _, _, err := ConnectEnvelope(t.Context(), tlsTarget, nil, ConnectOptions{}); err == nil {
		t.Error("envelope devices were connected to a TLS endpoint")
	}
}
