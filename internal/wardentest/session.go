package wardentest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/envelope"
)

// This file holds what the session and replay attacks need beyond the
// MQTT 5 RawClient: an MQTT 3.1.1 client written from the specification
// (paho.golang speaks MQTT 5 only, and an attacker picks whichever
// protocol version the broker checks less carefully), envelope devices on
// the plain listener, and a TCP proxy that plays the network: it cuts
// connections abruptly and, on the plain listener, captures and injects
// packets as an on-path attacker would.

// MQTT 3.1.1 CONNACK return codes (MQTT 3.1.1 §3.2.2.3) and the SUBACK
// failure code (§3.9.3).
const (
	Code311Accepted      byte = 0x00
	Code311NotAuthorized byte = 0x05
	Code311SubackFailure byte = 0x80
)

// Raw311Opts shape the CONNECT packet ConnectRaw311 sends.
type Raw311Opts struct {
	// ClientID defaults to the credentials' ID; EmptyClientID sends "".
	ClientID      string
	EmptyClientID bool
	// CleanSession is 3.1.1's Clean Session flag.
	CleanSession bool
	// WillTopic, when not empty, sets a Last Will with WillPayload,
	// WillQoS and WillRetain.
	WillTopic   string
	WillPayload []byte
	WillQoS     byte
	WillRetain  bool
}

// Raw311 is one MQTT 3.1.1 connection over TLS, without reconnects and
// without a pinger (its keep-alive is long enough for any test). It
// acknowledges QoS 1 messages it receives; QoS 2 is not supported.
type Raw311 struct {
	conn net.Conn
	// SessionPresent is the CONNACK's Session Present flag.
	SessionPresent bool
	// Msgs receives the PUBLISH packets the broker delivers, as paho
	// values so that ExpectMessage and ExpectNoMessage work on them. 100
	// are buffered, the rest dropped.
	Msgs chan *paho.Publish
	// Down is closed when the connection ends, for whatever reason.
	Down chan struct{}

	wmu    sync.Mutex // one packet at a time on the wire
	mu     sync.Mutex
	nextID uint16
	acks   map[uint16]chan []byte // packet ID -> SUBACK return codes or PUBACK
}

// ConnectRaw311 opens one MQTT 3.1.1 connection over TLS to addr with the
// credentials and returns it with the CONNACK return code. A refused
// connection (return code not 0) is the error, with the code, so that a
// test can check it. The connection is closed when the test ends.
func ConnectRaw311(t testing.TB, addr string, c Creds, o Raw311Opts) (*Raw311, byte, error) {
	t.Helper()
	cert, pool := c.TLS(t)
	conn, err := DialTLS(t, addr, &cert, pool)
	if err != nil {
		return nil, 0, err
	}
	id := o.ClientID
	if id == "" && !o.EmptyClientID {
		id = c.ID
	}
	rc, code, err := handshake311(conn, id, o)
	if err != nil {
		_ = conn.Close()
		return nil, code, err
	}
	t.Cleanup(func() { rc.Disconnect() })
	return rc, code, nil
}

// MustConnectRaw311 is ConnectRaw311 for a connection that must succeed.
func MustConnectRaw311(t testing.TB, addr string, c Creds, o Raw311Opts) *Raw311 {
	t.Helper()
	rc, code, err := ConnectRaw311(t, addr, c, o)
	if err != nil {
		t.Fatalf("%s: MQTT 3.1.1 connect: %v (return code 0x%02x)", c.ID, err, code)
	}
	return rc
}

