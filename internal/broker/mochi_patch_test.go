package broker

import (
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestInflightNextImmediateDoesNotDeadlock guards third_party/mochi's
// first patch (PATCHES.md): NextImmediate took the inflight read lock
// twice, so a writer queued between the two froze the session for good.
// Here readers and writers hammer one Inflight; upstream v2.7.9 hangs
// within a few thousand rounds.
func TestInflightNextImmediateDoesNotDeadlock(t *testing.T) {
	in := mqtt.NewInflights()
	done := make(chan struct{})
	var wg sync.WaitGroup
	const rounds = 20000
	for w := range 4 {
		wg.Add(2)
		go func() { // the relay publishing: writers
			defer wg.Done()
			for i := range rounds {
				id := uint16(w*rounds + i%1000 + 1)
				in.Set(packets.Packet{PacketID: id, Expiry: -1})
				in.Delete(id)
			}
		}()
		go func() { // PUBACKs processed: NextImmediate after each
			defer wg.Done()
			for range rounds {
				in.NextImmediate()
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Inflight deadlocked: NextImmediate and Set are waiting on each other (is the replace of mochi in go.mod gone?)")
	}
}

// TestInflightImmediateCount guards patch 3: NextImmediate finds a packet
// waiting for send quota (Expiry < 0) however it was set, replaced,
// deleted or cloned, and nothing once none waits.
func TestInflightImmediateCount(t *testing.T) {
	in := mqtt.NewInflights()
	for id := uint16(1); id <= 100; id++ {
		in.Set(packets.Packet{PacketID: id, Expiry: 10})
	}
	if _, ok := in.NextImmediate(); ok {
		t.Fatal("a packet waits though none was parked")
	}
	in.Set(packets.Packet{PacketID: 7, Expiry: -1}) // parked in place of a sent one
	in.Set(packets.Packet{PacketID: 200, Expiry: -1})
	if p, ok := in.NextImmediate(); !ok || (p.PacketID != 7 && p.PacketID != 200) {
		t.Fatalf("NextImmediate = %v %v, want a parked packet", p.PacketID, ok)
	}
	c := in.Clone()
	in.Delete(200)
	in.Set(packets.Packet{PacketID: 7, Expiry: 10}) // sent after all
	if p, ok := in.NextImmediate(); ok {
		t.Fatalf("NextImmediate = %v after every parked packet left", p.PacketID)
	}
	if _, ok := c.NextImmediate(); !ok {
		t.Fatal("the clone lost its parked packets")
	}
	in.Delete(999) // unknown: no effect
	in.Set(packets.Packet{PacketID: 300, Expiry: -1})
	if p, ok := in.NextImmediate(); !ok || p.PacketID != 300 {
		t.Fatalf("NextImmediate = %v %v, want 300", p.PacketID, ok)
	}
}

// TestOutboundQuotaIsTakenWithTheDecision guards patch 19: a packet is
// stored and either given a unit of send quota or parked in one step, a
// packet never overtakes one parked before it, and ReleaseParked sends
// parked packets in order while quota lasts, leaving parked those the
// outbound queue refuses.
func TestOutboundQuotaIsTakenWithTheDecision(t *testing.T) {
	in := mqtt.NewInflights()
	in.ResetSendQuota(2)
	for id := uint16(1); id <= 5; id++ {
		isNew, parked := in.SetOutbound(&packets.Packet{PacketID: id}, true)
		if !isNew || parked != (id > 2) {
			t.Fatalf("packet %d: new %v parked %v with a quota of 2", id, isNew, parked)
		}
	}
	var sent []uint16
	send := func(p *packets.Packet) bool { sent = append(sent, p.PacketID); p.Expiry = 0; return true }
	in.ReleaseParked(send)
	if len(sent) != 0 {
		t.Fatalf("released %v with no quota left", sent)
	}

	in.Delete(1) // PUBACK for 1
	in.IncreaseSendQuota()
	if _, parked := in.SetOutbound(&packets.Packet{PacketID: 6}, true); !parked {
		t.Fatal("packet 6 took the quota freed for packet 3, parked before it")
	}
	in.ReleaseParked(send)
	if len(sent) != 1 || sent[0] != 3 {
		t.Fatalf("released %v, want [3]", sent)
	}
	if p, _ := in.Get(3); p.Expiry != 0 {
		t.Fatalf("released packet 3 stored with expiry %d, want it marked sent", p.Expiry)
	}

	in.Delete(2)
	in.Delete(3)
	in.IncreaseSendQuota()
	in.IncreaseSendQuota()
	in.ReleaseParked(func(*packets.Packet) bool { return false }) // outbound queue full
	if p, _ := in.Get(4); p.Expiry >= 0 {
		t.Fatal("packet 4, refused by the outbound queue, is no longer parked")
	}
	sent = nil
	in.ReleaseParked(send)
	if len(sent) != 2 || sent[0] != 4 || sent[1] != 5 {
		t.Fatalf("released %v, want [4 5]", sent)
	}
	in.Delete(4) // PUBACK for 4 without a release yet
	in.IncreaseSendQuota()
	in.Delete(5)
	in.IncreaseSendQuota()
	sent = nil
	in.ReleaseParked(send)
	if len(sent) != 1 || sent[0] != 6 {
		t.Fatalf("released %v, want [6]", sent)
	}
	if _, parked := in.SetOutbound(&packets.Packet{PacketID: 7}, true); parked {
		t.Fatal("packet 7 parked with quota left and nothing parked")
	}
	if _, parked := in.SetOutbound(&packets.Packet{PacketID: 8}, true); !parked {
		t.Fatal("packet 8 sent beyond the quota")
	}
	if _, parked := in.SetOutbound(&packets.Packet{PacketID: 9}, false); parked {
		t.Fatal("a packet parked without flow control")
	}
}

// TestHooksProvideWhatTheySaid guards patch 23: mochi asks each hook once,
// when it is added, which events it provides, and answers from that:
// every event fits the 64-bit set, and the answers are the hooks' own.
func TestHooksProvideWhatTheySaid(t *testing.T) {
	if mqtt.StoredSysInfo >= 64 {
		t.Fatalf("mochi has %d hook events; the provided set holds 64", mqtt.StoredSysInfo+1)
	}
	b, _ := newTestBroker(t, newTestPKI(t), 2)
	for _, hook := range []mqtt.Hook{new(allowAll), b.hook} {
		var hooks mqtt.Hooks
		if err := hooks.Add(hook, nil); err != nil {
			t.Fatal(err)
		}
		for ev := byte(0); ev <= mqtt.StoredSysInfo+1; ev++ {
			if got, want := hooks.Provides(ev), hook.Provides(ev); got != want {
				t.Errorf("%s: event %d provided %v, the hook says %v", hook.ID(), ev, got, want)
			}
		}
	}
}
