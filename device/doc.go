// Package device is the Go SDK for devices that connect to Warden.
//
// A device holds a certificate issued by Warden, whose urn:warden:device:<id>
// URI SAN names it, and the Warden root certificate. It connects over MQTT 5
// with mutual TLS (TLS 1.3 only) and trusts nothing but that root: the
// system roots are never consulted, so a certificate from a public CA cannot
// impersonate the broker.
//
// A device sees only its own subtree. It publishes uplinks to
// private/<id>/up/<channel> (PublishUp) and receives commands on
// private/<id>/down/<channel> (SubscribeDown); Warden relays between those
// and the services' fleet/<id>/... topics.
//
// The client reconnects by itself, waiting between attempts with
// exponential backoff and full jitter (see Backoff) so that a fleet dropped
// by a broker restart does not return in one wave, and it restores its
// subscriptions on every new connection.
//
// A device that cannot rely on TLS alone is an envelope device
// (Config.Envelope, docs/envelope.md): it seals its uplinks, opens Warden's
// sealed downlinks, follows Warden's rekeys, and may connect to Warden's
// plain mqtt:// listener with a single-use password instead of a
// certificate. EnvelopeStats counts what it sealed, opened and dropped.
//
// Typical use:
//
//	cert, roots, err := device.LoadCredentials("device.crt", "device.key", "warden-root.crt")
//	if err != nil {
//		log.Fatal(err)
//	}
//	c, err := device.Connect(ctx, device.Config{
//		Servers:     []string{"mqtts://warden.example.com:8883", "wss://warden.example.com:8884/mqtt"},
//		Certificate: cert,
//		RootCAs:     roots,
//	})
//	if err != nil {
//		log.Fatal(err) // for example a *device.RefusedError: the device is not active
//	}
//	defer c.Close(context.Background())
//
//	err = c.SubscribeDown(ctx, "cmd", 1, func(m device.Message) {
//		log.Printf("command on %s: %q", m.Channel, m.Payload)
//	})
//	...
//	err = c.PublishUp(ctx, "telemetry", []byte(`{"temp":21.5}`), 1)
//
// # Firmware updates
//
// Client.OTA returns the device's update agent (docs/firmware.md,
// "Delivery"). It trusts nothing but a release statement that verifies
// against the pinned release key, checks model, expiry, sequence, security
// counter and version before it downloads, resumes interrupted downloads
// (HTTPS Range or MQTT blocks), verifies the MCUboot image against the
// statement and hands it to an Installer, reporting every step to Warden.
package device
