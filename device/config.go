package device

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/identity"
)

// Defaults for the zero values of Config.
const (
	DefaultKeepAlive      = 60 * time.Second
	DefaultMinBackoff     = time.Second
	DefaultMaxBackoff     = 2 * time.Minute
	DefaultConnectTimeout = 10 * time.Second
	// DefaultReceiveMaximum bounds the QoS 1 and 2 messages the broker may
	// have in flight to the device. paho sizes its inbound queue by this
	// value; its default of 65535 costs about 512 KiB per client.
	DefaultReceiveMaximum = 32
)

// Config describes how a device connects to Warden. Servers, Certificate
// and RootCAs are required (Certificate and RootCAs not for an envelope
// device on plain servers only); everything else has a default.
type Config struct {
	// Servers are the broker URLs, tried in order on every connection
	// attempt: "mqtts://host:8883" (the port defaults to 8883) or
	// "wss://host:8884/mqtt". Plain "mqtt://host:1883" (the port
	// defaults to 1883), Warden's listener for devices without TLS, is
	// accepted only with Envelope; other unencrypted schemes are refused.
	Servers []string

	// Certificate is the device's own certificate (with its chain) and
	// private key, as LoadCredentials returns it. It is sent on every TLS
	// connection, and never on a plain one. It is required when a TLS
	// server is listed, and for a sign-p256 envelope device, which signs
	// with its key.
	Certificate tls.Certificate

	// RootCAs is the Warden root the broker's certificate must chain to.
	// It is required when a TLS server is listed and is the only trust
	// anchor: the system roots are never consulted, so no public CA can
	// vouch for an impostor broker.
	RootCAs *x509.CertPool

	// DeviceID defaults to the ID in the certificate's
	// urn:warden:device: URI SAN; if set, it must equal that ID. It is
	// also the MQTT client ID, which Warden binds to the certificate.
	// Without a certificate (an envelope device on plain servers only) it
	// is required.
	DeviceID string

	// Envelope, if set, makes the client an envelope device: it seals
	// uplinks and opens Warden's sealed downlinks (see Envelope), and it may
	// use plain mqtt:// servers.
	Envelope *Envelope

	// ServerName overrides the host name the broker's certificate is
	// checked against (by default the host of each server URL).
	ServerName string

	// KeepAlive is the MQTT keep-alive interval (default 60s, at most
	// 65535s).
	KeepAlive time.Duration

	// SessionExpiry 0 starts a clean session on every connection. A
	// positive value asks the broker to keep the session (subscriptions
	// and undelivered QoS 1/2 messages) that long after a disconnection,
	// and every connection resumes it (clean start false).
	SessionExpiry time.Duration

	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts; see Backoff. Defaults 1s and 2m.
	MinBackoff, MaxBackoff time.Duration

	// ConnectTimeout bounds each attempt: dial, TLS handshake and CONNACK
	// (default 10s).
	ConnectTimeout time.Duration

	// LocalAddr, if set, is the local IP address ("127.0.0.2", "fd00::7")
	// that every MQTT connection of the client (mqtts, wss and plain mqtt)
	// is made from; the port is always chosen by the system. Empty lets
	// the system choose the address too. A gateway with several uplinks
	// uses it to pick one, and a simulator to spread many clients over
	// several source addresses, each with its own range of ephemeral
	// ports. The SDK's HTTPS clients (OTA, EST) do not use it.
	LocalAddr string

	// ReceiveMaximum is sent to the broker as the MQTT 5 Receive Maximum
	// (default 32).
	ReceiveMaximum uint16

	// Logger receives connection events; nil discards them. Payloads and
	// keys are never logged.
	Logger *slog.Logger

	// OnConnectionUp is called after every successful CONNACK. It runs on
	// the connection goroutine and must not block.
	OnConnectionUp func()

	// OnConnectionDown is called when an established connection is lost,
	// with the reason; it is not called by Close. It runs on the connection
	// goroutine and must not block.
	OnConnectionDown func(error)

	// Certificate lifecycle (docs/onboarding.md, "Renewal" and "CA
	// rotation"); see Client.Renew.

	// OnCertificate is called with every certificate the client installs
	// in place of Certificate: a renewal (Client.Renew, AutoRenew) or a
	// CA rotation delivery. The application must store it durably, with
	// its private key when the key is new (RenewKey, RenewOptions.NewKey),
	// and load it on the next start: the client keeps it in memory only.
	// It runs before the client reconnects with the new certificate, on
	// the goroutine that installed it; it should not block for long and
	// must not call Client.Renew.
	OnCertificate func(tls.Certificate)

	// AutoRenew renews the certificate when two thirds of its lifetime
	// have passed, plus a random jitter of up to a tenth of the lifetime
	// so that a fleet issued at once does not renew at once, retrying with
	// backoff (MinBackoff, MaxBackoff) until it succeeds or Close. An
	// expired certificate cannot renew: the device must enroll again
	// (Enroll with its enrollment secret).
	AutoRenew bool

	// RenewVia is how AutoRenew renews: RenewViaMQTT (the default, on
	// this connection) or RenewViaEST (RenewESTServer's simplereenroll).
	RenewVia string

	// RenewESTServer is Warden's EST base URL (its api listener, e.g.
	// "https://warden.example.com:8443"), required for RenewViaEST and the
	// default of RenewOptions.ESTServer.
	RenewESTServer string

	// RenewKey, if set, gives AutoRenew a fresh P-256 key for each
	// renewal (for example a new slot of a secure element). With nil the
	// current key is kept. A sign-p256 envelope device signs its messages
	// with its certificate's key, which Warden knows, so it keeps its key.
	RenewKey func() (crypto.Signer, error)
}

