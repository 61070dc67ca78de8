package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzLoadYAML feeds arbitrary bytes to Load as the configuration file. Load
// must never panic, and whatever it accepts must pass Validate: a config
// that loads is a config that is safe to start with.
func FuzzLoadYAML(f *testing.F) {
	f.Add([]byte(Example()))
	f.Add([]byte(""))
	f.Add([]byte("mqtt:\n  adr: :1883\n"))
	f.Add([]byte("limits:\n  max_packet_size: 1MiB\n  connect_timeout: 7d\n  publish_burst: 1.5\n"))
	f.Add([]byte("hostnames: [a.example, 192.0.2.1, [x], {a: b}]\n"))
	f.Add([]byte("mqtts: {addr: \"[::1]:0\", tls_profile: compat}\nwss: {addr: \":0\", path: /ws}\n"))
	f.Add([]byte("a: &a [*a, *a]\nb: *a\n"))
	f.Add([]byte("? [a, b]\n: 1\n1: 2\n"))
	f.Add([]byte("limits.max_packet_size: 2KiB\n"))
	f.Add([]byte("limits: {publish_rate: .nan, max_inflight: 18446744073709551615}\n"))
	f.Add([]byte("\t- bad"))
	f.Add([]byte("data: !!binary aGVsbG8=\nlog: {level: ~}\n"))
	f.Add([]byte("monitor:\n  silence: {models: [{model: a, heartbeat: 1h}, {model: a}, x, [1]]}\n  webhook: {url: http://x, secret_file: s}\n  publish_rate: {factor: .inf}\n"))

	// One file per fuzz process, rewritten for each input: inputs run one
	// at a time within a process, and a directory per input would make
	// file-system churn, not Load, the bottleneck.
	p := filepath.Join(f.TempDir(), "warden.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(LoadOptions{File: p})
		if err != nil {
			if c != nil {
				t.Fatalf("Load returned a config with error %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Load accepted a config that fails Validate: %v", err)
		}
		if !filepath.IsAbs(c.Data) {
			t.Fatalf("Data %q is not absolute", c.Data)
		}
	})
}

// FuzzParseDuration feeds arbitrary strings to ParseDuration, which reads
// operator input from the file, the environment and flags. It must never
// panic or return a negative duration; what it accepts must survive a trip
// through FormatDuration; and where the input has no days and no fraction it
// must agree with time.ParseDuration, whose syntax it extends.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{
		"0", "30d", "1d12h", "0.5d", "720h", "1h30m", "90s", "500ms", "10µs", "10μs", "7ns",
		"", "d", "30", "-1d", "+1d", "30x", "1e9d", "30d30d", "12h1d", ".d", "1.d", " 30d ",
		"106751d23h47m16s854ms775us807ns", "106752d", "9223372036854775808ns",
		"0.00000000000000000000000000001d", "99999999999999999999999d",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			if d != 0 || err.Error() == "" {
				t.Fatalf("ParseDuration(%q) = %v, %q: want 0 and a reason", s, d, err)
			}
			return
		}
		if d < 0 {
			t.Fatalf("ParseDuration(%q) = %v, negative", s, d)
		}
		text := FormatDuration(d)
		if back, err := ParseDuration(text); err != nil || back != d {
			t.Fatalf("ParseDuration(%q) = %v; FormatDuration gives %q, which parses to %v, %v", s, d, text, back, err)
		}
		trimmed := strings.TrimSpace(s)
		if !strings.ContainsAny(trimmed, "d.") {
			want, err := time.ParseDuration(trimmed)
			if err != nil || want != d {
				t.Fatalf("ParseDuration(%q) = %v, but time.ParseDuration = %v, %v", s, d, want, err)
			}
		}
	})
}
