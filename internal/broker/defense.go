package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/identity"
)

// This file holds the broker's answers to hostile MQTT (the adversarial
// suite, test/adversarial/flood): connections that fail before CONNECT,
// connections cut for malformed packets, topics too deep for mochi's topic
// tree and devices that subscribe without end. Each is refused, counted
// and (sampled) audited, so that an attack shows up in the metrics and the
// audit log without flooding either.

// maxTopicLevels bounds the levels of a topic name or filter. mochi's topic
// tree finds the n-th level by scanning from the start (isolateParticle),
// so storing a topic of L levels (a subscription, a retained message) costs
// O(L^2) time and a tree node per level: one 64 KiB SUBSCRIBE of 30,000
// levels took 6 s of CPU and 19 MB of memory, and a retained 10,000-level
// publish 0.3 s. MQTT sets no limit; 128 is EMQX's default and leaves
// Warden's own topics (five levels or so) ample room.
const maxTopicLevels = 128

// maxDeviceSubscriptions bounds the subscriptions one device (or claim
// connection) may hold. Each costs the broker about 1.5 KB, and one 64 KiB
// SUBSCRIBE carries 2,000 of them: without a bound a single device could
// add hundreds of megabytes a second. Warden's devices need a handful
// (their down, OTA and certificate topics). Services, trusted back ends
// that may subscribe per device, are not bounded.
const maxDeviceSubscriptions = 1000

// tooDeep reports whether topic has more than maxTopicLevels levels.
func tooDeep(topic string) bool {
	return strings.Count(topic, "/") >= maxTopicLevels
}

// endCounter wraps an MQTT listener to learn how each connection ended
// before CONNECT reached authentication. mochi reports those failures (a
// silent client cut at the connect deadline, garbage or a malformed
// CONNECT, a packet other than CONNECT first) only as an error from its
// establish callback, which it logs and forgets; a flood of them would be
// invisible.
type endCounter struct {
	listeners.Listener
	b *Broker
}

// Serve serves the wrapped listener with an establish callback that
// accounts for connections that never reached OnConnect, and that
// contains a panic during a connection's set-up (CONNECT, authentication,
// CONNACK) to that connection: a decoder bug must cost the attacker its
// connection, not cost the fleet its broker. The established session's
// packets are read on another goroutine, which Broker.serveClient guards
// the same way (mochi PATCHES.md 11).
func (l endCounter) Serve(establish listeners.EstablishFn) {
	l.Listener.Serve(func(id string, c net.Conn) (err error) {
		defer func() {
			if v := recover(); v != nil {
				l.b.hook.reachedConnect.Delete(c)
				_ = c.Close()
				err = l.b.recovered(id, c.RemoteAddr().String(), v)
			}
		}()
		err = establish(id, c)
		if _, reached := l.b.hook.reachedConnect.LoadAndDelete(c); !reached && err != nil {
			l.b.connectFailed(id, c.RemoteAddr().String(), err)
		}
		return err
	})
}

// serveClient starts the goroutine that reads and handles an established
// client's packets (mochi's Options.ServeClient, PATCHES.md 11), with a
// panic in it contained to the connection as endCounter contains one
// during the connection's set-up.
func (b *Broker) serveClient(cl *mqtt.Client, serve func()) {
	go func() {
		defer func() {
			if v := recover(); v != nil {
				_ = cl.Net.Conn.Close()
				_ = b.recovered(cl.Net.Listener, cl.Net.Remote, v)
			}
		}()
		serve()
	}()
}

