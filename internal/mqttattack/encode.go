package mqttattack

import "encoding/binary"

// MQTT control packet types (the high nibble of the first byte).
const (
	TypeReserved    byte = 0
	TypeConnect     byte = 1
	TypeConnack     byte = 2
	TypePublish     byte = 3
	TypePuback      byte = 4
	TypeSubscribe   byte = 8
	TypeSuback      byte = 9
	TypePingreq     byte = 12
	TypePingresp    byte = 13
	TypeDisconnect  byte = 14
	TypeAuth        byte = 15
	subscribeHeader      = TypeSubscribe<<4 | 0x02 // SUBSCRIBE's fixed flags are 0010
)

// MQTT 5 property identifiers the generators use.
const (
	PropPayloadFormat  byte = 0x01
	PropMessageExpiry  byte = 0x02
	PropContentType    byte = 0x03
	PropTopicAlias     byte = 0x23
	PropUserProperty   byte = 0x26
	PropUnknown        byte = 0x7F // assigned to nothing in MQTT 5
	PropReceiveMaximum byte = 0x21
)

// MaxVarint is the largest value a variable byte integer can hold in its
// four bytes: the largest remaining length MQTT allows (256 MiB - 1).
const MaxVarint = 268_435_455

// AppendVarint appends v as an MQTT variable byte integer in its shortest
// form. Values above MaxVarint do not fit in the four bytes MQTT allows;
// they are encoded anyway, in five, which a broker must refuse (the
// generators that want a lying length ask for one on purpose).
func AppendVarint(b []byte, v uint32) []byte {
	for {
		d := byte(v % 128)
		v /= 128
		if v > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if v == 0 {
			return b
		}
	}
}

// appendString appends an MQTT UTF-8 string: a two-byte length, then the
// bytes as given (not checked: the malformed generators need invalid ones).
// Strings longer than 65535 bytes cannot be encoded; the length field wraps,
// which only a caller that wants a lie would ask for.
func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// Packet frames body as one control packet: the first byte (type and
// flags) and the remaining length that truly matches body.
func Packet(first byte, body []byte) []byte {
	b := make([]byte, 0, 5+len(body))
	b = append(b, first)
	b = AppendVarint(b, uint32(len(body)))
	return append(b, body...)
}

// Connect returns an MQTT 5 CONNECT with Clean Start, the client ID and the
// keep-alive in seconds, and nothing else: the broker authenticates the
// client by its TLS certificate.
func Connect(clientID string, keepAlive uint16) []byte {
	return Packet(TypeConnect<<4, connectBody(clientID, keepAlive))
}

func connectBody(clientID string, keepAlive uint16) []byte {
	body := appendString(nil, "MQTT")
	body = append(body, 5, 0x02) // protocol level 5; Clean Start
	body = binary.BigEndian.AppendUint16(body, keepAlive)
	body = append(body, 0) // no properties
	return appendString(body, clientID)
}

// publishBody is the variable header and payload of a PUBLISH: topic,
// packet ID when qos > 0, the property block props (already encoded, its
// length included) and the payload.
func publishBody(topic string, qos byte, packetID uint16, props, payload []byte) []byte {
	body := appendString(make([]byte, 0, 2+len(topic)+2+len(props)+len(payload)), topic)
	if qos > 0 {
		body = binary.BigEndian.AppendUint16(body, packetID)
	}
	body = append(body, props...)
	return append(body, payload...)
}

// noProps is an empty MQTT 5 property block.
var noProps = []byte{0}

// Publish returns a well-formed MQTT 5 PUBLISH. qos must be 0, 1 or 2 and
// packetID non-zero when qos > 0, or the packet is malformed (which
// PublishQoS3 and PublishPacketIDZero want).
func Publish(topic string, qos byte, packetID uint16, payload []byte) []byte {
	return Packet(TypePublish<<4|qos<<1, publishBody(topic, qos, packetID, noProps, payload))
}

// Subscribe returns an MQTT 5 SUBSCRIBE for the filters, each at qos.
func Subscribe(packetID uint16, qos byte, filters ...string) []byte {
	body := binary.BigEndian.AppendUint16(nil, packetID)
	body = append(body, 0) // no properties
	for _, f := range filters {
		body = appendString(body, f)
		body = append(body, qos)
	}
	return Packet(subscribeHeader, body)
}

// Pingreq returns a PINGREQ.
func Pingreq() []byte { return []byte{TypePingreq << 4, 0} }

// Disconnect returns a normal MQTT 5 DISCONNECT (reason 0, no properties).
func Disconnect() []byte { return []byte{TypeDisconnect << 4, 0} }

// props encodes a property block from (identifier, value) pairs whose
// values are already encoded.
func props(pairs ...[]byte) []byte {
	var inner []byte
	for _, p := range pairs {
		inner = append(inner, p...)
	}
	return append(AppendVarint(nil, uint32(len(inner))), inner...)
}

func propByte(id, v byte) []byte { return []byte{id, v} }

func propUint16(id byte, v uint16) []byte { return binary.BigEndian.AppendUint16([]byte{id}, v) }

func propUint32(id byte, v uint32) []byte { return binary.BigEndian.AppendUint32([]byte{id}, v) }

func propString(id byte, s string) []byte { return appendString([]byte{id}, s) }
