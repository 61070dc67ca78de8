package wardentest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
)

// RogueCA is a certificate authority Warden has never heard of: what a man
// in the middle, or a forger of device certificates, brings along. Its
// certificates are well formed (ECDSA P-256, the usual extensions), so a
// refusal can only be about who signed them.
type RogueCA struct {
	// Cert is the self-signed CA certificate.
	Cert *x509.Certificate
	// Key signs the certificates the CA issues.
	Key *ecdsa.PrivateKey
}

// NewRogueCA creates a CA named name, valid from an hour ago for a day.
func NewRogueCA(t testing.TB, name string) *RogueCA {
	t.Helper()
	key := newECKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(t),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Not Warden"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("rogue CA: create the CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("rogue CA: parse the CA certificate: %v", err)
	}
	return &RogueCA{Cert: cert, Key: key}
}

// Pool returns a pool holding only this CA, for a client that trusts it.
func (ca *RogueCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// ServerCertificate issues a TLS server certificate for names (DNS names
// or IP addresses), chained to the CA.
func (ca *RogueCA) ServerCertificate(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if len(names) > 0 {
		tmpl.Subject.CommonName = names[0]
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	return ca.issue(t, tmpl)
}

// DeviceCertificate issues a client certificate that looks exactly like a
// Warden device certificate for id (CN and the urn:warden:device:<id> URI
// SAN) but is signed by this CA: a forged device identity.
func (ca *RogueCA) DeviceCertificate(t testing.TB, id string) tls.Certificate {
	t.Helper()
	return ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: id},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{identity.URI(identity.KindDevice, id)},
	})
}

func (ca *RogueCA) issue(t testing.TB, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key := newECKey(t)
	tmpl.SerialNumber = newSerial(t)
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatalf("rogue CA: issue %q: %v", tmpl.Subject.CommonName, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("rogue CA: parse %q: %v", tmpl.Subject.CommonName, err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}
}

func newECKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate a P-256 key: %v", err)
	}
	return key
}

func newSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("generate a serial number: %v", err)
	}
	return n
}

// WriteCredentials writes cert (its whole chain) and its key as PEM files
// into a directory the test removes, with caPEM as the CA file, for tools
// that take files (mosquitto_pub, sslscan, openssl). id names the files and
// becomes Creds.ID.
func WriteCredentials(t testing.TB, id string, cert tls.Certificate, ca *x509.Certificate) Creds {
	t.Helper()
	dir := t.TempDir()
	c := Creds{ID: id, Cert: filepath.Join(dir, id+".crt"), Key: filepath.Join(dir, id+".key"), CA: filepath.Join(dir, "ca.crt")}
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatalf("write credentials of %s: encode the key: %v", id, err)
	}
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{c.Cert, chain, 0o644},
		{c.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{c.CA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o644},
	} {
		if err := os.WriteFile(f.path, f.data, f.perm); err != nil {
			t.Fatalf("write credentials of %s: %v", id, err)
		}
	}
	return c
}

