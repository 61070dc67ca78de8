package config

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// writeFile writes a config file in a fresh directory and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "warden.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newFlags returns a flag set with every Warden flag, parsed from args.
func newFlags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("warden", pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // the warning for an old flag name
	AddGlobalFlags(fs)
	AddServeFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return fs
}

// hermetic moves the test into an empty directory so that no ./warden.yaml
// is picked up by accident.
func hermetic(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Chdir(dir)
	return dir
}

func mustLoad(t *testing.T, opts LoadOptions) *Config {
	t.Helper()
	c, err := Load(opts)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

// loadErr loads and returns the error text, failing if there was none.
func loadErr(t *testing.T, opts LoadOptions) string {
	t.Helper()
	c, err := Load(opts)
	if err == nil {
		t.Fatalf("Load succeeded, want an error; config: %+v", c)
	}
	if c != nil {
		t.Errorf("Load returned a config along with an error")
	}
	return err.Error()
}

func wantContains(t *testing.T, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("error does not contain %q:\n%s", w, got)
		}
	}
}

func TestLoadNoSourcesIsDefault(t *testing.T) {
	dir := hermetic(t)
	got := mustLoad(t, LoadOptions{})
	want := Default()
	want.Data = filepath.Join(dir, "warden-data")
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("Load() = %+v\nwant %+v", *got, want)
	}
}

func TestPaths(t *testing.T) {
	hermetic(t)
	c := mustLoad(t, LoadOptions{Environ: []string{"WARDEN_DATA=rel/data"}})
	p := c.Paths()
	if !filepath.IsAbs(p.Data) {
		t.Fatalf("Data %q is not absolute", p.Data)
	}
	want := map[string]string{
		p.MasterKey:   filepath.Join(p.Data, "master.key"),
		p.PKI:         filepath.Join(p.Data, "pki"),
		p.RegistryDB:  filepath.Join(p.Data, "registry.db"),
		p.BrokerDB:    filepath.Join(p.Data, "broker.db"),
		p.AdminSocket: filepath.Join(p.Data, "warden.sock"),
		p.CRLDER:      filepath.Join(p.Data, "pki", "crl.der"),
		p.CRLPEM:      filepath.Join(p.Data, "pki", "crl.pem"),
		p.AuditLog:    filepath.Join(p.Data, "audit.log"),
	}
	for got, w := range want {
		if got != w {
			t.Errorf("path %q, want %q", got, w)
		}
	}

	c = mustLoad(t, LoadOptions{Environ: []string{"WARDEN_MASTER_KEY_FILE=secrets/mk"}})
	if mk := c.Paths().MasterKey; !filepath.IsAbs(mk) || filepath.Base(mk) != "mk" {
		t.Errorf("MasterKey = %q, want an absolute path ending in mk", mk)
	}
}

