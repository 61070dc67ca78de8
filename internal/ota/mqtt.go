package ota

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/otaproto"
)

// Publisher injects a message as Warden (broker.Broker implements it).
type Publisher interface {
	Publish(topic string, payload []byte, qos byte, props ...broker.Property) error
}

// MQTT delivers offers and blocks over the device's broker connection and
// takes its block requests and status reports. It is a broker.Router for
// the private/<id>/ota/ subtree.
type MQTT struct {
	s       *Service
	grants  sync.Map // device ID -> grant: a recent CanFetch answer
	pub     Publisher
	open    Opener // nil: no envelope devices
	log     *slog.Logger
	audit   audit.Recorder
	handled *prometheus.CounterVec
	blocks  prometheus.Counter
	bytes   prometheus.Counter
}

// NewMQTT builds the MQTT transport and makes it the service's notifier.
func NewMQTT(s *Service, pub Publisher, open Opener, reg prometheus.Registerer) *MQTT {
	m := &MQTT{
		s: s, pub: pub, open: open, log: s.log, audit: s.audit,
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_ota_mqtt_messages_total", Help: "OTA messages from devices over MQTT, by channel and outcome.",
		}, []string{"channel", "outcome"}),
		blocks: prometheus.NewCounter(prometheus.CounterOpts{Name: "warden_ota_mqtt_blocks_total", Help: "Image blocks sent over MQTT."}),
		bytes:  prometheus.NewCounter(prometheus.CounterOpts{Name: "warden_ota_mqtt_block_bytes_total", Help: "Image bytes sent over MQTT."}),
	}
	if reg != nil {
		reg.MustRegister(m.handled, m.blocks, m.bytes)
	}
	s.SetNotifier(m)
	return m
}

// IsOTATopic reports whether topic is in some device's OTA subtree.
func IsOTATopic(topic string) bool {
	rest, ok := strings.CutPrefix(topic, "private/")
	if !ok {
		return false
	}
	i := strings.IndexByte(rest, '/')
	return i > 0 && strings.HasPrefix(rest[i:], "/ota/")
}

// Notify implements Notifier.
func (m *MQTT) Notify(ctx context.Context, deviceID string, o otaproto.Offer) {
	b, err := json.Marshal(o)
	if err == nil {
		err = m.pub.Publish(otaproto.Topic(deviceID, otaproto.TopicNotify), b, 1)
	}
	if err != nil {
		m.log.Error("OTA offer not sent; the device gets it at its next check", "device", deviceID, "error", err)
	}
}

// Route implements broker.Router for OTA topics; the broker's ACL already
// confined the device to its own subtree.
func (m *MQTT) Route(ctx context.Context, from broker.Origin, topic string, payload []byte, qos byte) (broker.Verdict, string) {
	if from.Kind != identity.KindDevice {
		return broker.Deliver, "" // services have no business here; the ACL decides
	}
	rest, _ := strings.CutPrefix(topic, "private/"+from.ID+"/ota/")
	if rest == topic {
		m.handled.WithLabelValues("foreign", "refused").Inc()
		m.log.Error("OTA: device published into another device's subtree; refusing", "device", from.ID, "topic", topic)
		return broker.Refuse, "foreign-subtree"
	}
	if rest != otaproto.TopicGet && rest != otaproto.TopicStatus {
		// notify and block are Warden's to send.
		m.handled.WithLabelValues("reserved", "refused").Inc()
		return broker.Refuse, "reserved"
	}
	body, ok := m.unseal(ctx, from, topic, payload)
	if !ok {
		m.handled.WithLabelValues(rest, "refused").Inc()
		return broker.Refuse, "envelope"
	}
	var err error
	switch rest {
	case otaproto.TopicGet:
		err = m.get(ctx, from.ID, body)
	case otaproto.TopicStatus:
		err = m.status(ctx, from.ID, body)
	}
	if err != nil {
		m.handled.WithLabelValues(rest, "refused").Inc()
		if errors.Is(err, ErrNotOffered) {
			m.audit.Record(ctx, audit.Event{Action: "ota.mqtt." + rest, Outcome: "denied", Actor: from.String(), Reason: "not-offered"})
		}
		m.log.Warn("OTA message refused", "device", from.ID, "channel", rest, "error", err)
		return broker.Refuse, "ota-refused"
	}
	m.handled.WithLabelValues(rest, "accepted").Inc()
	return broker.Consume, ""
}

