// Package commandproto is the wire protocol of the command relay
// (docs/commands.md): an app asks Warden to run a named command on a
// device, Warden forwards it as a Command on private/<id>/down/cmd, and the
// device answers with a Result on private/<id>/up/cmd-result. The device
// SDK and Warden's server side share it, and a C implementation can check
// itself against its seed corpus.
//
// It holds only message shapes and their checks. Nothing here decides who
// may command a device (Warden does, before it forwards), and a command's
// body is opaque: only the device's handler gives it meaning.
package commandproto

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MQTT channels of the relay: ChannelCommand under private/<id>/down/,
// ChannelResult under private/<id>/up/.
const (
	ChannelCommand = "cmd"        // Warden -> device: a Command
	ChannelResult  = "cmd-result" // device -> Warden: a Result
)

// CommandTopic returns private/<id>/down/cmd. The ID is not checked:
// callers pass a registered device's ID, whose grammar keeps it free of
// MQTT separators and wildcards.
func CommandTopic(deviceID string) string {
	return "private/" + deviceID + "/down/" + ChannelCommand
}

// ResultTopic returns private/<id>/up/cmd-result; see CommandTopic.
func ResultTopic(deviceID string) string {
	return "private/" + deviceID + "/up/" + ChannelResult
}

// Size limits. MaxMessage leaves room around a MaxBody body for the other
// fields of either message, escaped in the worst case, so that whatever
// Validate accepts, Marshal encodes within MaxMessage.
const (
	MaxBody    = 16 << 10 // a command's or result's body, as JSON text
	MaxMessage = 20 << 10 // a whole command or result payload (before sealing)
	MaxError   = 512      // a result's error text, in bytes
)

// Command ID and name limits.
const (
	MinIDLength   = 16
	MaxIDLength   = 64
	MaxNameLength = 64
)

// Command asks a device to run Name with Body, on private/<id>/down/cmd.
type Command struct {
	// ID is 16..64 characters of [A-Za-z0-9_-] (NewID makes one); the
	// Result echoes it. A device may see the same command twice (QoS 1)
	// and answers a repeated ID without running the command again.
	ID string `json:"id"`
	// Name is 1..64 characters of [a-z0-9._-], starting with a letter or
	// digit.
	Name string `json:"name"`
	// Body is the command's argument: any JSON value (object, array,
	// string, number, true, false or null) of at most MaxBody bytes, or
	// absent.
	Body json.RawMessage `json:"body,omitempty"`
	// Deadline is when Warden stops waiting for the answer, as RFC 3339
	// in UTC ("Z"). A device must not act on the command after it.
	Deadline time.Time `json:"deadline"`
}

// Validate checks the command's shape: an ID and a name of their grammars,
// a body that is valid JSON in UTF-8 within MaxBody, and a non-zero UTC
// deadline. Whether the deadline has passed is for the device to decide,
// by its own clock, when the command arrives.
func (c Command) Validate() error {
	if !ValidID(c.ID) {
		return idError("command", c.ID)
	}
	if !ValidName(c.Name) {
		return fmt.Errorf("command %s: name %q must be 1-%d characters of lowercase letters, digits, '.', '_' or '-', starting with a letter or digit", c.ID, truncate(c.Name), MaxNameLength)
	}
	if err := validBody(c.Body); err != nil {
		return fmt.Errorf("command %s: %w", c.ID, err)
	}
	if c.Deadline.IsZero() {
		return fmt.Errorf("command %s: deadline is required", c.ID)
	}
	if y := c.Deadline.Year(); y < 0 || y > 9999 {
		return fmt.Errorf("command %s: deadline year %d is outside RFC 3339's 0000-9999", c.ID, y)
	}
	if c.Deadline.Location() != time.UTC {
		return fmt.Errorf("command %s: deadline %s must be in UTC (RFC 3339 with \"Z\")", c.ID, c.Deadline.Format(time.RFC3339Nano))
	}
	return nil
}

