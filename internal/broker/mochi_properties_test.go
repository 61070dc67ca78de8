package broker

import (
	"bytes"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// specProperties is MQTT 5.0's table 2-4 (section 2.2.2.2): which packets
// may carry each property, written from the specification, not from
// mochi's table.
var specProperties = map[byte][]byte{
	0x01: {packets.Publish, packets.WillProperties},
	0x02: {packets.Publish, packets.WillProperties},
	0x03: {packets.Publish, packets.WillProperties},
	0x08: {packets.Publish, packets.WillProperties},
	0x09: {packets.Publish, packets.WillProperties},
	0x0B: {packets.Publish, packets.Subscribe},
	0x11: {packets.Connect, packets.Connack, packets.Disconnect},
	0x12: {packets.Connack},
	0x13: {packets.Connack},
	0x15: {packets.Connect, packets.Connack, packets.Auth},
	0x16: {packets.Connect, packets.Connack, packets.Auth},
	0x17: {packets.Connect},
	0x18: {packets.WillProperties},
	0x19: {packets.Connect},
	0x1A: {packets.Connack},
	0x1C: {packets.Connack, packets.Disconnect},
	0x1F: {packets.Connack, packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp, packets.Suback, packets.Unsuback, packets.Disconnect, packets.Auth},
	0x21: {packets.Connect, packets.Connack},
	0x22: {packets.Connect, packets.Connack},
	0x23: {packets.Publish},
	0x24: {packets.Connack},
	0x25: {packets.Connack},
	0x26: {packets.Connect, packets.Connack, packets.Publish, packets.WillProperties, packets.Puback, packets.Pubrec, packets.Pubrel,
		packets.Pubcomp, packets.Subscribe, packets.Suback, packets.Unsubscribe, packets.Unsuback, packets.Disconnect, packets.Auth},
	0x27: {packets.Connect, packets.Connack},
	0x28: {packets.Connack},
	0x29: {packets.Connack},
	0x2A: {packets.Connack},
}

// TestPropertyValidMatchesSpec guards mochi patch 14 (PATCHES.md): the
// bit-set table that replaced the nested maps answers exactly as MQTT 5's
// table does, for every property and packet type byte.
func TestPropertyValidMatchesSpec(t *testing.T) {
	for k := range 256 {
		allowed := map[byte]bool{}
		for _, pkt := range specProperties[byte(k)] {
			allowed[pkt] = true
		}
		for pkt := range 256 {
			if got := packets.PropertyValid(byte(k), byte(pkt)); got != allowed[byte(pkt)] {
				t.Errorf("property 0x%02x in packet type %d: valid %v, the specification says %v", k, pkt, got, allowed[byte(pkt)])
			}
		}
	}
}

// BenchmarkPublishEncode is the encoding of a relayed QoS 1 PUBLISH, with
// its properties (patch 14's hot path).
func BenchmarkPublishEncode(b *testing.B) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 5, PacketID: 7,
		TopicName: "fleet/dev-00001/up/telemetry", Payload: bytes.Repeat([]byte{1}, 64),
		Properties: packets.Properties{User: []packets.UserProperty{{Key: "warden-device", Val: "dev-00001"}}}}
	var buf bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		if err := pk.PublishEncode(&buf); err != nil {
			b.Fatal(err)
		}
	}
}
