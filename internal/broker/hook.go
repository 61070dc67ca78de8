package broker

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/time/rate"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/policy"
	"github.com/warden-iot/warden/internal/registry"
)

// clientState is what Warden knows about one client ID's session: who it
// is (from its certificate), its compiled topic rights and its limits.
type clientState struct {
	principal identity.Principal
	rights    *policy.Rights
	client    *mqtt.Client      // the connection that authenticated; nil for restored sessions
	leaf      *x509.Certificate // the client certificate it authenticated with; nil on the plain listener
	limiter   *rate.Limiter
	denyLog   *rate.Limiter // bounds audit lines per client for repeated denials
	started   time.Time     // when authentication of this connection began
	plain     bool          // connected through the plain listener
	cut       atomic.Bool
	counted   atomic.Bool // counted in the connections gauge
}

// securityHook is Warden's only authentication/ACL hook. mochi ORs auth and
// ACL results across hooks, so no other hook that answers those may ever be
// registered beside it.
type securityHook struct {
	mqtt.HookBase
	b *Broker

	states sync.Map // client ID -> *clientState

	mu    sync.Mutex
	flaps map[string]*flapRecord
	cuts  map[string]time.Time

	logSample *rate.Limiter // global bound on noisy pre-auth log lines

	// reachedConnect holds the connections (net.Conn) whose CONNECT got
	// to OnConnect, until mochi is done with them: endCounter counts the
	// others (defense.go).
	reachedConnect sync.Map
}

type flapRecord struct {
	recent      []time.Time
	bannedUntil time.Time
	audited     time.Time // when a refusal of the current ban was last audited
}

// flapAuditEvery is how often the refusals of one banned client ID are
// audited: the first of each ban always, then one a minute, so that a
// device reconnecting in a loop (bounded only by limits.connection_rate)
// cannot fill the audit log. Every refusal is still counted.
const flapAuditEvery = time.Minute

func newSecurityHook(b *Broker) *securityHook {
	return &securityHook{
		b:         b,
		flaps:     map[string]*flapRecord{},
		cuts:      map[string]time.Time{},
		logSample: rate.NewLimiter(20, 100),
	}
}

func (h *securityHook) ID() string { return "warden-security" }

func (h *securityHook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSessionEstablished,
		mqtt.OnDisconnect, mqtt.OnPublish, mqtt.OnPacketSent, mqtt.OnPublishDropped, mqtt.OnWill,
		mqtt.OnWillSent, mqtt.OnClientExpired, mqtt.OnPacketRead, mqtt.OnSubscribed,
		mqtt.OnSubscribe, mqtt.OnAuthPacket,
	}, []byte{b})
}

func (h *securityHook) sampleLog() bool { return h.logSample.Allow() }

// event starts an event about p: a device's (or claim connection's) ID
// goes in Device, a service's name in Service.
func event(kind events.Kind, p identity.Principal, cl *mqtt.Client) events.Event {
	e := events.Event{Kind: kind, At: time.Now(), Remote: cl.Net.Remote, Listener: cl.Net.Listener}
	if p.Kind == identity.KindService {
		e.Service = p.ID
	} else {
		e.Device = p.ID
	}
	return e
}

func (h *securityHook) state(id string) *clientState {
	v, ok := h.states.Load(id)
	if !ok {
		return nil
	}
	return v.(*clientState)
}

func (h *securityHook) forget(id string) { h.states.Delete(id) }

// stateFor finds the state of cl. Sessions restored from disk after a
// restart have no live state; their principal is recovered from the
// username field, which Warden overwrites at authentication and the
// session store keeps.
func (h *securityHook) stateFor(cl *mqtt.Client) *clientState {
	if st := h.state(cl.ID); st != nil {
		return st
	}
	p, ok := parsePrincipalTag(cl.Properties.Username)
	if !ok || p.ID != cl.ID {
		return nil
	}
	st := h.newState(p, nil)
	actual, _ := h.states.LoadOrStore(cl.ID, st)
	return actual.(*clientState)
}

