package envelope

import "fmt"

// Suite is the protection of a message: its code in the header byte. The
// codes are also the strength order (docs/envelope.md, "Suites").
type Suite uint8

// The suites. The zero Suite is not one of them.
const (
	// LegacyCBCHMAC is AES-128-CBC with a derived IV and PKCS#7 padding, then
	// HMAC-SHA256 truncated to 16 bytes (encrypt-then-MAC), for firmware that
	// already implements that construction.
	LegacyCBCHMAC Suite = 1
	// CCM8 is AES-128-CCM with OSCORE's nonce and an 8-byte tag (COSE 10).
	CCM8 Suite = 2
	// SignP256 is a cleartext message signed with ECDSA P-256 / SHA-256 by
	// the sender's own key: the receiver can verify but not forge.
	SignP256 Suite = 3
)

var suiteNames = [...]string{LegacyCBCHMAC: "legacy-cbc-hmac", CCM8: "ccm-8", SignP256: "sign-p256"}

func (s Suite) valid() bool { return s >= LegacyCBCHMAC && s <= SignP256 }

// String returns the suite's name as the spec and the configuration write it.
func (s Suite) String() string {
	if s.valid() {
		return suiteNames[s]
	}
	return fmt.Sprintf("suite(%d)", uint8(s))
}

// ParseSuite returns the suite with the given name: "legacy-cbc-hmac",
// "ccm-8" or "sign-p256".
func ParseSuite(name string) (Suite, error) {
	for s := LegacyCBCHMAC; s <= SignP256; s++ {
		if suiteNames[s] == name {
			return s, nil
		}
	}
	return 0, fmt.Errorf("envelope: unknown suite %q; use legacy-cbc-hmac, ccm-8 or sign-p256", name)
}

// AtLeast reports whether s is a valid suite no weaker than min. It is false
// whenever either suite is invalid, so a missing minimum refuses everything
// rather than allowing everything.
func (s Suite) AtLeast(min Suite) bool {
	return s.valid() && min.valid() && s >= min
}

// RequireSuite refuses a message whose suite got is weaker than the device's
// minimum suite min, with an *OpenError of reason ReasonDowngrade. Call it
// with Parse's Header.Suite before picking keys.
func RequireSuite(got, min Suite) error {
	if got.AtLeast(min) {
		return nil
	}
	return openError(ReasonDowngrade, "suite %v is weaker than the minimum %v", got, min)
}

// Direction says who sent a message. It selects the keys (uplink and downlink
// never share one) and is authenticated with every message.
type Direction uint8

// The directions. Their values are the sender IDs of the key schedule and
// the direction byte of the authenticated data. The zero Direction is not
// one of them.
const (
	// Uplink is device to Warden.
	Uplink Direction = 1
	// Downlink is Warden to device.
	Downlink Direction = 2
)

func (d Direction) valid() bool { return d == Uplink || d == Downlink }

func (d Direction) String() string {
	switch d {
	case Uplink:
		return "uplink"
	case Downlink:
		return "downlink"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}
