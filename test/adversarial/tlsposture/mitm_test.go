package tlsposture

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/wardentest"
)

// TestMITMWithItsOwnCAIsRefusedByTheDevice puts a proxy with its own CA
// between a device and the broker: it terminates the device's TLS with a
// certificate for the right names (localhost, 127.0.0.1) from a CA named
// like Warden's, and would open its own TLS to Warden. The Go SDK and
// mosquitto_pub, both pinned to Warden's root, refuse it in the handshake:
// the proxy reads nothing and Warden never sees the device. The same
// proxy as a transparent relay carries both clients to Warden.
func TestMITMWithItsOwnCAIsRefusedByTheDevice(t *testing.T) {
	t.Parallel()
	s := wardentest.Start(t, t.TempDir())
	dev := s.AddDevice("victim")
	rogue := wardentest.NewRogueCA(t, "Warden Root CA 00000000")
	proxyCert := rogue.ServerCertificate(t, "localhost", "127.0.0.1", "::1")

	t.Run("Go SDK", func(t *testing.T) {
		mitm := wardentest.StartMITM(t, wardentest.MITMConfig{Target: s.MQTTS, Certificate: &proxyCert})
		_, err := sdkConnect(t, sdkConfig(t, dev, mitm.Addr, "localhost"))
		requireUnknownAuthority(t, "SDK connect through the proxy", err)
		// crypto/tls answers every verification failure with this alert.
		requireClientRefusedProxy(t, mitm, "bad certificate")
	})
	t.Run("mosquitto_pub", func(t *testing.T) {
		mitm := wardentest.StartMITM(t, wardentest.MITMConfig{Target: s.MQTTS, Certificate: &proxyCert})
		out, err := mosquittoPub(t, mitm.Addr, dev)
		if err == nil {
			t.Fatalf("mosquitto_pub published through the proxy:\n%s", out)
		}
		t.Logf("mosquitto_pub refused: %v\n%s", err, out)
		requireClientRefusedProxy(t, mitm, "")
	})
	// Nothing reached Warden: no session, not even a failed handshake.
	if n := deviceConnects(t, s); n != 0 {
		t.Fatalf("warden_mqtt_connects_total{kind=\"device\"} = %v after the attacks, want 0", n)
	}
	if n := s.Metric(t, "warden_tls_handshake_failures_total", `listener="mqtts"`); n != 0 {
		t.Fatalf("warden_tls_handshake_failures_total{listener=\"mqtts\"} = %v, want 0: the proxy must not have reached Warden", n)
	}

	// The control for the refusals above: a client that trusts the
	// proxy's CA is intercepted. The proxy reads its CONNECT in the clear,
	// and can still not get it into Warden, which refuses the proxy's own
	// handshake for want of the device's certificate (counted, audited).
	t.Run("control: mosquitto_pub trusting the proxy's CA is intercepted", func(t *testing.T) {
		mitm := wardentest.StartMITM(t, wardentest.MITMConfig{Target: s.MQTTS, Certificate: &proxyCert})
		fooled := dev
		fooled.CA = filepath.Join(t.TempDir(), "rogue-ca.crt")
		if err := os.WriteFile(fooled.CA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rogue.Cert.Raw}), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := mosquittoPub(t, mitm.Addr, fooled)
		if err == nil {
			t.Fatalf("mosquitto_pub got through to Warden via the proxy:\n%s", out)
		}
		wardentest.Eventually(t, 5*time.Second, "the proxy to read the fooled client's CONNECT", func() bool {
			st := mitm.Stats()
			return st.Intercepted == 1 && st.Plaintext > 0
		})
		st := mitm.Stats()
		t.Logf("the proxy read %d plaintext bytes from the fooled client; mosquitto_pub: %v %s", st.Plaintext, err, out)
		wardentest.Eventually(t, 5*time.Second, "Warden's refusal of the proxy's handshake", func() bool {
			return handshakeFailures(t, s, "mqtts", "no-client-certificate") == 1 &&
				s.AuditContains(`"action":"tls.handshake"`, `"outcome":"denied"`, `"reason":"no-client-certificate"`, `"listener":"mqtts"`)
		})
		if n := deviceConnects(t, s); n != 0 {
			t.Fatalf("warden_mqtt_connects_total{kind=\"device\"} = %v, want 0", n)
		}
	})

	t.Run("control: transparent relay", func(t *testing.T) {
		relay := wardentest.StartRelay(t, s.MQTTS)
		cl := wardentest.ConnectSDK(t, s, dev, func(c *device.Config) { c.Servers = []string{"mqtts://" + relay.Addr} })
		wardentest.Eventually(t, 5*time.Second, "the SDK's session through the relay", func() bool { return deviceConnects(t, s) == 1 })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = cl.Close(ctx)
		if out, err := mosquittoPub(t, relay.Addr, dev); err != nil {
			t.Fatalf("mosquitto_pub through the relay: %v\n%s", err, out)
		}
		wardentest.Eventually(t, 5*time.Second, "mosquitto_pub's session through the relay", func() bool { return deviceConnects(t, s) == 2 })
		if st := relay.Stats(); st.Accepted < 2 || len(st.UpstreamErrors) > 0 {
			t.Fatalf("relay stats %+v, want two connections relayed", st)
		}
	})
}

