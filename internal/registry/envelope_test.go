package registry

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

func (f *fixture) enable(t *testing.T, id, suite string, required bool) EnvelopeSecret {
	t.Helper()
	s, err := f.reg.EnableEnvelope(context.Background(), id, suite, required)
	if err != nil {
		t.Fatalf("EnableEnvelope(%q, %s): %v", id, suite, err)
	}
	return s
}

func (f *fixture) secrets(t *testing.T, id string) []EnvelopeSecret {
	t.Helper()
	ss, err := f.reg.EnvelopeSecrets(context.Background(), id)
	if err != nil {
		t.Fatalf("EnvelopeSecrets(%q): %v", id, err)
	}
	return ss
}

func (f *fixture) storedKeys(t *testing.T, id string) []store.EnvelopeKey {
	t.Helper()
	ks, err := f.st.EnvelopeKeys(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// envelopeReasons lists the reasons of the device's envelope-changed events.
func (f *fixture) envelopeReasons(id string) []string {
	var out []string
	for _, e := range f.eventsOf(EventEnvelopeChanged, id) {
		out = append(out, e.Reason)
	}
	return out
}

// sqlDB opens a second, independent handle on the fixture's database, to
// tamper with rows the way an attacker with write access to the file could.
func (f *fixture) sqlDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+f.dbPath+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// noSecretIn fails if any secret shows up in text, raw or encoded.
func noSecretIn(t *testing.T, what string, text []byte, secrets ...[]byte) {
	t.Helper()
	for _, s := range secrets {
		if len(s) == 0 {
			continue
		}
		lower := []byte(hex.EncodeToString(s))
		for _, enc := range [][]byte{s, lower, bytes.ToUpper(lower), []byte(base64.StdEncoding.EncodeToString(s)), []byte(base64.RawURLEncoding.EncodeToString(s))} {
			if bytes.Contains(text, enc) {
				t.Errorf("%s contains a secret", what)
				return
			}
		}
	}
}

func TestEnableEnvelope(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "dev-1", nil)
	f.addDevice(t, "dev-2", nil)

	s1 := f.enable(t, "dev-1", "ccm-8", true)
	if s1.Epoch != FirstEnvelopeEpoch || s1.Suite != "ccm-8" || s1.State != store.EnvelopeActive || len(s1.Secret) != envelope.MasterSecretSize {
		t.Fatalf("EnableEnvelope = %v with a %d-byte secret", s1, len(s1.Secret))
	}
	if bytes.Equal(s1.Secret, make([]byte, envelope.MasterSecretSize)) {
		t.Fatal("the secret is all zeros")
	}
	s2 := f.enable(t, "dev-2", "legacy-cbc-hmac", false)
	if bytes.Equal(s1.Secret, s2.Secret) {
		t.Fatal("two devices got the same secret")
	}

	// Round trip through the store and the keystore.
	got := f.secrets(t, "dev-1")
	if len(got) != 1 || got[0].Epoch != s1.Epoch || got[0].Suite != "ccm-8" || got[0].State != store.EnvelopeActive || !bytes.Equal(got[0].Secret, s1.Secret) {
		t.Fatalf("EnvelopeSecrets = %v, want the enabled key", got)
	}
	p, err := f.reg.EnvelopePolicy(ctx, "dev-1")
	if err != nil || p.MinSuite != "ccm-8" || !p.Required || p.DeviceID != "dev-1" {
		t.Errorf("EnvelopePolicy = %+v, %v", p, err)
	}
	if p, err := f.reg.EnvelopePolicy(ctx, "dev-2"); err != nil || p.MinSuite != "legacy-cbc-hmac" || p.Required {
		t.Errorf("EnvelopePolicy(dev-2) = %+v, %v", p, err)
	}

	// What the database holds is sealed: not the secret, not containing it,
	// and it opens under the record name only.
	ks := f.storedKeys(t, "dev-1")
	if len(ks) != 1 {
		t.Fatalf("stored keys: %d", len(ks))
	}
	sealed := ks[0].SealedSecret
	if len(sealed) <= len(s1.Secret) || bytes.Contains(sealed, s1.Secret) {
		t.Fatalf("stored blob %d bytes; it must be sealed, not the secret", len(sealed))
	}
	if pt, err := f.ks.Open("envelope/dev-1/0", sealed); err != nil || !bytes.Equal(pt, s1.Secret) {
		t.Errorf("keystore.Open(envelope/dev-1/0) = %v", err)
	}
	var raw []byte
	if err := f.sqlDB(t).QueryRowContext(ctx, `SELECT sealed_secret FROM envelope_keys WHERE device_id = 'dev-1'`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	noSecretIn(t, "the database row", raw, s1.Secret)

	if ev := f.envelopeReasons("dev-1"); !slices.Equal(ev, []string{"enabled"}) {
		t.Errorf("envelope events = %v, want [enabled]", ev)
	}

	// sign-p256 has no secret to generate.
	f.addDevice(t, "dev-3", nil)
	s3 := f.enable(t, "dev-3", "sign-p256", false)
	if s3.Secret != nil || s3.Suite != "sign-p256" {
		t.Errorf("sign-p256 EnableEnvelope = %v, secret %d bytes", s3, len(s3.Secret))
	}
	if got := f.secrets(t, "dev-3"); len(got) != 1 || got[0].Secret != nil {
		t.Errorf("sign-p256 EnvelopeSecrets = %v", got)
	}

	f.addDevice(t, "dev-4", nil)
	if _, err := f.reg.Revoke(ctx, "dev-4", "stolen"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, id, suite string
		want            error
	}{
		{"already enabled", "dev-1", "ccm-8", store.ErrConflict},
		{"unknown suite", "dev-5", "aes-gcm", ErrInvalid},
		{"empty suite", "dev-5", "", ErrInvalid},
		{"suite in another case", "dev-5", "CCM-8", ErrInvalid},
		{"bad device ID", "a/b", "ccm-8", ErrInvalid},
		{"missing device", "dev-5", "ccm-8", store.ErrNotFound},
		{"revoked device", "dev-4", "ccm-8", store.ErrRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := f.reg.EnableEnvelope(ctx, tc.id, tc.suite, false)
			if !errors.Is(err, tc.want) {
				t.Fatalf("EnableEnvelope = %v, %v; want %v", s, err, tc.want)
			}
			if s.Secret != nil {
				t.Error("a secret was returned with the error")
			}
		})
	}
	if got := f.secrets(t, "dev-1"); len(got) != 1 || !bytes.Equal(got[0].Secret, s1.Secret) {
		t.Error("a refused EnableEnvelope changed the device's key")
	}
	if _, err := f.reg.EnvelopePolicy(ctx, "dev-4"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoked device got a policy: %v", err)
	}

	// Nothing secret reached the log.
	f.logs.mu.Lock()
	logs := slices.Clone(f.logs.b.Bytes())
	f.logs.mu.Unlock()
	noSecretIn(t, "the log", logs, s1.Secret, s2.Secret)
	if !bytes.Contains(logs, []byte(`"device":"dev-1"`)) || !bytes.Contains(logs, []byte(`"event":"envelope-changed"`)) {
		t.Errorf("no envelope-changed log line for dev-1 in:\n%s", logs)
	}
}

// A sealed blob cannot be moved to another device or another epoch: the
// record name it was sealed under names both.
func TestEnvelopeSealedUnderRecordName(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "dev-1", nil)
	f.addDevice(t, "dev-2", nil)
	f.enable(t, "dev-1", "ccm-8", false)
	f.enable(t, "dev-2", "ccm-8", false)
	if _, err := f.reg.BeginRekey(ctx, "dev-2"); err != nil {
		t.Fatal(err)
	}
	db := f.sqlDB(t)
	blob := func(id string, epoch int) []byte {
		var b []byte
		if err := db.QueryRowContext(ctx, `SELECT sealed_secret FROM envelope_keys WHERE device_id = ? AND epoch = ?`, id, epoch).Scan(&b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	put := func(id string, epoch int, b []byte) {
		if _, err := db.ExecContext(ctx, `UPDATE envelope_keys SET sealed_secret = ? WHERE device_id = ? AND epoch = ?`, b, id, epoch); err != nil {
			t.Fatal(err)
		}
	}
	own1, own20, own21 := blob("dev-1", 0), blob("dev-2", 0), blob("dev-2", 1)

	for _, tc := range []struct {
		name  string
		id    string
		epoch int
		blob  []byte
	}{
		{"another device's blob", "dev-1", 0, own20},
		{"another epoch's blob", "dev-2", 0, own21},
		{"a truncated blob", "dev-1", 0, own1[:len(own1)-1]},
		{"a flipped bit", "dev-1", 0, func() []byte { b := slices.Clone(own1); b[len(b)-1] ^= 1; return b }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := blob(tc.id, tc.epoch)
			put(tc.id, tc.epoch, tc.blob)
			defer put(tc.id, tc.epoch, orig)
			ss, err := f.reg.EnvelopeSecrets(ctx, tc.id)
			if !errors.Is(err, keystore.ErrCannotOpen) {
				t.Fatalf("EnvelopeSecrets with %s = %v, %v; want keystore.ErrCannotOpen", tc.name, ss, err)
			}
			if ss != nil {
				t.Error("secrets returned with the error")
			}
		})
	}
	// Restored, both open again.
	if len(f.secrets(t, "dev-1")) != 1 || len(f.secrets(t, "dev-2")) != 2 {
		t.Fatal("restored blobs do not open")
	}
}

func TestRekey(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "dev-1", nil)
	s0 := f.enable(t, "dev-1", "ccm-8", false)

	f.clock.Set(f.clock.Now().Add(time.Minute))
	s1, err := f.reg.BeginRekey(ctx, "dev-1")
	if err != nil {
		t.Fatalf("BeginRekey: %v", err)
	}
	if s1.Epoch != s0.Epoch+1 || s1.Suite != "ccm-8" || s1.State != store.EnvelopePending || len(s1.Secret) != envelope.MasterSecretSize || bytes.Equal(s1.Secret, s0.Secret) {
		t.Fatalf("BeginRekey = %v", s1)
	}
	// Both epochs are usable while the rekey is pending.
	got := f.secrets(t, "dev-1")
	if len(got) != 2 || got[0].Epoch != 0 || got[0].State != store.EnvelopeActive || !bytes.Equal(got[0].Secret, s0.Secret) ||
		got[1].Epoch != 1 || got[1].State != store.EnvelopePending || !bytes.Equal(got[1].Secret, s1.Secret) {
		t.Fatalf("EnvelopeSecrets during rekey = %v", got)
	}
	// Asking again resends the pending key; nothing new is issued.
	again, err := f.reg.BeginRekey(ctx, "dev-1")
	if err != nil || again.Epoch != 1 || !bytes.Equal(again.Secret, s1.Secret) || again.State != store.EnvelopePending {
		t.Fatalf("second BeginRekey = %v, %v; want the pending key again", again, err)
	}
	if n := len(f.storedKeys(t, "dev-1")); n != 2 {
		t.Fatalf("%d stored keys after a repeated BeginRekey, want 2", n)
	}

	f.clock.Set(f.clock.Now().Add(time.Minute))
	confirmedAt := f.reg.clock()
	if err := f.reg.ConfirmRekey(ctx, "dev-1", 1); err != nil {
		t.Fatalf("ConfirmRekey: %v", err)
	}
	got = f.secrets(t, "dev-1")
	if len(got) != 1 || got[0].Epoch != 1 || got[0].State != store.EnvelopeActive || !bytes.Equal(got[0].Secret, s1.Secret) {
		t.Fatalf("EnvelopeSecrets after confirmation = %v, want only epoch 1 active", got)
	}
	ks := f.storedKeys(t, "dev-1")
	if len(ks) != 2 || ks[0].State != store.EnvelopeRetired || !ks[0].RetiredAt.Equal(confirmedAt) || len(ks[0].SealedSecret) != 0 ||
		!ks[1].ActivatedAt.Equal(confirmedAt) {
		t.Errorf("stored keys after confirmation: %+v", ks)
	}
	// Idempotent, and a retired epoch never returns.
	if err := f.reg.ConfirmRekey(ctx, "dev-1", 1); err != nil {
		t.Errorf("repeated ConfirmRekey = %v", err)
	}
	if err := f.reg.ConfirmRekey(ctx, "dev-1", 0); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("ConfirmRekey(retired epoch) = %v, want ErrRevoked", err)
	}
	if err := f.reg.ConfirmRekey(ctx, "dev-1", 7); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ConfirmRekey(unknown epoch) = %v, want ErrNotFound", err)
	}
	if ev := f.envelopeReasons("dev-1"); !slices.Equal(ev, []string{"enabled", "rekey-begun", "rekey-confirmed"}) {
		t.Errorf("envelope events = %v", ev)
	}

	// The next rekey continues from the highest epoch.
	s2, err := f.reg.BeginRekey(ctx, "dev-1")
	if err != nil || s2.Epoch != 2 {
		t.Fatalf("third BeginRekey = %v, %v", s2, err)
	}

	// Not an envelope device, or no device at all.
	f.addDevice(t, "plain", nil)
	for _, id := range []string{"plain", "missing"} {
		if _, err := f.reg.BeginRekey(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("BeginRekey(%s) = %v, want ErrNotFound", id, err)
		}
		if err := f.reg.ConfirmRekey(ctx, id, 1); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("ConfirmRekey(%s) = %v, want ErrNotFound", id, err)
		}
		if _, err := f.reg.EnvelopeSecrets(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("EnvelopeSecrets(%s) = %v, want ErrNotFound", id, err)
		}
	}
	if _, err := f.reg.BeginRekey(ctx, "a/b"); !errors.Is(err, ErrInvalid) {
		t.Errorf("BeginRekey(bad ID) = %v, want ErrInvalid", err)
	}
}

