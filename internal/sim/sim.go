package sim

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Run defaults.
const (
	DefaultDrain            = 5 * time.Second
	DefaultProgressInterval = 500 * time.Millisecond
	// closeTimeout bounds closing the devices at the end of a run.
	closeTimeout = 30 * time.Second
)

// Options configures Run: a swarm of devices, an optional consumer that
// measures what reaches the back end, and how long to run.
type Options struct {
	SwarmOptions

	// Consumer, if set, reads the telemetry as a service while the fleet
	// runs, for end-to-end latency and loss. Its Filter defaults to
	// fleet/+/up/<channel> and its QoS is the telemetry's.
	Consumer *ConsumerOptions

	// Duration bounds the run from its start, ramp included; 0 runs until
	// ctx ends.
	Duration time.Duration
	// Drain is how long, after publishing stops, to wait for the consumer
	// to receive what was sent (default 5s; it ends sooner when nothing is
	// missing).
	Drain time.Duration

	// Progress, if set, is called every ProgressInterval (default 0.5s)
	// and once at the end. It must not block for long.
	Progress         func(Progress)
	ProgressInterval time.Duration
}

// Progress is a running count, for a display.
type Progress struct {
	Elapsed       time.Duration
	Target        int    // devices to run
	Connected     int    // connected now
	EverConnected int    // connected at least once
	Connecting    int    // connection attempts under way
	Sent          uint64 // messages acknowledged
	Received      uint64 // messages the consumer received (once each)
	Errors        uint64 // failures of every kind
	Commands      uint64 // commands the devices' handlers ran
	Draining      bool   // publishing stopped; waiting for the consumer
}

// Summary is the outcome of a run. It marshals to JSON as it is.
type Summary struct {
	Started        time.Time `json:"started"`
	ElapsedSeconds float64   `json:"elapsed_seconds"`
	// Interrupted is true when ctx ended the run before its Duration.
	Interrupted bool `json:"interrupted"`

	Settings Settings      `json:"settings"`
	Devices  DeviceCounts  `json:"devices"`
	Messages MessageCounts `json:"messages"`
	// Latency is end to end, device to consumer (empty without one).
	Latency Latency `json:"latency"`
	// PublishLatency is from PublishUp to the broker's acknowledgement
	// (QoS 1 and 2).
	PublishLatency Latency `json:"publish_latency"`
	// ConnectLatency is each device's first successful Connect: dial,
	// TLS handshake and CONNACK.
	ConnectLatency Latency              `json:"connect_latency"`
	Commands       CommandCounts        `json:"commands"`
	OTA            *OTACounts           `json:"ota,omitempty"`
	Errors         map[ErrorKind]uint64 `json:"errors"`
	// ErrorSamples holds the first message of each kind of error.
	ErrorSamples map[ErrorKind]string `json:"error_samples,omitempty"`
}

// Settings records what the run was asked to do.
type Settings struct {
	Devices         int      `json:"devices"`
	EnvelopeDevices int      `json:"envelope_devices"`
	Servers         []string `json:"servers"`
	SourceAddrs     []string `json:"source_addrs,omitempty"`
	Rate            float64  `json:"rate"`
	IntervalSeconds float64  `json:"interval_seconds"`
	PayloadSize     int      `json:"payload_size"`
	QoS             byte     `json:"qos"`
	Channel         string   `json:"channel"`
	DurationSeconds float64  `json:"duration_seconds"`
	Commands        bool     `json:"commands"`
	OTA             bool     `json:"ota"`
	Consumer        bool     `json:"consumer"`
}

// DeviceCounts is how the devices connected.
type DeviceCounts struct {
	Target          int    `json:"target"`
	Connected       int    `json:"connected"`        // at least once
	ConnectedAtEnd  int    `json:"connected_at_end"` // when the run ended
	ConnectAttempts uint64 `json:"connect_attempts"`
	// RampSeconds is how long it took until every device had connected
	// once; 0 if some never did.
	RampSeconds float64 `json:"ramp_seconds"`
}

// MessageCounts is what was sent and received.
type MessageCounts struct {
	Sent    uint64 `json:"sent"`    // acknowledged by the broker (QoS 0: written)
	Failed  uint64 `json:"failed"`  // publishes that failed or timed out
	Skipped uint64 `json:"skipped"` // due while the device was offline or its previous message unacknowledged
	// The consumer's view; zero without one.
	Received   uint64 `json:"received"`   // each message counted once
	Duplicates uint64 `json:"duplicates"` // further copies
	Lost       uint64 `json:"lost"`       // sent but never received
	Unexpected uint64 `json:"unexpected"` // not telemetry of this fleet
	// Rates over the whole run.
	SentPerSecond     float64 `json:"sent_per_second"`
	ReceivedPerSecond float64 `json:"received_per_second"`
}

