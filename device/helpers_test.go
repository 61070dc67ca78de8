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
	// plainAuth decides CONNECTs on the plain listener; nil refuses them.
	// It stands in for Warden's envelope password check (see standIn).
	plainAuth func(clientID string, username, password []byte) bool
}

func (h *testHook) ID() string { return "warden-device-sdk-test" }

func (h *testHook) Provides(b byte) bool {
	return slices.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSubscribed}, b)
}

func (h *testHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if cl.Net.Listener == "mqtt" {
		h.mu.Lock()
		auth := h.plainAuth
		h.mu.Unlock()
		if auth == nil || !auth(cl.ID, pk.Connect.Username, pk.Connect.Password) {
			return false
		}
	} else if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
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
	srv       *mqtt.Server
	hook      *testHook
	addr      string // the mqtts listener, host:port
	plainAddr string // the plain mqtt listener, if any
}

type brokerOptions struct {
	serverCert tls.Certificate
	clientCAs  *x509.CertPool
	wssAddr    string // also listen for wss here, if set
	plain      bool   // also listen for plain MQTT (envelope devices)
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
	var plain *listeners.TCP
	if o.plain {
		plain = listeners.NewTCP(listeners.Config{ID: "mqtt", Address: "127.0.0.1:0"})
		if err := srv.AddListener(plain); err != nil {
			return nil, err
		}
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
	b := &testBroker{srv: srv, hook: hook, addr: tcp.Address()}
	if plain != nil {
		b.plainAddr = plain.Address()
	}
	return b, nil
}

// close shuts the broker down. mochi-mqtt v2.7.9's Server.Close can
// deadlock when a client is being removed while it closes its second
// listener (Clients.GetByListener takes the read lock twice, and a waiting
// Clients.Delete blocks the second), so every client is stopped, and
// its removal awaited, first.
func (b *testBroker) close() {
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Inline {
			continue
		}
		cl.Stop(errors.New("test broker shutting down"))
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && b.clientsLingering() {
		time.Sleep(2 * time.Millisecond)
	}
	_ = b.srv.Close()
}

// clientsLingering reports whether a stopped client whose session expires
// at once has not been removed yet.
func (b *testBroker) clientsLingering() bool {
	for _, cl := range b.srv.Clients.GetAll() {
		if !cl.Net.Inline && (!cl.Closed() || cl.Properties.Props.SessionExpiryInterval == 0) {
			return true
		}
	}
	return false
}

func (b *testBroker) url() string { return "mqtts://" + b.addr }

func (b *testBroker) plainURL() string { return "mqtt://" + b.plainAddr }

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

// awaitGone waits until the broker has finished with a client that
// disconnected: the ID is no longer registered, or registered to a new,
// open connection (a device that reconnected at once takes its ID over;
// third_party/mochi patch 7 keeps that connection registered).
func (b *testBroker) awaitGone(t testing.TB, id string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if cl, ok := b.srv.Clients.Get(id); !ok || !cl.Closed() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the broker still holds client %q 5s after it disconnected", id)
		}
		time.Sleep(2 * time.Millisecond)
	}
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
	t.Cleanup(b.close)
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
