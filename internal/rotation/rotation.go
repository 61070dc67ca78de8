// Package rotation replaces a fleet's issuing CA: it creates the new
// issuing CA, re-issues every active device's certificate from the CSR
// kept in the registry (no device key is touched), delivers the new
// certificates on private/<id>/cert/new, notices which devices connect
// with them, and retires the old issuing CA when every device has switched
// or the grace period ends. Every step is recorded in the store before the
// next one starts, so a server killed mid-rotation resumes where it was.
//
// The order of one device's steps is what keeps the registry and the fleet
// in agreement: the re-issued credential is stored (registry.Reissue)
// before its serial is recorded in the rotation, and the rotation records
// it before the certificate is published. A crash can leave a credential
// that was never delivered (the resumed rotation delivers it), never a
// delivered certificate the registry does not know.
package rotation

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// ErrRunning is returned by Start while another rotation runs. It is also
// a store.ErrConflict, which is how the admin socket reports it.
var ErrRunning error = runningError{}

type runningError struct{}

func (runningError) Error() string {
	return "a CA rotation is running; wait for it to finish (`warden ca status --watch`)"
}

func (runningError) Is(target error) bool { return target == store.ErrConflict }

// ErrOffline is returned for operations that need the running server (its
// broker): they act on live connections.
var ErrOffline = errors.New("this needs the running server (`warden serve`), which holds the device connections")

// CA is what a rotation needs of the certificate authority; *pki.Authority
// implements it.
type CA interface {
	Rotate(grace time.Duration) (pki.IssuerInfo, error)
	Issuers() []pki.IssuerInfo
	IssuerOf(cert *x509.Certificate) (pki.IssuerInfo, bool)
	RetireIssuer(fingerprint string) error
	RevokeIssuer(fingerprint, reason string) error
	Reload() error
}

// Reissuer issues a device's next certificate from its stored CSR;
// *registry.Registry implements it.
type Reissuer interface {
	Reissue(ctx context.Context, id string) (*x509.Certificate, error)
}

// Store is the part of store.Store a rotation uses.
type Store interface {
	CreateRotation(ctx context.Context, r store.Rotation, deviceIDs []string) error
	GetRotation(ctx context.Context, id string) (store.Rotation, error)
	RunningRotation(ctx context.Context) (store.Rotation, error)
	ListRotations(ctx context.Context) ([]store.Rotation, error)
	FinishRotation(ctx context.Context, id, state, reason string, at time.Time) error
	SetRotationDevice(ctx context.Context, rotationID, deviceID, state, serial, reason string, at time.Time, from ...string) error
	RotationDevices(ctx context.Context, rotationID, state, after string, limit int) ([]store.RotationDevice, error)
	RotationCounts(ctx context.Context, rotationID string) (map[string]int, error)
	ListDevices(ctx context.Context, f store.DeviceFilter) ([]store.Device, error)
	GetDevice(ctx context.Context, id string) (store.Device, error)
	Credentials(ctx context.Context, kind identity.Kind, id string) ([]store.Credential, error)
	CredentialBySerial(ctx context.Context, serial string) (store.Credential, error)
}

// Broker is the part of the MQTT broker a rotation uses; *broker.Broker
// implements it.
type Broker interface {
	// PublishRetained delivers a certificate so that the device gets it
	// whenever it next subscribes, also if it is offline now.
	PublishRetained(topic string, payload []byte) error
	ClearRetained(topic string) bool
	ConnectionCertificate(id string) (*x509.Certificate, bool)
	CutWhere(match func(identity.Principal, *x509.Certificate) bool, reason string) int
}