func handshake311(conn net.Conn, clientID string, o Raw311Opts) (*Raw311, byte, error) {
	var flags byte
	if o.CleanSession {
		flags |= 0x02
	}
	var payload []byte
	payload = appendString(payload, clientID)
	if o.WillTopic != "" {
		flags |= 0x04 | (o.WillQoS&0x03)<<3
		if o.WillRetain {
			flags |= 0x20
		}
		payload = appendString(payload, o.WillTopic)
		payload = appendString(payload, string(o.WillPayload))
	}
	body := appendString(nil, "MQTT")
	body = append(body, 4, flags, 0x02, 0x58) // level 4 (3.1.1), keep-alive 600 s
	body = append(body, payload...)
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(frame(0x10, body)); err != nil {
		return nil, 0, fmt.Errorf("send CONNECT: %w", err)
	}
	r := bufio.NewReader(conn)
	typ, b, err := ReadMQTTPacket(r)
	if err != nil {
		return nil, 0, fmt.Errorf("read CONNACK: %w", err)
	}
	if typ>>4 != 2 || len(b) != 2 {
		return nil, 0, fmt.Errorf("expected a CONNACK, got packet type %d with %d bytes", typ>>4, len(b))
	}
	if b[1] != Code311Accepted {
		return nil, b[1], fmt.Errorf("connection refused with return code 0x%02x", b[1])
	}
	_ = conn.SetDeadline(time.Time{})
	rc := &Raw311{conn: conn, SessionPresent: b[0]&0x01 != 0, Msgs: make(chan *paho.Publish, 100),
		Down: make(chan struct{}), acks: map[uint16]chan []byte{}}
	go rc.readLoop(r)
	return rc, b[1], nil
}

func (rc *Raw311) readLoop(r *bufio.Reader) {
	defer close(rc.Down)
	for {
		typ, b, err := ReadMQTTPacket(r)
		if err != nil {
			return
		}
		switch typ >> 4 {
		case 3: // PUBLISH
			qos := (typ >> 1) & 0x03
			if len(b) < 2 {
				return
			}
			n := int(u16(b))
			if len(b) < 2+n {
				return
			}
			m := &paho.Publish{Topic: string(b[2 : 2+n]), QoS: qos, Retain: typ&0x01 != 0}
			rest := b[2+n:]
			if qos > 0 {
				if len(rest) < 2 {
					return
				}
				m.PacketID = u16(rest)
				rest = rest[2:]
				_ = rc.write(frame(0x40, nil, byte(m.PacketID>>8), byte(m.PacketID)))
			}
			m.Payload = append([]byte(nil), rest...)
			select {
			case rc.Msgs <- m:
			default:
			}
		case 4, 9: // PUBACK, SUBACK: the packet ID, then the return codes
			if len(b) < 2 {
				return
			}
			id := u16(b)
			rc.mu.Lock()
			ch := rc.acks[id]
			delete(rc.acks, id)
			rc.mu.Unlock()
			if ch != nil {
				ch <- append([]byte(nil), b[2:]...)
			}
		}
	}
}

func (rc *Raw311) write(b []byte) error {
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	_ = rc.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := rc.conn.Write(b)
	return err
}

// await registers a waiter for the acknowledgement of a new packet ID.
func (rc *Raw311) await() (uint16, chan []byte) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.nextID++
	if rc.nextID == 0 {
		rc.nextID = 1
	}
	ch := make(chan []byte, 1)
	rc.acks[rc.nextID] = ch
	return rc.nextID, ch
}

// Subscribe subscribes to one filter and returns the SUBACK return code:
// the granted QoS, or Code311SubackFailure. No SUBACK in 5s fails the test.
func (rc *Raw311) Subscribe(t testing.TB, filter string, qos byte) byte {
	t.Helper()
	codes := rc.SubscribeMany(t, qos, filter)
	return codes[0]
}

// SubscribeMany sends one SUBSCRIBE with every filter at qos and returns
// the SUBACK's return codes, one per filter.
func (rc *Raw311) SubscribeMany(t testing.TB, qos byte, filters ...string) []byte {
	t.Helper()
	id, ch := rc.await()
	body := []byte{byte(id >> 8), byte(id)}
	for _, f := range filters {
		body = append(appendString(body, f), qos)
	}
	if err := rc.write(frame(0x82, body)); err != nil {
		t.Fatalf("MQTT 3.1.1 subscribe %q: %v", filters, err)
	}
	select {
	case codes := <-ch:
		if len(codes) != len(filters) {
			t.Fatalf("MQTT 3.1.1 subscribe %q: SUBACK with %d return codes", filters, len(codes))
		}
		return codes
	case <-rc.Down:
		t.Fatalf("MQTT 3.1.1 subscribe %q: the broker closed the connection", filters)
	case <-time.After(5 * time.Second):
		t.Fatalf("MQTT 3.1.1 subscribe %q: no SUBACK within 5s", filters)
	}
	return nil
}

// ErrClosedByBroker is what Raw311.Publish returns when the broker closed
// the connection instead of acknowledging: 3.1.1 has no negative PUBACK,
// so that is how a broker refuses a QoS 1 publish (§3.3.5).
var ErrClosedByBroker = errors.New("the broker closed the connection")

