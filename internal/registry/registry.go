// Package registry owns the lifecycle of devices and services (active →
// disabled ↔ active → revoked, revoked being final) and their credentials,
// and is the one place that decides whether a certificate names a
// principal that may connect now (Authenticate).
//
// Changes are committed to the store first, then announced to subscribers
// (Subscribe) so the broker can cut live connections at once. Revocations
// also re-sign the CRL.
package registry

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// Issuer is the certificate authority the registry needs (*pki.Authority
// implements it).
type Issuer interface {
	IssueDevice(csr *x509.CertificateRequest, id string, lifetime time.Duration) (*x509.Certificate, error)
	IssueService(csr *x509.CertificateRequest, name string, lifetime time.Duration) (*x509.Certificate, error)
	IssueClaim(csr *x509.CertificateRequest, name string, lifetime time.Duration) (*x509.Certificate, error)
	SignCRL(revoked []x509.RevocationListEntry) ([]byte, error)
}

// Options configures a Registry. Zero values are usable.
type Options struct {
	Logger *slog.Logger     // default: discard
	Now    func() time.Time // default: time.Now
	// Certificate lifetimes; 0 lets the CA apply its default.
	DeviceCertLifetime  time.Duration
	ServiceCertLifetime time.Duration
	// Sealer keeps envelope master secrets sealed at rest (the keystore).
	// Without it the envelope methods that need a secret fail; everything
	// else works.
	Sealer Sealer
}

// ErrInvalid is wrapped by every error caused by the caller's input (a bad
// ID, tag, CSR or filter), as opposed to a conflict, a missing record or an
// internal failure.
var ErrInvalid = errors.New("invalid request")

// Registry is safe for concurrent use.
type Registry struct {
	st              store.Store
	ca              Issuer
	log             *slog.Logger
	now             func() time.Time
	deviceLifetime  time.Duration
	serviceLifetime time.Duration
	sealer          Sealer

	// lifecycle serialises read-check-write state changes, so that each
	// change is announced exactly once and in commit order.
	lifecycle sync.Mutex
	// crl serialises RefreshCRL: reading the revoked list and signing it
	// must not interleave with another refresh, or an older list could be
	// signed last and un-revoke a certificate.
	crl sync.Mutex

	subMu   sync.RWMutex
	subs    []subscriber
	nextSub uint64
}

type subscriber struct {
	id uint64
	fn func(Event)
}

// New returns a Registry over st that issues certificates with ca.
func New(st store.Store, ca Issuer, opts Options) *Registry {
	r := &Registry{
		st:              st,
		ca:              ca,
		log:             opts.Logger,
		now:             opts.Now,
		deviceLifetime:  opts.DeviceCertLifetime,
		serviceLifetime: opts.ServiceCertLifetime,
		sealer:          opts.Sealer,
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r
}

// clock returns the current time as the store keeps it (UTC, microseconds),
// so that what a method returns equals what a later read returns.
func (r *Registry) clock() time.Time {
	return r.now().UTC().Truncate(time.Microsecond)
}

// EventKind names a committed lifecycle change.
type EventKind string

// Event kinds.
const (
	EventDeviceAdded    EventKind = "device-added"
	EventDeviceDisabled EventKind = "device-disabled"
	EventDeviceEnabled  EventKind = "device-enabled"
	EventDeviceRevoked  EventKind = "device-revoked"
	EventServiceAdded   EventKind = "service-added"
	EventServiceRevoked EventKind = "service-revoked"
	// EventDeviceRecovered says a registered device enrolled again with a
	// recovery enrollment: it has a new credential, and every earlier one
	// is revoked. Its state did not change.
	EventDeviceRecovered EventKind = "device-recovered"
	// EventEnvelopeChanged says a device's envelope keys or policy changed,
	// so cached secrets and policies must be dropped. Its Reason is
	// "enabled", "policy-changed", "rekey-begun", "rekey-confirmed" or
	// "revoked" (revocation retired the device's keys; it follows
	// EventDeviceRevoked).
	EventEnvelopeChanged EventKind = "envelope-changed"
)

// Event describes a committed change.
type Event struct {
	Kind      EventKind
	Principal identity.Principal
	Reason    string
	At        time.Time
}

// Subscribe registers fn to be called after every committed change, in
// commit order. fn runs synchronously on the goroutine that made the
// change, while the registry holds its lifecycle lock: it must return
// quickly, must not block, and must not call the Registry's state-changing
// methods (hand slow work to a goroutine). The returned function removes
// the subscription; calling it more than once is harmless.
func (r *Registry) Subscribe(fn func(Event)) (unsubscribe func()) {
	r.subMu.Lock()
	id := r.nextSub
	r.nextSub++
	r.subs = append(r.subs, subscriber{id: id, fn: fn})
	r.subMu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.subMu.Lock()
			r.subs = slices.DeleteFunc(r.subs, func(s subscriber) bool { return s.id == id })
			r.subMu.Unlock()
		})
	}
}

// emit logs the change and tells subscribers.
func (r *Registry) emit(ctx context.Context, e Event, attrs ...any) {
	key := "device"
	if e.Principal.Kind == identity.KindService {
		key = "service"
	}
	args := append([]any{key, e.Principal.ID, "event", string(e.Kind), "reason", e.Reason}, attrs...)
	r.log.InfoContext(ctx, "registry change", args...)

	r.subMu.RLock()
	subs := slices.Clone(r.subs)
	r.subMu.RUnlock()
	for _, s := range subs {
		s.fn(e)
	}
}

func devicePrincipal(id string) identity.Principal {
	return identity.Principal{Kind: identity.KindDevice, ID: id}
}

func servicePrincipal(name, role string) identity.Principal {
	return identity.Principal{Kind: identity.KindService, ID: name, Role: role}
}
