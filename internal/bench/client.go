package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// The load generator's MQTT client is deliberately bare: one TLS
// connection, one reader goroutine, MQTT 5 packets written straight to the
// connection. The SDK (internal/sim) is the realistic device; a benchmark
// of the broker wants a client that costs as little CPU and memory as
// possible on the two cores it shares with the broker, and it must load
// Warden and Mosquitto identically.

// Endpoint is a broker to connect to.
type Endpoint struct {
	Addr       string         // host:port of the mutual-TLS MQTT listener
	ServerName string         // checked in the broker's certificate
	Roots      *x509.CertPool // the broker certificate's roots
	// ClassicKeyExchange offers only X25519 (no hybrid ML-KEM), as
	// OpenSSL 3.0 brokers negotiate anyway.
	ClassicKeyExchange bool
}

// ErrClosed is returned for operations on a connection that is gone.
var ErrClosed = errors.New("bench client: connection closed")

// Client is one device connection of the load generator.
type Client struct {
	ID   string
	conn *tls.Conn

	wmu sync.Mutex
	bw  *bufio.Writer

	mu      sync.Mutex
	nextID  uint16
	pending map[uint16]func(error)
	err     error

	onPublish func(*packets.Publish)
	done      chan struct{}
}

// DialOptions configures one connection.
type DialOptions struct {
	ID          string
	Certificate tls.Certificate
	LocalAddr   string        // source IP; "" lets the system choose
	Timeout     time.Duration // TLS handshake and CONNACK; default 30s
	// ReceiveMaximum is the MQTT 5 Receive Maximum sent in CONNECT
	// (default 64, a device's; a back end sends more).
	ReceiveMaximum uint16
	// OnPublish sees every PUBLISH the broker sends (QoS 1 ones are
	// acknowledged after it returns). It runs on the reader goroutine.
	OnPublish func(*packets.Publish)
}

// Dial opens a mutual-TLS connection, sends CONNECT (MQTT 5, clean start,
// client ID = o.ID) and waits for a successful CONNACK.
func Dial(ctx context.Context, ep Endpoint, o DialOptions) (*Client, error) {
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	d := net.Dialer{}
	if o.LocalAddr != "" {
		ip := net.ParseIP(o.LocalAddr)
		if ip == nil {
			return nil, fmt.Errorf("source address %q is not an IP address", o.LocalAddr)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	raw, err := d.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", ep.Addr, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      ep.Roots,
		ServerName:   ep.ServerName,
		Certificates: []tls.Certificate{o.Certificate},
		// Every connection is a full handshake, as a device after a
		// restart or an outage makes it.
		ClientSessionCache: nil,
	}
	if ep.ClassicKeyExchange {
		cfg.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	}
	tc := tls.Client(raw, cfg)
	if dl, ok := ctx.Deadline(); ok {
		_ = tc.SetDeadline(dl)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	c := &Client{ID: o.ID, conn: tc, bw: bufio.NewWriterSize(tc, 512), pending: map[uint16]func(error){},
		onPublish: o.OnPublish, done: make(chan struct{})}
	recvMax := o.ReceiveMaximum
	if recvMax == 0 {
		recvMax = 64
	}
	connect := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: o.ID, CleanStart: true, KeepAlive: 600,
		Properties: &packets.Properties{ReceiveMaximum: &recvMax}}
	if err := c.write(connect); err != nil {
		tc.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	cp, err := packets.ReadPacket(tc)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("read CONNACK: %w", err)
	}
	ack, ok := cp.Content.(*packets.Connack)
	if !ok {
		tc.Close()
		return nil, fmt.Errorf("expected CONNACK, got %s", cp.PacketType())
	}
	if ack.ReasonCode != 0 {
		tc.Close()
		return nil, fmt.Errorf("CONNACK refused the connection: reason code %#x", ack.ReasonCode)
	}
	_ = tc.SetDeadline(time.Time{})
	go c.read()
	return c, nil
}

// write sends one packet (each type's WriteTo frames it, flags included).
func (c *Client) write(p packets.Packet) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := p.WriteTo(c.bw); err != nil {
		return err
	}
	return c.bw.Flush()
}

