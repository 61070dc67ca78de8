package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/warden-iot/warden/internal/ratelimit"
	"golang.org/x/time/rate"
)

// guardedListener is the front door of every MQTT listener. Before a byte of
// MQTT is parsed it
//   - refuses connections above their source address's connection rate,
//     then above the listener's,
//   - sets a deadline that covers the TLS handshake and the CONNECT packet
//     (mochi itself would wait forever for a silent socket),
//   - performs the TLS handshake on a goroutine of its own, admitted by
//     the broker's handshake tokens, and records why it failed, if it did,
//   - keeps accepting through transient errors (EMFILE in a connection
//     flood), where mochi's accept loop would stop for good.
//
// Accept hands out only connections whose handshake succeeded. Doing the
// handshake here rather than in mochi's per-client goroutine matters
// twice: the handshake's deep call chains grow a goroutine's stack to
// 32 KiB, which mochi's long-lived reader would then keep for the life of
// the connection (docs/performance.md); and a storm of handshakes is held
// to as many CPU-bound handshakes at once as there are tokens, so the
// sessions already established keep getting the CPU (admission control).
type guardedListener struct {
	net.Listener
	name     string
	tls      *tls.Config
	deadline time.Duration
	limiter  *rate.Limiter
	// perSource, if set, bounds each source address's new connections
	// (limits.connection_rate_per_source), checked before limiter so that
	// a source over its own rate spends none of the listener's.
	perSource *ratelimit.Set
	admit     *admission // nil: handshakes are not limited
	b         *Broker
	// https: Accept hands out the *tls.Conn itself, with the accept
	// deadline cleared (net/http sets its own per request and looks for a
	// *tls.Conn to fill in Request.TLS).
	https bool

	start     sync.Once
	ready     chan net.Conn // connections ready for MQTT
	closed    chan struct{} // closed by Close
	closeOnce sync.Once
	ctx       context.Context // cancelled by Close: aborts handshakes under way
	cancel    context.CancelFunc
	failed    chan struct{} // closed when the accept loop ends on its own
	err       error         // why; written before failed is closed
}

// newGuardedListener wraps raw; tlsCfg nil makes a plain listener.
func newGuardedListener(raw net.Listener, name string, tlsCfg *tls.Config, deadline time.Duration, limiter *rate.Limiter, admit *admission, b *Broker) *guardedListener {
	ctx, cancel := context.WithCancel(context.Background())
	return &guardedListener{Listener: raw, name: name, tls: tlsCfg, deadline: deadline, limiter: limiter, admit: admit, b: b,
		ready: make(chan net.Conn), closed: make(chan struct{}), failed: make(chan struct{}), ctx: ctx, cancel: cancel}
}

// Accept returns the next connection whose TLS handshake (if any) has
// succeeded; net.ErrClosed after Close.
func (l *guardedListener) Accept() (net.Conn, error) {
	l.start.Do(func() { go l.acceptLoop() })
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.failed:
		return nil, l.err
	}
}

// Close stops accepting, aborts handshakes under way and closes the
// socket.
func (l *guardedListener) Close() error {
	err := net.ErrClosed
	l.closeOnce.Do(func() {
		close(l.closed)
		l.cancel()
		err = l.Listener.Close()
	})
	return err
}

// Accept errors other than a closed listener are transient (out of file
// descriptors, a connection aborted before accept): wait, then go on, as
// net/http's server does.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

func (l *guardedListener) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case <-l.closed:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				l.err = err
				close(l.failed)
				return
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			l.b.metrics.connectionsRefused.WithLabelValues(l.name, "accept-error").Inc()
			l.b.logAcceptError(l.name, err, backoff)
			select {
			case <-time.After(backoff):
			case <-l.closed:
				return
			}
			continue
		}
		backoff = 0
		if l.perSource != nil && l.perSource.Take(ratelimit.RemoteKey(c.RemoteAddr().String()), time.Now()) > 0 {
			l.b.metrics.connectionsRefused.WithLabelValues(l.name, "source-rate").Inc()
			l.b.logRefusal(l.name, c.RemoteAddr().String(), "source-rate")
			_ = c.Close()
			continue
		}
		if l.limiter != nil && !l.limiter.Allow() {
			l.b.metrics.connectionsRefused.WithLabelValues(l.name, "rate").Inc()
			l.b.logRefusal(l.name, c.RemoteAddr().String(), "connection-rate")
			_ = c.Close()
			continue
		}
		_ = c.SetDeadline(time.Now().Add(l.deadline))
		if l.tls == nil { // the plain listener: CONNECT must still arrive in time
			l.deliver(&plainConn{Conn: c})
			continue
		}
		go l.handshake(c)
	}
}

