package monitor

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/store"
)

// Detector names: the alert's Detector, the metric label, the audit action
// alert.<detector> and the configuration key monitor.<detector>.
const (
	DetectorAuthFailures        = "auth_failures"         // refused connections per claimed device ID
	DetectorAuthFailuresSource  = "auth_failures_source"  // refused connections per source host
	DetectorEnvelopeTagFailures = "envelope_tag_failures" // sealed messages whose tag did not verify
	DetectorEnvelopeReplays     = "envelope_replays"      // sealed messages refused as replays
	DetectorACLDenials          = "acl_denials"           // publishes or subscriptions outside the rights
	DetectorPublishRate         = "publish_rate"          // far above the device's learned rate
	DetectorPayloadSize         = "payload_size"          // far above the device's learned payload size
	DetectorConnectFlapping     = "connect_flapping"      // connects again and again
	DetectorClonedIdentity      = "cloned_identity"       // one identity alternating between hosts
	DetectorSilence             = "silence"               // not heard from for longer than its heartbeat
	DetectorCertExpiry          = "cert_expiry"           // certificate about to expire
	DetectorFirmware            = "firmware"              // firmware outside the model's allowed set
)

// severities of the built-in detectors. Critical is kept for what only an
// attacker (or a stolen key) plausibly causes.
var severities = map[string]string{
	DetectorAuthFailures:        store.SeverityWarning,
	DetectorAuthFailuresSource:  store.SeverityWarning,
	DetectorEnvelopeTagFailures: store.SeverityWarning,
	DetectorEnvelopeReplays:     store.SeverityCritical,
	DetectorACLDenials:          store.SeverityWarning,
	DetectorPublishRate:         store.SeverityWarning,
	DetectorPayloadSize:         store.SeverityWarning,
	DetectorConnectFlapping:     store.SeverityInfo,
	DetectorClonedIdentity:      store.SeverityCritical,
	DetectorSilence:             store.SeverityWarning,
	DetectorCertExpiry:          store.SeverityWarning,
	DetectorFirmware:            store.SeverityCritical,
}

// Severity returns the severity of a built-in detector's alerts, "" for an
// unknown detector.
func Severity(detector string) string { return severities[detector] }

// Finding is an alert raised from outside the built-in detectors (for
// instance an OTA rollout paused), through Raise. It is de-duplicated,
// stored, counted, audited and sent like the others, and takes no response.
type Finding struct {
	Detector string // e.g. "ota.rollout_paused"; required
	Severity string // store.SeverityInfo, SeverityWarning or SeverityCritical
	Device   string
	Service  string
	Remote   string
	// Subject is what de-duplication keys on besides the detector; empty
	// means the device, else the service, else the remote address.
	Subject string
	Summary string // required
	Details map[string]string
}

// taskKind says what the worker is asked to do.
type taskKind uint8

const (
	taskFinding  taskKind = iota + 1 // a detector fired
	taskFirmware                     // check a firmware report against the model's allowed set
	taskRaise                        // an external Finding
)

// task is a finding (or a check) on its way from Observe to the worker. It
// holds only values and strings the event already had, so that queueing it
// allocates nothing; the worker formats it.
type task struct {
	kind     taskKind
	detector string
	at       time.Time
	device   string
	service  string
	remote   string
	topic    string
	reason   string
	model    string
	version  string
	host2    string        // the other host (cloned identity)
	n        int64         // a count or a size
	x        float64       // a baseline
	d        time.Duration // a window, a heartbeat, a time left
	since    time.Time     // last seen (silence), expiry (certificates)
	serial   string        // certificate serial
	ext      *Finding
}

// Bounds on what the monitor copies from events into alerts: the strings
// come from peers (a client ID, a topic) and from device reports.
const (
	maxIDShown    = 128
	maxTopicShown = 256
	maxTextShown  = 128
)

