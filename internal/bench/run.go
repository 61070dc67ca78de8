package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Scenario names, as `warden bench --scenarios` takes them.
const (
	ScenarioIdle       = "idle"
	ScenarioStorm      = "storm"
	ScenarioThroughput = "throughput"
	ScenarioSealed     = "sealed"
	ScenarioPaced      = "paced"
	ScenarioBaseline   = "baseline"
	ScenarioCompare    = "compare"
)

// AllScenarios is the default run, in the order it runs.
var AllScenarios = []string{ScenarioIdle, ScenarioStorm, ScenarioBaseline, ScenarioThroughput, ScenarioSealed, ScenarioPaced, ScenarioCompare}

// RunOptions configures a benchmark run.
type RunOptions struct {
	// Binary is the warden executable; default os.Executable().
	Binary string
	// WorkDir holds the data directory (data/), the fleet (fleet/) and the
	// other servers' files; reused by later runs so that the fleet is
	// provisioned once.
	WorkDir string
	// Devices for idle and storm; ThroughputDevices publish in the
	// throughput scenario (default 100); the paced load runs PacedDevices
	// (default 1000) at PacedRate messages per second (default 5000) in
	// total.
	Devices, ThroughputDevices, PacedDevices int
	PacedRate                                float64
	// SealedDevices are the envelope devices of the sealed scenario
	// (default ThroughputDevices, so that its ratio against the
	// throughput scenario compares the same load), sealing with
	// SealedSuite (default DefaultSealedSuite). They are a fleet of their
	// own (WorkDir/fleet-sealed), registered in the same data directory.
	SealedDevices int
	SealedSuite   string
	// Scenarios to run (default AllScenarios). Compare repeats idle,
	// storm, throughput and paced against Mosquitto (sealed has no
	// Mosquitto equivalent: its yardstick is Warden's own throughput).
	Scenarios []string
	// Duration of each throughput and paced measurement (default 10s),
	// and Window the closed loop's messages in flight per device (default
	// 4).
	Duration time.Duration
	Window   int
	// Concurrency is how many connections are set up at once (default 64
	// for the initial connection, 512 in the storm).
	Concurrency, StormConcurrency int
	// ClassicKeyExchange runs Warden and the bare TLS server with X25519
	// only, the key exchange Mosquitto with OpenSSL 3.0 negotiates.
	ClassicKeyExchange bool
	// ProfileDir, if set, turns http.pprof on in the Warden under test and
	// writes its profiles there, each as NAME.pb.gz and a flame graph
	// NAME.svg: the heap after idle (warden-idle-heap), the CPU during the
	// storm (warden-storm-cpu), during the QoS 1, 64-byte throughput run
	// (warden-throughput-qos1-cpu, and its allocations,
	// warden-throughput-qos1-allocs) and during the paced load
	// (warden-paced-cpu).
	ProfileDir string
	// Settle is how long the idle scenario lets the server's memory settle
	// before each reading (default 5s).
	Settle time.Duration
	// Mosquitto is its executable (default: found on PATH or /usr/sbin).
	Mosquitto string
	// Log receives progress lines; Progress, if set, draws bars.
	Log      io.Writer
	Progress func(what string, done, total int)
}

