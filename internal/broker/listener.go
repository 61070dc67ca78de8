package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// guardedListener is the front door of every MQTT listener. Before a byte of
// MQTT is parsed it
//   - refuses connections above the listener's connection rate,
//   - sets a deadline that covers the TLS handshake and the CONNECT packet
//     (mochi itself would wait forever for a silent socket),
//   - performs the TLS handshake and records why it failed, if it did.
type guardedListener struct {
	net.Listener
	name     string
	tls      *tls.Config
	deadline time.Duration
	limiter  *rate.Limiter
	b        *Broker
}

func (l *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.limiter != nil && !l.limiter.Allow() {
			l.b.metrics.connectionsRefused.WithLabelValues(l.name, "rate").Inc()
			l.b.logRefusal(l.name, c.RemoteAddr().String(), "connection-rate")
			_ = c.Close()
			continue
		}
		_ = c.SetDeadline(time.Now().Add(l.deadline))
		if l.tls == nil { // the plain listener: CONNECT must still arrive in time
			return c, nil
		}
		return &guardedConn{Conn: tls.Server(c, l.tls), listener: l}, nil
	}
}

// guardedConn is a server-side TLS connection whose handshake failure is
// logged and counted once. It exposes ConnectionState so the authentication
// hook can read the verified client certificate.
type guardedConn struct {
	*tls.Conn
	listener *guardedListener
	once     sync.Once
	hsErr    error
}

func (c *guardedConn) handshake() error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.listener.deadline)
		defer cancel()
		c.hsErr = c.Conn.HandshakeContext(ctx)
		if c.hsErr != nil {
			c.listener.b.handshakeFailed(c.listener.name, c.RemoteAddr().String(), c.hsErr)
		}
	})
	return c.hsErr
}

func (c *guardedConn) Read(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *guardedConn) Write(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// tlsStater is satisfied by *tls.Conn, guardedConn and the WebSocket
// connection wrapper: whatever carries a verified client certificate.
type tlsStater interface {
	ConnectionState() tls.ConnectionState
}

// handshakeReason turns a crypto/tls error into a short, stable label for
// metrics and the audit log. The peer never sees it.
func handshakeReason(err error) string {
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "expired") || strings.Contains(msg, "not yet valid"):
		return "certificate-expired"
	case strings.Contains(msg, "unknown authority"):
		return "unknown-ca"
	case strings.Contains(msg, "didn't provide a certificate") || strings.Contains(msg, "client didn't provide"):
		return "no-client-certificate"
	case strings.Contains(msg, "protocol version") || strings.Contains(msg, "unsupported versions"):
		return "protocol-version"
	case strings.Contains(msg, "no cipher suite") || strings.Contains(msg, "cipher"):
		return "cipher-suite"
	case strings.Contains(msg, "incompatible key usage") || strings.Contains(msg, "key usage"):
		return "key-usage"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "not-tls"
	case strings.Contains(msg, "EOF") || strings.Contains(msg, "connection reset"):
		return "peer-closed"
	case strings.Contains(msg, "certificate"):
		return "bad-certificate"
	}
	return "other"
}
