// Package sealing holds Warden's side of the envelope protocol for every
// envelope device: its keys (unsealed from the registry and cached), its
// uplink replay windows and its downlink sequence numbers. It opens
// uplinks, seals downlinks, verifies CONNECT passwords on the plain
// listener and carries rekeys. The format itself is the public package
// envelope; what a device may do is decided by the registry's policy.
//
// Every open failure is one error to the peer (envelope.ErrOpen); the
// reason goes only to the metric warden_envelope_failures_total{reason} and
// the audit log.
package sealing

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// RekeyChannel is the downlink channel that carries a new master secret,
// sealed under the epoch it replaces (docs/envelope.md, "Rekey").
const RekeyChannel = "_rekey"

// downlinkReserve is how many downlink sequence numbers are reserved in the
// store at a time (persist ahead, RFC 8613 B.1.1): a crash loses at most
// this many numbers, and only one store write per that many downlinks.
const downlinkReserve = 256

// Directory is what sealing needs from the registry
// (*registry.Registry implements it).
type Directory interface {
	EnvelopePolicy(ctx context.Context, id string) (store.EnvelopePolicy, error)
	EnvelopeSecrets(ctx context.Context, id string) ([]registry.EnvelopeSecret, error)
	ConfirmRekey(ctx context.Context, id string, epoch uint32) error
	ReplayWindow(ctx context.Context, id string, dir envelope.Direction, epoch uint32) (envelope.ReplayWindow, error)
	SaveReplayWindow(ctx context.Context, id string, dir envelope.Direction, epoch uint32, w envelope.ReplayWindow) error
	ReserveSequence(ctx context.Context, id string, dir envelope.Direction, epoch uint32, step uint64) (uint64, error)
	Device(ctx context.Context, id string) (registry.DeviceInfo, error)
}

// ErrNotEnvelopeDevice is returned for devices without envelope keys.
var ErrNotEnvelopeDevice = errors.New("not an envelope device")

// Sealing is safe for concurrent use. Work for one device is serialised
// (its replay window must be checked and committed atomically); different
// devices proceed in parallel.
type Sealing struct {
	// Events, if set before use, hears of every envelope that did not open
	// (the anomaly monitor).
	Events events.Sink

	dir   Directory
	log   *slog.Logger
	audit audit.Recorder

	mu      sync.Mutex
	devices map[string]*device // nil value = known not to be an envelope device

	// Uplink replay windows live apart from the device cache: dropping
	// cached keys must never lose an accepted sequence number.
	wmu     sync.Mutex
	windows map[windowKey]*window
	journal *journal // nil: every accepted number is written to the store
	foldNow chan struct{}
	foldMu  sync.Mutex

	failures *prometheus.CounterVec
	opened   *prometheus.CounterVec
	openedBy map[envelope.Suite]prometheus.Counter // resolved once: it runs per message
	sealed   *prometheus.CounterVec

	// OnRekeyDue, if set, is called (in its own goroutine, at most once per
	// device and epoch) when a device's sequence numbers in either
	// direction pass envelope.RekeyThreshold, so the epoch is rotated long
	// before its numbers run out.
	OnRekeyDue func(id string)
	rekeyDue   sync.Map // windowKey -> struct{}: already reported
}

type device struct {
	mu       sync.Mutex
	id       string
	policy   store.EnvelopePolicy
	minSuite envelope.Suite
	epochs   []*epoch // ascending; the active one and, during a rekey, the pending one
	auditLog *rate.Limiter
	// stale is set when the device was dropped from the cache: reload
	// before use. Atomic, because Invalidate runs from registry events,
	// which may fire while this device's lock is held (a confirmed rekey).
	stale atomic.Bool
}

type epoch struct {
	n        uint32
	state    store.EnvelopeState
	suite    envelope.Suite
	up       *envelope.Keys // opens the device's messages
	down     *envelope.Keys // seals Warden's messages (nil for sign-p256: Warden has no signing key)
	nextDown uint64         // next downlink sequence number ...
	downEnd  uint64         // ... reserved up to (exclusive)
}

// New builds the sealing component. reg may be nil.
func New(dir Directory, logger *slog.Logger, rec audit.Recorder, reg prometheus.Registerer) *Sealing {
	if logger == nil {
		logger = slog.Default()
	}
	if rec == nil {
		rec = audit.Discard{Logger: logger}
	}
	s := &Sealing{
		dir: dir, log: logger, audit: rec,
		devices: map[string]*device{},
		windows: map[windowKey]*window{},
		foldNow: make(chan struct{}, 1),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_envelope_failures_total", Help: "Envelopes refused, by reason (malformed, downgrade, unknown-key, replay, bad-tag, bad-padding, plaintext).",
		}, []string{"reason"}),
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_envelope_opened_total", Help: "Envelopes opened (uplinks and CONNECT passwords), by suite.",
		}, []string{"suite"}),
		sealed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_envelope_sealed_total", Help: "Downlinks sealed, by suite.",
		}, []string{"suite"}),
	}
	s.openedBy = map[envelope.Suite]prometheus.Counter{}
	for _, su := range []envelope.Suite{envelope.LegacyCBCHMAC, envelope.CCM8, envelope.SignP256} {
		s.openedBy[su] = s.opened.WithLabelValues(su.String())
	}
	if reg != nil {
		reg.MustRegister(s.failures, s.opened, s.sealed)
	}
	return s
}

