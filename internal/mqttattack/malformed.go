package mqttattack

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"
)

// The generators below each break one rule of MQTT 5 (or push one limit)
// and are otherwise correct, so that a refusal can be attributed.

// LengthLonger returns a QoS 0 PUBLISH to topic whose remaining length
// claims missing more bytes than follow: a broker reading it waits for
// bytes that never come (a slow-body slowloris), and must give up at its
// read deadline rather than hold the connection forever.
func LengthLonger(topic string, missing int) []byte {
	body := publishBody(topic, 0, 0, noProps, []byte("payload"))
	b := []byte{TypePublish << 4}
	b = AppendVarint(b, uint32(len(body)+max(missing, 1)))
	return append(b, body...)
}

// LengthShorter returns a QoS 0 PUBLISH to topic whose remaining length
// stops in the middle of the topic name: the broker's decoder finds the
// topic's length running past the packet's end. What follows the short
// packet (the rest of the topic) would be read as the next packet's header.
func LengthShorter(topic string) []byte {
	body := publishBody(topic, 0, 0, noProps, []byte("payload"))
	short := 2 + len(topic)/2 // the topic's length field and half of it
	b := []byte{TypePublish << 4}
	b = AppendVarint(b, uint32(short))
	return append(b, body...)
}

// ConnectLongerThanSent returns a CONNECT whose remaining length claims
// missing more bytes than follow: the broker waits for the rest of the
// CONNECT until its connect timeout.
func ConnectLongerThanSent(clientID string, missing int) []byte {
	body := connectBody(clientID, 30)
	b := AppendVarint([]byte{TypeConnect << 4}, uint32(len(body)+max(missing, 1)))
	return append(b, body...)
}

// OverlongLength returns a PINGREQ whose remaining length, zero, is
// written in five bytes (80 80 80 80 00). MQTT allows at most four; a
// decoder that keeps reading continuation bytes can be walked past the
// end of a 32-bit value, and reads whatever length the attacker wants
// from a header that should have been refused.
func OverlongLength() []byte {
	return []byte{TypePingreq << 4, 0x80, 0x80, 0x80, 0x80, 0x00}
}

// WrappedLength returns a PINGREQ whose six-byte remaining length decodes
// to 0 in a decoder that shifts past 32 bits without checking (the fifth
// and sixth bytes carry bits 28 to 41): a lie about the length that a
// sloppy decoder believes.
func WrappedLength() []byte {
	return []byte{TypePingreq << 4, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}
}

// EndlessLength returns a PUBLISH header followed by n continuation bytes
// (0x80) and no end: a remaining length that never finishes.
func EndlessLength(n int) []byte {
	return append([]byte{TypePublish << 4}, bytes.Repeat([]byte{0x80}, n)...)
}

// SizeBomb returns a PUBLISH header whose remaining length claims claimed
// bytes (at most MaxVarint), followed by sent bytes of body: the "packet
// size bomb" that makes a broker without a maximum packet size allocate
// the claimed amount before reading a byte of it.
func SizeBomb(topic string, claimed uint32, sent int) []byte {
	b := []byte{TypePublish << 4}
	b = AppendVarint(b, min(claimed, MaxVarint))
	b = appendString(b, topic)
	b = append(b, 0) // no properties
	return append(b, bytes.Repeat([]byte{'A'}, max(sent-len(topic)-3, 0))...)
}

// InvalidUTF8Topic returns a QoS 0 PUBLISH whose topic is prefix followed
// by an invalid UTF-8 sequence (a lone continuation byte, an over-long
// encoding and a UTF-16 surrogate): MQTT requires topic names to be
// well-formed UTF-8 [MQTT-1.5.4-1].
func InvalidUTF8Topic(prefix string) []byte {
	return Publish(prefix+"\x80\xC0\xAF\xED\xA0\x80", 0, 0, []byte("x"))
}

// NULTopic returns a QoS 0 PUBLISH whose topic is prefix, a NUL character
// and more: forbidden in MQTT strings [MQTT-1.5.4-2], and the classic way
// to make two layers disagree about where a name ends.
func NULTopic(prefix string) []byte {
	return Publish(prefix+"\x00/../hidden", 0, 0, []byte("x"))
}

// DeepTopic returns prefix followed by levels one-character levels
// ("prefix/a/a/a/..."), a topic of 2*levels+len(prefix) bytes. 10,000 levels
// fit a 64 KiB packet easily.
func DeepTopic(prefix string, levels int) string {
	var sb strings.Builder
	sb.Grow(len(prefix) + 2*levels)
	sb.WriteString(prefix)
	for range levels {
		sb.WriteString("/a")
	}
	return sb.String()
}

