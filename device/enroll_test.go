package device

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/identity"
)

// estEnv is a test root, Warden's issuing CA under it, and a fake EST
// server for one preregistered device.
type estEnv struct {
	root *testCA
	is   *issuer
	est  *fakeEST
	id   string
}

func newESTEnv(t *testing.T) *estEnv {
	t.Helper()
	root, err := newTestCA("warden test root")
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.NewDeviceID()
	if err != nil {
		t.Fatal(err)
	}
	is := newIssuer(t, root)
	return &estEnv{root: root, is: is, est: newFakeEST(t, root, is, id), id: id}
}

// claimCert is a fleet claim certificate from Warden's issuing CA.
func (e *estEnv) claimCert(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key := newP256(t)
	leaf := issueLeaf(t, e.is.issuing, "claim "+name, []string{"urn:warden:claim:" + name}, key.Public(), time.Now().Add(-time.Minute), time.Hour)
	return tlsCert(key, leaf, e.is.issuing.cert)
}

func (e *estEnv) secretConfig(key *ecdsa.PrivateKey) EnrollConfig {
	return EnrollConfig{Server: e.est.url(), RootCAs: e.root.pool, DeviceID: e.id, Key: key, Secret: e.est.secret}
}

// checkEnrolled checks what Enroll returned against what the fake issued.
func checkEnrolled(t *testing.T, e *estEnv, cert tls.Certificate, key *ecdsa.PrivateKey) {
	t.Helper()
	issued := e.is.lastIssued()
	if issued == nil || cert.Leaf == nil || !cert.Leaf.Equal(issued) {
		t.Fatalf("Enroll returned %v, not the certificate the server issued", cert.Leaf)
	}
	if len(cert.Certificate) != 2 || string(cert.Certificate[1]) != string(e.is.issuing.cert.Raw) {
		t.Errorf("the chain has %d certificates; want the leaf and the issuing CA", len(cert.Certificate))
	}
	if cert.PrivateKey != key {
		t.Errorf("PrivateKey is %T, not the device's key", cert.PrivateKey)
	}
	// Ready for Config.Certificate.
	if _, id, err := deviceIdentity(cert); err != nil || id != e.id {
		t.Errorf("deviceIdentity = %q, %v", id, err)
	}
}

func TestEnrollWithSecret(t *testing.T) {
	e := newESTEnv(t)
	key := newP256(t)
	cfg := e.secretConfig(key)
	cfg.ClaimToken = "aGVhZGVy..Y2lwaGVy.dGFn"
	cert, err := Enroll(testContext(t), cfg)
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	checkEnrolled(t, e, cert, key)
	reqs := e.est.seen()
	if len(reqs) != 1 {
		t.Fatalf("the server saw %d requests", len(reqs))
	}
	r := reqs[0]
	switch {
	case r.path != enrollproto.PathSimpleEnroll:
		t.Errorf("path %q", r.path)
	case r.contentType != enrollproto.ContentTypePKCS10 || r.cte != "base64":
		t.Errorf("Content-Type %q, Content-Transfer-Encoding %q", r.contentType, r.cte)
	case r.clientCert != nil:
		t.Errorf("a device enrolling by secret presented a client certificate (%s)", r.clientCert.Subject)
	case r.csrCN != e.id:
		t.Errorf("CSR common name %q, want %q", r.csrCN, e.id)
	case r.claimToken != cfg.ClaimToken:
		t.Errorf("claim token header %q", r.claimToken)
	case r.proof == "":
		t.Error("no proof header")
	}
}

func TestEnrollWithClaimCertificate(t *testing.T) {
	e := newESTEnv(t)
	key := newP256(t)
	claim := e.claimCert(t, "factory-7")
	cert, err := Enroll(testContext(t), EnrollConfig{Server: e.est.url() + "/", RootCAs: e.root.pool, DeviceID: e.id, Key: key, ClaimCertificate: &claim})
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	checkEnrolled(t, e, cert, key)
	r := e.est.seen()[0]
	if r.clientCert == nil || !r.clientCert.Equal(claim.Leaf) {
		t.Errorf("the server saw client certificate %v, want the claim certificate", r.clientCert)
	}
	if r.proof != "" {
		t.Errorf("a claim enrollment sent a proof header %q", r.proof)
	}
}

