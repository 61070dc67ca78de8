package enrollproto

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestTopic(t *testing.T) {
	for _, ch := range []string{ChannelCSR, ChannelNew, ChannelClaim, ChannelClaimResult} {
		topic := Topic("dev-1", ch)
		if want := "private/dev-1/" + ch; topic != want {
			t.Fatalf("Topic = %q, want %q", topic, want)
		}
		id, got, ok := ParseTopic(topic)
		if !ok || id != "dev-1" || got != ch {
			t.Fatalf("ParseTopic(%q) = %q, %q, %v", topic, id, got, ok)
		}
	}
	for _, topic := range []string{
		"",
		"private/",
		"private/dev-1",
		"private/dev-1/",
		"private/dev-1/cert",
		"private/dev-1/cert/csr/x",
		"private/dev-1/cert/+",
		"private/dev-1/claim/",
		"private/dev-1/ota/notify",
		"private/+/cert/csr",
		"private/#",
		"private/-dev/cert/csr",
		"private/" + strings.Repeat("a", 65) + "/claim",
		"private//cert/csr",
		"Private/dev-1/cert/csr",
		"/private/dev-1/cert/csr",
		"fleet/dev-1/cert/csr",
	} {
		if id, ch, ok := ParseTopic(topic); ok {
			t.Errorf("ParseTopic(%q) accepted it as %q, %q", topic, id, ch)
		}
	}
}

// tokenFor returns a token-shaped string of n bytes (compact JWE alphabet).
func tokenFor(n int) string {
	const part = "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyJ9."
	return strings.Repeat(part, n/len(part)+1)[:n]
}

func TestCSRRequest(t *testing.T) {
	csr := newCSR(t, "dev-1")
	proof := Proof(bytes.Repeat([]byte{1}, SecretSize), "dev-1", csr)
	for _, r := range []CSRRequest{
		{RequestID: "r1", CSR: csr},
		{RequestID: strings.Repeat("a", 64), CSR: csr, Proof: proof},
		{RequestID: "A-b_9", CSR: csr, Proof: proof, ClaimToken: tokenFor(MaxClaimToken)},
	} {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseCSRRequest(b)
		if err != nil {
			t.Fatalf("ParseCSRRequest(%s): %v", b, err)
		}
		if got.RequestID != r.RequestID || !bytes.Equal(got.CSR, r.CSR) || !bytes.Equal(got.Proof, r.Proof) || got.ClaimToken != r.ClaimToken {
			t.Fatalf("round trip changed the request: %+v", got)
		}
	}

	valid := func(edit func(m map[string]any)) string {
		m := map[string]any{"request_id": "r1", "csr": csr}
		edit(m)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, tc := range []struct{ name, in, wantErr string }{
		{"unknown field", valid(func(m map[string]any) { m["device_id"] = "dev-1" }), "unknown field"},
		{"missing request ID", valid(func(m map[string]any) { delete(m, "request_id") }), "request_id"},
		{"empty request ID", valid(func(m map[string]any) { m["request_id"] = "" }), "request_id"},
		{"long request ID", valid(func(m map[string]any) { m["request_id"] = strings.Repeat("a", 65) }), "request_id"},
		{"request ID with a slash", valid(func(m map[string]any) { m["request_id"] = "a/b" }), "request_id"},
		{"request ID with a space", valid(func(m map[string]any) { m["request_id"] = "a b" }), "request_id"},
		{"request ID with a wildcard", valid(func(m map[string]any) { m["request_id"] = "a+" }), "request_id"},
		{"non-ASCII request ID", valid(func(m map[string]any) { m["request_id"] = "é" }), "request_id"},
		{"missing CSR", valid(func(m map[string]any) { delete(m, "csr") }), "csr is required"},
		{"CSR not base64", valid(func(m map[string]any) { m["csr"] = "!!" }), "illegal base64"},
		{"31-byte proof", valid(func(m map[string]any) { m["proof"] = proof[:31] }), "proof is 31 bytes"},
		{"33-byte proof", valid(func(m map[string]any) { m["proof"] = append(bytes.Clone(proof), 0) }), "proof is 33 bytes"},
		{"oversized claim token", valid(func(m map[string]any) { m["claim_token"] = tokenFor(MaxClaimToken + 1) }), "claim token"},
		{"claim token with a space", valid(func(m map[string]any) { m["claim_token"] = "a.b c" }), "claim token"},
		{"oversized message", valid(func(m map[string]any) { m["csr"] = make([]byte, MaxMessage) }), "limit"},
		{"duplicate key", `{"request_id":"r1","request_id":"r2","csr":"MA=="}`, "twice"},
		{"trailing data", valid(func(map[string]any) {}) + `x`, "trailing"},
		{"null", `null`, "JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCSRRequest([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one mentioning %q", err, tc.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "CSR request: ") {
				t.Errorf("error %q does not say what failed", err)
			}
		})
	}
}

