package config

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Flags that are not configuration keys.
const (
	// FlagConfig names the configuration file.
	FlagConfig = "config"
	// FlagHostname adds a server certificate hostname; repeatable. It appends
	// to the hostnames from the file or environment instead of replacing
	// them, so a one-off extra name does not require repeating the list.
	FlagHostname = "hostname"
)

// flagSpec ties a flag to the key it sets.
type flagSpec struct {
	name  string
	key   string
	usage string
	serve bool // registered by AddServeFlags, else by AddGlobalFlags
}

// flagSpecs is the single table of key flags; registration, Load and the
// docs test all read it.
func flagSpecs() []flagSpec {
	return []flagSpec{
		{"data", "data", "data directory holding all of Warden's state", false},
		{"master-key-file", "master_key_file", "file holding the master key that seals secrets at rest (default <data>/master.key)", false},
		{"log-level", "log.level", "log level: debug, info, warn or error", false},
		{"log-format", "log.format", "log format: text or json", false},

		{"mqtts", "mqtts.addr", "device listener address, host:port (MQTT over mutual TLS); cannot be empty", true},
		{"mqtts-tls-profile", "mqtts.tls_profile", "TLS profile of the device listener: strict (TLS 1.3) or compat (also TLS 1.2)", true},
		{"wss", "wss.addr", "WebSocket device listener address, host:port; empty turns it off", true},
		{"wss-tls-profile", "wss.tls_profile", "TLS profile of the WebSocket listener: strict or compat", true},
		{"wss-path", "wss.path", "HTTP path of the WebSocket listener", true},
		{"mqtt", "mqtt.addr", "plain MQTT listener for envelope devices only (no TLS; every publish must be an envelope), host:port; empty (default) turns it off", true},
		{"api", "api.addr", "HTTPS listener address (device OTA over mutual TLS, operator API), host:port; empty turns it off", true},
		{"api-tls-profile", "api.tls_profile", "TLS profile of the HTTPS listener: strict or compat", true},
		{"ota-public-url", "ota.public_url", "base URL devices download firmware from (default https://<first hostname>:<api port>)", true},
		{"max-image-size", "ota.max_image_size", "largest firmware image accepted, bytes or with a unit such as 64MiB (1KiB..1GiB)", true},
		{"http", "http.addr", "HTTP listener address (API, health, metrics), host:port; empty turns it off", true},
		{"pprof", "http.pprof", "serve Go profiles at /debug/pprof/ on the http listener (loopback addresses only)", true},
		{"hybrid-pq", "tls.hybrid_pq", "offer the hybrid post-quantum key exchange X25519MLKEM768 first (false: X25519 and P-256 only)", true},
		{"connect-timeout", "limits.connect_timeout", "deadline for the TLS handshake plus MQTT CONNECT (1s..5m)", true},
		{"max-packet-size", "limits.max_packet_size", "largest MQTT packet, bytes or with a unit such as 64KiB (1KiB..256MiB)", true},
		{"client-send-queue", "limits.client_send_queue", "outbound packets queued per client (8..65536)", true},
		{"max-inflight", "limits.max_inflight", "QoS 1/2 messages stored per client session (1..65535)", true},
		{"service-send-queue", "limits.service_send_queue", "outbound packets queued per back-end service (8..65536)", true},
		{"service-max-inflight", "limits.service_max_inflight", "QoS 1/2 messages stored per back-end service session (1..65535)", true},
		{"handshake-concurrency", "limits.handshake_concurrency", "TLS handshakes computing at once; the rest wait (0 = one per CPU, up to 4096)", true},
		{"max-keep-alive", "limits.max_keep_alive", "server keep alive for clients asking for none or more (1s..18h12m15s)", true},
		{"publish-rate", "limits.publish_rate", "messages per second per device (token bucket rate, > 0)", true},
		{"publish-burst", "limits.publish_burst", "per-device publish burst (1..1000000)", true},
		{"connection-rate", "limits.connection_rate", "new connections per second per listener (> 0)", true},
		{"connection-burst", "limits.connection_burst", "per-listener connection burst (1..1000000)", true},
		{"connection-rate-per-source", "limits.connection_rate_per_source", "new connections per second per source address (IPv4, IPv6 /64) and listener, burst twice that (0 = no limit)", true},
		{"flap-max-connects", "limits.flap_max_connects", "connects per flap window before a device is refused (1..1000000)", true},
		{"flap-window", "limits.flap_window", "window over which connects are counted (1s..24h)", true},
		{"flap-ban", "limits.flap_ban", "how long a flapping device is refused (1s..168h)", true},
		{"max-session-expiry", "limits.max_session_expiry", "longest a disconnected session is kept (1s..3650d)", true},
		{"cert-lifetime", "devices.cert_lifetime", "validity of issued device certificates, e.g. 30d for short-lived ones that the device SDK renews at two thirds of their life; 0 = 3650d (10 years), else 1h..36500d", true},
		{"service-cert-lifetime", "devices.service_cert_lifetime", "validity of issued service certificates, e.g. 90d; 0 = 3650d (10 years), else 1h..36500d", true},
		{"monitor", "monitor.enabled", "run the anomaly monitor (detectors, alerts, quarantine); --monitor=false turns it off", true},
		{"monitor-webhook-url", "monitor.webhook.url", "http(s) URL alerts are POSTed to, signed with the secret in monitor.webhook.secret_file; empty turns the webhook off", true},
	}
}

