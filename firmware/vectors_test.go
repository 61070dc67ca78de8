package firmware_test

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/veraison/go-cose"

	"github.com/warden-iot/warden/firmware"
)

var update = flag.Bool("update", false, "rewrite ../testdata/firmware and testdata/fuzz seeds from the generator")

const (
	vectorDir    = "../testdata/firmware"
	vectorFormat = "warden-firmware-vectors-v1"
)

// The vector file, testdata/firmware/vectors.json. docs/firmware.md ("Test
// vectors") describes how another implementation uses it.
type vectorFile struct {
	Format     string            `json:"format"`
	Comment    string            `json:"comment"`
	Keys       []vectorKey       `json:"keys"`
	Images     []vectorImage     `json:"images"`
	Statements []vectorStatement `json:"statements"`
	Matches    []vectorMatch     `json:"matches"`
	Checks     []vectorCheck     `json:"checks"`
}

type vectorKey struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	PrivateKey string `json:"private_key,omitempty"` // PEM file, PKCS#8
	PublicKey  string `json:"public_key"`            // PEM file, SubjectPublicKeyInfo
	SPKI       string `json:"spki"`                  // hex DER of the public key
	KeyHash    string `json:"key_hash"`              // hex SHA-256 of spki: key hash TLV and kid
}

type vectorImage struct {
	Name            string   `json:"name"`
	Comment         string   `json:"comment"`
	File            string   `json:"file"`
	Deterministic   bool     `json:"deterministic"` // false: ECDSA; size, file_sha256 and the signature change when regenerated
	VerifyKey       string   `json:"verify_key"`    // public key file to verify with
	Expect          string   `json:"expect"`        // ok, malformed, digest, key-mismatch, signature
	Size            int      `json:"size"`
	FileSHA256      string   `json:"file_sha256"`
	HeaderSize      int      `json:"header_size,omitempty"`
	PayloadSize     int      `json:"payload_size,omitempty"`
	Version         string   `json:"version,omitempty"`
	SecurityCounter *uint32  `json:"security_counter,omitempty"`
	Digest          string   `json:"digest,omitempty"`   // SHA-256 of header, gap, payload and protected area of this file
	HashTLV         string   `json:"hash_tlv,omitempty"` // value of TLV 0x10
	KeyHashTLV      string   `json:"key_hash_tlv,omitempty"`
	UnknownTLVs     []uint16 `json:"unknown_tlvs,omitempty"`
}

type vectorStatement struct {
	Name            string `json:"name"`
	Comment         string `json:"comment"`
	File            string `json:"file"`
	Deterministic   bool   `json:"deterministic"` // false: ES256; signature and (for ECDSA images) image fields change
	VerifyKey       string `json:"verify_key"`
	Expect          string `json:"expect"` // ok, malformed, key-mismatch, signature
	Algorithm       string `json:"algorithm,omitempty"`
	KeyID           string `json:"kid,omitempty"`
	Payload         string `json:"payload,omitempty"` // hex of the payload CBOR
	Model           string `json:"model,omitempty"`
	Version         string `json:"version,omitempty"`
	SecurityCounter uint32 `json:"security_counter,omitempty"`
	ImageSHA256     string `json:"image_sha256,omitempty"`
	ImageSize       int64  `json:"image_size,omitempty"`
	Sequence        uint64 `json:"sequence,omitempty"`
	IssuedAt        int64  `json:"issued_at,omitempty"`
	ExpiresAt       int64  `json:"expires_at,omitempty"`
}

type vectorMatch struct {
	Name      string `json:"name"`
	Statement string `json:"statement"`
	Image     string `json:"image"`
	VerifyKey string `json:"verify_key"`
	Expect    string `json:"expect"` // ok, digest, mismatch
}

type vectorPolicy struct {
	Model           string `json:"model"`
	Current         string `json:"current"`
	SecurityCounter uint32 `json:"security_counter"`
	LastSequence    uint64 `json:"last_sequence"`
	AllowDowngrade  bool   `json:"allow_downgrade"`
}

