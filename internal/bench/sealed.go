package bench

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/envelope"
)

// The sealed scenario is the throughput scenario with envelope devices:
// devices that cannot run TLS, on Warden's plain MQTT listener, sealing
// every payload with their own keys (docs/envelope.md). Warden opens each
// uplink (replay check, open, the durable commit of its sequence number)
// and relays the plaintext to fleet/<id>/up/..., where the same reader
// service as in the throughput scenario consumes it.
//
// The load comes from the benchmark's bare client with a sealing step per
// message, not from sim.Run: sim.Run paces the fleet (one interval per
// device, at most one unacknowledged message each) through the whole SDK,
// so its rate is what it was asked for, not what the broker can take.
// Only the same closed loop as the throughput scenario (the same window of
// messages in flight end to end, the same client cost per message) gives a
// figure that can be divided by the mutual-TLS one. The sealing itself is
// the SDK's, step for step: the device's bundle read with
// device.LoadEnvelopeBundle, the uplink keys of its epoch, a sequence
// number from an envelope.Counter over a file (persisted ahead, as the SDK
// requires) for every message and every CONNECT password, and
// envelope.Seal over the message's topic.

// DefaultSealedSuite is the envelope suite of the sealed scenario's
// devices: ccm-8, the suite for constrained devices (AES-128-CCM, as
// OSCORE uses).
const DefaultSealedSuite = "ccm-8"

// DefaultSealedConsumer is the reader service registered with the sealed
// scenario's fleet. The scenario itself reads with the throughput fleet's
// consumer; this one lets `warden sim --fleet` use the sealed fleet alone.
const DefaultSealedConsumer = "bench-sealed-consumer"

// EnvelopeDevice is an envelope device of the load generator: its ID, its
// uplink keys of its current epoch and its uplink sequence counter. It is
// safe for concurrent use.
type EnvelopeDevice struct {
	ID    string
	Suite envelope.Suite
	Epoch uint32

	keys    *envelope.Keys
	counter *envelope.Counter
}

// counterFile is where an envelope device's uplink counter of one epoch is
// kept: in the fleet directory, under the name `warden sim` gives it in
// its default state directory (the fleet directory), so that the
// benchmark and `warden sim --fleet DIR` on the same fleet and server
// share one counter per device. Separate counters would hand out numbers
// Warden has already accepted, and it would refuse them as replays.
func counterFile(f *FleetDir, id string, epoch uint32) string {
	return filepath.Join(f.Dir, fmt.Sprintf("%s.sim-counter-%d", id, epoch))
}

// LoadEnvelopeDevices reads the first n devices of an envelope fleet (all
// if n <= 0): each device's bundle, the uplink keys it derives (a
// sign-p256 device signs with its certificate's key) and its counter,
// which continues where the last run on this fleet stopped.
func LoadEnvelopeDevices(f *FleetDir, n int) ([]*EnvelopeDevice, error) {
	if f.Envelope == "" {
		return nil, fmt.Errorf("bench: the fleet in %s has no envelope devices; provision it with FleetOptions.Envelope", f.Dir)
	}
	ids := f.Devices
	if n > 0 && n < len(ids) {
		ids = ids[:n]
	}
	devs := make([]*EnvelopeDevice, len(ids))
	for i, id := range ids {
		d, err := loadEnvelopeDevice(f, id)
		if err != nil {
			return nil, err
		}
		devs[i] = d
	}
	return devs, nil
}

func loadEnvelopeDevice(f *FleetDir, id string) (*EnvelopeDevice, error) {
	bid, env, err := device.LoadEnvelopeBundle(f.BundleFile(id))
	if err != nil {
		return nil, fmt.Errorf("bench: device %s: %w", id, err)
	}
	defer clear(env.Secret)
	if bid != id {
		return nil, fmt.Errorf("bench: %s is the bundle of device %q, not %q; provision the fleet again (remove %s)", f.BundleFile(id), bid, id, f.Dir)
	}
	var keys *envelope.Keys
	if env.Suite == envelope.SignP256 {
		// A sign-p256 device signs with the private key of its
		// certificate; it has no master secret.
		pair, err := tls.LoadX509KeyPair(f.CertFile(id), f.KeyFile(id))
		if err != nil {
			return nil, fmt.Errorf("bench: device %s: %w", id, err)
		}
		signer, ok := pair.PrivateKey.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("bench: device %s: its private key (%T) cannot sign", id, pair.PrivateKey)
		}
		keys, err = envelope.SignKeys(signer, id, env.Epoch, envelope.Uplink)
		if err != nil {
			return nil, fmt.Errorf("bench: device %s: %w", id, err)
		}
	} else {
		keys, err = envelope.DeriveKeys(env.Secret, id, env.Epoch, env.Suite, envelope.Uplink)
		if err != nil {
			return nil, fmt.Errorf("bench: device %s: %w", id, err)
		}
	}
	counter, err := envelope.NewCounter(envelope.NewFileCounterStore(counterFile(f, id, env.Epoch)))
	if err != nil {
		return nil, fmt.Errorf("bench: device %s: %w", id, err)
	}
	return &EnvelopeDevice{ID: id, Suite: env.Suite, Epoch: env.Epoch, keys: keys, counter: counter}, nil
}

