package sim

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/internal/identity"
)

func TestReceive(t *testing.T) {
	for _, tc := range []struct {
		name     string
		seqs     []uint64
		received uint64
		dups     uint64
		next     uint64
		missing  []uint64
	}{
		{"in order", []uint64{0, 1, 2, 3}, 4, 0, 4, nil},
		{"repeat", []uint64{0, 1, 1, 0, 2}, 3, 2, 3, nil},
		{"gap", []uint64{0, 3}, 2, 0, 4, []uint64{1, 2}},
		{"gap filled late", []uint64{0, 3, 2, 1, 2}, 4, 1, 4, nil},
		{"first lost", []uint64{1, 2}, 2, 0, 3, []uint64{0}},
	} {
		var r rxState
		for _, s := range tc.seqs {
			r.receive(s)
		}
		if r.received != tc.received || r.dups != tc.dups || r.next != tc.next || len(r.missing) != len(tc.missing) {
			t.Errorf("%s: received %d dups %d next %d missing %v", tc.name, r.received, r.dups, r.next, r.missing)
		}
		for _, m := range tc.missing {
			if _, ok := r.missing[m]; !ok {
				t.Errorf("%s: %d is not missing", tc.name, m)
			}
		}
	}
	// A gap too large to remember counts as lost at once.
	var r rxState
	r.receive(0)
	r.receive(maxTrackedGap + 10)
	if r.overflow != maxTrackedGap+9 || len(r.missing) != 0 || r.lost(Ledger{Next: maxTrackedGap + 11}) != maxTrackedGap+9 {
		t.Errorf("overflow %d, missing %d", r.overflow, len(r.missing))
	}
}

func TestLost(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  []uint64
		l    Ledger
		lost uint64
	}{
		{"all arrived", []uint64{0, 1, 2}, Ledger{Next: 3}, 0},
		{"tail lost", []uint64{0, 1}, Ledger{Next: 4}, 2},
		{"tail failed", []uint64{0, 1}, Ledger{Next: 4, Failed: []uint64{2, 3}}, 0},
		{"hole lost", []uint64{0, 2}, Ledger{Next: 3}, 1},
		{"hole failed", []uint64{0, 2}, Ledger{Next: 3, Failed: []uint64{1}}, 0},
		{"failed but arrived", []uint64{0, 1, 2}, Ledger{Next: 3, Failed: []uint64{1}}, 0},
		{"nothing arrived", nil, Ledger{Next: 5, Failed: []uint64{4}}, 4},
		{"nothing sent", nil, Ledger{}, 0},
	} {
		var r rxState
		for _, s := range tc.got {
			r.receive(s)
		}
		if got := r.lost(tc.l); got != tc.lost {
			t.Errorf("%s: lost %d, want %d", tc.name, got, tc.lost)
		}
	}
}

func TestDeviceID(t *testing.T) {
	for _, tc := range []struct {
		topic string
		level int
		id    string
		ok    bool
	}{
		{"fleet/dev1/up/sim", 1, "dev1", true},
		{"private/dev1/up/sim", 1, "dev1", true},
		{"dev1/sim", 0, "dev1", true},
		{"fleet//up/sim", 1, "", false},
		{"fleet", 1, "", false},
		{"a/b/c", 2, "c", true},
		{"a/b/c", 3, "", false},
	} {
		id, ok := deviceID(tc.topic, tc.level)
		if id != tc.id || ok != tc.ok {
			t.Errorf("deviceID(%q, %d) = %q, %v", tc.topic, tc.level, id, ok)
		}
	}
}

