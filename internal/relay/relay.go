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
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/identity"
)

// Publisher injects a message as Warden itself (broker.Broker implements it).
type Publisher interface {
	Publish(topic string, payload []byte, qos byte, userProps map[string]string) error
}

// Directory answers whether a device exists (registry.Registry implements it).
type Directory interface {
	DeviceExists(ctx context.Context, id string) (bool, error)
}

// Relay implements broker.Router.
type Relay struct {
	pub     Publisher
	dir     Directory
	log     *slog.Logger
	audit   audit.Recorder
	now     func() time.Time
	relayed *prometheus.CounterVec
}

// New builds a relay. reg may be nil.
func New(pub Publisher, dir Directory, logger *slog.Logger, rec audit.Recorder, reg prometheus.Registerer) *Relay {
	if logger == nil {
		logger = slog.Default()
	}
	if rec == nil {
		rec = audit.Discard{Logger: logger}
	}
	r := &Relay{
		pub: pub, dir: dir, log: logger, audit: rec, now: time.Now,
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_relay_messages_total", Help: "Messages relayed between private/ and fleet/, by direction and outcome.",
		}, []string{"direction", "outcome"}),
	}
	if reg != nil {
		reg.MustRegister(r.relayed)
	}
	return r
}

// Route implements broker.Router.
func (r *Relay) Route(ctx context.Context, from identity.Principal, topic string, payload []byte, qos byte) (broker.Verdict, string) {
	switch from.Kind {
	case identity.KindDevice:
		id, channel, ok := split(topic, "private", "up")
		if !ok {
			return broker.Deliver, ""
		}
		if id != from.ID { // policy should have made this impossible
			r.relayed.WithLabelValues("up", "refused").Inc()
			r.log.Error("relay: device published into another device's subtree; refusing", "device", from.ID, "topic", topic)
			return broker.Refuse, "foreign-subtree"
		}
		props := map[string]string{"warden-device": id, "warden-received": r.now().UTC().Format(time.RFC3339Nano)}
		if err := r.pub.Publish("fleet/"+id+"/up/"+channel, payload, qos, props); err != nil {
			r.relayed.WithLabelValues("up", "error").Inc()
			r.log.Error("relay: uplink not forwarded", "device", id, "channel", channel, "error", err)
			return broker.Deliver, ""
		}
		r.relayed.WithLabelValues("up", "forwarded").Inc()
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
		if err := r.pub.Publish("private/"+id+"/down/"+channel, payload, qos, map[string]string{"warden-service": from.ID}); err != nil {
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
