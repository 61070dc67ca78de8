// Package config assembles Warden's configuration from built-in defaults, a
// YAML file, WARDEN_* environment variables and command-line flags (in that
// order of increasing precedence) and validates all of it before anything
// starts, so a typo or an out-of-range value stops the process with a message
// that names the key instead of surfacing later as odd behaviour.
package config

import (
	"path/filepath"
	"time"
)

// Config is the whole of Warden's configuration. The koanf tags are the keys
// used in the YAML file; environment variables and flags map onto the same
// keys (see docs/configuration.md).
type Config struct {
	// Data is the directory holding every piece of state Warden owns.
	Data string `koanf:"data"`
	// MasterKeyFile is the key that seals secrets at rest; empty means
	// <data>/master.key. It may live elsewhere (a mounted secret) so that a
	// copy of the data directory alone does not expose sealed secrets.
	MasterKeyFile string `koanf:"master_key_file"`
	// Hostnames are extra DNS names or IP addresses for the server
	// certificate, used when init or the first run issues it.
	Hostnames []string `koanf:"hostnames"`
	Log       Log      `koanf:"log"`
	// MQTTS is the device listener (MQTT over mutual TLS). It cannot be
	// turned off: without it no device can connect.
	MQTTS Listener `koanf:"mqtts"`
	// WSS is MQTT over WebSocket with mutual TLS, for devices behind proxies
	// that pass only HTTPS. An empty address turns it off.
	WSS Listener `koanf:"wss"`
	// MQTT is a plain (non-TLS) MQTT listener for envelope devices only:
	// they authenticate with a single-use password and every publish must
	// be an envelope (docs/envelope.md). Off unless an address is set.
	MQTT PlainListener `koanf:"mqtt"`
	// API is the HTTPS listener: device OTA endpoints (mutual TLS) and the
	// operator API. An empty address turns it off.
	API     HTTPSListener `koanf:"api"`
	HTTP    HTTP          `koanf:"http"`
	TLS     TLS           `koanf:"tls"`
	Limits  Limits        `koanf:"limits"`
	Devices Devices       `koanf:"devices"`
	OTA     OTA           `koanf:"ota"`
	// Monitor is the anomaly monitor: detectors, alerts, responses
	// (monitor.go, docs/monitoring.md).
	Monitor Monitor `koanf:"monitor"`
}

// OTA configures firmware delivery (docs/firmware.md).
type OTA struct {
	// PublicURL is the base URL devices download images from, e.g.
	// https://updates.example.com:8443; empty means https://<first
	// hostname>:<api port>.
	PublicURL string `koanf:"public_url"`
	// MaxImageSize bounds an uploaded image.
	MaxImageSize ByteSize `koanf:"max_image_size"`
}

// Log configures the process log.
type Log struct {
	Level  string `koanf:"level"`  // debug, info, warn or error
	Format string `koanf:"format"` // text or json
}

// Listener is a TLS listener for devices.
type Listener struct {
	// Addr is host:port; an empty host listens on every interface.
	Addr string `koanf:"addr"`
	// TLSProfile is "strict" (TLS 1.3 only) or "compat" (also TLS 1.2 with
	// AEAD ECDHE suites, for device stacks that lack TLS 1.3).
	TLSProfile string `koanf:"tls_profile"`
	// Path is the HTTP path of the WebSocket upgrade; wss only (Validate
	// rejects it on mqtts, where it would silently mean nothing).
	Path string `koanf:"path"`
}

// HTTPSListener is a TLS listener for HTTP.
type HTTPSListener struct {
	// Addr is host:port; empty turns the listener off.
	Addr string `koanf:"addr"`
	// TLSProfile is "strict" (TLS 1.3 only) or "compat" (also TLS 1.2).
	TLSProfile string `koanf:"tls_profile"`
}

// PlainListener is a listener without TLS.
type PlainListener struct {
	// Addr is host:port; empty turns the listener off.
	Addr string `koanf:"addr"`
}

