package device

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warden-iot/warden/enrollproto"
)

// This file holds the fakes of Warden's onboarding side, written from
// docs/onboarding.md (the real one is internal/onboard): an issuing CA under
// the test root, an EST server, a broker hook that admits fleet claim
// certificates, a recorder of the certificates devices connect with, and an
// MQTT responder on private/<id>/cert/csr and private/<id>/claim.

// newIssuingCA is an issuing CA under root, as Warden's pki keeps one (and
// a second one during a CA rotation). Its pool is root's: devices pin the
// root only.
func newIssuingCA(t testing.TB, root *testCA, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.cert, key.Public(), root.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pool: root.pool}
}

// issueLeaf signs a client certificate for pub naming uris, valid from
// notBefore for lifetime.
func issueLeaf(t testing.TB, ca *testCA, cn string, uris []string, pub crypto.PublicKey, notBefore time.Time, lifetime time.Duration) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    notBefore,
		NotAfter:     notBefore.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func deviceURN(id string) string { return "urn:warden:device:" + id }

func newP256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// tlsCert bundles a leaf, its chain and key.
func tlsCert(key crypto.Signer, certs ...*x509.Certificate) tls.Certificate {
	c := tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, x := range certs {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// Answers the fakes can give to a CSR, beside a proper certificate.
const (
	answerIssue       = "issue"
	answerOtherKey    = "other-key"    // a certificate for another key
	answerOtherDevice = "other-device" // a certificate naming another device
	answerTwoNames    = "two-names"    // a certificate with a second Warden URI SAN
	answerForeignCA   = "foreign-ca"   // a certificate from a CA under another root
	answerServerAuth  = "server-auth"  // a certificate not for client authentication
	answerRefuse      = "refuse"
	answerError       = "error"
	answerSilent      = "silent" // no answer at all
)

// issuer plays Warden's CA for the fakes.
type issuer struct {
	t        testing.TB
	root     *testCA
	issuing  *testCA
	foreign  *testCA // another root's issuing CA
	lifetime time.Duration

	mu      sync.Mutex
	answers []string // the next answers, in order; then answerIssue
	issued  []*x509.Certificate
}

func newIssuer(t testing.TB, root *testCA) *issuer {
	t.Helper()
	other, err := newTestCA("some other root")
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{
		t: t, root: root, issuing: newIssuingCA(t, root, "warden issuing 1"),
		foreign: newIssuingCA(t, other, "foreign issuing"), lifetime: time.Hour,
	}
}

// queue sets the next answers.
func (is *issuer) queue(answers ...string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.answers = append(is.answers, answers...)
}

func (is *issuer) next() string {
	is.mu.Lock()
	defer is.mu.Unlock()
	if len(is.answers) == 0 {
		return answerIssue
	}
	a := is.answers[0]
	is.answers = is.answers[1:]
	return a
}

func (is *issuer) issuedCount() int {
	is.mu.Lock()
	defer is.mu.Unlock()
	return len(is.issued)
}

func (is *issuer) lastIssued() *x509.Certificate {
	is.mu.Lock()
	defer is.mu.Unlock()
	if len(is.issued) == 0 {
		return nil
	}
	return is.issued[len(is.issued)-1]
}

// issue answers a CSR as answer says: the certificates (leaf first), or
// the status to answer with.
func (is *issuer) issue(csrDER []byte, answer string) ([]*x509.Certificate, string, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, "", err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", fmt.Errorf("CSR signature: %w", err)
	}
	id := csr.Subject.CommonName
	pub, ca, uris := csr.PublicKey, is.issuing, []string{deviceURN(id)}
	eku := x509.ExtKeyUsageClientAuth
	switch answer {
	case answerRefuse:
		return nil, enrollproto.StatusRefused, nil
	case answerError:
		return nil, enrollproto.StatusError, nil
	case answerOtherKey:
		pub = newP256(is.t).Public()
	case answerOtherDevice:
		uris = []string{deviceURN(id + "x")}
	case answerTwoNames:
		uris = append(uris, deviceURN(id+"x"))
	case answerForeignCA:
		ca = is.foreign
	case answerServerAuth:
		eku = x509.ExtKeyUsageServerAuth
	}
	leaf := issueLeaf(is.t, ca, id, uris, pub, time.Now(), is.lifetime)
	if eku != x509.ExtKeyUsageClientAuth {
		leaf = is.reissueWithEKU(ca, leaf, pub, eku)
	}
	is.mu.Lock()
	is.issued = append(is.issued, leaf)
	is.mu.Unlock()
	return []*x509.Certificate{leaf, ca.cert}, enrollproto.StatusIssued, nil
}

func (is *issuer) reissueWithEKU(ca *testCA, leaf *x509.Certificate, pub crypto.PublicKey, eku x509.ExtKeyUsage) *x509.Certificate {
	tmpl := *leaf
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{eku}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.cert, pub, ca.key)
	if err != nil {
		is.t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		is.t.Fatal(err)
	}
	return c
}

