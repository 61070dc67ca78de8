package session

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/commandproto"
	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/internal/wardentest"
)

// escapes are subscriptions that would reach beyond the subscriber's own
// subtree (the attacker is the device "attacker", the victim "victim").
var escapes = []string{
	"#", "+/#", "+/+/#", "private/#", "private/+/up/#", "private/+/+",
	"private/victim/#", "private/victim/down/+", "private/victim/up/secret",
	"$SYS/#", "$SYS/broker/uptime",
	"$share/g/private/+/#", "$share/g/#", "$share/g/private/attacker/#", "$share/g/fleet/#",
	"fleet/#", "fleet/+/up/#", "fleet/victim/up/#", "fleet/attacker/#",
}

// TestSubscriptionsCannotEscapeTheSubtree: a device subscribes to
// wildcards and shared subscriptions that would reach other devices, the
// fleet tree or the broker's $SYS tree, one at a time over MQTT 5 and all
// in one SUBSCRIBE over MQTT 3.1.1 (beside a filter it may use, so the
// refusal is per filter). Every one is refused in the SUBACK, counted and
// audited; the anomaly monitor raises an alert; and while the victim and a
// commander exchange messages, nothing reaches the attacker.
func TestSubscriptionsCannotEscapeTheSubtree(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	victim := s.AddDevice("victim")
	attacker := s.AddDevice("attacker")
	ops := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ops", "commander"), wardentest.RawOpts{Clean: true})
	rd := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ingest", "reader"), wardentest.RawOpts{Clean: true})
	rd.Subscribe(t, "fleet/#", 1)
	v := wardentest.MustConnectRaw(t, s.MQTTS, victim, wardentest.RawOpts{Clean: true})
	v.Subscribe(t, "private/victim/down/#", 1)

	denied := newCounter(t, s, "warden_mqtt_acl_denials_total", `action="read"`)
	a5 := wardentest.MustConnectRaw(t, s.MQTTS, attacker, wardentest.RawOpts{Clean: true})
	for _, f := range escapes {
		if code := a5.Subscribe(t, f, 1); code != codeNotAuthorized {
			t.Errorf("MQTT 5 subscribe %q: SUBACK 0x%02x, want 0x87", f, code)
		}
	}
	denied.rose(t, float64(len(escapes)))
	// Audit lines are rate-limited per client (a burst of 5, then one a
	// second), so the first filters are audited by name.
	for _, f := range escapes[:5] {
		audited(t, s, `"action":"mqtt.read"`, `"outcome":"denied"`, `"actor":"device:attacker"`, `"topic":"`+f+`"`)
	}

	// MQTT 3.1.1 from a second connection... of the same device would take
	// its session over, so the 3.1.1 attacker is another device.
	att3 := s.AddDevice("attacker3")
	a3 := wardentest.MustConnectRaw311(t, s.MQTTS, att3, wardentest.Raw311Opts{CleanSession: true})
	filters := append([]string{"private/attacker3/#"}, escapes...)
	codes := a3.SubscribeMany(t, 1, filters...)
	if codes[0] != 1 {
		t.Errorf("MQTT 3.1.1 subscribe to its own subtree: 0x%02x, want QoS 1 granted", codes[0])
	}
	for i, f := range escapes {
		if codes[i+1] != wardentest.Code311SubackFailure {
			t.Errorf("MQTT 3.1.1 subscribe %q: return code 0x%02x, want 0x80", f, codes[i+1])
		}
	}
	denied.rose(t, float64(len(escapes)))
	audited(t, s, `"action":"mqtt.read"`, `"outcome":"denied"`, `"actor":"device:attacker3"`, `"topic":"#"`)

	// Traffic flows around the attackers and never to them.
	if code, err := v.Publish(t, "private/victim/up/secret", []byte("s3cret"), 1); code != 0 || err != nil {
		t.Fatalf("victim uplink: 0x%02x %v", code, err)
	}
	if code, err := ops.Publish(t, "fleet/victim/down/cmd", []byte("unlock"), 1); code != 0 || err != nil {
		t.Fatalf("downlink: 0x%02x %v", code, err)
	}
	wardentest.ExpectMessage(t, rd.Msgs, "fleet/victim/up/secret", "s3cret", within)
	wardentest.ExpectMessage(t, v.Msgs, "private/victim/down/cmd", "unlock", within)
	wardentest.ExpectNoMessage(t, a5.Msgs, 300*time.Millisecond)
	wardentest.ExpectNoMessage(t, a3.Msgs, 300*time.Millisecond)

	// Probing is an anomaly: the monitor's acl_denials detector (10 in
	// 10 minutes by default) raises an alert about the attacker.
	audited(t, s, `"action":"alert.acl_denials"`, `"outcome":"raised"`, `"subject":"device:attacker"`)
}

