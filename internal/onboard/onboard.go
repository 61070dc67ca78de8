// Package onboard brings devices in and keeps their certificates current:
// preregistration with an enrollment secret, enrollment with proof of
// possession (EST over HTTPS and CSRs over MQTT), fleet claim
// certificates, renewal, and app claiming with an encrypted single-use
// token (docs/onboarding.md). The registry issues and records; this
// package decides who may ask, and audits every answer.
package onboard

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/onboard/claimtoken"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// CA is what onboarding needs of the certificate authority: the
// certificates EST's cacerts returns.
type CA interface {
	Root() *x509.Certificate
	Issuing() *x509.Certificate
}

// Options configures a Service.
type Options struct {
	Registry   *registry.Registry
	Store      store.Store
	CA         CA
	Keystore   *keystore.Keystore // seals enrollment secrets
	ClaimKey   *claimtoken.Key    // nil: app claiming is off
	Audit      audit.Recorder
	Logger     *slog.Logger
	Registerer prometheus.Registerer // may be nil
	Now        func() time.Time
}

// Service is safe for concurrent use.
type Service struct {
	reg      *registry.Registry
	st       store.Store
	ca       CA
	ks       *keystore.Keystore
	claimKey *claimtoken.Key
	audit    audit.Recorder
	log      *slog.Logger
	now      func() time.Time

	enrolls  *prometheus.CounterVec
	claims   *prometheus.CounterVec
	renewals *prometheus.CounterVec
}