// fakeEST is Warden's EST side on an httptest server with a real TLS
// certificate from the test root. It asks for, but does not require,
// client certificates, as Warden's api listener does.
type fakeEST struct {
	t      testing.TB
	srv    *httptest.Server
	is     *issuer
	secret []byte // the enrollment secret of device id
	id     string

	mu       sync.Mutex
	requests []estRequest
	status   int // answer with this HTTP status instead, if set
}

// estRequest is what the fake saw of one request.
type estRequest struct {
	path        string
	contentType string
	cte         string
	proof       string
	claimToken  string
	clientCert  *x509.Certificate
	csrCN       string
}

func newFakeEST(t testing.TB, root *testCA, is *issuer, id string) *fakeEST {
	t.Helper()
	secret, err := enrollproto.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeEST{t: t, is: is, secret: secret, id: id}
	srvCert, err := root.serverCert([]string{"localhost"}, localhost)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+enrollproto.PathCACerts, f.cacerts)
	mux.HandleFunc("POST "+enrollproto.PathSimpleEnroll, f.enroll)
	mux.HandleFunc("POST "+enrollproto.PathSimpleReenroll, f.reenroll)
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes the tests make fail on purpose
	f.srv.TLS = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{srvCert},
		ClientCAs:    root.pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
	}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeEST) url() string { return f.srv.URL }

func (f *fakeEST) setStatus(code int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status = code
}

func (f *fakeEST) seen() []estRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

func (f *fakeEST) cacerts(w http.ResponseWriter, _ *http.Request) {
	body, err := enrollproto.EncodeCertsOnly([]*x509.Certificate{f.is.root.cert, f.is.issuing.cert})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeCertsOnly(w, body)
}

func writeCertsOnly(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", enrollproto.ContentTypeCertsOnly)
	w.Header().Set("Content-Transfer-Encoding", "base64")
	_, _ = w.Write(body)
}

// read records a request and returns its CSR, or answers it and returns
// nil.
func (f *fakeEST) read(w http.ResponseWriter, r *http.Request) ([]byte, estRequest) {
	req := estRequest{
		path: r.URL.Path, contentType: r.Header.Get("Content-Type"), cte: r.Header.Get("Content-Transfer-Encoding"),
		proof: r.Header.Get(enrollproto.HeaderProof), claimToken: r.Header.Get(enrollproto.HeaderClaimToken),
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		req.clientCert = r.TLS.PeerCertificates[0]
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, enrollproto.MaxBody+1))
	var der []byte
	if err == nil {
		der, err = enrollproto.DecodeCSRBody(body)
	}
	if err == nil {
		var csr *x509.CertificateRequest
		if csr, err = x509.ParseCertificateRequest(der); err == nil {
			req.csrCN = csr.Subject.CommonName
		}
	}
	f.mu.Lock()
	f.requests = append(f.requests, req)
	status := f.status
	f.mu.Unlock()
	switch {
	case req.contentType != enrollproto.ContentTypePKCS10:
		http.Error(w, "Content-Type must be "+enrollproto.ContentTypePKCS10, http.StatusUnsupportedMediaType)
		return nil, req
	case err != nil:
		http.Error(w, "the body is not a base64 PKCS#10 request", http.StatusBadRequest)
		return nil, req
	case status != 0:
		http.Error(w, "request refused", status)
		return nil, req
	}
	return der, req
}

// enroll admits the device with its secret's proof, or any claim
// certificate naming urn:warden:claim:..., as Warden does (once).
func (f *fakeEST) enroll(w http.ResponseWriter, r *http.Request) {
	der, req := f.read(w, r)
	if der == nil {
		return
	}
	ok := false
	switch {
	case req.clientCert != nil:
		ok = slices.ContainsFunc(req.clientCert.URIs, func(u *url.URL) bool { return strings.HasPrefix(u.String(), "urn:warden:claim:") }) &&
			req.csrCN == f.id
	case req.proof != "":
		p, err := enrollproto.DecodeProofHeader(req.proof)
		ok = err == nil && req.csrCN == f.id && enrollproto.VerifyProof(f.secret, f.id, der, p)
	}
	if !ok {
		http.Error(w, "request refused", http.StatusForbidden)
		return
	}
	f.answer(w, der)
}