// Publish sends one message. At QoS 1 it waits up to 5s for the PUBACK
// and returns ErrClosedByBroker if the broker closed the connection
// instead; at QoS 0 it returns once the packet is written.
func (rc *Raw311) Publish(topic string, payload []byte, qos byte, retain bool) error {
	typ := byte(0x30) | (qos&0x03)<<1
	if retain {
		typ |= 0x01
	}
	body := appendString(nil, topic)
	var ch chan []byte
	if qos > 0 {
		var id uint16
		id, ch = rc.await()
		body = append(body, byte(id>>8), byte(id))
	}
	body = append(body, payload...)
	if err := rc.write(frame(typ, body)); err != nil {
		return fmt.Errorf("MQTT 3.1.1 publish to %q: %w", topic, err)
	}
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-rc.Down:
		return fmt.Errorf("MQTT 3.1.1 publish to %q: %w", topic, ErrClosedByBroker)
	case <-time.After(5 * time.Second):
		return fmt.Errorf("MQTT 3.1.1 publish to %q: no PUBACK within 5s", topic)
	}
}

// Disconnect sends DISCONNECT (so the broker discards the Last Will) and
// closes the connection.
func (rc *Raw311) Disconnect() {
	_ = rc.write([]byte{0xe0, 0x00})
	_ = rc.conn.Close()
}

// Drop closes the connection without a DISCONNECT, as a device that loses
// power or network does: the broker publishes the Last Will.
func (rc *Raw311) Drop() {
	_ = rc.conn.Close()
}

// u16 reads a big-endian uint16 (the package's binary() names the warden
// binary, so encoding/binary is not imported).
func u16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

func appendString(b []byte, s string) []byte {
	b = append(b, byte(len(s)>>8), byte(len(s)))
	return append(b, s...)
}

// frame builds an MQTT packet (any version): the fixed header byte, the
// remaining length and the body.
func frame(typ byte, body []byte, more ...byte) []byte {
	body = append(body, more...)
	out := []byte{typ}
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

// maxTestPacket bounds what ReadMQTTPacket accepts; Warden's default
// maximum packet size is far below it.
const maxTestPacket = 4 << 20

// ReadMQTTPacket reads one MQTT packet (any protocol version) from r and
// returns its first byte (type and flags) and its body.
func ReadMQTTPacket(r io.ByteReader) (byte, []byte, error) {
	typ, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return 0, nil, errors.New("malformed remaining length")
		}
		d, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(d&0x7f) * mult
		mult *= 128
		if d&0x80 == 0 {
			break
		}
	}
	if n > maxTestPacket {
		return 0, nil, fmt.Errorf("packet of %d bytes is too large for a test", n)
	}
	body := make([]byte, n)
	for i := range body {
		if body[i], err = r.ReadByte(); err != nil {
			return 0, nil, err
		}
	}
	return typ, body, nil
}

// SplitMQTTPackets cuts a captured byte stream into whole MQTT packets
// (fixed header included); a partial packet at the end is left out.
func SplitMQTTPackets(stream []byte) [][]byte {
	var out [][]byte
	for len(stream) > 0 {
		n, mult, i := 0, 1, 1
		for ; i < len(stream) && i <= 4; i++ {
			n += int(stream[i]&0x7f) * mult
			mult *= 128
			if stream[i]&0x80 == 0 {
				break
			}
		}
		if i >= len(stream) || i > 4 || i+1+n > len(stream) {
			return out
		}
		out = append(out, stream[:i+1+n])
		stream = stream[i+1+n:]
	}
	return out
}

// PublishTopic returns the topic of a captured MQTT PUBLISH packet (fixed
// header included) and whether it is one.
func PublishTopic(pkt []byte) (string, bool) {
	if len(pkt) < 2 || pkt[0]>>4 != 3 {
		return "", false
	}
	i := 1
	for i < len(pkt) && pkt[i]&0x80 != 0 {
		i++
	}
	i++
	if i+2 > len(pkt) {
		return "", false
	}
	n := int(u16(pkt[i:]))
	if i+2+n > len(pkt) {
		return "", false
	}
	return string(pkt[i+2 : i+2+n]), true
}

