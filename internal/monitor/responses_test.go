package monitor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/store"
)

// clone drives a cloned identity: connects alternating between two hosts.
func clone(h *harness, id string) {
	for _, r := range []string{"192.0.2.1:1", "198.51.100.7:1", "192.0.2.1:2"} {
		h.m.Observe(events.Event{Kind: events.Connected, At: h.clk.now(), Device: id, Remote: r})
		h.clk.advance(time.Second)
	}
}

func TestResponses(t *testing.T) {
	h := newHarness(t, harnessOptions{cfg: func(c *config.Monitor) {
		c.ClonedIdentity.Response = config.ResponseQuarantine
		c.ACLDenials.Response = config.ResponseDisconnect
		c.ACLDenials.Threshold = 2
	}})
	h.addDevice("dev-1", t0.Add(-time.Hour), t0.Add(3650*24*time.Hour))
	h.addDevice("dev-2", t0.Add(-time.Hour), t0.Add(3650*24*time.Hour))

	// Disconnect, on the alert and on its repeat.
	for range 4 {
		h.m.Observe(events.Event{Kind: events.ACLDenied, At: h.clk.now(), Device: "dev-2", Topic: "fleet/x", Reason: "read"})
	}
	// Quarantine.
	clone(h, "dev-1")
	h.process()

	if got, want := h.resp.ops(), []string{"disconnect dev-2", "disconnect dev-2", "quarantine dev-1"}; !slices.Equal(got, want) {
		t.Errorf("responder calls = %v, want %v", got, want)
	}
	as := h.alerts()
	if len(as) != 2 || as[0].Response != store.ResponseDisconnect || as[0].Count != 2 || as[1].Response != store.ResponseQuarantine {
		t.Fatalf("alerts = %+v", as)
	}
	if !h.m.IsQuarantined("dev-1") || h.m.IsQuarantined("dev-2") {
		t.Error("IsQuarantined wrong after the responses")
	}
	qs, err := h.st.ListQuarantines(t.Context())
	if err != nil || len(qs) != 1 || qs[0].DeviceID != "dev-1" || qs[0].AlertID != as[1].ID || qs[0].Actor != "warden" {
		t.Fatalf("stored quarantines = %+v, %v", qs, err)
	}
	for _, a := range []string{"device.disconnect", "alert.acl_denials", "device.quarantine", "alert.cloned_identity"} {
		if !slices.Contains(h.audit.actions(), a) {
			t.Errorf("audit %v lacks %s", h.audit.actions(), a)
		}
	}
	if v := counterValue(t, h.m.metrics.quarantined); v != 1 {
		t.Errorf("warden_monitor_quarantined = %v", v)
	}

	// A repeat while quarantined does not quarantine twice.
	clone(h, "dev-1")
	h.process()
	if n := len(h.resp.ops()); n != 3 {
		t.Errorf("responder calls after a repeat: %v", h.resp.ops())
	}

	// A restart keeps it quarantined, and tells the broker.
	h2 := newHarness(t, harnessOptions{storePath: h.path})
	if !h2.m.IsQuarantined("dev-1") || h2.m.IsQuarantined("dev-2") {
		t.Error("quarantine lost on restart")
	}
	if got := h2.resp.ops(); !slices.Equal(got, []string{"quarantine dev-1"}) {
		t.Errorf("restored responder calls = %v", got)
	}

	// Released by an operator: store, memory, broker, audit.
	if err := h2.m.Release(t.Context(), "dev-1", "alice"); err != nil {
		t.Fatal(err)
	}
	if h2.m.IsQuarantined("dev-1") {
		t.Error("still quarantined after Release")
	}
	if got := h2.resp.ops(); !slices.Equal(got, []string{"quarantine dev-1", "release dev-1"}) {
		t.Errorf("responder calls = %v", got)
	}
	if !slices.Contains(h2.audit.actions(), "device.release") {
		t.Errorf("audit = %v, want device.release", h2.audit.actions())
	}
	if err := h2.m.Release(t.Context(), "dev-1", "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second Release = %v, want ErrNotFound", err)
	}
	if qs, _ := h2.st.ListQuarantines(t.Context()); len(qs) != 0 {
		t.Errorf("quarantines after release: %+v", qs)
	}

	// The first monitor (another process, as far as it knows) learns of
	// the release at its next periodic check.
	if !h.m.IsQuarantined("dev-1") {
		t.Fatal("the first monitor already forgot")
	}
	h.tick()
	if h.m.IsQuarantined("dev-1") {
		t.Error("a release in the store was not picked up")
	}
	if ops := h.resp.ops(); ops[len(ops)-1] != "release dev-1" {
		t.Errorf("responder calls = %v, want a release last", ops)
	}
}