// deliver passes c to Accept, or closes it when the listener closes first.
func (l *guardedListener) deliver(c net.Conn) {
	select {
	case l.ready <- c:
	case <-l.closed:
		_ = c.Close()
	}
}

// handshake runs the TLS handshake of one accepted connection, holding a
// handshake token only while it computes (admittedConn), and delivers the
// connection if the handshake succeeds.
func (l *guardedListener) handshake(raw net.Conn) {
	ctx, cancel := context.WithTimeout(l.ctx, l.deadline)
	ac := &admittedConn{Conn: raw, ctx: ctx, admit: l.admit}
	gc := &guardedConn{Conn: tls.Server(ac, l.tls), listener: l, under: ac}
	if sc, ok := raw.(syscall.Conn); ok {
		gc.raw, _ = sc.SyscallConn()
	}
	err := gc.Conn.HandshakeContext(ctx)
	cancel()
	ac.finish()
	if err != nil {
		select {
		case <-l.closed: // shutting down: not the peer's failure
		default:
			l.b.handshakeFailed(l.name, raw.RemoteAddr().String(), err)
		}
		_ = gc.Conn.Close()
		return
	}
	if l.https {
		_ = gc.Conn.SetDeadline(time.Time{})
		l.deliver(gc.Conn)
		return
	}
	l.deliver(gc)
}

// GuardHTTPS puts the broker's front door before an HTTPS listener the
// broker does not serve (Warden's api listener, for EST, OTA and the
// operator API): the connection-rate limit, TLS handshakes admitted by the
// same tokens as MQTT's (a storm of API clients cannot starve the broker's
// established sessions, nor the other way round), a deadline on the
// handshake, and failed handshakes counted in
// warden_tls_handshake_failures_total{listener=name} and audited (sampled)
// like the broker's own. Serve the result with http.Server.Serve: its
// connections are *tls.Conn whose handshake has succeeded, and cfg must
// carry the NextProtos the server should negotiate.
func (b *Broker) GuardHTTPS(raw net.Listener, name string, cfg *tls.Config) net.Listener {
	l := b.newFrontDoor(raw, name, cfg)
	l.https = true
	return l
}

// maxTrackedSources bounds the source addresses a listener's per-source
// connection rate keeps a bucket for (ratelimit.Set: full buckets are
// dropped when it fills; beyond it, newcomers share one bucket).
const maxTrackedSources = 65536

// newFrontDoor wraps raw in a guarded listener with the broker's
// connection limits: the listener's rate and, if set, each source
// address's.
func (b *Broker) newFrontDoor(raw net.Listener, name string, cfg *tls.Config) *guardedListener {
	l := b.opts.Limits
	var limiter *rate.Limiter
	if l.ConnectionRate > 0 {
		limiter = rate.NewLimiter(rate.Limit(l.ConnectionRate), max(l.ConnectionBurst, 1))
	}
	g := newGuardedListener(raw, name, cfg, l.ConnectTimeout, limiter, b.admit, b)
	if l.ConnectionRatePerSource > 0 {
		g.perSource = ratelimit.NewSet(l.ConnectionRatePerSource, max(int(2*l.ConnectionRatePerSource), 1), maxTrackedSources)
	}
	return g
}

// plainConn is a connection of the plain listener (envelope devices). Its
// session's acknowledgements wait for the next read of the socket, as on
// a TLS connection (mochi's BeforeReader, PATCHES.md 22): mochi reads it
// through a buffer, which reads the socket only once it is empty.
type plainConn struct {
	net.Conn
	beforeRead func()
}

// SetBeforeRead has fn called before each read of the socket. Called by
// the session's reader goroutine, the only one that reads the connection.
func (c *plainConn) SetBeforeRead(fn func()) { c.beforeRead = fn }

func (c *plainConn) Read(p []byte) (int, error) {
	if c.beforeRead != nil {
		c.beforeRead()
	}
	return c.Conn.Read(p)
}

