package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/enrollproto"
)

// ErrEnrollRefused is wrapped by the error of an enrollment Warden refused
// (EST 403, an MQTT "refused" answer, or a claim connection the broker
// turned away). Warden answers every refusal alike, so the SDK cannot say
// which check failed; Warden's log and audit log can.
var ErrEnrollRefused = errors.New("Warden refused the enrollment: is the device preregistered, is this its secret / is it on the claim certificate's allow-list, and has it not enrolled already?")

// DefaultEnrollTimeout bounds EnrollMQTT when EnrollMQTTConfig.Timeout is
// zero: connecting, subscribing, sending the CSR and waiting for Warden's
// answer.
const DefaultEnrollTimeout = 30 * time.Second

// Values of Config.RenewVia and RenewOptions.Via.
const (
	// RenewViaMQTT sends the CSR on private/<id>/cert/csr over the client's
	// connection and takes the answer from private/<id>/cert/new.
	RenewViaMQTT = "mqtt"
	// RenewViaEST posts the CSR to EST simplereenroll, authenticated by
	// the current certificate.
	RenewViaEST = "est"
)

// estResponseHeaderTimeout bounds the wait for an EST answer's headers; the
// request as a whole is bounded by the caller's context.
const estResponseHeaderTimeout = 30 * time.Second

// EnrollConfig describes an enrollment over EST (Enroll).
type EnrollConfig struct {
	// Server is the https:// base URL of Warden's api listener, e.g.
	// "https://warden.example.com:8443". Required.
	Server string

	// RootCAs is the pinned Warden root. Required: it authenticates the
	// server and the issued certificate must chain to it. The system roots
	// are never consulted.
	RootCAs *x509.CertPool

	// DeviceID is the ID the device enrolls as: the CSR's common name and
	// the certificate's urn:warden:device: URI SAN. Required.
	DeviceID string

	// Key is the device's own P-256 key. Only its crypto.Signer side is
	// used, so it may live on a secure element and never leave it; the
	// CSR's signature proves possession of it. Other curves and key types
	// are refused (Warden issues P-256 certificates only).
	Key crypto.Signer

	// Secret is the enrollment secret from the device's secret file
	// (enrollproto.ParseSecretFile). It is never sent: the request carries
	// an HMAC over the device ID and the CSR. Set Secret or
	// ClaimCertificate, not both.
	Secret []byte

	// ClaimCertificate is a fleet claim certificate with its key
	// (`warden claim-cert create`), presented as the TLS client
	// certificate. Set Secret or ClaimCertificate, not both.
	ClaimCertificate *tls.Certificate

	// ClaimToken, if set, is an app's claim token (a compact JWE the device
	// cannot read) sent along, so that the device is bound to the app's
	// user in the same step.
	ClaimToken string

	// HTTPClient makes the request. By default Enroll builds one: TLS 1.2
	// or later with RootCAs as the only trust anchor, the claim certificate
	// as client certificate when one is given (and no client certificate
	// otherwise), no proxy, no redirects. A client given here must pin
	// RootCAs itself (an *http.Transport without RootCAs is refused);
	// whatever it does, the issued certificate is still checked against
	// RootCAs.
	HTTPClient *http.Client
}

