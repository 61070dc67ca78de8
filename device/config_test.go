package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/internal/identity"
)

func TestConfigValidation(t *testing.T) {
	ca, err := newTestCA("warden test root")
	if err != nil {
		t.Fatal(err)
	}
	dev, err := ca.deviceCert("abc", nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.deviceCert("xyz", nil)
	if err != nil {
		t.Fatal(err)
	}
	noURI, err := ca.serverCert([]string{"localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	service, err := ca.issue(&x509.Certificate{URIs: []*url.URL{identity.URI(identity.KindService, "svc")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mismatched := tls.Certificate{Certificate: dev.Certificate, PrivateKey: other.PrivateKey}

	valid := func() Config {
		return Config{Servers: []string{"mqtts://warden.example:8883"}, Certificate: dev, RootCAs: ca.pool}
	}
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"no servers", func(c *Config) { c.Servers = nil }, "Config.Servers is empty"},
		{"plain mqtt", func(c *Config) { c.Servers = []string{"mqtt://warden.example:1883"} }, "not encrypted"},
		{"plain ws", func(c *Config) { c.Servers = []string{"ws://warden.example/mqtt"} }, "not encrypted"},
		{"unknown scheme", func(c *Config) { c.Servers = []string{"https://warden.example"} }, `scheme "https"`},
		{"no host", func(c *Config) { c.Servers = []string{"mqtts://:8883"} }, "no host"},
		{"credentials in URL", func(c *Config) { c.Servers = []string{"mqtts://user:secret@warden.example"} }, "user information"},
		{"bad URL", func(c *Config) { c.Servers = []string{"mqtts://[::1"} }, "Config.Servers[0]"},
		{"second server bad", func(c *Config) { c.Servers = append(c.Servers, "tcp://x:1") }, "Config.Servers[1]"},
		{"no root", func(c *Config) { c.RootCAs = nil }, "Config.RootCAs is nil"},
		{"no certificate", func(c *Config) { c.Certificate = tls.Certificate{} }, "Config.Certificate is empty"},
		{"no private key", func(c *Config) { c.Certificate.PrivateKey = nil }, "no usable private key"},
		{"key of another certificate", func(c *Config) { c.Certificate = mismatched }, "differs from the certificate"},
		{"certificate without a Warden URI", func(c *Config) { c.Certificate = noURI }, "no urn:warden: URI SAN"},
		{"service certificate", func(c *Config) { c.Certificate = service }, "names a service"},
		{"DeviceID differs", func(c *Config) { c.DeviceID = "xyz" }, `Config.DeviceID "xyz" differs`},
		{"negative keep-alive", func(c *Config) { c.KeepAlive = -time.Second }, "Config.KeepAlive"},
		{"sub-second keep-alive", func(c *Config) { c.KeepAlive = time.Millisecond }, "Config.KeepAlive"},
		{"huge keep-alive", func(c *Config) { c.KeepAlive = 65536 * time.Second }, "Config.KeepAlive"},
		{"negative session expiry", func(c *Config) { c.SessionExpiry = -1 }, "Config.SessionExpiry"},
		{"huge session expiry", func(c *Config) { c.SessionExpiry = (1 << 32) * time.Second }, "Config.SessionExpiry"},
		{"negative backoff", func(c *Config) { c.MinBackoff = -1 }, "must not be negative"},
		{"max below min", func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Minute, time.Second }, "below Config.MinBackoff"},
		{"negative timeout", func(c *Config) { c.ConnectTimeout = -1 }, "Config.ConnectTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid()
			tt.modify(&cfg)
			c, err := Connect(context.Background(), cfg)
			if err == nil {
				_ = c.Close(context.Background())
				t.Fatal("Connect accepted the configuration")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q repeats a password", err)
			}
		})
	}

	// The defaults, and what is derived from the certificate.
	s, err := valid().validate()
	if err != nil {
		t.Fatal(err)
	}
	if s.id != "abc" || s.keepAlive != 60 || s.sessionExpiry != 0 || s.minBackoff != time.Second ||
		s.maxBackoff != 2*time.Minute || s.connectTimeout != 10*time.Second || s.receiveMaximum != 32 {
		t.Errorf("defaults: %+v", s)
	}
	if s.tls.MinVersion != tls.VersionTLS13 || s.tls.RootCAs != ca.pool || s.tls.ServerName != "" || s.tls.GetClientCertificate == nil {
		t.Errorf("TLS config: %+v", s.tls)
	}
	if cc, err := s.tls.GetClientCertificate(&tls.CertificateRequestInfo{}); err != nil || cc.Leaf != dev.Leaf {
		t.Error("the device certificate is not always sent")
	}
	cfg := valid()
	cfg.Servers = []string{"MQTTS://warden.example", "wss://warden.example:8884/mqtt"}
	cfg.DeviceID = "abc"
	cfg.SessionExpiry = 500 * time.Millisecond
	if s, err = cfg.validate(); err != nil {
		t.Fatal(err)
	}
	if s.servers[0].String() != "mqtts://warden.example:8883" || s.servers[1].String() != "wss://warden.example:8884/mqtt" {
		t.Errorf("servers: %v", s.servers)
	}
	if s.sessionExpiry != 1 {
		t.Errorf("a 500ms session expiry became %ds", s.sessionExpiry)
	}
}

