package session

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/wardentest"
)

// publishFrame is a captured MQTT PUBLISH packet taken apart just enough
// for an on-path attacker to replay, cut or move it: the envelope inside
// rest is never touched except where a test says so.
type publishFrame struct {
	header byte   // type and flags
	topic  string //
	id     uint16 // packet identifier (QoS > 0)
	rest   []byte // MQTT 5 properties and the payload
}

func parsePublish(t testing.TB, pkt []byte) publishFrame {
	t.Helper()
	i := 1
	for pkt[i]&0x80 != 0 {
		i++
	}
	i++
	n := int(pkt[i])<<8 | int(pkt[i+1])
	f := publishFrame{header: pkt[0], topic: string(pkt[i+2 : i+2+n])}
	i += 2 + n
	if (f.header>>1)&0x03 > 0 {
		f.id = uint16(pkt[i])<<8 | uint16(pkt[i+1])
		i += 2
	}
	f.rest = append([]byte(nil), pkt[i:]...)
	return f
}

func (f publishFrame) bytes() []byte {
	body := []byte{byte(len(f.topic) >> 8), byte(len(f.topic))}
	body = append(body, f.topic...)
	if (f.header>>1)&0x03 > 0 {
		body = append(body, byte(f.id>>8), byte(f.id))
	}
	body = append(body, f.rest...)
	out := []byte{f.header}
	for n := len(body); ; {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

// capturedPublish returns the last PUBLISH on topic among packets.
func capturedPublish(t testing.TB, packets [][]byte, topic string) publishFrame {
	t.Helper()
	for i := len(packets) - 1; i >= 0; i-- {
		if got, ok := wardentest.PublishTopic(packets[i]); ok && got == topic {
			return parsePublish(t, packets[i])
		}
	}
	t.Fatalf("no PUBLISH on %s was captured (%d packets)", topic, len(packets))
	return publishFrame{}
}

// payloadStart returns where the payload begins in an MQTT 5 PUBLISH's
// rest (after the properties' length and the properties).
func payloadStart(rest []byte) int {
	n, mult, i := 0, 1, 0
	for ; ; i++ {
		n += int(rest[i]&0x7f) * mult
		mult *= 128
		if rest[i]&0x80 == 0 {
			break
		}
	}
	return i + 1 + n
}

// withSeq returns a copy of the frame whose envelope claims sequence
// number seq (same length, minimally encoded as the format requires):
// what a forger without the key writes to get past a replay window.
func (f publishFrame) withSeq(t testing.TB, seq uint64) publishFrame {
	t.Helper()
	rest := append([]byte(nil), f.rest...)
	env := rest[payloadStart(rest):]
	at, n := 1+int(env[0]>>3&0x01), int(env[0]&0x07)
	if seq >= 1<<(8*n) || (n > 1 && seq < 1<<(8*(n-1))) {
		t.Fatalf("sequence number %d does not fit the envelope's %d bytes", seq, n)
	}
	for i := n - 1; i >= 0; i-- {
		env[at+i] = byte(seq)
		seq >>= 8
	}
	f.rest = rest
	return f
}

// injectedID is the packet identifier injected packets carry: far from the
// low identifiers the clients allocate, so that the answer to an injected
// packet cannot be taken for the answer to a real one.
const injectedID = 0xfff0

// TestEnvelopeUplinkReplayAndForgery attacks sealed uplinks of devices on
// the plain listener, where an on-path attacker sees and changes every
// byte: a captured envelope is replayed into the device's live session
// (only the MQTT packet identifier changed), bit-flipped, truncated,
// reflected back as an uplink from a captured downlink; replayed by the
// device itself in the wrong order, on another channel and on its OTA
// topic; sent by another device on that device's own topic; and replayed
// after the server was killed with SIGKILL, which must not reset its
// replay memory. Each is refused (a PUBACK with "unspecified error", the
// reason never told), counted in warden_envelope_failures_total{reason}
// and audited as envelope.open; nothing reaches services; and the
// devices' genuine messages keep flowing.
func TestEnvelopeUplinkReplayAndForgery(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--mqtt", "127.0.0.1:0")
	a := s.AddEnvelopeDevice("env-a")
	b := s.AddEnvelopeDevice("env-b")
	c := s.AddEnvelopeDevice("env-c")
	reader := s.AddService("ingest", "reader")
	rd := wardentest.MustConnectRaw(t, s.MQTTS, reader, wardentest.RawOpts{Clean: true})
	rd.Subscribe(t, "fleet/#", 1)
	ops := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ops", "commander"), wardentest.RawOpts{Clean: true})
	// counted returns the counter an outcome moves: a refusal reason,
	// "any" refusal, or "opened".
	counted := func(outcome string) *counter {
		switch outcome {
		case "opened":
			return newCounter(t, s, "warden_envelope_opened_total")
		case "any":
			return newCounter(t, s, "warden_envelope_failures_total")
		}
		return newCounter(t, s, "warden_envelope_failures_total", `reason="`+outcome+`"`)
	}

	proxy := wardentest.NewProxy(t, s.Plain)
	devA, _, err := wardentest.ConnectPlain(t, proxy.Addr, "env-a", a.Password(t))
	if err != nil {
		t.Fatalf("env-a connect through the proxy: %v", err)
	}
	devA.Subscribe(t, "private/env-a/down/#", 1)
	topic := "private/env-a/up/telemetry"
	first := a.Seal(t, topic, []byte(`{"kwh":1}`))
	if code, err := devA.Publish(t, topic, first, 1); code != 0 || err != nil {
		t.Fatalf("genuine sealed uplink: 0x%02x %v", code, err)
	}
	wardentest.ExpectMessage(t, rd.Msgs, "fleet/env-a/up/telemetry", `{"kwh":1}`, within)
	if code, err := ops.Publish(t, "fleet/env-a/down/cmd", []byte("reboot"), 1); code != 0 || err != nil {
		t.Fatalf("downlink: 0x%02x %v", code, err)
	}
	select {
	case <-devA.Msgs:
	case <-time.After(within):
		t.Fatal("the sealed downlink did not reach env-a")
	}

	// The on-path attacker's turn.
	captured := capturedPublish(t, proxy.Uplink(), topic)
	inject := func(what string, f publishFrame, outcome string) {
		t.Helper()
		c := counted(outcome)
		f.id = injectedID
		if err := proxy.InjectUp(f.bytes()); err != nil {
			t.Fatalf("%s: inject: %v", what, err)
		}
		c.rose(t, 1)
	}
	inject("replayed as captured", captured, "replay")
	// A message the attacker holds back and forwards changed (the replay
	// check comes first, so a changed copy of a message already accepted
	// is just a replay): the envelope of a fresh message, never sent, in
	// the captured packet.
	withEnvelope := func(env []byte) publishFrame {
		f := captured
		props := captured.rest[:len(captured.rest)-len(first)]
		f.rest = append(append([]byte(nil), props...), env...)
		return f
	}
	fresh := a.Seal(t, topic, []byte(`{"kwh":2}`))
	flipped := withEnvelope(fresh)
	flipped.rest[len(flipped.rest)-1] ^= 0x01
	inject("a fresh message with the last bit of its tag flipped", flipped, "bad-tag")
	inject("a fresh message cut by four bytes", withEnvelope(fresh[:len(fresh)-4]), "bad-tag")
	// A forger without the key claims a sequence number past the window,
	// so that the replay check lets it through to authentication.
	inject("the captured message with a forged sequence number", captured.withSeq(t, 200), "bad-tag")
	inject("a fresh message cut to its first three bytes", withEnvelope(fresh[:3]), "malformed")
	// The failed forgeries did not spend the fresh message's sequence
	// number: delivered late but intact, it is accepted.
	inject("the fresh message, unchanged", withEnvelope(fresh), "opened")
	wardentest.ExpectMessage(t, rd.Msgs, "fleet/env-a/up/telemetry", `{"kwh":2}`, within)
	// A downlink Warden sealed for the device, reflected back as an
	// uplink: wrong direction and topic (or an old number).
	reflected := capturedPublish(t, proxy.Downlink(), "private/env-a/down/cmd")
	reflected.topic = "private/env-a/up/cmd"
	reflected.header = captured.header
	inject("a captured downlink reflected as an uplink", reflected, "any")
	for _, reason := range []string{"replay", "bad-tag", "malformed"} {
		audited(t, s, `"action":"envelope.open"`, `"outcome":"denied"`, `"actor":"device:env-a"`, `"reason":"`+reason+`"`)
	}
	connected(t, "env-a", devA.Down)
	// Three sealed messages that failed authentication in ten minutes are
	// an anomaly (monitor.envelope_tag_failures).
	audited(t, s, `"action":"alert.envelope_tag_failures"`, `"outcome":"raised"`, `"subject":"device:env-a"`)

	// Replays by the device's own connection, out of order and moved.
	devC, _, err := wardentest.ConnectPlain(t, s.Plain, "env-c", c.Password(t))
	if err != nil {
		t.Fatal(err)
	}
	topicC := "private/env-c/up/telemetry"
	publishC := func(what string, topic string, msg []byte, refusal string) {
		t.Helper()
		cnt := counted(refusal)
		code, _ := devC.Publish(t, topic, msg, 1)
		if refusal == "" {
			if code != 0 {
				t.Errorf("%s: PUBACK 0x%02x, want it accepted", what, code)
			}
			return
		}
		if code != codeUnspecifiedError {
			t.Errorf("%s: PUBACK 0x%02x, want 0x80 (no reason given)", what, code)
		}
		cnt.rose(t, 1)
	}
	held := c.Seal(t, topicC, []byte("held back"))
	for range 100 {
		c.NextSeq(t) // the device sends 100 messages the attacker lets through
	}
	publishC("a newer message", topicC, c.Seal(t, topicC, []byte("newer")), "")
	wardentest.ExpectMessage(t, rd.Msgs, "fleet/env-c/up/telemetry", "newer", within)
	publishC("a message held back past the 64-message window", topicC, held, "replay")
	// Within the window, an older message never seen before is accepted
	// once (MQTT reorders across reconnects; docs/envelope.md "Replay
	// window"), and only once.
	older := c.Seal(t, topicC, []byte("older"))
	publishC("the next message", topicC, c.Seal(t, topicC, []byte("next")), "")
	publishC("an older message within the window", topicC, older, "")
	publishC("the older message again", topicC, older, "replay")
	moved := c.Seal(t, topicC, []byte("moved"))
	publishC("moved to another channel", "private/env-c/up/alarm", moved, "bad-tag")
	ota := newCounter(t, s, "warden_ota_mqtt_messages_total", `channel="status"`, `outcome="refused"`)
	publishC("moved to the OTA status topic", "private/env-c/ota/status", moved, "bad-tag")
	ota.rose(t, 1)
	audited(t, s, `"action":"envelope.open"`, `"actor":"device:env-c"`, `"reason":"bad-tag"`, `"topic":"private/env-c/ota/status"`)

	// Another device sends env-a's captured envelope as its own, and
	// cannot send it on env-a's topic at all.
	devB, _, err := wardentest.ConnectPlain(t, s.Plain, "env-b", b.Password(t))
	if err != nil {
		t.Fatal(err)
	}
	badTags := counted("bad-tag")
	if code, _ := devB.Publish(t, "private/env-b/up/telemetry", first, 1); code != codeUnspecifiedError {
		t.Errorf("env-a's envelope sent by env-b: PUBACK 0x%02x, want 0x80", code)
	}
	badTags.rose(t, 1)
	audited(t, s, `"action":"envelope.open"`, `"actor":"device:env-b"`, `"reason":"bad-tag"`)
	acl := newCounter(t, s, "warden_mqtt_acl_denials_total", `action="publish"`)
	if code, _ := devB.Publish(t, topic, first, 1); code != codeNotAuthorized {
		t.Errorf("env-b publishing on env-a's topic: PUBACK 0x%02x, want 0x87", code)
	}
	acl.rose(t, 1)

	// Every genuine stream still flows, and none of the forgeries did.
	publishC("env-c, after the attacks", topicC, c.Seal(t, topicC, []byte("c still here")), "")
	if code, err := devA.Publish(t, topic, a.Seal(t, topic, []byte("a still here")), 1); code != 0 || err != nil {
		t.Fatalf("env-a after the attacks: 0x%02x %v", code, err)
	}
	if code, err := devB.Publish(t, "private/env-b/up/telemetry", b.Seal(t, "private/env-b/up/telemetry", []byte("b still here")), 1); code != 0 || err != nil {
		t.Fatalf("env-b after the attacks: 0x%02x %v", code, err)
	}
	expectMessages(t, rd.Msgs,
		"fleet/env-c/up/telemetry", "next", "fleet/env-c/up/telemetry", "older",
		"fleet/env-c/up/telemetry", "c still here",
		"fleet/env-a/up/telemetry", "a still here", "fleet/env-b/up/telemetry", "b still here")

	// SIGKILL, nothing flushed: the accepted sequence numbers were durable
	// before they were acknowledged, so the replays still fail.
	last := a.Seal(t, topic, []byte("last before the crash"))
	if code, err := devA.Publish(t, topic, last, 1); code != 0 || err != nil {
		t.Fatalf("env-a before the crash: 0x%02x %v", code, err)
	}
	wardentest.ExpectMessage(t, rd.Msgs, "fleet/env-a/up/telemetry", "last before the crash", within)
	s.Kill()
	s.Restart()
	replays := counted("replay") // a new process counts from zero
	again, _, err := wardentest.ConnectPlain(t, s.Plain, "env-a", a.Password(t))
	if err != nil {
		t.Fatalf("env-a after the restart: %v", err)
	}
	for what, msg := range map[string][]byte{"the first message": first, "the last message before the crash": last} {
		if code, _ := again.Publish(t, topic, msg, 1); code != codeUnspecifiedError {
			t.Errorf("%s replayed after a SIGKILL: PUBACK 0x%02x, want 0x80", what, code)
		}
	}
	replays.rose(t, 2)
	audited(t, s, `"action":"envelope.open"`, `"actor":"device:env-a"`, `"reason":"replay"`)
	rd = wardentest.MustConnectRaw(t, s.MQTTS, reader, wardentest.RawOpts{Clean: true})
	rd.Subscribe(t, "fleet/#", 1)
	if code, err := again.Publish(t, topic, a.Seal(t, topic, []byte("after the crash")), 1); code != 0 || err != nil {
		t.Fatalf("env-a after the crash: 0x%02x %v", code, err)
	}
	wardentest.ExpectMessage(t, rd.Msgs, "fleet/env-a/up/telemetry", "after the crash", within)
	wardentest.ExpectNoMessage(t, rd.Msgs, 300*time.Millisecond)
}

// expectMessages waits for each (topic, payload) pair, in any order, and
// fails on any other message: nothing forged may slip in between.
func expectMessages(t testing.TB, ch <-chan *paho.Publish, pairs ...string) {
	t.Helper()
	want := map[string]int{}
	for i := 0; i+1 < len(pairs); i += 2 {
		want[pairs[i]+" "+pairs[i+1]]++
	}
	deadline := time.After(within)
	for len(want) > 0 {
		select {
		case m := <-ch:
			k := m.Topic + " " + string(m.Payload)
			if want[k] == 0 {
				t.Fatalf("unexpected message %q on %s", m.Payload, m.Topic)
			}
			if want[k]--; want[k] == 0 {
				delete(want, k)
			}
		case <-deadline:
			t.Fatalf("missing: %v", want)
		}
	}
}

// TestEnvelopeDownlinkReplayOnPath turns the on-path attacker on the
// device: Warden's sealed commands to a Go SDK envelope device cross the
// plain listener, where the attacker captures one and plays it to the
// device again, with a bit flipped, moved to another channel, and an
// older one after a newer one. The SDK opens every downlink and checks its
// own replay window before a handler sees it: each forgery is dropped and
// reported (Envelope.OnDropped, EnvelopeStats), the handler runs each
// genuine command exactly once, and later commands still arrive.
func TestEnvelopeDownlinkReplayOnPath(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--mqtt", "127.0.0.1:0")
	dir := t.TempDir()
	s.MustWarden("device", "add", "env-sdk", "--out", dir, "--envelope")
	ops := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ops", "commander"), wardentest.RawOpts{Clean: true})
	id, env, err := device.LoadEnvelopeBundle(filepath.Join(dir, "env-sdk.envelope.json"))
	if err != nil {
		t.Fatal(err)
	}
	if env.Counter, err = envelope.NewCounter(envelope.NewFileCounterStore(filepath.Join(dir, "counter"))); err != nil {
		t.Fatal(err)
	}
	env.DownlinkWindows = device.NewFileWindowStore(filepath.Join(dir, "windows"))
	var mu sync.Mutex
	dropped := map[string][]envelope.Reason{}
	env.OnDropped = func(channel string, reason envelope.Reason) {
		mu.Lock()
		defer mu.Unlock()
		dropped[channel] = append(dropped[channel], reason)
	}
	proxy := wardentest.NewProxy(t, s.Plain)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := device.Connect(ctx, device.Config{Servers: []string{"mqtt://" + proxy.Addr}, DeviceID: id, Envelope: env,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatalf("SDK connect through the proxy: %v", err)
	}
	defer cl.Close(context.Background())
	got := make(chan device.Message, 20)
	if err := cl.SubscribeDown(ctx, "#", 1, func(m device.Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	send := func(payload string) {
		t.Helper()
		if code, err := ops.Publish(t, "fleet/env-sdk/down/cmd", []byte(payload), 1); code != 0 || err != nil {
			t.Fatalf("command %q: 0x%02x %v", payload, code, err)
		}
	}
	receive := func(payload string) {
		t.Helper()
		select {
		case m := <-got:
			if m.Channel != "cmd" || string(m.Payload) != payload || !m.Sealed {
				t.Fatalf("handler got %s %q (sealed %v), want %q on cmd", m.Topic, m.Payload, m.Sealed, payload)
			}
		case <-time.After(within):
			t.Fatalf("the handler did not get %q", payload)
		}
	}
	send("open valve")
	receive("open valve")
	first := capturedPublish(t, proxy.Downlink(), "private/env-sdk/down/cmd")
	send("close valve")
	receive("close valve")
	second := capturedPublish(t, proxy.Downlink(), "private/env-sdk/down/cmd")

	inject := func(what string, f publishFrame, channel string, reason envelope.Reason) {
		t.Helper()
		before := cl.EnvelopeStats().Dropped[reason]
		f.id = injectedID
		if err := proxy.InjectDown(f.bytes()); err != nil {
			t.Fatalf("%s: inject: %v", what, err)
		}
		wardentest.Eventually(t, within, what+" to be dropped", func() bool {
			return cl.EnvelopeStats().Dropped[reason] == before+1
		})
		mu.Lock()
		defer mu.Unlock()
		if rs := dropped[channel]; len(rs) == 0 || rs[len(rs)-1] != reason {
			t.Errorf("%s: OnDropped saw %v on %q, want %s last", what, rs, channel, reason)
		}
	}
	inject("the newest command replayed", second, "cmd", envelope.ReasonReplay)
	inject("an older command after a newer one", first, "cmd", envelope.ReasonReplay)
	flipped := second
	flipped.rest = append([]byte(nil), second.rest...)
	flipped.rest[len(flipped.rest)-1] ^= 0x80
	inject("a command with a bit flipped", flipped, "cmd", envelope.ReasonReplay) // the window is checked first, and it was seen
	moved := second
	moved.topic = "private/env-sdk/down/unlock"
	inject("a command moved to another channel", moved, "unlock", envelope.ReasonReplay)
	// A forged sequence number gets past the window and fails to
	// authenticate, without moving the window.
	inject("a command with a forged sequence number", second.withSeq(t, 200), "cmd", envelope.ReasonBadTag)
	inject("a moved command with a forged sequence number", moved.withSeq(t, 201), "unlock", envelope.ReasonBadTag)

	select {
	case m := <-got:
		t.Fatalf("a forged downlink reached the handler: %s %q", m.Topic, m.Payload)
	case <-time.After(300 * time.Millisecond):
	}
	send("after the attack")
	receive("after the attack")
	if st := cl.EnvelopeStats(); st.Opened != 3 {
		t.Errorf("SDK opened %d downlinks, want the 3 genuine ones: %+v", st.Opened, st)
	}
}
