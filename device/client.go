package device

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/policy"
)

// Message is an MQTT message delivered to a subscription handler.
type Message struct {
	Topic string
	// Channel is the <channel> of a private/<id>/down/<channel> topic, and
	// empty for any other topic.
	Channel string
	// Payload is shared by every handler the message is delivered to; copy
	// it before modifying it.
	Payload  []byte
	QoS      byte
	Retained bool

	// Sealed is true when Payload is the opened plaintext of a sealed
	// downlink (an envelope client's SubscribeDown handlers get only
	// those). Seq is its envelope sequence number and Epoch the key epoch
	// it was sealed under; both are 0 when Sealed is false.
	Sealed bool
	Seq    uint64
	Epoch  uint32
}

// subscription is one filter the client keeps subscribed across
// reconnections.
type subscription struct {
	filter  string // as sent to the broker
	match   string // what messages are matched against: the filter without any $share/<group>/ prefix
	qos     byte
	handler func(Message) // nil for the SDK's own rekey subscription
	down    bool          // from SubscribeDown: an envelope client opens what it gets
}

// Client is a device's connection to Warden. It reconnects by itself until
// Close, and restores its subscriptions on every new connection. Its
// methods are safe for concurrent use.
type Client struct {
	s          *settings
	cm         *autopaho.ConnectionManager
	downPrefix string         // private/<id>/down/
	env        *envelopeState // nil: not an envelope device
	rekeyTopic string         // private/<id>/down/_rekey, for an envelope device
	otaAgent   atomic.Bool    // an OTA agent (OTA) holds the client's OTA topics
	ob         *onboarding    // renewals, rotations and claims (renew.go)
	gate       publishGate    // holds publishes while a new certificate takes over (renew.go)

	cmd atomic.Pointer[commander] // set by HandleCommands (command.go), which then holds the cmd channel

	life context.Context // ends at Close or a failed Connect; bounds background work
	stop context.CancelFunc
	wg   sync.WaitGroup // resubscription goroutines

	firstUp   chan struct{} // closed by the first successful CONNACK
	firstOnce sync.Once
	refused   chan error // Connect gives up when this receives

	mu        sync.Mutex
	subs      map[string]*subscription // by filter
	dialed    *trackedConn             // the connection being attempted
	dialedURL string
	dialErr   error        // why the last attempt failed before CONNECT, if it did
	dialPlain bool         // the attempt is to a plain mqtt:// server
	current   *trackedConn // the connection that is up, if any
	everUp    bool
	lastErr   error         // the last failed attempt, for Connect's error
	streak    int           // consecutive attempts that failed permanently
	connDown  chan struct{} // closed and replaced when a connection is lost (renew.go waits on it)
}

