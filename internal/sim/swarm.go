package sim

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/envelope"
)

// Defaults for the zero values of SwarmOptions and Telemetry.
const (
	DefaultChannel        = "sim"
	DefaultPayloadSize    = 64
	DefaultRate           = 100 // devices per second
	DefaultMaxConnecting  = 64
	DefaultPublishers     = 256
	DefaultPublishTimeout = 10 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultKeepAlive      = 60 * time.Second
	DefaultMinBackoff     = time.Second
	DefaultMaxBackoff     = 30 * time.Second
	// setupTimeout bounds one attempt at a device's setup after it
	// connected (the command and OTA subscriptions). It is generous: a
	// broker that persists sessions answers subscriptions late during a
	// connection storm, and giving up early only adds a second request.
	setupTimeout = 30 * time.Second
	// maxFailedTracked bounds the failed sequence numbers a device
	// remembers for Reconcile; beyond it a failed publish that never
	// arrives counts as lost.
	maxFailedTracked = 1 << 16
)

// Telemetry is what every device publishes.
type Telemetry struct {
	// Interval between one device's messages; 0 publishes nothing (an
	// idle fleet). Each device starts at a random point of its first
	// interval, so that the fleet's messages are spread evenly.
	Interval time.Duration
	// Size of each payload in bytes, at least HeaderSize (default 64).
	Size int
	// QoS 0 or 1 (2 also works; the SDK supports it).
	QoS byte
	// Channel is the uplink channel: private/<id>/up/<Channel> (default
	// "sim").
	Channel string
	// Publishers is how many publishes may wait for their
	// acknowledgement at once, across the fleet (default 256). A device
	// whose previous message is still unacknowledged when the next is due
	// skips it (Summary.Messages.Skipped).
	Publishers int
	// Timeout bounds one publish (default 10s).
	Timeout time.Duration
}

// OTAOptions turns on every device's OTA agent (device.Client.OTA). The
// agent verifies each offered release against ReleaseKey and downloads
// and verifies the image; the simulated installer then discards it and
// "boots" it in place (Agent.Booted), so Warden sees the rollout complete.
// Agent state lives in memory, and so does each download while it runs.
type OTAOptions struct {
	// ReleaseKey is the release public key (firmware.ParsePublicKeyPEM of
	// the release.pub that `warden fw keygen` wrote). Required.
	ReleaseKey crypto.PublicKey
	// Model must be the devices' model (`warden device provision
	// --model`); releases for other models are refused. Required.
	Model string
	// Transport is device.OTATransportMQTT (default) or
	// device.OTATransportHTTPS, which also needs HTTPSBase. The HTTPS
	// transport does not use the source addresses.
	Transport string
	HTTPSBase string
}

// SwarmOptions configures a Swarm.
type SwarmOptions struct {
	// Fleet is the devices' credentials (LoadFleet). Required.
	Fleet *Fleet
	// Devices is how many of the fleet's devices to run, the first by ID;
	// 0 runs them all.
	Devices int
	// Servers are the broker URLs (mqtts://, wss://, or mqtt:// for
	// envelope devices), as for device.Config.Servers. Envelope devices
	// use the plain mqtt:// servers when any are listed; the others use the
	// TLS servers.
	Servers []string
	// ServerName overrides the host name the broker's certificate is
	// checked against.
	ServerName string
	// SourceAddrs are the local IP addresses the devices connect from,
	// round-robin, so that the fleet is not limited by one address's
	// ephemeral ports. nil chooses DefaultSourceAddrs(Servers); an empty,
	// non-nil slice lets the system choose.
	SourceAddrs []string
	// Rate is how many devices start connecting per second (default
	// DefaultRate), and MaxConnecting how many connection attempts may be
	// under way at once (default DefaultMaxConnecting).
	Rate          float64
	MaxConnecting int
	// ConnectTimeout bounds one device's Connect (default 10s); a failed
	// device tries again after a backoff between MinBackoff and MaxBackoff
	// (defaults 1s and 30s), which also bound the SDK's reconnections.
	ConnectTimeout         time.Duration
	MinBackoff, MaxBackoff time.Duration
	// KeepAlive is the MQTT keep-alive (default 60s).
	KeepAlive time.Duration
	// Telemetry is what devices publish once connected.
	Telemetry Telemetry
	// Commands makes every device answer commands (device.Client.
	// HandleCommands): "ping" answers {"pong":true}, "echo" its body,
	// "sleep" waits the body's milliseconds (at most 60000) and answers
	// {"slept_ms":N}, "fail" an error, anything else "unknown command".
	Commands bool
	// OTA, if set, runs every device's OTA agent.
	OTA *OTAOptions
	// StateDir keeps the envelope devices' sequence counters
	// (ID.sim-counter-EPOCH), which must survive from one run to the next:
	// Warden refuses a sequence number it has seen. Default: the fleet
	// directory.
	StateDir string
	// Logger receives the simulator's own messages; nil discards them.
	Logger *slog.Logger
	// DeviceLogger receives every device's SDK log; nil discards them
	// (thousands of devices log a lot, and failures are counted anyway).
	DeviceLogger *slog.Logger
}