// HTTP configures the HTTP listener (API, health, metrics).
type HTTP struct {
	// Addr is host:port; empty turns the listener off.
	Addr string `koanf:"addr"`
	// Pprof serves Go's profiles (net/http/pprof) at /debug/pprof/ on this
	// listener, for finding where CPU and memory go. They reveal the
	// process's internals, so only on a loopback address.
	Pprof bool `koanf:"pprof"`
}

// TLS holds settings shared by every TLS listener.
type TLS struct {
	// HybridPQ offers the hybrid post-quantum key exchange X25519MLKEM768
	// first. It costs about 30% more CPU per handshake; it is on by default
	// because device traffic recorded today must stay confidential for the
	// device's lifetime. False restricts key exchange to X25519 and P-256.
	HybridPQ bool `koanf:"hybrid_pq"`
}

// Limits bound what a single client or listener can make the server do.
type Limits struct {
	// ConnectTimeout bounds the TLS handshake plus the MQTT CONNECT, so an
	// idle socket cannot hold a connection slot.
	ConnectTimeout time.Duration `koanf:"connect_timeout"`
	// MaxPacketSize is the largest MQTT packet accepted or sent.
	MaxPacketSize ByteSize `koanf:"max_packet_size"`
	// ClientSendQueue is the number of outbound packets queued per client
	// before the client is treated as too slow.
	ClientSendQueue int `koanf:"client_send_queue"`
	// MaxInflight is the number of QoS 1/2 messages stored per session.
	MaxInflight int `koanf:"max_inflight"`
	// ServiceSendQueue and ServiceMaxInflight are the same for back-end
	// services, which read whole fleets (fleet/#) and need deeper queues
	// than a device; there are few of them, so the memory is small.
	ServiceSendQueue   int `koanf:"service_send_queue"`
	ServiceMaxInflight int `koanf:"service_max_inflight"`
	// HandshakeConcurrency is how many TLS handshakes compute at once (0:
	// one per CPU); the others wait without holding CPU, so established
	// sessions keep theirs during a reconnect storm.
	HandshakeConcurrency int `koanf:"handshake_concurrency"`
	// MaxKeepAlive is the server keep alive imposed on clients that ask for
	// none (0) or for more than this.
	MaxKeepAlive time.Duration `koanf:"max_keep_alive"`
	// PublishRate and PublishBurst form a per-device token bucket
	// (messages per second, bucket size).
	PublishRate  float64 `koanf:"publish_rate"`
	PublishBurst int     `koanf:"publish_burst"`
	// ConnectionRate and ConnectionBurst form a per-listener token bucket
	// for new connections.
	ConnectionRate  float64 `koanf:"connection_rate"`
	ConnectionBurst int     `koanf:"connection_burst"`
	// ConnectionRatePerSource bounds the new connections of one source
	// address (an IPv4 address, an IPv6 /64) per listener, with a burst
	// of twice the rate, so that one host cannot spend the whole
	// listener's connection rate and lock the fleet out; 0 turns it off.
	ConnectionRatePerSource float64 `koanf:"connection_rate_per_source"`
	// A device that connects more than FlapMaxConnects times within
	// FlapWindow is refused for FlapBan: a reconnect loop must not cost the
	// server a full mTLS handshake and a registry lookup every time.
	FlapMaxConnects int           `koanf:"flap_max_connects"`
	FlapWindow      time.Duration `koanf:"flap_window"`
	FlapBan         time.Duration `koanf:"flap_ban"`
	// MaxSessionExpiry caps how long a disconnected client's session (its
	// subscriptions and queued messages) is kept.
	MaxSessionExpiry time.Duration `koanf:"max_session_expiry"`
}

// Devices holds settings for certificates Warden issues.
type Devices struct {
	// CertLifetime is the validity of device certificates; 0 means
	// DefaultCertLifetime.
	CertLifetime time.Duration `koanf:"cert_lifetime"`
	// ServiceCertLifetime is the validity of service certificates; 0 means
	// DefaultCertLifetime.
	ServiceCertLifetime time.Duration `koanf:"service_cert_lifetime"`
}

// DefaultCertLifetime is the certificate validity used when a lifetime is
// configured as 0. Devices are often deployed for a decade and cannot always
// be reached to renew; revocation, not expiry, is what cuts a device off.
const DefaultCertLifetime = 10 * 365 * 24 * time.Hour