// recovered reports a panic contained to one connection: logged with its
// stack (it is a bug to fix), counted as a forced disconnect and audited.
func (b *Broker) recovered(listener, remote string, v any) error {
	b.metrics.forcedDisconnects.WithLabelValues("panic").Inc()
	b.log.Error("panic while serving a connection; the connection was dropped (a bug: please report it with this stack)",
		"listener", listener, "remote", remote, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	b.audit.Record(context.Background(), audit.Event{
		Action: "mqtt.disconnect", Outcome: "done", Reason: "panic", Remote: remote, Listener: listener,
		Details: map[string]string{"panic": truncate(fmt.Sprint(v), 256)},
	})
	return fmt.Errorf("panic serving %s: %v", remote, v)
}

// connectFailureReason classifies how a connection failed before its
// CONNECT was authenticated.
func connectFailureReason(err error) string {
	var netErr net.Error
	switch {
	case errors.As(err, &netErr) && netErr.Timeout():
		return "connect-timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connect-closed"
	case errors.Is(err, packets.ErrPacketTooLarge):
		return "packet-too-large"
	}
	return "malformed-connect"
}

// connectFailed counts, reports to the monitor and (sampled) audits a
// connection that failed before its CONNECT was authenticated. A peer that
// just went away is counted only.
func (b *Broker) connectFailed(listener, remote string, err error) {
	select {
	case <-b.done:
		return // shutting down: not the peer's failure
	default:
	}
	reason := connectFailureReason(err)
	b.metrics.authFailures.WithLabelValues(reason).Inc()
	if reason == "connect-closed" {
		return
	}
	b.opts.Events.Observe(events.Event{Kind: events.AuthFailed, At: time.Now(), Remote: remote, Listener: listener, Reason: reason})
	if !b.hook.sampleLog() {
		return
	}
	b.audit.Record(context.Background(), audit.Event{
		Action: "mqtt.connect", Outcome: "denied", Reason: reason, Remote: remote, Listener: listener,
		Details: map[string]string{"error": truncate(err.Error(), 256)},
	})
}

// disconnectReason names why mochi ended an authenticated connection when
// Warden should count it as a forced disconnect, or "" for ends that are
// the client's doing or counted elsewhere (a clean DISCONNECT, a closed
// socket, a takeover, a cut).
func disconnectReason(err error) string {
	if err == nil {
		return ""
	}
	var code packets.Code
	if errors.As(err, &code) {
		switch code.Code {
		case packets.ErrPacketTooLarge.Code:
			return "packet-too-large"
		case packets.ErrMalformedPacket.Code:
			return "malformed-packet"
		case packets.ErrProtocolViolation.Code, packets.ErrTopicFilterInvalid.Code, packets.ErrTopicNameInvalid.Code,
			packets.ErrReceiveMaximum.Code, packets.ErrTopicAliasInvalid.Code:
			return "protocol-error"
		}
		return ""
	}
	// mochi's reader reports an unknown packet type (0) in a plain error.
	if strings.Contains(err.Error(), "invalid packet type") {
		return "malformed-packet"
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return "keepalive-timeout"
	}
	return ""
}

// countDisconnect counts an authenticated connection that mochi ended for
// a reason Warden should see, and (sampled) audits it unless it is a
// keep-alive timeout, which dead networks cause all day long.
func (b *Broker) countDisconnect(cl *mqtt.Client, p identity.Principal, err error) {
	reason := disconnectReason(err)
	if reason == "" {
		return
	}
	b.metrics.forcedDisconnects.WithLabelValues(reason).Inc()
	if reason == "keepalive-timeout" || !b.hook.sampleLog() {
		return
	}
	b.audit.Record(context.Background(), audit.Event{
		Action: "mqtt.disconnect", Outcome: "done", Subject: p.String(), Reason: reason,
		Remote: cl.Net.Remote, Listener: cl.Net.Listener,
		Details: map[string]string{"error": truncate(err.Error(), 256)},
	})
}

// OnSubscribe refuses the filters of a device beyond maxDeviceSubscriptions
// (SUBACK 0x8F, topic filter not accepted): mochi answers an empty filter
// so. Filters the client already holds are renewals and always pass.
func (h *securityHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	st := h.stateFor(cl)
	if st == nil || st.principal.Kind == identity.KindService {
		return pk
	}
	n := cl.State.Subscriptions.Len()
	refused := 0
	for i, f := range pk.Filters {
		if _, held := cl.State.Subscriptions.Get(f.Filter); held {
			continue
		}
		if n < maxDeviceSubscriptions {
			n++
			continue
		}
		pk.Filters[i].Filter = ""
		refused++
	}
	if refused == 0 {
		return pk
	}
	h.b.metrics.subscriptionsRefused.WithLabelValues("quota").Add(float64(refused))
	if st.denyLog.Allow() {
		h.b.log.Warn("subscription quota reached; refusing filters", string(st.principal.Kind), st.principal.ID,
			"refused", refused, "limit", maxDeviceSubscriptions)
		h.b.audit.Record(context.Background(), audit.Event{
			Action: "mqtt.subscribe", Outcome: "denied", Actor: st.principal.String(), Reason: "subscription-quota",
			Remote: cl.Net.Remote, Listener: cl.Net.Listener,
			Details: map[string]string{"refused": strconv.Itoa(refused)},
		})
	}
	return pk
}

// OnAuthPacket refuses MQTT 5 AUTH: Warden authenticates by certificate
// (or a sealed password) in CONNECT and offers no authentication method, so
// an AUTH packet is a protocol error (MQTT 5 section 4.12); mochi would
// otherwise ignore it.
func (h *securityHook) OnAuthPacket(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	return pk, packets.ErrProtocolViolation
}