type vectorCheck struct {
	Name      string       `json:"name"`
	Statement string       `json:"statement"`
	VerifyKey string       `json:"verify_key"`
	Policy    vectorPolicy `json:"policy"`
	Now       int64        `json:"now"`
	NowUTC    string       `json:"now_utc"`
	Expect    string       `json:"expect"` // ok, model, expired, replay, rollback, not-newer
}

var expectErrors = map[string]error{
	"ok":           nil,
	"malformed":    firmware.ErrMalformed,
	"digest":       firmware.ErrDigest,
	"key-mismatch": firmware.ErrKeyMismatch,
	"signature":    firmware.ErrSignature,
	"mismatch":     firmware.ErrMismatch,
	"model":        firmware.ErrModel,
	"expired":      firmware.ErrExpired,
	"replay":       firmware.ErrReplay,
	"rollback":     firmware.ErrRollback,
	"not-newer":    firmware.ErrNotNewer,
}

type generated struct {
	vf            vectorFile
	files         map[string][]byte
	deterministic map[string]bool
}

func pemFile(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// vectorPayload is the fixed 1000-byte payload of the vector images.
func vectorPayload() []byte { return testPayload(1000) }

func generateVectors(t testing.TB) *generated {
	g := &generated{
		vf: vectorFile{
			Format: vectorFormat,
			Comment: "Warden firmware test vectors, see docs/firmware.md (Test vectors). Regenerate with: " +
				"go test ./firmware -run TestVectors -update",
		},
		files:         map[string][]byte{},
		deterministic: map[string]bool{},
	}
	add := func(name string, data []byte, det bool) {
		g.files[name], g.deterministic[name] = data, det
	}

	// Keys.
	p256, ed, other := fixedP256(t, "release-p256"), fixedEd25519(t, "release-ed25519"), fixedP256(t, "other-p256")
	for _, k := range []struct {
		name, typ string
		signer    crypto.Signer
		private   bool
	}{
		{"release-p256", "ecdsa-p256", p256, true},
		{"release-ed25519", "ed25519", ed, true},
		{"other-p256", "ecdsa-p256", other, false},
	} {
		spki, err := firmware.MarshalPublicKey(k.signer.Public())
		if err != nil {
			t.Fatal(err)
		}
		pubPEM, _ := firmware.EncodePublicKeyPEM(k.signer.Public())
		kh, _ := firmware.KeyHash(k.signer.Public())
		vk := vectorKey{Name: k.name, Type: k.typ, PublicKey: k.name + ".pub.pem", SPKI: hex.EncodeToString(spki), KeyHash: hex.EncodeToString(kh[:])}
		add(vk.PublicKey, pubPEM, true)
		if k.private {
			der, err := firmware.MarshalPrivateKey(k.signer)
			if err != nil {
				t.Fatal(err)
			}
			vk.PrivateKey = k.name + ".pem"
			add(vk.PrivateKey, pemFile("PRIVATE KEY", der), true)
		}
		g.vf.Keys = append(g.vf.Keys, vk)
	}

	// Images.
	v1234 := firmware.Version{Major: 1, Minor: 2, Revision: 3, Build: 4}
	v130 := firmware.Version{Major: 1, Minor: 3}
	addImage := func(name, comment, key, expect string, det bool, b []byte) {
		file := name + ".img"
		add(file, b, det)
		sum := sha256.Sum256(b)
		vi := vectorImage{Name: name, Comment: comment, File: file, Deterministic: det, VerifyKey: key, Expect: expect,
			Size: len(b), FileSHA256: hex.EncodeToString(sum[:])}
		if img, err := firmware.ParseImage(b); err == nil {
			d := img.Digest()
			vi.HeaderSize, vi.PayloadSize = int(img.Header.HeaderSize), len(img.Payload)
			vi.Version = img.Header.Version.String()
			if c, ok := img.SecurityCounter(); ok {
				vi.SecurityCounter = &c
			}
			vi.Digest = hex.EncodeToString(d[:])
			vi.HashTLV = hex.EncodeToString(findTLV(img.Unprotected, firmware.TLVSHA256))
			vi.KeyHashTLV = hex.EncodeToString(findTLV(img.Unprotected, firmware.TLVKeyHash))
			for _, u := range img.Unknown() {
				vi.UnknownTLVs = append(vi.UnknownTLVs, u.Type)
			}
		}
		g.vf.Images = append(g.vf.Images, vi)
	}
	ecImg := mustSign(t, vectorPayload(), p256, firmware.SignOptions{Version: v1234, SecurityCounter: 7, HeaderSize: 0x200})
	edImg := mustSign(t, vectorPayload(), ed, firmware.SignOptions{Version: v1234, SecurityCounter: 7, HeaderSize: 32})
	padImg := mustSign(t, vectorPayload(), ed, firmware.SignOptions{Version: v130, SecurityCounter: 8, HeaderSize: 0x200, SlotSize: 0x2000, Pad: true})
	flip := func(b []byte, off int) []byte {
		c := bytes.Clone(b)
		c[off] ^= 0x01
		return c
	}
	addImage("ecdsa-p256-hdr512", "ECDSA P-256, header 0x200, version 1.2.3+4, security counter 7, the 1000-byte payload", "release-p256.pub.pem", "ok", false, ecImg)
	addImage("ed25519-hdr32", "Ed25519, header 32, version 1.2.3+4, security counter 7, the same payload", "release-ed25519.pub.pem", "ok", true, edImg)
	addImage("ed25519-padded", "Ed25519, header 0x200, version 1.3.0+0, counter 8, padded to an 8 KiB slot (align 8): 0xff then the boot magic", "release-ed25519.pub.pem", "ok", true, padImg)
	addImage("ecdsa-p256-tampered-payload", "ecdsa-p256-hdr512 with payload byte 0 flipped", "release-p256.pub.pem", "digest", false, flip(ecImg, 0x200))
	addImage("ecdsa-p256-tampered-counter", "ecdsa-p256-hdr512 with the security counter changed from 7 to 6 (protected area)", "release-p256.pub.pem", "digest", false, flip(ecImg, 0x200+1000+8))
	edParsed := mustParse(t, edImg)
	sig := bytes.Clone(findTLV(edParsed.Unprotected, firmware.TLVEd25519))
	sig[63] ^= 0x01
	addImage("ed25519-bad-signature", "ed25519-hdr32 with the last signature byte flipped", "release-ed25519.pub.pem", "signature", true,
		withUnprotected(t, edImg, []firmware.TLV{edParsed.Unprotected[0], edParsed.Unprotected[1], {Type: firmware.TLVEd25519, Value: sig}}))
	addImage("ed25519-unknown-tlv", "ed25519-hdr32 with an unprotected TLV 0x00a0 appended and the area total fixed: MCUboot ignores it, so it verifies",
		"release-ed25519.pub.pem", "ok", true, withUnprotected(t, edImg, append(append([]firmware.TLV(nil), edParsed.Unprotected...), firmware.TLV{Type: 0xa0, Value: []byte("vendor data")})))
	addImage("ed25519-truncated", "ed25519-hdr32 without its last byte", "release-ed25519.pub.pem", "malformed", true, edImg[:len(edImg)-1])
	// The same files with the wrong key.
	for _, w := range []struct{ base, key string }{{"ecdsa-p256-hdr512", "other-p256.pub.pem"}, {"ed25519-hdr32", "release-p256.pub.pem"}} {
		for _, vi := range g.vf.Images {
			if vi.Name == w.base {
				vi.Name, vi.VerifyKey, vi.Expect = w.base+"-wrong-key", w.key, "key-mismatch"
				vi.Comment = w.base + " verified with " + w.key
				g.vf.Images = append(g.vf.Images, vi)
				break
			}
		}
	}

	// Statements.
	const model = "warden-devkit"
	stmt := func(img []byte, v firmware.Version, ctr uint32, seq uint64) firmware.Statement {
		return firmware.Statement{Model: model, Version: v, SecurityCounter: ctr, ImageSHA256: sha256.Sum256(img), ImageSize: int64(len(img)),
			Sequence: seq, IssuedAt: issued, ExpiresAt: expires}
	}
	addStatement := func(name, comment, key, expect string, det bool, b []byte) {
		file := name + ".cose"
		add(file, b, det)
		vs := vectorStatement{Name: name, Comment: comment, File: file, Deterministic: det, VerifyKey: key, Expect: expect}
		if expect == "ok" {
			ss, err := firmware.ParseStatement(b)
			if err != nil {
				t.Fatalf("vector %s: %v", name, err)
			}
			var msg cose.Sign1Message
			if err := msg.UnmarshalCBOR(b); err != nil {
				t.Fatal(err)
			}
			s := ss.Statement
			vs.Algorithm, vs.KeyID, vs.Payload = ss.Algorithm, ss.KeyID, hex.EncodeToString(msg.Payload)
			vs.Model, vs.Version, vs.SecurityCounter = s.Model, s.Version.String(), s.SecurityCounter
			vs.ImageSHA256, vs.ImageSize, vs.Sequence = hex.EncodeToString(s.ImageSHA256[:]), s.ImageSize, s.Sequence
			vs.IssuedAt, vs.ExpiresAt = s.IssuedAt.Unix(), s.ExpiresAt.Unix()
		}
		g.vf.Statements = append(g.vf.Statements, vs)
	}
	edStmt := mustSignStatement(t, stmt(edImg, v1234, 7, 1), ed)
	addStatement("statement-ecdsa-p256", "release of ecdsa-p256-hdr512.img, sequence 1", "release-p256.pub.pem", "ok", false, mustSignStatement(t, stmt(ecImg, v1234, 7, 1), p256))
	addStatement("statement-ed25519", "release of ed25519-hdr32.img, sequence 1", "release-ed25519.pub.pem", "ok", true, edStmt)
	addStatement("statement-ed25519-padded", "release of ed25519-padded.img, sequence 2", "release-ed25519.pub.pem", "ok", true, mustSignStatement(t, stmt(padImg, v130, 8, 2), ed))
	addStatement("statement-ed25519-wrong-counter", "names ed25519-hdr32.img but says security counter 6: verifies, fails MatchImage", "release-ed25519.pub.pem", "ok", true, mustSignStatement(t, stmt(edImg, v1234, 6, 3), ed))
	sumAt := bytes.Index(edStmt, sha256Of(edImg))
	addStatement("statement-ed25519-tampered", "statement-ed25519 with a byte of the image SHA-256 flipped: well-formed, bad signature", "release-ed25519.pub.pem", "signature", true, flip(edStmt, sumAt+5))
	khEd, _ := firmware.KeyHash(ed.Public())
	prot := protectedMap(cose.AlgorithmEdDSA, firmware.StatementContentType, khEd[:])
	pairs := statementPairs(stmt(edImg, v1234, 7, 1))
	nonCanon := append([]kv(nil), pairs...)
	nonCanon[5] = kv{nonCanon[5].k, []byte{0x18, 0x01}}
	addStatement("statement-ed25519-noncanonical", "validly signed, but sequence 1 is encoded in two bytes (18 01): not deterministic CBOR", "release-ed25519.pub.pem", "malformed", true,
		signRaw(t, ed, prot, cborMap(nonCanon...)))
	addStatement("statement-ed25519-unknown-field", "validly signed, but the payload has a key 9", "release-ed25519.pub.pem", "malformed", true,
		signRaw(t, ed, prot, cborMap(append(append([]kv(nil), pairs...), kv{cborHead(0, 9), cborHead(0, 0)})...)))
	for _, w := range []struct{ base, key string }{{"statement-ed25519", "release-p256.pub.pem"}, {"statement-ecdsa-p256", "other-p256.pub.pem"}} {
		for _, vs := range g.vf.Statements {
			if vs.Name == w.base {
				g.vf.Statements = append(g.vf.Statements, vectorStatement{Name: w.base + "-wrong-key", Comment: w.base + " verified with " + w.key,
					File: vs.File, Deterministic: vs.Deterministic, VerifyKey: w.key, Expect: "key-mismatch"})
				break
			}
		}
	}

	g.vf.Matches = []vectorMatch{
		{"ecdsa-p256", "statement-ecdsa-p256.cose", "ecdsa-p256-hdr512.img", "release-p256.pub.pem", "ok"},
		{"ed25519", "statement-ed25519.cose", "ed25519-hdr32.img", "release-ed25519.pub.pem", "ok"},
		{"ed25519-padded", "statement-ed25519-padded.cose", "ed25519-padded.img", "release-ed25519.pub.pem", "ok"},
		{"other-file", "statement-ed25519.cose", "ed25519-padded.img", "release-ed25519.pub.pem", "digest"},
		{"unknown-tlv-changes-the-file", "statement-ed25519.cose", "ed25519-unknown-tlv.img", "release-ed25519.pub.pem", "digest"},
		{"wrong-counter", "statement-ed25519-wrong-counter.cose", "ed25519-hdr32.img", "release-ed25519.pub.pem", "mismatch"},
	}

	base := vectorPolicy{Model: model, Current: "1.2.2+0", SecurityCounter: 7, LastSequence: 0}
	check := func(name string, mod func(*vectorPolicy), now time.Time, expect string) {
		p := base
		if mod != nil {
			mod(&p)
		}
		g.vf.Checks = append(g.vf.Checks, vectorCheck{Name: name, Statement: "statement-ed25519.cose", VerifyKey: "release-ed25519.pub.pem",
			Policy: p, Now: now.Unix(), NowUTC: now.UTC().Format(time.RFC3339), Expect: expect})
	}
	mid := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	check("ok", nil, mid, "ok")
	check("other-model", func(p *vectorPolicy) { p.Model = "warden-devkit-2" }, mid, "model")
	check("last-valid-second", nil, expires.Add(-time.Second), "ok")
	check("at-expiry", nil, expires, "expired")
	check("issued-5-minutes-ahead", nil, issued.Add(-5*time.Minute), "ok")
	check("issued-too-far-ahead", nil, issued.Add(-5*time.Minute-time.Second), "expired")
	check("replay", func(p *vectorPolicy) { p.LastSequence = 1 }, mid, "replay")
	check("rollback", func(p *vectorPolicy) { p.SecurityCounter = 8 }, mid, "rollback")
	check("same-counter", func(p *vectorPolicy) { p.SecurityCounter = 7 }, mid, "ok")
	check("same-version", func(p *vectorPolicy) { p.Current = "1.2.3+4" }, mid, "not-newer")
	check("newer-build-running", func(p *vectorPolicy) { p.Current = "1.2.3+5" }, mid, "not-newer")
	check("downgrade-refused", func(p *vectorPolicy) { p.Current = "2.0.0+0" }, mid, "not-newer")
	check("downgrade-allowed", func(p *vectorPolicy) { p.Current, p.AllowDowngrade = "2.0.0+0", true }, mid, "ok")
	check("downgrade-allowed-counter-still-checked", func(p *vectorPolicy) { p.Current, p.AllowDowngrade, p.SecurityCounter = "2.0.0+0", true, 9 }, mid, "rollback")

	js, err := json.MarshalIndent(g.vf, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	g.files["vectors.json"] = append(js, '\n')
	return g
}

func sha256Of(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// variable clears the fields that change when non-deterministic vectors
// are regenerated.
func (v vectorImage) variable() vectorImage {
	if !v.Deterministic {
		v.Size, v.FileSHA256 = 0, ""
	}
	return v
}

func (v vectorStatement) variable() vectorStatement {
	if !v.Deterministic {
		v.Payload, v.ImageSHA256, v.ImageSize = "", "", 0
	}
	return v
}

// TestVectors regenerates the vectors in memory and compares them with
// testdata/firmware (byte for byte where signatures are deterministic),
// then runs every committed vector through the public API as another
// implementation would, from the files and vectors.json alone. With
// -update it rewrites testdata/firmware and the fuzz seed corpora first.
func TestVectors(t *testing.T) {
	g := generateVectors(t)
	if *update {
		writeVectors(t, g)
	}
	raw, err := os.ReadFile(filepath.Join(vectorDir, "vectors.json"))
	if err != nil {
		t.Fatalf("%v; run: go test ./firmware -run TestVectors -update", err)
	}
	var vf vectorFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&vf); err != nil {
		t.Fatal(err)
	}

	// The committed set is what the generator makes now.
	if vf.Format != vectorFormat || len(vf.Images) != len(g.vf.Images) || len(vf.Statements) != len(g.vf.Statements) ||
		!reflect.DeepEqual(vf.Keys, g.vf.Keys) || !reflect.DeepEqual(vf.Matches, g.vf.Matches) || !reflect.DeepEqual(vf.Checks, g.vf.Checks) {
		t.Fatal("vectors.json differs from the generator; run: go test ./firmware -run TestVectors -update")
	}
	for i := range vf.Images {
		if !reflect.DeepEqual(vf.Images[i].variable(), g.vf.Images[i].variable()) {
			t.Errorf("image vector %s differs from the generator:\n%+v\n%+v", vf.Images[i].Name, vf.Images[i], g.vf.Images[i])
		}
	}
	for i := range vf.Statements {
		if !reflect.DeepEqual(vf.Statements[i].variable(), g.vf.Statements[i].variable()) {
			t.Errorf("statement vector %s differs from the generator:\n%+v\n%+v", vf.Statements[i].Name, vf.Statements[i], g.vf.Statements[i])
		}
	}
	names := make([]string, 0, len(g.files))
	for name := range g.files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		got, err := os.ReadFile(filepath.Join(vectorDir, name))
		if err != nil {
			t.Errorf("%v; run: go test ./firmware -run TestVectors -update", err)
			continue
		}
		if g.deterministic[name] && !bytes.Equal(got, g.files[name]) {
			t.Errorf("%s differs from the generator's output", name)
		}
	}

	runVectors(t, &vf)
}

// runVectors is what a second implementation does with the vectors.
func runVectors(t *testing.T, vf *vectorFile) {
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(vectorDir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	pubs := map[string]crypto.PublicKey{}
	for _, k := range vf.Keys {
		pub, err := firmware.ParsePublicKeyPEM(read(k.PublicKey))
		if err != nil {
			t.Fatalf("key %s: %v", k.Name, err)
		}
		spki, _ := firmware.MarshalPublicKey(pub)
		id, _ := firmware.KeyID(pub)
		if hex.EncodeToString(spki) != k.SPKI || id != k.KeyHash {
			t.Errorf("key %s: SPKI or key hash differ", k.Name)
		}
		if k.PrivateKey != "" {
			block, _ := pem.Decode(read(k.PrivateKey))
			priv, err := firmware.ParsePrivateKey(block.Bytes)
			if err != nil {
				t.Fatalf("key %s: %v", k.Name, err)
			}
			if pid, _ := firmware.KeyID(priv.Public()); pid != id {
				t.Errorf("key %s: private and public files do not match", k.Name)
			}
		}
		pubs[k.PublicKey] = pub
	}
	expect := func(what, name, want string, err error) {
		t.Helper()
		target, ok := expectErrors[want]
		switch {
		case !ok:
			t.Errorf("%s %s: unknown expectation %q", what, name, want)
		case target == nil && err != nil:
			t.Errorf("%s %s: want ok, got %v", what, name, err)
		case target != nil && !errors.Is(err, target):
			t.Errorf("%s %s: want %s, got %v", what, name, want, err)
		}
	}

	for _, v := range vf.Images {
		b := read(v.File)
		sum := sha256.Sum256(b)
		if len(b) != v.Size || hex.EncodeToString(sum[:]) != v.FileSHA256 {
			t.Errorf("image %s: size or file SHA-256 differ from vectors.json", v.Name)
		}
		img, err := firmware.ParseImage(b)
		if err != nil {
			expect("image", v.Name, v.Expect, err)
			continue
		}
		d := img.Digest()
		var unknown []uint16
		for _, u := range img.Unknown() {
			unknown = append(unknown, u.Type)
		}
		c, ok := img.SecurityCounter()
		if int(img.Header.HeaderSize) != v.HeaderSize || len(img.Payload) != v.PayloadSize || img.Header.Version.String() != v.Version ||
			!ok || v.SecurityCounter == nil || c != *v.SecurityCounter || hex.EncodeToString(d[:]) != v.Digest ||
			hex.EncodeToString(findTLV(img.Unprotected, firmware.TLVSHA256)) != v.HashTLV ||
			hex.EncodeToString(findTLV(img.Unprotected, firmware.TLVKeyHash)) != v.KeyHashTLV || !reflect.DeepEqual(unknown, v.UnknownTLVs) {
			t.Errorf("image %s: parsed fields differ from vectors.json", v.Name)
		}
		expect("image", v.Name, v.Expect, img.Verify(pubs[v.VerifyKey]))
	}

	for _, v := range vf.Statements {
		b := read(v.File)
		s, err := firmware.VerifyStatement(b, pubs[v.VerifyKey])
		expect("statement", v.Name, v.Expect, err)
		if err != nil {
			continue
		}
		ss, _ := firmware.ParseStatement(b)
		if s.Model != v.Model || s.Version.String() != v.Version || s.SecurityCounter != v.SecurityCounter ||
			hex.EncodeToString(s.ImageSHA256[:]) != v.ImageSHA256 || s.ImageSize != v.ImageSize || s.Sequence != v.Sequence ||
			s.IssuedAt.Unix() != v.IssuedAt || s.ExpiresAt.Unix() != v.ExpiresAt || ss.Algorithm != v.Algorithm || ss.KeyID != v.KeyID ||
			!bytes.Contains(b, mustHex(t, v.Payload)) {
			t.Errorf("statement %s: fields differ from vectors.json", v.Name)
		}
	}

	for _, v := range vf.Matches {
		s, err := firmware.VerifyStatement(read(v.Statement), pubs[v.VerifyKey])
		if err != nil {
			t.Fatalf("match %s: %v", v.Name, err)
		}
		_, err = s.MatchImage(read(v.Image), pubs[v.VerifyKey])
		expect("match", v.Name, v.Expect, err)
	}

	for _, v := range vf.Checks {
		s, err := firmware.VerifyStatement(read(v.Statement), pubs[v.VerifyKey])
		if err != nil {
			t.Fatalf("check %s: %v", v.Name, err)
		}
		cur, err := firmware.ParseVersion(v.Policy.Current)
		if err != nil {
			t.Fatal(err)
		}
		p := firmware.Policy{Model: v.Policy.Model, Current: cur, SecurityCounter: v.Policy.SecurityCounter,
			LastSequence: v.Policy.LastSequence, AllowDowngrade: v.Policy.AllowDowngrade}
		if time.Unix(v.Now, 0).UTC().Format(time.RFC3339) != v.NowUTC {
			t.Errorf("check %s: now and now_utc disagree", v.Name)
		}
		expect("check", v.Name, v.Expect, s.Check(p, time.Unix(v.Now, 0)))
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeVectors(t *testing.T, g *generated) {
	if err := os.MkdirAll(vectorDir, 0o755); err != nil {
		t.Fatal(err)
	}
	old, _ := filepath.Glob(filepath.Join(vectorDir, "*"))
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range g.files {
		if err := os.WriteFile(filepath.Join(vectorDir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Every vector is also a fuzz seed.
	for _, target := range []struct{ dir, ext string }{{"FuzzParseImage", ".img"}, {"FuzzParseStatement", ".cose"}} {
		dir := filepath.Join("testdata", "fuzz", target.dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range g.files {
			if filepath.Ext(name) != target.ext {
				continue
			}
			seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
			if err := os.WriteFile(filepath.Join(dir, "vector-"+name[:len(name)-len(target.ext)]), []byte(seed), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("wrote %d files to %s", len(g.files), vectorDir)
}
