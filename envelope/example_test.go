package envelope_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/warden-iot/warden/envelope"
)

// The device seals with its uplink keys and a persistent counter; Warden
// routes with Parse, refuses downgrades, checks the replay window, opens, and
// commits.
func Example() {
	secret := []byte("0123456789abcdef") // in real life: envelope.NewMasterSecret()
	const device, topic = "0a1b2c3d", "private/0a1b2c3d/up/telemetry"

	// Device side.
	dir, _ := os.MkdirTemp("", "envelope-example")
	defer os.RemoveAll(dir)
	counter, err := envelope.NewCounter(envelope.NewFileCounterStore(filepath.Join(dir, "uplink.counter")))
	if err != nil {
		fmt.Println(err)
		return
	}
	up, _ := envelope.DeriveKeys(secret, device, 0, envelope.CCM8, envelope.Uplink)
	seq, _ := counter.Next()
	msg, _ := envelope.Seal(up, seq, topic, []byte(`{"t":21.5}`))

	// Warden side: the same keys, derived from its sealed copy of the secret.
	var window envelope.ReplayWindow
	receive := func(msg []byte) error {
		hdr, err := envelope.Parse(msg)
		if err != nil {
			return err
		}
		if err := envelope.RequireSuite(hdr.Suite, envelope.CCM8); err != nil {
			return err
		}
		if err := window.Check(hdr.Seq); err != nil {
			return err
		}
		payload, hdr, err := envelope.Open(up, topic, msg)
		if err != nil {
			return err
		}
		if err := window.Commit(hdr.Seq); err != nil {
			return err
		}
		fmt.Printf("message %d: %s\n", hdr.Seq, payload)
		return nil
	}

	for _, m := range [][]byte{msg, msg} { // the second is a replay
		if err := receive(m); errors.Is(err, envelope.ErrOpen) {
			// The peer gets nothing more than ErrOpen; the reason is for metrics.
			fmt.Println("refused:", envelope.ReasonOf(err))
		}
	}
	// Output:
	// message 0: {"t":21.5}
	// refused: replay
}
