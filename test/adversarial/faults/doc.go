// Package faults holds Warden's crash and endurance tests: a real `warden
// serve` (or the CLI process doing the work) killed with SIGKILL in the
// middle of an operation that must be atomic or resumable, then restarted
// on the same data directory, and a long run of a churning simulated fleet.
//
// Threats covered (each test names the control it exercises):
//
//   - A crash (power cut, OOM killer, an operator's kill -9) during batch
//     provisioning leaves a half-registered device: a registry row without
//     its credential, or delivered key material for a device the registry
//     does not know that could later be used to take over the ID.
//   - A crash during a firmware upload leaves a torn image that is listed,
//     offered or served to devices.
//   - A crash during a rollout's stage change loses the stage, or opens it
//     (or the next one) twice.
//   - A crash during a CA rotation leaves the CA or the fleet unable to
//     connect, a certificate the registry does not know, or a device
//     re-issued twice.
//   - A crash during QoS 1 traffic loses a message whose PUBACK the device
//     already received (at-least-once broken).
//   - Slow resource exhaustion under churn (reconnects, revocations,
//     rekeys): memory that keeps growing, goroutines that outlive their
//     connections, messages lost or duplicated without a cause.
//   - Secrets in the clear: a device private key, an envelope master
//     secret, an API token, the master key or a CA key in any file of the
//     data directory (other than the ones meant to hold it, sealed) or in
//     any log or process output, also after crashes.
//
// Every test kills at a point detected from the system under test (lines
// printed, bytes consumed, audit entries, log lines, files appearing,
// acknowledgements received), never after a guessed sleep. TestSoak runs
// briefly in CI; ADVERSARIAL_SOAK=1 runs the full soak (2,000 devices for
// 20 minutes; give go test -timeout 40m).
package faults
