package monitor

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/store"
)

// sim drives one simulated device through Observe on the fake clock.
type sim struct {
	h      *harness
	device string
	remote string
}

func (s sim) observe(e events.Event) {
	if e.At.IsZero() {
		e.At = s.h.clk.now()
	}
	if e.Device == "" && e.Kind != events.AuthFailed {
		e.Device = s.device
	}
	if e.Remote == "" {
		e.Remote = s.remote
	}
	s.h.m.Observe(e)
}

// publishEvery publishes n payloads of size bytes, one every gap.
func (s sim) publishEvery(n int, gap time.Duration, size int) {
	for range n {
		s.observe(events.Event{Kind: events.Published, Topic: "private/" + s.device + "/up/t", Size: size})
		s.h.clk.advance(gap)
	}
}

// TestDetectorsFire drives a simulated misbehaving device per detector:
// each fires once with the expected summary, a repeat within the cool-down
// is counted into the same alert, and after the cool-down a new alert is
// raised.
func TestDetectorsFire(t *testing.T) {
	tests := []struct {
		name     string
		cfg      func(*config.Monitor)
		detector string
		severity string
		device   string
		summary  string
		details  map[string]string
		// misbehave runs the misbehaviour once, starting at the fake
		// clock's time (a multiple of every window).
		misbehave func(s sim)
	}{
		{
			name: "authentication failures per device", detector: DetectorAuthFailures, severity: store.SeverityWarning, device: "dev-1",
			summary: "10 authentication failures in 5m claiming device dev-1, last from 10.0.0.5 (bad-certificate)",
			details: map[string]string{"count": "10", "window": "5m", "last_reason": "bad-certificate", "remote": "10.0.0.5"},
			misbehave: func(s sim) {
				for i := range 10 {
					s.observe(events.Event{Kind: events.AuthFailed, Device: "dev-1", Remote: fmt.Sprintf("10.0.0.5:%d", 40000+i), Reason: "bad-certificate"})
					s.h.clk.advance(time.Second)
				}
			},
		},
		{
			name: "authentication failures per source address",
			cfg: func(c *config.Monitor) {
				c.AuthFailuresSource.Threshold, c.AuthFailuresSource.Window = 7, time.Minute
			},
			detector: DetectorAuthFailuresSource, severity: store.SeverityWarning,
			summary: "7 authentication failures in 1m from 10.0.0.5",
			details: map[string]string{"count": "7", "window": "1m", "last_reason": "tls-bad-certificate"},
			misbehave: func(s sim) {
				// Each failure claims another ID (or none): only the
				// address ties them together.
				for i := range 7 {
					s.observe(events.Event{Kind: events.AuthFailed, Device: fmt.Sprintf("guess-%d", i), Remote: fmt.Sprintf("10.0.0.5:%d", 50000+i), Reason: "tls-bad-certificate"})
					s.h.clk.advance(time.Second)
				}
			},
		},
		{
			name: "envelope tag failures", detector: DetectorEnvelopeTagFailures, severity: store.SeverityWarning, device: "dev-1",
			summary: "3 sealed messages from device dev-1 failed authentication in 10m",
			misbehave: func(s sim) {
				for range 3 {
					s.observe(events.Event{Kind: events.EnvelopeRejected, Reason: "bad-tag"})
					// Faults that are not forgeries do not count.
					s.observe(events.Event{Kind: events.EnvelopeRejected, Reason: "epoch"})
					s.h.clk.advance(time.Minute)
				}
			},
		},
		{
			name: "envelope replays", detector: DetectorEnvelopeReplays, severity: store.SeverityCritical, device: "dev-1",
			summary: "5 sealed messages from device dev-1 were replays in 10m",
			misbehave: func(s sim) {
				for range 5 {
					s.observe(events.Event{Kind: events.EnvelopeRejected, Reason: "replay"})
					s.h.clk.advance(time.Second)
				}
			},
		},
		{
			name: "ACL denials", detector: DetectorACLDenials, severity: store.SeverityWarning, device: "dev-1",
			summary: "10 ACL denials in 10m for device dev-1, last publish on private/dev-2/up/x",
			details: map[string]string{"count": "10", "window": "10m", "last_topic": "private/dev-2/up/x", "last_reason": "publish", "remote": "192.0.2.1:5000"},
			misbehave: func(s sim) {
				for range 10 {
					s.observe(events.Event{Kind: events.ACLDenied, Topic: "private/dev-2/up/x", Reason: "publish"})
					s.h.clk.advance(10 * time.Second)
				}
			},
		},
		{
			name: "publish rate far above the baseline", detector: DetectorPublishRate, severity: store.SeverityWarning, device: "dev-1",
			summary: "device dev-1 published 61 messages in 1m, 61 times its baseline of 1.0",
			misbehave: func(s sim) {
				// 30 intervals of one publish learn a baseline of 1;
				// then 61 publishes in one interval (> 60, > 10 × 1).
				s.publishEvery(30, time.Minute, 100)
				s.publishEvery(61, 500*time.Millisecond, 100)
				s.h.clk.set(s.h.clk.now().Truncate(time.Minute).Add(time.Minute))
			},
		},
		{
			name: "payload size far above the average", detector: DetectorPayloadSize, severity: store.SeverityWarning, device: "dev-1",
			summary: "device dev-1 published a 5000-byte payload on private/dev-1/up/t, 50 times its average of 100 bytes",
			details: map[string]string{"size": "5000", "average": "100", "topic": "private/dev-1/up/t"},
			misbehave: func(s sim) {
				s.publishEvery(50, time.Minute, 100)
				s.publishEvery(1, time.Minute, 5000)
			},
		},
		{
			name: "connect flapping", detector: DetectorConnectFlapping, severity: store.SeverityInfo, device: "dev-1",
			summary: "device dev-1 connected 10 times in 10m",
			misbehave: func(s sim) {
				for range 10 {
					s.observe(events.Event{Kind: events.Connected})
					s.observe(events.Event{Kind: events.Disconnected, Reason: "EOF"})
					s.h.clk.advance(20 * time.Second)
				}
			},
		},
		{
			name: "cloned identity", detector: DetectorClonedIdentity, severity: store.SeverityCritical, device: "dev-1",
			summary: "device dev-1 connected alternately from 198.51.100.7 and 192.0.2.1, 2 changes of address in 10m: a cloned key?",
			details: map[string]string{"switches": "2", "window": "10m", "hosts": "198.51.100.7,192.0.2.1", "remote": "192.0.2.1"},
			misbehave: func(s sim) {
				// Each copy takes the session over from the other.
				s.observe(events.Event{Kind: events.Connected})
				s.h.clk.advance(time.Minute)
				s.observe(events.Event{Kind: events.Connected, Remote: "198.51.100.7:1234"})
				s.h.clk.advance(time.Minute)
				s.observe(events.Event{Kind: events.Connected})
				s.h.clk.advance(time.Minute)
			},
		},
		{
			name: "firmware outside the allowed set", detector: DetectorFirmware, severity: store.SeverityCritical, device: "dev-1",
			summary: "device dev-1 runs firmware 9.9.9, not among the versions allowed for model sensor-v2 (1.0.0, 1.1.0)",
			details: map[string]string{"model": "sensor-v2", "version": "9.9.9", "allowed": "1.0.0, 1.1.0", "remote": "192.0.2.1:5000"},
			misbehave: func(s sim) {
				s.observe(events.Event{Kind: events.FirmwareReported, Model: "sensor-v2", Version: "1.1.0"})
				s.observe(events.Event{Kind: events.FirmwareReported, Model: "sensor-v2", Version: "9.9.9"})
				// A model without a policy is not judged.
				s.observe(events.Event{Kind: events.FirmwareReported, Model: "unknown", Version: "0.0.1"})
				s.h.clk.advance(time.Minute)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{cfg: tt.cfg, firmware: firmwarePolicy{"sensor-v2": {"1.0.0", "1.1.0"}}})
			s := sim{h: h, device: "dev-1", remote: "192.0.2.1:5000"}
			start := h.clk.now()

			tt.misbehave(s)
			h.process()
			as := h.alerts()
			if len(as) != 1 {
				t.Fatalf("%d alerts after one misbehaviour, want 1: %+v", len(as), as)
			}
			a := as[0]
			if a.Detector != tt.detector || a.Severity != tt.severity || a.Device != tt.device || a.Summary != tt.summary ||
				a.Count != 1 || a.Response != store.ResponseNone || len(a.ID) != 16 {
				t.Errorf("alert = %+v\nwant detector %s, severity %s, device %q, count 1, summary\n%q", a, tt.detector, tt.severity, tt.device, tt.summary)
			}
			for k, v := range tt.details {
				if a.Details[k] != v {
					t.Errorf("details[%s] = %q, want %q (all: %v)", k, a.Details[k], v, a.Details)
				}
			}
			if got := h.audit.actions(); len(got) != 1 || got[0] != "alert."+tt.detector {
				t.Errorf("audit = %v, want [alert.%s]", got, tt.detector)
			}

			// Again within the cool-down: counted, not raised.
			tt.misbehave(s)
			h.process()
			as = h.alerts()
			if len(as) != 1 || as[0].Count != 2 || !as[0].LastSeen.After(a.LastSeen) {
				t.Fatalf("after a repeat: %+v, want one alert with count 2 and a later last seen", as)
			}

			// After the cool-down: a new alert.
			h.clk.set(start.Add(2 * time.Hour))
			tt.misbehave(s)
			h.process()
			as = h.alerts()
			if len(as) != 2 || as[1].Count != 1 || as[1].Detector != tt.detector {
				t.Fatalf("after the cool-down: %+v, want a second alert", as)
			}
			if v := counterValue(t, h.m.metrics.alerts.WithLabelValues(tt.detector, tt.severity)); v != 2 {
				t.Errorf("warden_alerts_total{%s,%s} = %v, want 2", tt.detector, tt.severity, v)
			}
		})
	}
}

