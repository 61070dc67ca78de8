package sim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/policy"
)

// Consumer defaults.
const (
	// DefaultConsumerReceiveMaximum lets the broker keep this many QoS 1
	// messages in flight to the consumer: one connection reads the whole
	// fleet's telemetry, so it must not be the bottleneck. paho sizes an
	// inbound queue by it (about 8 bytes per slot).
	DefaultConsumerReceiveMaximum = 65535
	// consumerSessionExpiry keeps the consumer's session, and the QoS 1
	// messages for it, across a lost connection; Close ends it.
	consumerSessionExpiry = 120
	// maxTrackedGap bounds the sequence numbers remembered as missing for
	// one device. Numbers beyond it count as lost at once, and a late
	// arrival of one of them as a duplicate.
	maxTrackedGap = 1 << 16
)

// ConsumerOptions configures a Consumer: a back-end service that reads the
// fleet's relayed telemetry, as a dashboard would.
type ConsumerOptions struct {
	// Server is the broker URL: mqtts://host:port, or mqtt://host:port for
	// a broker without TLS (bench against a plain Mosquitto).
	Server string
	// Certificate is the service's certificate and key, from `warden
	// service add NAME --role reader --out DIR` (DIR/NAME.crt and
	// DIR/NAME.key). Required for mqtts.
	Certificate tls.Certificate
	// RootCAs is the root the broker's certificate must chain to.
	// Required for mqtts.
	RootCAs *x509.CertPool
	// ServerName overrides the host name the broker's certificate is
	// checked against.
	ServerName string
	// ClientID defaults to the service name in the certificate's
	// urn:warden:service: URI, which Warden requires.
	ClientID string
	// Username and Password, if set, go into the CONNECT (a broker with
	// password authentication).
	Username string
	Password []byte
	// Filter is the subscription; default "fleet/+/up/sim". IDLevel is the
	// topic level (from 0) that holds the device ID: 1 for fleet/<id>/...
	// and private/<id>/... (the default).
	Filter  string
	IDLevel int
	// QoS of the subscription: 0, 1 or 2. Run uses the telemetry's.
	QoS byte
	// LocalAddr is the source IP address of the consumer's connections.
	LocalAddr string
	// ReceiveMaximum, default DefaultConsumerReceiveMaximum.
	ReceiveMaximum uint16
	// ConnectTimeout bounds each connection attempt (default 10s).
	ConnectTimeout time.Duration
	// Logger receives connection events; nil discards them.
	Logger *slog.Logger
	// OnError is told of lost connections (ErrConsumer) and of messages
	// that are not telemetry (ErrUnexpected); it must not block.
	OnError func(ErrorKind, error)
}

// rxState is what the consumer knows of one device's messages: every
// sequence number below next arrived, except those in missing.
type rxState struct {
	next     uint64
	missing  map[uint64]struct{}
	overflow uint64 // gaps beyond maxTrackedGap, counted lost at once
	received uint64
	dups     uint64
}

// receive records seq and reports whether it is new.
func (r *rxState) receive(seq uint64) bool {
	switch {
	case seq == r.next:
		r.next++
	case seq > r.next:
		gap := seq - r.next
		if uint64(len(r.missing))+gap > maxTrackedGap {
			r.overflow += gap
		} else {
			if r.missing == nil {
				r.missing = make(map[uint64]struct{}, gap)
			}
			for s := r.next; s < seq; s++ {
				r.missing[s] = struct{}{}
			}
		}
		r.next = seq + 1
	default:
		if _, ok := r.missing[seq]; !ok {
			r.dups++
			return false
		}
		delete(r.missing, seq)
		if len(r.missing) == 0 {
			r.missing = nil
		}
	}
	r.received++
	return true
}

// ConsumerStats is what a consumer has received so far.
type ConsumerStats struct {
	Received   uint64 // telemetry messages, each counted once
	Duplicates uint64 // telemetry messages received again
	Unexpected uint64 // messages that are not telemetry
	Devices    int    // devices heard from
}