func TestEnrollRefusesBadAnswers(t *testing.T) {
	tests := []struct {
		answer string
		want   string
	}{
		{answerOtherKey, "another key"},
		{answerOtherDevice, "not this device"},
		{answerTwoNames, "exactly one"},
		{answerForeignCA, "pinned Warden root"},
		{answerServerAuth, "pinned Warden root for client authentication"},
	}
	for _, tt := range tests {
		t.Run(tt.answer, func(t *testing.T) {
			e := newESTEnv(t)
			e.is.queue(tt.answer)
			_, err := Enroll(testContext(t), e.secretConfig(newP256(t)))
			if err == nil {
				t.Fatal("Enroll accepted the answer")
			}
			if !strings.Contains(err.Error(), "not trusted") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if errors.Is(err, ErrEnrollRefused) {
				t.Errorf("a bad answer is not a refusal: %v", err)
			}
		})
	}
}

func TestEnrollServerRefusals(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(e *estEnv, cfg *EnrollConfig)
		refused bool
		want    string
	}{
		{"wrong secret", func(_ *estEnv, cfg *EnrollConfig) {
			cfg.Secret = make([]byte, enrollproto.SecretSize)
		}, true, "preregistered"},
		{"another device's ID", func(_ *estEnv, cfg *EnrollConfig) { cfg.DeviceID = "not-registered" }, true, "allow-list"},
		{"403", func(e *estEnv, _ *EnrollConfig) { e.est.setStatus(http.StatusForbidden) }, true, "403"},
		{"500", func(e *estEnv, _ *EnrollConfig) { e.est.setStatus(http.StatusInternalServerError) }, false, "try again later"},
		{"404", func(e *estEnv, _ *EnrollConfig) { e.est.setStatus(http.StatusNotFound) }, false, "404"},
		{"refused by the CA", func(e *estEnv, _ *EnrollConfig) { e.is.queue(answerRefuse) }, true, "has it not enrolled already"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newESTEnv(t)
			cfg := e.secretConfig(newP256(t))
			tt.setup(e, &cfg)
			_, err := Enroll(testContext(t), cfg)
			if err == nil {
				t.Fatal("Enroll succeeded")
			}
			t.Logf("error: %v", err)
			if errors.Is(err, ErrEnrollRefused) != tt.refused {
				t.Errorf("errors.Is(ErrEnrollRefused) = %v, want %v: %v", !tt.refused, tt.refused, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
		})
	}
}

func TestEnrollPinsTheRoot(t *testing.T) {
	e := newESTEnv(t)
	other, err := newTestCA("public CA")
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.secretConfig(newP256(t))
	cfg.RootCAs = other.pool
	_, err = Enroll(testContext(t), cfg)
	if err == nil || !strings.Contains(err.Error(), "pinned Warden root") {
		t.Fatalf("Enroll against a server the pinned root does not vouch for: %v", err)
	}
	if n := len(e.est.seen()); n != 0 {
		t.Errorf("the CSR reached the server (%d requests)", n)
	}
}

