package broker

import (
	"fmt"
	"net"
	"sync/atomic"
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

// TestOwnPacketIDsDoNotCollideWithTheClients guards mochi patch 20
// (PATCHES.md): a client publishing QoS 1 with the packet ID of a
// message the server has sent it and not yet had acknowledged must not
// cost that message its place in flight. Upstream deleted it (and stored
// its PUBACK in its place): the client's PUBACK then found nothing and
// never returned the send quota, so with a Receive Maximum of 1 nothing
// reached the client again.
func TestOwnPacketIDsDoNotCollideWithTheClients(t *testing.T) {
	s := startIdleServer(t, plainKind, nil)
	c := s.dialWith(t, packets.ConnectParams{Clean: true, Keepalive: 60, ClientIdentifier: "both-ways"}, packets.Properties{ReceiveMaximum: 1})
	subscribeAt(t, c, "down/#", 1)

	for round := range 3 {
		if err := s.srv.Publish("down/x", []byte{byte(round)}, false, 1); err != nil {
			t.Fatal(err)
		}
		down := readPacket(t, c)
		if down.FixedHeader.Type != packets.Publish || len(down.Payload) != 1 || down.Payload[0] != byte(round) {
			t.Fatalf("round %d: %+v %x instead of the downlink", round, down.FixedHeader, down.Payload)
		}
		// The client's own publish, with the ID the server chose for its.
		writePacket(t, c, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: down.PacketID,
			TopicName: "up/x", Payload: []byte("telemetry")})
		if ack := readPacket(t, c); ack.FixedHeader.Type != packets.Puback || ack.PacketID != down.PacketID {
			t.Fatalf("round %d: %+v instead of the PUBACK of the client's publish", round, ack.FixedHeader)
		}
		writePacket(t, c, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: down.PacketID})
	}
	cl, ok := s.srv.Clients.Get("both-ways")
	if !ok {
		t.Fatal("client not registered")
	}
	if n := inflightAfterAcks(cl); n != 0 {
		t.Fatalf("%d packets left in flight after every flow completed (a QoS 1 PUBACK is not state to keep)", n)
	}
}

// TestResumedSessionResendsInOrderWithinItsQuota guards mochi patch 26
// (PATCHES.md): a client that resumes its session gets its
// unacknowledged messages again, marked as duplicates, in the order they
// were first sent, and the messages that were waiting for its Receive
// Maximum after them, as that allows: each exactly once, never more than
// its Receive Maximum unacknowledged. Upstream resent them by creation
// second (map order within a second) and sent the waiting ones too,
// beyond the Receive Maximum, and again later.
func TestResumedSessionResendsInOrderWithinItsQuota(t *testing.T) {
	dropped := new(droppedRecorder)
	s := startIdleServer(t, plainKind, nil, dropped)
	connect := func() net.Conn {
		return s.dialWith(t, packets.ConnectParams{Clean: false, Keepalive: 60, ClientIdentifier: "resumer"},
			packets.Properties{ReceiveMaximum: 2, SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true})
	}
	c := connect()
	subscribeAt(t, c, "r/#", 1)
	const n = 8
	for i := range n {
		if err := s.srv.Publish("r/x", []byte{byte(i)}, false, 1); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 { // the Receive Maximum's worth, not acknowledged
		if pk := readPacket(t, c); pk.FixedHeader.Type != packets.Publish || pk.Payload[0] != byte(i) {
			t.Fatalf("message %d: %+v %x", i, pk.FixedHeader, pk.Payload)
		}
	}
	c.Close()
	waitOffline(s.srv, "resumer")

	c = connect()
	if n := dropped.n.Load(); n != 0 {
		t.Fatalf("taking the session over reported %d in-flight messages dropped (the session store deletes them)", n)
	}
	for i := range n {
		pk := readPacket(t, c)
		if pk.FixedHeader.Type != packets.Publish || pk.Payload[0] != byte(i) {
			t.Fatalf("after resuming, message %d: %+v %x (resent out of order, or beyond the Receive Maximum)", i, pk.FixedHeader, pk.Payload)
		}
		if pk.FixedHeader.Dup != (i < 2) {
			t.Errorf("message %d: DUP %v, want it set only on the two sent before", i, pk.FixedHeader.Dup)
		}
		if i%2 == 1 { // acknowledge in pairs: never more than two outstanding
			_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatalf("a third message came with two unacknowledged (Receive Maximum 2)")
			}
			_ = c.SetReadDeadline(time.Time{})
			for _, id := range []uint16{pk.PacketID - 1, pk.PacketID} {
				writePacket(t, c, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id})
			}
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("a message came twice")
	}
}

