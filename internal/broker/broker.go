// Package broker runs Warden's embedded MQTT broker (mochi-mqtt v2): TLS
// listeners that require a client certificate, an authentication and ACL
// hook that asks the registry and the policy package, limits against floods
// and reconnect storms, persistence of sessions, and live disconnects when
// the registry revokes or disables a device.
//
// Identity is decided by the registry and topic rights by policy; the broker
// only calls them.
package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/policy"
)

// Listener kinds.
const (
	KindMQTTS = "mqtts" // MQTT over TLS
	KindWSS   = "wss"   // MQTT over secure WebSocket
	// KindMQTT is plain MQTT, for envelope devices only: they authenticate
	// with a single-use password and every publish must be an envelope.
	KindMQTT = "mqtt"
)

// ListenerConfig describes one network listener.
type ListenerConfig struct {
	Name       string // unique; appears in logs and metrics
	Kind       string // KindMQTTS or KindWSS
	Addr       string // host:port; port 0 picks a free port (see Broker.Addr)
	TLSProfile string // ProfileStrict (default) or ProfileCompat
	Path       string // WebSocket path (wss only), default "/mqtt"
}

// Limits bound what one client or one burst of clients can cost. Their
// defaults live in internal/config (docs/configuration.md).
type Limits struct {
	ConnectTimeout  time.Duration // TLS handshake + CONNECT must finish within this
	MaxPacketSize   uint32        // larger packets disconnect their sender
	ClientSendQueue int           // outbound packets queued per client before drops
	MaxInflight     int           // QoS>0 messages kept per session
	// ServiceSendQueue and ServiceMaxInflight replace the two above for
	// back-end services (0: the same as devices).
	ServiceSendQueue   int
	ServiceMaxInflight int
	MaxKeepAlive       time.Duration // clients asking for 0 (none) or more get this
	PublishRate        float64       // per device, messages/s (token bucket)
	PublishBurst       int
	ConnectionRate     float64 // per listener, new connections/s
	ConnectionBurst    int
	// ConnectionRatePerSource bounds one source address's (IPv4, IPv6
	// /64) new connections per listener, bursts of twice that; 0: none.
	ConnectionRatePerSource float64
	FlapMaxConnects         int           // more connects than this within FlapWindow ...
	FlapWindow              time.Duration //
	FlapBan                 time.Duration // ... refuses the client ID for this long
	MaxSessionExpiry        time.Duration // longest a disconnected session is kept
	// HandshakeConcurrency is how many TLS handshakes may compute at once
	// across all listeners (0: GOMAXPROCS); the rest wait, holding no CPU,
	// so that established sessions keep theirs in a reconnect storm.
	HandshakeConcurrency int
}

// Authenticator decides whether a TLS-verified leaf certificate names a
// principal allowed to connect now (registry.Registry implements it).
type Authenticator interface {
	Authenticate(ctx context.Context, leaf *x509.Certificate) (identity.Principal, error)
}

// ClaimAuthenticator admits a fleet claim certificate on a TLS listener
// for the one thing it may do: enroll the device whose ID is the
// connection's client ID (registry.Registry implements it). Refusals are
// *registry.EnrollError.
type ClaimAuthenticator interface {
	AuthenticateClaim(ctx context.Context, leaf *x509.Certificate, deviceID string) (identity.Principal, error)
}

// PasswordAuthenticator admits envelope devices on the plain listener:
// username = device ID, password = a single-use envelope (sealing.Sealing
// implements it). Refusals are *registry.AuthError.
type PasswordAuthenticator interface {
	AuthenticatePassword(ctx context.Context, username string, password []byte) (identity.Principal, error)
}

// Origin is who published a message and how it arrived.
type Origin struct {
	identity.Principal
	// Plain is true for the plain (non-TLS) listener, where every publish
	// must be an envelope.
	Plain bool
}

// Verdict is what a Router decides about an accepted publish.
type Verdict int

const (
	// Deliver lets the broker deliver the message to its subscribers as usual.
	Deliver Verdict = iota
	// Consume acknowledges the message but delivers it to nobody: the router
	// has handled it (e.g. a downlink forwarded to the device).
	Consume
	// Refuse acknowledges with an error (MQTT 5) or drops it (3.1.1).
	Refuse
)

// Router sees every publish the ACL allowed, in the publisher's read loop,
// before the broker acknowledges it (internal/relay implements it).
type Router interface {
	Route(ctx context.Context, from Origin, topic string, payload []byte, qos byte) (Verdict, string)
}

