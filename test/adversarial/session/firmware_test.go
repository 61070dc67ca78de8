package session

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/wardentest"
	"github.com/warden-iot/warden/otaproto"
)

// releaseKey is a firmware signing key and the PEM file of its public half.
type releaseKey struct {
	signer crypto.Signer
	pub    string
}

func newReleaseKey(t testing.TB) releaseKey {
	t.Helper()
	k, err := firmware.GenerateKey(firmware.KeyEd25519)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := firmware.EncodePublicKeyPEM(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "release.pub")
	if err := os.WriteFile(p, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	return releaseKey{signer: k, pub: p}
}

// release is an image file and its release statement, on disk.
type release struct {
	img, st string
	sha     string
}

// sign builds an MCUboot image of a payload unique to model and version,
// signed with imgKey, and a release statement for it signed with stKey
// (the same key, unless a test forges).
func sign(t testing.TB, imgKey, stKey releaseKey, model, version string, counter uint32, sequence uint64) release {
	t.Helper()
	v, err := firmware.ParseVersion(version)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte(model+"|"+version+"|"), 400)
	img, err := firmware.Sign(payload, imgKey.signer, firmware.SignOptions{Version: v, SecurityCounter: counter})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(img)
	now := time.Now()
	st, err := firmware.SignStatement(firmware.Statement{Model: model, Version: v, SecurityCounter: counter,
		ImageSHA256: sum, ImageSize: int64(len(img)), Sequence: sequence,
		IssuedAt: now.Add(-time.Minute), ExpiresAt: now.Add(24 * time.Hour)}, stKey.signer)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r := release{img: filepath.Join(dir, "fw.img"), st: filepath.Join(dir, "fw.img.statement"), sha: hex.EncodeToString(sum[:])}
	if err := os.WriteFile(r.img, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.st, st, 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}

// rollout uploads r (which must be accepted) and rolls it out to every
// device of its model at once, returning the rollout's ID.
func rollout(t testing.TB, s *wardentest.Server, r release) string {
	t.Helper()
	s.MustWarden("fw", "upload", r.img, "--statement", r.st)
	out := s.MustWarden("rollout", "create", "--image", r.sha[:12], "--stages", "100%",
		"--failure-threshold", "100%", "--min-finished", "1", "--timeout", "5m")
	f := strings.Fields(strings.TrimPrefix(out, "Created rollout "))
	if len(f) == 0 {
		t.Fatalf("rollout create printed %q", out)
	}
	return f[0]
}

// addModelDevice registers a device of a model and returns its
// credentials.
func addModelDevice(t testing.TB, s *wardentest.Server, id, model string) wardentest.Creds {
	t.Helper()
	dir := t.TempDir()
	s.MustWarden("device", "add", id, "--model", model, "--out", dir)
	return wardentest.Creds{ID: id, Cert: filepath.Join(dir, id+".crt"), Key: filepath.Join(dir, id+".key"), CA: filepath.Join(dir, "ca.crt")}
}

// rolloutDevices returns the devices of a rollout: state and reason by ID.
func rolloutDevices(t testing.TB, s *wardentest.Server, rollout string) map[string][2]string {
	t.Helper()
	var ds []struct {
		DeviceID string `json:"device_id"`
		State    string `json:"state"`
		Reason   string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(s.MustWarden("rollout", "devices", rollout, "--json")), &ds); err != nil {
		t.Fatal(err)
	}
	out := map[string][2]string{}
	for _, d := range ds {
		out[d.DeviceID] = [2]string{d.State, d.Reason}
	}
	return out
}

// otaDevice runs a Go SDK device with an OTA agent that pins key, claims
// model and runs what state says; the installer must never be reached.
type otaDevice struct {
	id        string
	events    chan device.OTAEvent
	installed chan firmware.Statement
}

func startOTADevice(t *testing.T, s *wardentest.Server, c wardentest.Creds, key releaseKey, model string, state device.OTAState) *otaDevice {
	t.Helper()
	pemBytes, err := os.ReadFile(key.pub)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := firmware.ParsePublicKeyPEM(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	store := device.FileOTAStore{Dir: t.TempDir()}
	if err := store.Save(state); err != nil {
		t.Fatal(err)
	}
	d := &otaDevice{id: c.ID, events: make(chan device.OTAEvent, 32), installed: make(chan firmware.Statement, 1)}
	cl := wardentest.ConnectSDK(t, s, c)
	agent, err := cl.OTA(device.OTAConfig{ReleaseKey: pub, Model: model, Store: store, BlockTimeout: 2 * time.Second,
		Installer: func(_ context.Context, _ *firmware.Image, _ []byte, st firmware.Statement) error {
			d.installed <- st
			return errors.New("the test's installer never installs")
		},
		OnEvent: func(ev device.OTAEvent) {
			select {
			case d.events <- ev:
			default:
			}
		}})
	if err != nil {
		t.Fatalf("%s: OTA: %v", c.ID, err)
	}
	t.Cleanup(func() { _ = agent.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := agent.Start(ctx); err != nil {
		t.Fatalf("%s: OTA start: %v", c.ID, err)
	}
	return d
}

// refused waits for the update to end in one of states and returns the
// event; an installed image fails the test.
func (d *otaDevice) refused(t *testing.T, states ...string) device.OTAEvent {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case st := <-d.installed:
			t.Fatalf("%s handed %s (sequence %d) to its installer", d.id, st.Version, st.Sequence)
		case ev := <-d.events:
			for _, s := range states {
				if ev.State == s {
					return ev
				}
			}
		case <-deadline:
			t.Fatalf("%s: no OTA event %v within %v", d.id, states, within)
		}
	}
}

// TestFirmwareForgeryIsRefused attacks firmware updates where the server
// is involved: the upload (a statement re-signed with a key the server
// trusts, over a genuine image; a statement signed with a key it does not
// trust; an image swapped under a valid statement) is refused, counted and
// audited. Then the server itself is the attacker (a compromised operator
// or disk; docs/firmware.md says the server is untrusted) and really
// delivers, through a rollout over MQTT, to Go SDK devices that pin the
// release key: a release signed with the attacker's key, an older genuine
// release to a device that runs a newer one, a genuine release for another
// model, and a genuine release whose image was swapped on the server's
// disk. Each device refuses before installing anything and reports it, and
// Warden records the failure (audit ota.failed). Warden's own
// anti-rollback floor skips a device whose security counter is above the
// image's, even after a forged report tries to lower it.
func TestFirmwareForgeryIsRefused(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	genuine, evil := newReleaseKey(t), newReleaseKey(t)
	s.MustWarden("fw", "trust", genuine.pub)

	// --- The server refuses forged uploads.
	uploads := newCounter(t, s, "warden_ota_uploads_total", `outcome="refused"`)
	// The audit line of a refused upload names no image (subject
	// "image:"), so it is found by its reason.
	refusedUpload := func(what string, r release, want, audit string) {
		t.Helper()
		_, errOut, err := s.Warden("fw", "upload", r.img, "--statement", r.st)
		if err == nil || !strings.Contains(errOut, want) {
			t.Errorf("%s: upload err=%v stderr=%q, want a refusal saying %q", what, err, errOut, want)
		}
		uploads.rose(t, 1)
		audited(t, s, `"action":"firmware.upload"`, `"outcome":"denied"`, `"actor":"operator"`, audit)
	}
	refusedUpload("a release signed with an untrusted key", sign(t, evil, evil, "sensor", "9.0.0", 9, 90),
		"does not trust", "which this server does not trust")
	// The attacker gets its key trusted (an operator account taken over)
	// and re-signs a statement for a genuine image with it.
	s.MustWarden("fw", "trust", evil.pub, "--name", "attacker")
	audited(t, s, `"action":"firmware.trust"`, `"outcome":"done"`, `"name":"attacker"`)
	refusedUpload("a genuine image under a statement re-signed with another key", sign(t, genuine, evil, "sensor", "9.0.1", 9, 91),
		"does not match", "signed for another key")
	v2 := sign(t, genuine, genuine, "sensor", "2.0.0", 2, 20)
	v1 := sign(t, genuine, genuine, "sensor", "1.0.0", 1, 10)
	refusedUpload("an older image swapped under a newer valid statement", release{img: v1.img, st: v2.st},
		"does not match", "digest mismatch")

	// --- The server delivers attacker-chosen firmware; devices refuse.
	reports := newCounter(t, s, "warden_ota_reports_total", `state="failed"`, `outcome="accepted"`)
	type attack struct {
		name    string
		model   string // the model the registry gives the device
		claims  string // the model the device itself is
		running device.OTAState
		release func(model string) release
		tamper  func(r release)
		errIs   error
		state   string // the OTA event the device ends in
	}
	v := func(s string) firmware.Version { v, _ := firmware.ParseVersion(s); return v }
	attacks := []attack{
		{name: "a release signed with the attacker's key", model: "m-key", claims: "m-key",
			running: device.OTAState{Version: v("1.0.0"), SecurityCounter: 1, Sequence: 10, Accepted: 10},
			release: func(m string) release { return sign(t, evil, evil, m, "6.6.6", 6, 66) },
			errIs:   firmware.ErrKeyMismatch, state: device.OTARefused},
		{name: "an older genuine release replayed to a device that runs a newer one", model: "m-old", claims: "m-old",
			running: device.OTAState{Version: v("2.0.0"), SecurityCounter: 1, Sequence: 20, Accepted: 20},
			release: func(m string) release { return sign(t, genuine, genuine, m, "1.5.0", 1, 15) },
			errIs:   firmware.ErrReplay, state: device.OTARefused},
		{name: "a genuine release for another model", model: "m-cam", claims: "m-pump",
			running: device.OTAState{Version: v("1.0.0"), SecurityCounter: 1, Sequence: 10, Accepted: 10},
			release: func(m string) release { return sign(t, genuine, genuine, m, "3.0.0", 3, 30) },
			errIs:   firmware.ErrModel, state: device.OTARefused},
		{name: "a genuine release whose image was swapped on the server's disk", model: "m-disk", claims: "m-disk",
			running: device.OTAState{Version: v("1.0.0"), SecurityCounter: 1, Sequence: 10, Accepted: 10},
			release: func(m string) release { return sign(t, genuine, genuine, m, "4.0.0", 4, 40) },
			tamper: func(r release) {
				// Another genuine image of the same size, written over the
				// stored one: only the hash can tell.
				other, _ := os.ReadFile(sign(t, genuine, genuine, "m-disk", "4.0.1", 4, 41).img)
				stored := filepath.Join(s.Data, "firmware", r.sha+".img")
				if fi, err := os.Stat(stored); err != nil || fi.Size() != int64(len(other)) {
					t.Fatalf("stored image %s: %v (size %v, replacement %d)", stored, err, fi, len(other))
				}
				if err := os.WriteFile(stored, other, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			errIs: firmware.ErrDigest, state: otaproto.StateFailed},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			id := "dev-" + a.model
			c := addModelDevice(t, s, id, a.model)
			r := a.release(a.model)
			ro := rollout(t, s, r)
			if a.tamper != nil {
				a.tamper(r)
			}
			d := startOTADevice(t, s, c, genuine, a.claims, a.running)
			ev := d.refused(t, device.OTARefused, otaproto.StateFailed)
			if ev.State != a.state || !errors.Is(ev.Err, a.errIs) {
				t.Errorf("the device ended in %s with %v, want %s with %v", ev.State, ev.Err, a.state, a.errIs)
			}
			// Warden records the device as failed in the rollout (one
			// audit line per transition; `warden rollout devices` shows
			// the same).
			audited(t, s, `"action":"ota.failed"`, `"outcome":"failed"`, `"actor":"device:`+id+`"`, `"subject":"rollout:`+ro+`"`)
		})
	}
	reports.rose(t, float64(len(attacks)))

	// --- Warden's own anti-rollback floor. Two devices of a model run
	// security counter 3. The first reported it before the rollout of a
	// counter-2 image was created, and someone with its key then reported
	// counter 1, hoping to be offered the older release: the floor stays
	// and the device is skipped when the rollout is created. The second
	// reports only after: it is skipped when it asks.
	first := addModelDevice(t, s, "floor-1", "m-floor")
	second := addModelDevice(t, s, "floor-2", "m-floor")
	report := func(rc *wardentest.RawClient, id, version string, counter uint32) {
		t.Helper()
		b, _ := json.Marshal(otaproto.Report{State: otaproto.StateCurrent, Version: version, SecurityCounter: counter})
		if code, err := rc.Publish(t, otaproto.Topic(id, otaproto.TopicStatus), b, 1); code != 0 || err != nil {
			t.Fatalf("%s: report %s/%d: 0x%02x %v", id, version, counter, code, err)
		}
	}
	rc1 := wardentest.MustConnectRaw(t, s.MQTTS, first, wardentest.RawOpts{Clean: true})
	rc1.Subscribe(t, "private/floor-1/ota/#", 1)
	report(rc1, "floor-1", "3.0.0", 3)
	report(rc1, "floor-1", "1.0.0", 1)
	audited(t, s, `"action":"ota.report"`, `"outcome":"denied"`, `"actor":"device:floor-1"`, `"reason":"security-counter-decreased"`)
	offers := newCounter(t, s, "warden_ota_offers_total")
	ro := rollout(t, s, sign(t, genuine, genuine, "m-floor", "2.5.0", 2, 25))
	report(rc1, "floor-1", "1.0.0", 1)
	rc2 := wardentest.MustConnectRaw(t, s.MQTTS, second, wardentest.RawOpts{Clean: true})
	rc2.Subscribe(t, "private/floor-2/ota/#", 1)
	report(rc2, "floor-2", "3.0.0", 3)
	audited(t, s, `"action":"ota.skip"`, `"subject":"device:floor-2"`, "anti-rollback")
	members := rolloutDevices(t, s, ro)
	for _, id := range []string{"floor-1", "floor-2"} {
		if m := members[id]; m[0] != "skipped" || !strings.Contains(m[1], "anti-rollback") {
			t.Errorf("%s in the rollout: %s (%s), want skipped for anti-rollback", id, m[0], m[1])
		}
	}
	offers.still(t)
	wardentest.ExpectNoMessage(t, rc1.Msgs, 200*time.Millisecond)
	wardentest.ExpectNoMessage(t, rc2.Msgs, 200*time.Millisecond)
}
