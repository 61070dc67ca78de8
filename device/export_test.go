package device

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warden-iot/warden/internal/identity"
)

// StartExampleBroker stands in for Warden in the package example: it writes
// a fresh device's credentials to a temporary directory and starts a test
// broker that answers every uplink private/<id>/up/<channel> with the same
// payload on private/<id>/down/<channel>. It panics on failure: it is only
// for the example, which has no *testing.T.
func StartExampleBroker() (certFile, keyFile, caFile, server string, stop func()) {
	must := func(err error) {
		if err != nil {
			panic("example setup: " + err.Error())
		}
	}
	ca, err := newTestCA("warden example root")
	must(err)
	srvCert, err := ca.serverCert([]string{"localhost"}, localhost)
	must(err)
	b, err := startTestBroker(brokerOptions{serverCert: srvCert, clientCAs: ca.pool})
	must(err)
	must(b.srv.Subscribe("private/+/up/#", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		down := strings.Replace(pk.TopicName, "/up/", "/down/", 1)
		go func() { _ = b.srv.Publish(down, pk.Payload, false, 1) }()
	}))

	id, err := identity.NewDeviceID()
	must(err)
	dev, err := ca.deviceCert(id, nil)
	must(err)
	dir, err := os.MkdirTemp("", "warden-device-example")
	must(err)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		must(os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
		return p
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(dev.PrivateKey)
	must(err)
	certFile = write("device.crt", "CERTIFICATE", dev.Certificate[0])
	keyFile = write("device.key", "PRIVATE KEY", keyDER)
	caFile = write("warden-root.crt", "CERTIFICATE", ca.cert.Raw)
	return certFile, keyFile, caFile, b.url(), func() {
		b.close()
		_ = os.RemoveAll(dir)
	}
}
