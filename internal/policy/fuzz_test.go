package policy

import (
	"hash/fnv"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/warden-iot/warden/internal/identity"
)

// levelPool is what wildcards are replaced with when deriving topics: empty
// levels, unicode, '$'-prefixed levels and the words of Warden's layout.
var levelPool = []string{"", "a", "abc", "abcd", "x y", "é", "日本", "🚀", "$x", "$SYS", "private", "fleet", "up", "down"}

// newRand seeds a deterministic generator from fuzzer-chosen bytes.
func newRand(seed []byte) *rand.Rand {
	h := fnv.New64a()
	h.Write(seed)
	s := h.Sum64()
	return rand.New(rand.NewPCG(s, s^0x9e3779b97f4a7c15))
}

// pickLevel returns an arbitrary topic level: from the pool, from the
// caller's extra levels (so derived topics hit the literals of the pattern
// under test), or made of random runes.
func pickLevel(rng *rand.Rand, extra []string, first, avoidDollar bool) string {
	for {
		var l string
		switch n := rng.IntN(10); {
		case n < 4:
			l = levelPool[rng.IntN(len(levelPool))]
		case n < 8 && len(extra) > 0:
			l = extra[rng.IntN(len(extra))]
		default:
			var b strings.Builder
			for range rng.IntN(6) {
				r := rune(rng.IntN(0x800) + 1)
				if r == '/' || r == '+' || r == '#' || !utf8.ValidRune(r) {
					r = 'z'
				}
				b.WriteRune(r)
			}
			l = b.String()
		}
		if first && avoidDollar && strings.HasPrefix(l, "$") {
			continue
		}
		return l
	}
}

// literalLevels returns the non-wildcard levels of s that are usable as
// topic levels.
func literalLevels(s string) []string {
	var out []string
	for i := 0; i >= 0; {
		var l string
		l, i = nextLevel(s, i)
		if !strings.ContainsAny(l, "+#\x00") && utf8.ValidString(l) {
			out = append(out, l)
		}
	}
	return out
}

// deriveTopic builds a concrete topic that a valid filter matches, by
// replacing each '+' with one arbitrary level and a final '#' with zero or
// more. It reports false when the result is not a usable topic name (empty,
// or too long).
func deriveTopic(filter string, rng *rand.Rand, extra []string) (string, bool) {
	avoidDollar := startsWithWildcard(filter) // such filters never match '$' topics
	var b strings.Builder
	n := 0 // levels written
	add := func(l string) {
		if n > 0 {
			b.WriteByte('/')
		}
		b.WriteString(l)
		n++
	}
	for i := 0; i >= 0; {
		var l string
		l, i = nextLevel(filter, i)
		switch l {
		case "+":
			add(pickLevel(rng, extra, n == 0, avoidDollar))
		case "#":
			for range rng.IntN(4) {
				add(pickLevel(rng, extra, n == 0, avoidDollar))
			}
		default:
			add(l)
		}
	}
	t := b.String()
	return t, ValidTopicName(t)
}

func FuzzCovers(f *testing.F) {
	seeds := [][2]string{
		{"private/abc/#", "private/abc/down/+"},
		{"private/abc/#", "private/abc"},
		{"private/abc/#", "private/abcd/#"},
		{"private/abc/#", "private/+/up/#"},
		{"fleet/+/down/#", "fleet/+/down/+"},
		{"#", "+/+"},
		{"+/#", "$SYS/x"},
		{"+/+", "/"},
		{"a/+/#", "a/#"},
		{"日本/#", "日本/+/東京"},
		{"a#", "a"},
		{"+/#", "#"},
		{"+/+/#", "/#"},
	}
	for i, s := range seeds {
		f.Add(s[0], s[1], []byte{byte(i)})
	}
	f.Fuzz(func(t *testing.T, pattern, filter string, seed []byte) {
		covered := Covers(pattern, filter)
		if covered && (!ValidFilter(pattern) || !ValidFilter(filter)) {
			t.Fatalf("Covers(%q, %q) is true for an invalid filter", pattern, filter)
		}
		if !ValidFilter(filter) {
			return
		}
		if !Covers(filter, filter) {
			t.Fatalf("Covers(%q, %q) is false; every filter covers itself", filter, filter)
		}
		rng := newRand(seed)
		extra := append(literalLevels(pattern), literalLevels(filter)...)
		for range 16 {
			topic, ok := deriveTopic(filter, rng, extra)
			if !ok {
				continue
			}
			if !Matches(filter, topic) {
				t.Fatalf("Matches(%q, %q) is false for a topic derived from the filter", filter, topic)
			}
			if covered && !Matches(pattern, topic) {
				t.Fatalf("Covers(%q, %q) is true but the pattern does not match %q", pattern, filter, topic)
			}
		}
	})
}

func FuzzRights(f *testing.F) {
	seeds := []struct {
		who    byte
		id     string
		filter string
	}{
		{0, "abc", "private/abc/#"},
		{0, "abc", "private/abc/down/+"},
		{0, "abc", "private/+/up/#"},
		{0, "abc", "#"},
		{0, "abc", "private/abc"},
		{0, "0a1b2c3d", "private/0a1b2c3d/down/#"},
		{1, "dashboard", "fleet/+/up/#"},
		{1, "dashboard", "$share/relay/fleet/+/up/#"},
		{1, "dashboard", "$share/relay/#"},
		{2, "ops", "fleet/#"},
		{2, "ops", "$SYS/#"},
	}
	for i, s := range seeds {
		f.Add(s.who, s.id, s.filter, []byte{byte(i)})
	}
	p, err := New(DefaultRules())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, who byte, id, filter string, seed []byte) {
		if identity.ValidateDeviceID(id) != nil {
			id = "abc" // invalid IDs get no rights; TestCompileFailsClosed covers them
		}
		pr := []identity.Principal{
			{Kind: identity.KindDevice, ID: id},
			{Kind: identity.KindService, ID: id, Role: identity.RoleReader},
			{Kind: identity.KindService, ID: id, Role: identity.RoleCommander},
		}[int(who)%3]
		r := p.Compile(pr)

		// Checks never panic, whatever they are given.
		pub, recv := r.CanPublish(filter), r.CanReceive(filter)

		// Devices stay inside their own subtree; services never touch it.
		own := "private/" + id
		inOwn := filter == own || strings.HasPrefix(filter, own+"/")
		if pr.Kind == identity.KindDevice && (pub || recv) && !inOwn {
			t.Fatalf("device %q may publish/receive %q outside its subtree", id, filter)
		}
		if pr.Kind == identity.KindService && (pub || recv) && strings.HasPrefix(filter, "private/") {
			t.Fatalf("service %s may publish/receive %q", pr, filter)
		}

		if !r.CanSubscribe(filter) {
			return
		}
		inner := filter
		if in, shared, ok := SplitShared(filter); shared {
			if !ok || pr.Kind != identity.KindService {
				t.Fatalf("%s may subscribe to the bad or forbidden shared filter %q", pr, filter)
			}
			inner = in
		}
		rng := newRand(seed)
		extra := append(literalLevels(inner), id)
		for range 16 {
			topic, ok := deriveTopic(inner, rng, extra)
			if !ok {
				continue
			}
			if !r.CanReceive(topic) {
				t.Fatalf("%s may subscribe to %q but not receive %q", pr, filter, topic)
			}
		}
	})
}