func (h *securityHook) newState(p identity.Principal, cl *mqtt.Client) *clientState {
	lim := h.b.opts.Limits
	rights := h.b.opts.Policy.Compile(p)
	if p.Kind == identity.KindDevice && h.b.quarantined(p.ID) {
		rights = policy.Quarantined(p.ID)
	}
	return &clientState{
		principal: p,
		rights:    rights,
		client:    cl,
		limiter:   rate.NewLimiter(rate.Limit(lim.PublishRate), max(lim.PublishBurst, 1)),
		denyLog:   rate.NewLimiter(1, 5),
		started:   time.Now(),
	}
}

// principalTag is stored as the MQTT username of an authenticated session.
func principalTag(p identity.Principal) []byte {
	switch p.Kind {
	case identity.KindService:
		return []byte("warden:service:" + p.ID + ":" + p.Role)
	case identity.KindClaim:
		return []byte("warden:claim:" + p.ID + ":" + p.Role)
	}
	return []byte("warden:device:" + p.ID)
}

func parsePrincipalTag(b []byte) (identity.Principal, bool) {
	s, ok := strings.CutPrefix(string(b), "warden:")
	if !ok {
		return identity.Principal{}, false
	}
	kind, rest, _ := strings.Cut(s, ":")
	switch identity.Kind(kind) {
	case identity.KindDevice:
		if identity.ValidateDeviceID(rest) != nil {
			return identity.Principal{}, false
		}
		return identity.Principal{Kind: identity.KindDevice, ID: rest}, true
	case identity.KindService:
		name, role, _ := strings.Cut(rest, ":")
		if identity.ValidateServiceName(name) != nil || identity.ValidateRole(role) != nil {
			return identity.Principal{}, false
		}
		return identity.Principal{Kind: identity.KindService, ID: name, Role: role}, true
	case identity.KindClaim:
		id, name, _ := strings.Cut(rest, ":")
		if identity.ValidateDeviceID(id) != nil || identity.ValidateClaimName(name) != nil {
			return identity.Principal{}, false
		}
		return identity.Principal{Kind: identity.KindClaim, ID: id, Role: name}, true
	}
	return identity.Principal{}, false
}

// OnConnect authenticates. It runs after CONNECT is parsed and before mochi
// looks at the session; refusing here lets Warden answer "not authorized"
// itself (mochi's own refusal says "bad username or password").
func (h *securityHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	started := time.Now()
	h.reachedConnect.Store(cl.Net.Conn, struct{}{})
	p, reason := h.authenticate(cl, pk)
	if reason != "" {
		return h.refuse(cl, p, reason)
	}

	if pk.Connect.ClientIdentifier == "" {
		// An empty client ID is given the certificate's identity, so the
		// session is still bound to it.
		cl.ID = p.ID
		cl.Properties.Props.AssignedClientID = p.ID
	}

	if banned, audit := h.flapping(p.ID); banned {
		h.b.metrics.connectionsRefused.WithLabelValues(cl.Net.Listener, "flapping").Inc()
		return h.refuseAudited(cl, p, "flapping", audit)
	}

	st := h.newState(p, cl)
	st.started = started
	st.plain = h.b.kinds[cl.Net.Listener] == KindMQTT
	if ts, ok := cl.Net.Conn.(tlsStater); ok && !st.plain {
		if certs := ts.ConnectionState().PeerCertificates; len(certs) > 0 {
			st.leaf = certs[0]
		}
	}
	if pk.Connect.WillFlag && (tooDeep(pk.Connect.WillTopic) || !st.rights.CanPublish(pk.Connect.WillTopic)) {
		h.b.metrics.aclDenials.WithLabelValues("will").Inc()
		return h.refuse(cl, p, "will-topic-denied")
	}

	// A client that asks for no keep-alive (or a very long one) would let a
	// dead connection hold its resources forever.
	maxKA := uint16(min(h.b.opts.Limits.MaxKeepAlive/time.Second, 65535))
	if cl.State.Keepalive == 0 || cl.State.Keepalive > maxKA {
		cl.State.Keepalive = maxKA
		cl.State.ServerKeepalive = true
	}
	cl.Properties.Username = principalTag(p)
	h.states.Store(cl.ID, st)
	return nil
}