// Connect validates cfg, starts the connection manager and waits until the
// broker has accepted the first connection (CONNACK success) or ctx ends.
// ctx bounds only this wait: the connection lives until Close.
//
// Transient failures (broker down, network error) are retried with backoff.
// Failures that would repeat — the broker refuses the device (for example
// revoked, or not authorized), rejects its certificate, or presents a
// certificate the pinned root does not vouch for — end Connect at once when
// every server has failed that way in a row; a refusal comes back as a
// *RefusedError.
//
// With Config.Envelope, the client also subscribes to RekeyChannel (except
// for sign-p256) and handles Warden's rekey messages itself.
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	s, err := cfg.validate()
	if err != nil {
		return nil, fmt.Errorf("device: %w", err)
	}
	c := &Client{
		s:          s,
		downPrefix: "private/" + s.id + "/down/",
		firstUp:    make(chan struct{}),
		refused:    make(chan error, 1),
		subs:       make(map[string]*subscription),
		connDown:   make(chan struct{}),
	}
	c.ob = newOnboarding(c) // registers private/<id>/cert/new when the client has a certificate
	if s.env != nil {
		if c.env, err = newEnvelopeState(s.env, s.id, s.log); err != nil {
			return nil, fmt.Errorf("device: %w", err)
		}
		c.rekeyTopic = c.downPrefix + RekeyChannel
		if s.env.suite != envelope.SignP256 {
			// Registered before the first connection, so that every
			// connection (re)subscribes it with the application's filters.
			c.subs[c.rekeyTopic] = &subscription{filter: c.rekeyTopic, match: c.rekeyTopic, qos: 1}
		}
		s.log.Info("envelope device", "suite", s.env.suite.String(), "epoch", s.env.epoch, "seal_uplinks", s.env.sealUp)
	}
	life, stop := context.WithCancel(context.WithoutCancel(ctx))
	c.life, c.stop = life, stop
	pahoLog := pahoLogger{s.log.With(slog.String("component", "paho"))}
	c.cm, err = autopaho.NewConnection(life, autopaho.ClientConfig{
		ServerUrls:                    s.servers,
		TlsCfg:                        s.tls,
		KeepAlive:                     s.keepAlive,
		CleanStartOnInitialConnection: s.sessionExpiry == 0,
		SessionExpiryInterval:         s.sessionExpiry,
		ReconnectBackoff:              c.reconnectDelay,
		ConnectTimeout:                s.connectTimeout,
		AttemptConnection:             c.attempt,
		ConnectPacketBuilder:          c.buildConnect,
		OnConnectionUp:                c.onConnectionUp,
		OnConnectionDown:              c.onConnectionDown,
		OnConnectError:                c.onConnectError,
		Errors:                        pahoLog,
		PahoErrors:                    pahoLog,
		ClientConfig: paho.ClientConfig{
			ClientID:           s.id,
			OnPublishReceived:  []func(paho.PublishReceived) (bool, error){c.onPublish},
			OnServerDisconnect: c.onServerDisconnect,
		},
	})
	if err != nil {
		stop()
		return nil, fmt.Errorf("device: start the connection manager: %w", err)
	}

	select {
	case <-c.firstUp:
		c.ob.start() // AutoRenew
		return c, nil
	case err := <-c.refused:
		c.abandon()
		return nil, err
	case <-ctx.Done():
		c.mu.Lock()
		last := c.lastErr
		c.mu.Unlock()
		c.abandon()
		if last != nil {
			return nil, fmt.Errorf("device: no connection to the broker before the context ended (%w); last attempt: %w", ctx.Err(), last)
		}
		return nil, fmt.Errorf("device: no connection to the broker before the context ended: %w", ctx.Err())
	}
}

// abandon stops a connection manager that Connect will not hand out. Its
// attempts are bound to c.life, so it stops promptly; the wait is bounded in
// case it does not.
func (c *Client) abandon() {
	c.stop()
	t := time.NewTimer(c.s.connectTimeout)
	defer t.Stop()
	select {
	case <-c.cm.Done():
	case <-t.C:
	}
}

// ID returns the device ID, which is also the MQTT client ID.
func (c *Client) ID() string { return c.s.id }

// Done is closed when the client has stopped, after Close.
func (c *Client) Done() <-chan struct{} { return c.cm.Done() }

// AwaitConnection returns when a connection is up, ctx ends, or the client
// is closed (ErrClosed).
func (c *Client) AwaitConnection(ctx context.Context) error {
	if err := c.awaitConnection(ctx); err != nil {
		return fmt.Errorf("device: await connection: %w", err)
	}
	return nil
}

func (c *Client) awaitConnection(ctx context.Context) error {
	if c.life.Err() != nil {
		return ErrClosed
	}
	err := c.cm.AwaitConnection(ctx)
	if err != nil && c.life.Err() != nil {
		return ErrClosed
	}
	return err
}

// Close sends DISCONNECT, stops reconnecting and waits for background work
// to end, or for ctx. Calling it again returns nil.
func (c *Client) Close(ctx context.Context) error {
	c.stop()
	if err := c.cm.Disconnect(ctx); err != nil {
		return fmt.Errorf("device: close: %w", err)
	}
	c.wg.Wait()
	return nil
}

// PublishUp publishes payload on the device's uplink channel,
// private/<id>/up/<channel>. channel is one topic level: non-empty, valid
// UTF-8, without '/', '+', '#' or NUL.
//
// An envelope client seals payload (at most envelope.MaxPlaintext bytes)
// when every server is plain mqtt:// or Envelope.Required is set, taking a
// sequence number from the epoch's Counter; it fails without sending if the
// counter cannot persist its bound or the epoch's numbers are used up
// (envelope.ErrRekeyRequired). A sealed message that must be sent again
// after a lost connection is sent as the same bytes, which Warden accepts
// once.
func (c *Client) PublishUp(ctx context.Context, channel string, payload []byte, qos byte) error {
	if err := validChannel(channel, false); err != nil {
		return fmt.Errorf("device: publish up: %w", err)
	}
	topic := "private/" + c.s.id + "/up/" + channel
	if c.env != nil && c.env.cfg.sealUp {
		if qos > 2 { // before a sequence number is spent on it
			return fmt.Errorf("device: publish to %q: QoS %d is not 0, 1 or 2", topic, qos)
		}
		if c.life.Err() != nil {
			return fmt.Errorf("device: publish to %q: %w", topic, ErrClosed)
		}
		sealed, err := c.env.seal(topic, payload)
		if err != nil {
			return fmt.Errorf("device: publish to %q: seal: %w", topic, err)
		}
		payload = sealed
	}
	return c.Publish(ctx, topic, payload, qos, false)
}

