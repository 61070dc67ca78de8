package config

import (
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestMonitorFromFile(t *testing.T) {
	dir := hermetic(t)
	c := mustLoad(t, LoadOptions{File: writeFile(t, `
monitor:
  cooldown: 30m
  webhook:
    url: https://alerts.example.com/warden
    secret_file: secrets/webhook.key
  acl_denials: {enabled: false, threshold: 3, window: 1m, response: quarantine}
  publish_rate: {factor: 2.5, floor: 10}
  payload_size: {floor: 64KiB}
  silence:
    heartbeat: 2h
    models:
      - {model: sensor-v2, heartbeat: 6h}
      - {model: actuator, heartbeat: 0s}
`)})
	want := DefaultMonitor()
	want.Cooldown = 30 * time.Minute
	want.Webhook.URL = "https://alerts.example.com/warden"
	// Relative to the working directory, like data.
	want.Webhook.SecretFile = filepath.Join(dir, "secrets", "webhook.key")
	want.ACLDenials = MonitorThresholdResponse{Threshold: 3, Window: time.Minute, Response: ResponseQuarantine}
	want.PublishRate.Factor, want.PublishRate.Floor = 2.5, 10
	want.PayloadSize.Floor = 64 * KiB
	want.Silence.Heartbeat = 2 * time.Hour
	want.Silence.Models = []ModelHeartbeat{{"sensor-v2", 6 * time.Hour}, {"actuator", 0}}
	if !reflect.DeepEqual(c.Monitor, want) {
		t.Errorf("monitor = %+v\nwant %+v", c.Monitor, want)
	}
	for model, hb := range map[string]time.Duration{"sensor-v2": 6 * time.Hour, "actuator": 0, "other": 2 * time.Hour, "": 2 * time.Hour} {
		if got := c.Monitor.Silence.HeartbeatFor(model); got != hb {
			t.Errorf("HeartbeatFor(%q) = %v, want %v", model, got, hb)
		}
	}
}

func TestMonitorFromEnvAndFlags(t *testing.T) {
	hermetic(t)
	c := mustLoad(t, LoadOptions{
		Environ: []string{
			"WARDEN_MONITOR__SILENCE__MODELS=sensor-v2=6h, actuator=0s,",
			"WARDEN_MONITOR__CLONED_IDENTITY__RESPONSE=disconnect",
			"WARDEN_MONITOR__WEBHOOK__SECRET_FILE=/run/secrets/webhook",
			"WARDEN_MONITOR__PAYLOAD_SIZE__FLOOR=1MiB",
		},
		Flags: newFlags(t, "--monitor=false", "--monitor-webhook-url", "http://127.0.0.1:9000/hook"),
	})
	want := DefaultMonitor()
	want.Enabled = false
	want.Silence.Models = []ModelHeartbeat{{"sensor-v2", 6 * time.Hour}, {"actuator", 0}}
	want.ClonedIdentity.Response = ResponseDisconnect
	want.Webhook.SecretFile = "/run/secrets/webhook"
	want.Webhook.URL = "http://127.0.0.1:9000/hook"
	want.PayloadSize.Floor = MiB
	if !reflect.DeepEqual(c.Monitor, want) {
		t.Errorf("monitor = %+v\nwant %+v", c.Monitor, want)
	}

	msg := loadErr(t, LoadOptions{Environ: []string{"WARDEN_MONITOR__SILENCE__MODELS=sensor-v2:6h"}})
	wantContains(t, msg, "WARDEN_MONITOR__SILENCE__MODELS", "model=heartbeat")
	msg = loadErr(t, LoadOptions{Environ: []string{"WARDEN_MONITOR__SILENCE__MODELS=sensor-v2=6"}})
	wantContains(t, msg, "WARDEN_MONITOR__SILENCE__MODELS", "sensor-v2")
}

func TestMonitorValidateRejects(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Monitor)
		want string
	}{
		{"cooldown", func(m *Monitor) { m.Cooldown = time.Second }, "monitor.cooldown = 1s: must be between 1m and 7d"},
		{"queue", func(m *Monitor) { m.QueueSize = 1 }, "monitor.queue_size = 1"},
		{"max devices", func(m *Monitor) { m.MaxDevices = 0 }, "monitor.max_devices = 0"},
		{"retention", func(m *Monitor) { m.Retention = time.Hour }, "monitor.retention = 1h"},
		{"webhook without secret", func(m *Monitor) { m.Webhook.URL = "https://a.example/x" }, "monitor.webhook.secret_file: empty"},
		{"webhook scheme", func(m *Monitor) {
			m.Webhook.URL, m.Webhook.SecretFile = "ftp://a.example/x", "/s"
		}, `monitor.webhook.url = "ftp://a.example/x"`},
		{"webhook attempts", func(m *Monitor) { m.Webhook.MaxAttempts = 0 }, "monitor.webhook.max_attempts = 0"},
		{"threshold", func(m *Monitor) { m.AuthFailures.Threshold = 0 }, "monitor.auth_failures.threshold = 0"},
		{"window", func(m *Monitor) { m.AuthFailuresSource.Window = 0 }, "monitor.auth_failures_source.window = 0s"},
		{"response", func(m *Monitor) { m.ACLDenials.Response = "ban" }, `monitor.acl_denials.response = "ban": must be one of alert, disconnect, quarantine`},
		{"factor of 1", func(m *Monitor) { m.PublishRate.Factor = 1 }, "monitor.publish_rate.factor = 1: must be a number greater than 1"},
		{"factor NaN", func(m *Monitor) { m.PayloadSize.Factor = math.NaN() }, "monitor.payload_size.factor = NaN"},
		{"size floor", func(m *Monitor) { m.PayloadSize.Floor = 0 }, "monitor.payload_size.floor = 0: must be between 1 and 256MiB"},
		{"warmup", func(m *Monitor) { m.PublishRate.Warmup = 0 }, "monitor.publish_rate.warmup = 0"},
		{"switches", func(m *Monitor) { m.ClonedIdentity.Switches = 0 }, "monitor.cloned_identity.switches = 0"},
		{"heartbeat", func(m *Monitor) { m.Silence.Heartbeat = time.Second }, "monitor.silence.heartbeat = 1s"},
		{"model without name", func(m *Monitor) { m.Silence.Models = []ModelHeartbeat{{"", time.Hour}} }, "monitor.silence.models[0].model: empty"},
		{"model twice", func(m *Monitor) {
			m.Silence.Models = []ModelHeartbeat{{"a", time.Hour}, {"a", 2 * time.Hour}}
		}, `monitor.silence.models[1].model = "a": listed twice`},
		{"model heartbeat", func(m *Monitor) { m.Silence.Models = []ModelHeartbeat{{"a", time.Second}} }, "monitor.silence.models[0].heartbeat = 1s"},
		{"forgotten before silent", func(m *Monitor) {
			m.Silence.Models = []ModelHeartbeat{{"a", 8 * 24 * time.Hour}}
		}, "monitor.forget_after = 7d: must be longer than the longest silence heartbeat (8d)"},
		{"expiry window", func(m *Monitor) { m.CertExpiry.Window = time.Minute }, "monitor.cert_expiry.window = 1m"},
		{"expiry interval", func(m *Monitor) { m.CertExpiry.Interval = time.Second }, "monitor.cert_expiry.interval = 1s"},
		{"firmware response", func(m *Monitor) { m.Firmware.Response = "" }, `monitor.firmware.response = "": must be one of`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.mod(&c.Monitor)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v\nwant it to contain %q", err, tt.want)
			}
			// The section validates on its own too, for the monitor.
			if err := c.Monitor.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Monitor.Validate() = %v, want %q", err, tt.want)
			}
		})
	}
	// A disabled silence detector does not tie forget_after to heartbeats.
	c := Default()
	c.Monitor.Silence.Enabled = false
	c.Monitor.Silence.Heartbeat = 30 * 24 * time.Hour
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
}

// The monitor section of Default() is DefaultMonitor(), and it validates.
func TestDefaultMonitor(t *testing.T) {
	if !reflect.DeepEqual(Default().Monitor, DefaultMonitor()) {
		t.Error("Default().Monitor differs from DefaultMonitor()")
	}
	m := DefaultMonitor()
	if err := m.Validate(); err != nil {
		t.Errorf("DefaultMonitor().Validate() = %v", err)
	}
}
