package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/internal/wardentest"
)

// apiCall makes one request to the running server's HTTPS API.
func apiCall(t testing.TB, cl *http.Client, s *wardentest.Server, method, path, token, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "https://localhost:"+s.API[strings.LastIndexByte(s.API, ':')+1:]+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The operator API on the real --api listener: tokens by role, a viewer
// cannot revoke, an operator's revocation cuts the device's live
// connection at once, and an app sees only its user's devices.
func TestOperatorAPI(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	dev := s.AddDevice("api-dev-1")
	s.AddDevice("api-dev-2")
	cl := estClient(t, dev.CA, nil)
	viewer := strings.TrimSpace(s.MustWarden("token", "create", "--role", "viewer", "--user", "vera"))
	operator := strings.TrimSpace(s.MustWarden("token", "create", "--role", "operator", "--user", "otto"))
	app := strings.TrimSpace(s.MustWarden("token", "create", "--role", "app", "--user", "alice"))

	if code, body := apiCall(t, cl, s, "GET", "/v1/devices", "", ""); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d %s", code, body)
	}
	code, body := apiCall(t, cl, s, "GET", "/v1/devices", viewer, "")
	if code != http.StatusOK || !strings.Contains(body, "api-dev-1") || !strings.Contains(body, "api-dev-2") {
		t.Fatalf("viewer list: %d %s", code, body)
	}
	if code, body := apiCall(t, cl, s, "POST", "/v1/devices/api-dev-1/revoke", viewer, `{"reason":"x"}`); code != http.StatusForbidden {
		t.Fatalf("viewer revoke: %d %s", code, body)
	}
	// An app with no devices sees none, and another user's device is
	// simply not there.
	code, body = apiCall(t, cl, s, "GET", "/v1/devices", app, "")
	var list struct {
		Devices []json.RawMessage `json:"devices"`
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &list) != nil || len(list.Devices) != 0 {
		t.Fatalf("app list: %d %s", code, body)
	}
	if code, _ := apiCall(t, cl, s, "GET", "/v1/devices/api-dev-1", app, ""); code != http.StatusNotFound {
		t.Fatalf("app show of a device it does not own: %d", code)
	}

	rc := wardentest.MustConnectRaw(t, s.MQTTS, dev, wardentest.RawOpts{Clean: true})
	// Connected is the broker's word, at once; last_seen comes from the
	// anomaly monitor, which records the connect event a moment later.
	wardentest.Eventually(t, 5*time.Second, "the operator sees the device connected and last seen", func() bool {
		code, body = apiCall(t, cl, s, "GET", "/v1/devices/api-dev-1", operator, "")
		return code == http.StatusOK && strings.Contains(body, `"connected":true`) && strings.Contains(body, `"last_seen":"`)
	})
	if code, body := apiCall(t, cl, s, "POST", "/v1/devices/api-dev-1/revoke", operator, `{"reason":"stolen"}`); code != http.StatusOK {
		t.Fatalf("operator revoke: %d %s", code, body)
	}
	select {
	case <-rc.Down:
	case <-time.After(5 * time.Second):
		t.Fatal("a device revoked through the API stayed connected")
	}
	if !s.AuditContains(`"action":"api.request"`, `"actor":"token:`) {
		t.Error("API changes are not audited with the token")
	}
	// The audit log, through the API (admins only) and verified on disk.
	admin := strings.TrimSpace(s.MustWarden("token", "create", "--role", "admin", "--user", "root"))
	if code, body := apiCall(t, cl, s, "GET", "/v1/audit?tail=true&limit=50&action=api.", admin, ""); code != http.StatusOK || !strings.Contains(body, `"hash":"`) || !strings.Contains(body, "stolen") {
		t.Fatalf("GET /v1/audit: %d %s", code, body)
	}
	if code, _ := apiCall(t, cl, s, "GET", "/v1/audit", operator, ""); code != http.StatusForbidden {
		t.Fatalf("an operator read the audit log: %d", code)
	}
	if out, errOut, err := s.Warden("audit", "verify"); err != nil {
		t.Fatalf("audit verify of the live log: %v\n%s%s", err, out, errOut)
	}
}

