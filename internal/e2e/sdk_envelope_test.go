package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/wardentest"
)

// TestSDKEnvelopeDeviceAgainstWarden runs the Go SDK as an envelope device
// over the plain listener against the real server, through a rekey.
func TestSDKEnvelopeDeviceAgainstWarden(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--mqtt", "127.0.0.1:0")
	dir := t.TempDir()
	s.MustWarden("device", "add", "sdk1", "--out", dir, "--envelope")
	reader := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ingest", "reader"), wardentest.RawOpts{Clean: true})
	reader.Subscribe(t, "fleet/#", 1)
	ops := wardentest.MustConnectRaw(t, s.MQTTS, s.AddService("ops", "commander"), wardentest.RawOpts{Clean: true})

	id, env, err := device.LoadEnvelopeBundle(filepath.Join(dir, "sdk1.envelope.json"))
	if err != nil {
		t.Fatal(err)
	}
	counterFor := func(epoch uint32) (*envelope.Counter, error) {
		return envelope.NewCounter(envelope.NewFileCounterStore(filepath.Join(dir, fmt.Sprintf("counter-%d", epoch))))
	}
	if env.Counter, err = counterFor(env.Epoch); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var rekeyed []uint32
	env.NewCounter = counterFor
	env.OnRekey = func(epoch uint32, secret []byte) error {
		mu.Lock()
		defer mu.Unlock()
		rekeyed = append(rekeyed, epoch)
		return nil
	}
	env.DownlinkWindows = device.NewFileWindowStore(filepath.Join(dir, "windows"))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := device.Connect(ctx, device.Config{
		Servers:    []string{"mqtt://" + s.Plain},
		DeviceID:   id,
		Envelope:   env,
		MinBackoff: 50 * time.Millisecond,
		MaxBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("SDK connect over the plain listener: %v", err)
	}
	defer cl.Close(context.Background())

	cmds := make(chan device.Message, 10)
	if err := cl.SubscribeDown(ctx, "cmd", 1, func(m device.Message) { cmds <- m }); err != nil {
		t.Fatal(err)
	}
	if err := cl.PublishUp(ctx, "telemetry", []byte("epoch zero"), 1); err != nil {
		t.Fatal(err)
	}
	wardentest.ExpectMessage(t, reader.Msgs, "fleet/sdk1/up/telemetry", "epoch zero", 5*time.Second)

	if rc, err := ops.Publish(t, "fleet/sdk1/down/cmd", []byte("open valve"), 1); rc != 0 || err != nil {
		t.Fatalf("command: 0x%02x %v", rc, err)
	}
	select {
	case m := <-cmds:
		if string(m.Payload) != "open valve" || !m.Sealed {
			t.Fatalf("command as delivered to the handler: %+v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the SDK handler got no command; SDK stats %+v", cl.EnvelopeStats())
	}

	// Rekey: the SDK applies it by itself; its next uplink confirms it.
	s.MustWarden("device", "rekey", "sdk1")
	wardentest.Eventually(t, 5*time.Second, "the SDK to apply the rekey", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(rekeyed) == 1 && rekeyed[0] == 1
	})
	if err := cl.PublishUp(ctx, "telemetry", []byte("epoch one"), 1); err != nil {
		t.Fatal(err)
	}
	m := wardentest.ExpectMessage(t, reader.Msgs, "fleet/sdk1/up/telemetry", "epoch one", 5*time.Second)
	if m.Properties.User.Get("warden-epoch") != "1" {
		t.Fatalf("uplink after the rekey was under epoch %q", m.Properties.User.Get("warden-epoch"))
	}
	// Downlinks now use the new epoch, and the SDK still opens them.
	ops.Publish(t, "fleet/sdk1/down/cmd", []byte("close valve"), 1)
	select {
	case m := <-cmds:
		if string(m.Payload) != "close valve" || m.Epoch != 1 {
			t.Fatalf("command after the rekey: %+v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no command after the rekey")
	}
	if st := cl.EnvelopeStats(); st.Epoch != 1 || st.Rekeys != 1 || len(st.Dropped) != 0 {
		t.Errorf("SDK envelope stats: %+v", st)
	}
}
