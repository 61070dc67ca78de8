package broker

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	pahopackets "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestSubscribersMatching guards third_party/mochi's fourth patch
// (PATCHES.md): Subscribers reads the particles in place and allocates
// its maps only when something matches. What matches, with which QoS and
// identifiers, must be what upstream gives.
func TestSubscribersMatching(t *testing.T) {
	x := mqtt.NewTopicsIndex()
	x.Subscribe("c1", packets.Subscription{Filter: "a/b", Qos: 0})
	x.Subscribe("c1", packets.Subscription{Filter: "a/+", Qos: 1, Identifier: 5})
	x.Subscribe("c2", packets.Subscription{Filter: "a/#", Qos: 1})
	x.Subscribe("c3", packets.Subscription{Filter: "$share/g/a/b", ShareName: []string{"g"}, Qos: 0})
	x.Subscribe("c4", packets.Subscription{Filter: "#", Qos: 0})
	x.Subscribe("c5", packets.Subscription{Filter: "other/x", Qos: 0})

	subs := x.Subscribers("a/b")
	var got []string
	for id := range subs.Subscriptions {
		got = append(got, id)
	}
	slices.Sort(got)
	if want := []string{"c1", "c2", "c4"}; !slices.Equal(got, want) {
		t.Fatalf("subscribers of a/b = %v, want %v", got, want)
	}
	c1 := subs.Subscriptions["c1"]
	if c1.Qos != 1 || c1.Identifiers["a/+"] != 5 {
		t.Errorf("c1 merged = qos %d identifiers %v, want qos 1 and a/+ -> 5", c1.Qos, c1.Identifiers)
	}
	if c2 := subs.Subscriptions["c2"]; c2.Qos != 1 || len(c2.Identifiers) != 0 {
		t.Errorf("c2 = qos %d identifiers %v, want qos 1 and none", c2.Qos, c2.Identifiers)
	}
	if len(subs.Shared) != 1 {
		t.Errorf("shared groups of a/b = %v, want one", subs.Shared)
	}
	subs.SelectShared()
	subs.MergeSharedSelected()
	if _, ok := subs.Subscriptions["c3"]; !ok {
		t.Error("the shared subscriber was not merged in")
	}

	// $ topics do not match top-level wildcards [MQTT-4.7.1-2].
	if subs := x.Subscribers("$SYS/x"); len(subs.Subscriptions) != 0 {
		t.Errorf("$SYS/x matched %v", subs.Subscriptions)
	}
	// Nothing matching: empty (nil) maps that the callers can still use.
	none := x.Subscribers("nothing/here")
	if len(none.Subscriptions)+len(none.Shared)+len(none.InlineSubscriptions) != 1 { // c4's '#'
		t.Errorf("nothing/here matched %+v, want c4 only", none)
	}
	x.Unsubscribe("#", "c4")
	none = x.Subscribers("nothing/here")
	none.SelectShared()
	none.MergeSharedSelected()
	if len(none.Subscriptions) != 0 {
		t.Errorf("after unsubscribing c4 nothing/here matched %v", none.Subscriptions)
	}
}

// On the wire: a subscriber with a subscription identifier gets it; one
// without gets none, even when the publisher (against [MQTT-3.3.4-6])
// put one in its PUBLISH.
func TestSubscriptionIdentifiersOnTheWire(t *testing.T) {
	_, connect := startMochi(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	withID, withMsgs := connect("with-id")
	sid := 7
	if _, err := withID.Subscribe(ctx, &paho.Subscribe{Properties: &paho.SubscribeProperties{SubscriptionIdentifier: &sid},
		Subscriptions: []paho.SubscribeOptions{{Topic: "t/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	plain, plainMsgs := connect("plain")
	if _, err := plain.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pub, _ := connect("pub")
	if _, err := pub.Publish(ctx, &paho.Publish{Topic: "t/x", QoS: 1, Payload: []byte("hi")}); err != nil {
		t.Fatal(err)
	}
	received := func(name string, msgs chan *paho.Publish, within time.Duration) (*paho.Publish, int) {
		select {
		case m := <-msgs:
			var got int
			if m.Properties != nil && m.Properties.SubscriptionIdentifier != nil {
				got = *m.Properties.SubscriptionIdentifier
			}
			return m, got
		case <-time.After(within):
			return nil, 0
		}
	}
	for _, c := range []struct {
		name string
		msgs chan *paho.Publish
		want int // 0: none
	}{{"with-id", withMsgs, 7}, {"plain", plainMsgs, 0}} {
		m, got := received(c.name, c.msgs, 5*time.Second)
		if m == nil {
			t.Fatalf("%s received nothing", c.name)
		}
		if got != c.want || string(m.Payload) != "hi" {
			t.Errorf("%s received %q with subscription identifier %d, want %d", c.name, m.Payload, got, c.want)
		}
	}

	// A PUBLISH carrying a subscription identifier breaks
	// [MQTT-3.3.4-6]: whatever mochi does with it, the identifier never
	// reaches a subscriber that did not ask for one.
	forger, _ := connect("forger")
	forged := 99
	fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
	defer fcancel()
	_, _ = forger.Publish(fctx, &paho.Publish{Topic: "t/y", QoS: 0, Payload: []byte("forged"),
		Properties: &paho.PublishProperties{SubscriptionIdentifier: &forged}})
	if m, got := received("plain", plainMsgs, time.Second); m != nil && got != 0 {
		t.Errorf("plain received the publisher's subscription identifier %d", got)
	}
}

// startMochi runs a bare mochi server (Warden's fork, no Warden hooks) on
// loopback and returns a function that connects MQTT 5 clients to it.
func startMochi(t *testing.T) (*mqtt.Server, func(id string, props ...*paho.ConnectProperties) (*paho.Client, chan *paho.Publish)) {
	t.Helper()
	s := startIdleServer(t, plainKind, nil)
	srv := s.srv

	connect := func(id string, props ...*paho.ConnectProperties) (*paho.Client, chan *paho.Publish) {
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		msgs := make(chan *paho.Publish, 10000)
		c := paho.NewClient(paho.ClientConfig{Conn: pahopackets.NewThreadSafeConn(conn),
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				msgs <- pr.Packet
				return true, nil
			}}})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cp := &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30}
		if len(props) > 0 {
			cp.Properties = props[0]
		}
		if _, err := c.Connect(ctx, cp); err != nil {
			t.Fatalf("%s: connect: %v", id, err)
		}
		t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}); conn.Close() })
		return c, msgs
	}
	return srv, connect
}