// Commands through the real relay: the API call returns the device's
// answer, a device that does not answer times out, an offline device is
// refused at once, and another user's app cannot command the device.
func TestCommandRelay(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	dev := s.AddDevice("cmd-dev-1")
	s.AddDevice("cmd-dev-2")
	cl := estClient(t, dev.CA, nil)
	operator := strings.TrimSpace(s.MustWarden("token", "create", "--role", "operator", "--user", "otto"))
	app := strings.TrimSpace(s.MustWarden("token", "create", "--role", "app", "--user", "mallory"))

	rc := wardentest.MustConnectRaw(t, s.MQTTS, dev, wardentest.RawOpts{Clean: true})
	rc.Subscribe(t, "private/cmd-dev-1/down/cmd", 1)
	go func() {
		for m := range rc.Msgs {
			var c struct {
				ID   string          `json:"id"`
				Name string          `json:"name"`
				Body json.RawMessage `json:"body"`
			}
			if json.Unmarshal(m.Payload, &c) != nil || c.Name == "ignore" {
				continue
			}
			res, _ := json.Marshal(map[string]any{"id": c.ID, "status": "ok", "body": map[string]any{"got": c.Body}})
			_, _ = rc.Publish(t, "private/cmd-dev-1/up/cmd-result", res, 1)
		}
	}()
	code, body := apiCall(t, cl, s, "POST", "/v1/devices/cmd-dev-1/commands", operator, `{"name":"blink","body":{"times":3}}`)
	if code != http.StatusOK || !strings.Contains(body, `"status":"ok"`) || !strings.Contains(body, `{"got":{"times":3}}`) {
		t.Fatalf("command: %d %s", code, body)
	}
	if code, body := apiCall(t, cl, s, "POST", "/v1/devices/cmd-dev-1/commands", operator, `{"name":"ignore","timeout_seconds":1}`); code != http.StatusGatewayTimeout {
		t.Fatalf("unanswered command: %d %s", code, body)
	}
	if code, body := apiCall(t, cl, s, "POST", "/v1/devices/cmd-dev-2/commands", operator, `{"name":"blink"}`); code != http.StatusConflict || !strings.Contains(body, `"offline"`) {
		t.Fatalf("offline device: %d %s", code, body)
	}
	if code, _ := apiCall(t, cl, s, "POST", "/v1/devices/cmd-dev-1/commands", app, `{"name":"blink"}`); code != http.StatusNotFound {
		t.Fatalf("another user's app commanded the device: %d", code)
	}
	if !s.AuditContains(`"action":"command.send"`, `"subject":"device:cmd-dev-1"`) || !s.AuditContains(`"action":"command.result"`, `"outcome":"ok"`) {
		t.Error("commands and results are not audited")
	}
	if v := s.Metric(t, "warden_commands_total", `outcome="timeout"`); v != 1 {
		t.Errorf("timeouts counted %v", v)
	}
}

// An app's whole path with the SDK on the device: the user claims the
// device, opens an event stream (its devices only) and sees the device's
// telemetry, and commands it; the SDK's handler answers.
func TestAppStreamAndCommandsWithSDK(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	c := s.AddDevice("sdk-cmd-1")
	c2 := s.AddDevice("sdk-cmd-2") // someone else's: never on alice's stream
	cl := estClient(t, c.CA, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	dev := wardentest.ConnectSDK(t, s, c)
	app := strings.TrimSpace(s.MustWarden("token", "create", "--role", "app", "--user", "alice"))
	claim := httpsPostJSON(t, cl, "https://"+s.API+"/v1/claims", app)
	if err := dev.Claim(ctx, claim); err != nil {
		t.Fatalf("claim: %v", err)
	}
	err := dev.HandleCommands(ctx, func(_ context.Context, cmd device.Command) (json.RawMessage, error) {
		if cmd.Name != "read-temp" {
			return nil, device.ErrUnknownCommand
		}
		return json.RawMessage(`{"celsius":21.5}`), nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The stream: read it line by line in the background.
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://localhost:"+s.API[strings.LastIndexByte(s.API, ':')+1:]+"/v1/stream", nil)
	req.Header.Set("Authorization", "Bearer "+app)
	resp, err := cl.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("open stream: %v %v", err, resp)
	}
	defer resp.Body.Close()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// Publish until the stream shows it (the subscription is in place once
	// the response headers arrived, but keep it robust).
	other := wardentest.ConnectSDK(t, s, c2)
	seen := false
	for deadline := time.Now().Add(10 * time.Second); !seen && time.Now().Before(deadline); {
		_ = other.PublishUp(ctx, "telemetry", []byte(`{"not":"alice's"}`), 1)
		if err := dev.PublishUp(ctx, "telemetry", []byte(`{"celsius":21.5}`), 1); err != nil {
			t.Fatal(err)
		}
		timeout := time.After(300 * time.Millisecond)
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("the stream ended")
				}
				if strings.Contains(l, "sdk-cmd-2") {
					t.Fatalf("alice's stream carried another device: %s", l)
				}
				if strings.HasPrefix(l, "data: ") && strings.Contains(l, `"device":"sdk-cmd-1"`) && strings.Contains(l, `"celsius":21.5`) {
					seen = true
					break read
				}
			case <-timeout:
				break read
			}
		}
	}
	if !seen {
		t.Fatal("the app's stream never showed its device's telemetry")
	}

	code, body := apiCall(t, cl, s, "POST", "/v1/devices/sdk-cmd-1/commands", app, `{"name":"read-temp"}`)
	if code != http.StatusOK || !strings.Contains(body, `"status":"ok"`) || !strings.Contains(body, `"celsius":21.5`) {
		t.Fatalf("command: %d %s", code, body)
	}
	code, body = apiCall(t, cl, s, "POST", "/v1/devices/sdk-cmd-1/commands", app, `{"name":"self-destruct"}`)
	if code != http.StatusOK || !strings.Contains(body, `"status":"rejected"`) {
		t.Fatalf("unknown command: %d %s", code, body)
	}
	if code, _ := apiCall(t, cl, s, "POST", "/v1/devices/sdk-cmd-2/commands", app, `{"name":"read-temp"}`); code != http.StatusNotFound {
		t.Fatalf("alice commanded a device that is not hers: %d", code)
	}
}

