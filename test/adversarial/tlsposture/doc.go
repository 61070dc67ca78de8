// Package tlsposture attacks the TLS of a running `warden serve` from the
// outside, with the tools an attacker or an auditor would use, and puts a
// man in the middle between a device and Warden.
//
// Threats covered (each test names the control it exercises):
//
//   - A downgrade: a client or a scanner gets a listener to speak SSL, TLS
//     1.0 or 1.1, TLS 1.2 on a strict listener, a CBC or RSA key-exchange
//     suite, compression (CRIME) or insecure renegotiation, or finds a
//     server key weaker than ECDSA P-256. sslscan scans every TLS listener
//     (mqtts, wss, api) on the strict and the compat profile, presenting a
//     device certificate so that it can enumerate behind mutual TLS;
//     testssl.sh adds compression and renegotiation, which sslscan cannot
//     test against Debian's OpenSSL (built without zlib). ParseSSLScanXML and
//     ParseTestSSLJSON read their machine-readable output.
//   - Connecting without a client certificate, or with a device
//     certificate forged under another CA.
//   - A man in the middle with its own CA between a device and the broker
//     (the Go SDK and mosquitto_pub) or the OTA/API endpoint (the SDK's
//     HTTPS agent), and one that presents a certificate Warden's own CA
//     issued for another name (a device's certificate, or a server
//     certificate for another host). A transparent relay through the same
//     proxy code shows the refusals are about the certificate, not a
//     broken proxy.
//
// Every refusal is asserted on both sides where both sides can see it: the
// client's error kind, and on Warden the handshake-failure metric and the
// tls.handshake audit line of that very connection (matched on its source
// port), or, when nothing may reach Warden, that nothing did.
//
// testssl.sh is slow (10 to 30 seconds per listener on a loaded CI
// machine): CI runs its protocol, cipher, compression and renegotiation
// checks on the compat api listener (TLS 1.2 allowed, no client
// certificate required, so every check can complete its handshakes);
// ADVERSARIAL_FULL=1 scans all six listeners with every check, -U
// (all vulnerabilities) included, in about a minute and a half (give go
// test -timeout 20m to be safe). sslscan scans all six always.
package tlsposture