// Just below every threshold nothing fires.
func TestDetectorsQuietBelowThreshold(t *testing.T) {
	h := newHarness(t, harnessOptions{firmware: firmwarePolicy{"sensor-v2": {"1.0.0"}}})
	s := sim{h: h, device: "dev-1", remote: "192.0.2.1:5000"}
	for range 9 {
		s.observe(events.Event{Kind: events.AuthFailed, Device: "dev-1", Remote: "10.0.0.5:1"})
		s.observe(events.Event{Kind: events.ACLDenied, Topic: "x", Reason: "read"})
	}
	for range 8 {
		s.observe(events.Event{Kind: events.Connected})
	}
	for range 2 {
		s.observe(events.Event{Kind: events.EnvelopeRejected, Reason: "bad-tag"})
	}
	for range 4 {
		s.observe(events.Event{Kind: events.EnvelopeRejected, Reason: "replay"})
	}
	// Roaming once is one change of address.
	s.observe(events.Event{Kind: events.Connected, Remote: "198.51.100.7:1"})
	// Learned, then 60 in one interval: not above the floor.
	s.publishEvery(30, time.Minute, 100)
	s.publishEvery(60, time.Second, 100)
	// Four times the average, below the floor.
	s.publishEvery(1, time.Minute, 400)
	s.observe(events.Event{Kind: events.FirmwareReported, Model: "sensor-v2", Version: "1.0.0"})
	h.tick()
	if as := h.alerts(); len(as) != 0 {
		t.Errorf("alerts below the thresholds: %+v", as)
	}
}