// With the server running, the CLI acts through the server's API (on the
// admin socket, audited as the operator), `device show` adds what only the
// server knows, and what the CLI does is also an HTTPS call: a device
// registered with a CSR over HTTPS connects with the certificate it got.
func TestCLIUsesTheAPI(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	dev := s.AddDevice("cli-api-1")
	if !s.AuditContains(`"action":"api.request"`, `"actor":"operator"`, `"route":"POST /v1/devices"`, `cli-api-1`) {
		t.Fatal("device add with the server running did not go through the API")
	}
	rc := wardentest.MustConnectRaw(t, s.MQTTS, dev, wardentest.RawOpts{Clean: true})
	for range 3 {
		if _, err := rc.Publish(t, "private/cli-api-1/up/t", []byte("12345"), 1); err != nil {
			t.Fatal(err)
		}
	}
	wardentest.Eventually(t, 5*time.Second, "device show counts the messages", func() bool {
		var show struct {
			Connected *bool `json:"connected"`
			Counters  *struct {
				Messages, Bytes uint64
			} `json:"counters"`
		}
		if err := json.Unmarshal([]byte(s.MustWarden("device", "show", "cli-api-1", "--json")), &show); err != nil {
			t.Fatal(err)
		}
		return show.Connected != nil && *show.Connected && show.Counters != nil && show.Counters.Messages == 3 && show.Counters.Bytes == 15
	})
	out := s.MustWarden("device", "show", "cli-api-1")
	for _, want := range []string{"Online   yes", "Seen     20", "Counters 3 messages (15 bytes) up, 1 sessions"} {
		if !strings.Contains(out, want) {
			t.Errorf("device show lacks %q:\n%s", want, out)
		}
	}
	s.MustWarden("device", "disable", "cli-api-1", "--reason", "maintenance")
	select {
	case <-rc.Down:
	case <-time.After(5 * time.Second):
		t.Fatal("a device disabled with the CLI stayed connected")
	}
	if !s.AuditContains(`"route":"POST /v1/devices/{id}/disable"`, `"actor":"operator"`, `maintenance`) {
		t.Error("device disable did not go through the API")
	}

	// The same action over HTTPS, with a token.
	admin := strings.TrimSpace(s.MustWarden("token", "create", "--role", "admin", "--user", "root"))
	cl := estClient(t, dev.CA, nil)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "https-dev-1"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"id": "https-dev-1", "model": "m1", "csr": csr})
	code, answer := apiCall(t, cl, s, "POST", "/v1/devices", admin, string(body))
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/devices: %d %s", code, answer)
	}
	var created struct {
		Device struct {
			ID, State string
		} `json:"device"`
		CertificatePEM string `json:"certificate_pem"`
	}
	if err := json.Unmarshal([]byte(answer), &created); err != nil || created.Device.ID != "https-dev-1" || created.Device.State != "active" {
		t.Fatalf("POST /v1/devices answered %s (%v)", answer, err)
	}
	dir := t.TempDir()
	keyDER, _ := x509.MarshalECPrivateKey(key)
	c2 := wardentest.Creds{ID: "https-dev-1", Cert: filepath.Join(dir, "d.crt"), Key: filepath.Join(dir, "d.key"), CA: dev.CA}
	if err := os.WriteFile(c2.Cert, []byte(created.CertificatePEM), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c2.Key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	rc2 := wardentest.MustConnectRaw(t, s.MQTTS, c2, wardentest.RawOpts{Clean: true})
	if _, err := rc2.Publish(t, "private/https-dev-1/up/t", []byte("x"), 1); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.MustWarden("device", "list"), "https-dev-1") {
		t.Error("a device registered over HTTPS is not listed by the CLI")
	}
	// A viewer may not register devices; the answer says so without
	// registering anything.
	viewer := strings.TrimSpace(s.MustWarden("token", "create", "--role", "viewer", "--user", "vera"))
	body, _ = json.Marshal(map[string]any{"id": "https-dev-2", "csr": csr})
	if code, answer := apiCall(t, cl, s, "POST", "/v1/devices", viewer, string(body)); code != http.StatusForbidden {
		t.Fatalf("viewer POST /v1/devices: %d %s", code, answer)
	}
}