// Enroll signs the device up over EST (docs/onboarding.md, "Enrollment"):
// it makes a CSR with cfg.Key whose common name is the device ID, posts it
// to simpleenroll authorized by the enrollment secret's proof or the claim
// certificate, and checks the answer before trusting it: the certificate
// must be for cfg.Key, name exactly this device and chain to the pinned
// root for client authentication.
//
// The result holds the certificate and its chain, with cfg.Key as its
// private key, ready for Config.Certificate. Store it: an enrollment
// secret enrolls once. A refusal wraps ErrEnrollRefused.
func Enroll(ctx context.Context, cfg EnrollConfig) (tls.Certificate, error) {
	base, err := cfg.validate()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("device: enroll: %w", err)
	}
	csr, err := newCSR(cfg.Key, cfg.DeviceID)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("device: enroll %s: %w", cfg.DeviceID, err)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = estHTTPClient(cfg.RootCAs, func() *tls.Certificate { return cfg.ClaimCertificate })
		defer hc.CloseIdleConnections()
	}
	hdr := http.Header{}
	if cfg.Secret != nil {
		hdr.Set(enrollproto.HeaderProof, enrollproto.EncodeProofHeader(enrollproto.Proof(cfg.Secret, cfg.DeviceID, csr)))
	}
	if cfg.ClaimToken != "" {
		hdr.Set(enrollproto.HeaderClaimToken, cfg.ClaimToken)
	}
	certs, err := estPost(ctx, hc, base+enrollproto.PathSimpleEnroll, csr, hdr, ErrEnrollRefused)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("device: enroll %s: %w", cfg.DeviceID, err)
	}
	cert, err := checkIssued(certs, cfg.Key, cfg.DeviceID, cfg.RootCAs, time.Now())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("device: enroll %s: Warden's answer is not trusted: %w", cfg.DeviceID, err)
	}
	return cert, nil
}

func (cfg EnrollConfig) validate() (string, error) {
	base, err := parseESTBase("EnrollConfig.Server", cfg.Server)
	if err != nil {
		return "", err
	}
	if cfg.RootCAs == nil {
		return "", errors.New("EnrollConfig.RootCAs is nil; it must hold the Warden root: the system roots are never used")
	}
	if err := validDeviceID("EnrollConfig.DeviceID", cfg.DeviceID); err != nil {
		return "", err
	}
	if err := checkP256("EnrollConfig.Key", cfg.Key); err != nil {
		return "", err
	}
	switch {
	case cfg.Secret == nil && cfg.ClaimCertificate == nil:
		return "", errors.New("neither EnrollConfig.Secret nor EnrollConfig.ClaimCertificate is set; enrollment needs one of them")
	case cfg.Secret != nil && cfg.ClaimCertificate != nil:
		return "", errors.New("both EnrollConfig.Secret and EnrollConfig.ClaimCertificate are set; give one: Warden takes the claim certificate and ignores the proof")
	case cfg.Secret != nil && len(cfg.Secret) != enrollproto.SecretSize:
		return "", fmt.Errorf("EnrollConfig.Secret is %d bytes, not %d; pass the Secret of enrollproto.ParseSecretFile", len(cfg.Secret), enrollproto.SecretSize)
	case cfg.ClaimCertificate != nil:
		if err := checkClaimCertificate("EnrollConfig.ClaimCertificate", *cfg.ClaimCertificate); err != nil {
			return "", err
		}
	}
	if err := validClaimToken("EnrollConfig.ClaimToken", cfg.ClaimToken); err != nil {
		return "", err
	}
	if cfg.HTTPClient != nil {
		if t, ok := cfg.HTTPClient.Transport.(*http.Transport); ok && (t.TLSClientConfig == nil || t.TLSClientConfig.RootCAs == nil) {
			return "", errors.New("EnrollConfig.HTTPClient's transport has no RootCAs; pin the Warden root there too, or leave HTTPClient nil")
		}
		if cfg.HTTPClient.Transport == nil {
			return "", errors.New("EnrollConfig.HTTPClient uses http.DefaultTransport, which trusts the system roots; give it a transport that pins the Warden root, or leave HTTPClient nil")
		}
	}
	return base, nil
}

