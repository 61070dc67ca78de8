package mqttattack

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	paho "github.com/eclipse/paho.golang/packets"
	mochi "github.com/mochi-mqtt/server/v2/packets"
)

// Two parsers that are not this package's check what it writes: paho's
// (a client's view) for the packets that claim to be valid, and mochi's
// (Warden's broker) for the ones that claim to break a rule.

// header splits a packet into its first byte, the remaining length it
// claims (decoded without a limit on its bytes, in 64 bits, so that a lie
// shows) and the bytes after the length.
func header(t *testing.T, b []byte) (first byte, claimed uint64, lenBytes int, rest []byte) {
	t.Helper()
	if len(b) < 2 {
		t.Fatalf("packet of %d bytes", len(b))
	}
	var shift uint
	for i := 1; i < len(b); i++ {
		claimed |= uint64(b[i]&0x7F) << shift
		shift += 7
		if b[i]&0x80 == 0 {
			return b[0], claimed, i, b[i+1:]
		}
	}
	return b[0], claimed, len(b) - 1, nil // never ends
}

func readPaho(t *testing.T, b []byte) *paho.ControlPacket {
	t.Helper()
	r := bytes.NewReader(b)
	cp, err := paho.ReadPacket(r)
	if err != nil {
		t.Fatalf("paho cannot read % x...: %v", b[:min(len(b), 16)], err)
	}
	if r.Len() != 0 {
		t.Fatalf("paho left %d bytes unread: the remaining length is wrong", r.Len())
	}
	return cp
}

func TestAppendVarintAgreesWithMochi(t *testing.T) {
	for _, v := range []uint32{0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MaxVarint} {
		b := AppendVarint(nil, v)
		n, bu, err := mochi.DecodeLength(bytes.NewReader(b))
		if err != nil || uint32(n) != v || bu != len(b) {
			t.Errorf("AppendVarint(%d) = % x: mochi reads %d in %d bytes, %v", v, b, n, bu, err)
		}
		if want := (bitsLen(v) + 6) / 7; len(b) != max(want, 1) {
			t.Errorf("AppendVarint(%d) took %d bytes, the shortest form has %d", v, len(b), max(want, 1))
		}
	}
}

func bitsLen(v uint32) int {
	n := 0
	for ; v > 0; v >>= 1 {
		n++
	}
	return n
}

func TestValidPacketsAreValid(t *testing.T) {
	c := readPaho(t, Connect("pump7", 17)).Content.(*paho.Connect)
	if c.ClientID != "pump7" || c.KeepAlive != 17 || !c.CleanStart || c.ProtocolVersion != 5 || c.ProtocolName != "MQTT" {
		t.Errorf("Connect decodes as %+v", c)
	}
	for _, qos := range []byte{0, 1, 2} {
		p := readPaho(t, Publish("private/pump7/up/t", qos, 9, []byte("21.5"))).Content.(*paho.Publish)
		wantID := uint16(9)
		if qos == 0 {
			wantID = 0
		}
		if p.Topic != "private/pump7/up/t" || p.QoS != qos || p.PacketID != wantID || string(p.Payload) != "21.5" {
			t.Errorf("Publish at QoS %d decodes as %+v", qos, p)
		}
	}
	s := readPaho(t, Subscribe(3, 1, "a/#", "b/+")).Content.(*paho.Subscribe)
	if s.PacketID != 3 || len(s.Subscriptions) != 2 || s.Subscriptions[0].Topic != "a/#" || s.Subscriptions[1].QoS != 1 {
		t.Errorf("Subscribe decodes as %+v", s)
	}
	if cp := readPaho(t, Pingreq()); cp.Type != paho.PINGREQ {
		t.Errorf("Pingreq is %s", cp.PacketType())
	}
	// paho cannot read the two-byte DISCONNECT (remaining length 0 means
	// reason 0 in MQTT 5, section 3.14.2.1); mochi can.
	if first, claimed, _, rest := header(t, Disconnect()); first != 0xE0 || claimed != 0 || len(rest) != 0 {
		t.Errorf("Disconnect = % x", Disconnect())
	}
	m := readPaho(t, ManySubscriptions(4, "private/x/down", 3000)).Content.(*paho.Subscribe)
	if len(m.Subscriptions) != 3000 || m.Subscriptions[2999].Topic != "private/x/down/2999" {
		t.Errorf("ManySubscriptions: %d filters, last %q", len(m.Subscriptions), m.Subscriptions[len(m.Subscriptions)-1].Topic)
	}
	deep := readPaho(t, DeepSubscribe(5, "p", Levels)).Content.(*paho.Subscribe)
	if got := strings.Count(deep.Subscriptions[0].Topic, "/"); got != Levels {
		t.Errorf("DeepSubscribe: %d levels below the prefix", got)
	}
	dp := readPaho(t, DeepPublish("p", Levels)).Content.(*paho.Publish)
	if got := strings.Count(dp.Topic, "/"); got != Levels {
		t.Errorf("DeepPublish: %d levels below the prefix", got)
	}
}