// clean makes an untrusted string safe to store and show on one line:
// valid UTF-8, no control characters, at most max bytes.
func clean(s string, max int) string {
	ok := len(s) <= max && utf8.ValidString(s)
	if ok {
		for _, r := range s {
			if unicode.IsControl(r) || r == utf8.RuneError {
				ok = false
				break
			}
		}
	}
	if ok {
		return s
	}
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if unicode.IsControl(r) {
			r = '?'
		}
		if b.Len()+utf8.RuneLen(r) > max-len("…") {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// subject is what a finding is about, for de-duplication.
func (t task) subject() string {
	switch {
	case t.kind == taskRaise && t.ext.Subject != "":
		return t.ext.Subject
	case t.detector == DetectorCertExpiry:
		return "serial:" + t.serial
	case t.device != "":
		return "device:" + t.device
	case t.service != "":
		return "service:" + t.service
	}
	return "host:" + t.remote
}

func dur(d time.Duration) string { return config.FormatDuration(d) }

// roundDur shows a long duration to the minute, a short one to the second.
func roundDur(d time.Duration) string {
	if d >= time.Hour {
		return dur(d.Round(time.Minute))
	}
	return dur(d.Round(time.Second))
}

// describe turns a detector's finding into the alert fields: a sentence
// with the numbers, and the same numbers as details for machines.
func (m *Monitor) describe(t task) (summary string, details map[string]string) {
	dev := clean(t.device, maxIDShown)
	remote := clean(t.remote, maxTextShown)
	n := strconv.FormatInt(t.n, 10)
	details = map[string]string{}
	switch t.detector {
	case DetectorAuthFailures:
		details["count"], details["window"], details["last_reason"] = n, dur(t.d), clean(t.reason, maxTextShown)
		who := "device " + dev
		if t.device == "" {
			who = "service " + clean(t.service, maxIDShown)
		}
		summary = fmt.Sprintf("%d authentication failures in %s claiming %s, last from %s (%s)", t.n, dur(t.d), who, orUnknown(remote), orUnknown(details["last_reason"]))
	case DetectorAuthFailuresSource:
		details["count"], details["window"], details["last_reason"] = n, dur(t.d), clean(t.reason, maxTextShown)
		summary = fmt.Sprintf("%d authentication failures in %s from %s", t.n, dur(t.d), remote)
	case DetectorEnvelopeTagFailures:
		details["count"], details["window"] = n, dur(t.d)
		summary = fmt.Sprintf("%d sealed messages from device %s failed authentication in %s", t.n, dev, dur(t.d))
	case DetectorEnvelopeReplays:
		details["count"], details["window"] = n, dur(t.d)
		summary = fmt.Sprintf("%d sealed messages from device %s were replays in %s", t.n, dev, dur(t.d))
	case DetectorACLDenials:
		topic := clean(t.topic, maxTopicShown)
		details["count"], details["window"], details["last_topic"], details["last_reason"] = n, dur(t.d), topic, clean(t.reason, maxTextShown)
		who := "device " + dev
		if t.device == "" {
			who = "service " + clean(t.service, maxIDShown)
		}
		summary = fmt.Sprintf("%d ACL denials in %s for %s, last %s on %s", t.n, dur(t.d), who, orUnknown(details["last_reason"]), orUnknown(topic))
	case DetectorPublishRate:
		details["count"], details["interval"], details["baseline"] = n, dur(t.d), strconv.FormatFloat(t.x, 'f', 1, 64)
		summary = fmt.Sprintf("device %s published %d messages in %s, %.0f times its baseline of %.1f", dev, t.n, dur(t.d), float64(t.n)/t.x, t.x)
	case DetectorPayloadSize:
		topic := clean(t.topic, maxTopicShown)
		details["size"], details["average"], details["topic"] = n, strconv.FormatFloat(t.x, 'f', 0, 64), topic
		summary = fmt.Sprintf("device %s published a %d-byte payload on %s, %.0f times its average of %.0f bytes", dev, t.n, orUnknown(topic), float64(t.n)/t.x, t.x)
	case DetectorConnectFlapping:
		details["count"], details["window"] = n, dur(t.d)
		summary = fmt.Sprintf("device %s connected %d times in %s", dev, t.n, dur(t.d))
	case DetectorClonedIdentity:
		other := clean(t.host2, maxTextShown)
		details["switches"], details["window"], details["hosts"] = n, dur(t.d), other+","+remote
		summary = fmt.Sprintf("device %s connected alternately from %s and %s, %d changes of address in %s: a cloned key?", dev, other, remote, t.n, dur(t.d))
	case DetectorSilence:
		details["silent_for"], details["heartbeat"], details["last_seen"] = roundDur(t.at.Sub(t.since)), dur(t.d), t.since.UTC().Format(time.RFC3339)
		if t.model != "" {
			details["model"] = clean(t.model, maxTextShown)
		}
		summary = fmt.Sprintf("device %s silent for %s, longer than its heartbeat of %s (last seen %s)", dev, details["silent_for"], dur(t.d), details["last_seen"])
	case DetectorCertExpiry:
		left := t.since.Sub(t.at)
		details["serial"], details["not_after"] = t.serial, t.since.UTC().Format(time.RFC3339)
		what := "device " + dev
		if t.device == "" {
			what = "service " + clean(t.service, maxIDShown)
		}
		if left > 0 {
			details["expires_in"] = roundDur(left)
			summary = fmt.Sprintf("certificate %s of %s expires in %s (%s)", t.serial, what, details["expires_in"], details["not_after"])
		} else {
			details["expired_for"] = roundDur(-left)
			summary = fmt.Sprintf("certificate %s of %s expired %s ago (%s)", t.serial, what, details["expired_for"], details["not_after"])
		}
	case DetectorFirmware:
		model, version := clean(t.model, maxTextShown), clean(t.version, maxTextShown)
		details["model"], details["version"], details["allowed"] = model, version, clean(t.reason, store.MaxAlertDetailLength)
		summary = fmt.Sprintf("device %s runs firmware %s, not among the versions allowed for model %s (%s)", dev, orUnknown(version), orUnknown(model), orUnknown(details["allowed"]))
	}
	if remote != "" && t.detector != DetectorAuthFailuresSource {
		details["remote"] = remote
	}
	return clean(summary, store.MaxAlertSummaryLength), details
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

// response is the configured response of a detector, as the alert records
// it; detectors about a subject the peer may have made up never respond.
func (m *Monitor) response(detector string) string {
	var r string
	switch detector {
	case DetectorEnvelopeTagFailures:
		r = m.cfg.EnvelopeTagFailures.Response
	case DetectorEnvelopeReplays:
		r = m.cfg.EnvelopeReplays.Response
	case DetectorACLDenials:
		r = m.cfg.ACLDenials.Response
	case DetectorPublishRate:
		r = m.cfg.PublishRate.Response
	case DetectorPayloadSize:
		r = m.cfg.PayloadSize.Response
	case DetectorConnectFlapping:
		r = m.cfg.ConnectFlapping.Response
	case DetectorClonedIdentity:
		r = m.cfg.ClonedIdentity.Response
	case DetectorFirmware:
		r = m.cfg.Firmware.Response
	}
	switch r {
	case config.ResponseDisconnect:
		return store.ResponseDisconnect
	case config.ResponseQuarantine:
		return store.ResponseQuarantine
	}
	return store.ResponseNone
}
