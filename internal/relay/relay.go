// Package relay moves messages between a device's private subtree and the
// fleet subtree that services use:
//
//	private/<id>/up/<channel>   (device)    -> fleet/<id>/up/<channel>     (services)
//	fleet/<id>/down/<channel>   (commander) -> private/<id>/down/<channel> (device)
//
// Services never touch private/ and devices never see fleet/. The broker
// has already checked topic rights before the relay sees a message; the
// relay checks that the principal really owns the subtree it maps, so a
// policy mistake cannot turn into a cross-device leak.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/sealing"
	"github.com/warden-iot/warden/internal/store"
)

// Publisher injects a message as Warden itself (broker.Broker implements it).
type Publisher interface {
	Publish(topic string, payload []byte, qos byte, props ...broker.Property) error
}

// Directory answers whether a device exists (registry.Registry implements it).
type Directory interface {
	DeviceExists(ctx context.Context, id string) (bool, error)
}

// Sealer opens envelope uplinks and seals envelope downlinks
// (*sealing.Sealing implements it).
type Sealer interface {
	Policy(ctx context.Context, id string) (store.EnvelopePolicy, bool, error)
	OpenUplink(ctx context.Context, id, topic string, msg []byte) (sealing.Opened, error)
	SealDownlink(ctx context.Context, id, topic string, plaintext []byte) ([]byte, error)
	RekeyMessage(ctx context.Context, id, topic string, pending registry.EnvelopeSecret) ([]byte, error)
	CountPlaintext(id, topic string)
}

// Relay implements broker.Router.
type Relay struct {
	pub     Publisher
	dir     Directory
	seal    Sealer // nil: no envelope support
	log     *slog.Logger
	audit   audit.Recorder
	now     func() time.Time
	relayed *prometheus.CounterVec
	upOK    prometheus.Counter // relayed.WithLabelValues("up", "forwarded"), resolved once: it runs per message
	taps    map[string]UplinkTap
	all     func(ctx context.Context, deviceID, channel string, body []byte)
}

// TapAll installs fn for every relayed uplink (the app event stream), with
// its channel. Like a Tap it runs in the device's read loop and must not
// block; body is only valid during the call.
func (r *Relay) TapAll(fn func(ctx context.Context, deviceID, channel string, body []byte)) {
	r.all = fn
}

// UplinkTap sees a device's uplink on one channel, opened if it was
// sealed, before it is relayed to fleet/. It runs in the device's read
// loop: it must not block.
type UplinkTap func(ctx context.Context, deviceID string, body []byte)

// Tap installs fn for uplinks on channel (private/<id>/up/<channel>), as
// the command relay does for results. Call it before the broker starts.
func (r *Relay) Tap(channel string, fn UplinkTap) {
	if r.taps == nil {
		r.taps = map[string]UplinkTap{}
	}
	r.taps[channel] = fn
}

// New builds a relay. seal and reg may be nil.
func New(pub Publisher, dir Directory, seal Sealer, logger *slog.Logger, rec audit.Recorder, reg prometheus.Registerer) *Relay {
	if logger == nil {
		logger = slog.Default()
	}
	if rec == nil {
		rec = audit.Discard{Logger: logger}
	}
	r := &Relay{
		pub: pub, dir: dir, seal: seal, log: logger, audit: rec, now: time.Now,
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_relay_messages_total", Help: "Messages relayed between private/ and fleet/, by direction and outcome.",
		}, []string{"direction", "outcome"}),
	}
	r.upOK = r.relayed.WithLabelValues("up", "forwarded")
	if reg != nil {
		reg.MustRegister(r.relayed)
	}
	return r
}

