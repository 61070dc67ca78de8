package config

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Monitor configures the anomaly monitor (internal/monitor,
// docs/monitoring.md): detectors over what devices do, the alerts they
// raise and the responses taken. Every detector can be turned off on its
// own; the defaults are meant to stay quiet on a healthy fleet.
type Monitor struct {
	// Enabled turns the whole monitor on. Off, no detector runs, no alert
	// is raised and quarantined devices are not restricted.
	Enabled bool `koanf:"enabled"`
	// Cooldown is how long a finding of the same detector about the same
	// subject is counted into the alert already raised instead of raising
	// a new one.
	Cooldown time.Duration `koanf:"cooldown"`
	// QueueSize bounds the findings waiting to be stored; beyond it they
	// are dropped and counted, so that a flood never slows the broker.
	QueueSize int `koanf:"queue_size"`
	// MaxDevices bounds the devices whose behaviour is tracked, and
	// MaxSources the untrusted subjects (source addresses, claimed IDs,
	// services) whose failures are counted: their memory is bounded
	// whatever peers send.
	MaxDevices int `koanf:"max_devices"`
	MaxSources int `koanf:"max_sources"`
	// ForgetAfter is how long a device may stay unseen before its state
	// (learned rates, last activity) is dropped. It must exceed every
	// heartbeat, or a silent device could be forgotten before it is
	// reported.
	ForgetAfter time.Duration `koanf:"forget_after"`
	// CheckInterval spaces the periodic checks: silence, forgetting, and
	// picking up quarantines released from the command line.
	CheckInterval time.Duration `koanf:"check_interval"`
	// Retention is how long alerts are kept after they were last seen;
	// 0 keeps them forever.
	Retention time.Duration  `koanf:"retention"`
	Webhook   MonitorWebhook `koanf:"webhook"`

	// AuthFailures: refused connections per claimed device ID.
	AuthFailures MonitorThreshold `koanf:"auth_failures"`
	// AuthFailuresSource: refused connections per source address (the
	// host, without the port).
	AuthFailuresSource MonitorThreshold `koanf:"auth_failures_source"`
	// EnvelopeTagFailures and EnvelopeReplays: sealed messages of a device
	// that failed authentication, or were replays.
	EnvelopeTagFailures MonitorThresholdResponse `koanf:"envelope_tag_failures"`
	EnvelopeReplays     MonitorThresholdResponse `koanf:"envelope_replays"`
	// ACLDenials: publishes and subscriptions outside a device's rights.
	ACLDenials MonitorThresholdResponse `koanf:"acl_denials"`
	// PublishRate and PayloadSize compare a device with its own learned
	// baseline.
	PublishRate MonitorRate `koanf:"publish_rate"`
	PayloadSize MonitorSize `koanf:"payload_size"`
	// ConnectFlapping: connects per device.
	ConnectFlapping MonitorThresholdResponse `koanf:"connect_flapping"`
	// ClonedIdentity: one device identity connecting alternately from two
	// addresses.
	ClonedIdentity MonitorClone `koanf:"cloned_identity"`
	// Silence: a device not heard from for longer than its heartbeat.
	Silence MonitorSilence `koanf:"silence"`
	// CertExpiry: certificates about to expire.
	CertExpiry MonitorCertExpiry `koanf:"cert_expiry"`
	// Firmware: a device reporting firmware outside its model's allowed set.
	Firmware MonitorFirmware `koanf:"firmware"`
}

// Responses a detector may take against a device, besides raising its
// alert.
const (
	ResponseAlert      = "alert"      // alert only
	ResponseDisconnect = "disconnect" // cut the device's live connection
	// ResponseQuarantine restricts the device to its OTA and certificate
	// topics until an operator releases it.
	ResponseQuarantine = "quarantine"
)

// MonitorWebhook is where alerts are POSTed, signed with HMAC-SHA256.
type MonitorWebhook struct {
	// URL is an http:// or https:// URL; empty turns the webhook off.
	URL string `koanf:"url"`
	// SecretFile holds the signing secret (at least 16 bytes; surrounding
	// white space is ignored), mode 0600. Required with a URL. The secret
	// is never written in the configuration itself.
	SecretFile string `koanf:"secret_file"`
	// Timeout bounds one delivery attempt.
	Timeout time.Duration `koanf:"timeout"`
	// MaxAttempts bounds the attempts per alert, with exponential backoff
	// between them.
	MaxAttempts int `koanf:"max_attempts"`
}

// MonitorThreshold is a detector that counts events per subject in a
// sliding window and alerts when Threshold are reached. Its subject may be
// made up by the peer, so it takes no response against a device.
type MonitorThreshold struct {
	Enabled   bool          `koanf:"enabled"`
	Threshold int           `koanf:"threshold"`
	Window    time.Duration `koanf:"window"`
}

// MonitorThresholdResponse is a MonitorThreshold about an authenticated
// device, which may also respond.
type MonitorThresholdResponse struct {
	Enabled   bool          `koanf:"enabled"`
	Threshold int           `koanf:"threshold"`
	Window    time.Duration `koanf:"window"`
	Response  string        `koanf:"response"` // alert, disconnect or quarantine
}

// MonitorRate detects a device publishing far above its own rate. Publishes
// are counted per Interval; the baseline is an exponentially weighted
// average of the counts of the intervals in which the device published.
// After Warmup such intervals, an interval with more than Factor times the
// baseline and more than Floor publishes is a finding.
type MonitorRate struct {
	Enabled  bool          `koanf:"enabled"`
	Interval time.Duration `koanf:"interval"`
	Factor   float64       `koanf:"factor"`
	Floor    int           `koanf:"floor"`
	Warmup   int           `koanf:"warmup"`
	Response string        `koanf:"response"`
}

// MonitorSize detects a payload far larger than the device's own: after
// Warmup publishes, one larger than Factor times the weighted average of
// its sizes and than Floor is a finding.
type MonitorSize struct {
	Enabled  bool     `koanf:"enabled"`
	Factor   float64  `koanf:"factor"`
	Floor    ByteSize `koanf:"floor"`
	Warmup   int      `koanf:"warmup"`
	Response string   `koanf:"response"`
}

// MonitorClone detects a device identity connecting alternately from two
// hosts: Switches changes of host between consecutive connects within
// Window.
type MonitorClone struct {
	Enabled  bool          `koanf:"enabled"`
	Switches int           `koanf:"switches"`
	Window   time.Duration `koanf:"window"`
	Response string        `koanf:"response"`
}

// MonitorSilence detects a device not heard from (no connect, no publish)
// for longer than its heartbeat.
type MonitorSilence struct {
	Enabled   bool          `koanf:"enabled"`
	Heartbeat time.Duration `koanf:"heartbeat"`
	// Models override Heartbeat per device model (as the device reports it
	// with its firmware); a heartbeat of 0 turns the check off for a model.
	Models []ModelHeartbeat `koanf:"models"`
}

// ModelHeartbeat is one model's expected heartbeat.
type ModelHeartbeat struct {
	Model     string        `koanf:"model"`
	Heartbeat time.Duration `koanf:"heartbeat"`
}

// MonitorCertExpiry detects certificates expiring within Window, scanning
// the store every Interval. A certificate is reported only once less than a
// quarter of its life is left as well: the device SDK renews when a third
// is left, so a short-lived certificate of a healthy device is never news.
type MonitorCertExpiry struct {
	Enabled  bool          `koanf:"enabled"`
	Window   time.Duration `koanf:"window"`
	Interval time.Duration `koanf:"interval"`
}

// MonitorFirmware detects firmware outside the model's allowed set.
type MonitorFirmware struct {
	Enabled  bool   `koanf:"enabled"`
	Response string `koanf:"response"`
}

// HeartbeatFor returns the heartbeat expected of a device of model: the
// model's override if there is one, else Heartbeat. 0 means not checked.
func (s MonitorSilence) HeartbeatFor(model string) time.Duration {
	for _, m := range s.Models {
		if m.Model == model {
			return m.Heartbeat
		}
	}
	return s.Heartbeat
}

// DefaultMonitor returns the monitor's built-in configuration (the
// monitor section of Default()).
func DefaultMonitor() Monitor {
	return Monitor{
		Enabled:       true,
		Cooldown:      time.Hour,
		QueueSize:     4096,
		MaxDevices:    200_000,
		MaxSources:    20_000,
		ForgetAfter:   7 * 24 * time.Hour,
		CheckInterval: 30 * time.Second,
		Retention:     90 * 24 * time.Hour,
		Webhook:       MonitorWebhook{Timeout: 10 * time.Second, MaxAttempts: 5},

		AuthFailures:        MonitorThreshold{Enabled: true, Threshold: 10, Window: 5 * time.Minute},
		AuthFailuresSource:  MonitorThreshold{Enabled: true, Threshold: 50, Window: 5 * time.Minute},
		EnvelopeTagFailures: MonitorThresholdResponse{Enabled: true, Threshold: 3, Window: 10 * time.Minute, Response: ResponseAlert},
		EnvelopeReplays:     MonitorThresholdResponse{Enabled: true, Threshold: 5, Window: 10 * time.Minute, Response: ResponseAlert},
		ACLDenials:          MonitorThresholdResponse{Enabled: true, Threshold: 10, Window: 10 * time.Minute, Response: ResponseAlert},
		PublishRate:         MonitorRate{Enabled: true, Interval: time.Minute, Factor: 10, Floor: 60, Warmup: 30, Response: ResponseAlert},
		PayloadSize:         MonitorSize{Enabled: true, Factor: 8, Floor: 4 * KiB, Warmup: 50, Response: ResponseAlert},
		ConnectFlapping:     MonitorThresholdResponse{Enabled: true, Threshold: 10, Window: 10 * time.Minute, Response: ResponseAlert},
		ClonedIdentity:      MonitorClone{Enabled: true, Switches: 2, Window: 10 * time.Minute, Response: ResponseAlert},
		Silence:             MonitorSilence{Enabled: true, Heartbeat: time.Hour},
		CertExpiry:          MonitorCertExpiry{Enabled: true, Window: 30 * 24 * time.Hour, Interval: 6 * time.Hour},
		Firmware:            MonitorFirmware{Enabled: true, Response: ResponseAlert},
	}
}

// Ranges of the monitor section. Wide enough for any fleet, narrow enough
// to catch a unit mistake.
const (
	minCooldown        = time.Minute
	maxCooldown        = 7 * 24 * time.Hour
	minQueue           = 16
	maxQueue           = 1_000_000
	minTracked         = 100
	maxTracked         = 10_000_000
	minForget          = time.Hour
	maxForget          = 365 * 24 * time.Hour
	minCheckInterval   = time.Second
	maxCheckInterval   = time.Hour
	minRetention       = 24 * time.Hour
	maxRetention       = 10 * 365 * 24 * time.Hour
	minWebhookTimeout  = time.Second
	maxWebhookTimeout  = 5 * time.Minute
	maxWebhookAttempts = 20
	maxThreshold       = 1_000_000
	minWindow          = time.Second
	maxWindow          = 7 * 24 * time.Hour
	minRateInterval    = time.Second
	maxRateInterval    = time.Hour
	maxFactor          = 1_000_000
	maxRateFloor       = 1_000_000_000
	maxWarmup          = 1_000_000
	minSizeFloor       = ByteSize(1)
	maxSizeFloor       = 256 * MiB
	maxSwitches        = 1000
	minHeartbeat       = time.Minute
	maxHeartbeat       = 365 * 24 * time.Hour
	maxModels          = 1000
	minExpiryWindow    = time.Hour
	maxExpiryWindow    = 10 * 365 * 24 * time.Hour
	minExpiryInterval  = time.Minute
	maxExpiryInterval  = 7 * 24 * time.Hour
)

// Validate checks the monitor section on its own (Config.Validate also
// checks it against the rest of the configuration), and returns every
// problem at once, keys named under "monitor.".
func (m *Monitor) Validate() error {
	v := &validator{}
	m.validate(v)
	return errors.Join(v.errs...)
}

func (m *Monitor) validate(v *validator) {
	v.duration("monitor.cooldown", m.Cooldown, minCooldown, maxCooldown)
	v.intRange("monitor.queue_size", m.QueueSize, minQueue, maxQueue)
	v.intRange("monitor.max_devices", m.MaxDevices, minTracked, maxTracked)
	v.intRange("monitor.max_sources", m.MaxSources, minTracked, maxTracked)
	v.duration("monitor.forget_after", m.ForgetAfter, minForget, maxForget)
	v.duration("monitor.check_interval", m.CheckInterval, minCheckInterval, maxCheckInterval)
	if m.Retention != 0 {
		v.duration("monitor.retention", m.Retention, minRetention, maxRetention)
	}

	w := m.Webhook
	if w.URL != "" {
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Fragment != "" {
			v.add("monitor.webhook.url", quote(w.URL), "must be an http:// or https:// URL with a host and no fragment, e.g. https://alerts.example.com/warden")
		}
		if w.SecretFile == "" {
			v.add("monitor.webhook.secret_file", "", "empty; a webhook needs a signing secret: write at least 16 random bytes to a file (mode 0600) and name it here")
		}
	}
	if w.SecretFile != "" {
		v.path("monitor.webhook.secret_file", w.SecretFile)
	}
	v.duration("monitor.webhook.timeout", w.Timeout, minWebhookTimeout, maxWebhookTimeout)
	v.intRange("monitor.webhook.max_attempts", w.MaxAttempts, 1, maxWebhookAttempts)

	threshold := func(key string, n int, window time.Duration) {
		v.intRange(key+".threshold", n, 1, maxThreshold)
		v.duration(key+".window", window, minWindow, maxWindow)
	}
	threshold("monitor.auth_failures", m.AuthFailures.Threshold, m.AuthFailures.Window)
	threshold("monitor.auth_failures_source", m.AuthFailuresSource.Threshold, m.AuthFailuresSource.Window)
	for _, d := range []struct {
		key string
		d   MonitorThresholdResponse
	}{
		{"monitor.envelope_tag_failures", m.EnvelopeTagFailures},
		{"monitor.envelope_replays", m.EnvelopeReplays},
		{"monitor.acl_denials", m.ACLDenials},
		{"monitor.connect_flapping", m.ConnectFlapping},
	} {
		threshold(d.key, d.d.Threshold, d.d.Window)
		v.response(d.key+".response", d.d.Response)
	}

	r := m.PublishRate
	v.duration("monitor.publish_rate.interval", r.Interval, minRateInterval, maxRateInterval)
	v.factor("monitor.publish_rate.factor", r.Factor)
	v.intRange("monitor.publish_rate.floor", r.Floor, 1, maxRateFloor)
	v.intRange("monitor.publish_rate.warmup", r.Warmup, 1, maxWarmup)
	v.response("monitor.publish_rate.response", r.Response)

	s := m.PayloadSize
	v.factor("monitor.payload_size.factor", s.Factor)
	if s.Floor < minSizeFloor || s.Floor > maxSizeFloor {
		v.add("monitor.payload_size.floor", s.Floor.String(), "must be between "+minSizeFloor.String()+" and "+maxSizeFloor.String())
	}
	v.intRange("monitor.payload_size.warmup", s.Warmup, 1, maxWarmup)
	v.response("monitor.payload_size.response", s.Response)

	c := m.ClonedIdentity
	v.intRange("monitor.cloned_identity.switches", c.Switches, 1, maxSwitches)
	v.duration("monitor.cloned_identity.window", c.Window, minWindow, maxWindow)
	v.response("monitor.cloned_identity.response", c.Response)

	sl := m.Silence
	v.duration("monitor.silence.heartbeat", sl.Heartbeat, minHeartbeat, maxHeartbeat)
	if len(sl.Models) > maxModels {
		v.add("monitor.silence.models", strconv.Itoa(len(sl.Models))+" entries", fmt.Sprintf("at most %d models", maxModels))
	}
	seen := make(map[string]bool, len(sl.Models))
	for i, mh := range sl.Models {
		key := fmt.Sprintf("monitor.silence.models[%d]", i)
		switch {
		case mh.Model == "":
			v.add(key+".model", "", "empty; name the device model the heartbeat is for")
		case seen[mh.Model]:
			v.add(key+".model", quote(mh.Model), "listed twice; give each model one heartbeat")
		}
		seen[mh.Model] = true
		if mh.Heartbeat != 0 {
			v.duration(key+".heartbeat", mh.Heartbeat, minHeartbeat, maxHeartbeat)
		}
	}
	// A device forgotten before its heartbeat passed would never be
	// reported silent.
	longest := sl.Heartbeat
	for _, mh := range sl.Models {
		longest = max(longest, mh.Heartbeat)
	}
	if sl.Enabled && m.ForgetAfter <= longest && m.ForgetAfter >= minForget && longest <= maxHeartbeat {
		v.add("monitor.forget_after", FormatDuration(m.ForgetAfter), "must be longer than the longest silence heartbeat ("+FormatDuration(longest)+
			"), or a silent device would be forgotten before it is reported")
	}

	e := m.CertExpiry
	v.duration("monitor.cert_expiry.window", e.Window, minExpiryWindow, maxExpiryWindow)
	v.duration("monitor.cert_expiry.interval", e.Interval, minExpiryInterval, maxExpiryInterval)

	v.response("monitor.firmware.response", m.Firmware.Response)
}

func (v *validator) response(key, r string) {
	v.oneOf(key, r, ResponseAlert, ResponseDisconnect, ResponseQuarantine)
}

func (v *validator) factor(key string, f float64) {
	if !(f > 1) || f > maxFactor || math.IsNaN(f) {
		v.add(key, strconv.FormatFloat(f, 'g', -1, 64), fmt.Sprintf("must be a number greater than 1 and at most %d (times the device's baseline)", maxFactor))
	}
}

// modelHeartbeatsType is decoded from the environment as
// "model=heartbeat,model=heartbeat".
var modelHeartbeatsType = reflect.TypeOf([]ModelHeartbeat(nil))

// parseModelHeartbeats reads WARDEN_MONITOR__SILENCE__MODELS.
func parseModelHeartbeats(s string) ([]ModelHeartbeat, error) {
	var out []ModelHeartbeat
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		model, hb, ok := strings.Cut(part, "=")
		if !ok || strings.TrimSpace(model) == "" {
			return nil, &hookError{"expected model=heartbeat pairs separated by commas, e.g. sensor-v2=6h,gateway=0s; got " + quote(part)}
		}
		d, err := ParseDuration(strings.TrimSpace(hb))
		if err != nil {
			return nil, &hookError{"heartbeat of model " + quote(strings.TrimSpace(model)) + ": " + err.Error() + "; " + durationHelp}
		}
		out = append(out, ModelHeartbeat{Model: strings.TrimSpace(model), Heartbeat: d})
	}
	return out, nil
}
