package device

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warden-iot/warden/envelope"
)

func TestLoadEnvelopeBundle(t *testing.T) {
	const secretHex = "00112233445566778899aabbccddeeff"
	secret := []byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	tests := []struct {
		name     string
		json     string
		id       string
		suite    envelope.Suite
		epoch    uint32
		required bool
		want     string // error substring; "" for success
	}{
		{name: "ccm-8", json: `{"device_id":"0a1b2c3d","suite":"ccm-8","epoch":0,"secret_hex":"` + secretHex + `","required":false}`,
			id: "0a1b2c3d", suite: envelope.CCM8},
		{name: "legacy, later epoch, required, upper-case hex, unknown field, whitespace",
			json: "\n{ \"device_id\": \"dev-1\", \"suite\": \"legacy-cbc-hmac\", \"epoch\": 4294967295,\n  \"secret_hex\": \"" + strings.ToUpper(secretHex) + "\", \"required\": true, \"comment\": {\"x\": 1} }\n",
			id:   "dev-1", suite: envelope.LegacyCBCHMAC, epoch: 1<<32 - 1, required: true},
		{name: "sign-p256 without a secret", json: `{"device_id":"d","suite":"sign-p256","epoch":2,"required":true}`,
			id: "d", suite: envelope.SignP256, epoch: 2, required: true},
		{name: "sign-p256 with an empty secret", json: `{"device_id":"d","suite":"sign-p256","epoch":0,"secret_hex":"","required":false}`,
			id: "d", suite: envelope.SignP256},
		{name: "sign-p256 with a secret", json: `{"device_id":"d","suite":"sign-p256","epoch":0,"secret_hex":"` + secretHex + `","required":false}`, want: "no master secret"},
		{name: "no device ID", json: `{"suite":"ccm-8","epoch":0,"secret_hex":"` + secretHex + `","required":false}`, want: `missing "device_id"`},
		{name: "no suite", json: `{"device_id":"d","epoch":0,"secret_hex":"` + secretHex + `","required":false}`, want: `missing "suite"`},
		{name: "no epoch", json: `{"device_id":"d","suite":"ccm-8","secret_hex":"` + secretHex + `","required":false}`, want: `missing "epoch"`},
		{name: "no required", json: `{"device_id":"d","suite":"ccm-8","epoch":0,"secret_hex":"` + secretHex + `"}`, want: `missing "required"`},
		{name: "no secret", json: `{"device_id":"d","suite":"ccm-8","epoch":0,"required":false}`, want: `missing "secret_hex"`},
		{name: "bad device ID", json: `{"device_id":"a/b","suite":"ccm-8","epoch":0,"secret_hex":"` + secretHex + `","required":false}`, want: `"device_id"`},
		{name: "unknown suite", json: `{"device_id":"d","suite":"aes-gcm","epoch":0,"secret_hex":"` + secretHex + `","required":false}`, want: "unknown suite"},
		{name: "negative epoch", json: `{"device_id":"d","suite":"ccm-8","epoch":-1,"secret_hex":"` + secretHex + `","required":false}`, want: `field "epoch"`},
		{name: "epoch too large", json: `{"device_id":"d","suite":"ccm-8","epoch":4294967296,"secret_hex":"` + secretHex + `","required":false}`, want: `field "epoch"`},
		{name: "secret not a string", json: `{"device_id":"d","suite":"ccm-8","epoch":0,"secret_hex":12,"required":false}`, want: `field "secret_hex"`},
		{name: "short secret", json: `{"device_id":"d","suite":"ccm-8","epoch":0,"secret_hex":"` + secretHex[:30] + `","required":false}`, want: "30 characters"},
		{name: "secret not hex", json: `{"device_id":"d","suite":"ccm-8","epoch":0,"secret_hex":"` + secretHex[:31] + `g","required":false}`, want: "not hexadecimal"},
		{name: "trailing data", json: `{"device_id":"d","suite":"ccm-8","epoch":0,"secret_hex":"` + secretHex + `","required":false} {}`, want: "data after"},
		{name: "truncated", json: `{"device_id":"d","suite":"ccm-8","epoch":0,"secret_hex":"` + secretHex, want: "truncated"},
		{name: "syntax error", json: `{"device_id":"d",,"secret_hex":"` + secretHex + `"}`, want: "not valid JSON"},
		{name: "not an object", json: `["` + secretHex + `"]`, want: "not a JSON object"},
		{name: "empty", json: ``, want: "not a JSON object"},
	}
	dir := t.TempDir()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.Repeat("x", i+1)+".envelope.json")
			if err := os.WriteFile(path, []byte(tt.json), 0o600); err != nil {
				t.Fatal(err)
			}
			id, env, err := LoadEnvelopeBundle(path)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("got %v, want an error containing %q", err, tt.want)
				}
				if strings.Contains(strings.ToLower(err.Error()), secretHex[:16]) {
					t.Errorf("error %q quotes the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id != tt.id || env.Suite != tt.suite || env.Epoch != tt.epoch || env.Required != tt.required {
				t.Errorf("got %q %+v", id, env)
			}
			wantSecret := secret
			if tt.suite == envelope.SignP256 {
				wantSecret = nil
			}
			if !bytes.Equal(env.Secret, wantSecret) {
				t.Error("wrong secret")
			}
		})
	}

	if _, _, err := LoadEnvelopeBundle(filepath.Join(dir, "missing.json")); err == nil || !strings.Contains(err.Error(), "read envelope bundle") {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big.json")
	if err := os.WriteFile(big, bytes.Repeat([]byte(" "), maxBundleSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadEnvelopeBundle(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}

	// A loaded bundle plus a counter is a working configuration.
	path := filepath.Join(dir, "x.envelope.json")
	id, env, err := LoadEnvelopeBundle(path)
	if err != nil {
		t.Fatal(err)
	}
	env.Counter = memCounter(t)
	if _, err := (Config{Servers: []string{"mqtt://warden.example"}, DeviceID: id, Envelope: env}).validate(); err != nil {
		t.Errorf("a loaded bundle does not validate: %v", err)
	}
}
