// Package command relays commands from apps and operators to devices and
// their results back (docs/commands.md): a command is published on
// private/<id>/down/cmd (sealed for envelope devices) with a fresh ID, and
// Send waits for the device's answer with that ID on
// private/<id>/up/cmd-result, or for its timeout.
//
// Only the process that sent a command waits for it: pending commands live
// in memory. A result that arrives after its timeout, for an unknown ID or
// from another device than the one commanded is dropped and counted.
package command

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/commandproto"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// Errors Send returns besides the device's own answer.
var (
	// ErrOffline: the device has no live connection, so the command was
	// not sent (commands are not queued for offline devices: an app wants
	// an answer now, not a stale action later).
	ErrOffline = errors.New("the device is not connected")
	// ErrTimeout: the device did not answer within the timeout. It may
	// still act on the command.
	ErrTimeout = errors.New("the device did not answer in time")
	// ErrBusy: the device has too many commands waiting for answers.
	ErrBusy = errors.New("the device has too many commands in flight; retry later")
)

// Limits on timeouts.
const (
	DefaultTimeout = 30 * time.Second
	MaxTimeout     = 5 * time.Minute
)

// Sender publishes to a device's down channel, sealed when needed;
// *relay.Relay implements it.
type Sender interface {
	SendDown(ctx context.Context, id, channel string, payload []byte, qos byte, props ...broker.Property) error
}

// Presence tells whether a device is connected; *broker.Broker implements
// it.
type Presence interface {
	Connected(id string) bool
}

// Devices looks devices up; *registry.Registry implements it.
type Devices interface {
	Device(ctx context.Context, id string) (registry.DeviceInfo, error)
}

// Options configure a Service.
type Options struct {
	Sender     Sender
	Presence   Presence
	Devices    Devices
	Audit      audit.Recorder
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
	// MaxPending bounds the commands waiting for one device's answers;
	// 0 means 16.
	MaxPending int
}

// Request is one command to send.
type Request struct {
	DeviceID string
	Name     string
	Body     json.RawMessage // a JSON value, or empty
	Timeout  time.Duration   // 0: DefaultTimeout; at most MaxTimeout
	Actor    string          // who sends it, for the audit log ("token:<id> user:<u>")
}

// Outcome is the device's answer.
type Outcome struct {
	ID      string          `json:"id"`
	Status  string          `json:"status"` // ok, error or rejected (commandproto)
	Body    json.RawMessage `json:"body,omitempty"`
	Error   string          `json:"error,omitempty"`
	Latency time.Duration   `json:"-"`
}

// Service sends commands and matches results.
type Service struct {
	o       Options
	log     *slog.Logger
	mu      sync.Mutex
	pending map[string]*pending // by command ID
	perDev  map[string]int      // pending count by device
	sent    *prometheus.CounterVec
	dropped *prometheus.CounterVec
	latency prometheus.Histogram
}

type pending struct {
	device string
	answer chan commandproto.Result
}

// New checks o and returns a Service.
func New(o Options) (*Service, error) {
	if o.Sender == nil || o.Presence == nil || o.Devices == nil {
		return nil, errors.New("command: a sender, a presence source and a device directory are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Audit == nil {
		o.Audit = audit.Discard{Logger: o.Logger}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 16
	}
	s := &Service{
		o: o, log: o.Logger, pending: map[string]*pending{}, perDev: map[string]int{},
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "warden_commands_total",
			Help: "Commands relayed to devices, by outcome (ok, error, rejected, timeout, offline, busy, failed)."}, []string{"outcome"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "warden_command_results_dropped_total",
			Help: "Command results dropped, by reason (malformed, unknown-or-late, wrong-device)."}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "warden_command_latency_seconds",
			Help: "Time from sending a command to its result.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(s.sent, s.dropped, s.latency)
	}
	return s, nil
}

