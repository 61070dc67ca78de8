// Package mqttattack is an attacker's MQTT toolkit for Warden's adversarial
// suite (test/adversarial/flood): generators of malformed and hostile MQTT 5
// packets, a driver that throws a reproducible mix of them at a live
// connection, and the blunt instruments of denial of service (connection
// floods, connections left hanging at every stage of the handshake).
//
// Every generator is a plain function returning the bytes to write, so an
// attack can be replayed, inspected and unit-tested without a network. The
// generators lie on purpose (remaining lengths that do not match the body,
// over-long variable byte integers, invalid UTF-8, forbidden packet types
// and flags); the encoders they build on (Packet, Connect, Publish,
// Subscribe) write correct MQTT 5, so that an attack breaks exactly one
// rule at a time and a broker's refusal can be attributed to it.
//
// The package only produces bytes and reads what the broker answers with
// paho's packet reader; it parses no untrusted input of its own. It is a
// test tool: never point it at a broker you do not own.
package mqttattack
