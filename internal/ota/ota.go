// Package ota is Warden's firmware catalogue and rollout engine: it trusts
// release public keys (never private ones), stores images whose signed
// release statement and MCUboot signature verify, runs staged rollouts
// with failure thresholds, and answers devices over HTTPS and MQTT
// (docs/firmware.md). Trust in an image comes only from the release key:
// the server checks what it can so operators see mistakes early, but the
// device checks everything again.
package ota

import (
	"context"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/otaproto"
)

// ErrRefused marks an upload or trust request that failed verification
// (bad signature, untrusted key, hash mismatch...). The message says why.
var ErrRefused = errors.New("refused")

// DefaultMaxImageSize bounds an upload; MCUboot images are for
// microcontrollers, whose slots are a few MiB at most.
const DefaultMaxImageSize = 64 << 20

// Store is what the service needs from the database.
type Store interface {
	store.FirmwareStore
	GetDevice(ctx context.Context, id string) (store.Device, error)
	ListDevices(ctx context.Context, f store.DeviceFilter) ([]store.Device, error)
}

// Alert is a finding an operator must see.
type Alert struct {
	Kind    string // e.g. "rollout.paused"
	Subject string // e.g. "rollout:ro-1a2b"
	Message string
}

// Alerter raises alerts (the monitor, once it exists, stores them).
type Alerter interface {
	Alert(ctx context.Context, a Alert)
}

// Notifier pushes an offer to a connected device (the MQTT transport).
type Notifier interface {
	Notify(ctx context.Context, deviceID string, o otaproto.Offer)
}

// Options configure a Service.
type Options struct {
	Store        Store
	Blobs        Blobs
	Logger       *slog.Logger
	Audit        audit.Recorder
	Registerer   prometheus.Registerer
	Alerter      Alerter // nil: alerts are logged, audited and counted only
	MaxImageSize int64   // 0: DefaultMaxImageSize
	// ImageURL returns the HTTPS URL of an image for an offer; nil: offers
	// carry no URL (MQTT delivery only).
	ImageURL func(deviceID, sha string) string
	Now      func() time.Time
	// Events, if set, hears of every firmware version a device reports
	// running (the anomaly monitor checks it against the model's set).
	Events events.Sink
}

// Service is safe for concurrent use.
type Service struct {
	st       Store
	blobs    Blobs
	log      *slog.Logger
	audit    audit.Recorder
	alerter  Alerter
	maxImage int64
	imageURL func(deviceID, sha string) string
	now      func() time.Time
	events   events.Sink

	open sync.Map // sha -> Blob kept open: images never change once stored

	mu       sync.Mutex // serialises rollout state changes in this process
	notifier Notifier
	expired  map[string]bool // rollouts already alerted for an expired statement

	uploads  *prometheus.CounterVec
	reports  *prometheus.CounterVec
	offers   prometheus.Counter
	alerts   *prometheus.CounterVec
	progress *prometheus.CounterVec
}

// New builds a Service.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Blobs == nil {
		return nil, errors.New("ota: a store and a blob store are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Audit == nil {
		o.Audit = audit.Discard{Logger: o.Logger}
	}
	if o.MaxImageSize <= 0 {
		o.MaxImageSize = DefaultMaxImageSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Service{
		st: o.Store, blobs: o.Blobs, log: o.Logger, audit: o.Audit, alerter: o.Alerter,
		maxImage: o.MaxImageSize, imageURL: o.ImageURL, now: o.Now, events: o.Events, expired: map[string]bool{},
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_ota_uploads_total", Help: "Firmware uploads, by outcome (stored, refused, error).",
		}, []string{"outcome"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_ota_reports_total", Help: "Device OTA status reports, by state and outcome.",
		}, []string{"state", "outcome"}),
		offers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warden_ota_offers_total", Help: "Images offered to devices.",
		}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_ota_alerts_total", Help: "OTA alerts raised, by kind.",
		}, []string{"kind"}),
		progress: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_ota_rollout_transitions_total", Help: "Rollout state changes, by new state.",
		}, []string{"state"}),
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{s.uploads, s.reports, s.offers, s.alerts, s.progress} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("ota: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// SetNotifier sets the transport that pushes offers to connected devices.
func (s *Service) SetNotifier(n Notifier) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notifier = n
}

func (s *Service) currentNotifier() Notifier {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notifier
}

