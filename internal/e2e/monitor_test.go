package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/wardentest"
)

// A device probing other devices' subtrees trips the ACL-denial detector
// on the real server; the configured response quarantines it: it is cut,
// and on its next session it may only use its OTA and certificate topics,
// until an operator releases it. The alert is stored, audited and counted.
func TestMonitorQuarantinesAProbingDevice(t *testing.T) {
	data := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "warden.yaml")
	if err := os.WriteFile(cfg, []byte(`monitor:
  check_interval: 1s
  acl_denials:
    threshold: 5
    window: 1m
    response: quarantine
`), 0o600); err != nil {
		t.Fatal(err)
	}
	s := wardentest.Start(t, data, "--config", cfg)
	bad := s.AddDevice("probe-1")
	s.AddDevice("victim-1")

	rc := wardentest.MustConnectRaw(t, s.MQTTS, bad, wardentest.RawOpts{Clean: true})
	for range 6 {
		_, _ = rc.Publish(t, "private/victim-1/up/telemetry", []byte("x"), 1)
	}
	select {
	case <-rc.Down:
	case <-time.After(10 * time.Second):
		t.Fatal("the quarantined device was not cut")
	}
	var alerts []struct {
		Detector string `json:"detector"`
		Device   string `json:"device"`
		Response string `json:"response"`
	}
	wardentest.Eventually(t, 10*time.Second, "the alert is stored", func() bool {
		out, _, err := s.Warden("alerts", "--json")
		return err == nil && json.Unmarshal([]byte(out), &alerts) == nil && len(alerts) > 0
	})
	if alerts[0].Detector != "acl_denials" || alerts[0].Device != "probe-1" || alerts[0].Response != "quarantine" {
		t.Fatalf("alerts %+v", alerts)
	}
	viewer := strings.TrimSpace(s.MustWarden("token", "create", "--role", "viewer", "--user", "vera"))
	if code, body := apiCall(t, estClient(t, bad.CA, nil), s, "GET", "/v1/alerts?detector=acl_denials", viewer, ""); code != 200 || !strings.Contains(body, `"device":"probe-1"`) {
		t.Errorf("GET /v1/alerts: %d %s", code, body)
	}
	if v := s.Metric(t, "warden_alerts_total", `detector="acl_denials"`); v < 1 {
		t.Errorf("alert metric %v", v)
	}
	if !s.AuditContains(`"action":"alert.acl_denials"`, `probe-1`) {
		t.Error("the alert is not audited")
	}

	// Quarantined: telemetry and commands are closed, firmware and
	// certificate topics open.
	rc = wardentest.MustConnectRaw(t, s.MQTTS, bad, wardentest.RawOpts{Clean: true})
	if code := rc.Subscribe(t, "private/probe-1/down/cmd", 1); code < 0x80 {
		t.Fatalf("a quarantined device subscribed to its commands (code %#x)", code)
	}
	if code := rc.Subscribe(t, "private/probe-1/ota/notify", 1); code >= 0x80 {
		t.Fatalf("a quarantined device cannot hear of firmware (code %#x)", code)
	}
	if code, _ := rc.Publish(t, "private/probe-1/up/telemetry", []byte("x"), 1); code < 0x80 {
		t.Fatalf("a quarantined device published telemetry (code %#x)", code)
	}

	// Released: full rights on the next session.
	s.MustWarden("device", "release", "probe-1")
	select {
	case <-rc.Down:
	case <-time.After(10 * time.Second):
		t.Fatal("the release did not reach the running server")
	}
	rc = wardentest.MustConnectRaw(t, s.MQTTS, bad, wardentest.RawOpts{Clean: true})
	if code, err := rc.Publish(t, "private/probe-1/up/telemetry", []byte("x"), 1); err != nil || code >= 0x80 {
		t.Fatalf("after the release: code %#x, %v", code, err)
	}
	if out := s.MustWarden("alerts", "quarantined"); strings.Contains(out, "probe-1") {
		t.Fatalf("still listed as quarantined:\n%s", out)
	}
}

// Replayed sealed messages from an envelope device's own session reach the
// replay detector on the real server; failed CONNECT passwords that only
// name the device do not (anyone could send those).
func TestMonitorSeesEnvelopeReplays(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "warden.yaml")
	if err := os.WriteFile(cfg, []byte("monitor:\n  envelope_replays:\n    threshold: 3\n    window: 1m\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := wardentest.Start(t, t.TempDir(), "--mqtt", "127.0.0.1:0", "--config", cfg)
	d := addEnvelopeDevice(t, s, "env-rp")
	addEnvelopeDevice(t, s, "env-victim")
	for range 5 { // garbage passwords naming the victim
		_, _, _ = wardentest.ConnectPlain(t, s.Plain, "env-victim", []byte("not a password"))
	}
	dev, _, err := wardentest.ConnectPlain(t, s.Plain, "env-rp", d.Password(t))
	if err != nil {
		t.Fatal(err)
	}
	topic := "private/env-rp/up/telemetry"
	msg := d.Seal(t, topic, []byte(`{"n":1}`))
	for range 4 { // the first opens, three replays follow
		_, _ = dev.Publish(t, topic, msg, 1)
	}
	var alerts []struct {
		Detector string `json:"detector"`
		Device   string `json:"device"`
	}
	wardentest.Eventually(t, 10*time.Second, "the replay alert", func() bool {
		out, _, err := s.Warden("alerts", "--json", "--detector", "envelope_replays")
		return err == nil && json.Unmarshal([]byte(out), &alerts) == nil && len(alerts) > 0
	})
	if alerts[0].Device != "env-rp" {
		t.Fatalf("alerts %+v", alerts)
	}
	out, _, _ := s.Warden("alerts", "--json", "--device", "env-victim")
	if strings.Contains(out, "envelope") {
		t.Fatalf("failed passwords naming a device were held against it:\n%s", out)
	}
}