// settings is a validated Config with defaults applied.
type settings struct {
	servers        []*url.URL
	tls            *tls.Config
	id             string
	keepAlive      uint16 // seconds
	sessionExpiry  uint32 // seconds
	minBackoff     time.Duration
	maxBackoff     time.Duration
	connectTimeout time.Duration
	localAddr      *net.TCPAddr // nil: the system chooses
	receiveMaximum uint16
	log            *slog.Logger
	onUp           func()
	onDown         func(error)
	env            *envelopeConfig // nil: not an envelope device

	// Certificate lifecycle (renew.go). cert is the certificate new TLS
	// handshakes present: renewals and rotations swap it while the client
	// runs. It is nil for a client without one.
	cert          atomic.Pointer[tls.Certificate]
	roots         *x509.CertPool
	onCertificate func(tls.Certificate)
	autoRenew     bool
	renewVia      string
	renewEST      string // validated base URL, or ""
	renewKey      func() (crypto.Signer, error)
}

// validate checks cfg and returns the settings Connect runs with. Every
// error names the field to fix.
func (cfg Config) validate() (*settings, error) {
	s := &settings{
		minBackoff:     orDefault(cfg.MinBackoff, DefaultMinBackoff),
		maxBackoff:     orDefault(cfg.MaxBackoff, DefaultMaxBackoff),
		connectTimeout: orDefault(cfg.ConnectTimeout, DefaultConnectTimeout),
		receiveMaximum: cfg.ReceiveMaximum,
		onUp:           cfg.OnConnectionUp,
		onDown:         cfg.OnConnectionDown,
	}
	if s.receiveMaximum == 0 {
		s.receiveMaximum = DefaultReceiveMaximum
	}

	if len(cfg.Servers) == 0 {
		return nil, errors.New("Config.Servers is empty; give at least one mqtts:// or wss:// URL (or mqtt:// for an envelope device)")
	}
	var plain, tlsToo bool
	for i, raw := range cfg.Servers {
		u, err := parseServer(raw, cfg.Envelope != nil)
		if err != nil {
			return nil, fmt.Errorf("Config.Servers[%d]: %w", i, err)
		}
		if u.Scheme == "mqtt" {
			plain = true
		} else {
			tlsToo = true
		}
		s.servers = append(s.servers, u)
	}

	if tlsToo && cfg.RootCAs == nil {
		return nil, errors.New("Config.RootCAs is nil; it must hold the Warden root (see LoadCredentials): the system roots are never used")
	}
	needCert := tlsToo || (cfg.Envelope != nil && cfg.Envelope.Suite == envelope.SignP256)
	var signer crypto.Signer
	if needCert || len(cfg.Certificate.Certificate) > 0 {
		leaf, id, err := deviceIdentity(cfg.Certificate)
		if err != nil {
			return nil, err
		}
		if cfg.DeviceID != "" && cfg.DeviceID != id {
			return nil, fmt.Errorf("Config.DeviceID %q differs from the ID %q in the certificate; leave it empty or fix it", cfg.DeviceID, id)
		}
		s.id = id
		signer, _ = cfg.Certificate.PrivateKey.(crypto.Signer) // deviceIdentity checked it
		cert := cfg.Certificate
		cert.Leaf = leaf
		s.cert.Store(&cert)
	} else {
		if cfg.DeviceID == "" {
			return nil, errors.New("Config.DeviceID is empty; without a certificate (plain mqtt:// servers only) it must name the device")
		}
		if err := identity.ValidateDeviceID(cfg.DeviceID); err != nil {
			return nil, fmt.Errorf("Config.DeviceID: %w", err)
		}
		s.id = cfg.DeviceID
	}
	if cfg.Envelope != nil {
		env, err := validateEnvelope(cfg.Envelope, s.id, plain, tlsToo, signer)
		if err != nil {
			return nil, err
		}
		s.env = env
	}

	keepAlive := orDefault(cfg.KeepAlive, DefaultKeepAlive)
	if keepAlive < time.Second || keepAlive > math.MaxUint16*time.Second {
		return nil, fmt.Errorf("Config.KeepAlive %v is out of range [1s, 65535s]", cfg.KeepAlive)
	}
	s.keepAlive = uint16(keepAlive / time.Second)

	if cfg.SessionExpiry < 0 || cfg.SessionExpiry > math.MaxUint32*time.Second {
		return nil, fmt.Errorf("Config.SessionExpiry %v is out of range [0, %ds]", cfg.SessionExpiry, uint32(math.MaxUint32))
	}
	s.sessionExpiry = uint32(cfg.SessionExpiry / time.Second)
	if cfg.SessionExpiry > 0 && s.sessionExpiry == 0 {
		s.sessionExpiry = 1 // a sub-second expiry still asks for a session
	}

	switch {
	case s.minBackoff < 0 || s.maxBackoff < 0:
		return nil, fmt.Errorf("Config.MinBackoff (%v) and Config.MaxBackoff (%v) must not be negative", cfg.MinBackoff, cfg.MaxBackoff)
	case s.maxBackoff < s.minBackoff:
		return nil, fmt.Errorf("Config.MaxBackoff %v is below Config.MinBackoff %v", s.maxBackoff, s.minBackoff)
	case s.connectTimeout < 0:
		return nil, fmt.Errorf("Config.ConnectTimeout %v must not be negative", cfg.ConnectTimeout)
	}

	if cfg.LocalAddr != "" {
		la, err := parseLocalAddr(cfg.LocalAddr)
		if err != nil {
			return nil, err
		}
		s.localAddr = la
	}

	if err := validateRenewal(cfg, s); err != nil {
		return nil, err
	}

	if tlsToo {
		s.tls = tlsConfig(cfg, &s.cert)
	}

	s.log = cfg.Logger
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With(slog.String("device", s.id))
	return s, nil
}