func TestSilence(t *testing.T) {
	h := newHarness(t, harnessOptions{cfg: func(c *config.Monitor) {
		c.Silence.Models = []config.ModelHeartbeat{{Model: "sleepy", Heartbeat: 24 * time.Hour}, {Model: "actuator", Heartbeat: 0}}
	}})
	for _, id := range []string{"dev-1", "sleepy-1", "actuator-1"} {
		h.m.Observe(events.Event{Kind: events.Connected, At: t0, Device: id, Remote: "192.0.2.1:1"})
	}
	h.m.Observe(events.Event{Kind: events.FirmwareReported, At: t0, Device: "sleepy-1", Model: "sleepy", Version: "1"})
	h.m.Observe(events.Event{Kind: events.FirmwareReported, At: t0, Device: "actuator-1", Model: "actuator", Version: "1"})
	// A device that only ever disconnected was never heard from.
	h.m.Observe(events.Event{Kind: events.Disconnected, At: t0, Device: "ghost"})

	h.clk.set(t0.Add(59 * time.Minute))
	h.tick()
	if as := h.alerts(); len(as) != 0 {
		t.Fatalf("alerts before the heartbeat passed: %+v", as)
	}
	h.clk.set(t0.Add(61 * time.Minute))
	h.tick()
	h.clk.set(t0.Add(3 * time.Hour))
	h.tick() // reported once, not at every check
	as := h.alerts()
	if len(as) != 1 {
		t.Fatalf("alerts = %+v, want one for dev-1", as)
	}
	want := "device dev-1 silent for 1h1m, longer than its heartbeat of 1h (last seen 2026-03-02T00:00:00Z)"
	if as[0].Detector != DetectorSilence || as[0].Device != "dev-1" || as[0].Summary != want {
		t.Errorf("alert = %+v\nwant summary %q", as[0], want)
	}
	// Heard from again, then silent again: reported again (a new alert,
	// the cool-down having passed).
	h.m.Observe(events.Event{Kind: events.Published, At: t0.Add(3 * time.Hour), Device: "dev-1", Size: 10})
	h.clk.set(t0.Add(4*time.Hour + 2*time.Minute))
	h.tick()
	// The sleepy model's own heartbeat passes a day later.
	h.clk.set(t0.Add(24*time.Hour + time.Minute))
	h.tick()
	as = h.alerts()
	var got []string
	for _, a := range as {
		got = append(got, a.Device)
	}
	if strings.Join(got, ",") != "dev-1,dev-1,sleepy-1" {
		t.Errorf("silent devices reported: %v, want dev-1, dev-1 and sleepy-1 (never actuator-1 or ghost)", got)
	}
}

