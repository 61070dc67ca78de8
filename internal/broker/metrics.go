package broker

import "github.com/prometheus/client_golang/prometheus"

// metrics are the broker's Prometheus series. They live on a registry the
// caller owns (never the global one).
type metrics struct {
	connections        *prometheus.GaugeVec
	connects           *prometheus.CounterVec
	authFailures       *prometheus.CounterVec
	handshakeFailures  *prometheus.CounterVec
	connectionsRefused *prometheus.CounterVec
	aclDenials         *prometheus.CounterVec
	messagesIn         *prometheus.CounterVec
	messagesOut        prometheus.Counter
	dropped            *prometheus.CounterVec
	forcedDisconnects  *prometheus.CounterVec
	handshakesWaiting  prometheus.Gauge
	// subscriptionsRefused counts filters refused for a limit, not by
	// topic policy (those are aclDenials).
	subscriptionsRefused *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warden_mqtt_connections", Help: "Authenticated MQTT connections open now, by listener and principal kind.",
		}, []string{"listener", "kind"}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_mqtt_connects_total", Help: "Accepted MQTT connections, by listener and principal kind.",
		}, []string{"listener", "kind"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_mqtt_auth_failures_total", Help: "MQTT connections refused after the TLS handshake, by reason.",
		}, []string{"reason"}),
		handshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_tls_handshake_failures_total", Help: "Failed TLS handshakes on MQTT listeners, by listener and reason.",
		}, []string{"listener", "reason"}),
		connectionsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_mqtt_connections_refused_total", Help: "Connections refused by a limit (rate, flapping), by listener and reason.",
		}, []string{"listener", "reason"}),
		aclDenials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_mqtt_acl_denials_total", Help: "Publish, subscribe, will and delivery attempts refused by topic policy.",
		}, []string{"action"}),
		messagesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_mqtt_messages_in_total", Help: "PUBLISH packets accepted from clients, by principal kind.",
		}, []string{"kind"}),
		messagesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warden_mqtt_messages_out_total", Help: "PUBLISH packets written to clients.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_mqtt_messages_dropped_total", Help: "Messages not delivered, by reason (rate, queue-full, unknown-device, ...).",
		}, []string{"reason"}),
		forcedDisconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_mqtt_forced_disconnects_total", Help: "Connections cut by Warden, by reason (revoked, disabled, packet-too-large, malformed-packet, protocol-error, keepalive-timeout, ...).",
		}, []string{"reason"}),
		subscriptionsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warden_mqtt_subscriptions_refused_total", Help: "Topic filters refused for a limit rather than by topic policy, by reason (quota: a device's subscriptions are full).",
		}, []string{"reason"}),
		handshakesWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warden_tls_handshakes_waiting", Help: "TLS handshakes waiting for a handshake token (limits.handshake_concurrency) now; high during a reconnect storm, zero at rest.",
		}),
	}
	reg.MustRegister(m.handshakesWaiting, m.connections, m.connects, m.authFailures, m.handshakeFailures, m.connectionsRefused,
		m.aclDenials, m.messagesIn, m.messagesOut, m.dropped, m.forcedDisconnects, m.subscriptionsRefused)
	return m
}