// Options configure a Manager.
type Options struct {
	Store    Store
	CA       CA
	Registry Reissuer
	// Broker is nil when the CLI acts on the data directory without a
	// running server: Start then re-issues but delivers nothing; the
	// server delivers when it starts.
	Broker Broker
	// Chain is the intermediate chain sent with a delivery (the current
	// issuing CA).
	Chain      func() []*x509.Certificate
	Audit      audit.Recorder
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not exported
	Now        func() time.Time
	// OnRotated, if set, runs after the issuing CA changed (Start, or a
	// rotation adopted at start); the server re-signs its CRL there.
	OnRotated func(ctx context.Context)
	// Interval is how often Run looks at the running rotation when nothing
	// wakes it; 0 means 5 s.
	Interval time.Duration
}

// Manager runs CA rotations. Its methods are safe for concurrent use.
type Manager struct {
	o       Options
	log     *slog.Logger
	metrics *metrics
	opMu    sync.Mutex // one Start, step or issuer change at a time
	kick    chan struct{}
	seen    chan observation
	running atomic.Pointer[store.Rotation] // cache for Observe; nil when none runs
}

type observation struct {
	id         string
	leaf       *x509.Certificate // connected with it
	subscribed bool              // subscribed to its cert/new topic
}

type metrics struct {
	reissued  prometheus.Counter
	delivered prometheus.Counter
	switched  prometheus.Counter
	failures  *prometheus.CounterVec
	cut       *prometheus.CounterVec
	dropped   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reissued: prometheus.NewCounter(prometheus.CounterOpts{Name: "warden_rotation_reissued_total",
			Help: "Device certificates re-issued by CA rotations."}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "warden_rotation_delivered_total",
			Help: "Re-issued certificates published on private/<id>/cert/new."}),
		switched: prometheus.NewCounter(prometheus.CounterOpts{Name: "warden_rotation_switched_total",
			Help: "Devices seen connecting with a certificate of the new issuing CA."}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "warden_rotation_failures_total",
			Help: "Rotation steps that failed, by step (reissue, deliver, store)."}, []string{"step"}),
		cut: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "warden_rotation_connections_cut_total",
			Help: "Connections cut because their issuing CA stopped being trusted, by cause."}, []string{"cause"}),
	}
	m.dropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "warden_rotation_observations_dropped_total",
		Help: "Session and subscription notices a rotation could not queue (its sweep and the retained delivery cover them)."})
	if reg != nil {
		reg.MustRegister(m.reissued, m.delivered, m.switched, m.failures, m.cut, m.dropped)
	}
	return m
}

// New checks opts and returns a Manager. Call Run in the server.
func New(o Options) (*Manager, error) {
	if o.Store == nil || o.CA == nil || o.Registry == nil || o.Chain == nil {
		return nil, errors.New("rotation: a store, a CA, a registry and a chain are required")
	}
	if o.Audit == nil {
		o.Audit = audit.Discard{Logger: o.Logger}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Interval <= 0 {
		o.Interval = 5 * time.Second
	}
	return &Manager{
		o:       o,
		log:     o.Logger,
		metrics: newMetrics(o.Registerer),
		kick:    make(chan struct{}, 1),
		seen:    make(chan observation, 4096),
	}, nil
}

func (m *Manager) now() time.Time { return m.o.Now().UTC().Truncate(time.Millisecond) }

func (m *Manager) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func newRotationID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "rot-" + now.Format("20060102") + "-" + hex.EncodeToString(b[:])
}

// withReload runs a CA change, re-reading the CA directory once if another
// process (the CLI) changed it since this one loaded it.
func (m *Manager) withReload(op func() error) error {
	err := op()
	if errors.Is(err, pki.ErrChangedOnDisk) {
		if rerr := m.o.CA.Reload(); rerr != nil {
			return errors.Join(err, rerr)
		}
		err = op()
	}
	return err
}