// FetchCACerts asks Warden's EST cacerts (no authentication) for its root
// and issuing CA certificates, over a connection authenticated by roots.
// Every certificate returned is a CA that chains to roots.
func FetchCACerts(ctx context.Context, server string, roots *x509.CertPool) ([]*x509.Certificate, error) {
	base, err := parseESTBase("server", server)
	if err != nil {
		return nil, fmt.Errorf("device: fetch CA certificates: %w", err)
	}
	if roots == nil {
		return nil, errors.New("device: fetch CA certificates: roots is nil; it must hold the Warden root")
	}
	hc := estHTTPClient(roots, nil)
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+enrollproto.PathCACerts, nil)
	if err != nil {
		return nil, fmt.Errorf("device: fetch CA certificates: %w", err)
	}
	req.Header.Set("Accept", "application/pkcs7-mime")
	certs, err := estDo(hc, req, nil)
	if err != nil {
		return nil, fmt.Errorf("device: fetch CA certificates from %s: %w", base, err)
	}
	inter := x509.NewCertPool()
	for _, c := range certs {
		inter.AddCert(c)
	}
	for i, c := range certs {
		if !c.IsCA {
			return nil, fmt.Errorf("device: fetch CA certificates from %s: certificate %d (%q) is not a CA", base, i+1, c.Subject.String())
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, fmt.Errorf("device: fetch CA certificates from %s: certificate %d (%q) does not chain to the pinned root: %w", base, i+1, c.Subject.String(), err)
		}
	}
	return certs, nil
}

// EnrollMQTTConfig describes an enrollment over the broker with a fleet
// claim certificate (EnrollMQTT).
type EnrollMQTTConfig struct {
	// Servers are the broker URLs, tried in order: "mqtts://host:8883"
	// or "wss://host:8884/mqtt". Required.
	Servers []string

	// RootCAs is the pinned Warden root. Required.
	RootCAs *x509.CertPool

	// ServerName overrides the host name the broker's certificate is
	// checked against (by default the host of each server URL).
	ServerName string

	// DeviceID is the ID the device enrolls as; it is also the MQTT client
	// ID, which must be on the claim certificate's allow-list. Required.
	DeviceID string

	// Key is the device's own P-256 key, used only as a crypto.Signer.
	// Required.
	Key crypto.Signer

	// ClaimCertificate is the fleet claim certificate and its key,
	// presented as the TLS client certificate. Required.
	ClaimCertificate tls.Certificate

	// ClaimToken, if set, is an app's claim token sent along.
	ClaimToken string

	// Timeout bounds the whole enrollment (default DefaultEnrollTimeout).
	Timeout time.Duration
}

// EnrollMQTT signs the device up over MQTT with a fleet claim certificate
// (docs/onboarding.md): it connects with the claim certificate and the
// device ID as client ID, subscribes private/<id>/cert/new, publishes a CSR
// on private/<id>/cert/csr, waits for the answer to its request and
// disconnects. The certificate is checked as in Enroll. A refusal wraps
// ErrEnrollRefused.
func EnrollMQTT(ctx context.Context, cfg EnrollMQTTConfig) (tls.Certificate, error) {
	servers, timeout, err := cfg.validate()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("device: enroll over MQTT: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	csr, err := newCSR(cfg.Key, cfg.DeviceID)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("device: enroll %s over MQTT: %w", cfg.DeviceID, err)
	}
	claim := cfg.ClaimCertificate
	tc := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    cfg.RootCAs,
		ServerName: cfg.ServerName,
		// As tlsConfig: send the certificate whatever CAs the broker names.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &claim, nil },
	}
	var errs []error
	for _, u := range servers {
		certs, final, err := enrollOverMQTT(ctx, u, tc, min(timeout, DefaultConnectTimeout), cfg, csr)
		if err == nil {
			cert, err := checkIssued(certs, cfg.Key, cfg.DeviceID, cfg.RootCAs, time.Now())
			if err != nil {
				return tls.Certificate{}, fmt.Errorf("device: enroll %s over MQTT: Warden's answer is not trusted: %w", cfg.DeviceID, err)
			}
			return cert, nil
		}
		// Warden's answer, a refusal included, is what another server of
		// the same Warden would give too.
		if final || ctx.Err() != nil {
			return tls.Certificate{}, fmt.Errorf("device: enroll %s over MQTT: %w", cfg.DeviceID, err)
		}
		errs = append(errs, err)
	}
	return tls.Certificate{}, fmt.Errorf("device: enroll %s over MQTT: no server answered: %w", cfg.DeviceID, errors.Join(errs...))
}

