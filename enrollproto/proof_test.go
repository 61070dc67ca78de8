package enrollproto

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// proofVector is testdata/proof-vector.json, a vector any implementation
// of the proof (the device SDK in C included) can check itself against.
type proofVector struct {
	Description string `json:"description"`
	Secret      string `json:"secret"`    // hex
	DeviceID    string `json:"device_id"` // as is
	CSR         string `json:"csr"`       // hex DER
	Proof       string `json:"proof"`     // hex
	ProofHeader string `json:"proof_header"`
}

func loadProofVector(t *testing.T) (secret []byte, id string, csr, proof []byte, header string) {
	t.Helper()
	b, err := os.ReadFile("testdata/proof-vector.json")
	if err != nil {
		t.Fatal(err)
	}
	var v proofVector
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("proof-vector.json: %v", err)
	}
	unhex := func(name, s string) []byte {
		t.Helper()
		x, err := hex.DecodeString(s)
		if err != nil {
			t.Fatalf("proof-vector.json: %s: %v", name, err)
		}
		return x
	}
	return unhex("secret", v.Secret), v.DeviceID, unhex("csr", v.CSR), unhex("proof", v.Proof), v.ProofHeader
}

func TestProofVector(t *testing.T) {
	secret, id, csr, proof, header := loadProofVector(t)
	if len(secret) != SecretSize || len(proof) != 32 {
		t.Fatalf("vector has a %d-byte secret and a %d-byte proof", len(secret), len(proof))
	}
	if got := Proof(secret, id, csr); !bytes.Equal(got, proof) {
		t.Fatalf("Proof = %x, the vector says %x", got, proof)
	}
	if !VerifyProof(secret, id, csr, proof) {
		t.Fatal("VerifyProof refuses the vector's proof")
	}
	if got := EncodeProofHeader(proof); got != header {
		t.Fatalf("EncodeProofHeader = %q, the vector says %q", got, header)
	}
	got, err := DecodeProofHeader(header)
	if err != nil || !bytes.Equal(got, proof) {
		t.Fatalf("DecodeProofHeader(vector) = %x, %v", got, err)
	}
}

// TestProofVectorOpenSSL recomputes the vector's HMAC with OpenSSL from the
// message layout in docs/onboarding.md, so the vector does not just agree
// with the code that checks it.
func TestProofVectorOpenSSL(t *testing.T) {
	requireOpenSSL(t)
	secret, id, csr, proof, _ := loadProofVector(t)
	msg := append([]byte("warden-enroll-v1\x00"+id+"\x00"), csr...)
	got := runOpenSSL(t, msg, "dgst", "-sha256", "-mac", "HMAC", "-macopt", "hexkey:"+hex.EncodeToString(secret), "-binary")
	if !bytes.Equal(got, proof) {
		t.Fatalf("OpenSSL's HMAC is %x, the vector says %x", got, proof)
	}
}