func TestValidChannel(t *testing.T) {
	tests := []struct {
		ch       string
		wildcard bool
		ok       bool
	}{
		{"telemetry", false, true},
		{"température", false, true},
		{"a-b_c.d", false, true},
		{"", false, false},
		{"a/b", false, false},
		{"+", false, false},
		{"#", false, false},
		{"a+", false, false},
		{"a#", false, false},
		{"a\x00", false, false},
		{"\xff", false, false},
		{"+", true, true},
		{"#", true, true},
		{"cmd", true, true},
		{"a/+", true, false},
		{"+#", true, false},
		{"", true, false},
	}
	for _, tt := range tests {
		if err := validChannel(tt.ch, tt.wildcard); (err == nil) != tt.ok {
			t.Errorf("validChannel(%q, %v) = %v, want ok=%v", tt.ch, tt.wildcard, err, tt.ok)
		}
	}
}

func TestPermanent(t *testing.T) {
	connack := func(code byte) error {
		return autopaho.NewConnackError(errors.New("refused"), &paho.Connack{ReasonCode: code})
	}
	remote := func(code uint8) error {
		return fmt.Errorf("read: %w", &net.OpError{Op: "remote error", Err: tls.AlertError(code)})
	}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"not authorized", connack(0x87), true},
		{"bad user name or password", connack(0x86), true},
		{"banned", connack(0x8A), true},
		{"client identifier not valid", connack(0x85), true},
		{"server unavailable", connack(0x88), false},
		{"server busy", connack(0x89), false},
		{"connection rate exceeded", connack(0x9F), false},
		{"unknown CA", fmt.Errorf("x: %w", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), true},
		{"host name", fmt.Errorf("x: %w", &tls.CertificateVerificationError{Err: x509.HostnameError{Host: "h"}}), true},
		{"broker rejects certificate", remote(42), true},
		{"broker revoked certificate", remote(44), true},
		{"broker wants a certificate", remote(116), true},
		{"handshake failure", remote(40), false},
		{"connection refused", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, false},
		{"timeout", context.DeadlineExceeded, false},
	}
	for _, tt := range tests {
		if got := permanent(tt.err); got != tt.want {
			t.Errorf("%s: permanent(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestRefusedErrorMessage(t *testing.T) {
	err := error(&RefusedError{Op: "publish", Target: "fleet/x", ReasonCode: 0x87, Reason: "policy"})
	want := "device: broker refused publish fleet/x: reason code 0x87 (not authorized): policy; a device may only use its own private/<id>/ topics"
	if err.Error() != want {
		t.Errorf("got %q\nwant %q", err, want)
	}
	err = &RefusedError{Op: "subscribe", Target: "a", ReasonCode: 0xFE}
	if !strings.Contains(err.Error(), "0xFE (unknown reason code)") {
		t.Errorf("got %q", err)
	}
}

func TestDeviceCertificateRejectedByBroker(t *testing.T) {
	e := newEnv(t)
	rogue, err := newTestCA("not warden")
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.config(t)
	if cfg.Certificate, err = rogue.deviceCert(e.id, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := Connect(testContext(t), cfg)
	if err == nil {
		_ = c.Close(context.Background())
		t.Fatal("the broker accepted a device certificate from another CA")
	}
	if !rejectedCertificate(err) || !strings.Contains(err.Error(), "rejected the device certificate") {
		t.Errorf("got %v, want a rejected-certificate error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Connect took %v to report the rejection", d)
	}
}
