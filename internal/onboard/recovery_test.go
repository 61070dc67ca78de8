package onboard

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

// memAudit keeps audit events in memory.
type memAudit struct {
	mu     sync.Mutex
	events []audit.Event
}

func (m *memAudit) Record(_ context.Context, e audit.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events = append(m.events, e)
}

// last returns the newest event with action.
func (m *memAudit) last(t *testing.T, action string) audit.Event {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := len(m.events) - 1; i >= 0; i-- {
		if m.events[i].Action == action {
			return m.events[i]
		}
	}
	t.Fatalf("no %s audit event", action)
	return audit.Event{}
}

type onboardFixture struct {
	svc     *Service
	reg     *registry.Registry
	st      *sqlite.Store
	audit   *memAudit
	metrics *prometheus.Registry
}

func newOnboardFixture(t *testing.T) *onboardFixture {
	t.Helper()
	dir := t.TempDir()
	master := make([]byte, keystore.MasterKeySize)
	if _, err := rand.Read(master); err != nil {
		t.Fatal(err)
	}
	ks, err := keystore.New(master)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Init(filepath.Join(dir, "pki"), ks, pki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "warden.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	reg := registry.New(st, ca, registry.Options{Sealer: ks})
	f := &onboardFixture{reg: reg, st: st, audit: &memAudit{}, metrics: prometheus.NewRegistry()}
	f.svc, err = New(Options{Registry: reg, Store: st, CA: ca, Keystore: ks, Audit: f.audit, Registerer: f.metrics})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// enrollCount returns warden_enroll_total{method, outcome}.
func (f *onboardFixture) enrollCount(t *testing.T, method, outcome string) float64 {
	t.Helper()
	mfs, err := f.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "warden_enroll_total" {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if (l.GetName() == "method" && l.GetValue() != method) || (l.GetName() == "outcome" && l.GetValue() != outcome) {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func (f *onboardFixture) preregister(t *testing.T, p Preregistration) enrollproto.SecretFile {
	t.Helper()
	files, err := f.svc.Preregister(context.Background(), []Preregistration{p})
	if err != nil {
		t.Fatalf("Preregister(%+v): %v", p, err)
	}
	return files[0]
}

// secretRequest is an EST enrollment of a fresh key for id, proved with
// secret.
func secretRequest(t *testing.T, id string, secret []byte) Request {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CreateCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return Request{CSR: csr, Proof: enrollproto.Proof(secret, id, csr), Via: "est", Remote: "192.0.2.1:4000"}
}

func TestRecoveryEnrollment(t *testing.T) {
	f := newOnboardFixture(t)
	ctx := context.Background()
	first := f.preregister(t, Preregistration{DeviceID: "dev-1", Model: "sensor-v2", Tags: map[string]string{"site": "lyon"}})
	if ev := f.audit.last(t, "device.preregister"); ev.Details["recovery"] != "" {
		t.Errorf("first preregistration audited as a recovery: %+v", ev)
	}
	_, cert1, err := f.svc.Enroll(ctx, secretRequest(t, "dev-1", first.Secret))
	if err != nil {
		t.Fatalf("first enrollment: %v", err)
	}
	if ev := f.audit.last(t, "device.enroll"); ev.Outcome != "done" || ev.Details["recovery"] != "" {
		t.Errorf("first enrollment audit = %+v", ev)
	}
	if n := f.enrollCount(t, store.EnrollSecret, "enrolled"); n != 1 {
		t.Errorf("warden_enroll_total{secret,enrolled} = %v, want 1", n)
	}

	// Without --recover the registered device cannot be preregistered.
	if _, err := f.svc.Preregister(ctx, []Preregistration{{DeviceID: "dev-1"}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Preregister(registered device) = %v, want ErrConflict", err)
	}
	// With a model or tags a recovery is refused: the device keeps its own.
	if _, err := f.svc.Preregister(ctx, []Preregistration{{DeviceID: "dev-1", Model: "other", Recovery: true}}); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("Preregister(recovery with a model) = %v, want ErrInvalid", err)
	}

	rec := f.preregister(t, Preregistration{DeviceID: "dev-1", Recovery: true})
	if bytes.Equal(rec.Secret, first.Secret) || rec.DeviceID != "dev-1" {
		t.Fatalf("recovery secret file = %+v, want a new secret for dev-1", rec)
	}
	if ev := f.audit.last(t, "device.preregister"); ev.Details["recovery"] != "true" || ev.Subject != "device:dev-1" {
		t.Errorf("recovery preregistration audit = %+v, want recovery \"true\"", ev)
	}

	// The first secret no longer works.
	if _, _, err := f.svc.Enroll(ctx, secretRequest(t, "dev-1", first.Secret)); registry.EnrollReason(err) != registry.ReasonBadProof {
		t.Errorf("Enroll(old secret) = %v, want a %s refusal", err, registry.ReasonBadProof)
	}
	if ev := f.audit.last(t, "device.enroll"); ev.Outcome != "denied" || ev.Reason != registry.ReasonBadProof || ev.Details["recovery"] != "true" {
		t.Errorf("refused recovery audit = %+v", ev)
	}

	req := secretRequest(t, "dev-1", rec.Secret)
	d, cert2, err := f.svc.Enroll(ctx, req)
	if err != nil {
		t.Fatalf("recovery enrollment: %v", err)
	}
	if d.ID != "dev-1" || d.Model != "sensor-v2" || d.Tags["site"] != "lyon" {
		t.Errorf("recovered device = %+v, want its model and tags kept", d)
	}
	if ev := f.audit.last(t, "device.enroll"); ev.Outcome != "done" || ev.Details["recovery"] != "true" ||
		ev.Details["method"] != store.EnrollSecret || ev.Subject != "device:dev-1" {
		t.Errorf("recovery audit = %+v", ev)
	}
	if n := f.enrollCount(t, store.EnrollSecret, "recovered"); n != 1 {
		t.Errorf("warden_enroll_total{secret,recovered} = %v, want 1", n)
	}
	if n := f.enrollCount(t, store.EnrollSecret, "enrolled"); n != 1 {
		t.Errorf("warden_enroll_total{secret,enrolled} = %v, want still 1", n)
	}
	if _, err := f.reg.Authenticate(ctx, cert1); registry.EnrollReason(err) != registry.ReasonCredentialRevoked {
		t.Errorf("Authenticate(first certificate) = %v, want %s", err, registry.ReasonCredentialRevoked)
	}
	if p, err := f.reg.Authenticate(ctx, cert2); err != nil || p != (identity.Principal{Kind: identity.KindDevice, ID: "dev-1"}) {
		t.Errorf("Authenticate(recovery certificate) = %v, %v", p, err)
	}

	// The same request again (a replay) is refused: single use.
	if _, _, err := f.svc.Enroll(ctx, req); registry.EnrollReason(err) != registry.ReasonEnrollmentUsed {
		t.Errorf("replayed recovery = %v, want a %s refusal", err, registry.ReasonEnrollmentUsed)
	}
}

// Over EST a refused recovery looks exactly like any other refusal.
func TestRecoveryRefusalsLookAlike(t *testing.T) {
	f := newOnboardFixture(t)
	ctx := context.Background()
	first := f.preregister(t, Preregistration{DeviceID: "dev-1"})
	if _, _, err := f.svc.Enroll(ctx, secretRequest(t, "dev-1", first.Secret)); err != nil {
		t.Fatal(err)
	}
	rec := f.preregister(t, Preregistration{DeviceID: "dev-1", Recovery: true})
	srv := httptest.NewServer(f.svc.Handler(HTTPOptions{}))
	defer srv.Close()

	post := func(req Request) (int, string) {
		t.Helper()
		hr, err := http.NewRequest(http.MethodPost, srv.URL+enrollproto.PathSimpleEnroll, bytes.NewReader(enrollproto.EncodeCSRBody(req.CSR)))
		if err != nil {
			t.Fatal(err)
		}
		hr.Header.Set("Content-Type", enrollproto.ContentTypePKCS10)
		hr.Header.Set(enrollproto.HeaderProof, enrollproto.EncodeProofHeader(req.Proof))
		resp, err := http.DefaultClient.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	wrong := make([]byte, enrollproto.SecretSize)
	code, want := post(secretRequest(t, "stranger", wrong))
	if code != http.StatusForbidden {
		t.Fatalf("enrollment of an unknown ID: HTTP %d, want 403", code)
	}
	for name, req := range map[string]Request{
		"recovery with a wrong secret":     secretRequest(t, "dev-1", wrong),
		"recovery with the first secret":   secretRequest(t, "dev-1", first.Secret),
		"recovery secret for another name": secretRequest(t, "dev-2", rec.Secret),
	} {
		if code, body := post(req); code != http.StatusForbidden || body != want {
			t.Errorf("%s: HTTP %d %q, want 403 %q like any refusal", name, code, body, want)
		}
	}
	if code, _ := post(secretRequest(t, "dev-1", rec.Secret)); code != http.StatusOK {
		t.Errorf("recovery with the recovery secret: HTTP %d, want 200", code)
	}
	if code, body := post(secretRequest(t, "dev-1", rec.Secret)); code != http.StatusForbidden || body != want {
		t.Errorf("second recovery: HTTP %d %q, want 403 %q", code, body, want)
	}
}
