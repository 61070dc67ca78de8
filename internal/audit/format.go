package audit

import (
	"strconv"
	"strings"
	"unicode"
)

// FormatEntry renders e on one line for people:
//
//	2026-11-03T10:15:04Z  #57  denied  mqtt.connect  device:alpha → device:alpha  client-id-mismatch  listener=mqtts remote=10.0.0.7:50122
//
// time (UTC, seconds), seq ("-" for a legacy line), outcome, action,
// actor → subject, reason, then listener, remote and the details as
// key=value. Every field came from the network or from a file an intruder
// may have edited, so anything that is not printable is quoted: a device
// ID cannot smuggle terminal escape sequences onto an operator's screen.
func FormatEntry(e Entry) string {
	var b strings.Builder
	if e.Time.IsZero() {
		b.WriteString("-")
	} else {
		b.WriteString(e.Time.UTC().Format("2006-01-02T15:04:05Z"))
	}
	b.WriteString("  ")
	if e.Seq == 0 {
		b.WriteString("-")
	} else {
		b.WriteString("#" + strconv.FormatUint(e.Seq, 10))
	}
	b.WriteString("  " + orDash(e.Outcome) + "  " + orDash(e.Action))
	if e.Actor != "" || e.Subject != "" {
		b.WriteString("  ")
		b.WriteString(orDash(e.Actor))
		if e.Subject != "" {
			b.WriteString(" → " + printable(e.Subject))
		}
	}
	if e.Reason != "" {
		b.WriteString("  " + printable(e.Reason))
	}
	var kv []string
	if e.Listener != "" {
		kv = append(kv, "listener="+printable(e.Listener))
	}
	if e.Remote != "" {
		kv = append(kv, "remote="+printable(e.Remote))
	}
	for _, k := range sortedKeys(e.Details) {
		kv = append(kv, printable(k)+"="+printable(e.Details[k]))
	}
	if len(kv) > 0 {
		b.WriteString("  " + strings.Join(kv, " "))
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return printable(s)
}

// printable returns s unchanged when every character is a visible one and
// quoted (Go syntax, escapes spelled out) otherwise, or when it contains
// spaces that would blur the columns.
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsGraphic(r) || unicode.IsSpace(r) || r == '"' {
			return strconv.QuoteToGraphic(s)
		}
	}
	return s
}