// authenticate returns the principal and "" or, on refusal, a reason.
func (h *securityHook) authenticate(cl *mqtt.Client, pk packets.Packet) (identity.Principal, string) {
	if h.b.kinds[cl.Net.Listener] == KindMQTT {
		return h.authenticatePassword(cl, pk)
	}
	ts, ok := cl.Net.Conn.(tlsStater)
	if !ok {
		return identity.Principal{}, "no-tls"
	}
	cs := ts.ConnectionState()
	if len(cs.PeerCertificates) == 0 || len(cs.VerifiedChains) == 0 {
		return identity.Principal{}, "no-client-certificate"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := h.b.opts.Authenticator.Authenticate(ctx, cs.PeerCertificates[0])
	if err != nil {
		var ae *registry.AuthError
		if errors.As(err, &ae) && ae.Reason == registry.ReasonClaimOnly && h.b.opts.Claims != nil {
			return h.authenticateClaim(ctx, cl, pk)
		}
		if errors.As(err, &ae) {
			return ae.Principal, ae.Reason
		}
		h.b.log.Error("authentication failed: registry error", "client", cl.ID, "error", err)
		return identity.Principal{}, "registry-error"
	}
	if pk.Connect.ClientIdentifier != "" && pk.Connect.ClientIdentifier != p.ID {
		return p, "client-id-mismatch"
	}
	return p, ""
}

// authenticateClaim admits a claim certificate whose client ID is a device
// ID on its allow-list; the session is bound to that ID.
func (h *securityHook) authenticateClaim(ctx context.Context, cl *mqtt.Client, pk packets.Packet) (identity.Principal, string) {
	ts := cl.Net.Conn.(tlsStater)
	leaf := ts.ConnectionState().PeerCertificates[0]
	p, err := h.b.opts.Claims.AuthenticateClaim(ctx, leaf, pk.Connect.ClientIdentifier)
	if err != nil {
		var ee *registry.EnrollError
		if errors.As(err, &ee) {
			return identity.Principal{Kind: identity.KindClaim, ID: truncate(pk.Connect.ClientIdentifier, 64)}, "claim-" + ee.Reason
		}
		h.b.log.Error("claim authentication failed: registry error", "client", cl.ID, "error", err)
		return identity.Principal{}, "registry-error"
	}
	return p, ""
}

// authenticatePassword admits an envelope device on the plain listener.
func (h *securityHook) authenticatePassword(cl *mqtt.Client, pk packets.Packet) (identity.Principal, string) {
	if !pk.Connect.UsernameFlag || !pk.Connect.PasswordFlag {
		return identity.Principal{}, "no-password"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := h.b.opts.Passwords.AuthenticatePassword(ctx, string(pk.Connect.Username), pk.Connect.Password)
	if err != nil {
		var ae *registry.AuthError
		if errors.As(err, &ae) {
			return ae.Principal, ae.Reason
		}
		h.b.log.Error("password authentication failed: registry error", "client", cl.ID, "error", err)
		return identity.Principal{}, "registry-error"
	}
	if pk.Connect.ClientIdentifier != "" && pk.Connect.ClientIdentifier != p.ID {
		return p, "client-id-mismatch"
	}
	return p, ""
}

func (h *securityHook) refuse(cl *mqtt.Client, p identity.Principal, reason string) error {
	return h.refuseAudited(cl, p, reason, true)
}

// refuseAudited is refuse with the audit line optional: counted and
// reported to the monitor always, audited only when audited is true.
func (h *securityHook) refuseAudited(cl *mqtt.Client, p identity.Principal, reason string, audited bool) error {
	h.b.metrics.authFailures.WithLabelValues(reason).Inc()
	ev := event(events.AuthFailed, p, cl)
	ev.Reason = reason
	h.b.opts.Events.Observe(ev)
	actor := ""
	if p.ID != "" {
		actor = p.String()
	}
	if audited {
		h.b.audit.Record(context.Background(), audit.Event{
			Action: "mqtt.connect", Outcome: "denied", Actor: actor, Reason: reason,
			Remote: cl.Net.Remote, Listener: cl.Net.Listener,
			Details: map[string]string{"client_id": truncate(cl.ID, 128)},
		})
	}
	// The peer learns only "not authorized", never which check failed.
	code := packets.ErrNotAuthorized
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.Err3NotAuthorized // mochi does not map 0x87 to 3.1.1's 0x05
	}
	_ = h.b.srv.SendConnack(cl, code, false, nil)
	return packets.ErrNotAuthorized
}

// OnConnectAuthenticate admits exactly the connection OnConnect approved,
// unless the principal was cut while it was being authenticated.
func (h *securityHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	st := h.state(cl.ID)
	if st == nil || st.client != cl {
		return false
	}
	h.mu.Lock()
	cutAt, wasCut := h.cuts[cl.ID]
	h.mu.Unlock()
	if wasCut && !cutAt.Before(st.started) {
		h.b.metrics.authFailures.WithLabelValues("cut-during-connect").Inc()
		return false
	}
	return true
}

func (h *securityHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	st := h.state(cl.ID)
	if st == nil || st.client != cl {
		return
	}
	st.counted.Store(true)
	kind := string(st.principal.Kind)
	h.b.metrics.connections.WithLabelValues(cl.Net.Listener, kind).Inc()
	h.b.metrics.connects.WithLabelValues(cl.Net.Listener, kind).Inc()
	h.b.log.Info("connected", string(st.principal.Kind), st.principal.ID, "listener", cl.Net.Listener, "remote", cl.Net.Remote)
	h.b.opts.Events.Observe(event(events.Connected, st.principal, cl))
	if o := h.b.currentObserver(); o != nil {
		o.SessionEstablished(st.principal, st.leaf)
	}
}

func (h *securityHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	st := h.state(cl.ID)
	if st == nil || st.client != cl {
		return
	}
	if st.counted.CompareAndSwap(true, false) {
		h.b.metrics.connections.WithLabelValues(cl.Net.Listener, string(st.principal.Kind)).Dec()
	}
	h.b.countDisconnect(cl, st.principal, err)
	h.b.log.Info("disconnected", string(st.principal.Kind), st.principal.ID, "listener", cl.Net.Listener, "cause", errString(err))
	ev := event(events.Disconnected, st.principal, cl)
	ev.Reason = errString(err)
	h.b.opts.Events.Observe(ev)
	if expire && !cl.IsTakenOver() {
		h.states.CompareAndDelete(cl.ID, st)
	}
}

func (h *securityHook) OnClientExpired(cl *mqtt.Client) { h.states.Delete(cl.ID) }

// OnSubscribed tells the observer which filters a client was granted.
func (h *securityHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	o := h.b.currentObserver()
	if o == nil || cl.Net.Inline {
		return
	}
	st := h.state(cl.ID)
	if st == nil || st.client != cl {
		return
	}
	var granted []string
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < packets.ErrUnspecifiedError.Code {
			granted = append(granted, f.Filter)
		}
	}
	if len(granted) > 0 {
		o.Subscribed(st.principal, granted)
	}
}