// Options configure a Broker.
type Options struct {
	Logger            *slog.Logger
	Audit             audit.Recorder
	Registerer        prometheus.Registerer // metrics go here; nil = not exported
	Authenticator     Authenticator
	Passwords         PasswordAuthenticator // required when a KindMQTT listener is configured
	Claims            ClaimAuthenticator    // nil: claim certificates cannot connect
	Policy            *policy.Policy
	ServerCertificate tls.Certificate
	ClientCAs         *x509.CertPool
	// Trust, if set, replaces ServerCertificate and ClientCAs on every
	// handshake with its current answers (CA rotation without a restart).
	Trust TrustSource
	// Events, if set, hears of refusals, denials, sessions and publishes
	// (the anomaly monitor).
	Events      events.Sink
	HybridPQ    bool
	Listeners   []ListenerConfig
	Limits      Limits
	StoragePath string // bbolt file for sessions, retained and inflight messages; "" = memory only
}

// Broker is the embedded MQTT broker.
type Broker struct {
	opts    Options
	log     *slog.Logger
	audit   audit.Recorder
	metrics *metrics
	srv     *mqtt.Server
	hook    *securityHook
	storage *sessionStore
	relayCl *mqtt.Client // inline client the router publishes through

	kinds map[string]string // listener name -> kind

	mu     sync.Mutex
	addrs  map[string]net.Addr
	closer []func() error
	done   chan struct{}

	// Set before Start, read on every publish, session and subscription:
	// atomics, so that connections never queue on mu for them.
	router   atomic.Pointer[Router]
	observer atomic.Pointer[Observer]
	quarant  atomic.Pointer[QuarantineChecker]

	admit *admission // handshake tokens, shared by every TLS listener
}

// New validates opts and builds a broker; Start binds the listeners.
func New(opts Options) (*Broker, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Audit == nil {
		opts.Audit = audit.Discard{Logger: opts.Logger}
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if opts.Events == nil {
		opts.Events = events.Discard{}
	}
	if opts.Authenticator == nil || opts.Policy == nil {
		return nil, errors.New("broker: an authenticator and a policy are required")
	}
	if len(opts.Listeners) == 0 {
		return nil, errors.New("broker: no listeners configured")
	}
	l := opts.Limits
	if l.ConnectTimeout <= 0 || l.MaxPacketSize == 0 || l.ClientSendQueue <= 0 || l.MaxInflight <= 0 ||
		l.MaxKeepAlive <= 0 || l.PublishRate <= 0 || l.FlapWindow <= 0 || l.MaxSessionExpiry <= 0 {
		return nil, fmt.Errorf("broker: every limit must be set and positive: %+v", l)
	}
	kinds := map[string]string{}
	for _, lc := range opts.Listeners {
		if lc.Kind == KindMQTT && opts.Passwords == nil {
			return nil, fmt.Errorf("broker: listener %s is plain MQTT but no password authenticator is configured", lc.Name)
		}
		kinds[lc.Name] = orDefault(lc.Kind, KindMQTTS)
	}
	b := &Broker{
		kinds:   kinds,
		opts:    opts,
		log:     opts.Logger,
		audit:   opts.Audit,
		metrics: newMetrics(opts.Registerer),
		addrs:   map[string]net.Addr{},
		done:    make(chan struct{}),
	}
	hsTokens := l.HandshakeConcurrency
	if hsTokens <= 0 {
		hsTokens = runtime.GOMAXPROCS(0)
	}
	b.admit = newAdmission(hsTokens, b.metrics.handshakesWaiting)

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = l.MaxPacketSize
	caps.MaximumClientWritesPending = int32(l.ClientSendQueue)
	caps.MaximumInflight = uint16(min(l.MaxInflight, math.MaxUint16))
	caps.ReceiveMaximum = uint16(min(l.MaxInflight, math.MaxUint16))
	caps.MaximumSessionExpiryInterval = uint32(min(l.MaxSessionExpiry/time.Second, math.MaxUint32))
	caps.TopicAliasMaximum = 64 // each alias costs memory per connection
	caps.MaximumMessageExpiryInterval = int64(l.MaxSessionExpiry / time.Second)
	caps.Compatibilities.ObscureNotAuthorized = false
	b.srv = mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		Logger:                   slog.New(quietMochi{opts.Logger.Handler()}).With("mochi", true),
		ClientNetWriteBufferSize: 2048,
		ClientNetReadBufferSize:  2048,
		SysTopicResendInterval:   60,
		ClientLimits:             b.clientLimits,
		ServeClient:              b.serveClient,
	})
	b.relayCl = b.srv.NewClient(nil, "warden", "warden-relay", true)
	b.relayCl.Properties.ProtocolVersion = 5

	b.hook = newSecurityHook(b)
	if err := b.srv.AddHook(b.hook, nil); err != nil {
		return nil, fmt.Errorf("broker: add security hook: %w", err)
	}
	if opts.StoragePath != "" {
		b.storage = &sessionStore{Hook: new(bolt.Hook)}
		err := b.srv.AddHook(b.storage, &bolt.Options{
			Path: opts.StoragePath,
			// No fsync per transaction: mochi writes one transaction per
			// session change, subscription and QoS 1 message in flight,
			// and an fsync each made a QoS 1 message cost ~1.4 ms of
			// server time (docs/performance.md). Committed pages are in
			// the page cache at once, so a killed server loses nothing,
			// the durability the replay journal and SQLite (WAL,
			// synchronous=NORMAL) have here; a power failure may lose the
			// last moments of session state, which devices rebuild when
			// they reconnect.
			Options: &bbolt.Options{Timeout: 2 * time.Second, NoSync: true, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType},
		})
		if err != nil {
			return nil, fmt.Errorf("broker: open session store %s: %w (is another warden serve using this data directory?)", opts.StoragePath, err)
		}
	}
	return b, nil
}

