package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/warden-iot/warden/internal/sim"
)

// Target is a broker under load, as the scenarios see it: where devices
// connect, where they publish, and where the consumer reads.
type Target struct {
	Name     string // "warden" or "mosquitto": the Result's Subject
	Proc     *Proc
	Endpoint Endpoint
	// Topic is where device id publishes on channel.
	Topic func(id, channel string) string
	// OwnFilter is the subtree device id subscribes to when idle.
	OwnFilter func(id string) string
	// ConsumerFilter is what the consumer subscribes to, and
	// ConsumerLevel the topic level that holds the device ID.
	ConsumerFilter string
	ConsumerLevel  int
}

// WardenTarget loads Warden: devices publish on their private uplink,
// Warden's relay republishes on fleet/<id>/up/..., which the reader
// service consumes. Its figures are end to end through the relay.
func WardenTarget(p *Proc, classic bool) (Target, error) {
	roots, err := p.ServerRoots()
	if err != nil {
		return Target{}, err
	}
	return Target{
		Name: "warden", Proc: p,
		Endpoint:       Endpoint{Addr: p.Addr, ServerName: p.ServerName, Roots: roots, ClassicKeyExchange: classic},
		Topic:          func(id, ch string) string { return "private/" + id + "/up/" + ch },
		OwnFilter:      func(id string) string { return "private/" + id + "/#" },
		ConsumerFilter: "fleet/#", ConsumerLevel: 1,
	}, nil
}

// MosquittoTarget loads Mosquitto configured as the seed documents do:
// the consumer subscribes to the devices' topics directly.
func MosquittoTarget(p *Proc) (Target, error) {
	roots, err := p.ServerRoots()
	if err != nil {
		return Target{}, err
	}
	return Target{
		Name: "mosquitto", Proc: p,
		Endpoint:       Endpoint{Addr: p.Addr, ServerName: p.ServerName, Roots: roots},
		Topic:          func(id, ch string) string { return "private/" + id + "/up/" + ch },
		OwnFilter:      func(id string) string { return "private/" + id + "/#" },
		ConsumerFilter: "private/+/up/#", ConsumerLevel: 1,
	}, nil
}

// Identity is one device's credentials.
type Identity struct {
	ID   string
	Cert tls.Certificate
}

// LoadIdentities reads the first n devices of a fleet (all if n <= 0) and
// its consumer.
func LoadIdentities(f *FleetDir, n int) (devices []Identity, consumer Identity, err error) {
	ids := f.Devices
	if n > 0 && n < len(ids) {
		ids = ids[:n]
	}
	devices = make([]Identity, len(ids))
	for i, id := range ids {
		c, err := tls.LoadX509KeyPair(f.CertFile(id), f.KeyFile(id))
		if err != nil {
			return nil, Identity{}, fmt.Errorf("bench: device %s: %w", id, err)
		}
		devices[i] = Identity{ID: id, Cert: c}
	}
	c, err := tls.LoadX509KeyPair(f.ConsumerCertFile(), f.ConsumerKeyFile())
	if err != nil {
		return nil, Identity{}, fmt.Errorf("bench: consumer: %w", err)
	}
	return devices, Identity{ID: f.Consumer, Cert: c}, nil
}

// sourceAddrs spreads connections over 127.0.0.1-8 so that one address's
// ephemeral ports do not bound the fleet.
var sourceAddrs = []string{"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8"}

// ConnectOptions bounds how a fleet connects.
type ConnectOptions struct {
	// Concurrency is how many connections are being set up at once
	// (default 64).
	Concurrency int
	// Subscribe subscribes every device to its own subtree.
	Subscribe bool
	// Progress, if set, sees how many are connected.
	Progress func(done, total int)
	// Retries is how many times one device tries again after a failure
	// (default 5).
	Retries int
}

// ConnectAll connects every identity (in order) and returns the clients
// and how long it took. A device that fails Retries+1 times fails the call.
func ConnectAll(ctx context.Context, t Target, ids []Identity, o ConnectOptions) ([]*Client, time.Duration, error) {
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = id.ID
	}
	return connectEach(ctx, t, names, o, func(ctx context.Context, i int) (*Client, error) {
		return Dial(ctx, t.Endpoint, DialOptions{ID: ids[i].ID, Certificate: ids[i].Cert, LocalAddr: sourceAddrs[i%len(sourceAddrs)]})
	})
}