// Start rotates the issuing CA and records a rotation of every active
// device. The old issuing CA stays trusted for grace (which must be
// positive), or until every device has switched. It returns at once in the
// server (Run re-issues and delivers); without a broker (the CLI on a
// stopped server) it re-issues every certificate before it returns, and
// progress, if not nil, is told how far it got.
func (m *Manager) Start(ctx context.Context, grace time.Duration, actor string, progress func(done, total int)) (store.Rotation, error) {
	if grace <= 0 {
		return store.Rotation{}, fmt.Errorf("rotate: the grace period must be positive (devices need time to connect and take their new certificate), got %s: %w", grace, registry.ErrInvalid)
	}
	m.opMu.Lock()
	switch r, err := m.o.Store.RunningRotation(ctx); {
	case err == nil:
		m.opMu.Unlock()
		return store.Rotation{}, fmt.Errorf("rotate: rotation %s (started %s): %w", r.ID, r.CreatedAt.Format(time.RFC3339), ErrRunning)
	case !errors.Is(err, store.ErrNotFound):
		m.opMu.Unlock()
		return store.Rotation{}, fmt.Errorf("rotate: %w", err)
	}
	// The devices are listed before the CA rotates: a device enrolled after
	// the rotation gets a certificate of the new issuing CA anyway.
	ids, err := m.activeDevices(ctx)
	if err != nil {
		m.opMu.Unlock()
		return store.Rotation{}, fmt.Errorf("rotate: %w", err)
	}
	old := m.o.CA.Issuers()[0]
	var next pki.IssuerInfo
	if err := m.withReload(func() (err error) { next, err = m.o.CA.Rotate(grace); return err }); err != nil {
		m.opMu.Unlock()
		if errors.Is(err, pki.ErrNoRootKey) {
			return store.Rotation{}, fmt.Errorf("rotate: the root key is not on this server; put the exported copy back with `warden ca import-root-key --in FILE`, then rotate: %w", err)
		}
		return store.Rotation{}, fmt.Errorf("rotate: %w", err)
	}
	now := m.now()
	r := store.Rotation{
		ID: newRotationID(now), OldIssuer: old.Fingerprint, NewIssuer: next.Fingerprint,
		GraceUntil: graceOf(m.o.CA, old.Fingerprint, now.Add(grace)), State: store.RotationRunning,
		CreatedAt: now, UpdatedAt: now,
	}
	// A crash here leaves a rotated CA without a record; Run adopts it
	// (adopt) when the server starts.
	if err := m.o.Store.CreateRotation(ctx, r, ids); err != nil {
		m.opMu.Unlock()
		return store.Rotation{}, fmt.Errorf("rotate: the issuing CA was rotated (new %s) but the rotation could not be recorded; the server records it when it starts: %w", short(next.Fingerprint), err)
	}
	m.running.Store(&r)
	m.opMu.Unlock()
	m.o.Audit.Record(ctx, audit.Event{Action: "ca.rotate", Outcome: "done", Actor: actor, Subject: "rotation:" + r.ID,
		Details: map[string]string{"old_issuer": r.OldIssuer, "new_issuer": r.NewIssuer, "devices": fmt.Sprint(len(ids)),
			"grace_until": r.GraceUntil.Format(time.RFC3339)}})
	if m.o.OnRotated != nil {
		m.o.OnRotated(ctx)
	}
	m.log.InfoContext(ctx, "CA rotation started", "rotation", r.ID, "old_issuer", short(r.OldIssuer),
		"new_issuer", short(r.NewIssuer), "devices", len(ids), "grace_until", r.GraceUntil)
	if m.o.Broker == nil {
		if err := m.reissuePending(ctx, r, progress); err != nil {
			return r, err
		}
	}
	m.wake()
	return r, nil
}

// graceOf returns the end of fingerprint's grace period as the CA recorded
// it, or fallback.
func graceOf(ca CA, fingerprint string, fallback time.Time) time.Time {
	for _, is := range ca.Issuers() {
		if is.Fingerprint == fingerprint && !is.GraceUntil.IsZero() {
			return is.GraceUntil.UTC()
		}
	}
	return fallback.UTC()
}

