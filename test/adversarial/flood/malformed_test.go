package flood

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/mqttattack"
	"github.com/warden-iot/warden/internal/wardentest"
)

// forcedReasons are the warden_mqtt_forced_disconnects_total reasons the
// broker gives a connection it cut for what the client sent.
var forcedReasons = []string{"malformed-packet", "protocol-error", "packet-too-large", "keepalive-timeout"}

// connectReasons are the warden_mqtt_auth_failures_total reasons of a
// connection that failed after TLS and before its CONNECT was
// authenticated.
var connectReasons = []string{"malformed-connect", "connect-timeout", "packet-too-large"}

func attacksFor(stage mqttattack.Stage) []mqttattack.Attack {
	var as []mqttattack.Attack
	for _, a := range mqttattack.Catalog() {
		if a.Stage == stage {
			as = append(as, a)
		}
	}
	return as
}

// TestMalformedMQTT throws malformed MQTT at one server, in three parts
// (subtests), while a control group keeps publishing: after-connect,
// before-connect and seeded-mixes. The device "mallory" (a random ID here)
// is the attacker; it holds a valid certificate. The connect timeout is
// the minimum, 1 s, and the flapping ban is out of the way: mallory
// connects once per attack.
func TestMalformedMQTT(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--connect-timeout", "1s", "--flap-max-connects", "1000000",
		"--connection-rate-per-source", "0") // hundreds of attack connections from one address with ADVERSARIAL_FULL
	devs := s.ProvisionDevices(3)
	ctl := wardentest.StartControlGroup(t, s, devs[:2], 50*time.Millisecond)
	mallory := devs[2]
	target := mqttattack.Target{ClientID: mallory.ID, Topic: "private/" + mallory.ID + "/up/x", FilterPrefix: "private/" + mallory.ID + "/down"}
	t.Run("after-connect", func(t *testing.T) { malformedAfterConnect(t, s, mallory, target) })
	t.Run("before-connect", func(t *testing.T) { malformedBeforeConnect(t, s, mallory, target) })
	t.Run("seeded-mixes", func(t *testing.T) { seededMixes(t, s, mallory, target) })
	controlOK(t, ctl)
	healthy(t, s)
}

// malformedAfterConnect throws every post-CONNECT attack of the catalog
// at the broker, each on a fresh authenticated connection.
//
// Threat: a device (or a stolen device key) crashes or wedges the broker
// with malformed MQTT, or misbehaves without a trace.
// Control: mochi's packet decoders and validation (third_party/mochi, with
// patches 8, variable byte integers, and 9, a SUBSCRIBE that crashed the
// process), endCounter's recover (a panic costs only its connection;
// healthy fails the test on one), the maximum packet size
// (limits.max_packet_size, checked from the header), the keep-alive
// deadline, securityHook.OnAuthPacket (AUTH refused); counted and audited
// by Broker.countDisconnect (internal/broker/defense.go).
// Asserts: each Refuse attack closes the connection at once, each Starve
// attack at the keep-alive deadline; warden_mqtt_forced_disconnects_total
// grows for each (malformed-packet, protocol-error, packet-too-large,
// keepalive-timeout); an mqtt.disconnect audit line names the device for
// every reason but keepalive-timeout; the broker stays up; the control
// group loses nothing and nobody.
func malformedAfterConnect(t *testing.T, s *wardentest.Server, mallory wardentest.Creds, target mqttattack.Target) {
	seen := map[string]bool{}
	for i, a := range attacksFor(mqttattack.AfterConnect) {
		t.Run(a.Name, func(t *testing.T) {
			keepAlive := uint16(30)
			wait := 5 * time.Second
			switch a.Want {
			case mqttattack.Starve:
				keepAlive = 1 // mochi cuts at 1.5 keep-alives: 1 s
			case mqttattack.Survive:
				wait = 300 * time.Millisecond
			}
			conn := attacker(t, s, mallory, keepAlive)
			before := counters(t, s, "warden_mqtt_forced_disconnects_total", "reason", forcedReasons...)
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			rep, err := mqttattack.Throw(ctx, conn, uint64(i), a, target)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %v", a.Want, rep)
			switch a.Want {
			case mqttattack.Refuse, mqttattack.Starve:
				if !rep.Closed {
					t.Fatalf("the broker kept the connection open %v after %s", wait, a.Name)
				}
				if a.Want == mqttattack.Refuse && rep.ClosedAfter > 2*time.Second {
					t.Errorf("refused only after %v", rep.ClosedAfter)
				}
				var g []string
				wardentest.Eventually(t, 3*time.Second, "a forced disconnect counted", func() bool {
					g = grown(before, counters(t, s, "warden_mqtt_forced_disconnects_total", "reason", forcedReasons...))
					return len(g) > 0
				})
				t.Logf("counted as %v", g)
				for _, r := range g {
					seen[r] = true
				}
				if a.Want == mqttattack.Starve && !slices.Contains(g, "keepalive-timeout") {
					t.Errorf("a starved read counted as %v, want keepalive-timeout", g)
				}
			case mqttattack.Survive:
				// Costly but valid (or random) input: the connection may be
				// refused or kept; kept, it must still work, unless random
				// bytes left the broker waiting for the rest of a packet.
				if !rep.Closed && !strings.HasPrefix(a.Name, "random-") && !alive(conn) {
					t.Errorf("after %s the connection neither closed nor answers PINGREQ", a.Name)
				}
			}
		})
	}
	healthy(t, s)
	for _, r := range []string{"malformed-packet", "protocol-error", "packet-too-large", "keepalive-timeout"} {
		if !seen[r] {
			t.Errorf("no attack was counted as %s", r)
		}
	}
	for r := range seen {
		if r == "keepalive-timeout" {
			continue // dead networks do it all day: counted, not audited
		}
		if !s.AuditContains(`"action":"mqtt.disconnect"`, `"subject":"device:`+mallory.ID+`"`, `"reason":"`+r+`"`) {
			t.Errorf("no mqtt.disconnect audit line for %s", r)
		}
	}
}