// OnACLCheck is called for every inbound publish (write), every
// subscription filter and every delivery (read).
func (h *securityHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	st := h.stateFor(cl)
	if st == nil || st.cut.Load() {
		return false
	}
	var ok bool
	deep := tooDeep(topic) // refused before mochi's topic tree sees it
	switch {
	case deep:
	case write:
		ok = st.rights.CanPublish(topic)
	default:
		// A concrete topic is a filter that matches only itself, so one
		// subset test serves subscriptions and deliveries alike.
		ok = st.rights.CanSubscribe(topic)
	}
	if !ok {
		action := "read"
		if write {
			action = "publish"
		}
		h.b.metrics.aclDenials.WithLabelValues(action).Inc()
		ev := event(events.ACLDenied, st.principal, cl)
		ev.Topic, ev.Reason = topic, action
		h.b.opts.Events.Observe(ev)
		if st.denyLog.Allow() {
			reason := "acl"
			if deep {
				reason = "topic-too-deep"
			}
			h.b.audit.Record(context.Background(), audit.Event{
				Action: "mqtt." + action, Outcome: "denied", Actor: st.principal.String(), Reason: reason,
				Remote: cl.Net.Remote, Listener: cl.Net.Listener, Details: map[string]string{"topic": truncate(topic, 256)},
			})
		}
	}
	return ok
}

