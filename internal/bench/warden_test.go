package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/config"
)

// TestWardenConfig loads the generated file with Warden's own loader: it
// must validate, carry the benchmark's settings, and let the caller's
// overrides win.
func TestWardenConfig(t *testing.T) {
	dir := t.TempDir()
	l := wardenListeners{mqtts: "127.0.0.1:18883", http: "127.0.0.1:18080", plain: "127.0.0.1:11883"}
	o := WardenOptions{
		ClassicKeyExchange: true,
		LogLevel:           "debug",
		Config: map[string]any{
			"limits.connect_timeout":     30 * time.Second,
			"limits.client_send_queue":   256,
			"monitor.publish_rate.floor": 100,
		},
	}
	b, err := wardenConfig(o, dir, l)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "warden.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.LoadOptions{File: path})
	if err != nil {
		t.Fatalf("Warden refuses the generated configuration: %v\n%s", err, b)
	}
	def := config.Default()
	checks := []struct {
		name      string
		got, want any
	}{
		{"data", cfg.Data, dir},
		{"mqtts", cfg.MQTTS.Addr, l.mqtts},
		{"mqtts profile (default)", cfg.MQTTS.TLSProfile, def.MQTTS.TLSProfile},
		{"http", cfg.HTTP.Addr, l.http},
		{"api off", cfg.API.Addr, ""},
		{"plain", cfg.MQTT.Addr, l.plain},
		{"log level", cfg.Log.Level, "debug"},
		{"hybrid pq", cfg.TLS.HybridPQ, false},
		{"connection rate", cfg.Limits.ConnectionRate, float64(1000000)},
		{"connection burst", cfg.Limits.ConnectionBurst, 1000000},
		{"flap", cfg.Limits.FlapMaxConnects, 1000},
		{"publish rate", cfg.Limits.PublishRate, float64(1000000)},
		{"connect timeout (override)", cfg.Limits.ConnectTimeout, 30 * time.Second},
		{"send queue (override)", cfg.Limits.ClientSendQueue, 256},
		{"inflight (default)", cfg.Limits.MaxInflight, def.Limits.MaxInflight},
		{"cloned identity", cfg.Monitor.ClonedIdentity.Enabled, false},
		{"flapping detector", cfg.Monitor.ConnectFlapping.Threshold, 1000000},
		{"monitor (default: on)", cfg.Monitor.Enabled, true},
		{"publish rate floor (override)", cfg.Monitor.PublishRate.Floor, 100},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v (%T), want %v (%T)", c.name, c.got, c.got, c.want, c.want)
		}
	}
	// Every changed key says why.
	for _, s := range benchmarkSettings() {
		last := s.key[strings.LastIndex(s.key, ".")+1:]
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, last+":") && strings.Contains(line, "#") {
				found = true
			}
		}
		if !found {
			t.Errorf("%s has no comment in\n%s", s.key, b)
		}
	}

	if _, err := wardenConfig(WardenOptions{Config: map[string]any{"limits.connection_rate.x": 1}}, dir, l); err == nil {
		t.Error("a key below a value was accepted")
	}
	if _, err := wardenConfig(WardenOptions{Config: map[string]any{"http.addr": ":8080"}}, dir, l); err == nil {
		t.Error("the caller moved the listener the benchmark polls")
	}
	b, err = wardenConfig(WardenOptions{Config: map[string]any{"limits.nonsense": 1}}, dir, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(config.LoadOptions{File: path}); err == nil || !strings.Contains(err.Error(), "limits.nonsense") {
		t.Errorf("Warden did not name the unknown key: %v", err)
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0s", time.Minute: "60s", 1500 * time.Millisecond: "1500ms", time.Microsecond: "1µs"} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestWarden provisions a fleet, starts Warden on it, connects a device
// with the SDK and the consumer with paho, and checks that the process
// statistics and the heap scrape are plausible.
func TestWarden(t *testing.T) {
	bin := wardenBinary(t)
	f := provision(t, 20, "")
	if len(f.Devices) != 20 || f.Reused != 0 {
		t.Fatalf("fleet of %d devices (%d reused)", len(f.Devices), f.Reused)
	}
	for _, id := range f.Devices {
		for _, p := range []string{f.CertFile(id), f.KeyFile(id)} {
			if _, err := os.Stat(p); err != nil {
				t.Fatal(err)
			}
		}
	}

	ctx := t.Context()
	p, err := StartWarden(ctx, WardenOptions{Binary: bin, DataDir: f.DataDir})
	if err != nil {
		t.Fatal(err)
	}
	stopProc(t, p)
	if p.Addr == "" || p.HTTPAddr == "" || p.APIAddr != "" || p.PID <= 0 || p.Version == "" {
		t.Fatalf("proc %+v", p)
	}
	roots, err := p.ServerRoots()
	if err != nil {
		t.Fatal(err)
	}

	cert, key := f.ConsumerCertFile(), f.ConsumerKeyFile()
	consumerCert, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	consumer := connectMQTT(t, p.Addr, consumerCert, roots, f.Consumer)
	consumer.subscribe(t, "fleet/#")

	id := f.Devices[0]
	devCert, devRoots, err := device.LoadCredentials(f.CertFile(id), f.KeyFile(id), f.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dev, err := device.Connect(cctx, device.Config{
		Servers: []string{"mqtts://" + p.Addr}, Certificate: devCert, RootCAs: devRoots, ServerName: p.ServerName,
	})
	if err != nil {
		t.Fatalf("device %s: %v\n%s", id, err, logTail(p.LogPath, 20))
	}
	defer dev.Close(context.Background())
	if err := dev.PublishUp(cctx, "x", []byte("hello"), 1); err != nil {
		t.Fatal(err)
	}
	if m := consumer.await(t, "fleet/"+id+"/up/x"); !strings.Contains(string(m.Payload), "hello") {
		t.Errorf("relayed payload %q", m.Payload)
	}

	st, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.RSS < 8<<20 || st.RSS > 4<<30 {
		t.Errorf("Warden's RSS = %d bytes", st.RSS)
	}
	if st.CPU <= 0 {
		t.Errorf("Warden used no CPU time: %+v", st)
	}
	// Three listening sockets (mqtts, http, admin), two connections,
	// the stores.
	if st.FDs < 6 || st.Threads < 2 {
		t.Errorf("Warden has %d files and %d threads", st.FDs, st.Threads)
	}
	heap, err := ScrapeGoHeap(ctx, p.MetricsURL())
	if err != nil {
		t.Fatal(err)
	}
	if heap.HeapInuse == 0 || heap.HeapAlloc == 0 || heap.HeapInuse > st.RSS || heap.Goroutines < 5 {
		t.Errorf("Warden's heap %+v with RSS %d", heap, st.RSS)
	}
	smp, err := StartSampler(ctx, SamplerOptions{PID: p.PID, Interval: 20 * time.Millisecond, MetricsURL: p.MetricsURL()})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	series := smp.Stop()
	if err := smp.Err(); err != nil || len(series) < 2 || series[0].Heap == nil || series[0].Heap.HeapInuse == 0 || series[0].Stats.RSS == 0 {
		t.Errorf("sampling Warden: %d samples, first %+v, error %v", len(series), series[0], err)
	}
	if b, err := os.ReadFile(p.LogPath); err != nil || !strings.Contains(string(b), "connected") {
		t.Errorf("the log %s does not show the connection (%v)", p.LogPath, err)
	}

	// Envelope devices are provisioned on the data directory directly,
	// which must not be in use.
	_, err = ProvisionFleet(ctx, FleetOptions{Binary: bin, DataDir: f.DataDir, Dir: filepath.Join(t.TempDir(), "env"), Devices: 1, Envelope: "ccm-8"})
	if err == nil || !strings.Contains(err.Error(), "running") {
		t.Errorf("envelope provisioning beside a running server: %v", err)
	}

	// TLS devices can be added while it runs (through its admin socket).
	more, err := ProvisionFleet(ctx, FleetOptions{Binary: bin, DataDir: f.DataDir, Dir: f.Dir, Devices: 22})
	if err != nil {
		t.Fatal(err)
	}
	if len(more.Devices) != 22 || more.Reused != 20 {
		t.Errorf("top-up: %d devices, %d reused; want 22 and 20", len(more.Devices), more.Reused)
	}

	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Exited():
	default:
		t.Fatal("Stop returned before the process exited")
	}
	if _, err := ProcStats(p.PID); err == nil {
		t.Error("stats of a stopped server")
	}
}

// TestStartWardenFails: a configuration Warden refuses ends StartWarden
// with Warden's message, not with a timeout.
func TestStartWardenFails(t *testing.T) {
	bin := wardenBinary(t)
	start := time.Now()
	_, err := StartWarden(t.Context(), WardenOptions{Binary: bin, DataDir: t.TempDir(), Config: map[string]any{"limits.publish_burst": 0}})
	if err == nil || !strings.Contains(err.Error(), "publish_burst") {
		t.Fatalf("StartWarden with a bad value: %v", err)
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("took %v to notice", time.Since(start))
	}
}

// TestProvisionFleet checks reuse, and that a fleet of another data
// directory is replaced rather than mixed in.
func TestProvisionFleet(t *testing.T) {
	bin := wardenBinary(t)
	ctx := t.Context()
	base := t.TempDir()
	dir := filepath.Join(base, "fleet")
	var calls []int
	f1, err := ProvisionFleet(ctx, FleetOptions{Binary: bin, DataDir: filepath.Join(base, "a"), Dir: dir, Devices: 5,
		Progress: func(done, total int) { calls = append(calls, done) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) == 0 || calls[len(calls)-1] != 5 {
		t.Errorf("progress %v", calls)
	}

	// Fewer devices than provisioned: the same first IDs, nothing new.
	f2, err := ProvisionFleet(ctx, FleetOptions{Binary: bin, DataDir: filepath.Join(base, "a"), Dir: dir, Devices: 3})
	if err != nil {
		t.Fatal(err)
	}
	if f2.Reused != 3 || strings.Join(f2.Devices, ",") != strings.Join(f1.Devices[:3], ",") {
		t.Errorf("reuse: %v (%d reused), want %v", f2.Devices, f2.Reused, f1.Devices[:3])
	}

	// A lost key: that device is replaced.
	if err := os.Remove(f1.KeyFile(f1.Devices[1])); err != nil {
		t.Fatal(err)
	}
	f3, err := ProvisionFleet(ctx, FleetOptions{Binary: bin, DataDir: filepath.Join(base, "a"), Dir: dir, Devices: 5})
	if err != nil {
		t.Fatal(err)
	}
	if f3.Reused != 4 || len(f3.Devices) != 5 {
		t.Errorf("after a lost key: %d devices, %d reused", len(f3.Devices), f3.Reused)
	}
	if _, err := os.Stat(f1.CertFile(f1.Devices[1])); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the broken device's certificate is still there: %v", err)
	}

	// Another data directory: a new fleet, with no file of the old one.
	f4, err := ProvisionFleet(ctx, FleetOptions{Binary: bin, DataDir: filepath.Join(base, "b"), Dir: dir, Devices: 2})
	if err != nil {
		t.Fatal(err)
	}
	if f4.Reused != 0 || f4.RootSHA256 == f1.RootSHA256 {
		t.Errorf("fleet of another data directory: %d reused, root %s", f4.Reused, f4.RootSHA256)
	}
	for _, id := range f3.Devices {
		if _, err := os.Stat(f3.CertFile(id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("device %s of the old data directory is still in the fleet directory", id)
		}
	}
	if _, err := tls.LoadX509KeyPair(f4.ConsumerCertFile(), f4.ConsumerKeyFile()); err != nil {
		t.Errorf("consumer: %v", err)
	}
	ca, err := os.ReadFile(f4.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(filepath.Join(base, "b", "pki", "root.crt"))
	if err != nil || string(ca) != string(root) {
		t.Errorf("ca.crt is not the new data directory's root (%v)", err)
	}

	// A directory that is not a fleet's is refused.
	foreign := filepath.Join(base, "foreign")
	if err := os.MkdirAll(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(foreign, "notes.txt"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ProvisionFleet(ctx, FleetOptions{Binary: bin, DataDir: filepath.Join(base, "b"), Dir: foreign, Devices: 1}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("a foreign directory: %v", err)
	}
}

// TestEnvelopeFleet provisions envelope devices in-process and connects
// one over Warden's plain listener with the SDK.
func TestEnvelopeFleet(t *testing.T) {
	bin := wardenBinary(t)
	f := provision(t, 3, "ccm-8")
	for _, id := range f.Devices {
		for _, suffix := range []string{".crt", ".key", ".envelope.json", ".envelope.bin", ".envelope.h"} {
			fi, err := os.Stat(filepath.Join(f.Dir, id+suffix))
			if err != nil {
				t.Fatal(err)
			}
			if suffix != ".crt" && fi.Mode().Perm() != 0o600 {
				t.Errorf("%s%s has mode %v", id, suffix, fi.Mode().Perm())
			}
		}
	}
	id := f.Devices[0]
	bid, env, err := device.LoadEnvelopeBundle(f.BundleFile(id))
	if err != nil || bid != id {
		t.Fatalf("bundle of %s: %v (id %q)", id, err, bid)
	}
	if env.Counter, err = envelope.NewCounter(envelope.NewFileCounterStore(filepath.Join(t.TempDir(), "counter"))); err != nil {
		t.Fatal(err)
	}

	ctx := t.Context()
	p, err := StartWarden(ctx, WardenOptions{Binary: bin, DataDir: f.DataDir, PlainMQTT: true})
	if err != nil {
		t.Fatal(err)
	}
	stopProc(t, p)
	if p.PlainAddr == "" {
		t.Fatal("no plain listener")
	}
	roots, err := p.ServerRoots()
	if err != nil {
		t.Fatal(err)
	}
	consumerCert, err := tls.LoadX509KeyPair(f.ConsumerCertFile(), f.ConsumerKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	consumer := connectMQTT(t, p.Addr, consumerCert, roots, f.Consumer)
	consumer.subscribe(t, "fleet/#")

	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dev, err := device.Connect(cctx, device.Config{Servers: []string{"mqtt://" + p.PlainAddr}, DeviceID: id, Envelope: env})
	if err != nil {
		t.Fatalf("envelope device %s: %v\n%s", id, err, logTail(p.LogPath, 20))
	}
	defer dev.Close(context.Background())
	if err := dev.PublishUp(cctx, "x", []byte("sealed hello"), 1); err != nil {
		t.Fatal(err)
	}
	if m := consumer.await(t, "fleet/"+id+"/up/x"); !strings.Contains(string(m.Payload), "sealed hello") {
		t.Errorf("relayed payload %q", m.Payload)
	}
}
