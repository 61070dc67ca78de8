// Package events is the vocabulary in which the broker, the envelope layer
// and the firmware service tell the anomaly monitor (internal/monitor) what
// devices do. It holds only the types, so that producers and the monitor
// depend on it and not on each other.
package events

import "time"

// Kind names what happened.
type Kind uint8

// Kinds of events.
const (
	// AuthFailed: a connection was refused. Device is what the peer
	// claimed (a certificate's identity, a client ID), possibly empty;
	// Reason is the refusal reason (registry/broker reason strings).
	AuthFailed Kind = iota + 1
	// ACLDenied: a publish (Reason "publish") or subscription or delivery
	// (Reason "read") outside the principal's rights; Topic says where.
	ACLDenied
	// Connected: a session was established. Remote is the peer address.
	Connected
	// Disconnected: a session ended; Reason is the cause.
	Disconnected
	// Published: a device's publish was accepted; Size is the payload's
	// length. This is the hot path: producers fill no more than they have.
	Published
	// EnvelopeRejected: a sealed message did not open, or a plaintext one
	// came where an envelope is required; Reason is the envelope package's
	// reason ("bad-tag", "replay", "unknown-key", "downgrade",
	// "malformed", "bad-padding") or "plaintext".
	EnvelopeRejected
	// FirmwareReported: a device reported the firmware it runs; Model and
	// Version say which.
	FirmwareReported
)

var kindNames = [...]string{"", "auth-failed", "acl-denied", "connected", "disconnected", "published", "envelope-rejected", "firmware-reported"}

// String is the kind's name as metrics and alerts show it.
func (k Kind) String() string {
	if int(k) < len(kindNames) && k != 0 {
		return kindNames[k]
	}
	return "unknown"
}

// Event is one thing a device (or something claiming to be one) did.
type Event struct {
	Kind     Kind
	At       time.Time
	Device   string // the device ID; for AuthFailed what was claimed, maybe ""
	Service  string // set instead of Device for a back-end service
	Remote   string // peer address (host:port), when known
	Listener string
	Topic    string
	Size     int
	Reason   string
	Model    string // FirmwareReported
	Version  string // FirmwareReported
}

// Sink receives events. Observe runs on the producer's goroutine (a
// connection's read loop, for Published): it must not block and should
// not allocate per call.
type Sink interface {
	Observe(e Event)
}

// Discard is a Sink that ignores everything.
type Discard struct{}

// Observe implements Sink.
func (Discard) Observe(Event) {}

// Multi fans events out to several sinks, in order.
type Multi []Sink

// Observe implements Sink.
func (m Multi) Observe(e Event) {
	for _, s := range m {
		s.Observe(e)
	}
}