// TestWritePathUnderLoad guards the fifth patch (PATCHES.md): encoding and
// coalescing buffers come from a pool and go back after each write. Every
// message, small and beyond the pool's 64 KiB bound, arrives intact and in
// order while the publisher and the subscriber's queue run flat out (go
// test -race checks the buffers are not shared).
func TestWritePathUnderLoad(t *testing.T) {
	_, connect := startMochi(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, msgs := connect("sub")
	if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "load/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pub, _ := connect("pub")
	payload := func(i int) []byte {
		n := 16 + i%300
		if i%100 == 99 {
			n = 70 << 10 // beyond the pool's bound
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(i + j)
		}
		return b
	}
	const n = 2000
	for i := range n {
		if _, err := pub.Publish(ctx, &paho.Publish{Topic: "load/x", QoS: byte(i % 2), Payload: payload(i)}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	for i := range n {
		select {
		case m := <-msgs:
			if want := payload(i); string(m.Payload) != string(want) {
				t.Fatalf("message %d: %d bytes, want %d (corrupted or out of order)", i, len(m.Payload), len(want))
			}
		case <-ctx.Done():
			t.Fatalf("received %d of %d messages", i, n)
		}
	}
}

// TestSendQuotaDoesNotLeak guards the sixth patch (PATCHES.md): a QoS 1
// message parked for want of send quota (the client's Receive Maximum)
// stays in flight once it is sent, so its PUBACK gives the quota back.
// Upstream deleted it on sending: every parked message then leaked one
// unit of quota, and with a Receive Maximum of 2 delivery stopped for good
// after two of them.
func TestSendQuotaDoesNotLeak(t *testing.T) {
	srv, connect := startMochi(t)
	recvMax := uint16(2)
	_, msgs := connect("slow", &paho.ConnectProperties{ReceiveMaximum: &recvMax})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, ok := srv.Clients.Get("slow")
	if !ok {
		t.Fatal("client not registered")
	}
	if !srv.Topics.Subscribe("slow", packets.Subscription{Filter: "q/#", Qos: 1}) {
		t.Fatal("subscribe")
	}
	cl.State.Subscriptions.Add("q/#", packets.Subscription{Filter: "q/#", Qos: 1})
	const n = 200
	for i := range n {
		if err := srv.Publish("q/x", []byte{byte(i)}, false, 1); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		select {
		case <-msgs:
		case <-ctx.Done():
			t.Fatalf("delivered %d of %d QoS 1 messages with Receive Maximum 2, then stalled (send quota leaked)", i, n)
		}
	}
	if got := inflightAfterAcks(cl); got != 0 {
		t.Errorf("%d messages still in flight after every PUBACK", got)
	}
}

// TestParkedMessagesAreNotStranded: with a Receive Maximum of 1 nearly
// every message is parked (patch 6), and eight publishers park them
// concurrently with the PUBACKs that release them. Every one must arrive
// and none stay parked.
func TestParkedMessagesAreNotStranded(t *testing.T) {
	srv, connect := startMochi(t)
	recvMax := uint16(1)
	_, msgs := connect("slow", &paho.ConnectProperties{ReceiveMaximum: &recvMax})
	cl, ok := srv.Clients.Get("slow")
	if !ok {
		t.Fatal("client not registered")
	}
	srv.Topics.Subscribe("slow", packets.Subscription{Filter: "q/#", Qos: 1})
	cl.State.Subscriptions.Add("q/#", packets.Subscription{Filter: "q/#", Qos: 1})
	const publishers, each = 8, 50
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				_ = srv.Publish("q/x", []byte{byte(p), byte(i)}, false, 1)
			}
		}()
	}
	wg.Wait()
	timeout := time.After(10 * time.Second)
	var next [publishers]int
	for i := range publishers * each {
		select {
		case m := <-msgs:
			p, n := int(m.Payload[0]), int(m.Payload[1])
			if n != next[p] {
				t.Fatalf("publisher %d's message %d arrived when %d was due", p, n, next[p])
			}
			next[p]++
		case <-timeout:
			t.Fatalf("delivered %d of %d QoS 1 messages; the rest stayed parked (in flight: %d)", i, publishers*each, cl.State.Inflight.Len())
		}
	}
	if got := inflightAfterAcks(cl); got != 0 {
		t.Errorf("%d messages still in flight after every PUBACK", got)
	}
}

