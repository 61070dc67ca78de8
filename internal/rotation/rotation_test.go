package rotation

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeBroker stands in for the MQTT broker: it keeps retained messages and
// the certificate each "connected" device presents. The real broker is
// exercised by the end-to-end rotation test (internal/e2e).
type fakeBroker struct {
	mu       sync.Mutex
	retained map[string][]byte
	conns    map[string]*x509.Certificate
	cut      []string
}

func newFakeBroker() *fakeBroker {
	return &fakeBroker{retained: map[string][]byte{}, conns: map[string]*x509.Certificate{}}
}

func (b *fakeBroker) PublishRetained(topic string, payload []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.retained[topic] = payload
	return nil
}

func (b *fakeBroker) ClearRetained(topic string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.retained[topic]
	delete(b.retained, topic)
	return ok
}

func (b *fakeBroker) ConnectionCertificate(id string) (*x509.Certificate, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.conns[id]
	return c, ok
}

func (b *fakeBroker) CutWhere(match func(identity.Principal, *x509.Certificate) bool, reason string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for id, leaf := range b.conns {
		if match(identity.Principal{Kind: identity.KindDevice, ID: id}, leaf) {
			delete(b.conns, id)
			b.cut = append(b.cut, id)
			n++
		}
	}
	return n
}

func (b *fakeBroker) connect(id string, leaf *x509.Certificate) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.conns[id] = leaf
}

