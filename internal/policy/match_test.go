package policy

import (
	"strings"
	"testing"
	"time"
)

func TestValidTopicNameAndFilter(t *testing.T) {
	long := strings.Repeat("a", maxLen)
	tests := []struct {
		s           string
		topic, filt bool
	}{
		{"a", true, true},
		{"a/b/c", true, true},
		{"/", true, true},
		{"//", true, true},
		{"a//b", true, true},
		{"$SYS/broker", true, true},
		{"température/日本/🚀", true, true},
		{long, true, true},
		{long + "a", false, false},
		{"", false, false},
		{"a\x00b", false, false},
		{"a/\xff", false, false},
		{"+", false, true},
		{"#", false, true},
		{"a/+/b", false, true},
		{"a/#", false, true},
		{"+/+/#", false, true},
		{"a#", false, false},
		{"#/a", false, false},
		{"a/#/b", false, false},
		{"a/b#", false, false},
		{"a/+b", false, false},
		{"a/b+", false, false},
		{"++", false, false},
		{"##", false, false},
		{"a/##", false, false},
		{"$share/g/a", true, true}, // a filter string; CanSubscribe interprets $share
	}
	for _, tt := range tests {
		name := tt.s
		if len(name) > 40 {
			name = name[:40]
		}
		if got := ValidTopicName(tt.s); got != tt.topic {
			t.Errorf("ValidTopicName(%q) = %v, want %v", name, got, tt.topic)
		}
		if got := ValidFilter(tt.s); got != tt.filt {
			t.Errorf("ValidFilter(%q) = %v, want %v", name, got, tt.filt)
		}
	}
}