// ParseCommand reads a cmd payload strictly (at most MaxMessage bytes, one
// JSON object, no unknown or repeated fields, nothing after it) and
// validates it.
func ParseCommand(b []byte) (Command, error) {
	var c Command
	if err := decodeStrictJSON(b, "command", commandField, &c); err != nil {
		return Command{}, err
	}
	if err := c.Validate(); err != nil {
		return Command{}, err
	}
	return c, nil
}

// Marshal validates the command and encodes it compactly, without
// encoding/json's HTML escaping (which could swell a valid body past the
// limits), so that the result is at most MaxMessage bytes and
// ParseCommand reads it back.
func (c Command) Marshal() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return marshal("command", c)
}

// Result statuses.
const (
	StatusOK       = "ok"       // the device ran the command; Body is its answer
	StatusError    = "error"    // the device ran the command and it failed; Error says why
	StatusRejected = "rejected" // the device did not run the command; Error says why
)

// Error texts of the rejections the SDK makes, so that a server or an app
// can tell them apart. A device may reject for other reasons too.
const (
	RejectUnknown  = "unknown command" // the device has no command of that name
	RejectDeadline = "deadline passed" // the command arrived (or waited) past its deadline
	RejectBusy     = "busy"            // the device's command queue is full
)

// Result answers a Command on private/<id>/up/cmd-result.
type Result struct {
	// ID is the command's.
	ID string `json:"id"`
	// Status is StatusOK, StatusError or StatusRejected.
	Status string `json:"status"`
	// Body is the answer of an ok result, a JSON value of at most MaxBody
	// bytes, or absent. Only an ok result carries one.
	Body json.RawMessage `json:"body,omitempty"`
	// Error says why a command failed or was rejected: required then,
	// absent for ok. It is 1..MaxError bytes of UTF-8 on one line, without
	// control characters (CleanError makes any text so).
	Error string `json:"error,omitempty"`
}

// Validate checks the result's shape: an ID of the command-ID grammar, a
// known status, a body only when ok (valid JSON in UTF-8 within MaxBody),
// and an error text exactly when not ok.
func (r Result) Validate() error {
	if !ValidID(r.ID) {
		return idError("result", r.ID)
	}
	switch r.Status {
	case StatusOK:
		if r.Error != "" {
			return fmt.Errorf("result %s: status ok carries an error", r.ID)
		}
		if err := validBody(r.Body); err != nil {
			return fmt.Errorf("result %s: %w", r.ID, err)
		}
	case StatusError, StatusRejected:
		if len(r.Body) != 0 {
			return fmt.Errorf("result %s: status %s carries a body", r.ID, r.Status)
		}
		if r.Error == "" {
			return fmt.Errorf("result %s: status %s needs an error text", r.ID, r.Status)
		}
		if err := validErrorText(r.Error); err != nil {
			return fmt.Errorf("result %s: %w", r.ID, err)
		}
	default:
		return fmt.Errorf("result %s: unknown status %q (want %s, %s or %s)", r.ID, truncate(r.Status), StatusOK, StatusError, StatusRejected)
	}
	return nil
}

// ParseResult reads a cmd-result payload strictly (at most MaxMessage
// bytes, one JSON object, no unknown or repeated fields, nothing after it)
// and validates it.
func ParseResult(b []byte) (Result, error) {
	var r Result
	if err := decodeStrictJSON(b, "result", resultField, &r); err != nil {
		return Result{}, err
	}
	if err := r.Validate(); err != nil {
		return Result{}, err
	}
	return r, nil
}

// Marshal validates the result and encodes it as Command.Marshal does.
func (r Result) Marshal() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return marshal("result", r)
}