func TestCertificateExpiry(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	day := 24 * time.Hour
	// A ten-year certificate with 20 days left, one that expired two
	// days ago, one far from expiry, and a 30-day certificate with 20
	// days left that a healthy device renews in time: only the first two
	// are news.
	soon := h.addDevice("old-1", t0.Add(-3630*day), t0.Add(20*day))
	expired := h.addDevice("old-2", t0.Add(-3650*day), t0.Add(-2*day))
	h.addDevice("new-1", t0, t0.Add(3650*day))
	h.addDevice("short-1", t0.Add(-10*day), t0.Add(20*day))

	h.m.scanCertificates(t.Context())
	h.m.scanCertificates(t.Context()) // one alert per certificate
	as := h.alerts()
	if len(as) != 2 {
		t.Fatalf("alerts = %+v, want two", as)
	}
	want := map[string]string{
		"old-1": "certificate " + soon.Serial + " of device old-1 expires in 20d (2026-03-22T00:00:00Z)",
		"old-2": "certificate " + expired.Serial + " of device old-2 expired 2d ago (2026-02-28T00:00:00Z)",
	}
	for _, a := range as {
		if a.Detector != DetectorCertExpiry || a.Summary != want[a.Device] {
			t.Errorf("alert = %+v\nwant summary %q", a, want[a.Device])
		}
	}
	// A restarted monitor remembers nothing in memory, but the store
	// refuses a second alert for the same certificate.
	h2 := newHarness(t, harnessOptions{storePath: h.path})
	h2.clk.set(t0.Add(day))
	h2.m.scanCertificates(t.Context())
	if as := h2.alerts(); len(as) != 2 {
		t.Errorf("after a restart: %d alerts, want still 2", len(as))
	}
}

