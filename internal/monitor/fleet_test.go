package monitor

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/events"
)

// fleetEvent is one event of the simulated fleet, in time order.
type fleetEvent struct {
	at time.Time
	e  events.Event
}

// simulateFleet generates a day of a healthy fleet of n devices: telemetry
// every 60 s ± 20 % with payloads of 80 to 200 bytes, a reconnect every
// few hours (some devices roaming to another address once), one firmware
// report each, and the odd harmless failure a real fleet shows: a refused
// connection after a clock jump, a QoS 1 resend refused as a replay, a
// subscription to a topic the device may not read.
func simulateFleet(n int, start time.Time, length time.Duration, rng *rand.Rand) []fleetEvent {
	var out []fleetEvent
	end := start.Add(length)
	add := func(at time.Time, e events.Event) {
		if at.Before(end) {
			e.At = at
			out = append(out, fleetEvent{at, e})
		}
	}
	for i := range n {
		id := fmt.Sprintf("%08x", 0x1000+i)
		host := fmt.Sprintf("10.%d.%d.%d", i/65536, (i/256)%256, i%256)
		if i%10 == 0 {
			host = "203.0.113.1" // ten percent behind one NAT gateway
		}
		port := 40000
		remote := func() string { port++; return fmt.Sprintf("%s:%d", host, port) }
		t := start.Add(time.Duration(rng.Int64N(int64(5 * time.Minute))))
		add(t, events.Event{Kind: events.Connected, Device: id, Remote: remote()})
		add(t.Add(2*time.Second), events.Event{Kind: events.FirmwareReported, Device: id, Model: "sensor-v2", Version: "1.4.0"})
		nextReconnect := t.Add(2*time.Hour + time.Duration(rng.Int64N(int64(4*time.Hour))))
		roamAt := time.Time{}
		if i%20 == 7 {
			roamAt = start.Add(time.Duration(rng.Int64N(int64(length))))
		}
		if i%10 == 3 {
			at := start.Add(time.Duration(rng.Int64N(int64(length))))
			add(at, events.Event{Kind: events.AuthFailed, Device: id, Remote: remote(), Reason: "certificate-not-yet-valid"})
			add(at.Add(time.Second), events.Event{Kind: events.ACLDenied, Device: id, Remote: remote(), Topic: "fleet/#", Reason: "read"})
			add(at.Add(2*time.Second), events.Event{Kind: events.EnvelopeRejected, Device: id, Remote: remote(), Reason: "replay"})
		}
		for t.Before(end) {
			jitter := time.Duration(rng.Int64N(int64(24*time.Second))) - 12*time.Second
			t = t.Add(time.Minute + jitter)
			if t.After(nextReconnect) {
				add(t, events.Event{Kind: events.Disconnected, Device: id, Remote: remote(), Reason: "keepalive timeout"})
				t = t.Add(5*time.Second + time.Duration(rng.Int64N(int64(25*time.Second))))
				if !roamAt.IsZero() && t.After(roamAt) {
					host, roamAt = fmt.Sprintf("198.51.100.%d", i%256), time.Time{}
				}
				add(t, events.Event{Kind: events.Connected, Device: id, Remote: remote()})
				nextReconnect = t.Add(2*time.Hour + time.Duration(rng.Int64N(int64(4*time.Hour))))
				continue
			}
			add(t, events.Event{Kind: events.Published, Device: id, Topic: "private/" + id + "/up/telemetry", Size: 80 + rng.IntN(121)})
		}
	}
	slices.SortStableFunc(out, func(a, b fleetEvent) int { return a.at.Compare(b.at) })
	return out
}

// TestQuietFleet runs 200 healthy devices through a simulated day: no
// detector may fire. Then one device of the same fleet floods, to show
// the detectors were armed all along.
func TestQuietFleet(t *testing.T) {
	const devices = 200
	h := newHarness(t, harnessOptions{firmware: firmwarePolicy{"sensor-v2": {"1.3.0", "1.4.0"}}})
	for i := range devices {
		// Certificates far from expiry.
		h.addDevice(fmt.Sprintf("%08x", 0x1000+i), t0.Add(-365*24*time.Hour), t0.Add(9*365*24*time.Hour))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	day := 24 * time.Hour
	evs := simulateFleet(devices, t0, day, rng)

	check, scan := t0, t0
	for _, fe := range evs {
		for !check.After(fe.at) {
			h.clk.set(check)
			h.tick()
			check = check.Add(h.m.cfg.CheckInterval)
		}
		if !scan.After(fe.at) {
			h.m.scanCertificates(t.Context())
			scan = scan.Add(h.m.cfg.CertExpiry.Interval)
		}
		h.clk.set(fe.at)
		h.m.Observe(fe.e)
	}
	h.clk.set(t0.Add(day))
	h.tick()

	if as := h.alerts(); len(as) != 0 {
		for _, a := range as {
			t.Errorf("alert on a healthy fleet: %s: %s", a.Detector, a.Summary)
		}
	}
	if v := counterValue(t, h.m.metrics.dropped); v != 0 {
		t.Errorf("%v findings dropped", v)
	}
	if n := h.m.devices.len(); n != devices {
		t.Errorf("%d devices tracked, want %d", n, devices)
	}
	t.Logf("%d events over a simulated day", len(evs))

	// The same fleet, one device flooding: it fires.
	id := fmt.Sprintf("%08x", 0x1000+42)
	at := t0.Add(day)
	for i := range 500 {
		h.m.Observe(events.Event{Kind: events.Published, At: at.Add(time.Duration(i) * 100 * time.Millisecond), Device: id, Size: 120})
	}
	h.process()
	if as := h.alerts(); len(as) != 1 || as[0].Detector != DetectorPublishRate || as[0].Device != id {
		t.Errorf("flood in the fleet: alerts %+v, want one publish_rate alert for %s", as, id)
	}
}
