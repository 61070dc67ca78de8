// Package e2e drives a real `warden serve` process on loopback ports with
// real clients: the Go SDK, paho, mosquitto_pub/mosquitto_sub and
// openssl s_client. The harness itself is internal/wardentest.
package e2e

import (
	"testing"

	"github.com/warden-iot/warden/internal/wardentest"
)

func TestMain(m *testing.M) { wardentest.Main(m) }
