package bench

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunEveryScenario runs the whole benchmark at a toy size against the
// real warden binary, the bare TLS server and Mosquitto: every scenario
// must produce its figures, the ratios must be computed against the
// yardsticks, nothing may be lost at QoS 1 on Mosquitto, and the sealed
// scenario's envelope devices must get their messages through Warden's
// plain listener and relay without losing any (Warden's figures are what
// the benchmark is for; their targets are not asserted here, but the run
// must not fail).
func TestRunEveryScenario(t *testing.T) {
	requireMosquitto(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var log bytes.Buffer
	profiles := t.TempDir()
	results, err := Run(ctx, RunOptions{
		Binary: wardenBinary(t), WorkDir: t.TempDir(),
		Devices: 40, ThroughputDevices: 8, SealedDevices: 8, PacedDevices: 20, PacedRate: 200,
		Duration: time.Second, StormConcurrency: 16, Settle: 300 * time.Millisecond, Log: &log,
		ProfileDir: profiles,
	})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, log.String())
	}
	// Warden's profiles, each with its flame graph.
	for _, name := range []string{"warden-idle-heap", "warden-storm-cpu", "warden-throughput-qos1-cpu"} {
		for _, ext := range []string{".pb.gz", ".svg"} {
			if fi, err := os.Stat(filepath.Join(profiles, name+ext)); err != nil || fi.Size() == 0 {
				t.Errorf("profile %s%s: %v\n%s", name, ext, err, log.String())
			}
		}
	}
	want := map[string]int{"idle": 2, "storm": 3, "throughput": 8, "sealed": 4, "paced": 2}
	got := map[string]int{}
	for _, r := range results {
		got[r.Scenario]++
		if len(r.Metrics) == 0 {
			t.Errorf("%s %s has no metrics", r.Scenario, r.Subject)
		}
	}
	for s, n := range want {
		if got[s] != n {
			t.Errorf("%d %s results, want %d (got %v)", got[s], s, n, got)
		}
	}
	ratios := 0
	for _, r := range results {
		ratios += len(r.Ratios)
		if r.Subject == "mosquitto" && (r.Scenario == "throughput" || r.Scenario == "paced") {
			m, ok := r.Metric(MetricMessagesPerSecond)
			if !ok || m.Value <= 0 {
				t.Errorf("mosquitto %s %v: no messages per second", r.Scenario, r.Parameters)
			}
			if r.Parameters["qos"] == byte(1) {
				if lost, _ := r.Metric("lost"); lost.Value != 0 {
					t.Errorf("mosquitto lost %v QoS 1 messages: %v", lost.Value, r.Parameters)
				}
			}
		}
		if r.Scenario == ScenarioSealed {
			if r.Subject != "warden" || r.Parameters["envelope"] != DefaultSealedSuite {
				t.Errorf("sealed result of %s with %v, want warden with %s envelopes", r.Subject, r.Parameters, DefaultSealedSuite)
			}
			if m, _ := r.Metric(MetricMessagesPerSecond); m.Value <= 0 {
				t.Errorf("sealed %v: %v messages/s", r.Parameters, m.Value)
			}
			for _, name := range []string{"lost", "duplicates", "publish_errors"} {
				if m, ok := r.Metric(name); !ok || m.Value != 0 {
					t.Errorf("sealed %v: %s = %v (present: %v), want 0", r.Parameters, name, m.Value, ok)
				}
			}
			// Sealing adds at least a header and a tag to the plaintext.
			if m, _ := r.Metric("envelope_bytes"); m.Value <= float64(r.Parameters["payload_bytes"].(int)) {
				t.Errorf("sealed %v: envelopes of %v bytes on average", r.Parameters, m.Value)
			}
			if len(r.Ratios) != 2 || r.Ratios[0].Yardstick != mutualTLSYardstick || r.Ratios[0].Value <= 0 {
				t.Errorf("sealed %v: ratios %+v, want messages/s and CPU per message against %s", r.Parameters, r.Ratios, mutualTLSYardstick)
			}
		}
		if r.Scenario == "storm" && r.Subject != "tls-baseline" {
			if m, _ := r.Metric(MetricHandshakesPerSecond); m.Value <= 0 {
				t.Errorf("%s storm: %v handshakes/s", r.Subject, m.Value)
			}
			if m, _ := r.Metric("control_sessions_dropped"); m.Value != 0 {
				t.Errorf("%s dropped %v established sessions in the storm", r.Subject, m.Value)
			}
			// The control group ran in its own process and measured
			// both windows.
			if p, _ := r.Parameters["control_process"].(string); p == "" {
				t.Errorf("%s storm: no control_process parameter (the control group did not run on its own)", r.Subject)
			}
			for _, name := range []string{"control_p99_calm", "control_p99_storm"} {
				if m, ok := r.Metric(name); !ok || m.Value <= 0 {
					t.Errorf("%s storm: %s = %v, %v", r.Subject, name, m.Value, ok)
				}
			}
		}
	}
	if ratios < 16 {
		t.Errorf("%d ratios, want the idle, storm (2), throughput (4), sealed (8) and paced ones", ratios)
	}
	var table bytes.Buffer
	if err := PrintTable(&table, results); err != nil || !strings.Contains(table.String(), "warden / mosquitto") {
		t.Errorf("table: %v\n%s", err, table.String())
	}
	out := filepath.Join(t.TempDir(), "r.json")
	if err := WriteJSON(out, results); err != nil {
		t.Fatal(err)
	}
	rep, err := ReadJSON(out)
	if err != nil || len(rep.Results) != len(results) {
		t.Fatalf("ReadJSON: %v, %d results", err, len(rep.Results))
	}
}
