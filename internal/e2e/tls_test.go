package e2e

import (
	"context"
	"crypto/tls"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/wardentest"
)

// sClient runs openssl s_client against addr and returns its output and
// whether a session was established (a negotiated cipher other than NONE).
func sClient(t testing.TB, addr string, c wardentest.Creds, args ...string) (string, bool) {
	t.Helper()
	openssl := wardentest.RequireTool(t, "openssl", "openssl")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	full := append([]string{"s_client", "-connect", addr, "-servername", "localhost", "-CAfile", c.CA,
		"-cert", c.Cert, "-key", c.Key, "-verify_return_error", "-brief"}, args...)
	cmd := exec.CommandContext(ctx, openssl, full...)
	cmd.Stdin = strings.NewReader("") // EOF right after the handshake
	out, _ := cmd.CombinedOutput()
	s := string(out)
	ok := strings.Contains(s, "CONNECTION ESTABLISHED") && strings.Contains(s, "Ciphersuite:") && !strings.Contains(s, "Ciphersuite: NONE")
	return s, ok
}

func TestStrictListenerIsTLS13Only(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	c := s.AddDevice("tls-strict")

	if out, ok := sClient(t, s.MQTTS, c, "-tls1_3"); !ok || !strings.Contains(out, "TLSv1.3") {
		t.Fatalf("TLS 1.3 refused by the strict listener:\n%s", out)
	}
	if out, ok := sClient(t, s.MQTTS, c, "-tls1_2"); ok {
		t.Fatalf("TLS 1.2 accepted by the strict listener:\n%s", out)
	}
	for _, v := range []string{"-tls1_1", "-tls1"} {
		if out, ok := sClient(t, s.MQTTS, c, v, "-cipher", "DEFAULT@SECLEVEL=0"); ok {
			t.Fatalf("%s accepted by the strict listener:\n%s", v, out)
		}
	}
	// The WSS listener applies the same profile.
	if out, ok := sClient(t, s.WSS, c, "-tls1_2"); ok {
		t.Fatalf("TLS 1.2 accepted by the strict WSS listener:\n%s", out)
	}
	if n := s.Metric(t, "warden_tls_handshake_failures_total", `reason="protocol-version"`); n < 3 {
		t.Errorf("protocol-version handshake failures = %v, want >= 3", n)
	}
}

func TestCompatListenerAllowsTLS12WithAEADOnly(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--mqtts-tls-profile", "compat")
	c := s.AddDevice("tls-compat")

	for _, suite := range []string{"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"} {
		out, ok := sClient(t, s.MQTTS, c, "-tls1_2", "-cipher", suite)
		if !ok || !strings.Contains(out, "TLSv1.2") || !strings.Contains(out, suite) {
			t.Errorf("compat listener refused TLS 1.2 with %s:\n%s", suite, out)
		}
	}
	for _, suite := range []string{"ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA", "AES128-GCM-SHA256", "AES256-SHA"} {
		if out, ok := sClient(t, s.MQTTS, c, "-tls1_2", "-cipher", suite+":@SECLEVEL=0"); ok {
			t.Errorf("compat listener accepted non-AEAD or non-ECDHE suite %s:\n%s", suite, out)
		}
	}
	for _, v := range []string{"-tls1_1", "-tls1"} {
		if out, ok := sClient(t, s.MQTTS, c, v, "-cipher", "DEFAULT@SECLEVEL=0"); ok {
			t.Fatalf("%s accepted by the compat listener:\n%s", v, out)
		}
	}
	if out, ok := sClient(t, s.MQTTS, c, "-tls1_3"); !ok {
		t.Fatalf("TLS 1.3 refused by the compat listener:\n%s", out)
	}
}

// TestOldTLSRefusedByGoClient checks TLS 1.0 and 1.1 without relying on
// the local OpenSSL build still speaking them.
func TestOldTLSRefusedByGoClient(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--mqtts-tls-profile", "compat")
	c := s.AddDevice("old-tls")
	cert, pool := c.TLS(t)
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		conn, err := wardentest.DialTLS(t, s.MQTTS, &cert, pool, func(cfg *tls.Config) { cfg.MinVersion = v; cfg.MaxVersion = v })
		if err == nil {
			conn.Close()
			t.Errorf("TLS version %x accepted", v)
		}
	}
}
