package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// FieldError is one problem with the configuration. Load and Validate return
// several of them joined with errors.Join, one per line, so an operator can
// fix every mistake in one pass.
type FieldError struct {
	// Source says where the value came from: a file path (with ":line" when
	// known), "environment variable WARDEN_X" or "flag --x". Empty when the
	// problem is in the merged configuration (Validate).
	Source string
	// Key is the configuration key, e.g. "limits.max_packet_size"; empty
	// when the problem is not tied to one key (a YAML syntax error).
	Key string
	// Value is the offending value as it is shown to the operator; empty
	// when showing it adds nothing.
	Value string
	// Reason says why the value is wrong and what is allowed.
	Reason string
	// Err is the underlying cause, if any.
	Err error
}

// Error formats as "config: [source: ]key[ = value]: reason".
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	if e.Source != "" {
		b.WriteString(e.Source)
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		if e.Value != "" {
			b.WriteString(" = ")
			b.WriteString(e.Value)
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// Unwrap returns the underlying cause.
func (e *FieldError) Unwrap() error { return e.Err }

// maxShown bounds how much of an operator-supplied value is echoed back, so
// a pasted blob does not drown the message.
const maxShown = 64

// quote shows a string value, shortened and escaped so that the message stays
// on one line whatever the value contains.
func quote(s string) string {
	if len(s) > maxShown {
		cut := maxShown
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return strconv.Quote(s[:cut]) + "..."
	}
	return strconv.Quote(s)
}

// showRaw shows a value read from a source, before decoding.
func showRaw(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return quote(x)
	case map[string]any, map[any]any:
		return "(a mapping)"
	case []any:
		return "(a list)"
	case []string:
		return quote(strings.Join(x, ","))
	case time.Duration:
		return FormatDuration(x)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	case bool, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return fmt.Sprint(x)
	default:
		return quote(fmt.Sprint(x))
	}
}
