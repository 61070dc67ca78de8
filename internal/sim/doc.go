// Package sim simulates a fleet of devices against Warden (or any MQTT 5
// broker) with the device SDK, for `warden sim` and `warden bench`.
//
// Each simulated device is a real device.Client with its own provisioned
// certificate (or envelope bundle), as a fleet directory written by
// `warden device provision --out DIR` holds them (LoadFleet). A Swarm
// connects the devices at a steady rate with bounded concurrency, from
// several loopback source addresses in turn (SwarmOptions.SourceAddrs), so
// that one address's ephemeral ports do not limit it. Connected devices
// publish telemetry on private/<id>/up/<channel> from one shared scheduler
// and a bounded pool of publishers, answer commands (HandleCommands) and,
// optionally, take firmware updates (the SDK's OTA agent with an installer
// that verifies and discards).
//
// Every telemetry payload starts with the device's sequence number and the
// time it was sent (ParsePayload). A Consumer, connected as a back-end
// service, reads the relayed copies on fleet/<id>/up/<channel>, records
// each message's end-to-end latency in a Histogram and tells new messages
// from repeated ones; Consumer.Reconcile then compares that with what each
// device sent (Ledger) to count lost and duplicated messages.
//
// Run ties these together for a bounded run and returns a Summary that
// marshals to JSON. The pieces are exported so that a benchmark can drive
// its own scenarios: idle fleets (no telemetry), connection storms, and
// throughput with or without a consumer, against Warden or another broker
// (a consumer subscribing to private/+/up/<channel> directly).
//
// The process holding the devices needs a file descriptor per device (and
// the broker one per device in its own process), so a large fleet needs a
// raised open-file limit and the broker in a separate process.
package sim