// PeerChain completes a handshake with addr as the device c would and
// returns the certificate chain the server presented (leaf first): how a
// test learns Warden's issuing CA, or its server certificate, from the
// outside.
func PeerChain(t testing.TB, addr string, c Creds) []*x509.Certificate {
	t.Helper()
	cert, pool := c.TLS(t)
	conn, err := DialTLS(t, addr, &cert, pool)
	if err != nil {
		t.Fatalf("handshake with %s as %s: %v", addr, c.ID, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates
}

// TLSAttempt is the outcome of one handshake a test makes on purpose.
type TLSAttempt struct {
	// Local is the client's address: the "remote" of Warden's audit line
	// about this attempt, which tells it from every other attempt.
	Local string
	// Version is the negotiated TLS version when the handshake succeeded.
	Version uint16
	// Err is why the server (or the client) refused; nil if the server
	// accepted the connection.
	Err error
}

// settleTimeout is how long TryTLS waits, after a TLS 1.3 handshake that
// looked successful, for the server's refusal of the client certificate.
// Only a connection the server accepts costs the whole wait.
const settleTimeout = 3 * time.Second

// TryTLS dials addr and runs a handshake with cfg. In TLS 1.3 the client's
// handshake ends before the server has checked the client certificate, so
// a refusal of it arrives as an alert afterwards: TryTLS then reads once,
// and an alert from the server is the refusal. Silence, or the server
// closing without an alert (an MQTT listener's connect deadline), means
// the handshake was accepted. The connection is closed before TryTLS
// returns.
func TryTLS(t testing.TB, addr string, cfg *tls.Config) TLSAttempt {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	a := TLSAttempt{Local: raw.LocalAddr().String()}
	conn := tls.Client(raw, cfg)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if a.Err = conn.HandshakeContext(ctx); a.Err != nil {
		return a
	}
	a.Version = conn.ConnectionState().Version
	if a.Version != tls.VersionTLS13 {
		return a // TLS 1.2 checks the client certificate inside the handshake
	}
	_ = conn.SetReadDeadline(time.Now().Add(settleTimeout))
	_, err = conn.Read(make([]byte, 1))
	// crypto/tls reports a received alert as a *net.OpError whose Op is
	// "remote error"; its alert type is not exported.
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		a.Err = err
	}
	return a
}

// MITMConfig shapes a man in the middle.
type MITMConfig struct {
	// Target is the host:port the proxy forwards to (one of Warden's
	// listeners).
	Target string
	// Certificate is what the proxy presents to its clients, terminating
	// their TLS; it then opens TLS of its own to Target. Nil makes a
	// transparent TCP relay that passes the bytes untouched, the control
	// that shows the proxy itself works.
	Certificate *tls.Certificate
	// UpstreamCertificate is the client certificate the proxy presents to
	// Target, if any. It never has the device's key.
	UpstreamCertificate *tls.Certificate
}

// MITM is a TCP proxy on loopback between a client and Warden. It serves
// until the test ends.
type MITM struct {
	// Addr is the proxy's own address: point the victim here.
	Addr string

	cfg MITMConfig
	ln  net.Listener
	wg  sync.WaitGroup

	mu          sync.Mutex
	conns       map[net.Conn]struct{}
	accepted    int
	intercepted int
	plaintext   int
	clientErrs  []error
	upErrs      []error
}

// maxClientHandshake bounds how long the proxy waits for a client's
// handshake: a client that refuses the proxy's certificate answers at once.
const maxClientHandshake = 10 * time.Second

// firstBytesWait bounds how long an intercepting proxy waits for its
// client to speak first.
const firstBytesWait = time.Second

// StartMITM starts a proxy; see MITMConfig.
func StartMITM(t testing.TB, cfg MITMConfig) *MITM {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mitm: listen: %v", err)
	}
	m := &MITM{Addr: ln.Addr().String(), cfg: cfg, ln: ln, conns: map[net.Conn]struct{}{}}
	m.wg.Add(1)
	go m.serve()
	t.Cleanup(m.close)
	return m
}

// StartRelay starts a transparent TCP relay to target.
func StartRelay(t testing.TB, target string) *MITM {
	t.Helper()
	return StartMITM(t, MITMConfig{Target: target})
}

func (m *MITM) close() {
	_ = m.ln.Close()
	m.mu.Lock()
	for c := range m.conns {
		_ = c.Close()
	}
	m.conns = nil // from now on track closes what it is given
	m.mu.Unlock()
	m.wg.Wait()
}

// track registers c for closing when the test ends; after that it closes
// c and reports false.
func (m *MITM) track(c net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conns == nil {
		_ = c.Close()
		return false
	}
	m.conns[c] = struct{}{}
	return true
}

func (m *MITM) serve() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return
		}
		m.mu.Lock()
		m.accepted++
		m.mu.Unlock()
		if !m.track(c) {
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.handle(c)
		}()
	}
}