// Invalidate drops what is cached about a device; the next use reloads it
// from the registry. Call it on every registry event about the device.
func (s *Sealing) Invalidate(id string) {
	s.mu.Lock()
	d := s.devices[id]
	delete(s.devices, id)
	s.mu.Unlock()
	if d != nil {
		d.stale.Store(true)
	}
}

// Policy reports a device's envelope policy; ok is false for devices that
// are not envelope devices.
func (s *Sealing) Policy(ctx context.Context, id string) (store.EnvelopePolicy, bool, error) {
	d, err := s.load(ctx, id)
	if err != nil || d == nil {
		return store.EnvelopePolicy{}, false, err
	}
	return d.policy, true, nil
}

// load returns the device's cached state, loading it if needed. A nil
// device with a nil error means "not an envelope device".
func (s *Sealing) load(ctx context.Context, id string) (*device, error) {
	s.mu.Lock()
	d, known := s.devices[id]
	s.mu.Unlock()
	if known {
		return d, nil
	}
	d, err := s.fetch(ctx, id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if cur, ok := s.devices[id]; ok { // another goroutine won; use its copy
		d = cur
	} else {
		s.devices[id] = d
	}
	s.mu.Unlock()
	return d, nil
}

func (s *Sealing) fetch(ctx context.Context, id string) (*device, error) {
	pol, err := s.dir.EnvelopePolicy(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("envelope policy of device %s: %w", id, err)
	}
	minSuite, err := envelope.ParseSuite(pol.MinSuite)
	if err != nil {
		return nil, fmt.Errorf("envelope policy of device %s: %w", id, err)
	}
	secrets, err := s.dir.EnvelopeSecrets(ctx, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("envelope keys of device %s: %w", id, err)
	}
	d := &device{id: id, policy: pol, minSuite: minSuite, auditLog: rate.NewLimiter(1, 5)}
	var pub *ecdsa.PublicKey
	for _, sec := range secrets {
		suite, err := envelope.ParseSuite(sec.Suite)
		if err != nil {
			return nil, fmt.Errorf("envelope key of device %s epoch %d: %w", id, sec.Epoch, err)
		}
		e := &epoch{n: sec.Epoch, state: sec.State, suite: suite}
		if suite == envelope.SignP256 {
			if pub == nil {
				if pub, err = s.devicePublicKey(ctx, id); err != nil {
					return nil, err
				}
			}
			if e.up, err = envelope.VerifyKeys(pub, id, sec.Epoch, envelope.Uplink); err != nil {
				return nil, err
			}
		} else {
			if e.up, err = envelope.DeriveKeys(sec.Secret, id, sec.Epoch, suite, envelope.Uplink); err != nil {
				return nil, err
			}
			if e.down, err = envelope.DeriveKeys(sec.Secret, id, sec.Epoch, suite, envelope.Downlink); err != nil {
				return nil, err
			}
		}
		clear(sec.Secret)
		d.epochs = append(d.epochs, e)
	}
	return d, nil
}

// devicePublicKey is the P-256 key of the device's newest unrevoked
// certificate: what a sign-p256 device signs with.
func (s *Sealing) devicePublicKey(ctx context.Context, id string) (*ecdsa.PublicKey, error) {
	info, err := s.dir.Device(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", id, err)
	}
	for _, c := range info.Credentials {
		if c.Revoked() {
			continue
		}
		cert, err := x509.ParseCertificate(c.Certificate)
		if err != nil {
			return nil, fmt.Errorf("device %s certificate %s: %w", id, c.Serial, err)
		}
		if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); ok {
			return pub, nil
		}
	}
	return nil, fmt.Errorf("device %s has no usable P-256 certificate for sign-p256", id)
}

// Opened is an authenticated uplink.
type Opened struct {
	Plaintext []byte
	Header    envelope.Header
	Epoch     uint32
}

type unverifiedKey struct{}

// Unverified marks ctx as carrying a message whose device ID is the
// peer's claim, not an authenticated session's (sealed HTTPS requests): its
// failures are not reported to the anomaly monitor as the device's.
func Unverified(ctx context.Context) context.Context {
	return context.WithValue(ctx, unverifiedKey{}, true)
}