// Raising the minimum suite and rekeying is how a device moves to a
// stronger suite; sign-p256 devices rekey to a new epoch without a secret.
func TestRekeySuites(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "old", nil)
	f.enable(t, "old", "legacy-cbc-hmac", false)
	if err := f.reg.SetEnvelopePolicy(ctx, "old", "ccm-8", false); err != nil {
		t.Fatal(err)
	}
	var warned bool
	for _, l := range f.logs.lines(t) {
		if l["level"] == "WARN" && l["device"] == "old" && l["min_suite"] == "ccm-8" {
			warned = true
		}
	}
	if !warned {
		t.Error("raising the minimum above the active key's suite logged no warning")
	}
	// A rekey never changes the suite (the device's firmware would have to
	// change too): it is refused, and nothing is issued.
	if _, err := f.reg.BeginRekey(ctx, "old"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("BeginRekey after raising the minimum above the key's suite: err = %v, want ErrInvalid", err)
	}
	if keys, _ := f.st.EnvelopeKeys(ctx, "old"); len(keys) != 1 {
		t.Fatalf("a refused rekey stored a key: %v", keys)
	}

	// Lowering the minimum does not weaken the next key.
	f.addDevice(t, "mid", nil)
	f.enable(t, "mid", "ccm-8", false)
	if err := f.reg.SetEnvelopePolicy(ctx, "mid", "legacy-cbc-hmac", false); err != nil {
		t.Fatal(err)
	}
	if s, err := f.reg.BeginRekey(ctx, "mid"); err != nil || s.Suite != "ccm-8" {
		t.Errorf("BeginRekey after lowering the minimum = %v, %v; want ccm-8", s, err)
	}

	f.addDevice(t, "signer", nil)
	f.enable(t, "signer", "sign-p256", false)
	s, err := f.reg.BeginRekey(ctx, "signer")
	if err != nil || s.Epoch != 1 || s.Suite != "sign-p256" || s.Secret != nil {
		t.Fatalf("sign-p256 BeginRekey = %v, %v", s, err)
	}
	if err := f.reg.ConfirmRekey(ctx, "signer", 1); err != nil {
		t.Fatal(err)
	}
	if got := f.secrets(t, "signer"); len(got) != 1 || got[0].Epoch != 1 || got[0].Secret != nil {
		t.Errorf("sign-p256 secrets after rekey = %v", got)
	}
}

