package firmware_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/warden-iot/warden/firmware"
)

// The whole release flow: the release manager signs an image and a
// statement; the server verifies both with the public key only; a device
// checks the statement against its policy before downloading, and the file
// against the statement after.
func Example() {
	// Release manager's machine (the key never reaches the server).
	seed := sha256.Sum256([]byte("example release key"))
	releaseKey := ed25519.NewKeyFromSeed(seed[:])
	pub := releaseKey.Public()

	image, err := firmware.Sign([]byte("firmware payload"), releaseKey, firmware.SignOptions{
		Version:         firmware.Version{Major: 1, Minor: 4},
		SecurityCounter: 3,
	})
	if err != nil {
		panic(err)
	}
	statement, err := firmware.SignStatement(firmware.Statement{
		Model:           "sensor-v2",
		Version:         firmware.Version{Major: 1, Minor: 4},
		SecurityCounter: 3,
		ImageSHA256:     sha256.Sum256(image),
		ImageSize:       int64(len(image)),
		Sequence:        17,
		IssuedAt:        time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		ExpiresAt:       time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC),
	}, releaseKey)
	if err != nil {
		panic(err)
	}

	// Device: statement first, pinned key, own policy.
	now := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	s, err := firmware.VerifyStatement(statement, pub)
	if err != nil {
		panic(err)
	}
	policy := firmware.Policy{Model: "sensor-v2", Current: firmware.Version{Major: 1, Minor: 3}, SecurityCounter: 3, LastSequence: 12}
	fmt.Println("check:", s.Check(policy, now))

	// ... download, then tie the file to the statement.
	img, err := s.MatchImage(image, pub)
	fmt.Println("match:", img.Header.Version, err)

	// A replay of the same statement once the device runs it.
	policy.Current, policy.LastSequence = s.Version, s.Sequence
	fmt.Println("replayed:", errors.Is(s.Check(policy, now), firmware.ErrReplay))
	// Output:
	// check: <nil>
	// match: 1.4.0+0 <nil>
	// replayed: true
}
