package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ByteSize is a number of bytes. In configuration it is written as a plain
// integer (bytes) or a whole number with a binary unit: B, KiB, MiB, GiB.
type ByteSize int64

// Binary size units.
const (
	KiB ByteSize = 1 << 10
	MiB ByteSize = 1 << 20
	GiB ByteSize = 1 << 30
)

// ParseByteSize reads "65536", "64KiB", "1 MiB" or "512B". Units are binary
// and case-insensitive; decimal units (KB, MB) are refused because their
// meaning (1000 or 1024) is ambiguous, and fractions are refused so that the
// value is exact.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, errors.New("empty size")
	}
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, errors.New("a size starts with a whole number of bytes or units")
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	var mult ByteSize
	switch strings.ToLower(unit) {
	case "", "b":
		mult = 1
	case "kib":
		mult = KiB
	case "mib":
		mult = MiB
	case "gib":
		mult = GiB
	case "k", "kb", "m", "mb", "g", "gb":
		return 0, fmt.Errorf("unit %q is ambiguous; use KiB, MiB or GiB (powers of 1024)", unit)
	default:
		if strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ",") {
			return 0, errors.New("fractions are not accepted; use a smaller unit (1536KiB, not 1.5MiB)")
		}
		return 0, fmt.Errorf("unknown unit %q; use B, KiB, MiB or GiB", unit)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt64/int64(mult) {
		return 0, errors.New("too large")
	}
	return ByteSize(n) * mult, nil
}

// String writes the size in the largest binary unit that divides it exactly,
// so that 65536 reads as 64KiB and 100 as 100.
func (b ByteSize) String() string {
	switch {
	case b != 0 && b%GiB == 0:
		return strconv.FormatInt(int64(b/GiB), 10) + "GiB"
	case b != 0 && b%MiB == 0:
		return strconv.FormatInt(int64(b/MiB), 10) + "MiB"
	case b != 0 && b%KiB == 0:
		return strconv.FormatInt(int64(b/KiB), 10) + "KiB"
	default:
		return strconv.FormatInt(int64(b), 10)
	}
}

// MarshalText writes the String form, so a dumped configuration reads back.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText reads the forms ParseByteSize accepts.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := ParseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}
