package faults

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/sim"
	"github.com/warden-iot/warden/internal/wardentest"
)

// soakConfig is one soak's size. The CI soak is short; ADVERSARIAL_SOAK=1
// runs the full one, and ADVERSARIAL_SOAK_DEVICES and
// ADVERSARIAL_SOAK_DURATION (a Go duration) override either.
type soakConfig struct {
	Devices   int           // simulated TLS devices
	Envelope  int           // SDK envelope devices on the plain listener, rekeyed
	Duration  time.Duration // of the simulation, ramp included
	Interval  time.Duration // between one device's telemetry messages
	Sample    time.Duration // between memory samples
	Reconnect time.Duration // between forced reconnections (disable, enable)
	Revoke    time.Duration // between revocations
	MaxRevoke int           // revocations at most
	Rekey     time.Duration // between envelope rekeys
	Full      bool
}

func soakConfigFromEnv(t *testing.T) soakConfig {
	c := soakConfig{Devices: 200, Envelope: 4, Duration: 30 * time.Second, Interval: time.Second, Sample: time.Second,
		Reconnect: time.Second, Revoke: 5 * time.Second, MaxRevoke: 5, Rekey: 3 * time.Second}
	if os.Getenv("ADVERSARIAL_SOAK") != "" {
		c = soakConfig{Devices: 2000, Envelope: 8, Duration: 20 * time.Minute, Interval: 10 * time.Second, Sample: 10 * time.Second,
			Reconnect: 2 * time.Second, Revoke: 30 * time.Second, MaxRevoke: 40, Rekey: 20 * time.Second, Full: true}
	} else if slow() {
		// The race detector slows the server and the simulator several
		// times over; a smaller fleet keeps the same shape in budget.
		c.Devices, c.Duration = 100, 25*time.Second
	}
	if v := os.Getenv("ADVERSARIAL_SOAK_DEVICES"); v != "" {
		d, err := strconv.Atoi(v)
		if err != nil || d < 1 {
			t.Fatalf("ADVERSARIAL_SOAK_DEVICES=%q: want a positive number", v)
		}
		c.Devices = d
	}
	if v := os.Getenv("ADVERSARIAL_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 10*time.Second {
			t.Fatalf("ADVERSARIAL_SOAK_DURATION=%q: want a Go duration of at least 10s", v)
		}
		c.Duration = d
	}
	return c
}

// soakSample is one point of the memory curve.
type soakSample struct {
	At         time.Duration `json:"at_ns"`
	RSS        int64         `json:"rss_bytes"`
	HeapInuse  int64         `json:"heap_inuse_bytes"`
	HeapAlloc  int64         `json:"heap_alloc_bytes"`
	Goroutines int           `json:"goroutines"`
	OpenFDs    int           `json:"open_fds"`
	Threads    int           `json:"threads"`
	Connected  int           `json:"devices_connected"`
}