// connectEach connects device ids[i] with dial(ctx, i) for every i, at
// most o.Concurrency at once, each retried as ConnectAll says.
func connectEach(ctx context.Context, t Target, ids []string, o ConnectOptions, dial func(ctx context.Context, i int) (*Client, error)) ([]*Client, time.Duration, error) {
	if o.Concurrency <= 0 {
		o.Concurrency = 64
	}
	if o.Retries <= 0 {
		o.Retries = 5
	}
	clients := make([]*Client, len(ids))
	var (
		next, done atomic.Int64
		firstErr   error
		errMu      sync.Mutex
		wg         sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < min(o.Concurrency, len(ids)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) || ctx.Err() != nil {
					return
				}
				c, err := connectOne(ctx, t, ids[i], o, func(ctx context.Context) (*Client, error) { return dial(ctx, i) })
				if err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					return
				}
				clients[i] = c
				n := done.Add(1)
				if o.Progress != nil {
					o.Progress(int(n), len(ids))
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		CloseAll(clients)
		return nil, took, firstErr
	}
	return clients, took, nil
}

func connectOne(ctx context.Context, t Target, id string, o ConnectOptions, dial func(context.Context) (*Client, error)) (*Client, error) {
	var err error
	for attempt := 0; attempt <= o.Retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
		}
		var c *Client
		c, err = dial(ctx)
		if err != nil {
			continue
		}
		if o.Subscribe {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = c.Subscribe(sctx, t.OwnFilter(id), 1)
			cancel()
			if err != nil {
				c.Close()
				continue
			}
		}
		return c, nil
	}
	return nil, fmt.Errorf("bench: device %s could not connect to %s: %w", id, t.Name, err)
}

// CloseAll drops every connection at once.
func CloseAll(clients []*Client) {
	var wg sync.WaitGroup
	for _, c := range clients {
		if c != nil {
			wg.Add(1)
			go func() { defer wg.Done(); c.Close() }()
		}
	}
	wg.Wait()
}