func TestPrecedence(t *testing.T) {
	hermetic(t)
	file := writeFile(t, `
mqtts:
  addr: 127.0.0.1:1001
log:
  level: warn
limits:
  max_packet_size: 2KiB
  connect_timeout: 20s
  publish_rate: 5
`)
	tests := []struct {
		name    string
		file    bool
		env     []string
		args    []string
		addr    string
		level   string
		size    ByteSize
		timeout time.Duration
		rate    float64
	}{
		{name: "default", addr: ":8883", level: "info", size: 64 * KiB, timeout: 10 * time.Second, rate: 100},
		{name: "file", file: true, addr: "127.0.0.1:1001", level: "warn", size: 2 * KiB, timeout: 20 * time.Second, rate: 5},
		{
			name: "env over file", file: true,
			env:  []string{"WARDEN_MQTTS__ADDR=127.0.0.1:1002", "WARDEN_LIMITS__MAX_PACKET_SIZE=3KiB", "WARDEN_LOG__LEVEL=debug"},
			addr: "127.0.0.1:1002", level: "debug", size: 3 * KiB, timeout: 20 * time.Second, rate: 5,
		},
		{
			name: "env over default",
			env:  []string{"WARDEN_LIMITS__CONNECT_TIMEOUT=30s", "WARDEN_LIMITS__PUBLISH_RATE=2.5"},
			addr: ":8883", level: "info", size: 64 * KiB, timeout: 30 * time.Second, rate: 2.5,
		},
		{
			name: "flags over env over file", file: true,
			env:  []string{"WARDEN_MQTTS__ADDR=127.0.0.1:1002", "WARDEN_LIMITS__MAX_PACKET_SIZE=3KiB"},
			args: []string{"--mqtts", "127.0.0.1:1003", "--max-packet-size", "4096", "--log-level=error", "--publish-rate", "7"},
			addr: "127.0.0.1:1003", level: "error", size: 4 * KiB, timeout: 20 * time.Second, rate: 7,
		},
		{
			name: "unchanged flags do not override", file: true,
			env:  []string{"WARDEN_LOG__LEVEL=debug"},
			args: []string{},
			addr: "127.0.0.1:1001", level: "debug", size: 2 * KiB, timeout: 20 * time.Second, rate: 5,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := LoadOptions{Environ: tt.env}
			if tt.file {
				opts.File = file
			}
			if tt.args != nil {
				opts.Flags = newFlags(t, tt.args...)
			}
			c := mustLoad(t, opts)
			if c.MQTTS.Addr != tt.addr || c.Log.Level != tt.level || c.Limits.MaxPacketSize != tt.size ||
				c.Limits.ConnectTimeout != tt.timeout || c.Limits.PublishRate != tt.rate {
				t.Errorf("got addr=%q level=%q size=%v timeout=%v rate=%v\nwant addr=%q level=%q size=%v timeout=%v rate=%v",
					c.MQTTS.Addr, c.Log.Level, c.Limits.MaxPacketSize, c.Limits.ConnectTimeout, c.Limits.PublishRate,
					tt.addr, tt.level, tt.size, tt.timeout, tt.rate)
			}
			// Keys no layer touched keep their defaults.
			if c.Limits.MaxInflight != 64 || c.WSS.Path != "/mqtt" || !c.TLS.HybridPQ {
				t.Errorf("untouched keys changed: %+v", c)
			}
		})
	}
}

func TestEnvMapping(t *testing.T) {
	hermetic(t)
	c := mustLoad(t, LoadOptions{Environ: []string{
		"PATH=/usr/bin",
		"WARDEN_DATA=/srv/warden",
		"WARDEN_MASTER_KEY_FILE=/run/secrets/warden.key",
		"WARDEN_MQTTS__ADDR=0.0.0.0:8884",
		"WARDEN_MQTTS__TLS_PROFILE=compat",
		"WARDEN_WSS__ADDR=:8444",
		"WARDEN_WSS__PATH=/ws",
		"WARDEN_HTTP__ADDR=",
		"WARDEN_HOSTNAMES=mqtt.example.com, 192.0.2.10",
		"WARDEN_TLS__HYBRID_PQ=false",
		"WARDEN_LIMITS__MAX_PACKET_SIZE=1MiB",
		"WARDEN_LIMITS__MAX_SESSION_EXPIRY=2d",
		"WARDEN_LIMITS__FLAP_MAX_CONNECTS=3",
		"WARDEN_DEVICES__CERT_LIFETIME=8760h",
		"WARDEN_CONFIG=",
		"WARDEN_DEVICE_ID=0badcafe",
	}})
	want := Default()
	want.Data = "/srv/warden"
	want.MasterKeyFile = "/run/secrets/warden.key"
	want.MQTTS = Listener{Addr: "0.0.0.0:8884", TLSProfile: ProfileCompat}
	want.WSS = Listener{Addr: ":8444", TLSProfile: ProfileStrict, Path: "/ws"}
	want.HTTP.Addr = ""
	want.Hostnames = []string{"mqtt.example.com", "192.0.2.10"}
	want.TLS.HybridPQ = false
	want.Limits.MaxPacketSize = MiB
	want.Limits.MaxSessionExpiry = 48 * time.Hour
	want.Limits.FlapMaxConnects = 3
	want.Devices.CertLifetime = 8760 * time.Hour
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("got  %+v\nwant %+v", *c, want)
	}
}