// OnPacketRead sees publishes that mochi drops silently before any ACL
// check ($SYS topics, wildcards in a topic name), so that they are counted
// and audited like every other denial.
func (h *securityHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline || pk.TopicName == "" || mqtt.IsValidFilter(pk.TopicName, true) {
		return pk, nil
	}
	h.b.metrics.aclDenials.WithLabelValues("publish").Inc()
	st := h.stateFor(cl)
	if st != nil {
		ev := event(events.ACLDenied, st.principal, cl)
		ev.Topic, ev.Reason = pk.TopicName, "publish"
		h.b.opts.Events.Observe(ev)
	}
	if st != nil && st.denyLog.Allow() {
		h.b.audit.Record(context.Background(), audit.Event{
			Action: "mqtt.publish", Outcome: "denied", Actor: st.principal.String(), Reason: "acl",
			Remote: cl.Net.Remote, Listener: cl.Net.Listener, Details: map[string]string{"topic": truncate(pk.TopicName, 256)},
		})
	}
	return pk, nil
}

func (h *securityHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	st := h.stateFor(cl)
	if st == nil || st.cut.Load() {
		return pk, packets.ErrRejectPacket
	}
	v5 := cl.Properties.ProtocolVersion == 5
	if st.principal.Kind != identity.KindService && !st.limiter.Allow() {
		h.b.metrics.dropped.WithLabelValues("rate").Inc()
		if st.denyLog.Allow() {
			h.b.log.Warn("publish rate exceeded; dropping", "device", st.principal.ID, "limit_per_s", h.b.opts.Limits.PublishRate)
		}
		if v5 && pk.FixedHeader.Qos > 0 {
			return pk, packets.ErrQuotaExceeded
		}
		return pk, packets.ErrRejectPacket
	}
	h.b.metrics.messagesIn.WithLabelValues(string(st.principal.Kind)).Inc()
	if st.principal.Kind == identity.KindDevice {
		h.b.opts.Events.Observe(events.Event{Kind: events.Published, At: time.Now(), Device: st.principal.ID,
			Listener: cl.Net.Listener, Topic: pk.TopicName, Size: len(pk.Payload)})
	}

	r := h.b.currentRouter()
	if r == nil {
		return pk, nil
	}
	verdict, reason := r.Route(context.Background(), Origin{Principal: st.principal, Plain: st.plain}, pk.TopicName, pk.Payload, pk.FixedHeader.Qos)
	switch verdict {
	case Consume:
		return pk, packets.CodeSuccessIgnore
	case Refuse:
		h.b.metrics.dropped.WithLabelValues(reason).Inc()
		if v5 && pk.FixedHeader.Qos > 0 {
			if st.principal.Kind != identity.KindService {
				// A device learns only that its publish was refused, never
				// which check failed (a forger must not learn from it).
				return pk, packets.ErrUnspecifiedError
			}
			return pk, packets.Code{Code: packets.ErrTopicNameInvalid.Code, Reason: reason}
		}
		// Any other error would make mochi deliver the original packet.
		return pk, packets.CodeSuccessIgnore
	}
	return pk, nil
}

