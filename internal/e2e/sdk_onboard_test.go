package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/wardentest"
)

// TestSDKEnrollRenewClaim runs the Go SDK against the real server: it
// enrolls with an on-device key and its factory secret, connects, renews
// over MQTT and over EST (switching certificates live), and forwards an
// app's claim token.
func TestSDKEnrollRenewClaim(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "sdk-e.json")
	s.MustWarden("device", "preregister", "sdk-e", "--enroll-secret-out", secretFile)
	sf := readSecret(t, secretFile)
	rootPEM, err := os.ReadFile(filepath.Join(s.Data, "pki", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := "https://localhost:" + s.API[strings.LastIndexByte(s.API, ':')+1:]

	// A wrong secret is refused as such.
	if _, err := device.Enroll(ctx, device.EnrollConfig{Server: base, RootCAs: roots, DeviceID: "sdk-e", Key: key,
		Secret: make([]byte, enrollproto.SecretSize)}); !errors.Is(err, device.ErrEnrollRefused) {
		t.Fatalf("enroll with a wrong secret: %v", err)
	}
	cert, err := device.Enroll(ctx, device.EnrollConfig{Server: base, RootCAs: roots, DeviceID: "sdk-e", Key: key, Secret: sf.Secret})
	if err != nil {
		t.Fatalf("SDK enrollment: %v", err)
	}
	cl, err := device.Connect(ctx, device.Config{Servers: []string{"mqtts://" + s.MQTTS}, Certificate: cert, RootCAs: roots,
		ServerName: "localhost", MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatalf("connect with the enrolled certificate: %v", err)
	}
	defer cl.Close(context.Background())

	renewedMQTT, err := cl.Renew(ctx, device.RenewOptions{Via: device.RenewViaMQTT})
	if err != nil {
		t.Fatalf("renew over MQTT: %v", err)
	}
	if renewedMQTT.Leaf.SerialNumber.Cmp(cert.Leaf.SerialNumber) == 0 {
		t.Fatal("MQTT renewal returned the old certificate")
	}
	newKey, _ := pki.GenerateKey()
	renewedEST, err := cl.Renew(ctx, device.RenewOptions{Via: device.RenewViaEST, ESTServer: base, NewKey: newKey})
	if err != nil {
		t.Fatalf("renew over EST: %v", err)
	}
	if !newKey.PublicKey.Equal(renewedEST.Leaf.PublicKey) {
		t.Fatal("EST renewal is not for the new key")
	}
	if err := cl.PublishUp(ctx, "telemetry", []byte("after renewals"), 1); err != nil {
		t.Fatalf("publish after the renewals: %v", err)
	}

	// App claiming through the SDK.
	appToken := strings.TrimSpace(s.MustWarden("token", "create", "--role", "app", "--user", "bob"))
	out := httpsPostJSON(t, estClient(t, filepath.Join(s.Data, "pki", "root.crt"), nil), "https://"+s.API+"/v1/claims", appToken)
	if err := cl.Claim(ctx, out); err != nil {
		t.Fatalf("claim: %v", err)
	}
	if err := cl.Claim(ctx, out); !errors.Is(err, device.ErrClaimRefused) {
		t.Fatalf("replayed claim: %v", err)
	}
	if owner := wardentest.JSONField(t, s.MustWarden("device", "show", "sdk-e", "--json"), "owner"); owner != "bob" {
		t.Fatalf("owner %q", owner)
	}
}

// httpsPostJSON mints a claim token with an app's API token.
func httpsPostJSON(t testing.TB, cl *http.Client, url, bearer string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST %s: HTTP %d %v", url, resp.StatusCode, err)
	}
	return out.Token
}
