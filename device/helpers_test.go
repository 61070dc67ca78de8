package device

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/policy"
)

// This file holds the test fixtures: a throwaway CA built with crypto/x509,
// and a real mochi-mqtt broker with a TLS listener that requires client
// certificates. The real Warden broker does not exist yet; the hook below
// stands in for it and is deliberately small. It is test-only: it trusts
// any client whose certificate chains to the test CA and whose client ID
// matches the certificate, and asks internal/policy for topic rights.

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(name string) (*testCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}, nil
}

// issue signs tmpl for key (a fresh P-256 key if nil).
func (ca *testCA) issue(tmpl *x509.Certificate, key crypto.Signer) (tls.Certificate, error) {
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return tls.Certificate{}, err
		}
		key = k
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func (ca *testCA) serverCert(dnsNames []string, ips []net.IP) (tls.Certificate, error) {
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "warden broker"},
		DNSNames:    dnsNames,
		IPAddresses: ips,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, nil)
}

func (ca *testCA) deviceCert(id string, key crypto.Signer) (tls.Certificate, error) {
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: id},
		URIs:        []*url.URL{identity.URI(identity.KindDevice, id)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, key)
}

var localhost = []net.IP{net.IPv4(127, 0, 0, 1)}

// testHook authenticates devices by certificate and authorises topics with
// internal/policy's default rules.
type testHook struct {
	mqtt.HookBase
	policy *policy.Policy

	mu         sync.Mutex
	rights     map[string]*policy.Rights
	refuse     map[string]bool
	subscribed chan string // filters the broker accepted, in order
}

func (h *testHook) ID() string { return "warden-device-sdk-test" }

func (h *testHook) Provides(b byte) bool {
	return slices.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSubscribed}, b)
}

func (h *testHook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		st := tc.ConnectionState()
		if len(st.PeerCertificates) == 0 {
			return false
		}
		kind, id, err := identity.FromURIs(st.PeerCertificates[0].URIs)
		if err != nil || kind != identity.KindDevice || id != cl.ID {
			return false
		}
	} else if cl.Net.Listener != "wss" {
		// mochi's WebSocket listener hides the TLS connection; there the
		// TLS layer has verified the chain and the test trusts the ID.
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.refuse[cl.ID] {
		return false
	}
	h.rights[cl.ID] = h.policy.Compile(identity.Principal{Kind: identity.KindDevice, ID: cl.ID})
	return true
}

func (h *testHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	h.mu.Lock()
	r := h.rights[cl.ID]
	h.mu.Unlock()
	switch {
	case write:
		return r.CanPublish(topic)
	case policy.ValidTopicName(topic): // delivery of a message
		return r.CanReceive(topic)
	default: // a subscription
		return r.CanSubscribe(topic)
	}
}

func (h *testHook) OnSubscribed(_ *mqtt.Client, pk packets.Packet, codes []byte) {
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < 0x80 {
			select {
			case h.subscribed <- f.Filter:
			default:
			}
		}
	}
}

type testBroker struct {
	srv  *mqtt.Server
	hook *testHook
	addr string // the mqtts listener, host:port
}

type brokerOptions struct {
	serverCert tls.Certificate
	clientCAs  *x509.CertPool
	wssAddr    string // also listen for wss here, if set
}

func startTestBroker(o brokerOptions) (*testBroker, error) {
	p, err := policy.New(policy.DefaultRules())
	if err != nil {
		return nil, err
	}
	hook := &testHook{
		policy:     p,
		rights:     make(map[string]*policy.Rights),
		refuse:     make(map[string]bool),
		subscribed: make(chan string, 64),
	}
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(hook, nil); err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{o.serverCert},
		ClientCAs:    o.clientCAs,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "mqtts", Address: "127.0.0.1:0", TLSConfig: tlsCfg})
	if err := srv.AddListener(tcp); err != nil {
		return nil, err
	}
	if o.wssAddr != "" {
		ws := listeners.NewWebsocket(listeners.Config{ID: "wss", Address: o.wssAddr, TLSConfig: tlsCfg})
		if err := srv.AddListener(ws); err != nil {
			return nil, err
		}
	}
	if err := srv.Serve(); err != nil {
		return nil, err
	}
	return &testBroker{srv: srv, hook: hook, addr: tcp.Address()}, nil
}

func (b *testBroker) url() string { return "mqtts://" + b.addr }

// kill drops a client's connection without a DISCONNECT, as a crash or a
// network failure would.
func (b *testBroker) kill(id string) error {
	cl, ok := b.srv.Clients.Get(id)
	if !ok || cl.Closed() {
		return fmt.Errorf("client %q is not connected", id)
	}
	cl.Stop(errors.New("killed by the test"))
	return nil
}

func (b *testBroker) refuse(id string) {
	b.hook.mu.Lock()
	defer b.hook.mu.Unlock()
	b.hook.refuse[id] = true
}

// awaitSubscribed waits until the broker has accepted a subscription to
// filter.
func (b *testBroker) awaitSubscribed(t testing.TB, filter string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case f := <-b.hook.subscribed:
			if f == filter {
				return
			}
		case <-timeout:
			t.Fatalf("the broker saw no subscription to %q", filter)
		}
	}
}

// env is a CA, a broker with a certificate from it, and one device.
type env struct {
	ca     *testCA
	broker *testBroker
	id     string
	cert   tls.Certificate
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ca, err := newTestCA("warden test root")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.serverCert([]string{"localhost"}, localhost)
	if err != nil {
		t.Fatal(err)
	}
	return newEnvWith(t, ca, brokerOptions{serverCert: srvCert, clientCAs: ca.pool})
}

func newEnvWith(t testing.TB, ca *testCA, o brokerOptions) *env {
	t.Helper()
	b, err := startTestBroker(o)
	if err != nil {
		t.Fatalf("start broker: %v", err)
	}
	t.Cleanup(func() { _ = b.srv.Close() })
	id, err := identity.NewDeviceID()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.deviceCert(id, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &env{ca: ca, broker: b, id: id, cert: cert}
}

// config is a Config for the env's device with test-friendly timings.
func (e *env) config(t testing.TB) Config {
	return Config{
		Servers:        []string{e.broker.url()},
		Certificate:    e.cert,
		RootCAs:        e.ca.pool,
		MinBackoff:     20 * time.Millisecond,
		MaxBackoff:     200 * time.Millisecond,
		ConnectTimeout: 3 * time.Second,
		Logger:         testLogger(t),
	}
}

// testLogger sends log output to t.Log, so it shows only for failures.
// Lines logged after the test has finished are dropped: t.Log would panic.
func testLogger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.done = true
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}
