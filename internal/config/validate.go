package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Ranges enforced by Validate. They are wide enough for any real fleet and
// narrow enough to catch a unit mistake (64 meaning bytes, not KiB).
const (
	minConnectTimeout       = time.Second
	maxConnectTimeout       = 5 * time.Minute
	minPacketSize           = KiB
	maxPacketSize           = 256 * MiB // mochi's own hard ceiling
	minSendQueue            = 8
	maxSendQueue            = 65536
	minInflight             = 1
	maxInflight             = 65535 // MQTT Receive Maximum is 16 bits
	maxHandshakeConcurrency = 4096
	minKeepAlive            = time.Second
	maxKeepAlive            = 65535 * time.Second // MQTT keep alive is 16-bit seconds
	maxBurst                = 1_000_000
	maxFlapConnects         = 1_000_000
	minFlapWindow           = time.Second
	maxFlapWindow           = 24 * time.Hour
	minFlapBan              = time.Second
	maxFlapBan              = 7 * 24 * time.Hour
	minSessionExpiry        = time.Second
	maxSessionExpiry        = 10 * 365 * 24 * time.Hour
	minCertLifetime         = time.Hour
	maxCertLifetime         = 100 * 365 * 24 * time.Hour
	minImageSize            = 1 * KiB
	maxImageSize            = 1 * GiB
	maxDNSNameLength        = 253
	maxDNSLabelLength       = 63
	secondsResolutionOf     = "MQTT carries it in whole seconds"
)

