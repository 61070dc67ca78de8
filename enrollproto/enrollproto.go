// Package enrollproto is the wire protocol of device onboarding and
// certificate renewal (docs/onboarding.md): the EST (RFC 7030 subset) paths,
// headers and bodies, the enrollment proof over a factory secret, and the
// MQTT topics and messages of private/<id>/cert/... and private/<id>/claim.
// The device SDK and Warden's server side share it, and a C implementation
// can check itself against its test vectors.
//
// It holds only message shapes and their checks. Nothing here decides
// whether an enrollment is allowed, and nothing here parses a CSR or trusts
// a certificate: the server's pki package parses CSRs and the device checks
// the certificates it receives against its pinned root.
package enrollproto

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// maxCerts bounds the certificates one certs-only body or one CertResponse
// may carry. A leaf plus its issuing CA is the usual answer and root plus a
// few issuing CAs (during a rotation) the largest; 16 leaves room without
// letting a peer make the reader parse thousands.
const maxCerts = 16

// validDeviceID checks the device-ID grammar [A-Za-z0-9][A-Za-z0-9_-]{0,63}.
// It repeats internal/identity's rule because a public package must not
// import internal/; the grammar excludes every MQTT wildcard and separator,
// which is what lets Topic substitute an ID into a topic.
func validDeviceID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// deviceIDError says what a valid device ID looks like, so an operator who
// mistyped one in a secret file knows what to fix.
func deviceIDError(what, id string) error {
	return fmt.Errorf("%s: device ID %q must be 1-64 characters of letters, digits, '_' or '-', starting with a letter or digit", what, truncate(id))
}

// maxRequestID bounds a request ID: it is echoed back in the response and
// logged, so it must stay short and safe to print.
const maxRequestID = 64

// validRequestID checks 1..64 characters of [A-Za-z0-9_-].
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > maxRequestID {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isBase64URLChar(s[i]) {
			return false
		}
	}
	return true
}

// isBase64URLChar reports whether c is in the base64url alphabet (RFC 4648
// section 5), which is also the request-ID alphabet.
func isBase64URLChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// validClaimToken checks a claim token's size and alphabet: a compact JWE is
// five base64url parts joined by '.'. The token is opaque to the device and
// to this package; the server decrypts it and audits why a bad one failed,
// so only what would be unsafe to carry or log is refused here.
func validClaimToken(s string) bool {
	if len(s) == 0 || len(s) > MaxClaimToken {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != '.' && !isBase64URLChar(c) {
			return false
		}
	}
	return true
}

// decodeStrictJSON decodes exactly one JSON object from b into v (a pointer
// to a struct). Beyond encoding/json's defaults it refuses input over limit
// bytes, anything but an object at the top level, keys that are not exactly
// one of the struct's JSON names (encoding/json would match them without
// regard to case), duplicate keys (parsers disagree on which one wins, and a
// C implementation on the device must see what the server sees), and
// anything after the object.
func decodeStrictJSON(b []byte, limit int, what string, v any) error {
	if len(b) > limit {
		return fmt.Errorf("%s: %d bytes exceed the %d-byte limit", what, len(b), limit)
	}
	allowed := jsonFieldNames(v)
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%s: not JSON: %w", what, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("%s: expected a JSON object", what)
	}
	seen := make(map[string]bool, len(allowed))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%s: malformed JSON: %w", what, err)
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%s: malformed JSON object", what)
		}
		if !allowed[key] {
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

// jsonFieldNames lists the JSON names of the struct v points to.
func jsonFieldNames(v any) map[string]bool {
	t := reflect.TypeOf(v).Elem()
	names := make(map[string]bool, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		names[name] = true
	}
	return names
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

// base64LineLength is RFC 2045's limit on an encoded line.
const base64LineLength = 76

// encodeBase64Lines encodes der as base64 (StdEncoding, padded) in lines of
// at most 76 characters, each ending in CRLF (RFC 2045).
func encodeBase64Lines(der []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(der)
	out := make([]byte, 0, base64LinesLen(len(der)))
	for len(enc) > 0 {
		n := min(base64LineLength, len(enc))
		out = append(out, enc[:n]...)
		out = append(out, '\r', '\n')
		enc = enc[n:]
	}
	return out
}

// base64LinesLen is len(encodeBase64Lines(x)) for len(x) == n.
func base64LinesLen(n int) int {
	enc := base64.StdEncoding.EncodedLen(n)
	lines := (enc + base64LineLength - 1) / base64LineLength
	return enc + 2*lines
}

// fitsBody reports whether DER of n bytes, encoded by encodeBase64Lines,
// fits in MaxBody. Decoders refuse DER that does not, so anything they
// accept can be sent on by the matching encoder without exceeding the bound
// the other side reads with.
func fitsBody(n int) bool {
	return base64LinesLen(n) <= MaxBody
}

// isBodySpace reports the whitespace an EST body may carry between base64
// characters.
func isBodySpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\n'
}

// decodeBase64Body decodes padded standard base64 with any CR, LF, space or
// tab ignored. Strict decoding refuses non-zero padding bits, so the same
// DER has one encoding and a decoded body re-encodes to itself.
func decodeBase64Body(body []byte) ([]byte, error) {
	compact := make([]byte, 0, len(body))
	for _, c := range body {
		if !isBodySpace(c) {
			compact = append(compact, c)
		}
	}
	if len(compact) == 0 {
		return nil, errors.New("empty")
	}
	der := make([]byte, base64.StdEncoding.DecodedLen(len(compact)))
	n, err := base64.StdEncoding.Strict().Decode(der, compact)
	if err != nil {
		return nil, fmt.Errorf("not valid base64: %w", err)
	}
	return der[:n], nil
}
