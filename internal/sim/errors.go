package sim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"sync"
	"syscall"

	"github.com/warden-iot/warden/device"
)

// ErrorKind names a class of failure in a Summary.
type ErrorKind string

// The kinds of failure the simulator counts.
const (
	// ErrConnectRefused: the broker refused the CONNECT (a CONNACK reason
	// code of 0x80 or above: not authorized, banned, server busy...) or
	// nothing listened at the address (TCP connection refused).
	ErrConnectRefused ErrorKind = "connect_refused"
	// ErrConnectTimeout: no CONNACK within Options.ConnectTimeout.
	ErrConnectTimeout ErrorKind = "connect_timeout"
	// ErrConnectTLS: the TLS handshake failed: the broker's certificate
	// was not trusted, or the broker rejected the device's.
	ErrConnectTLS ErrorKind = "connect_tls"
	// ErrConnectLocal: this host ran out of something to connect with:
	// file descriptors, or ephemeral ports of a source address.
	ErrConnectLocal ErrorKind = "connect_local"
	// ErrConnectOther: any other failed connection attempt.
	ErrConnectOther ErrorKind = "connect_other"
	// ErrPublish: a telemetry publish failed (refused, or the connection
	// was lost before the acknowledgement).
	ErrPublish ErrorKind = "publish"
	// ErrPublishTimeout: a telemetry publish was not acknowledged within
	// Options.PublishTimeout.
	ErrPublishTimeout ErrorKind = "publish_timeout"
	// ErrDisconnect: an established connection was lost; the SDK
	// reconnects by itself.
	ErrDisconnect ErrorKind = "disconnect"
	// ErrSubscribe: a device could not start handling commands or OTA
	// after it connected.
	ErrSubscribe ErrorKind = "subscribe"
	// ErrCommand: a device dropped a command (malformed, or its answer
	// could not be sent: device.CommandStats.Dropped). Counted when the
	// devices close. Answers the handler gives as errors ("fail", a bad
	// "sleep") are answers, not failures.
	ErrCommand ErrorKind = "command"
	// ErrOTA: an update failed or was refused, or the device could not
	// report it booted.
	ErrOTA ErrorKind = "ota"
	// ErrConsumer: the consumer's connection was lost; QoS 1 messages
	// wait in its session for the reconnection.
	ErrConsumer ErrorKind = "consumer"
	// ErrUnexpected: the consumer received a message it could not read as
	// telemetry (too short, or from a device ID outside the fleet).
	ErrUnexpected ErrorKind = "unexpected_message"
)

// classifyConnect sorts a failed device.Connect (or connection attempt).
func classifyConnect(err error) ErrorKind {
	var refused *device.RefusedError
	var verify *tls.CertificateVerificationError
	var alert tls.AlertError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var recHdr tls.RecordHeaderError
	switch {
	case errors.As(err, &refused), errors.Is(err, syscall.ECONNREFUSED):
		return ErrConnectRefused
	case errors.As(err, &verify), errors.As(err, &alert), errors.As(err, &unknownCA),
		errors.As(err, &hostErr), errors.As(err, &recHdr), remoteTLSAlert(err):
		return ErrConnectTLS
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE), errors.Is(err, syscall.EADDRNOTAVAIL),
		errors.Is(err, syscall.EADDRINUSE):
		return ErrConnectLocal
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return ErrConnectTimeout
	}
	return ErrConnectOther
}

// remoteTLSAlert recognises an alert the broker sent, which crypto/tls
// reports as a *net.OpError with Op "remote error" (the device SDK's
// rejectedCertificate looks for the same).
func remoteTLSAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error" && op.Err != nil && strings.HasPrefix(op.Err.Error(), "tls: ")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// errorLog counts failures by kind and keeps the first message of each
// kind, so that a summary can say not only how many but also what.
type errorLog struct {
	mu      sync.Mutex
	counts  map[ErrorKind]uint64
	samples map[ErrorKind]string
	total   uint64
}

func newErrorLog() *errorLog {
	return &errorLog{counts: make(map[ErrorKind]uint64), samples: make(map[ErrorKind]string)}
}

func (l *errorLog) add(kind ErrorKind, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.counts[kind]++
	l.total++
	if _, ok := l.samples[kind]; !ok && err != nil {
		l.samples[kind] = err.Error()
	}
}

func (l *errorLog) addN(kind ErrorKind, n uint64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.counts[kind] += n
	l.total += n
	if _, ok := l.samples[kind]; !ok && err != nil {
		l.samples[kind] = err.Error()
	}
}

func (l *errorLog) sum() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// snapshot copies the counts and samples.
func (l *errorLog) snapshot() (map[ErrorKind]uint64, map[ErrorKind]string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	counts := make(map[ErrorKind]uint64, len(l.counts))
	for k, v := range l.counts {
		counts[k] = v
	}
	samples := make(map[ErrorKind]string, len(l.samples))
	for k, v := range l.samples {
		samples[k] = v
	}
	return counts, samples
}
