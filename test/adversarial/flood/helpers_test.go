package flood

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/warden-iot/warden/internal/mqttattack"
	"github.com/warden-iot/warden/internal/wardentest"
)

// full reports whether ADVERSARIAL_FULL asks for the large runs.
func full() bool { return os.Getenv("ADVERSARIAL_FULL") != "" }

// strict reports whether ADVERSARIAL_STRICT asks for the strict
// latency bounds.
func strict() bool { return os.Getenv("ADVERSARIAL_STRICT") != "" }

// scale returns ci, or large under ADVERSARIAL_FULL.
func scale(ci, large int) int {
	if full() {
		return large
	}
	return ci
}

// attackerTLS opens a TLS connection to the MQTTS listener with c's valid
// certificate: the attacker is a device, or holds a device's key.
func attackerTLS(t *testing.T, s *wardentest.Server, c wardentest.Creds) net.Conn {
	t.Helper()
	cert, pool := c.TLS(t)
	conn, err := wardentest.DialTLS(t, s.MQTTS, &cert, pool)
	if err != nil {
		t.Fatalf("%s: TLS handshake: %v", c.ID, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// attacker opens a TLS connection with c's certificate and gets its
// CONNECT accepted with the keep-alive given (in seconds): an
// authenticated client about to misbehave.
func attacker(t *testing.T, s *wardentest.Server, c wardentest.Creds, keepAlive uint16) net.Conn {
	t.Helper()
	conn := attackerTLS(t, s, c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, err := mqttattack.Establish(ctx, conn, c.ID, keepAlive)
	if err != nil || code != 0 {
		t.Fatalf("%s: CONNECT: reason 0x%02x, %v", c.ID, code, err)
	}
	return conn
}

// alive reports whether conn still answers a PINGREQ within two seconds,
// skipping whatever else the broker sends first.
func alive(conn net.Conn) bool {
	if _, err := conn.Write(mqttattack.Pingreq()); err != nil {
		return false
	}
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	for {
		cp, err := packets.ReadPacket(conn)
		if err != nil {
			return false
		}
		if cp.Type == packets.PINGRESP {
			return true
		}
	}
}

// counters reads the named counter for each value of one label.
func counters(t *testing.T, s *wardentest.Server, name, label string, values ...string) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, v := range values {
		m[v] = s.Metric(t, name, label+`="`+v+`"`)
	}
	return m
}

// grown returns the values whose counter grew from before to after.
func grown(before, after map[string]float64) []string {
	var g []string
	for k, v := range after {
		if v > before[k] {
			g = append(g, k)
		}
	}
	return g
}

// healthy fails the test unless the server still runs, says so, and has
// not had to recover from a panic.
func healthy(t *testing.T, s *wardentest.Server) {
	t.Helper()
	select {
	case <-s.Done():
		t.Fatalf("warden serve exited:\n%s", s.Log())
	default:
	}
	if body := wardentest.HTTPGet(t, "http://"+s.HTTP+"/healthz"); !strings.Contains(body, "ok") {
		t.Fatalf("/healthz = %q", body)
	}
	// The broker contains a panic to its connection (endCounter): alive,
	// but a bug an attacker can trigger.
	if n := s.Metric(t, "warden_mqtt_forced_disconnects_total", `reason="panic"`); n > 0 {
		t.Fatalf("the broker recovered from %v panics serving connections:\n%s", n, s.Log())
	}
}

// controlOK stops the control group, after its every member made at
// least one more round trip, and fails the test if it lost a member, a
// message or a PUBACK.
func controlOK(t *testing.T, g *wardentest.ControlGroup) wardentest.ControlReport {
	t.Helper()
	want := g.Received() + g.Size()
	wardentest.Eventually(t, 10*time.Second, "control group round trips", func() bool { return g.Received() >= want })
	r := g.Stop()
	t.Logf("control group: %v", r)
	if len(r.Disconnected) > 0 {
		t.Errorf("control group members disconnected: %v", r.Disconnected)
	}
	if r.Failed > 0 || r.Received < r.Sent || r.Sent == 0 {
		t.Errorf("control group: %d of %d messages arrived, %d publishes failed", r.Received, r.Sent, r.Failed)
	}
	return r
}

// drain reads a connection to its end, for a test that waits for the
// server to close it.
func drain(c net.Conn) error {
	_, err := io.Copy(io.Discard, c)
	return err
}
