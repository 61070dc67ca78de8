package config

import (
	"errors"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// day is the unit "d". Certificate lifetimes, token expiry and session
// expiry are thought of in days; 720h is a conversion an operator should not
// have to make. Daylight saving time plays no part: a day is 24 hours.
const day = 24 * time.Hour

// maxFractionScale bounds the fraction digits that count: beyond 18 a digit
// of even a day is worth less than a nanosecond, and 10^18 still fits in a
// uint64.
const maxFractionScale = 1e18

// ParseDuration reads a duration as operators write it in the configuration
// file, WARDEN_* variables and flags: Go's time.ParseDuration syntax plus the
// unit d (24 hours). Examples: "30d", "1d12h", "0.5d", "720h", "1h30m",
// "90s", "0".
//
// It is stricter than time.ParseDuration where leniency only hides
// mistakes:
//   - no sign: a negative duration is never a valid setting, and "+" adds
//     nothing;
//   - each unit at most once, largest first ("1d12h", not "12h1d" or
//     "30d30d"), so a value reads the way it adds up;
//   - a bare number other than "0" is refused: "30" is 30 of what?
//
// Fractions are allowed on any component ("1.5h", "0.5d") and truncated to
// the nanosecond, as time.ParseDuration does. Surrounding white space is
// ignored. The error says what is wrong but not the input, which every
// caller (flag parser, configuration error) already shows.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return 0, errors.New("empty duration; write a number with a unit, e.g. 30d or 90s")
	case s == "0":
		return 0, nil
	case s[0] == '-':
		return 0, errors.New("negative durations are not allowed")
	case s[0] == '+':
		return 0, errors.New("write the duration without a sign")
	}

	var total uint64
	var prev time.Duration // the previous component's unit; 0 before the first
	for rest := s; rest != ""; {
		// The number: digits, optionally a '.' and more digits.
		var whole, frac uint64
		scale := uint64(1)
		i, digits := 0, 0
		for ; i < len(rest) && isDigit(rest[i]); i++ {
			digit := uint64(rest[i] - '0')
			if whole > (math.MaxInt64-digit)/10 {
				return 0, errTooLarge
			}
			whole = whole*10 + digit
			digits++
		}
		if i < len(rest) && rest[i] == '.' {
			for i++; i < len(rest) && isDigit(rest[i]); i++ {
				if scale < maxFractionScale {
					frac = frac*10 + uint64(rest[i]-'0')
					scale *= 10
				}
				digits++
			}
		}
		if digits == 0 {
			return 0, errors.New("expected a number at " + strconv.Quote(rest) + "; write e.g. 30d, 1d12h or 90s")
		}
		number := rest[:i]
		rest = rest[i:]

		// The unit: everything up to the next number.
		j := 0
		for j < len(rest) && !isDigit(rest[j]) && rest[j] != '.' {
			j++
		}
		name := rest[:j]
		rest = rest[j:]
		if name == "" {
			if prev == 0 && rest == "" {
				return 0, errors.New("a duration needs a unit; write e.g. " + number + "d, " + number + "h or " + number + "s")
			}
			return 0, errors.New("missing unit after " + strconv.Quote(number))
		}
		unit, ok := durationUnit(name)
		if !ok {
			return 0, errors.New("unknown unit " + strconv.Quote(name) + "; use d, h, m, s, ms, us or ns")
		}
		if prev != 0 && unit >= prev {
			return 0, errors.New("units must go from largest to smallest, each once: write e.g. 1d12h, not 12h1d or 1d1d")
		}
		prev = unit

		size := uint64(unit)
		if whole > math.MaxInt64/size {
			return 0, errTooLarge
		}
		n := whole * size
		// frac/scale of the unit, exactly: frac < scale, so the product
		// frac*size is below scale*2^64 and the division cannot overflow.
		hi, lo := bits.Mul64(frac, size)
		q, _ := bits.Div64(hi, lo, scale)
		n += q
		if n > math.MaxInt64 || total > math.MaxInt64-n {
			return 0, errTooLarge
		}
		total += n
	}
	return time.Duration(total), nil
}

var errTooLarge = errors.New("too large; a duration can be at most about 292 years (106751d)")

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// durationUnit maps a unit to its size: Go's units plus d.
func durationUnit(name string) (time.Duration, bool) {
	switch name {
	case "d":
		return day, true
	case "h":
		return time.Hour, true
	case "m":
		return time.Minute, true
	case "s":
		return time.Second, true
	case "ms":
		return time.Millisecond, true
	case "us", "µs", "μs": // ASCII, U+00B5 micro sign, U+03BC Greek mu
		return time.Microsecond, true
	case "ns":
		return time.Nanosecond, true
	}
	return 0, false
}

// FormatDuration writes d the way ParseDuration reads it back: a whole
// number of days as days ("30d", "3650d"), anything else as
// time.Duration.String writes it minus trailing zero units ("36h", "1h30m",
// "5m", "1.5s"). Days are used only when exact, so that "36h" is not turned
// into a less familiar "1d12h". Negative values, which ParseDuration refuses
// but a validation message may need to show, get a leading '-'.
func FormatDuration(d time.Duration) string {
	if d != 0 && d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// DurationVar defines a flag that stores a duration in p, parsed with
// ParseDuration so that it accepts days ("--lifetime 30d") as well as Go
// durations, and shows its default in the same form. It replaces
// pflag.FlagSet.DurationVar, whose time.ParseDuration has no day unit.
// Read the value through p: FlagSet.GetDuration cannot parse "30d".
func DurationVar(fs *pflag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	fs.Var(newDurationValue(p, value), name, usage)
}

// durationValue is the pflag.Value behind DurationVar and the configuration
// flags of duration keys.
type durationValue struct{ p *time.Duration }

func newDurationValue(p *time.Duration, value time.Duration) *durationValue {
	*p = value
	return &durationValue{p: p}
}

// String writes the value for help text and for posflag. Zero is "0" rather
// than "0s" because pflag omits a default of "0" from help, and "(default
// 0s)" on --ttl would suggest the token expires at once.
func (v *durationValue) String() string {
	if v.p == nil || *v.p == 0 {
		return "0"
	}
	return FormatDuration(*v.p)
}

// Type is "duration", the word pflag prints as the flag's placeholder.
func (v *durationValue) Type() string { return "duration" }

// Set parses s with ParseDuration.
func (v *durationValue) Set(s string) error {
	d, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*v.p = d
	return nil
}