func TestEnrollConfigValidation(t *testing.T) {
	root, err := newTestCA("root")
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key := newP256(t)
	claimLeaf := issueLeaf(t, root, "claim", []string{"urn:warden:claim:x"}, key.Public(), time.Now(), time.Hour)
	claim := tlsCert(key, claimLeaf)
	mismatched := tlsCert(newP256(t), claimLeaf)
	valid := func() EnrollConfig {
		return EnrollConfig{Server: "https://warden.example:8443", RootCAs: root.pool, DeviceID: "dev-1", Key: key, Secret: make([]byte, 32)}
	}
	tests := []struct {
		name string
		mod  func(*EnrollConfig)
		want string
	}{
		{"no server", func(c *EnrollConfig) { c.Server = "" }, "EnrollConfig.Server is empty"},
		{"http server", func(c *EnrollConfig) { c.Server = "http://warden.example" }, "not an https://"},
		{"user info", func(c *EnrollConfig) { c.Server = "https://u:p@warden.example" }, "user information"},
		{"query", func(c *EnrollConfig) { c.Server = "https://warden.example/?x=1" }, "query"},
		{"no roots", func(c *EnrollConfig) { c.RootCAs = nil }, "EnrollConfig.RootCAs"},
		{"no ID", func(c *EnrollConfig) { c.DeviceID = "" }, "EnrollConfig.DeviceID is empty"},
		{"bad ID", func(c *EnrollConfig) { c.DeviceID = "a/b" }, "not a device ID"},
		{"no key", func(c *EnrollConfig) { c.Key = nil }, "EnrollConfig.Key is nil"},
		{"P-384 key", func(c *EnrollConfig) { c.Key = p384 }, "P-384"},
		{"Ed25519 key", func(c *EnrollConfig) { c.Key = edKey }, "P-256 ECDSA keys only"},
		{"neither", func(c *EnrollConfig) { c.Secret = nil }, "neither"},
		{"both", func(c *EnrollConfig) { c.ClaimCertificate = &claim }, "both"},
		{"short secret", func(c *EnrollConfig) { c.Secret = make([]byte, 16) }, "16 bytes"},
		{"claim key mismatch", func(c *EnrollConfig) { c.Secret, c.ClaimCertificate = nil, &mismatched }, "differs"},
		{"empty claim cert", func(c *EnrollConfig) { c.Secret, c.ClaimCertificate = nil, &tls.Certificate{} }, "is empty"},
		{"bad claim token", func(c *EnrollConfig) { c.ClaimToken = "not a token!" }, "EnrollConfig.ClaimToken"},
		{"default transport", func(c *EnrollConfig) { c.HTTPClient = &http.Client{} }, "system roots"},
		{"transport without roots", func(c *EnrollConfig) { c.HTTPClient = &http.Client{Transport: &http.Transport{}} }, "no RootCAs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid()
			tt.mod(&cfg)
			_, err := Enroll(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error saying %q", err, tt.want)
			}
		})
	}
}

func TestEnrollWithOwnHTTPClient(t *testing.T) {
	e := newESTEnv(t)
	key := newP256(t)
	cfg := e.secretConfig(key)
	cfg.HTTPClient = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.root.pool}}}
	cert, err := Enroll(testContext(t), cfg)
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	checkEnrolled(t, e, cert, key)
}

func TestFetchCACerts(t *testing.T) {
	e := newESTEnv(t)
	certs, err := FetchCACerts(testContext(t), e.est.url(), e.root.pool)
	if err != nil {
		t.Fatalf("FetchCACerts: %v", err)
	}
	if len(certs) != 2 || !certs[0].Equal(e.root.cert) || !certs[1].Equal(e.is.issuing.cert) {
		t.Errorf("got %d certificates; want the root and the issuing CA", len(certs))
	}
	other, err := newTestCA("other")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := FetchCACerts(testContext(t), e.est.url(), other.pool); err == nil {
		t.Error("FetchCACerts trusted a server the pinned root does not vouch for")
	}
	if _, err := FetchCACerts(testContext(t), e.est.url(), nil); err == nil {
		t.Error("FetchCACerts without roots succeeded")
	}
}

// mqttEnrollEnv is a broker whose client CAs are the test root, with the
// claim hook, and the fake onboarding responder.
type mqttEnrollEnv struct {
	*env
	is    *issuer
	ob    *fakeOnboardMQTT
	hook  *claimHook
	claim tls.Certificate
	newID string // preregistered on the claim certificate's allow-list
}