// A peer-supplied ID or topic is cleaned before it reaches an alert.
func TestUntrustedStringsCleaned(t *testing.T) {
	h := newHarness(t, harnessOptions{cfg: func(c *config.Monitor) { c.AuthFailures.Threshold = 1 }})
	id := "evil\x1b[31m\n" + strings.Repeat("x", 10_000)
	h.m.Observe(events.Event{Kind: events.AuthFailed, At: t0, Device: id, Remote: "10.0.0.1:1", Reason: "no\x00pe"})
	h.process()
	as := h.alerts()
	if len(as) != 1 {
		t.Fatalf("alerts = %+v", as)
	}
	a := as[0]
	if len(a.Device) > store.MaxAlertFieldLength || strings.ContainsAny(a.Device+a.Summary, "\x1b\n\x00") || !strings.HasPrefix(a.Device, "evil?[31m?") {
		t.Errorf("unclean alert: device %q summary %q", a.Device, a.Summary)
	}
}

func TestRaise(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	f := Finding{Detector: "ota.rollout_paused", Severity: store.SeverityWarning, Subject: "rollout:ro-1", Summary: "rollout ro-1 paused: 30% failed",
		Details: map[string]string{"rollout": "ro-1"}}
	h.m.Raise(f)
	h.m.Raise(f)
	h.clk.advance(time.Minute)
	f.Subject = "rollout:ro-2"
	f.Severity = "bogus"
	h.m.Raise(f)
	h.process()
	as := h.alerts()
	if len(as) != 2 || as[0].Count != 2 || as[0].Detector != "ota.rollout_paused" || as[0].Details["rollout"] != "ro-1" ||
		as[1].Severity != store.SeverityWarning || as[1].Response != store.ResponseNone {
		t.Errorf("alerts = %+v", as)
	}
}

// The queue is bounded: findings beyond it are dropped and counted, and
// Observe never waits.
func TestQueueFullDrops(t *testing.T) {
	h := newHarness(t, harnessOptions{cfg: func(c *config.Monitor) {
		c.QueueSize = 16
		c.AuthFailures.Threshold = 1
	}})
	for i := range 20 {
		h.m.Observe(events.Event{Kind: events.AuthFailed, At: t0, Device: fmt.Sprintf("d%d", i)})
	}
	if v := counterValue(t, h.m.metrics.dropped); v != 4 {
		t.Errorf("warden_monitor_dropped_total = %v, want 4", v)
	}
	h.process()
	if as := h.alerts(); len(as) != 16 {
		t.Errorf("%d alerts, want 16", len(as))
	}
}

// Tables are bounded: beyond max_sources a new subject is not tracked.
func TestTablesBounded(t *testing.T) {
	h := newHarness(t, harnessOptions{cfg: func(c *config.Monitor) { c.MaxSources = 100 }})
	for i := range 150 {
		h.m.Observe(events.Event{Kind: events.AuthFailed, At: t0, Device: fmt.Sprintf("d%d", i), Remote: fmt.Sprintf("10.0.%d.%d:1", i/256, i%256)})
	}
	if n := h.m.claims.len(); n != 100 {
		t.Errorf("claims tracked = %d, want 100", n)
	}
	if v := counterValue(t, h.m.metrics.untrackedByTbl[tblClaims]); v != 50 {
		t.Errorf("untracked claims = %v, want 50", v)
	}
	// Idle subjects are forgotten, which makes room again.
	h.clk.set(t0.Add(time.Hour))
	h.tick()
	if n := h.m.claims.len() + h.m.sources.len(); n != 0 {
		t.Errorf("%d subjects tracked after they went idle, want 0", n)
	}
}