func TestConfigFileResolution(t *testing.T) {
	dir := hermetic(t)
	write := func(name, addr string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("mqtts: {addr: \""+addr+"\"}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write(DefaultFile, "127.0.0.1:1")
	envFile := write("env.yaml", "127.0.0.1:2")
	flagFile := write("flag.yaml", "127.0.0.1:3")
	optFile := write("opt.yaml", "127.0.0.1:4")

	tests := []struct {
		name string
		opts LoadOptions
		want string
	}{
		{"implicit ./warden.yaml", LoadOptions{}, "127.0.0.1:1"},
		{"WARDEN_CONFIG", LoadOptions{Environ: []string{"WARDEN_CONFIG=" + envFile}}, "127.0.0.1:2"},
		{"--config beats WARDEN_CONFIG", LoadOptions{Environ: []string{"WARDEN_CONFIG=" + envFile}, Flags: newFlags(t, "--config", flagFile)}, "127.0.0.1:3"},
		{"File beats both", LoadOptions{File: optFile, Environ: []string{"WARDEN_CONFIG=" + envFile}, Flags: newFlags(t, "--config", flagFile)}, "127.0.0.1:4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustLoad(t, tt.opts).MQTTS.Addr; got != tt.want {
				t.Errorf("mqtts.addr = %q, want %q", got, tt.want)
			}
		})
	}

	t.Run("named file missing", func(t *testing.T) {
		missing := filepath.Join(dir, "nope.yaml")
		for _, opts := range []LoadOptions{
			{File: missing},
			{Environ: []string{"WARDEN_CONFIG=" + missing}},
			{Flags: newFlags(t, "--config="+missing)},
		} {
			wantContains(t, loadErr(t, opts), missing, "not found")
		}
	})
	t.Run("directory", func(t *testing.T) {
		wantContains(t, loadErr(t, LoadOptions{File: dir}), dir, "not a regular file")
	})
	t.Run("too large", func(t *testing.T) {
		big := writeFile(t, "# "+strings.Repeat("x", maxFileSize)+"\n")
		wantContains(t, loadErr(t, LoadOptions{File: big}), big, "at most 1MiB")
	})
}

func TestHostnameFlagAppends(t *testing.T) {
	hermetic(t)
	file := writeFile(t, "hostnames: [a.example.com, 192.0.2.1]\n")
	c := mustLoad(t, LoadOptions{File: file, Flags: newFlags(t, "--hostname", "b.example.com", "--hostname=2001:db8::1", "--hostname", "a.example.com")})
	want := []string{"a.example.com", "192.0.2.1", "b.example.com", "2001:db8::1"}
	if !reflect.DeepEqual(c.Hostnames, want) {
		t.Errorf("hostnames = %q, want %q", c.Hostnames, want)
	}
	// The environment replaces the file's list; flags still append.
	c = mustLoad(t, LoadOptions{File: file, Environ: []string{"WARDEN_HOSTNAMES=c.example.com"}, Flags: newFlags(t, "--hostname", "d.example.com")})
	want = []string{"c.example.com", "d.example.com"}
	if !reflect.DeepEqual(c.Hostnames, want) {
		t.Errorf("hostnames = %q, want %q", c.Hostnames, want)
	}
}

func TestFlagTypes(t *testing.T) {
	hermetic(t)
	c := mustLoad(t, LoadOptions{Flags: newFlags(t,
		"--connect-timeout", "30s", "--hybrid-pq=false", "--max-inflight", "10", "--connection-rate", "0.5",
		"--wss", ":8444", "--wss-path", "/ws", "--http", "", "--max-session-expiry", "1h",
		"--cert-lifetime", "30d", "--log-format", "json", "--master-key-file", "/k",
	)})
	want := Default()
	want.Data = c.Data
	want.Limits.ConnectTimeout = 30 * time.Second
	want.TLS.HybridPQ = false
	want.Limits.MaxInflight = 10
	want.Limits.ConnectionRate = 0.5
	want.WSS.Addr, want.WSS.Path = ":8444", "/ws"
	want.HTTP.Addr = ""
	want.Limits.MaxSessionExpiry = time.Hour
	want.Devices.CertLifetime = 30 * 24 * time.Hour
	want.Log.Format = "json"
	want.MasterKeyFile = "/k"
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("got  %+v\nwant %+v", *c, want)
	}
}