// Consumer subscribes to the fleet's telemetry as a service, tells new
// messages from repeated ones per device by their sequence numbers, and
// records each new message's end-to-end latency (from the send time in its
// payload). It reconnects by itself, resuming its session so that QoS 1
// messages wait for it.
type Consumer struct {
	o   ConsumerOptions
	log *slog.Logger
	cm  *autopaho.ConnectionManager

	subscribed chan error // the first subscription's outcome
	subOnce    sync.Once

	mu       sync.Mutex
	devices  map[string]*rxState
	latency  Histogram
	stats    ConsumerStats
	stopping bool
	lastErr  error // the last failed connection attempt
}

// StartConsumer connects and subscribes, and returns once the broker has
// granted the subscription, or with the reason it did not (within ctx).
func StartConsumer(ctx context.Context, o ConsumerOptions) (*Consumer, error) {
	u, err := url.Parse(o.Server)
	if err != nil {
		return nil, fmt.Errorf("sim: consumer server %q: %w", o.Server, err)
	}
	var tlsCfg *tls.Config
	switch u.Scheme {
	case "mqtts":
		if u.Port() == "" {
			u.Host = net.JoinHostPort(u.Hostname(), "8883")
		}
		if len(o.Certificate.Certificate) == 0 || o.RootCAs == nil {
			return nil, errors.New("sim: the consumer needs a service certificate and the Warden root for mqtts (`warden service add NAME --role reader --out DIR`)")
		}
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: o.RootCAs, ServerName: o.ServerName, Certificates: []tls.Certificate{o.Certificate}}
	case "mqtt":
		if u.Port() == "" {
			u.Host = net.JoinHostPort(u.Hostname(), "1883")
		}
	default:
		return nil, fmt.Errorf("sim: consumer server %q: the scheme must be mqtts or mqtt", o.Server)
	}
	if o.ClientID == "" {
		if len(o.Certificate.Certificate) == 0 {
			return nil, errors.New("sim: the consumer needs a client ID or a service certificate that names one")
		}
		leaf := o.Certificate.Leaf
		if leaf == nil {
			if leaf, err = x509.ParseCertificate(o.Certificate.Certificate[0]); err != nil {
				return nil, fmt.Errorf("sim: consumer certificate: %w", err)
			}
		}
		kind, name, err := identity.FromURIs(leaf.URIs)
		if err != nil || kind != identity.KindService {
			return nil, fmt.Errorf("sim: the consumer certificate names no service (urn:warden:service:NAME); give a reader service's certificate, or set the client ID")
		}
		o.ClientID = name
	}
	if o.Filter == "" {
		o.Filter = "fleet/+/up/" + DefaultChannel
	}
	if o.IDLevel == 0 {
		o.IDLevel = 1
	}
	if !policy.ValidFilter(o.Filter) || o.IDLevel < 0 {
		return nil, fmt.Errorf("sim: consumer filter %q is not a valid MQTT topic filter", o.Filter)
	}
	if o.QoS > 2 {
		return nil, fmt.Errorf("sim: consumer QoS %d is not 0, 1 or 2", o.QoS)
	}
	if o.ReceiveMaximum == 0 {
		o.ReceiveMaximum = DefaultConsumerReceiveMaximum
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	var local *net.TCPAddr
	if o.LocalAddr != "" {
		ip := net.ParseIP(o.LocalAddr)
		if ip == nil {
			return nil, fmt.Errorf("sim: consumer source address %q is not an IP address", o.LocalAddr)
		}
		local = &net.TCPAddr{IP: ip}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Consumer{
		o:          o,
		log:        log.With(slog.String("component", "consumer"), slog.String("client", o.ClientID)),
		subscribed: make(chan error, 1),
		devices:    make(map[string]*rxState),
	}

	expiry := uint32(consumerSessionExpiry)
	zero := uint32(0)
	recvMax := o.ReceiveMaximum
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		SessionExpiryInterval:         expiry,
		ConnectTimeout:                o.ConnectTimeout,
		ReconnectBackoff:              func(n int) time.Duration { return min(time.Duration(n)*200*time.Millisecond, 5*time.Second) },
		ConnectUsername:               o.Username,
		ConnectPassword:               o.Password,
		AttemptConnection: func(ctx context.Context, _ autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
			nd := &net.Dialer{Timeout: o.ConnectTimeout}
			if local != nil {
				nd.LocalAddr = local
			}
			var conn net.Conn
			var err error
			if tlsCfg != nil {
				d := tls.Dialer{NetDialer: nd, Config: tlsCfg}
				conn, err = d.DialContext(ctx, "tcp", u.Host)
			} else {
				conn, err = nd.DialContext(ctx, "tcp", u.Host)
			}
			if err != nil {
				return nil, err
			}
			return packets.NewThreadSafeConn(conn), nil
		},
		ConnectPacketBuilder: func(cp *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if cp.Properties == nil {
				cp.Properties = &paho.ConnectProperties{}
			}
			cp.Properties.ReceiveMaximum = &recvMax
			return cp, nil
		},
		// Ending the session at Close stops the broker queueing the
		// fleet's telemetry for a consumer that is gone.
		DisconnectPacketBuilder: func() *paho.Disconnect {
			return &paho.Disconnect{Properties: &paho.DisconnectProperties{SessionExpiryInterval: &zero}}
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, ack *paho.Connack) {
			// Subscribing again on a resumed session is harmless, and
			// needed on a new one.
			go c.subscribe(cm)
		},
		OnConnectionDown: func() bool {
			c.mu.Lock()
			stopping := c.stopping
			c.mu.Unlock()
			if !stopping {
				c.report(ErrConsumer, errors.New("sim: the consumer's connection was lost; reconnecting"))
			}
			return true
		},
		OnConnectError: func(err error) {
			c.mu.Lock()
			c.lastErr = err
			c.mu.Unlock()
			c.log.Debug("consumer connection attempt failed", "reason", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID:          o.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){c.onPublish},
		},
	}
	life := context.WithoutCancel(ctx)
	cm, err := autopaho.NewConnection(life, cfg)
	if err != nil {
		return nil, fmt.Errorf("sim: start the consumer: %w", err)
	}
	c.cm = cm
	select {
	case err := <-c.subscribed:
		if err != nil {
			_ = c.Close(context.Background())
			return nil, err
		}
		return c, nil
	case <-ctx.Done():
		c.mu.Lock()
		last := c.lastErr
		c.mu.Unlock()
		_ = c.Close(context.Background())
		if last != nil {
			return nil, fmt.Errorf("sim: the consumer did not connect and subscribe to %q at %s: %w; last attempt: %w", o.Filter, u.Redacted(), ctx.Err(), last)
		}
		return nil, fmt.Errorf("sim: the consumer did not connect and subscribe to %q at %s: %w", o.Filter, u.Redacted(), ctx.Err())
	}
}