func (m *MITM) handle(client net.Conn) {
	defer client.Close()
	if m.cfg.Certificate == nil {
		up, err := net.DialTimeout("tcp", m.cfg.Target, 5*time.Second)
		if err != nil {
			m.upstreamFailed(err)
			return
		}
		if m.track(up) {
			m.pipe(client, up, false)
		}
		return
	}
	tc := tls.Server(client, &tls.Config{
		Certificates: []tls.Certificate{*m.cfg.Certificate},
		// Ask for the device's certificate, as a real interceptor would:
		// it costs nothing, and the device may just send it.
		ClientAuth: tls.RequestClientCert,
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
	})
	ctx, cancel := context.WithTimeout(context.Background(), maxClientHandshake)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		m.mu.Lock()
		m.clientErrs = append(m.clientErrs, err)
		m.mu.Unlock()
		return
	}
	m.mu.Lock()
	m.intercepted++
	m.mu.Unlock()
	// Read what the client says first (an MQTT CONNECT, an HTTP request)
	// before going upstream, as an interceptor would: it is what it came
	// for, and it must not be lost if Warden then refuses the proxy.
	first := make([]byte, 32<<10)
	_ = tc.SetReadDeadline(time.Now().Add(firstBytesWait))
	n, _ := tc.Read(first)
	_ = tc.SetReadDeadline(time.Time{})
	first = first[:n]
	m.mu.Lock()
	m.plaintext += n
	m.mu.Unlock()
	upCfg := &tls.Config{
		// The attacker does not care whom it talks to upstream.
		InsecureSkipVerify: true, //nolint:gosec // this is the attacker
		ServerName:         "localhost",
		MinVersion:         tls.VersionTLS12,
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "" {
		upCfg.NextProtos = []string{p}
	}
	if m.cfg.UpstreamCertificate != nil {
		upCfg.Certificates = []tls.Certificate{*m.cfg.UpstreamCertificate}
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	up, err := tls.DialWithDialer(d, "tcp", m.cfg.Target, upCfg)
	if err != nil {
		m.upstreamFailed(err)
		return
	}
	if !m.track(up) {
		return
	}
	if _, err := up.Write(first); err != nil {
		m.upstreamFailed(err)
		_ = up.Close()
		return
	}
	m.pipe(tc, up, true)
}

func (m *MITM) upstreamFailed(err error) {
	m.mu.Lock()
	m.upErrs = append(m.upErrs, err)
	m.mu.Unlock()
}

// pipe copies both ways until either side ends, counting the bytes the
// client sent when count is set (plaintext the proxy could read).
func (m *MITM) pipe(client, up net.Conn, count bool) {
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(client, up)
		_ = client.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			if count {
				m.mu.Lock()
				m.plaintext += n
				m.mu.Unlock()
			}
			if _, werr := up.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = up.Close()
	<-done
}

// MITMStats is what the proxy saw.
type MITMStats struct {
	// Accepted counts TCP connections from clients.
	Accepted int
	// Intercepted counts clients that completed a handshake with the
	// proxy's certificate: each one is a successful man in the middle.
	Intercepted int
	// Plaintext is how many bytes the proxy read in the clear from
	// intercepted clients.
	Plaintext int
	// ClientErrors are the handshake failures with clients, as the proxy
	// saw them ("remote error: tls: bad certificate" when the client
	// refused the proxy's certificate).
	ClientErrors []error
	// UpstreamErrors are the proxy's failures to reach Target.
	UpstreamErrors []error
}

// Stats returns what the proxy has seen so far.
func (m *MITM) Stats() MITMStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return MITMStats{
		Accepted: m.accepted, Intercepted: m.intercepted, Plaintext: m.plaintext,
		ClientErrors:   append([]error(nil), m.clientErrs...),
		UpstreamErrors: append([]error(nil), m.upErrs...),
	}
}