func (m *Manager) activeDevices(ctx context.Context) ([]string, error) {
	var ids []string
	f := store.DeviceFilter{State: store.StateActive, Limit: store.MaxListLimit}
	for {
		page, err := m.o.Store.ListDevices(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("list active devices: %w", err)
		}
		for _, d := range page {
			ids = append(ids, d.ID)
		}
		if len(page) < f.PageSize() {
			return ids, nil
		}
		f.After = page[len(page)-1].ID
	}
}

// SessionEstablished implements broker.Observer: a device connected with
// leaf, which may be its new certificate. It never blocks; a switch it
// could not queue is found by the next sweep.
func (m *Manager) SessionEstablished(p identity.Principal, leaf *x509.Certificate) {
	if p.Kind != identity.KindDevice || leaf == nil || m.running.Load() == nil {
		return
	}
	m.queue(observation{id: p.ID, leaf: leaf})
}

// Subscribed implements broker.Observer: a device that subscribes to its
// private/<id>/cert/new during a rotation gets its certificate again. The
// retained delivery usually reaches it anyway, but not when the broker
// believes the subscription existed already (a session restored after a
// crash), and a device must never miss its certificate for that.
func (m *Manager) Subscribed(p identity.Principal, filters []string) {
	if p.Kind != identity.KindDevice || m.running.Load() == nil {
		return
	}
	topic := enrollproto.Topic(p.ID, enrollproto.ChannelNew)
	if slices.Contains(filters, topic) {
		m.queue(observation{id: p.ID, subscribed: true})
	}
}

func (m *Manager) queue(o observation) {
	select {
	case m.seen <- o:
	default:
		m.metrics.dropped.Inc()
	}
}

// Run drives rotations until ctx ends: it records a rotation the CA went
// through without one (a crash between the two, or `warden ca rotate` on
// a stopped server that failed half way), then re-issues, delivers, marks
// switches and finishes the running rotation. It needs a broker.
func (m *Manager) Run(ctx context.Context) {
	if m.o.Broker == nil {
		m.log.Error("rotation manager started without a broker; rotations will not be delivered")
		return
	}
	if err := m.adopt(ctx); err != nil && ctx.Err() == nil {
		m.log.Error("could not record an unfinished CA rotation; it is retried", "error", err)
	}
	done := make(chan struct{})
	go func() { defer close(done); m.observe(ctx) }()
	tick := time.NewTicker(m.o.Interval)
	defer tick.Stop()
	for {
		if err := m.Step(ctx); err != nil && ctx.Err() == nil {
			m.log.Error("CA rotation step failed; retrying", "error", err)
			m.metrics.failures.WithLabelValues("store").Inc()
		}
		select {
		case <-ctx.Done():
			<-done
			return
		case <-tick.C:
		case <-m.kick:
		}
	}
}

func (m *Manager) observe(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-m.seen:
			r := m.running.Load()
			if r == nil {
				continue
			}
			if o.subscribed {
				if err := m.redeliver(ctx, *r, o.id); err != nil && ctx.Err() == nil {
					m.log.Warn("could not deliver a device's new certificate on its subscription; the retained delivery stands", "device", o.id, "error", err)
				}
				continue
			}
			if err := m.switched(ctx, *r, o.id, o.leaf); err != nil && ctx.Err() == nil {
				m.log.Warn("could not record a device's switch to the new issuing CA; the next sweep retries", "device", o.id, "error", err)
			}
		}
	}
}

