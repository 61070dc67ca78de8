package tlsposture

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/wardentest"
	"github.com/warden-iot/warden/otaproto"
)

var versionNames = map[uint16]string{
	tls.VersionTLS10: "TLS 1.0", tls.VersionTLS11: "TLS 1.1", tls.VersionTLS12: "TLS 1.2", tls.VersionTLS13: "TLS 1.3",
}

// TestStrictListenersRefuseDowngrades offers a strict listener TLS 1.2,
// 1.1 and 1.0 with a valid device certificate, from Go's own crypto/tls
// (which still speaks them when told to): every offer is refused, counted
// as protocol-version and audited with the attempt's own address.
func TestStrictListenersRefuseDowngrades(t *testing.T) {
	t.Parallel()
	s := wardentest.Start(t, t.TempDir())
	dev := s.AddDevice("downgrade")
	cert, pool := dev.TLS(t)
	for _, l := range tlsListeners(s) {
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS11, tls.VersionTLS10} {
			t.Run(l.name+"/"+versionNames[v], func(t *testing.T) {
				cfg := &tls.Config{ServerName: "localhost", RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: v, MaxVersion: v}
				before := handshakeFailures(t, s, l.name, "protocol-version")
				refusedTLS(t, s, l, "protocol-version", cfg)
				if after := handshakeFailures(t, s, l.name, "protocol-version"); after != before+1 {
					t.Errorf("warden_tls_handshake_failures_total{listener=%q,reason=\"protocol-version\"} went %v -> %v, want +1", l.name, before, after)
				}
			})
		}
	}
	// The control: the same client on TLS 1.3 gets in.
	wardentest.MustConnectRaw(t, s.MQTTS, dev, wardentest.RawOpts{Clean: true})
}

// TestCompatListenersRefuseWeakOffers offers a compat listener, which
// does speak TLS 1.2, what it must still refuse: TLS 1.1 and 1.0, CBC
// suites, RSA key exchange. A strong TLS 1.2 offer is the control.
func TestCompatListenersRefuseWeakOffers(t *testing.T) {
	t.Parallel()
	s := wardentest.Start(t, t.TempDir(), compatFlags...)
	dev := s.AddDevice("weak-offers")
	cert, pool := dev.TLS(t)
	base := func(v uint16, suites ...uint16) *tls.Config {
		return &tls.Config{ServerName: "localhost", RootCAs: pool, Certificates: []tls.Certificate{cert},
			MinVersion: v, MaxVersion: v, CipherSuites: suites}
	}
	offers := []struct {
		name   string
		cfg    *tls.Config
		reason string
	}{
		{"TLS 1.1", base(tls.VersionTLS11), "protocol-version"},
		{"TLS 1.0", base(tls.VersionTLS10), "protocol-version"},
		{"TLS 1.2 CBC only", base(tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256), "cipher-suite"},
		{"TLS 1.2 RSA key exchange only", base(tls.VersionTLS12, tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_RSA_WITH_AES_128_CBC_SHA), "cipher-suite"},
	}
	for _, l := range tlsListeners(s) {
		for _, o := range offers {
			t.Run(l.name+"/"+o.name, func(t *testing.T) {
				before := handshakeFailures(t, s, l.name, o.reason)
				refusedTLS(t, s, l, o.reason, o.cfg)
				if after := handshakeFailures(t, s, l.name, o.reason); after != before+1 {
					t.Errorf("warden_tls_handshake_failures_total{listener=%q,reason=%q} went %v -> %v, want +1", l.name, o.reason, before, after)
				}
			})
		}
		t.Run(l.name+"/control: TLS 1.2 ECDHE-ECDSA AES-GCM", func(t *testing.T) {
			a := wardentest.TryTLS(t, l.addr, base(tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256))
			if a.Err != nil || a.Version != tls.VersionTLS12 {
				t.Fatalf("a strong TLS 1.2 offer: version %x, err %v; want TLS 1.2 accepted", a.Version, a.Err)
			}
		})
	}
}

