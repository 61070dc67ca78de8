package sim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/warden-iot/warden/device"
)

func TestClassifyConnect(t *testing.T) {
	opErr := func(op string, err error) error { return &net.OpError{Op: op, Net: "tcp", Err: err} }
	for _, tc := range []struct {
		name string
		err  error
		want ErrorKind
	}{
		{"CONNACK refusal", &device.RefusedError{Op: "connect", ReasonCode: 0x87}, ErrConnectRefused},
		{"nothing listening", fmt.Errorf("device: dial: %w", opErr("dial", os.NewSyscallError("connect", syscall.ECONNREFUSED))), ErrConnectRefused},
		{"deadline, last attempt refused", fmt.Errorf("no connection (%w); last attempt: %w", context.DeadlineExceeded, opErr("dial", syscall.ECONNREFUSED)), ErrConnectRefused},
		{"untrusted broker", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, ErrConnectTLS},
		{"broker rejected the certificate", opErr("remote error", tls.AlertError(42)), ErrConnectTLS},
		{"remote alert as text", opErr("remote error", errors.New("tls: bad certificate")), ErrConnectTLS},
		{"not TLS", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, ErrConnectTLS},
		{"deadline", fmt.Errorf("device: no connection before the context ended: %w", context.DeadlineExceeded), ErrConnectTimeout},
		{"i/o timeout", opErr("read", os.ErrDeadlineExceeded), ErrConnectTimeout},
		{"out of files", opErr("dial", os.NewSyscallError("socket", syscall.EMFILE)), ErrConnectLocal},
		{"out of ports", opErr("dial", syscall.EADDRNOTAVAIL), ErrConnectLocal},
		{"reset", opErr("read", syscall.ECONNRESET), ErrConnectOther},
		{"anything", errors.New("something else"), ErrConnectOther},
	} {
		if got := classifyConnect(tc.err); got != tc.want {
			t.Errorf("%s (%v): %s, want %s", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestErrorLog(t *testing.T) {
	l := newErrorLog()
	l.add(ErrPublish, errors.New("first"))
	l.add(ErrPublish, errors.New("second"))
	l.add(ErrDisconnect, nil)
	l.addN(ErrCommand, 3, errors.New("dropped"))
	counts, samples := l.snapshot()
	if counts[ErrPublish] != 2 || counts[ErrDisconnect] != 1 || counts[ErrCommand] != 3 || l.sum() != 6 {
		t.Errorf("counts %v, sum %d", counts, l.sum())
	}
	if samples[ErrPublish] != "first" || samples[ErrCommand] != "dropped" || len(samples) != 2 {
		t.Errorf("samples %v", samples)
	}
	counts[ErrPublish] = 100 // a snapshot is a copy
	if again, _ := l.snapshot(); again[ErrPublish] != 2 {
		t.Error("the snapshot shares the log's map")
	}
}
