// Package wsconn carries MQTT over WebSocket (MQTT 5 §6) as a net.Conn,
// for both ends: Warden's WSS listener and the device SDK.
package wsconn

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// ErrTextMessage is returned when the peer sends a text message: MQTT over
// WebSocket uses binary messages only.
var ErrTextMessage = errors.New("websocket: MQTT uses binary messages only, and the peer sent a text message")

// Conn adapts a WebSocket to the byte stream MQTT expects. A packet may
// span messages and a message may hold several packets, so reads stream
// through message boundaries; each Write is one binary message. It is safe
// for one reader and concurrent writers.
type Conn struct {
	ws  *websocket.Conn
	rmu sync.Mutex
	wmu sync.Mutex
	r   io.Reader // the message being read
}

// New wraps ws.
func New(ws *websocket.Conn) *Conn { return &Conn{ws: ws} }

// Read implements net.Conn.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, ErrTextMessage
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// Write sends p as one binary message.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close implements net.Conn.
func (c *Conn) Close() error { return c.ws.Close() }

// LocalAddr implements net.Conn.
func (c *Conn) LocalAddr() net.Addr { return c.ws.LocalAddr() }

// RemoteAddr implements net.Conn.
func (c *Conn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

// SetReadDeadline implements net.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline implements net.Conn. gorilla/websocket keeps the write
// deadline in unguarded state that every write reads, so it is set under
// the write lock (the MQTT server refreshes deadlines from its read loop
// while another goroutine writes).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.SetWriteDeadline(t)
}

// SetDeadline implements net.Conn.
func (c *Conn) SetDeadline(t time.Time) error {
	return errors.Join(c.ws.SetReadDeadline(t), c.SetWriteDeadline(t))
}