func TestRevokeRetiresEnvelope(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "dev-1", nil)
	f.addDevice(t, "plain", nil)
	f.enable(t, "dev-1", "ccm-8", true)
	if _, err := f.reg.BeginRekey(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	f.clock.Set(f.clock.Now().Add(time.Minute))
	d, err := f.reg.Revoke(ctx, "dev-1", "stolen")
	if err != nil {
		t.Fatal(err)
	}
	if got := f.secrets(t, "dev-1"); len(got) != 0 {
		t.Errorf("EnvelopeSecrets(revoked) = %v, want none", got)
	}
	for _, k := range f.storedKeys(t, "dev-1") {
		// Same transaction: the keys retired at the revocation's time.
		if k.State != store.EnvelopeRetired || !k.RetiredAt.Equal(d.UpdatedAt) || len(k.SealedSecret) != 0 {
			t.Errorf("key after revocation: %+v (device revoked at %v)", k, d.UpdatedAt)
		}
	}
	// device-revoked, then envelope-changed.
	f.mu.Lock()
	var kinds []EventKind
	for _, e := range f.events {
		if e.Principal.ID == "dev-1" && (e.Kind == EventDeviceRevoked || e.Kind == EventEnvelopeChanged && e.Reason == "revoked") {
			kinds = append(kinds, e.Kind)
		}
	}
	f.mu.Unlock()
	if !slices.Equal(kinds, []EventKind{EventDeviceRevoked, EventEnvelopeChanged}) {
		t.Errorf("events = %v, want device-revoked then envelope-changed", kinds)
	}
	// A device without envelope keys announces no envelope change, and
	// revoking again announces nothing.
	if _, err := f.reg.Revoke(ctx, "plain", "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Revoke(ctx, "dev-1", "again"); err != nil {
		t.Fatal(err)
	}
	if ev := f.envelopeReasons("plain"); len(ev) != 0 {
		t.Errorf("plain device envelope events = %v", ev)
	}
	if ev := f.envelopeReasons("dev-1"); !slices.Equal(ev, []string{"enabled", "rekey-begun", "revoked"}) {
		t.Errorf("envelope events = %v", ev)
	}

	for name, err := range map[string]error{
		"BeginRekey":        func() error { _, err := f.reg.BeginRekey(ctx, "dev-1"); return err }(),
		"ConfirmRekey":      f.reg.ConfirmRekey(ctx, "dev-1", 1),
		"SetEnvelopePolicy": f.reg.SetEnvelopePolicy(ctx, "dev-1", "ccm-8", false),
		"ReserveSequence":   func() error { _, err := f.reg.ReserveSequence(ctx, "dev-1", envelope.Downlink, 1, 1); return err }(),
	} {
		if !errors.Is(err, store.ErrRevoked) {
			t.Errorf("%s(revoked device) = %v, want ErrRevoked", name, err)
		}
	}
}