func TestDisabled(t *testing.T) {
	h := newHarness(t, harnessOptions{cfg: func(c *config.Monitor) {
		c.Enabled = false
		c.AuthFailures.Threshold = 1
	}})
	h.m.Observe(events.Event{Kind: events.AuthFailed, At: t0, Device: "d1"})
	h.m.Raise(Finding{Detector: "x", Summary: "y"})
	h.process()
	if as := h.alerts(); len(as) != 0 {
		t.Errorf("a disabled monitor raised %+v", as)
	}
}

func TestHostOf(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.5:4711": "10.0.0.5", "[2001:db8::1]:8883": "2001:db8::1", "2001:db8::1": "2001:db8::1",
		"host.example": "host.example", "": "", "[::1": "[::1", "pipe": "pipe",
	} {
		if got := hostOf(in); got != want {
			t.Errorf("hostOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWindow(t *testing.T) {
	const w = int64(time.Minute)
	var x window
	base := t0.UnixNano()
	for i := range 6 {
		x.add(base+int64(i)*int64(10*time.Second), w)
	}
	// Half-way through the next interval, half of the six still count.
	if got := x.add(base+w+w/2, w); got != 4 {
		t.Errorf("estimate = %v, want 3 + 1", got)
	}
	// Two intervals later nothing of them is left.
	if got := x.add(base+4*w, w); got != 1 {
		t.Errorf("estimate = %v, want 1", got)
	}
	// A clock that goes back still counts.
	if got := x.add(base, w); got < 2 {
		t.Errorf("estimate after the clock went back = %v", got)
	}
}

func TestLastSeen(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	if _, ok := h.m.LastSeen("dev-1"); ok {
		t.Fatal("seen before any event")
	}
	h.m.Observe(events.Event{Kind: events.Connected, At: t0, Device: "dev-1", Remote: "192.0.2.1:1"})
	h.m.Observe(events.Event{Kind: events.Published, At: t0.Add(time.Minute), Device: "dev-1", Size: 10})
	h.m.Observe(events.Event{Kind: events.Disconnected, At: t0.Add(2 * time.Minute), Device: "dev-1"})
	if got, ok := h.m.LastSeen("dev-1"); !ok || !got.Equal(t0.Add(time.Minute)) {
		t.Fatalf("LastSeen = %v %v, want the last publish", got, ok)
	}
}

func TestActivity(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	if _, ok := h.m.Activity("dev-1"); ok {
		t.Fatal("activity before any event")
	}
	h.m.Observe(events.Event{Kind: events.Connected, At: t0, Device: "dev-1", Remote: "192.0.2.1:1"})
	for i := range 3 {
		h.m.Observe(events.Event{Kind: events.Published, At: t0.Add(time.Duration(i) * time.Second), Device: "dev-1", Size: 10 * (i + 1)})
	}
	h.m.Observe(events.Event{Kind: events.ACLDenied, At: t0.Add(5 * time.Second), Device: "dev-1", Topic: "private/dev-2/up/x"})
	h.m.Observe(events.Event{Kind: events.Disconnected, At: t0.Add(6 * time.Second), Device: "dev-1"})
	h.m.Observe(events.Event{Kind: events.Connected, At: t0.Add(7 * time.Second), Device: "dev-1", Remote: "192.0.2.1:2"})
	h.m.Observe(events.Event{Kind: events.Published, At: t0.Add(8 * time.Second), Device: "dev-2", Size: 99})
	got, ok := h.m.Activity("dev-1")
	want := Activity{Messages: 3, Bytes: 60, Connects: 2, ACLDenials: 1}
	if !ok || got != want {
		t.Fatalf("Activity(dev-1) = %+v %v, want %+v", got, ok, want)
	}
	if got, _ := h.m.Activity("dev-2"); got != (Activity{Messages: 1, Bytes: 99}) {
		t.Fatalf("Activity(dev-2) = %+v", got)
	}
}
