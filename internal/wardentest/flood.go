package wardentest

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// ProvisionDevices registers n devices with random IDs in one
// `warden device provision` run (one process instead of n, which matters
// when the binary runs under the race detector) and returns their
// credentials, written to a directory the test removes.
func (s *Server) ProvisionDevices(n int) []Creds {
	s.t.Helper()
	dir := s.t.TempDir()
	out := s.MustWarden("device", "provision", "--count", strconv.Itoa(n), "--out", dir, "--json")
	var res struct {
		Provisioned []string `json:"provisioned"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Provisioned) != n {
		s.t.Fatalf("warden device provision --count %d: %v\n%s", n, err, out)
	}
	creds := make([]Creds, n)
	for i, id := range res.Provisioned {
		creds[i] = Creds{ID: id, Cert: filepath.Join(dir, id+".crt"), Key: filepath.Join(dir, id+".key"), CA: filepath.Join(dir, "ca.crt")}
	}
	return creds
}

// ControlGroup is a handful of well-behaved devices that keep proving the
// server works while a test attacks it: each publishes QoS 1 messages to
// private/<id>/up/control on a fixed interval, and a reader service
// subscribed to fleet/+/up/control times each one from the device's
// Publish to its arrival through the relay. A denial-of-service test
// asserts on the latencies, the losses and that no member was
// disconnected.
type ControlGroup struct {
	svc     *RawClient
	devices []*RawClient
	ids     []string

	stopPub  context.CancelFunc // stops the publishers
	stopRecv context.CancelFunc // stops the receiver
	wg       sync.WaitGroup     // the publishers
	recv     chan struct{}      // closed when the receiver has stopped

	mu        sync.Mutex
	sent      map[string]time.Time // "id/seq" -> when Publish was called
	latencies []time.Duration
	failed    int // publishes without a successful PUBACK
	stopped   *ControlReport
}

// ControlReport is what a ControlGroup saw.
type ControlReport struct {
	// Sent is how many messages the devices published with a PUBACK.
	Sent int
	// Received is how many of them reached the reader service.
	Received int
	// Failed is how many publishes got no successful PUBACK (an error, a
	// refusal or no answer in 5s).
	Failed int
	// Latencies are the device-to-service times of the received
	// messages, sorted.
	Latencies []time.Duration
	// Disconnected names the members (devices or the service) the server
	// disconnected.
	Disconnected []string
}

// Percentile returns the p-th percentile (0 < p <= 100) of the latencies,
// or 0 when nothing was received.
func (r ControlReport) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(float64(len(r.Latencies))*p/100+0.5) - 1
	return r.Latencies[min(max(i, 0), len(r.Latencies)-1)]
}

func (r ControlReport) String() string {
	return fmt.Sprintf("%d sent, %d received, %d failed; latency p50 %v p99 %v max %v; disconnected %v",
		r.Sent, r.Received, r.Failed, r.Percentile(50).Round(time.Microsecond), r.Percentile(99).Round(time.Microsecond),
		r.Percentile(100).Round(time.Microsecond), r.Disconnected)
}

// StartControlGroup connects the devices (see ProvisionDevices) and a
// reader service it registers (control-watch, so one group per server),
// and starts the devices publishing one QoS 1 message each every
// interval. Stop ends it; the test's end stops it too.
func StartControlGroup(t testing.TB, s *Server, devices []Creds, interval time.Duration) *ControlGroup {
	t.Helper()
	g := &ControlGroup{sent: map[string]time.Time{}, recv: make(chan struct{})}
	g.svc = MustConnectRaw(t, s.MQTTS, s.AddService("control-watch", "reader"), RawOpts{Clean: true})
	if rc := g.svc.Subscribe(t, "fleet/+/up/control", 1); rc > 2 {
		t.Fatalf("control-watch: subscribe refused: 0x%02x", rc)
	}
	for _, c := range devices {
		g.devices = append(g.devices, MustConnectRaw(t, s.MQTTS, c, RawOpts{Clean: true}))
		g.ids = append(g.ids, c.ID)
	}
	recvCtx, stopRecv := context.WithCancel(context.Background())
	pubCtx, stopPub := context.WithCancel(context.Background())
	g.stopRecv, g.stopPub = stopRecv, stopPub
	go g.receive(recvCtx)
	for i, dev := range g.devices {
		g.wg.Go(func() { g.publish(pubCtx, g.ids[i], dev, interval) })
	}
	t.Cleanup(func() { g.Stop() })
	return g
}

func (g *ControlGroup) publish(ctx context.Context, id string, dev *RawClient, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		key := id + "/" + strconv.Itoa(seq)
		g.mu.Lock()
		g.sent[key] = time.Now()
		g.mu.Unlock()
		pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pr, err := dev.Client.Publish(pctx, &paho.Publish{Topic: "private/" + id + "/up/control", QoS: 1, Payload: []byte(key)})
		cancel()
		if err != nil || pr == nil || pr.ReasonCode >= 0x80 {
			g.mu.Lock()
			delete(g.sent, key)
			g.failed++
			g.mu.Unlock()
		}
	}
}

func (g *ControlGroup) receive(ctx context.Context) {
	defer close(g.recv)
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-g.svc.Msgs:
			at := time.Now()
			if !strings.HasSuffix(m.Topic, "/up/control") {
				continue
			}
			g.mu.Lock()
			if sent, ok := g.sent[string(m.Payload)]; ok {
				g.latencies = append(g.latencies, at.Sub(sent))
				delete(g.sent, string(m.Payload))
			}
			g.mu.Unlock()
		}
	}
}

// Received is how many messages have made the round trip so far.
func (g *ControlGroup) Received() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.latencies)
}

// Reset forgets the round trips measured so far, so that the report
// covers what follows (an attack) and not the calm before it.
func (g *ControlGroup) Reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.latencies = g.latencies[:0]
	g.failed = 0
}

// Size is the number of devices in the group.
func (g *ControlGroup) Size() int { return len(g.devices) }

// Stop ends the publishing, waits up to two seconds for messages still
// under way, and reports. Calling it again returns the same report.
func (g *ControlGroup) Stop() ControlReport {
	g.mu.Lock()
	if g.stopped != nil {
		defer g.mu.Unlock()
		return *g.stopped
	}
	g.mu.Unlock()
	g.stopPub()
	g.wg.Wait()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		g.mu.Lock()
		pending := len(g.sent)
		g.mu.Unlock()
		if pending == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.stopRecv()
	<-g.recv

	g.mu.Lock()
	defer g.mu.Unlock()
	r := ControlReport{Received: len(g.latencies), Failed: g.failed, Latencies: slices.Clone(g.latencies)}
	r.Sent = r.Received + len(g.sent)
	slices.Sort(r.Latencies)
	for i, d := range g.devices {
		if isClosed(d.Down) {
			r.Disconnected = append(r.Disconnected, g.ids[i])
		}
	}
	if isClosed(g.svc.Down) {
		r.Disconnected = append(r.Disconnected, "control-watch")
	}
	g.stopped = &r
	return r
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