func TestCertResponse(t *testing.T) {
	chain := newChain(t, maxCerts-3)
	leaf, iss := chain[0].Raw, chain[1].Raw
	var fifteen [][]byte
	for _, c := range chain[1:] {
		fifteen = append(fifteen, c.Raw)
	}
	for _, tc := range []struct {
		name    string
		r       CertResponse
		wantErr string // empty: valid
	}{
		{"issued", CertResponse{RequestID: "r1", Status: StatusIssued, Certificate: leaf, Chain: [][]byte{iss}}, ""},
		{"issued without chain", CertResponse{RequestID: "r1", Status: StatusIssued, Certificate: leaf}, ""},
		{"issued with 15 chain certificates", CertResponse{RequestID: "r1", Status: StatusIssued, Certificate: leaf, Chain: fifteen}, ""},
		{"rotation", CertResponse{Status: StatusIssued, Certificate: leaf, Chain: [][]byte{iss}, Rotation: true}, ""},
		{"refused", CertResponse{RequestID: "r1", Status: StatusRefused}, ""},
		{"error", CertResponse{RequestID: "r1", Status: StatusError}, ""},
		{"error to an unreadable request", CertResponse{Status: StatusError}, ""},
		{"unknown status", CertResponse{RequestID: "r1", Status: "ok"}, "unknown status"},
		{"claim status", CertResponse{RequestID: "r1", Status: StatusBound}, "unknown status"},
		{"no status", CertResponse{RequestID: "r1"}, "unknown status"},
		{"issued without certificate", CertResponse{RequestID: "r1", Status: StatusIssued, Chain: [][]byte{iss}}, "without a certificate"},
		{"refused with certificate", CertResponse{RequestID: "r1", Status: StatusRefused, Certificate: leaf}, "carries certificates"},
		{"error with chain", CertResponse{RequestID: "r1", Status: StatusError, Chain: [][]byte{iss}}, "carries certificates"},
		{"too many certificates", CertResponse{RequestID: "r1", Status: StatusIssued, Certificate: leaf, Chain: append(fifteen, iss)}, "exceed the limit"},
		{"empty chain entry", CertResponse{RequestID: "r1", Status: StatusIssued, Certificate: leaf, Chain: [][]byte{iss, nil}}, "chain certificate 1 is empty"},
		{"bad request ID", CertResponse{RequestID: "r/1", Status: StatusRefused}, "request_id"},
		{"rotation with request ID", CertResponse{RequestID: "r1", Status: StatusIssued, Certificate: leaf, Rotation: true}, "rotation"},
		{"rotation refused", CertResponse{Status: StatusRefused, Rotation: true}, "rotation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseCertResponse(b)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one mentioning %q", err, tc.wantErr)
				}
				if verr := tc.r.Validate(); verr == nil {
					t.Fatal("Validate accepts what ParseCertResponse refuses")
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseCertResponse(%s): %v", b, err)
			}
			if got.Status != tc.r.Status || got.RequestID != tc.r.RequestID || got.Rotation != tc.r.Rotation ||
				!bytes.Equal(got.Certificate, tc.r.Certificate) || len(got.Chain) != len(tc.r.Chain) {
				t.Fatalf("round trip changed the response: %+v", got)
			}
			if got.Status != StatusIssued {
				if _, err := got.Certificates(); err == nil {
					t.Fatal("Certificates succeeded without a certificate")
				}
				return
			}
			certs, err := got.Certificates()
			if err != nil {
				t.Fatalf("Certificates: %v", err)
			}
			want := append([][]byte{tc.r.Certificate}, tc.r.Chain...)
			if len(certs) != len(want) {
				t.Fatalf("Certificates returned %d, want %d", len(certs), len(want))
			}
			for i := range want {
				if !bytes.Equal(certs[i].Raw, want[i]) {
					t.Fatalf("certificate %d out of order", i)
				}
			}
		})
	}

	for _, tc := range []struct{ name, in, wantErr string }{
		{"unknown field", `{"status":"refused","reason":"not on allow-list"}`, "unknown field"},
		{"oversized", `{"status":"refused"}` + strings.Repeat(" ", MaxMessage), "limit"},
		{"status twice", `{"status":"refused","status":"issued"}`, "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseCertResponse([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}

	bad := CertResponse{RequestID: "r1", Status: StatusIssued, Certificate: leaf, Chain: [][]byte{{0x30, 0x00}}}
	if _, err := bad.Certificates(); err == nil || !strings.Contains(err.Error(), "chain certificate 0") {
		t.Fatalf("Certificates with a bad chain entry: %v", err)
	}
	bad = CertResponse{RequestID: "r1", Status: StatusIssued, Certificate: []byte("junk")}
	if _, err := bad.Certificates(); err == nil || !strings.Contains(err.Error(), "parse certificate") {
		t.Fatalf("Certificates with a bad leaf: %v", err)
	}
}

func TestClaimRequest(t *testing.T) {
	for _, r := range []ClaimRequest{
		{RequestID: "c1", Token: "a"},
		{RequestID: "c-2", Token: tokenFor(MaxClaimToken)},
		{RequestID: "c_3", Token: "eyJh.e30.AAAA.BBBB-_.CCCC"},
	} {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseClaimRequest(b)
		if err != nil || got != r {
			t.Fatalf("ParseClaimRequest(%s) = %+v, %v", b, got, err)
		}
	}
	for _, tc := range []struct{ name, in, wantErr string }{
		{"missing token", `{"request_id":"c1"}`, "claim token (0 bytes)"},
		{"empty token", `{"request_id":"c1","token":""}`, "claim token"},
		{"oversized token", `{"request_id":"c1","token":"` + tokenFor(MaxClaimToken+1) + `"}`, "claim token"},
		{"token with padding", `{"request_id":"c1","token":"a.b="}`, "claim token"},
		{"token with a newline", `{"request_id":"c1","token":"a.b\n"}`, "claim token"},
		{"token with a control character", `{"request_id":"c1","token":"a\u0000b"}`, "claim token"},
		{"non-ASCII token", `{"request_id":"c1","token":"aé"}`, "claim token"},
		{"missing request ID", `{"token":"a.b"}`, "request_id"},
		{"bad request ID", `{"request_id":"c#1","token":"a.b"}`, "request_id"},
		{"unknown field", `{"request_id":"c1","token":"a.b","user":"u"}`, "unknown field"},
		{"trailing data", `{"request_id":"c1","token":"a.b"} {}`, "trailing"},
		{"oversized", `{"request_id":"c1","token":"a.b"}` + strings.Repeat("\n", MaxMessage), "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseClaimRequest([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one mentioning %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "a.b") {
				t.Errorf("error %q quotes the token", err)
			}
		})
	}
}

func TestClaimResult(t *testing.T) {
	for _, r := range []ClaimResult{{RequestID: "c1", Status: StatusBound}, {RequestID: "c1", Status: StatusRefused}} {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseClaimResult(b)
		if err != nil || got != r {
			t.Fatalf("ParseClaimResult(%s) = %+v, %v", b, got, err)
		}
	}
	for _, tc := range []struct{ name, in, wantErr string }{
		{"issued", `{"request_id":"c1","status":"issued"}`, "unknown status"},
		{"error", `{"request_id":"c1","status":"error"}`, "unknown status"},
		{"no status", `{"request_id":"c1"}`, "unknown status"},
		{"no request ID", `{"status":"bound"}`, "request_id"},
		{"unknown field", `{"request_id":"c1","status":"bound","user":"u"}`, "unknown field"},
		{"oversized", `{"request_id":"c1","status":"bound"}` + strings.Repeat(" ", MaxMessage), "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseClaimResult([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
}