// tlsConfig is the client side of mutual TLS 1.3 with the pinned root. The
// client certificate is read from cert at every handshake, so that a
// renewed or rotated certificate is used from the next connection on.
func tlsConfig(cfg Config, cert *atomic.Pointer[tls.Certificate]) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    cfg.RootCAs,
		ServerName: cfg.ServerName,
		// GetClientCertificate rather than Certificates: with Certificates,
		// crypto/tls silently sends no certificate when the server's list
		// of acceptable CAs does not name our issuer, and the failure then
		// shows up far from its cause. The broker decides, not the client.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := cert.Load(); c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil // validate stores one whenever a TLS server is listed
		},
	}
}

// parseLocalAddr reads Config.LocalAddr: an IP address only, since a
// fixed local port would let the client make one connection at a time.
func parseLocalAddr(raw string) (*net.TCPAddr, error) {
	ip, err := netip.ParseAddr(raw)
	if err != nil {
		return nil, fmt.Errorf("Config.LocalAddr %q is not an IP address (such as 127.0.0.2 or fd00::7; no port, no host name): %w", raw, err)
	}
	if ip.IsUnspecified() || ip.IsMulticast() {
		return nil, fmt.Errorf("Config.LocalAddr %q cannot be a source address; give one of this host's addresses, or leave it empty to let the system choose", raw)
	}
	ip = ip.Unmap()
	return &net.TCPAddr{IP: ip.AsSlice(), Zone: ip.Zone()}, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// parseServer accepts mqtts:// and wss:// URLs, and with envelope mqtt://
// too: the SDK speaks MQTT without TLS only when every message is sealed and
// the CONNECT carries a single-use password.
func parseServer(raw string, envelope bool) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	u.Scheme = strings.ToLower(u.Scheme)
	switch u.Scheme {
	case "mqtts":
		if u.Port() == "" && u.Hostname() != "" {
			u.Host = net.JoinHostPort(u.Hostname(), "8883")
		}
	case "wss":
	case "mqtt":
		if !envelope {
			return nil, fmt.Errorf("%q is not encrypted; use mqtts:// or wss://, or set Config.Envelope for an envelope device, the only kind Warden admits on its plain listener", u.Redacted())
		}
		if u.Port() == "" && u.Hostname() != "" {
			u.Host = net.JoinHostPort(u.Hostname(), "1883")
		}
		if u.Path != "" && u.Path != "/" {
			return nil, fmt.Errorf("%q has a path; an mqtt:// server is host and port only", u.Redacted())
		}
	case "tcp", "ws":
		return nil, fmt.Errorf("%q is not encrypted; use mqtts:// or wss:// (or mqtt:// for an envelope device)", u.Redacted())
	default:
		return nil, fmt.Errorf("%q: scheme %q is not mqtts or wss", u.Redacted(), u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("%q has no host", u.Redacted())
	}
	if u.User != nil {
		return nil, fmt.Errorf("%q carries user information; devices authenticate with their certificate, or an envelope password the SDK makes", u.Redacted())
	}
	return u, nil
}