func TestSetEnvelopePolicy(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "dev-1", nil)
	f.addDevice(t, "plain", nil)
	f.enable(t, "dev-1", "legacy-cbc-hmac", false)

	f.clock.Set(f.clock.Now().Add(time.Minute))
	if err := f.reg.SetEnvelopePolicy(ctx, "dev-1", "ccm-8", true); err != nil {
		t.Fatal(err)
	}
	p, err := f.reg.EnvelopePolicy(ctx, "dev-1")
	if err != nil || p.MinSuite != "ccm-8" || !p.Required || !p.UpdatedAt.Equal(f.reg.clock()) {
		t.Errorf("EnvelopePolicy = %+v, %v", p, err)
	}
	// No change, no event.
	if err := f.reg.SetEnvelopePolicy(ctx, "dev-1", "ccm-8", true); err != nil {
		t.Fatal(err)
	}
	if ev := f.envelopeReasons("dev-1"); !slices.Equal(ev, []string{"enabled", "policy-changed"}) {
		t.Errorf("envelope events = %v", ev)
	}
	for _, tc := range []struct {
		name, id, suite string
		want            error
	}{
		{"unknown suite", "dev-1", "rot13", ErrInvalid},
		{"not an envelope device", "plain", "ccm-8", store.ErrNotFound},
		{"missing device", "missing", "ccm-8", store.ErrNotFound},
		{"bad ID", "a b", "ccm-8", ErrInvalid},
	} {
		if err := f.reg.SetEnvelopePolicy(ctx, tc.id, tc.suite, false); !errors.Is(err, tc.want) {
			t.Errorf("%s: SetEnvelopePolicy = %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := f.reg.EnvelopePolicy(ctx, "plain"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("EnvelopePolicy(plain) = %v, want ErrNotFound", err)
	}
	if p, err := f.reg.EnvelopePolicy(ctx, "dev-1"); err != nil || p.MinSuite != "ccm-8" || !p.Required {
		t.Errorf("refused calls changed the policy: %+v, %v", p, err)
	}
}

func TestEnvelopeWithoutSealer(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "dev-1", nil)
	f.enable(t, "dev-1", "ccm-8", false)
	f.addDevice(t, "dev-2", nil)
	bare := New(f.st, f.ca, Options{Now: f.clock.Now})
	for name, err := range map[string]error{
		"EnableEnvelope":  func() error { _, err := bare.EnableEnvelope(ctx, "dev-2", "ccm-8", false); return err }(),
		"EnvelopeSecrets": func() error { _, err := bare.EnvelopeSecrets(ctx, "dev-1"); return err }(),
		"BeginRekey":      func() error { _, err := bare.BeginRekey(ctx, "dev-1"); return err }(),
	} {
		if err == nil || !strings.Contains(err.Error(), "Sealer") {
			t.Errorf("%s without a Sealer = %v, want an error naming the Sealer", name, err)
		}
	}
	if _, err := f.reg.EnvelopePolicy(ctx, "dev-2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("EnableEnvelope without a Sealer stored a policy: %v", err)
	}
	// What needs no secret still works.
	if p, err := bare.EnvelopePolicy(ctx, "dev-1"); err != nil || p.MinSuite != "ccm-8" {
		t.Errorf("EnvelopePolicy without a Sealer = %+v, %v", p, err)
	}
}

