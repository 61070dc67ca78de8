package wardentest

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) { Main(m) }

// TestServerSurvivesKillAndRestart drives the harness the way a fault
// test would: traffic through the relay, SIGKILL, restart on the same
// data directory, and the same credentials working on the new ports.
func TestServerSurvivesKillAndRestart(t *testing.T) {
	s := Start(t, t.TempDir())
	for name, addr := range map[string]string{"mqtts": s.MQTTS, "wss": s.WSS, "http": s.HTTP, "api": s.API} {
		if addr == "" {
			t.Errorf("no %s address read from the banner:\n%s", name, s.Out())
		}
	}
	if s.Plain != "" {
		t.Errorf("plain listener %q without --mqtt", s.Plain)
	}
	if !strings.Contains(s.Log(), "level=") && !strings.Contains(s.Log(), `"level"`) {
		t.Errorf("no log lines captured:\n%s", s.Log())
	}
	dev := s.AddDevice("wt-dev")
	reader := s.AddService("wt-reader", "reader")
	if !strings.Contains(s.MustWarden("device", "list"), "wt-dev") {
		t.Fatal("device list does not show the added device")
	}
	if _, _, err := s.Warden("device", "show", "no-such-device"); err == nil {
		t.Error("device show of an unknown device succeeded")
	}

	svc := MustConnectRaw(t, s.MQTTS, reader, RawOpts{Clean: true})
	if code := svc.Subscribe(t, "fleet/#", 1); code > 2 {
		t.Fatalf("reader subscribe fleet/#: reason 0x%02x", code)
	}
	rc := MustConnectRaw(t, s.MQTTS, dev, RawOpts{Clean: true})
	if code, err := rc.Publish(t, "private/wt-dev/up/t", []byte("before"), 1); code != 0 || err != nil {
		t.Fatalf("publish: reason 0x%02x, %v", code, err)
	}
	ExpectMessage(t, svc.Msgs, "fleet/wt-dev/up/t", "before", 5*time.Second)
	ExpectNoMessage(t, svc.Msgs, 100*time.Millisecond)
	if n := s.Metric(t, "warden_relay_messages_total", `direction="up"`, `outcome="forwarded"`); n < 1 {
		t.Errorf("relay metric = %v, want >= 1", n)
	}

	// A client ID that is not the certificate's identity is refused and
	// audited: ConnectRaw hands back the CONNACK with the error.
	if _, ca, err := ConnectRaw(t, s.MQTTS, dev, RawOpts{ClientID: "someone-else", Clean: true}); err == nil || ca == nil || ca.ReasonCode < 0x80 {
		t.Fatalf("connect as someone-else: connack=%+v err=%v, want a refusal", ca, err)
	}
	Eventually(t, 5*time.Second, "the audit line of the refused connect", func() bool {
		return s.AuditContains(`"action":"mqtt.connect"`, `"actor":"device:wt-dev"`)
	})

	oldAddr, oldPID := s.MQTTS, s.Process().Pid
	s.Kill()
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Kill")
	}
	select {
	case <-rc.Down:
	case <-time.After(5 * time.Second):
		t.Fatal("the raw client did not notice the killed server")
	}
	if _, _, err := ConnectRaw(t, oldAddr, dev, RawOpts{Clean: true}); err == nil {
		t.Fatal("connected to a killed server")
	}

	s.Restart()
	if s.Process().Pid == oldPID {
		t.Fatal("Restart kept the killed process")
	}
	select {
	case <-s.Done():
		t.Fatalf("the restarted server exited:\n%s", s.Log())
	default:
	}
	svc = MustConnectRaw(t, s.MQTTS, reader, RawOpts{Clean: true})
	svc.Subscribe(t, "fleet/#", 1)
	cl := ConnectSDK(t, s, dev)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cl.PublishUp(ctx, "t", []byte("after"), 1); err != nil {
		t.Fatalf("PublishUp after the restart: %v", err)
	}
	ExpectMessage(t, svc.Msgs, "fleet/wt-dev/up/t", "after", 5*time.Second)
}