// TestMITMOnTheOTAEndpointIsRefusedByTheDevice puts the proxy with its
// own CA between the SDK's OTA agent and Warden's HTTPS listener: the
// agent refuses the certificate, asks nothing, and Warden counts no
// request. Through the transparent relay the same agent checks in.
func TestMITMOnTheOTAEndpointIsRefusedByTheDevice(t *testing.T) {
	t.Parallel()
	s := wardentest.Start(t, t.TempDir())
	dev := s.AddDevice("ota-victim")
	cl := wardentest.ConnectSDK(t, s, dev) // the MQTT side is genuine
	rogue := wardentest.NewRogueCA(t, "Warden Root CA 00000000")
	proxyCert := rogue.ServerCertificate(t, "localhost", "127.0.0.1", "::1")
	mitm := wardentest.StartMITM(t, wardentest.MITMConfig{Target: s.API, Certificate: &proxyCert})

	err := otaCheck(t, cl, "https://"+mitm.Addr)
	requireUnknownAuthority(t, "OTA check through the proxy", err)
	requireClientRefusedProxy(t, mitm, "bad certificate")
	if n := s.Metric(t, "warden_ota_http_requests_total"); n != 0 {
		t.Fatalf("warden_ota_http_requests_total = %v after the attack, want 0", n)
	}

	relay := wardentest.StartRelay(t, s.API)
	if err := otaCheck(t, cl, "https://"+relay.Addr); err != nil {
		t.Fatalf("OTA check through the transparent relay: %v", err)
	}
	if n := s.Metric(t, "warden_ota_http_requests_total", `endpoint="check"`, `outcome="none"`); n != 1 {
		t.Fatalf("warden_ota_http_requests_total{endpoint=\"check\",outcome=\"none\"} = %v, want 1 (the relayed check)", n)
	}
}