// read delivers the broker's packets until the connection ends.
func (c *Client) read() {
	defer close(c.done)
	for {
		cp, err := packets.ReadPacket(c.conn)
		if err != nil {
			c.fail(fmt.Errorf("%w: %v", ErrClosed, err))
			return
		}
		switch p := cp.Content.(type) {
		case *packets.Puback:
			var err error
			if p.ReasonCode >= 0x80 {
				err = fmt.Errorf("PUBACK reason code %#x", p.ReasonCode)
			}
			c.settle(p.PacketID, err)
		case *packets.Suback:
			var err error
			for _, r := range p.Reasons {
				if r >= 0x80 {
					err = fmt.Errorf("SUBACK reason code %#x", r)
				}
			}
			c.settle(p.PacketID, err)
		case *packets.Publish:
			if c.onPublish != nil {
				c.onPublish(p)
			}
			if p.QoS == 1 {
				_ = c.write(&packets.Puback{PacketID: p.PacketID})
			}
		case *packets.Disconnect:
			c.fail(fmt.Errorf("%w: the broker sent DISCONNECT (reason %#x)", ErrClosed, p.ReasonCode))
			return
		}
	}
}

func (c *Client) settle(id uint16, err error) {
	c.mu.Lock()
	f := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if f != nil {
		f(err)
	}
}

// fail ends every pending operation with err.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	pending := c.pending
	c.pending = map[uint16]func(error){}
	c.mu.Unlock()
	for _, f := range pending {
		f(err)
	}
	_ = c.conn.Close()
}

// track registers done for the next packet ID.
func (c *Client) track(done func(error)) (uint16, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	for range 1 << 16 {
		c.nextID++
		if c.nextID == 0 {
			c.nextID = 1
		}
		if _, busy := c.pending[c.nextID]; !busy {
			c.pending[c.nextID] = done
			return c.nextID, nil
		}
	}
	return 0, errors.New("bench client: every packet ID is in use")
}

// PublishAsync sends a PUBLISH; done (may be nil) runs when a QoS 1
// message is acknowledged (or the connection fails), and at once for QoS
// 0 once written.
func (c *Client) PublishAsync(topic string, payload []byte, qos byte, done func(error)) {
	if done == nil {
		done = func(error) {}
	}
	p := &packets.Publish{Topic: topic, Payload: payload, QoS: qos}
	if qos > 0 {
		id, err := c.track(done)
		if err != nil {
			done(err)
			return
		}
		p.PacketID = id
		if err := c.write(p); err != nil {
			c.fail(fmt.Errorf("%w: %v", ErrClosed, err))
		}
		return
	}
	err := c.write(p)
	if err != nil {
		c.fail(fmt.Errorf("%w: %v", ErrClosed, err))
	}
	done(err)
}

// Publish sends a PUBLISH and, for QoS 1, waits for its PUBACK.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, qos byte) error {
	ch := make(chan error, 1)
	c.PublishAsync(topic, payload, qos, func(err error) { ch <- err })
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Subscribe subscribes to filter and waits for the SUBACK.
func (c *Client) Subscribe(ctx context.Context, filter string, qos byte) error {
	ch := make(chan error, 1)
	id, err := c.track(func(err error) { ch <- err })
	if err != nil {
		return err
	}
	if err := c.write(&packets.Subscribe{PacketID: id, Subscriptions: []packets.SubOptions{{Topic: filter, QoS: qos}}}); err != nil {
		c.fail(fmt.Errorf("%w: %v", ErrClosed, err))
		return err
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the connection ended (nil while it lives).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close drops the connection without DISCONNECT, as a device that loses
// power or its network does.
func (c *Client) Close() {
	c.fail(ErrClosed)
	<-c.done
}

// Disconnect sends DISCONNECT and closes.
func (c *Client) Disconnect() {
	_ = c.write(&packets.Disconnect{})
	c.Close()
}