func TestExpiredDeviceIsRefused(t *testing.T) {
	s := Start(t, t.TempDir())
	c := s.AddExpiredDevice("wt-old")
	cert, roots := c.TLS(t)
	if cert.Leaf != nil && time.Now().Before(cert.Leaf.NotAfter) {
		t.Fatalf("certificate valid until %v", cert.Leaf.NotAfter)
	}
	conn, err := DialTLS(t, s.MQTTS, &cert, roots)
	if err == nil {
		// TLS 1.3 reports the server's refusal of a client certificate on
		// the first read, not in the handshake.
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Fatal("the server accepted an expired client certificate")
	}
	Eventually(t, 3*time.Second, "the expired-certificate handshake metric", func() bool {
		return s.Metric(t, "warden_tls_handshake_failures_total", `reason="certificate-expired"`) >= 1
	})
}

func TestRunWardenWithoutABinary(t *testing.T) {
	t.Setenv(BinaryEnv, "")
	if _, _, err := RunWarden(t.TempDir(), "version"); err == nil || !strings.Contains(err.Error(), "wardentest.Main") {
		t.Fatalf("RunWarden without a binary: %v, want an error naming wardentest.Main", err)
	}
}

func TestEnvDropsWardenSettings(t *testing.T) {
	t.Setenv("WARDEN_LOG_LEVEL", "error")
	t.Setenv("WARDENTEST_PROBE", "kept")
	env := Env()
	for _, kv := range env {
		if strings.HasPrefix(kv, "WARDEN_") || strings.HasPrefix(kv, BinaryEnv+"=") {
			t.Errorf("Env passes %s to warden", kv)
		}
	}
	if !slices.Contains(env, "WARDENTEST_PROBE=kept") {
		t.Error("Env drops a variable that is not warden's")
	}
	if bin := Binary(t); bin == "" {
		t.Fatal("no binary")
	} else if _, err := os.Stat(bin); err != nil {
		t.Fatalf("binary %s: %v", bin, err)
	}
}

func TestSumMetric(t *testing.T) {
	body := `# HELP warden_x_total Things.
# TYPE warden_x_total counter
warden_x_total{kind="a",outcome="ok"} 2
warden_x_total{kind="b",outcome="ok"} 3
warden_x_total{kind="b",outcome="denied"} 5
warden_x_total_extra{kind="a"} 100
warden_y 7
warden_z 1.5e+06
`
	for _, tc := range []struct {
		name   string
		metric string
		labels []string
		want   float64
	}{
		{"all series", "warden_x_total", nil, 10},
		{"one label", "warden_x_total", []string{`kind="b"`}, 8},
		{"every label must match", "warden_x_total", []string{`kind="b"`, `outcome="ok"`}, 3},
		{"no match", "warden_x_total", []string{`kind="c"`}, 0},
		{"longer names are other metrics", "warden_x", nil, 0},
		{"no labels", "warden_y", nil, 7},
		{"exponent", "warden_z", nil, 1.5e6},
		{"comments are not samples", "# HELP", nil, 0},
		{"unknown", "warden_nope", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sumMetric(body, tc.metric, tc.labels...); got != tc.want {
				t.Errorf("sumMetric(%s, %q) = %v, want %v", tc.metric, tc.labels, got, tc.want)
			}
		})
	}
}

func TestJSONField(t *testing.T) {
	doc := `{"id":"d1","credentials":[{"serial":"01"},{"serial":"02","tags":["x","y"]}],"nested":{"a":{"b":"deep"}}}`
	for _, tc := range []struct{ path, want string }{
		{"id", "d1"},
		{"credentials.0.serial", "01"},
		{"credentials.1.serial", "02"},
		{"credentials.1.tags.1", "y"},
		{"nested.a.b", "deep"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			if got := JSONField(t, doc, tc.path); got != tc.want {
				t.Errorf("JSONField(%s) = %q, want %q", tc.path, got, tc.want)
			}
		})
	}
}

func TestSyncBuffer(t *testing.T) {
	var b SyncBuffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 100 {
			_, _ = b.Write([]byte("x"))
		}
	}()
	for range 100 {
		_ = b.String()
	}
	<-done
	if got := b.String(); got != strings.Repeat("x", 100) {
		t.Fatalf("got %d bytes, want 100", len(got))
	}
}
