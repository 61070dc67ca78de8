package enrollproto

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzDecodeCertsOnly: any body is refused or yields 1..16 certificates
// that EncodeCertsOnly re-encodes within MaxBody and that decode back the
// same, in the same order.
func FuzzDecodeCertsOnly(f *testing.F) {
	chain := newChain(f, 0)
	body, err := EncodeCertsOnly(chain)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(body)
	if der, err := decodeBase64Body(body); err == nil {
		f.Add(der)
	}
	f.Add([]byte("MIIB\r\nAAAA\r\n"))
	f.Add([]byte{0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, body []byte) {
		certs, err := DecodeCertsOnly(body)
		if err != nil {
			if certs != nil {
				t.Fatal("certificates returned with an error")
			}
			return
		}
		if len(certs) == 0 || len(certs) > maxCerts {
			t.Fatalf("accepted %d certificates", len(certs))
		}
		again, err := EncodeCertsOnly(certs)
		if err != nil {
			t.Fatalf("accepted certificates do not re-encode: %v", err)
		}
		if len(again) > MaxBody {
			t.Fatalf("re-encoding is %d bytes, over MaxBody", len(again))
		}
		back, err := DecodeCertsOnly(again)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if len(back) != len(certs) {
			t.Fatalf("re-encoding holds %d certificates, not %d", len(back), len(certs))
		}
		for i := range certs {
			if !bytes.Equal(back[i].Raw, certs[i].Raw) {
				t.Fatalf("certificate %d changed on re-encoding", i)
			}
		}
	})
}

// FuzzDecodeCSRBody: any body is refused or yields non-empty DER that
// EncodeCSRBody re-encodes within MaxBody and that decodes back the same.
func FuzzDecodeCSRBody(f *testing.F) {
	csr := newCSR(f, "dev-1")
	f.Add(EncodeCSRBody(csr))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte(" MQ==\t\r\n"))
	f.Add([]byte("MR=="))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		der, err := DecodeCSRBody(body)
		if err != nil {
			if der != nil {
				t.Fatal("DER returned with an error")
			}
			return
		}
		if len(der) == 0 {
			t.Fatal("accepted an empty CSR")
		}
		again := EncodeCSRBody(der)
		if len(again) > MaxBody {
			t.Fatalf("re-encoding is %d bytes, over MaxBody", len(again))
		}
		back, err := DecodeCSRBody(again)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if !bytes.Equal(back, der) {
			t.Fatal("re-encoding decodes to different DER")
		}
	})
}

// FuzzParseCSRRequest: anything accepted validates, and marshals to JSON
// that parses back to the same request.
func FuzzParseCSRRequest(f *testing.F) {
	f.Add([]byte(`{"request_id":"r1","csr":"MAA="}`))
	f.Add([]byte(`{"request_id":"r1","csr":"MAA=","proof":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","claim_token":"a.b.c.d.e"}`))
	f.Add([]byte(`{"request_id":"r1","csr":"MAA=","proof":"AAAA"}`))
	f.Add([]byte(`{"request_id":"r1","Request_ID":"r2","csr":"MAA="}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseCSRRequest(b)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted a request that does not validate: %v", err)
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseCSRRequest(out)
		if err != nil {
			t.Fatalf("re-encoding %s does not parse: %v", out, err)
		}
		if back.RequestID != r.RequestID || !bytes.Equal(back.CSR, r.CSR) || !bytes.Equal(back.Proof, r.Proof) || back.ClaimToken != r.ClaimToken {
			t.Fatalf("re-encoding changed the request: %+v vs %+v", back, r)
		}
	})
}

// FuzzParseCertResponse: anything accepted validates, marshals to JSON that
// parses back to the same response, and Certificates either fails or
// returns the leaf and every chain entry in order.
func FuzzParseCertResponse(f *testing.F) {
	chain := newChain(f, 0)
	issued, err := json.Marshal(CertResponse{RequestID: "r1", Status: StatusIssued, Certificate: chain[0].Raw, Chain: [][]byte{chain[1].Raw}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(issued)
	f.Add([]byte(`{"status":"issued","certificate":"MAA=","chain":["MAA="],"rotation":true}`))
	f.Add([]byte(`{"request_id":"r1","status":"refused"}`))
	f.Add([]byte(`{"request_id":"r1","status":"error","chain":[null]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseCertResponse(b)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted a response that does not validate: %v", err)
		}
		if certs, err := r.Certificates(); err == nil {
			if len(certs) != 1+len(r.Chain) || !bytes.Equal(certs[0].Raw, r.Certificate) {
				t.Fatalf("Certificates returned %d certificates for a leaf and %d chain entries", len(certs), len(r.Chain))
			}
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseCertResponse(out)
		if err != nil {
			t.Fatalf("re-encoding %s does not parse: %v", out, err)
		}
		same := back.RequestID == r.RequestID && back.Status == r.Status && back.Rotation == r.Rotation &&
			bytes.Equal(back.Certificate, r.Certificate) && len(back.Chain) == len(r.Chain)
		for i := 0; same && i < len(r.Chain); i++ {
			same = bytes.Equal(back.Chain[i], r.Chain[i])
		}
		if !same {
			t.Fatalf("re-encoding changed the response: %+v vs %+v", back, r)
		}
	})
}

// FuzzParseClaimRequest: anything accepted validates and round-trips.
func FuzzParseClaimRequest(f *testing.F) {
	f.Add([]byte(`{"request_id":"c1","token":"eyJhbGciOiJFQ0RILUVTK0EyNTZLVyJ9.a.b.c.d"}`))
	f.Add([]byte(`{"request_id":"c1","token":"a b"}`))
	f.Add([]byte(`{"token":"a","request_id":"c1"} `))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseClaimRequest(b)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted a request that does not validate: %v", err)
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := ParseClaimRequest(out); err != nil || back != r {
			t.Fatalf("re-encoding %s parses to %+v, %v", out, back, err)
		}
	})
}