func TestVerifyProof(t *testing.T) {
	secret, id, csr, proof, _ := loadProofVector(t)
	other := bytes.Clone(secret)
	other[0] ^= 1
	flipped := bytes.Clone(proof)
	flipped[31] ^= 0x80
	short := secret[:16]
	long := append(bytes.Clone(secret), 0)
	for _, tc := range []struct {
		name   string
		secret []byte
		id     string
		csr    []byte
		proof  []byte
		want   bool
	}{
		{"the vector", secret, id, csr, proof, true},
		{"wrong secret", other, id, csr, proof, false},
		{"wrong device ID", secret, "a1b2c3d5", csr, proof, false},
		{"device ID moved into the CSR", secret, "a1b2c3d", append([]byte("4"), csr...), proof, false},
		{"wrong CSR", secret, id, append(bytes.Clone(csr), 0), proof, false},
		{"flipped proof bit", secret, id, csr, flipped, false},
		{"truncated proof", secret, id, csr, proof[:31], false},
		{"empty proof", secret, id, csr, nil, false},
		{"short secret, matching proof", short, id, csr, Proof(short, id, csr), false},
		{"long secret, matching proof", long, id, csr, Proof(long, id, csr), false},
		{"no secret, matching proof", nil, id, csr, Proof(nil, id, csr), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := VerifyProof(tc.secret, tc.id, tc.csr, tc.proof); got != tc.want {
				t.Fatalf("VerifyProof = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNewSecret(t *testing.T) {
	a, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != SecretSize || len(b) != SecretSize {
		t.Fatalf("secrets are %d and %d bytes, want %d", len(a), len(b), SecretSize)
	}
	if bytes.Equal(a, b) {
		t.Fatal("two secrets are equal")
	}
	csr := newCSR(t, "dev-1")
	if !VerifyProof(a, "dev-1", csr, Proof(a, "dev-1", csr)) {
		t.Fatal("a fresh secret's proof does not verify")
	}
}

func TestDecodeProofHeader(t *testing.T) {
	proof := bytes.Repeat([]byte{0xfb, 0xff, 0x3e}, 11)[:32]
	good := EncodeProofHeader(proof)
	if strings.ContainsAny(good, "=+/") {
		t.Fatalf("header %q is not unpadded base64url", good)
	}
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"canonical", good, true},
		{"padded", good + "=", false},
		{"standard alphabet", base64.RawStdEncoding.EncodeToString(proof), false},
		{"31 bytes", EncodeProofHeader(proof[:31]), false},
		{"33 bytes", EncodeProofHeader(append(bytes.Clone(proof), 0)), false},
		{"non-zero trailing bits", good[:42] + "B", false},
		{"space", " " + good[1:], false},
		{"line break", good[:20] + "\n" + good[21:], false},
		{"CRLF inside 43 characters", good[:20] + "\r\n" + good[22:], false},
		{"empty", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeProofHeader(tc.in)
			if tc.ok {
				if err != nil || !bytes.Equal(got, proof) {
					t.Fatalf("DecodeProofHeader = %x, %v", got, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("DecodeProofHeader(%q) accepted it", tc.in)
			}
			if !strings.Contains(err.Error(), HeaderProof) {
				t.Errorf("error %q does not name the header", err)
			}
		})
	}
}

func TestSecretFile(t *testing.T) {
	secret, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	f := SecretFile{Version: SecretFileVersion, DeviceID: "a1b2c3d4", Secret: secret}
	b, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(b, []byte("}\n")) || !bytes.Contains(b, []byte("\n  \"device_id\": \"a1b2c3d4\",\n")) {
		t.Fatalf("Marshal is not indented JSON with a final newline:\n%s", b)
	}
	// Through a real file, as the factory tooling does it.
	path := t.TempDir() + "/secret.json"
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	read, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseSecretFile(read)
	if err != nil {
		t.Fatalf("ParseSecretFile(Marshal()): %v", err)
	}
	if got.Version != f.Version || got.DeviceID != f.DeviceID || !bytes.Equal(got.Secret, f.Secret) {
		t.Fatalf("round trip gave %+v", got)
	}

	for _, bad := range []SecretFile{
		{Version: 0, DeviceID: "a1", Secret: secret},
		{Version: 2, DeviceID: "a1", Secret: secret},
		{Version: 1, DeviceID: "", Secret: secret},
		{Version: 1, DeviceID: "a/1", Secret: secret},
		{Version: 1, DeviceID: "a1", Secret: secret[:31]},
		{Version: 1, DeviceID: "a1", Secret: nil},
	} {
		if _, err := bad.Marshal(); err == nil {
			t.Errorf("Marshal accepted version %d, ID %q, %d-byte secret", bad.Version, bad.DeviceID, len(bad.Secret))
		}
	}
}

func TestParseSecretFileRefuses(t *testing.T) {
	s := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, SecretSize))
	for _, tc := range []struct {
		name, in, wantErr string
	}{
		{"unknown field", `{"version":1,"device_id":"a1","secret":"` + s + `","model":"x"}`, "unknown field"},
		{"case variant key", `{"version":1,"Device_ID":"a1","secret":"` + s + `"}`, "unknown field"},
		{"duplicate key", `{"version":1,"device_id":"a1","device_id":"b2","secret":"` + s + `"}`, "twice"},
		{"trailing data", `{"version":1,"device_id":"a1","secret":"` + s + `"}{}`, "trailing"},
		{"missing version", `{"device_id":"a1","secret":"` + s + `"}`, "version 0"},
		{"version 2", `{"version":2,"device_id":"a1","secret":"` + s + `"}`, "version 2"},
		{"bad device ID", `{"version":1,"device_id":"a#1","secret":"` + s + `"}`, "device ID"},
		{"missing secret", `{"version":1,"device_id":"a1"}`, "secret is 0 bytes"},
		{"short secret", `{"version":1,"device_id":"a1","secret":"` + s[:40] + `"}`, "secret is 30 bytes"},
		{"secret not base64", `{"version":1,"device_id":"a1","secret":"!!!!"}`, "illegal base64"},
		{"array", `[1]`, "JSON object"},
		{"empty", ``, "not JSON"},
		{"oversized", `{"version":1,"device_id":"a1","secret":"` + s + `"}` + strings.Repeat(" ", 4096), "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSecretFile([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one mentioning %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), s) {
				t.Fatal("error message contains the secret")
			}
		})
	}
}