func (c *Consumer) subscribe(cm *autopaho.ConnectionManager) {
	ctx, cancel := context.WithTimeout(context.Background(), c.o.ConnectTimeout)
	defer cancel()
	sa, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: c.o.Filter, QoS: c.o.QoS}}})
	switch {
	case sa != nil && len(sa.Reasons) == 1 && sa.Reasons[0] >= 0x80:
		err = fmt.Errorf("sim: the broker refused the consumer's subscription to %q (reason code 0x%02X); the service needs the reader role", c.o.Filter, sa.Reasons[0])
	case err != nil:
		err = fmt.Errorf("sim: consumer subscription to %q: %w", c.o.Filter, err)
	}
	if err != nil {
		c.log.Warn("consumer subscription failed", "reason", err)
	}
	c.subOnce.Do(func() { c.subscribed <- err })
}

func (c *Consumer) report(kind ErrorKind, err error) {
	if c.o.OnError != nil {
		c.o.OnError(kind, err)
	}
}

// deviceID returns the topic level that names the device.
func deviceID(topic string, level int) (string, bool) {
	for range level {
		_, rest, ok := strings.Cut(topic, "/")
		if !ok {
			return "", false
		}
		topic = rest
	}
	id, _, _ := strings.Cut(topic, "/")
	return id, id != ""
}