// droppedRecorder counts the in-flight messages mochi reports dropped.
type droppedRecorder struct {
	mqtt.HookBase
	n atomic.Int64
}

func (*droppedRecorder) ID() string           { return "dropped-recorder" }
func (*droppedRecorder) Provides(b byte) bool { return b == mqtt.OnQosDropped }
func (d *droppedRecorder) OnQosDropped(*mqtt.Client, packets.Packet) {
	d.n.Add(1)
}

// TestMessageExpiryDropsOnlyWhatWasNotSent guards mochi patch 27
// (PATCHES.md): a message that expires while it waits for the client's
// send quota is dropped; one already sent stays in flight until the
// client acknowledges it, and that acknowledgement returns the quota.
// Upstream expired the sent message instead: its PUBACK found nothing,
// the quota never came back, and with a Receive Maximum of 1 the client
// received nothing more (the waiting message, which never expired, was
// stuck too).
func TestMessageExpiryDropsOnlyWhatWasNotSent(t *testing.T) {
	t.Parallel() // three seconds of waiting for the expiry sweep
	dropped := new(droppedRecorder)
	s := startIdleServer(t, plainKind, nil, dropped)
	c := s.dialWith(t, packets.ConnectParams{Clean: true, Keepalive: 60, ClientIdentifier: "slow"}, packets.Properties{ReceiveMaximum: 1})
	subscribeAt(t, c, "e/#", 1)
	pub := s.dial(t, "pub")
	publish := func(id uint16, payload string, expiry uint32) {
		writePacket(t, pub, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id, TopicName: "e/x",
			Payload: []byte(payload), Properties: packets.Properties{MessageExpiryInterval: expiry}})
		if ack := readPacket(t, pub); ack.FixedHeader.Type != packets.Puback {
			t.Fatalf("publish %s: %+v", payload, ack.FixedHeader)
		}
	}
	publish(1, "sent", 1)
	sent := readPacket(t, c)
	if string(sent.Payload) != "sent" {
		t.Fatalf("%q instead of the first message", sent.Payload)
	}
	publish(2, "waiting", 1)    // parked: the quota of 1 is taken
	time.Sleep(3 * time.Second) // both messages' expiry passes; the server's sweep runs every second
	writePacket(t, c, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: sent.PacketID})
	publish(3, "after", 0)
	if pk := readPacket(t, c); string(pk.Payload) != "after" {
		t.Fatalf("%q instead of the message published after the acknowledgement (the expired waiting one must not come; the quota must)", pk.Payload)
	}
	// The expired message is reported dropped once (patch 30; upstream
	// reported it twice, the second time as an empty packet).
	if n := dropped.n.Load(); n != 1 {
		t.Errorf("OnQosDropped called %d times for the one expired message", n)
	}
}

// inflightAfterAcks is how many packets cl still has in flight once the
// acknowledgements sent to the server have been processed (it waits up
// to 5 s for the count to reach zero).
func inflightAfterAcks(cl *mqtt.Client) int {
	deadline := time.Now().Add(5 * time.Second)
	for cl.State.Inflight.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return cl.State.Inflight.Len()
}