func unverified(ctx context.Context) bool {
	v, _ := ctx.Value(unverifiedKey{}).(bool)
	return v
}

// OpenUplink authenticates (and decrypts) a device's uplink published on
// topic, checking suite, epoch and replay window, and commits its sequence
// number. A message under a pending epoch confirms the rekey. Errors are
// ErrNotEnvelopeDevice, an envelope.ErrOpen (reason for metrics only), or a
// store failure.
func (s *Sealing) OpenUplink(ctx context.Context, id, topic string, msg []byte) (Opened, error) {
	return s.open(ctx, id, topic, msg, false)
}

// CheckConnectPassword verifies a CONNECT password of the plain listener
// (an empty envelope on envelope.ConnectTopic) and commits its sequence
// number, so each password works once.
func (s *Sealing) CheckConnectPassword(ctx context.Context, id string, password []byte) error {
	_, msg, err := envelope.ParseConnectPassword(password)
	if err != nil {
		s.fail(Unverified(ctx), id, "", err)
		return err
	}
	_, err = s.open(Unverified(ctx), id, envelope.ConnectTopic, msg, true)
	return err
}

// lock returns the device's state locked, reloading it if it was
// invalidated meanwhile; the caller must unlock d.mu.
func (s *Sealing) lock(ctx context.Context, id string) (*device, error) {
	for {
		d, err := s.load(ctx, id)
		if err != nil {
			return nil, err
		}
		if d == nil {
			return nil, ErrNotEnvelopeDevice
		}
		d.mu.Lock()
		if !d.stale.Load() {
			return d, nil
		}
		d.mu.Unlock()
	}
}

func (s *Sealing) open(ctx context.Context, id, topic string, msg []byte, connect bool) (Opened, error) {
	d, err := s.lock(ctx, id)
	if err != nil {
		return Opened{}, err
	}
	defer d.mu.Unlock()

	h, err := envelope.Parse(msg)
	if err != nil {
		return Opened{}, s.fail(ctx, id, topic, err)
	}
	if err := envelope.RequireSuite(h.Suite, d.minSuite); err != nil {
		return Opened{}, s.fail(ctx, id, topic, err)
	}
	var e *epoch
	for _, c := range d.epochs {
		if c.suite == h.Suite && h.MatchesEpoch(c.n) && c.up != nil {
			e = c
		}
	}
	if e == nil {
		return Opened{}, s.fail(ctx, id, topic, &envelope.OpenError{Reason: envelope.ReasonUnknownKey})
	}
	w, err := s.windowFor(ctx, id, e.n)
	if err != nil {
		return Opened{}, err
	}
	defer w.mu.Unlock()
	if err := w.w.Check(h.Seq); err != nil {
		return Opened{}, s.fail(ctx, id, topic, err)
	}
	pt, _, err := envelope.Open(e.up, topic, msg)
	if err != nil {
		return Opened{}, s.fail(ctx, id, topic, err)
	}
	if connect && len(pt) != 0 {
		return Opened{}, s.fail(ctx, id, topic, &envelope.OpenError{Reason: envelope.ReasonMalformed})
	}
	// The number is durable before the message is acknowledged or relayed:
	// a restart must never accept it again.
	if err := s.commit(ctx, id, e.n, w, h.Seq); err != nil {
		if envelope.ReasonOf(err) != "" {
			return Opened{}, s.fail(ctx, id, topic, err)
		}
		return Opened{}, err
	}
	s.openedBy[h.Suite].Inc()
	if h.Seq >= envelope.RekeyThreshold {
		s.rekeyIsDue(id, e.n)
	}

	if e.state == store.EnvelopePending {
		if err := s.dir.ConfirmRekey(ctx, id, e.n); err != nil {
			s.log.Error("rekey not confirmed; the device keeps both epochs until it is", "device", id, "epoch", e.n, "error", err)
		} else {
			s.log.Info("rekey confirmed by the device", "device", id, "epoch", e.n)
			s.audit.Record(ctx, audit.Event{Action: "envelope.rekey", Outcome: "done", Subject: "device:" + id,
				Details: map[string]string{"epoch": fmt.Sprint(e.n)}})
		}
	}
	return Opened{Plaintext: pt, Header: h, Epoch: e.n}, nil
}