func newMQTTEnrollEnv(t *testing.T) *mqttEnrollEnv {
	t.Helper()
	e := newEnv(t)
	is := newIssuer(t, e.ca)
	newID, err := identity.NewDeviceID()
	if err != nil {
		t.Fatal(err)
	}
	key := newP256(t)
	leaf := issueLeaf(t, is.issuing, "claim fleet", []string{"urn:warden:claim:fleet"}, key.Public(), time.Now().Add(-time.Minute), time.Hour)
	return &mqttEnrollEnv{
		env: e, is: is, ob: newFakeOnboardMQTT(t, e.broker, is), hook: addClaimHook(t, e.broker, newID),
		claim: tlsCert(key, leaf, is.issuing.cert), newID: newID,
	}
}

func (m *mqttEnrollEnv) config(key *ecdsa.PrivateKey) EnrollMQTTConfig {
	return EnrollMQTTConfig{Servers: []string{m.broker.url()}, RootCAs: m.ca.pool, DeviceID: m.newID, Key: key,
		ClaimCertificate: m.claim, Timeout: 5 * time.Second}
}

func TestEnrollMQTT(t *testing.T) {
	m := newMQTTEnrollEnv(t)
	key := newP256(t)
	cfg := m.config(key)
	cfg.ClaimToken = "aGVhZGVy..Y2lwaGVy.dGFn"
	cert, err := EnrollMQTT(testContext(t), cfg)
	if err != nil {
		t.Fatalf("EnrollMQTT: %v", err)
	}
	seen := m.ob.nextCSR(t)
	if !seen.claim || seen.clientID != m.newID {
		t.Errorf("the CSR came from client %q (claim connection %v); want the claim connection as %q", seen.clientID, seen.claim, m.newID)
	}
	if seen.req.ClaimToken != cfg.ClaimToken || len(seen.req.Proof) != 0 {
		t.Errorf("CSR message %+v", seen.req)
	}
	if cert.Leaf == nil || !cert.Leaf.Equal(m.is.lastIssued()) || cert.PrivateKey != key || len(cert.Certificate) != 2 {
		t.Fatalf("EnrollMQTT returned %+v", cert)
	}
	// The new certificate connects as the device.
	m.broker.awaitGone(t, m.newID)
	dcfg := m.env.config(t)
	dcfg.Certificate = cert
	c := connect(t, dcfg)
	if c.ID() != m.newID {
		t.Errorf("connected as %q", c.ID())
	}
}

func TestEnrollMQTTRefusals(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(m *mqttEnrollEnv, cfg *EnrollMQTTConfig)
		refused bool
		want    string
	}{
		{"not on the allow-list", func(m *mqttEnrollEnv, cfg *EnrollMQTTConfig) { cfg.DeviceID = "stranger" }, true, "0x86"},
		{"refused", func(m *mqttEnrollEnv, _ *EnrollMQTTConfig) { m.is.queue(answerRefuse) }, true, "allow-list"},
		{"error", func(m *mqttEnrollEnv, _ *EnrollMQTTConfig) { m.is.queue(answerError) }, false, "try again later"},
		{"no answer", func(m *mqttEnrollEnv, cfg *EnrollMQTTConfig) {
			m.is.queue(answerSilent)
			cfg.Timeout = 300 * time.Millisecond
		}, false, "no answer"},
		{"another key", func(m *mqttEnrollEnv, _ *EnrollMQTTConfig) { m.is.queue(answerOtherKey) }, false, "another key"},
		{"another device", func(m *mqttEnrollEnv, _ *EnrollMQTTConfig) { m.is.queue(answerOtherDevice) }, false, "not this device"},
		{"foreign CA", func(m *mqttEnrollEnv, _ *EnrollMQTTConfig) { m.is.queue(answerForeignCA) }, false, "pinned Warden root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMQTTEnrollEnv(t)
			cfg := m.config(newP256(t))
			tt.setup(m, &cfg)
			_, err := EnrollMQTT(testContext(t), cfg)
			if err == nil {
				t.Fatal("EnrollMQTT succeeded")
			}
			t.Logf("error: %v", err)
			if errors.Is(err, ErrEnrollRefused) != tt.refused {
				t.Errorf("errors.Is(ErrEnrollRefused) = %v, want %v: %v", !tt.refused, tt.refused, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
		})
	}
}

