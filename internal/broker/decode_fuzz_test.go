package broker

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warden-iot/warden/internal/mqttattack"
)

// decodeLikeMochi runs bytes through what the broker does with a client's
// packets (of protocol version 4 or 5) before acting on them (third_party/mochi Client.ReadFixedHeader and
// ReadPacket, then the server's validation), without a connection.
func decodeLikeMochi(b []byte, maxPacket int, version byte) {
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		first, _ := r.ReadByte()
		var fh packets.FixedHeader
		if fh.Decode(first) != nil {
			return
		}
		n, _, err := packets.DecodeLength(r)
		if err != nil || n+1 > maxPacket || n > r.Len() {
			return
		}
		body := make([]byte, n)
		_, _ = r.Read(body)
		pk := packets.Packet{FixedHeader: fh, ProtocolVersion: version}
		pk.FixedHeader.Remaining = n
		switch fh.Type {
		case packets.Connect:
			if pk.ConnectDecode(body) == nil {
				pk.ConnectValidate()
			}
		case packets.Publish:
			if pk.PublishDecode(body) == nil {
				pk.PublishValidate(64)
			}
		case packets.Subscribe:
			if pk.SubscribeDecode(body) == nil {
				pk.SubscribeValidate()
			}
		case packets.Unsubscribe:
			if pk.UnsubscribeDecode(body) == nil {
				pk.UnsubscribeValidate()
			}
		case packets.Puback:
			_ = pk.PubackDecode(body)
		case packets.Pubrec:
			_ = pk.PubrecDecode(body)
		case packets.Pubrel:
			_ = pk.PubrelDecode(body)
		case packets.Pubcomp:
			_ = pk.PubcompDecode(body)
		case packets.Disconnect:
			_ = pk.DisconnectDecode(body)
		case packets.Auth:
			if pk.AuthDecode(body) == nil {
				pk.AuthValidate()
			}
		}
	}
}

// FuzzMochiDecode feeds the broker's packet decoders (mochi's, which
// parse every byte a client sends) arbitrary input: they must not panic,
// and a remaining length must never take more than four bytes or exceed
// MQTT's maximum (PATCHES.md, 8). The seeds are the attacks of
// internal/mqttattack.
func FuzzMochiDecode(f *testing.F) {
	target := mqttattack.Target{ClientID: "pump7", Topic: "private/pump7/up/t", FilterPrefix: "private/pump7/down"}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, a := range mqttattack.Catalog() {
		if b := a.Gen(target, rng); len(b) > 0 && len(b) < 8<<10 {
			f.Add(b)
		}
	}
	f.Add(mqttattack.Connect("pump7", 30))
	f.Add(mqttattack.Subscribe(1, 1, "a/+/#", "$share/g/b"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1 {
			r := bytes.NewReader(b[1:])
			n, bu, err := packets.DecodeLength(r)
			if err == nil && (bu > 4 || n < 0 || n > mqttattack.MaxVarint) {
				t.Fatalf("DecodeLength(% x) = %d in %d bytes", b[1:min(len(b), 8)], n, bu)
			}
		}
		decodeLikeMochi(b, 64<<10, 5) // MQTT 5
		decodeLikeMochi(b, 64<<10, 4) // MQTT 3.1.1 (no properties)
	})
}