// SetRouter installs the component that relays accepted publishes. Call it
// before Start.
func (b *Broker) SetRouter(r Router) { b.router.Store(&r) }

func (b *Broker) currentRouter() Router { return load(&b.router) }

// load returns what p points to, or the zero value (a nil interface).
func load[T any](p *atomic.Pointer[T]) T {
	if v := p.Load(); v != nil {
		return *v
	}
	var zero T
	return zero
}

// Start binds every listener (failing fast on a busy port) and starts
// serving. It returns once the broker accepts connections.
func (b *Broker) Start(ctx context.Context) error {
	for _, lc := range b.opts.Listeners {
		if err := b.addListener(lc); err != nil {
			b.closeListeners()
			return err
		}
	}
	if err := b.srv.Serve(); err != nil {
		b.closeListeners()
		return fmt.Errorf("broker: start: %w", err)
	}
	go b.hook.janitor(b.done)
	return nil
}

func (b *Broker) addListener(lc ListenerConfig) error {
	var tlsCfg *tls.Config
	if lc.Kind != KindMQTT {
		var err error
		if tlsCfg, err = ServerTLSConfig(b.opts.ServerCertificate, b.opts.ClientCAs, lc.TLSProfile, b.opts.HybridPQ); err != nil {
			return fmt.Errorf("listener %s: %w", lc.Name, err)
		}
		if b.opts.Trust != nil {
			tlsCfg = FollowTrust(tlsCfg, b.opts.Trust)
		}
	}
	raw, err := net.Listen("tcp", lc.Addr)
	if err != nil {
		return fmt.Errorf("listener %s: listen on %s: %w", lc.Name, lc.Addr, err)
	}
	front := b.newFrontDoor(raw, lc.Name, tlsCfg)

	var mqttListener net.Listener = front
	switch lc.Kind {
	case KindMQTTS, "", KindMQTT:
	case KindWSS:
		path := lc.Path
		if path == "" {
			path = "/mqtt"
		}
		ws := newWSListener(front, path, b.log.With("listener", lc.Name))
		go ws.serve()
		mqttListener = ws
	default:
		_ = raw.Close()
		return fmt.Errorf("listener %s: unknown kind %q (use %q or %q)", lc.Name, lc.Kind, KindMQTTS, KindWSS)
	}
	if err := b.srv.AddListener(endCounter{Listener: listeners.NewNet(lc.Name, mqttListener), b: b}); err != nil {
		_ = mqttListener.Close()
		return fmt.Errorf("listener %s: %w", lc.Name, err)
	}
	b.mu.Lock()
	b.addrs[lc.Name] = raw.Addr()
	b.closer = append(b.closer, mqttListener.Close)
	b.mu.Unlock()
	if lc.Kind == KindMQTT {
		b.log.Warn("listening WITHOUT TLS for envelope devices only: payloads are protected by envelopes, but MQTT metadata (device IDs, topics, sizes, timing) is visible on the network", "listener", lc.Name, "addr", raw.Addr().String())
	} else {
		b.log.Info("listening", "listener", lc.Name, "kind", orDefault(lc.Kind, KindMQTTS), "addr", raw.Addr().String(), "tls_profile", orDefault(lc.TLSProfile, ProfileStrict))
	}
	return nil
}

func (b *Broker) closeListeners() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.closer {
		_ = c()
	}
	b.closer = nil
}