// DefaultSourceAddrs returns 127.0.0.1 to 127.0.0.8 when every server is
// on IPv4 loopback (or "localhost"), and nil otherwise. On Linux the whole
// of 127.0.0.0/8 is local, so each of them has its own ~28,000 ephemeral
// ports toward the broker.
func DefaultSourceAddrs(servers []string) []string {
	if len(servers) == 0 {
		return nil
	}
	for _, s := range servers {
		u, err := url.Parse(s)
		if err != nil {
			return nil
		}
		h := u.Hostname()
		if h == "localhost" {
			continue
		}
		ip, err := netip.ParseAddr(h)
		if err != nil || !ip.Unmap().Is4() || !ip.IsLoopback() {
			return nil
		}
	}
	addrs := make([]string, 8)
	for i := range addrs {
		addrs[i] = "127.0.0." + strconv.Itoa(i+1)
	}
	return addrs
}

// Ledger is what one device sent: sequence numbers 0 to Next-1, of which
// the publishes in Failed did not succeed (they may still have arrived).
type Ledger struct {
	ID     string
	Next   uint64
	Failed []uint64
}

// simDevice is one simulated device. Its ledger fields are touched only by
// the publisher holding busy, and read after publishing stopped.
type simDevice struct {
	sw      *Swarm
	cred    *Credential
	source  string
	servers []string

	client atomic.Pointer[device.Client]
	up     atomic.Bool
	busy   atomic.Bool

	agentMu  sync.Mutex
	agent    *device.Agent // started; closed by Close
	otaStore *memOTAStore  // kept across attempts to start an agent

	next   uint64
	failed []uint64
}

func (d *simDevice) markUp() {
	if d.up.CompareAndSwap(false, true) {
		d.sw.connected.Add(1)
	}
}

func (d *simDevice) markDown() bool {
	if d.up.CompareAndSwap(true, false) {
		d.sw.connected.Add(-1)
		return true
	}
	return false
}

// SwarmStats counts what a Swarm did so far.
type SwarmStats struct {
	Target          int    // devices in the swarm
	Connected       int    // connected now
	EverConnected   int    // connected at least once
	Connecting      int    // Connect calls under way
	ConnectAttempts uint64 // Connect calls made
	// AllConnectedAfter is when the last device connected for the first
	// time, from the start; 0 until then.
	AllConnectedAfter time.Duration
	Sent              uint64 // publishes acknowledged (QoS 0: written)
	Failed            uint64 // publishes that failed
	Skipped           uint64 // messages not sent: the device was offline, or its previous one unacknowledged
	Errors            uint64 // failures of every kind
}

// Swarm is a running set of simulated devices: it connects them at a
// steady rate, publishes their telemetry from one shared scheduler and a
// bounded pool of publishers (no goroutine of its own per device), and
// answers commands and runs OTA agents through the SDK.
type Swarm struct {
	o     SwarmOptions
	devs  []*simDevice
	errs  *errorLog
	start time.Time
	log   *slog.Logger

	life    context.Context // ends at Close: ramp and connection attempts stop
	stop    context.CancelFunc
	pubLife context.Context // ends after StopTelemetry's grace: in-flight publishes
	pubStop context.CancelFunc

	sem       chan struct{} // MaxConnecting
	rampDone  chan struct{}
	connectWG sync.WaitGroup

	sched      *scheduler
	pubWG      sync.WaitGroup
	stopTelem  sync.Once
	closeOnce  sync.Once
	closeErr   error
	finalStats struct {
		sync.Mutex
		commands device.CommandStats
		done     bool
	}

	connected      atomic.Int64
	everConnected  atomic.Int64
	connecting     atomic.Int64
	attempts       atomic.Uint64
	allConnectedNS atomic.Int64
	sent           atomic.Uint64
	failed         atomic.Uint64
	skipped        atomic.Uint64

	cmdPing, cmdEcho, cmdSleep, cmdFail, cmdUnknown atomic.Uint64
	ota                                             otaCounters

	histMu     sync.Mutex
	connectLat Histogram
	publishLat Histogram
}