func TestLengthLies(t *testing.T) {
	const topic = "private/pump7/up/t"
	_, claimed, _, rest := header(t, LengthLonger(topic, 1000))
	if claimed != uint64(len(rest)+1000) {
		t.Errorf("LengthLonger claims %d for %d bytes, want 1000 more", claimed, len(rest))
	}
	_, claimed, _, rest = header(t, LengthShorter(topic))
	if claimed >= uint64(2+len(topic)) || claimed >= uint64(len(rest)) {
		t.Errorf("LengthShorter claims %d: not inside the topic (%d bytes) of a %d-byte body", claimed, len(topic), len(rest))
	}
	_, claimed, lb, rest := header(t, OverlongLength())
	if lb != 5 || claimed != 0 || len(rest) != 0 {
		t.Errorf("OverlongLength: %d length bytes claiming %d", lb, claimed)
	}
	_, claimed, lb, _ = header(t, WrappedLength())
	if lb != 6 || claimed != 1<<35 || uint32(claimed) != 0 {
		t.Errorf("WrappedLength: %d length bytes claiming %d (as uint32 %d), want 2^35 that wraps to 0", lb, claimed, uint32(claimed))
	}
	e := EndlessLength(100)
	if len(e) != 101 || bytes.Count(e[1:], []byte{0x80}) != 100 {
		t.Errorf("EndlessLength(100) = % x", e[:8])
	}
	for _, c := range []uint32{64<<10 + 1, MaxVarint} {
		_, claimed, _, rest = header(t, SizeBomb(topic, c, 1024))
		if claimed != uint64(c) || len(rest) != 1024 {
			t.Errorf("SizeBomb(%d, 1024) claims %d with %d bytes", c, claimed, len(rest))
		}
	}
	if _, claimed, _, _ = header(t, SizeBomb(topic, 1<<30, 10)); claimed != MaxVarint {
		t.Errorf("SizeBomb above the varint range claims %d, want MaxVarint", claimed)
	}
	_, claimed, _, rest = header(t, ConnectLongerThanSent("pump7", 100))
	if claimed != uint64(len(rest)+100) {
		t.Errorf("ConnectLongerThanSent claims %d for %d", claimed, len(rest))
	}
}

// mochiReads decodes b the way Warden's broker does before it acts on a
// packet: the fixed header, the remaining length, then the packet's own
// decoder and validation.
func mochiReads(b []byte) error {
	r := bytes.NewReader(b)
	first, _ := r.ReadByte()
	var fh mochi.FixedHeader
	if err := fh.Decode(first); err != nil {
		return err
	}
	n, _, err := mochi.DecodeLength(r)
	if err != nil {
		return err
	}
	body := make([]byte, min(n, r.Len()))
	_, _ = io.ReadFull(r, body)
	if n > len(body) {
		return io.ErrUnexpectedEOF
	}
	pk := mochi.Packet{FixedHeader: fh, ProtocolVersion: 5}
	pk.FixedHeader.Remaining = n
	switch fh.Type {
	case mochi.Publish:
		if err := pk.PublishDecode(body); err != nil {
			return err
		}
		if code := pk.PublishValidate(64); code != mochi.CodeSuccess {
			return code
		}
	case mochi.Subscribe:
		if err := pk.SubscribeDecode(body); err != nil {
			return err
		}
		if code := pk.SubscribeValidate(); code != mochi.CodeSuccess {
			return code
		}
	case mochi.Connect:
		if err := pk.ConnectDecode(body); err != nil {
			return err
		}
		if code := pk.ConnectValidate(); code != mochi.CodeSuccess {
			return code
		}
	case mochi.Pingreq, mochi.Auth:
	default:
		return errors.New("unknown packet type")
	}
	return nil
}

