package sim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warden-iot/warden/internal/identity"
)

// The fixtures: a throwaway CA made with crypto/x509, fleet directories
// laid out as `warden device provision --out` writes them, and a real
// mochi-mqtt broker with a TLS listener that requires client certificates.
// The broker admits every verified client and topic (allowHook): these
// tests exercise the simulator, not Warden's policy, which internal/e2e
// runs it against.

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	pem  []byte
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sim test root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a certificate for tmpl with a fresh P-256 key.
func (ca *testCA) issue(t testing.TB, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func (ca *testCA) principal(t testing.TB, kind identity.Kind, id string) tls.Certificate {
	return ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: id},
		URIs:        []*url.URL{identity.URI(kind, id)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// writeCert writes cert as DIR/NAME.crt and its key as DIR/NAME.key.
func writeCert(t testing.TB, dir, name string, cert tls.Certificate) {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeFleet provisions n devices (IDs dev-000...) into a new directory
// with ca.crt, and returns the directory and the IDs.
func writeFleet(t testing.TB, ca *testCA, n int) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%03d", i)
		writeCert(t, dir, ids[i], ca.principal(t, identity.KindDevice, ids[i]))
	}
	return dir, ids
}

// allowHook admits every client the TLS listener verified, to every
// topic. Test-only: Warden's broker decides with registry and policy.
type allowHook struct {
	mqtt.HookBase
	// refuseCmd refuses this many subscriptions to a command channel
	// first, as a broker might under load.
	refuseCmd atomic.Int32
}

func (h *allowHook) ID() string { return "sim-test-allow" }

func (h *allowHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *allowHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (h *allowHook) OnACLCheck(_ *mqtt.Client, topic string, write bool) bool {
	if !write && strings.HasSuffix(topic, "/down/cmd") && h.refuseCmd.Add(-1) >= 0 {
		return false
	}
	return true
}

// testBroker is a mochi broker with a mutual-TLS listener.
type testBroker struct {
	srv  *mqtt.Server
	addr string
	hook *allowHook
}

func startBroker(t testing.TB, ca *testCA) *testBroker {
	t.Helper()
	srvCert := ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "sim test broker"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	hook := new(allowHook)
	if err := srv.AddHook(hook, nil); err != nil {
		t.Fatal(err)
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "mqtts", Address: "127.0.0.1:0", TLSConfig: &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{srvCert},
		ClientCAs:    ca.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}})
	if err := srv.AddListener(tcp); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	b := &testBroker{srv: srv, addr: tcp.Address(), hook: hook}
	t.Cleanup(b.close)
	return b
}

// close stops every client first: mochi v2.7.9's Close can deadlock while a
// client is being removed (see device/helpers_test.go).
func (b *testBroker) close() {
	for _, cl := range b.srv.Clients.GetAll() {
		if !cl.Net.Inline {
			cl.Stop(errors.New("test broker shutting down"))
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		lingering := false
		for _, cl := range b.srv.Clients.GetAll() {
			if !cl.Net.Inline {
				lingering = true
			}
		}
		if !lingering {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = b.srv.Close()
}

func (b *testBroker) url() string { return "mqtts://" + b.addr }