// Validate checks the whole configuration and returns every problem at once
// (errors.Join of *FieldError, one per line), or nil. Each message names the
// key, the value, why it is wrong and what is allowed.
func (c *Config) Validate() error {
	v := &validator{}

	if c.Data == "" {
		v.add("data", "", "empty; set the directory where Warden keeps its state")
	} else {
		v.path("data", c.Data)
	}
	if c.MasterKeyFile != "" {
		v.path("master_key_file", c.MasterKeyFile)
	}
	for i, h := range c.Hostnames {
		v.hostname(fmt.Sprintf("hostnames[%d]", i), h)
	}

	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "text", "json")

	// Listeners.
	var listeners []listenerAddr
	if c.MQTTS.Addr == "" {
		v.add("mqtts.addr", "", "empty; the device listener cannot be turned off")
	} else if l, ok := v.addr("mqtts.addr", c.MQTTS.Addr); ok {
		listeners = append(listeners, l)
	}
	v.oneOf("mqtts.tls_profile", c.MQTTS.TLSProfile, ProfileStrict, ProfileCompat)
	if c.MQTTS.Path != "" {
		v.add("mqtts.path", quote(c.MQTTS.Path), "only the wss listener has a path; remove it")
	}
	if c.WSS.Addr != "" {
		if l, ok := v.addr("wss.addr", c.WSS.Addr); ok {
			listeners = append(listeners, l)
		}
	}
	v.oneOf("wss.tls_profile", c.WSS.TLSProfile, ProfileStrict, ProfileCompat)
	v.urlPath("wss.path", c.WSS.Path)
	if c.MQTT.Addr != "" {
		if l, ok := v.addr("mqtt.addr", c.MQTT.Addr); ok {
			listeners = append(listeners, l)
		}
	}
	if c.API.Addr != "" {
		if l, ok := v.addr("api.addr", c.API.Addr); ok {
			listeners = append(listeners, l)
		}
	}
	v.oneOf("api.tls_profile", c.API.TLSProfile, ProfileStrict, ProfileCompat)
	if c.HTTP.Addr != "" {
		if l, ok := v.addr("http.addr", c.HTTP.Addr); ok {
			listeners = append(listeners, l)
			if c.HTTP.Pprof && !isLoopbackHost(l.host) {
				v.add("http.pprof", "true", "profiles expose the process's internals: serve them only with http.addr on a loopback address (127.0.0.1:PORT or [::1]:PORT), and reach them through an SSH tunnel")
			}
		}
	} else if c.HTTP.Pprof {
		v.add("http.pprof", "true", "profiles are served on the http listener, which is off (http.addr is empty)")
	}
	v.conflicts(listeners)

	// Limits.
	l := c.Limits
	v.duration("limits.connect_timeout", l.ConnectTimeout, minConnectTimeout, maxConnectTimeout)
	if l.MaxPacketSize < minPacketSize || l.MaxPacketSize > maxPacketSize {
		v.add("limits.max_packet_size", l.MaxPacketSize.String(), "must be between "+minPacketSize.String()+" and "+maxPacketSize.String())
	}
	v.intRange("limits.client_send_queue", l.ClientSendQueue, minSendQueue, maxSendQueue)
	v.intRange("limits.max_inflight", l.MaxInflight, minInflight, maxInflight)
	v.intRange("limits.service_send_queue", l.ServiceSendQueue, minSendQueue, maxSendQueue)
	v.intRange("limits.service_max_inflight", l.ServiceMaxInflight, minInflight, maxInflight)
	v.intRange("limits.handshake_concurrency", l.HandshakeConcurrency, 0, maxHandshakeConcurrency)
	v.seconds("limits.max_keep_alive", l.MaxKeepAlive, minKeepAlive, maxKeepAlive)
	v.rate("limits.publish_rate", l.PublishRate, "messages per second per device")
	v.intRange("limits.publish_burst", l.PublishBurst, 1, maxBurst)
	v.rate("limits.connection_rate", l.ConnectionRate, "new connections per second per listener")
	v.intRange("limits.connection_burst", l.ConnectionBurst, 1, maxBurst)
	if r := l.ConnectionRatePerSource; r != 0 {
		v.rate("limits.connection_rate_per_source", r, "new connections per second per source address and listener, or 0 for no limit")
	}
	v.intRange("limits.flap_max_connects", l.FlapMaxConnects, 1, maxFlapConnects)
	v.duration("limits.flap_window", l.FlapWindow, minFlapWindow, maxFlapWindow)
	v.duration("limits.flap_ban", l.FlapBan, minFlapBan, maxFlapBan)
	v.seconds("limits.max_session_expiry", l.MaxSessionExpiry, minSessionExpiry, maxSessionExpiry)

	// Firmware delivery.
	if c.OTA.PublicURL != "" {
		if u, err := url.Parse(c.OTA.PublicURL); err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			v.add("ota.public_url", quote(c.OTA.PublicURL), "must be an https:// URL with a host and no query, e.g. https://updates.example.com:8443")
		}
	}
	if c.OTA.MaxImageSize < minImageSize || c.OTA.MaxImageSize > maxImageSize {
		v.add("ota.max_image_size", c.OTA.MaxImageSize.String(), "must be between "+minImageSize.String()+" and "+maxImageSize.String())
	}

	// Certificates.
	v.lifetime("devices.cert_lifetime", c.Devices.CertLifetime)
	v.lifetime("devices.service_cert_lifetime", c.Devices.ServiceCertLifetime)

	// Anomaly monitor.
	c.Monitor.validate(v)

	return errors.Join(v.errs...)
}

type validator struct{ errs []error }

func (v *validator) add(key, value, reason string) {
	v.errs = append(v.errs, &FieldError{Key: key, Value: value, Reason: reason})
}

func (v *validator) path(key, p string) {
	if strings.ContainsRune(p, 0) {
		v.add(key, quote(p), "a path cannot contain a NUL byte")
	}
}

func (v *validator) oneOf(key, val string, allowed ...string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	v.add(key, quote(val), "must be one of "+strings.Join(allowed, ", "))
}

func (v *validator) intRange(key string, n, lo, hi int) {
	if n < lo || n > hi {
		v.add(key, strconv.Itoa(n), fmt.Sprintf("must be between %d and %d", lo, hi))
	}
}

func (v *validator) duration(key string, d, lo, hi time.Duration) {
	if d < lo || d > hi {
		v.add(key, FormatDuration(d), "must be between "+FormatDuration(lo)+" and "+FormatDuration(hi))
	}
}

// seconds is duration for values the protocol carries in whole seconds.
func (v *validator) seconds(key string, d, lo, hi time.Duration) {
	switch {
	case d < lo || d > hi:
		v.duration(key, d, lo, hi)
	case d%time.Second != 0:
		v.add(key, FormatDuration(d), "must be a whole number of seconds; "+secondsResolutionOf)
	}
}

