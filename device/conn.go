package device

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/warden-iot/warden/internal/wsconn"
)

// dial opens one network connection to u and completes the TLS handshake
// (and for wss the WebSocket upgrade) within timeout; mqtt:// (envelope
// devices only) is plain TCP. The SDK dials itself
// rather than letting autopaho do it so that it sees every connection it
// hands to paho: that is how OnConnectionDown learns why a connection died.
func dial(ctx context.Context, u *url.URL, tlsCfg *tls.Config, timeout time.Duration) (*trackedConn, error) {
	return dialFrom(ctx, u, tlsCfg, timeout, nil)
}

// dialFrom is dial from the local address local (Config.LocalAddr); nil
// lets the system choose.
func dialFrom(ctx context.Context, u *url.URL, tlsCfg *tls.Config, timeout time.Duration, local *net.TCPAddr) (*trackedConn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// A nil *net.TCPAddr stored in the net.Addr interface would not be nil.
	nd := &net.Dialer{}
	if local != nil {
		nd.LocalAddr = local
	}
	var (
		conn net.Conn
		err  error
	)
	switch u.Scheme {
	case "mqtt":
		conn, err = nd.DialContext(ctx, "tcp", u.Host)
	case "mqtts":
		d := tls.Dialer{NetDialer: nd, Config: tlsCfg}
		conn, err = d.DialContext(ctx, "tcp", u.Host)
	case "wss":
		d := websocket.Dialer{
			NetDialContext:   nd.DialContext,
			TLSClientConfig:  tlsCfg,
			Subprotocols:     []string{"mqtt"}, // MQTT 5 §6
			HandshakeTimeout: timeout,
			// Proxy is nil: no proxy from the environment.
		}
		var ws *websocket.Conn
		var resp *http.Response
		ws, resp, err = d.DialContext(ctx, u.String(), nil)
		if resp != nil && resp.Body != nil {
			_ = resp.Body.Close()
		}
		if err == nil {
			if ws.Subprotocol() != "mqtt" {
				_ = ws.Close()
				return nil, fmt.Errorf("device: %s: the server did not accept the \"mqtt\" WebSocket subprotocol", u.Redacted())
			}
			conn = wsconn.New(ws)
		}
	default:
		// Config validation admits no other scheme.
		return nil, fmt.Errorf("device: %s: unsupported scheme %q", u.Redacted(), u.Scheme)
	}
	if err != nil {
		var ve *tls.CertificateVerificationError
		if errors.As(err, &ve) {
			return nil, explainVerification(u.Redacted(), err)
		}
		return nil, fmt.Errorf("device: dial %s: %w", u.Redacted(), err)
	}
	return &trackedConn{Conn: conn, server: u.Redacted()}, nil
}

// trackedConn remembers the first error its connection failed with, so the
// SDK can say why a connection was lost: paho reports that only through
// callbacks it runs on other goroutines, after autopaho may already have
// moved on to the next connection. It also serialises packet writes (paho
// takes the lock through sync.Locker while writing one packet), which
// neither tls.Conn nor a WebSocket connection does on its own.
type trackedConn struct {
	net.Conn
	server string

	wmu sync.Mutex

	mu     sync.Mutex
	err    error
	closed bool // Close was called before any error
}

func (c *trackedConn) Lock()   { c.wmu.Lock() }
func (c *trackedConn) Unlock() { c.wmu.Unlock() }

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.record(err)
	}
	return n, err
}

func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		c.record(err)
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.mu.Lock()
	if c.err == nil {
		c.closed = true
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

func (c *trackedConn) record(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && !c.closed {
		c.err = err
	}
}

// cause explains why the connection ended.
func (c *trackedConn) cause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err == nil:
		return fmt.Errorf("device: connection to %s closed by the MQTT client (keep-alive timeout, DISCONNECT from the broker, or protocol error)", c.server)
	case errors.Is(c.err, io.EOF):
		return fmt.Errorf("device: connection to %s closed by the broker: %w", c.server, c.err)
	case rejectedCertificate(c.err):
		return fmt.Errorf("device: connection to %s: the broker rejected the device certificate: %w", c.server, c.err)
	default:
		return fmt.Errorf("device: connection to %s lost: %w", c.server, c.err)
	}
}
