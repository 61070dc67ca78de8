package e2e

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/internal/wardentest"
	"github.com/warden-iot/warden/otaproto"
)

// release is what `warden fw keygen` and `warden fw sign` wrote.
type release struct {
	dir, key, pub, pass string
}

func newRelease(t testing.TB) release {
	t.Helper()
	dir := t.TempDir()
	r := release{dir: dir, key: filepath.Join(dir, "release.key"), pub: filepath.Join(dir, "release.pub"), pass: filepath.Join(dir, "pass")}
	if err := os.WriteFile(r.pass, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, t.TempDir(), "fw", "keygen", "--out", r.key, "--passphrase-file", r.pass)
	if !strings.Contains(out, "BEGIN PUBLIC KEY") || !strings.Contains(out, "release_pub_key[]") {
		t.Fatalf("keygen printed no PEM or C array:\n%s", out)
	}
	kb, _ := os.ReadFile(r.key)
	if bytes.Contains(kb, []byte("PRIVATE KEY")) {
		t.Fatal("the release key file holds an unsealed private key")
	}
	return r
}

// sign signs a fresh payload; it returns the image and statement paths.
func (r release) sign(t testing.TB, model, version string, counter int, size int, extra ...string) (string, string) {
	t.Helper()
	in := filepath.Join(r.dir, fmt.Sprintf("%s-%s.bin", model, version))
	payload := bytes.Repeat([]byte(version+"|"), size/len(version)+1)[:size]
	if err := os.WriteFile(in, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	img := strings.TrimSuffix(in, ".bin") + ".img"
	args := append([]string{"fw", "sign", "--key", r.key, "--passphrase-file", r.pass, "--model", model, "--version", version,
		"--security-counter", fmt.Sprint(counter)}, extra...)
	mustRun(t, t.TempDir(), append(args, in, img)...)
	return img, img + ".statement"
}

func sha256File(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// httpsClient is a device's HTTPS client: Warden's root, and the device's
// certificate unless withCert is false.
func httpsClient(t testing.TB, c wardentest.Creds, withCert bool) *http.Client {
	t.Helper()
	cert, pool := c.TLS(t)
	cfg := &tls.Config{ServerName: "localhost", MinVersion: tls.VersionTLS13, RootCAs: pool}
	if withCert {
		cfg.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

func TestFirmwareSignVerifyTrustUpload(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	r := newRelease(t)
	img, st := r.sign(t, "sensor", "1.1.0+7", 2, 5000)

	out := mustRun(t, t.TempDir(), "fw", "verify", "--pub", r.pub, img, "--statement", st)
	if !strings.HasPrefix(out, "OK: ") || !strings.Contains(out, "1.1.0+7") {
		t.Fatalf("verify: %q", out)
	}
	bad := filepath.Join(r.dir, "bad.img")
	b, _ := os.ReadFile(img)
	b[600] ^= 0x01
	_ = os.WriteFile(bad, b, 0o600)
	out, _, err := wardentest.RunWarden(t.TempDir(), "fw", "verify", "--pub", r.pub, bad)
	if code := exitCode(err); code != 1 || !strings.HasPrefix(out, "FAILED: ") {
		t.Fatalf("verify of a tampered image: exit %d, %q", code, out)
	}

	// Upload before trusting the key: refused, and says what to do.
	_, errOut, err := s.Warden("fw", "upload", img, "--statement", st)
	if err == nil || !strings.Contains(errOut, "warden fw trust") {
		t.Fatalf("upload with an untrusted key: %v %q", err, errOut)
	}
	// The private key is never accepted.
	if _, errOut, err := s.Warden("fw", "trust", r.key); err == nil || !strings.Contains(errOut, "private key") {
		t.Fatalf("trusting the private key: %v %q", err, errOut)
	}
	s.MustWarden("fw", "trust", r.pub)
	// A tampered image with a valid statement is refused.
	if _, errOut, err := s.Warden("fw", "upload", bad, "--statement", st); err == nil || !strings.Contains(errOut, "does not match") {
		t.Fatalf("upload of a tampered image: %v %q", err, errOut)
	}
	out = s.MustWarden("fw", "upload", img, "--statement", st)
	if !strings.Contains(out, sha256File(t, img)) {
		t.Fatalf("upload output lacks the SHA-256:\n%s", out)
	}
	var imgs []map[string]any
	if err := json.Unmarshal([]byte(s.MustWarden("fw", "list", "--json")), &imgs); err != nil || len(imgs) != 1 {
		t.Fatalf("fw list: %v %v", imgs, err)
	}
	audit, _ := os.ReadFile(filepath.Join(s.Data, "audit.log"))
	for _, want := range []string{`"action":"firmware.trust"`, `"action":"firmware.upload","outcome":"denied"`, `"action":"firmware.upload","outcome":"done"`} {
		if !bytes.Contains(audit, []byte(want)) {
			t.Errorf("audit log lacks %s", want)
		}
	}
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestOTAOverHTTPSAndMQTT(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	r := newRelease(t)
	img, st := r.sign(t, "sensor", "2.0.0", 3, 40000)
	s.MustWarden("fw", "trust", r.pub)
	s.MustWarden("fw", "upload", img, "--statement", st)
	sha := sha256File(t, img)
	imgBytes, _ := os.ReadFile(img)
	stBytes, _ := os.ReadFile(st)
	var devs []wardentest.Creds
	for _, id := range []string{"h1", "m1", "other"} {
		dir := t.TempDir()
		s.MustWarden("device", "add", id, "--model", "sensor", "--out", dir)
		devs = append(devs, wardentest.Creds{ID: id, Cert: filepath.Join(dir, id+".crt"), Key: filepath.Join(dir, id+".key"), CA: filepath.Join(dir, "ca.crt")})
	}
	// "other" is a different model: not in the rollout.
	s.MustWarden("device", "add", "cam1", "--model", "camera", "--out", t.TempDir())
	out := s.MustWarden("rollout", "create", "--image", sha[:10], "--failure-threshold", "50%", "--min-finished", "1")
	if !strings.Contains(out, "to 3 devices") {
		t.Fatalf("rollout create: %s", out)
	}
	base := "https://" + s.API

	// HTTPS: a device with its certificate gets the offer.
	h1 := httpsClient(t, devs[0], true)
	anon := httpsClient(t, devs[0], false)
	resp, err := h1.Get(base + otaproto.PathCheck + "?version=1.0.0&security_counter=1")
	if err != nil {
		t.Fatal(err)
	}
	var offer otaproto.Offer
	_ = json.NewDecoder(resp.Body).Decode(&offer)
	resp.Body.Close()
	if resp.StatusCode != 200 || offer.SHA256 != sha || !bytes.Equal(offer.Statement, stBytes) || offer.URL == "" {
		t.Fatalf("check: %d %+v", resp.StatusCode, offer)
	}
	// Without a certificate, or naming another device: the same bare 403.
	for _, c := range []struct {
		name string
		cl   *http.Client
		url  string
	}{
		{"no certificate", anon, base + otaproto.PathCheck + "?device=h1&version=1.0.0"},
		{"another device's ID", h1, base + otaproto.PathCheck + "?device=m1&version=1.0.0"},
		{"image without certificate", anon, base + otaproto.PathImages + sha},
		{"forged token", anon, base + otaproto.PathImages + sha + "?device=h1&expires=9999999999&token=00112233445566778899aabbccddeeff"},
	} {
		resp, err := c.cl.Get(c.url)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 || strings.TrimSpace(string(body)) != "forbidden" {
			t.Errorf("%s: %d %q, want a bare 403", c.name, resp.StatusCode, body)
		}
	}
	// The other model's device is not offered it and may not fetch it.
	cam := s.AddDevice("cam2")
	resp, err = httpsClient(t, cam, true).Get(base + otaproto.PathImages + sha)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("device outside the rollout fetched the image: %d", resp.StatusCode)
	}

	// Download in two Range requests (an interrupted download resuming);
	// the URL's capability works without a certificate too.
	var got []byte
	for _, rng := range []string{"bytes=0-9999", "bytes=10000-"} {
		req, _ := http.NewRequest("GET", offer.URL, nil)
		req.Header.Set("Range", rng)
		resp, err := anon.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		part, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 206 {
			t.Fatalf("range %s: %d", rng, resp.StatusCode)
		}
		got = append(got, part...)
	}
	if !bytes.Equal(got, imgBytes) {
		t.Fatal("ranged download differs from the image")
	}
	// Status reports over HTTPS finish the device.
	for _, state := range []string{"downloading", "verified", "installing", "booted"} {
		rep := otaproto.Report{State: state, Rollout: offer.Rollout, SHA256: sha, Version: "2.0.0+0", SecurityCounter: 3}
		body, _ := json.Marshal(rep)
		resp, err := h1.Post(base+otaproto.PathStatus, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 204 {
			t.Fatalf("status %s: %d", state, resp.StatusCode)
		}
	}

	// MQTT: the second device asks with "current", gets a notify and
	// fetches the image in blocks.
	rc := wardentest.MustConnectRaw(t, s.MQTTS, devs[1], wardentest.RawOpts{Clean: true})
	rc.Subscribe(t, "private/m1/ota/#", 0)
	pub := func(ch string, v any) byte {
		b, _ := json.Marshal(v)
		code, err := rc.Publish(t, otaproto.Topic("m1", ch), b, 1)
		if err != nil && code == 0 {
			t.Fatalf("publish %s: %v", ch, err)
		}
		return code
	}
	if code := pub(otaproto.TopicStatus, otaproto.Report{State: otaproto.StateCurrent, Version: "1.0.0", SecurityCounter: 1}); code != 0 {
		t.Fatalf("status current refused: 0x%x", code)
	}
	n := waitFor(t, rc.Msgs, otaproto.Topic("m1", otaproto.TopicNotify))
	var moffer otaproto.Offer
	if err := json.Unmarshal(n.Payload, &moffer); err != nil || moffer.SHA256 != sha || !bytes.Equal(moffer.Statement, stBytes) {
		t.Fatalf("notify: %v %+v", err, moffer)
	}
	var fetched []byte
	for off := 0; off < len(imgBytes); {
		pub(otaproto.TopicGet, otaproto.BlockRequest{SHA256: sha, Offset: int64(off), Length: otaproto.MaxBlockSize})
		m := waitFor(t, rc.Msgs, otaproto.Topic("m1", otaproto.TopicBlock))
		o, total, data, err := otaproto.ParseBlock(m.Payload)
		if err != nil || o != int64(off) || total != int64(len(imgBytes)) {
			t.Fatalf("block at %d: %v (offset %d, total %d)", off, err, o, total)
		}
		fetched = append(fetched, data...)
		off += len(data)
	}
	if !bytes.Equal(fetched, imgBytes) {
		t.Fatal("MQTT download differs from the image")
	}
	// Warden's topics cannot be written by the device; another image is
	// not served; a malformed request is refused.
	if code := pub(otaproto.TopicNotify, otaproto.Offer{}); code < 0x80 {
		t.Errorf("device wrote its own notify topic: 0x%x", code)
	}
	if code := pub(otaproto.TopicGet, otaproto.BlockRequest{SHA256: strings.Repeat("ab", 32), Length: 100}); code < 0x80 {
		t.Errorf("block of an image not offered: 0x%x", code)
	}
	if code, _ := rc.Publish(t, otaproto.Topic("m1", otaproto.TopicGet), []byte("{not json"), 1); code < 0x80 {
		t.Errorf("malformed block request: 0x%x", code)
	}
	pub(otaproto.TopicStatus, otaproto.Report{State: otaproto.StateFailed, Rollout: moffer.Rollout, SHA256: sha, Reason: "flash error"})

	out = s.MustWarden("rollout", "status", offer.Rollout)
	for _, want := range []string{"1 booted", "1 failed", "[", "total  3 devices"} {
		if !strings.Contains(out, want) {
			t.Errorf("rollout status lacks %q:\n%s", want, out)
		}
	}
	if v := s.Metric(t, "warden_ota_http_requests_total", `outcome="denied"`); v < 4 {
		t.Errorf("denied OTA requests metric = %v, want >= 4", v)
	}
	if v := s.Metric(t, "warden_ota_mqtt_blocks_total"); v < 3 {
		t.Errorf("blocks metric = %v", v)
	}
}

func waitFor(t testing.TB, ch <-chan *paho.Publish, topic string) *paho.Publish {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-ch:
			if m.Topic == topic {
				return m
			}
		case <-deadline:
			t.Fatalf("nothing on %s within 10s", topic)
			return nil
		}
	}
}

// A server killed while an upload streams in keeps nothing of it: no row,
// no image file, and the next upload of the same release works.
func TestKilledUploadLeavesNoHalfStoredImage(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	r := newRelease(t)
	img, st := r.sign(t, "sensor", "3.0.0", 1, 400000)
	s.MustWarden("fw", "trust", r.pub)
	data, _ := os.ReadFile(img)

	fifo := filepath.Join(t.TempDir(), "upload.img")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(wardentest.Binary(t), "fw", "upload", fifo, "--statement", st, "--data", s.Data)
	cmd.Env = wardentest.Env()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data[:len(data)/2]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // let half of it reach the server
	s.Kill()
	w.Close()
	_ = cmd.Wait()

	s.Restart()
	if out := s.MustWarden("fw", "list"); strings.Contains(out, "3.0.0") {
		t.Fatalf("a killed upload is listed:\n%s", out)
	}
	entries, _ := os.ReadDir(filepath.Join(s.Data, "firmware"))
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			t.Errorf("a killed upload left %s", e.Name())
		}
	}
	s.MustWarden("fw", "upload", img, "--statement", st)
}