// The consumer's message path counts telemetry per device, and anything
// else as unexpected; Reconcile counts devices outside the ledgers as
// unexpected too.
func TestConsumerMessages(t *testing.T) {
	var kinds []ErrorKind
	c := &Consumer{o: ConsumerOptions{IDLevel: 1, OnError: func(k ErrorKind, _ error) { kinds = append(kinds, k) }}, devices: map[string]*rxState{}}
	sent := time.Now().Add(-5 * time.Millisecond)
	msg := func(topic string, payload []byte) {
		_, _ = c.onPublish(paho.PublishReceived{Packet: &paho.Publish{Topic: topic, Payload: payload}})
	}
	msg("fleet/a/up/sim", AppendPayload(nil, 32, 0, sent))
	msg("fleet/a/up/sim", AppendPayload(nil, 32, 1, sent))
	msg("fleet/a/up/sim", AppendPayload(nil, 32, 1, sent))
	msg("fleet/b/up/sim", AppendPayload(nil, 32, 1, sent))
	msg("fleet/stranger/up/sim", AppendPayload(nil, 32, 0, sent))
	msg("fleet/a/up/sim", []byte("{}"))
	msg("fleet", AppendPayload(nil, 32, 0, sent))
	st := c.Stats()
	if st != (ConsumerStats{Received: 4, Duplicates: 1, Unexpected: 2, Devices: 3}) {
		t.Errorf("stats %+v", st)
	}
	if len(kinds) != 2 || kinds[0] != ErrUnexpected {
		t.Errorf("errors reported: %v", kinds)
	}
	if l := c.Latency(); l.Count() != 4 || l.Min() < 5*time.Millisecond {
		t.Errorf("latency: %d values from %v", l.Count(), l.Min())
	}
	d := c.Reconcile([]Ledger{{ID: "a", Next: 3}, {ID: "b", Next: 2}, {ID: "quiet", Next: 1, Failed: []uint64{0}}})
	if d != (Delivery{Received: 3, Duplicates: 1, Lost: 2, Unexpected: 3}) {
		t.Errorf("delivery %+v", d)
	}
}

func TestStartConsumerRefuses(t *testing.T) {
	ca := newTestCA(t)
	dev := ca.principal(t, identity.KindDevice, "d1")
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		o    ConsumerOptions
		want string
	}{
		{"scheme", ConsumerOptions{Server: "wss://127.0.0.1:1"}, "scheme must be mqtts or mqtt"},
		{"no certificate", ConsumerOptions{Server: "mqtts://127.0.0.1:1"}, "service certificate"},
		{"a device's certificate", ConsumerOptions{Server: "mqtts://127.0.0.1:1", Certificate: dev, RootCAs: ca.pool}, "names no service"},
		{"no client ID", ConsumerOptions{Server: "mqtt://127.0.0.1:1"}, "client ID"},
		{"filter", ConsumerOptions{Server: "mqtt://127.0.0.1:1", ClientID: "x", Filter: "a/#/b"}, "not a valid MQTT topic filter"},
		{"qos", ConsumerOptions{Server: "mqtt://127.0.0.1:1", ClientID: "x", QoS: 3}, "QoS 3"},
		{"source", ConsumerOptions{Server: "mqtt://127.0.0.1:1", ClientID: "x", LocalAddr: "here"}, "not an IP address"},
	} {
		if _, err := StartConsumer(ctx, tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// Nothing listening: the error says what the last attempt met.
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	svc := ca.principal(t, identity.KindService, "reader")
	_, err := StartConsumer(short, ConsumerOptions{Server: "mqtts://127.0.0.1:1", Certificate: svc, RootCAs: ca.pool})
	if err == nil || !strings.Contains(err.Error(), "did not connect") || !strings.Contains(err.Error(), "refused") {
		t.Errorf("no broker: %v", err)
	}
}

// FuzzReceive: whatever order and repetition sequence numbers arrive in,
// each distinct number counts once, repeats count as duplicates, and the
// numbers never seen below the highest are exactly the lost ones.
func FuzzReceive(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0, 2})
	f.Add([]byte{0, 5, 0, 1, 0, 1, 0, 3})
	f.Add([]byte{0xff, 0xff, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var r rxState
		seen := map[uint64]bool{}
		var dups, top uint64
		n := 0
		for ; len(b) >= 2; b = b[2:] {
			// Ten bits: gaps of up to 1023 keep each run fast; the
			// overflow beyond maxTrackedGap has a test of its own.
			s := uint64(binary.BigEndian.Uint16(b) & 0x3ff)
			n++
			isNew := r.receive(s)
			if isNew == seen[s] {
				t.Fatalf("seq %d: new %v, seen before %v", s, isNew, seen[s])
			}
			if seen[s] {
				dups++
			}
			seen[s] = true
			top = max(top, s+1)
		}
		if r.received != uint64(len(seen)) || r.dups != dups || r.received+r.dups != uint64(n) {
			t.Fatalf("received %d dups %d of %d, want %d and %d", r.received, r.dups, n, len(seen), dups)
		}
		var lost uint64
		for s := range top {
			if !seen[s] {
				lost++
			}
		}
		if got := r.lost(Ledger{Next: top}); got != lost {
			t.Fatalf("lost %d, want %d", got, lost)
		}
		for s := range r.missing {
			if seen[s] || s >= r.next {
				t.Fatalf("%d is missing but seen %v or beyond next %d", s, seen[s], r.next)
			}
		}
	})
}