// TestClientWithoutCertificateIsRefused connects without a client
// certificate. The MQTT listeners refuse the handshake (no-client-
// certificate, counted and audited); the api listener lets the handshake
// through (enrollment needs that) and its OTA endpoints refuse the
// request (403, audited as ota.http.check denied, counted).
func TestClientWithoutCertificateIsRefused(t *testing.T) {
	t.Parallel()
	s := wardentest.Start(t, t.TempDir())
	dev := s.AddDevice("certless")
	_, pool := dev.TLS(t)
	for _, l := range tlsListeners(s) {
		if l.name == "api" {
			continue
		}
		t.Run(l.name, func(t *testing.T) {
			before := handshakeFailures(t, s, l.name, "no-client-certificate")
			refusedTLS(t, s, l, "no-client-certificate", &tls.Config{ServerName: "localhost", RootCAs: pool, MinVersion: tls.VersionTLS13})
			if after := handshakeFailures(t, s, l.name, "no-client-certificate"); after != before+1 {
				t.Errorf("no-client-certificate failures on %s went %v -> %v, want +1", l.name, before, after)
			}
		})
	}
	t.Run("api", func(t *testing.T) {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{ServerName: "localhost", RootCAs: pool, MinVersion: tls.VersionTLS13}}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Get(fmt.Sprintf("https://%s%s?device=%s", s.API, otaproto.PathCheck, dev.ID))
		if err != nil {
			t.Fatalf("OTA check without a certificate: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("OTA check without a certificate: %s %q, want 403", resp.Status, body)
		}
		wardentest.Eventually(t, 5*time.Second, "the ota.http.check denial in the audit log", func() bool {
			return s.AuditContains(`"action":"ota.http.check"`, `"outcome":"denied"`, `"actor":"device:`+dev.ID+`"`, `"reason":"no-client-certificate"`)
		})
		if n := s.Metric(t, "warden_ota_http_requests_total", `endpoint="check"`, `outcome="denied"`); n != 1 {
			t.Errorf("warden_ota_http_requests_total{endpoint=\"check\",outcome=\"denied\"} = %v, want 1", n)
		}
	})
	if n := deviceConnects(t, s); n != 0 {
		t.Errorf("warden_mqtt_connects_total{kind=\"device\"} = %v, want 0", n)
	}
}

// TestForgedDeviceCertificateIsRefused presents a certificate that looks
// exactly like a registered device's (same CN and URI SAN) but comes from
// another CA: refused on every listener, counted and audited as
// unknown-ca on every listener (the api one through broker.GuardHTTPS).
func TestForgedDeviceCertificateIsRefused(t *testing.T) {
	t.Parallel()
	s := wardentest.Start(t, t.TempDir())
	real := s.AddDevice("twin")
	_, pool := real.TLS(t)
	forged := wardentest.NewRogueCA(t, "Warden Root CA 00000000").DeviceCertificate(t, real.ID)
	cfg := &tls.Config{ServerName: "localhost", RootCAs: pool, MinVersion: tls.VersionTLS12,
		// Not Certificates: with it, crypto/tls sends no certificate when
		// the server's list of acceptable CAs lacks the forger's, and the
		// test would only prove that a certificate-less client is refused.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &forged, nil },
	}
	for _, l := range tlsListeners(s) {
		t.Run(l.name, func(t *testing.T) {
			before := handshakeFailures(t, s, l.name, "unknown-ca")
			refusedTLS(t, s, l, "unknown-ca", cfg)
			if after := handshakeFailures(t, s, l.name, "unknown-ca"); after != before+1 {
				t.Errorf("unknown-ca failures on %s went %v -> %v, want +1", l.name, before, after)
			}
		})
	}
	if n := deviceConnects(t, s); n != 0 {
		t.Errorf("warden_mqtt_connects_total{kind=\"device\"} = %v, want 0", n)
	}
}