// switched records that device id connected with leaf if leaf is a
// certificate of r's new issuing CA.
func (m *Manager) switched(ctx context.Context, r store.Rotation, id string, leaf *x509.Certificate) error {
	is, ok := m.o.CA.IssuerOf(leaf)
	if !ok || is.Fingerprint != r.NewIssuer {
		return nil
	}
	err := m.o.Store.SetRotationDevice(ctx, r.ID, id, store.RotationDeviceSwitched, pki.SerialHex(leaf.SerialNumber), "", m.now(),
		store.RotationDevicePending, store.RotationDeviceIssued, store.RotationDeviceDelivered, store.RotationDeviceFailed)
	switch {
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
		return nil // switched already, or not part of this rotation (enrolled after it began)
	case err != nil:
		return err
	}
	m.metrics.switched.Inc()
	m.o.Broker.ClearRetained(enrollproto.Topic(id, enrollproto.ChannelNew))
	m.log.DebugContext(ctx, "device switched to the new issuing CA", "device", id, "rotation", r.ID)
	m.wake()
	return nil
}

// redeliver publishes device id's certificate of r's new issuing CA again
// if it has one and is not connected with it.
func (m *Manager) redeliver(ctx context.Context, r store.Rotation, id string) error {
	if leaf, ok := m.o.Broker.ConnectionCertificate(id); ok {
		if is, ok := m.o.CA.IssuerOf(leaf); ok && is.Fingerprint == r.NewIssuer {
			return nil
		}
	}
	serial, err := m.existing(ctx, r, id)
	if err != nil || serial == "" {
		return err // not issued yet: the rotation delivers it when it is
	}
	cred, err := m.o.Store.CredentialBySerial(ctx, serial)
	if err != nil {
		return err
	}
	payload, err := m.deliveryMessage(cred)
	if err != nil {
		return err
	}
	return m.o.Broker.PublishRetained(enrollproto.Topic(id, enrollproto.ChannelNew), payload)
}

// deliveryMessage is the private/<id>/cert/new message carrying cred.
func (m *Manager) deliveryMessage(cred store.Credential) ([]byte, error) {
	msg := enrollproto.CertResponse{Status: enrollproto.StatusIssued, Certificate: cred.Certificate, Rotation: true}
	for _, c := range m.o.Chain() {
		msg.Chain = append(msg.Chain, c.Raw)
	}
	if err := msg.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(msg)
}

// adopt records a rotation for a CA whose current issuing CA no rotation
// names while an older one is in its grace period.
func (m *Manager) adopt(ctx context.Context) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if err := m.o.CA.Reload(); err != nil {
		return err
	}
	switch _, err := m.o.Store.RunningRotation(ctx); {
	case err == nil:
		return nil
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	issuers := m.o.CA.Issuers()
	cur := issuers[0]
	all, err := m.o.Store.ListRotations(ctx)
	if err != nil {
		return err
	}
	if slices.ContainsFunc(all, func(r store.Rotation) bool { return r.NewIssuer == cur.Fingerprint }) {
		return nil
	}
	i := slices.IndexFunc(issuers[1:], func(is pki.IssuerInfo) bool { return is.State == pki.IssuerGrace })
	if i < 0 {
		return nil
	}
	old := issuers[1+i]
	ids, err := m.activeDevices(ctx)
	if err != nil {
		return err
	}
	now := m.now()
	grace := old.GraceUntil
	if grace.IsZero() {
		grace = now.Add(30 * 24 * time.Hour)
	}
	r := store.Rotation{ID: newRotationID(now), OldIssuer: old.Fingerprint, NewIssuer: cur.Fingerprint,
		GraceUntil: grace.UTC(), State: store.RotationRunning, Reason: "recorded at start: the issuing CA had been rotated without a rotation record",
		CreatedAt: now, UpdatedAt: now}
	if err := m.o.Store.CreateRotation(ctx, r, ids); err != nil {
		return err
	}
	m.o.Audit.Record(ctx, audit.Event{Action: "ca.rotate", Outcome: "done", Actor: "warden", Subject: "rotation:" + r.ID,
		Reason: "adopted", Details: map[string]string{"old_issuer": r.OldIssuer, "new_issuer": r.NewIssuer, "devices": fmt.Sprint(len(ids))}})
	if m.o.OnRotated != nil {
		m.o.OnRotated(ctx)
	}
	m.log.WarnContext(ctx, "the issuing CA was rotated without a rotation record; rotating the fleet now", "rotation", r.ID, "devices", len(ids))
	return nil
}