// Threat: slow exhaustion under an ordinary fleet's churn: memory or
// goroutines that grow with every reconnection, revocation or rekey until
// the server falls over, and messages lost or duplicated without a cause
// while devices come and go.
//
// Control: the broker's per-connection state ends with the connection
// (internal/broker, mochi's client lifecycle, bounded queues and in-flight
// limits: limits.client_send_queue, limits.max_inflight); revocation and
// disabling cut connections through registry events (internal/broker
// CutWhere); envelope rekeys (internal/sealing, registry) replace keys in
// place; QoS 1 uplinks are relayed before their PUBACK (internal/relay).
//
// The soak: N simulated devices (internal/sim, the Go SDK) publish QoS 1
// telemetry to a reader service for the run, while the test forces a
// reconnection (disable, then enable) every second, revokes a device
// every few seconds and rekeys one of the envelope devices (the SDK over
// the plain listener, publishing QoS 1 to a second reader) every few
// seconds. Memory (VmRSS, go_memstats_heap_inuse_bytes), goroutines and
// open files are sampled throughout and written as CSV and JSON; the
// heap's peak in the second half of the run after warm-up may not
// exceed the first half's by much (generous in CI, tight with
// ADVERSARIAL_STRICT=1), goroutines return to their baseline once every
// device disconnected, and every QoS 1 message acknowledged is received
// (lost = 0), each duplicate accounted for by a connection the test cut.
//
// CI: 200 devices for 30 s (100 under E2E_RACE). ADVERSARIAL_SOAK=1: 2,000
// devices for 20 minutes:
//
//	ADVERSARIAL_SOAK=1 go test -run TestSoak -timeout 40m -v ./test/adversarial/faults/
//
// (ADVERSARIAL_SOAK_OUT=DIR keeps the curve's files.)
func TestSoak(t *testing.T) {
	t.Parallel()
	cfg := soakConfigFromEnv(t)
	strict := os.Getenv("ADVERSARIAL_STRICT") != ""
	t.Logf("soak: %+v (strict bounds: %v)", cfg, strict)
	if dl, ok := t.Deadline(); ok && time.Until(dl) < cfg.Duration+5*time.Minute {
		t.Fatalf("the soak runs %v plus setup and drain; give go test a longer -timeout (e.g. -timeout %v)", cfg.Duration, (2*cfg.Duration + 10*time.Minute).Round(time.Minute))
	}
	if limit, ok := sim.FileLimit(); ok && uint64(cfg.Devices+cfg.Envelope+256) > limit {
		t.Fatalf("%d devices need about %d open files in this process; the limit is %d", cfg.Devices, cfg.Devices+256, limit)
	}
	n := startNode(t, "--mqtt", "127.0.0.1:0", "--service-max-inflight", "8192", "--service-send-queue", "8192",
		"--log-level", "info")
	ctx := context.Background()

	// Credentials: the fleet, the envelope devices, two readers.
	fleetDir := t.TempDir()
	for left := cfg.Devices; left > 0; left -= 1000 {
		n.mustCLI("device", "provision", "--count", fmt.Sprint(min(left, 1000)), "--model", "soak", "--out", fleetDir)
	}
	envDir := t.TempDir()
	for i := range cfg.Envelope {
		n.mustCLI("device", "add", fmt.Sprintf("soak-env-%d", i), "--out", envDir, "--envelope")
	}
	simSvc := n.AddService("soak-reader", "reader")
	envSvc := n.AddService("soak-env-reader", "reader")
	n.secrets.AddCredentialDir(t, fleetDir)
	n.secrets.AddCredentialDir(t, envDir)
	n.secrets.AddKeyFile(t, "soak-reader key", simSvc.Key)
	n.secrets.AddKeyFile(t, "soak-env-reader key", envSvc.Key)
	fleet, err := sim.LoadFleet(ctx, fleetDir, sim.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(fleet.Devices) != cfg.Devices {
		t.Fatalf("loaded %d devices, want %d", len(fleet.Devices), cfg.Devices)
	}

	baseGoroutines := int(n.Metric(t, "go_goroutines"))
	t.Logf("baseline: %d goroutines with no client connected", baseGoroutines)

	// Memory sampler.
	start := time.Now()
	var samples []soakSample
	var samplesMu sync.Mutex
	var connected atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampler, bg sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(cfg.Sample)
		defer tick.Stop()
		for {
			body, err := fetchMetrics(n.HTTP)
			ps, _ := n.ProcStatus() // zero where there is no /proc: RSS is then not judged
			if err == nil {
				s := soakSample{At: time.Since(start), RSS: ps.RSS, Threads: ps.Threads, Connected: int(connected.Load()),
					HeapInuse: int64(metricValue(body, "go_memstats_heap_inuse_bytes")), HeapAlloc: int64(metricValue(body, "go_memstats_heap_alloc_bytes")),
					Goroutines: int(metricValue(body, "go_goroutines")), OpenFDs: int(metricValue(body, "process_open_fds"))}
				samplesMu.Lock()
				samples = append(samples, s)
				samplesMu.Unlock()
			}
			select {
			case <-sampleCtx.Done():
				return
			case <-tick.C:
			}
		}
	})

	// Envelope devices: QoS 1 every 250 ms, rekeyed by the churn.
	envCol := newCollectorState()
	envCol.connect(t, n.MQTTS, envSvc, "fleet/+/up/soak")
	envAcked := map[string]bool{}
	var envMu sync.Mutex
	var rekeysApplied atomic.Int64
	var secretErrs []error
	envCtx, stopEnv := context.WithCancel(ctx)
	var envClients []*device.Client
	for i := range cfg.Envelope {
		id := fmt.Sprintf("soak-env-%d", i)
		cl := connectEnvelopeDevice(t, n, envDir, id, func(epoch uint32, secret []byte) {
			rekeysApplied.Add(1)
			if err := n.secrets.Add(fmt.Sprintf("envelope secret of %s epoch %d", id, epoch), secret); err != nil {
				envMu.Lock()
				secretErrs = append(secretErrs, err)
				envMu.Unlock()
			}
		})
		envClients = append(envClients, cl)
		bg.Go(func() {
			for seq := 0; envCtx.Err() == nil; seq++ {
				p := fmt.Sprintf("%s/%d", id, seq)
				pctx, cancel := context.WithTimeout(envCtx, 10*time.Second)
				err := cl.PublishUp(pctx, "soak", []byte(p), 1)
				cancel()
				if err == nil {
					envMu.Lock()
					envAcked[p] = true
					envMu.Unlock()
				}
				select {
				case <-envCtx.Done():
				case <-time.After(250 * time.Millisecond):
				}
			}
		})
	}

	// Churn.
	var reconnects, revokes, rekeys atomic.Int64
	var churnErrs []string
	var churnMu sync.Mutex
	churnErr := func(format string, args ...any) {
		churnMu.Lock()
		churnErrs = append(churnErrs, fmt.Sprintf(format, args...))
		churnMu.Unlock()
	}
	churnCtx, stopChurn := context.WithCancel(ctx)
	revoked := map[string]bool{}
	var revokedMu sync.Mutex
	pick := func() string {
		revokedMu.Lock()
		defer revokedMu.Unlock()
		for {
			id := fleet.Devices[rand.IntN(len(fleet.Devices))].ID
			if !revoked[id] {
				return id
			}
		}
	}
	// One churn action at a time, so that a device being disabled and
	// enabled is never revoked in between (enabling it would then fail).
	var actMu sync.Mutex
	every := func(d time.Duration, f func()) {
		bg.Go(func() {
			tick := time.NewTicker(d)
			defer tick.Stop()
			for {
				select {
				case <-churnCtx.Done():
					return
				case <-tick.C:
					actMu.Lock()
					f()
					actMu.Unlock()
				}
			}
		})
	}
	every(cfg.Reconnect, func() {
		id := pick()
		if _, errOut, err := n.cli("device", "disable", id, "--reason", "soak"); err != nil {
			churnErr("disable %s: %v %s", id, err, errOut)
			return
		}
		if _, errOut, err := n.cli("device", "enable", id); err != nil {
			churnErr("enable %s: %v %s", id, err, errOut)
			return
		}
		reconnects.Add(1)
	})
	every(cfg.Revoke, func() {
		if int(revokes.Load()) >= cfg.MaxRevoke {
			return
		}
		id := pick()
		revokedMu.Lock()
		revoked[id] = true
		revokedMu.Unlock()
		if _, errOut, err := n.cli("device", "revoke", id, "--reason", "soak"); err != nil {
			churnErr("revoke %s: %v %s", id, err, errOut)
			return
		}
		revokes.Add(1)
	})
	every(cfg.Rekey, func() {
		id := fmt.Sprintf("soak-env-%d", rand.IntN(cfg.Envelope))
		if _, errOut, err := n.cli("device", "rekey", id); err != nil {
			churnErr("rekey %s: %v %s", id, err, errOut)
			return
		}
		rekeys.Add(1)
	})

	// The run.
	simCtx, cancelSim := context.WithTimeout(ctx, cfg.Duration+5*time.Minute)
	defer cancelSim()
	cert, roots := simSvc.TLS(t)
	sum, err := sim.Run(simCtx, sim.Options{
		SwarmOptions: sim.SwarmOptions{
			Fleet:      fleet,
			Servers:    []string{"mqtts://" + n.MQTTS},
			Rate:       200,
			MinBackoff: 200 * time.Millisecond,
			MaxBackoff: 2 * time.Second,
			Telemetry:  sim.Telemetry{Interval: cfg.Interval, Size: 64, QoS: 1},
			StateDir:   t.TempDir(),
		},
		Consumer: &sim.ConsumerOptions{Server: "mqtts://" + n.MQTTS, Certificate: cert, RootCAs: roots},
		Duration: cfg.Duration,
		Drain:    20 * time.Second,
		Progress: func(p sim.Progress) { connected.Store(int64(p.Connected)) },
	})
	stopChurn()
	if err != nil {
		t.Fatal(err)
	}
	rampDone := time.Duration(sum.Devices.RampSeconds * float64(time.Second))

	// Envelope devices stop; every acknowledged message must arrive.
	stopEnv()
	var missing []string
	wardentest.Eventually(t, 30*time.Second, "every acknowledged envelope message at its reader", func() bool {
		got := envCol.snapshot()
		envMu.Lock()
		defer envMu.Unlock()
		missing = missing[:0]
		for p := range envAcked {
			if got[p] == 0 {
				missing = append(missing, p)
			}
		}
		return len(missing) == 0
	})
	for _, cl := range envClients {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_ = cl.Close(cctx)
		cancel()
	}
	envCol.close()
	bg.Wait() // churn and envelope publishers
	envGot := envCol.snapshot()
	envDups := 0
	for _, c := range envGot {
		envDups += c - 1
	}

	// Goroutines return to the baseline once every client is gone.
	var g int
	slack := 10
	if strict {
		slack = 2
	}
	wardentest.Eventually(t, 60*time.Second, "goroutines back to the baseline", func() bool {
		g = int(n.Metric(t, "go_goroutines"))
		return g <= baseGoroutines+slack
	})
	stopSampling()
	sampler.Wait()

	cuts := n.Metric(t, "warden_mqtt_forced_disconnects_total")
	js, _ := json.MarshalIndent(sum, "", "  ")
	t.Logf("simulation summary:\n%s", js)
	t.Logf("churn: %d forced reconnections, %d revocations, %d rekeys sent, %d applied by devices; %v forced disconnects counted by the broker; errors: %v",
		reconnects.Load(), revokes.Load(), rekeys.Load(), rekeysApplied.Load(), cuts, churnErrs)
	t.Logf("envelope devices: %d acknowledged, %d received distinct, %d duplicates", len(envAcked), len(envGot), envDups)
	t.Logf("goroutines: baseline %d, after the fleet left %d", baseGoroutines, g)
	for _, e := range secretErrs {
		t.Error(e)
	}
	if len(churnErrs) > 0 {
		t.Errorf("churn commands failed: %v", churnErrs)
	}

	// Messages: none lost, duplicates only where the test cut a connection.
	m := sum.Messages
	minSent := uint64(float64(cfg.Devices) * (cfg.Duration.Seconds() / cfg.Interval.Seconds()) / 4)
	if m.Sent < minSent {
		t.Errorf("only %d messages sent, want at least %d", m.Sent, minSent)
	}
	if m.Lost != 0 || m.Unexpected != 0 {
		t.Errorf("LOST MESSAGES: %d acknowledged messages never reached the reader (%d unexpected)", m.Lost, m.Unexpected)
	}
	if float64(m.Duplicates) > cuts {
		t.Errorf("%d duplicates, more than the %v connections the test cut (each cut can make a device resend at most its one unacknowledged message)", m.Duplicates, cuts)
	}
	if envDups > 0 {
		t.Errorf("%d duplicate envelope messages (their connections were never cut)", envDups)
	}
	if reconnects.Load() == 0 || revokes.Load() == 0 || rekeysApplied.Load() == 0 {
		t.Errorf("the churn did not happen: %d reconnections, %d revocations, %d rekeys applied", reconnects.Load(), revokes.Load(), rekeysApplied.Load())
	}

	// Memory.
	samplesMu.Lock()
	curve := slices.Clone(samples)
	samplesMu.Unlock()
	dir := t.TempDir()
	if out := os.Getenv("ADVERSARIAL_SOAK_OUT"); out != "" {
		dir = out
	}
	writeCurve(t, dir, curve)
	warm := max(rampDone, cfg.Duration/3)
	checkFlat(t, curve, warm, cfg.Duration, strict)
	n.checkAtRest()
}