// ConnectRawPacket is ConnectRaw for a CONNECT packet the test writes in
// full (will properties, a will delay, odd flags), as an attacker would.
// The client ID is sent as given, even empty.
func ConnectRawPacket(t testing.TB, addr string, c Creds, cp *paho.Connect) (*RawClient, *paho.Connack, error) {
	t.Helper()
	cert, pool := c.TLS(t)
	conn, err := DialTLS(t, addr, &cert, pool)
	if err != nil {
		return nil, nil, err
	}
	return connectOn(t, conn, cp)
}

// EnvelopeDevice is an envelope device as a small MCU runs it: the master
// secret from its provisioning bundle, a persisted sequence counter and
// nothing else; tests seal with it and speak MQTT through ConnectPlain.
type EnvelopeDevice struct {
	ID     string         // the device ID
	Dir    string         // where `warden device add --out` wrote its files
	Secret []byte         // the master secret of Epoch, from the bundle
	Epoch  uint32         // the key epoch the bundle describes
	Suite  envelope.Suite // the device's suite

	counter *envelope.Counter
}

// AddEnvelopeDevice registers an envelope device with `warden device add
// ID --envelope` plus extra flags and loads its bundle. Creds returns its
// TLS credentials (every device gets a certificate too).
func (s *Server) AddEnvelopeDevice(id string, extra ...string) *EnvelopeDevice {
	s.t.Helper()
	dir := s.t.TempDir()
	s.MustWarden(append([]string{"device", "add", id, "--out", dir, "--envelope"}, extra...)...)
	bid, env, err := device.LoadEnvelopeBundle(filepath.Join(dir, id+".envelope.json"))
	if err != nil {
		s.t.Fatal(err)
	}
	if bid != id {
		s.t.Fatalf("bundle of %s names device %q", id, bid)
	}
	d := &EnvelopeDevice{ID: id, Dir: dir, Secret: env.Secret, Epoch: env.Epoch, Suite: env.Suite}
	d.Reboot(s.t)
	return d
}

// Creds returns the device's TLS credentials.
func (d *EnvelopeDevice) Creds() Creds {
	return Creds{ID: d.ID, Cert: filepath.Join(d.Dir, d.ID+".crt"), Key: filepath.Join(d.Dir, d.ID+".key"), CA: filepath.Join(d.Dir, "ca.crt")}
}

// Reboot reloads the sequence counter from its file, as a device does
// after a restart (the counter jumps ahead, never back).
func (d *EnvelopeDevice) Reboot(t testing.TB) {
	t.Helper()
	c, err := envelope.NewCounter(envelope.NewFileCounterStore(filepath.Join(d.Dir, fmt.Sprintf("counter-epoch%d", d.Epoch))))
	if err != nil {
		t.Fatal(err)
	}
	d.counter = c
}

// Rekey moves the device to a new epoch and master secret, with a
// sequence counter of its own, as a device applying a rekey does.
func (d *EnvelopeDevice) Rekey(t testing.TB, secret []byte, epoch uint32) {
	t.Helper()
	d.Secret, d.Epoch = append([]byte(nil), secret...), epoch
	d.Reboot(t)
}