// fail counts and audits an envelope refusal and returns the one error the
// peer may see.
func (s *Sealing) fail(ctx context.Context, id, topic string, err error) error {
	reason := envelope.ReasonOf(err)
	if reason == "" {
		reason = envelope.ReasonMalformed
	}
	s.failures.WithLabelValues(string(reason)).Inc()
	// Only a failure on a session the device authenticated says something
	// about that device: where the ID is the peer's claim (a CONNECT
	// password, a sealed HTTPS request), anyone could name a victim, and a
	// detector's response (quarantine) must not be theirs to trigger.
	// Those are audited and counted here, and refused connections reach
	// the monitor as authentication failures.
	if s.Events != nil && !unverified(ctx) {
		s.Events.Observe(events.Event{Kind: events.EnvelopeRejected, At: time.Now(), Device: id, Topic: topic, Reason: string(reason)})
	}
	s.mu.Lock()
	d := s.devices[id]
	s.mu.Unlock()
	if d == nil || d.auditLog.Allow() {
		details := map[string]string{}
		if topic != "" {
			details["topic"] = topic
		}
		s.audit.Record(context.Background(), audit.Event{
			Action: "envelope.open", Outcome: "denied", Actor: "device:" + id, Reason: string(reason), Details: details,
		})
	}
	return envelope.ErrOpen
}

// CountPlaintext records a plaintext publish refused where an envelope was
// required.
func (s *Sealing) CountPlaintext(id, topic string) {
	s.failures.WithLabelValues("plaintext").Inc()
	if s.Events != nil {
		s.Events.Observe(events.Event{Kind: events.EnvelopeRejected, At: time.Now(), Device: id, Topic: topic, Reason: "plaintext"})
	}
	s.audit.Record(context.Background(), audit.Event{
		Action: "envelope.open", Outcome: "denied", Actor: "device:" + id, Reason: "plaintext", Details: map[string]string{"topic": topic},
	})
}

// ErrNoDownlinkKey means Warden cannot seal for the device: sign-p256
// devices would need a Warden signing key, which this version does not have.
var ErrNoDownlinkKey = errors.New("no downlink key: Warden cannot seal messages to this device (sign-p256 devices need a Warden signing key)")

// SealDownlink seals a message to the device for topic under its active
// epoch with the next downlink sequence number.
func (s *Sealing) SealDownlink(ctx context.Context, id, topic string, plaintext []byte) ([]byte, error) {
	d, err := s.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer d.mu.Unlock()
	var e *epoch
	for _, c := range d.epochs {
		if c.state == store.EnvelopeActive {
			e = c
		}
	}
	if e == nil || e.down == nil {
		return nil, ErrNoDownlinkKey
	}
	return s.sealLocked(ctx, d, e, topic, plaintext)
}

func (s *Sealing) sealLocked(ctx context.Context, d *device, e *epoch, topic string, plaintext []byte) ([]byte, error) {
	if e.nextDown >= e.downEnd {
		start, err := s.dir.ReserveSequence(ctx, d.id, envelope.Downlink, e.n, downlinkReserve)
		if err != nil {
			return nil, fmt.Errorf("reserve downlink sequence numbers of device %s: %w", d.id, err)
		}
		e.nextDown, e.downEnd = start, start+downlinkReserve
	}
	seq := e.nextDown
	e.nextDown++
	if seq >= envelope.RekeyThreshold {
		s.rekeyIsDue(d.id, e.n)
	}
	out, err := envelope.Seal(e.down, seq, topic, plaintext)
	if err != nil {
		return nil, err
	}
	s.sealed.WithLabelValues(e.suite.String()).Inc()
	return out, nil
}

func (s *Sealing) rekeyIsDue(id string, epoch uint32) {
	if s.OnRekeyDue == nil {
		return
	}
	if _, seen := s.rekeyDue.LoadOrStore(windowKey{id, epoch}, struct{}{}); seen {
		return
	}
	s.log.Warn("envelope sequence numbers passed the rekey threshold; rekeying the device", "device", id, "epoch", epoch)
	go s.OnRekeyDue(id)
}

// RekeyMessage builds the message that carries a pending epoch's secret to
// the device: u32(new epoch) ‖ secret, sealed under the active epoch for
// topic (private/<id>/down/_rekey).
func (s *Sealing) RekeyMessage(ctx context.Context, id, topic string, pending registry.EnvelopeSecret) ([]byte, error) {
	if len(pending.Secret) != envelope.MasterSecretSize {
		return nil, fmt.Errorf("rekey device %s: the pending key has no %d-byte secret", id, envelope.MasterSecretSize)
	}
	d, err := s.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer d.mu.Unlock()
	var active *epoch
	for _, c := range d.epochs {
		if c.state == store.EnvelopeActive {
			active = c
		}
	}
	if active == nil || active.down == nil {
		return nil, ErrNoDownlinkKey
	}
	pt := make([]byte, 4+len(pending.Secret))
	binary.BigEndian.PutUint32(pt, pending.Epoch)
	copy(pt[4:], pending.Secret)
	defer clear(pt)
	return s.sealLocked(ctx, d, active, topic, pt)
}