func TestEnvelopeSecretRedacted(t *testing.T) {
	secret := []byte{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c}
	s := EnvelopeSecret{Epoch: 3, Suite: "ccm-8", Secret: secret, State: store.EnvelopeActive}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("key", "secret", s)
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%+v", s), fmt.Sprintf("%#v", s), fmt.Sprintf("%x", s), fmt.Sprintf("%v", []EnvelopeSecret{s}), logged.String()} {
		noSecretIn(t, fmt.Sprintf("%q", out), []byte(out), secret)
		if strings.Contains(out, "222, 173") || strings.Contains(out, "3q2+7") {
			t.Errorf("%q shows the secret", out)
		}
	}
	if !strings.Contains(fmt.Sprint(s), "epoch 3") || !strings.Contains(logged.String(), `"epoch":3`) {
		t.Errorf("redacted forms lost the epoch: %s / %s", s, logged.String())
	}
}

func TestReplayWindowAndSequence(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "dev-1", nil)
	f.enable(t, "dev-1", "ccm-8", false)

	w, err := f.reg.ReplayWindow(ctx, "dev-1", envelope.Uplink, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{5, 3, 9} {
		if err := w.Commit(seq); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.reg.SaveReplayWindow(ctx, "dev-1", envelope.Uplink, 0, w); err != nil {
		t.Fatal(err)
	}
	back, err := f.reg.ReplayWindow(ctx, "dev-1", envelope.Uplink, 0)
	if err != nil {
		t.Fatal(err)
	}
	for seq, ok := range map[uint64]bool{3: false, 5: false, 9: false, 4: true, 10: true} {
		if err := back.Check(seq); (err == nil) != ok {
			t.Errorf("restored window Check(%d) = %v, want accepted %v", seq, err, ok)
		}
	}
	if fresh, err := f.reg.ReplayWindow(ctx, "dev-1", envelope.Downlink, 0); err != nil || fresh.Check(9) != nil {
		t.Errorf("downlink window = %v; want a fresh one", err)
	}
	// A corrupt stored window is an error, never a fresh window.
	if err := f.st.SaveReplayWindow(ctx, "dev-1", store.EnvelopeUplink, 0, bytes.Repeat([]byte{0xff}, 18)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.ReplayWindow(ctx, "dev-1", envelope.Uplink, 0); err == nil {
		t.Error("a corrupt replay window loaded without an error")
	}
	if _, err := f.reg.ReplayWindow(ctx, "dev-1", envelope.Direction(9), 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("ReplayWindow(bad direction) = %v, want ErrInvalid", err)
	}
	if err := f.reg.SaveReplayWindow(ctx, "dev-1", envelope.Uplink, 5, w); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SaveReplayWindow(unknown epoch) = %v, want ErrNotFound", err)
	}

	var next uint64
	for _, step := range []uint64{1024, 1, 50} {
		start, err := f.reg.ReserveSequence(ctx, "dev-1", envelope.Downlink, 0, step)
		if err != nil || start != next {
			t.Fatalf("ReserveSequence(%d) = %d, %v; want %d", step, start, err, next)
		}
		next += step
	}
	for _, step := range []uint64{0, envelope.MaxSeq + 2} {
		if _, err := f.reg.ReserveSequence(ctx, "dev-1", envelope.Downlink, 0, step); !errors.Is(err, ErrInvalid) {
			t.Errorf("ReserveSequence(step %d) = %v, want ErrInvalid", step, err)
		}
	}
	// Up to the last number of the epoch, then ErrRekeyRequired.
	if _, err := f.reg.ReserveSequence(ctx, "dev-1", envelope.Uplink, 0, envelope.MaxSeq-9); err != nil {
		t.Fatal(err)
	}
	if start, err := f.reg.ReserveSequence(ctx, "dev-1", envelope.Uplink, 0, 10); err != nil || start != envelope.MaxSeq-9 {
		t.Errorf("ReserveSequence to MaxSeq = %d, %v", start, err)
	}
	if _, err := f.reg.ReserveSequence(ctx, "dev-1", envelope.Uplink, 0, 1); !errors.Is(err, envelope.ErrRekeyRequired) {
		t.Errorf("ReserveSequence past MaxSeq = %v, want ErrRekeyRequired", err)
	}
}

// Two registries on two store handles on one file stand in for two Warden
// nodes: no sequence number is handed out twice.
func TestReserveSequenceAcrossHandles(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "dev-1", nil)
	f.enable(t, "dev-1", "ccm-8", false)
	st2, err := sqlite.Open(ctx, filepath.Clean(f.dbPath))
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	regs := []*Registry{f.reg, New(st2, f.ca, Options{Now: f.clock.Now, Sealer: f.ks})}

	const workers, each, step = 4, 30, 8
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		starts []uint64
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				start, err := regs[w%2].ReserveSequence(ctx, "dev-1", envelope.Downlink, 0, step)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				starts = append(starts, start)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(starts)
	for i, s := range starts {
		if s != uint64(i*step) {
			t.Fatalf("reservation %d starts at %d, want %d: a range was handed out twice or skipped", i, s, i*step)
		}
	}
	if len(starts) != workers*each {
		t.Fatalf("%d reservations, want %d", len(starts), workers*each)
	}
}