// pageSize bounds the rows one step reads at a time.
const pageSize = 500

// Step moves the running rotation on: it re-issues pending devices,
// delivers issued certificates, marks devices connected with their new
// certificate as switched, and finishes the rotation when every device
// has switched or the grace period has ended. Run calls it; tests call it
// to move a rotation deterministically.
func (m *Manager) Step(ctx context.Context) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	r, err := m.o.Store.RunningRotation(ctx)
	if errors.Is(err, store.ErrNotFound) {
		m.running.Store(nil)
		return nil
	}
	if err != nil {
		return err
	}
	m.running.Store(&r)
	if m.oldIssuerGone(r) {
		return m.finish(ctx, r, "the old issuing CA was retired or revoked")
	}
	if err := m.reissuePending(ctx, r, nil); err != nil {
		return err
	}
	if m.o.Broker == nil {
		return nil
	}
	if err := m.deliverIssued(ctx, r); err != nil {
		return err
	}
	if err := m.sweep(ctx, r); err != nil {
		return err
	}
	counts, err := m.o.Store.RotationCounts(ctx, r.ID)
	if err != nil {
		return err
	}
	waiting := counts[store.RotationDevicePending] + counts[store.RotationDeviceIssued] + counts[store.RotationDeviceDelivered]
	switch {
	case waiting == 0:
		return m.finish(ctx, r, "every device switched")
	case !m.o.Now().Before(r.GraceUntil):
		return m.finish(ctx, r, fmt.Sprintf("the grace period ended; %d devices had not switched and must enroll again", waiting))
	}
	return nil
}

// oldIssuerGone reports whether r's old issuing CA is no longer trusted by
// an operator's decision (retired early or revoked).
func (m *Manager) oldIssuerGone(r store.Rotation) bool {
	for _, is := range m.o.CA.Issuers() {
		if is.Fingerprint == r.OldIssuer {
			return is.State == pki.IssuerRevoked || (is.State == pki.IssuerRetired && m.o.Now().Before(r.GraceUntil))
		}
	}
	return false
}

// reissuePending re-issues the certificate of every pending device of r.
func (m *Manager) reissuePending(ctx context.Context, r store.Rotation, progress func(done, total int)) error {
	total := 0
	if progress != nil {
		counts, err := m.o.Store.RotationCounts(ctx, r.ID)
		if err != nil {
			return err
		}
		total = counts[store.RotationDevicePending]
	}
	done := 0
	after := ""
	for {
		page, err := m.o.Store.RotationDevices(ctx, r.ID, store.RotationDevicePending, after, pageSize)
		if err != nil {
			return err
		}
		for _, d := range page {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := m.reissueOne(ctx, r, d.DeviceID); err != nil {
				return err
			}
			done++
			if progress != nil {
				progress(done, total)
			}
		}
		if len(page) < pageSize {
			return nil
		}
		after = page[len(page)-1].DeviceID
	}
}

