package config

import (
	"strings"
	"testing"
)

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in      string
		want    ByteSize
		wantErr string
	}{
		{in: "0", want: 0},
		{in: "512", want: 512},
		{in: "512B", want: 512},
		{in: "64KiB", want: 64 * KiB},
		{in: "64kib", want: 64 * KiB},
		{in: " 1 MiB ", want: MiB},
		{in: "2GiB", want: 2 * GiB},
		{in: "", wantErr: "empty"},
		{in: "KiB", wantErr: "starts with a whole number"},
		{in: "-1", wantErr: "starts with a whole number"},
		{in: "64KB", wantErr: "ambiguous"},
		{in: "1M", wantErr: "ambiguous"},
		{in: "1.5MiB", wantErr: "fractions"},
		{in: "1TiB", wantErr: "unknown unit"},
		{in: "99999999999999999999", wantErr: "too large"},
		{in: "9007199254740992GiB", wantErr: "too large"},
	}
	for _, tt := range tests {
		got, err := ParseByteSize(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseByteSize(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseByteSize(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestByteSizeStringRoundTrip(t *testing.T) {
	for b, want := range map[ByteSize]string{
		0: "0", 100: "100", KiB: "1KiB", 64 * KiB: "64KiB", 1536 * KiB: "1536KiB", MiB: "1MiB", 256 * MiB: "256MiB", 3 * GiB: "3GiB", 1025: "1025",
	} {
		if got := b.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int64(b), got, want)
		}
		text, err := b.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back ByteSize
		if err := back.UnmarshalText(text); err != nil || back != b {
			t.Errorf("round trip of %d: got %d, %v", int64(b), int64(back), err)
		}
	}
	var b ByteSize
	if err := b.UnmarshalText([]byte("lots")); err == nil {
		t.Error("UnmarshalText(lots) succeeded")
	}
}
