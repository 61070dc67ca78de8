package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// wsListener serves MQTT over secure WebSocket. mochi's own WebSocket
// listener wraps connections in an unexported type that hides the TLS state,
// so the client certificate could never reach authentication; this one
// keeps it. It presents itself to mochi as a plain net.Listener whose
// connections carry ConnectionState.
type wsListener struct {
	front    *guardedListener // TLS, deadline and connection-rate guard
	path     string
	srv      *http.Server
	conns    chan net.Conn
	done     chan struct{}
	once     sync.Once
	upgrader websocket.Upgrader
}

type connCtxKey struct{}

func newWSListener(front *guardedListener, path string, logger *slog.Logger) *wsListener {
	l := &wsListener{
		front: front,
		path:  path,
		conns: make(chan net.Conn),
		done:  make(chan struct{}),
		upgrader: websocket.Upgrader{
			Subprotocols:    []string{"mqtt"},
			ReadBufferSize:  1024,
			WriteBufferSize: 1024,
			// Devices are not browsers; an Origin header is irrelevant to
			// them, and the client certificate is the authentication.
			CheckOrigin: func(*http.Request) bool { return true },
		},
	}
	mux := http.NewServeMux()
	mux.HandleFunc(path, l.upgrade)
	l.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: front.deadline,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connCtxKey{}, c)
		},
	}
	return l
}

func (l *wsListener) serve() {
	_ = l.srv.Serve(l.front)
}

func (l *wsListener) upgrade(w http.ResponseWriter, r *http.Request) {
	raw, _ := r.Context().Value(connCtxKey{}).(*guardedConn)
	if raw == nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	ws, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has already answered
	}
	c := &wsConn{ws: ws, tlsConn: raw}
	// The handshake deadline set at accept may have been cleared by the HTTP
	// server; CONNECT must still arrive in time.
	_ = c.SetDeadline(time.Now().Add(l.front.deadline))
	select {
	case l.conns <- c:
	case <-l.done:
		_ = c.Close()
	}
}

// Accept hands upgraded connections to mochi.
func (l *wsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *wsListener) Close() error {
	l.once.Do(func() { close(l.done) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = l.srv.Shutdown(ctx)
	return l.front.Close()
}

func (l *wsListener) Addr() net.Addr { return l.front.Addr() }

// wsConn adapts a WebSocket to the byte stream MQTT expects: each binary
// message is a chunk of the stream (MQTT over WebSocket, MQTT 5 §6).
type wsConn struct {
	ws      *websocket.Conn
	tlsConn *guardedConn
	r       io.Reader
	wmu     sync.Mutex
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, errors.New("websocket: MQTT requires binary frames")
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

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error                       { return c.ws.Close() }
func (c *wsConn) LocalAddr() net.Addr                { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr               { return c.ws.RemoteAddr() }
func (c *wsConn) SetDeadline(t time.Time) error      { return c.ws.NetConn().SetDeadline(t) }
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }

// ConnectionState exposes the TLS state (and so the verified client
// certificate) of the connection underneath the WebSocket.
func (c *wsConn) ConnectionState() tls.ConnectionState { return c.tlsConn.ConnectionState() }