// reenroll admits a device by its current certificate, for its own ID.
func (f *fakeEST) reenroll(w http.ResponseWriter, r *http.Request) {
	der, req := f.read(w, r)
	if der == nil {
		return
	}
	if req.clientCert == nil || !slices.ContainsFunc(req.clientCert.URIs, func(u *url.URL) bool { return u.String() == deviceURN(req.csrCN) }) {
		http.Error(w, "request refused", http.StatusForbidden)
		return
	}
	f.answer(w, der)
}

func (f *fakeEST) answer(w http.ResponseWriter, der []byte) {
	certs, status, err := f.is.issue(der, f.is.next())
	switch {
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	case status == enrollproto.StatusRefused:
		http.Error(w, "request refused", http.StatusForbidden)
		return
	case status != enrollproto.StatusIssued:
		http.Error(w, "internal error; try again later", http.StatusInternalServerError)
		return
	}
	body, err := enrollproto.EncodeCertsOnly(certs)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeCertsOnly(w, body)
}

// claimHook admits fleet claim certificates on the test broker, as
// Warden's broker does: the client ID must be on the allow-list and not
// enrolled yet, and the connection may only publish private/<id>/cert/csr
// and read private/<id>/cert/new. Hook results are OR'd, so it leaves
// device connections to testHook.
type claimHook struct {
	mqtt.HookBase
	mu    sync.Mutex
	allow map[string]bool
	conns map[string]bool // claim connections by client ID
}

func (h *claimHook) ID() string { return "warden-claim-test" }

func (h *claimHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *claimHook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return false
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 || !slices.ContainsFunc(st.PeerCertificates[0].URIs, func(u *url.URL) bool {
		return strings.HasPrefix(u.String(), "urn:warden:claim:")
	}) {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.allow[cl.ID] {
		return false
	}
	h.conns[cl.ID] = true
	return true
}

func (h *claimHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	h.mu.Lock()
	claim := h.conns[cl.ID]
	h.mu.Unlock()
	if !claim {
		return false
	}
	if write {
		return topic == enrollproto.Topic(cl.ID, enrollproto.ChannelCSR)
	}
	return topic == enrollproto.Topic(cl.ID, enrollproto.ChannelNew)
}

func addClaimHook(t testing.TB, b *testBroker, allow ...string) *claimHook {
	t.Helper()
	h := &claimHook{allow: make(map[string]bool), conns: make(map[string]bool)}
	for _, id := range allow {
		h.allow[id] = true
	}
	if err := b.srv.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	return h
}

// connRecorder records the certificate of every session the broker
// establishes, by client ID.
type connRecorder struct {
	mqtt.HookBase
	ch chan seenConn
}

type seenConn struct {
	id    string
	leaf  *x509.Certificate
	chain int // certificates the client sent
}

func (h *connRecorder) ID() string { return "warden-conn-recorder-test" }

func (h *connRecorder) Provides(b byte) bool { return b == mqtt.OnSessionEstablished }

func (h *connRecorder) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	s := seenConn{id: cl.ID}
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
			s.leaf, s.chain = pc[0], len(pc)
		}
	}
	select {
	case h.ch <- s:
	default:
	}
}

func addConnRecorder(t testing.TB, b *testBroker) *connRecorder {
	t.Helper()
	h := &connRecorder{ch: make(chan seenConn, 64)}
	if err := b.srv.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	return h
}

// next waits for the next session of client id.
func (h *connRecorder) next(t testing.TB, id string) seenConn {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case s := <-h.ch:
			if s.id == id {
				return s
			}
		case <-timeout:
			t.Fatalf("no session of %q within 10s", id)
			return seenConn{}
		}
	}
}

// fakeOnboardMQTT answers private/<id>/cert/csr and private/<id>/claim as
// Warden does: CertResponse on cert/new, ClaimResult on claim/result.
type fakeOnboardMQTT struct {
	t    testing.TB
	b    *testBroker
	is   *issuer
	open func(topic string, msg []byte) ([]byte, error) // opens sealed uplinks; nil: none sealed

	mu     sync.Mutex
	tokens map[string]bool // claim tokens that bind
	csrs   chan seenCSR
	csrN   atomic.Int64 // CSR messages seen
	claims chan enrollproto.ClaimRequest
}

type seenCSR struct {
	clientID string
	claim    bool // from a claim-certificate connection
	req      enrollproto.CSRRequest
}

