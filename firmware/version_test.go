package firmware_test

import (
	"errors"
	"testing"

	"github.com/warden-iot/warden/firmware"
)

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want firmware.Version
		str  string
	}{
		{"0.0.0", firmware.Version{}, "0.0.0+0"},
		{"1.2.3", firmware.Version{Major: 1, Minor: 2, Revision: 3}, "1.2.3+0"},
		{"1.2.3+4", firmware.Version{Major: 1, Minor: 2, Revision: 3, Build: 4}, "1.2.3+4"},
		{"1.2.3+0", firmware.Version{Major: 1, Minor: 2, Revision: 3}, "1.2.3+0"},
		{"255.255.65535+4294967295", firmware.Version{Major: 255, Minor: 255, Revision: 65535, Build: 4294967295}, "255.255.65535+4294967295"},
		{"10.20.300+4000", firmware.Version{Major: 10, Minor: 20, Revision: 300, Build: 4000}, "10.20.300+4000"},
	} {
		got, err := firmware.ParseVersion(tc.in)
		if err != nil || got != tc.want || got.String() != tc.str {
			t.Errorf("ParseVersion(%q) = %+v %q, %v; want %+v %q", tc.in, got, got.String(), err, tc.want, tc.str)
		}
		again, err := firmware.ParseVersion(got.String())
		if err != nil || again != got {
			t.Errorf("String of %q does not parse back: %v", tc.in, err)
		}
	}
	for _, in := range []string{
		"", "1", "1.2", "1.2.3.4", "1.2.3+", "+1.2.3", "1.2.3+4+5", "256.0.0", "0.256.0", "0.0.65536",
		"0.0.0+4294967296", "-1.2.3", "1.-2.3", "1.2.+3", "1.2.3+-4", "+1.2.3+4", " 1.2.3", "1.2.3 ", "1. 2.3",
		"01.2.3", "1.02.3", "1.2.03", "1.2.3+04", "0x1.2.3", "1..3", "a.b.c", "1.2.3+a", "1,2,3", "１.2.3",
	} {
		if v, err := firmware.ParseVersion(in); !errors.Is(err, firmware.ErrMalformed) {
			t.Errorf("ParseVersion(%q) = %v, %v; want ErrMalformed", in, v, err)
		}
	}
}

func TestVersionCompare(t *testing.T) {
	order := []string{"0.0.0", "0.0.0+1", "0.0.1", "0.0.255+9", "0.0.256", "0.1.0", "0.2.0+0", "1.0.0", "1.0.0+4294967295", "1.1.0", "2.0.0", "255.255.65535+4294967295"}
	for i, a := range order {
		for j, b := range order {
			va, _ := firmware.ParseVersion(a)
			vb, _ := firmware.ParseVersion(b)
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := va.Compare(vb); got != want {
				t.Errorf("%s.Compare(%s) = %d, want %d", a, b, got, want)
			}
		}
	}
}
