package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/envelope"
)

// ErrRenewRefused is wrapped by the error of a renewal Warden refused (an
// MQTT "refused" answer or EST 403): typically the device was disabled or
// revoked, or its certificate is no longer accepted.
var ErrRenewRefused = errors.New("Warden refused the renewal: is the device still active, and its current certificate valid and not revoked?")

// ErrCertificateExpired is wrapped by the error of a renewal attempted with
// an expired certificate. Warden accepts no expired certificate, so it
// cannot renew: the device must enroll again (Enroll with its enrollment
// secret, or a claim certificate).
var ErrCertificateExpired = errors.New("the device certificate has expired and cannot be renewed; enroll again (Enroll with the enrollment secret)")

// ErrClaimRefused is wrapped by Claim's error when Warden did not bind the
// device: the token is malformed, tampered with, from another server,
// expired or already used. Warden audits which; the app should ask for a
// fresh token.
var ErrClaimRefused = errors.New("Warden refused the claim token: it may be malformed, expired, already used or issued by another server; ask the app for a fresh one")

// DefaultRenewTimeout bounds each automatic renewal attempt (Config.AutoRenew):
// sending the CSR and waiting for Warden's answer.
const DefaultRenewTimeout = 30 * time.Second

// RenewOptions says how Client.Renew renews.
type RenewOptions struct {
	// NewKey is the P-256 key the new certificate is for. With nil the
	// current key is kept (and the CSR signed with it, so the current
	// Config.Certificate's key must be a crypto.Signer on P-256). A fresh
	// key limits what a leaked key is worth; the application must then
	// store it with the certificate (Config.OnCertificate). A sign-p256
	// envelope device cannot change its key this way.
	NewKey crypto.Signer

	// Via is RenewViaMQTT (the default) or RenewViaEST.
	Via string

	// ESTServer is Warden's EST base URL for RenewViaEST (default
	// Config.RenewESTServer).
	ESTServer string
}

// CertificateStats describes the client's certificate and what its
// renewals and rotation deliveries did.
type CertificateStats struct {
	// Serial and NotAfter are the current certificate's (zero without one).
	Serial   string
	NotAfter time.Time
	// Renewals counts certificates installed by Renew or AutoRenew.
	Renewals uint64
	// RenewalFailures counts failed automatic renewal attempts.
	RenewalFailures uint64
	// Rotations counts CA rotation deliveries installed.
	Rotations uint64
	// Dropped counts messages on private/<id>/cert/new the client did not
	// install: malformed, unsolicited without "rotation", answers to no
	// pending request, and rotation deliveries that failed the checks
	// (another key, another device, not chaining to the pinned root).
	Dropped uint64
}

// validateRenewal checks the certificate-lifecycle fields of cfg and sets
// them in s; s.cert is already set if the client has a certificate.
func validateRenewal(cfg Config, s *settings) error {
	s.roots = cfg.RootCAs
	s.onCertificate = cfg.OnCertificate
	s.autoRenew = cfg.AutoRenew
	s.renewKey = cfg.RenewKey
	switch cfg.RenewVia {
	case "", RenewViaMQTT:
		s.renewVia = RenewViaMQTT
	case RenewViaEST:
		s.renewVia = RenewViaEST
	default:
		return fmt.Errorf("Config.RenewVia %q is not %q or %q", cfg.RenewVia, RenewViaMQTT, RenewViaEST)
	}
	if cfg.RenewESTServer != "" {
		base, err := parseESTBase("Config.RenewESTServer", cfg.RenewESTServer)
		if err != nil {
			return err
		}
		s.renewEST = base
	}
	if s.renewVia == RenewViaEST && s.renewEST == "" {
		return errors.New("Config.RenewVia is \"est\", but Config.RenewESTServer is empty; give Warden's api address, e.g. https://warden.example.com:8443")
	}
	if cfg.Envelope != nil && cfg.Envelope.Suite == envelope.SignP256 && cfg.RenewKey != nil {
		return errors.New("Config.RenewKey is set, but a sign-p256 envelope device signs its messages with its certificate's key, which Warden knows: it must keep its key")
	}
	if !cfg.AutoRenew {
		return nil
	}
	cur := s.cert.Load()
	if cur == nil {
		return errors.New("Config.AutoRenew is set, but the client has no certificate to renew (Config.Certificate)")
	}
	if cfg.RootCAs == nil {
		return errors.New("Config.AutoRenew is set, but Config.RootCAs is nil: a renewed certificate is checked against the pinned root")
	}
	if cfg.RenewKey == nil {
		key, _ := cur.PrivateKey.(crypto.Signer) // deviceIdentity checked it
		if err := checkP256("Config.Certificate's key (kept by AutoRenew without Config.RenewKey)", key); err != nil {
			return err
		}
	}
	return nil
}

