package session

import (
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/internal/wardentest"
)

// mosquittoArgs are the connection flags of mosquitto_pub/mosquitto_sub
// for credentials c against addr, in MQTT version v ("mqttv5",
// "mqttv311").
func mosquittoArgs(addr string, c wardentest.Creds, v string) []string {
	host, port, _ := net.SplitHostPort(addr)
	return []string{"-h", host, "-p", port, "--cafile", c.CA, "--cert", c.Cert, "--key", c.Key, "-V", v}
}

// runTool runs an outside tool with a deadline and returns its combined
// output and error.
func runTool(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	out := &wardentest.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(within):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s %s did not finish within %v; output: %s", name, strings.Join(args, " "), within, out)
		return "", nil
	}
}

// refusedByTool checks that a mosquitto client was refused as "not
// authorised" (its wording) and exited with an error.
func refusedByTool(t testing.TB, what, out string, err error) {
	t.Helper()
	if err == nil || !strings.Contains(strings.ToLower(out), "not authori") {
		t.Errorf("%s: err=%v output=%q, want a 'not authorised' refusal", what, err, out)
	}
}

// TestTakeoverWithAnotherIdentityIsRefused: an attacker holding a valid
// certificate of its own (a device's, or a service's) connects with the
// victim's client ID, over MQTT 5 and 3.1.1, asking for a clean or a
// resumed session. Warden binds the client ID to the certificate's
// identity before mochi looks at sessions, so each attempt is refused
// with "not authorized", counted and audited, and the victim, connected
// all along, keeps its connection and its subscription. A device also
// cannot take over a service's session by using the service's name.
func TestTakeoverWithAnotherIdentityIsRefused(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	victim := s.AddDevice("victim")
	attacker := s.AddDevice("attacker")
	reader := s.AddService("ingest", "reader")
	ops := s.AddService("ops", "commander")

	v := wardentest.MustConnectRaw(t, s.MQTTS, victim, wardentest.RawOpts{SessionExpiry: 3600})
	if code := v.Subscribe(t, "private/victim/down/#", 1); code > 1 {
		t.Fatalf("victim subscribe: 0x%02x", code)
	}
	rd := wardentest.MustConnectRaw(t, s.MQTTS, reader, wardentest.RawOpts{Clean: true})
	rd.Subscribe(t, "fleet/#", 1)
	cmd := wardentest.MustConnectRaw(t, s.MQTTS, ops, wardentest.RawOpts{Clean: true})

	mismatch := newCounter(t, s, "warden_mqtt_auth_failures_total", `reason="client-id-mismatch"`)
	attempts := []struct {
		name  string
		actor string // the audit actor: the certificate's identity
		id    string // the client ID claimed
		try   func(id string) (refused bool, detail string)
	}{
		{"device cert, MQTT 5, clean start", "device:attacker", "victim", func(id string) (bool, string) {
			_, ca, err := wardentest.ConnectRaw(t, s.MQTTS, attacker, wardentest.RawOpts{ClientID: id, Clean: true})
			return err != nil && ca != nil && ca.ReasonCode == codeNotAuthorized, connackString(ca, err)
		}},
		{"device cert, MQTT 5, resume the session", "device:attacker", "victim", func(id string) (bool, string) {
			_, ca, err := wardentest.ConnectRaw(t, s.MQTTS, attacker, wardentest.RawOpts{ClientID: id, SessionExpiry: 3600})
			return err != nil && ca != nil && ca.ReasonCode == codeNotAuthorized, connackString(ca, err)
		}},
		{"device cert, MQTT 3.1.1, clean session", "device:attacker", "victim", func(id string) (bool, string) {
			_, code, err := wardentest.ConnectRaw311(t, s.MQTTS, attacker, wardentest.Raw311Opts{ClientID: id, CleanSession: true})
			return err != nil && code == wardentest.Code311NotAuthorized, err311(code, err)
		}},
		{"device cert, MQTT 3.1.1, persistent session", "device:attacker", "victim", func(id string) (bool, string) {
			_, code, err := wardentest.ConnectRaw311(t, s.MQTTS, attacker, wardentest.Raw311Opts{ClientID: id})
			return err != nil && code == wardentest.Code311NotAuthorized, err311(code, err)
		}},
		{"service cert, MQTT 5", "service:ingest", "victim", func(id string) (bool, string) {
			_, ca, err := wardentest.ConnectRaw(t, s.MQTTS, reader, wardentest.RawOpts{ClientID: id, Clean: true})
			return err != nil && ca != nil && ca.ReasonCode == codeNotAuthorized, connackString(ca, err)
		}},
		{"device cert claiming a service's client ID", "device:attacker", "ingest", func(id string) (bool, string) {
			_, ca, err := wardentest.ConnectRaw(t, s.MQTTS, attacker, wardentest.RawOpts{ClientID: id, SessionExpiry: 3600})
			return err != nil && ca != nil && ca.ReasonCode == codeNotAuthorized, connackString(ca, err)
		}},
	}
	for _, a := range attempts {
		if refused, detail := a.try(a.id); !refused {
			t.Errorf("%s: not refused with 'not authorized': %s", a.name, detail)
		}
		mismatch.rose(t, 1)
		audited(t, s, `"action":"mqtt.connect"`, `"outcome":"denied"`, `"actor":"`+a.actor+`"`,
			`"reason":"client-id-mismatch"`, `"client_id":"`+a.id+`"`)
	}

	// The same with the real tool, both protocol versions, asking to keep
	// the session (-c).
	sub := wardentest.RequireTool(t, "mosquitto_sub", "mosquitto-clients")
	for _, ver := range []string{"mqttv311", "mqttv5"} {
		out, err := runTool(t, sub, append(mosquittoArgs(s.MQTTS, attacker, ver), "-i", "victim", "-c", "-t", "private/victim/#", "-W", "5")...)
		refusedByTool(t, "mosquitto_sub "+ver+" -i victim", out, err)
		mismatch.rose(t, 1)
	}

	// The victim and the service never noticed: still connected, and the
	// victim's subscription still delivers.
	connected(t, "the victim", v.Down)
	connected(t, "the reader service", rd.Down)
	if code, err := cmd.Publish(t, "fleet/victim/down/cmd", []byte("still yours"), 1); code != 0 || err != nil {
		t.Fatalf("downlink to the victim: 0x%02x %v", code, err)
	}
	wardentest.ExpectMessage(t, v.Msgs, "private/victim/down/cmd", "still yours", within)
	if code, err := v.Publish(t, "private/victim/up/alive", []byte("yes"), 1); code != 0 || err != nil {
		t.Fatalf("victim uplink: 0x%02x %v", code, err)
	}
	wardentest.ExpectMessage(t, rd.Msgs, "fleet/victim/up/alive", "yes", within)
	// The refusals were told nothing else: no session-taken-over
	// disconnect reached anyone, and no forced disconnect was counted.
	if n := s.Metric(t, "warden_mqtt_forced_disconnects_total"); n != 0 {
		t.Errorf("forced disconnects = %v, want 0", n)
	}
}