func TestFlagsOfOtherCommandsIgnored(t *testing.T) {
	hermetic(t)
	fs := pflag.NewFlagSet("warden", pflag.ContinueOnError)
	AddGlobalFlags(fs)
	fs.Int("count", 1, "a flag of some subcommand")
	if err := fs.Parse([]string{"--count=5", "--data=/tmp/w"}); err != nil {
		t.Fatal(err)
	}
	c := mustLoad(t, LoadOptions{Flags: fs})
	if c.Data != "/tmp/w" {
		t.Errorf("data = %q", c.Data)
	}
}

func TestUnknownFileKeys(t *testing.T) {
	hermetic(t)
	tests := []struct {
		name  string
		yaml  string
		wants []string
	}{
		{"typo in key", "mqtt:\n  adr: :1883\n", []string{"mqtt.adr: unknown key", "did you mean mqtt.addr?"}},
		{"typo in section and key", "mqts:\n  adr: :8883\n", []string{"mqts.adr: unknown key", "did you mean mqtts.addr?"}},
		{"typo in key", "limits:\n  max_packet_sise: 1KiB\n", []string{"limits.max_packet_sise: unknown key", "did you mean limits.max_packet_size?"}},
		{"unknown top level", "colour: blue\n", []string{"colour: unknown key"}},
		{"dotted key", "limits.max_packet_size: 2KiB\n", []string{"limits.max_packet_size: unknown key", "keys are nested, not dotted"}},
		{"case matters", "MQTTS:\n  addr: :1\n", []string{"MQTTS.addr: unknown key", "did you mean mqtts.addr?"}},
		{"key under a leaf section", "log:\n  level: info\n  colour: red\n", []string{"log.colour: unknown key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, tt.yaml)
			msg := loadErr(t, LoadOptions{File: p})
			wantContains(t, msg, append([]string{p}, tt.wants...)...)
			if strings.Contains(msg, "has invalid keys") {
				t.Errorf("mapstructure's own message leaked through:\n%s", msg)
			}
		})
	}

	t.Run("many unknown keys are capped", func(t *testing.T) {
		var b strings.Builder
		for i := range 30 {
			b.WriteString("k" + strings.Repeat("x", i) + ": 1\n")
		}
		msg := loadErr(t, LoadOptions{File: writeFile(t, b.String())})
		if n := strings.Count(msg, ": unknown key"); n != maxUnknownReported {
			t.Errorf("%d unknown-key lines, want %d", n, maxUnknownReported)
		}
		wantContains(t, msg, "10 more unknown keys not listed")
	})
}

func TestUnknownEnv(t *testing.T) {
	hermetic(t)
	tests := []struct {
		env   string
		wants []string
	}{
		{"WARDEN_MQTTS_ADDR=:1", []string{"environment variable WARDEN_MQTTS_ADDR: names no configuration key", "did you mean WARDEN_MQTTS__ADDR?"}},
		{"WARDEN_MQTTS=:1", []string{"environment variable WARDEN_MQTTS: names the section mqtts, not a key; set WARDEN_MQTTS__ADDR, WARDEN_MQTTS__TLS_PROFILE, WARDEN_MQTTS__PATH"}},
		{"WARDEN_LIMITS__MAX_PACKETSIZE=1", []string{"WARDEN_LIMITS__MAX_PACKETSIZE", "did you mean WARDEN_LIMITS__MAX_PACKET_SIZE?"}},
		{"WARDEN_FROBNICATE=1", []string{"WARDEN_FROBNICATE: names no configuration key", "docs/configuration.md"}},
		{"WARDEN_=1", []string{"environment variable WARDEN_:"}},
		{"WARDEN_LIMITS.MAX_INFLIGHT=1", []string{"WARDEN_LIMITS.MAX_INFLIGHT: names no configuration key"}},
		{"WARDEN_CONFG=x", []string{"did you mean WARDEN_CONFIG?"}},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			wantContains(t, loadErr(t, LoadOptions{Environ: []string{tt.env}}), tt.wants...)
		})
	}
}

