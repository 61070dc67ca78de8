package flood

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/mqttattack"
	"github.com/warden-iot/warden/internal/wardentest"
)

// TestSlowlorisIsCutAtTheConnectTimeout opens many connections and leaves
// each hanging at a different stage of the handshake, all at once:
//
//   - TCP that never starts TLS,
//   - a complete ClientHello, then nothing (the server has answered and
//     waits for the client's Finished),
//   - half a ClientHello record,
//   - a complete TLS handshake and no CONNECT,
//   - a complete TLS handshake and half a CONNECT.
//
// Threat: slowloris, holding connections open to exhaust the server's
// sockets, goroutines or handshake capacity so that real devices cannot
// connect.
// Control: the deadline every accepted connection gets
// (guardedListener.acceptLoop, limits.connect_timeout, here 1s, the
// minimum) and the handshake token pool, which a handshake holds only
// while it computes, never while it waits for the network
// (internal/broker/listener.go, admittedConn).
// Asserts: while the stalled peers hang, a new device connects and the
// control group's round trips continue; every stalled connection is closed
// by the server at about the connect timeout; the handshake stalls are
// counted in warden_tls_handshake_failures_total{reason="timeout"} and the
// CONNECT stalls in warden_mqtt_auth_failures_total{reason="connect-timeout"};
// tls.handshake and mqtt.connect "denied" audit lines with those reasons
// exist (sampled); no handshake is left waiting for a token.
func TestSlowlorisIsCutAtTheConnectTimeout(t *testing.T) {
	const timeout = time.Second
	// The connection limiter is not what this test is about: let every
	// stalled peer in. One handshake token: if a stalled peer held it, no
	// one else could connect until the deadline cut the staller.
	s := wardentest.Start(t, t.TempDir(), "--connect-timeout", timeout.String(), "--connection-burst", "100000", "--connection-rate", "100000",
		"--connection-rate-per-source", "0", "--handshake-concurrency", "1")
	devs := s.ProvisionDevices(5)
	ctl := wardentest.StartControlGroup(t, s, devs[:3], 50*time.Millisecond)
	slow, late := devs[3], devs[4]
	cert, pool := slow.TLS(t)
	hello, err := mqttattack.ClientHello(&tls.Config{ServerName: "localhost", RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	hsBefore := s.Metric(t, "warden_tls_handshake_failures_total", `listener="mqtts"`, `reason="timeout"`)
	connBefore := s.Metric(t, "warden_mqtt_auth_failures_total", `reason="connect-timeout"`)

	type kind struct {
		name      string
		n         int
		handshake bool   // the stall is in the TLS handshake, not in CONNECT
		tls       bool   // complete the TLS handshake first
		prefix    []byte // then write this and stall
	}
	half := mqttattack.Connect(slow.ID, 30)
	kinds := []kind{
		{"tcp-no-tls", scale(150, 2000), true, false, nil},
		{"client-hello-then-stall", scale(60, 500), true, false, hello},
		{"half-client-hello", scale(30, 300), true, false, hello[:len(hello)/2]},
		{"tls-no-connect", scale(20, 200), false, true, nil},
		{"tls-half-connect", scale(10, 100), false, true, half[:len(half)/2]},
	}
	var stalled []*mqttattack.Stalled
	count := map[string]int{}
	for _, k := range kinds {
		for range k.n {
			var c net.Conn
			if k.tls {
				tc, err := wardentest.DialTLS(t, s.MQTTS, &cert, pool)
				if err != nil {
					t.Fatalf("%s: TLS: %v", k.name, err)
				}
				c = tc
			} else {
				if c, err = net.Dial("tcp", s.MQTTS); err != nil {
					t.Fatalf("%s: dial: %v", k.name, err)
				}
			}
			st, err := mqttattack.Stall(c, k.prefix)
			if err != nil {
				t.Fatalf("%s: %v", k.name, err)
			}
			t.Cleanup(func() { _ = st.Close() })
			stalled = append(stalled, st)
		}
		count[k.name] = k.n
	}
	opened := time.Now()
	t.Logf("%d stalled connections open: %v", len(stalled), count)

	// While they hang, a device that was not connected gets in, as fast as
	// ever: the stalled peers hold no handshake token.
	start := time.Now()
	wardentest.MustConnectRaw(t, s.MQTTS, late, wardentest.RawOpts{Clean: true})
	if d := time.Since(start); d > timeout {
		t.Errorf("a new device needed %v to connect among the stalled peers", d)
	} else {
		t.Logf("a new device connected in %v among %d stalled peers", d, len(stalled))
	}

	// Every stalled connection is closed by the server, at about the
	// deadline.
	var longest time.Duration
	for i, st := range stalled {
		select {
		case <-st.Done():
		case <-time.After(max(timeout+5*time.Second-time.Since(opened), 0)):
			t.Fatalf("stalled connection %d still open %v after it was opened (connect timeout %v)", i, time.Since(opened), timeout)
		}
		if !st.ClosedByServer() {
			t.Fatalf("stalled connection %d ended, but not by the server", i)
		}
		longest = max(longest, st.ClosedAfter())
	}
	t.Logf("all %d cut within %v", len(stalled), longest)
	if longest < timeout-100*time.Millisecond {
		t.Errorf("a stalled connection was cut after only %v, before the %v deadline", longest, timeout)
	}

	handshakes := count["tcp-no-tls"] + count["client-hello-then-stall"] + count["half-client-hello"]
	connects := count["tls-no-connect"] + count["tls-half-connect"]
	wardentest.Eventually(t, 5*time.Second, "the stalls counted", func() bool {
		return s.Metric(t, "warden_tls_handshake_failures_total", `listener="mqtts"`, `reason="timeout"`)-hsBefore >= float64(handshakes) &&
			s.Metric(t, "warden_mqtt_auth_failures_total", `reason="connect-timeout"`)-connBefore >= float64(connects)
	})
	if !s.AuditContains(`"action":"tls.handshake"`, `"outcome":"denied"`, `"reason":"timeout"`) {
		t.Error("no tls.handshake audit line with reason timeout")
	}
	if !s.AuditContains(`"action":"mqtt.connect"`, `"outcome":"denied"`, `"reason":"connect-timeout"`) {
		t.Error("no mqtt.connect audit line with reason connect-timeout")
	}
	if n := len(s.AuditLines(`"reason":"timeout"`)) + len(s.AuditLines(`"reason":"connect-timeout"`)); n >= len(stalled) {
		t.Errorf("%d audit lines for %d stalled connections: not sampled", n, len(stalled))
	}
	if w := s.Metric(t, "warden_tls_handshakes_waiting"); w != 0 {
		t.Errorf("%v handshakes still wait for a token", w)
	}

	// And the server still takes new devices.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		c := attackerTLS(t, s, slow)
		if code, err := mqttattack.Establish(ctx, c, slow.ID, 30); err != nil || code != 0 {
			t.Fatalf("connect %d after the slowloris: 0x%02x %v", i, code, err)
		}
		_ = c.Close()
	}
	controlOK(t, ctl)
	healthy(t, s)
}
