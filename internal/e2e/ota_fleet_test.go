package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/wardentest"
	"github.com/warden-iot/warden/otaproto"
)

func releasePub(t testing.TB, r release) crypto.PublicKey {
	t.Helper()
	b, err := os.ReadFile(r.pub)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := firmware.ParsePublicKeyPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// simDevice is an SDK device with an OTA agent whose installer boots the
// image in place (or fails, when told to).
type simDevice struct {
	id     string
	agent  *device.Agent
	events chan device.OTAEvent
}

func startSimDevice(t *testing.T, s *wardentest.Server, c wardentest.Creds, pub crypto.PublicKey, model, transport string, fail bool) *simDevice {
	t.Helper()
	cl := wardentest.ConnectSDK(t, s, c)
	d := &simDevice{id: c.ID, events: make(chan device.OTAEvent, 64)}
	var agent *device.Agent
	cfg := device.OTAConfig{
		ReleaseKey: pub, Model: model, Store: device.FileOTAStore{Dir: t.TempDir()},
		Transport: transport, BlockTimeout: 2 * time.Second,
		Installer: func(ctx context.Context, img *firmware.Image, file []byte, st firmware.Statement) error {
			if fail {
				return errors.New("simulated flash write error")
			}
			counter, _ := img.SecurityCounter()
			go func() { _ = agent.Booted(context.Background(), st.Version, counter, st.Sequence) }()
			return nil
		},
		OnEvent: func(ev device.OTAEvent) {
			select {
			case d.events <- ev:
			default:
			}
		},
	}
	if transport == device.OTATransportHTTPS {
		cfg.HTTPSBase = "https://" + s.API
	}
	agent, err := cl.OTA(cfg)
	if err != nil {
		t.Fatalf("%s: OTA: %v", c.ID, err)
	}
	_ = agent
	d.agent = agent
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := agent.Start(ctx); err != nil {
		t.Fatalf("%s: OTA start: %v", c.ID, err)
	}
	t.Cleanup(func() { _ = agent.Close() })
	return d
}

// until waits for an event in one of the states and returns it.
func (d *simDevice) until(t *testing.T, states ...string) device.OTAEvent {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case ev := <-d.events:
			for _, s := range states {
				if ev.State == s {
					return ev
				}
			}
		case <-deadline:
			t.Fatalf("%s: no OTA event %v within 30s", d.id, states)
		}
	}
}

type rolloutDev struct {
	DeviceID string `json:"device_id"`
	Stage    int    `json:"stage"`
	State    string `json:"state"`
}

func rolloutDevices(t *testing.T, s *wardentest.Server, id string) []rolloutDev {
	t.Helper()
	var ds []rolloutDev
	if err := json.Unmarshal([]byte(s.MustWarden("rollout", "devices", id, "--json")), &ds); err != nil {
		t.Fatal(err)
	}
	return ds
}

func rolloutState(t *testing.T, s *wardentest.Server, id string) (string, int) {
	t.Helper()
	var st struct {
		Rollout struct {
			State string `json:"state"`
			Stage int    `json:"stage"`
		} `json:"rollout"`
	}
	if err := json.Unmarshal([]byte(s.MustWarden("rollout", "status", id, "--json")), &st); err != nil {
		t.Fatal(err)
	}
	return st.Rollout.State, st.Rollout.Stage
}

