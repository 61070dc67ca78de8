package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/fileutil"
	"github.com/warden-iot/warden/internal/sim"
)

// simFileMargin is the descriptors the simulator needs beside one per
// device: the consumer, files, the Go runtime.
const simFileMargin = 64

func (c *cli) simCmd() *cobra.Command {
	var (
		fleetDir, caFile, serverName, readerCert, readerKey, envMode, stateDir, jsonOut string
		releaseKey, model, otaTransport, otaHTTPS                                       string
		servers, sources                                                                []string
		count, connecting, size, publishers                                             int
		qos                                                                             uint8
		rateFlag                                                                        float64
		interval, duration, drain, connectTimeout, keepAlive, pubTimeout                time.Duration
		commands, ota                                                                   bool
		channel                                                                         string
	)
	cmd := &cobra.Command{
		Use:   "sim --fleet DIR [--reader-cert FILE] [--count N] [--duration D]",
		Short: "Simulate a fleet of devices against a running Warden",
		Long: `sim runs many simulated devices in this process, each a real Go SDK client
with its own provisioned certificate (or envelope bundle), against a Warden
server running in another process. It connects them at a steady rate, has
each publish telemetry on private/<id>/up/<channel> and answer commands,
optionally takes firmware updates, and at the end prints a summary:
devices connected, messages sent and received, errors by kind, and latency
percentiles.

With --reader-cert, a reader service subscribes to fleet/+/up/<channel> as a
back end would, and measures each message's end-to-end latency and whether
any was lost or duplicated (every payload carries its device's sequence
number and send time). Without it only the broker's acknowledgements are
measured. One reader takes the whole fleet's messages: the broker keeps at
most limits.service_max_inflight of them unacknowledged and
limits.service_send_queue queued for it (8192 each by default) and drops
the rest (warden_mqtt_messages_dropped_total), so for very high rates serve
with larger --service-max-inflight and --service-send-queue.

Devices come from a directory as ` + "`warden device provision --out DIR`" + ` writes it
(DIR/ID.crt, DIR/ID.key, DIR/ca.crt). A device with DIR/ID.envelope.json
(` + "`warden device add ID --envelope --out DIR`" + `) is an envelope device: it uses the
plain mqtt:// servers when any are listed (serve with --mqtt), sealing its
messages, and keeps its sequence counters in --state (default DIR), which
must survive between runs. Commands the devices answer: ping, echo (the
body), sleep (body: milliseconds), fail; anything else is "unknown command".

On loopback the devices connect from 127.0.0.1 to 127.0.0.8 in turn, so
that one source address's ephemeral ports do not limit the fleet. The
server admits limits.connection_rate connections a second per listener
(500 by default) and limits.connection_rate_per_source per address (125):
for a faster ramp, serve with higher --connection-rate and
--connection-rate-per-source. Each
device holds a file descriptor: the simulator and the server must run as
separate processes, each under its own open-file limit.

The run lasts --duration (ramp included) or until interrupted (Ctrl-C): it
then stops publishing, waits up to --drain for the consumer, disconnects
every device and prints the summary; --json FILE also writes it as JSON
("-": print JSON instead of the table).`,
		Example: `  # a server, in its own terminal (its own process and open-file limit)
  warden serve
  # credentials for 1,000 devices and a reader service (ca.crt comes with them)
  warden device provision --count 1000 --out ./fleet
  warden service add sim-reader --role reader --out ./svc
  warden ca export-root --out ./fleet/ca.crt      # only if the root changed since
  # 1,000 devices at 200/s, one 64-byte QoS 1 message every 5s each, for 2 minutes
  warden sim --fleet ./fleet --reader-cert ./svc/sim-reader.crt \
      --rate 200 --interval 5s --duration 2m --json summary.json

  # an idle fleet: connections only
  warden sim --fleet ./fleet --interval 0 --duration 10m

  # devices that take a rollout of model sensor-v2
  warden sim --fleet ./fleet --ota --release-key release.pub --model sensor-v2 --duration 5m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, log, err := c.load(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if qos > 2 {
				return fmt.Errorf("--qos %d is not 0, 1 or 2", qos)
			}
			if duration <= 0 {
				return errors.New("--duration must be positive; interrupt with Ctrl-C to end early")
			}
			mode := sim.EnvelopeMode(envMode)
			fleet, err := sim.LoadFleet(ctx, fleetDir, sim.LoadOptions{CAFile: caFile, Limit: count, Envelope: mode})
			if err != nil {
				return err
			}
			if count > 0 && len(fleet.Devices) < count {
				return fmt.Errorf("--count %d, but %s holds %d devices; provision more with `warden device provision --count %d --out %s`",
					count, fleetDir, len(fleet.Devices), count-len(fleet.Devices), fleetDir)
			}
			for _, s := range fleet.Skipped {
				log.Warn("not a device certificate; skipped", "file", s)
			}
			if limit, ok := sim.FileLimit(); ok && uint64(len(fleet.Devices))+simFileMargin > limit {
				return fmt.Errorf("%d devices need about %d open files, and this process may open %d; raise the limit (ulimit -n) or run fewer devices with --count",
					len(fleet.Devices), len(fleet.Devices)+simFileMargin, limit)
			}

			o := sim.Options{
				SwarmOptions: sim.SwarmOptions{
					Fleet:          fleet,
					Servers:        servers,
					ServerName:     serverName,
					Rate:           rateFlag,
					MaxConnecting:  connecting,
					ConnectTimeout: connectTimeout,
					KeepAlive:      keepAlive,
					Telemetry: sim.Telemetry{
						Interval: interval, Size: size, QoS: qos, Channel: channel,
						Publishers: publishers, Timeout: pubTimeout,
					},
					Commands: commands,
					StateDir: stateDir,
					Logger:   quiet(log),
				},
				Duration: duration,
				Drain:    drain,
			}
			if log.Enabled(ctx, slog.LevelDebug) {
				o.DeviceLogger = log
			}
			switch {
			case len(sources) == 1 && sources[0] == "none":
				o.SourceAddrs = []string{}
			case len(sources) > 0:
				o.SourceAddrs = sources
			}
			if ota {
				if releaseKey == "" || model == "" {
					return errors.New("--ota needs --release-key (the release.pub of `warden fw keygen`) and --model (the devices' model)")
				}
				pem, err := os.ReadFile(releaseKey)
				if err != nil {
					return fmt.Errorf("--release-key: %w", err)
				}
				key, err := firmware.ParsePublicKeyPEM(pem)
				if err != nil {
					return fmt.Errorf("--release-key %s: %w", releaseKey, err)
				}
				o.OTA = &sim.OTAOptions{ReleaseKey: key, Model: model, Transport: otaTransport, HTTPSBase: otaHTTPS}
			}
			if readerCert != "" {
				co, err := consumerOptions(readerCert, readerKey, caFile, fleetDir, servers, serverName)
				if err != nil {
					return err
				}
				co.Logger = quiet(log)
				o.Consumer = co
			} else {
				log.Warn("no --reader-cert: end-to-end latency and lost messages are not measured")
			}

			// A status line on the terminal, rewritten in place; nothing when
			// the output is a file or a pipe. (A progress bar would end
			// when the ramp does; the run goes on.)
			interactive := c.interactive()
			if interactive {
				o.Progress = func(p sim.Progress) {
					state := "running"
					if p.Draining {
						state = "draining"
					}
					fmt.Fprintf(c.err, "\r\033[K%s %4.0fs  connected %d/%d  sent %d  received %d  commands %d  errors %d",
						state, p.Elapsed.Seconds(), p.Connected, p.Target, p.Sent, p.Received, p.Commands, p.Errors)
				}
			}
			sum, err := sim.Run(ctx, o)
			if interactive {
				fmt.Fprint(c.err, "\r\033[K")
			}
			if err != nil {
				return err
			}
			if jsonOut != "" && jsonOut != "-" {
				b, err := json.MarshalIndent(sum, "", "  ")
				if err != nil {
					return err
				}
				if err := fileutil.WriteFileAtomic(jsonOut, append(b, '\n'), 0o644); err != nil {
					return fmt.Errorf("--json: %w", err)
				}
			}
			if jsonOut == "-" {
				return c.printJSON(sum)
			}
			printSimSummary(c.out, sum)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&fleetDir, "fleet", "", "directory of device credentials, as warden device provision --out DIR writes them")
	f.IntVar(&count, "count", 0, "simulate the first N devices of --fleet by ID (default: all)")
	f.StringArrayVar(&servers, "server", []string{"mqtts://127.0.0.1:8883"}, "broker URL: mqtts://, wss:// or mqtt:// (envelope devices); repeatable")
	f.StringVar(&serverName, "server-name", "", "host name the server certificate must match (default: each URL's host)")
	f.StringVar(&caFile, "ca", "", "Warden root certificate (default DIR/ca.crt)")
	f.StringSliceVar(&sources, "source", nil, "source IP addresses, used in turn (default 127.0.0.1-127.0.0.8 for a loopback server; \"none\": let the system choose)")
	f.StringVar(&readerCert, "reader-cert", "", "certificate of a reader service (warden service add NAME --role reader --out DIR) to measure delivery")
	f.StringVar(&readerKey, "reader-key", "", "its private key (default: --reader-cert with .key for .crt)")
	f.Float64Var(&rateFlag, "rate", sim.DefaultRate, "devices that start connecting per second")
	f.IntVar(&connecting, "connecting", sim.DefaultMaxConnecting, "connection attempts under way at most")
	durationVar(f, &connectTimeout, "connect-timeout", sim.DefaultConnectTimeout, "bound on one connection attempt")
	durationVar(f, &keepAlive, "keep-alive", sim.DefaultKeepAlive, "MQTT keep-alive")
	durationVar(f, &interval, "interval", 10*time.Second, "telemetry interval per device (0: no telemetry)")
	f.IntVar(&size, "size", sim.DefaultPayloadSize, "telemetry payload bytes (at least 16: sequence number and send time)")
	f.Uint8Var(&qos, "qos", 1, "telemetry QoS (0 or 1)")
	f.StringVar(&channel, "channel", sim.DefaultChannel, "telemetry channel: private/<id>/up/<channel>")
	f.IntVar(&publishers, "publishers", sim.DefaultPublishers, "publishes awaiting acknowledgement at once, across the fleet")
	durationVar(f, &pubTimeout, "publish-timeout", sim.DefaultPublishTimeout, "bound on one publish")
	durationVar(f, &duration, "duration", time.Minute, "length of the run, ramp included")
	durationVar(f, &drain, "drain", sim.DefaultDrain, "after the run, how long to wait for messages still on their way")
	f.BoolVar(&commands, "commands", true, "answer commands (ping, echo, sleep, fail)")
	f.BoolVar(&ota, "ota", false, "run each device's OTA agent (needs --release-key and --model)")
	f.StringVar(&releaseKey, "release-key", "", "release public key the devices pin (the release.pub of warden fw keygen)")
	f.StringVar(&model, "model", "", "the devices' model, which releases must name")
	f.StringVar(&otaTransport, "ota-transport", device.OTATransportMQTT, "OTA transport: mqtt or https")
	f.StringVar(&otaHTTPS, "ota-https", "", "Warden's HTTPS base URL for --ota-transport https, e.g. https://127.0.0.1:8443")
	f.StringVar(&envMode, "envelope", string(sim.EnvelopeAuto), "envelope devices: auto (those with ID.envelope.json), off, or only")
	f.StringVar(&stateDir, "state", "", "directory for envelope sequence counters, kept between runs (default --fleet)")
	f.StringVar(&jsonOut, "json", "", "also write the summary as JSON to FILE (\"-\": print JSON instead of the table)")
	_ = cmd.MarkFlagRequired("fleet")
	return cmd
}

// consumerOptions loads the reader service's credentials.
func consumerOptions(certFile, keyFile, caFile, fleetDir string, servers []string, serverName string) (*sim.ConsumerOptions, error) {
	if keyFile == "" {
		keyFile = strings.TrimSuffix(certFile, ".crt") + ".key"
	}
	if caFile == "" {
		caFile = filepath.Join(fleetDir, "ca.crt")
	}
	cert, roots, err := device.LoadCredentials(certFile, keyFile, caFile)
	if err != nil {
		return nil, fmt.Errorf("--reader-cert: %w", err)
	}
	// The consumer is a service: it needs a TLS listener.
	var server string
	for _, s := range servers {
		if strings.HasPrefix(strings.ToLower(s), "mqtts://") {
			server = s
			break
		}
	}
	if server == "" {
		return nil, errors.New("--reader-cert needs an mqtts:// --server for the reader service to connect to")
	}
	return &sim.ConsumerOptions{Server: server, Certificate: cert, RootCAs: roots, ServerName: serverName}, nil
}

// printSimSummary prints the summary for a person.
func printSimSummary(w io.Writer, s sim.Summary) {
	state := "completed"
	if s.Interrupted {
		state = "interrupted"
	}
	d, m := s.Devices, s.Messages
	fmt.Fprintf(w, "Simulation %s after %.1fs\n", state, s.ElapsedSeconds)
	ramp := "not all connected"
	if d.RampSeconds > 0 {
		ramp = fmt.Sprintf("all connected after %.1fs", d.RampSeconds)
	}
	fmt.Fprintf(w, "  devices   %d/%d connected (%d at the end), %d attempts, %s\n", d.Connected, d.Target, d.ConnectedAtEnd, d.ConnectAttempts, ramp)
	fmt.Fprintf(w, "  messages  %d sent (%.0f/s), %d failed, %d skipped\n", m.Sent, m.SentPerSecond, m.Failed, m.Skipped)
	if s.Settings.Consumer {
		fmt.Fprintf(w, "            %d received (%.0f/s), %d lost, %d duplicated, %d unexpected\n", m.Received, m.ReceivedPerSecond, m.Lost, m.Duplicates, m.Unexpected)
	}
	lat := func(name string, l sim.Latency) {
		if l.Count == 0 {
			return
		}
		fmt.Fprintf(w, "  %-9s p50 %s  p99 %s  max %s  (%d)\n", name, fmtMS(l.P50), fmtMS(l.P99), fmtMS(l.Max), l.Count)
	}
	lat("latency", s.Latency)
	lat("puback", s.PublishLatency)
	lat("connect", s.ConnectLatency)
	if cm := s.Commands; cm.Received > 0 {
		fmt.Fprintf(w, "  commands  %d received, %d answered, %d rejected, %d dropped\n", cm.Received, cm.Answered, cm.Rejected, cm.Dropped)
	}
	if o := s.OTA; o != nil {
		fmt.Fprintf(w, "  ota       %d offered, %d verified, %d booted, %d failed, %d refused\n", o.Offered, o.Verified, o.Booted, o.Failed, o.Refused)
	}
	if len(s.Errors) == 0 {
		fmt.Fprintln(w, "  errors    none")
		return
	}
	kinds := make([]string, 0, len(s.Errors))
	for k := range s.Errors {
		kinds = append(kinds, string(k))
	}
	sort.Strings(kinds)
	fmt.Fprintln(w, "  errors")
	for _, k := range kinds {
		fmt.Fprintf(w, "    %-20s %d", k, s.Errors[sim.ErrorKind(k)])
		if sample := s.ErrorSamples[sim.ErrorKind(k)]; sample != "" {
			fmt.Fprintf(w, "  e.g. %s", sample)
		}
		fmt.Fprintln(w)
	}
}

func fmtMS(d time.Duration) string {
	return fmt.Sprintf("%.2fms", float64(d.Microseconds())/1000)
}
