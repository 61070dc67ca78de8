package wardentest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/device"
)

// TLS loads the credentials: the client certificate to present and the
// root pool to verify the server with.
func (c Creds) TLS(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	cert, pool, err := device.LoadCredentials(c.Cert, c.Key, c.CA)
	if err != nil {
		t.Fatalf("load credentials of %s: %v", c.ID, err)
	}
	return cert, pool
}

// ConnectSDK connects a device with the Go SDK to the server's MQTTS
// listener, with short reconnect backoffs; opts adjust the configuration
// before connecting. The client is closed when the test ends.
func ConnectSDK(t testing.TB, s *Server, c Creds, opts ...func(*device.Config)) *device.Client {
	t.Helper()
	cert, pool := c.TLS(t)
	cfg := device.Config{
		Servers:     []string{"mqtts://" + s.MQTTS},
		Certificate: cert,
		RootCAs:     pool,
		ServerName:  "localhost",
		MinBackoff:  50 * time.Millisecond,
		MaxBackoff:  500 * time.Millisecond,
	}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := device.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("device %s: connect: %v", c.ID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = cl.Close(ctx)
	})
	return cl
}

// DialTLS opens a TLS connection to addr as the server's certificate
// names it ("localhost"), presenting cert unless it is nil and trusting
// roots; cfgs adjust the configuration first (a TLS version, cipher
// suites). The handshake error is returned, not reported, because
// refusing the handshake is often what a test wants to see.
func DialTLS(t testing.TB, addr string, cert *tls.Certificate, roots *x509.CertPool, cfgs ...func(*tls.Config)) (*tls.Conn, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	for _, f := range cfgs {
		f(cfg)
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// RawClient is a single paho MQTT 5 connection without reconnects, for
// checking exactly what the broker answers. Its Subscribe and Publish
// take a test and a timeout of their own; the embedded paho methods stay
// reachable as rc.Client.Subscribe and rc.Client.Publish.
type RawClient struct {
	*paho.Client
	// Msgs receives the PUBLISH packets the broker delivers. ConnectRaw
	// buffers 100 and drops the rest, so a test that never reads cannot
	// stall the connection.
	Msgs chan *paho.Publish
	// Down is closed when the broker disconnects the client or the
	// connection fails.
	Down chan struct{}
}

// RawOpts shape the CONNECT packet ConnectRaw sends.
type RawOpts struct {
	// ClientID defaults to the credentials' ID.
	ClientID string
	// EmptyClientID sends an empty client ID (for the broker to assign or
	// refuse) instead of the default.
	EmptyClientID bool
	// Clean sets Clean Start.
	Clean bool
	// SessionExpiry, when not zero, asks for a session kept that many
	// seconds after the connection ends.
	SessionExpiry uint32
	// Will is the Last Will, if any.
	Will *paho.WillMessage
}

// ConnectRaw opens one MQTT 5 connection over TLS to addr with the
// credentials and returns the client and the CONNACK. A refused connection
// is the error, with the CONNACK when the broker sent one, so a test can
// check the reason code. The connection is closed when the test ends.
func ConnectRaw(t testing.TB, addr string, c Creds, o RawOpts) (*RawClient, *paho.Connack, error) {
	t.Helper()
	cert, pool := c.TLS(t)
	conn, err := DialTLS(t, addr, &cert, pool)
	if err != nil {
		return nil, nil, err
	}
	id := o.ClientID
	if id == "" && !o.EmptyClientID {
		id = c.ID
	}
	cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: o.Clean, WillMessage: o.Will}
	if o.SessionExpiry > 0 {
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &o.SessionExpiry}
	}
	return connectOn(t, conn, cp)
}

// connectOn runs an MQTT 5 CONNECT on conn and wraps it in a RawClient.
func connectOn(t testing.TB, conn net.Conn, cp *paho.Connect) (*RawClient, *paho.Connack, error) {
	t.Helper()
	rc := &RawClient{Msgs: make(chan *paho.Publish, 100), Down: make(chan struct{})}
	var once sync.Once
	closeDown := func() { once.Do(func() { close(rc.Down) }) }
	rc.Client = paho.NewClient(paho.ClientConfig{
		// paho writes one packet in several Writes; the lock keeps its
		// pinger from interleaving a PINGREQ into another packet.
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case rc.Msgs <- pr.Packet:
			default:
			}
			return true, nil
		}},
		OnServerDisconnect: func(*paho.Disconnect) { closeDown() },
		OnClientError:      func(error) { closeDown() },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := rc.Connect(ctx, cp)
	if err != nil {
		_ = conn.Close()
		return nil, ca, err
	}
	t.Cleanup(func() { _ = rc.Disconnect(&paho.Disconnect{}); _ = conn.Close() })
	return rc, ca, nil
}

// MustConnectRaw is ConnectRaw for a connection that must succeed: a
// refusal fails the test with the reason code.
func MustConnectRaw(t testing.TB, addr string, c Creds, o RawOpts) *RawClient {
	t.Helper()
	rc, ca, err := ConnectRaw(t, addr, c, o)
	if err != nil {
		code := -1
		if ca != nil {
			code = int(ca.ReasonCode)
		}
		t.Fatalf("%s: connect: %v (reason code %d)", c.ID, err, code)
	}
	return rc
}

// Subscribe subscribes to one filter and returns the SUBACK reason code,
// which is the granted QoS or a refusal (0x87 not authorized): a refusal
// is an answer, not a failure. No answer in 5s or a malformed SUBACK fails
// the test.
func (rc *RawClient) Subscribe(t testing.TB, filter string, qos byte) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := rc.Client.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if sa != nil && len(sa.Reasons) == 1 {
		return sa.Reasons[0]
	}
	if err != nil {
		t.Fatalf("subscribe %q: %v", filter, err)
	}
	t.Fatalf("subscribe %q: malformed SUBACK %+v", filter, sa)
	return 0
}

// Publish publishes one message and returns the PUBACK reason code (zero
// at QoS 0, where there is none) and the error, waiting at most 5s.
func (rc *RawClient) Publish(t testing.TB, topic string, payload []byte, qos byte) (byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, err := rc.Client.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: payload})
	if pr != nil {
		return pr.ReasonCode, err
	}
	return 0, err
}

// ExpectMessage waits up to within for a message with exactly this topic
// and payload on ch (logging and skipping any other) and returns it;
// failing the test if none comes.
func ExpectMessage(t testing.TB, ch <-chan *paho.Publish, topic, payload string, within time.Duration) *paho.Publish {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-ch:
			if m.Topic == topic && string(m.Payload) == payload {
				return m
			}
			t.Logf("ignoring message on %s: %q", m.Topic, m.Payload)
		case <-deadline:
			t.Fatalf("no message %q on %s within %v", payload, topic, within)
			return nil
		}
	}
}

// ExpectNoMessage fails the test if any message arrives on ch within d.
func ExpectNoMessage(t testing.TB, ch <-chan *paho.Publish, d time.Duration) {
	t.Helper()
	select {
	case m := <-ch:
		t.Fatalf("unexpected message on %s: %q", m.Topic, m.Payload)
	case <-time.After(d):
	}
}