func (cfg EnrollMQTTConfig) validate() ([]*url.URL, time.Duration, error) {
	if len(cfg.Servers) == 0 {
		return nil, 0, errors.New("EnrollMQTTConfig.Servers is empty; give at least one mqtts:// or wss:// URL")
	}
	var servers []*url.URL
	for i, raw := range cfg.Servers {
		u, err := parseServer(raw, false)
		if err != nil {
			return nil, 0, fmt.Errorf("EnrollMQTTConfig.Servers[%d]: %w", i, err)
		}
		servers = append(servers, u)
	}
	if cfg.RootCAs == nil {
		return nil, 0, errors.New("EnrollMQTTConfig.RootCAs is nil; it must hold the Warden root: the system roots are never used")
	}
	if err := validDeviceID("EnrollMQTTConfig.DeviceID", cfg.DeviceID); err != nil {
		return nil, 0, err
	}
	if err := checkP256("EnrollMQTTConfig.Key", cfg.Key); err != nil {
		return nil, 0, err
	}
	if err := checkClaimCertificate("EnrollMQTTConfig.ClaimCertificate", cfg.ClaimCertificate); err != nil {
		return nil, 0, err
	}
	if err := validClaimToken("EnrollMQTTConfig.ClaimToken", cfg.ClaimToken); err != nil {
		return nil, 0, err
	}
	switch {
	case cfg.Timeout < 0:
		return nil, 0, fmt.Errorf("EnrollMQTTConfig.Timeout %v must not be negative", cfg.Timeout)
	case cfg.Timeout == 0:
		return servers, DefaultEnrollTimeout, nil
	}
	return servers, cfg.Timeout, nil
}

// enrollMQTTReceiveMaximum is the Receive Maximum of a claim connection: it
// expects one message.
const enrollMQTTReceiveMaximum = 4

// enrollOverMQTT runs one enrollment exchange with the broker at u and
// returns the certificates of an "issued" answer, unchecked. final is true
// when the error is Warden's answer (a refusal, or status "error"), which
// trying another server would not change.
func enrollOverMQTT(ctx context.Context, u *url.URL, tc *tls.Config, connectTimeout time.Duration, cfg EnrollMQTTConfig, csr []byte) (certs []*x509.Certificate, final bool, err error) {
	server := u.Redacted()
	conn, err := dial(ctx, u, tc, connectTimeout)
	if err != nil {
		return nil, false, err
	}
	reqID, err := newRequestID()
	if err != nil {
		_ = conn.Close()
		return nil, true, err
	}
	newTopic := enrollproto.Topic(cfg.DeviceID, enrollproto.ChannelNew)
	answers := make(chan enrollproto.CertResponse, 1)
	cli := paho.NewClient(paho.ClientConfig{
		Conn:     conn,
		ClientID: cfg.DeviceID,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			if pr.Packet.Topic != newTopic {
				return false, nil
			}
			r, err := enrollproto.ParseCertResponse(pr.Packet.Payload)
			if err != nil || r.RequestID != reqID {
				return true, nil // not the answer to this request
			}
			select {
			case answers <- r:
			default:
			}
			return true, nil
		}},
	})
	rm := uint16(enrollMQTTReceiveMaximum)
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	ca, err := cli.Connect(cctx, &paho.Connect{
		ClientID:   cfg.DeviceID,
		CleanStart: true,
		KeepAlive:  uint16(DefaultKeepAlive / time.Second),
		Properties: &paho.ConnectProperties{ReceiveMaximum: &rm},
	})
	cancel()
	if ca != nil && ca.ReasonCode >= 0x80 {
		var reason string
		if ca.Properties != nil {
			reason = ca.Properties.ReasonString
		}
		msg := fmt.Sprintf("%s: the broker refused the claim connection: reason code 0x%02X (%s)", server, ca.ReasonCode, reasonName(ca.ReasonCode))
		if reason != "" {
			msg += ": " + reason
		}
		if transientConnack(ca.ReasonCode) {
			return nil, false, errors.New(msg)
		}
		return nil, true, fmt.Errorf("%w (%s)", ErrEnrollRefused, msg)
	}
	if err != nil {
		_ = conn.Close()
		if rejectedCertificate(err) {
			return nil, true, fmt.Errorf("%s: the broker rejected the claim certificate (is it issued by this Warden, unexpired and not revoked?): %w", server, err)
		}
		return nil, false, fmt.Errorf("%s: MQTT connect failed: %w", server, err)
	}
	defer func() { _ = cli.Disconnect(&paho.Disconnect{ReasonCode: 0}) }()

	sa, err := cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: newTopic, QoS: 1}}})
	if err == nil && (sa == nil || len(sa.Reasons) != 1) {
		err = errors.New("the SUBACK does not carry exactly one reason code")
	}
	if err != nil {
		return nil, false, fmt.Errorf("%s: subscribe to %q: %w", server, newTopic, err)
	}
	if code := sa.Reasons[0]; code >= 0x80 {
		return nil, true, fmt.Errorf("%w (%w)", ErrEnrollRefused, &RefusedError{Op: "subscribe", Target: newTopic, ReasonCode: code})
	}

	payload, err := json.Marshal(enrollproto.CSRRequest{RequestID: reqID, CSR: csr, ClaimToken: cfg.ClaimToken})
	if err != nil {
		return nil, true, fmt.Errorf("encode the CSR message: %w", err)
	}
	csrTopic := enrollproto.Topic(cfg.DeviceID, enrollproto.ChannelCSR)
	pr, err := cli.Publish(ctx, &paho.Publish{Topic: csrTopic, QoS: 1, Payload: payload})
	if pr != nil && pr.ReasonCode >= 0x80 {
		var reason string
		if pr.Properties != nil {
			reason = pr.Properties.ReasonString
		}
		return nil, true, fmt.Errorf("%w (%w)", ErrEnrollRefused, &RefusedError{Op: "publish", Target: csrTopic, ReasonCode: pr.ReasonCode, Reason: reason})
	}
	if err != nil {
		return nil, false, fmt.Errorf("%s: publish the CSR: %w", server, err)
	}

	select {
	case r := <-answers:
		certs, err := answerCertificates(r, ErrEnrollRefused)
		return certs, true, err
	case <-cli.Done():
		return nil, false, fmt.Errorf("%s: the connection ended before Warden answered", server)
	case <-ctx.Done():
		return nil, false, fmt.Errorf("%s: no answer from Warden on %s: %w", server, newTopic, ctx.Err())
	}
}