func (s *Service) raise(ctx context.Context, a Alert) {
	s.alerts.WithLabelValues(a.Kind).Inc()
	s.log.Warn("ALERT: "+a.Message, "alert", a.Kind, "subject", a.Subject)
	s.audit.Record(ctx, audit.Event{Action: "alert." + a.Kind, Outcome: "raised", Actor: "warden", Subject: a.Subject, Reason: a.Message})
	if s.alerter != nil {
		s.alerter.Alert(ctx, a)
	}
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{registry.ErrInvalid}, args...)...)
}

func refusedf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrRefused}, args...)...)
}

// Trust adds a release public key (PEM "PUBLIC KEY") to the keys the
// server accepts releases from. name is a label for operators.
func (s *Service) Trust(ctx context.Context, pubPEM []byte, name string, actor string) (store.ReleaseKey, error) {
	pub, err := firmware.ParsePublicKeyPEM(pubPEM)
	if err != nil {
		return store.ReleaseKey{}, invalidf("release key: %v (give the .pub file `warden fw keygen` wrote, never the private key)", err)
	}
	der, err := firmware.MarshalPublicKey(pub)
	if err != nil {
		return store.ReleaseKey{}, invalidf("release key: %v", err)
	}
	id, err := firmware.KeyID(pub)
	if err != nil {
		return store.ReleaseKey{}, invalidf("release key: %v", err)
	}
	if len(name) > 128 {
		return store.ReleaseKey{}, invalidf("release key name is longer than 128 bytes")
	}
	k := store.ReleaseKey{ID: id, Name: name, PublicKey: der, CreatedAt: s.now()}
	if err := s.st.AddReleaseKey(ctx, k); err != nil {
		if errors.Is(err, store.ErrRevoked) {
			return store.ReleaseKey{}, refusedf("release key %s was revoked and cannot be trusted again; make a new key", id)
		}
		return store.ReleaseKey{}, err
	}
	s.audit.Record(ctx, audit.Event{Action: "firmware.trust", Outcome: "done", Actor: actor, Subject: "release-key:" + id, Details: map[string]string{"name": name}})
	s.log.Info("release key trusted", "key", id, "name", name)
	return s.st.GetReleaseKey(ctx, id)
}

// Untrust revokes a release key: images it signed are no longer offered.
func (s *Service) Untrust(ctx context.Context, id, actor string) (store.ReleaseKey, error) {
	k, err := s.st.RevokeReleaseKey(ctx, id, s.now())
	if err != nil {
		return k, err
	}
	s.audit.Record(ctx, audit.Event{Action: "firmware.untrust", Outcome: "done", Actor: actor, Subject: "release-key:" + id})
	return k, nil
}

// Keys lists release keys.
func (s *Service) Keys(ctx context.Context) ([]store.ReleaseKey, error) {
	return s.st.ReleaseKeys(ctx)
}

// Images lists stored images of model (all if empty).
func (s *Service) Images(ctx context.Context, model string) ([]store.FirmwareImage, error) {
	return s.st.ListFirmwareImages(ctx, model)
}

// trustedKey returns the trusted release key with this ID.
func (s *Service) trustedKey(ctx context.Context, id string) (crypto.PublicKey, error) {
	k, err := s.st.GetReleaseKey(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, refusedf("signed by release key %s, which this server does not trust (run `warden fw trust <key.pub>` first)", id)
	}
	if err != nil {
		return nil, err
	}
	if k.Revoked() {
		return nil, refusedf("signed by release key %s, which was revoked on %s", id, k.RevokedAt.Format(time.RFC3339))
	}
	pub, err := firmware.ParsePublicKey(k.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("stored release key %s: %w", id, err)
	}
	return pub, nil
}

// Upload stores an image if its release statement verifies against a
// trusted key and the image matches the statement and its own MCUboot
// signature. The blob is written (atomically) before the row, so nothing
// half-stored is ever offered; an upload that fails leaves nothing.
func (s *Service) Upload(ctx context.Context, statement []byte, image io.Reader, actor string) (store.FirmwareImage, error) {
	img, err := s.upload(ctx, statement, image)
	outcome, reason := "stored", ""
	switch {
	case errors.Is(err, ErrRefused), errors.Is(err, registry.ErrInvalid), errors.Is(err, store.ErrConflict):
		outcome, reason = "refused", err.Error()
	case err != nil:
		outcome, reason = "error", err.Error()
	}
	s.uploads.WithLabelValues(outcome).Inc()
	ev := audit.Event{Action: "firmware.upload", Outcome: "done", Actor: actor, Subject: "image:" + img.SHA256}
	if err != nil {
		ev.Outcome, ev.Reason = "denied", reason
		s.log.Warn("firmware upload refused", "reason", reason)
	} else {
		ev.Details = map[string]string{"model": img.Model, "version": img.Version,
			"security_counter": strconv.FormatUint(uint64(img.SecurityCounter), 10), "sequence": strconv.FormatUint(img.Sequence, 10)}
		s.log.Info("firmware stored", "sha256", img.SHA256, "model", img.Model, "version", img.Version, "bytes", img.Size)
	}
	s.audit.Record(ctx, ev)
	return img, err
}

