package config

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

const testDay = 24 * time.Hour

func TestParseDuration(t *testing.T) {
	valid := []struct {
		in   string
		want time.Duration
	}{
		{"0", 0},
		{"0d", 0},
		{"30d", 30 * testDay},
		{"1d12h", 36 * time.Hour},
		{"1d12h30m15s", 36*time.Hour + 30*time.Minute + 15*time.Second},
		{"0.5d", 12 * time.Hour},
		{".5d", 12 * time.Hour},
		{"1.5d", 36 * time.Hour},
		{"1.d", testDay},
		{"3650d", 10 * 365 * testDay},
		{"36500d", 100 * 365 * testDay},
		{"720h", 720 * time.Hour},
		{"1h30m", 90 * time.Minute},
		{"1.5h", 90 * time.Minute},
		{"90s", 90 * time.Second},
		{"90m", 90 * time.Minute},
		{"500ms", 500 * time.Millisecond},
		{"1s500ms", 1500 * time.Millisecond},
		{"10us", 10 * time.Microsecond},
		{"10µs", 10 * time.Microsecond},
		{"10μs", 10 * time.Microsecond},
		{"7ns", 7},
		{" 30d\n", 30 * testDay}, // a value read from a file or a variable
		{"0.000000000000000000001d", 0},
		{"0.000001d", 86400 * time.Microsecond},
		{"0.00000000000001d", 0}, // 0.864ns, truncated to the nanosecond
		{"1.0000000000000000000000001h", time.Hour},
		{"106751d23h47m16s854ms775us807ns", math.MaxInt64},
		{"9223372036854775807ns", math.MaxInt64},
		{"00030d", 30 * testDay},
	}
	for _, tt := range valid {
		got, err := ParseDuration(tt.in)
		if err != nil {
			t.Errorf("ParseDuration(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}

	invalid := []struct {
		in, reason string
	}{
		{"", "empty duration"},
		{"  ", "empty duration"},
		{"d", "expected a number"},
		{"30", "a duration needs a unit; write e.g. 30d, 30h or 30s"},
		{"1.5", "a duration needs a unit"},
		{"30d12", `missing unit after "12"`},
		{"30d0", `missing unit after "0"`},
		{"-1d", "negative"},
		{"-1h", "negative"},
		{"-0", "negative"},
		{"+1d", "without a sign"},
		{"30x", `unknown unit "x"`},
		{"30D", `unknown unit "D"`},
		{"30 d", `unknown unit " d"`},
		{"30days", `unknown unit "days"`},
		{"1e9d", `unknown unit "e"`},
		{"30d30d", "largest to smallest"},
		{"12h1d", "largest to smallest"},
		{"1h1h", "largest to smallest"},
		{"1us1µs", "largest to smallest"},
		{"1d.", "expected a number"},
		{"1d-1h", `unknown unit "d-"`},
		{".d", "expected a number"},
		{"106752d", "too large"},
		{"106751d24h", "too large"},
		{"9223372036854775808ns", "too large"},
		{"99999999999999999999d", "too large"},
		{"1000000000000000000000000000000h", "too large"},
	}
	for _, tt := range invalid {
		got, err := ParseDuration(tt.in)
		if err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", tt.in, got)
			continue
		}
		if !strings.Contains(err.Error(), tt.reason) {
			t.Errorf("ParseDuration(%q) error %q does not say %q", tt.in, err, tt.reason)
		}
	}
}

// Without days, ParseDuration agrees with time.ParseDuration on everything
// it accepts.
func TestParseDurationMatchesGo(t *testing.T) {
	for _, s := range []string{"0", "1h", "1h30m", "90s", "2h45m30.5s", "1.5h", "100ms", "3us", "1m1s1ms1us1ns", "2562047h47m16.854775807s"} {
		got, err := ParseDuration(s)
		if err != nil {
			t.Fatalf("ParseDuration(%q): %v", s, err)
		}
		want, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("time.ParseDuration(%q): %v", s, err)
		}
		if got != want {
			t.Errorf("ParseDuration(%q) = %v, time.ParseDuration = %v", s, got, want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{5 * time.Minute, "5m"},
		{90 * time.Minute, "1h30m"},
		{90 * time.Second, "1m30s"},
		{10 * time.Second, "10s"},
		{1500 * time.Millisecond, "1.5s"},
		{time.Hour + time.Millisecond, "1h0m0.001s"},
		{36 * time.Hour, "36h"}, // not a whole number of days: hours read better
		{testDay, "1d"},
		{168 * time.Hour, "7d"},
		{720 * time.Hour, "30d"},
		{DefaultCertLifetime, "3650d"},
		{maxCertLifetime, "36500d"},
		{-time.Minute, "-1m"},
		{-2 * testDay, "-2d"},
		{math.MaxInt64, "2562047h47m16.854775807s"},
		{math.MinInt64, "-2562047h47m16.854775808s"},
	}
	for _, tt := range tests {
		got := FormatDuration(tt.d)
		if got != tt.want {
			t.Errorf("FormatDuration(%d) = %q, want %q", int64(tt.d), got, tt.want)
		}
		if tt.d < 0 {
			continue
		}
		back, err := ParseDuration(got)
		if err != nil || back != tt.d {
			t.Errorf("ParseDuration(FormatDuration(%v) = %q) = %v, %v; want it back", tt.d, got, back, err)
		}
	}
}

// Days work in every source: the file, the environment and flags.
func TestLoadDurationInDays(t *testing.T) {
	hermetic(t)
	const month = 30 * testDay
	tests := []struct {
		name string
		opts func(t *testing.T) LoadOptions
		want time.Duration
	}{
		{"file", func(t *testing.T) LoadOptions {
			return LoadOptions{File: writeFile(t, "devices:\n  cert_lifetime: 30d\n")}
		}, month},
		{"file, fraction and hours", func(t *testing.T) LoadOptions {
			return LoadOptions{File: writeFile(t, "devices:\n  cert_lifetime: 0.5d12h\n")}
		}, testDay},
		{"environment", func(t *testing.T) LoadOptions {
			return LoadOptions{Environ: []string{"WARDEN_DEVICES__CERT_LIFETIME=30d"}}
		}, month},
		{"flag", func(t *testing.T) LoadOptions {
			return LoadOptions{Flags: newFlags(t, "--cert-lifetime", "30d")}
		}, month},
		{"flag with =", func(t *testing.T) LoadOptions {
			return LoadOptions{Flags: newFlags(t, "--cert-lifetime=1d12h")}
		}, 36 * time.Hour},
		{"old flag name", func(t *testing.T) LoadOptions {
			return LoadOptions{Flags: newFlags(t, "--device-cert-lifetime", "45d")}
		}, 45 * testDay},
		{"flag beats environment beats file", func(t *testing.T) LoadOptions {
			return LoadOptions{
				File:    writeFile(t, "devices: {cert_lifetime: 1d}\n"),
				Environ: []string{"WARDEN_DEVICES__CERT_LIFETIME=2d"},
				Flags:   newFlags(t, "--cert-lifetime", "3d"),
			}
		}, 3 * testDay},
		{"untouched flag keeps the environment", func(t *testing.T) LoadOptions {
			return LoadOptions{
				File:    writeFile(t, "devices: {cert_lifetime: 1d}\n"),
				Environ: []string{"WARDEN_DEVICES__CERT_LIFETIME=2d"},
				Flags:   newFlags(t, "--service-cert-lifetime", "90d"),
			}
		}, 2 * testDay},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustLoad(t, tt.opts(t))
			if c.Devices.CertLifetime != tt.want {
				t.Errorf("devices.cert_lifetime = %v, want %v", c.Devices.CertLifetime, tt.want)
			}
			if got := c.Devices.DeviceCertLifetime(); got != tt.want {
				t.Errorf("DeviceCertLifetime() = %v, want %v", got, tt.want)
			}
		})
	}

	// Every duration key takes days, not just the lifetimes.
	c := mustLoad(t, LoadOptions{
		File:    writeFile(t, "limits:\n  max_session_expiry: 14d\n  flap_ban: 1d\n"),
		Environ: []string{"WARDEN_DEVICES__SERVICE_CERT_LIFETIME=90d"},
		Flags:   newFlags(t, "--flap-window", "0.5d"),
	})
	if c.Limits.MaxSessionExpiry != 14*testDay || c.Limits.FlapBan != testDay ||
		c.Devices.ServiceCertLifetime != 90*testDay || c.Limits.FlapWindow != 12*time.Hour {
		t.Errorf("limits %+v, service lifetime %v: days not applied", c.Limits, c.Devices.ServiceCertLifetime)
	}
}

func TestLoadDurationErrors(t *testing.T) {
	hermetic(t)
	tests := []struct {
		name  string
		opts  func(t *testing.T) LoadOptions
		wants []string
	}{
		{"file, days in the wrong place", func(t *testing.T) LoadOptions {
			return LoadOptions{File: writeFile(t, "devices:\n  cert_lifetime: 12h30d\n")}
		}, []string{`devices.cert_lifetime = "12h30d": not a duration (units must go from largest to smallest`}},
		{"environment, negative", func(t *testing.T) LoadOptions {
			return LoadOptions{Environ: []string{"WARDEN_DEVICES__CERT_LIFETIME=-30d"}}
		}, []string{`environment variable WARDEN_DEVICES__CERT_LIFETIME: devices.cert_lifetime = "-30d": not a duration (negative`}},
		{"environment, too long", func(t *testing.T) LoadOptions {
			return LoadOptions{Environ: []string{"WARDEN_DEVICES__CERT_LIFETIME=36501d"}}
		}, []string{"devices.cert_lifetime = 36501d: must be 0 (the default, 3650d) or between 1h and 36500d"}},
		{"flag, too short", func(t *testing.T) LoadOptions {
			return LoadOptions{Flags: newFlags(t, "--cert-lifetime", "0.01d")}
		}, []string{"devices.cert_lifetime = 14m24s: must be 0 (the default, 3650d) or between 1h and 36500d"}},
		{"old and new flag together", func(t *testing.T) LoadOptions {
			return LoadOptions{Flags: newFlags(t, "--cert-lifetime", "30d", "--device-cert-lifetime", "30d")}
		}, []string{"flag --device-cert-lifetime: is the old name of --cert-lifetime; give only --cert-lifetime"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantContains(t, loadErr(t, tt.opts(t)), tt.wants...)
		})
	}
}

// The flag parser itself refuses a bad duration, naming the flag.
func TestDurationFlagParseErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--cert-lifetime", "30"},
		{"--cert-lifetime", "thirty days"},
		{"--device-cert-lifetime", "-1d"},
		{"--service-cert-lifetime", "1y"},
		{"--flap-ban", "1h1d"},
	} {
		fs := pflag.NewFlagSet("warden", pflag.ContinueOnError)
		fs.SetOutput(&strings.Builder{})
		AddServeFlags(fs)
		err := fs.Parse(args)
		if err == nil || !strings.Contains(err.Error(), args[0]) || !strings.Contains(err.Error(), args[1]) {
			t.Errorf("Parse(%q) = %v, want an error naming the flag and the value", args, err)
		}
	}
}