// Route implements broker.Router.
func (r *Relay) Route(ctx context.Context, from broker.Origin, topic string, payload []byte, qos byte) (broker.Verdict, string) {
	switch from.Kind {
	case identity.KindDevice:
		id, channel, ok := split(topic, "private", "up")
		if !ok {
			if from.Plain {
				// Nothing but sealed uplinks may travel without TLS.
				if r.seal != nil {
					r.seal.CountPlaintext(from.ID, topic)
				}
				r.relayed.WithLabelValues("up", "refused").Inc()
				return broker.Refuse, "plaintext"
			}
			return broker.Deliver, ""
		}
		if id != from.ID { // policy should have made this impossible
			r.relayed.WithLabelValues("up", "refused").Inc()
			r.log.Error("relay: device published into another device's subtree; refusing", "device", from.ID, "topic", topic)
			return broker.Refuse, "foreign-subtree"
		}
		var buf [5]broker.Property // on the stack: this runs per message
		props := append(buf[:0], broker.Property{Key: "warden-device", Value: id},
			broker.Property{Key: "warden-received", Value: r.now().UTC().Format(time.RFC3339Nano)})
		body := payload
		sealed, err := r.mustOpen(ctx, from, id)
		if err != nil {
			r.relayed.WithLabelValues("up", "error").Inc()
			r.log.Error("relay: cannot look up the envelope policy; refusing", "device", id, "error", err)
			return broker.Refuse, "registry-error"
		}
		if sealed && r.seal == nil {
			r.relayed.WithLabelValues("up", "refused").Inc()
			return broker.Refuse, "envelope"
		}
		if sealed {
			o, err := r.seal.OpenUplink(ctx, id, topic, payload)
			if err != nil {
				r.relayed.WithLabelValues("up", "refused").Inc()
				if !errors.Is(err, envelope.ErrOpen) {
					r.log.Error("relay: cannot open an envelope", "device", id, "error", err)
				}
				return broker.Refuse, "envelope"
			}
			body = o.Plaintext
			props = append(props,
				broker.Property{Key: "warden-seq", Value: strconv.FormatUint(o.Header.Seq, 10)},
				broker.Property{Key: "warden-suite", Value: o.Header.Suite.String()},
				broker.Property{Key: "warden-epoch", Value: strconv.FormatUint(uint64(o.Epoch), 10)})
		}
		if tap := r.taps[channel]; tap != nil {
			tap(ctx, id, body)
		}
		if r.all != nil {
			r.all(ctx, id, channel, body)
		}
		if err := r.pub.Publish("fleet/"+id+"/up/"+channel, body, qos, props...); err != nil {
			r.relayed.WithLabelValues("up", "error").Inc()
			r.log.Error("relay: uplink not forwarded", "device", id, "channel", channel, "error", err)
			return broker.Deliver, ""
		}
		r.upOK.Inc()
		if sealed {
			// The sealed original is of use to nobody else on private/.
			return broker.Consume, ""
		}
		return broker.Deliver, ""

	case identity.KindService:
		id, channel, ok := split(topic, "fleet", "down")
		if !ok {
			return broker.Deliver, ""
		}
		if from.Role != identity.RoleCommander {
			r.relayed.WithLabelValues("down", "refused").Inc()
			return broker.Refuse, "not-commander"
		}
		exists, err := r.dir.DeviceExists(ctx, id)
		if err != nil {
			r.relayed.WithLabelValues("down", "error").Inc()
			r.log.Error("relay: cannot look up device for downlink", "device", id, "service", from.ID, "error", err)
			return broker.Refuse, "registry-error"
		}
		if !exists {
			r.relayed.WithLabelValues("down", "unknown-device").Inc()
			r.log.Warn("relay: downlink to unknown device dropped", "device", id, "service", from.ID, "channel", channel)
			return broker.Refuse, "unknown-device"
		}
		body, err := r.sealDownlink(ctx, id, "private/"+id+"/down/"+channel, payload)
		if err != nil {
			r.relayed.WithLabelValues("down", "error").Inc()
			r.log.Error("relay: downlink cannot be sealed for the device; dropped", "device", id, "service", from.ID, "error", err)
			return broker.Refuse, "seal-failed"
		}
		if err := r.pub.Publish("private/"+id+"/down/"+channel, body, qos, broker.Property{Key: "warden-service", Value: from.ID}); err != nil {
			r.relayed.WithLabelValues("down", "error").Inc()
			r.log.Error("relay: downlink not forwarded", "device", id, "service", from.ID, "error", err)
			return broker.Refuse, "forward-failed"
		}
		r.relayed.WithLabelValues("down", "forwarded").Inc()
		r.log.Info("downlink relayed", "device", id, "service", from.ID, "channel", channel, "bytes", len(payload))
		r.audit.Record(ctx, audit.Event{
			Action: "relay.downlink", Outcome: "done", Actor: from.String(), Subject: "device:" + id,
			Details: map[string]string{"channel": channel, "bytes": strconv.Itoa(len(payload))},
		})
		// Readers of fleet/# must not see commands meant for one device.
		return broker.Consume, ""
	}
	return broker.Deliver, ""
}