func (h *securityHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, b []byte) {
	if pk.FixedHeader.Type == packets.Publish {
		h.b.metrics.messagesOut.Inc()
	}
}

func (h *securityHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.b.metrics.dropped.WithLabelValues("queue-full").Inc()
}

// OnWill re-checks the will topic at the moment it would be sent. It was
// checked at CONNECT already; if the check fails now, the will is diverted
// to a topic no client may subscribe to (mochi ignores errors from this hook).
func (h *securityHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	st := h.stateFor(cl)
	if st == nil || st.cut.Load() || !st.rights.CanPublish(will.TopicName) {
		h.b.metrics.aclDenials.WithLabelValues("will").Inc()
		will.TopicName = "$warden/void"
		will.Retain = false
		will.Payload = nil
	}
	return will, nil
}

// OnWillSent relays a device's will like any other uplink, so services see
// it go offline.
func (h *securityHook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	st := h.stateFor(cl)
	r := h.b.currentRouter()
	if st == nil || r == nil || pk.TopicName == "$warden/void" {
		return
	}
	// An MQTT 5 will may be sent long after the disconnect OnWill
	// checked (Will Delay Interval): a device disabled or revoked in the
	// meantime must not speak through it.
	if st.cut.Load() || !st.rights.CanPublish(pk.TopicName) {
		h.b.metrics.aclDenials.WithLabelValues("will").Inc()
		h.b.log.Warn("delayed will of a device cut since it disconnected; not relayed", "device", st.principal.ID, "topic", pk.TopicName)
		return
	}
	r.Route(context.Background(), Origin{Principal: st.principal, Plain: st.plain}, pk.TopicName, pk.Payload, pk.FixedHeader.Qos)
}

// flapping records a connect attempt by id and reports whether id is
// banned, and if so whether this refusal is one to audit.
func (h *securityHook) flapping(id string) (banned, audit bool) {
	lim := h.b.opts.Limits
	if lim.FlapMaxConnects <= 0 {
		return false, false
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.flaps[id]
	if f == nil {
		f = &flapRecord{}
		h.flaps[id] = f
	}
	if now.Before(f.bannedUntil) {
		audit = now.Sub(f.audited) >= flapAuditEvery
		if audit {
			f.audited = now
		}
		return true, audit
	}
	cut := now.Add(-lim.FlapWindow)
	kept := f.recent[:0]
	for _, t := range f.recent {
		if t.After(cut) {
			kept = append(kept, t)
		}
	}
	f.recent = append(kept, now)
	if len(f.recent) > lim.FlapMaxConnects {
		f.bannedUntil = now.Add(lim.FlapBan)
		f.recent = f.recent[:0]
		f.audited = now
		h.b.log.Warn("client is flapping; refusing it", "client", id, "connects", lim.FlapMaxConnects+1, "window", lim.FlapWindow.String(), "ban", lim.FlapBan.String())
		return true, true
	}
	return false, false
}

func (h *securityHook) markCut(id string) {
	if st := h.state(id); st != nil {
		st.cut.Store(true)
	}
	h.mu.Lock()
	h.cuts[id] = time.Now()
	h.mu.Unlock()
}

// janitor drops bookkeeping that can no longer matter, so the maps stay
// proportional to the clients active in the last few minutes.
func (h *securityHook) janitor(done <-chan struct{}) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			lim := h.b.opts.Limits
			h.mu.Lock()
			for id, f := range h.flaps {
				if now.After(f.bannedUntil) && (len(f.recent) == 0 || now.Sub(f.recent[len(f.recent)-1]) > lim.FlapWindow) {
					delete(h.flaps, id)
				}
			}
			for id, at := range h.cuts {
				if now.Sub(at) > time.Minute {
					delete(h.cuts, id)
				}
			}
			h.mu.Unlock()
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func errString(err error) string {
	if err == nil {
		return "client disconnect"
	}
	return err.Error()
}
