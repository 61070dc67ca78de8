package registry

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"unicode"
	"unicode/utf8"
)

// Input limits. They keep records small enough to list and log, and keep
// control characters out of operator-facing output.
const (
	MaxTags        = 64
	MaxTagKeyLen   = 64
	MaxTagValueLen = 256
	MaxModelLen    = 128
	MaxReasonLen   = 1024
)

// invalidError marks an error as the caller's fault: errors.Is(err,
// ErrInvalid) holds, while the message and the wrapped cause (for example
// identity.ErrInvalidID) stay as they were.
type invalidError struct{ err error }

func (e invalidError) Error() string        { return e.err.Error() }
func (e invalidError) Unwrap() error        { return e.err }
func (e invalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(err error) error { return invalidError{err} }

func invalidf(format string, args ...any) error { return invalid(fmt.Errorf(format, args...)) }

func isTagKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
}

// ValidateTags checks device tags: at most MaxTags, keys of 1-64
// characters from [a-z0-9_.-], values valid UTF-8 of at most 256 bytes
// without control characters. Errors wrap ErrInvalid.
func ValidateTags(tags map[string]string) error {
	if len(tags) > MaxTags {
		return invalidf("%d tags; at most %d are allowed", len(tags), MaxTags)
	}
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		if k == "" || len(k) > MaxTagKeyLen {
			return invalidf("tag key %q must be 1-%d characters", k, MaxTagKeyLen)
		}
		for i := 0; i < len(k); i++ {
			if !isTagKeyByte(k[i]) {
				return invalidf("tag key %q may contain only a-z, 0-9, '_', '.' and '-'", k)
			}
		}
		if err := checkText("value of tag "+k, tags[k], MaxTagValueLen); err != nil {
			return err
		}
	}
	return nil
}

// checkText accepts valid UTF-8 of at most limit bytes with no control
// characters.
func checkText(what, s string, limit int) error {
	if len(s) > limit {
		return invalidf("%s is %d bytes; at most %d are allowed", what, len(s), limit)
	}
	if !utf8.ValidString(s) {
		return invalidf("%s is not valid UTF-8", what)
	}
	for _, c := range s {
		if unicode.IsControl(c) {
			return invalidf("%s contains control character %U", what, c)
		}
	}
	return nil
}

// asInvalid marks an error from a validator in another package (identity,
// pki) as the caller's fault.
func asInvalid(err error) error {
	if err == nil || errors.Is(err, ErrInvalid) {
		return err
	}
	return invalid(err)
}