// onboarding is a client's certificate lifecycle and claims: renewals,
// rotation deliveries on private/<id>/cert/new, and claim results.
type onboarding struct {
	c           *Client
	log         *slog.Logger
	newTopic    string // private/<id>/cert/new; "" for a client without a certificate
	csrTopic    string
	claimTopic  string
	resultTopic string // private/<id>/claim/result

	renewMu sync.Mutex // one renewal or rotation install at a time

	mu         sync.Mutex
	certWait   map[string]chan enrollproto.CertResponse // by request ID
	claimWait  map[string]chan enrollproto.ClaimResult  // by request ID
	subs       []*subscription                          // the SDK's answer topics, restored on every connection
	rotation   *enrollproto.CertResponse                // a rotation delivery waiting to be checked
	rotating   bool                                     // rotations runs
	changed    chan struct{}                            // closed and replaced when the certificate changes
	stats      CertificateStats
	lastExpiry error // the last expiry logged by autoRenew, to log it once
}

// newOnboarding builds c's onboarding state. A client with a certificate
// keeps private/<id>/cert/new subscribed on every connection, so that
// Warden can deliver a rotated certificate at any time.
func newOnboarding(c *Client) *onboarding {
	id := c.s.id
	o := &onboarding{
		c:           c,
		log:         c.s.log.With(slog.String("component", "certificate")),
		csrTopic:    enrollproto.Topic(id, enrollproto.ChannelCSR),
		claimTopic:  enrollproto.Topic(id, enrollproto.ChannelClaim),
		resultTopic: enrollproto.Topic(id, enrollproto.ChannelClaimResult),
		certWait:    make(map[string]chan enrollproto.CertResponse),
		claimWait:   make(map[string]chan enrollproto.ClaimResult),
		changed:     make(chan struct{}),
	}
	if cur := c.s.cert.Load(); cur != nil {
		o.newTopic = enrollproto.Topic(id, enrollproto.ChannelNew)
		// Registered before the first connection, so that every
		// connection (re)subscribes it.
		o.subs = append(o.subs, &subscription{filter: o.newTopic, match: o.newTopic, qos: 1})
		o.setStatsLocked(cur)
	}
	return o
}

// subscriptions returns the SDK's answer topics for a new connection to
// subscribe. They are kept apart from Client.subs, which holds the
// application's subscriptions, and have no handler: handle takes their
// messages.
func (o *onboarding) subscriptions() []*subscription {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]*subscription(nil), o.subs...)
}

// start runs AutoRenew once Connect has succeeded.
func (o *onboarding) start() {
	if !o.c.s.autoRenew {
		return
	}
	o.c.wg.Add(1)
	go o.autoRenew()
}

// reserved reports whether filter is one of the SDK's own answer topics.
func (o *onboarding) reserved(filter string) bool {
	return (o.newTopic != "" && filter == o.newTopic) || filter == o.resultTopic
}

