package onboard

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/sealing"
	"github.com/warden-iot/warden/internal/store"
)

// Publisher injects a message as Warden (broker.Broker implements it).
type Publisher interface {
	Publish(topic string, payload []byte, qos byte, props ...broker.Property) error
}

// Opener opens sealed uplinks from envelope devices (sealing.Sealing).
type Opener interface {
	Policy(ctx context.Context, id string) (store.EnvelopePolicy, bool, error)
	OpenUplink(ctx context.Context, id, topic string, msg []byte) (sealing.Opened, error)
}

// MQTT is the broker side of onboarding: CSRs on private/<id>/cert/csr
// (renewals from devices, enrollments from claim-certificate connections)
// and claim tokens on private/<id>/claim.
type MQTT struct {
	s    *Service
	pub  Publisher
	open Opener // nil: no envelope devices
}

// NewMQTT builds the MQTT transport.
func (s *Service) NewMQTT(pub Publisher, open Opener) *MQTT {
	return &MQTT{s: s, pub: pub, open: open}
}

// IsOnboardTopic reports whether topic is one this transport handles.
func IsOnboardTopic(topic string) bool {
	_, ch, ok := enrollproto.ParseTopic(topic)
	return ok && (ch == enrollproto.ChannelCSR || ch == enrollproto.ChannelClaim)
}

// Route implements broker.Router for onboarding topics. The ACL already
// confined the publisher to its own subtree (a claim connection to
// private/<id>/cert/csr alone).
func (m *MQTT) Route(ctx context.Context, from broker.Origin, topic string, payload []byte, qos byte) (broker.Verdict, string) {
	id, ch, ok := enrollproto.ParseTopic(topic)
	if !ok || id != from.ID || (from.Kind != identity.KindDevice && from.Kind != identity.KindClaim) {
		return broker.Refuse, "foreign-subtree"
	}
	body, ok := m.unseal(ctx, from, topic, payload)
	if !ok {
		return broker.Refuse, "envelope"
	}
	switch {
	case ch == enrollproto.ChannelCSR:
		m.csr(ctx, from, body)
	case ch == enrollproto.ChannelClaim && from.Kind == identity.KindDevice:
		m.claim(ctx, from, body)
	default:
		return broker.Refuse, "reserved"
	}
	return broker.Consume, ""
}

func (m *MQTT) unseal(ctx context.Context, from broker.Origin, topic string, payload []byte) ([]byte, bool) {
	must := from.Plain
	if !must && m.open != nil && from.Kind == identity.KindDevice {
		pol, ok, err := m.open.Policy(ctx, from.ID)
		if err != nil {
			m.s.log.Error("onboard: cannot look up the envelope policy; refusing", "device", from.ID, "error", err)
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
			m.s.log.Error("onboard: cannot open an envelope", "device", from.ID, "error", err)
		}
		return nil, false
	}
	return o.Plaintext, true
}

func (m *MQTT) reply(id, channel string, v any) {
	b, err := json.Marshal(v)
	if err == nil {
		err = m.pub.Publish(enrollproto.Topic(id, channel), b, 1)
	}
	if err != nil {
		m.s.log.Error("onboard: reply not sent", "device", id, "channel", channel, "error", err)
	}
}

func (m *MQTT) csr(ctx context.Context, from broker.Origin, body []byte) {
	req, err := enrollproto.ParseCSRRequest(body)
	if err != nil {
		m.s.log.Warn("malformed CSR message", "device", from.ID, "kind", from.Kind, "error", err)
		m.s.audit.Record(ctx, audit.Event{Action: "device.csr", Outcome: "denied", Actor: from.String(), Reason: "malformed"})
		m.reply(from.ID, enrollproto.ChannelNew, enrollproto.CertResponse{RequestID: salvageRequestID(body), Status: enrollproto.StatusRefused})
		return
	}
	var cert *x509.Certificate
	if from.Kind == identity.KindClaim {
		if name := csrName(req.CSR); name != from.ID {
			// The connection was admitted for one ID; it enrolls that one.
			m.s.enrolled(ctx, Request{Via: "mqtt", ClaimName: from.Role}, store.EnrollClaim, from.ID,
				&claimError{"csr-names-another-device", errors.New("the CSR names another device than the client ID")})
		} else {
			_, cert, err = m.s.Enroll(ctx, Request{CSR: req.CSR, Proof: req.Proof, ClaimName: from.Role, ClaimToken: req.ClaimToken, Via: "mqtt"})
		}
	} else {
		cert, err = m.s.Renew(ctx, from.ID, req.CSR, "mqtt", "")
		if err == nil && req.ClaimToken != "" {
			_, _ = m.s.Redeem(ctx, from.ID, req.ClaimToken, "")
		}
	}
	resp := enrollproto.CertResponse{RequestID: req.RequestID, Status: enrollproto.StatusRefused}
	switch {
	case cert != nil:
		resp.Status, resp.Certificate = enrollproto.StatusIssued, cert.Raw
		for _, c := range m.s.Chain() {
			resp.Chain = append(resp.Chain, c.Raw)
		}
	case reasonOf(err) == "error":
		resp.Status = enrollproto.StatusError
	}
	m.reply(from.ID, enrollproto.ChannelNew, resp)
}

func (m *MQTT) claim(ctx context.Context, from broker.Origin, body []byte) {
	req, err := enrollproto.ParseClaimRequest(body)
	status := enrollproto.StatusRefused
	if err != nil {
		req.RequestID = salvageRequestID(body)
		m.s.claims.WithLabelValues("redeem", "malformed").Inc()
		m.s.audit.Record(ctx, audit.Event{Action: "device.claim", Outcome: "denied", Actor: from.String(),
			Subject: from.String(), Reason: "malformed"})
	} else if _, err := m.s.Redeem(ctx, from.ID, req.Token, ""); err == nil {
		status = enrollproto.StatusBound
	}
	if req.RequestID == "" {
		return // nothing the device could match an answer to
	}
	m.reply(from.ID, enrollproto.ChannelClaimResult, enrollproto.ClaimResult{RequestID: req.RequestID, Status: status})
}

// salvageRequestID reads the request_id of a message that failed strict
// parsing, so the refusal can still be answered; "" if there is no valid
// one.
func salvageRequestID(body []byte) string {
	var v struct {
		RequestID string `json:"request_id"`
	}
	if len(body) > enrollproto.MaxMessage || json.Unmarshal(body, &v) != nil {
		return ""
	}
	if (enrollproto.ClaimResult{RequestID: v.RequestID, Status: enrollproto.StatusRefused}).Validate() != nil {
		return ""
	}
	return v.RequestID
}
