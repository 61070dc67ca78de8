package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/warden-iot/warden/internal/bench"
	"github.com/warden-iot/warden/internal/sim"
)

func (c *cli) benchCmd() *cobra.Command {
	var o bench.RunOptions
	var scenarios, jsonOut, selfProfile string
	cmd := &cobra.Command{
		Use:   "bench [--devices N] [--scenarios idle,storm,...] [--json FILE]",
		Short: "Measure Warden against a bare TLS server and Mosquitto on this machine",
		Long: `bench provisions a fleet (once; later runs reuse it), starts ` + "`warden serve`" + `
on loopback ports as a separate process, and loads it with a bare MQTT 5
client, one mutual-TLS connection per device, from 127.0.0.1-8:

  idle        N devices connected, each subscribed to private/<id>/#: the
              server's RSS and Go heap per connection
  storm       all but a control group drop their connections at once and
              reconnect at once: full handshakes per second, time until all
              are back, server CPU per handshake, and the control group's
              QoS 1 publish latency meanwhile
  baseline    a bare crypto/tls server doing the same mutual-TLS handshakes
              (the storm's yardstick: Warden must reach 90% of its rate)
  throughput  devices publish QoS 0 and 1, 64 and 256 bytes, in a closed
              loop (a window of messages in flight per device, end to end);
              a reader service consumes fleet/# (through Warden's relay):
              messages per second, latency, server CPU per message, loss
  sealed      throughput with envelope devices (--sealed-suite) on Warden's
              plain MQTT listener, sealing every payload as the device SDK
              does; Warden opens each one and relays the plaintext to the
              same reader service. Compared with Warden's own mutual-TLS
              throughput (Mosquitto has no equivalent). They are a fleet of
              their own, in <work>/fleet-sealed
  paced       1,000 devices at 5,000 msg/s QoS 1 in total: latency and loss
  compare     idle, storm, throughput and paced against Mosquitto 2 (Debian's
              package), configured as the seed documents do: TLS listener,
              require_certificate, use_identity_as_username, ACL pattern
              readwrite private/%u/#, and set_tcp_nodelay

Every rate comes with the server's CPU time per operation from /proc: the
load generator shares the machine's cores, and CPU per operation is the
figure that carries to bigger machines. Ratios against the yardsticks
measured in the same run are printed with their targets. Results go to a
table on standard output and, with --json, to a file.

The work directory (data directory, fleet, Mosquitto's files) is kept, so
a second run skips provisioning. The open-file limit (20,000 here) bounds
--devices to about 18,000.`,
		Example: `  warden bench --devices 15000 --json bench.json
  warden bench --scenarios idle,storm,baseline --devices 5000
  warden bench --scenarios throughput,compare --throughput-devices 200 --duration 20s
  warden bench --scenarios throughput,sealed --throughput-devices 200 --duration 10s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if scenarios != "" {
				o.Scenarios = strings.Split(scenarios, ",")
			}
			if lim, ok := sim.FileLimit(); ok && uint64(o.Devices)+500 > lim {
				return fmt.Errorf("--devices %d needs more open files than this process may have (%d): lower it", o.Devices, lim)
			}
			o.Log = c.err
			if c.interactive() {
				var bar *progressbar.ProgressBar
				var barWhat string
				o.Progress = func(what string, done, total int) {
					if bar == nil || what != barWhat {
						if bar != nil {
							_ = bar.Finish()
						}
						bar, barWhat = c.bar(total, what), what
					}
					_ = bar.Set(done)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if selfProfile != "" {
				f, err := os.Create(selfProfile)
				if err != nil {
					return fmt.Errorf("--self-profile: %w", err)
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return fmt.Errorf("--self-profile: %w", err)
				}
				defer pprof.StopCPUProfile()
			}
			start := time.Now()
			results, err := bench.Run(ctx, o)
			if len(results) > 0 {
				fmt.Fprintln(c.out)
				if perr := bench.PrintTable(c.out, results); perr != nil && err == nil {
					err = perr
				}
				if jsonOut != "" {
					if werr := bench.WriteJSON(jsonOut, results); werr != nil {
						err = errors.Join(err, werr)
					} else {
						fmt.Fprintf(c.err, "Results written to %s\n", jsonOut)
					}
				}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.err, "Benchmark finished in %s.\n", time.Since(start).Round(time.Second))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.WorkDir, "work", "warden-bench", "work directory: data directory, fleet and servers' files (kept for the next run)")
	f.IntVar(&o.Devices, "devices", 1000, "devices connected in idle and storm")
	f.IntVar(&o.ThroughputDevices, "throughput-devices", 100, "devices publishing in throughput")
	f.IntVar(&o.SealedDevices, "sealed-devices", 0, "envelope devices publishing in sealed (default: --throughput-devices)")
	f.StringVar(&o.SealedSuite, "sealed-suite", bench.DefaultSealedSuite, "envelope suite of the sealed scenario's devices: ccm-8, legacy-cbc-hmac or sign-p256")
	f.IntVar(&o.PacedDevices, "paced-devices", 1000, "devices of the paced load")
	f.Float64Var(&o.PacedRate, "paced-rate", 5000, "messages per second of the paced load, in total")
	f.StringVar(&scenarios, "scenarios", strings.Join(bench.AllScenarios, ","), "scenarios to run, comma-separated")
	f.DurationVar(&o.Duration, "duration", 10*time.Second, "measurement time of each throughput and paced run")
	f.IntVar(&o.Window, "window", 4, "messages in flight per device in the closed loop")
	f.IntVar(&o.Concurrency, "concurrency", 64, "connections set up at once when a fleet connects")
	f.IntVar(&o.StormConcurrency, "storm-concurrency", 512, "reconnections under way at once in the storm (and the baseline)")
	f.BoolVar(&o.ClassicKeyExchange, "classic-kex", false, "Warden and the baseline offer X25519 only (no hybrid ML-KEM), as Mosquitto with OpenSSL 3.0 negotiates")
	f.DurationVar(&o.Settle, "idle-settle", 5*time.Second, "how long idle waits before each memory reading (longer: the Go runtime has collected and returned more of the connection set-up's garbage, as a server in steady state has)")
	f.StringVar(&o.Mosquitto, "mosquitto", "", "mosquitto executable (default: on PATH or /usr/sbin/mosquitto)")
	f.StringVar(&jsonOut, "json", "", "also write the results to this JSON file")
	f.StringVar(&selfProfile, "self-profile", "", "write the load generator's own CPU profile for the whole run to this file (go tool pprof): where the benchmark's half of the two cores goes")
	f.StringVar(&o.ProfileDir, "profiles", "", "turn Go profiling on in the Warden under test and write its heap after idle and its CPU during the storm, the QoS 1 throughput run and the paced load to this directory, each as NAME.pb.gz (go tool pprof) and a flame graph NAME.svg")
	cmd.AddCommand(c.benchTLSServerCmd(), benchControlGroupCmd())
	return cmd
}

// benchTLSServerCmd is the bare crypto/tls server of the baseline, run by
// `warden bench` as a child process.
func (c *cli) benchTLSServerCmd() *cobra.Command {
	var o bench.BaselineServerOptions
	cmd := &cobra.Command{
		Use:    "tls-server",
		Short:  "A bare mutual-TLS server (the storm's yardstick; started by warden bench)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, log, err := c.load(cmd)
			if err != nil {
				return err
			}
			o.Logger = log
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return bench.ServeBaseline(ctx, o)
		},
	}
	bench.AddBaselineFlags(cmd.Flags(), &o)
	return cmd
}

// benchControlGroupCmd is the storm's control group, run by `warden bench`
// as a child process at a higher CPU priority (internal/bench control.go).
func benchControlGroupCmd() *cobra.Command {
	var o bench.ControlGroupOptions
	cmd := &cobra.Command{
		Use:    "control-group",
		Short:  "The storm's control group: devices that stay connected and publish (started by warden bench)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return bench.ServeControlGroup(ctx, o, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	bench.AddControlGroupFlags(cmd.Flags(), &o)
	return cmd
}
