package config

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestDefaultValidates(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

func TestValidateAcceptsEdges(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{"minimums", func(c *Config) {
			c.Limits = Limits{
				ConnectTimeout: time.Second, MaxPacketSize: KiB, ClientSendQueue: 8, MaxInflight: 1, ServiceSendQueue: 8, ServiceMaxInflight: 1,
				MaxKeepAlive: time.Second, PublishRate: 0.001, PublishBurst: 1, ConnectionRate: 0.5, ConnectionBurst: 1,
				FlapMaxConnects: 1, FlapWindow: time.Second, FlapBan: time.Second, MaxSessionExpiry: time.Second,
			}
			c.Devices = Devices{CertLifetime: time.Hour, ServiceCertLifetime: time.Hour}
		}},
		{"maximums", func(c *Config) {
			c.Limits = Limits{
				ConnectTimeout: 5 * time.Minute, MaxPacketSize: 256 * MiB, ClientSendQueue: 65536, MaxInflight: 65535, ServiceSendQueue: 65536, ServiceMaxInflight: 65535,
				MaxKeepAlive: 65535 * time.Second, PublishRate: 1e9, PublishBurst: 1_000_000, ConnectionRate: 1e9,
				ConnectionBurst: 1_000_000, FlapMaxConnects: 1_000_000, FlapWindow: 24 * time.Hour, FlapBan: 168 * time.Hour,
				MaxSessionExpiry: 87600 * time.Hour,
			}
			c.Devices = Devices{CertLifetime: 876000 * time.Hour, ServiceCertLifetime: 876000 * time.Hour}
		}},
		{"listeners", func(c *Config) {
			c.MQTTS = Listener{Addr: "[::1]:8883", TLSProfile: ProfileCompat}
			c.WSS = Listener{Addr: "localhost:8444", TLSProfile: ProfileCompat, Path: "/mqtt/v1"}
			c.HTTP.Addr = ""
		}},
		{"port 0 never conflicts", func(c *Config) {
			c.MQTTS.Addr = "127.0.0.1:0"
			c.WSS.Addr = "127.0.0.1:0"
			c.HTTP.Addr = "127.0.0.1:0"
		}},
		{"same port on different hosts", func(c *Config) {
			c.MQTTS.Addr = "127.0.0.1:9000"
			c.WSS.Addr = "127.0.0.2:9000"
		}},
		{"zoned listen address", func(c *Config) { c.MQTTS.Addr = "[fe80::1%eth0]:8883" }},
		{"hostnames", func(c *Config) {
			c.Hostnames = []string{"localhost", "mqtt.example.com", "a-b.c0.example", "192.0.2.1", "2001:db8::1", "xn--bcher-kva.example"}
		}},
		{"log", func(c *Config) { c.Log = Log{Level: "debug", Format: "json"} }},
		{"pprof on loopback", func(c *Config) { c.HTTP = HTTP{Addr: "127.0.0.1:6060", Pprof: true} }},
		{"pprof on IPv6 loopback", func(c *Config) { c.HTTP = HTTP{Addr: "[::1]:6060", Pprof: true} }},
		{"pprof on localhost", func(c *Config) { c.HTTP = HTTP{Addr: "localhost:6060", Pprof: true} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.mod(&c)
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() = %v", err)
			}
		})
	}
}

