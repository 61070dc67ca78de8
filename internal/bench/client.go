package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// The load generator's MQTT client is deliberately bare: one TLS
// connection (plain TCP for envelope devices), one reader goroutine, MQTT 5 packets written straight to the
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
	// Plain connects without TLS (Warden's plain listener for envelope
	// devices, Addr): ServerName, Roots and ClassicKeyExchange are unused,
	// and the device proves itself with DialOptions.Username and Password.
	Plain bool
}

// ErrClosed is returned for operations on a connection that is gone.
var ErrClosed = errors.New("bench client: connection closed")

// Client is one device connection of the load generator.
type Client struct {
	ID   string
	conn net.Conn // a *tls.Conn, or TCP on a plain Endpoint

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
	Certificate tls.Certificate // unused on a plain Endpoint
	LocalAddr   string          // source IP; "" lets the system choose
	Timeout     time.Duration   // TLS handshake and CONNACK; default 30s
	// Username and Password, if set, go into CONNECT: an envelope
	// device's ID and its single-use password (envelope.ConnectPassword)
	// on a plain Endpoint. A password is good for one attempt only.
	Username string
	Password []byte
	// ReceiveMaximum is the MQTT 5 Receive Maximum sent in CONNECT
	// (default 64, a device's; a back end sends more).
	ReceiveMaximum uint16
	// OnPublish sees every PUBLISH the broker sends (QoS 1 ones are
	// acknowledged after it returns). It runs on the reader goroutine.
	OnPublish func(*packets.Publish)
}

// Dial opens a mutual-TLS connection (a TCP one on a plain Endpoint),
// sends CONNECT (MQTT 5, clean start, client ID = o.ID) and waits for a
// successful CONNACK.
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
	conn := raw
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	if !ep.Plain {
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
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		conn = tc
	}
	c := &Client{ID: o.ID, conn: conn, bw: bufio.NewWriterSize(conn, 512), pending: map[uint16]func(error){},
		onPublish: o.OnPublish, done: make(chan struct{})}
	recvMax := o.ReceiveMaximum
	if recvMax == 0 {
		recvMax = 64
	}
	connect := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: o.ID, CleanStart: true, KeepAlive: 600,
		Properties: &packets.Properties{ReceiveMaximum: &recvMax}}
	if o.Username != "" {
		connect.Username, connect.UsernameFlag = o.Username, true
	}
	if o.Password != nil {
		connect.Password, connect.PasswordFlag = o.Password, true
	}
	if err := c.write(connect); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	cp, err := packets.ReadPacket(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read CONNACK: %w", err)
	}
	ack, ok := cp.Content.(*packets.Connack)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("expected CONNACK, got %s", cp.PacketType())
	}
	if ack.ReasonCode != 0 {
		conn.Close()
		return nil, fmt.Errorf("CONNACK refused the connection: reason code %#x", ack.ReasonCode)
	}
	_ = conn.SetDeadline(time.Time{})
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
	br := bufio.NewReaderSize(c.conn, readBufferSize)
	for {
		cp, err := readPacket(br)
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

// readBufferSize is each connection's read buffer: a few packets of the
// benchmark's sizes per system call on a busy consumer, one page.
const readBufferSize = 4096

// maxPacketSize bounds the packets the client accepts (a broker's default
// limit is far lower), so that a broken length cannot make it allocate
// without bound.
const maxPacketSize = 1 << 20

// errMalformed is wrapped by every error about a malformed packet.
var errMalformed = errors.New("malformed MQTT packet")

// readPacket reads one MQTT 5 packet. A PUBLISH, which the consumer
// receives tens of thousands of times a second, is decoded here with two
// allocations (the packet and the topic; its properties are skipped,
// because no scenario reads them): paho's decoder allocates a buffer of at
// least 512 bytes for every string it reads, user properties included, so
// the load generator's cost per message grew with the properties the
// broker adds (Warden's relay adds two, five for an opened envelope) and
// the consumer, not the broker, set the pace. Other packets, a handful
// per connection, go to paho's decoder.
func readPacket(r *bufio.Reader) (*packets.ControlPacket, error) {
	first, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	var hdr [5]byte // the first byte and up to four of remaining length
	hdr[0] = first
	n, k := 0, 1
	for shift := 0; ; shift += 7 {
		if k == len(hdr) {
			return nil, fmt.Errorf("%w: remaining length longer than 4 bytes", errMalformed)
		}
		b, err := r.ReadByte()
		if err != nil {
			return nil, noEOF(err)
		}
		hdr[k] = b
		k++
		n |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			break
		}
	}
	if n > maxPacketSize {
		return nil, fmt.Errorf("%w: %d bytes, more than the %d this client accepts", errMalformed, n, maxPacketSize)
	}
	if first>>4 == packets.PUBLISH {
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return nil, noEOF(err)
		}
		p, err := parsePublish(first&0x0f, body)
		if err != nil {
			return nil, err
		}
		return &packets.ControlPacket{FixedHeader: packets.FixedHeader{Type: packets.PUBLISH, Flags: first & 0x0f}, Content: p}, nil
	}
	raw := make([]byte, k+n)
	copy(raw, hdr[:k])
	if _, err := io.ReadFull(r, raw[k:]); err != nil {
		return nil, noEOF(err)
	}
	cp, err := packets.ReadPacket(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformed, noEOF(err))
	}
	return cp, nil
}