// NewID returns a random command ID: 16 bytes from crypto/rand as 22
// characters of unpadded base64url. Unpredictable IDs keep anyone who sees
// one result from guessing the next command's ID.
func NewID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("command ID: read random bytes: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// ValidID reports whether s is a command ID: MinIDLength..MaxIDLength
// characters of [A-Za-z0-9_-].
func ValidID(s string) bool {
	if len(s) < MinIDLength || len(s) > MaxIDLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(isLowerOrDigit(c) || 'A' <= c && c <= 'Z' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidName reports whether s is a command name: 1..MaxNameLength
// characters of [a-z0-9._-], the first a letter or digit.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLength || !isLowerOrDigit(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !(isLowerOrDigit(c) || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func isLowerOrDigit(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
}

// CleanError makes s fit Result.Error: invalid UTF-8 becomes U+FFFD, every
// control character (line breaks included, and U+2028/U+2029) becomes a
// space, surrounding spaces go, and the text is cut to at most MaxError
// bytes on a character boundary. It returns "" only for a text with
// nothing else in it; the caller then supplies one.
func CleanError(s string) string {
	var b strings.Builder
	b.Grow(min(len(s), MaxError))
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			r = ' '
		}
		b.WriteRune(r)
	}
	out := strings.TrimSpace(b.String())
	if len(out) <= MaxError {
		return out
	}
	cut := MaxError
	for cut > 0 && !utf8.RuneStart(out[cut]) {
		cut--
	}
	return strings.TrimSpace(out[:cut])
}

// validErrorText checks an error text as CleanError would leave it.
func validErrorText(s string) error {
	switch {
	case len(s) > MaxError:
		return fmt.Errorf("error text of %d bytes exceeds the %d-byte limit", len(s), MaxError)
	case !utf8.ValidString(s):
		return errors.New("error text is not valid UTF-8")
	case CleanError(s) != s:
		return errors.New("error text must be one line without control characters or surrounding spaces")
	}
	return nil
}

// validBody checks an optional body: valid JSON, UTF-8 (RFC 8259; a
// device's C parser need not cope with anything else), within MaxBody.
// Duplicate keys inside it are the handler's business: Warden passes a
// body through without reading it.
func validBody(b json.RawMessage) error {
	switch {
	case len(b) == 0:
		return nil
	case len(b) > MaxBody:
		return fmt.Errorf("body of %d bytes exceeds the %d-byte limit", len(b), MaxBody)
	case !utf8.Valid(b):
		return errors.New("body is not valid UTF-8")
	case !json.Valid(b):
		return errors.New("body is not valid JSON")
	}
	return nil
}

func idError(what, id string) error {
	return fmt.Errorf("%s: id %q must be %d-%d characters of letters, digits, '_' or '-'", what, truncate(id), MinIDLength, MaxIDLength)
}

// commandField and resultField say which JSON names each message may
// carry, exactly.
func commandField(k string) bool {
	return k == "id" || k == "name" || k == "body" || k == "deadline"
}

func resultField(k string) bool {
	return k == "id" || k == "status" || k == "body" || k == "error"
}

// decodeStrictJSON decodes exactly one JSON object from b into v (a pointer
// to a struct whose JSON names allowed accepts). Beyond encoding/json's
// defaults it refuses input over MaxMessage bytes, anything but an object
// at the top level, keys that are not exactly one of the allowed names
// (encoding/json would match them without regard to case), duplicate keys
// (parsers disagree on which one wins, and a C implementation on the device
// must see what the server sees), and anything after the object. It is
// enrollproto's rule, repeated because a package's unexported code cannot
// be shared.
func decodeStrictJSON(b []byte, what string, allowed func(string) bool, v any) error {
	if len(b) > MaxMessage {
		return fmt.Errorf("%s: %d bytes exceed the %d-byte limit", what, len(b), MaxMessage)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%s: not JSON: %w", what, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("%s: expected a JSON object", what)
	}
	seen := make(map[string]bool, 4)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%s: malformed JSON: %w", what, err)
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%s: malformed JSON object", what)
		}
		if !allowed(key) {
			return fmt.Errorf("%s: unknown field %q", what, truncate(key))
		}
		if seen[key] {
			return fmt.Errorf("%s: field %q appears twice", what, key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("%s: field %q: %w", what, key, err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return fmt.Errorf("%s: malformed JSON: %w", what, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: trailing data after the JSON object", what)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// marshal encodes v compactly without HTML escaping, and checks the
// MaxMessage bound the reader applies.
func marshal(what string, v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("%s: encode: %w", what, err)
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("%s: encoded to %d bytes, over the %d-byte limit", what, len(b), MaxMessage)
	}
	return b, nil
}

// truncate shortens an untrusted string before it goes into an error
// message, so a peer cannot make a log line as long as its message.
func truncate(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