// answerCertificates turns a CertResponse to one of the device's requests
// into its certificates, unchecked; refused wraps a "refused" status.
func answerCertificates(r enrollproto.CertResponse, refused error) ([]*x509.Certificate, error) {
	switch r.Status {
	case enrollproto.StatusIssued:
		certs, err := r.Certificates()
		if err != nil {
			return nil, fmt.Errorf("Warden's answer: %w", err)
		}
		return certs, nil
	case enrollproto.StatusRefused:
		return nil, refused
	default:
		return nil, errors.New("Warden could not issue the certificate (status \"error\"); try again later")
	}
}

// newCSR makes the PKCS#10 request Warden expects: the device ID as common
// name and nothing else, signed by key (the proof of possession).
func newCSR(key crypto.Signer, id string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: id},
		SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, key)
	if err != nil {
		return nil, fmt.Errorf("make the CSR (does the key sign?): %w", err)
	}
	return der, nil
}

// newRequestID returns a random request ID of the enrollproto grammar.
func newRequestID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("make a request ID: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// checkP256 refuses anything but a P-256 ECDSA key: Warden issues P-256
// certificates only, and would refuse the CSR anyway.
func checkP256(what string, key crypto.Signer) error {
	if key == nil {
		return fmt.Errorf("%s is nil; give the device's P-256 key (a crypto.Signer)", what)
	}
	pub, ok := key.Public().(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("%s is a %T key; Warden issues certificates for P-256 ECDSA keys only", what, key.Public())
	}
	if pub.Curve != elliptic.P256() {
		return fmt.Errorf("%s is on %s; Warden issues certificates for P-256 keys only", what, pub.Curve.Params().Name)
	}
	return nil
}

// validDeviceID checks the device-ID grammar through enrollproto, whose
// topics carry the ID: an ID that makes no valid onboarding topic is not
// one.
func validDeviceID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if got, _, ok := enrollproto.ParseTopic(enrollproto.Topic(id, enrollproto.ChannelCSR)); !ok || got != id {
		return fmt.Errorf("%s %q is not a device ID: 1-64 characters of letters, digits, '_' or '-', starting with a letter or digit", what, id)
	}
	return nil
}