// noEOF turns an end of input inside a packet into io.ErrUnexpectedEOF:
// only an end between packets is a clean io.EOF.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parsePublish decodes a PUBLISH's variable header and payload (MQTT 5,
// 3.3): topic, packet ID (QoS 1 and 2), properties (skipped) and payload,
// which aliases body. flags are the fixed header's low four bits.
func parsePublish(flags byte, body []byte) (*packets.Publish, error) {
	qos := (flags >> 1) & 0x03
	if qos == 3 {
		return nil, fmt.Errorf("%w: PUBLISH with QoS 3", errMalformed)
	}
	if len(body) < 2 {
		return nil, fmt.Errorf("%w: PUBLISH without a topic", errMalformed)
	}
	tl := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	if len(body) < tl {
		return nil, fmt.Errorf("%w: PUBLISH topic of %d bytes in %d", errMalformed, tl, len(body))
	}
	p := &packets.Publish{Topic: string(body[:tl]), QoS: qos, Duplicate: flags&0x08 != 0, Retain: flags&0x01 != 0}
	body = body[tl:]
	if qos > 0 {
		if len(body) < 2 {
			return nil, fmt.Errorf("%w: PUBLISH at QoS %d without a packet ID", errMalformed, qos)
		}
		p.PacketID = binary.BigEndian.Uint16(body)
		if p.PacketID == 0 {
			return nil, fmt.Errorf("%w: PUBLISH at QoS %d with packet ID 0", errMalformed, qos)
		}
		body = body[2:]
	}
	pl, k, err := uvarint(body)
	if err != nil {
		return nil, fmt.Errorf("%w: PUBLISH properties length: %v", errMalformed, err)
	}
	body = body[k:]
	if len(body) < pl {
		return nil, fmt.Errorf("%w: PUBLISH properties of %d bytes in %d", errMalformed, pl, len(body))
	}
	p.Payload = body[pl:]
	return p, nil
}

// uvarint decodes an MQTT variable byte integer at the start of b and
// returns it with its length.
func uvarint(b []byte) (v, n int, err error) {
	for shift := 0; n < 4; shift += 7 {
		if n == len(b) {
			return 0, 0, io.ErrUnexpectedEOF
		}
		c := b[n]
		n++
		v |= int(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, n, nil
		}
	}
	return 0, 0, errors.New("longer than 4 bytes")
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