// handle takes the SDK's own messages on the receive goroutine; it reports
// whether topic was one.
func (o *onboarding) handle(topic string, payload []byte) bool {
	switch {
	case o.newTopic != "" && topic == o.newTopic:
		o.onCertNew(payload)
		return true
	case topic == o.resultTopic:
		o.onClaimResult(payload)
		return true
	}
	return false
}

func (o *onboarding) onCertNew(payload []byte) {
	r, err := enrollproto.ParseCertResponse(payload)
	if err != nil {
		o.drop("malformed certificate message", err)
		return
	}
	if r.RequestID != "" {
		o.mu.Lock()
		ch := o.certWait[r.RequestID]
		o.mu.Unlock()
		if ch == nil {
			o.drop("certificate answer to no pending request", fmt.Errorf("request %q", r.RequestID))
			return
		}
		select {
		case ch <- r:
		default: // already answered
		}
		return
	}
	if !r.Rotation {
		o.drop("unsolicited certificate message without rotation", fmt.Errorf("status %q", r.Status))
		return
	}
	if o.c.life.Err() != nil {
		return
	}
	// Checking and installing must not hold up the receive goroutine, and
	// the switch to the new certificate waits for the connection to go. One
	// goroutine takes deliveries one at a time; a delivery that arrives
	// while another waits replaces it, as Warden's latest is the one that
	// counts.
	o.mu.Lock()
	if o.rotation != nil {
		o.log.Debug("a newer rotation delivery replaces one not yet checked")
	}
	o.rotation = &r
	spawn := !o.rotating
	o.rotating = true
	o.mu.Unlock()
	if spawn {
		o.c.wg.Add(1)
		go o.rotations()
	}
}

// rotations installs rotation deliveries until none is pending.
func (o *onboarding) rotations() {
	defer o.c.wg.Done()
	for {
		o.mu.Lock()
		r := o.rotation
		o.rotation = nil
		if r == nil || o.c.life.Err() != nil {
			o.rotating = false
			o.mu.Unlock()
			return
		}
		o.mu.Unlock()
		o.installRotation(*r)
	}
}

// installRotation checks a rotation delivery and installs it. Only a
// certificate for the key the device already uses, naming this device and
// chaining to the pinned root is taken: a rotation never changes the key.
func (o *onboarding) installRotation(r enrollproto.CertResponse) {
	o.renewMu.Lock()
	defer o.renewMu.Unlock()
	cur := o.c.s.cert.Load()
	certs, err := r.Certificates()
	if err != nil {
		o.drop("rotation delivery does not parse", err)
		return
	}
	if bytes.Equal(certs[0].Raw, cur.Leaf.Raw) {
		o.log.Debug("rotation delivery of the certificate already in use; ignored", "serial", cur.Leaf.SerialNumber.Text(16))
		return
	}
	key, ok := cur.PrivateKey.(crypto.Signer)
	if !ok {
		o.drop("rotation delivery cannot be checked", fmt.Errorf("the current key is a %T, not a crypto.Signer", cur.PrivateKey))
		return
	}
	next, err := checkIssued(certs, key, o.c.s.id, o.c.s.roots, time.Now())
	if err != nil {
		o.drop("rotation delivery refused", err)
		return
	}
	o.install(next, true)
}

func (o *onboarding) drop(what string, err error) {
	o.mu.Lock()
	o.stats.Dropped++
	o.mu.Unlock()
	o.log.Warn(what+"; dropped", "reason", err)
}

func (o *onboarding) onClaimResult(payload []byte) {
	r, err := enrollproto.ParseClaimResult(payload)
	if err != nil {
		o.log.Warn("malformed claim result; dropped", "reason", err)
		return
	}
	o.mu.Lock()
	ch := o.claimWait[r.RequestID]
	o.mu.Unlock()
	if ch == nil {
		o.log.Debug("claim result for no pending claim; dropped", "request_id", r.RequestID)
		return
	}
	select {
	case ch <- r:
	default:
	}
}