// FuzzParseClaimResult: anything accepted validates and round-trips.
func FuzzParseClaimResult(f *testing.F) {
	f.Add([]byte(`{"request_id":"c1","status":"bound"}`))
	f.Add([]byte(`{"request_id":"c1","status":"issued"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseClaimResult(b)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted a result that does not validate: %v", err)
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := ParseClaimResult(out); err != nil || back != r {
			t.Fatalf("re-encoding %s parses to %+v, %v", out, back, err)
		}
	})
}

// FuzzParseSecretFile: anything accepted marshals to a file that parses
// back the same.
func FuzzParseSecretFile(f *testing.F) {
	f.Add([]byte(`{"version":1,"device_id":"a1b2c3d4","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`))
	f.Add([]byte(`{"version":1,"device_id":"a1b2c3d4","secret":"AAAA"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sf, err := ParseSecretFile(b)
		if err != nil {
			return
		}
		out, err := sf.Marshal()
		if err != nil {
			t.Fatalf("accepted a file that does not marshal: %v", err)
		}
		back, err := ParseSecretFile(out)
		if err != nil || back.Version != sf.Version || back.DeviceID != sf.DeviceID || !bytes.Equal(back.Secret, sf.Secret) {
			t.Fatalf("re-encoding parses to %+v, %v", back, err)
		}
	})
}

// FuzzDecodeProofHeader: anything accepted is 32 bytes whose encoding is
// the header itself (one encoding per proof).
func FuzzDecodeProofHeader(f *testing.F) {
	f.Add("vrNjifvpCupxXcr9xeledc6Yi_D2hGt-Nq9jQJJ5dUA")
	f.Add("vrNjifvpCupxXcr9xeledc6Yi_D2hGt-Nq9jQJJ5dUA=")
	f.Add("vrNjifvpCupxXcr9xeledc6Yi_D2hGt-Nq9jQJJ5dUB")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := DecodeProofHeader(s)
		if err != nil {
			return
		}
		if len(p) != 32 || EncodeProofHeader(p) != s {
			t.Fatalf("accepted %q as a %d-byte proof that encodes to %q", s, len(p), EncodeProofHeader(p))
		}
	})
}

// FuzzParseTopic: anything accepted is exactly the topic Topic builds.
func FuzzParseTopic(f *testing.F) {
	f.Add("private/dev-1/cert/csr")
	f.Add("private/dev-1/claim/result")
	f.Add("private/+/cert/new")
	f.Fuzz(func(t *testing.T, topic string) {
		id, ch, ok := ParseTopic(topic)
		if !ok {
			return
		}
		if !validDeviceID(id) || Topic(id, ch) != topic {
			t.Fatalf("ParseTopic(%q) = %q, %q", topic, id, ch)
		}
	})
}
