package broker

import (
	"fmt"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestLaggingReaderWaitsInsteadOfDropping guards mochi patch 16
// (PATCHES.md): a reader with its own in-flight limit (ClientLimits, 100)
// that holds back its acknowledgements gets half of it sent (its send
// quota); the other half wait in flight, and each acknowledgement
// releases the next, in the order published. Upstream sent the whole
// store's worth unacknowledged, so that any message more was dropped
// ("client store quota reached") instead of waiting, and released
// waiting messages in map order.
func TestLaggingReaderWaitsInsteadOfDropping(t *testing.T) {
	limits := func(cl *mqtt.Client) (int32, uint16) {
		if cl.ID == "reader" {
			return 1000, 100
		}
		return 0, 0
	}
	s := startIdleServer(t, plainKind, &mqtt.Options{ClientLimits: limits})
	reader := s.dial(t, "reader") // Receive Maximum absent: 65,535
	writePacket(t, reader, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "t/#", Qos: 1}}})
	if pk := readPacket(t, reader); pk.FixedHeader.Type != packets.Suback || len(pk.ReasonCodes) != 1 || pk.ReasonCodes[0] != 1 {
		t.Fatalf("subscribe: %+v", pk)
	}
	pub := s.dial(t, "pub")
	const n = 100 // the reader's whole in-flight store
	go func() {
		for i := range n {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(i + 1),
				TopicName: "t/x", Payload: []byte(fmt.Sprint(i))}
			if _, err := pub.Write(encodePacket(t, pk)); err != nil {
				return
			}
		}
	}()
	go func() { // the publisher's PUBACKs, unread, must not stall it
		buf := make([]byte, 4096)
		for {
			if _, err := pub.Read(buf); err != nil {
				return
			}
		}
	}()

	var held []uint16
	next := 0
	receive := func(want int) {
		t.Helper()
		for range want {
			pk := readPacket(t, reader)
			if pk.FixedHeader.Type != packets.Publish || string(pk.Payload) != fmt.Sprint(next) {
				t.Fatalf("message %d: %v %q", next, pk.FixedHeader, pk.Payload)
			}
			next++
			held = append(held, pk.PacketID)
		}
	}
	receive(50)
	// Nothing more until acknowledged.
	_ = reader.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := reader.Read(make([]byte, 1)); n > 0 || err == nil {
		t.Fatal("more than half the in-flight limit was sent unacknowledged")
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatal(err)
	}
	_ = reader.SetReadDeadline(time.Time{})
	for next < n {
		for _, id := range held {
			writePacket(t, reader, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id})
		}
		held = held[:0]
		receive(min(50, n-next))
	}
	if d := s.srv.Info.InflightDropped; d != 0 {
		t.Errorf("%d messages dropped for the in-flight limit", d)
	}
}