// connectEnvelopeDevice connects the SDK as envelope device id over the
// plain listener, accepting rekeys (onRekey sees each new secret).
func connectEnvelopeDevice(t *testing.T, n *node, dir, id string, onRekey func(uint32, []byte)) *device.Client {
	t.Helper()
	bid, env, err := device.LoadEnvelopeBundle(filepath.Join(dir, id+".envelope.json"))
	if err != nil || bid != id {
		t.Fatalf("bundle of %s: %v", id, err)
	}
	counterFor := func(epoch uint32) (*envelope.Counter, error) {
		return envelope.NewCounter(envelope.NewFileCounterStore(filepath.Join(dir, fmt.Sprintf("%s.counter-%d", id, epoch))))
	}
	if env.Counter, err = counterFor(env.Epoch); err != nil {
		t.Fatal(err)
	}
	env.NewCounter = counterFor
	env.OnRekey = func(epoch uint32, secret []byte) error {
		onRekey(epoch, secret)
		return nil
	}
	env.DownlinkWindows = device.NewFileWindowStore(filepath.Join(dir, id+".windows"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := device.Connect(ctx, device.Config{
		Servers: []string{"mqtt://" + n.Plain}, DeviceID: id, Envelope: env,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
	})
	if err != nil {
		t.Fatalf("envelope device %s: %v", id, err)
	}
	t.Cleanup(func() { _ = cl.Close(context.Background()) })
	return cl
}

// fetchMetrics reads /metrics without a testing.TB (the sampler runs in
// its own goroutine).
func fetchMetrics(addr string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	b := readAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return string(b), nil
}

// metricValue is the value of the first sample of an unlabelled metric.
func metricValue(body, name string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return math.NaN()
}

// writeCurve writes the samples as soak-memory.csv and .json in dir and
// logs about a dozen of them.
func writeCurve(t *testing.T, dir string, curve []soakSample) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "soak-memory.csv"))
	if err != nil {
		t.Fatal(err)
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"seconds", "rss_bytes", "heap_inuse_bytes", "heap_alloc_bytes", "goroutines", "open_fds", "threads", "devices_connected"})
	for _, s := range curve {
		_ = w.Write([]string{strconv.FormatFloat(s.At.Seconds(), 'f', 1, 64), fmt.Sprint(s.RSS), fmt.Sprint(s.HeapInuse), fmt.Sprint(s.HeapAlloc),
			fmt.Sprint(s.Goroutines), fmt.Sprint(s.OpenFDs), fmt.Sprint(s.Threads), fmt.Sprint(s.Connected)})
	}
	w.Flush()
	if err := errors.Join(w.Error(), f.Close()); err != nil {
		t.Fatal(err)
	}
	writeJSON(t, filepath.Join(dir, "soak-memory.json"), curve)
	var b strings.Builder
	fmt.Fprintf(&b, "memory curve (%d samples, full curve in %s/soak-memory.{csv,json}):\n", len(curve), dir)
	fmt.Fprintf(&b, "%8s %9s %9s %10s %8s %6s\n", "t(s)", "RSS MiB", "heap MiB", "goroutines", "fds", "conn")
	step := max(1, len(curve)/12)
	for i := 0; i < len(curve); i += step {
		s := curve[i]
		fmt.Fprintf(&b, "%8.0f %9.1f %9.1f %10d %8d %6d\n", s.At.Seconds(), mib(s.RSS), mib(s.HeapInuse), s.Goroutines, s.OpenFDs, s.Connected)
	}
	if len(curve) > 0 {
		s := curve[len(curve)-1]
		fmt.Fprintf(&b, "%8.0f %9.1f %9.1f %10d %8d %6d (last)\n", s.At.Seconds(), mib(s.RSS), mib(s.HeapInuse), s.Goroutines, s.OpenFDs, s.Connected)
	}
	t.Log(b.String())
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// checkFlat compares the peaks of the heap and of the RSS in the two
// halves of the run after warm-up (while the fleet is connected) and logs
// the heap's trend.
func checkFlat(t *testing.T, curve []soakSample, warm, run time.Duration, strict bool) {
	t.Helper()
	var first, second []soakSample
	mid := warm + (run-warm)/2
	for _, s := range curve {
		switch {
		case s.At < warm || s.At > run:
		case s.At < mid:
			first = append(first, s)
		default:
			second = append(second, s)
		}
	}
	if len(first) < 2 || len(second) < 2 {
		t.Errorf("too few samples after warm-up (%v): %d and %d", warm, len(first), len(second))
		return
	}
	peak := func(ss []soakSample, f func(soakSample) int64) int64 {
		var m int64
		for _, s := range ss {
			m = max(m, f(s))
		}
		return m
	}
	// A least-squares slope of the heap after warm-up, for the report.
	var sx, sy, sxx, sxy, k float64
	for _, s := range append(slices.Clone(first), second...) {
		x, y := s.At.Minutes(), mib(s.HeapInuse)
		sx, sy, sxx, sxy, k = sx+x, sy+y, sxx+x*x, sxy+x*y, k+1
	}
	slope := (k*sxy - sx*sy) / (k*sxx - sx*sx)
	factor, slackMiB := 1.5, 16.0
	if strict {
		factor, slackMiB = 1.1, 4
	}
	for _, c := range []struct {
		name string
		f    func(soakSample) int64
	}{
		{"heap in use", func(s soakSample) int64 { return s.HeapInuse }},
		{"RSS", func(s soakSample) int64 { return s.RSS }},
	} {
		a, b := peak(first, c.f), peak(second, c.f)
		if a == 0 {
			t.Logf("%s: not sampled here", c.name)
			continue
		}
		t.Logf("%s peak after warm-up (%v): %.1f MiB in the first half, %.1f MiB in the second", c.name, warm.Round(time.Second), mib(a), mib(b))
		if mib(b) > mib(a)*factor+slackMiB {
			t.Errorf("MEMORY GROWTH: %s peak went from %.1f to %.1f MiB (allowed: x%.1f + %.0f MiB)", c.name, mib(a), mib(b), factor, slackMiB)
		}
	}
	t.Logf("heap-in-use trend after warm-up: %+.2f MiB per minute", slope)
}