// DeepPublish returns a QoS 0 PUBLISH to DeepTopic(prefix, levels): valid
// MQTT, but each level costs a broker that splits topics work and memory.
func DeepPublish(prefix string, levels int) []byte {
	return Publish(DeepTopic(prefix, levels), 0, 0, []byte("deep"))
}

// DeepSubscribe returns a SUBSCRIBE to DeepTopic(prefix, levels) at QoS 0:
// a broker that stores subscriptions as a tree of levels may allocate a
// node per level.
func DeepSubscribe(packetID uint16, prefix string, levels int) []byte {
	return Subscribe(packetID, 0, DeepTopic(prefix, levels))
}

// ManySubscriptions returns one SUBSCRIBE with n filters
// "prefix/0", "prefix/1", ...: thousands of subscriptions in one packet.
func ManySubscriptions(packetID uint16, prefix string, n int) []byte {
	filters := make([]string, n)
	for i := range filters {
		filters[i] = prefix + "/" + itoa(i)
	}
	return Subscribe(packetID, 0, filters...)
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var d [20]byte
	n := len(d)
	for ; i > 0; i /= 10 {
		n--
		d[n] = byte('0' + i%10)
	}
	return string(d[n:])
}

// DuplicateProperties returns a QoS 0 PUBLISH carrying the Payload Format
// Indicator, the Message Expiry Interval and the Content Type twice each,
// which MQTT 5 calls a protocol error (section 2.2.2.2: only User Property
// and Subscription Identifier may repeat): a broker that keeps the first
// and a subscriber that keeps the last disagree about the message.
func DuplicateProperties(topic string) []byte {
	p := props(
		propByte(PropPayloadFormat, 1), propByte(PropPayloadFormat, 0),
		propUint32(PropMessageExpiry, 1), propUint32(PropMessageExpiry, 4_000_000_000),
		propString(PropContentType, "text/plain"), propString(PropContentType, "application/x-evil"),
	)
	return Packet(TypePublish<<4, publishBody(topic, 0, 0, p, []byte("dup")))
}

// UnknownProperty returns a QoS 0 PUBLISH with property 0x7F, which MQTT 5
// does not define: malformed.
func UnknownProperty(topic string) []byte {
	p := props([]byte{PropUnknown, 0xDE, 0xAD, 0xBE, 0xEF})
	return Packet(TypePublish<<4, publishBody(topic, 0, 0, p, []byte("unknown")))
}

// WrongPacketProperty returns a QoS 0 PUBLISH with Receive Maximum, a
// property only CONNECT and CONNACK may carry.
func WrongPacketProperty(topic string) []byte {
	p := props(propUint16(PropReceiveMaximum, 1))
	return Packet(TypePublish<<4, publishBody(topic, 0, 0, p, []byte("wrong")))
}

// PropertyLengthLies returns a QoS 0 PUBLISH whose property block claims
// 200 bytes of properties while the packet holds 3.
func PropertyLengthLies(topic string) []byte {
	p := append(AppendVarint(nil, 100), propByte(PropPayloadFormat, 1)...)
	return Packet(TypePublish<<4, publishBody(topic, 0, 0, p, nil))
}

// TopicAliasZero returns a PUBLISH with Topic Alias 0, which MQTT 5 forbids
// [MQTT-3.3.2-8].
func TopicAliasZero(topic string) []byte {
	p := props(propUint16(PropTopicAlias, 0))
	return Packet(TypePublish<<4, publishBody(topic, 0, 0, p, []byte("alias")))
}

// ReservedType returns a packet of type t (0 is reserved in every MQTT
// version) with flags 0 and an empty body.
func ReservedType(t byte) []byte { return []byte{t << 4, 0} }

// Auth returns an MQTT 5 AUTH packet (type 15, reason 0x19
// re-authenticate, authentication method "SCRAM-SHA-1"): only valid when
// the CONNECT named an authentication method, which a client that
// authenticates with its certificate never does. In MQTT 3.1.1 type 15 is
// reserved.
func Auth() []byte {
	body := []byte{0x19}
	body = append(body, props(propString(0x15, "SCRAM-SHA-1"))...)
	return Packet(TypeAuth<<4, body)
}

// PublishQoS3 returns a PUBLISH with both QoS bits set: QoS 3 does not
// exist [MQTT-3.3.1-4].
func PublishQoS3(topic string) []byte {
	return Packet(TypePublish<<4|3<<1, publishBody(topic, 1, 7, noProps, []byte("qos3")))
}

