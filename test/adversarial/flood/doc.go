// Package flood attacks a running `warden serve` with hostile MQTT and with
// denial of service: what an attacker sends to the device listener when
// the goal is to crash the broker, starve the fleet of it, or hide in the
// noise. The attacks come from internal/mqttattack.
//
// Threats covered (each test names the control it exercises):
//
//   - Malformed MQTT before and after authentication (remaining lengths
//     that lie, over-long and endless variable byte integers, packet-size
//     bombs, invalid UTF-8 and NUL in topics, bad properties, reserved
//     packet types, QoS 3, a QoS 1 PUBLISH with packet ID 0, random
//     packets and byte streams from reproducible seeds): the offender must
//     be disconnected, counted and audited, the broker must stay up and the
//     established devices must not notice.
//   - Costly valid MQTT from an authenticated device: 10,000-level topics
//     and filters (which mochi's topic tree stores in quadratic time) and
//     thousands of subscriptions per client: refused beyond a bound, with
//     memory and CPU staying bounded.
//   - Slowloris: many TCP connections that never start TLS, peers that
//     send a ClientHello (or part of one) and stall, TLS connections that
//     never send CONNECT or send half of one: each cut at
//     limits.connect_timeout and counted, while the stalled peers hold no
//     handshake token and new devices still connect.
//   - A connection flood from one address, and a device that reconnects in
//     a loop: refused by limits.connection_rate and the flapping ban,
//     counted and audited without an audit line per attempt, while a
//     control group of connected devices keeps its QoS 1 round trips
//     (device, relay, service) within a latency bound and no member is
//     disconnected.
//   - A connection flood from one host that would spend the listener's
//     whole connection rate: refused at its source's rate
//     (limits.connection_rate_per_source) while devices from another
//     address keep connecting.
//
// CI runs modest counts; ADVERSARIAL_FULL=1 runs larger ones, and
// ADVERSARIAL_STRICT=1 asserts the strict p99 < 100 ms for the
// control group under a flood (CI asserts a generous 1 s, since a loaded
// two-core runner is not a latency benchmark).
package flood