// malformedBeforeConnect throws the pre-CONNECT attacks of the
// catalog, each on a fresh TLS connection made with mallory's valid
// certificate (past TLS, not yet authenticated), and garbage on a plain TCP
// connection that never starts TLS.
//
// Threat: an unauthenticated peer wedges or crashes the broker with what
// it sends in place of CONNECT, or does so without a trace.
// Control: the connect deadline (guardedListener, limits.connect_timeout),
// mochi's CONNECT decoding and validation; counted and audited by
// endCounter / Broker.connectFailed (internal/broker/defense.go), and by
// Broker.handshakeFailed for the TCP garbage.
// Asserts: every connection is closed (Starve ones at the connect
// timeout, the rest at once); warden_mqtt_auth_failures_total grows
// (malformed-connect, connect-timeout, packet-too-large) and an
// mqtt.connect "denied" audit line with the reason exists;
// warden_tls_handshake_failures_total grows for the TCP garbage.
func malformedBeforeConnect(t *testing.T, s *wardentest.Server, mallory wardentest.Creds, target mqttattack.Target) {
	seen := map[string]bool{}
	for i, a := range attacksFor(mqttattack.BeforeConnect) {
		t.Run(a.Name, func(t *testing.T) {
			conn := attackerTLS(t, s, mallory)
			before := counters(t, s, "warden_mqtt_auth_failures_total", "reason", connectReasons...)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			rep, err := mqttattack.Throw(ctx, conn, uint64(i), a, target)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %v", a.Want, rep)
			if !rep.Closed {
				t.Fatalf("the broker kept the connection open 5s after %s", a.Name)
			}
			if a.Want == mqttattack.Refuse && rep.ClosedAfter > 900*time.Millisecond {
				t.Errorf("closed after %v: at the connect deadline, not at once", rep.ClosedAfter)
			}
			var g []string
			wardentest.Eventually(t, 3*time.Second, "a connect failure counted", func() bool {
				g = grown(before, counters(t, s, "warden_mqtt_auth_failures_total", "reason", connectReasons...))
				return len(g) > 0
			})
			t.Logf("counted as %v", g)
			if a.Want == mqttattack.Starve && !slices.Contains(g, "connect-timeout") {
				t.Errorf("a silent client counted as %v, want connect-timeout", g)
			}
			for _, r := range g {
				seen[r] = true
			}
		})
	}
	for r := range seen {
		wardentest.Eventually(t, 3*time.Second, "an mqtt.connect audit line for "+r, func() bool {
			return s.AuditContains(`"action":"mqtt.connect"`, `"outcome":"denied"`, `"reason":"`+r+`"`)
		})
	}
	if !seen["malformed-connect"] || !seen["connect-timeout"] {
		t.Errorf("reasons counted: %v", seen)
	}

	// Garbage where the ClientHello should be: refused by TLS itself.
	before := s.Metric(t, "warden_tls_handshake_failures_total", `listener="mqtts"`)
	raw, err := net.Dial("tcp", s.MQTTS)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, _ = raw.Write(mqttattack.HTTPRequest())
	_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := drain(raw); err != nil && strings.Contains(err.Error(), "timeout") {
		t.Fatalf("plain HTTP on the TLS port: not closed: %v", err)
	}
	wardentest.Eventually(t, 3*time.Second, "a handshake failure counted", func() bool {
		return s.Metric(t, "warden_tls_handshake_failures_total", `listener="mqtts"`) > before
	})
	healthy(t, s)
}

// seededMixes throws reproducible mixes of valid packets,
// attacks and random bytes (mqttattack.Run) at fresh connections, before
// and after CONNECT, several at a time. A failure names its seed; rerun
// from it with ADVERSARIAL_SEED=<seed> to get the same bytes (mixes
// alternate between the stages: an even offset from the first seed is
// before CONNECT).
//
// Threat: an input nobody thought of crashes or wedges the broker.
// Control: as for the two tests above.
// Asserts: every mix ends with the broker closing the connection (each ends
// with an attack it must refuse, or starves at the deadline); the broker
// stays up; the control group loses nothing.
func seededMixes(t *testing.T, s *wardentest.Server, mallory wardentest.Creds, target mqttattack.Target) {
	base := uint64(20261121)
	if v := os.Getenv("ADVERSARIAL_SEED"); v != "" {
		b, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("ADVERSARIAL_SEED=%q: not a seed: %v", v, err)
		}
		base = b
	}
	n := scale(12, 300)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	for i := range n {
		seed := base + uint64(i)
		stage := mqttattack.Stage(i % 2)
		sem <- struct{}{}
		var conn net.Conn
		if stage == mqttattack.AfterConnect {
			conn = attacker(t, s, mallory, 1) // a keep-alive of 1 s ends a mix random bytes left waiting
		} else {
			conn = attackerTLS(t, s, mallory)
		}
		wg.Go(func() {
			defer func() { <-sem }()
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
			defer cancel()
			rep, err := mqttattack.Run(ctx, conn, seed, mqttattack.Mix{Target: target, Stage: stage})
			mu.Lock()
			defer mu.Unlock()
			t.Logf("%s %v", stage, rep)
			if err != nil || !rep.Closed {
				failures = append(failures, fmt.Sprintf("%s %v (err %v)", stage, rep, err))
			}
		})
	}
	wg.Wait()
	for _, f := range failures {
		t.Errorf("the broker did not close a mix: %s", f)
	}
	t.Logf("%d mixes from seed %d on", n, base)
	healthy(t, s)
}