// TestCleanStartCannotWipeAnotherDevicesSession: the victims are offline
// with persistent sessions (one MQTT 5, one MQTT 3.1.1) holding a
// subscription and queued QoS 1 commands. An attacker with its own valid
// certificate sends CONNECTs with the victims' client IDs and Clean Start
// / Clean Session set (and session expiry 0), which, were they accepted,
// would discard the sessions. Each is refused; an empty client ID gets the
// attacker's own identity, not a victim's. The victims come back to their
// sessions with every queued command and the subscription intact.
func TestCleanStartCannotWipeAnotherDevicesSession(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	v5 := s.AddDevice("victim5")
	v3 := s.AddDevice("victim3")
	attacker := s.AddDevice("attacker")
	cmd := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ops", "commander"), wardentest.RawOpts{Clean: true})

	// Both victims subscribe with a persistent session and go offline.
	c5 := wardentest.MustConnectRaw(t, s.MQTTS, v5, wardentest.RawOpts{SessionExpiry: 3600})
	c5.Subscribe(t, "private/victim5/down/#", 1)
	_ = c5.Disconnect(&paho.Disconnect{})
	c3 := wardentest.MustConnectRaw311(t, s.MQTTS, v3, wardentest.Raw311Opts{})
	if code := c3.Subscribe(t, "private/victim3/down/#", 1); code != 1 {
		t.Fatalf("victim3 subscribe: 0x%02x", code)
	}
	c3.Disconnect()
	send := func(id, payload string) {
		t.Helper()
		if code, err := cmd.Publish(t, "fleet/"+id+"/down/cmd", []byte(payload), 1); code != 0 || err != nil {
			t.Fatalf("queue %q for %s: 0x%02x %v", payload, id, code, err)
		}
	}
	// Wait until Warden has let both sessions go offline: a queued message
	// must not race the victims' disconnects.
	wardentest.Eventually(t, within, "the victims to be offline", func() bool {
		return s.Metric(t, "warden_mqtt_connections", `kind="device"`) == 0
	})
	send("victim5", "before-1")
	send("victim3", "before-1")

	mismatch := newCounter(t, s, "warden_mqtt_auth_failures_total", `reason="client-id-mismatch"`)
	zero := uint32(0)
	for _, id := range []string{"victim5", "victim3"} {
		// MQTT 5: Clean Start with session expiry 0 both discards the old
		// session and asks for none to be kept.
		_, ca, err := wardentest.ConnectRawPacket(t, s.MQTTS, attacker, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: &zero}})
		if err == nil || ca == nil || ca.ReasonCode != codeNotAuthorized {
			t.Errorf("MQTT 5 clean start as %s: %s, want 0x87", id, connackString(ca, err))
		}
		_, code, err := wardentest.ConnectRaw311(t, s.MQTTS, attacker, wardentest.Raw311Opts{ClientID: id, CleanSession: true})
		if err == nil || code != wardentest.Code311NotAuthorized {
			t.Errorf("MQTT 3.1.1 clean session as %s: %s, want 0x05", id, err311(code, err))
		}
		mismatch.rose(t, 2)
		audited(t, s, `"action":"mqtt.connect"`, `"outcome":"denied"`, `"actor":"device:attacker"`,
			`"reason":"client-id-mismatch"`, `"client_id":"`+id+`"`)
	}
	// mosquitto_sub without -c asks for a clean session.
	sub := wardentest.RequireTool(t, "mosquitto_sub", "mosquitto-clients")
	out, err := runTool(t, sub, append(mosquittoArgs(s.MQTTS, attacker, "mqttv311"), "-i", "victim3", "-t", "private/attacker/#", "-W", "5")...)
	refusedByTool(t, "mosquitto_sub -i victim3 (clean session)", out, err)
	mismatch.rose(t, 1)

	// An empty client ID is not a way in either: Warden assigns the
	// certificate's identity.
	_, ca, err := wardentest.ConnectRaw(t, s.MQTTS, attacker, wardentest.RawOpts{EmptyClientID: true, Clean: true})
	if err != nil || ca.Properties == nil || ca.Properties.AssignedClientID != "attacker" {
		t.Errorf("empty client ID: %s, assigned %+v; want the attacker's own ID", connackString(ca, err), ca)
	}
	a3, code, err := wardentest.ConnectRaw311(t, s.MQTTS, attacker, wardentest.Raw311Opts{EmptyClientID: true, CleanSession: true})
	if err != nil {
		t.Errorf("MQTT 3.1.1 empty client ID: %s", err311(code, err))
	} else {
		a3.Disconnect()
	}

	send("victim5", "before-2")
	send("victim3", "before-2")

	// Both victims find their sessions as they left them.
	back5, ca, err := wardentest.ConnectRaw(t, s.MQTTS, v5, wardentest.RawOpts{SessionExpiry: 3600})
	if err != nil || !ca.SessionPresent {
		t.Fatalf("victim5 reconnect: %s, session present %v", connackString(ca, err), ca != nil && ca.SessionPresent)
	}
	back3 := wardentest.MustConnectRaw311(t, s.MQTTS, v3, wardentest.Raw311Opts{})
	if !back3.SessionPresent {
		t.Fatal("victim3's session is gone")
	}
	for _, m := range []struct {
		id   string
		msgs chan *paho.Publish
	}{{"victim5", back5.Msgs}, {"victim3", back3.Msgs}} {
		expectAll(t, m.msgs, "private/"+m.id+"/down/cmd", "before-1", "before-2")
		// The subscription survived too: a new command arrives without
		// subscribing again.
		send(m.id, "after")
		wardentest.ExpectMessage(t, m.msgs, "private/"+m.id+"/down/cmd", "after", within)
	}
}

// expectAll waits for every payload on topic, in any order (mochi resends
// a session's queue sorted by creation second only).
func expectAll(t testing.TB, ch <-chan *paho.Publish, topic string, payloads ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, p := range payloads {
		want[p] = true
	}
	deadline := time.After(within)
	for len(want) > 0 {
		select {
		case m := <-ch:
			if m.Topic != topic || !want[string(m.Payload)] {
				t.Fatalf("unexpected message %q on %s", m.Payload, m.Topic)
			}
			delete(want, string(m.Payload))
		case <-deadline:
			t.Fatalf("missing on %s: %v", topic, want)
		}
	}
}

func connackString(ca *paho.Connack, err error) string {
	if ca == nil {
		return "no CONNACK, error " + errString(err)
	}
	return "CONNACK 0x" + hex2(ca.ReasonCode) + ", error " + errString(err)
}

func err311(code byte, err error) string {
	return "return code 0x" + hex2(code) + ", error " + errString(err)
}

func errString(err error) string {
	if err == nil {
		return "none"
	}
	return err.Error()
}

func hex2(b byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[b>>4], digits[b&0x0f]})
}