func (o *RunOptions) defaults() {
	if o.Devices <= 0 {
		o.Devices = 1000
	}
	if o.ThroughputDevices <= 0 {
		o.ThroughputDevices = 100
	}
	if o.PacedDevices <= 0 {
		o.PacedDevices = 1000
	}
	if o.PacedRate <= 0 {
		o.PacedRate = 5000
	}
	if o.SealedDevices <= 0 {
		o.SealedDevices = o.ThroughputDevices
	}
	if o.SealedSuite == "" {
		o.SealedSuite = DefaultSealedSuite
	}
	if len(o.Scenarios) == 0 {
		o.Scenarios = AllScenarios
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.Window <= 0 {
		o.Window = 4
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 64
	}
	if o.StormConcurrency <= 0 {
		o.StormConcurrency = 512
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
}

func (o *RunOptions) progress(what string) func(done, total int) {
	if o.Progress == nil {
		return nil
	}
	return func(done, total int) { o.Progress(what, done, total) }
}

// Run provisions (or reuses) the fleet, starts the servers it needs one
// after the other, runs the scenarios and returns their results, with the
// ratios the targets are stated in.
func Run(ctx context.Context, o RunOptions) ([]Result, error) {
	o.defaults()
	for _, s := range o.Scenarios {
		if !slices.Contains(AllScenarios, s) {
			return nil, fmt.Errorf("unknown scenario %q (have %v)", s, AllScenarios)
		}
	}
	want := func(s string) bool { return slices.Contains(o.Scenarios, s) }
	// The TLS fleet holds at least the consumer, which the sealed
	// scenario reads with too; compare runs idle, storm, throughput and
	// paced against Mosquitto.
	need := 1
	if want(ScenarioIdle) || want(ScenarioStorm) || want(ScenarioBaseline) || want(ScenarioCompare) {
		need = max(need, o.Devices)
	}
	if want(ScenarioThroughput) || want(ScenarioCompare) {
		need = max(need, o.ThroughputDevices)
	}
	if want(ScenarioPaced) || want(ScenarioCompare) {
		need = max(need, o.PacedDevices)
	}
	dataDir := filepath.Join(o.WorkDir, "data")
	fmt.Fprintf(o.Log, "Provisioning (or reusing) %d devices in %s\n", need, o.WorkDir)
	fleet, err := ProvisionFleet(ctx, FleetOptions{Binary: o.Binary, DataDir: dataDir, Dir: filepath.Join(o.WorkDir, "fleet"),
		Devices: need, Progress: o.progress("provisioning")})
	if err != nil {
		return nil, err
	}
	ids, consumer, err := LoadIdentities(fleet, need)
	if err != nil {
		return nil, err
	}
	var envDevs []*EnvelopeDevice
	if want(ScenarioSealed) {
		// Envelope devices are provisioned on the data directory directly,
		// so before Warden starts.
		fmt.Fprintf(o.Log, "Provisioning (or reusing) %d %s envelope devices\n", o.SealedDevices, o.SealedSuite)
		ef, err := ProvisionFleet(ctx, FleetOptions{Binary: o.Binary, DataDir: dataDir, Dir: filepath.Join(o.WorkDir, "fleet-sealed"),
			Devices: o.SealedDevices, Envelope: o.SealedSuite, Consumer: DefaultSealedConsumer, Progress: o.progress("provisioning envelope devices")})
		if err != nil {
			return nil, err
		}
		if envDevs, err = LoadEnvelopeDevices(ef, o.SealedDevices); err != nil {
			return nil, err
		}
	}

	var results []Result
	fmt.Fprintln(o.Log, "Starting warden serve")
	var wcfg map[string]any
	if o.ProfileDir != "" {
		wcfg = map[string]any{"http.pprof": true}
	}
	wp, err := StartWarden(ctx, WardenOptions{Binary: o.Binary, DataDir: fleet.DataDir, ClassicKeyExchange: o.ClassicKeyExchange, PlainMQTT: want(ScenarioSealed), Config: wcfg})
	if err != nil {
		return nil, err
	}
	wt, err := WardenTarget(wp, o.ClassicKeyExchange)
	var sealed *sealedLoad
	if err == nil && want(ScenarioSealed) {
		sealed = &sealedLoad{devs: envDevs}
		sealed.target, err = WardenPlainTarget(wp)
	}
	if err == nil {
		results, err = o.runBroker(ctx, wt, fleet.Dir, ids, consumer, sealed, results)
	}
	if serr := wp.Stop(context.WithoutCancel(ctx)); err == nil && serr != nil {
		err = fmt.Errorf("stop warden: %w", serr)
	}
	if err != nil {
		return results, fmt.Errorf("warden: %w (its log: %s)", err, wp.LogPath)
	}

	if want(ScenarioBaseline) {
		r, err := o.runBaseline(ctx, fleet, ids)
		if err != nil {
			return results, fmt.Errorf("bare TLS baseline: %w", err)
		}
		results = append(results, r)
	}

	if want(ScenarioCompare) {
		fmt.Fprintln(o.Log, "Starting mosquitto")
		mp, err := StartMosquitto(ctx, MosquittoOptions{Binary: o.Mosquitto, Fleet: fleet, Dir: filepath.Join(o.WorkDir, "mosquitto")})
		if err != nil {
			return results, err
		}
		mt, err := MosquittoTarget(mp)
		if err == nil {
			results, err = o.runBroker(ctx, mt, fleet.Dir, ids, consumer, nil, results)
		}
		if serr := mp.Stop(context.WithoutCancel(ctx)); err == nil && serr != nil {
			err = fmt.Errorf("stop mosquitto: %w", serr)
		}
		if err != nil {
			return results, fmt.Errorf("mosquitto: %w (its log: %s)", err, mp.LogPath)
		}
	}
	addRatios(results)
	return results, nil
}

// sealedLoad is what the sealed scenario runs on: Warden's plain
// listener and the envelope devices.
type sealedLoad struct {
	target Target
	devs   []*EnvelopeDevice
}

// runBroker runs idle, storm, throughput, sealed (when sealed is set) and
// paced against one broker.
func (o *RunOptions) runBroker(ctx context.Context, t Target, fleetDir string, ids []Identity, consumer Identity, sealed *sealedLoad, results []Result) ([]Result, error) {
	want := func(s string) bool {
		if s == ScenarioSealed {
			return sealed != nil
		}
		return slices.Contains(o.Scenarios, s) || (t.Name == "mosquitto" && slices.Contains(o.Scenarios, ScenarioCompare) &&
			s != ScenarioBaseline)
	}
	var clients []*Client
	defer func() { CloseAll(clients) }()
	var prof *profiler
	if t.Name == "warden" {
		var err error
		if prof, err = newProfiler(o.ProfileDir, t.Proc, o.Log); err != nil {
			return results, err
		}
	}
	if want(ScenarioIdle) || want(ScenarioStorm) {
		fmt.Fprintf(o.Log, "%s: idle, %d devices\n", t.Name, o.Devices)
		r, cs, err := Idle(ctx, t, ids[:o.Devices], IdleOptions{Settle: o.Settle, Connect: ConnectOptions{Concurrency: o.Concurrency, Progress: o.progress(t.Name + ": connecting")}})
		if err != nil {
			return results, fmt.Errorf("idle: %w", err)
		}
		clients = cs
		results = append(results, r)
		prof.heap(ctx, "warden-idle-heap", fmt.Sprintf("Warden heap in use, %d idle mutual-TLS devices", o.Devices))
		if want(ScenarioStorm) {
			fmt.Fprintf(o.Log, "%s: storm, %d devices reconnect at once\n", t.Name, o.Devices)
			bin := o.Binary
			if bin == "" {
				if bin, err = os.Executable(); err != nil {
					return results, fmt.Errorf("storm: the control group runs this executable: %w", err)
				}
			}
			// The storm's first seconds: a storm of 5,000 lasts about as
			// long, and the profile starts with it.
			profiled := prof.cpu(ctx, "warden-storm-cpu", fmt.Sprintf("Warden CPU, %d devices reconnecting at once", o.Devices), 5*time.Second)
			r, cs, err := Storm(ctx, t, ids[:o.Devices], clients, StormOptions{Concurrency: o.StormConcurrency, Progress: o.progress(t.Name + ": reconnecting"),
				ControlGroup: ControlGroupProcess{Binary: bin, FleetDir: fleetDir}})
			<-profiled
			if err != nil {
				return results, fmt.Errorf("storm: %w", err)
			}
			clients = cs
			results = append(results, r)
		}
		CloseAll(clients)
		clients = nil
	}
	var cons *Consumer
	if want(ScenarioThroughput) || want(ScenarioSealed) || want(ScenarioPaced) {
		c, err := StartConsumer(ctx, t, consumer)
		if err != nil {
			return results, err
		}
		cons = c
		defer cons.Close()
	}
	if want(ScenarioThroughput) {
		cs, _, err := ConnectAll(ctx, t, ids[:o.ThroughputDevices], ConnectOptions{Concurrency: o.Concurrency})
		if err != nil {
			return results, fmt.Errorf("throughput: connect: %w", err)
		}
		clients = cs
		for _, qos := range []byte{0, 1} {
			for _, size := range []int{64, 256} {
				fmt.Fprintf(o.Log, "%s: throughput, %d devices, QoS %d, %d B\n", t.Name, o.ThroughputDevices, qos, size)
				profiled, allocated := notProfiled(), notProfiled()
				if qos == 1 && size == 64 {
					what := fmt.Sprintf("%d devices publishing QoS 1, 64 B, relayed to a reader", o.ThroughputDevices)
					d := max(o.Duration-time.Second, time.Second)
					profiled = prof.cpu(ctx, "warden-throughput-qos1-cpu", "Warden CPU, "+what, d)
					allocated = prof.allocs(ctx, "warden-throughput-qos1-allocs", "Warden allocations, "+what, d)
				}
				r, err := Throughput(ctx, t, ids, clients, cons, ThroughputOptions{QoS: qos, Size: size, Window: o.Window, Duration: o.Duration})
				<-profiled
				<-allocated
				if err != nil {
					return results, fmt.Errorf("throughput: %w", err)
				}
				results = append(results, r)
			}
		}
		CloseAll(clients)
		clients = nil
	}
	// Right after throughput, so that the two runs its ratio compares
	// see the machine in the same state.
	if want(ScenarioSealed) {
		st := sealed.target
		cs, _, err := ConnectEnvelope(ctx, st, sealed.devs, ConnectOptions{Concurrency: o.Concurrency})
		if err != nil {
			return results, fmt.Errorf("sealed: connect: %w", err)
		}
		clients = cs
		for _, qos := range []byte{0, 1} {
			for _, size := range []int{64, 256} {
				fmt.Fprintf(o.Log, "%s: sealed, %d %s envelope devices on the plain listener, QoS %d, %d B\n", st.Name, len(sealed.devs), sealed.devs[0].Suite, qos, size)
				r, err := Sealed(ctx, st, sealed.devs, clients, cons, ThroughputOptions{QoS: qos, Size: size, Window: o.Window, Duration: o.Duration})
				if err != nil {
					return results, fmt.Errorf("sealed: %w", err)
				}
				results = append(results, r)
			}
		}
		CloseAll(clients)
		clients = nil
	}
	if want(ScenarioPaced) {
		cs, _, err := ConnectAll(ctx, t, ids[:o.PacedDevices], ConnectOptions{Concurrency: o.Concurrency, Progress: o.progress(t.Name + ": connecting")})
		if err != nil {
			return results, fmt.Errorf("paced: connect: %w", err)
		}
		clients = cs
		fmt.Fprintf(o.Log, "%s: paced, %d devices, %.0f msg/s QoS 1\n", t.Name, o.PacedDevices, o.PacedRate)
		profiled := prof.cpu(ctx, "warden-paced-cpu", fmt.Sprintf("Warden CPU, %d devices publishing %.0f msg/s QoS 1 in all, relayed to a reader", o.PacedDevices, o.PacedRate),
			max(o.Duration-time.Second, time.Second))
		r, err := Throughput(ctx, t, ids, clients, cons, ThroughputOptions{QoS: 1, Size: 64, Rate: o.PacedRate, Duration: o.Duration})
		<-profiled
		if err != nil {
			return results, fmt.Errorf("paced: %w", err)
		}
		r.Scenario = ScenarioPaced
		results = append(results, r)
	}
	return results, nil
}

// runBaseline measures a bare crypto/tls server doing the same mutual-TLS
// handshakes the storm makes.
func (o *RunOptions) runBaseline(ctx context.Context, fleet *FleetDir, ids []Identity) (Result, error) {
	fmt.Fprintln(o.Log, "Bare crypto/tls server: mutual-TLS handshakes")
	p, err := StartBaseline(ctx, StartBaselineOptions{Binary: o.Binary, Fleet: fleet, Dir: filepath.Join(o.WorkDir, "baseline"), ClassicKeyExchange: o.ClassicKeyExchange})
	if err != nil {
		return Result{}, err
	}
	defer p.Stop(context.WithoutCancel(ctx))
	roots, err := p.ServerRoots()
	if err != nil {
		return Result{}, err
	}
	certs := make([]tls.Certificate, 0, o.Devices)
	for _, id := range ids[:o.Devices] {
		certs = append(certs, id.Cert)
	}
	br, err := HandshakeBaseline(ctx, BaselineOptions{Addr: p.Addr, ServerName: p.ServerName, RootCAs: roots, Certificates: certs,
		Concurrency: o.StormConcurrency, Duration: o.Duration, ServerPID: p.PID, LocalAddrs: sourceAddrs})
	if err != nil {
		return Result{}, err
	}
	r := Result{Scenario: ScenarioStorm, Subject: "tls-baseline", Parameters: map[string]any{"concurrency": o.StormConcurrency, "tls": br.TLS}}
	r.Metrics = br.Metrics()
	if br.Failures > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d handshakes failed: %s", br.Failures, br.FirstError))
	}
	return r, nil
}

// mutualTLSYardstick names the sealed scenario's yardstick in its ratios:
// Warden's throughput scenario, over mutual TLS.
const mutualTLSYardstick = "warden (mutual TLS)"

// addRatios states each target as a ratio against its yardstick measured
// in the same run.
func addRatios(results []Result) {
	find := func(scenario, subject string, params func(map[string]any) bool) *Result {
		for i := range results {
			r := &results[i]
			if r.Scenario == scenario && r.Subject == subject && (params == nil || params(r.Parameters)) {
				return r
			}
		}
		return nil
	}
	for i := range results {
		r := &results[i]
		if r.Subject != "warden" {
			continue
		}
		same := func(p map[string]any) bool {
			return fmt.Sprint(p["qos"]) == fmt.Sprint(r.Parameters["qos"]) && fmt.Sprint(p["payload_bytes"]) == fmt.Sprint(r.Parameters["payload_bytes"])
		}
		switch r.Scenario {
		case ScenarioIdle:
			if m := find(ScenarioIdle, "mosquitto", nil); m != nil {
				_ = r.AddRatio(m, MetricRSSPerConnection, 0)
			}
		case ScenarioStorm:
			if b := find(ScenarioStorm, "tls-baseline", nil); b != nil {
				_ = r.AddRatio(b, MetricHandshakesPerSecond, 0.9)
			}
			if m := find(ScenarioStorm, "mosquitto", nil); m != nil {
				_ = r.AddRatio(m, MetricHandshakesPerSecond, 1.5)
				_ = r.AddRatio(m, MetricServerCPUPerHandshake, 0)
			}
		case ScenarioThroughput:
			if m := find(ScenarioThroughput, "mosquitto", same); m != nil {
				_ = r.AddRatio(m, MetricMessagesPerSecond, 1.5)
				_ = r.AddRatio(m, MetricServerCPUPerMessage, 0)
			}
		case ScenarioSealed:
			// Mosquitto has no envelope equivalent: the yardstick is
			// Warden's own mutual-TLS throughput with the same QoS and
			// payload, measured in the same run. No target: the ratio
			// says what sealing costs instead of TLS.
			if w := find(ScenarioThroughput, "warden", same); w != nil {
				for _, m := range []string{MetricMessagesPerSecond, MetricServerCPUPerMessage} {
					if q, err := Compare(r, w, m, 0); err == nil {
						q.Yardstick = mutualTLSYardstick
						r.Ratios = append(r.Ratios, q)
					}
				}
				if fmt.Sprint(w.Parameters["devices"]) != fmt.Sprint(r.Parameters["devices"]) {
					r.Notes = append(r.Notes, fmt.Sprintf("compared with a mutual-TLS run of %v devices, this run had %v", w.Parameters["devices"], r.Parameters["devices"]))
				}
			}
		case ScenarioPaced:
			if m := find(ScenarioPaced, "mosquitto", nil); m != nil {
				_ = r.AddRatio(m, MetricLatencyP99, 1)
			}
		}
	}
}

// notProfiled stands for a profile not taken: a closed channel.
func notProfiled() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}
