package mqttattack

import "math/rand/v2"

// Stage is where in a connection's life an attack is sent.
type Stage int

const (
	// BeforeConnect: on a fresh connection (after the TLS handshake, if
	// any) in place of the CONNECT packet, so before any authentication.
	BeforeConnect Stage = iota
	// AfterConnect: on a connection whose CONNECT the broker accepted.
	AfterConnect
)

func (s Stage) String() string {
	if s == BeforeConnect {
		return "before-connect"
	}
	return "after-connect"
}

// Want is what a broker that defends itself does with an attack.
type Want int

const (
	// Refuse: the broker closes the connection as soon as it reads the
	// attack.
	Refuse Want = iota
	// Starve: the attack leaves the broker waiting for bytes that never
	// come; it must close the connection when its read deadline passes
	// (the keep-alive after CONNECT, the connect timeout before it).
	Starve
	// Survive: the input is valid or harmless but costly (a 10,000-level
	// topic, thousands of subscriptions, random bytes that may frame a
	// valid packet); the broker may accept or refuse it, and must neither
	// fall over nor disturb other clients.
	Survive
)

func (w Want) String() string {
	switch w {
	case Refuse:
		return "refuse"
	case Starve:
		return "starve"
	}
	return "survive"
}

// Target is what the attacks need to know about the connection they are
// sent on. Topics the client is allowed to use make a refusal the
// parser's doing rather than the access control's.
type Target struct {
	// ClientID is the client ID the connection authenticated as (or, before
	// CONNECT, the one a malformed CONNECT names).
	ClientID string
	// Topic is a topic the client may publish to.
	Topic string
	// FilterPrefix is a topic prefix the client may subscribe under
	// (without a trailing slash).
	FilterPrefix string
	// MaxPacketSize is the broker's largest packet; 0 means 64 KiB.
	MaxPacketSize uint32
}

func (t Target) maxPacket() uint32 {
	if t.MaxPacketSize == 0 {
		return 64 << 10
	}
	return t.MaxPacketSize
}

// Attack is one hostile input and what a broker should do with it.
type Attack struct {
	Name  string
	Stage Stage
	Want  Want
	// Gen returns the bytes to write; rng parametrizes the random ones and
	// is unused by the others.
	Gen func(t Target, rng *rand.Rand) []byte
}

// Levels is how deep DeepTopic goes in the catalog's deep-topic attacks:
// the 10,000 levels of the threat model, 20 KB of topic.
const Levels = 10_000

