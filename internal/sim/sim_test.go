package sim

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warden-iot/warden/commandproto"
	"github.com/warden-iot/warden/internal/identity"
)

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// A whole run against a real broker: every device connects from one of
// two source addresses, every QoS 1 message sent reaches the consumer
// exactly once, and the summary says so.
func TestRun(t *testing.T) {
	ca := newTestCA(t)
	b := startBroker(t, ca)
	dir, ids := writeFleet(t, ca, 20)
	fleet, err := LoadFleet(context.Background(), dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc := ca.principal(t, identity.KindService, "sim-reader")

	var mu sync.Mutex
	var ticks []Progress
	sum, err := Run(testContext(t, 30*time.Second), Options{
		SwarmOptions: SwarmOptions{
			Fleet:       fleet,
			Servers:     []string{b.url()},
			SourceAddrs: []string{"127.0.0.2", "127.0.0.3"},
			Rate:        200,
			MinBackoff:  50 * time.Millisecond,
			MaxBackoff:  500 * time.Millisecond,
			Telemetry:   Telemetry{Interval: 100 * time.Millisecond, Size: 100, QoS: 1},
			Commands:    true,
		},
		Consumer: &ConsumerOptions{Server: b.url(), Certificate: svc, RootCAs: ca.pool, Filter: "private/+/up/sim"},
		Duration: 2 * time.Second,
		Progress: func(p Progress) {
			mu.Lock()
			ticks = append(ticks, p)
			mu.Unlock()
		},
		ProgressInterval: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.MarshalIndent(sum, "", "  ")
	t.Logf("summary:\n%s", js)

	if sum.Devices.Target != len(ids) || sum.Devices.Connected != len(ids) || sum.Devices.ConnectedAtEnd != len(ids) {
		t.Errorf("devices: %+v, want all %d connected", sum.Devices, len(ids))
	}
	if sum.Devices.RampSeconds <= 0 || sum.Devices.ConnectAttempts != uint64(len(ids)) {
		t.Errorf("ramp %vs after %d attempts", sum.Devices.RampSeconds, sum.Devices.ConnectAttempts)
	}
	m := sum.Messages
	// 20 devices for about 2s at 10 messages a second each.
	if m.Sent < 200 || m.Received != m.Sent || m.Lost != 0 || m.Duplicates != 0 || m.Unexpected != 0 || m.Failed != 0 {
		t.Errorf("messages: %+v; want every one of at least 200 received once", m)
	}
	for name, l := range map[string]Latency{"end-to-end": sum.Latency, "publish": sum.PublishLatency, "connect": sum.ConnectLatency} {
		if l.Count == 0 || l.P50 <= 0 || l.P50 > l.P99 || l.P99 > l.Max || l.Min > l.P50 {
			t.Errorf("%s latency %+v is empty or out of order", name, l)
		}
	}
	if sum.Latency.Count != m.Received || sum.PublishLatency.Count != m.Sent || sum.ConnectLatency.Count != uint64(len(ids)) {
		t.Errorf("latency counts %d/%d/%d, want %d/%d/%d", sum.Latency.Count, sum.PublishLatency.Count, sum.ConnectLatency.Count, m.Received, m.Sent, len(ids))
	}
	if len(sum.Errors) != 0 || sum.Interrupted {
		t.Errorf("errors %v (%v), interrupted %v", sum.Errors, sum.ErrorSamples, sum.Interrupted)
	}
	if sum.Settings.Devices != len(ids) || sum.Settings.QoS != 1 || sum.Settings.PayloadSize != 100 || len(sum.Settings.SourceAddrs) != 2 {
		t.Errorf("settings %+v", sum.Settings)
	}
	mu.Lock()
	if len(ticks) < 10 || ticks[len(ticks)-1].Sent != m.Sent || ticks[len(ticks)-1].Received != m.Received {
		t.Errorf("%d progress calls, the last %+v", len(ticks), ticks[len(ticks)-1])
	}
	mu.Unlock()

	// The summary survives a JSON round trip, latencies included.
	var back Summary
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if back.Latency.P99 != sum.Latency.P99.Truncate(time.Microsecond) || back.Messages != sum.Messages {
		t.Errorf("after a JSON round trip: %+v, want %+v", back.Latency, sum.Latency)
	}
}

// The devices connect from the source addresses in turn.
func TestSourceAddresses(t *testing.T) {
	ca := newTestCA(t)
	b := startBroker(t, ca)
	dir, ids := writeFleet(t, ca, 6)
	fleet, err := LoadFleet(context.Background(), dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t, 20*time.Second)
	sw, err := StartSwarm(ctx, SwarmOptions{Fleet: fleet, Servers: []string{b.url()}, SourceAddrs: []string{"127.0.0.5", "127.0.0.6", "127.0.0.7"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close(ctx)
	if err := sw.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		cl, ok := b.srv.Clients.Get(id)
		if !ok {
			t.Fatalf("the broker does not know %s", id)
		}
		host, _, _ := net.SplitHostPort(cl.Net.Remote)
		if want := []string{"127.0.0.5", "127.0.0.6", "127.0.0.7"}[i%3]; host != want {
			t.Errorf("%s connected from %s, want %s", id, host, want)
		}
	}
	if st := sw.Stats(); st.Connected != len(ids) || st.EverConnected != len(ids) || st.AllConnectedAfter <= 0 {
		t.Errorf("stats %+v", st)
	}
}

// Commands reach the simulated handler through the SDK and are answered
// on cmd-result; the counts say what ran.
func TestCommands(t *testing.T) {
	ca := newTestCA(t)
	b := startBroker(t, ca)
	dir, ids := writeFleet(t, ca, 2)
	fleet, err := LoadFleet(context.Background(), dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t, 20*time.Second)
	sw, err := StartSwarm(ctx, SwarmOptions{Fleet: fleet, Servers: []string{b.url()}, Commands: true})
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close(ctx)
	if err := sw.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	results := make(chan commandproto.Result, 16)
	if err := b.srv.Subscribe("private/+/up/cmd-result", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		r, err := commandproto.ParseResult(pk.Payload)
		if err != nil {
			t.Errorf("malformed result %q: %v", pk.Payload, err)
			return
		}
		results <- r
	}); err != nil {
		t.Fatal(err)
	}
	// HandleCommands has subscribed by the time the device is set up, but
	// the swarm reports a device connected before that: wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		subs := 0
		for _, id := range ids {
			if cl, ok := b.srv.Clients.Get(id); ok {
				if _, ok := cl.State.Subscriptions.Get("private/" + id + "/down/cmd"); ok {
					subs++
				}
			}
		}
		if subs == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the devices did not subscribe to their command channel")
		}
		time.Sleep(10 * time.Millisecond)
	}

	send := func(id, cmdID, name, body string) commandproto.Result {
		t.Helper()
		c := commandproto.Command{ID: cmdID, Name: name, Deadline: time.Now().Add(10 * time.Second).UTC()}
		if body != "" {
			c.Body = json.RawMessage(body)
		}
		payload, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := b.srv.Publish("private/"+id+"/down/cmd", payload, false, 1); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-results:
			if r.ID != cmdID {
				t.Fatalf("result for %s, want %s", r.ID, cmdID)
			}
			return r
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer to %s", name)
		}
		return commandproto.Result{}
	}
	for _, tc := range []struct {
		id, name, body string
		status, error  string
		answer         string
	}{
		{ids[0], "ping", "", commandproto.StatusOK, "", `{"pong":true}`},
		{ids[1], "echo", `{"a":[1,2]}`, commandproto.StatusOK, "", `{"a":[1,2]}`},
		{ids[0], "sleep", `20`, commandproto.StatusOK, "", `{"slept_ms":20}`},
		{ids[0], "sleep", `"long"`, commandproto.StatusError, "sleep wants a number of milliseconds from 0 to 60000", ""},
		{ids[1], "fail", "", commandproto.StatusError, "simulated failure", ""},
		{ids[1], "reboot", "", commandproto.StatusRejected, commandproto.RejectUnknown, ""},
	} {
		cmdID, err := commandproto.NewID()
		if err != nil {
			t.Fatal(err)
		}
		r := send(tc.id, cmdID, tc.name, tc.body)
		if r.Status != tc.status || r.Error != tc.error || string(r.Body) != tc.answer {
			t.Errorf("%s %s: %+v, want %s %q %s", tc.name, tc.body, r, tc.status, tc.error, tc.answer)
		}
	}
	// A device counts an answer once the broker acknowledged it, which
	// may be after the broker delivered it here.
	deadline = time.Now().Add(5 * time.Second)
	for sw.Client(0).CommandStats().Answered+sw.Client(1).CommandStats().Answered < 6 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := sw.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got := sw.Commands()
	want := CommandCounts{Received: 6, Rejected: 1, Answered: 6, Ping: 1, Echo: 1, Sleep: 2, Fail: 1, Unknown: 1}
	if got != want {
		t.Errorf("command counts %+v, want %+v", got, want)
	}
}

// Without a broker every device fails to connect, keeps trying, and the
// failures are counted as refused connections.
func TestConnectFailuresAreCounted(t *testing.T) {
	ca := newTestCA(t)
	dir, _ := writeFleet(t, ca, 3)
	fleet, err := LoadFleet(context.Background(), dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	sum, err := Run(testContext(t, 20*time.Second), Options{
		SwarmOptions: SwarmOptions{
			Fleet: fleet, Servers: []string{"mqtts://" + addr},
			ConnectTimeout: 300 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
			Telemetry: Telemetry{Interval: 10 * time.Millisecond},
		},
		Duration: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Devices.Connected != 0 || sum.Devices.ConnectAttempts < 6 || sum.Messages.Sent != 0 {
		t.Errorf("devices %+v, messages %+v", sum.Devices, sum.Messages)
	}
	if sum.Errors[ErrConnectRefused] != sum.Devices.ConnectAttempts || !strings.Contains(sum.ErrorSamples[ErrConnectRefused], "refused") {
		t.Errorf("errors %v %v; want every attempt counted as refused", sum.Errors, sum.ErrorSamples)
	}
}

// Cancelling the context ends the run early, with a summary.
func TestRunInterrupted(t *testing.T) {
	ca := newTestCA(t)
	b := startBroker(t, ca)
	dir, _ := writeFleet(t, ca, 3)
	fleet, err := LoadFleet(context.Background(), dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	sum, err := Run(ctx, Options{
		SwarmOptions: SwarmOptions{Fleet: fleet, Servers: []string{b.url()}, Telemetry: Telemetry{Interval: 20 * time.Millisecond, QoS: 1}},
		Duration:     time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !sum.Interrupted || time.Since(start) > 10*time.Second || sum.Devices.Connected != 3 || sum.Messages.Sent == 0 {
		t.Errorf("interrupted %v after %v: devices %+v messages %+v", sum.Interrupted, time.Since(start), sum.Devices, sum.Messages)
	}
	if _, err := Run(context.Background(), Options{SwarmOptions: SwarmOptions{Fleet: fleet, Servers: []string{b.url()}}}); err == nil {
		t.Error("a run with neither a duration nor a context that ends was accepted")
	}
}

func TestOptionsValidation(t *testing.T) {
	ca := newTestCA(t)
	dir, _ := writeFleet(t, ca, 2)
	fleet, err := LoadFleet(context.Background(), dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*SwarmOptions)
		want string
	}{
		{"no fleet", func(o *SwarmOptions) { o.Fleet = nil }, "no fleet"},
		{"too many", func(o *SwarmOptions) { o.Devices = 3 }, "provision more"},
		{"no server", func(o *SwarmOptions) { o.Servers = nil }, "no server"},
		{"plain only", func(o *SwarmOptions) { o.Servers = []string{"mqtt://127.0.0.1:1883"} }, "not an envelope device"},
		{"bad scheme", func(o *SwarmOptions) { o.Servers = []string{"http://127.0.0.1"} }, "scheme"},
		{"bad source", func(o *SwarmOptions) { o.SourceAddrs = []string{"localhost"} }, "not an IP address"},
		{"negative rate", func(o *SwarmOptions) { o.Rate = -1 }, "not a positive number"},
		{"backoff", func(o *SwarmOptions) { o.MinBackoff, o.MaxBackoff = time.Minute, time.Second }, "below the minimum"},
		{"payload", func(o *SwarmOptions) { o.Telemetry.Size = MaxPayloadSize + 1 }, "payload size"},
		{"qos", func(o *SwarmOptions) { o.Telemetry.QoS = 3 }, "QoS 3"},
		{"channel", func(o *SwarmOptions) { o.Telemetry.Channel = "a/b" }, "one topic level"},
		{"result channel", func(o *SwarmOptions) { o.Telemetry.Channel = "cmd-result" }, "cmd-result"},
		{"ota", func(o *SwarmOptions) { o.OTA = &OTAOptions{Model: "m"} }, "release public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := SwarmOptions{Fleet: fleet, Servers: []string{"mqtts://127.0.0.1:8883"}}
			tc.mod(&o)
			sw, err := StartSwarm(context.Background(), o)
			if err == nil {
				_ = sw.Close(context.Background())
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestDefaultSourceAddrs(t *testing.T) {
	for _, tc := range []struct {
		servers []string
		n       int
	}{
		{[]string{"mqtts://127.0.0.1:8883"}, 8},
		{[]string{"mqtts://localhost:8883", "wss://127.0.0.1:8884/mqtt"}, 8},
		{[]string{"mqtts://127.0.0.1:8883", "mqtts://10.0.0.1:8883"}, 0},
		{[]string{"mqtts://[::1]:8883"}, 0},
		{[]string{"mqtts://warden.example.com"}, 0},
		{nil, 0},
	} {
		got := DefaultSourceAddrs(tc.servers)
		if len(got) != tc.n || (tc.n > 0 && (got[0] != "127.0.0.1" || got[7] != "127.0.0.8")) {
			t.Errorf("DefaultSourceAddrs(%v) = %v", tc.servers, got)
		}
	}
}

// A device whose command subscription is refused tries again until it
// holds it, and each refusal is counted.
func TestSetupRetried(t *testing.T) {
	ca := newTestCA(t)
	b := startBroker(t, ca)
	b.hook.refuseCmd.Store(2)
	dir, ids := writeFleet(t, ca, 1)
	fleet, err := LoadFleet(context.Background(), dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t, 20*time.Second)
	sw, err := StartSwarm(ctx, SwarmOptions{Fleet: fleet, Servers: []string{b.url()}, Commands: true,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if cl, ok := b.srv.Clients.Get(ids[0]); ok {
			if _, ok := cl.State.Subscriptions.Get("private/" + ids[0] + "/down/cmd"); ok {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the device never held its command subscription")
		}
		time.Sleep(10 * time.Millisecond)
	}
	counts, samples := sw.Errors()
	if counts[ErrSubscribe] != 2 || !strings.Contains(samples[ErrSubscribe], "handle commands") {
		t.Errorf("errors %v %v, want two refused subscriptions", counts, samples)
	}
}