// unseal opens the payload when the device must seal (plain listener, or
// a policy that requires envelopes), and passes it through otherwise.
func (m *MQTT) unseal(ctx context.Context, from broker.Origin, topic string, payload []byte) ([]byte, bool) {
	must := from.Plain
	if !must && m.open != nil {
		pol, ok, err := m.open.Policy(ctx, from.ID)
		if err != nil {
			m.log.Error("OTA: cannot look up the envelope policy; refusing", "device", from.ID, "error", err)
			return nil, false
		}
		must = ok && pol.Required
	}
	if !must {
		return payload, true
	}
	if m.open == nil {
		return nil, false
	}
	o, err := m.open.OpenUplink(ctx, from.ID, topic, payload)
	if err != nil {
		if !errors.Is(err, envelope.ErrOpen) {
			m.log.Error("OTA: cannot open an envelope", "device", from.ID, "error", err)
		}
		return nil, false
	}
	return o.Plaintext, true
}

func decodeStrict(b []byte, v any) error {
	if len(b) > maxStatusBody {
		return invalidf("message of %d bytes is too large", len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalidf("malformed JSON: %v", err)
	}
	if dec.More() {
		return invalidf("trailing data after the JSON object")
	}
	return nil
}

func (m *MQTT) status(ctx context.Context, id string, body []byte) error {
	var rep otaproto.Report
	if err := decodeStrict(body, &rep); err != nil {
		return err
	}
	o, err := m.s.Report(ctx, id, rep)
	if err != nil {
		return err
	}
	if o != nil {
		m.Notify(ctx, id, *o)
	}
	return nil
}

func (m *MQTT) get(ctx context.Context, id string, body []byte) error {
	var req otaproto.BlockRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if err := req.Validate(); err != nil {
		return invalidf("%v", err)
	}
	size, err := m.fetchable(ctx, id, req.SHA256)
	if err != nil {
		return err
	}
	if req.Offset >= size {
		return invalidf("offset %d is past the image's %d bytes", req.Offset, size)
	}
	n := min(int64(req.Length), size-req.Offset)
	b, err := m.s.openShared(req.SHA256)
	if err != nil {
		return err
	}
	frame := make([]byte, otaproto.BlockHeaderSize+int(n))
	if _, err := b.ReadAt(frame[otaproto.BlockHeaderSize:], req.Offset); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	otaproto.PutBlockHeader(frame, req.Offset, size)
	if err := m.pub.Publish(otaproto.Topic(id, otaproto.TopicBlock), frame, 0); err != nil {
		return err
	}
	m.blocks.Inc()
	m.bytes.Add(float64(n))
	return nil
}

// grantTTL is how long a device's right to fetch an image is cached: a
// download is dozens of block requests, and asking the store for each
// would cost more than the block. A paused rollout lets downloads under
// way finish anyway; an aborted one stops serving within the TTL.
const grantTTL = 5 * time.Second

type grant struct {
	sha     string
	size    int64
	expires time.Time
}

// fetchable returns the image size if the device may fetch sha now.
func (m *MQTT) fetchable(ctx context.Context, id, sha string) (int64, error) {
	now := time.Now()
	if v, ok := m.grants.Load(id); ok {
		if g := v.(grant); g.sha == sha && now.Before(g.expires) {
			return g.size, nil
		}
	}
	img, err := m.s.CanFetch(ctx, id, sha)
	if err != nil {
		m.grants.Delete(id)
		return 0, err
	}
	m.grants.Store(id, grant{sha: sha, size: img.Size, expires: now.Add(grantTTL)})
	return img.Size, nil
}