// onPublish runs on paho's receive goroutine, one message at a time; the
// message is acknowledged when it returns.
func (c *Consumer) onPublish(pr paho.PublishReceived) (bool, error) {
	now := time.Now()
	p := pr.Packet
	id, ok := deviceID(p.Topic, c.o.IDLevel)
	st, err := ParsePayload(p.Payload)
	if !ok || err != nil {
		if err == nil {
			err = fmt.Errorf("sim: topic %q has no device ID at level %d", p.Topic, c.o.IDLevel)
		}
		c.mu.Lock()
		c.stats.Unexpected++
		c.mu.Unlock()
		c.report(ErrUnexpected, fmt.Errorf("%s: %w", p.Topic, err))
		return true, nil
	}
	c.mu.Lock()
	r := c.devices[id]
	if r == nil {
		r = &rxState{}
		c.devices[id] = r
		c.stats.Devices++
	}
	if r.receive(st.Seq) {
		c.stats.Received++
		c.latency.Record(now.Sub(st.Sent))
	} else {
		c.stats.Duplicates++
	}
	c.mu.Unlock()
	return true, nil
}

// Stats returns what the consumer has received so far.
func (c *Consumer) Stats() ConsumerStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Latency returns a copy of the end-to-end latency histogram.
func (c *Consumer) Latency() *Histogram {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.latency
	return &h
}

// Delivery compares what devices sent with what a consumer received.
type Delivery struct {
	// Received counts messages received once or more; Duplicates the
	// extra copies.
	Received, Duplicates uint64
	// Lost counts messages a device saw acknowledged (QoS 1) or written
	// (QoS 0) that the consumer never received.
	Lost uint64
	// Unexpected counts messages that were not telemetry, or came from a
	// device that is not in the ledgers.
	Unexpected uint64
}

// Reconcile compares the consumer's view with the devices' ledgers.
// Call it after the devices stopped publishing and the consumer had time
// to drain.
func (c *Consumer) Reconcile(ledgers []Ledger) Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := Delivery{Unexpected: c.stats.Unexpected}
	known := make(map[string]bool, len(ledgers))
	for _, l := range ledgers {
		known[l.ID] = true
		r := c.devices[l.ID]
		if r == nil {
			r = &rxState{}
		}
		d.Lost += r.lost(l)
	}
	for id, r := range c.devices {
		if !known[id] {
			d.Unexpected += r.received + r.dups
			continue
		}
		d.Received += r.received
		d.Duplicates += r.dups
	}
	return d
}

// lost counts the sequence numbers l's device saw succeed that never
// arrived: those at or above next, and those still missing below it.
func (r *rxState) lost(l Ledger) uint64 {
	failed := make(map[uint64]bool, len(l.Failed))
	for _, s := range l.Failed {
		failed[s] = true
	}
	var n uint64
	if l.Next > r.next {
		n = l.Next - r.next
		for _, s := range l.Failed {
			if s >= r.next && s < l.Next {
				n--
			}
		}
	}
	for s := range r.missing {
		if s < l.Next && !failed[s] {
			n++
		}
	}
	return n + r.overflow
}

// Close ends the consumer's session and connection.
func (c *Consumer) Close(ctx context.Context) error {
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	if c.cm == nil {
		return nil
	}
	if err := c.cm.Disconnect(ctx); err != nil && !errors.Is(err, autopaho.ConnectionDownError) {
		return fmt.Errorf("sim: close the consumer: %w", err)
	}
	return nil
}