// settle waits for the server's memory to stop moving after a change:
// Go's heap and RSS lag behind connections by a GC cycle or two.
func settle(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// memory reads a server's RSS, and Warden's Go runtime figures (zero for
// a server without a metrics endpoint).
func memory(ctx context.Context, p *Proc) (rss uint64, h GoHeap, err error) {
	st, err := p.Stats()
	if err != nil {
		return 0, GoHeap{}, err
	}
	if u := p.MetricsURL(); u != "" {
		if h, err = ScrapeGoHeap(ctx, u); err != nil {
			return 0, GoHeap{}, err
		}
	}
	return st.RSS, h, nil
}

// IdleOptions configures the idle scenario.
type IdleOptions struct {
	Connect ConnectOptions
	// Settle is how long to wait before each memory reading (default 5s).
	Settle time.Duration
}

// Idle connects every device, each subscribed to its own subtree, and
// measures the broker's memory per connection. The clients stay connected
// for the storm; the caller closes them.
func Idle(ctx context.Context, t Target, ids []Identity, o IdleOptions) (Result, []*Client, error) {
	if o.Settle <= 0 {
		o.Settle = 5 * time.Second
	}
	r := Result{Scenario: "idle", Subject: t.Name, Parameters: map[string]any{"devices": len(ids), "subscribed": true, "tls": t.Proc.TLS}}
	settle(ctx, o.Settle)
	rss0, h0, err := memory(ctx, t.Proc)
	if err != nil {
		return r, nil, err
	}
	o.Connect.Subscribe = true
	clients, took, err := ConnectAll(ctx, t, ids, o.Connect)
	if err != nil {
		return r, nil, err
	}
	settle(ctx, o.Settle)
	rss1, h1, err := memory(ctx, t.Proc)
	if err != nil {
		CloseAll(clients)
		return r, nil, err
	}
	n := float64(len(ids))
	r.Add(MetricRSSPerConnection, (float64(rss1)-float64(rss0))/n, UnitBytes, LowerIsBetter)
	if t.Proc.MetricsURL() != "" {
		per := func(a, b uint64) float64 { return (float64(b) - float64(a)) / n }
		r.Add(MetricHeapPerConnection, per(h0.HeapInuse, h1.HeapInuse), UnitBytes, LowerIsBetter)
		// Where the RSS goes: goroutine stacks, and the collector's goal
		// (the live heap after the last collection plus GOGC's headroom,
		// which the runtime keeps mapped until its scavenger returns it).
		r.Add(MetricStackPerConnection, per(h0.StackInuse, h1.StackInuse), UnitBytes, LowerIsBetter)
		r.Add(MetricGCGoalPerConnection, per(h0.NextGC, h1.NextGC), UnitBytes, LowerIsBetter)
	}
	r.Add("rss_total", float64(rss1), UnitBytes, LowerIsBetter)
	r.AddDuration("connect_time", took, UnitSeconds, LowerIsBetter)
	return r, clients, nil
}

// StormOptions configures the storm scenario.
type StormOptions struct {
	// Control is how many connected devices stay connected and publish
	// QoS 1 during the storm (default 50), every ControlInterval (default
	// 100ms), measuring the time to each PUBACK.
	Control         int
	ControlInterval time.Duration
	// Concurrency is how many reconnections are under way at once
	// (default 512): the storm's width, bounded by the load generator.
	Concurrency int
	Progress    func(done, total int)
	// ControlGroup, if Binary is set, runs the control group in a process
	// of its own (`Binary bench control-group`, control.go) at a higher
	// CPU priority, so that its latency is the broker's and not the load
	// generator's. Without it the group runs in this process.
	ControlGroup ControlGroupProcess
}

// ControlGroupProcess says how Storm starts its control-group process.
type ControlGroupProcess struct {
	Binary   string    // the warden executable
	FleetDir string    // where the devices' certificates are
	Nice     int       // the process's nice value (default -10; needs root)
	Stderr   io.Writer // the process's error output (default os.Stderr)
}

// Storm drops every connection of clients but the control group's at
// once, then reconnects them all at once, and measures full handshakes
// per second, the time until all are back, the server's CPU per handshake,
// and the control group's publish latency meanwhile (and whether the
// broker dropped any of it). clients[i] is ids[i]'s connection; the
// returned slice holds the new ones.
func Storm(ctx context.Context, t Target, ids []Identity, clients []*Client, o StormOptions) (Result, []*Client, error) {
	if o.Control <= 0 {
		o.Control = 50
	}
	if o.ControlInterval <= 0 {
		o.ControlInterval = 100 * time.Millisecond
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 512
	}
	o.Control = min(o.Control, len(ids)/10)
	r := Result{Scenario: "storm", Subject: t.Name, Parameters: map[string]any{"devices": len(ids) - o.Control, "control_group": o.Control,
		"control_interval_ms": o.ControlInterval.Milliseconds(), "concurrency": o.Concurrency, "tls": t.Proc.TLS}}
	control, rest := clients[:o.Control], clients[o.Control:]
	if o.ControlGroup.Binary != "" {
		return stormWithControlProcess(ctx, t, ids, control, rest, o, r)
	}

	// The control group publishes throughout.
	var (
		hmu     sync.Mutex
		hist    sim.Histogram
		ctlErrs atomic.Int64
	)
	cctx, stopControl := context.WithCancel(ctx)
	var cwg sync.WaitGroup
	payload := make([]byte, 64)
	for i, c := range control {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			tick := time.NewTicker(o.ControlInterval)
			defer tick.Stop()
			for {
				select {
				case <-cctx.Done():
					return
				case <-tick.C:
				}
				t0 := time.Now()
				pctx, cancel := context.WithTimeout(cctx, 10*time.Second)
				err := c.Publish(pctx, t.Topic(ids[i].ID, "control"), payload, 1)
				cancel()
				if err != nil {
					if cctx.Err() == nil {
						ctlErrs.Add(1)
					}
					continue
				}
				hmu.Lock()
				hist.Record(time.Since(t0))
				hmu.Unlock()
			}
		}()
	}
	// Let the control group's latency be measured calm first.
	time.Sleep(time.Second)
	hmu.Lock()
	calm := hist.Latency()
	hist.Reset()
	hmu.Unlock()

	before, err := t.Proc.Stats()
	if err != nil {
		stopControl()
		return r, nil, err
	}
	CloseAll(rest)
	back, took, err := ConnectAll(ctx, t, ids[o.Control:], ConnectOptions{Concurrency: o.Concurrency, Subscribe: true, Progress: o.Progress, Retries: 20})
	after, serr := t.Proc.Stats()
	time.Sleep(500 * time.Millisecond)
	stopControl()
	cwg.Wait()
	if err != nil {
		return r, nil, err
	}
	if serr != nil {
		CloseAll(back)
		return r, nil, serr
	}
	dropped := 0
	for _, c := range control {
		select {
		case <-c.Done():
			dropped++
		default:
		}
	}
	n := len(ids) - o.Control
	hmu.Lock()
	storm := hist.Latency()
	hmu.Unlock()
	r.Add(MetricHandshakesPerSecond, float64(n)/took.Seconds(), UnitPerSecond, HigherIsBetter)
	r.AddDuration("all_back_after", took, UnitSeconds, LowerIsBetter)
	r.AddDuration(MetricServerCPUPerHandshake, CPUPer(before, after, uint64(n)), UnitMicros, LowerIsBetter)
	r.AddDuration("control_p99_calm", calm.P99, UnitMillis, LowerIsBetter)
	r.AddDuration("control_p99_storm", storm.P99, UnitMillis, LowerIsBetter)
	r.AddDuration("control_max_storm", storm.Max, UnitMillis, LowerIsBetter)
	r.Add("control_publish_errors", float64(ctlErrs.Load()), UnitCount, LowerIsBetter)
	r.Add("control_sessions_dropped", float64(dropped), UnitCount, LowerIsBetter)
	return r, append(append([]*Client(nil), control...), back...), nil
}