// StartSwarm validates o and starts connecting the devices in the
// background; it returns at once. Close stops everything.
func StartSwarm(ctx context.Context, o SwarmOptions) (*Swarm, error) {
	return startSwarm(ctx, o, newErrorLog())
}

func startSwarm(ctx context.Context, o SwarmOptions, errs *errorLog) (*Swarm, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	s := &Swarm{o: o, errs: errs, start: time.Now(), log: o.Logger}
	creds := o.Fleet.Devices[:o.Devices]
	envelopes := 0
	for i := range creds {
		c := &creds[i]
		d := &simDevice{sw: s, cred: c}
		if len(o.SourceAddrs) > 0 {
			d.source = o.SourceAddrs[i%len(o.SourceAddrs)]
		}
		var err error
		if d.servers, err = serversFor(c, o.Servers, o.Fleet.RootCAs != nil); err != nil {
			return nil, err
		}
		if c.Bundle != "" {
			envelopes++
		}
		s.devs = append(s.devs, d)
	}
	if envelopes > 0 {
		if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("sim: the state directory for envelope counters: %w", err)
		}
	}
	s.life, s.stop = context.WithCancel(context.WithoutCancel(ctx))
	s.pubLife, s.pubStop = context.WithCancel(context.WithoutCancel(ctx))
	s.sem = make(chan struct{}, o.MaxConnecting)
	s.rampDone = make(chan struct{})
	if o.Telemetry.Interval > 0 {
		s.sched = newScheduler(o.Telemetry.Interval, o.Telemetry.Publishers)
		go s.sched.run(s.life, s.dispatch)
		for range o.Telemetry.Publishers {
			s.pubWG.Go(func() {
				for d := range s.sched.work {
					s.publish(d)
				}
			})
		}
	}
	s.log.Info("simulating devices", "devices", len(s.devs), "envelope", envelopes, "rate", o.Rate,
		"sources", len(o.SourceAddrs), "servers", strings.Join(o.Servers, ","))
	go s.ramp()
	return s, nil
}

