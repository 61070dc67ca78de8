package device

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warden-iot/warden/envelope"
)

// newEnvelopeEnv is an env whose broker also has a plain listener, with a
// stand-in for Warden's envelope side.
func newEnvelopeEnv(t *testing.T, suite envelope.Suite) (*env, *standIn) {
	t.Helper()
	ca, err := newTestCA("warden test root")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.serverCert([]string{"localhost"}, localhost)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, ca, brokerOptions{serverCert: srvCert, clientCAs: ca.pool, plain: true})
	si := newStandIn(t, e.broker, e.id, suite)
	si.devKey = e.cert.PrivateKey.(*ecdsa.PrivateKey).Public().(*ecdsa.PublicKey)
	return e, si
}

// envelope is the device's Envelope for epoch 0, with a counter in memory.
func (si *standIn) envelope(t *testing.T) *Envelope {
	env := &Envelope{Suite: si.suite, Counter: memCounter(t)}
	if si.suite == envelope.SignP256 {
		env.ServerKey = &si.serverKey.PublicKey
	} else {
		env.Secret = si.secret(0)
	}
	return env
}

// plainConfig connects over the plain listener only; without a certificate
// or root, except that a sign-p256 device signs with its certificate's key.
func (e *env) plainConfig(t *testing.T, env *Envelope) Config {
	cfg := e.config(t)
	cfg.Servers = []string{e.broker.plainURL()}
	cfg.Envelope = env
	cfg.RootCAs = nil
	if env.Suite != envelope.SignP256 {
		cfg.Certificate = tls.Certificate{}
		cfg.DeviceID = e.id
	}
	return cfg
}

// dropRecorder collects Envelope.OnDropped calls.
type dropRecorder chan [2]string

func (d dropRecorder) record(channel string, r envelope.Reason) { d <- [2]string{channel, string(r)} }