func TestEnrollMQTTConfigValidation(t *testing.T) {
	m := newMQTTEnrollEnv(t)
	tests := []struct {
		name string
		mod  func(*EnrollMQTTConfig)
		want string
	}{
		{"no servers", func(c *EnrollMQTTConfig) { c.Servers = nil }, "Servers is empty"},
		{"plain server", func(c *EnrollMQTTConfig) { c.Servers = []string{"mqtt://x"} }, "not encrypted"},
		{"no roots", func(c *EnrollMQTTConfig) { c.RootCAs = nil }, "RootCAs"},
		{"bad ID", func(c *EnrollMQTTConfig) { c.DeviceID = "#" }, "not a device ID"},
		{"no key", func(c *EnrollMQTTConfig) { c.Key = nil }, "Key is nil"},
		{"no claim cert", func(c *EnrollMQTTConfig) { c.ClaimCertificate = tls.Certificate{} }, "ClaimCertificate is empty"},
		{"negative timeout", func(c *EnrollMQTTConfig) { c.Timeout = -1 }, "negative"},
		{"bad token", func(c *EnrollMQTTConfig) { c.ClaimToken = strings.Repeat("a", enrollproto.MaxClaimToken+1) }, "ClaimToken"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := m.config(newP256(t))
			tt.mod(&cfg)
			_, err := EnrollMQTT(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error saying %q", err, tt.want)
			}
		})
	}
}

func TestNamesDevice(t *testing.T) {
	root, err := newTestCA("root")
	if err != nil {
		t.Fatal(err)
	}
	pub := newP256(t).Public()
	tests := []struct {
		name string
		uris []string
		ok   bool
	}{
		{"exact", []string{deviceURN("dev-1")}, true},
		{"with a foreign URI", []string{"https://example.com/x", deviceURN("dev-1")}, true},
		{"none", nil, false},
		{"other device", []string{deviceURN("dev-2")}, false},
		{"prefix of the ID", []string{deviceURN("dev-")}, false},
		{"longer ID", []string{deviceURN("dev-10")}, false},
		{"service", []string{"urn:warden:service:dev-1"}, false},
		{"claim", []string{"urn:warden:claim:dev-1"}, false},
		{"two identities", []string{deviceURN("dev-1"), "urn:warden:service:x"}, false},
		{"twice", []string{deviceURN("dev-1"), deviceURN("dev-1")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf := issueLeaf(t, root, "dev-1", tt.uris, pub, time.Now(), time.Hour)
			if err := namesDevice(leaf, "dev-1"); (err == nil) != tt.ok {
				t.Errorf("namesDevice = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func TestCheckIssuedClock(t *testing.T) {
	root, err := newTestCA("root")
	if err != nil {
		t.Fatal(err)
	}
	key := newP256(t)
	now := time.Now()
	tests := []struct {
		name      string
		notBefore time.Time
		lifetime  time.Duration
		ok        bool
	}{
		{"valid", now.Add(-time.Minute), time.Hour, true},
		{"the device clock lags", now.Add(10 * time.Minute), time.Hour, true},
		{"expired", now.Add(-2 * time.Hour), time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf := issueLeaf(t, root, "d", []string{deviceURN("d")}, key.Public(), tt.notBefore, tt.lifetime)
			_, err := checkIssued([]*x509.Certificate{leaf}, key, "d", root.pool, now)
			if (err == nil) != tt.ok {
				t.Errorf("checkIssued = %v, want ok %v", err, tt.ok)
			}
		})
	}
	if _, err := checkIssued(nil, key, "d", root.pool, now); err == nil {
		t.Error("checkIssued accepted no certificate")
	}
}
