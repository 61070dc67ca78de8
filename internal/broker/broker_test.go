package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/warden-iot/warden/internal/identity"
)

func TestServerTLSConfigProfiles(t *testing.T) {
	pool := x509.NewCertPool()
	strict, err := ServerTLSConfig(tls.Certificate{}, pool, ProfileStrict, true)
	if err != nil {
		t.Fatal(err)
	}
	if strict.MinVersion != tls.VersionTLS13 || strict.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("strict: min %x auth %v", strict.MinVersion, strict.ClientAuth)
	}
	if strict.CurvePreferences[0] != tls.X25519MLKEM768 {
		t.Errorf("hybrid PQ not offered first: %v", strict.CurvePreferences)
	}
	compat, err := ServerTLSConfig(tls.Certificate{}, pool, ProfileCompat, false)
	if err != nil {
		t.Fatal(err)
	}
	if compat.MinVersion != tls.VersionTLS12 {
		t.Errorf("compat min version %x", compat.MinVersion)
	}
	for _, id := range compat.CipherSuites {
		name := tls.CipherSuiteName(id)
		if !strings.HasPrefix(name, "TLS_ECDHE_") || !(strings.Contains(name, "GCM") || strings.Contains(name, "CHACHA20")) {
			t.Errorf("compat allows %s", name)
		}
	}
	for _, c := range compat.CurvePreferences {
		if c == tls.X25519MLKEM768 {
			t.Error("hybrid PQ offered although disabled")
		}
	}
	if _, err := ServerTLSConfig(tls.Certificate{}, pool, "legacy", true); err == nil {
		t.Error("unknown profile accepted")
	}
	if _, err := ServerTLSConfig(tls.Certificate{}, nil, ProfileStrict, true); err == nil {
		t.Error("missing client CA pool accepted")
	}
}

func TestHandshakeReason(t *testing.T) {
	cases := map[string]string{
		"tls: failed to verify certificate: x509: certificate has expired or is not yet valid": "certificate-expired",
		"tls: failed to verify certificate: x509: certificate signed by unknown authority":     "unknown-ca",
		"tls: client didn't provide a certificate":                                             "no-client-certificate",
		"tls: client offered only unsupported versions: [302 301]":                             "protocol-version",
		"tls: no cipher suite supported by both client and server":                             "cipher-suite",
		"tls: first record does not look like a TLS handshake":                                 "not-tls",
		"EOF":           "peer-closed",
		"something new": "other",
	}
	for msg, want := range cases {
		if got := handshakeReason(errors.New(msg)); got != want {
			t.Errorf("handshakeReason(%q) = %q, want %q", msg, got, want)
		}
	}
	if got := handshakeReason(fmt.Errorf("x: %w", context.DeadlineExceeded)); got != "timeout" {
		t.Errorf("deadline: %q", got)
	}
}

func TestPrincipalTagRoundTrip(t *testing.T) {
	for _, p := range []identity.Principal{
		{Kind: identity.KindDevice, ID: "0badf00d"},
		{Kind: identity.KindService, ID: "ops", Role: identity.RoleCommander},
	} {
		got, ok := parsePrincipalTag(principalTag(p))
		if !ok || got != p {
			t.Errorf("round trip %v -> %v %v", p, got, ok)
		}
	}
	for _, bad := range []string{"", "device:x", "warden:device:", "warden:device:a/b", "warden:service:x:admin", "warden:robot:x"} {
		if _, ok := parsePrincipalTag([]byte(bad)); ok {
			t.Errorf("parsePrincipalTag(%q) accepted", bad)
		}
	}
}

func TestQuietMochiKeepsAttributesAndDemotes(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(quietMochi{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})})
	log.Warn("", "error", "not authorized")
	log.Warn("real warning", "k", "v")
	out := buf.String()
	if !strings.Contains(out, `level=DEBUG msg="" error="not authorized"`) {
		t.Errorf("empty-message warning not demoted with its attributes: %q", out)
	}
	if !strings.Contains(out, `level=WARN msg="real warning" k=v`) {
		t.Errorf("real warning changed: %q", out)
	}
	buf.Reset()
	quiet := slog.New(quietMochi{slog.NewTextHandler(&buf, nil)})
	quiet.Warn("", "error", "x")
	if buf.Len() != 0 {
		t.Errorf("demoted line printed at info level: %q", buf.String())
	}
}