// reissueOne gives one device its certificate of the new issuing CA: one
// the registry already holds (a step before a crash stored it) or a new
// one from its stored CSR. A device that cannot get one (revoked or
// disabled since the rotation began, no CSR) is marked failed; a store
// failure is returned.
func (m *Manager) reissueOne(ctx context.Context, r store.Rotation, id string) error {
	serial, err := m.existing(ctx, r, id)
	if err != nil {
		return err
	}
	if serial == "" {
		cert, err := m.o.Registry.Reissue(ctx, id)
		if err != nil {
			var ee *registry.EnrollError
			if !errors.As(err, &ee) && !errors.Is(err, store.ErrNotFound) {
				m.metrics.failures.WithLabelValues("reissue").Inc()
				return err
			}
			m.metrics.failures.WithLabelValues("reissue").Inc()
			m.log.WarnContext(ctx, "device certificate not re-issued", "device", id, "rotation", r.ID, "error", err)
			return m.o.Store.SetRotationDevice(ctx, r.ID, id, store.RotationDeviceFailed, "", m.failReason(ctx, id, err), m.now(), store.RotationDevicePending)
		}
		serial = pki.SerialHex(cert.SerialNumber)
		m.metrics.reissued.Inc()
		m.o.Audit.Record(ctx, audit.Event{Action: "device.reissue", Outcome: "done", Actor: "warden", Subject: "device:" + id,
			Reason: "ca-rotation", Details: map[string]string{"rotation": r.ID, "serial": serial}})
	}
	err = m.o.Store.SetRotationDevice(ctx, r.ID, id, store.RotationDeviceIssued, serial, "", m.now(), store.RotationDevicePending)
	if errors.Is(err, store.ErrConflict) {
		return nil // it switched meanwhile (it renewed under the new issuing CA)
	}
	return err
}