// flagAlias is an old flag name that still works, hidden from help and
// warned about when used, so that scripts written against an older release
// keep running while they are updated.
type flagAlias struct {
	name      string // the old name
	canonical string // the flag in flagSpecs it stands for
}

// flagAliases lists the old flag names.
func flagAliases() []flagAlias {
	return []flagAlias{
		{"device-cert-lifetime", "cert-lifetime"},
	}
}

// AddGlobalFlags registers the flags every command takes: --config, --data,
// --master-key-file, --log-level and --log-format. Defaults shown in help
// are the built-in ones; a flag overrides the file and environment only when
// it is given.
func AddGlobalFlags(fs *pflag.FlagSet) {
	fs.String(FlagConfig, "", "configuration file (env "+EnvConfig+"; default ./warden.yaml when it exists)")
	addFlags(fs, false)
}

// AddServeFlags registers the flags of warden serve: one per listener
// setting, --hostname (repeatable), --hybrid-pq, one per limits key and the
// certificate lifetimes.
func AddServeFlags(fs *pflag.FlagSet) {
	addFlags(fs, true)
	fs.StringArray(FlagHostname, nil, "extra DNS name or IP address for the server certificate; repeatable, adds to hostnames from the file or WARDEN_HOSTNAMES")
}

func addFlags(fs *pflag.FlagSet, serve bool) {
	def := Default()
	root := reflect.ValueOf(&def).Elem()
	for _, s := range flagSpecs() {
		if s.serve != serve {
			continue
		}
		usage := s.usage + " [" + envName(s.key) + "]"
		field, ok := fieldByKey(root, s.key)
		if !ok {
			// Unreachable: TestFlagTable checks every flag names a key.
			panic("config: flag --" + s.name + " names no key " + s.key)
		}
		// An alias gets a value of its own: Load reads each flag that was
		// given, and reports an alias given together with its new name.
		names := []string{s.name}
		for _, a := range flagAliases() {
			if a.canonical == s.name {
				names = append(names, a.name)
			}
		}
		for _, name := range names {
			switch v := field.Interface().(type) {
			case string:
				fs.String(name, v, usage)
			case bool:
				fs.Bool(name, v, usage)
			case int:
				fs.Int(name, v, usage)
			case float64:
				fs.Float64(name, v, usage)
			case time.Duration:
				// Not fs.Duration: time.ParseDuration has no day unit,
				// and lifetimes are written in days.
				fs.Var(newDurationValue(new(time.Duration), v), name, usage)
			case ByteSize:
				fs.Var(&byteSizeValue{v: v}, name, usage)
			default:
				// Unreachable unless a field of a new type gets a flag;
				// the package tests register every flag and would fail.
				panic(fmt.Sprintf("config: flag --%s: no flag type for %T", name, v))
			}
		}
		for _, alias := range names[1:] {
			// Hidden from help, and pflag warns when it is used. Cannot
			// fail: the flag was registered just above.
			_ = fs.MarkDeprecated(alias, "use --"+s.name+" instead")
		}
	}
}

// fieldByKey walks a Config value along a dotted key.
func fieldByKey(v reflect.Value, key string) (reflect.Value, bool) {
	for _, part := range strings.Split(key, ".") {
		if v.Kind() != reflect.Struct {
			return reflect.Value{}, false
		}
		t := v.Type()
		found := false
		for i := 0; i < t.NumField(); i++ {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get(tagName), ",")
			if name == part {
				v = v.Field(i)
				found = true
				break
			}
		}
		if !found {
			return reflect.Value{}, false
		}
	}
	return v, true
}

// byteSizeValue is a pflag.Value for ByteSize, so --max-packet-size accepts
// 64KiB as well as 65536 and rejects nonsense at parse time.
type byteSizeValue struct{ v ByteSize }

func (b *byteSizeValue) String() string { return b.v.String() }
func (b *byteSizeValue) Type() string   { return "size" }
func (b *byteSizeValue) Set(s string) error {
	v, err := ParseByteSize(s)
	if err != nil {
		return err
	}
	b.v = v
	return nil
}