// PublishPacketIDZero returns a QoS 1 PUBLISH with packet identifier 0,
// which MQTT forbids [MQTT-2.2.1-3]: a broker that keys its in-flight
// store by ID may mix it up with "no ID".
func PublishPacketIDZero(topic string) []byte {
	return Publish(topic, 1, 0, []byte("id0"))
}

// PublishDupQoS0 returns a QoS 0 PUBLISH with the DUP flag set
// [MQTT-3.3.1-2].
func PublishDupQoS0(topic string) []byte {
	return Packet(TypePublish<<4|0x08, publishBody(topic, 0, 0, noProps, []byte("dup")))
}

// PublishWildcard returns a PUBLISH whose topic name contains the
// wildcard '#', allowed only in filters [MQTT-3.3.2-2].
func PublishWildcard(prefix string) []byte {
	return Publish(prefix+"/#", 0, 0, []byte("wild"))
}

// SubscribeBadFlags returns a SUBSCRIBE whose fixed-header flags are 0000
// instead of the required 0010 [MQTT-3.8.1-1].
func SubscribeBadFlags(packetID uint16, filter string) []byte {
	p := Subscribe(packetID, 0, filter)
	p[0] = TypeSubscribe << 4
	return p
}

// SubscribeNoOptions returns a SUBSCRIBE whose (only) topic filter ends
// the packet without the subscription options byte that must follow it
// [MQTT-3.8.3-1]: a decoder that reads the byte without checking the
// length reads past the end of the packet.
func SubscribeNoOptions(packetID uint16, filter string) []byte {
	body := binary.BigEndian.AppendUint16(nil, packetID)
	body = append(body, 0) // no properties
	body = appendString(body, filter)
	return Packet(subscribeHeader, body)
}

// SubscribeNoFilters returns a SUBSCRIBE with no topic filter at all
// [MQTT-3.8.3-2].
func SubscribeNoFilters(packetID uint16) []byte { return Subscribe(packetID, 0) }

// SecondConnect returns a CONNECT, which a connected client must never send
// again [MQTT-3.1.0-2].
func SecondConnect(clientID string) []byte { return Connect(clientID, 30) }

// ConnectBadProtocol returns a CONNECT naming the protocol "MQTX".
func ConnectBadProtocol(clientID string) []byte {
	p := Connect(clientID, 30)
	i := bytes.Index(p, []byte("MQTT"))
	p[i+3] = 'X'
	return p
}

// ConnectReservedFlag returns a CONNECT with the reserved flag bit set
// [MQTT-3.1.2-3].
func ConnectReservedFlag(clientID string) []byte {
	p := Connect(clientID, 30)
	i := bytes.Index(p, []byte("MQTT"))
	p[i+5] |= 0x01 // the flags byte follows the name and the level
	return p
}

// HTTPRequest returns a plain HTTP request, as a confused or probing
// client sends one to any open port.
func HTTPRequest() []byte {
	return []byte("GET / HTTP/1.1\r\nHost: warden\r\nUser-Agent: mqttattack\r\n\r\n")
}

// Garbage returns n random bytes from rng.
func Garbage(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// RandomPacket returns a packet with a random first byte (any type, any
// flags) and a random body of up to maxBody bytes, framed with a truthful
// remaining length: it gets past the framing to the packet decoders.
func RandomPacket(rng *rand.Rand, maxBody int) []byte {
	return Packet(byte(rng.Uint32()), Garbage(rng, rng.IntN(max(maxBody, 0)+1)))
}

// ClientHello returns the first flight of a TLS handshake as cfg would
// send it (a complete ClientHello record), without a network: the peer of
// an attacker who starts TLS and then stalls, holding the server in the
// middle of its handshake.
func ClientHello(cfg *tls.Config) ([]byte, error) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := tls.Client(a, cfg)
	go func() { _ = c.Handshake() }()
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64<<10)
	n, err := b.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("mqttattack: capture the ClientHello crypto/tls writes (check the tls.Config): %w", err)
	}
	// net.Pipe hands over one Write at a time: the record header says how
	// long the ClientHello record is, and it may arrive in more reads.
	for n < 5 || n < 5+(int(buf[3])<<8|int(buf[4])) {
		m, err := b.Read(buf[n:])
		if err != nil {
			return nil, fmt.Errorf("mqttattack: capture the ClientHello crypto/tls writes (check the tls.Config): %w", err)
		}
		n += m
	}
	return buf[:n], nil
}
