package sealing

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

type fixture struct {
	reg  *registry.Registry
	st   *sqlite.Store
	seal *Sealing
	prom *prometheus.Registry
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	master := make([]byte, keystore.MasterKeySize)
	rand.Read(master)
	ks, _ := keystore.New(master)
	ca, err := pki.Init(filepath.Join(dir, "pki"), ks, pki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := registry.New(st, ca, registry.Options{Logger: log, Sealer: ks})
	f := &fixture{reg: reg, st: st, prom: prometheus.NewRegistry()}
	f.seal = New(reg, log, nil, f.prom)
	reg.Subscribe(func(e registry.Event) { f.seal.Invalidate(e.Principal.ID) })
	return f
}

// addEnvelopeDevice registers id with an envelope key of suite and returns
// the device's secret.
func (f *fixture) addEnvelopeDevice(t *testing.T, id, suite string) []byte {
	t.Helper()
	key, _ := pki.GenerateKey()
	csr, _ := pki.CreateCSR(key, id)
	if _, _, err := f.reg.AddDevice(context.Background(), registry.DeviceSpec{ID: id}, csr); err != nil {
		t.Fatal(err)
	}
	sec, err := f.reg.EnableEnvelope(context.Background(), id, suite, false)
	if err != nil {
		t.Fatal(err)
	}
	return sec.Secret
}

func (f *fixture) failures(reason string) float64 {
	return testutil.ToFloat64(f.seal.failures.WithLabelValues(reason))
}

func keys(t *testing.T, secret []byte, id string, epoch uint32, suite envelope.Suite, dir envelope.Direction) *envelope.Keys {
	t.Helper()
	k, err := envelope.DeriveKeys(secret, id, epoch, suite, dir)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestUplinksOpenOnceAndOnlyWhereTheyWereSent(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	secret := f.addEnvelopeDevice(t, "dev1", "ccm-8")
	other := f.addEnvelopeDevice(t, "dev2", "ccm-8")
	up := keys(t, secret, "dev1", 0, envelope.CCM8, envelope.Uplink)
	topic := "private/dev1/up/telemetry"

	msg, _ := envelope.Seal(up, 0, topic, []byte(`{"t":21}`))
	o, err := f.seal.OpenUplink(ctx, "dev1", topic, msg)
	if err != nil || string(o.Plaintext) != `{"t":21}` || o.Header.Seq != 0 {
		t.Fatalf("open: %+v %v", o, err)
	}
	if _, err := f.seal.OpenUplink(ctx, "dev1", topic, msg); !errors.Is(err, envelope.ErrOpen) || f.failures("replay") != 1 {
		t.Fatalf("replay: %v (replays counted %v)", err, f.failures("replay"))
	}
	m1, _ := envelope.Seal(up, 1, topic, []byte("x"))
	if _, err := f.seal.OpenUplink(ctx, "dev1", "private/dev1/up/other", m1); !errors.Is(err, envelope.ErrOpen) || f.failures("bad-tag") != 1 {
		t.Fatalf("moved to another topic: %v", err)
	}
	// The failure did not burn the number: the genuine message still opens.
	if _, err := f.seal.OpenUplink(ctx, "dev1", topic, m1); err != nil {
		t.Fatalf("genuine message after a failed copy: %v", err)
	}
	flipped := append([]byte(nil), m1...)
	flipped[len(flipped)-1] ^= 1
	if _, err := f.seal.OpenUplink(ctx, "dev1", topic, flipped); !errors.Is(err, envelope.ErrOpen) {
		t.Fatal("flipped bit accepted")
	}
	// Another device's key.
	foreign, _ := envelope.Seal(keys(t, other, "dev1", 0, envelope.CCM8, envelope.Uplink), 5, topic, []byte("x"))
	if _, err := f.seal.OpenUplink(ctx, "dev1", topic, foreign); !errors.Is(err, envelope.ErrOpen) {
		t.Fatal("another device's key accepted")
	}
	// Downgrade to the legacy suite.
	legacy, _ := envelope.Seal(keys(t, secret, "dev1", 0, envelope.LegacyCBCHMAC, envelope.Uplink), 6, topic, []byte("x"))
	if _, err := f.seal.OpenUplink(ctx, "dev1", topic, legacy); !errors.Is(err, envelope.ErrOpen) || f.failures("downgrade") != 1 {
		t.Fatalf("downgrade: %v (%v)", err, f.failures("downgrade"))
	}
	// Not an envelope device.
	key, _ := pki.GenerateKey()
	csr, _ := pki.CreateCSR(key, "plain")
	f.reg.AddDevice(ctx, registry.DeviceSpec{ID: "plain"}, csr)
	if _, err := f.seal.OpenUplink(ctx, "plain", "private/plain/up/t", msg); !errors.Is(err, ErrNotEnvelopeDevice) {
		t.Fatalf("non-envelope device: %v", err)
	}

	// A restart (a new Sealing on the same store) still refuses the replay.
	restarted := New(f.reg, nil, nil, nil)
	if _, err := restarted.OpenUplink(ctx, "dev1", topic, msg); !errors.Is(err, envelope.ErrOpen) {
		t.Fatal("replay accepted after a restart")
	}
}

func TestConnectPasswordsAreSingleUse(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	secret := f.addEnvelopeDevice(t, "dev1", "legacy-cbc-hmac")
	up := keys(t, secret, "dev1", 0, envelope.LegacyCBCHMAC, envelope.Uplink)
	pw, _ := envelope.ConnectPassword(up, 0)
	if err := f.seal.CheckConnectPassword(ctx, "dev1", pw); err != nil {
		t.Fatal(err)
	}
	if err := f.seal.CheckConnectPassword(ctx, "dev1", pw); !errors.Is(err, envelope.ErrOpen) {
		t.Fatal("a password worked twice")
	}
	if err := f.seal.CheckConnectPassword(ctx, "dev1", []byte("not hex!")); !errors.Is(err, envelope.ErrOpen) {
		t.Fatal("junk password accepted")
	}
	// Messages and passwords share one sequence space.
	m, _ := envelope.Seal(up, 0, "private/dev1/up/t", []byte("x"))
	if _, err := f.seal.OpenUplink(ctx, "dev1", "private/dev1/up/t", m); !errors.Is(err, envelope.ErrOpen) {
		t.Fatal("a message reused the password's sequence number")
	}
}

func TestDownlinksAndRekey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	secret := f.addEnvelopeDevice(t, "dev1", "ccm-8")
	down := keys(t, secret, "dev1", 0, envelope.CCM8, envelope.Downlink)
	topic := "private/dev1/down/cmd"
	var w envelope.ReplayWindow
	var last uint64
	for i := 0; i < 3; i++ {
		msg, err := f.seal.SealDownlink(ctx, "dev1", topic, []byte("stop"))
		if err != nil {
			t.Fatal(err)
		}
		pt, h, err := envelope.Open(down, topic, msg)
		if err != nil || string(pt) != "stop" {
			t.Fatalf("device cannot open the downlink: %v", err)
		}
		if err := w.Commit(h.Seq); err != nil {
			t.Fatalf("downlink sequence number %d repeated: %v", h.Seq, err)
		}
		last = h.Seq
	}
	// A restart continues above every number used (persist ahead).
	restarted := New(f.reg, nil, nil, nil)
	msg, _ := restarted.SealDownlink(ctx, "dev1", topic, []byte("go"))
	_, h, _ := envelope.Open(down, topic, msg)
	if h.Seq <= last {
		t.Fatalf("after a restart the downlink sequence number %d is not above %d", h.Seq, last)
	}

	// Rekey: the new secret travels sealed under the old epoch.
	pending, err := f.reg.BeginRekey(ctx, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	rekeyTopic := "private/dev1/down/" + RekeyChannel
	rm, err := f.seal.RekeyMessage(ctx, "dev1", rekeyTopic, pending)
	if err != nil {
		t.Fatal(err)
	}
	pt, _, err := envelope.Open(down, rekeyTopic, rm)
	if err != nil || len(pt) != 20 || binary.BigEndian.Uint32(pt) != pending.Epoch {
		t.Fatalf("rekey message: %x %v", pt, err)
	}
	newSecret := pt[4:]
	// The old epoch still works until the device uses the new one.
	oldUp := keys(t, secret, "dev1", 0, envelope.CCM8, envelope.Uplink)
	m, _ := envelope.Seal(oldUp, 0, "private/dev1/up/t", []byte("old"))
	if _, err := f.seal.OpenUplink(ctx, "dev1", "private/dev1/up/t", m); err != nil {
		t.Fatalf("old epoch refused before the device confirmed: %v", err)
	}
	newUp := keys(t, newSecret, "dev1", pending.Epoch, envelope.CCM8, envelope.Uplink)
	m, _ = envelope.Seal(newUp, 0, "private/dev1/up/t", []byte("new"))
	if o, err := f.seal.OpenUplink(ctx, "dev1", "private/dev1/up/t", m); err != nil || o.Epoch != pending.Epoch {
		t.Fatalf("new epoch: %+v %v", o, err)
	}
	ks, _ := f.st.EnvelopeKeys(ctx, "dev1")
	states := map[uint32]store.EnvelopeState{}
	for _, k := range ks {
		states[k.Epoch] = k.State
	}
	if states[0] != store.EnvelopeRetired || states[pending.Epoch] != store.EnvelopeActive {
		t.Fatalf("after confirmation: %v", states)
	}
	m, _ = envelope.Seal(oldUp, 1, "private/dev1/up/t", []byte("old again"))
	if _, err := f.seal.OpenUplink(ctx, "dev1", "private/dev1/up/t", m); !errors.Is(err, envelope.ErrOpen) {
		t.Fatal("old epoch accepted after the rekey was confirmed")
	}
	// Downlinks now use the new epoch.
	msg, _ = f.seal.SealDownlink(ctx, "dev1", topic, []byte("hello"))
	if _, _, err := envelope.Open(keys(t, newSecret, "dev1", pending.Epoch, envelope.CCM8, envelope.Downlink), topic, msg); err != nil {
		t.Fatalf("downlink after rekey: %v", err)
	}
}

func BenchmarkOpenUplink64(b *testing.B) {
	t := &testing.T{}
	f := newFixture(t)
	if err := f.seal.OpenJournal(context.Background(), filepath.Join(b.TempDir(), "j")); err != nil {
		b.Fatal(err)
	}
	secret := f.addEnvelopeDevice(t, "dev1", "ccm-8")
	up := keys(t, secret, "dev1", 0, envelope.CCM8, envelope.Uplink)
	topic := "private/dev1/up/telemetry"
	payload := make([]byte, 64)
	msgs := make([][]byte, b.N)
	for i := range msgs {
		msgs[i], _ = envelope.Seal(up, uint64(i), topic, payload)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.seal.OpenUplink(context.Background(), "dev1", topic, msgs[i]); err != nil {
			b.Fatal(err)
		}
	}
}

func TestRekeyIsTriggeredBeforeNumbersRunOut(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	secret := f.addEnvelopeDevice(t, "dev1", "ccm-8")
	due := make(chan string, 4)
	f.seal.OnRekeyDue = func(id string) { due <- id }
	up := keys(t, secret, "dev1", 0, envelope.CCM8, envelope.Uplink)
	for _, seq := range []uint64{envelope.RekeyThreshold - 1, envelope.RekeyThreshold, envelope.RekeyThreshold + 1} {
		m, _ := envelope.Seal(up, seq, "private/dev1/up/t", nil)
		if _, err := f.seal.OpenUplink(ctx, "dev1", "private/dev1/up/t", m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case id := <-due:
		if id != "dev1" {
			t.Fatalf("rekey due for %q", id)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no rekey triggered past the threshold")
	}
	select {
	case <-due:
		t.Fatal("rekey triggered twice for one epoch")
	case <-time.After(100 * time.Millisecond):
	}
}

type sink struct{ got []events.Event }

func (s *sink) Observe(e events.Event) { s.got = append(s.got, e) }

// Only failures on authenticated sessions reach the monitor as the
// device's: a claimed ID (CONNECT passwords, sealed HTTPS) could name
// anyone.
func TestRejectionsReachTheMonitorOnlyFromAuthenticatedSessions(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	secret := f.addEnvelopeDevice(t, "dev1", "ccm-8")
	ev := &sink{}
	f.seal.Events = ev
	topic := "private/dev1/up/telemetry"
	msg, _ := envelope.Seal(keys(t, secret, "dev1", 0, envelope.CCM8, envelope.Uplink), 0, topic, []byte("x"))
	if _, err := f.seal.OpenUplink(ctx, "dev1", topic, msg); err != nil {
		t.Fatal(err)
	}
	_, _ = f.seal.OpenUplink(Unverified(ctx), "dev1", topic, msg) // a replay, unverified
	_ = f.seal.CheckConnectPassword(ctx, "dev1", []byte("garbage"))
	if len(ev.got) != 0 {
		t.Fatalf("unverified failures reported as the device's: %+v", ev.got)
	}
	_, _ = f.seal.OpenUplink(ctx, "dev1", topic, msg) // a replay on the device's session
	if len(ev.got) != 1 || ev.got[0].Kind != events.EnvelopeRejected || ev.got[0].Device != "dev1" || ev.got[0].Reason != "replay" {
		t.Fatalf("events %+v", ev.got)
	}
	if f.failures("replay") != 2 {
		t.Fatalf("every failure is still counted: %v", f.failures("replay"))
	}
}
