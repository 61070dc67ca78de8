package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/wardentest"
)

// estClient is an HTTPS client for the api listener pinned to Warden's
// root, presenting cert if given.
func estClient(t testing.TB, rootFile string, cert *tls.Certificate) *http.Client {
	t.Helper()
	b, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("no certificate in %s", rootFile)
	}
	cfg := &tls.Config{ServerName: "localhost", MinVersion: tls.VersionTLS13, RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// newDeviceKey is a device's own key and a CSR naming id.
func newDeviceKey(t testing.TB, id string) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	k, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CreateCSR(k, id)
	if err != nil {
		t.Fatal(err)
	}
	return k, csr
}

// estPost posts a CSR and returns the status and, on 200, the certificates.
func estPost(t testing.TB, cl *http.Client, url string, csr []byte, hdr map[string]string) (int, []*x509.Certificate) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(enrollproto.EncodeCSRBody(csr)))
	req.Header.Set("Content-Type", enrollproto.ContentTypePKCS10)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	certs, err := enrollproto.DecodeCertsOnly(body)
	if err != nil {
		t.Fatalf("POST %s: answer is not certs-only PKCS#7: %v", url, err)
	}
	return resp.StatusCode, certs
}

// saveCreds writes an enrolled device's key and certificate chain where
// the test harness's raw clients read them.
func saveCreds(t testing.TB, dir, id string, key *ecdsa.PrivateKey, certs []*x509.Certificate, rootFile string) wardentest.Creds {
	t.Helper()
	var chain []byte
	for _, c := range certs {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	kb, err := pki.EncodePrivateKey(key, pki.KeyFormatPEM)
	if err != nil {
		t.Fatal(err)
	}
	c := wardentest.Creds{ID: id, Cert: filepath.Join(dir, id+".crt"), Key: filepath.Join(dir, id+".key"), CA: rootFile}
	if err := os.WriteFile(c.Cert, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.Key, kb, 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

func checkDeviceCert(t testing.TB, certs []*x509.Certificate, id string, key *ecdsa.PrivateKey, rootFile string) {
	t.Helper()
	if len(certs) < 2 {
		t.Fatalf("got %d certificates, want leaf and issuing CA", len(certs))
	}
	leaf := certs[0]
	if leaf.Subject.CommonName != id || len(leaf.URIs) != 1 || leaf.URIs[0].String() != "urn:warden:device:"+id {
		t.Fatalf("certificate names %q %v, want %s", leaf.Subject.CommonName, leaf.URIs, id)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Fatal("certificate is not for the device's key")
	}
	b, _ := os.ReadFile(rootFile)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(b)
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("certificate does not chain to the root: %v", err)
	}
}

func readSecret(t testing.TB, path string) enrollproto.SecretFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
	f, err := enrollproto.ParseSecretFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestEnrollWithSecretOverEST: a preregistered device enrolls once with
// its own key; a second enrollment, an unknown serial, a wrong proof and a
// stolen proof on another CSR are refused alike; the enrolled device
// connects, renews over EST and over MQTT.
func TestEnrollWithSecretOverEST(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "e1.enroll.json")
	s.MustWarden("device", "preregister", "enr-1", "--model", "sensor-v3", "--tag", "site=lab", "--enroll-secret-out", secretFile)
	sf := readSecret(t, secretFile)
	if _, _, err := s.Warden("device", "preregister", "enr-1", "--enroll-secret-out", filepath.Join(dir, "again.json")); err == nil {
		t.Fatal("preregistering the same ID twice succeeded")
	}
	root := filepath.Join(s.Data, "pki", "root.crt")
	base := "https://" + s.API
	anon := estClient(t, root, nil)

	// cacerts: the root and the issuing CA.
	resp, err := anon.Get(base + enrollproto.PathCACerts)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cas, err := enrollproto.DecodeCertsOnly(body)
	if err != nil || len(cas) != 2 || !cas[0].IsCA || !cas[1].IsCA {
		t.Fatalf("cacerts: %d certificates, %v", len(cas), err)
	}

	key, csr := newDeviceKey(t, "enr-1")
	proof := func(secret, csr []byte, id string) map[string]string {
		return map[string]string{enrollproto.HeaderProof: enrollproto.EncodeProofHeader(enrollproto.Proof(secret, id, csr))}
	}
	// An attacker who knows a serial number but not its secret.
	ukey, ucsr := newDeviceKey(t, "enr-unknown")
	_ = ukey
	if code, _ := estPost(t, anon, base+enrollproto.PathSimpleEnroll, ucsr, proof(sf.Secret, ucsr, "enr-unknown")); code != http.StatusForbidden {
		t.Fatalf("unknown serial: HTTP %d, want 403", code)
	}
	wrong := bytes.Repeat([]byte{7}, 32)
	if code, _ := estPost(t, anon, base+enrollproto.PathSimpleEnroll, csr, proof(wrong, csr, "enr-1")); code != http.StatusForbidden {
		t.Fatalf("wrong secret: HTTP %d, want 403", code)
	}
	if code, _ := estPost(t, anon, base+enrollproto.PathSimpleEnroll, csr, nil); code != http.StatusForbidden {
		t.Fatalf("no proof: HTTP %d, want 403", code)
	}
	// A proof is bound to its CSR: replaying it with another key fails.
	_, otherCSR := newDeviceKey(t, "enr-1")
	if code, _ := estPost(t, anon, base+enrollproto.PathSimpleEnroll, otherCSR, proof(sf.Secret, csr, "enr-1")); code != http.StatusForbidden {
		t.Fatalf("proof for another CSR: HTTP %d, want 403", code)
	}
	code, certs := estPost(t, anon, base+enrollproto.PathSimpleEnroll, csr, proof(sf.Secret, csr, "enr-1"))
	if code != http.StatusOK {
		t.Fatalf("enrollment: HTTP %d", code)
	}
	checkDeviceCert(t, certs, "enr-1", key, root)
	// Single use: the same secret enrolls nothing more, not even the same CSR.
	if code, _ := estPost(t, anon, base+enrollproto.PathSimpleEnroll, csr, proof(sf.Secret, csr, "enr-1")); code != http.StatusForbidden {
		t.Fatalf("second enrollment: HTTP %d, want 403", code)
	}
	show := s.MustWarden("device", "show", "enr-1", "--json")
	if wardentest.JSONField(t, show, "state") != "active" || wardentest.JSONField(t, show, "model") != "sensor-v3" || wardentest.JSONField(t, show, "tags.site") != "lab" {
		t.Fatalf("enrolled device: %s", show)
	}

	// The device connects with what it enrolled.
	c := saveCreds(t, dir, "enr-1", key, certs, root)
	dev := wardentest.MustConnectRaw(t, s.MQTTS, c, wardentest.RawOpts{Clean: true})

	// Renewal over EST, authenticated by the current certificate, with a
	// new key.
	cert, _ := c.TLS(t)
	key2, csr2 := newDeviceKey(t, "enr-1")
	code, certs2 := estPost(t, estClient(t, root, &cert), base+enrollproto.PathSimpleReenroll, csr2, nil)
	if code != http.StatusOK {
		t.Fatalf("simplereenroll: HTTP %d", code)
	}
	checkDeviceCert(t, certs2, "enr-1", key2, root)
	if certs2[0].SerialNumber.Cmp(certs[0].SerialNumber) == 0 {
		t.Fatal("renewal returned the same certificate")
	}
	// Re-enrollment for another device ID is refused.
	_, csrOther := newDeviceKey(t, "enr-2")
	if code, _ := estPost(t, estClient(t, root, &cert), base+enrollproto.PathSimpleReenroll, csrOther, nil); code != http.StatusForbidden {
		t.Fatalf("re-enrollment naming another device: HTTP %d, want 403", code)
	}
	// Without a certificate, re-enrollment is refused.
	if code, _ := estPost(t, anon, base+enrollproto.PathSimpleReenroll, csr2, nil); code != http.StatusForbidden {
		t.Fatalf("re-enrollment without a certificate: HTTP %d, want 403", code)
	}

	// Renewal over MQTT.
	dev.Subscribe(t, enrollproto.Topic("enr-1", enrollproto.ChannelNew), 1)
	_, csr3 := newDeviceKey(t, "enr-1")
	msg, _ := json.Marshal(enrollproto.CSRRequest{RequestID: "r-1", CSR: csr3})
	if rc, err := dev.Publish(t, enrollproto.Topic("enr-1", enrollproto.ChannelCSR), msg, 1); rc != 0 || err != nil {
		t.Fatalf("publish CSR: 0x%02x %v", rc, err)
	}
	m := waitFor(t, dev.Msgs, enrollproto.Topic("enr-1", enrollproto.ChannelNew))
	cr, err := enrollproto.ParseCertResponse(m.Payload)
	if err != nil || cr.Status != enrollproto.StatusIssued || cr.RequestID != "r-1" {
		t.Fatalf("cert/new: %+v %v", cr, err)
	}
	// The renewed certificate connects.
	c2 := saveCreds(t, t.TempDir(), "enr-1", key2, certs2, root)
	dev.Disconnect(&paho.Disconnect{})
	wardentest.MustConnectRaw(t, s.MQTTS, c2, wardentest.RawOpts{Clean: true})

	audit, _ := os.ReadFile(filepath.Join(s.Data, "audit.log"))
	for _, reason := range []string{"not-preregistered", "bad-proof", "enrollment-used", "renew-wrong-identity"} {
		if !bytes.Contains(audit, []byte(`"reason":"`+reason+`"`)) {
			t.Errorf("audit log lacks a refusal with reason %s", reason)
		}
	}
	if !bytes.Contains(audit, []byte(`"action":"device.enroll","outcome":"done"`)) {
		t.Error("audit log lacks the enrollment")
	}
	if v := s.Metric(t, "warden_enroll_total", `outcome="enrolled"`); v != 1 {
		t.Errorf("enrollments metric = %v, want 1", v)
	}
	if v := s.Metric(t, "warden_enroll_total", `outcome="bad-proof"`); v < 2 {
		t.Errorf("bad-proof refusals = %v, want >= 2", v)
	}
	if v := s.Metric(t, "warden_cert_renewals_total", `outcome="renewed"`); v != 2 {
		t.Errorf("renewals metric = %v, want 2 (EST and MQTT)", v)
	}
	if strings.Contains(string(audit), fmt.Sprintf("%x", sf.Secret)) {
		t.Error("the enrollment secret is in the audit log")
	}
}

// TestClaimCertificateEnrollment: a fleet claim certificate enrolls only
// the IDs on its allow-list, each once, over EST and over MQTT, and can do
// nothing else on the broker.
func TestClaimCertificateEnrollment(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	dir := t.TempDir()
	ids := filepath.Join(dir, "line.ids")
	if err := os.WriteFile(ids, []byte("# line 7\nclm-1\nclm-2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.MustWarden("claim-cert", "create", "line7", "--allow", ids, "--model", "meter", "--out", dir)
	claim := wardentest.Creds{ID: "line7", Cert: filepath.Join(dir, "line7.crt"), Key: filepath.Join(dir, "line7.key"), CA: filepath.Join(dir, "ca.crt")}
	claimCert, _ := claim.TLS(t)
	root := claim.CA
	base := "https://" + s.API
	cl := estClient(t, root, &claimCert)

	key1, csr1 := newDeviceKey(t, "clm-1")
	code, certs := estPost(t, cl, base+enrollproto.PathSimpleEnroll, csr1, nil)
	if code != http.StatusOK {
		t.Fatalf("claim enrollment of clm-1: HTTP %d", code)
	}
	checkDeviceCert(t, certs, "clm-1", key1, root)
	if code, _ := estPost(t, cl, base+enrollproto.PathSimpleEnroll, csr1, nil); code != http.StatusForbidden {
		t.Fatalf("second claim enrollment of clm-1: HTTP %d, want 403", code)
	}
	_, csrX := newDeviceKey(t, "clm-9")
	if code, _ := estPost(t, cl, base+enrollproto.PathSimpleEnroll, csrX, nil); code != http.StatusForbidden {
		t.Fatalf("claim enrollment outside the allow-list: HTTP %d, want 403", code)
	}
	// A claim certificate is no device: it cannot re-enroll or connect as one.
	if code, _ := estPost(t, cl, base+enrollproto.PathSimpleReenroll, csr1, nil); code != http.StatusForbidden {
		t.Fatalf("re-enrollment with a claim certificate: HTTP %d, want 403", code)
	}
	if _, _, err := wardentest.ConnectRaw(t, s.MQTTS, claim, wardentest.RawOpts{Clean: true}); err == nil {
		t.Fatal("the claim certificate connected with its own name as client ID")
	}
	if _, _, err := wardentest.ConnectRaw(t, s.MQTTS, claim, wardentest.RawOpts{Clean: true, ClientID: "clm-9"}); err == nil {
		t.Fatal("the claim certificate connected as an ID outside its allow-list")
	}
	if _, _, err := wardentest.ConnectRaw(t, s.MQTTS, claim, wardentest.RawOpts{Clean: true, ClientID: "clm-1"}); err == nil {
		t.Fatal("the claim certificate connected as an ID that enrolled already")
	}

	// Over MQTT: client ID clm-2, only its cert topics.
	rc := wardentest.MustConnectRaw(t, s.MQTTS, claim, wardentest.RawOpts{Clean: true, ClientID: "clm-2"})
	for _, f := range []string{"#", "private/clm-1/#", "private/clm-2/down/#", "fleet/#"} {
		if code := rc.Subscribe(t, f, 1); code < 0x80 {
			t.Errorf("claim connection subscribed to %q (0x%02x)", f, code)
		}
	}
	if code := rc.Subscribe(t, enrollproto.Topic("clm-2", enrollproto.ChannelNew), 1); code >= 0x80 {
		t.Fatalf("claim connection may not read its cert/new: 0x%02x", code)
	}
	if code, _ := rc.Publish(t, "private/clm-2/up/telemetry", []byte("x"), 1); code < 0x80 {
		t.Errorf("claim connection published telemetry (0x%02x)", code)
	}
	key2, csr2 := newDeviceKey(t, "clm-2")
	msg, _ := json.Marshal(enrollproto.CSRRequest{RequestID: "m-1", CSR: csr2})
	if code, err := rc.Publish(t, enrollproto.Topic("clm-2", enrollproto.ChannelCSR), msg, 1); code != 0 || err != nil {
		t.Fatalf("claim CSR publish: 0x%02x %v", code, err)
	}
	m := waitFor(t, rc.Msgs, enrollproto.Topic("clm-2", enrollproto.ChannelNew))
	cr, err := enrollproto.ParseCertResponse(m.Payload)
	if err != nil || cr.Status != enrollproto.StatusIssued {
		t.Fatalf("cert/new for the claim connection: %+v %v", cr, err)
	}
	got, err := cr.Certificates()
	if err != nil {
		t.Fatal(err)
	}
	checkDeviceCert(t, got, "clm-2", key2, root)
	if wardentest.JSONField(t, s.MustWarden("device", "show", "clm-2", "--json"), "model") != "meter" {
		t.Error("the device enrolled by claim did not get the allow-list's model")
	}
	// The new device connects with its own certificate.
	wardentest.MustConnectRaw(t, s.MQTTS, saveCreds(t, t.TempDir(), "clm-2", key2, got, root), wardentest.RawOpts{Clean: true})

	// Revoked, the claim certificate enrolls nothing more.
	s.MustWarden("claim-cert", "allow", "line7", "--allow-id", "clm-3")
	s.MustWarden("claim-cert", "revoke", "line7", "--reason", "line closed")
	_, csr3 := newDeviceKey(t, "clm-3")
	if code, _ := estPost(t, cl, base+enrollproto.PathSimpleEnroll, csr3, nil); code != http.StatusForbidden {
		t.Fatalf("enrollment with a revoked claim certificate: HTTP %d, want 403", code)
	}
	audit, _ := os.ReadFile(filepath.Join(s.Data, "audit.log"))
	for _, reason := range []string{"enrollment-used", "not-on-allow-list"} {
		if !bytes.Contains(audit, []byte(`"reason":"`+reason+`"`)) && !bytes.Contains(audit, []byte(`"reason":"claim-`+reason+`"`)) {
			t.Errorf("audit log lacks a refusal with reason %s", reason)
		}
	}
}

// TestAppClaimToken: an app user's token mints a claim token; the device
// forwards it and is bound to the user; replayed, tampered, expired and
// another server's tokens are refused with their reasons audited.
func TestAppClaimToken(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	appToken := strings.TrimSpace(s.MustWarden("token", "create", "--role", "app", "--user", "alice@example.com"))
	root := filepath.Join(s.Data, "pki", "root.crt")
	base := "https://" + s.API
	api := estClient(t, root, nil)
	mint := func(t *testing.T, srvBase, bearer string, ttl int) (int, string) {
		t.Helper()
		body := "{}"
		if ttl > 0 {
			body = fmt.Sprintf(`{"ttl_seconds":%d}`, ttl)
		}
		req, _ := http.NewRequest(http.MethodPost, srvBase+"/v1/claims", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := api.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Token string `json:"token"`
			User  string `json:"user"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out.Token
	}
	if code, _ := mint(t, base, "", 0); code != http.StatusUnauthorized {
		t.Fatalf("mint without a token: HTTP %d, want 401", code)
	}
	if code, _ := mint(t, base, "wdn_0000000000000000_"+strings.Repeat("A", 43), 0); code != http.StatusUnauthorized {
		t.Fatalf("mint with a forged token: HTTP %d, want 401", code)
	}
	code, tok := mint(t, base, appToken, 0)
	if code != http.StatusCreated || strings.Count(tok, ".") != 4 {
		t.Fatalf("mint: HTTP %d, token %q", code, tok)
	}

	dev := s.AddDevice("claimed-1")
	rc := wardentest.MustConnectRaw(t, s.MQTTS, dev, wardentest.RawOpts{Clean: true})
	rc.Subscribe(t, enrollproto.Topic("claimed-1", enrollproto.ChannelClaimResult), 1)
	send := func(reqID, token string) string {
		t.Helper()
		msg, _ := json.Marshal(enrollproto.ClaimRequest{RequestID: reqID, Token: token})
		if code, err := rc.Publish(t, enrollproto.Topic("claimed-1", enrollproto.ChannelClaim), msg, 1); code != 0 || err != nil {
			t.Fatalf("publish claim: 0x%02x %v", code, err)
		}
		for {
			m := waitFor(t, rc.Msgs, enrollproto.Topic("claimed-1", enrollproto.ChannelClaimResult))
			r, err := enrollproto.ParseClaimResult(m.Payload)
			if err != nil {
				t.Fatalf("claim result: %v", err)
			}
			if r.RequestID == reqID {
				return r.Status
			}
		}
	}
	// Tampered: one character of the ciphertext changed.
	parts := strings.Split(tok, ".")
	ct := []byte(parts[3])
	if ct[len(ct)/2] == 'A' {
		ct[len(ct)/2] = 'B'
	} else {
		ct[len(ct)/2] = 'A'
	}
	tampered := strings.Join([]string{parts[0], parts[1], parts[2], string(ct), parts[4]}, ".")
	if st := send("t-1", tampered); st != enrollproto.StatusRefused {
		t.Fatalf("tampered token: %s", st)
	}
	if st := send("t-2", tok); st != enrollproto.StatusBound {
		t.Fatalf("claim: %s", st)
	}
	if owner := wardentest.JSONField(t, s.MustWarden("device", "show", "claimed-1", "--json"), "owner"); owner != "alice@example.com" {
		t.Fatalf("owner after the claim: %q", owner)
	}
	if st := send("t-3", tok); st != enrollproto.StatusRefused {
		t.Fatalf("replayed token: %s", st)
	}
	// Expired.
	_, short := mint(t, base, appToken, 1)
	time.Sleep(2100 * time.Millisecond)
	if st := send("t-4", short); st != enrollproto.StatusRefused {
		t.Fatalf("expired token: %s", st)
	}
	// Another server's token.
	other := wardentest.Start(t, t.TempDir())
	otherApp := strings.TrimSpace(other.MustWarden("token", "create", "--role", "app", "--user", "mallory"))
	otherAPI := estClient(t, filepath.Join(other.Data, "pki", "root.crt"), nil)
	api = otherAPI
	_, foreign := mint(t, "https://"+other.API, otherApp, 0)
	if foreign == "" {
		t.Fatal("no token from the other server")
	}
	if st := send("t-5", foreign); st != enrollproto.StatusRefused {
		t.Fatalf("another server's token: %s", st)
	}
	if owner := wardentest.JSONField(t, s.MustWarden("device", "show", "claimed-1", "--json"), "owner"); owner != "alice@example.com" {
		t.Fatalf("owner changed to %q", owner)
	}
	audit, _ := os.ReadFile(filepath.Join(s.Data, "audit.log"))
	for _, reason := range []string{"tampered", "replayed", "expired", "foreign"} {
		if !bytes.Contains(audit, []byte(`"action":"device.claim","outcome":"denied","actor":"device:claimed-1","subject":"device:claimed-1","reason":"`+reason+`"`)) {
			t.Errorf("audit log lacks the %s refusal", reason)
		}
	}
	if !bytes.Contains(audit, []byte(`"action":"device.claim","outcome":"done"`)) {
		t.Error("audit log lacks the binding")
	}
	if bytes.Contains(audit, []byte(tok)) || bytes.Contains(audit, []byte(appToken)) {
		t.Error("a token is in the audit log")
	}
}