// validate applies defaults and checks o.
func (o *SwarmOptions) validate() error {
	if o.Fleet == nil || len(o.Fleet.Devices) == 0 {
		return errors.New("sim: no fleet; load one with LoadFleet")
	}
	switch {
	case o.Devices < 0:
		return fmt.Errorf("sim: %d devices is negative", o.Devices)
	case o.Devices == 0:
		o.Devices = len(o.Fleet.Devices)
	case o.Devices > len(o.Fleet.Devices):
		return fmt.Errorf("sim: %d devices asked for, but %s holds %d; provision more with `warden device provision --count %d --out %s`",
			o.Devices, o.Fleet.Dir, len(o.Fleet.Devices), o.Devices-len(o.Fleet.Devices), o.Fleet.Dir)
	}
	if len(o.Servers) == 0 {
		return errors.New("sim: no server; give the broker's URL, such as mqtts://127.0.0.1:8883")
	}
	if o.SourceAddrs == nil {
		o.SourceAddrs = DefaultSourceAddrs(o.Servers)
	}
	for _, a := range o.SourceAddrs {
		if _, err := netip.ParseAddr(a); err != nil {
			return fmt.Errorf("sim: source address %q is not an IP address", a)
		}
	}
	if o.Rate == 0 {
		o.Rate = DefaultRate
	}
	if o.Rate < 0 || math.IsNaN(o.Rate) || math.IsInf(o.Rate, 0) {
		return fmt.Errorf("sim: rate %v devices per second is not a positive number", o.Rate)
	}
	if o.MaxConnecting == 0 {
		o.MaxConnecting = DefaultMaxConnecting
	}
	if o.MaxConnecting < 0 {
		return fmt.Errorf("sim: %d concurrent connection attempts is negative", o.MaxConnecting)
	}
	o.ConnectTimeout = positive(o.ConnectTimeout, DefaultConnectTimeout)
	o.KeepAlive = positive(o.KeepAlive, DefaultKeepAlive)
	o.MinBackoff = positive(o.MinBackoff, DefaultMinBackoff)
	o.MaxBackoff = positive(o.MaxBackoff, DefaultMaxBackoff)
	if o.MaxBackoff < o.MinBackoff {
		return fmt.Errorf("sim: the maximum backoff %v is below the minimum %v", o.MaxBackoff, o.MinBackoff)
	}
	t := &o.Telemetry
	switch {
	case t.Interval < 0:
		return fmt.Errorf("sim: telemetry interval %v is negative", t.Interval)
	case t.Size < 0 || t.Size > MaxPayloadSize:
		return fmt.Errorf("sim: payload size %d is outside 0..%d", t.Size, MaxPayloadSize)
	case t.QoS > 2:
		return fmt.Errorf("sim: QoS %d is not 0, 1 or 2", t.QoS)
	case t.Publishers < 0:
		return fmt.Errorf("sim: %d publishers is negative", t.Publishers)
	}
	if t.Size == 0 {
		t.Size = DefaultPayloadSize
	}
	t.Size = max(t.Size, HeaderSize)
	if t.Channel == "" {
		t.Channel = DefaultChannel
	}
	if t.Channel == "cmd-result" || strings.ContainsAny(t.Channel, "/+#\x00") {
		return fmt.Errorf("sim: telemetry channel %q must be one topic level without wildcards, and not cmd-result", t.Channel)
	}
	if t.Publishers == 0 {
		t.Publishers = DefaultPublishers
	}
	t.Timeout = positive(t.Timeout, DefaultPublishTimeout)
	if o.OTA != nil {
		ota := *o.OTA // the caller's stays as it was
		if ota.ReleaseKey == nil || ota.Model == "" {
			return errors.New("sim: OTA needs the release public key and the devices' model")
		}
		if ota.Transport == "" {
			ota.Transport = device.OTATransportMQTT
		}
		o.OTA = &ota
	}
	if o.StateDir == "" {
		o.StateDir = o.Fleet.Dir
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.DeviceLogger == nil {
		o.DeviceLogger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func positive(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// serversFor picks the servers a device can use: plain mqtt:// servers for
// an envelope device when any are listed, TLS servers otherwise.
func serversFor(c *Credential, servers []string, haveRoot bool) ([]string, error) {
	var plain, secure []string
	for _, s := range servers {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("sim: server %q: %w", s, err)
		}
		switch strings.ToLower(u.Scheme) {
		case "mqtt":
			plain = append(plain, s)
		case "mqtts", "wss":
			secure = append(secure, s)
		default:
			return nil, fmt.Errorf("sim: server %q: the scheme must be mqtts, wss or mqtt", s)
		}
	}
	if c.Bundle != "" && len(plain) > 0 {
		return plain, nil
	}
	switch {
	case len(secure) == 0 && c.Bundle == "":
		return nil, fmt.Errorf("sim: device %s is not an envelope device, and plain mqtt:// servers admit only those; list an mqtts:// or wss:// server", c.ID)
	case len(secure) == 0:
		return nil, fmt.Errorf("sim: no server for envelope device %s", c.ID)
	case len(c.Certificate.Certificate) == 0:
		return nil, fmt.Errorf("sim: envelope device %s has no certificate (%s.crt) for the TLS servers; list a plain mqtt:// server for it", c.ID, c.ID)
	case !haveRoot:
		return nil, fmt.Errorf("sim: the fleet directory has no ca.crt for the TLS servers; export the root with `warden ca export-root --out %s`", filepath.Join("DIR", "ca.crt"))
	}
	return secure, nil
}

// ramp starts the devices' connections at the configured rate.
func (s *Swarm) ramp() {
	defer close(s.rampDone)
	// A burst of a hundredth of a second's worth keeps the rate even
	// when it is finer than the timer's resolution.
	lim := rate.NewLimiter(rate.Limit(s.o.Rate), max(1, int(s.o.Rate/100)))
	for _, d := range s.devs {
		if lim.Wait(s.life) != nil {
			return
		}
		select {
		case s.sem <- struct{}{}:
		case <-s.life.Done():
			return
		}
		s.connectWG.Add(1)
		go s.connect(d)
	}
}

// connect connects one device, trying again with backoff until it
// succeeds or the swarm closes. It is called holding a slot of sem.
func (s *Swarm) connect(d *simDevice) {
	defer s.connectWG.Done()
	cfg, err := s.config(d)
	if err != nil {
		<-s.sem
		s.errs.add(ErrConnectOther, err)
		s.log.Error("device cannot start", "device", d.cred.ID, "reason", err)
		return
	}
	for attempt := 0; ; attempt++ {
		s.connecting.Add(1)
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(s.life, s.o.ConnectTimeout)
		cl, err := device.Connect(ctx, cfg)
		cancel()
		took := time.Since(t0)
		s.attempts.Add(1)
		s.connecting.Add(-1)
		<-s.sem
		if err == nil {
			s.connected1(d, cl, took)
			return
		}
		d.markDown() // an abandoned attempt may have been up for a moment
		if s.life.Err() != nil {
			return
		}
		s.errs.add(classifyConnect(err), fmt.Errorf("device %s: %w", d.cred.ID, err))
		t := time.NewTimer(device.Backoff(s.o.MinBackoff, s.o.MaxBackoff, attempt, nil))
		select {
		case <-t.C:
		case <-s.life.Done():
			t.Stop()
			return
		}
		select {
		case s.sem <- struct{}{}:
		case <-s.life.Done():
			return
		}
	}
}

// connected1 sets up a device that has just connected for the first time.
func (s *Swarm) connected1(d *simDevice, cl *device.Client, took time.Duration) {
	s.histMu.Lock()
	s.connectLat.Record(took)
	s.histMu.Unlock()
	d.client.Store(cl)
	d.markUp()
	if int(s.everConnected.Add(1)) == len(s.devs) {
		s.allConnectedNS.Store(int64(time.Since(s.start)))
	}
	if s.sched != nil && s.life.Err() == nil {
		s.sched.add(d)
	}
	if s.o.Commands {
		s.retry(d, "handle commands", func(ctx context.Context) error { return cl.HandleCommands(ctx, s.handleCommand) })
	}
	if s.o.OTA != nil {
		s.retry(d, "start the OTA agent", func(ctx context.Context) error { return s.startOTA(ctx, d, cl) })
	}
}

// retry runs a device's setup step (a subscription, which a broker busy
// with a connection storm may answer late) until it succeeds or the swarm
// closes, counting each failure, so that a device is never left without
// the commands or updates it is meant to take.
func (s *Swarm) retry(d *simDevice, what string, step func(context.Context) error) {
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(s.life, max(s.o.ConnectTimeout, setupTimeout))
		err := step(ctx)
		cancel()
		if err == nil || s.life.Err() != nil {
			return
		}
		s.errs.add(ErrSubscribe, fmt.Errorf("device %s: %s: %w", d.cred.ID, what, err))
		t := time.NewTimer(device.Backoff(s.o.MinBackoff, s.o.MaxBackoff, attempt, nil))
		select {
		case <-t.C:
		case <-s.life.Done():
			t.Stop()
			return
		}
	}
}

// config is the device's SDK configuration. An envelope device's counter
// is made here, once: a failed Connect gives the counter up, and the next
// attempt may use it.
func (s *Swarm) config(d *simDevice) (device.Config, error) {
	c := d.cred
	cfg := device.Config{
		Servers:        d.servers,
		Certificate:    c.Certificate,
		RootCAs:        s.o.Fleet.RootCAs,
		ServerName:     s.o.ServerName,
		KeepAlive:      s.o.KeepAlive,
		MinBackoff:     s.o.MinBackoff,
		MaxBackoff:     s.o.MaxBackoff,
		ConnectTimeout: s.o.ConnectTimeout,
		LocalAddr:      d.source,
		Logger:         s.o.DeviceLogger,
		OnConnectionUp: d.markUp,
		OnConnectionDown: func(err error) {
			if d.markDown() {
				s.errs.add(ErrDisconnect, fmt.Errorf("device %s: %w", c.ID, err))
			}
		},
	}
	if len(c.Certificate.Certificate) == 0 {
		cfg.DeviceID = c.ID
	}
	if c.Bundle == "" {
		return cfg, nil
	}
	id, env, err := device.LoadEnvelopeBundle(c.Bundle)
	if err != nil {
		return cfg, err
	}
	if id != c.ID {
		return cfg, fmt.Errorf("sim: %s is the bundle of device %q, not %q", c.Bundle, id, c.ID)
	}
	counter := filepath.Join(s.o.StateDir, fmt.Sprintf("%s.sim-counter-%d", c.ID, env.Epoch))
	if env.Counter, err = envelope.NewCounter(envelope.NewFileCounterStore(counter)); err != nil {
		return cfg, fmt.Errorf("sim: device %s: %w", c.ID, err)
	}
	cfg.Envelope = env
	return cfg, nil
}

// handleCommand is every device's command handler.
func (s *Swarm) handleCommand(ctx context.Context, cmd device.Command) (json.RawMessage, error) {
	switch cmd.Name {
	case "ping":
		s.cmdPing.Add(1)
		return json.RawMessage(`{"pong":true}`), nil
	case "echo":
		s.cmdEcho.Add(1)
		if len(cmd.Body) == 0 {
			return nil, nil
		}
		return cmd.Body, nil
	case "sleep":
		s.cmdSleep.Add(1)
		var msec int64
		if err := json.Unmarshal(cmd.Body, &msec); err != nil || msec < 0 || msec > 60000 {
			return nil, errors.New("sleep wants a number of milliseconds from 0 to 60000")
		}
		t := time.NewTimer(time.Duration(msec) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("interrupted: %w", ctx.Err())
		}
		return json.RawMessage(`{"slept_ms":` + strconv.FormatInt(msec, 10) + `}`), nil
	case "fail":
		s.cmdFail.Add(1)
		return nil, errors.New("simulated failure")
	}
	s.cmdUnknown.Add(1)
	return nil, device.ErrUnknownCommand
}

// dispatch hands a due device to a publisher, or skips its message.
func (s *Swarm) dispatch(ctx context.Context, d *simDevice) bool {
	if !d.up.Load() || !d.busy.CompareAndSwap(false, true) {
		s.skipped.Add(1)
		return true
	}
	select {
	case s.sched.work <- d:
		return true
	case <-ctx.Done():
		d.busy.Store(false)
		return false
	}
}

// publish sends one telemetry message for d; the caller set d.busy.
func (s *Swarm) publish(d *simDevice) {
	defer d.busy.Store(false)
	cl := d.client.Load()
	t := s.o.Telemetry
	seq := d.next
	d.next++
	sent := time.Now()
	payload := AppendPayload(make([]byte, 0, t.Size), t.Size, seq, sent)
	ctx, cancel := context.WithTimeout(s.pubLife, t.Timeout)
	err := cl.PublishUp(ctx, t.Channel, payload, t.QoS)
	cancel()
	if err != nil {
		if len(d.failed) < maxFailedTracked {
			d.failed = append(d.failed, seq)
		}
		s.failed.Add(1)
		kind := ErrPublish
		if errors.Is(err, context.DeadlineExceeded) {
			kind = ErrPublishTimeout
		}
		s.errs.add(kind, fmt.Errorf("device %s: %w", d.cred.ID, err))
		return
	}
	s.sent.Add(1)
	if t.QoS > 0 {
		took := time.Since(sent)
		s.histMu.Lock()
		s.publishLat.Record(took)
		s.histMu.Unlock()
	}
}

// Stats returns what the swarm did so far.
func (s *Swarm) Stats() SwarmStats {
	return SwarmStats{
		Target:            len(s.devs),
		Connected:         int(s.connected.Load()),
		EverConnected:     int(s.everConnected.Load()),
		Connecting:        int(s.connecting.Load()),
		ConnectAttempts:   s.attempts.Load(),
		AllConnectedAfter: time.Duration(s.allConnectedNS.Load()),
		Sent:              s.sent.Load(),
		Failed:            s.failed.Load(),
		Skipped:           s.skipped.Load(),
		Errors:            s.errs.sum(),
	}
}

// Latencies returns copies of the histograms of connection times (Connect
// to CONNACK, per device's first connection) and of publish
// acknowledgements (QoS 1 and 2).
func (s *Swarm) Latencies() (connect, publish *Histogram) {
	s.histMu.Lock()
	defer s.histMu.Unlock()
	c, p := s.connectLat, s.publishLat
	return &c, &p
}

// Errors returns the failures so far by kind, and the first message of
// each kind.
func (s *Swarm) Errors() (map[ErrorKind]uint64, map[ErrorKind]string) { return s.errs.snapshot() }

// WaitConnected returns when every device has connected once, or with
// ctx's error.
func (s *Swarm) WaitConnected(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for int(s.everConnected.Load()) < len(s.devs) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("sim: %d of %d devices connected: %w", s.everConnected.Load(), len(s.devs), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Client returns the SDK client of the i-th device (by ID), or nil before
// it has connected.
func (s *Swarm) Client(i int) *device.Client {
	if i < 0 || i >= len(s.devs) {
		return nil
	}
	return s.devs[i].client.Load()
}

// StopTelemetry stops scheduling messages and waits for those under way
// to be acknowledged or to time out, or for ctx (after which they are
// abandoned). Ledgers are complete once it has returned.
func (s *Swarm) StopTelemetry(ctx context.Context) {
	s.stopTelem.Do(func() {
		if s.sched == nil {
			return
		}
		s.sched.stop()
		done := make(chan struct{})
		go func() { s.pubWG.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			s.pubStop()
			<-done
		}
	})
}

// Ledgers returns what each device sent. Call it after StopTelemetry.
func (s *Swarm) Ledgers() []Ledger {
	ls := make([]Ledger, len(s.devs))
	for i, d := range s.devs {
		ls[i] = Ledger{ID: d.cred.ID, Next: d.next, Failed: d.failed}
	}
	return ls
}

// Close stops the ramp, telemetry and every device (DISCONNECT, many at a
// time), within ctx. It is safe to call more than once.
func (s *Swarm) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.StopTelemetry(ctx)
		s.stop()
		<-s.rampDone
		s.connectWG.Wait()
		s.pubStop()

		work := make(chan *simDevice)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var cmds device.CommandStats
		var firstErr error
		for range max(1, s.o.MaxConnecting) {
			wg.Go(func() {
				for d := range work {
					cl := d.client.Load()
					if cl == nil {
						continue
					}
					d.agentMu.Lock()
					if d.agent != nil {
						_ = d.agent.Close()
					}
					d.agentMu.Unlock()
					cs := cl.CommandStats()
					err := cl.Close(ctx)
					d.markDown()
					mu.Lock()
					cmds.Received += cs.Received
					cmds.Repeated += cs.Repeated
					cmds.Rejected += cs.Rejected
					cmds.Answered += cs.Answered
					cmds.Dropped += cs.Dropped
					if err != nil && firstErr == nil {
						firstErr = fmt.Errorf("sim: close device %s: %w", d.cred.ID, err)
					}
					mu.Unlock()
				}
			})
		}
		for _, d := range s.devs {
			work <- d
		}
		close(work)
		wg.Wait()
		if cmds.Dropped > 0 {
			s.errs.addN(ErrCommand, cmds.Dropped, errors.New("commands dropped by devices: malformed, or their answers could not be sent"))
		}
		s.finalStats.Lock()
		s.finalStats.commands = cmds
		s.finalStats.done = true
		s.finalStats.Unlock()
		s.closeErr = firstErr
	})
	return s.closeErr
}

// CommandCounts says how the fleet answered commands.
type CommandCounts struct {
	// From the SDK (device.CommandStats, summed over the devices); final
	// after Close, which is when they are collected.
	Received uint64 `json:"received"`
	Repeated uint64 `json:"repeated"`
	Rejected uint64 `json:"rejected"`
	Answered uint64 `json:"answered"`
	Dropped  uint64 `json:"dropped"`
	// Commands the simulated handler ran, by name.
	Ping    uint64 `json:"ping"`
	Echo    uint64 `json:"echo"`
	Sleep   uint64 `json:"sleep"`
	Fail    uint64 `json:"fail"`
	Unknown uint64 `json:"unknown"`
}

// Commands returns the command counts; the SDK's part is filled in by
// Close.
func (s *Swarm) Commands() CommandCounts {
	s.finalStats.Lock()
	cs := s.finalStats.commands
	s.finalStats.Unlock()
	return CommandCounts{
		Received: cs.Received, Repeated: cs.Repeated, Rejected: cs.Rejected, Answered: cs.Answered, Dropped: cs.Dropped,
		Ping: s.cmdPing.Load(), Echo: s.cmdEcho.Load(), Sleep: s.cmdSleep.Load(), Fail: s.cmdFail.Load(), Unknown: s.cmdUnknown.Load(),
	}
}