// TestMochiRefusesWhatIsMalformed checks that each malformed generator
// breaks a rule the broker's decoder knows: the attack is what it claims.
func TestMochiRefusesWhatIsMalformed(t *testing.T) {
	const topic = "private/pump7/up/t"
	// mochi wraps its errors ("...: malformed packet: topic"), so the
	// refusal is checked by the text of the rule it names.
	cases := []struct {
		name string
		b    []byte
		want string // "" : any error
	}{
		{"LengthLonger", LengthLonger(topic, 10), "unexpected EOF"},
		{"LengthShorter", LengthShorter(topic), "offset bytes out of range"},
		{"OverlongLength", OverlongLength(), "variable byte integer out of range"},
		{"WrappedLength", WrappedLength(), "variable byte integer out of range"},
		{"EndlessLength", EndlessLength(64), "variable byte integer out of range"},
		{"InvalidUTF8Topic", InvalidUTF8Topic(topic), "invalid utf-8"},
		{"NULTopic", NULTopic(topic), "invalid utf-8"},
		{"PublishWildcard", PublishWildcard(topic), "topic contains wildcards"},
		{"UnknownProperty", UnknownProperty(topic), "property type 127 not valid"},
		{"WrongPacketProperty", WrongPacketProperty(topic), "property type 33 not valid"},
		{"PropertyLengthLies", PropertyLengthLies(topic), "properties"},
		{"TopicAliasZero", TopicAliasZero(topic), "topic alias invalid"},
		{"ReservedType(0)", ReservedType(TypeReserved), "unknown packet type"},
		{"PublishQoS3", PublishQoS3(topic), "qos out of range"},
		{"PublishPacketIDZero", PublishPacketIDZero(topic), "missing packet id"},
		{"PublishDupQoS0", PublishDupQoS0(topic), "dup true with no qos"},
		{"SubscribeBadFlags", SubscribeBadFlags(1, "a"), "flags"},
		{"SubscribeNoFilters", SubscribeNoFilters(1), "must contain at least one filter"},
		{"SubscribeNoOptions", SubscribeNoOptions(1, "a/b"), "malformed packet: qos"}, // upstream mochi panicked here
		{"ConnectBadProtocol", ConnectBadProtocol("pump7"), "protocol name"},
		{"ConnectReservedFlag", ConnectReservedFlag("pump7"), "reserved bit"},
		{"Connect with invalid UTF-8", Connect("dev\xff", 30), "client identifier not valid"},
		{"HTTPRequest", HTTPRequest(), "flags"},
	}
	for _, c := range cases {
		err := mochiReads(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: mochi reads it with %v, want an error about %q", c.name, err, c.want)
		}
	}
	// And the ones that are valid MQTT, however costly.
	for name, b := range map[string][]byte{
		"DuplicateProperties": DuplicateProperties(topic),
		"DeepPublish":         DeepPublish(topic, Levels),
		"DeepSubscribe":       DeepSubscribe(1, "private/pump7/down", Levels),
		"ManySubscriptions":   ManySubscriptions(1, "private/pump7/down", 2000),
		"Auth":                Auth(),
	} {
		if err := mochiReads(b); err != nil {
			t.Errorf("%s: mochi refuses it (%v), but it only breaks rules a decoder cannot see", name, err)
		}
	}
}

func TestStringAttacksCarryWhatTheyClaim(t *testing.T) {
	topicOf := func(b []byte) []byte {
		_, _, _, rest := header(t, b)
		n := binary.BigEndian.Uint16(rest)
		return rest[2 : 2+n]
	}
	if tp := topicOf(InvalidUTF8Topic("p")); utf8.Valid(tp) {
		t.Errorf("InvalidUTF8Topic topic %q is valid UTF-8", tp)
	}
	if tp := topicOf(NULTopic("p")); bytes.IndexByte(tp, 0) < 0 {
		t.Errorf("NULTopic topic %q has no NUL", tp)
	}
	if got := strings.Count(DeepTopic("p", 10), "/a"); got != 10 || DeepTopic("p", 10) != "p"+strings.Repeat("/a", 10) {
		t.Errorf("DeepTopic(p, 10) = %q", DeepTopic("p", 10))
	}
}

// properties walks a PUBLISH's property block (test code: the package
// itself parses nothing).
func properties(t *testing.T, b []byte) map[byte]int {
	t.Helper()
	_, _, _, rest := header(t, b)
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2+n:]
	plen, used := int(rest[0]), 1 // the tests' blocks are < 128 bytes
	block := rest[used : used+plen]
	seen := map[byte]int{}
	for i := 0; i < len(block); {
		id := block[i]
		seen[id]++
		i++
		switch id {
		case PropPayloadFormat:
			i++
		case PropMessageExpiry:
			i += 4
		case PropContentType:
			i += 2 + int(binary.BigEndian.Uint16(block[i:]))
		case PropTopicAlias, PropReceiveMaximum:
			i += 2
		default:
			return seen // unknown: stop
		}
	}
	return seen
}