func TestMalformedYAML(t *testing.T) {
	hermetic(t)
	tests := []struct {
		name  string
		yaml  string
		wants []string
	}{
		// yaml.v3 reports the line where it noticed the problem, which
		// may precede the offending one.
		{"bad indentation", "data: x\nmqtts:\n  addr: :1\n tls_profile: strict\n", []string{":3: invalid YAML", "did not find expected key"}},
		{"unclosed flow", "data: x\nlimits: {max_inflight: 3\n", []string{":1: invalid YAML", "did not find expected ',' or '}'"}},
		{"tab indentation", "data: x\nlog:\n\tlevel: info\n", []string{":3: invalid YAML"}},
		{"not a mapping", "- a\n- b\n", []string{":1: invalid YAML", "must be a YAML mapping"}},
		{"scalar", "hello\n", []string{":1: invalid YAML", "must be a YAML mapping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, tt.yaml)
			msg := loadErr(t, LoadOptions{File: p})
			wantContains(t, msg, append([]string{"config: " + p}, tt.wants...)...)
		})
	}
}

func TestEmptyFileIsDefault(t *testing.T) {
	hermetic(t)
	for _, content := range []string{"", "# only a comment\n", "---\n"} {
		c := mustLoad(t, LoadOptions{File: writeFile(t, content)})
		if c.MQTTS.Addr != ":8883" || c.Limits.MaxPacketSize != 64*KiB {
			t.Errorf("%q: not the defaults: %+v", content, c)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	hermetic(t)
	tests := []struct {
		name  string
		yaml  string
		env   []string
		wants []string
	}{
		{name: "duration without unit", yaml: "limits: {connect_timeout: 10}\n",
			wants: []string{"limits.connect_timeout = 10: a duration needs a unit"}},
		{name: "duration garbage", yaml: "limits: {flap_ban: soon}\n",
			wants: []string{`limits.flap_ban = "soon": not a duration`}},
		{name: "size garbage", yaml: "limits: {max_packet_size: lots}\n",
			wants: []string{`limits.max_packet_size = "lots": not a size`, "64KiB"}},
		{name: "size decimal unit", yaml: "limits: {max_packet_size: 64KB}\n",
			wants: []string{`limits.max_packet_size = "64KB"`, "ambiguous"}},
		{name: "size fraction", yaml: "limits: {max_packet_size: 1.5}\n",
			wants: []string{"limits.max_packet_size = 1.5: not a whole number of bytes"}},
		{name: "int fraction", yaml: "limits: {publish_burst: 1.5}\n",
			wants: []string{"limits.publish_burst = 1.5: expected a whole number"}},
		{name: "int too large", yaml: "limits: {publish_burst: 18446744073709551615}\n",
			wants: []string{"limits.publish_burst = 18446744073709551615: too large"}},
		{name: "bool for string", yaml: "data: true\n",
			wants: []string{"data = true: expected a string, got a boolean"}},
		{name: "string for bool", yaml: "tls: {hybrid_pq: \"no\"}\n",
			wants: []string{`tls.hybrid_pq = "no": expected true or false, got a string`}},
		{name: "string for int", yaml: "limits: {max_inflight: many}\n",
			wants: []string{`limits.max_inflight = "many": expected a whole number, got a string`}},
		{name: "scalar for section", yaml: "mqtts: \":8883\"\n",
			wants: []string{`mqtts = ":8883": expected a mapping with the keys addr, tls_profile, path`}},
		{name: "list for section", yaml: "limits: [1, 2]\n",
			wants: []string{"limits = (a list): expected a mapping"}},
		{name: "scalar for list", yaml: "hostnames: a.example.com\n",
			wants: []string{`hostnames = "a.example.com": expected a list of strings, got a string`}},
		{name: "mapping in list", yaml: "hostnames: [{a: b}]\n",
			wants: []string{"hostnames[0]: expected a string, got a mapping"}},
		{name: "several in one file", yaml: "data: true\nlimits: {publish_burst: 1.5, max_inflight: many, flap_ban: 10}\ntls: {hybrid_pq: \"no\"}\n",
			wants: []string{"data = true", "limits.publish_burst = 1.5", `limits.max_inflight = "many"`, "limits.flap_ban = 10", `tls.hybrid_pq = "no"`}},
		{name: "date for string", yaml: "data: 2001-12-14\n",
			wants: []string{"data = ", "expected a string, got a date (quote it to make it a string)"}},
		{name: "float too large", yaml: "limits: {max_inflight: 123456789012345678901234567890}\n",
			wants: []string{"limits.max_inflight = 1.2345678901234568e+29: too large"}},
		{name: "env int", env: []string{"WARDEN_LIMITS__MAX_INFLIGHT=many"},
			wants: []string{`environment variable WARDEN_LIMITS__MAX_INFLIGHT: limits.max_inflight = "many": expected a whole number`}},
		{name: "env bool", env: []string{"WARDEN_TLS__HYBRID_PQ=maybe"},
			wants: []string{`environment variable WARDEN_TLS__HYBRID_PQ: tls.hybrid_pq = "maybe": expected true or false`}},
		{name: "env duration", env: []string{"WARDEN_LIMITS__FLAP_WINDOW=60"},
			wants: []string{`environment variable WARDEN_LIMITS__FLAP_WINDOW: limits.flap_window = "60": not a duration`}},
		{name: "env size", env: []string{"WARDEN_LIMITS__MAX_PACKET_SIZE=1 MB"},
			wants: []string{`environment variable WARDEN_LIMITS__MAX_PACKET_SIZE: limits.max_packet_size = "1 MB"`, "ambiguous"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := LoadOptions{Environ: tt.env}
			if tt.yaml != "" {
				opts.File = writeFile(t, tt.yaml)
			}
			msg := loadErr(t, opts)
			if tt.yaml != "" {
				wantContains(t, msg, "config: "+opts.File+": ")
			}
			wantContains(t, msg, tt.wants...)
		})
	}
}

// A value that fails to decode is reported once, not again by Validate on a
// half-decoded value.
func TestFailedDecodeNotRevalidated(t *testing.T) {
	hermetic(t)
	msg := loadErr(t, LoadOptions{File: writeFile(t, "hostnames: [a.example, [x]]\n")})
	wantContains(t, msg, "hostnames[1]: expected a string, got a list")
	if n := strings.Count(msg, "\n") + 1; n != 1 {
		t.Errorf("%d lines, want 1:\n%s", n, msg)
	}
}

func TestFlagParseRejectsBadSize(t *testing.T) {
	fs := pflag.NewFlagSet("warden", pflag.ContinueOnError)
	fs.SetOutput(&strings.Builder{})
	AddServeFlags(fs)
	err := fs.Parse([]string{"--max-packet-size", "64KB"})
	if err == nil || !strings.Contains(err.Error(), "max-packet-size") || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("err = %v, want a parse error naming the flag", err)
	}
}

func TestFlagValidationNamesKey(t *testing.T) {
	hermetic(t)
	msg := loadErr(t, LoadOptions{Flags: newFlags(t, "--connect-timeout", "1h", "--mqtts-tls-profile", "loose")})
	wantContains(t, msg, "limits.connect_timeout = 1h: must be between 1s and 5m", `mqtts.tls_profile = "loose": must be one of strict, compat`)
}

// Several problems from different sources are all reported, one per line.
func TestErrorsReportedTogether(t *testing.T) {
	hermetic(t)
	p := writeFile(t, "mqtt:\n  adr: x\nlimits:\n  max_packet_size: 100\n  connect_timeout: 10\n")
	msg := loadErr(t, LoadOptions{
		File:    p,
		Environ: []string{"WARDEN_LOG__LEVEL=loud", "WARDEN_BOGUS=1"},
		Flags:   newFlags(t, "--wss", ":8883"),
	})
	lines := strings.Split(msg, "\n")
	wants := []string{
		"config: " + p + ": mqtt.adr: unknown key",
		"config: " + p + ": limits.connect_timeout = 10: a duration needs a unit",
		"config: environment variable WARDEN_BOGUS: names no configuration key",
		`config: log.level = "loud": must be one of debug, info, warn, error`,
		`config: wss.addr = ":8883": conflicts with mqtts.addr = ":8883"`,
		"config: limits.max_packet_size = 100: must be between 1KiB and 256MiB",
	}
	for _, w := range wants {
		found := false
		for _, l := range lines {
			if strings.HasPrefix(l, w) {
				found = true
			}
		}
		if !found {
			t.Errorf("no line starts with %q in:\n%s", w, msg)
		}
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "config: ") {
			t.Errorf("line %q does not start with config:", l)
		}
	}
}
