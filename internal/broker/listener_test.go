package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/policy"
	"github.com/warden-iot/warden/internal/ratelimit"
)

// testPKI is a root, a server certificate for 127.0.0.1 and a device
// client certificate, as Warden's CA would issue them.
type testPKI struct {
	roots  *x509.CertPool
	server tls.Certificate
	client tls.Certificate
}

func newTestPKI(t testing.TB) testPKI {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, tmpl *x509.Certificate) tls.Certificate {
		k := key()
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	uri, _ := url.Parse("urn:warden:device:dev-1")
	p := testPKI{roots: x509.NewCertPool()}
	p.roots.AddCert(ca)
	p.server = leaf(2, &x509.Certificate{Subject: pkix.Name{CommonName: "warden"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	p.client = leaf(3, &x509.Certificate{Subject: pkix.Name{CommonName: "dev-1"}, URIs: []*url.URL{uri},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return p
}

type refuseAll struct{}

func (refuseAll) Authenticate(context.Context, *x509.Certificate) (identity.Principal, error) {
	return identity.Principal{}, errors.New("test: nobody")
}

// newTestBroker builds (but does not start) a broker whose listeners the
// tests wrap themselves.
func newTestBroker(t testing.TB, p testPKI, tokens int) (*Broker, *prometheus.Registry) {
	t.Helper()
	pol, err := policy.New(policy.DefaultRules())
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	b, err := New(Options{
		Logger: slog.New(slog.DiscardHandler), Registerer: reg, Authenticator: refuseAll{}, Policy: pol,
		ServerCertificate: p.server, ClientCAs: p.roots,
		Listeners: []ListenerConfig{{Name: "mqtts", Kind: KindMQTTS, Addr: "127.0.0.1:0"}},
		Limits: Limits{ConnectTimeout: 3 * time.Second, MaxPacketSize: 1 << 16, ClientSendQueue: 8, MaxInflight: 8,
			MaxKeepAlive: time.Minute, PublishRate: 1, FlapWindow: time.Minute, MaxSessionExpiry: time.Hour,
			HandshakeConcurrency: tokens},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b, reg
}

// listen starts a guarded TLS listener on loopback whose Accept loop
// answers each connection's first byte, so a client sees the connection
// handed over.
func listen(t testing.TB, b *Broker, p testPKI) (*guardedListener, chan net.Conn) {
	t.Helper()
	return listenWith(t, b, p, nil)
}

// listenWith is listen with tune applied to the listener before it
// accepts.
func listenWith(t testing.TB, b *Broker, p testPKI, tune func(*guardedListener)) (*guardedListener, chan net.Conn) {
	t.Helper()
	cfg, err := ServerTLSConfig(p.server, p.roots, ProfileStrict, true)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newGuardedListener(raw, "mqtts", cfg, 3*time.Second, nil, b.admit, b)
	if tune != nil {
		tune(l)
	}
	t.Cleanup(func() { l.Close() })
	accepted := make(chan net.Conn, 1024)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }() // echo
		}
	}()
	return l, accepted
}

func dialDevice(addr string, p testPKI) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return tls.DialWithDialer(d, "tcp", addr, &tls.Config{
		RootCAs: p.roots, Certificates: []tls.Certificate{p.client}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
}

// With one handshake token, many devices connecting at once all get in:
// the tokens are handed on, never lost.
func TestHandshakeAdmissionAdmitsAll(t *testing.T) {
	p := newTestPKI(t)
	b, reg := newTestBroker(t, p, 1)
	l, accepted := listen(t, b, p)
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialDevice(l.Addr().String(), p)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if _, err := c.Write([]byte{0x42}); err != nil {
				errs <- err
				return
			}
			var buf [1]byte
			if _, err := io.ReadFull(c, buf[:]); err != nil || buf[0] != 0x42 {
				errs <- errors.Join(err, errors.New("echo lost"))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := len(accepted); got != n {
		t.Errorf("Accept handed over %d connections, want %d", got, n)
	}
	if got := len(b.admit.tokens); got != 0 {
		t.Errorf("%d handshake tokens still held after every handshake ended", got)
	}
	if got := testutil.ToFloat64(b.metrics.handshakesWaiting); got != 0 {
		t.Errorf("warden_tls_handshakes_waiting = %v at rest", got)
	}
	if n, _ := testutil.GatherAndCount(reg, "warden_tls_handshake_failures_total"); n != 0 {
		t.Errorf("%d handshake failures counted", n)
	}
}

// Peers that stall (no bytes at all, or a ClientHello and then nothing)
// hold no token: with a single token a real device still gets in at once.
func TestHandshakeAdmissionIgnoresStalledPeers(t *testing.T) {
	p := newTestPKI(t)
	b, reg := newTestBroker(t, p, 1)
	l, _ := listen(t, b, p)
	for range 5 {
		silent, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
	}
	stop := make(chan struct{})
	defer close(stop)
	for range 5 {
		// A client that sends its ClientHello, reads the server's flight
		// and never answers: its handshake waits for the network.
		raw, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		stall := tls.Client(&stallAfterHello{Conn: raw, stop: stop}, &tls.Config{RootCAs: p.roots, ServerName: "127.0.0.1",
			Certificates: []tls.Certificate{p.client}})
		go func() { _ = stall.Handshake() }()
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	c, err := dialDevice(l.Addr().String(), p)
	if err != nil {
		t.Fatalf("a device could not connect beside stalled peers: %v", err)
	}
	c.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("a device waited %v for its handshake beside stalled peers", d)
	}
	// The stalled handshakes end at the connect deadline, counted as
	// timeouts, and give their tokens back.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := testutil.ToFloat64(b.metrics.handshakeFailures.WithLabelValues("mqtts", "timeout"))
		if got >= 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stalled handshakes counted as timeouts: %v, want 10", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := len(b.admit.tokens); got != 0 {
		t.Errorf("%d tokens held after the stalled handshakes timed out", got)
	}
	if n, err := testutil.GatherAndCount(reg, "warden_tls_handshakes_waiting"); err != nil || n != 1 {
		t.Errorf("warden_tls_handshakes_waiting not exported: %d series, %v", n, err)
	}
}

// stallAfterHello lets the ClientHello out and then sends nothing more
// until stop is closed.
type stallAfterHello struct {
	net.Conn
	stop <-chan struct{}
	sent bool
}

func (s *stallAfterHello) Write(b []byte) (int, error) {
	if s.sent {
		<-s.stop
		return 0, net.ErrClosed
	}
	s.sent = true
	return s.Conn.Write(b)
}

// flakyListener fails Accept with transient errors before it yields.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
}

func (f *flakyListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	if f.fails > 0 {
		f.fails--
		f.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	f.mu.Unlock()
	return f.Listener.Accept()
}

// Running out of file descriptors in a flood does not stop the listener
// for good (mochi's own accept loop would return on any error).
func TestListenerSurvivesAcceptErrors(t *testing.T) {
	p := newTestPKI(t)
	b, _ := newTestBroker(t, p, 0)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newGuardedListener(&flakyListener{Listener: raw, fails: 3}, "mqtt", nil, time.Second, nil, b.admit, b)
	defer l.Close()
	go func() {
		c, err := net.Dial("tcp", raw.Addr().String())
		if err == nil {
			defer c.Close()
			time.Sleep(2 * time.Second)
		}
	}()
	got := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if c != nil {
			c.Close()
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("Accept after transient errors: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept never returned the connection after transient errors")
	}
	if v := testutil.ToFloat64(b.metrics.connectionsRefused.WithLabelValues("mqtt", "accept-error")); v != 3 {
		t.Errorf("accept errors counted %v, want 3", v)
	}
}

// Close ends Accept with net.ErrClosed and aborts handshakes under way.
func TestListenerClose(t *testing.T) {
	p := newTestPKI(t)
	b, _ := newTestBroker(t, p, 1)
	l, accepted := listen(t, b, p)
	silent, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	time.Sleep(50 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case _, open := <-accepted:
		if open {
			t.Fatal("a connection was handed over after Close")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
	}
	// The silent connection's handshake was aborted: the peer sees EOF
	// long before the 3 s deadline.
	_ = silent.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || errors.Is(err, syscall.ETIMEDOUT) || isTimeout(err) {
		t.Errorf("handshake under way at Close: peer read %v, want EOF or reset", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// GuardHTTPS serves net/http through the broker's front door: requests
// see the TLS state (the client certificate), a response slower than the
// connect deadline still arrives (the accept deadline is cleared), and a
// refused handshake is counted under the listener's name.
func TestGuardHTTPS(t *testing.T) {
	p := newTestPKI(t)
	b, _ := newTestBroker(t, p, 1)
	cfg, err := ServerTLSConfig(p.server, p.roots, ProfileStrict, true)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	cfg.NextProtos = []string{"h2", "http/1.1"}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{TLSConfig: cfg, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "no client certificate seen", http.StatusForbidden)
			return
		}
		if r.URL.Path == "/slow" {
			time.Sleep(3500 * time.Millisecond) // beyond the 3 s connect deadline
		}
		_, _ = io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	})}
	go func() { _ = srv.Serve(b.GuardHTTPS(raw, "api", cfg)) }()
	t.Cleanup(func() { _ = srv.Close() })

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{
		RootCAs: p.roots, Certificates: []tls.Certificate{p.client}, ServerName: "127.0.0.1"}}}
	for _, path := range []string{"/", "/slow"} {
		resp, err := client.Get("https://" + raw.Addr().String() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "dev-1" {
			t.Fatalf("GET %s: %s %q", path, resp.Status, body)
		}
		if resp.ProtoMajor != 2 {
			t.Errorf("GET %s over %s, want HTTP/2", path, resp.Proto)
		}
	}
	old := &tls.Config{RootCAs: p.roots, ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS12}
	if c, err := tls.Dial("tcp", raw.Addr().String(), old); err == nil {
		c.Close()
		t.Fatal("a TLS 1.2 offer got through a strict listener")
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(b.metrics.handshakeFailures.WithLabelValues("api", "protocol-version")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the refused handshake was not counted under listener api")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// One source address over its own connection rate is refused at accept
// (reason source-rate) before it spends the listener's rate, and another
// address still gets in (limits.connection_rate_per_source).
func TestConnectionRatePerSource(t *testing.T) {
	p := newTestPKI(t)
	b, _ := newTestBroker(t, p, 2)
	l, _ := listenWith(t, b, p, func(l *guardedListener) {
		l.perSource = ratelimit.NewSet(0.001, 2, 16) // two connections, then (practically) none
	})
	for range 5 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	refused := b.metrics.connectionsRefused.WithLabelValues("mqtts", "source-rate")
	for deadline := time.Now().Add(5 * time.Second); testutil.ToFloat64(refused) < 3 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := testutil.ToFloat64(refused); n != 3 {
		t.Fatalf("refused for the source's rate: %v, want 3 of 5", n)
	}
	// Another loopback address is another source.
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	c, err := tls.DialWithDialer(d, "tcp", l.Addr().String(), &tls.Config{
		RootCAs: p.roots, Certificates: []tls.Certificate{p.client}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatalf("a device from another address: %v", err)
	}
	c.Close()
	if n := testutil.ToFloat64(b.metrics.connectionsRefused.WithLabelValues("mqtts", "rate")); n != 0 {
		t.Errorf("the listener's own rate refused %v connections", n)
	}
}