func TestPropertyAttacks(t *testing.T) {
	dup := properties(t, DuplicateProperties("p"))
	for _, id := range []byte{PropPayloadFormat, PropMessageExpiry, PropContentType} {
		if dup[id] != 2 {
			t.Errorf("DuplicateProperties has property 0x%02x %d times, want 2", id, dup[id])
		}
	}
	if u := properties(t, UnknownProperty("p")); u[PropUnknown] != 1 {
		t.Errorf("UnknownProperty: %v", u)
	}
	if w := properties(t, WrongPacketProperty("p")); w[PropReceiveMaximum] != 1 {
		t.Errorf("WrongPacketProperty: %v", w)
	}
	if a := properties(t, TopicAliasZero("p")); a[PropTopicAlias] != 1 {
		t.Errorf("TopicAliasZero: %v", a)
	}
	_, _, _, rest := header(t, PropertyLengthLies("p"))
	if claimed := rest[2+1]; int(claimed) <= len(rest)-3 {
		t.Errorf("PropertyLengthLies claims %d property bytes and has %d", claimed, len(rest)-4)
	}
}

func TestTypeAndFlagAttacks(t *testing.T) {
	cases := []struct {
		name  string
		b     []byte
		first byte
	}{
		{"ReservedType(0)", ReservedType(0), 0x00},
		{"Auth", Auth(), 0xF0},
		{"PublishQoS3", PublishQoS3("p"), 0x36},
		{"PublishDupQoS0", PublishDupQoS0("p"), 0x38},
		{"SubscribeBadFlags", SubscribeBadFlags(1, "a"), 0x80},
		{"Subscribe", Subscribe(1, 0, "a"), 0x82},
	}
	for _, c := range cases {
		if c.b[0] != c.first {
			t.Errorf("%s starts with 0x%02x, want 0x%02x", c.name, c.b[0], c.first)
		}
	}
	_, _, _, rest := header(t, PublishPacketIDZero("p"))
	if id := binary.BigEndian.Uint16(rest[2+1:]); id != 0 || PublishPacketIDZero("p")[0]>>1&3 != 1 {
		t.Errorf("PublishPacketIDZero: QoS %d, packet ID %d", PublishPacketIDZero("p")[0]>>1&3, id)
	}
}

func TestRandomGeneratorsAreReproducible(t *testing.T) {
	gen := func(seed uint64) [][]byte {
		rng := rand.New(rand.NewPCG(seed, 1))
		return [][]byte{Garbage(rng, 64), RandomPacket(rng, 256), RandomPacket(rng, 0)}
	}
	a, b, c := gen(7), gen(7), gen(8)
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			t.Errorf("output %d differs for the same seed", i)
		}
	}
	if bytes.Equal(a[0], c[0]) {
		t.Error("different seeds gave the same garbage")
	}
	for _, p := range a[1:] {
		_, claimed, _, rest := header(t, p)
		if claimed != uint64(len(rest)) {
			t.Errorf("RandomPacket frames %d bytes as %d", len(rest), claimed)
		}
	}
}

func TestClientHello(t *testing.T) {
	hello, err := ClientHello(&tls.Config{ServerName: "localhost", MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	// A TLS record: type 22 (handshake), a version, a length that covers
	// the rest; inside, handshake type 1 (ClientHello).
	if hello[0] != 22 || hello[5] != 1 {
		t.Fatalf("not a ClientHello record: % x", hello[:6])
	}
	if n := int(binary.BigEndian.Uint16(hello[3:5])); n != len(hello)-5 {
		t.Errorf("record length %d, %d bytes follow", n, len(hello)-5)
	}
	if !bytes.Contains(hello, []byte("localhost")) {
		t.Error("the server name is not in the ClientHello")
	}
}

func TestCatalogIsComplete(t *testing.T) {
	target := Target{ClientID: "pump7", Topic: "private/pump7/up/t", FilterPrefix: "private/pump7/down"}
	names := map[string]bool{}
	stages := map[Stage]int{}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, a := range Catalog() {
		if names[a.Name] {
			t.Errorf("attack %s listed twice", a.Name)
		}
		names[a.Name] = true
		stages[a.Stage]++
		b := a.Gen(target, rng)
		if len(b) == 0 && a.Name != "silence" {
			t.Errorf("%s generates nothing", a.Name)
		}
		if len(b) > 64<<10 {
			t.Errorf("%s generates %d bytes, more than the 64 KiB packet limit it is meant to pass", a.Name, len(b))
		}
		if got, ok := Find(a.Name); !ok || got.Name != a.Name {
			t.Errorf("Find(%s) = %v, %v", a.Name, got.Name, ok)
		}
	}
	if stages[BeforeConnect] == 0 || stages[AfterConnect] == 0 {
		t.Errorf("stages covered: %v", stages)
	}
	if _, ok := Find("no-such-attack"); ok {
		t.Error("Find found an attack that does not exist")
	}
}