// Every rule has a failing case whose message names the key, shows the
// value and says what is allowed.
func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		want string // the whole line
	}{
		{"data empty", func(c *Config) { c.Data = "" },
			`config: data: empty; set the directory where Warden keeps its state`},
		{"data NUL", func(c *Config) { c.Data = "a\x00b" },
			`config: data = "a\x00b": a path cannot contain a NUL byte`},
		{"master key NUL", func(c *Config) { c.MasterKeyFile = "k\x00" },
			`config: master_key_file = "k\x00": a path cannot contain a NUL byte`},
		{"hostname empty", func(c *Config) { c.Hostnames = []string{"ok.example", ""} },
			`config: hostnames[1]: empty; give a DNS name or an IP address`},
		{"hostname invalid", func(c *Config) { c.Hostnames = []string{"bad_name.example"} },
			`config: hostnames[0] = "bad_name.example": not a DNS name (letters, digits and '-' in dot-separated labels of 1-63 characters) or IP address`},
		{"hostname bad IP", func(c *Config) { c.Hostnames = []string{"256.1.1.1"} },
			`config: hostnames[0] = "256.1.1.1": not a DNS name`},
		{"hostname leading hyphen", func(c *Config) { c.Hostnames = []string{"-a.example"} },
			`config: hostnames[0] = "-a.example": not a DNS name`},
		{"hostname wildcard", func(c *Config) { c.Hostnames = []string{"*.example.com"} },
			`config: hostnames[0] = "*.example.com": not a DNS name`},
		{"hostname zone", func(c *Config) { c.Hostnames = []string{"fe80::1%eth0"} },
			`config: hostnames[0] = "fe80::1%eth0": not a DNS name`},
		{"hostname too long", func(c *Config) { c.Hostnames = []string{strings.Repeat("a", 64) + ".example"} },
			`config: hostnames[0] = "aaaa`},
		{"log level", func(c *Config) { c.Log.Level = "verbose" },
			`config: log.level = "verbose": must be one of debug, info, warn, error`},
		{"log level case", func(c *Config) { c.Log.Level = "INFO" },
			`config: log.level = "INFO": must be one of debug, info, warn, error`},
		{"log format", func(c *Config) { c.Log.Format = "xml" },
			`config: log.format = "xml": must be one of text, json`},
		{"mqtts off", func(c *Config) { c.MQTTS.Addr = "" },
			`config: mqtts.addr: empty; the device listener cannot be turned off`},
		{"mqtts no port", func(c *Config) { c.MQTTS.Addr = "8883" },
			`config: mqtts.addr = "8883": not host:port (missing port in address); write e.g. :8883 or 127.0.0.1:8883`},
		{"mqtts bad port", func(c *Config) { c.MQTTS.Addr = ":99999" },
			`config: mqtts.addr = ":99999": port "99999" must be a number between 0 and 65535`},
		{"mqtts named port", func(c *Config) { c.MQTTS.Addr = ":mqtt" },
			`config: mqtts.addr = ":mqtt": port "mqtt" must be a number between 0 and 65535`},
		{"mqtts bad host", func(c *Config) { c.MQTTS.Addr = "no host!:8883" },
			`config: mqtts.addr = "no host!:8883": host "no host!" is neither an IP address nor a DNS name; leave it empty to listen on every interface`},
		{"mqtts profile", func(c *Config) { c.MQTTS.TLSProfile = "legacy" },
			`config: mqtts.tls_profile = "legacy": must be one of strict, compat`},
		{"mqtts path", func(c *Config) { c.MQTTS.Path = "/x" },
			`config: mqtts.path = "/x": only the wss listener has a path; remove it`},
		{"wss addr", func(c *Config) { c.WSS.Addr = "localhost" },
			`config: wss.addr = "localhost": not host:port (missing port in address)`},
		{"wss profile", func(c *Config) { c.WSS.TLSProfile = "" },
			`config: wss.tls_profile = "": must be one of strict, compat`},
		{"wss path relative", func(c *Config) { c.WSS.Path = "mqtt" },
			`config: wss.path = "mqtt": must start with "/", e.g. /mqtt`},
		{"wss path empty", func(c *Config) { c.WSS.Path = "" },
			`config: wss.path = "": must start with "/", e.g. /mqtt`},
		{"wss path query", func(c *Config) { c.WSS.Path = "/mqtt?x=1" },
			`config: wss.path = "/mqtt?x=1": must be a plain URL path without spaces, control characters, '?' or '#'`},
		{"http addr", func(c *Config) { c.HTTP.Addr = "127.0.0.1" },
			`config: http.addr = "127.0.0.1": not host:port (missing port in address)`},
		{"same address", func(c *Config) { c.WSS.Addr = ":8883" },
			`config: wss.addr = ":8883": conflicts with mqtts.addr = ":8883"; each listener needs its own port`},
		{"wildcard overlaps", func(c *Config) { c.HTTP.Addr = "0.0.0.0:8883" },
			`config: http.addr = "0.0.0.0:8883": conflicts with mqtts.addr = ":8883"; each listener needs its own port`},
		{"same specific address", func(c *Config) { c.MQTTS.Addr = "127.0.0.1:8080" },
			`config: http.addr = "127.0.0.1:8080": conflicts with mqtts.addr = "127.0.0.1:8080"`},
		{"connect timeout low", func(c *Config) { c.Limits.ConnectTimeout = 500 * time.Millisecond },
			`config: limits.connect_timeout = 500ms: must be between 1s and 5m`},
		{"connect timeout negative", func(c *Config) { c.Limits.ConnectTimeout = -time.Second },
			`config: limits.connect_timeout = -1s: must be between 1s and 5m`},
		{"connect timeout high", func(c *Config) { c.Limits.ConnectTimeout = time.Hour },
			`config: limits.connect_timeout = 1h: must be between 1s and 5m`},
		{"packet size low", func(c *Config) { c.Limits.MaxPacketSize = 100 },
			`config: limits.max_packet_size = 100: must be between 1KiB and 256MiB`},
		{"packet size high", func(c *Config) { c.Limits.MaxPacketSize = GiB },
			`config: limits.max_packet_size = 1GiB: must be between 1KiB and 256MiB`},
		{"send queue", func(c *Config) { c.Limits.ClientSendQueue = 4 },
			`config: limits.client_send_queue = 4: must be between 8 and 65536`},
		{"inflight", func(c *Config) { c.Limits.MaxInflight = 0 },
			`config: limits.max_inflight = 0: must be between 1 and 65535`},
		{"inflight high", func(c *Config) { c.Limits.MaxInflight = 70000 },
			`config: limits.max_inflight = 70000: must be between 1 and 65535`},
		{"keep alive zero", func(c *Config) { c.Limits.MaxKeepAlive = 0 },
			`config: limits.max_keep_alive = 0s: must be between 1s and 18h12m15s`},
		{"keep alive fraction", func(c *Config) { c.Limits.MaxKeepAlive = 1500 * time.Millisecond },
			`config: limits.max_keep_alive = 1.5s: must be a whole number of seconds; MQTT carries it in whole seconds`},
		{"publish rate zero", func(c *Config) { c.Limits.PublishRate = 0 },
			`config: limits.publish_rate = 0: must be a number greater than 0 (messages per second per device)`},
		{"publish rate NaN", func(c *Config) { c.Limits.PublishRate = math.NaN() },
			`config: limits.publish_rate = NaN: must be a number greater than 0`},
		{"publish rate Inf", func(c *Config) { c.Limits.PublishRate = math.Inf(1) },
			`config: limits.publish_rate = +Inf: must be a number greater than 0`},
		{"publish burst", func(c *Config) { c.Limits.PublishBurst = 0 },
			`config: limits.publish_burst = 0: must be between 1 and 1000000`},
		{"connection rate", func(c *Config) { c.Limits.ConnectionRate = -1 },
			`config: limits.connection_rate = -1: must be a number greater than 0 (new connections per second per listener)`},
		{"connection burst", func(c *Config) { c.Limits.ConnectionBurst = 2_000_000 },
			`config: limits.connection_burst = 2000000: must be between 1 and 1000000`},
		{"flap connects", func(c *Config) { c.Limits.FlapMaxConnects = 0 },
			`config: limits.flap_max_connects = 0: must be between 1 and 1000000`},
		{"flap window", func(c *Config) { c.Limits.FlapWindow = 0 },
			`config: limits.flap_window = 0s: must be between 1s and 1d`},
		{"flap ban", func(c *Config) { c.Limits.FlapBan = -time.Minute },
			`config: limits.flap_ban = -1m: must be between 1s and 7d`},
		{"session expiry", func(c *Config) { c.Limits.MaxSessionExpiry = 0 },
			`config: limits.max_session_expiry = 0s: must be between 1s and 3650d`},
		{"session expiry fraction", func(c *Config) { c.Limits.MaxSessionExpiry = time.Hour + time.Millisecond },
			`config: limits.max_session_expiry = 1h0m0.001s: must be a whole number of seconds`},
		{"device lifetime", func(c *Config) { c.Devices.CertLifetime = time.Minute },
			`config: devices.cert_lifetime = 1m: must be 0 (the default, 3650d) or between 1h and 36500d`},
		{"device lifetime negative", func(c *Config) { c.Devices.CertLifetime = -time.Hour },
			`config: devices.cert_lifetime = -1h: must be 0 (the default, 3650d) or between 1h and 36500d`},
		{"service lifetime", func(c *Config) { c.Devices.ServiceCertLifetime = 900000 * time.Hour },
			`config: devices.service_cert_lifetime = 37500d: must be 0 (the default, 3650d) or between 1h and 36500d`},
		{"pprof on every interface", func(c *Config) { c.HTTP = HTTP{Addr: ":8080", Pprof: true} },
			`config: http.pprof = true: profiles expose the process's internals`},
		{"pprof on a public address", func(c *Config) { c.HTTP = HTTP{Addr: "192.0.2.1:8080", Pprof: true} },
			`config: http.pprof = true: profiles expose`},
		{"pprof without the listener", func(c *Config) { c.HTTP = HTTP{Pprof: true} },
			`config: http.pprof = true: profiles are served on the http listener, which is off`},
		{"service lifetime odd hours", func(c *Config) { c.Devices.ServiceCertLifetime = 876001 * time.Hour },
			`config: devices.service_cert_lifetime = 876001h: must be 0 (the default, 3650d) or between 1h and 36500d`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.mod(&c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate() = nil, want %s", tt.want)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("Validate() =\n%s\nwant a first line starting with\n%s", err, tt.want)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Key == "" {
				t.Errorf("error is not a *FieldError with a key: %#v", err)
			}
		})
	}
}

func TestValidateReportsAllAtOnce(t *testing.T) {
	c := Default()
	c.Log.Level = "x"
	c.MQTTS.Addr = ""
	c.Limits.MaxInflight = 0
	c.Devices.CertLifetime = -1
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() = nil")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 4 {
		t.Errorf("got %d lines, want 4:\n%s", len(lines), err)
	}
	for i, key := range []string{"log.level", "mqtts.addr", "limits.max_inflight", "devices.cert_lifetime"} {
		if i < len(lines) && !strings.HasPrefix(lines[i], "config: "+key) {
			t.Errorf("line %d = %q, want it to name %s", i, lines[i], key)
		}
	}
}

func TestLifetimeDefaults(t *testing.T) {
	var d Devices
	if d.DeviceCertLifetime() != DefaultCertLifetime || d.ServiceLifetime() != DefaultCertLifetime {
		t.Errorf("zero lifetimes do not resolve to DefaultCertLifetime")
	}
	d = Devices{CertLifetime: time.Hour, ServiceCertLifetime: 2 * time.Hour}
	if d.DeviceCertLifetime() != time.Hour || d.ServiceLifetime() != 2*time.Hour {
		t.Errorf("set lifetimes not returned as set")
	}
}
