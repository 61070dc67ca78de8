// Package stream fans device telemetry and connection events out to the
// API's Server-Sent Event streams (GET /v1/stream). Producers (the relay's
// uplink tap, the broker's events) must never wait for a reader: each
// subscriber has a bounded buffer, and what does not fit is dropped and
// counted, for the subscriber to be told.
package stream

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/internal/events"
)

// Event types on the stream.
const (
	TypeTelemetry  = "telemetry"  // a device's uplink
	TypeConnection = "connection" // a device connected or disconnected
)

// Event is one message for subscribers. Data is its JSON.
type Event struct {
	Type   string
	Device string
	Data   []byte
}

// Telemetry is the data of a telemetry event: a device's uplink on
// private/<id>/up/<channel>, opened if it was sealed. Body is the payload
// if it is JSON, else BodyBase64 carries it.
type Telemetry struct {
	Device     string          `json:"device"`
	Channel    string          `json:"channel"`
	ReceivedAt time.Time       `json:"received_at"`
	Body       json.RawMessage `json:"body,omitempty"`
	BodyBase64 []byte          `json:"body_base64,omitempty"`
}

// Connection is the data of a connection event.
type Connection struct {
	Device    string    `json:"device"`
	Connected bool      `json:"connected"`
	At        time.Time `json:"at"`
	Reason    string    `json:"reason,omitempty"` // why it disconnected
}

// Hub is the fan-out. Its methods are safe for concurrent use.
type Hub struct {
	mu      sync.RWMutex
	subs    map[*Sub]struct{}
	active  atomic.Int32
	now     func() time.Time
	dropped prometheus.Counter
	streams prometheus.Gauge
}

// NewHub returns an empty hub; reg may be nil.
func NewHub(reg prometheus.Registerer) *Hub {
	h := &Hub{
		subs: map[*Sub]struct{}{},
		now:  time.Now,
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "warden_stream_dropped_total",
			Help: "Events not delivered to an API stream because its reader was too slow."}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "warden_streams",
			Help: "Open API event streams."}),
	}
	if reg != nil {
		reg.MustRegister(h.dropped, h.streams)
	}
	return h
}

// Sub is one subscriber.
type Sub struct {
	h       *Hub
	match   func(device string) bool
	ch      chan Event
	dropped atomic.Uint64
	once    sync.Once
}

// Subscribe returns a subscriber to the events of devices match accepts,
// buffering up to buffer of them. Close it when done.
func (h *Hub) Subscribe(match func(device string) bool, buffer int) *Sub {
	s := &Sub{h: h, match: match, ch: make(chan Event, max(buffer, 1))}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	h.active.Add(1)
	h.streams.Inc()
	return s
}

// C delivers the events.
func (s *Sub) C() <-chan Event { return s.ch }

// TakeDropped returns how many events were dropped for s since the last
// call.
func (s *Sub) TakeDropped() uint64 { return s.dropped.Swap(0) }

// Close unsubscribes.
func (s *Sub) Close() {
	s.once.Do(func() {
		s.h.mu.Lock()
		delete(s.h.subs, s)
		s.h.mu.Unlock()
		s.h.active.Add(-1)
		s.h.streams.Dec()
	})
}

// publish offers e to every matching subscriber without waiting.
func (h *Hub) publish(e Event) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for s := range h.subs {
		if !s.match(e.Device) {
			continue
		}
		select {
		case s.ch <- e:
		default:
			s.dropped.Add(1)
			h.dropped.Inc()
		}
	}
}

// wanted reports whether any subscriber takes device's events, so that
// producers skip encoding when nobody listens (the usual case).
func (h *Hub) wanted(device string) bool {
	if h.active.Load() == 0 {
		return false
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for s := range h.subs {
		if s.match(device) {
			return true
		}
	}
	return false
}

// Uplink is the relay's tap on every device uplink.
func (h *Hub) Uplink(_ context.Context, device, channel string, body []byte) {
	if !h.wanted(device) {
		return
	}
	t := Telemetry{Device: device, Channel: channel, ReceivedAt: h.now().UTC()}
	if json.Valid(body) {
		t.Body = json.RawMessage(body)
	} else {
		t.BodyBase64 = body
	}
	data, err := json.Marshal(t) // copies body: the caller's buffer is reused
	if err != nil {
		return
	}
	h.publish(Event{Type: TypeTelemetry, Device: device, Data: data})
}

// Observe implements events.Sink: device connections and disconnections.
func (h *Hub) Observe(e events.Event) {
	if (e.Kind != events.Connected && e.Kind != events.Disconnected) || e.Device == "" || !h.wanted(e.Device) {
		return
	}
	c := Connection{Device: e.Device, Connected: e.Kind == events.Connected, At: e.At.UTC()}
	if !c.Connected {
		c.Reason = e.Reason
	}
	data, err := json.Marshal(c)
	if err != nil {
		return
	}
	h.publish(Event{Type: TypeConnection, Device: e.Device, Data: data})
}