func TestDurationVar(t *testing.T) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.SetOutput(&strings.Builder{})
	var ttl, every, lifetime time.Duration
	DurationVar(fs, &ttl, "ttl", 0, "expiry, e.g. 90d (0 = none)")
	DurationVar(fs, &every, "every", 5*time.Second, "interval")
	DurationVar(fs, &lifetime, "lifetime", 0, "certificate lifetime")
	if every != 5*time.Second {
		t.Errorf("default not stored: every = %v", every)
	}

	help := fs.FlagUsages()
	wantContains(t, help, "--ttl duration", "--every duration", "(default 5s)")
	if strings.Contains(help, "default 0") {
		t.Errorf("help shows a zero default:\n%s", help)
	}

	if err := fs.Parse([]string{"--ttl", "90d", "--lifetime=1d12h"}); err != nil {
		t.Fatal(err)
	}
	if ttl != 90*testDay || lifetime != 36*time.Hour || every != 5*time.Second {
		t.Errorf("ttl %v, lifetime %v, every %v", ttl, lifetime, every)
	}
	if got := fs.Lookup("ttl").Value.String(); got != "90d" {
		t.Errorf("--ttl shows as %q, want 90d", got)
	}

	err := fs.Parse([]string{"--ttl", "90"})
	if err == nil || !strings.Contains(err.Error(), `invalid argument "90" for "--ttl" flag: a duration needs a unit`) {
		t.Errorf("Parse --ttl 90: %v", err)
	}
}

// Old flag names are registered, point at a flag of the table, and are kept
// out of help.
func TestFlagAliases(t *testing.T) {
	fs := newFlags(t)
	help := fs.FlagUsages()
	specs := make(map[string]bool)
	for _, s := range flagSpecs() {
		specs[s.name] = true
	}
	for _, a := range flagAliases() {
		if !specs[a.canonical] || specs[a.name] {
			t.Errorf("alias --%s: --%s is not a flag of the table, or the alias is", a.name, a.canonical)
		}
		if f := fs.Lookup(a.name); f == nil || f.Deprecated == "" || !f.Hidden {
			t.Errorf("--%s is not a hidden, deprecated alias: %+v", a.name, f)
		}
		if strings.Contains(help, "--"+a.name+" ") {
			t.Errorf("help shows --%s:\n%s", a.name, help)
		}
	}
	wantContains(t, help, "--cert-lifetime duration")
}