func (v *validator) rate(key string, r float64, unit string) {
	if !(r > 0) || math.IsInf(r, 0) {
		v.add(key, strconv.FormatFloat(r, 'g', -1, 64), "must be a number greater than 0 ("+unit+")")
	}
}

func (v *validator) lifetime(key string, d time.Duration) {
	if d == 0 {
		return
	}
	if d < minCertLifetime || d > maxCertLifetime {
		v.add(key, FormatDuration(d), "must be 0 (the default, "+FormatDuration(DefaultCertLifetime)+") or between "+
			FormatDuration(minCertLifetime)+" and "+FormatDuration(maxCertLifetime))
	}
}

func (v *validator) hostname(key, h string) {
	switch {
	case h == "":
		v.add(key, "", "empty; give a DNS name or an IP address")
	case isIPLiteral(h):
	case !isDNSName(h):
		v.add(key, quote(h), "not a DNS name (letters, digits and '-' in dot-separated labels of 1-63 characters) or IP address")
	}
}

func (v *validator) urlPath(key, p string) {
	if !strings.HasPrefix(p, "/") {
		v.add(key, quote(p), "must start with \"/\", e.g. /mqtt")
		return
	}
	for _, r := range p {
		if r == '?' || r == '#' || unicode.IsSpace(r) || unicode.IsControl(r) {
			v.add(key, quote(p), "must be a plain URL path without spaces, control characters, '?' or '#'")
			return
		}
	}
}

// listenerAddr is a listener address that parsed.
type listenerAddr struct {
	key, addr, host, port string
}

func (v *validator) addr(key, a string) (listenerAddr, bool) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		reason := err.Error()
		var ae *net.AddrError
		if errors.As(err, &ae) {
			reason = ae.Err
		}
		v.add(key, quote(a), "not host:port ("+reason+"); write e.g. :8883 or 127.0.0.1:8883")
		return listenerAddr{}, false
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 || strings.HasPrefix(port, "+") {
		v.add(key, quote(a), "port "+quote(port)+" must be a number between 0 and 65535")
		return listenerAddr{}, false
	}
	if host != "" && !isDNSName(host) {
		// Unlike a certificate name, a listen address may carry a zone
		// (fe80::1%eth0), so netip.ParseAddr rather than isIPLiteral.
		if _, err := netip.ParseAddr(host); err != nil {
			v.add(key, quote(a), "host "+quote(host)+" is neither an IP address nor a DNS name; leave it empty to listen on every interface")
			return listenerAddr{}, false
		}
	}
	return listenerAddr{key: key, addr: a, host: host, port: port}, true
}

// conflicts reports two listeners on the same port where one address
// includes the other (equal hosts, or either host a wildcard). Port 0 picks
// a free port and never conflicts.
func (v *validator) conflicts(ls []listenerAddr) {
	for i := range ls {
		for j := 0; j < i; j++ {
			a, b := ls[j], ls[i]
			pa, _ := strconv.Atoi(a.port)
			pb, _ := strconv.Atoi(b.port)
			if pa == 0 || pa != pb {
				continue
			}
			if a.host == b.host || isWildcard(a.host) || isWildcard(b.host) {
				v.add(b.key, quote(b.addr), "conflicts with "+a.key+" = "+quote(a.addr)+"; each listener needs its own port")
			}
		}
	}
}

func isWildcard(host string) bool {
	if host == "" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsUnspecified()
}

// isIPLiteral accepts an IPv4 or IPv6 address without a zone, the forms a
// certificate's IP SAN can hold.
func isIPLiteral(s string) bool {
	ip, err := netip.ParseAddr(s)
	return err == nil && ip.Zone() == ""
}

// isDNSName checks the hostname syntax of RFC 1123: dot-separated labels of
// letters, digits and hyphens, no label starting or ending with a hyphen.
// An all-numeric last label is refused: it is a mistyped IP address
// (256.1.1.1), not a name.
func isDNSName(s string) bool {
	if s == "" || len(s) > maxDNSNameLength {
		return false
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if l == "" || len(l) > maxDNSLabelLength || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	last := labels[len(labels)-1]
	return strings.Trim(last, "0123456789") != ""
}

// isLoopbackHost reports whether a listen host is a loopback address or
// localhost (an empty host listens on every interface).
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
