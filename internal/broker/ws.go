package broker

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/warden-iot/warden/internal/wsconn"
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
	c := &wsConn{Conn: wsconn.New(ws), tlsConn: raw}
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

// wsConn is an MQTT-over-WebSocket connection that still exposes the TLS
// state (and so the verified client certificate) of the connection
// underneath.
type wsConn struct {
	*wsconn.Conn
	tlsConn *guardedConn
}

// ConnectionState exposes the TLS state of the connection underneath.
func (c *wsConn) ConnectionState() tls.ConnectionState { return c.tlsConn.ConnectionState() }