// TestRetainedPoisoningIsRefused: a device publishes retained messages
// into the victim's subtree, into the fleet tree (forging what Warden
// relays to services, its own included) and into its own down/ channel
// (forging a command to itself), with MQTT 5, MQTT 3.1.1 and
// mosquitto_pub -r. Every publish is refused (PUBACK 0x87 for MQTT 5; 3.1.1
// has no negative PUBACK, so the broker closes the connection), counted and
// audited. Later subscribers, the victim and a reader service, get
// exactly the retained message the victim itself left, nothing poisoned.
func TestRetainedPoisoningIsRefused(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	victim := s.AddDevice("victim")
	attacker := s.AddDevice("attacker")
	reader := s.AddService("ingest", "reader")

	targets := []string{
		"private/victim/down/config", "private/victim/down/cmd", "private/victim/up/state",
		"private/victim/cert/new", "private/victim/ota/notify",
		"fleet/victim/up/state", "fleet/victim/down/cmd", "fleet/attacker/up/state",
		"private/attacker/down/cmd",
	}
	denied := newCounter(t, s, "warden_mqtt_acl_denials_total", `action="publish"`)
	a5 := wardentest.MustConnectRaw(t, s.MQTTS, attacker, wardentest.RawOpts{Clean: true})
	for _, topic := range targets {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pr, err := a5.Client.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte("poison")})
		cancel()
		if pr == nil || pr.ReasonCode != codeNotAuthorized {
			t.Errorf("MQTT 5 retained publish to %s: %+v %v, want PUBACK 0x87", topic, pr, err)
		}
	}
	denied.rose(t, float64(len(targets)))
	for _, topic := range targets[:5] { // audit lines: a burst of 5 per client, then one a second
		audited(t, s, `"action":"mqtt.publish"`, `"outcome":"denied"`, `"actor":"device:attacker"`, `"topic":"`+topic+`"`)
	}

	// MQTT 3.1.1 at QoS 1: refused by closing the connection; at QoS 0:
	// dropped silently. Both are counted.
	att3 := s.AddDevice("attacker3")
	for _, qos := range []byte{1, 0} {
		a3 := wardentest.MustConnectRaw311(t, s.MQTTS, att3, wardentest.Raw311Opts{CleanSession: true})
		err := a3.Publish("private/victim/down/config", []byte("poison"), qos, true)
		if qos == 1 && !isClosed(err) {
			t.Errorf("MQTT 3.1.1 QoS 1 retained publish: %v, want the connection closed", err)
		}
		denied.rose(t, 1)
		a3.Disconnect()
	}
	audited(t, s, `"action":"mqtt.publish"`, `"outcome":"denied"`, `"actor":"device:attacker3"`, `"topic":"private/victim/down/config"`)

	pub := wardentest.RequireTool(t, "mosquitto_pub", "mosquitto-clients")
	for _, ver := range []string{"mqttv5", "mqttv311"} {
		out, err := runTool(t, pub, append(mosquittoArgs(s.MQTTS, attacker, ver), "-i", "attacker", "-q", "1", "-r",
			"-t", "private/victim/down/config", "-m", "poison from mosquitto")...)
		// mosquitto_pub reports the MQTT 5 refusal ("Not authorized") and
		// fails on the 3.1.1 one (the broker closes the connection).
		if (ver == "mqttv5" && !strings.Contains(strings.ToLower(out), "not authorized")) || (ver == "mqttv311" && err == nil) {
			t.Errorf("mosquitto_pub -r %s into the victim's subtree: err=%v output=%q, want a refusal", ver, err, out)
		}
		denied.rose(t, 1)
	}

	// The victim leaves one retained message of its own, which later
	// subscribers must get, alone.
	v := wardentest.MustConnectRaw(t, s.MQTTS, victim, wardentest.RawOpts{Clean: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if pr, err := v.Client.Publish(ctx, &paho.Publish{Topic: "private/victim/up/state", QoS: 1, Retain: true, Payload: []byte("genuine")}); err != nil || pr.ReasonCode != 0 {
		t.Fatalf("victim's own retained publish: %+v %v", pr, err)
	}
	_ = v.Disconnect(&paho.Disconnect{})

	later := wardentest.MustConnectRaw(t, s.MQTTS, victim, wardentest.RawOpts{Clean: true})
	later.Subscribe(t, "private/victim/#", 1)
	wardentest.ExpectMessage(t, later.Msgs, "private/victim/up/state", "genuine", within)
	rd := wardentest.MustConnectRaw(t, s.MQTTS, reader, wardentest.RawOpts{Clean: true})
	rd.Subscribe(t, "fleet/#", 1)
	self := wardentest.MustConnectRaw(t, s.MQTTS, attacker, wardentest.RawOpts{Clean: true})
	self.Subscribe(t, "private/attacker/#", 1)
	wardentest.ExpectNoMessage(t, later.Msgs, 300*time.Millisecond)
	wardentest.ExpectNoMessage(t, rd.Msgs, 300*time.Millisecond)
	wardentest.ExpectNoMessage(t, self.Msgs, 300*time.Millisecond)
}

func isClosed(err error) bool {
	return err != nil && strings.Contains(err.Error(), wardentest.ErrClosedByBroker.Error())
}

// TestDeviceCannotForgeWhatWardenSendsIt: a device's own subtree holds
// topics only Warden writes: commands (down/cmd), rekeys (down/_rekey),
// firmware offers and blocks (ota/notify, ota/block), certificates
// (cert/new) and claim results. Someone holding a stolen copy of the
// device's key connects as the device while it is offline and leaves
// retained forgeries there, hoping the genuine device takes them for
// Warden's when it comes back: a command that no operator issued, no role
// check allowed and no audit line records. Every publish is refused,
// counted and audited; the genuine device (the Go SDK with HandleCommands)
// runs only the command a commander really sent, which Warden audits.
func TestDeviceCannotForgeWhatWardenSendsIt(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	pump := s.AddDevice("pump")
	ops := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ops", "commander"), wardentest.RawOpts{Clean: true})

	forged, _ := json.Marshal(commandproto.Command{ID: "forged-command-0001", Name: "open-valve", Deadline: time.Now().Add(24 * time.Hour).UTC()})
	forgeries := map[string][]byte{
		"private/pump/down/cmd":      forged,
		"private/pump/down/_rekey":   []byte("\x00\x00\x00\x01attacker-chosen-secret"),
		"private/pump/ota/notify":    []byte(`{"rollout":"evil","sha256":"00","size":1,"url":"http://evil.example/fw"}`),
		"private/pump/ota/block":     []byte("\x00\x00\x00\x00\x00\x00\x00\x01x"),
		"private/pump/cert/new":      []byte(`{"request_id":"r","status":"refused"}`),
		"private/pump/claim/result":  []byte(`{"request_id":"r","status":"bound"}`),
		"private/pump/down/settings": []byte(`{"admin":true}`),
	}
	denied := newCounter(t, s, "warden_mqtt_acl_denials_total", `action="publish"`)
	thief := wardentest.MustConnectRaw(t, s.MQTTS, pump, wardentest.RawOpts{Clean: true})
	for topic, payload := range forgeries {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pr, err := thief.Client.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: payload})
		cancel()
		if pr == nil || pr.ReasonCode != codeNotAuthorized {
			t.Errorf("forged %s: %+v %v, want PUBACK 0x87", topic, pr, err)
		}
	}
	denied.rose(t, float64(len(forgeries)))
	audited(t, s, `"action":"mqtt.publish"`, `"outcome":"denied"`, `"actor":"device:pump"`, `"reason":"acl"`)
	// Publishing into the fleet tree directly, past the relay, is refused too.
	if code, _ := thief.Publish(t, "fleet/pump/up/telemetry", []byte(`{"t":-40}`), 1); code != codeNotAuthorized {
		t.Errorf("forged relayed uplink: PUBACK 0x%02x, want 0x87", code)
	}
	denied.rose(t, 1)
	// What the device legitimately sends still goes through.
	if code, err := thief.Publish(t, "private/pump/up/telemetry", []byte(`{"t":20}`), 1); code != 0 || err != nil {
		t.Errorf("uplink: 0x%02x %v", code, err)
	}
	_ = thief.Disconnect(&paho.Disconnect{})

	// The genuine device comes back and handles commands.
	var mu sync.Mutex
	var ran []string
	dev := wardentest.ConnectSDK(t, s, pump)
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := dev.HandleCommands(ctx, func(_ context.Context, c commandproto.Command) (json.RawMessage, error) {
		mu.Lock()
		ran = append(ran, c.ID)
		mu.Unlock()
		return nil, nil
	}); err != nil {
		t.Fatalf("HandleCommands: %v", err)
	}
	other := make(chan device.Message, 10)
	if err := dev.SubscribeDown(ctx, "settings", 1, func(m device.Message) { other <- m }); err != nil {
		t.Fatalf("SubscribeDown: %v", err)
	}
	real, _ := json.Marshal(commandproto.Command{ID: "real-command-000001", Name: "close-valve", Deadline: time.Now().Add(time.Minute).UTC()})
	if code, err := ops.Publish(t, "fleet/pump/down/cmd", real, 1); code != 0 || err != nil {
		t.Fatalf("commander: 0x%02x %v", code, err)
	}
	wardentest.Eventually(t, within, "the real command to run", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ran) > 0
	})
	time.Sleep(300 * time.Millisecond) // room for a forged retained command to show up too
	mu.Lock()
	if len(ran) != 1 || ran[0] != "real-command-000001" {
		t.Errorf("the device ran %v, want only real-command-000001", ran)
	}
	mu.Unlock()
	select {
	case m := <-other:
		t.Errorf("the device received a forged downlink on %s: %q", m.Topic, m.Payload)
	default:
	}
	audited(t, s, `"action":"relay.downlink"`, `"actor":"service:ops"`, `"subject":"device:pump"`)
	notAudited(t, s, "forged-command-0001")
}