func (d dropRecorder) expect(t *testing.T, channel string, r envelope.Reason) {
	t.Helper()
	select {
	case got := <-d:
		if got != [2]string{channel, string(r)} {
			t.Errorf("OnDropped(%q, %q), want (%q, %q)", got[0], got[1], channel, r)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no OnDropped(%q, %q) within 5s", channel, r)
	}
}

func (d dropRecorder) none(t *testing.T) {
	t.Helper()
	select {
	case got := <-d:
		t.Errorf("unexpected OnDropped(%q, %q)", got[0], got[1])
	default:
	}
}

func TestEnvelopePlainListener(t *testing.T) {
	for _, suite := range []envelope.Suite{envelope.LegacyCBCHMAC, envelope.CCM8, envelope.SignP256} {
		t.Run(suite.String(), func(t *testing.T) {
			e, si := newEnvelopeEnv(t, suite)
			ctx := testContext(t)
			c := connect(t, e.plainConfig(t, si.envelope(t)))

			// The CONNECT carried username = device ID and a password of
			// the first sequence number.
			if res := si.nextConnect(); res.reason != "" || res.epoch != 0 || res.seq != 0 {
				t.Fatalf("stand-in's verdict on the password: %+v", res)
			}
			cl, ok := e.broker.srv.Clients.Get(e.id)
			if !ok {
				t.Fatal("the broker does not know the client")
			}
			if _, isTLS := cl.Net.Conn.(*tls.Conn); isTLS || cl.Net.Listener != "mqtt" || string(cl.Properties.Username) != e.id {
				t.Errorf("connection on listener %q, username %q", cl.Net.Listener, cl.Properties.Username)
			}
			if suite != envelope.SignP256 {
				e.broker.awaitSubscribed(t, "private/"+e.id+"/down/"+RekeyChannel)
			}

			// Uplinks are sealed on the wire and open at Warden's end.
			wire := make(chan Message, 4)
			if err := c.Subscribe(ctx, "private/"+e.id+"/up/+", 1, collect(wire)); err != nil {
				t.Fatal(err)
			}
			payload := []byte(`{"temp":21.5}`)
			if err := c.PublishUp(ctx, "telemetry", payload, 1); err != nil {
				t.Fatalf("PublishUp: %v", err)
			}
			u := si.nextUplink()
			if !u.sealed || !bytes.Equal(u.payload, payload) || u.channel != "telemetry" || u.epoch != 0 || u.seq != 1 {
				t.Errorf("stand-in got %+v, want the plaintext, sealed under epoch 0 with seq 1 (after the password's 0)", u)
			}
			m := receive(t, wire)
			if m.Sealed || bytes.Equal(m.Payload, payload) {
				t.Errorf("a raw subscription saw %+v; it should get the sealed bytes as they are", m)
			}
			if h, err := envelope.Parse(m.Payload); err != nil || h.Suite != suite || h.Seq != 1 {
				t.Errorf("the bytes on the wire are not a %v envelope with seq 1: %+v, %v", suite, h, err)
			}

			// Sealed downlinks reach SubscribeDown handlers opened.
			cmd := make(chan Message, 4)
			if err := c.SubscribeDown(ctx, "cmd", 1, collect(cmd)); err != nil {
				t.Fatal(err)
			}
			si.publish("cmd", si.sealDown("cmd", 0, []byte("reboot")))
			m = receive(t, cmd)
			if !m.Sealed || string(m.Payload) != "reboot" || m.Channel != "cmd" || m.Seq != 0 || m.Epoch != 0 {
				t.Errorf("downlink arrived as %+v", m)
			}

			st := c.EnvelopeStats()
			if st.Epoch != 0 || st.Sealed != 1 || st.Opened != 1 || len(st.Dropped) != 0 || st.Rekeys != 0 {
				t.Errorf("stats %+v", st)
			}

			// The rekey channel is the SDK's.
			for name, err := range map[string]error{
				"SubscribeDown": c.SubscribeDown(ctx, RekeyChannel, 1, func(Message) {}),
				"Subscribe":     c.Subscribe(ctx, "private/"+e.id+"/down/"+RekeyChannel, 1, func(Message) {}),
			} {
				if err == nil || !strings.Contains(err.Error(), "reserved") {
					t.Errorf("%s(%s): got %v, want a refusal", name, RekeyChannel, err)
				}
			}
		})
	}
}

func TestEnvelopeConnectPasswordReplay(t *testing.T) {
	e, si := newEnvelopeEnv(t, envelope.CCM8)
	c := connect(t, e.plainConfig(t, si.envelope(t)))
	if res := si.nextConnect(); res.reason != "" {
		t.Fatalf("first CONNECT refused: %+v", res)
	}
	if err := c.Close(testContext(t)); err != nil {
		t.Fatal(err)
	}
	e.broker.awaitGone(t, e.id)

	// A second device start whose counter starts over (no persistence, or a
	// counter file restored from an older copy) presents the same password
	// bytes: the stand-in's uplink window refuses it, and Connect reports it.
	start := time.Now()
	c2, err := Connect(testContext(t), e.plainConfig(t, si.envelope(t)))
	if err == nil {
		_ = c2.Close(context.Background())
		t.Fatal("a replayed CONNECT password was accepted")
	}
	if res := si.nextConnect(); res.reason != envelope.ReasonReplay || res.seq != 0 {
		t.Errorf("stand-in's verdict: %+v, want a replay of seq 0", res)
	}
	si.mu.Lock()
	pws := slices.Clone(si.passwords)
	si.mu.Unlock()
	if len(pws) != 2 || !bytes.Equal(pws[0], pws[1]) {
		t.Errorf("the two CONNECTs did not carry the same password bytes")
	}
	var re *RefusedError
	if !errors.As(err, &re) || re.Op != "connect" || re.ReasonCode != 0x86 {
		t.Fatalf("got %v, want a connect *RefusedError with 0x86", err)
	}
	if !strings.Contains(err.Error(), "restored from an older copy") {
		t.Errorf("error %q does not point at the counter", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Connect took %v to report the refusal", d)
	}
}

func TestEnvelopeOverTLS(t *testing.T) {
	for _, required := range []bool{false, true} {
		t.Run(map[bool]string{false: "not required", true: "required"}[required], func(t *testing.T) {
			e, si := newEnvelopeEnv(t, envelope.CCM8)
			ctx := testContext(t)
			env := si.envelope(t)
			env.Required = required
			cfg := e.config(t) // mqtts only
			cfg.Envelope = env
			c := connect(t, cfg)

			payload := []byte("over tls")
			if err := c.PublishUp(ctx, "telemetry", payload, 1); err != nil {
				t.Fatal(err)
			}
			u := si.nextUplink()
			if required {
				if !u.sealed || !bytes.Equal(u.payload, payload) || u.seq != 0 {
					t.Errorf("with Required the uplink should be sealed (seq 0: no password over TLS): %+v", u)
				}
			} else if u.sealed || !bytes.Equal(u.payload, payload) {
				t.Errorf("without Required the uplink over TLS should be sent as it is: %+v", u)
			}

			// Warden seals every downlink to an envelope device, over TLS too.
			cmd := make(chan Message, 4)
			if err := c.SubscribeDown(ctx, "cmd", 1, collect(cmd)); err != nil {
				t.Fatal(err)
			}
			si.publish("cmd", si.sealDown("cmd", 0, []byte("down")))
			if m := receive(t, cmd); !m.Sealed || string(m.Payload) != "down" {
				t.Errorf("downlink arrived as %+v", m)
			}
			if st := c.EnvelopeStats(); st.Sealed != map[bool]uint64{false: 0, true: 1}[required] || st.Opened != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestEnvelopeDownlinkDrops(t *testing.T) {
	e, si := newEnvelopeEnv(t, envelope.CCM8)
	ctx := testContext(t)
	drops := make(dropRecorder, 16)
	env := si.envelope(t)
	env.OnDropped = drops.record
	c := connect(t, e.plainConfig(t, env))
	cmd := make(chan Message, 16)
	if err := c.SubscribeDown(ctx, "cmd", 1, collect(cmd)); err != nil {
		t.Fatal(err)
	}

	topic := "private/" + e.id + "/down/cmd"
	good := si.sealDown("cmd", 0, []byte("ok-1"))
	tampered := slices.Clone(si.sealDown("cmd", 0, []byte("tampered")))
	tampered[len(tampered)-1] ^= 1
	otherSecret, err := envelope.NewMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	seal := func(secret []byte, epoch uint32, suite envelope.Suite, dir envelope.Direction, topic string) []byte {
		k, err := envelope.DeriveKeys(secret, e.id, epoch, suite, dir)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := envelope.Seal(k, 1000, topic, []byte("forged"))
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}

	si.publish("cmd", good)
	if m := receive(t, cmd); string(m.Payload) != "ok-1" {
		t.Fatalf("got %+v", m)
	}
	tests := []struct {
		name   string
		msg    []byte
		reason envelope.Reason
	}{
		{"replayed", good, envelope.ReasonReplay},
		{"tampered", tampered, envelope.ReasonBadTag},
		{"moved from another topic", si.sealDown("other", 0, []byte("for other")), envelope.ReasonBadTag},
		{"another device's key", seal(otherSecret, 0, envelope.CCM8, envelope.Downlink, topic), envelope.ReasonBadTag},
		{"reflected uplink", seal(si.secret(0), 0, envelope.CCM8, envelope.Uplink, topic), envelope.ReasonBadTag},
		{"unknown epoch", seal(si.secret(0), 5, envelope.CCM8, envelope.Downlink, topic), envelope.ReasonUnknownKey},
		{"downgraded suite", seal(si.secret(0), 0, envelope.LegacyCBCHMAC, envelope.Downlink, topic), envelope.ReasonDowngrade},
		{"plaintext", []byte("reboot now"), envelope.ReasonMalformed},
	}
	for _, tt := range tests {
		si.publish("cmd", tt.msg)
		drops.expect(t, "cmd", tt.reason)
	}
	si.publish("cmd", si.sealDown("cmd", 0, []byte("ok-2")))
	if m := receive(t, cmd); string(m.Payload) != "ok-2" || m.Seq != 3 {
		t.Errorf("got %+v, want ok-2 with seq 3", m)
	}
	select {
	case m := <-cmd:
		t.Errorf("a dropped downlink reached the handler: %+v", m)
	default:
	}
	st := c.EnvelopeStats()
	want := map[envelope.Reason]uint64{envelope.ReasonReplay: 1, envelope.ReasonBadTag: 4, envelope.ReasonUnknownKey: 1,
		envelope.ReasonDowngrade: 1, envelope.ReasonMalformed: 1}
	if st.Opened != 2 || !mapsEqual(st.Dropped, want) {
		t.Errorf("stats %+v, want 2 opened and dropped %v", st, want)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

func TestEnvelopeRekey(t *testing.T) {
	e, si := newEnvelopeEnv(t, envelope.CCM8)
	ctx := testContext(t)
	dir := t.TempDir()
	counterFor := func(epoch uint32) (*envelope.Counter, error) {
		return envelope.NewCounter(envelope.NewFileCounterStore(filepath.Join(dir, "counter-"+string(rune('0'+epoch)))))
	}
	var (
		mu        sync.Mutex
		calls     []string
		rekeyErr  = errors.New("flash write failed")
		persisted []byte
		c         *Client
	)
	drops := make(dropRecorder, 16)
	env := si.envelope(t)
	env.Counter, _ = counterFor(0)
	env.OnDropped = drops.record
	env.NewCounter = func(epoch uint32) (*envelope.Counter, error) {
		mu.Lock()
		calls = append(calls, "NewCounter")
		mu.Unlock()
		return counterFor(epoch)
	}
	env.OnRekey = func(epoch uint32, secret []byte) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, "OnRekey")
		if st := c.EnvelopeStats(); st.Epoch != 0 {
			t.Errorf("OnRekey ran after the switch to epoch %d", st.Epoch)
		}
		if epoch != 1 || !bytes.Equal(secret, si.secret(1)) {
			t.Errorf("OnRekey(%d, ...) got the wrong epoch or secret", epoch)
		}
		if rekeyErr != nil {
			return rekeyErr
		}
		persisted = secret
		return nil
	}
	cfg := e.plainConfig(t, env)
	ups := make(chan struct{}, 4)
	cfg.OnConnectionUp = func() { ups <- struct{}{} }
	cl := connect(t, cfg)
	mu.Lock()
	c = cl // read by OnRekey
	mu.Unlock()
	<-ups
	if res := si.nextConnect(); res.reason != "" {
		t.Fatal(res)
	}
	all := make(chan Message, 16)
	if err := c.SubscribeDown(ctx, "#", 1, collect(all)); err != nil {
		t.Fatal(err)
	}
	e.broker.awaitSubscribed(t, "private/"+e.id+"/down/"+RekeyChannel)

	// 1. OnRekey fails: the device stays on epoch 0.
	secret1 := si.addEpoch(1)
	si.publish(RekeyChannel, si.rekeyMessage(0, 1, secret1))
	drops.expect(t, RekeyChannel, ReasonRekeyRefused)
	if st := c.EnvelopeStats(); st.Epoch != 0 || st.Rekeys != 0 {
		t.Errorf("after a failed OnRekey: %+v", st)
	}
	if err := c.PublishUp(ctx, "t", []byte("still 0"), 1); err != nil {
		t.Fatal(err)
	}
	if u := si.nextUplink(); !u.sealed || u.epoch != 0 {
		t.Errorf("uplink after a failed rekey: %+v", u)
	}

	// 2. Warden resends the pending key; now OnRekey persists it.
	mu.Lock()
	rekeyErr = nil
	calls = nil
	mu.Unlock()
	rekey := si.rekeyMessage(0, 1, secret1)
	si.publish(RekeyChannel, rekey)
	deadline := time.Now().Add(5 * time.Second)
	for c.EnvelopeStats().Epoch != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no switch to epoch 1: %+v", c.EnvelopeStats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	if !slices.Equal(calls, []string{"NewCounter", "OnRekey"}) || !bytes.Equal(persisted, secret1) {
		t.Errorf("calls %v; OnRekey persisted the right secret: %v", calls, bytes.Equal(persisted, secret1))
	}
	mu.Unlock()
	if err := c.PublishUp(ctx, "t", []byte("now 1"), 1); err != nil {
		t.Fatal(err)
	}
	if u := si.nextUplink(); !u.sealed || u.epoch != 1 || u.seq != 0 || string(u.payload) != "now 1" {
		t.Errorf("uplink after the rekey: %+v, want epoch 1 from seq 0", u)
	}

	// 3. The same rekey bytes again are a replay; a resend (new sequence
	// number, same key) changes nothing.
	si.publish(RekeyChannel, rekey)
	drops.expect(t, RekeyChannel, envelope.ReasonReplay)
	si.publish(RekeyChannel, si.rekeyMessage(0, 1, secret1))

	// 4. Both epochs' downlinks open until Warden uses the new one; then
	// the old epoch's are refused.
	si.publish("cmd", si.sealDown("cmd", 0, []byte("old epoch")))
	if m := receive(t, all); string(m.Payload) != "old epoch" || m.Epoch != 0 {
		t.Errorf("got %+v", m)
	}
	si.publish("cmd", si.sealDown("cmd", 1, []byte("new epoch")))
	if m := receive(t, all); string(m.Payload) != "new epoch" || m.Epoch != 1 || m.Seq != 0 {
		t.Errorf("got %+v", m)
	}
	si.publish("cmd", si.sealDown("cmd", 0, []byte("old again")))
	drops.expect(t, "cmd", envelope.ReasonUnknownKey)
	drops.none(t)
	mu.Lock()
	if len(calls) != 2 {
		t.Errorf("the resent rekey called %v again", calls[2:])
	}
	mu.Unlock()
	st := c.EnvelopeStats()
	if st.Epoch != 1 || st.Rekeys != 1 || st.Opened != 4 || st.Dropped[ReasonRekeyRefused] != 1 || st.Dropped[envelope.ReasonReplay] != 1 {
		t.Errorf("stats %+v", st)
	}

	// 5. A reconnection's password is sealed under the new epoch.
	if err := e.broker.kill(e.id); err != nil {
		t.Fatal(err)
	}
	<-ups
	if res := si.nextConnect(); res.reason != "" || res.epoch != 1 || res.seq != 1 {
		t.Errorf("password after the rekey: %+v, want epoch 1, seq 1", res)
	}

	// No rekey message ever reached a handler.
	close(all)
	for m := range all {
		t.Errorf("the application saw %+v", m)
	}
}

func TestEnvelopeRekeyRefusals(t *testing.T) {
	e, si := newEnvelopeEnv(t, envelope.CCM8)
	drops := make(dropRecorder, 16)
	env := si.envelope(t)
	env.OnDropped = drops.record
	var rekeys atomic.Int32
	env.NewCounter = func(uint32) (*envelope.Counter, error) { return memCounter(t), nil }
	env.OnRekey = func(uint32, []byte) error { rekeys.Add(1); return nil }
	env.Epoch = 0
	c := connect(t, e.plainConfig(t, env))
	e.broker.awaitSubscribed(t, "private/"+e.id+"/down/"+RekeyChannel)

	secret := si.addEpoch(256)
	tests := []struct {
		name string
		msg  []byte
	}{
		{"short", si.sealDown(RekeyChannel, 0, []byte{0, 0, 0, 1})},
		{"same epoch", si.rekeyMessage(0, 0, secret)},
		{"key ID collision", si.rekeyMessage(0, 256, secret)},
	}
	for _, tt := range tests {
		si.publish(RekeyChannel, tt.msg)
		drops.expect(t, RekeyChannel, ReasonRekeyRefused)
	}
	if st := c.EnvelopeStats(); st.Epoch != 0 || rekeys.Load() != 0 {
		t.Errorf("stats %+v, %d rekeys", st, rekeys.Load())
	}

	// A device without OnRekey refuses rekeys, loudly.
	e2, si2 := newEnvelopeEnv(t, envelope.CCM8)
	drops2 := make(dropRecorder, 4)
	env2 := si2.envelope(t)
	env2.OnDropped = drops2.record
	c2 := connect(t, e2.plainConfig(t, env2))
	e2.broker.awaitSubscribed(t, "private/"+e2.id+"/down/"+RekeyChannel)
	si2.publish(RekeyChannel, si2.rekeyMessage(0, 1, si2.addEpoch(1)))
	drops2.expect(t, RekeyChannel, ReasonRekeyRefused)
	if st := c2.EnvelopeStats(); st.Epoch != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestEnvelopeRestartDoesNotReuseSequenceNumbers(t *testing.T) {
	e, si := newEnvelopeEnv(t, envelope.LegacyCBCHMAC)
	ctx := testContext(t)
	counterFile := filepath.Join(t.TempDir(), "uplink-counter")
	windows := NewFileWindowStore(t.TempDir())
	var seqs []uint64
	start := func(onDropped func(string, envelope.Reason)) *Client {
		counter, err := envelope.NewCounter(envelope.NewFileCounterStore(counterFile))
		if err != nil {
			t.Fatal(err)
		}
		env := si.envelope(t)
		env.Counter = counter
		env.DownlinkWindows = windows
		env.OnDropped = onDropped
		c := connect(t, e.plainConfig(t, env))
		res := si.nextConnect()
		if res.reason != "" {
			t.Fatalf("CONNECT refused: %+v", res)
		}
		seqs = append(seqs, res.seq)
		return c
	}

	c := start(nil)
	for i := range 3 {
		if err := c.PublishUp(ctx, "t", []byte{byte(i)}, 1); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, si.nextUplink().seq)
	}
	cmd := make(chan Message, 4)
	if err := c.SubscribeDown(ctx, "cmd", 1, collect(cmd)); err != nil {
		t.Fatal(err)
	}
	old := si.sealDown("cmd", 0, []byte("unlock the door"))
	si.publish("cmd", old)
	receive(t, cmd)
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	e.broker.awaitGone(t, e.id)

	// The restarted device continues above the persisted bound, and its
	// saved downlink window refuses the recorded command.
	drops := make(dropRecorder, 4)
	c = start(drops.record)
	restartAt := len(seqs) - 1
	for i := range 3 {
		if err := c.PublishUp(ctx, "t", []byte{byte(i)}, 1); err != nil {
			t.Fatal(err)
		}
		u := si.nextUplink()
		if !u.sealed {
			t.Fatalf("uplink after the restart refused by the stand-in: %+v", u)
		}
		seqs = append(seqs, u.seq)
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("sequence numbers %v are not strictly increasing", seqs)
		}
	}
	if seqs[restartAt] < 1024 {
		t.Errorf("after the restart the device started at %d, below the persisted bound 1024: %v", seqs[restartAt], seqs)
	}
	cmd2 := make(chan Message, 4)
	if err := c.SubscribeDown(ctx, "cmd", 1, collect(cmd2)); err != nil {
		t.Fatal(err)
	}
	si.publish("cmd", old)
	drops.expect(t, "cmd", envelope.ReasonReplay)
	si.publish("cmd", si.sealDown("cmd", 0, []byte("fresh")))
	if m := receive(t, cmd2); string(m.Payload) != "fresh" {
		t.Errorf("got %+v", m)
	}
}

func TestEnvelopeDownlinkWindowPersistence(t *testing.T) {
	e, si := newEnvelopeEnv(t, envelope.CCM8)
	ctx := testContext(t)

	// Without a WindowStore, a restarted device accepts a recorded
	// downlink again: the documented risk.
	c := connect(t, e.plainConfig(t, si.envelope(t)))
	cmd := make(chan Message, 4)
	if err := c.SubscribeDown(ctx, "cmd", 1, collect(cmd)); err != nil {
		t.Fatal(err)
	}
	old := si.sealDown("cmd", 0, []byte("x"))
	si.publish("cmd", old)
	receive(t, cmd)
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	e.broker.awaitGone(t, e.id)
	drops := make(dropRecorder, 4)
	env := si.envelope(t)
	env.Counter, _ = envelope.NewCounter(&memCounterStore{bound: 1 << 20}) // a fresh password
	store := &memWindowStore{}
	env.DownlinkWindows = store
	env.OnDropped = drops.record
	c = connect(t, e.plainConfig(t, env))
	if err := c.SubscribeDown(ctx, "cmd", 1, collect(cmd)); err != nil {
		t.Fatal(err)
	}
	si.publish("cmd", old)
	if m := receive(t, cmd); string(m.Payload) != "x" {
		t.Errorf("got %+v", m)
	}

	// A window that cannot be saved drops the downlink, so it cannot be
	// accepted twice.
	store.mu.Lock()
	store.fail = errors.New("flash worn out")
	store.mu.Unlock()
	si.publish("cmd", si.sealDown("cmd", 0, []byte("y")))
	drops.expect(t, "cmd", ReasonNotSaved)
	store.mu.Lock()
	store.fail = nil
	store.mu.Unlock()

	// A corrupt saved window stops Connect with advice.
	if err := store.Save(0, []byte("corrupt")); err != nil {
		t.Fatal(err)
	}
	env = si.envelope(t)
	env.DownlinkWindows = store
	_, err := Connect(testContext(t), e.plainConfig(t, env))
	if err == nil || !strings.Contains(err.Error(), "rekey the device") {
		t.Errorf("got %v, want a refusal that says to rekey", err)
	}
}

func TestFileWindowStore(t *testing.T) {
	s := NewFileWindowStore(t.TempDir())
	if b, err := s.Load(3); b != nil || err != nil {
		t.Fatalf("Load of a missing window: %v, %v", b, err)
	}
	var w envelope.ReplayWindow
	if err := w.Commit(42); err != nil {
		t.Fatal(err)
	}
	b, _ := w.MarshalBinary()
	if err := s.Save(3, b); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(3)
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("Load = %x, %v; want %x", got, err, b)
	}
	if b, err := s.Load(4); b != nil || err != nil {
		t.Errorf("epoch 4 shares epoch 3's window: %v, %v", b, err)
	}
	fresh := filepath.Join(t.TempDir(), "new", "dir")
	if err := NewFileWindowStore(fresh).Save(0, b); err != nil {
		t.Errorf("Save into a missing directory: %v", err)
	}
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("created directory: %v %v", fi, err)
	}
	blocked := filepath.Join(t.TempDir(), "file")
	os.WriteFile(blocked, nil, 0o600)
	if err := NewFileWindowStore(filepath.Join(blocked, "sub")).Save(0, b); err == nil {
		t.Error("Save under a regular file succeeded")
	}
}

func TestEnvelopeSealFailures(t *testing.T) {
	e, si := newEnvelopeEnv(t, envelope.CCM8)
	ctx := testContext(t)
	store := &memCounterStore{}
	counter, err := envelope.NewCounter(store)
	if err != nil {
		t.Fatal(err)
	}
	env := si.envelope(t)
	env.Counter = counter
	c := connect(t, e.plainConfig(t, env))

	if err := c.PublishUp(ctx, "t", make([]byte, envelope.MaxPlaintext+1), 1); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("oversized payload: %v", err)
	}
	if err := c.PublishUp(ctx, "t", nil, 3); err == nil || !strings.Contains(err.Error(), "QoS 3") {
		t.Errorf("QoS 3: %v", err)
	}

	// The counter must persist ahead before the 1024th number; if it cannot,
	// nothing is sent.
	store.mu.Lock()
	store.fail = errors.New("read-only file system")
	store.mu.Unlock()
	var failed error
	for range 1100 {
		if failed = c.PublishUp(ctx, "t", nil, 0); failed != nil {
			break
		}
	}
	if failed == nil || !strings.Contains(failed.Error(), "read-only file system") {
		t.Errorf("got %v, want the counter's persistence failure", failed)
	}

	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.PublishUp(ctx, "t", nil, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("PublishUp after Close: %v", err)
	}
}

func TestEnvelopeConfigValidation(t *testing.T) {
	ca, err := newTestCA("warden test root")
	if err != nil {
		t.Fatal(err)
	}
	dev, err := ca.deviceCert("abc", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edDev, err := ca.deviceCert("abc", edKey)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := envelope.NewMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	serverKey := dev.PrivateKey.(*ecdsa.PrivateKey).Public().(*ecdsa.PublicKey)
	newCounter := func(uint32) (*envelope.Counter, error) { return nil, nil }

	plain := func() Config {
		return Config{Servers: []string{"mqtt://warden.example"}, DeviceID: "abc",
			Envelope: &Envelope{Suite: envelope.CCM8, Secret: secret, Counter: memCounter(t)}}
	}
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"mqtt without Envelope", func(c *Config) { c.Envelope = nil }, "set Config.Envelope"},
		{"tcp with Envelope", func(c *Config) { c.Servers = []string{"tcp://warden.example:1883"} }, "not encrypted"},
		{"ws with Envelope", func(c *Config) { c.Servers = []string{"ws://warden.example/mqtt"} }, "not encrypted"},
		{"mqtt with a path", func(c *Config) { c.Servers = []string{"mqtt://warden.example/x"} }, "has a path"},
		{"mixed without Required", func(c *Config) {
			c.Servers = append(c.Servers, "mqtts://warden.example")
			c.Certificate, c.RootCAs = dev, ca.pool
		}, "mixes plain mqtt:// and TLS"},
		{"TLS without RootCAs", func(c *Config) { c.Servers = []string{"mqtts://warden.example"}; c.Certificate = dev }, "Config.RootCAs is nil"},
		{"TLS without a certificate", func(c *Config) { c.Servers = []string{"mqtts://warden.example"}; c.RootCAs = ca.pool }, "Config.Certificate is empty"},
		{"no device ID", func(c *Config) { c.DeviceID = "" }, "Config.DeviceID is empty"},
		{"bad device ID", func(c *Config) { c.DeviceID = "a/b" }, "Config.DeviceID"},
		{"certificate of another device", func(c *Config) { c.Certificate = dev; c.DeviceID = "xyz" }, `differs from the ID "abc"`},
		{"no suite", func(c *Config) { c.Envelope.Suite = 0 }, "not a suite"},
		{"short secret", func(c *Config) { c.Envelope.Secret = secret[:15] }, "15 bytes"},
		{"no secret", func(c *Config) { c.Envelope.Secret = nil }, "0 bytes"},
		{"no counter", func(c *Config) { c.Envelope.Counter = nil }, "Counter is nil"},
		{"NewCounter without OnRekey", func(c *Config) { c.Envelope.NewCounter = newCounter }, "set both"},
		{"OnRekey without NewCounter", func(c *Config) { c.Envelope.OnRekey = func(uint32, []byte) error { return nil } }, "set both"},
		{"ServerKey for ccm-8", func(c *Config) { c.Envelope.ServerKey = serverKey }, "sign-p256 devices only"},
		{"sign-p256 without certificate", func(c *Config) { c.Envelope.Suite, c.Envelope.Secret = envelope.SignP256, nil }, "Config.Certificate is empty"},
		{"sign-p256 with a secret", func(c *Config) { c.Envelope.Suite = envelope.SignP256; c.Certificate = dev }, "must be empty for sign-p256"},
		{"sign-p256 with an Ed25519 key", func(c *Config) {
			c.Envelope.Suite, c.Envelope.Secret, c.Certificate = envelope.SignP256, nil, edDev
		}, "ECDSA P-256"},
		{"sign-p256 with a bad server key", func(c *Config) {
			c.Envelope.Suite, c.Envelope.Secret, c.Certificate = envelope.SignP256, nil, dev
			c.Envelope.ServerKey = &ecdsa.PublicKey{Curve: serverKey.Curve}
		}, "ServerKey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := plain()
			tt.modify(&cfg)
			_, err := cfg.validate()
			if err == nil {
				t.Fatal("the configuration was accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), hex.EncodeToString(secret)) {
				t.Errorf("error %q contains the secret", err)
			}
		})
	}

	accepted := []struct {
		name   string
		modify func(*Config)
		seal   bool
	}{
		{"plain only, no certificate", func(*Config) {}, true},
		{"plain only, with a certificate", func(c *Config) { c.Certificate, c.DeviceID = dev, "" }, true},
		{"TLS only", func(c *Config) {
			c.Servers = []string{"mqtts://warden.example"}
			c.Certificate, c.RootCAs = dev, ca.pool
		}, false},
		{"TLS only, Required", func(c *Config) {
			c.Servers = []string{"mqtts://warden.example"}
			c.Certificate, c.RootCAs, c.Envelope.Required = dev, ca.pool, true
		}, true},
		{"mixed, Required", func(c *Config) {
			c.Servers = append(c.Servers, "wss://warden.example/mqtt")
			c.Certificate, c.RootCAs, c.Envelope.Required = dev, ca.pool, true
		}, true},
		{"sign-p256 plain, no root", func(c *Config) {
			c.Envelope.Suite, c.Envelope.Secret, c.Certificate, c.DeviceID = envelope.SignP256, nil, dev, ""
		}, true},
		{"sign-p256 with ServerKey", func(c *Config) {
			c.Envelope.Suite, c.Envelope.Secret, c.Certificate, c.Envelope.ServerKey = envelope.SignP256, nil, dev, serverKey
		}, true},
		{"rekeys accepted", func(c *Config) {
			c.Envelope.NewCounter, c.Envelope.OnRekey = newCounter, func(uint32, []byte) error { return nil }
		}, true},
	}
	for _, tt := range accepted {
		t.Run(tt.name, func(t *testing.T) {
			cfg := plain()
			tt.modify(&cfg)
			s, err := cfg.validate()
			if err != nil {
				t.Fatal(err)
			}
			if s.env == nil || s.env.sealUp != tt.seal || s.id != "abc" {
				t.Errorf("id %q, seal uplinks %v; want abc, %v", s.id, s.env != nil && s.env.sealUp, tt.seal)
			}
			if s.servers[0].Scheme == "mqtt" && s.servers[0].Host != "warden.example:1883" {
				t.Errorf("plain server %v did not get port 1883", s.servers[0])
			}
		})
	}

	// The client keeps its own copy of the secret.
	cfg := plain()
	s, err := cfg.validate()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Envelope.Secret[0] ^= 0xff
	if s.env.secret[0] == cfg.Envelope.Secret[0] {
		t.Error("the client shares the caller's secret slice")
	}
	cfg.Envelope.Secret[0] ^= 0xff
}

func TestEnvelopeCounterExhausted(t *testing.T) {
	e, si := newEnvelopeEnv(t, envelope.CCM8)
	counter, err := envelope.NewCounter(&memCounterStore{bound: envelope.MaxSeq + 1})
	if err != nil {
		t.Fatal(err)
	}
	env := si.envelope(t)
	env.Counter = counter
	start := time.Now()
	c, err := Connect(testContext(t), e.plainConfig(t, env))
	if err == nil {
		_ = c.Close(context.Background())
		t.Fatal("connected without a sequence number for the password")
	}
	if !errors.Is(err, envelope.ErrRekeyRequired) || !strings.Contains(err.Error(), "CONNECT password") {
		t.Errorf("got %v, want ErrRekeyRequired from the password", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Connect took %v to give up", d)
	}
	select {
	case res := <-si.connects:
		t.Errorf("a CONNECT reached the broker: %+v", res)
	default:
	}
}