// guardedConn is a server-side TLS connection whose handshake has
// succeeded. It exposes ConnectionState so the authentication hook can
// read the verified client certificate.
type guardedConn struct {
	*tls.Conn
	listener *guardedListener
	raw      syscall.RawConn // the socket under TLS, for WaitReadable; nil if it has none
	peek     [1]byte
	under    *admittedConn // the connection under TLS
}

// SetBeforeRead has fn called before each read of the socket under TLS,
// that is once every record TLS holds has been read (mochi's
// BeforeReader, PATCHES.md 22: the session's acknowledgements are
// written then). Called by the session's reader goroutine, the only one
// that reads the connection.
func (c *guardedConn) SetBeforeRead(fn func()) { c.under.beforeRead = fn }

// admission hands out the tokens a TLS handshake holds while it computes:
// key exchange, signature and certificate verification. A reconnect storm
// then runs at most cap(tokens) handshakes on the CPU at once, and the
// goroutines of established sessions wait behind those few rather than
// behind thousands. Waiting for the network holds no token, so a slow or
// silent peer (slowloris) cannot starve the others; the connect deadline
// bounds every handshake, waiting for a token included.
type admission struct {
	tokens  chan struct{}
	waiting prometheus.Gauge
}

func newAdmission(n int, waiting prometheus.Gauge) *admission {
	return &admission{tokens: make(chan struct{}, n), waiting: waiting}
}

// admittedConn is the raw connection under a handshaking tls.Conn: it
// gives its token back before each read from the network and takes one
// again when the bytes are there. Only the handshake goroutine uses it
// until finish; after that it is a plain pass-through.
type admittedConn struct {
	net.Conn
	ctx        context.Context // the handshake's
	admit      *admission
	held       bool
	done       bool
	beforeRead func() // after the handshake: see guardedConn.SetBeforeRead
}

func (c *admittedConn) Read(p []byte) (int, error) {
	if c.done || c.admit == nil {
		if c.beforeRead != nil {
			c.beforeRead()
		}
		return c.Conn.Read(p)
	}
	return c.admittedRead(p)
}

// admittedRead is Read during the handshake. It is a call of its own so
// that Read's frame, which stays on an idle connection's parked stack
// for the connection's life, is small (mochi PATCHES.md 11).
//
//go:noinline
func (c *admittedConn) admittedRead(p []byte) (int, error) {
	c.release()
	n, err := c.Conn.Read(p)
	if err != nil {
		return n, err
	}
	if err := c.acquire(); err != nil {
		return 0, err
	}
	return n, nil
}

// acquire waits for a token until the handshake's context ends (the
// connect deadline, or the listener closing). crypto/tls's
// HandshakeContext closes the connection on cancellation, which a blocked
// read notices but a token wait would not.
func (c *admittedConn) acquire() error {
	select {
	case c.admit.tokens <- struct{}{}:
		c.held = true
		return nil
	default:
	}
	c.admit.waiting.Inc()
	defer c.admit.waiting.Dec()
	select {
	case c.admit.tokens <- struct{}{}:
		c.held = true
		// The releasing handshake handed this goroutine its token and
		// made it runnable as its P's next goroutine, ahead of the run
		// queue and sharing the releaser's time slice: a storm's
		// handshakes then pass the CPU from one to the next while the
		// sessions whose packets the poller found wait in the global
		// queue. Going to the back of the queue first keeps the tokens'
		// promise (established sessions before new handshakes). In a
		// storm of 15,000 this cut how long a goroutine woken by its
		// socket waits for the CPU from 12.6 to 4.2 ms at the median and
		// 65 to 24 ms at the 90th percentile (docs/performance.md).
		runtime.Gosched()
		return nil
	case <-c.ctx.Done():
		return os.ErrDeadlineExceeded
	}
}

func (c *admittedConn) release() {
	if c.held {
		<-c.admit.tokens
		c.held = false
	}
}

// finish gives the token back for good; called by the handshake goroutine
// when HandshakeContext returns, before the connection changes hands.
func (c *admittedConn) finish() {
	if c.admit != nil {
		c.release()
	}
	c.done = true
	c.ctx = nil // the handshake's context is done with; the connection lives on
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