// TestOfflineSessionKeepsMessagesUnsent guards the offline half of mochi
// patch 27: messages for a session whose client is away wait as not yet
// sent: one whose expiry passes meanwhile is dropped, and the others
// arrive when the client resumes, once each and not marked as
// duplicates. Upstream stored them as sent: the expired one came anyway,
// and every one came marked DUP.
func TestOfflineSessionKeepsMessagesUnsent(t *testing.T) {
	t.Parallel() // three seconds of waiting for the expiry sweep
	s := startIdleServer(t, plainKind, nil)
	connect := func() net.Conn {
		return s.dialWith(t, packets.ConnectParams{Clean: false, Keepalive: 60, ClientIdentifier: "away"},
			packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true})
	}
	c := connect()
	subscribeAt(t, c, "o/#", 1)
	c.Close()
	waitOffline(s.srv, "away")
	pub := s.dial(t, "pub")
	for i, expiry := range []uint32{1, 0} {
		writePacket(t, pub, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(i + 1), TopicName: "o/x",
			Payload: []byte{byte(i)}, Properties: packets.Properties{MessageExpiryInterval: expiry}})
		if ack := readPacket(t, pub); ack.FixedHeader.Type != packets.Puback {
			t.Fatalf("publish %d: %+v", i, ack.FixedHeader)
		}
	}
	time.Sleep(3 * time.Second) // the first message's expiry passes; the sweep runs every second

	c = connect()
	pk := readPacket(t, c)
	if pk.FixedHeader.Type != packets.Publish || len(pk.Payload) != 1 || pk.Payload[0] != 1 {
		t.Fatalf("after resuming: %+v %x, want only the message that had not expired", pk.FixedHeader, pk.Payload)
	}
	if pk.FixedHeader.Dup {
		t.Error("a message never sent before came marked as a duplicate")
	}
	writePacket(t, c, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("more than the one message came after resuming")
	}
}

// waitOffline waits up to 5 s for the server to see that client id's
// connection has closed (its session stays).
func waitOffline(srv *mqtt.Server, id string) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if cl, ok := srv.Clients.Get(id); ok && cl.Closed() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestExpirySweepsFindWhatExpires guards mochi patch 29 (PATCHES.md):
// the once-a-second sweeps pick out expired retained messages and
// expired offline sessions without copying the server's maps, and still
// find exactly those.
func TestExpirySweepsFindWhatExpires(t *testing.T) {
	t.Parallel() // three seconds of waiting for the sweeps
	s := startIdleServer(t, plainKind, nil)
	for _, sess := range []struct {
		id     string
		expiry uint32
	}{{"gone", 1}, {"kept", 300}} {
		c := s.dialWith(t, packets.ConnectParams{Clean: false, Keepalive: 60, ClientIdentifier: sess.id},
			packets.Properties{SessionExpiryInterval: sess.expiry, SessionExpiryIntervalFlag: true})
		subscribeAt(t, c, "s/"+sess.id, 1)
		c.Close()
		waitOffline(s.srv, sess.id)
	}
	pub := s.dial(t, "pub")
	for i, m := range []struct {
		topic  string
		expiry uint32
	}{{"r/short", 1}, {"r/long", 0}} {
		writePacket(t, pub, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true}, PacketID: uint16(i + 1),
			TopicName: m.topic, Payload: []byte(m.topic), Properties: packets.Properties{MessageExpiryInterval: m.expiry}})
		if ack := readPacket(t, pub); ack.FixedHeader.Type != packets.Puback {
			t.Fatalf("publish %s: %+v", m.topic, ack.FixedHeader)
		}
	}
	for _, topic := range []string{"r/short", "r/long"} {
		if _, ok := s.srv.Topics.Retained.Get(topic); !ok {
			t.Fatalf("%s is not retained", topic)
		}
	}
	time.Sleep(3 * time.Second) // the short expiries pass; the sweeps run every second

	if _, ok := s.srv.Clients.Get("gone"); ok {
		t.Error("the session whose expiry passed is still there")
	}
	if _, ok := s.srv.Clients.Get("kept"); !ok {
		t.Error("the session that had not expired is gone")
	}
	if subs := s.srv.Topics.Subscribers("s/gone"); len(subs.Subscriptions) != 0 {
		t.Errorf("the expired session's subscription is still indexed: %v", subs.Subscriptions)
	}
	sub := s.dial(t, "sub")
	subscribeAt(t, sub, "r/#", 0)
	if pk := readPacket(t, sub); string(pk.Payload) != "r/long" {
		t.Fatalf("retained %q, want only r/long", pk.Payload)
	}
	_ = sub.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := sub.Read(make([]byte, 1)); err == nil {
		t.Fatal("the expired retained message was delivered too")
	}
}