// setStatsLocked records cur in the stats; o.mu is held or o is new.
func (o *onboarding) setStatsLocked(cur *tls.Certificate) {
	o.stats.Serial = cur.Leaf.SerialNumber.Text(16)
	o.stats.NotAfter = cur.Leaf.NotAfter
}

// install makes next the client's certificate: new TLS handshakes present
// it at once. The application is told (OnCertificate) before the client
// reconnects so that the broker sees the new certificate. o.renewMu is
// held.
func (o *onboarding) install(next tls.Certificate, rotation bool) {
	o.c.s.cert.Store(&next)
	o.mu.Lock()
	if rotation {
		o.stats.Rotations++
	} else {
		o.stats.Renewals++
	}
	o.setStatsLocked(&next)
	close(o.changed)
	o.changed = make(chan struct{})
	o.mu.Unlock()
	o.log.Info("new certificate installed", "rotation", rotation, "serial", next.Leaf.SerialNumber.Text(16),
		"not_after", next.Leaf.NotAfter.UTC().Format(time.RFC3339))
	if f := o.c.s.onCertificate; f != nil {
		f(next)
	}
	if o.c.s.tls != nil {
		o.c.switchConnection()
	}
}

// CertificateStats returns the current certificate's serial and expiry and
// what renewals and rotation deliveries did so far.
func (c *Client) CertificateStats() CertificateStats {
	c.ob.mu.Lock()
	defer c.ob.mu.Unlock()
	return c.ob.stats
}

// Certificate returns the certificate the client presents now: the one it
// was configured with, or the last one a renewal or rotation installed.
// It is the zero value for a client without a certificate.
func (c *Client) Certificate() tls.Certificate {
	if cur := c.s.cert.Load(); cur != nil {
		return *cur
	}
	return tls.Certificate{}
}

// Renew asks Warden for a new certificate for this device
// (docs/onboarding.md, "Renewal") and switches to it. The CSR is signed
// with opts.NewKey, or with the current key when NewKey is nil. Over MQTT
// it is sent on private/<id>/cert/csr (sealed for an envelope device that
// seals its uplinks) and answered on private/<id>/cert/new; over EST it is
// posted to simplereenroll with the current certificate as TLS client
// certificate.
//
// The answer is checked as Enroll checks it (the new key, this device, the
// pinned root). Then the certificate is installed: new TLS handshakes,
// including OTA's HTTPS requests, present it; Config.OnCertificate gets it
// to store it; and the client reconnects so that the broker sees it. The
// reconnection is graceful: it waits (up to ConnectTimeout) for QoS 1 and 2
// publishes in flight to be acknowledged and holds new ones until the old
// connection is gone, then sends them on the new one.
//
// An expired certificate cannot renew (ErrCertificateExpired): the device
// must enroll again. A refusal wraps ErrRenewRefused. Renew returns when ctx
// ends with no answer; a later answer is dropped. Do not call it from a
// subscription handler: the answer arrives on the goroutine that runs
// handlers.
func (c *Client) Renew(ctx context.Context, opts RenewOptions) (tls.Certificate, error) {
	cert, err := c.renew(ctx, opts)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("device: renew %s: %w", c.s.id, err)
	}
	return cert, nil
}