// Seal seals an uplink payload for topic under the device's next sequence
// number, as the SDK's PublishUp does. It fails, and nothing may be sent,
// when the counter cannot persist its bound.
func (d *EnvelopeDevice) Seal(topic string, payload []byte) ([]byte, error) {
	seq, err := d.counter.Next()
	if err != nil {
		return nil, err
	}
	return envelope.Seal(d.keys, seq, topic, payload)
}

// ConnectPassword returns a fresh single-use CONNECT password for Warden's
// plain listener, from the same counter as the messages.
func (d *EnvelopeDevice) ConnectPassword() ([]byte, error) {
	seq, err := d.counter.Next()
	if err != nil {
		return nil, err
	}
	return envelope.ConnectPassword(d.keys, seq)
}

// WardenPlainTarget loads Warden's plain MQTT listener (StartWarden with
// WardenOptions.PlainMQTT) with envelope devices: they publish sealed on
// their private uplink, Warden opens each message and relays the plaintext
// to fleet/<id>/up/..., which the reader service consumes (over mutual
// TLS: give Sealed a Consumer started on WardenTarget).
func WardenPlainTarget(p *Proc) (Target, error) {
	if p.PlainAddr == "" {
		return Target{}, errors.New("bench: Warden runs without its plain MQTT listener; start it with WardenOptions.PlainMQTT")
	}
	return Target{
		Name: "warden", Proc: p,
		Endpoint:       Endpoint{Addr: p.PlainAddr, Plain: true},
		Topic:          func(id, ch string) string { return "private/" + id + "/up/" + ch },
		OwnFilter:      func(id string) string { return "private/" + id + "/#" },
		ConsumerFilter: "fleet/#", ConsumerLevel: 1,
	}, nil
}

// ConnectEnvelope connects every envelope device (in order) to a plain
// target, each attempt with a fresh CONNECT password (username: the device
// ID), and returns the clients and how long it took. A device that fails
// o.Retries+1 times fails the call.
func ConnectEnvelope(ctx context.Context, t Target, devs []*EnvelopeDevice, o ConnectOptions) ([]*Client, time.Duration, error) {
	if !t.Endpoint.Plain {
		return nil, 0, fmt.Errorf("bench: envelope devices connect to a plain listener, and %s's endpoint %s is TLS", t.Name, t.Endpoint.Addr)
	}
	ids := make([]string, len(devs))
	for i, d := range devs {
		ids[i] = d.ID
	}
	return connectEach(ctx, t, ids, o, func(ctx context.Context, i int) (*Client, error) {
		pw, err := devs[i].ConnectPassword()
		if err != nil {
			return nil, fmt.Errorf("CONNECT password: %w", err)
		}
		return Dial(ctx, t.Endpoint, DialOptions{ID: devs[i].ID, Username: devs[i].ID, Password: pw, LocalAddr: sourceAddrs[i%len(sourceAddrs)]})
	})
}

// Sealed runs the throughput load (Throughput, with the same options) with
// envelope devices that seal every payload: devs[i] publishes on
// clients[i], connected to t (WardenPlainTarget); cons reads the opened
// payloads on fleet/#. The payload size is the plaintext's; the metric
// envelope_bytes is the average size of what was sent.
func Sealed(ctx context.Context, t Target, devs []*EnvelopeDevice, clients []*Client, cons *Consumer, o ThroughputOptions) (Result, error) {
	if len(devs) < len(clients) {
		return Result{}, fmt.Errorf("bench: sealed: %d clients but only %d envelope devices", len(clients), len(devs))
	}
	if len(clients) == 0 {
		return Result{}, errors.New("bench: sealed: no devices")
	}
	ids := make([]string, len(clients))
	for i := range clients {
		ids[i] = devs[i].ID
	}
	var sealed, sealedBytes atomic.Uint64
	seal := func(i int, topic string, payload []byte) ([]byte, error) {
		msg, err := devs[i].Seal(topic, payload)
		if err != nil {
			return nil, err
		}
		sealed.Add(1)
		sealedBytes.Add(uint64(len(msg)))
		return msg, nil
	}
	r, err := runLoad(ctx, ScenarioSealed, t, ids, clients, cons, o, seal)
	if err != nil {
		return r, err
	}
	r.Parameters["tls"] = "none (plain MQTT listener)"
	r.Parameters["envelope"] = devs[0].Suite.String()
	if n := sealed.Load(); n > 0 {
		r.Add("envelope_bytes", float64(sealedBytes.Load())/float64(n), UnitBytes, "")
	}
	return r, nil
}
