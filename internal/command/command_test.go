package command

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/warden-iot/warden/commandproto"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// device plays the device side over the Sender: it answers each command it
// is sent through answer (nil: it stays silent).
type device struct {
	mu     sync.Mutex
	svc    *Service
	online map[string]bool
	answer func(cmd commandproto.Command) *commandproto.Result
	sent   []commandproto.Command
	topics []string
}

func (d *device) SendDown(ctx context.Context, id, channel string, payload []byte, qos byte, props ...broker.Property) error {
	cmd, err := commandproto.ParseCommand(payload)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.sent = append(d.sent, cmd)
	d.topics = append(d.topics, "private/"+id+"/down/"+channel)
	answer := d.answer
	d.mu.Unlock()
	if answer == nil {
		return nil
	}
	if r := answer(cmd); r != nil {
		b, _ := json.Marshal(r)
		go d.svc.Result(context.Background(), id, b)
	}
	return nil
}

func (d *device) Connected(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.online[id]
}

func (d *device) Device(_ context.Context, id string) (registry.DeviceInfo, error) {
	switch id {
	case "dev-1", "dev-2":
		return registry.DeviceInfo{Device: store.Device{ID: id, State: store.StateActive}}, nil
	case "dev-off":
		return registry.DeviceInfo{Device: store.Device{ID: id, State: store.StateDisabled}}, nil
	}
	return registry.DeviceInfo{}, store.ErrNotFound
}

func newService(t *testing.T, d *device) (*Service, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := New(Options{Sender: d, Presence: d, Devices: d, Registerer: reg, MaxPending: 2,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	d.svc = s
	return s, reg
}

func TestSendRoundTrips(t *testing.T) {
	ctx := context.Background()
	d := &device{online: map[string]bool{"dev-1": true}}
	s, _ := newService(t, d)
	d.answer = func(c commandproto.Command) *commandproto.Result {
		switch c.Name {
		case "reboot":
			return &commandproto.Result{ID: c.ID, Status: "ok", Body: json.RawMessage(`{"in_s":5}`)}
		case "explode":
			return &commandproto.Result{ID: c.ID, Status: "error", Error: "not supported"}
		}
		return nil
	}
	out, err := s.Send(ctx, Request{DeviceID: "dev-1", Name: "reboot", Body: json.RawMessage(`{"delay":5}`), Actor: "token:t1"})
	if err != nil || out.Status != "ok" || string(out.Body) != `{"in_s":5}` {
		t.Fatalf("reboot = %+v, %v", out, err)
	}
	if d.topics[0] != "private/dev-1/down/cmd" || string(d.sent[0].Body) != `{"delay":5}` || d.sent[0].ID != out.ID {
		t.Fatalf("sent %+v on %v", d.sent[0], d.topics)
	}
	if left := time.Until(d.sent[0].Deadline); left < 25*time.Second || left > 31*time.Second {
		t.Fatalf("deadline %s away, want the 30 s default", left)
	}
	out, err = s.Send(ctx, Request{DeviceID: "dev-1", Name: "explode"})
	if err != nil || out.Status != "error" || out.Error != "not supported" {
		t.Fatalf("explode = %+v, %v", out, err)
	}
	start := time.Now()
	_, err = s.Send(ctx, Request{DeviceID: "dev-1", Name: "silence", Timeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrTimeout) || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("silence = %v after %s", err, time.Since(start))
	}
	if len(s.pending) != 0 || len(s.perDev) != 0 {
		t.Fatalf("pending left over: %v %v", s.pending, s.perDev)
	}
}

func TestSendRefusals(t *testing.T) {
	ctx := context.Background()
	d := &device{online: map[string]bool{"dev-1": true}}
	s, reg := newService(t, d)
	cases := []struct {
		req  Request
		want error
	}{
		{Request{DeviceID: "dev-2", Name: "ping"}, ErrOffline},
		{Request{DeviceID: "dev-off", Name: "ping"}, ErrOffline},
		{Request{DeviceID: "nobody", Name: "ping"}, store.ErrNotFound},
		{Request{DeviceID: "dev-1", Name: "Bad Name"}, registry.ErrInvalid},
		{Request{DeviceID: "dev-1", Name: "ping", Body: json.RawMessage(`{nope`)}, registry.ErrInvalid},
		{Request{DeviceID: "dev-1", Name: "ping", Timeout: time.Hour}, registry.ErrInvalid},
	}
	for _, c := range cases {
		if _, err := s.Send(ctx, c.req); !errors.Is(err, c.want) {
			t.Errorf("%+v: %v, want %v", c.req, err, c.want)
		}
	}
	if len(d.sent) != 0 {
		t.Fatalf("refused commands were sent: %+v", d.sent)
	}
	if got := testutil.ToFloat64(s.sent.WithLabelValues("offline")); got != 1 {
		t.Errorf("offline count %v", got)
	}
	_ = reg
}

func TestResultsFromTheWrongDeviceOrLateAreDropped(t *testing.T) {
	ctx := context.Background()
	d := &device{online: map[string]bool{"dev-1": true, "dev-2": true}}
	s, _ := newService(t, d)
	// dev-2 answers dev-1's command: dropped; the command times out.
	d.answer = func(c commandproto.Command) *commandproto.Result {
		b, _ := json.Marshal(commandproto.Result{ID: c.ID, Status: "ok"})
		go s.Result(ctx, "dev-2", b)
		return nil
	}
	if _, err := s.Send(ctx, Request{DeviceID: "dev-1", Name: "ping", Timeout: 300 * time.Millisecond}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("a result from another device was taken: %v", err)
	}
	if got := testutil.ToFloat64(s.dropped.WithLabelValues("wrong-device")); got != 1 {
		t.Errorf("wrong-device drops %v", got)
	}
	// A late result, and garbage.
	b, _ := json.Marshal(commandproto.Result{ID: d.sent[0].ID, Status: "ok"})
	s.Result(ctx, "dev-1", b)
	s.Result(ctx, "dev-1", []byte("{"))
	if testutil.ToFloat64(s.dropped.WithLabelValues("unknown-or-late")) != 1 || testutil.ToFloat64(s.dropped.WithLabelValues("malformed")) != 1 {
		t.Error("late or malformed results not counted")
	}
}

func TestPendingIsBoundedPerDevice(t *testing.T) {
	ctx := context.Background()
	d := &device{online: map[string]bool{"dev-1": true, "dev-2": true}}
	s, _ := newService(t, d) // MaxPending 2
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { _, _ = s.Send(ctx, Request{DeviceID: "dev-1", Name: "slow", Timeout: time.Second}) })
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		d.mu.Lock()
		n := len(d.sent)
		d.mu.Unlock()
		if n == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := s.Send(ctx, Request{DeviceID: "dev-1", Name: "third", Timeout: time.Second}); !errors.Is(err, ErrBusy) {
		t.Fatalf("third pending command: %v, want ErrBusy", err)
	}
	// Another device is not affected.
	d.mu.Lock()
	d.answer = func(c commandproto.Command) *commandproto.Result {
		return &commandproto.Result{ID: c.ID, Status: "ok"}
	}
	d.mu.Unlock()
	if out, err := s.Send(ctx, Request{DeviceID: "dev-2", Name: "ping"}); err != nil || out.Status != "ok" {
		t.Fatalf("dev-2: %+v %v", out, err)
	}
	wg.Wait()
}