// SubscribeDown subscribes h to the device's downlink channel,
// private/<id>/down/<channel>. channel is one topic level as for PublishUp,
// or exactly "+" (every channel) or "#" (every channel and sub-level). The
// subscription is restored after every reconnection; see Subscribe.
//
// An envelope client's handlers get the opened plaintext of Warden's sealed
// downlinks (Message.Sealed, Seq and Epoch set); a message that does not
// open, or was already accepted, is dropped, counted in EnvelopeStats and
// reported to Envelope.OnDropped. RekeyChannel is reserved.
func (c *Client) SubscribeDown(ctx context.Context, channel string, qos byte, h func(Message)) error {
	if err := validChannel(channel, true); err != nil {
		return fmt.Errorf("device: subscribe down: %w", err)
	}
	if err := c.commandsReserved(c.downPrefix + channel); err != nil {
		return err
	}
	return c.subscribe(ctx, c.downPrefix+channel, qos, h, true)
}

// EnvelopeStats returns what an envelope client has sealed, opened and
// dropped so far, and its current key epoch; the zero value for a client
// without Config.Envelope.
func (c *Client) EnvelopeStats() EnvelopeStats {
	if c.env == nil {
		return EnvelopeStats{}
	}
	return c.env.stats()
}

// Publish publishes payload to a raw topic; most devices want PublishUp.
// It never seals, even for an envelope client.
// It waits for a connection if there is none. With QoS 1 or 2 it returns
// once the broker has acknowledged, and a refusal (reason code 0x80 or
// above, for example 0x87 for a topic the device may not use) is returned
// as a *RefusedError. With QoS 0 the broker sends no answer, so a refused
// message is dropped silently.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	if !policy.ValidTopicName(topic) {
		return fmt.Errorf("device: publish: %q is not a valid topic name (non-empty, valid UTF-8 without NUL, no '+' or '#', at most 65535 bytes)", topic)
	}
	if qos > 2 {
		return fmt.Errorf("device: publish to %q: QoS %d is not 0, 1 or 2", topic, qos)
	}
	for {
		if err := c.awaitConnection(ctx); err != nil {
			return fmt.Errorf("device: publish to %q: %w", topic, err)
		}
		// The gate holds publishes while the client switches to a new
		// certificate, so that none is cut off in flight (renew.go).
		if err := c.gate.enter(ctx); err != nil {
			return fmt.Errorf("device: publish to %q: %w", topic, err)
		}
		resp, err := c.cm.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Retain: retain, Payload: payload})
		c.gate.leave()
		if errors.Is(err, autopaho.ConnectionDownError) {
			continue // lost between the wait and the send: nothing was sent
		}
		// paho reports a refused QoS 2 publish (PUBREC >= 0x80) without an
		// error, so the reason code is checked whatever err is.
		if resp != nil && resp.ReasonCode >= 0x80 {
			var reason string
			if resp.Properties != nil {
				reason = resp.Properties.ReasonString
			}
			return &RefusedError{Op: "publish", Target: topic, ReasonCode: resp.ReasonCode, Reason: reason}
		}
		if err != nil {
			return fmt.Errorf("device: publish to %q: %w", topic, err)
		}
		return nil
	}
}

// Subscribe subscribes h to a raw topic filter; most devices want
// SubscribeDown. It waits for a connection if there is none and returns
// once the broker has answered: a refusal (SUBACK reason code 0x80 or above)
// is returned as a *RefusedError and the filter is forgotten. An accepted
// filter is subscribed again after every reconnection. Subscribing to a
// filter again replaces its handler.
//
// Handlers run one at a time on the client's receive goroutine, and QoS 1
// and 2 messages are acknowledged when they return: a handler must return
// promptly, or the broker stops sending once ReceiveMaximum messages are
// waiting.
//
// Subscribe's handlers get messages as they arrive, also an envelope
// client's: sealed downlinks stay sealed (SubscribeDown opens them). The
// SDK's rekey topic cannot be subscribed to this way, and its messages are
// never delivered to any handler.
func (c *Client) Subscribe(ctx context.Context, filter string, qos byte, h func(Message)) error {
	if err := c.commandsReserved(filter); err != nil {
		return err
	}
	return c.subscribe(ctx, filter, qos, h, false)
}