// Consumer is the back end of the throughput runs against one broker: one
// connection, subscribed once, for all of them. (A reader that reconnects
// at once with the same client ID can lose its subscription in mochi
// v2.7.9; and a back end does not reconnect between bursts anyway.)
type Consumer struct {
	c       *Client
	handler atomic.Pointer[func(*packets.Publish)]
	runs    atomic.Int64
}

// StartConsumer connects the reader service and subscribes it to the
// target's consumer filter at QoS 1 (a QoS 0 publish arrives at QoS 0).
func StartConsumer(ctx context.Context, t Target, id Identity) (*Consumer, error) {
	cons := &Consumer{}
	// A back end's Receive Maximum (paho's default): the broker may have
	// that many QoS 1 messages unacknowledged toward it.
	c, err := Dial(ctx, t.Endpoint, DialOptions{ID: id.ID, Certificate: id.Cert, ReceiveMaximum: 65535, OnPublish: func(p *packets.Publish) {
		if h := cons.handler.Load(); h != nil {
			(*h)(p)
		}
	}})
	if err != nil {
		return nil, fmt.Errorf("bench: consumer: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.Subscribe(sctx, t.ConsumerFilter, 1); err != nil {
		c.Close()
		return nil, fmt.Errorf("bench: consumer subscribe %s: %w", t.ConsumerFilter, err)
	}
	cons.c = c
	return cons, nil
}

// Close disconnects the consumer.
func (c *Consumer) Close() { c.c.Disconnect() }

// creditTimeout is how long a device of the closed loop waits for one of
// its messages to arrive before it sends the next anyway.
const creditTimeout = 2 * time.Second

// ThroughputOptions configures a throughput run.
type ThroughputOptions struct {
	QoS  byte
	Size int // payload bytes (at least sim.HeaderSize; default 64)
	// Window is how many messages each device has on their way end to
	// end at once (closed loop: the next leaves when the consumer has
	// received one); default 4.
	Window   int
	Duration time.Duration // default 10s
	// Rate, if > 0, paces the fleet at this many messages per second in
	// total instead of a closed loop (Window then bounds nothing).
	Rate float64
}

// Throughput runs devices publishing to their own subtree while a consumer
// reads them all, and measures end-to-end messages per second, latency,
// the server's CPU per message, and loss. clients are connected devices:
// clients[i] is ids[i]'s connection.
func Throughput(ctx context.Context, t Target, ids []Identity, clients []*Client, cons *Consumer, o ThroughputOptions) (Result, error) {
	if len(ids) < len(clients) {
		return Result{}, fmt.Errorf("bench: throughput: %d clients but only %d identities", len(clients), len(ids))
	}
	names := make([]string, len(clients))
	for i := range clients {
		names[i] = ids[i].ID
	}
	return runLoad(ctx, ScenarioThroughput, t, names, clients, cons, o, nil)
}

// sealFunc turns device i's payload for topic into what it publishes (an
// envelope); nil publishes payloads as they are.
type sealFunc func(i int, topic string, payload []byte) ([]byte, error)

// runLoad is the load of Throughput and Sealed: device ids[i] publishes on
// clients[i], sealing each payload with seal when it is set. The payload
// is stamped before it is sealed, so the latency includes the device's
// sealing, as it does for a device of the SDK.
func runLoad(ctx context.Context, scenario string, t Target, ids []string, clients []*Client, cons *Consumer, o ThroughputOptions, seal sealFunc) (Result, error) {
	if o.Size < sim.HeaderSize {
		o.Size = max(64, sim.HeaderSize)
	}
	if o.Window <= 0 {
		o.Window = 4
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	mode := fmt.Sprintf("closed loop, window %d per device", o.Window)
	if o.Rate > 0 {
		mode = fmt.Sprintf("paced at %.0f msg/s", o.Rate)
	}
	r := Result{Scenario: scenario, Subject: t.Name, Parameters: map[string]any{"devices": len(clients), "qos": o.QoS, "payload_bytes": o.Size,
		"mode": mode, "duration_s": o.Duration.Seconds(), "tls": t.Proc.TLS}}
	index := make(map[string]int, len(clients))
	for i, id := range ids[:len(clients)] {
		index[id] = i
	}
	type devState struct {
		credit   chan struct{}
		received atomic.Uint64
		sent     atomic.Uint64
		dups     atomic.Uint64
		mu       sync.Mutex
		seen     map[uint64]struct{}
	}
	states := make([]*devState, len(clients))
	for i := range states {
		states[i] = &devState{credit: make(chan struct{}, o.Window), seen: map[uint64]struct{}{}}
		for range o.Window {
			states[i].credit <- struct{}{}
		}
	}
	var (
		hmu        sync.Mutex
		hist       sim.Histogram
		unexpected atomic.Uint64
		measuring  atomic.Bool
		counted    atomic.Uint64
	)
	onMsg := func(p *packets.Publish) {
		now := time.Now()
		parts := strings.SplitN(p.Topic, "/", t.ConsumerLevel+2)
		if len(parts) <= t.ConsumerLevel {
			unexpected.Add(1)
			return
		}
		i, ok := index[parts[t.ConsumerLevel]]
		st, err := sim.ParsePayload(p.Payload)
		if !ok || err != nil {
			unexpected.Add(1)
			return
		}
		d := states[i]
		d.mu.Lock()
		_, dup := d.seen[st.Seq]
		if !dup {
			d.seen[st.Seq] = struct{}{}
		}
		d.mu.Unlock()
		if dup {
			d.dups.Add(1)
			return
		}
		d.received.Add(1)
		if measuring.Load() {
			counted.Add(1)
			hmu.Lock()
			hist.Record(now.Sub(st.Sent))
			hmu.Unlock()
		}
		select {
		case d.credit <- struct{}{}:
		default:
		}
	}
	// Each run publishes on its own channel, so that a late message of an
	// earlier run is not taken for one of this run.
	channel := fmt.Sprintf("bench%d", cons.runs.Add(1))
	handler := func(p *packets.Publish) {
		if strings.HasSuffix(p.Topic, "/"+channel) {
			onMsg(p)
		}
	}
	cons.handler.Store(&handler)
	defer cons.handler.Store(nil)

	// Publishers: the closed loop takes a credit per message; the paced
	// mode hands out messages at the rate, round robin.
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var pubErrs, stalls atomic.Uint64
	var sealErr atomic.Pointer[error]
	// send publishes device i's message seq; false when it could not be
	// sealed, which ends the run (a counter that cannot persist its bound
	// must not send, and the figures would mean nothing).
	send := func(i int, seq uint64, buf []byte) bool {
		buf = sim.AppendPayload(buf[:0], o.Size, seq, time.Now())
		topic := t.Topic(ids[i], channel)
		if seal != nil {
			msg, err := seal(i, topic, buf)
			if err != nil {
				err = fmt.Errorf("bench: device %s: seal: %w", ids[i], err)
				sealErr.CompareAndSwap(nil, &err)
				stop()
				return false
			}
			buf = msg
		}
		states[i].sent.Add(1)
		clients[i].PublishAsync(topic, buf, o.QoS, func(err error) {
			if err != nil {
				pubErrs.Add(1)
			}
		})
		return true
	}
	if o.Rate > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seqs := make([]uint64, len(clients))
			every := time.Duration(float64(time.Second) / o.Rate)
			start := time.Now()
			for k := 0; pctx.Err() == nil; k++ {
				due := start.Add(time.Duration(k) * every)
				if w := time.Until(due); w > 0 {
					time.Sleep(w)
				}
				i := k % len(clients)
				if !send(i, seqs[i], make([]byte, 0, o.Size)) {
					return
				}
				seqs[i]++
			}
		}()
	} else {
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A message that never arrives would hold its credit for
				// good and stall the device: after creditTimeout the
				// device goes on without it (the message counts as lost
				// unless it arrives after all).
				timer := time.NewTimer(creditTimeout)
				defer timer.Stop()
				for seq := uint64(0); ; seq++ {
					timer.Reset(creditTimeout)
					select {
					case <-pctx.Done():
						return
					case <-states[i].credit:
					case <-timer.C:
						stalls.Add(1)
					}
					// Each message gets its own buffer: the client writes
					// it before PublishAsync returns, but a buffer per
					// message keeps that an implementation detail.
					if !send(i, seq, make([]byte, 0, o.Size)) {
						return
					}
				}
			}()
		}
	}
	// Warm up, then measure. pctx ends early when ctx does or a message
	// could not be sealed.
	settle(pctx, min(2*time.Second, o.Duration/4))
	before, err := t.Proc.Stats()
	if err != nil {
		stop()
		wg.Wait()
		return r, err
	}
	// The load generator's own CPU, to see when it, not the server, sets
	// the pace: the two share the machine's cores.
	clientBefore, clientErr := ProcStats(os.Getpid())
	measuring.Store(true)
	t0 := time.Now()
	settle(pctx, o.Duration)
	measuring.Store(false)
	elapsed := time.Since(t0)
	after, err := t.Proc.Stats()
	clientAfter, cerr := ProcStats(os.Getpid())
	stop()
	wg.Wait()
	if e := sealErr.Load(); e != nil {
		return r, *e
	}
	if ctx.Err() != nil {
		return r, fmt.Errorf("bench: %s interrupted: %w", r.Scenario, ctx.Err())
	}
	// Drain: whatever is still on its way may arrive.
	var sent, recv uint64
	deadline := time.Now().Add(min(5*time.Second, max(time.Second, o.Duration/2)))
	for {
		sent, recv = 0, 0
		for _, d := range states {
			sent += d.sent.Load()
			recv += d.received.Load()
		}
		if recv >= sent || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return r, err
	}
	var dups uint64
	for _, d := range states {
		dups += d.dups.Load()
	}
	n := counted.Load()
	lat := hist.Latency()
	r.Add(MetricMessagesPerSecond, float64(n)/elapsed.Seconds(), UnitPerSecond, HigherIsBetter)
	r.AddDuration(MetricLatencyP50, lat.P50, UnitMillis, LowerIsBetter)
	r.AddDuration(MetricLatencyP99, lat.P99, UnitMillis, LowerIsBetter)
	r.AddDuration("latency_max", lat.Max, UnitMillis, LowerIsBetter)
	r.AddDuration(MetricServerCPUPerMessage, CPUPer(before, after, n), UnitMicros, LowerIsBetter)
	if clientErr == nil && cerr == nil {
		r.AddDuration("client_cpu_per_message", CPUPer(clientBefore, clientAfter, n), UnitMicros, "")
	}
	r.Add("sent", float64(sent), UnitCount, "")
	r.Add("lost", float64(sent-min(sent, recv)), UnitCount, LowerIsBetter)
	r.Add("duplicates", float64(dups), UnitCount, LowerIsBetter)
	r.Add("publish_errors", float64(pubErrs.Load()), UnitCount, LowerIsBetter)
	if o.Rate <= 0 {
		r.Add("window_stalls", float64(stalls.Load()), UnitCount, LowerIsBetter)
	}
	if u := unexpected.Load(); u > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d messages the consumer could not attribute", u))
	}
	return r, nil
}

