package wardentest

import (
	"bufio"
	"bytes"
	"testing"
)

func TestSplitMQTTPackets(t *testing.T) {
	pub := frame(0x32, appendString(nil, "private/a/up/t"), 0x00, 0x01, 'h', 'i')
	big := frame(0x30, append(appendString(nil, "t"), bytes.Repeat([]byte{'x'}, 300)...))
	tests := []struct {
		name   string
		stream []byte
		want   int
	}{
		{"empty", nil, 0},
		{"one packet", pub, 1},
		{"two packets and a partial one", append(append(append([]byte(nil), pub...), big...), pub[:5]...), 2},
		{"a two-byte remaining length", big, 1},
		{"a header alone", []byte{0x30}, 0},
		{"a remaining length longer than four bytes", []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, 0},
	}
	for _, tt := range tests {
		got := SplitMQTTPackets(tt.stream)
		if len(got) != tt.want {
			t.Errorf("%s: %d packets, want %d", tt.name, len(got), tt.want)
		}
	}
	if topic, ok := PublishTopic(pub); !ok || topic != "private/a/up/t" {
		t.Errorf("PublishTopic = %q, %v", topic, ok)
	}
	if _, ok := PublishTopic([]byte{0x82, 0x01, 0x00}); ok {
		t.Error("a SUBSCRIBE was taken for a PUBLISH")
	}
	typ, body, err := ReadMQTTPacket(bufio.NewReader(bytes.NewReader(big)))
	if err != nil || typ != 0x30 || len(body) != len(big)-3 {
		t.Errorf("ReadMQTTPacket: type 0x%02x, %d bytes, %v", typ, len(body), err)
	}
}

// FuzzSplitMQTTPackets feeds the capture parsers arbitrary streams: they
// must not panic, SplitMQTTPackets must return whole packets that are a
// prefix of the stream, and ReadMQTTPacket must agree with it.
func FuzzSplitMQTTPackets(f *testing.F) {
	f.Add(frame(0x32, appendString(nil, "private/a/up/t"), 0x00, 0x01, 'h', 'i'))
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{0x30, 0x02, 0xff})
	f.Fuzz(func(t *testing.T, stream []byte) {
		pkts := SplitMQTTPackets(stream)
		var joined []byte
		for _, p := range pkts {
			joined = append(joined, p...)
			_, _ = PublishTopic(p)
		}
		if !bytes.HasPrefix(stream, joined) {
			t.Fatalf("packets are not a prefix of the stream")
		}
		r := bufio.NewReader(bytes.NewReader(stream))
		for i, p := range pkts {
			typ, body, err := ReadMQTTPacket(r)
			if err != nil || typ != p[0] || !bytes.HasSuffix(p, body) {
				t.Fatalf("packet %d: ReadMQTTPacket disagrees with SplitMQTTPackets: %v", i, err)
			}
		}
	})
}