// TestQuickReconnectKeepsSession guards the seventh patch (PATCHES.md): a
// client that drops its connection and reconnects at once with the same
// client ID (a reconnect storm) must end up registered and subscribed.
// Upstream, the old connection's clean-up could run after the new one
// registered: it deleted the new client from the registry by ID and
// removed its subscriptions, so the device was connected but received
// nothing.
func TestQuickReconnectKeepsSession(t *testing.T) {
	srv, _ := startMochi(t)
	l, ok := srv.Listeners.Get("t")
	if !ok {
		t.Fatal("no listener")
	}
	addr := l.Address()
	dial := func(id string) (net.Conn, *paho.Client, chan *paho.Publish, error) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return nil, nil, nil, err
		}
		msgs := make(chan *paho.Publish, 16)
		c := paho.NewClient(paho.ClientConfig{Conn: pahopackets.NewThreadSafeConn(conn),
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				select {
				case msgs <- pr.Packet:
				default:
				}
				return true, nil
			}}})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30}); err != nil {
			conn.Close()
			return nil, nil, nil, err
		}
		if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "r/" + id, QoS: 0}}}); err != nil {
			conn.Close()
			return nil, nil, nil, err
		}
		return conn, c, msgs, nil
	}
	const workers, rounds = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := "dev-" + string(rune('a'+w))
			old, _, _, err := dial(id)
			if err != nil {
				errs <- err
				return
			}
			for r := range rounds {
				old.Close() // dropped, no DISCONNECT: the server cleans up while the device is back
				conn, _, msgs, err := dial(id)
				if err != nil {
					errs <- err
					return
				}
				old = conn
				payload := []byte{byte(w), byte(r)}
				deadline := time.After(2 * time.Second)
				got := false
				for !got {
					if err := srv.Publish("r/"+id, payload, false, 0); err != nil {
						errs <- err
						return
					}
					select {
					case m := <-msgs:
						got = string(m.Payload) == string(payload)
					case <-time.After(50 * time.Millisecond):
					case <-deadline:
						_, registered := srv.Clients.Get(id)
						errs <- fmt.Errorf("%s round %d: reconnected and subscribed, but no message arrives (registered: %v)", id, r, registered)
						return
					}
				}
			}
			old.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// BenchmarkSubscribers is the topic-index lookup every publish makes: a
// device uplink relayed to fleet/<id>/up/... with one reader on fleet/#,
// among 1,000 devices subscribed to their own subtrees.
func BenchmarkSubscribers(b *testing.B) {
	x := mqtt.NewTopicsIndex()
	for i := range 1000 {
		id := "dev-" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
		x.Subscribe(id, packets.Subscription{Filter: "private/" + id + "/#", Qos: 1})
	}
	x.Subscribe("reader", packets.Subscription{Filter: "fleet/#", Qos: 1})
	b.ReportAllocs()
	for b.Loop() {
		if s := x.Subscribers("fleet/dev-abc/up/telemetry"); len(s.Subscriptions) != 1 {
			b.Fatal("reader not found")
		}
	}
}

// allowAll admits every client and every topic (mochi's auth package
// needs a YAML module Warden does not build).
type allowAll struct{ mqtt.HookBase }

func (*allowAll) ID() string { return "allow-all" }
func (*allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (*allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (*allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

// TestPooledSubscriberSetsStartEmpty guards patch 24: the set a message's
// subscribers are gathered into is reused for the next message, emptied:
// a subscriber of one topic never receives the next message on another.
func TestPooledSubscriberSetsStartEmpty(t *testing.T) {
	s := startIdleServer(t, plainKind, nil)
	a, b := s.dial(t, "a"), s.dial(t, "b")
	subscribe(t, a, "a/#")
	subscribe(t, b, "b/#")
	const n = 50
	for i := range n {
		for _, topic := range []string{"a/x", "b/x"} {
			if err := s.srv.Publish(topic, []byte{byte(i)}, false, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, c := range []struct {
		conn  net.Conn
		topic string
	}{{a, "a/x"}, {b, "b/x"}} {
		for i := range n {
			if pk := readPacket(t, c.conn); pk.TopicName != c.topic || pk.Payload[0] != byte(i) {
				t.Fatalf("subscriber of %s got %s %x as message %d", c.topic, pk.TopicName, pk.Payload, i)
			}
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.conn.Read(make([]byte, 1)); err == nil {
			t.Fatalf("subscriber of %s got more than its %d messages", c.topic, n)
		}
	}
}
