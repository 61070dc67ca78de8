package e2e

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/wardentest"
	"github.com/warden-iot/warden/otaproto"
)

// TestOTAEnvelopeDevicesAgainstWarden updates two envelope devices that
// have no TLS on their broker connection: one gets its image in blocks over
// the plain MQTT listener (sealed get and status messages), the other
// checks and reports over HTTPS without a client certificate (a sealed
// check query and sealed status bodies) and downloads through the
// capability URL of its offer. Both boot the image and Warden records it.
func TestOTAEnvelopeDevicesAgainstWarden(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--mqtt", "127.0.0.1:0")
	r := newRelease(t)
	img, st := r.sign(t, "env-sensor", "3.1.0", 4, 20000)
	s.MustWarden("fw", "trust", r.pub)
	s.MustWarden("fw", "upload", img, "--statement", st)
	pub := releasePub(t, r)

	transports := map[string]string{"envota-mqtt": device.OTATransportMQTT, "envota-https": device.OTATransportHTTPS}
	dir := t.TempDir()
	for id := range transports {
		s.MustWarden("device", "add", id, "--out", dir, "--envelope", "--model", "env-sensor")
	}
	out := s.MustWarden("rollout", "create", "--image", sha256File(t, img)[:12], "--stages", "100%",
		"--failure-threshold", "50%", "--min-finished", "1", "--timeout", "5m")
	rid := strings.Fields(strings.TrimPrefix(out, "Created rollout "))[0]

	roots := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil || !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("ca.crt: %v", err)
	}
	booted := map[string]chan firmware.Statement{}
	for id, transport := range transports {
		booted[id] = startEnvelopeOTADevice(t, s, dir, id, transport, pub, roots)
	}
	for id, ch := range booted {
		select {
		case got := <-ch:
			if got.Version.String() != "3.1.0+0" || got.SecurityCounter != 4 {
				t.Errorf("%s installed %+v", id, got)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s (%s) did not install the image within 30s; rollout devices: %+v", id, transports[id], rolloutDevices(t, s, rid))
		}
	}
	wardentest.Eventually(t, 15*time.Second, "Warden to record both devices as booted", func() bool {
		n := 0
		for _, d := range rolloutDevices(t, s, rid) {
			if d.State == otaproto.StateBooted {
				n++
			}
		}
		return n == 2
	})
	if st, _ := rolloutState(t, s, rid); st != "completed" {
		t.Errorf("rollout is %s after every device booted", st)
	}
	// The MQTT device's messages were opened and accepted, the HTTPS
	// device's sealed check and reports too: nothing went through unsealed
	// (an envelope device on the plain listener cannot publish unsealed).
	if v := s.Metric(t, "warden_ota_mqtt_messages_total", `channel="status"`, `outcome="accepted"`); v < 3 {
		t.Errorf("accepted MQTT status reports = %v, want the sealed reports of envota-mqtt", v)
	}
	if v := s.Metric(t, "warden_ota_mqtt_messages_total", `channel="get"`, `outcome="accepted"`); v < 1 {
		t.Errorf("accepted MQTT block requests = %v", v)
	}
	if v := s.Metric(t, "warden_ota_http_requests_total", `endpoint="status"`, `outcome="accepted"`); v < 3 {
		t.Errorf("accepted HTTPS status reports = %v, want the sealed reports of envota-https", v)
	}
	if v := s.Metric(t, "warden_ota_http_requests_total", `endpoint="image"`, `outcome="served"`); v < 1 {
		t.Errorf("images served over HTTPS = %v", v)
	}
	for _, kind := range []string{"check", "status"} {
		if v := s.Metric(t, "warden_ota_http_requests_total", fmt.Sprintf(`endpoint=%q`, kind), `outcome="invalid"`); v != 0 {
			t.Errorf("%v refused HTTPS %s requests from the envelope device", v, kind)
		}
	}
}

// startEnvelopeOTADevice connects an SDK envelope device over the plain
// listener and starts its OTA agent; the returned channel gets the
// statement of each installed image.
func startEnvelopeOTADevice(t *testing.T, s *wardentest.Server, dir, id, transport string, pub crypto.PublicKey, roots *x509.CertPool) chan firmware.Statement {
	t.Helper()
	did, env, err := device.LoadEnvelopeBundle(filepath.Join(dir, id+".envelope.json"))
	if err != nil {
		t.Fatal(err)
	}
	if env.Counter, err = envelope.NewCounter(envelope.NewFileCounterStore(filepath.Join(dir, id+".counter"))); err != nil {
		t.Fatal(err)
	}
	env.DownlinkWindows = device.NewFileWindowStore(filepath.Join(dir, id+".windows"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := device.Connect(ctx, device.Config{
		Servers: []string{"mqtt://" + s.Plain}, DeviceID: did, Envelope: env,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("%s: SDK connect over the plain listener: %v", id, err)
	}
	t.Cleanup(func() { _ = cl.Close(context.Background()) })

	installed := make(chan firmware.Statement, 4)
	var agent *device.Agent
	cfg := device.OTAConfig{
		ReleaseKey: pub, Model: "env-sensor", Store: device.FileOTAStore{Dir: t.TempDir()},
		Transport: transport, BlockTimeout: 2 * time.Second,
		Installer: func(ctx context.Context, img *firmware.Image, file []byte, st firmware.Statement) error {
			installed <- st
			counter, _ := img.SecurityCounter()
			go func() { _ = agent.Booted(context.Background(), st.Version, counter, st.Sequence) }()
			return nil
		},
	}
	if transport == device.OTATransportHTTPS {
		// No client certificate: the device proves itself by sealing.
		cfg.HTTPSBase, cfg.RootCAs = "https://"+s.API, roots
	}
	if agent, err = cl.OTA(cfg); err != nil {
		t.Fatalf("%s: OTA: %v", id, err)
	}
	if err := agent.Start(ctx); err != nil {
		t.Fatalf("%s: OTA start: %v", id, err)
	}
	t.Cleanup(func() { _ = agent.Close() })
	return installed
}
