package bench

import (
	"crypto/tls"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/sim"
)

// TestBaseline runs the bare TLS server as a child process (this test
// binary, standing in for `warden bench tls-server`) and handshakes with
// real device certificates.
func TestBaseline(t *testing.T) {
	f := provision(t, 3, "")
	fleet, err := sim.LoadFleet(t.Context(), f.Dir, sim.LoadOptions{Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	var certs []tls.Certificate
	for _, d := range fleet.Devices {
		certs = append(certs, d.Certificate)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		classic bool
		group   string
	}{
		{"hybrid", false, "X25519MLKEM768"},
		{"classic", true, "X25519"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := StartBaseline(t.Context(), StartBaselineOptions{Binary: self, Fleet: f, Dir: t.TempDir(), ClassicKeyExchange: tc.classic})
			if err != nil {
				t.Fatal(err)
			}
			stopProc(t, p)
			if p.TLS != "TLS 1.3, "+tc.group {
				t.Errorf("probe negotiated %q", p.TLS)
			}
			roots, err := p.ServerRoots()
			if err != nil {
				t.Fatal(err)
			}
			res, err := HandshakeBaseline(t.Context(), BaselineOptions{
				Addr: p.Addr, RootCAs: roots, Certificates: certs, Concurrency: 4,
				Duration: 700 * time.Millisecond, ServerPID: p.PID, LocalAddrs: []string{"127.0.0.1", "127.0.0.2"},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d handshakes, %.0f/s, server CPU %v per handshake, client CPU %v, p50 %v, p99 %v",
				res.TLS, res.Handshakes, res.PerSecond, res.ServerCPUPerHandshake, res.ClientCPU, res.Latency.P50, res.Latency.P99)
			if res.Handshakes < 10 || res.Failures != 0 || res.FirstError != "" {
				t.Fatalf("%d handshakes, %d failures (%s)", res.Handshakes, res.Failures, res.FirstError)
			}
			if res.TLS != p.TLS {
				t.Errorf("handshakes negotiated %q, the probe %q", res.TLS, p.TLS)
			}
			if res.PerSecond <= 0 || res.ServerCPU <= 0 || res.ServerCPUPerHandshake <= 0 || res.ServerCPUPerHandshake > 50*time.Millisecond {
				t.Errorf("rate %.0f/s, server CPU %v (%v per handshake)", res.PerSecond, res.ServerCPU, res.ServerCPUPerHandshake)
			}
			if res.Latency.Count != res.Handshakes || res.Latency.P50 <= 0 || res.Latency.P99 < res.Latency.P50 {
				t.Errorf("latency %+v", res.Latency)
			}
			if m := (Result{Metrics: res.Metrics()}); len(m.Metrics) < 6 {
				t.Errorf("metrics %+v", m.Metrics)
			} else if v, _ := m.Metric(MetricHandshakesPerSecond); v.Value != res.PerSecond {
				t.Errorf("metric %+v, rate %v", v, res.PerSecond)
			}
		})
	}

	// A client certificate from another CA is refused: counted as
	// failures, never as handshakes.
	p, err := StartBaseline(t.Context(), StartBaselineOptions{Binary: self, Fleet: f, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	stopProc(t, p)
	stranger, err := WriteServerCert(t.TempDir()) // any certificate Warden's CAs did not issue
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(stranger.CertFile, stranger.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := p.ServerRoots()
	if err != nil {
		t.Fatal(err)
	}
	res, err := HandshakeBaseline(t.Context(), BaselineOptions{Addr: p.Addr, RootCAs: roots, Certificates: []tls.Certificate{cert},
		Concurrency: 2, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Handshakes != 0 || res.Failures == 0 || !strings.Contains(res.FirstError, "did not accept") {
		t.Errorf("a stranger's certificate: %d handshakes, %d failures (%s)", res.Handshakes, res.Failures, res.FirstError)
	}
}

func TestBaselineArgs(t *testing.T) {
	o := BaselineServerOptions{Listen: "127.0.0.1:0", CAFile: "ca.pem", CertFile: "s.crt", KeyFile: "s.key", HybridPQ: false, AddrFile: "addr"}
	got := strings.Join(baselineArgs(o), " ")
	want := "--listen 127.0.0.1:0 --ca ca.pem --cert s.crt --key s.key --hybrid-pq=false --addr-file addr"
	if got != want {
		t.Errorf("args %q, want %q", got, want)
	}
}