func (c *Client) renew(ctx context.Context, opts RenewOptions) (tls.Certificate, error) {
	if c.life.Err() != nil {
		return tls.Certificate{}, ErrClosed
	}
	cur := c.s.cert.Load()
	if cur == nil {
		return tls.Certificate{}, errors.New("the client has no certificate to renew; get a first one with Enroll")
	}
	if !time.Now().Before(cur.Leaf.NotAfter) {
		return tls.Certificate{}, fmt.Errorf("%w (it expired at %s)", ErrCertificateExpired, cur.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if c.s.roots == nil {
		return tls.Certificate{}, errors.New("Config.RootCAs is nil: a renewed certificate is checked against the pinned root")
	}
	key := opts.NewKey
	if key == nil {
		k, ok := cur.PrivateKey.(crypto.Signer)
		if !ok {
			return tls.Certificate{}, fmt.Errorf("the current key is a %T, which cannot sign a CSR; give RenewOptions.NewKey", cur.PrivateKey)
		}
		if err := checkP256("the current key", k); err != nil {
			return tls.Certificate{}, fmt.Errorf("%w; give a P-256 RenewOptions.NewKey", err)
		}
		key = k
	} else {
		if err := checkP256("RenewOptions.NewKey", key); err != nil {
			return tls.Certificate{}, err
		}
		if c.env != nil && c.env.cfg.suite == envelope.SignP256 && !sameKey(key, cur.Leaf.PublicKey) {
			return tls.Certificate{}, errors.New("RenewOptions.NewKey is a new key, but a sign-p256 envelope device signs its messages with its certificate's key, which Warden knows: it must keep its key")
		}
	}
	via := opts.Via
	switch via {
	case "":
		via = RenewViaMQTT
	case RenewViaMQTT, RenewViaEST:
	default:
		return tls.Certificate{}, fmt.Errorf("RenewOptions.Via %q is not %q or %q", opts.Via, RenewViaMQTT, RenewViaEST)
	}
	server := c.s.renewEST
	if via == RenewViaEST && opts.ESTServer != "" {
		base, err := parseESTBase("RenewOptions.ESTServer", opts.ESTServer)
		if err != nil {
			return tls.Certificate{}, err
		}
		server = base
	}
	if via == RenewViaEST && server == "" {
		return tls.Certificate{}, errors.New("renewing over EST needs Warden's api address: set RenewOptions.ESTServer or Config.RenewESTServer")
	}

	o := c.ob
	o.renewMu.Lock()
	defer o.renewMu.Unlock()
	cur = c.s.cert.Load() // a rotation may have installed another one meanwhile
	csr, err := newCSR(key, c.s.id)
	if err != nil {
		return tls.Certificate{}, err
	}
	var certs []*x509.Certificate
	if via == RenewViaMQTT {
		certs, err = c.renewMQTT(ctx, csr)
	} else {
		hc := estHTTPClient(c.s.roots, func() *tls.Certificate { return cur })
		defer hc.CloseIdleConnections()
		certs, err = estPost(ctx, hc, server+enrollproto.PathSimpleReenroll, csr, nil, ErrRenewRefused)
	}
	if err != nil {
		return tls.Certificate{}, err
	}
	next, err := checkIssued(certs, key, c.s.id, c.s.roots, time.Now())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("Warden's answer is not trusted: %w", err)
	}
	o.install(next, false)
	return next, nil
}

// sameKey reports whether key's public half is pub.
func sameKey(key crypto.Signer, pub crypto.PublicKey) bool {
	k, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(pub)
}

// renewMQTT sends a CSR on private/<id>/cert/csr and waits for the answer to
// it on private/<id>/cert/new.
func (c *Client) renewMQTT(ctx context.Context, csr []byte) ([]*x509.Certificate, error) {
	o := c.ob
	reqID, err := newRequestID()
	if err != nil {
		return nil, err
	}
	ch := make(chan enrollproto.CertResponse, 1)
	o.mu.Lock()
	o.certWait[reqID] = ch
	o.mu.Unlock()
	defer func() {
		o.mu.Lock()
		delete(o.certWait, reqID)
		o.mu.Unlock()
	}()
	// Subscribed on every connection already; subscribing again here makes
	// sure the subscription precedes the CSR on a connection that has just
	// come up, whose resubscription may not have been sent yet.
	if err := c.ensureSubscribed(ctx, o.newTopic); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(enrollproto.CSRRequest{RequestID: reqID, CSR: csr})
	if err != nil {
		return nil, fmt.Errorf("encode the CSR message: %w", err)
	}
	if err := c.publishOnboarding(ctx, o.csrTopic, payload); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return answerCertificates(r, ErrRenewRefused)
	case <-ctx.Done():
		return nil, fmt.Errorf("no answer from Warden on %s: %w", o.newTopic, ctx.Err())
	case <-c.life.Done():
		return nil, ErrClosed
	}
}

