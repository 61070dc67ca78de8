package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/internal/sim"
	"github.com/warden-iot/warden/internal/wardentest"
)

// simReader registers a reader service and returns the consumer options
// for it on the server's mqtts listener.
func simReader(t *testing.T, s *wardentest.Server, name string) *sim.ConsumerOptions {
	t.Helper()
	dir := t.TempDir()
	s.MustWarden("service", "add", name, "--role", "reader", "--out", dir)
	cert, roots, err := device.LoadCredentials(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return &sim.ConsumerOptions{Server: "mqtts://" + s.MQTTS, Certificate: cert, RootCAs: roots}
}

// simProvision provisions n devices into a new fleet directory and returns
// it with their IDs.
func simProvision(t *testing.T, s *wardentest.Server, n int, extra ...string) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"device", "provision", "--count", fmt.Sprint(n), "--out", dir}, extra...)
	ids := strings.Fields(s.MustWarden(args...))
	if len(ids) != n {
		t.Fatalf("provisioned %d devices, want %d", len(ids), n)
	}
	return dir, ids
}

// The simulator against the real server: 50 provisioned devices and two
// envelope devices (on the plain listener) connect from two source
// addresses, publish QoS 1 telemetry for a few seconds, and the reader
// service receives every message exactly once through the relay.
//
// One reader takes the whole fleet's messages: with the default limits
// (64 QoS 1 messages in flight and 64 queued per session) the broker drops
// what a reader that falls behind (a loaded machine) cannot take at once,
// and the simulator reports it as lost. That is the broker's limit, not
// what this test checks, so the reader's session gets room.
func TestSimFleetAgainstWarden(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--mqtt", "127.0.0.1:0", "--service-max-inflight", "4096", "--service-send-queue", "4096")
	dir, ids := simProvision(t, s, 50)
	for _, id := range []string{"simenv-1", "simenv-2"} {
		s.MustWarden("device", "add", id, "--out", dir, "--envelope")
	}
	fleet, err := sim.LoadFleet(context.Background(), dir, sim.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(fleet.Devices) != len(ids)+2 {
		t.Fatalf("loaded %d devices, want %d", len(fleet.Devices), len(ids)+2)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sum, err := sim.Run(ctx, sim.Options{
		SwarmOptions: sim.SwarmOptions{
			Fleet:       fleet,
			Servers:     []string{"mqtts://" + s.MQTTS, "mqtt://" + s.Plain},
			SourceAddrs: []string{"127.0.0.2", "127.0.0.3"},
			Rate:        200,
			MinBackoff:  100 * time.Millisecond,
			MaxBackoff:  time.Second,
			Telemetry:   sim.Telemetry{Interval: 250 * time.Millisecond, Size: 80, QoS: 1},
			Commands:    true,
			StateDir:    t.TempDir(),
		},
		Consumer: simReader(t, s, "sim-reader"),
		Duration: 4 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.MarshalIndent(sum, "", "  ")
	t.Logf("summary:\n%s", js)

	n := len(fleet.Devices)
	if sum.Devices.Connected != n || sum.Devices.ConnectedAtEnd != n || sum.Settings.EnvelopeDevices != 2 {
		t.Errorf("devices %+v (envelope %d), want all %d connected", sum.Devices, sum.Settings.EnvelopeDevices, n)
	}
	m := sum.Messages
	// 52 devices at 4 messages a second for about 4 seconds: about 800,
	// fewer on a loaded machine, where a device skips a message while its
	// previous one waits for the broker.
	if m.Sent < uint64(4*n) || m.Received != m.Sent || m.Lost != 0 || m.Duplicates != 0 || m.Unexpected != 0 || m.Failed != 0 {
		t.Errorf("messages %+v: want every one of at least %d received exactly once", m, 4*n)
	}
	for name, l := range map[string]sim.Latency{"end-to-end": sum.Latency, "puback": sum.PublishLatency, "connect": sum.ConnectLatency} {
		if l.Count == 0 || l.Min <= 0 || l.Min > l.P50 || l.P50 > l.P99 || l.P99 > l.Max {
			t.Errorf("%s latency %+v: empty or out of order", name, l)
		}
	}
	if len(sum.Errors) != 0 {
		t.Errorf("errors %v: %v", sum.Errors, sum.ErrorSamples)
	}
	// The envelope devices' uplinks were sealed and opened by Warden.
	if v := s.Metric(t, "warden_envelope_failures_total"); v != 0 {
		t.Errorf("envelope failures: %v", v)
	}
}

// A command sent through the operator API reaches a simulated device,
// which answers it, and the summary counts it.
func TestSimAnswersCommands(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	dir, ids := simProvision(t, s, 5)
	fleet, err := sim.LoadFleet(context.Background(), dir, sim.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cl := estClient(t, filepath.Join(dir, "ca.crt"), nil)
	operator := strings.TrimSpace(s.MustWarden("token", "create", "--role", "operator", "--user", "otto"))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type outcome struct {
		sum sim.Summary
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		sum, err := sim.Run(ctx, sim.Options{
			SwarmOptions: sim.SwarmOptions{
				Fleet:     fleet,
				Servers:   []string{"mqtts://" + s.MQTTS},
				Telemetry: sim.Telemetry{Interval: time.Second, QoS: 1},
				Commands:  true,
			},
			Duration: 6 * time.Second,
		})
		done <- outcome{sum, err}
	}()

	// The device may not be connected, or not yet subscribed to its
	// commands, when the first call comes: 409 (offline) or 504
	// (unanswered) until it is.
	command := func(id, body string) string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			code, resp := apiCall(t, cl, s, "POST", "/v1/devices/"+id+"/commands", operator, body)
			if code == http.StatusOK {
				return resp
			}
			if time.Now().After(deadline) || (code != http.StatusConflict && code != http.StatusGatewayTimeout) {
				t.Fatalf("command %s to %s: %d %s", body, id, code, resp)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if resp := command(ids[0], `{"name":"echo","body":{"valve":"open"},"timeout_seconds":2}`); !strings.Contains(resp, `"status":"ok"`) || !strings.Contains(resp, `"body":{"valve":"open"}`) {
		t.Errorf("echo: %s", resp)
	}
	if resp := command(ids[1], `{"name":"ping","timeout_seconds":2}`); !strings.Contains(resp, `"status":"ok"`) || !strings.Contains(resp, `"body":{"pong":true}`) {
		t.Errorf("ping: %s", resp)
	}
	if resp := command(ids[2], `{"name":"self-destruct","timeout_seconds":2}`); !strings.Contains(resp, `"status":"rejected"`) || !strings.Contains(resp, `unknown command`) {
		t.Errorf("unknown command: %s", resp)
	}

	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	c := o.sum.Commands
	if c.Echo != 1 || c.Ping != 1 || c.Unknown != 1 || c.Received != 3 || c.Answered != 3 || c.Rejected != 1 || c.Dropped != 0 {
		t.Errorf("command counts %+v", c)
	}
	if o.sum.Devices.Connected != len(ids) || len(o.sum.Errors) != 0 {
		t.Errorf("devices %+v, errors %v %v", o.sum.Devices, o.sum.Errors, o.sum.ErrorSamples)
	}
}

// Simulated devices take a real rollout through the SDK's OTA agent:
// each verifies the release and the image, "installs" it and reports it
// booted, and the rollout completes.
func TestSimTakesRollout(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	r := newRelease(t)
	img, st := r.sign(t, "simfw", "2.0.0", 2, 20000)
	s.MustWarden("fw", "trust", r.pub)
	s.MustWarden("fw", "upload", img, "--statement", st)
	dir, ids := simProvision(t, s, 10, "--model", "simfw")
	out := s.MustWarden("rollout", "create", "--image", sha256File(t, img)[:12], "--stages", "100%", "--timeout", "5m")
	rid := strings.Fields(strings.TrimPrefix(out, "Created rollout "))[0]

	fleet, err := sim.LoadFleet(context.Background(), dir, sim.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sw, err := sim.StartSwarm(ctx, sim.SwarmOptions{
		Fleet:   fleet,
		Servers: []string{"mqtts://" + s.MQTTS},
		OTA:     &sim.OTAOptions{ReleaseKey: releasePub(t, r), Model: "simfw"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close(context.Background())
	deadline := time.Now().Add(20 * time.Second)
	for sw.OTA().Booted < uint64(len(ids)) {
		if time.Now().After(deadline) {
			errs, samples := sw.Errors()
			t.Fatalf("OTA %+v after 20s; errors %v %v; rollout devices %+v", sw.OTA(), errs, samples, rolloutDevices(t, s, rid))
		}
		time.Sleep(100 * time.Millisecond)
	}
	got := sw.OTA()
	if got.Offered != 10 || got.Verified != 10 || got.Installed != 10 || got.Failed+got.Refused+got.RolledBack != 0 || got.Bytes < 10*20000 {
		t.Errorf("OTA counts %+v", got)
	}
	waitRolloutState(t, s, rid, "completed")
	for _, d := range rolloutDevices(t, s, rid) {
		if d.State != "booted" {
			t.Errorf("device %s is %s", d.DeviceID, d.State)
		}
	}
}

// waitRolloutState waits until the rollout reaches state.
func waitRolloutState(t *testing.T, s *wardentest.Server, id, state string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, _ := rolloutState(t, s, id)
		if st == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout %s is %s, want %s\n%s", id, st, state, s.MustWarden("rollout", "status", id))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// BenchmarkSimDeviceCost measures what one simulated device costs the
// simulator's process once connected (mutual TLS, commands handled,
// telemetry every 10s), against a real server in its own process:
//
//	SIM_DEVICES=5000 go test -run '^$' -bench BenchmarkSimDeviceCost -benchtime 1x ./internal/e2e/
//
// It reports heap and stack bytes and goroutines per device, after a GC;
// SIM_HEAPPROFILE=FILE also writes the connected fleet's heap profile.
func BenchmarkSimDeviceCost(b *testing.B) {
	n := 2000
	if v := os.Getenv("SIM_DEVICES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			b.Fatalf("SIM_DEVICES=%q is not a positive number", v)
		}
	}
	s := wardentest.Start(b, b.TempDir(), "--log-level", "warn")
	dir := b.TempDir()
	t0 := time.Now()
	s.MustWarden("device", "provision", "--count", strconv.Itoa(n), "--out", dir)
	b.Logf("provisioned %d devices in %v", n, time.Since(t0))
	fleet, err := sim.LoadFleet(context.Background(), dir, sim.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		before := simMemory()
		ctx := context.Background()
		t0 = time.Now()
		sw, err := sim.StartSwarm(ctx, sim.SwarmOptions{
			Fleet: fleet, Servers: []string{"mqtts://" + s.MQTTS}, Rate: 500, Commands: true,
			Telemetry: sim.Telemetry{Interval: 10 * time.Second, QoS: 1},
		})
		if err != nil {
			b.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Duration(n)*10*time.Millisecond+time.Minute)
		err = sw.WaitConnected(wctx)
		cancel()
		if err != nil {
			errs, samples := sw.Errors()
			b.Fatalf("%v; errors %v %v", err, errs, samples)
		}
		ramp := time.Since(t0)
		time.Sleep(12 * time.Second) // a round of telemetry
		after := simMemory()
		if path := os.Getenv("SIM_HEAPPROFILE"); path != "" { // the connected fleet's heap, for go tool pprof
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.WriteHeapProfile(f); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
		st := sw.Stats()
		_ = sw.Close(ctx)
		per := func(a, b uint64) float64 { return float64(int64(a)-int64(b)) / float64(n) }
		b.ReportMetric(per(after.heap, before.heap), "heap-B/device")
		b.ReportMetric(per(after.stack, before.stack), "stack-B/device")
		b.ReportMetric(per(after.rss, before.rss), "rss-B/device")
		b.ReportMetric(per(uint64(after.goroutines), uint64(before.goroutines)), "goroutines/device")
		errs, samples := sw.Errors()
		b.Logf("%d devices connected in %v; %+v; errors %v %v; heap %d MiB, stacks %d MiB, RSS %d MiB, %d goroutines",
			n, ramp, st, errs, samples, after.heap>>20, after.stack>>20, after.rss>>20, after.goroutines)
	}
}

type simMem struct {
	heap, stack, rss uint64
	goroutines       int
}

func simMemory() simMem {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := simMem{heap: ms.HeapInuse, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				m.rss = kb << 10
			}
		}
	}
	return m
}
