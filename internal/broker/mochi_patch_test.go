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