func TestMatches(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a", "a/b", false},
		{"a/b", "a", false},
		{"a/b", "a/b", true},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/+", "a/", true}, // '+' matches an empty level
		{"a/+/c", "a//c", true},
		{"+", "a", true},
		{"+", "/", false}, // "/" has two (empty) levels
		{"+/+", "/", true},
		{"/+", "/", true},
		{"/+", "/x", true},
		{"+/x", "/x", true},
		{"#", "a", true},
		{"#", "/", true},
		{"#", "a/b/c", true},
		{"a/#", "a", true}, // '#' matches the parent level
		{"a/#", "a/", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"a/#", "b/a", false},
		{"a/b/#", "a", false},
		{"a/+/#", "a", false},
		{"a/+/#", "a/b", true},
		{"private/abc/#", "private/abc", true},
		{"private/abc/#", "private/abcd", false},
		{"private/abc/#", "private/abcd/up/x", false},
		{"private/abc/#", "private/ab", false},
		{"private/+/up/#", "private/abc/up/t", true},
		{"private/+/up/#", "private/abc/down/t", false},
		{"fleet/+/down/#", "fleet/abc/down", true},
		{"fleet/+/down/#", "fleet/abc/downx", false},
		// '$' topics are not matched by filters starting with a wildcard.
		{"#", "$SYS/broker", false},
		{"+/broker", "$SYS/broker", false},
		{"+/#", "$SYS", false},
		{"$SYS/#", "$SYS/broker", true},
		{"$SYS/+", "$SYS/broker", true},
		{"a/+", "a/$x", true}, // only the first level is special
		// Unicode compares byte-exactly.
		{"capteur/+/température", "capteur/é/température", true},
		{"capteur/+/température", "capteur/é/temperature", false},
		{"日本/+", "日本/東京", true},
		// Invalid input matches nothing.
		{"a/#/b", "a/x/b", false},
		{"a#", "a#", false},
		{"a/+b", "a/+b", false},
		{"a", "a\x00", false},
		{"", "", false},
		{"#", "", false},
		{"a/+", "a/+", false}, // a topic name may not contain wildcards
		{"a/#", "a/#", false},
	}
	for _, tt := range tests {
		if got := Matches(tt.filter, tt.topic); got != tt.want {
			t.Errorf("Matches(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestCovers(t *testing.T) {
	tests := []struct {
		pattern, filter string
		want            bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a", "+", false},
		{"a", "#", false},
		{"+", "a", true},
		{"+", "+", true},
		{"+", "#", false},   // '#' also matches two levels
		{"+", "a/b", false}, // pattern ends, filter goes on
		{"#", "a", true},
		{"#", "a/b/+/#", true},
		{"#", "+", true},
		{"#", "#", true},
		{"#", "/", true},
		{"a/#", "a", true}, // the parent level
		{"a/#", "a/#", true},
		{"a/#", "a/+", true},
		{"a/#", "#", false},
		{"a/#", "+/#", false},
		{"a/#", "+", false},
		{"a/+", "a", false},
		{"a/+", "a/#", false}, // a/# matches "a" and "a/b/c"
		{"a/+/#", "a/#", false},
		{"a/+/#", "a/b", true},
		{"a/+/#", "a/+/+/+", true},
		{"+/+", "/", true}, // empty levels are literals
		{"+/+", "+/", true},
		{"+/+", "+/+", true},
		{"+/+", "+/+/+", false},
		{"+/+/#", "+/#", false},
		{"+/#", "+/+", true},
		{"+/#", "#", true}, // "#" cannot match zero levels: every topic has one
		{"+/#", "+", true},
		{"+/+/#", "#", false}, // "#" matches one-level topics
		{"+/#", "/#", true},
		{"/+/#", "/#", true}, // "/#" cannot match the empty topic either
		{"+/+/#", "/#", true},
		{"/+", "/#", false},
		{"/#", "/", true},
		{"/#", "//", true},
		{"/#", "a", false},
		// The device cases from the brief.
		{"private/abc/#", "#", false},
		{"private/abc/#", "+/#", false},
		{"private/abc/#", "private/+/up/#", false},
		{"private/abc/#", "private/#", false},
		{"private/abc/#", "private/abcd/#", false},
		{"private/abc/#", "private/ab/#", false},
		{"private/abc/#", "private/abc/#", true},
		{"private/abc/#", "private/abc/down/+", true},
		{"private/abc/#", "private/abc", true},
		{"private/abc/#", "private/abc/", true},
		{"private/abc/#", "private/abc/up/+/#", true},
		{"fleet/#", "fleet/+/up/#", true},
		{"fleet/+/down/#", "fleet/+/down/+", true},
		{"fleet/+/down/#", "fleet/+/up/+", false},
		{"fleet/+/down/#", "fleet/+/+/cmd", false},
		// '$' rule: wildcard-led patterns do not cover '$' filters.
		{"#", "$SYS/#", false},
		{"+/#", "$SYS/x", false},
		{"+", "$x", false},
		{"$SYS/#", "$SYS/x", true},
		{"$SYS/#", "+/x", false},
		// Unicode.
		{"capteur/+/température", "capteur/é/température", true},
		{"日本/#", "日本/+/東京", true},
		{"日本/#", "日/#", false},
		// Invalid input is never covered.
		{"#", "a#", false},
		{"#", "#/a", false},
		{"#", "a/+b", false},
		{"#", "", false},
		{"a#", "a", false},
		{"#", "a\x00", false},
	}
	for _, tt := range tests {
		if got := Covers(tt.pattern, tt.filter); got != tt.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tt.pattern, tt.filter, got, tt.want)
		}
	}
}

// deep builds a topic of n levels named by level.
func deep(n int, level string) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(level)
	}
	return b.String()
}