// Catalog returns every attack this package knows, in a fixed order.
func Catalog() []Attack {
	// Thousands of short filters in one SUBSCRIBE, as many as fit the
	// broker's packet size.
	many := func(t Target) int {
		per := len(t.FilterPrefix) + 1 + 5 + 3 // "/12345", the length and the options byte
		return min(5000, max(1, (int(t.maxPacket())-64)/per))
	}
	return []Attack{
		// Framing: remaining lengths that lie.
		{"length-longer-than-sent", AfterConnect, Starve, func(t Target, _ *rand.Rand) []byte { return LengthLonger(t.Topic, 1000) }},
		{"length-shorter-than-sent", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return LengthShorter(t.Topic) }},
		{"length-5-byte-varint", AfterConnect, Refuse, func(Target, *rand.Rand) []byte { return OverlongLength() }},
		{"length-6-byte-varint-wraps-to-0", AfterConnect, Refuse, func(Target, *rand.Rand) []byte { return WrappedLength() }},
		{"length-endless-varint", AfterConnect, Refuse, func(Target, *rand.Rand) []byte { return EndlessLength(4096) }},
		{"size-bomb-256MiB", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return SizeBomb(t.Topic, MaxVarint, 1024) }},
		{"size-bomb-max-packet-size+1", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte {
			return SizeBomb(t.Topic, t.maxPacket(), 1024) // remaining length + 1 header byte > limit
		}},
		// Strings.
		{"topic-invalid-utf8", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return InvalidUTF8Topic(t.Topic) }},
		{"topic-nul", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return NULTopic(t.Topic) }},
		{"topic-wildcard", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return PublishWildcard(t.Topic) }},
		{"topic-10000-levels", AfterConnect, Survive, func(t Target, _ *rand.Rand) []byte { return DeepPublish(t.Topic, Levels) }},
		{"filter-10000-levels", AfterConnect, Survive, func(t Target, _ *rand.Rand) []byte { return DeepSubscribe(1, t.FilterPrefix, Levels) }},
		{"subscriptions-thousands-in-one-packet", AfterConnect, Survive, func(t Target, _ *rand.Rand) []byte {
			return ManySubscriptions(2, t.FilterPrefix, many(t))
		}},
		// Properties.
		{"properties-duplicated", AfterConnect, Survive, func(t Target, _ *rand.Rand) []byte { return DuplicateProperties(t.Topic) }},
		{"properties-unknown", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return UnknownProperty(t.Topic) }},
		{"properties-wrong-packet", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return WrongPacketProperty(t.Topic) }},
		{"properties-length-lies", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return PropertyLengthLies(t.Topic) }},
		{"topic-alias-0", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return TopicAliasZero(t.Topic) }},
		// Packet types and flags.
		{"packet-type-0", AfterConnect, Refuse, func(Target, *rand.Rand) []byte { return ReservedType(TypeReserved) }},
		{"packet-type-15-auth", AfterConnect, Refuse, func(Target, *rand.Rand) []byte { return Auth() }},
		{"publish-qos-3", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return PublishQoS3(t.Topic) }},
		{"publish-qos-1-packet-id-0", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return PublishPacketIDZero(t.Topic) }},
		{"publish-dup-at-qos-0", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return PublishDupQoS0(t.Topic) }},
		{"subscribe-bad-flags", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return SubscribeBadFlags(3, t.FilterPrefix+"/x") }},
		{"subscribe-filter-without-options", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte {
			return SubscribeNoOptions(5, t.FilterPrefix+"/x")
		}},
		{"subscribe-no-filters", AfterConnect, Refuse, func(Target, *rand.Rand) []byte { return SubscribeNoFilters(4) }},
		{"connect-twice", AfterConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return SecondConnect(t.ClientID) }},
		// Noise.
		{"random-packet", AfterConnect, Survive, func(_ Target, rng *rand.Rand) []byte { return RandomPacket(rng, 256) }},
		{"random-bytes", AfterConnect, Survive, func(_ Target, rng *rand.Rand) []byte { return Garbage(rng, 1+rng.IntN(512)) }},

		// Before CONNECT: nobody is authenticated yet.
		{"silence", BeforeConnect, Starve, func(Target, *rand.Rand) []byte { return nil }},
		{"garbage-before-connect", BeforeConnect, Refuse, func(_ Target, rng *rand.Rand) []byte {
			g := Garbage(rng, 1+rng.IntN(512))
			g[0] = 0xFF // never a CONNECT header, so the refusal is certain
			return g
		}},
		{"http-request", BeforeConnect, Refuse, func(Target, *rand.Rand) []byte { return HTTPRequest() }},
		{"publish-before-connect", BeforeConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return Publish(t.Topic, 0, 0, []byte("early")) }},
		{"connect-bad-protocol-name", BeforeConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return ConnectBadProtocol(t.ClientID) }},
		{"connect-reserved-flag", BeforeConnect, Refuse, func(t Target, _ *rand.Rand) []byte { return ConnectReservedFlag(t.ClientID) }},
		{"connect-5-byte-varint", BeforeConnect, Refuse, func(Target, *rand.Rand) []byte {
			return []byte{TypeConnect << 4, 0x80, 0x80, 0x80, 0x80, 0x00}
		}},
		{"connect-size-bomb", BeforeConnect, Refuse, func(Target, *rand.Rand) []byte {
			return AppendVarint([]byte{TypeConnect << 4}, MaxVarint)
		}},
		{"connect-longer-than-sent", BeforeConnect, Starve, func(t Target, _ *rand.Rand) []byte { return ConnectLongerThanSent(t.ClientID, 100) }},
		{"connect-invalid-utf8-client-id", BeforeConnect, Refuse, func(Target, *rand.Rand) []byte { return Connect("dev\xff\xfe", 30) }},
	}
}

// Find returns the attack of the catalog with this name.
func Find(name string) (Attack, bool) {
	for _, a := range Catalog() {
		if a.Name == name {
			return a, true
		}
	}
	return Attack{}, false
}