// failReason names why device id could not be re-issued: its state if it
// is no longer active (a revoked device has no unrevoked credential left,
// which Reissue reports as not found), else the refusal's reason.
func (m *Manager) failReason(ctx context.Context, id string, err error) string {
	if d, derr := m.o.Store.GetDevice(ctx, id); derr == nil {
		switch d.State {
		case store.StateRevoked:
			return registry.ReasonDeviceRevoked
		case store.StateDisabled:
			return registry.ReasonDeviceDisabled
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		return "no-stored-csr"
	}
	return registry.EnrollReason(err)
}

// existing returns the serial of an unrevoked, unexpired credential of
// device id signed by r's new issuing CA, or "".
func (m *Manager) existing(ctx context.Context, r store.Rotation, id string) (string, error) {
	creds, err := m.o.Store.Credentials(ctx, identity.KindDevice, id)
	if err != nil {
		return "", err
	}
	now := m.o.Now()
	for _, c := range creds {
		if c.Revoked() || !now.Before(c.NotAfter) {
			continue
		}
		cert, err := x509.ParseCertificate(c.Certificate)
		if err != nil {
			continue
		}
		if is, ok := m.o.CA.IssuerOf(cert); ok && is.Fingerprint == r.NewIssuer {
			return c.Serial, nil
		}
	}
	return "", nil
}

// deliverIssued publishes the certificate of every issued device of r.
func (m *Manager) deliverIssued(ctx context.Context, r store.Rotation) error {
	after := ""
	for {
		page, err := m.o.Store.RotationDevices(ctx, r.ID, store.RotationDeviceIssued, after, pageSize)
		if err != nil {
			return err
		}
		for _, d := range page {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := m.deliverOne(ctx, r, d); err != nil {
				return err
			}
		}
		if len(page) < pageSize {
			return nil
		}
		after = page[len(page)-1].DeviceID
	}
}

func (m *Manager) deliverOne(ctx context.Context, r store.Rotation, d store.RotationDevice) error {
	cred, err := m.o.Store.CredentialBySerial(ctx, d.Serial)
	if err != nil {
		return fmt.Errorf("deliver to %s: credential %s: %w", d.DeviceID, d.Serial, err)
	}
	if cred.Revoked() {
		// Revoked since it was issued (the device was revoked): nothing to deliver.
		return m.o.Store.SetRotationDevice(ctx, r.ID, d.DeviceID, store.RotationDeviceFailed, "", "credential-revoked", m.now(), store.RotationDeviceIssued)
	}
	payload, err := m.deliveryMessage(cred)
	if err != nil {
		return fmt.Errorf("deliver to %s: %w", d.DeviceID, err)
	}
	if err := m.o.Broker.PublishRetained(enrollproto.Topic(d.DeviceID, enrollproto.ChannelNew), payload); err != nil {
		m.metrics.failures.WithLabelValues("deliver").Inc()
		return fmt.Errorf("deliver to %s: %w", d.DeviceID, err)
	}
	err = m.o.Store.SetRotationDevice(ctx, r.ID, d.DeviceID, store.RotationDeviceDelivered, "", "", m.now(), store.RotationDeviceIssued)
	if errors.Is(err, store.ErrConflict) {
		return nil // switched in between
	}
	if err == nil {
		m.metrics.delivered.Inc()
	}
	return err
}

// sweep marks delivered devices that are connected with a certificate of
// the new issuing CA as switched: what Observe could not queue, and
// devices that switched while the server was down.
func (m *Manager) sweep(ctx context.Context, r store.Rotation) error {
	after := ""
	for {
		page, err := m.o.Store.RotationDevices(ctx, r.ID, store.RotationDeviceDelivered, after, pageSize)
		if err != nil {
			return err
		}
		for _, d := range page {
			if leaf, ok := m.o.Broker.ConnectionCertificate(d.DeviceID); ok {
				if err := m.switched(ctx, r, d.DeviceID, leaf); err != nil {
					return err
				}
			}
		}
		if len(page) < pageSize {
			return nil
		}
		after = page[len(page)-1].DeviceID
	}
}

// finish retires r's old issuing CA (unless it was revoked), cuts the
// connections still made with its certificates, withdraws the deliveries
// nobody took, and records r as completed. Each part is repeatable, so a
// crash in the middle is finished by the next step.
func (m *Manager) finish(ctx context.Context, r store.Rotation, reason string) error {
	err := m.withReload(func() error { return m.o.CA.RetireIssuer(r.OldIssuer) })
	if err != nil && !m.oldIssuerGone(r) {
		return fmt.Errorf("finish rotation %s: %w", r.ID, err)
	}
	cut := m.cutUntrusted("issuer-retired")
	after := ""
	for m.o.Broker != nil {
		page, err := m.o.Store.RotationDevices(ctx, r.ID, "", after, pageSize)
		if err != nil {
			return err
		}
		for _, d := range page {
			if d.State != store.RotationDeviceSwitched {
				m.o.Broker.ClearRetained(enrollproto.Topic(d.DeviceID, enrollproto.ChannelNew))
			}
		}
		if len(page) < pageSize {
			break
		}
		after = page[len(page)-1].DeviceID
	}
	if err := m.o.Store.FinishRotation(ctx, r.ID, store.RotationCompleted, reason, m.now()); err != nil {
		return err
	}
	m.running.Store(nil)
	m.o.Audit.Record(ctx, audit.Event{Action: "ca.rotation-complete", Outcome: "done", Actor: "warden", Subject: "rotation:" + r.ID,
		Reason: reason, Details: map[string]string{"old_issuer": r.OldIssuer, "connections_cut": fmt.Sprint(cut)}})
	m.log.InfoContext(ctx, "CA rotation completed; the old issuing CA is no longer trusted", "rotation", r.ID,
		"reason", reason, "connections_cut", cut)
	return nil
}

// cutUntrusted disconnects every connection whose certificate's issuing
// CA is no longer trusted (retired or revoked), or that none of this CA's
// issuing CAs signed. It returns how many it cut.
func (m *Manager) cutUntrusted(cause string) int {
	if m.o.Broker == nil {
		return 0
	}
	n := m.o.Broker.CutWhere(func(p identity.Principal, leaf *x509.Certificate) bool {
		is, ok := m.o.CA.IssuerOf(leaf)
		return !ok || is.State == pki.IssuerRetired || is.State == pki.IssuerRevoked
	}, cause)
	if n > 0 {
		m.metrics.cut.WithLabelValues(cause).Add(float64(n))
		m.log.Warn("connections cut: their issuing CA is no longer trusted", "count", n, "cause", cause)
	}
	return n
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}
