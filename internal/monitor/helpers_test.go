package monitor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

// t0 is midnight UTC: a multiple of every window the tests use, so that a
// burst that starts at t0 falls into one fixed interval of the sliding
// window and its count is exact.
var t0 = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func (c *fakeClock) advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// call is one call the fake responder received.
type call struct{ op, device, reason string }

type fakeResponder struct {
	mu    sync.Mutex
	calls []call
}

func (r *fakeResponder) Disconnect(_ context.Context, id, reason string) {
	r.record(call{"disconnect", id, reason})
}

func (r *fakeResponder) Quarantine(_ context.Context, id, reason string) error {
	r.record(call{"quarantine", id, reason})
	return nil
}

func (r *fakeResponder) Release(_ context.Context, id string) error {
	r.record(call{"release", id, ""})
	return nil
}

func (r *fakeResponder) record(c call) {
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
}

func (r *fakeResponder) ops() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.calls {
		out = append(out, c.op+" "+c.device)
	}
	return out
}

// auditLog records audit events in memory.
type auditLog struct {
	mu     sync.Mutex
	events []audit.Event
}

func (a *auditLog) Record(_ context.Context, e audit.Event) {
	a.mu.Lock()
	a.events = append(a.events, e)
	a.mu.Unlock()
}

func (a *auditLog) actions() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, e := range a.events {
		out = append(out, e.Action)
	}
	return out
}

// firmwarePolicy is a fixed allowed set per model.
type firmwarePolicy map[string][]string

func (p firmwarePolicy) AllowedVersions(_ context.Context, model string) ([]string, bool, error) {
	v, ok := p[model]
	return v, ok, nil
}

// harness is a Monitor on a real SQLite store with a fake clock.
type harness struct {
	t     testing.TB
	m     *Monitor
	st    *sqlite.Store
	clk   *fakeClock
	resp  *fakeResponder
	audit *auditLog
	path  string
}

type harnessOptions struct {
	cfg       func(*config.Monitor)
	noResp    bool
	firmware  FirmwarePolicy
	webhook   *Webhook
	storePath string
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

func newHarness(t testing.TB, o harnessOptions) *harness {
	t.Helper()
	path := o.storePath
	if path == "" {
		path = filepath.Join(t.TempDir(), "warden.db")
	}
	st, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := &harness{t: t, st: st, clk: &fakeClock{t: t0}, resp: &fakeResponder{}, audit: &auditLog{}, path: path}
	cfg := config.DefaultMonitor()
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	opts := Options{Store: st, Clock: h.clk.now, Config: cfg, Responder: h.resp, Audit: h.audit, Logger: quietLogger(),
		Certificates: st, Firmware: o.firmware, Webhook: o.webhook}
	if o.noResp {
		opts.Responder = nil
	}
	m, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	return h
}

// process runs the worker over what is queued, as Run would.
func (h *harness) process() {
	h.m.drain(context.Background())
}

// tick runs the periodic checks at the current fake time.
func (h *harness) tick() {
	h.m.periodic(context.Background())
	h.process()
}

func (h *harness) alerts() []store.Alert {
	h.t.Helper()
	as, err := h.st.ListAlerts(context.Background(), store.AlertFilter{Limit: store.MaxListLimit})
	if err != nil {
		h.t.Fatal(err)
	}
	slices.Reverse(as) // oldest first
	return as
}

// addDevice registers a device whose certificate is valid from notBefore
// to notAfter.
func (h *harness) addDevice(id string, notBefore, notAfter time.Time) store.Credential {
	h.t.Helper()
	cert := []byte("cert-" + id + notAfter.String())
	sum := sha256.Sum256(cert)
	c := store.Credential{
		Serial: hex.EncodeToString(sum[:8]), SubjectKind: identity.KindDevice, SubjectID: id, Fingerprint: hex.EncodeToString(sum[:]),
		NotBefore: notBefore, NotAfter: notAfter, Certificate: cert, CreatedAt: notBefore,
	}
	d := store.Device{ID: id, Model: "sensor-v2", State: store.StateActive, CreatedAt: notBefore}
	if err := h.st.CreateDevice(context.Background(), d, c); err != nil {
		h.t.Fatal(err)
	}
	return c
}

// counterValue reads a counter or gauge.
func counterValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}