// Claim forwards an app's claim token to Warden on private/<id>/claim
// (sealed for an envelope device that seals its uplinks) and waits for the
// result on private/<id>/claim/result: nil when Warden bound the device to
// the token's user, an error wrapping ErrClaimRefused when it did not. The
// device cannot read the token; Warden decrypts and checks it. Like Renew,
// it must not be called from a subscription handler.
func (c *Client) Claim(ctx context.Context, token string) error {
	if err := c.claim(ctx, token); err != nil {
		return fmt.Errorf("device: claim %s: %w", c.s.id, err)
	}
	return nil
}

func (c *Client) claim(ctx context.Context, token string) error {
	if token == "" {
		return errors.New("the claim token is empty")
	}
	if err := validClaimToken("the claim token", token); err != nil {
		return err
	}
	if c.life.Err() != nil {
		return ErrClosed
	}
	o := c.ob
	o.mu.Lock()
	if !slices.ContainsFunc(o.subs, func(s *subscription) bool { return s.filter == o.resultTopic }) {
		// From now on every connection subscribes it, so that a result is
		// not lost to a reconnection while a claim waits.
		o.subs = append(o.subs, &subscription{filter: o.resultTopic, match: o.resultTopic, qos: 1})
	}
	o.mu.Unlock()
	reqID, err := newRequestID()
	if err != nil {
		return err
	}
	ch := make(chan enrollproto.ClaimResult, 1)
	o.mu.Lock()
	o.claimWait[reqID] = ch
	o.mu.Unlock()
	defer func() {
		o.mu.Lock()
		delete(o.claimWait, reqID)
		o.mu.Unlock()
	}()
	if err := c.ensureSubscribed(ctx, o.resultTopic); err != nil {
		return err
	}
	payload, err := json.Marshal(enrollproto.ClaimRequest{RequestID: reqID, Token: token})
	if err != nil {
		return fmt.Errorf("encode the claim message: %w", err)
	}
	if err := c.publishOnboarding(ctx, o.claimTopic, payload); err != nil {
		return err
	}
	select {
	case r := <-ch:
		if r.Status == enrollproto.StatusBound {
			return nil
		}
		return ErrClaimRefused
	case <-ctx.Done():
		return fmt.Errorf("no answer from Warden on %s: %w", o.resultTopic, ctx.Err())
	case <-c.life.Done():
		return ErrClosed
	}
}

// publishOnboarding publishes on one of the onboarding topics at QoS 1,
// sealed for it if the device seals its uplinks: Warden then opens every
// message of the device, these too.
func (c *Client) publishOnboarding(ctx context.Context, topic string, payload []byte) error {
	if c.env != nil && c.env.cfg.sealUp {
		if c.life.Err() != nil {
			return ErrClosed
		}
		sealed, err := c.env.seal(topic, payload)
		if err != nil {
			return fmt.Errorf("seal for %q: %w", topic, err)
		}
		payload = sealed
	}
	return c.Publish(ctx, topic, payload, 1, false)
}

