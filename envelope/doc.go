// Package envelope seals and opens Warden envelopes: single MQTT messages
// protected end to end between one device and Warden, for devices that
// cannot run TLS and for devices that must seal even over TLS.
//
// The format is specified in docs/envelope.md; this package follows it
// section by section and the vectors in testdata/envelope check both. In
// short: a one-byte header (version, suite, key-ID flag, sequence-number
// length), a key ID when the key epoch is not 0, a minimally encoded 1–5 byte
// sequence number, and a body whose protection depends on the suite
// (legacy-cbc-hmac, ccm-8 or sign-p256). The authenticated data binds the
// header, the direction, the device ID, the key epoch and the MQTT topic, so
// a message cannot be moved to another topic, device, direction or epoch.
//
// A sender derives Keys once, takes sequence numbers from a Counter and
// calls Seal. A receiver calls Parse to route a message (suite, key ID,
// sequence number, all unverified), RequireSuite to refuse downgrades, a
// ReplayWindow's Check, then Open, then the window's Commit.
//
// Every failure to open is an *OpenError that matches ErrOpen with
// errors.Is. Its Reason is for metrics and logs only: never send it to the
// peer, which must learn nothing about why its message was refused.
package envelope
