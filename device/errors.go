package device

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/eclipse/paho.golang/autopaho"

	"github.com/warden-iot/warden/envelope"
)

// ErrClosed is returned by every method called after Close.
var ErrClosed = errors.New("device: client is closed")

// RefusedError reports that the broker answered a request with an MQTT 5
// reason code of 0x80 or above: a refused CONNECT (CONNACK), PUBLISH
// (PUBACK or PUBREC) or SUBSCRIBE (SUBACK). Retrying the same request will
// normally be refused again.
type RefusedError struct {
	Op         string // "connect", "publish" or "subscribe"
	Target     string // the server URL, topic or topic filter
	ReasonCode byte   // the MQTT 5 reason code
	Reason     string // the broker's reason string, if it sent one

	plain bool // a CONNECT on a plain listener, with an envelope password
}

func (e *RefusedError) Error() string {
	msg := fmt.Sprintf("device: broker refused %s %s: reason code 0x%02X (%s)", e.Op, e.Target, e.ReasonCode, reasonName(e.ReasonCode))
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	switch e.ReasonCode {
	case 0x86, 0x87, 0x8A:
		switch {
		case e.Op == "connect" && e.plain:
			msg += "; check that the device is registered, active and an envelope device in Warden, that its envelope secret and epoch are current, " +
				"and that its sequence counter was not restored from an older copy (an old counter replays passwords already used, which Warden refuses)"
		case e.Op == "connect":
			msg += "; check that the device is registered and active in Warden"
		default:
			msg += "; a device may only use its own private/<id>/ topics"
		}
	}
	return msg
}

// reasonName names the MQTT 5 reason codes (§2.4) a device can meet.
func reasonName(code byte) string {
	switch code {
	case 0x80:
		return "unspecified error"
	case 0x81:
		return "malformed packet"
	case 0x82:
		return "protocol error"
	case 0x83:
		return "implementation specific error"
	case 0x84:
		return "unsupported protocol version"
	case 0x85:
		return "client identifier not valid"
	case 0x86:
		return "bad user name or password"
	case 0x87:
		return "not authorized"
	case 0x88:
		return "server unavailable"
	case 0x89:
		return "server busy"
	case 0x8A:
		return "banned"
	case 0x8C:
		return "bad authentication method"
	case 0x8F:
		return "topic filter invalid"
	case 0x90:
		return "topic name invalid"
	case 0x91:
		return "packet identifier in use"
	case 0x95:
		return "packet too large"
	case 0x97:
		return "quota exceeded"
	case 0x99:
		return "payload format invalid"
	case 0x9A:
		return "retain not supported"
	case 0x9B:
		return "QoS not supported"
	case 0x9C:
		return "use another server"
	case 0x9D:
		return "server moved"
	case 0x9E:
		return "shared subscriptions not supported"
	case 0x9F:
		return "connection rate exceeded"
	case 0xA1:
		return "subscription identifiers not supported"
	case 0xA2:
		return "wildcard subscriptions not supported"
	}
	return "unknown reason code"
}

// transientConnack reports whether a CONNACK refusal is about the broker's
// state rather than this device, so that trying again later may succeed.
func transientConnack(code byte) bool {
	switch code {
	case 0x80, 0x83, 0x88, 0x89, 0x97, 0x9C, 0x9D, 0x9F:
		return true
	}
	return false
}

// rejectedCertificate reports whether err is a TLS alert in which the broker
// rejected the device's certificate. In TLS 1.3 the client's handshake
// completes before the server has checked the client certificate, so the
// rejection arrives as an alert on the first read (while waiting for
// CONNACK). crypto/tls reports it as a net.OpError whose Err has the alert's
// text; comparing with tls.AlertError's text avoids copying those strings.
func rejectedCertificate(err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" || op.Err == nil {
		return false
	}
	// bad_certificate, unsupported_certificate, certificate_revoked,
	// certificate_expired, certificate_unknown, unknown_ca, access_denied,
	// certificate_required (RFC 8446 §6.2).
	for _, a := range [...]tls.AlertError{42, 43, 44, 45, 46, 48, 49, 116} {
		if op.Err.Error() == a.Error() {
			return true
		}
	}
	return false
}

// permanent reports whether a failed connection attempt will fail the same
// way next time: the broker refused this device, or the broker's
// certificate is not one the device trusts, or an envelope device's epoch has
// no sequence numbers left. Connect gives up on these instead of retrying
// until its context ends.
func permanent(err error) bool {
	if errors.Is(err, envelope.ErrRekeyRequired) {
		return true // no CONNECT password can be made any more
	}
	var ce *autopaho.ConnackError
	if errors.As(err, &ce) {
		return !transientConnack(ce.ReasonCode)
	}
	var ve *tls.CertificateVerificationError
	if errors.As(err, &ve) {
		return true
	}
	return rejectedCertificate(err)
}

// explainVerification adds the likely fix to a server certificate
// verification failure.
func explainVerification(server string, err error) error {
	var hostErr x509.HostnameError
	if errors.As(err, &hostErr) {
		return fmt.Errorf("device: %s: the broker's certificate is not valid for this host name (set Config.ServerName if the broker is reached under another name): %w", server, err)
	}
	var authErr x509.UnknownAuthorityError
	if errors.As(err, &authErr) {
		return fmt.Errorf("device: %s: the broker's certificate is not signed by the pinned Warden root (Config.RootCAs); the system roots are never used: %w", server, err)
	}
	return fmt.Errorf("device: %s: the broker's certificate was refused: %w", server, err)
}