// DeviceCertLifetime returns the configured device certificate lifetime,
// resolving 0 to DefaultCertLifetime.
func (d Devices) DeviceCertLifetime() time.Duration {
	if d.CertLifetime == 0 {
		return DefaultCertLifetime
	}
	return d.CertLifetime
}

// ServiceLifetime returns the configured service certificate lifetime,
// resolving 0 to DefaultCertLifetime.
func (d Devices) ServiceLifetime() time.Duration {
	if d.ServiceCertLifetime == 0 {
		return DefaultCertLifetime
	}
	return d.ServiceCertLifetime
}

// TLS profile names.
const (
	ProfileStrict = "strict"
	ProfileCompat = "compat"
)

// Default returns the built-in configuration: the lowest layer, which the
// file, the environment and flags override.
func Default() Config {
	return Config{
		Data: "./warden-data",
		Log:  Log{Level: "info", Format: "text"},
		MQTTS: Listener{
			Addr:       ":8883",
			TLSProfile: ProfileStrict,
		},
		WSS: Listener{
			TLSProfile: ProfileStrict,
			Path:       "/mqtt",
		},
		API:  HTTPSListener{Addr: ":8443", TLSProfile: ProfileStrict},
		HTTP: HTTP{Addr: "127.0.0.1:8080"},
		OTA:  OTA{MaxImageSize: 64 * MiB},
		TLS:  TLS{HybridPQ: true},
		Limits: Limits{
			ConnectTimeout:     10 * time.Second,
			MaxPacketSize:      64 * KiB,
			ClientSendQueue:    64,
			MaxInflight:        64,
			ServiceSendQueue:   8192,
			ServiceMaxInflight: 8192,
			MaxKeepAlive:       5 * time.Minute,
			PublishRate:        100,
			PublishBurst:       200,
			ConnectionRate:     500,
			ConnectionBurst:    1000,
			// A quarter of the listener's rate: a fleet behind one NAT
			// address still reconnects 15,000 devices in two minutes.
			ConnectionRatePerSource: 125,
			FlapMaxConnects:         15,
			FlapWindow:              time.Minute,
			FlapBan:                 5 * time.Minute,
			MaxSessionExpiry:        7 * 24 * time.Hour,
		},
		Monitor: DefaultMonitor(),
	}
}

// Paths are the files and directories derived from Config.Data (and
// Config.MasterKeyFile). Every component takes its path from here so that
// the layout of the data directory is decided in one place.
type Paths struct {
	Data        string // the data directory
	MasterKey   string // key sealing secrets at rest
	PKI         string // CA keys and certificates
	RegistryDB  string // device registry (SQLite)
	BrokerDB    string // broker session store
	AdminSocket string // local admin socket for CLI commands
	CRLDER      string // current CRL, DER
	CRLPEM      string // current CRL, PEM
	AuditLog    string // hash-chained audit log
	Firmware    string // firmware image files, by SHA-256
	ClaimKey    string // the sealed key app claim tokens are encrypted to
}

// Paths derives every file location from c.Data. The paths are absolute when
// c came from Load, which makes Data and MasterKeyFile absolute.
func (c *Config) Paths() Paths {
	data := filepath.Clean(c.Data)
	pki := filepath.Join(data, "pki")
	mk := c.MasterKeyFile
	if mk == "" {
		mk = filepath.Join(data, "master.key")
	} else {
		mk = filepath.Clean(mk)
	}
	return Paths{
		Data:        data,
		MasterKey:   mk,
		PKI:         pki,
		RegistryDB:  filepath.Join(data, "registry.db"),
		BrokerDB:    filepath.Join(data, "broker.db"),
		AdminSocket: filepath.Join(data, "warden.sock"),
		CRLDER:      filepath.Join(pki, "crl.der"),
		CRLPEM:      filepath.Join(pki, "crl.pem"),
		AuditLog:    filepath.Join(data, "audit.log"),
		Firmware:    filepath.Join(data, "firmware"),
		ClaimKey:    filepath.Join(data, "claim.key.sealed"),
	}
}