// validClaimToken checks an optional claim token's shape with enrollproto's
// rules, so that a token Warden could not take fails here.
func validClaimToken(what, token string) error {
	if token == "" {
		return nil
	}
	if err := (enrollproto.ClaimRequest{RequestID: "x", Token: token}).Validate(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// checkClaimCertificate checks that a claim certificate has a key that
// belongs to it, so that a mixed-up file fails here rather than as a TLS
// alert.
func checkClaimCertificate(what string, cert tls.Certificate) error {
	if len(cert.Certificate) == 0 {
		return fmt.Errorf("%s is empty; load it with tls.LoadX509KeyPair", what)
	}
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	key, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return fmt.Errorf("%s has no usable private key (%T)", what, cert.PrivateKey)
	}
	if err := keyMatches(leaf, key); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// deviceURNPrefix starts every Warden identity URI SAN; a device's is
// urn:warden:device:<id>. It repeats internal/identity's form, which this
// public package's new code does not import.
const deviceURNPrefix = "urn:warden:"

// namesDevice checks that leaf carries exactly one Warden identity URI SAN
// and that it is urn:warden:device:<id>, as Warden's broker reads it.
func namesDevice(leaf *x509.Certificate, id string) error {
	want := deviceURNPrefix + "device:" + id
	var found []string
	for _, u := range leaf.URIs {
		if s := u.String(); strings.HasPrefix(s, deviceURNPrefix) {
			found = append(found, s)
		}
	}
	switch {
	case len(found) == 0:
		return fmt.Errorf("the certificate carries no urn:warden: URI SAN; it must name %s", want)
	case len(found) > 1:
		return fmt.Errorf("the certificate carries %d urn:warden: URI SANs; exactly one (%s) is allowed", len(found), want)
	case found[0] != want:
		return fmt.Errorf("the certificate names %q, not this device (%s)", found[0], want)
	}
	return nil
}

// checkIssued checks certificates Warden issued to the device (leaf first,
// then its chain) before the device trusts them: the leaf is for key,
// names exactly device id, and chains through the given chain to roots for
// client authentication. It returns the certificate ready for TLS, with
// key as its private key.
//
// The validity period is checked at now, or at the leaf's NotBefore when
// now is earlier: a device whose clock lags (no real-time clock, not yet
// synchronised) must still take a certificate issued a moment ago.
func checkIssued(certs []*x509.Certificate, key crypto.Signer, id string, roots *x509.CertPool, now time.Time) (tls.Certificate, error) {
	if len(certs) == 0 {
		return tls.Certificate{}, errors.New("the answer holds no certificate")
	}
	if roots == nil {
		return tls.Certificate{}, errors.New("no pinned root to check the certificate against")
	}
	leaf := certs[0]
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return tls.Certificate{}, fmt.Errorf("the certificate (serial %s) is for another key than the device's", leaf.SerialNumber.Text(16))
	}
	if err := namesDevice(leaf, id); err != nil {
		return tls.Certificate{}, err
	}
	if now.Before(leaf.NotBefore) {
		now = leaf.NotBefore
	}
	if !now.Before(leaf.NotAfter) {
		return tls.Certificate{}, fmt.Errorf("the certificate expired at %s (is the device clock right?)", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return tls.Certificate{}, fmt.Errorf("the certificate does not chain to the pinned Warden root for client authentication: %w", err)
	}
	out := tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range certs {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out, nil
}

// parseESTBase reads an EST base URL: https, a host, no user information,
// query or fragment; a path prefix is kept.
func parseESTBase(what, raw string) (string, error) {
	if raw == "" {
		return "", fmt.Errorf("%s is empty; give Warden's api address, e.g. https://warden.example.com:8443", what)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	switch {
	case !strings.EqualFold(u.Scheme, "https"):
		return "", fmt.Errorf("%s %q is not an https:// URL", what, u.Redacted())
	case u.Host == "":
		return "", fmt.Errorf("%s %q has no host", what, u.Redacted())
	case u.User != nil:
		return "", fmt.Errorf("%s %q carries user information; devices authenticate with a proof or a certificate", what, u.Redacted())
	case u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("%s %q has a query or fragment; give the scheme, host and port (and a path prefix, if any)", what, u.Redacted())
	}
	u.Scheme = "https"
	return strings.TrimSuffix(u.String(), "/"), nil
}

// estHTTPClient is the HTTPS client of the EST requests: TLS 1.2 or later
// (ECDHE with AEAD only in 1.2) with roots as the only trust anchor, the
// certificate cert returns (if any) as client certificate, no proxy and no
// redirects.
func estHTTPClient(roots *x509.CertPool, cert func() *tls.Certificate) *http.Client {
	tc := &tls.Config{
		MinVersion:    tls.VersionTLS12,
		CipherSuites:  otaTLS12Suites(),
		RootCAs:       roots,
		Renegotiation: tls.RenegotiateNever,
	}
	if cert != nil {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := cert(); c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil // no client certificate
		}
	}
	d := &net.Dialer{Timeout: DefaultConnectTimeout, KeepAlive: 30 * time.Second}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil, // never a proxy from the environment
			DialContext:           d.DialContext,
			TLSClientConfig:       tc,
			TLSHandshakeTimeout:   DefaultConnectTimeout,
			ResponseHeaderTimeout: estResponseHeaderTimeout,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          1,
			IdleConnTimeout:       30 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// estPost posts a CSR to an EST endpoint and returns the answer's
// certificates, unchecked. A 403 wraps refused.
func estPost(ctx context.Context, hc *http.Client, endpoint string, csr []byte, hdr http.Header, refused error) ([]*x509.Certificate, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(enrollproto.EncodeCSRBody(csr)))
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", enrollproto.ContentTypePKCS10)
	req.Header.Set("Content-Transfer-Encoding", "base64")
	req.Header.Set("Accept", "application/pkcs7-mime")
	return estDo(hc, req, refused)
}

// estDo sends an EST request and reads a certs-only answer, bounded by
// enrollproto.MaxBody.
func estDo(hc *http.Client, req *http.Request, refused error) ([]*x509.Certificate, error) {
	endpoint := req.URL.Redacted()
	resp, err := hc.Do(req)
	if err != nil {
		var ve *tls.CertificateVerificationError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%s: the server's certificate is not signed by the pinned Warden root (or not for this host): %w", endpoint, err)
		}
		return nil, fmt.Errorf("%s: %w", endpoint, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, enrollproto.MaxBody+1))
	if err != nil {
		return nil, fmt.Errorf("%s: read the answer: %w", endpoint, err)
	}
	switch {
	case resp.StatusCode == http.StatusForbidden && refused != nil:
		return nil, fmt.Errorf("%s answered 403: %w", endpoint, refused)
	case resp.StatusCode >= 500:
		return nil, fmt.Errorf("%s answered %s: Warden failed; try again later (%s)", endpoint, resp.Status, snippet(body))
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%s answered %s: %s", endpoint, resp.Status, snippet(body))
	case len(body) > enrollproto.MaxBody:
		return nil, fmt.Errorf("%s: the answer is larger than %d bytes", endpoint, enrollproto.MaxBody)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/pkcs7-mime" {
			return nil, fmt.Errorf("%s: the answer is %q, not %s", endpoint, ct, enrollproto.ContentTypeCertsOnly)
		}
	}
	certs, err := enrollproto.DecodeCertsOnly(body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", endpoint, err)
	}
	return certs, nil
}

// snippet quotes the start of an error body for an error message.
func snippet(body []byte) string {
	const n = 200
	if len(body) > n {
		body = body[:n]
	}
	return strconv.Quote(strings.TrimSpace(string(body)))
}