// New builds the service.
func New(o Options) (*Service, error) {
	if o.Registry == nil || o.Store == nil || o.CA == nil || o.Keystore == nil {
		return nil, errors.New("onboard: registry, store, CA and keystore are required")
	}
	s := &Service{
		reg: o.Registry, st: o.Store, ca: o.CA, ks: o.Keystore, claimKey: o.ClaimKey,
		audit: o.Audit, log: o.Logger, now: o.Now,
		enrolls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_enroll_total", Help: "Device enrollments, by method and outcome (enrolled, recovered, or the reason for a refusal).",
		}, []string{"method", "outcome"}),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_claims_total", Help: "App claim tokens minted and redeemed, by action and outcome.",
		}, []string{"action", "outcome"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_cert_renewals_total", Help: "Certificate renewals, by transport and outcome.",
		}, []string{"via", "outcome"}),
	}
	if s.audit == nil {
		s.audit = audit.Discard{}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{s.enrolls, s.claims, s.renewals} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("onboard: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// secretRecord is the keystore record an enrollment secret is sealed
// under: it names the device, so a sealed secret moved to another device's
// row does not open.
func secretRecord(deviceID string) string { return "onboard/enroll-secret/" + deviceID }

// Preregistration is one device to preregister.
type Preregistration struct {
	DeviceID string
	Model    string
	Tags     map[string]string
	// Recovery re-arms a registered device that can no longer
	// authenticate (its certificate expired, its issuing CA is no longer
	// trusted, it lost its key) instead of recording a new one: with the
	// new secret it enrolls again as itself, and its earlier certificates
	// are revoked. Model and Tags must be empty: the device keeps its own.
	Recovery bool
}

// Preregister records devices that may each enroll once with their own
// enrollment secret, and returns each device's secret file (the only time
// the secrets exist outside the keystore), in order. A recovery entry
// replaces the device's earlier enrollment, so an older secret no longer
// works.
func (s *Service) Preregister(ctx context.Context, ps []Preregistration) ([]enrollproto.SecretFile, error) {
	es := make([]store.Enrollment, len(ps))
	files := make([]enrollproto.SecretFile, len(ps))
	for i, p := range ps {
		secret, err := enrollproto.NewSecret()
		if err != nil {
			return nil, err
		}
		sealed, err := s.ks.Seal(secretRecord(p.DeviceID), secret)
		if err != nil {
			return nil, fmt.Errorf("preregister %q: seal the enrollment secret: %w", p.DeviceID, err)
		}
		es[i] = store.Enrollment{DeviceID: p.DeviceID, Method: store.EnrollSecret, Model: p.Model, Tags: p.Tags, Secret: sealed, Recovery: p.Recovery}
		files[i] = enrollproto.SecretFile{Version: 1, DeviceID: p.DeviceID, Secret: secret}
	}
	if err := s.reg.Preregister(ctx, es); err != nil {
		return nil, err
	}
	for _, p := range ps {
		details := map[string]string{"method": store.EnrollSecret, "model": p.Model}
		if p.Recovery {
			details["recovery"] = "true"
		}
		s.audit.Record(ctx, audit.Event{Action: "device.preregister", Outcome: "done", Actor: "operator",
			Subject: "device:" + p.DeviceID, Details: details})
	}
	return files, nil
}

// Request is an enrollment request as it arrived.
type Request struct {
	CSR        []byte            // DER
	Proof      []byte            // enrollment-secret HMAC, if any
	ClaimLeaf  *x509.Certificate // the verified TLS client certificate, if any (EST)
	ClaimName  string            // an authenticated claim connection's claim name (MQTT)
	ClaimToken string            // an app claim token riding along, if any
	Via        string            // "est" or "mqtt"
	Remote     string
}

// Enroll authorizes and performs an enrollment. The error is what the
// requester may be told nothing about: callers answer every error with
// the same refusal. A recovery enrollment goes the same way (the device
// proves the same secret); only the audit line and the metric's outcome
// ("recovered") tell it apart.
func (s *Service) Enroll(ctx context.Context, req Request) (store.Device, *x509.Certificate, error) {
	method := store.EnrollSecret
	var authorize func(store.Enrollment, *x509.CertificateRequest) error
	switch {
	case req.ClaimLeaf != nil:
		method = store.EnrollClaim
		a, err := s.reg.AuthorizeClaim(ctx, req.ClaimLeaf)
		if err != nil {
			s.enrolled(ctx, req, method, "", err)
			return store.Device{}, nil, err
		}
		authorize = a
	case req.ClaimName != "":
		method = store.EnrollClaim
		authorize = s.authorizeClaimName(ctx, req.ClaimName)
	default:
		authorize = func(e store.Enrollment, _ *x509.CertificateRequest) error {
			if e.Method != store.EnrollSecret {
				return &registry.EnrollError{Reason: registry.ReasonWrongMethod, Err: fmt.Errorf("device %q enrolls with a claim certificate", e.DeviceID)}
			}
			secret, err := s.ks.Open(secretRecord(e.DeviceID), e.Secret)
			if err != nil {
				return fmt.Errorf("open the enrollment secret of %q: %w", e.DeviceID, err)
			}
			defer clear(secret)
			if !enrollproto.VerifyProof(secret, e.DeviceID, req.CSR, req.Proof) {
				return &registry.EnrollError{Reason: registry.ReasonBadProof, Err: errors.New("the enrollment proof does not verify")}
			}
			return nil
		}
	}
	// Whether the enrollment is a recovery is known once the registry has
	// found it; refusals before that are audited as plain enrollments.
	recovery := false
	check := authorize
	authorize = func(e store.Enrollment, csr *x509.CertificateRequest) error {
		recovery = e.Recovery
		return check(e, csr)
	}
	d, cert, err := s.reg.Enroll(ctx, req.CSR, authorize)
	id := d.ID
	if err != nil {
		s.enrolledAs(ctx, req, method, csrName(req.CSR), recovery, err)
		return store.Device{}, nil, err
	}
	s.enrolledAs(ctx, req, method, id, recovery, nil)
	if req.ClaimToken != "" {
		// The device is enrolled whatever the token says; a bad token is
		// audited and leaves the device unowned.
		if _, err := s.Redeem(ctx, id, req.ClaimToken, req.Remote); err != nil {
			s.log.Warn("claim token sent with an enrollment refused", "device", id, "reason", claimReason(err))
		}
	}
	return d, cert, nil
}

func (s *Service) authorizeClaimName(ctx context.Context, name string) func(store.Enrollment, *x509.CertificateRequest) error {
	return func(e store.Enrollment, _ *x509.CertificateRequest) error {
		c, err := s.st.GetClaimCert(ctx, name)
		if err != nil {
			return &registry.EnrollError{Reason: registry.ReasonClaimUnknown, Err: err}
		}
		if c.Revoked() {
			return &registry.EnrollError{Reason: registry.ReasonClaimRevoked, Err: fmt.Errorf("claim certificate %q was revoked", name)}
		}
		if e.Method != store.EnrollClaim || e.Claim != name {
			return &registry.EnrollError{Reason: registry.ReasonNotOnAllowList,
				Err: fmt.Errorf("device %q is not on the allow-list of claim certificate %q", e.DeviceID, name)}
		}
		return nil
	}
}

// csrName is the common name a CSR claims, for audit lines about refused
// requests ("" if it does not parse).
func csrName(der []byte) string {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil || len(csr.Subject.CommonName) > 64 {
		return ""
	}
	return csr.Subject.CommonName
}

// enrolled audits, logs and counts the answer to an enrollment request.
func (s *Service) enrolled(ctx context.Context, req Request, method, id string, err error) {
	s.enrolledAs(ctx, req, method, id, false, err)
}

// enrolledAs is enrolled for a request whose enrollment may be a recovery
// one: its audit line says recovery "true", and a success counts as
// outcome "recovered" rather than "enrolled".
func (s *Service) enrolledAs(ctx context.Context, req Request, method, id string, recovery bool, err error) {
	ev := audit.Event{Action: "device.enroll", Outcome: "done", Remote: req.Remote,
		Details: map[string]string{"method": method, "via": req.Via}}
	if recovery {
		ev.Details["recovery"] = "true"
	}
	if id != "" {
		ev.Subject = "device:" + id
	}
	switch {
	case req.ClaimLeaf != nil:
		if _, name, e := claimIdentity(req.ClaimLeaf); e == nil {
			ev.Actor = "claim:" + name
		}
	case req.ClaimName != "":
		ev.Actor = "claim:" + req.ClaimName
	}
	outcome := "enrolled"
	if recovery {
		outcome = "recovered"
	}
	if err != nil {
		outcome = registry.EnrollReason(err)
		ev.Outcome, ev.Reason = "denied", outcome
		if outcome == "error" {
			ev.Outcome = "failed"
			s.log.Error("enrollment failed", "device", id, "via", req.Via, "recovery", recovery, "error", err)
		} else {
			s.log.Warn("enrollment refused", "device", id, "via", req.Via, "recovery", recovery, "reason", outcome, "remote", req.Remote)
		}
	} else if recovery {
		s.log.Info("device recovered: new certificate, earlier ones revoked", "device", id, "method", method, "via", req.Via)
	} else {
		s.log.Info("device enrolled", "device", id, "method", method, "via", req.Via)
	}
	s.enrolls.WithLabelValues(method, outcome).Inc()
	s.audit.Record(ctx, ev)
}

// Renew issues a renewed certificate to an authenticated, active device.
func (s *Service) Renew(ctx context.Context, deviceID string, csrDER []byte, via, remote string) (*x509.Certificate, error) {
	cert, err := s.reg.Renew(ctx, deviceID, csrDER)
	ev := audit.Event{Action: "device.renew", Outcome: "done", Actor: "device:" + deviceID, Subject: "device:" + deviceID,
		Remote: remote, Details: map[string]string{"via": via}}
	outcome := "renewed"
	if err != nil {
		outcome = registry.EnrollReason(err)
		ev.Outcome, ev.Reason = "denied", outcome
		if outcome == "error" {
			ev.Outcome = "failed"
			s.log.Error("renewal failed", "device", deviceID, "via", via, "error", err)
		} else {
			s.log.Warn("renewal refused", "device", deviceID, "via", via, "reason", outcome)
		}
	} else {
		ev.Details["serial"] = cert.SerialNumber.Text(16)
	}
	s.renewals.WithLabelValues(via, outcome).Inc()
	s.audit.Record(ctx, ev)
	return cert, err
}

// Chain returns the certificates a new device certificate is delivered
// with: the issuing CA (the root is pinned on the device already).
func (s *Service) Chain() []*x509.Certificate { return []*x509.Certificate{s.ca.Issuing()} }

// CACerts returns the certificates EST's cacerts answers: the root and the
// current issuing CA.
func (s *Service) CACerts() []*x509.Certificate {
	return []*x509.Certificate{s.ca.Root(), s.ca.Issuing()}
}
