// Package session attacks a running `warden serve` the way an attacker
// who holds one valid identity, or sits on the network path, attacks MQTT
// sessions, sealed messages and firmware updates, instead of the
// cryptography itself:
//
//   - session takeover and session wiping with another identity's
//     certificate and the victim's client ID (MQTT 5, MQTT 3.1.1,
//     mosquitto_sub), including a device using a service's name;
//   - Last Wills aimed outside the device's subtree, and the will of a
//     device Warden has cut;
//   - subscriptions that try to escape the subtree (wildcards, $SYS,
//     shared subscriptions, fleet/), retained-message poisoning, and a
//     stolen device key forging on the device's own subtree what only
//     Warden may send it (commands, certificates, firmware offers);
//   - replay and forgery of sealed envelopes on the plain listener by an
//     on-path attacker (replayed, reordered, bit-flipped, truncated,
//     reflected, moved to another channel or device, replayed after the
//     server was killed), in both directions;
//   - firmware forgery at upload and through a compromised server:
//     statements signed or re-signed with other keys, swapped images,
//     older releases (anti-rollback), other models' releases.
//
// Every test asserts the refusal, the audit line and the metric Warden
// records for it, and that the legitimate traffic beside the attack is
// unaffected. Tests that demonstrate a known, unfixed weakness skip
// unless ADVERSARIAL_KNOWN_VULNS is set. The package needs mosquitto-clients
// (mosquitto_pub, mosquitto_sub).
package session
