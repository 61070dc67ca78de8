package policy

import (
	"strings"
	"unicode/utf8"
)

// maxLen is the longest topic name or filter MQTT can carry: both travel as
// a UTF-8 string with a two-byte length prefix (MQTT 5 §1.5.4).
const maxLen = 65535

// The functions in this file walk topics level by level with an index into
// the original string. They never split, never allocate and never recurse, so
// a 10,000-level topic costs one linear pass and no stack.

// nextLevel returns the level that starts at s[i:] and the index at which
// the following level starts, or -1 when this level is the last one.
func nextLevel(s string, i int) (level string, next int) {
	j := strings.IndexByte(s[i:], '/')
	if j < 0 {
		return s[i:], -1
	}
	return s[i : i+j], i + j + 1
}

// validString applies the rules MQTT 5 §1.5.4 sets for every UTF-8 string a
// topic travels in, plus the rule that topics are never empty (§4.7.3).
func validString(s string) bool {
	return len(s) > 0 && len(s) <= maxLen && utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// ValidTopicName reports whether s may appear as the topic of a PUBLISH:
// non-empty, at most 65535 bytes, valid UTF-8 without NUL, and free of the
// wildcard characters '+' and '#' (MQTT 5 §4.7.1, §4.7.3).
func ValidTopicName(s string) bool {
	return validString(s) && strings.IndexByte(s, '+') < 0 && strings.IndexByte(s, '#') < 0
}

// ValidFilter reports whether s is a syntactically valid topic filter:
// the ValidTopicName string rules, with '+' allowed only as a whole level
// and '#' only as the whole last level (MQTT 5 §4.7.1). Empty levels are
// valid. It does not interpret "$share/"; CanSubscribe does.
func ValidFilter(s string) bool {
	if !validString(s) {
		return false
	}
	for i := 0; i >= 0; {
		var level string
		level, i = nextLevel(s, i)
		if len(level) == 1 && (level[0] == '+' || (level[0] == '#' && i < 0)) {
			continue
		}
		if strings.IndexByte(level, '+') >= 0 || strings.IndexByte(level, '#') >= 0 {
			return false
		}
	}
	return true
}

// startsWithWildcard reports whether the first level of a valid filter is a
// wildcard; such filters never match topics that start with '$' (§4.7.2).
func startsWithWildcard(filter string) bool {
	return filter[0] == '+' || filter[0] == '#'
}

// Matches reports whether the topic filter matches the topic name, with the
// semantics of MQTT 5 §4.7: '+' matches exactly one level (which may be
// empty), '#' matches the parent level and any number of child levels, and a
// filter whose first level is a wildcard does not match a topic starting with
// '$'. An invalid filter or topic name matches nothing.
func Matches(filter, topic string) bool {
	return ValidFilter(filter) && ValidTopicName(topic) && match(filter, topic)
}

// match is Matches for a filter and topic already known to be valid.
func match(filter, topic string) bool {
	if startsWithWildcard(filter) && topic[0] == '$' {
		return false
	}
	fi, ti := 0, 0
	for {
		fl, fn := nextLevel(filter, fi)
		if fl == "#" {
			return true
		}
		if ti < 0 {
			// The topic has ended but the filter still demands a level.
			return false
		}
		tl, tn := nextLevel(topic, ti)
		if fl != "+" && fl != tl {
			return false
		}
		if fn < 0 {
			return tn < 0
		}
		fi, ti = fn, tn
	}
}

// Covers reports whether every topic name that filter can match is also
// matched by pattern, that is, whether filter's topic set is a subset of
// pattern's. It compares the two filters level by level:
//
//   - a '#' in pattern covers whatever is left of filter, including nothing;
//   - a '#' in filter (which may also match zero levels) is covered only by a
//     '#' in pattern at the same level;
//   - a '+' in pattern covers one '+' or one literal level of filter;
//   - a literal level in pattern covers only the same literal;
//   - if filter ends where pattern demands a further non-'#' level, or pattern
//     ends where filter goes on, the sets differ.
//
// The '$' rule applies: a pattern starting with a wildcard does not cover a
// filter whose first level is a literal starting with '$'. Two filters need
// care: "#" and "/#" cannot use the zero-level match of '#', because it
// would yield the empty topic, which does not exist; so they are compared
// as the equal filters "+/#" and "/+/#". With that, and because every level
// can take infinitely many values, this structural test is exact, not an
// approximation (TestCoversAgreesWithBruteForce checks it). Invalid input
// is never covered.
func Covers(pattern, filter string) bool {
	return ValidFilter(pattern) && ValidFilter(filter) && covers(pattern, filter)
}

// covers is Covers for a pattern and filter already known to be valid.
func covers(pattern, filter string) bool {
	if startsWithWildcard(pattern) && filter[0] == '$' {
		return false
	}
	switch filter {
	case "#":
		filter = "+/#"
	case "/#":
		filter = "/+/#"
	}
	pi, fi := 0, 0
	for {
		pl, pn := nextLevel(pattern, pi)
		if pl == "#" {
			return true
		}
		if fi < 0 {
			return false
		}
		fl, fn := nextLevel(filter, fi)
		if fl == "#" {
			return false
		}
		if pl != "+" && (fl == "+" || pl != fl) {
			return false
		}
		if pn < 0 {
			return fn < 0
		}
		pi, fi = pn, fn
	}
}

// sharePrefix introduces a shared subscription (MQTT 5 §4.8.2).
const sharePrefix = "$share/"

// SplitShared parses a shared subscription, "$share/<ShareName>/<filter>"
// (MQTT 5 §4.8.2). shared reports whether s starts with "$share/" at all;
// ok whether it is then well formed: the share name is at least one
// character with no '/', '+' or '#', and the inner filter is a valid,
// non-empty filter, which is returned. Messages delivered through a shared
// subscription are matched against the inner filter.
func SplitShared(s string) (inner string, shared, ok bool) {
	if !strings.HasPrefix(s, sharePrefix) {
		return "", false, false
	}
	if !validString(s) {
		return "", true, false
	}
	rest := s[len(sharePrefix):]
	slash := strings.IndexByte(rest, '/')
	if slash <= 0 {
		return "", true, false
	}
	name, inner := rest[:slash], rest[slash+1:]
	if strings.ContainsAny(name, "+#") || !ValidFilter(inner) {
		return "", true, false
	}
	return inner, true, true
}
