package e2e

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/wardentest"
)

// addEnvelopeDevice is wardentest's envelope device (a simulated MCU: the
// public envelope package, a persisted counter, a bare paho connection),
// after checking that the CLI wrote its bundle files for the owner only.
func addEnvelopeDevice(t testing.TB, s *wardentest.Server, id string, extra ...string) *wardentest.EnvelopeDevice {
	t.Helper()
	d := s.AddEnvelopeDevice(id, extra...)
	for _, f := range []string{".envelope.json", ".envelope.bin", ".envelope.h"} {
		fi, err := os.Stat(filepath.Join(d.Dir, id+f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("bundle file %s: %v %v", f, err, fi)
		}
	}
	return d
}

func TestEnvelopeDeviceOverThePlainListener(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--mqtt", "127.0.0.1:0")
	if s.Plain == "" {
		t.Fatalf("no plain listener in the banner:\n%s", s.Out())
	}
	if !strings.Contains(s.Log(), "WITHOUT TLS") {
		t.Error("the server did not warn that the plain listener is on")
	}
	d := addEnvelopeDevice(t, s, "env1")
	other := addEnvelopeDevice(t, s, "env2")
	reader := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ingest", "reader"), wardentest.RawOpts{Clean: true})
	reader.Subscribe(t, "fleet/#", 1)
	ops := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ops", "commander"), wardentest.RawOpts{Clean: true})

	pw := d.Password(t)
	dev, _, err := wardentest.ConnectPlain(t, s.Plain, "env1", pw)
	if err != nil {
		t.Fatalf("plain connect with a valid password: %v", err)
	}
	if code := dev.Subscribe(t, "private/env1/down/#", 1); code > 2 {
		t.Fatalf("subscribe: 0x%02x", code)
	}

	// Telemetry arrives decrypted on fleet/, with its envelope metadata.
	topic := "private/env1/up/telemetry"
	first := d.Seal(t, topic, []byte(`{"kwh":12.5}`))
	if rc, err := dev.Publish(t, topic, first, 1); rc != 0 || err != nil {
		t.Fatalf("sealed publish: 0x%02x %v", rc, err)
	}
	m := wardentest.ExpectMessage(t, reader.Msgs, "fleet/env1/up/telemetry", `{"kwh":12.5}`, 5*time.Second)
	if m.Properties.User.Get("warden-suite") != "ccm-8" || m.Properties.User.Get("warden-seq") == "" {
		t.Errorf("envelope metadata missing: %+v", m.Properties.User)
	}

	// Each attack is refused and counted; nothing reaches fleet/.
	refused := func(what string, topic string, payload []byte, reason string) {
		t.Helper()
		before := s.Metric(t, "warden_envelope_failures_total", `reason="`+reason+`"`)
		rc, _ := dev.Publish(t, topic, payload, 1)
		if rc < 0x80 {
			t.Errorf("%s: PUBACK 0x%02x, want a refusal", what, rc)
		}
		if after := s.Metric(t, "warden_envelope_failures_total", `reason="`+reason+`"`); after != before+1 {
			t.Errorf("%s: failures{reason=%q} %v -> %v", what, reason, before, after)
		}
	}
	refused("replay", topic, first, "replay")
	flipped := d.Seal(t, topic, []byte("x"))
	flipped[len(flipped)-3] ^= 0x10
	refused("flipped bit", topic, flipped, "bad-tag")
	refused("moved to another topic", "private/env1/up/other", d.Seal(t, topic, []byte("x")), "bad-tag")
	otherKeys := other.Keys(t, envelope.Uplink)
	foreign, _ := envelope.Seal(otherKeys, 1000, topic, []byte("x"))
	refused("another device's key", topic, foreign, "bad-tag")
	legacy, _ := envelope.DeriveKeys(d.Secret, d.ID, d.Epoch, envelope.LegacyCBCHMAC, envelope.Uplink)
	seq := d.NextSeq(t)
	down, _ := envelope.Seal(legacy, seq, topic, []byte("x"))
	refused("downgraded suite", topic, down, "downgrade")
	refused("plaintext", topic, []byte(`{"kwh":99}`), "malformed")
	if rc, _ := dev.Publish(t, "private/env1/state", []byte("plain"), 1); rc < 0x80 {
		t.Errorf("plaintext outside up/: PUBACK 0x%02x", rc)
	}
	wardentest.ExpectNoMessage(t, reader.Msgs, 300*time.Millisecond)
	if !s.AuditContains(`"action":"envelope.open"`, `"actor":"device:env1"`, `"reason":"replay"`) {
		t.Error("no audit line for the replay")
	}

	// Commands reach the device sealed under its downlink key.
	if rc, err := ops.Publish(t, "fleet/env1/down/cmd", []byte("reboot"), 1); rc != 0 || err != nil {
		t.Fatalf("command: 0x%02x %v", rc, err)
	}
	select {
	case cm := <-dev.Msgs:
		if cm.Topic != "private/env1/down/cmd" || string(cm.Payload) == "reboot" {
			t.Fatalf("command arrived as %s %q, want sealed", cm.Topic, cm.Payload)
		}
		pt, _, err := envelope.Open(d.Keys(t, envelope.Downlink), cm.Topic, cm.Payload)
		if err != nil || string(pt) != "reboot" {
			t.Fatalf("device cannot open the command: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("command did not reach the device")
	}

	// A replayed CONNECT password is refused, as is another device's.
	if _, ca, err := wardentest.ConnectPlain(t, s.Plain, "env1", pw); err == nil || ca == nil || ca.ReasonCode != codeNotAuthorized {
		t.Fatalf("replayed password: %+v %v", ca, err)
	}
	if _, ca, err := wardentest.ConnectPlain(t, s.Plain, "env1", other.Password(t)); err == nil || ca == nil || ca.ReasonCode != codeNotAuthorized {
		t.Fatalf("another device's password: %+v %v", ca, err)
	}
	if n := s.Metric(t, "warden_mqtt_auth_failures_total", `reason="bad-password"`); n != 2 {
		t.Errorf("bad-password refusals = %v, want 2", n)
	}

	// A device restart does not reuse a sequence number: the persisted
	// counter jumps ahead, and the server accepts the next message.
	d.Reboot(t)
	again := d.Seal(t, topic, []byte(`{"after":"reboot"}`))
	h, _ := envelope.Parse(again)
	hFirst, _ := envelope.Parse(first)
	if h.Seq <= hFirst.Seq {
		t.Fatalf("sequence number %d after a restart is not above %d", h.Seq, hFirst.Seq)
	}
	if rc, err := dev.Publish(t, topic, again, 1); rc != 0 || err != nil {
		t.Fatalf("publish after a device restart: 0x%02x %v", rc, err)
	}
	wardentest.ExpectMessage(t, reader.Msgs, "fleet/env1/up/telemetry", `{"after":"reboot"}`, 5*time.Second)
}

func TestEnvelopeRekey(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--mqtt", "127.0.0.1:0")
	d := addEnvelopeDevice(t, s, "rk1")
	reader := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ingest", "reader"), wardentest.RawOpts{Clean: true})
	reader.Subscribe(t, "fleet/#", 1)
	dev, _, err := wardentest.ConnectPlain(t, s.Plain, "rk1", d.Password(t))
	if err != nil {
		t.Fatal(err)
	}
	dev.Subscribe(t, "private/rk1/down/#", 1)

	out := s.MustWarden("device", "rekey", "rk1")
	if !strings.Contains(out, "epoch 1") {
		t.Errorf("rekey output: %q", out)
	}
	var msg *paho.Publish
	select {
	case msg = <-dev.Msgs:
	case <-time.After(5 * time.Second):
		t.Fatal("no rekey message")
	}
	if msg.Topic != "private/rk1/down/_rekey" {
		t.Fatalf("rekey on %s", msg.Topic)
	}
	pt, _, err := envelope.Open(d.Keys(t, envelope.Downlink), msg.Topic, msg.Payload)
	if err != nil || len(pt) != 20 || binary.BigEndian.Uint32(pt) != 1 {
		t.Fatalf("rekey message: %v", err)
	}
	oldSecret := d.Secret
	// The old epoch works until the device switches ...
	topic := "private/rk1/up/t"
	if rc, err := dev.Publish(t, topic, d.Seal(t, topic, []byte("old")), 1); rc != 0 || err != nil {
		t.Fatalf("old epoch before the switch: 0x%02x %v", rc, err)
	}
	wardentest.ExpectMessage(t, reader.Msgs, "fleet/rk1/up/t", "old", 5*time.Second)
	// ... the device switches (new secret, new epoch, counter from 0) ...
	d.Rekey(t, pt[4:], 1)
	if rc, err := dev.Publish(t, topic, d.Seal(t, topic, []byte("new")), 1); rc != 0 || err != nil {
		t.Fatalf("new epoch: 0x%02x %v", rc, err)
	}
	m := wardentest.ExpectMessage(t, reader.Msgs, "fleet/rk1/up/t", "new", 5*time.Second)
	if m.Properties.User.Get("warden-epoch") != "1" {
		t.Errorf("epoch metadata = %q", m.Properties.User.Get("warden-epoch"))
	}
	// ... and from then on the old epoch is refused.
	oldKeys, _ := envelope.DeriveKeys(oldSecret, "rk1", 0, envelope.CCM8, envelope.Uplink)
	stale, _ := envelope.Seal(oldKeys, 1<<20, topic, []byte("old again"))
	if rc, _ := dev.Publish(t, topic, stale, 1); rc < 0x80 {
		t.Fatalf("old epoch after the switch: PUBACK 0x%02x", rc)
	}
	if !s.AuditContains(`"action":"envelope.rekey"`, `"subject":"device:rk1"`) {
		t.Error("rekey confirmation not audited")
	}
}

func TestEnvelopeRequiredOverTLS(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	d := addEnvelopeDevice(t, s, "req1", "--envelope-required")
	reader := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ingest", "reader"), wardentest.RawOpts{Clean: true})
	reader.Subscribe(t, "fleet/#", 1)
	c := wardentest.Creds{ID: "req1", Cert: filepath.Join(d.Dir, "req1.crt"), Key: filepath.Join(d.Dir, "req1.key"), CA: filepath.Join(d.Dir, "ca.crt")}
	dev := wardentest.MustConnectRaw(t, s.MQTTS, c, wardentest.RawOpts{Clean: true})
	topic := "private/req1/up/t"
	if rc, _ := dev.Publish(t, topic, []byte("plaintext over TLS"), 1); rc < 0x80 {
		t.Errorf("plaintext from a required-envelope device over TLS: PUBACK 0x%02x", rc)
	}
	if rc, err := dev.Publish(t, topic, d.Seal(t, topic, []byte("sealed")), 1); rc != 0 || err != nil {
		t.Fatalf("sealed over TLS: 0x%02x %v", rc, err)
	}
	wardentest.ExpectMessage(t, reader.Msgs, "fleet/req1/up/t", "sealed", 5*time.Second)

	// A device that is not an envelope device cannot use the plain listener.
	s2 := wardentest.Start(t, t.TempDir(), "--mqtt", "127.0.0.1:0")
	s2.AddDevice("tlsonly")
	if _, ca, err := wardentest.ConnectPlain(t, s2.Plain, "tlsonly", []byte("6100aa")); err == nil || ca == nil || ca.ReasonCode != codeNotAuthorized {
		t.Fatalf("non-envelope device on the plain listener: %+v %v", ca, err)
	}
}
