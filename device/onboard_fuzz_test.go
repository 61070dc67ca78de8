package device

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/warden-iot/warden/enrollproto"
)

// fuzzIssuance is a root, an issuing CA under it and a device key, made
// once per fuzz target: the seeds it issues are certificates the checks
// must accept, and mutations explore around them.
type fuzzIssuance struct {
	root    *testCA
	issuing *testCA
	key     *ecdsa.PrivateKey
	leaf    *x509.Certificate
}

const fuzzEnrollID = "fuzz-dev"

func newFuzzIssuance(f *testing.F) *fuzzIssuance {
	f.Helper()
	root, err := newTestCA("fuzz root")
	if err != nil {
		f.Fatal(err)
	}
	is := &fuzzIssuance{root: root, issuing: newIssuingCA(f, root, "fuzz issuing"), key: newP256(f)}
	is.leaf = issueLeaf(f, is.issuing, fuzzEnrollID, []string{deviceURN(fuzzEnrollID)}, is.key.Public(), time.Now().Add(-time.Minute), time.Hour)
	if _, err := checkIssued([]*x509.Certificate{is.leaf, is.issuing.cert}, is.key, fuzzEnrollID, root.pool, time.Now()); err != nil {
		f.Fatalf("the valid seed is refused: %v", err)
	}
	return is
}

// checkAccepted asserts what checkIssued promises of a certificate it
// accepted.
func (is *fuzzIssuance) checkAccepted(t *testing.T, certs []*x509.Certificate) {
	cert, err := checkIssued(certs, is.key, fuzzEnrollID, is.root.pool, time.Now())
	if err != nil {
		return
	}
	leaf := cert.Leaf
	if !is.key.PublicKey.Equal(leaf.PublicKey) {
		t.Fatal("accepted a certificate for another key")
	}
	if err := namesDevice(leaf, fuzzEnrollID); err != nil {
		t.Fatalf("accepted a certificate that does not name the device: %v", err)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: is.root.pool, Intermediates: inter,
		CurrentTime: leaf.NotBefore, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("accepted a certificate that does not chain to the root: %v", err)
	}
	if len(cert.Certificate) != len(certs) || cert.PrivateKey != is.key {
		t.Fatal("the accepted certificate is not the answer with the device's key")
	}
}

// FuzzCertDelivery feeds arbitrary cert/new payloads to the checks a
// renewal answer or a rotation delivery goes through before the device
// installs it: nothing may panic, and only a certificate for the device's
// key, naming the device and chaining to the pinned root is accepted.
func FuzzCertDelivery(f *testing.F) {
	is := newFuzzIssuance(f)
	valid, err := json.Marshal(enrollproto.CertResponse{Status: enrollproto.StatusIssued, Certificate: is.leaf.Raw,
		Chain: [][]byte{is.issuing.cert.Raw}, Rotation: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte(`{"status":"refused"}`))
	f.Add([]byte(`{"request_id":"abc","status":"issued","certificate":"MA==","chain":["MA=="]}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		r, err := enrollproto.ParseCertResponse(payload)
		if err != nil || r.Status != enrollproto.StatusIssued {
			return
		}
		certs, err := r.Certificates()
		if err != nil {
			return
		}
		is.checkAccepted(t, certs)
	})
}

// fuzzTransport answers every request with one response.
type fuzzTransport struct {
	status int
	ct     string
	body   []byte
}

func (ft fuzzTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	h := http.Header{}
	if ft.ct != "" {
		h.Set("Content-Type", ft.ct)
	}
	return &http.Response{StatusCode: ft.status, Status: http.StatusText(ft.status), Header: h,
		Body: io.NopCloser(bytes.NewReader(ft.body)), Request: req}, nil
}

// FuzzESTAnswer feeds arbitrary EST answers (status, Content-Type, body)
// to the reader Enroll and Renew use: nothing may panic, a body over
// enrollproto.MaxBody is refused, and what comes out is checked as
// Enroll checks it.
func FuzzESTAnswer(f *testing.F) {
	is := newFuzzIssuance(f)
	body, err := enrollproto.EncodeCertsOnly([]*x509.Certificate{is.leaf, is.issuing.cert})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(uint16(200), enrollproto.ContentTypeCertsOnly, body)
	f.Add(uint16(200), "", body)
	f.Add(uint16(200), "text/plain", body)
	f.Add(uint16(403), "text/plain", []byte("request refused\n"))
	f.Add(uint16(500), "", []byte("internal error"))
	f.Add(uint16(200), enrollproto.ContentTypeCertsOnly, []byte("not base64!"))
	f.Fuzz(func(t *testing.T, status uint16, ct string, body []byte) {
		if status < 100 || status > 999 {
			return
		}
		hc := &http.Client{Transport: fuzzTransport{status: int(status), ct: ct, body: body}}
		req, err := http.NewRequest(http.MethodPost, "https://warden.invalid"+enrollproto.PathSimpleEnroll, nil)
		if err != nil {
			t.Fatal(err)
		}
		certs, err := estDo(hc, req, ErrEnrollRefused)
		if err != nil {
			return
		}
		if status != 200 || len(body) > enrollproto.MaxBody || len(certs) == 0 {
			t.Fatalf("accepted status %d, %d bytes, %d certificates", status, len(body), len(certs))
		}
		is.checkAccepted(t, certs)
	})
}