// Addr returns the bound address of the named listener (nil if unknown).
func (b *Broker) Addr(name string) net.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addrs[name]
}

// Close disconnects every client, stops the listeners and flushes the
// session store.
func (b *Broker) Close() error {
	select {
	case <-b.done:
		return nil
	default:
		close(b.done)
	}
	// mochi v2.7.9's Close can deadlock: Clients.GetByListener takes the
	// clients' read lock twice, and a client being removed meanwhile (a
	// writer waiting between the two) blocks it forever. So stop accepting,
	// disconnect every client and wait until they are gone before mochi
	// walks its listeners.
	b.closeListeners()
	for _, cl := range b.srv.Clients.GetAll() {
		if !cl.Closed() && !cl.Net.Inline {
			_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for atomic.LoadInt64(&b.srv.Info.ClientsConnected) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return b.srv.Close()
}

// Publish injects a message as Warden itself (the relay's path to devices
// and services). It bypasses the ACL: only Warden's own code calls it.
// props become MQTT 5 user properties (dropped for 3.1.1 receivers).
func (b *Broker) Publish(topic string, payload []byte, qos byte, props ...Property) error {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     payload,
	}
	if qos > 0 {
		pk.PacketID = 1 // required for validity; the inline client never waits for acks
	}
	if len(props) > 0 {
		pk.Properties.User = make([]packets.UserProperty, len(props))
		for i, p := range props {
			pk.Properties.User[i] = packets.UserProperty{Key: p.Key, Val: p.Value}
		}
	}
	return b.srv.InjectPacket(b.relayCl, pk)
}

// PublishRetained publishes a retained QoS 1 message as Warden itself: a
// subscriber gets it whenever it subscribes, also after a restart (the
// session store keeps retained messages). ClearRetained removes it.
func (b *Broker) PublishRetained(topic string, payload []byte) error {
	if len(payload) == 0 {
		return errors.New("broker: a retained message needs a payload (ClearRetained removes one)")
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		TopicName:   topic,
		Payload:     payload,
		PacketID:    1,
	}
	return b.srv.InjectPacket(b.relayCl, pk)
}

// ClearRetained removes the retained message of topic, if any, without
// delivering anything to subscribers (an empty retained publish would
// reach them as an empty message). It reports whether there was one.
func (b *Broker) ClearRetained(topic string) bool {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: topic}
	r := b.srv.Topics.RetainMessage(pk)
	if r == -1 && b.storage != nil {
		b.storage.OnRetainMessage(b.relayCl, pk, r)
	}
	atomic.StoreInt64(&b.srv.Info.Retained, int64(b.srv.Topics.Retained.Len()))
	return r == -1
}

// Observer hears of sessions and subscriptions (the CA rotation does, to
// notice devices switching certificates and to deliver theirs when they
// subscribe). Its methods run on the client's goroutine: they must not
// block.
type Observer interface {
	// SessionEstablished: p's session is up, authenticated with the client
	// certificate leaf (nil on the plain listener).
	SessionEstablished(p identity.Principal, leaf *x509.Certificate)
	// Subscribed: p was granted filters; retained messages follow.
	Subscribed(p identity.Principal, filters []string)
}

// SetObserver installs o (nil removes it).
func (b *Broker) SetObserver(o Observer) { b.observer.Store(&o) }

func (b *Broker) currentObserver() Observer { return load(&b.observer) }

// QuarantineChecker tells whether a device is quarantined (the anomaly
// monitor implements it); IsQuarantined must be cheap and must not block.
type QuarantineChecker interface {
	IsQuarantined(deviceID string) bool
}

// SetQuarantine installs q: a quarantined device's sessions get only the
// rights of policy.Quarantined (its OTA and certificate topics).
func (b *Broker) SetQuarantine(q QuarantineChecker) { b.quarant.Store(&q) }

func (b *Broker) quarantined(id string) bool {
	q := load(&b.quarant)
	return q != nil && q.IsQuarantined(id)
}

// ConnectionCertificate returns the client certificate of id's live
// connection, if it has one over TLS.
func (b *Broker) ConnectionCertificate(id string) (*x509.Certificate, bool) {
	cl, ok := b.srv.Clients.Get(id)
	if !ok || cl.Closed() {
		return nil, false
	}
	st := b.hook.state(id)
	if st == nil || st.client != cl || st.leaf == nil {
		return nil, false
	}
	return st.leaf, true
}