// TestMITMWithAWardenIssuedCertificateIsRefusedByTheDevice puts proxies
// between a device and Warden that present certificates Warden's own CA
// issued, so that the chain verifies and only the host name check stands
// between the device and the attacker: a compromised device's certificate
// (to the broker and to the OTA endpoint), and a genuine Warden server
// certificate issued for another host. Warden runs as broker.example.test.
func TestMITMWithAWardenIssuedCertificateIsRefusedByTheDevice(t *testing.T) {
	t.Parallel()
	const hostname = "broker.example.test"
	s := wardentest.Start(t, t.TempDir(), "--hostname", hostname)
	victim := s.AddDevice("victim")
	impostor := s.AddDevice("impostor")
	impostorCert := wardenIssued(t, s, impostor)
	otherHost := otherHostCertificate(t, s, "evil.example.test")
	if err := otherHost.Leaf.VerifyHostname(hostname); err == nil {
		t.Fatalf("the other host's certificate is valid for %s: the test would prove nothing", hostname)
	}

	t.Run("broker: a device's certificate", func(t *testing.T) {
		mitm := wardentest.StartMITM(t, wardentest.MITMConfig{Target: s.MQTTS, Certificate: &impostorCert})
		_, err := sdkConnect(t, sdkConfig(t, victim, mitm.Addr, "localhost"))
		requireHostnameMismatch(t, "SDK connect through a proxy with a device certificate", err)
		requireClientRefusedProxy(t, mitm, "bad certificate")
	})
	t.Run("broker: a device's certificate, mosquitto_pub", func(t *testing.T) {
		mitm := wardentest.StartMITM(t, wardentest.MITMConfig{Target: s.MQTTS, Certificate: &impostorCert})
		out, err := mosquittoPub(t, mitm.Addr, victim)
		if err == nil {
			t.Fatalf("mosquitto_pub published through a proxy with a device certificate:\n%s", out)
		}
		t.Logf("mosquitto_pub refused: %v\n%s", err, out)
		requireClientRefusedProxy(t, mitm, "")
	})
	t.Run("broker: a server certificate for another host", func(t *testing.T) {
		mitm := wardentest.StartMITM(t, wardentest.MITMConfig{Target: s.MQTTS, Certificate: &otherHost})
		_, err := sdkConnect(t, sdkConfig(t, victim, mitm.Addr, hostname))
		requireHostnameMismatch(t, "SDK connect through a proxy with another host's certificate", err)
		requireClientRefusedProxy(t, mitm, "bad certificate")
	})
	if n := deviceConnects(t, s); n != 0 {
		t.Fatalf("warden_mqtt_connects_total{kind=\"device\"} = %v after the attacks, want 0", n)
	}
	if n := s.Metric(t, "warden_tls_handshake_failures_total", `listener="mqtts"`); n != 0 {
		t.Fatalf("warden_tls_handshake_failures_total{listener=\"mqtts\"} = %v, want 0: no proxy may have reached Warden", n)
	}

	t.Run("control: transparent relay, same host name", func(t *testing.T) {
		relay := wardentest.StartRelay(t, s.MQTTS)
		if _, err := sdkConnect(t, sdkConfig(t, victim, relay.Addr, hostname)); err != nil {
			t.Fatalf("SDK connect as %s through the relay: %v", hostname, err)
		}
		wardentest.Eventually(t, 5*time.Second, "the SDK's session through the relay", func() bool { return deviceConnects(t, s) == 1 })
	})

	t.Run("OTA: a device's certificate", func(t *testing.T) {
		cl := wardentest.ConnectSDK(t, s, victim)
		mitm := wardentest.StartMITM(t, wardentest.MITMConfig{Target: s.API, Certificate: &impostorCert})
		err := otaCheck(t, cl, "https://"+mitm.Addr)
		requireHostnameMismatch(t, "OTA check through a proxy with a device certificate", err)
		requireClientRefusedProxy(t, mitm, "bad certificate")
		if n := s.Metric(t, "warden_ota_http_requests_total"); n != 0 {
			t.Fatalf("warden_ota_http_requests_total = %v after the attack, want 0", n)
		}
	})
}

// wardenIssued loads c's certificate and key with the issuing CA behind
// it, as a server would present them: what an attacker holding a
// compromised device's key can serve.
func wardenIssued(t *testing.T, s *wardentest.Server, c wardentest.Creds) tls.Certificate {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		t.Fatal(err)
	}
	chain := wardentest.PeerChain(t, s.MQTTS, c)
	if len(chain) < 2 {
		t.Fatalf("Warden presented %d certificate(s), want the server certificate and the issuing CA", len(chain))
	}
	cert.Certificate = append(cert.Certificate, chain[1].Raw)
	if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
		t.Fatal(err)
	}
	return cert
}

// otherHostCertificate has Warden's issuing CA sign a genuine server
// certificate for host (and the loopback names every Warden server
// certificate carries), on a copy of the data directory's PKI: another
// server of the same CA, or a certificate an attacker had issued.
func otherHostCertificate(t *testing.T, s *wardentest.Server, host string) tls.Certificate {
	t.Helper()
	cfg := config.Default()
	cfg.Data = s.Data
	p := cfg.Paths()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(p.PKI)); err != nil {
		t.Fatalf("copy the PKI: %v", err)
	}
	mk, err := keystore.LoadMasterKey(p.MasterKey)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keystore.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Load(dir, ks, time.Now)
	if err != nil {
		t.Fatalf("load the copied PKI: %v", err)
	}
	if err := ca.RenewServerCertificate([]string{host}); err != nil {
		t.Fatalf("issue a server certificate for %s: %v", host, err)
	}
	cert, err := ca.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			t.Fatal(err)
		}
	}
	return cert
}

// otaCheck runs one HTTPS check of the SDK's OTA agent against base and
// returns its error; the agent is closed again.
func otaCheck(t *testing.T, cl *device.Client, base string) error {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := cl.OTA(device.OTAConfig{
		ReleaseKey: &key.PublicKey, Model: "mitm-model", Store: device.FileOTAStore{Dir: t.TempDir()},
		Transport: device.OTATransportHTTPS, HTTPSBase: base,
		Installer: func(context.Context, *firmware.Image, []byte, firmware.Statement) error {
			t.Error("the agent installed something")
			return nil
		},
	})
	if err != nil {
		t.Fatalf("OTA agent: %v", err)
	}
	defer func() { _ = agent.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return agent.Start(ctx) // Start checks once
}