func TestOperatorQuarantine(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.addDevice("dev-1", t0, t0.Add(3650*24*time.Hour))
	if err := h.m.Quarantine(t.Context(), "dev-1", "suspicious traffic", "alice"); err != nil {
		t.Fatal(err)
	}
	if !h.m.IsQuarantined("dev-1") {
		t.Error("not quarantined")
	}
	if err := h.m.Quarantine(t.Context(), "dev-1", "again", "bob"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second Quarantine = %v, want ErrConflict", err)
	}
	if err := h.m.Quarantine(t.Context(), "nobody", "x", "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Quarantine(unknown device) = %v, want ErrNotFound", err)
	}
	qs, err := h.m.Quarantined(t.Context())
	if err != nil || len(qs) != 1 || qs[0].Actor != "alice" || qs[0].Reason != "suspicious traffic" {
		t.Errorf("Quarantined = %+v, %v", qs, err)
	}
	// Quarantined in the store by another process: picked up.
	h.addDevice("dev-2", t0, t0.Add(3650*24*time.Hour))
	if err := h.st.SetQuarantine(t.Context(), store.Quarantine{DeviceID: "dev-2", Actor: "bob", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	h.tick()
	if !h.m.IsQuarantined("dev-2") {
		t.Error("a quarantine in the store was not picked up")
	}
}

// Without a responder every alert is an alert only, whatever is
// configured; a device the store does not know is never quarantined.
func TestResponsesNeedResponderAndDevice(t *testing.T) {
	for _, tc := range []struct {
		name   string
		noResp bool
		add    bool
	}{
		{"no responder", true, true},
		{"unknown device", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{noResp: tc.noResp, cfg: func(c *config.Monitor) {
				c.ClonedIdentity.Response = config.ResponseQuarantine
			}})
			if tc.add {
				h.addDevice("dev-1", t0, t0.Add(3650*24*time.Hour))
			}
			clone(h, "dev-1")
			h.process()
			as := h.alerts()
			if len(as) != 1 || as[0].Response != store.ResponseNone || h.m.IsQuarantined("dev-1") {
				t.Errorf("alerts = %+v, quarantined %v", as, h.m.IsQuarantined("dev-1"))
			}
		})
	}
}

// Acknowledging an alert makes the next finding a new alert.
func TestAcknowledge(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	clone(h, "dev-1")
	h.process()
	as := h.alerts()
	if len(as) != 1 {
		t.Fatalf("alerts = %+v", as)
	}
	a, err := h.m.Acknowledge(t.Context(), as[0].ID, "alice")
	if err != nil || !a.Acknowledged() || a.AcknowledgedBy != "alice" {
		t.Fatalf("Acknowledge = %+v, %v", a, err)
	}
	if !slices.Contains(h.audit.actions(), "alert.acknowledge") {
		t.Errorf("audit = %v", h.audit.actions())
	}
	clone(h, "dev-1")
	h.process()
	as = h.alerts()
	if len(as) != 2 || as[0].Count != 1 || as[1].Count != 1 || as[1].Acknowledged() {
		t.Errorf("after acknowledging: %+v, want a second, new alert", as)
	}
	list, err := h.m.Alerts(t.Context(), store.AlertFilter{Unacknowledged: true})
	if err != nil || len(list) != 1 || list[0].ID != as[1].ID {
		t.Errorf("Alerts(unacknowledged) = %+v, %v", list, err)
	}
	if _, err := h.m.Acknowledge(t.Context(), "0000", "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Acknowledge(missing) = %v", err)
	}
}

// Run stores findings as they come, and returns when its context ends.
func TestRun(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.m.Run(ctx) }()
	clone(h, "dev-1")
	deadline := time.Now().Add(5 * time.Second)
	for len(h.alerts()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no alert stored by Run")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Queued findings are stored when Run stops.
	h.m.Raise(Finding{Detector: "test", Summary: "late"})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if n := len(h.alerts()); n != 2 {
		t.Errorf("%d alerts, want the late one stored too", n)
	}
	if err := h.m.Run(t.Context()); err == nil {
		t.Error("a second Run was accepted")
	}
}

// Producers on many goroutines, the worker, the periodic checks and
// operator calls all at once: run with -race.
func TestConcurrentUse(t *testing.T) {
	h := newHarness(t, harnessOptions{cfg: func(c *config.Monitor) {
		c.ClonedIdentity.Response = config.ResponseQuarantine
		c.AuthFailures.Threshold = 5
	}})
	for i := range 4 {
		h.addDevice(fmt.Sprintf("dev-%d", i), t0.Add(-time.Hour), t0.Add(3650*24*time.Hour))
	}
	// The worker's loop (Run's, with its periodic checks on every turn)
	// on its own goroutine.
	stop := make(chan struct{})
	worker := make(chan struct{})
	go func() {
		defer close(worker)
		for {
			select {
			case <-stop:
				h.m.drain(context.Background())
				return
			default:
				h.m.drain(context.Background())
				h.m.periodic(context.Background())
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				id := fmt.Sprintf("dev-%d", i%4)
				at := t0.Add(time.Duration(i) * time.Second)
				h.m.Observe(events.Event{Kind: events.Published, At: at, Device: id, Size: 100})
				switch i % 50 {
				case 0:
					h.m.Observe(events.Event{Kind: events.Connected, At: at, Device: id, Remote: fmt.Sprintf("192.0.2.%d:1", g)})
				case 1:
					h.m.Observe(events.Event{Kind: events.AuthFailed, At: at, Device: id, Remote: "10.0.0.1:1"})
				case 2:
					h.m.IsQuarantined(id)
				case 3:
					_ = h.m.Release(context.Background(), id, "alice")
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-worker
	if len(h.alerts()) == 0 {
		t.Error("no alert from the concurrent misbehaviour")
	}
}