// Run simulates the fleet: it starts the consumer (if any), connects the
// devices at the configured rate, has them publish, answer commands and
// take updates until Duration has passed or ctx ends, then stops
// publishing, lets the consumer drain, disconnects every device and
// returns the summary. When ctx ends the run still drains, closes and
// summarises (Summary.Interrupted); the error is for failures to start.
func Run(ctx context.Context, o Options) (Summary, error) {
	if o.Duration < 0 {
		return Summary{}, fmt.Errorf("sim: duration %v is negative", o.Duration)
	}
	if o.Duration == 0 && ctx.Done() == nil {
		return Summary{}, errors.New("sim: without a duration the run ends only when ctx does, and this ctx never ends")
	}
	o.Drain = positive(o.Drain, DefaultDrain)
	o.ProgressInterval = positive(o.ProgressInterval, DefaultProgressInterval)
	if err := o.SwarmOptions.validate(); err != nil {
		return Summary{}, err
	}
	errs := newErrorLog()
	started := time.Now()

	var cons *Consumer
	if o.Consumer != nil {
		co := *o.Consumer
		if co.Filter == "" {
			co.Filter = "fleet/+/up/" + o.Telemetry.Channel
		}
		co.QoS = o.Telemetry.QoS
		if co.Logger == nil {
			co.Logger = o.Logger
		}
		co.OnError = func(k ErrorKind, err error) { errs.add(k, err) }
		cctx, cancel := context.WithTimeout(ctx, positive(co.ConnectTimeout, DefaultConnectTimeout))
		var err error
		cons, err = StartConsumer(cctx, co)
		cancel()
		if err != nil {
			return Summary{}, err
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = cons.Close(cctx)
		}()
	}

	sw, err := startSwarm(ctx, o.SwarmOptions, errs)
	if err != nil {
		return Summary{}, err
	}
	progress := func(draining bool) Progress {
		st := sw.Stats()
		p := Progress{
			Elapsed: time.Since(started), Target: st.Target, Connected: st.Connected, EverConnected: st.EverConnected,
			Connecting: st.Connecting, Sent: st.Sent, Errors: st.Errors, Draining: draining,
		}
		c := sw.Commands()
		p.Commands = c.Ping + c.Echo + c.Sleep + c.Fail + c.Unknown
		if cons != nil {
			p.Received = cons.Stats().Received
		}
		return p
	}

	var deadline <-chan time.Time
	if o.Duration > 0 {
		t := time.NewTimer(o.Duration)
		defer t.Stop()
		deadline = t.C
	}
	tick := time.NewTicker(o.ProgressInterval)
	defer tick.Stop()
	interrupted := false
loop:
	for {
		select {
		case <-ctx.Done():
			interrupted = true
			break loop
		case <-deadline:
			break loop
		case <-tick.C:
			if o.Progress != nil {
				o.Progress(progress(false))
			}
		}
	}

	// Wind down on a context of our own: an interrupted run still drains
	// and disconnects cleanly, within bounds.
	bg := context.WithoutCancel(ctx)
	stopCtx, cancel := context.WithTimeout(bg, o.Telemetry.Timeout)
	sw.StopTelemetry(stopCtx)
	cancel()
	ledgers := sw.Ledgers()
	if cons != nil {
		drainUntil := time.Now().Add(o.Drain)
		for time.Now().Before(drainUntil) && cons.Reconcile(ledgers).Lost > 0 {
			if o.Progress != nil {
				o.Progress(progress(true))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	elapsed := time.Since(started)
	final := sw.Stats()
	closeCtx, cancel := context.WithTimeout(bg, closeTimeout)
	if err := sw.Close(closeCtx); err != nil {
		o.Logger.Warn("some devices did not close cleanly", "reason", err)
	}
	cancel()
	if o.Progress != nil {
		o.Progress(progress(false))
	}

	sum := Summary{
		Started:        started.UTC(),
		ElapsedSeconds: elapsed.Seconds(),
		Interrupted:    interrupted,
		Settings:       settingsOf(o, sw),
		Devices: DeviceCounts{
			Target: final.Target, Connected: final.EverConnected, ConnectedAtEnd: final.Connected,
			ConnectAttempts: final.ConnectAttempts, RampSeconds: final.AllConnectedAfter.Seconds(),
		},
		Messages: MessageCounts{Sent: final.Sent, Failed: final.Failed, Skipped: final.Skipped},
		Commands: sw.Commands(),
	}
	connectLat, publishLat := sw.Latencies()
	sum.ConnectLatency, sum.PublishLatency = connectLat.Latency(), publishLat.Latency()
	if cons != nil {
		d := cons.Reconcile(ledgers)
		sum.Messages.Received, sum.Messages.Duplicates, sum.Messages.Lost, sum.Messages.Unexpected = d.Received, d.Duplicates, d.Lost, d.Unexpected
		sum.Latency = cons.Latency().Latency()
	}
	if secs := elapsed.Seconds(); secs > 0 {
		sum.Messages.SentPerSecond = float64(sum.Messages.Sent) / secs
		sum.Messages.ReceivedPerSecond = float64(sum.Messages.Received) / secs
	}
	if o.OTA != nil {
		c := sw.OTA()
		sum.OTA = &c
	}
	sum.Errors, sum.ErrorSamples = errs.snapshot()
	return sum, nil
}

func settingsOf(o Options, sw *Swarm) Settings {
	s := Settings{
		Devices:         len(sw.devs),
		Servers:         o.Servers,
		SourceAddrs:     o.SourceAddrs,
		Rate:            o.Rate,
		IntervalSeconds: o.Telemetry.Interval.Seconds(),
		PayloadSize:     o.Telemetry.Size,
		QoS:             o.Telemetry.QoS,
		Channel:         o.Telemetry.Channel,
		DurationSeconds: o.Duration.Seconds(),
		Commands:        o.Commands,
		OTA:             o.OTA != nil,
		Consumer:        o.Consumer != nil,
	}
	for _, d := range sw.devs {
		if d.cred.Bundle != "" {
			s.EnvelopeDevices++
		}
	}
	return s
}