func TestDeepAndLongTopics(t *testing.T) {
	const levels = 10000
	topic := deep(levels, "a")             // 19,999 bytes
	plusses := deep(levels, "+")           // matches topic exactly
	prefix := deep(levels-1, "+") + "/#"   // '#' at the very end
	empties := strings.Repeat("/", levels) // 10,001 empty levels
	tooLong := deep(maxLen/2+2, "a")       // 65,537 bytes

	start := time.Now()
	checks := []struct {
		name string
		got  bool
		want bool
	}{
		{"Matches plusses", Matches(plusses, topic), true},
		{"Matches prefix", Matches(prefix, topic), true},
		{"Matches one short", Matches(deep(levels-1, "+"), topic), false},
		{"Matches one long", Matches(deep(levels+1, "+"), topic), false},
		{"Matches empties", Matches(deep(levels+1, "+"), empties), true},
		{"Covers plusses", Covers(plusses, topic), true},
		{"Covers prefix", Covers(prefix, plusses), true},
		{"Covers reversed", Covers(topic, plusses), false},
		{"Covers hash", Covers("#", prefix), true},
		{"too long topic", Matches("#", tooLong), false},
		{"too long filter", Covers("#", tooLong), false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// Each check is one linear pass over ~20 KB; a few ms in total even
	// with the race detector. A second would mean something quadratic.
	if d := time.Since(start); d > time.Second {
		t.Errorf("deep topic checks took %v; want linear time", d)
	}
}

func TestSplitShared(t *testing.T) {
	tests := []struct {
		in         string
		inner      string
		shared, ok bool
	}{
		{"$share/g/fleet/#", "fleet/#", true, true},
		{"$share/g/+", "+", true, true},
		{"$share/group-1/a/b", "a/b", true, true},
		{"$share/g//", "/", true, true},
		{"$share//fleet/#", "", true, false}, // empty share name
		{"$share/g", "", true, false},        // no filter
		{"$share/g/", "", true, false},       // empty filter
		{"$share/g+/a", "", true, false},
		{"$share/g#/a", "", true, false},
		{"$share/+/a", "", true, false},
		{"$share/g/a#", "", true, false},
		{"$share/\xff/a", "", true, false},
		{"$share", "", false, false},
		{"$shared/g/a", "", false, false},
		{"fleet/#", "", false, false},
	}
	for _, tt := range tests {
		inner, shared, ok := SplitShared(tt.in)
		if inner != tt.inner || shared != tt.shared || ok != tt.ok {
			t.Errorf("SplitShared(%q) = %q, %v, %v; want %q, %v, %v", tt.in, inner, shared, ok, tt.inner, tt.shared, tt.ok)
		}
	}
}

// TestCoversAgreesWithBruteForce checks Covers against its definition on a
// small universe: every filter of up to three levels over a few level
// values, and every topic of up to four levels over those literals plus a
// fresh one, an empty one and a '$' one. That universe holds a witness for
// every non-covered pair, so the two must agree exactly.
func TestCoversAgreesWithBruteForce(t *testing.T) {
	build := func(alphabet []string, maxLevels int) []string {
		var out, prev []string
		for n := 1; n <= maxLevels; n++ {
			var next []string
			if n == 1 {
				next = append(next, alphabet...)
			} else {
				for _, p := range prev {
					for _, l := range alphabet {
						next = append(next, p+"/"+l)
					}
				}
			}
			out = append(out, next...)
			prev = next
		}
		return out
	}
	var filters []string
	for _, f := range build([]string{"a", "b", "", "$x", "+", "#"}, 3) {
		if ValidFilter(f) {
			filters = append(filters, f)
		}
	}
	topics := build([]string{"a", "b", "c", "", "$x"}, 4)

	matched := make([][]bool, len(filters))
	for i, f := range filters {
		matched[i] = make([]bool, len(topics))
		for j, topic := range topics {
			matched[i][j] = Matches(f, topic)
		}
	}
	checked := 0
	for pi, p := range filters {
		for fi, f := range filters {
			subset := true
			for j := range topics {
				if matched[fi][j] && !matched[pi][j] {
					subset = false
					break
				}
			}
			if got := Covers(p, f); got != subset {
				t.Errorf("Covers(%q, %q) = %v, but the topic sets say %v", p, f, got, subset)
			}
			checked++
		}
	}
	t.Logf("checked %d pairs over %d topics", checked, len(topics))
}