func (c *Client) subscribe(ctx context.Context, filter string, qos byte, h func(Message), down bool) error {
	if c.env != nil && filter == c.rekeyTopic {
		return fmt.Errorf("device: subscribe to %q: the %s channel is reserved for Warden's rekey messages, which the SDK handles itself", filter, RekeyChannel)
	}
	if c.ob.reserved(filter) {
		return fmt.Errorf("device: subscribe to %q: the topic is reserved for Warden's certificate and claim answers, which the SDK handles itself (Renew, Claim)", filter)
	}
	if h == nil {
		return fmt.Errorf("device: subscribe to %q: the handler is nil", filter)
	}
	if qos > 2 {
		return fmt.Errorf("device: subscribe to %q: QoS %d is not 0, 1 or 2", filter, qos)
	}
	match := filter
	if inner, shared, ok := policy.SplitShared(filter); shared {
		if !ok {
			return fmt.Errorf("device: subscribe: %q is not a valid shared subscription ($share/<group>/<filter>)", filter)
		}
		match = inner
	}
	if !policy.ValidFilter(filter) {
		return fmt.Errorf("device: subscribe: %q is not a valid topic filter ('+' and '#' only as whole levels, '#' last; valid UTF-8 without NUL; at most 65535 bytes)", filter)
	}

	// Register first, so that a reconnection racing with this call restores
	// the subscription too; undo it if the broker refuses.
	sub := &subscription{filter: filter, match: match, qos: qos, handler: h, down: down}
	c.mu.Lock()
	prev := c.subs[filter]
	c.subs[filter] = sub
	c.mu.Unlock()
	undo := func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.subs[filter] != sub {
			return
		}
		if prev != nil {
			c.subs[filter] = prev
		} else {
			delete(c.subs, filter)
		}
	}

	for {
		if err := c.awaitConnection(ctx); err != nil {
			undo()
			return fmt.Errorf("device: subscribe to %q: %w", filter, err)
		}
		sa, err := c.cm.Subscribe(ctx, &paho.Subscribe{
			Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}},
		})
		if sa != nil && len(sa.Reasons) == 1 {
			if code := sa.Reasons[0]; code >= 0x80 {
				undo()
				var reason string
				if sa.Properties != nil {
					reason = sa.Properties.ReasonString
				}
				return &RefusedError{Op: "subscribe", Target: filter, ReasonCode: code, Reason: reason}
			}
			return nil
		}
		if errors.Is(err, autopaho.ConnectionDownError) || errors.Is(err, paho.ErrConnectionLost) {
			continue // subscribing is idempotent: try on the next connection
		}
		if err == nil {
			err = errors.New("the SUBACK does not carry exactly one reason code")
		}
		undo()
		return fmt.Errorf("device: subscribe to %q: %w", filter, err)
	}
}

// validChannel checks a channel name: one topic level, or with wildcard
// exactly "+" or "#".
func validChannel(ch string, wildcard bool) error {
	if wildcard && (ch == "+" || ch == "#") {
		return nil
	}
	switch {
	case ch == "":
		return errors.New("the channel name is empty")
	case !utf8.ValidString(ch):
		return fmt.Errorf("channel %q is not valid UTF-8", ch)
	case strings.ContainsAny(ch, "/+#\x00"):
		if wildcard {
			return fmt.Errorf("channel %q must not contain '/', '+', '#' or NUL (use exactly \"+\" or \"#\" for every channel)", ch)
		}
		return fmt.Errorf("channel %q must not contain '/', '+', '#' or NUL", ch)
	}
	return nil
}

// reconnectDelay is autopaho's ReconnectBackoff. autopaho numbers attempts
// from 0 for each outage. The very first connection is tried at once;
// after a loss even the first retry waits a random part of MinBackoff, so
// that a fleet dropped by a broker restart does not return all at once.
func (c *Client) reconnectDelay(attempt int) time.Duration {
	c.mu.Lock()
	up := c.everUp
	c.mu.Unlock()
	if !up {
		if attempt == 0 {
			return 0
		}
		attempt--
	}
	return Backoff(c.s.minBackoff, c.s.maxBackoff, attempt, nil)
}

