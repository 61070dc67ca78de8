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