// ensureSubscribed subscribes filter at QoS 1 on the current connection and
// waits for the SUBACK. The filter stays registered in c.subs by its owner;
// this only makes sure the broker has it now.
func (c *Client) ensureSubscribed(ctx context.Context, filter string) error {
	for {
		if err := c.awaitConnection(ctx); err != nil {
			return fmt.Errorf("subscribe to %q: %w", filter, err)
		}
		sa, err := c.cm.Subscribe(ctx, &paho.Subscribe{
			Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1, RetainHandling: 1}},
		})
		if sa != nil && len(sa.Reasons) == 1 {
			if code := sa.Reasons[0]; code >= 0x80 {
				var reason string
				if sa.Properties != nil {
					reason = sa.Properties.ReasonString
				}
				return &RefusedError{Op: "subscribe", Target: filter, ReasonCode: code, Reason: reason}
			}
			return nil
		}
		if errors.Is(err, autopaho.ConnectionDownError) || errors.Is(err, paho.ErrConnectionLost) {
			continue
		}
		if err == nil {
			err = errors.New("the SUBACK does not carry exactly one reason code")
		}
		return fmt.Errorf("subscribe to %q: %w", filter, err)
	}
}

// errCertificateSwitch is why the client ends a connection to present a new
// certificate; it shows in OnConnectionDown.
var errCertificateSwitch = errors.New("closed by the device to reconnect with its new certificate")

// switchConnection ends the current connection gracefully so that the
// client reconnects, presenting the certificate just installed. It holds
// new publishes, waits (up to ConnectTimeout) for those in flight to be
// acknowledged, sends DISCONNECT (normal disconnection: a session the
// broker keeps stays), closes the connection and releases the held
// publishes once the client has seen the connection go, so that they are
// sent on the next one instead of failing on the closed one.
//
// A handler that publishes while the switch is under way blocks the
// receive goroutine, which the old connection's shutdown waits for; the
// ConnectTimeout bounds that wait, after which its publish fails as on any
// lost connection.
func (c *Client) switchConnection() {
	drained := c.gate.hold()
	defer c.gate.release()
	t := time.NewTimer(c.s.connectTimeout)
	defer t.Stop()
	select {
	case <-drained:
	case <-t.C:
		c.s.log.Warn("publishes still in flight after the connect timeout; reconnecting with the new certificate anyway")
	case <-c.life.Done():
		return
	}
	c.mu.Lock()
	conn, down := c.current, c.connDown
	c.mu.Unlock()
	if conn == nil {
		return // the next connection presents the new certificate
	}
	c.s.log.Info("reconnecting to present the new certificate", "server", conn.server)
	// WriteTo takes the connection's write lock, so the DISCONNECT does
	// not interleave with a packet paho is writing.
	_, _ = (&packets.Disconnect{ReasonCode: packets.DisconnectNormalDisconnection}).WriteTo(conn)
	conn.record(errCertificateSwitch)
	_ = conn.Close()
	t2 := time.NewTimer(c.s.connectTimeout)
	defer t2.Stop()
	select {
	case <-down:
	case <-t2.C:
	case <-c.life.Done():
	}
}

// publishGate lets a certificate switch hold new publishes and wait for
// those in flight. The zero value is open.
type publishGate struct {
	mu       sync.Mutex
	inflight int
	held     chan struct{} // non-nil while held; closed on release
	drained  chan struct{} // non-nil while held; closed when inflight is 0
}

// enter waits while the gate is held, then counts a publish in flight.
func (g *publishGate) enter(ctx context.Context) error {
	g.mu.Lock()
	for g.held != nil {
		held := g.held
		g.mu.Unlock()
		select {
		case <-held:
		case <-ctx.Done():
			return ctx.Err()
		}
		g.mu.Lock()
	}
	g.inflight++
	g.mu.Unlock()
	return nil
}

// leave ends a publish counted by enter.
func (g *publishGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inflight--
	if g.inflight == 0 && g.drained != nil {
		close(g.drained)
		g.drained = nil
	}
}

// hold closes the gate to new publishes and returns a channel closed when
// none is in flight any more. Holds do not nest: the caller holds
// onboarding.renewMu.
func (g *publishGate) hold() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held = make(chan struct{})
	d := make(chan struct{})
	if g.inflight == 0 {
		close(d)
	} else {
		g.drained = d
	}
	return d
}