// mustOpen reports whether an uplink from the device must be an envelope:
// always on the plain listener, and over TLS when its policy requires it.
func (r *Relay) mustOpen(ctx context.Context, from broker.Origin, id string) (bool, error) {
	if from.Plain {
		return true, nil
	}
	if r.seal == nil {
		return false, nil
	}
	pol, ok, err := r.seal.Policy(ctx, id)
	if err != nil {
		return false, err
	}
	return ok && pol.Required, nil
}

// sealDownlink seals a downlink for an envelope device (which may collect
// it over the plain listener, so it is always sealed) and passes others
// through.
func (r *Relay) sealDownlink(ctx context.Context, id, topic string, payload []byte) ([]byte, error) {
	if r.seal == nil {
		return payload, nil
	}
	_, ok, err := r.seal.Policy(ctx, id)
	if err != nil || !ok {
		return payload, err
	}
	return r.seal.SealDownlink(ctx, id, topic, payload)
}

// SendDown publishes payload to device id on private/<id>/down/<channel>
// as Warden, sealed first for an envelope device (it may collect it over
// the plain listener). props become MQTT 5 user properties.
func (r *Relay) SendDown(ctx context.Context, id, channel string, payload []byte, qos byte, props ...broker.Property) error {
	topic := "private/" + id + "/down/" + channel
	body, err := r.sealDownlink(ctx, id, topic, payload)
	if err != nil {
		r.relayed.WithLabelValues("down", "error").Inc()
		return fmt.Errorf("downlink to %s: seal: %w", id, err)
	}
	if err := r.pub.Publish(topic, body, qos, props...); err != nil {
		r.relayed.WithLabelValues("down", "error").Inc()
		return fmt.Errorf("downlink to %s: publish: %w", id, err)
	}
	r.relayed.WithLabelValues("down", "forwarded").Inc()
	return nil
}

// SendRekey delivers a pending epoch's secret to the device on
// private/<id>/down/_rekey, sealed under its active epoch, at QoS 1 (it
// waits in a persistent session if the device is offline).
func (r *Relay) SendRekey(ctx context.Context, id string, pending registry.EnvelopeSecret) error {
	if r.seal == nil {
		return errors.New("relay: no envelope support configured")
	}
	topic := "private/" + id + "/down/" + sealing.RekeyChannel
	msg, err := r.seal.RekeyMessage(ctx, id, topic, pending)
	if err != nil {
		return fmt.Errorf("rekey device %s: %w", id, err)
	}
	if err := r.pub.Publish(topic, msg, 1); err != nil {
		return fmt.Errorf("rekey device %s: publish: %w", id, err)
	}
	r.log.Info("rekey sent to the device", "device", id, "epoch", pending.Epoch)
	return nil
}

// split parses "<root>/<id>/<dir>/<channel...>"; channel must be non-empty.
func split(topic, root, dir string) (id, channel string, ok bool) {
	rest, ok := strings.CutPrefix(topic, root+"/")
	if !ok {
		return "", "", false
	}
	id, rest, ok = strings.Cut(rest, "/")
	if !ok || identity.ValidateDeviceID(id) != nil {
		return "", "", false
	}
	channel, ok = strings.CutPrefix(rest, dir+"/")
	if !ok || channel == "" {
		return "", "", false
	}
	return id, channel, true
}