// Send relays req to its device and waits for the answer. The device's
// own refusal or failure is an Outcome with Status error or rejected, not
// an error; Send's errors are ErrOffline, ErrTimeout, ErrBusy, a
// store.ErrNotFound for an unknown device, a registry.ErrInvalid for a bad
// request, or a failure to publish.
func (s *Service) Send(ctx context.Context, req Request) (Outcome, error) {
	timeout := req.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	if timeout < 0 || timeout > MaxTimeout {
		return Outcome{}, fmt.Errorf("command: timeout %s is outside 0..%s: %w", timeout, MaxTimeout, registry.ErrInvalid)
	}
	id, err := commandproto.NewID()
	if err != nil {
		return Outcome{}, err
	}
	start := s.o.Now()
	cmd := commandproto.Command{ID: id, Name: req.Name, Body: req.Body, Deadline: start.Add(timeout).UTC().Truncate(time.Second)}
	if err := cmd.Validate(); err != nil {
		return Outcome{}, fmt.Errorf("command: %w: %w", registry.ErrInvalid, err)
	}
	info, err := s.o.Devices.Device(ctx, req.DeviceID)
	if err != nil {
		return Outcome{}, fmt.Errorf("command to %s: %w", req.DeviceID, err)
	}
	if info.Device.State != store.StateActive {
		s.sent.WithLabelValues("failed").Inc()
		return Outcome{}, fmt.Errorf("command to %s: the device is %s: %w", req.DeviceID, info.Device.State, ErrOffline)
	}
	if !s.o.Presence.Connected(req.DeviceID) {
		s.sent.WithLabelValues("offline").Inc()
		s.record(ctx, req, id, "failed", "offline", nil)
		return Outcome{}, fmt.Errorf("command to %s: %w", req.DeviceID, ErrOffline)
	}
	payload, err := cmd.Marshal() // within MaxMessage whatever the body (no HTML escaping)
	if err != nil {
		return Outcome{}, err
	}
	p := &pending{device: req.DeviceID, answer: make(chan commandproto.Result, 1)}
	if !s.add(id, p) {
		s.sent.WithLabelValues("busy").Inc()
		s.record(ctx, req, id, "failed", "busy", nil)
		return Outcome{}, fmt.Errorf("command to %s: %w", req.DeviceID, ErrBusy)
	}
	defer s.remove(id, p)
	if err := s.o.Sender.SendDown(ctx, req.DeviceID, commandproto.ChannelCommand, payload, 1,
		broker.Property{Key: "warden-command", Value: id}); err != nil {
		s.sent.WithLabelValues("failed").Inc()
		s.record(ctx, req, id, "failed", "publish", nil)
		return Outcome{}, fmt.Errorf("command to %s: %w", req.DeviceID, err)
	}
	s.record(ctx, req, id, "done", "", map[string]string{"timeout": timeout.String()})
	s.log.InfoContext(ctx, "command sent", "device", req.DeviceID, "command", req.Name, "id", id)

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-p.answer:
		lat := s.o.Now().Sub(start)
		s.latency.Observe(lat.Seconds())
		s.sent.WithLabelValues(r.Status).Inc()
		out := Outcome{ID: id, Status: r.Status, Body: r.Body, Error: r.Error, Latency: lat}
		s.o.Audit.Record(ctx, audit.Event{Action: "command.result", Outcome: r.Status, Actor: "device:" + req.DeviceID,
			Subject: "command:" + id, Reason: truncate(r.Error, 200), Details: map[string]string{"name": req.Name, "latency_ms": fmt.Sprint(lat.Milliseconds())}})
		return out, nil
	case <-timer.C:
		s.sent.WithLabelValues("timeout").Inc()
		s.o.Audit.Record(ctx, audit.Event{Action: "command.result", Outcome: "failed", Actor: "device:" + req.DeviceID,
			Subject: "command:" + id, Reason: "timeout", Details: map[string]string{"name": req.Name}})
		return Outcome{ID: id}, fmt.Errorf("command %s to %s: %w (%s)", id, req.DeviceID, ErrTimeout, timeout)
	case <-ctx.Done():
		return Outcome{ID: id}, ctx.Err()
	}
}

func (s *Service) record(ctx context.Context, req Request, id, outcome, reason string, details map[string]string) {
	if details == nil {
		details = map[string]string{}
	}
	details["name"], details["command_id"] = req.Name, id
	s.o.Audit.Record(ctx, audit.Event{Action: "command.send", Outcome: outcome, Actor: req.Actor,
		Subject: "device:" + req.DeviceID, Reason: reason, Details: details})
}

func (s *Service) add(id string, p *pending) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perDev[p.device] >= s.o.MaxPending {
		return false
	}
	s.perDev[p.device]++
	s.pending[id] = p
	return true
}

func (s *Service) remove(id string, p *pending) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[id] == p {
		delete(s.pending, id)
		if s.perDev[p.device]--; s.perDev[p.device] <= 0 {
			delete(s.perDev, p.device)
		}
	}
}

// Result is the relay's tap on private/<id>/up/cmd-result: body is the
// device's (opened) answer. It never blocks.
func (s *Service) Result(ctx context.Context, deviceID string, body []byte) {
	r, err := commandproto.ParseResult(body)
	if err != nil {
		s.dropped.WithLabelValues("malformed").Inc()
		s.log.WarnContext(ctx, "malformed command result dropped", "device", deviceID, "error", err)
		return
	}
	s.mu.Lock()
	p := s.pending[r.ID]
	s.mu.Unlock()
	switch {
	case p == nil:
		s.dropped.WithLabelValues("unknown-or-late").Inc()
		s.log.DebugContext(ctx, "command result for no waiting command dropped (late, or answered twice)", "device", deviceID, "id", r.ID)
		return
	case p.device != deviceID:
		// A device cannot answer for another one.
		s.dropped.WithLabelValues("wrong-device").Inc()
		s.log.WarnContext(ctx, "command result from another device than the one commanded; dropped", "device", deviceID, "commanded", p.device, "id", r.ID)
		s.o.Audit.Record(ctx, audit.Event{Action: "command.result", Outcome: "denied", Actor: "device:" + deviceID,
			Subject: "command:" + r.ID, Reason: "wrong-device"})
		return
	}
	select {
	case p.answer <- r:
	default: // answered already
		s.dropped.WithLabelValues("unknown-or-late").Inc()
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
