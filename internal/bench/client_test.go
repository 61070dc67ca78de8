package bench

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/eclipse/paho.golang/packets"
)

// encode writes packets with paho's encoder, the one brokers' packets are
// checked against in these tests.
func encode(t testing.TB, ps ...packets.Packet) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, p := range ps {
		if _, err := p.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// relayedPublish is a PUBLISH as Warden's relay delivers an opened
// envelope: five user properties, then the payload.
func relayedPublish(qos byte, id uint16, payload []byte) *packets.Publish {
	return &packets.Publish{Topic: "fleet/0a1b2c3d/up/bench1", QoS: qos, PacketID: id, Payload: payload, Properties: &packets.Properties{
		User: []packets.User{{Key: "warden-device", Value: "0a1b2c3d"}, {Key: "warden-received", Value: "2026-11-21T18:00:00.123456789Z"},
			{Key: "warden-seq", Value: "1234"}, {Key: "warden-suite", Value: "ccm-8"}, {Key: "warden-epoch", Value: "0"}},
	}}
}

// TestReadPacket reads a stream of the packets a device and a consumer
// receive, as paho encodes them, and refuses malformed ones.
func TestReadPacket(t *testing.T) {
	big := bytes.Repeat([]byte{0xa5}, 300) // a remaining length of two bytes
	stream := encode(t,
		&packets.Connack{Properties: &packets.Properties{}},
		relayedPublish(0, 0, []byte("sixteen bytes!!!")),
		relayedPublish(1, 7, big),
		&packets.Publish{Topic: "a/b", QoS: 0, Retain: true, Payload: nil, Properties: &packets.Properties{}},
		&packets.Puback{PacketID: 9, ReasonCode: 0x87, Properties: &packets.Properties{}},
		&packets.Suback{PacketID: 3, Reasons: []byte{1}, Properties: &packets.Properties{}},
		&packets.Disconnect{ReasonCode: 0x8b, Properties: &packets.Properties{}},
	)
	r := bufio.NewReaderSize(bytes.NewReader(stream), 16) // packets cross buffer refills
	want := []func(*packets.ControlPacket) bool{
		func(cp *packets.ControlPacket) bool { _, ok := cp.Content.(*packets.Connack); return ok },
		func(cp *packets.ControlPacket) bool {
			p, ok := cp.Content.(*packets.Publish)
			return ok && p.Topic == "fleet/0a1b2c3d/up/bench1" && p.QoS == 0 && p.PacketID == 0 && string(p.Payload) == "sixteen bytes!!!"
		},
		func(cp *packets.ControlPacket) bool {
			p, ok := cp.Content.(*packets.Publish)
			return ok && p.QoS == 1 && p.PacketID == 7 && bytes.Equal(p.Payload, big) && !p.Retain
		},
		func(cp *packets.ControlPacket) bool {
			p, ok := cp.Content.(*packets.Publish)
			return ok && p.Topic == "a/b" && p.Retain && len(p.Payload) == 0
		},
		func(cp *packets.ControlPacket) bool {
			p, ok := cp.Content.(*packets.Puback)
			return ok && p.PacketID == 9 && p.ReasonCode == 0x87
		},
		func(cp *packets.ControlPacket) bool {
			p, ok := cp.Content.(*packets.Suback)
			return ok && p.PacketID == 3 && bytes.Equal(p.Reasons, []byte{1})
		},
		func(cp *packets.ControlPacket) bool {
			p, ok := cp.Content.(*packets.Disconnect)
			return ok && p.ReasonCode == 0x8b
		},
	}
	for i, check := range want {
		cp, err := readPacket(r)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if !check(cp) {
			t.Fatalf("packet %d: %s %+v", i, cp.PacketType(), cp.Content)
		}
	}
	if _, err := readPacket(r); err != io.EOF {
		t.Fatalf("after the last packet: %v, want io.EOF", err)
	}

	pub := encode(t, relayedPublish(1, 7, []byte("x")))
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"truncated body", pub[:len(pub)-1], io.ErrUnexpectedEOF},
		{"truncated length", []byte{0x30, 0x80}, io.ErrUnexpectedEOF},
		{"length of five bytes", []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, errMalformed},
		{"larger than accepted", []byte{0x30, 0xff, 0xff, 0xff, 0x7f}, errMalformed},
		{"QoS 3", []byte{0x36, 0x05, 0x00, 0x01, 'a', 0x00, 0x01}, errMalformed},
		{"topic past the end", []byte{0x30, 0x03, 0x00, 0x05, 'a'}, errMalformed},
		{"no packet ID", []byte{0x32, 0x03, 0x00, 0x01, 'a'}, errMalformed},
		{"packet ID 0", []byte{0x32, 0x06, 0x00, 0x01, 'a', 0x00, 0x00, 0x00}, errMalformed},
		{"no properties length", []byte{0x30, 0x03, 0x00, 0x01, 'a'}, errMalformed},
		{"properties past the end", []byte{0x30, 0x05, 0x00, 0x01, 'a', 0x09, 0x01}, errMalformed},
		{"unknown packet type", []byte{0x00, 0x00}, errMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp, err := readPacket(bufio.NewReader(bytes.NewReader(tc.in)))
			if !errors.Is(err, tc.want) {
				t.Fatalf("readPacket = %v, %v; want %v", cp, err, tc.want)
			}
		})
	}
}