// Keys derives the device's keys for one direction of its epoch.
func (d *EnvelopeDevice) Keys(t testing.TB, dir envelope.Direction) *envelope.Keys {
	t.Helper()
	k, err := envelope.DeriveKeys(d.Secret, d.ID, d.Epoch, d.Suite, dir)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// NextSeq takes the next sequence number from the device's counter.
func (d *EnvelopeDevice) NextSeq(t testing.TB) uint64 {
	t.Helper()
	seq, err := d.counter.Next()
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// Seal seals payload as an uplink on topic with the next sequence number.
func (d *EnvelopeDevice) Seal(t testing.TB, topic string, payload []byte) []byte {
	t.Helper()
	m, err := envelope.Seal(d.Keys(t, envelope.Uplink), d.NextSeq(t), topic, payload)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Password returns a fresh CONNECT password for the plain listener.
func (d *EnvelopeDevice) Password(t testing.TB) []byte {
	t.Helper()
	pw, err := envelope.ConnectPassword(d.Keys(t, envelope.Uplink), d.NextSeq(t))
	if err != nil {
		t.Fatal(err)
	}
	return pw
}

// ConnectPlain connects to the plain MQTT listener (or a Proxy in front of
// it) as an envelope device: MQTT 5, client ID and username id, the
// password given. A refusal is the error, with the CONNACK when the broker
// sent one. The connection is closed when the test ends.
func ConnectPlain(t testing.TB, addr, id string, password []byte) (*RawClient, *paho.Connack, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	return connectOn(t, conn, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true,
		UsernameFlag: true, Username: id, PasswordFlag: true, Password: password})
}

// Proxy is a TCP relay in front of one of Warden's listeners that plays
// the network between a device and Warden: Cut drops every connection at
// once (power loss, a dead link), and on the plain listener, where
// nothing protects the bytes, it is an on-path attacker that records what
// passes and injects packets of its own. It serves until the test ends.
type Proxy struct {
	// Addr is the proxy's own loopback address: connect here.
	Addr string

	t      testing.TB
	target string
	ln     net.Listener

	mu    sync.Mutex
	pairs []*proxyPair
}

type proxyPair struct {
	client, server net.Conn
	mu             sync.Mutex // guards the captures
	up, down       []byte     // client -> server and server -> client, as seen so far
	upMu, downMu   sync.Mutex // one writer at a time on each direction
}

// NewProxy starts a proxy to target (host:port).
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: listen: %v", err)
	}
	p := &Proxy{Addr: ln.Addr().String(), t: t, target: target, ln: ln}
	done := make(chan struct{})
	go p.serve(done)
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		p.Cut()
	})
	return p
}

func (p *Proxy) serve(done chan<- struct{}) {
	defer close(done)
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		pr := &proxyPair{client: c, server: s}
		p.mu.Lock()
		p.pairs = append(p.pairs, pr)
		p.mu.Unlock()
		go pr.pipe(c, s, &pr.up, &pr.upMu)
		go pr.pipe(s, c, &pr.down, &pr.downMu)
	}
}

func (pr *proxyPair) pipe(from, to net.Conn, capture *[]byte, wmu *sync.Mutex) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			pr.mu.Lock()
			*capture = append(*capture, buf[:n]...)
			pr.mu.Unlock()
			wmu.Lock()
			_, werr := to.Write(buf[:n])
			wmu.Unlock()
			if werr != nil {
				err = werr
			}
		}
		if err != nil {
			_ = from.Close()
			_ = to.Close()
			return
		}
	}
}

// Cut closes every connection through the proxy on both sides without a
// word: the broker sees the device vanish.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pr := range p.pairs {
		if tc, ok := pr.client.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = pr.client.Close()
		_ = pr.server.Close()
	}
}

func (p *Proxy) last() *proxyPair {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pairs) == 0 {
		p.t.Fatal("proxy: no connection has passed through yet")
	}
	return p.pairs[len(p.pairs)-1]
}

// Uplink returns the whole packets the newest connection's client sent so
// far; Downlink those the server sent.
func (p *Proxy) Uplink() [][]byte {
	pr := p.last()
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return SplitMQTTPackets(append([]byte(nil), pr.up...))
}

// Downlink returns the whole packets the server sent on the newest
// connection so far.
func (p *Proxy) Downlink() [][]byte {
	pr := p.last()
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return SplitMQTTPackets(append([]byte(nil), pr.down...))
}

// InjectUp writes pkt to the server on the newest connection, as if the
// client had sent it; InjectDown writes it to the client. Call them only
// while that direction is quiet, so that pkt lands between two packets.
func (p *Proxy) InjectUp(pkt []byte) error {
	pr := p.last()
	pr.upMu.Lock()
	defer pr.upMu.Unlock()
	_, err := pr.server.Write(pkt)
	return err
}

// InjectDown writes pkt to the client on the newest connection, as if the
// server had sent it.
func (p *Proxy) InjectDown(pkt []byte) error {
	pr := p.last()
	pr.downMu.Lock()
	defer pr.downMu.Unlock()
	_, err := pr.client.Write(pkt)
	return err
}

// AuditLines returns the lines of the server's audit log that contain
// every fragment, for a test that counts them or shows them on failure.
func (s *Server) AuditLines(fragments ...string) []string {
	b, err := os.ReadFile(filepath.Join(s.Data, "audit.log"))
	if err != nil {
		return nil
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		ok := line != ""
		for _, f := range fragments {
			if !strings.Contains(line, f) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}