func newFakeOnboardMQTT(t testing.TB, b *testBroker, is *issuer) *fakeOnboardMQTT {
	t.Helper()
	f := &fakeOnboardMQTT{t: t, b: b, is: is, tokens: make(map[string]bool),
		csrs: make(chan seenCSR, 64), claims: make(chan enrollproto.ClaimRequest, 64)}
	if err := b.srv.Subscribe("private/+/"+enrollproto.ChannelCSR, 21, f.onCSR); err != nil {
		t.Fatal(err)
	}
	if err := b.srv.Subscribe("private/+/"+enrollproto.ChannelClaim, 22, f.onClaim); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeOnboardMQTT) bindable(token string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens[token] = true
}

func (f *fakeOnboardMQTT) reply(id, channel string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		f.t.Error(err)
		return
	}
	// Not from the broker's delivery goroutine: mochi's inline Publish
	// would deliver to the device while the device's publish is handled.
	go func() { _ = f.b.srv.Publish(enrollproto.Topic(id, channel), b, false, 1) }()
}

func (f *fakeOnboardMQTT) payload(topic string, p []byte) ([]byte, error) {
	if f.open == nil {
		return p, nil
	}
	return f.open(topic, p)
}

func (f *fakeOnboardMQTT) onCSR(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	id, _, _ := enrollproto.ParseTopic(pk.TopicName)
	claim := false
	// The handler gets the inline client; the publisher is pk.Origin.
	if cl, ok := f.b.srv.Clients.Get(pk.Origin); ok {
		if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
			if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
				claim = slices.ContainsFunc(pc[0].URIs, func(u *url.URL) bool { return strings.HasPrefix(u.String(), "urn:warden:claim:") })
			}
		}
	}
	body, err := f.payload(pk.TopicName, pk.Payload)
	if err != nil {
		f.t.Errorf("CSR message on %s does not open: %v", pk.TopicName, err)
		return
	}
	req, err := enrollproto.ParseCSRRequest(body)
	if err != nil {
		f.t.Errorf("CSR message on %s: %v", pk.TopicName, err)
		f.reply(id, enrollproto.ChannelNew, enrollproto.CertResponse{Status: enrollproto.StatusRefused})
		return
	}
	f.csrN.Add(1)
	select {
	case f.csrs <- seenCSR{clientID: pk.Origin, claim: claim, req: req}:
	default: // a test that does not read them; never block the broker
	}
	answer := f.is.next()
	if answer == answerSilent {
		return
	}
	certs, status, err := f.is.issue(req.CSR, answer)
	if err != nil {
		f.t.Errorf("CSR on %s: %v", pk.TopicName, err)
		status = enrollproto.StatusRefused
	}
	resp := enrollproto.CertResponse{RequestID: req.RequestID, Status: status}
	if status == enrollproto.StatusIssued {
		resp.Certificate = certs[0].Raw
		for _, c := range certs[1:] {
			resp.Chain = append(resp.Chain, c.Raw)
		}
	}
	f.reply(id, enrollproto.ChannelNew, resp)
}

func (f *fakeOnboardMQTT) onClaim(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	id, _, _ := enrollproto.ParseTopic(pk.TopicName)
	body, err := f.payload(pk.TopicName, pk.Payload)
	if err != nil {
		f.t.Errorf("claim message on %s does not open: %v", pk.TopicName, err)
		return
	}
	req, err := enrollproto.ParseClaimRequest(body)
	if err != nil {
		f.t.Errorf("claim message on %s: %v", pk.TopicName, err)
		return
	}
	f.claims <- req
	f.mu.Lock()
	bound := f.tokens[req.Token]
	delete(f.tokens, req.Token) // single use
	f.mu.Unlock()
	status := enrollproto.StatusRefused
	if bound {
		status = enrollproto.StatusBound
	}
	f.reply(id, enrollproto.ChannelClaimResult, enrollproto.ClaimResult{RequestID: req.RequestID, Status: status})
}

// deliver publishes an unsolicited rotation delivery, as Warden's CA
// rotation does.
func (f *fakeOnboardMQTT) deliver(id string, certs ...*x509.Certificate) {
	resp := enrollproto.CertResponse{Status: enrollproto.StatusIssued, Certificate: certs[0].Raw, Rotation: true}
	for _, c := range certs[1:] {
		resp.Chain = append(resp.Chain, c.Raw)
	}
	f.reply(id, enrollproto.ChannelNew, resp)
}

func (f *fakeOnboardMQTT) nextCSR(t testing.TB) seenCSR {
	t.Helper()
	select {
	case s := <-f.csrs:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no CSR message within 10s")
		return seenCSR{}
	}
}

// errorsAs is errors.As for tests that only need to know.
func errorsAs[T error](err error) bool {
	var target T
	return errors.As(err, &target)
}
