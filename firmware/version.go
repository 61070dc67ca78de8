package firmware

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
)

// Version is an MCUboot image version, as the image header carries it
// (struct image_version in MCUboot's bootutil/image.h).
type Version struct {
	Major    uint8
	Minor    uint8
	Revision uint16
	Build    uint32
}

// ParseVersion parses "major.minor.revision" or "major.minor.revision+build",
// the form imgtool's --version takes, with each number in the range of its
// header field. It refuses signs, spaces, leading zeros and a missing or
// empty component, so that every accepted string is the one String gives
// back (except that String always writes the build number).
func ParseVersion(s string) (Version, error) {
	main, build, hasBuild := strings.Cut(s, "+")
	parts := strings.Split(main, ".")
	if len(parts) != 3 {
		return Version{}, fmt.Errorf("%w: version %q: want major.minor.revision[+build]", ErrMalformed, s)
	}
	major, err := parseVersionField(s, "major", parts[0], 8)
	if err != nil {
		return Version{}, err
	}
	minor, err := parseVersionField(s, "minor", parts[1], 8)
	if err != nil {
		return Version{}, err
	}
	rev, err := parseVersionField(s, "revision", parts[2], 16)
	if err != nil {
		return Version{}, err
	}
	var b uint64
	if hasBuild {
		if b, err = parseVersionField(s, "build", build, 32); err != nil {
			return Version{}, err
		}
	}
	return Version{Major: uint8(major), Minor: uint8(minor), Revision: uint16(rev), Build: uint32(b)}, nil
}

// parseVersionField accepts only plain decimal digits without a leading zero
// (strconv.ParseUint alone would accept "+1" and "0x1" in some modes, and
// "01" would make two spellings of one version).
func parseVersionField(full, name, f string, bits int) (uint64, error) {
	if f == "" {
		return 0, fmt.Errorf("%w: version %q: empty %s number", ErrMalformed, full, name)
	}
	for i := 0; i < len(f); i++ {
		if f[i] < '0' || f[i] > '9' {
			return 0, fmt.Errorf("%w: version %q: %s number %q is not a decimal number", ErrMalformed, full, name, f)
		}
	}
	if len(f) > 1 && f[0] == '0' {
		return 0, fmt.Errorf("%w: version %q: %s number %q has a leading zero", ErrMalformed, full, name, f)
	}
	n, err := strconv.ParseUint(f, 10, bits)
	if err != nil {
		return 0, fmt.Errorf("%w: version %q: %s number %q does not fit in %d bits", ErrMalformed, full, name, f, bits)
	}
	return n, nil
}

// String returns the version as "major.minor.revision+build", always with
// the build number, so that two different versions never print the same.
func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d+%d", v.Major, v.Minor, v.Revision, v.Build)
}

// Compare returns -1, 0 or +1 as v is lower than, equal to or higher than o,
// comparing major, minor, revision and then build. (MCUboot's own downgrade
// check ignores the build number unless MCUBOOT_VERSION_CMP_USE_BUILD_NUMBER
// is set; Warden's release policy always counts it.)
func (v Version) Compare(o Version) int {
	if c := cmp.Compare(v.Major, o.Major); c != 0 {
		return c
	}
	if c := cmp.Compare(v.Minor, o.Minor); c != 0 {
		return c
	}
	if c := cmp.Compare(v.Revision, o.Revision); c != 0 {
		return c
	}
	return cmp.Compare(v.Build, o.Build)
}