// delivery returns the certificate retained for id, or nil.
func (b *fakeBroker) delivery(t *testing.T, id string) *x509.Certificate {
	t.Helper()
	b.mu.Lock()
	payload, ok := b.retained[enrollproto.Topic(id, enrollproto.ChannelNew)]
	b.mu.Unlock()
	if !ok {
		return nil
	}
	r, err := enrollproto.ParseCertResponse(payload)
	if err != nil {
		t.Fatalf("delivery to %s does not parse: %v", id, err)
	}
	if !r.Rotation || r.Status != enrollproto.StatusIssued {
		t.Fatalf("delivery to %s: %+v, want an issued rotation", id, r)
	}
	certs, err := r.Certificates()
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

type fixture struct {
	ca    *pki.Authority
	st    *sqlite.Store
	reg   *registry.Registry
	clk   *clock
	b     *fakeBroker
	certs map[string]*x509.Certificate // each device's first certificate
	dir   string
	ks    *keystore.Keystore
}

func newFixture(t *testing.T, devices int) *fixture {
	t.Helper()
	dir := t.TempDir()
	master := make([]byte, keystore.MasterKeySize)
	_, _ = rand.Read(master)
	ks, err := keystore.New(master)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now().UTC()}
	ca, err := pki.Init(filepath.Join(dir, "pki"), ks, pki.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "warden.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	reg := registry.New(st, ca, registry.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: clk.Now, Sealer: ks})
	f := &fixture{ca: ca, st: st, reg: reg, clk: clk, b: newFakeBroker(), certs: map[string]*x509.Certificate{}, dir: dir, ks: ks}
	for i := range devices {
		id := fmt.Sprintf("dev-%03d", i)
		key, err := pki.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		csr, err := pki.CreateCSR(key, id)
		if err != nil {
			t.Fatal(err)
		}
		_, cert, err := reg.AddDevice(context.Background(), registry.DeviceSpec{ID: id}, csr)
		if err != nil {
			t.Fatal(err)
		}
		f.certs[id] = cert
	}
	return f
}

func (f *fixture) manager(t *testing.T, withBroker bool) *Manager {
	t.Helper()
	o := Options{
		Store: f.st, CA: f.ca, Registry: f.reg, Now: f.clk.Now,
		Chain:  func() []*x509.Certificate { return []*x509.Certificate{f.ca.Issuing()} },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if withBroker {
		o.Broker = f.b
	}
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func step(t *testing.T, m *Manager) {
	t.Helper()
	if err := m.Step(context.Background()); err != nil {
		t.Fatalf("Step: %v", err)
	}
}

func status(t *testing.T, m *Manager) Status {
	t.Helper()
	st, err := m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func issuerState(t *testing.T, ca *pki.Authority, fp string) string {
	t.Helper()
	for _, is := range ca.Issuers() {
		if is.Fingerprint == fp {
			return is.State
		}
	}
	t.Fatalf("no issuer %s", fp)
	return ""
}

func TestRotationSwitchesEveryDeviceThenRetires(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 5)
	m := f.manager(t, true)
	for id, c := range f.certs {
		f.b.connect(id, c)
	}
	r, err := m.Start(ctx, time.Hour, "operator", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(ctx, time.Hour, "operator", nil); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Start = %v, want ErrRunning", err)
	}
	step(t, m)
	st := status(t, m)
	if st.Total != 5 || st.Devices[store.RotationDeviceDelivered] != 5 {
		t.Fatalf("after a step: %+v, want 5 delivered", st.Devices)
	}
	// Every delivery is a registered certificate of the new issuer for the
	// device's own key.
	for id, old := range f.certs {
		c := f.b.delivery(t, id)
		if c == nil {
			t.Fatalf("no delivery to %s", id)
		}
		if is, ok := f.ca.IssuerOf(c); !ok || is.Fingerprint != r.NewIssuer {
			t.Fatalf("delivery to %s is not signed by the new issuer", id)
		}
		if !old.PublicKey.(interface{ Equal(x crypto.PublicKey) bool }).Equal(c.PublicKey) {
			t.Fatalf("delivery to %s changed the key", id)
		}
		if p, err := f.reg.Authenticate(ctx, c); err != nil || p.ID != id {
			t.Fatalf("registry does not know the delivery to %s: %v", id, err)
		}
	}
	// A device whose retained delivery the broker did not send when it
	// subscribed (a restored session) gets it again on its subscription.
	f.b.ClearRetained(enrollproto.Topic("dev-004", enrollproto.ChannelNew))
	if err := m.redeliver(ctx, r, "dev-004"); err != nil {
		t.Fatal(err)
	}
	if f.b.delivery(t, "dev-004") == nil {
		t.Fatal("no delivery on subscription")
	}
	// Four switch (one by the session observer, three found by the sweep);
	// the rotation keeps running for the fifth.
	ids := []string{"dev-000", "dev-001", "dev-002", "dev-003"}
	for _, id := range ids[1:] {
		f.b.connect(id, f.b.delivery(t, id))
	}
	if err := m.switched(ctx, r, ids[0], f.b.delivery(t, ids[0])); err != nil {
		t.Fatal(err)
	}
	step(t, m)
	st = status(t, m)
	if st.Switched() != 4 || st.Rotation.State != store.RotationRunning {
		t.Fatalf("after 4 switches: %+v (%s)", st.Devices, st.Rotation.State)
	}
	if f.b.delivery(t, "dev-001") != nil {
		t.Fatal("the delivery of a switched device is still retained")
	}
	if len(st.Waiting) != 1 || st.Waiting[0].DeviceID != "dev-004" {
		t.Fatalf("waiting = %+v, want dev-004", st.Waiting)
	}
	if issuerState(t, f.ca, r.OldIssuer) != pki.IssuerGrace {
		t.Fatal("old issuer left its grace period early")
	}
	f.b.connect("dev-004", f.b.delivery(t, "dev-004"))
	step(t, m)
	st = status(t, m)
	if st.Rotation.State != store.RotationCompleted || st.Switched() != 5 {
		t.Fatalf("after all switched: %+v (%s, %s)", st.Devices, st.Rotation.State, st.Rotation.Reason)
	}
	if got := issuerState(t, f.ca, r.OldIssuer); got != pki.IssuerRetired {
		t.Fatalf("old issuer is %s, want retired", got)
	}
	// A new rotation may start now.
	if _, err := m.Start(ctx, time.Hour, "operator", nil); err != nil {
		t.Fatalf("Start after completion: %v", err)
	}
}

func TestRotationGraceEndCutsStragglers(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 3)
	m := f.manager(t, true)
	r, err := m.Start(ctx, time.Hour, "operator", nil)
	if err != nil {
		t.Fatal(err)
	}
	step(t, m)
	f.b.connect("dev-000", f.b.delivery(t, "dev-000"))
	f.b.connect("dev-001", f.certs["dev-001"]) // never took its delivery
	step(t, m)
	f.clk.Add(time.Hour + time.Second)
	step(t, m)
	st := status(t, m)
	if st.Rotation.State != store.RotationCompleted {
		t.Fatalf("after the grace period: %s", st.Rotation.State)
	}
	if st.Switched() != 1 || st.Devices[store.RotationDeviceDelivered] != 2 {
		t.Fatalf("counts %+v, want 1 switched and 2 delivered", st.Devices)
	}
	if _, ok := f.b.ConnectionCertificate("dev-001"); ok {
		t.Fatal("dev-001 is still connected with a certificate of the retired issuer")
	}
	if _, ok := f.b.ConnectionCertificate("dev-000"); !ok {
		t.Fatal("dev-000, which switched, was cut")
	}
	if f.b.delivery(t, "dev-002") != nil {
		t.Fatal("an untaken delivery is still retained after the rotation")
	}
	if issuerState(t, f.ca, r.OldIssuer) != pki.IssuerRetired {
		t.Fatal("old issuer not retired")
	}
}

// TestRotationResumes plays the crashes a server can have mid-rotation.
func TestRotationResumes(t *testing.T) {
	ctx := context.Background()

	t.Run("offline CLI then server", func(t *testing.T) {
		f := newFixture(t, 4)
		var seen []int
		r, err := f.manager(t, false).Start(ctx, time.Hour, "operator", func(done, total int) {
			if total != 4 {
				t.Errorf("progress total %d", total)
			}
			seen = append(seen, done)
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(seen) != 4 || seen[3] != 4 {
			t.Fatalf("progress %v", seen)
		}
		st := status(t, f.manager(t, false))
		if st.Devices[store.RotationDeviceIssued] != 4 || len(f.b.retained) != 0 {
			t.Fatalf("offline: %+v, retained %d", st.Devices, len(f.b.retained))
		}
		m := f.manager(t, true) // the server starts
		step(t, m)
		if st := status(t, m); st.Devices[store.RotationDeviceDelivered] != 4 || st.Rotation.ID != r.ID {
			t.Fatalf("server: %+v", st.Devices)
		}
	})

	t.Run("credential stored but not recorded", func(t *testing.T) {
		f := newFixture(t, 2)
		m := f.manager(t, true)
		r, err := m.Start(ctx, time.Hour, "operator", nil)
		if err != nil {
			t.Fatal(err)
		}
		// The registry stored a re-issued credential, then the process died
		// before the rotation recorded it.
		orphan, err := f.reg.Reissue(ctx, "dev-000")
		if err != nil {
			t.Fatal(err)
		}
		before, _ := f.st.Credentials(ctx, identity.KindDevice, "dev-000")
		step(t, f.manager(t, true))
		after, _ := f.st.Credentials(ctx, identity.KindDevice, "dev-000")
		if len(after) != len(before) {
			t.Fatalf("credentials %d -> %d: the resumed rotation issued again instead of delivering the stored one", len(before), len(after))
		}
		if got := f.b.delivery(t, "dev-000"); got == nil || !got.Equal(orphan) {
			t.Fatal("the stored credential was not the one delivered")
		}
		_ = r
	})

	t.Run("CA rotated without a record", func(t *testing.T) {
		f := newFixture(t, 3)
		old := f.ca.Issuers()[0]
		if _, err := f.ca.Rotate(2 * time.Hour); err != nil {
			t.Fatal(err)
		}
		m := f.manager(t, true)
		if err := m.adopt(ctx); err != nil {
			t.Fatal(err)
		}
		st := status(t, m)
		if st.Rotation == nil || st.Rotation.OldIssuer != old.Fingerprint || st.Rotation.NewIssuer != f.ca.Issuers()[0].Fingerprint || st.Total != 3 {
			t.Fatalf("adopted %+v", st.Rotation)
		}
		// Adopting is done once.
		if err := m.adopt(ctx); err != nil {
			t.Fatal(err)
		}
		all, _ := f.st.ListRotations(ctx)
		if len(all) != 1 {
			t.Fatalf("%d rotations after a second adopt", len(all))
		}
		step(t, m)
		if st := status(t, m); st.Devices[store.RotationDeviceDelivered] != 3 {
			t.Fatalf("after adopting: %+v", st.Devices)
		}
	})

	t.Run("crash while finishing", func(t *testing.T) {
		f := newFixture(t, 1)
		m := f.manager(t, true)
		r, err := m.Start(ctx, time.Hour, "operator", nil)
		if err != nil {
			t.Fatal(err)
		}
		step(t, m)
		// Retired, then the process died before recording the end.
		if err := f.ca.RetireIssuer(r.OldIssuer); err != nil {
			t.Fatal(err)
		}
		step(t, f.manager(t, true))
		if st := status(t, m); st.Rotation.State != store.RotationCompleted {
			t.Fatalf("state %s", st.Rotation.State)
		}
	})
}

func TestRotationFailuresAndRefusals(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 3)
	m := f.manager(t, true)
	if _, err := m.Start(ctx, 0, "operator", nil); !errors.Is(err, registry.ErrInvalid) {
		t.Fatalf("grace 0: %v", err)
	}
	if _, err := f.reg.Disable(ctx, "dev-001", "in the drawer"); err != nil {
		t.Fatal(err)
	}
	r, err := m.Start(ctx, time.Hour, "operator", nil)
	if err != nil {
		t.Fatal(err)
	}
	// A device revoked after the rotation began gets nothing.
	if _, err := f.reg.Revoke(ctx, "dev-002", "stolen"); err != nil {
		t.Fatal(err)
	}
	step(t, m)
	st := status(t, m)
	if st.Total != 2 {
		t.Fatalf("a disabled device is part of the rotation: %+v", st.Devices)
	}
	if st.Devices[store.RotationDeviceFailed] != 1 || len(st.Failed) != 1 || st.Failed[0].DeviceID != "dev-002" || st.Failed[0].Reason != registry.ReasonDeviceRevoked {
		t.Fatalf("failed %+v", st.Failed)
	}
	if f.b.delivery(t, "dev-002") != nil {
		t.Fatal("a revoked device got a delivery")
	}

	// Issuer names: unknown, ambiguous-short, current.
	if _, err := m.RetireIssuer(ctx, "abc", "operator"); !errors.Is(err, pki.ErrUnknownIssuer) {
		t.Fatalf("short fingerprint: %v", err)
	}
	if _, err := m.RevokeIssuer(ctx, "0123456789abcdef", "x", "operator"); !errors.Is(err, pki.ErrUnknownIssuer) {
		t.Fatalf("unknown fingerprint: %v", err)
	}
	if _, err := m.RevokeIssuer(ctx, r.NewIssuer, "x", "operator"); !errors.Is(err, registry.ErrInvalid) {
		t.Fatalf("revoking the current issuer: %v", err)
	}

	// Revoking the old issuer cuts its connections and ends the rotation.
	f.b.connect("dev-000", f.certs["dev-000"])
	cut, err := m.RevokeIssuer(ctx, r.OldIssuer[:12], "key leaked", "operator")
	if err != nil || cut != 1 {
		t.Fatalf("RevokeIssuer = %d, %v; want 1 cut", cut, err)
	}
	step(t, m)
	st = status(t, m)
	if st.Rotation.State != store.RotationCompleted || issuerState(t, f.ca, r.OldIssuer) != pki.IssuerRevoked {
		t.Fatalf("after revoking the old issuer: %s, issuer %s", st.Rotation.State, issuerState(t, f.ca, r.OldIssuer))
	}
	if f.b.delivery(t, "dev-000") != nil {
		t.Fatal("untaken delivery kept after the rotation ended")
	}
}

func TestObserveNeverBlocks(t *testing.T) {
	f := newFixture(t, 1)
	m := f.manager(t, true)
	p := identity.Principal{Kind: identity.KindDevice, ID: "dev-000"}
	m.SessionEstablished(p, f.certs["dev-000"]) // no rotation: ignored
	if len(m.seen) != 0 {
		t.Fatal("observation queued without a running rotation")
	}
	if _, err := m.Start(context.Background(), time.Hour, "operator", nil); err != nil {
		t.Fatal(err)
	}
	for range cap(m.seen) + 10 {
		m.SessionEstablished(p, f.certs["dev-000"])
	}
	if got := testutil.ToFloat64(m.metrics.dropped); got != 10 {
		t.Fatalf("dropped %v observations, want 10", got)
	}
}

func TestRotateNeedsTheRootKey(t *testing.T) {
	f := newFixture(t, 1)
	if err := f.ca.RemoveRootKey(); err != nil {
		t.Fatal(err)
	}
	m := f.manager(t, true)
	_, err := m.Start(context.Background(), time.Hour, "operator", nil)
	if !errors.Is(err, pki.ErrNoRootKey) || !strings.Contains(err.Error(), "import-root-key") {
		t.Fatalf("Start without the root key: %v", err)
	}
	if st := status(t, m); st.Rotation != nil || len(st.Issuers) != 1 {
		t.Fatalf("a failed rotation left %+v", st)
	}
}