// release opens the gate again.
func (g *publishGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held != nil {
		close(g.held)
		g.held = nil
	}
	g.drained = nil
}

// renewalTime is when a certificate valid from notBefore to notAfter is
// renewed: after two thirds of its lifetime plus jitter, which the caller
// draws from [0, lifetime/10].
func renewalTime(notBefore, notAfter time.Time, jitter time.Duration) time.Time {
	life := notAfter.Sub(notBefore)
	return notBefore.Add(life/3*2 + jitter)
}

// renewalJitter draws the jitter of a certificate's renewal time, up to a
// tenth of its lifetime, so that a fleet issued at once does not renew at
// once.
func renewalJitter(notBefore, notAfter time.Time) time.Duration {
	tenth := notAfter.Sub(notBefore) / 10
	if tenth <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(tenth) + 1))
}

// autoRenew renews the certificate at its renewal time, retrying with
// backoff, until Close. A certificate installed meanwhile (by Renew or a
// rotation) restarts the schedule.
func (o *onboarding) autoRenew() {
	c := o.c
	defer c.wg.Done()
	var (
		jitterFor *x509.Certificate
		jitter    time.Duration
		failures  int
	)
	for {
		o.mu.Lock()
		changed := o.changed
		o.mu.Unlock()
		leaf := c.s.cert.Load().Leaf
		if leaf != jitterFor {
			jitterFor, jitter, failures = leaf, renewalJitter(leaf.NotBefore, leaf.NotAfter), 0
		}
		now := time.Now()
		var wait time.Duration
		switch {
		case !now.Before(leaf.NotAfter):
			o.logExpiry(leaf)
			select { // nothing to do until another certificate is installed
			case <-changed:
				continue
			case <-c.life.Done():
				return
			}
		case failures > 0:
			wait = Backoff(c.s.minBackoff, c.s.maxBackoff, failures-1, nil)
		default:
			wait = renewalTime(leaf.NotBefore, leaf.NotAfter, jitter).Sub(now)
			o.log.Debug("renewal scheduled", "serial", leaf.SerialNumber.Text(16), "in", wait.Round(time.Millisecond).String())
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-changed:
				t.Stop()
				continue
			case <-c.life.Done():
				t.Stop()
				return
			}
		}
		opts := RenewOptions{Via: c.s.renewVia, ESTServer: c.s.renewEST}
		var err error
		if c.s.renewKey != nil {
			if opts.NewKey, err = c.s.renewKey(); err != nil {
				err = fmt.Errorf("Config.RenewKey: %w", err)
			}
		}
		if err == nil {
			ctx, cancel := context.WithTimeout(c.life, DefaultRenewTimeout)
			_, err = c.Renew(ctx, opts)
			cancel()
		}
		if c.life.Err() != nil {
			return
		}
		if err == nil {
			continue // install closed changed; the loop schedules the next one
		}
		if errors.Is(err, ErrCertificateExpired) {
			continue // logged by the expiry case
		}
		failures++
		o.mu.Lock()
		o.stats.RenewalFailures++
		o.mu.Unlock()
		o.log.Warn("automatic renewal failed; retrying with backoff", "attempt", failures, "via", opts.Via,
			"not_after", leaf.NotAfter.UTC().Format(time.RFC3339), "reason", err)
	}
}

// logExpiry logs once per certificate that it has expired and cannot renew.
func (o *onboarding) logExpiry(leaf *x509.Certificate) {
	err := fmt.Errorf("%w (serial %s expired at %s)", ErrCertificateExpired, leaf.SerialNumber.Text(16), leaf.NotAfter.UTC().Format(time.RFC3339))
	o.mu.Lock()
	again := o.lastExpiry != nil && o.lastExpiry.Error() == err.Error()
	o.lastExpiry = err
	o.mu.Unlock()
	if !again {
		o.log.Error("automatic renewal stopped", "reason", err)
	}
}