// CutWhere disconnects every live TLS connection whose principal and
// client certificate match reports true for (an issuing CA was revoked,
// say), like Cut without purge, and returns how many it cut.
func (b *Broker) CutWhere(match func(identity.Principal, *x509.Certificate) bool, reason string) int {
	var victims []identity.Principal
	b.hook.states.Range(func(_, v any) bool {
		st := v.(*clientState)
		if st.client == nil || st.leaf == nil || st.client.Closed() {
			return true
		}
		if match(st.principal, st.leaf) {
			victims = append(victims, st.principal)
		}
		return true
	})
	for _, p := range victims {
		b.Cut(p, reason, false)
	}
	return len(victims)
}

// Property is an MQTT 5 user property Warden adds to a message it publishes.
type Property struct{ Key, Value string }

// Cut disconnects a principal's live connection at once (on every listener:
// client IDs are unique across the broker) and refuses connects that were
// being authenticated when the cut happened. With purge, its persistent
// session (subscriptions and queued messages) is deleted too: used on
// revocation, which is final.
func (b *Broker) Cut(p identity.Principal, reason string, purge bool) {
	b.hook.markCut(p.ID)
	cl, ok := b.srv.Clients.Get(p.ID)
	if !ok {
		return
	}
	if st := b.hook.state(p.ID); st != nil && st.principal.Kind != p.Kind {
		return // a different principal owns this client ID; not ours to cut
	}
	if !cl.Closed() {
		_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
		b.metrics.forcedDisconnects.WithLabelValues(reason).Inc()
		b.audit.Record(context.Background(), audit.Event{
			Action: "mqtt.disconnect", Outcome: "done", Subject: p.String(), Reason: reason,
			Remote: cl.Net.Remote, Listener: cl.Net.Listener,
		})
	}
	if purge {
		b.srv.UnsubscribeClient(cl)
		cl.ClearInflights()
		if b.storage != nil {
			b.storage.OnClientExpired(cl)
		}
		b.srv.Clients.Delete(p.ID)
		b.hook.forget(p.ID)
	}
}

// Connected reports whether a principal has a live connection now.
func (b *Broker) Connected(id string) bool {
	cl, ok := b.srv.Clients.Get(id)
	return ok && !cl.Closed()
}

func (b *Broker) handshakeFailed(listener, remote string, err error) {
	reason := handshakeReason(err)
	b.metrics.handshakeFailures.WithLabelValues(listener, reason).Inc()
	if reason != "peer-closed" {
		b.opts.Events.Observe(events.Event{Kind: events.AuthFailed, At: time.Now(), Remote: remote, Listener: listener, Reason: "tls-" + reason})
	}
	// Always counted; audited unless the peer just went away, and sampled so
	// a scanner or a flood of bad handshakes cannot flood the audit log.
	if reason == "peer-closed" || !b.hook.sampleLog() {
		return
	}
	b.audit.Record(context.Background(), audit.Event{
		Action: "tls.handshake", Outcome: "denied", Reason: reason, Remote: remote, Listener: listener,
		Details: map[string]string{"error": err.Error()},
	})
}

// logAcceptError reports an accept failure the listener survives (out of
// file descriptors in a connection flood, most often), sampled like
// refusals.
func (b *Broker) logAcceptError(listener string, err error, retry time.Duration) {
	if !b.hook.sampleLog() {
		return
	}
	b.log.Warn("accepting connections failed; retrying", "listener", listener, "error", err, "retry_in", retry,
		"hint", "if the error is 'too many open files', raise the open-file limit (LimitNOFILE) or lower limits.connection_rate")
}

// logRefusal logs and audits a connection refused at accept, sampled: a
// flood is refused thousands of times a second, and its audit lines must
// not grow with it (the metric counts every one).
func (b *Broker) logRefusal(listener, remote, reason string) {
	if !b.hook.sampleLog() {
		return
	}
	b.log.Warn("connection refused", "listener", listener, "remote", remote, "reason", reason)
	b.audit.Record(context.Background(), audit.Event{
		Action: "mqtt.connect", Outcome: "denied", Reason: reason, Remote: remote, Listener: listener,
	})
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// clientLimits gives back-end services their own, deeper, outbound queue
// and in-flight limit (third_party/mochi, patch 2): a reader of fleet/#
// takes a whole fleet's messages, a device only its own. Called once per
// connection, after authentication.
func (b *Broker) clientLimits(cl *mqtt.Client) (int32, uint16) {
	if cl.Net.Inline || b.hook == nil {
		return 0, 0
	}
	st := b.hook.stateFor(cl)
	if st == nil || st.principal.Kind != identity.KindService {
		return 0, 0
	}
	l := b.opts.Limits
	return int32(max(l.ServiceSendQueue, 0)), uint16(min(max(l.ServiceMaxInflight, 0), math.MaxUint16))
}