func (s *Service) upload(ctx context.Context, statement []byte, image io.Reader) (store.FirmwareImage, error) {
	if len(statement) == 0 || len(statement) > firmware.MaxStatementSize {
		return store.FirmwareImage{}, invalidf("release statement must be 1..%d bytes, got %d", firmware.MaxStatementSize, len(statement))
	}
	ss, err := firmware.ParseStatement(statement)
	if err != nil {
		return store.FirmwareImage{}, refusedf("release statement: %v", err)
	}
	pub, err := s.trustedKey(ctx, ss.KeyID)
	if err != nil {
		return store.FirmwareImage{}, err
	}
	st, err := firmware.VerifyStatement(statement, pub)
	if err != nil {
		return store.FirmwareImage{}, refusedf("release statement: %v", err)
	}
	now := s.now()
	if !now.Before(st.ExpiresAt) {
		return store.FirmwareImage{}, refusedf("release statement expired at %s; sign a new one with `warden fw sign`", st.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if st.ImageSize > s.maxImage {
		return store.FirmwareImage{}, refusedf("the statement names a %d-byte image; this server accepts at most %d", st.ImageSize, s.maxImage)
	}
	data, err := io.ReadAll(io.LimitReader(image, st.ImageSize+1))
	if err != nil {
		return store.FirmwareImage{}, fmt.Errorf("read image: %w", err)
	}
	if int64(len(data)) != st.ImageSize {
		return store.FirmwareImage{}, refusedf("image is %d bytes, the statement says %d (truncated upload, or the wrong file)", len(data), st.ImageSize)
	}
	if _, err := st.MatchImage(data, pub); err != nil {
		return store.FirmwareImage{}, refusedf("image does not match its statement: %v", err)
	}
	sha := hex.EncodeToString(st.ImageSHA256[:])
	created, err := s.blobs.Put(ctx, sha, data)
	if err != nil {
		return store.FirmwareImage{}, err
	}
	row := store.FirmwareImage{
		SHA256: sha, Model: st.Model, Version: st.Version.String(), SecurityCounter: st.SecurityCounter,
		Size: st.ImageSize, KeyID: ss.KeyID, Statement: statement, Sequence: st.Sequence,
		ExpiresAt: st.ExpiresAt, UploadedAt: now, UpdatedAt: now,
	}
	stored, err := s.st.PutFirmwareImage(ctx, row)
	if err != nil {
		if created {
			if rerr := s.blobs.Remove(sha); rerr != nil {
				s.log.Error("cannot remove the blob of a refused upload; it will be swept", "sha256", sha, "error", rerr)
			}
		}
		if errors.Is(err, store.ErrConflict) {
			return store.FirmwareImage{}, fmt.Errorf("%w (each release of a model needs its own sequence number, and a statement can only be replaced by one with a higher sequence)", err)
		}
		return store.FirmwareImage{}, err
	}
	return stored, nil
}

// Sweep removes image files no row names (left by a crash between blob
// and row) and temporary files of interrupted writes.
func (s *Service) Sweep(ctx context.Context) error {
	removed, err := s.blobs.Sweep(ctx, func(sha string) (bool, error) {
		_, err := s.st.GetFirmwareImage(ctx, sha)
		if errors.Is(err, store.ErrNotFound) {
			return false, nil
		}
		return err == nil, err
	}, time.Hour)
	for _, name := range removed {
		s.log.Info("removed an orphaned image file", "file", name)
	}
	return err
}

func isInvalid(err error) bool { return errors.Is(err, registry.ErrInvalid) }

// openShared returns a long-lived handle on an image for concurrent
// ReadAt calls (block delivery); images are immutable once stored.
func (s *Service) openShared(sha string) (Blob, error) {
	if b, ok := s.open.Load(sha); ok {
		return b.(Blob), nil
	}
	b, err := s.blobs.Open(sha)
	if err != nil {
		return nil, err
	}
	if prev, loaded := s.open.LoadOrStore(sha, b); loaded {
		b.Close()
		return prev.(Blob), nil
	}
	return b, nil
}

// Close releases the image handles kept open for block delivery.
func (s *Service) Close() error {
	s.open.Range(func(k, v any) bool {
		v.(Blob).Close()
		s.open.Delete(k)
		return true
	})
	return nil
}