// stormWithControlProcess is Storm with the control group in its own
// process: the group's connections move there (closed here first), it
// measures a calm second, then the storm, and reports both.
func stormWithControlProcess(ctx context.Context, t Target, ids []Identity, control, rest []*Client, o StormOptions, r Result) (Result, []*Client, error) {
	cg := o.ControlGroup
	if cg.Nice == 0 {
		cg.Nice = -10
	}
	if cg.Stderr == nil {
		cg.Stderr = os.Stderr
	}
	names := make([]string, len(control))
	for i := range control {
		names[i] = ids[i].ID
	}
	CloseAll(control)
	cp, err := startControlGroup(ctx, cg.Binary, ControlGroupOptions{
		Addr: t.Endpoint.Addr, ServerName: t.Endpoint.ServerName, RootsFile: t.Proc.ServerCA, Classic: t.Endpoint.ClassicKeyExchange,
		FleetDir: cg.FleetDir, IDs: names, Topic: t.Topic("%s", "control"), Interval: o.ControlInterval, Nice: cg.Nice,
	}, cg.Stderr)
	if err != nil {
		return r, nil, fmt.Errorf("storm: %w", err)
	}
	r.Parameters["control_process"] = cp.ready.Priority
	defer func() {
		if cp != nil {
			_, _ = cp.close()
		}
	}()
	// Let the control group's latency be measured calm first.
	time.Sleep(time.Second)
	calm, err := cp.mark()
	if err != nil {
		return r, nil, err
	}
	before, err := t.Proc.Stats()
	if err != nil {
		return r, nil, err
	}
	CloseAll(rest)
	back, took, err := ConnectAll(ctx, t, ids[len(control):], ConnectOptions{Concurrency: o.Concurrency, Subscribe: true, Progress: o.Progress, Retries: 20})
	after, serr := t.Proc.Stats()
	time.Sleep(500 * time.Millisecond)
	storm, cerr := cp.close()
	cp = nil
	if err != nil {
		return r, nil, err
	}
	if serr != nil || cerr != nil {
		CloseAll(back)
		return r, nil, fmt.Errorf("storm: %w", errors.Join(serr, cerr))
	}
	n := len(ids) - len(control)
	r.Add(MetricHandshakesPerSecond, float64(n)/took.Seconds(), UnitPerSecond, HigherIsBetter)
	r.AddDuration("all_back_after", took, UnitSeconds, LowerIsBetter)
	r.AddDuration(MetricServerCPUPerHandshake, CPUPer(before, after, uint64(n)), UnitMicros, LowerIsBetter)
	r.AddDuration("control_p99_calm", time.Duration(calm.P99Ms*float64(time.Millisecond)), UnitMillis, LowerIsBetter)
	r.AddDuration("control_p99_storm", time.Duration(storm.P99Ms*float64(time.Millisecond)), UnitMillis, LowerIsBetter)
	r.AddDuration("control_max_storm", time.Duration(storm.MaxMs*float64(time.Millisecond)), UnitMillis, LowerIsBetter)
	r.Add("control_publish_errors", float64(calm.Errors+storm.Errors), UnitCount, LowerIsBetter)
	r.Add("control_sessions_dropped", float64(storm.Dropped), UnitCount, LowerIsBetter)
	return r, back, nil
}