// attempt is autopaho's AttemptConnection.
func (c *Client) attempt(ctx context.Context, _ autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
	conn, err := dialFrom(ctx, u, c.s.tls, c.s.connectTimeout, c.s.localAddr)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dialedURL = u.Redacted()
	c.dialed, c.dialErr = conn, err
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// buildConnect completes the CONNECT packet autopaho builds. autopaho calls
// it before each attempt's dial, so it also starts the attempt's record.
func (c *Client) buildConnect(cp *paho.Connect, u *url.URL) (*paho.Connect, error) {
	plain := u.Scheme == "mqtt"
	c.mu.Lock()
	c.dialedURL, c.dialed, c.dialErr, c.dialPlain = u.Redacted(), nil, nil, plain
	c.mu.Unlock()
	if plain {
		// A fresh single-use password per attempt, from the same counter
		// as the messages (docs/envelope.md, "Connecting without TLS").
		pw, err := c.env.connectPassword()
		if err != nil {
			err = fmt.Errorf("device: %s: make the envelope CONNECT password: %w", u.Redacted(), err)
			c.mu.Lock()
			c.dialErr = err
			c.mu.Unlock()
			return nil, err
		}
		cp.Username, cp.UsernameFlag = c.s.id, true
		cp.Password, cp.PasswordFlag = pw, true
	}
	// autopaho sets clean start on the first connection only; the SDK's
	// contract is per connection.
	cp.CleanStart = c.s.sessionExpiry == 0
	if cp.Properties == nil {
		cp.Properties = &paho.ConnectProperties{}
	}
	rm := c.s.receiveMaximum
	cp.Properties.ReceiveMaximum = &rm
	if c.s.sessionExpiry > 0 {
		se := c.s.sessionExpiry
		cp.Properties.SessionExpiryInterval = &se
	}
	return cp, nil
}

// onConnectError is autopaho's OnConnectError; it runs on the connection
// manager's goroutine after each failed attempt.
func (c *Client) onConnectError(err error) {
	perm := permanent(err)
	c.mu.Lock()
	server := c.dialedURL
	var ce *autopaho.ConnackError
	switch {
	case errors.As(err, &ce):
		err = &RefusedError{Op: "connect", Target: server, ReasonCode: ce.ReasonCode, Reason: ce.Reason, plain: c.dialPlain}
	case c.dialErr != nil:
		err = c.dialErr // already says what failed; autopaho's wrapping adds nothing
	case rejectedCertificate(err):
		err = fmt.Errorf("device: %s: the broker rejected the device certificate (is it issued by Warden, unexpired and not revoked?): %w", server, err)
	default:
		err = fmt.Errorf("device: %s: MQTT connect failed: %w", server, err)
	}
	c.lastErr = err
	if perm {
		c.streak++
	} else {
		c.streak = 0
	}
	giveUp := !c.everUp && perm && c.streak >= len(c.s.servers)
	everUp := c.everUp
	c.mu.Unlock()

	switch {
	case giveUp:
		select {
		case c.refused <- err:
		default:
		}
	case !everUp:
		c.s.log.Debug("connection attempt failed; retrying", "server", server, "reason", err)
	case perm:
		c.s.log.Error("broker refuses the device; retrying with backoff", "server", server, "reason", err)
	default:
		c.s.log.Warn("reconnection attempt failed; retrying with backoff", "server", server, "reason", err)
	}
}

// onConnectionUp is autopaho's OnConnectionUp.
func (c *Client) onConnectionUp(cm *autopaho.ConnectionManager, ack *paho.Connack) {
	c.mu.Lock()
	c.current = c.dialed
	server := c.dialedURL
	c.everUp = true
	c.streak = 0
	c.lastErr = nil
	subs := make([]*subscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	subs = append(subs, c.ob.subscriptions()...) // the SDK's answer topics (renew.go)

	c.s.log.Info("connected", "server", server, "session_present", ack.SessionPresent)
	if len(subs) > 0 {
		c.wg.Add(1)
		go c.resubscribe(cm, subs)
	}
	c.firstOnce.Do(func() { close(c.firstUp) })
	if c.s.onUp != nil {
		c.s.onUp()
	}
}

// resubscribe restores subscriptions on a new connection. With a resumed
// session the broker still has them; subscribing again is harmless, and
// retain handling 1 keeps it from resending retained messages for
// subscriptions that already exist.
func (c *Client) resubscribe(cm *autopaho.ConnectionManager, subs []*subscription) {
	defer c.wg.Done()
	req := &paho.Subscribe{}
	for _, s := range subs {
		req.Subscriptions = append(req.Subscriptions, paho.SubscribeOptions{Topic: s.filter, QoS: s.qos, RetainHandling: 1})
	}
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(c.life, c.s.connectTimeout)
		sa, err := cm.Subscribe(ctx, req)
		cancel()
		if sa != nil && len(sa.Reasons) == len(subs) {
			for i, code := range sa.Reasons {
				if code < 0x80 {
					continue
				}
				c.s.log.Error("broker refused a subscription on reconnection; dropping it",
					"filter", subs[i].filter, "reason_code", fmt.Sprintf("0x%02X", code), "reason", reasonName(code))
				c.mu.Lock()
				if c.subs[subs[i].filter] == subs[i] {
					delete(c.subs, subs[i].filter)
				}
				c.mu.Unlock()
			}
			c.s.log.Debug("subscriptions restored", "count", len(subs))
			return
		}
		if c.life.Err() != nil || errors.Is(err, autopaho.ConnectionDownError) || errors.Is(err, paho.ErrConnectionLost) {
			return // the next connection restores them
		}
		c.s.log.Warn("restoring subscriptions failed; retrying", "reason", err)
		t := time.NewTimer(Backoff(c.s.minBackoff, c.s.maxBackoff, attempt, nil))
		select {
		case <-c.life.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// onConnectionDown is autopaho's OnConnectionDown. Returning true keeps
// autopaho reconnecting.
func (c *Client) onConnectionDown() bool {
	c.mu.Lock()
	conn := c.current
	c.current = nil
	close(c.connDown)
	c.connDown = make(chan struct{})
	c.mu.Unlock()
	err := errors.New("device: connection lost")
	if conn != nil {
		err = conn.cause()
	}
	c.s.log.Warn("connection lost; reconnecting", "reason", err)
	if c.s.onDown != nil {
		c.s.onDown(err)
	}
	return true
}

// onServerDisconnect logs the reason a broker gives when it ends a
// connection (for example 0x8E: another connection took over the session,
// or 0x87 once the device is revoked).
func (c *Client) onServerDisconnect(d *paho.Disconnect) {
	var reason string
	if d.Properties != nil {
		reason = d.Properties.ReasonString
	}
	c.s.log.Warn("broker sent DISCONNECT", "reason_code", fmt.Sprintf("0x%02X", d.ReasonCode), "reason", reason)
}

// onPublish dispatches an incoming message to every subscription it
// matches, using the same matcher the broker's policy uses. An envelope
// client opens a downlink once for all its SubscribeDown handlers, and
// keeps rekey messages to itself.
func (c *Client) onPublish(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	if c.env != nil && p.Topic == c.rekeyTopic {
		c.env.handleRekey(p.Topic, p.Payload)
		return true, nil
	}
	if c.ob.handle(p.Topic, p.Payload) {
		return true, nil
	}
	c.mu.Lock()
	var raw, sealed []func(Message)
	for _, s := range c.subs {
		if s.handler == nil || !policy.Matches(s.match, p.Topic) {
			continue
		}
		if s.down && c.env != nil {
			sealed = append(sealed, s.handler)
		} else {
			raw = append(raw, s.handler)
		}
	}
	c.mu.Unlock()
	if len(raw) == 0 && len(sealed) == 0 {
		c.s.log.Debug("message matches no subscription; dropped", "topic", p.Topic)
		return false, nil
	}
	m := Message{Topic: p.Topic, Payload: p.Payload, QoS: p.QoS, Retained: p.Retain}
	if ch, ok := strings.CutPrefix(p.Topic, c.downPrefix); ok {
		m.Channel = ch
	}
	for _, h := range raw {
		h(m)
	}
	if len(sealed) > 0 {
		pt, hdr, epoch, ok := c.env.openDownlink(p.Topic, m.Channel, p.Payload)
		if !ok {
			return true, nil
		}
		m.Payload, m.Sealed, m.Seq, m.Epoch = pt, true, hdr.Seq, epoch
		for _, h := range sealed {
			h(m)
		}
	}
	return true, nil
}

// pahoLogger forwards paho's and autopaho's error logs to slog at debug
// level: the SDK logs connection events itself, so these are detail.
type pahoLogger struct{ log *slog.Logger }

func (l pahoLogger) Println(v ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug(strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
	}
}

func (l pahoLogger) Printf(format string, v ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug(fmt.Sprintf(format, v...))
	}
}