func waitRollout(t *testing.T, s *wardentest.Server, id, state string, stage int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, sg := rolloutState(t, s, id)
		if (state == "" || st == state) && sg == stage {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout %s is %s at stage %d, want %s at stage %d\n%s", id, st, sg, state, stage, s.MustWarden("rollout", "status", id))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A fleet of SDK devices through a staged rollout: stage 1 boots, stage 2
// has failing devices and the rollout pauses at its threshold with an
// alert; after an abort nothing more is offered.
func TestStagedRolloutWithSDKFleet(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	r := newRelease(t)
	img, st := r.sign(t, "fleet", "2.0.0", 2, 30000)
	s.MustWarden("fw", "trust", r.pub)
	s.MustWarden("fw", "upload", img, "--statement", st)
	dir := t.TempDir()
	ids := strings.Fields(s.MustWarden("device", "provision", "--count", "10", "--model", "fleet", "--out", dir))
	out := s.MustWarden("rollout", "create", "--image", sha256File(t, img)[:12], "--stages", "10%,60%,100%",
		"--failure-threshold", "20%", "--min-finished", "3", "--timeout", "5m")
	rid := strings.Fields(strings.TrimPrefix(out, "Created rollout "))[0]
	stageOf := map[string]int{}
	for _, d := range rolloutDevices(t, s, rid) {
		stageOf[d.DeviceID] = d.Stage
	}
	pub := releasePub(t, r)
	devs := map[string]*simDevice{}
	failing := 0
	for i, id := range ids {
		transport := device.OTATransportMQTT
		if i%2 == 1 {
			transport = device.OTATransportHTTPS
		}
		fail := stageOf[id] == 1 && failing < 2
		if fail {
			failing++
		}
		c := wardentest.Creds{ID: id, Cert: filepath.Join(dir, id+".crt"), Key: filepath.Join(dir, id+".key"), CA: filepath.Join(dir, "ca.crt")}
		devs[id] = startSimDevice(t, s, c, pub, "fleet", transport, fail)
	}
	// Stage 1: its one device boots and the stage closes.
	for id, d := range devs {
		if stageOf[id] == 0 {
			d.until(t, otaproto.StateBooted)
		}
	}
	// Stage 2 opens; its devices are notified at once and may already have
	// failed and paused it by the time we look.
	waitRollout(t, s, rid, "", 1)
	// Stage 2 devices hear of the open stage (MQTT notify) or check again
	// (HTTPS), then two of them fail: 2 of at least 3 judged > 20%.
	for id, d := range devs {
		if stageOf[id] == 1 && d.agent != nil {
			_ = d.agent.Check(context.Background())
		}
	}
	waitRollout(t, s, rid, "paused", 1)
	status := s.MustWarden("rollout", "status", rid)
	if !strings.Contains(status, "failure threshold crossed") || !strings.Contains(status, "failed") {
		t.Fatalf("status of the paused rollout:\n%s", status)
	}
	audit, _ := os.ReadFile(filepath.Join(s.Data, "audit.log"))
	if !strings.Contains(string(audit), `"action":"alert.rollout.paused"`) {
		t.Error("no alert in the audit log")
	}
	if v := s.Metric(t, "warden_ota_alerts_total", `kind="rollout.paused"`); v != 1 {
		t.Errorf("alerts metric = %v", v)
	}
	// Stage 3 devices were never offered anything.
	for _, d := range rolloutDevices(t, s, rid) {
		if d.Stage == 2 && d.State != "pending" {
			t.Errorf("stage-3 device %s is %s", d.DeviceID, d.State)
		}
	}
	s.MustWarden("rollout", "abort", rid, "--reason", "bad build")
	if st, _ := rolloutState(t, s, rid); st != "aborted" {
		t.Fatalf("rollout is %s after abort", st)
	}
}

// stolenServerCert returns Warden's own server certificate and key: the
// worst case, an attacker who took the server's TLS key and can answer
// devices in Warden's name. Only the release signature stands.
func stolenServerCert(t *testing.T, data string) tls.Certificate {
	t.Helper()
	cfg := config.Default()
	cfg.Data = data
	p := cfg.Paths()
	mk, err := keystore.LoadMasterKey(p.MasterKey)
	if err != nil {
		t.Fatal(err)
	}
	ks, _ := keystore.New(mk)
	ca, err := pki.Load(p.PKI, ks, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// A man in the middle: with its own CA the device refuses the connection;
// with Warden's stolen server key it can serve anything, and the device
// refuses a flipped byte, an older validly signed image and an expired
// statement, and reports each.
func TestOTAManInTheMiddle(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	r := newRelease(t)
	oldImg, oldSt := r.sign(t, "mitm", "1.5.0", 1, 8000)
	newImg, newSt := r.sign(t, "mitm", "2.0.0", 2, 8000)
	expImg, expSt := r.sign(t, "mitm", "2.1.0", 2, 8000, "--expires", "1s")
	time.Sleep(1100 * time.Millisecond)
	pub := releasePub(t, r)
	c := s.AddDevice("victim")

	// 1. A proxy with its own CA: no TLS session, no offer.
	foreign := httptest.NewTLSServer(http.NotFoundHandler())
	defer foreign.Close()
	cl := wardentest.ConnectSDK(t, s, c)
	agent, err := cl.OTA(device.OTAConfig{ReleaseKey: pub, Model: "mitm", Store: device.FileOTAStore{Dir: t.TempDir()},
		Transport: device.OTATransportHTTPS, HTTPSBase: foreign.URL,
		Installer: func(context.Context, *firmware.Image, []byte, firmware.Statement) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := agent.Start(ctx); err == nil {
		if err := agent.Check(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("check through a foreign-CA proxy: %v", err)
		}
	}
	_ = agent.Close()
	// mosquitto_pub pinned to Warden's root refuses the same proxy.
	mp := wardentest.RequireTool(t, "mosquitto_pub", "mosquitto-clients")
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(foreign.URL, "https://"))
	mctx, mcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer mcancel()
	mout, err := exec.CommandContext(mctx, mp, "--cafile", c.CA, "--cert", c.Cert, "--key", c.Key, "-h", host, "-p", port,
		"-i", "victim", "-t", "private/victim/up/x", "-m", "x").CombinedOutput()
	if err == nil {
		t.Errorf("mosquitto_pub talked to a foreign-CA proxy: %s", mout)
	}

	// 2. A server with Warden's stolen key serving attacker content.
	stolen := stolenServerCert(t, s.Data)
	read := func(p string) []byte { b, _ := os.ReadFile(p); return b }
	flipped := read(newImg)
	flipped[len(flipped)/2] ^= 0x40
	cases := []struct {
		name   string
		st     []byte
		image  []byte
		reason string
	}{
		{"flipped byte", read(newSt), flipped, "image"},
		{"older signed image under the new statement", read(newSt), read(oldImg), "image"},
		{"older release, statement and all (replay)", read(oldSt), read(oldImg), "statement"},
		{"expired statement", read(expSt), read(expImg), "statement"},
	}
	// The device runs 1.6.0 (sequence of its statement: the old release's).
	oldStatement, _ := firmware.ParseStatement(read(oldSt))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var reports []otaproto.Report
			mux := http.NewServeMux()
			var base string
			mux.HandleFunc("GET "+otaproto.PathCheck, func(w http.ResponseWriter, r *http.Request) {
				ss, _ := firmware.ParseStatement(tc.st)
				_ = json.NewEncoder(w).Encode(otaproto.Offer{Rollout: "ro-evil", Statement: tc.st, SHA256: fmt.Sprintf("%x", ss.Statement.ImageSHA256),
					Size: ss.Statement.ImageSize, Version: ss.Statement.Version.String(), URL: base + "/img"})
			})
			mux.HandleFunc("GET /img", func(w http.ResponseWriter, r *http.Request) {
				// A careful attacker serves exactly the statement's size
				// (signature lengths vary by a byte or two), so only the
				// hash can give the substitution away.
				ss, _ := firmware.ParseStatement(tc.st)
				body := append(bytes.Clone(tc.image), bytes.Repeat([]byte{0xff}, 16)...)[:ss.Statement.ImageSize]
				_, _ = w.Write(body)
			})
			mux.HandleFunc("POST "+otaproto.PathStatus, func(w http.ResponseWriter, r *http.Request) {
				var rep otaproto.Report
				_ = json.NewDecoder(r.Body).Decode(&rep)
				mu.Lock()
				reports = append(reports, rep)
				mu.Unlock()
				w.WriteHeader(204)
			})
			evil := httptest.NewUnstartedServer(mux)
			evil.TLS = &tls.Config{Certificates: []tls.Certificate{stolen}, ClientAuth: tls.RequestClientCert}
			evil.StartTLS()
			defer evil.Close()
			_, port, _ := net.SplitHostPort(evil.Listener.Addr().String())
			base = "https://localhost:" + port

			store := device.FileOTAStore{Dir: t.TempDir()}
			v, _ := firmware.ParseVersion("1.6.0")
			if err := store.Save(device.OTAState{Version: v, SecurityCounter: 1, Sequence: oldStatement.Statement.Sequence, Accepted: oldStatement.Statement.Sequence}); err != nil {
				t.Fatal(err)
			}
			installed := make(chan struct{}, 1)
			agent, err := cl.OTA(device.OTAConfig{ReleaseKey: pub, Model: "mitm", Store: store,
				Transport: device.OTATransportHTTPS, HTTPSBase: base,
				OnEvent: func(ev device.OTAEvent) { t.Logf("event %s %v", ev.State, ev.Err) }, // reasons show on failure
				Installer: func(context.Context, *firmware.Image, []byte, firmware.Statement) error {
					installed <- struct{}{}
					return nil
				}})
			if err != nil {
				t.Fatal(err)
			}
			defer agent.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := agent.Start(ctx); err != nil {
				t.Logf("start: %v", err)
			}
			if err := agent.Check(ctx); err != nil {
				t.Logf("check: %v", err)
			}
			// The update runs in the background (Start already checked):
			// wait for its failure report.
			var failed *otaproto.Report
			for deadline := time.Now().Add(15 * time.Second); failed == nil && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				mu.Lock()
				for i := range reports {
					if reports[i].State == otaproto.StateFailed {
						failed = &reports[i]
					}
				}
				mu.Unlock()
			}
			select {
			case <-installed:
				t.Fatal("the device installed attacker content")
			default:
			}
			if failed == nil || !strings.HasPrefix(failed.Reason, tc.reason) {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("reports %+v: want a failed report starting %q", reports, tc.reason)
			}
		})
	}
}
