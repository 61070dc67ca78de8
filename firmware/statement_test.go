package firmware_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/veraison/go-cose"

	"github.com/warden-iot/warden/firmware"
)

var (
	issued  = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	expires = time.Date(2036, 1, 1, 0, 0, 0, 0, time.UTC)
)

func testStatement() firmware.Statement {
	return firmware.Statement{
		Model:           "warden-devkit-nrf52840",
		Version:         firmware.Version{Major: 1, Minor: 2, Revision: 3, Build: 4},
		SecurityCounter: 7,
		ImageSHA256:     sha256.Sum256([]byte("image")),
		ImageSize:       1234,
		Sequence:        42,
		IssuedAt:        issued,
		ExpiresAt:       expires,
	}
}

func mustSignStatement(t testing.TB, s firmware.Statement, signer crypto.Signer) []byte {
	t.Helper()
	b, err := firmware.SignStatement(s, signer)
	if err != nil {
		t.Fatalf("SignStatement: %v", err)
	}
	return b
}

func coseAlg(signer crypto.Signer) cose.Algorithm {
	if _, ok := signer.Public().(*ecdsa.PublicKey); ok {
		return cose.AlgorithmES256
	}
	return cose.AlgorithmEdDSA
}

func TestStatementRoundTrip(t *testing.T) {
	for _, k := range testKeys(t) {
		t.Run(k.name, func(t *testing.T) {
			s := testStatement()
			b := mustSignStatement(t, s, k.signer)
			if len(b) > firmware.MaxStatementSize || len(b) > 400 {
				t.Errorf("statement is %d bytes", len(b))
			}
			got, err := firmware.VerifyStatement(b, k.pub)
			if err != nil {
				t.Fatal(err)
			}
			if got != s {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, s)
			}
			ss, err := firmware.ParseStatement(b)
			if err != nil {
				t.Fatal(err)
			}
			id, _ := firmware.KeyID(k.pub)
			wantAlg := map[string]string{"ecdsa-p256": "ES256", "ed25519": "EdDSA"}[k.name]
			if ss.Statement != s || ss.KeyID != id || ss.Algorithm != wantAlg {
				t.Errorf("ParseStatement = %+v", ss)
			}

			// The layout, checked with go-cose and byte by byte.
			if !bytes.HasPrefix(b, []byte{0xd2, 0x84, 0x58, 0x4c}) {
				t.Errorf("prefix % x", b[:4])
			}
			var msg cose.Sign1Message
			if err := msg.UnmarshalCBOR(b); err != nil {
				t.Fatal(err)
			}
			kh, _ := firmware.KeyHash(k.pub)
			algByte := map[string]byte{"ES256": 0x26, "EdDSA": 0x27}[wantAlg]
			wantProt := append([]byte{0x58, 0x4c, 0xa3, 0x01, algByte, 0x03, 0x78, 0x23}, "application/vnd.warden.release+cbor"...)
			wantProt = append(append(wantProt, 0x04, 0x58, 0x20), kh[:]...)
			if !bytes.Equal(msg.Headers.RawProtected, wantProt) {
				t.Errorf("protected header\n% x\nwant\n% x", msg.Headers.RawProtected, wantProt)
			}
			if alg, _ := msg.Headers.Protected.Algorithm(); alg != coseAlg(k.signer) ||
				msg.Headers.Protected[cose.HeaderLabelContentType] != firmware.StatementContentType ||
				!bytes.Equal(msg.Headers.Protected[cose.HeaderLabelKeyID].([]byte), kh[:]) || len(msg.Headers.Unprotected) != 0 {
				t.Errorf("headers %v / %v", msg.Headers.Protected, msg.Headers.Unprotected)
			}
			v, _ := cose.NewVerifier(coseAlg(k.signer), k.pub)
			if err := msg.Verify(nil, v); err != nil {
				t.Errorf("go-cose Verify: %v", err)
			}
			wantPayload := "a8" + "01" + "76" + hex.EncodeToString([]byte(s.Model)) + "02" + "8401020304" + "0307" +
				"045820" + hex.EncodeToString(s.ImageSHA256[:]) + "051904d2" + "06182a" + "071a6955b900" + "081a7c245f00"
			if got := hex.EncodeToString(msg.Payload); got != wantPayload {
				t.Errorf("payload\n%s\nwant\n%s", got, wantPayload)
			}
		})
	}
}

func TestSignStatementTruncatesTimes(t *testing.T) {
	k := testKeys(t)[1]
	s := testStatement()
	s.IssuedAt = issued.Add(999 * time.Millisecond).In(time.FixedZone("X", 3600))
	s.ExpiresAt = expires.Add(time.Nanosecond)
	got, err := firmware.VerifyStatement(mustSignStatement(t, s, k.signer), k.pub)
	if err != nil || !got.IssuedAt.Equal(issued) || !got.ExpiresAt.Equal(expires) || got.IssuedAt.Location() != time.UTC {
		t.Errorf("times %v %v, %v", got.IssuedAt, got.ExpiresAt, err)
	}
}

func TestSignStatementValidates(t *testing.T) {
	k := testKeys(t)[0]
	for name, mod := range map[string]func(*firmware.Statement){
		"empty model":        func(s *firmware.Statement) { s.Model = "" },
		"model of 65 bytes":  func(s *firmware.Statement) { s.Model = strings.Repeat("m", 65) },
		"control character":  func(s *firmware.Statement) { s.Model = "board\n" },
		"invalid UTF-8":      func(s *firmware.Statement) { s.Model = "board\xff" },
		"size 0":             func(s *firmware.Statement) { s.ImageSize = 0 },
		"negative size":      func(s *firmware.Statement) { s.ImageSize = -1 },
		"sequence 0":         func(s *firmware.Statement) { s.Sequence = 0 },
		"expires at issue":   func(s *firmware.Statement) { s.ExpiresAt = s.IssuedAt },
		"expires in the sub": func(s *firmware.Statement) { s.ExpiresAt = s.IssuedAt.Add(500 * time.Millisecond) },
		"expires before":     func(s *firmware.Statement) { s.ExpiresAt = s.IssuedAt.Add(-time.Hour) },
		"zero issue time":    func(s *firmware.Statement) { s.IssuedAt = time.Time{} },
		"before 1970":        func(s *firmware.Statement) { s.IssuedAt = time.Unix(-1, 0) },
		"after 9999":         func(s *firmware.Statement) { s.ExpiresAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) },
	} {
		s := testStatement()
		mod(&s)
		_, err := firmware.SignStatement(s, k.signer)
		wantErr(t, err, firmware.ErrMalformed, name)
	}
	s := testStatement()
	s.Model = strings.Repeat("é", 32) // 64 bytes
	mustSignStatement(t, s, k.signer)

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, err = firmware.SignStatement(testStatement(), rsaKey)
	wantErr(t, err, firmware.ErrUnsupportedKey, "rsa signer")
	_, err = firmware.SignStatement(testStatement(), brokenSigner{k.signer})
	wantErr(t, err, firmware.ErrSignature, "signer with bad signatures")
	if b, err := firmware.SignStatement(testStatement(), hsm{k.signer}); err != nil {
		t.Errorf("opaque signer: %v", err)
	} else if _, err := firmware.VerifyStatement(b, k.pub); err != nil {
		t.Error(err)
	}
}

func TestStatementEveryByteMatters(t *testing.T) {
	for _, k := range testKeys(t) {
		b := mustSignStatement(t, testStatement(), k.signer)
		for i := range b {
			for _, mask := range []byte{0x01, 0x02, 0x10, 0x80, 0xff} {
				c := bytes.Clone(b)
				c[i] ^= mask
				if _, err := firmware.VerifyStatement(c, k.pub); err == nil {
					t.Fatalf("%s: byte %d ^ %#x still verifies", k.name, i, mask)
				}
			}
		}
		for i := range b {
			if _, err := firmware.ParseStatement(b[:i]); !errors.Is(err, firmware.ErrMalformed) {
				t.Fatalf("%s: truncated to %d: %v", k.name, i, err)
			}
		}
		for _, extra := range [][]byte{{0}, {0xf6}, bytes.Repeat([]byte{0}, firmware.MaxStatementSize)} {
			_, err := firmware.ParseStatement(append(bytes.Clone(b), extra...))
			wantErr(t, err, firmware.ErrMalformed, fmt.Sprintf("%d trailing bytes", len(extra)))
		}
	}
}

func TestVerifyStatementKeys(t *testing.T) {
	ks := testKeys(t)
	p, e := ks[0], ks[1]
	s := testStatement()
	for _, k := range ks {
		b := mustSignStatement(t, s, k.signer)
		_, err := firmware.VerifyStatement(b, k.other.Public())
		wantErr(t, err, firmware.ErrKeyMismatch, k.name+": other key")
		_, err = firmware.VerifyStatement(b, nil)
		wantErr(t, err, firmware.ErrUnsupportedKey, k.name+": nil key")
	}
	_, err := firmware.VerifyStatement(mustSignStatement(t, s, p.signer), e.pub)
	wantErr(t, err, firmware.ErrKeyMismatch, "Ed25519 key for a P-256 statement")

	// kid names key B, signature by key A: B's verification finds the
	// kid right and the signature wrong; A's finds the kid wrong.
	payload := canonicalPayload(t, s)
	for _, k := range ks {
		khOther, _ := firmware.KeyHash(k.other.Public())
		b := signRaw(t, k.signer, protectedMap(coseAlg(k.signer), firmware.StatementContentType, khOther[:]), payload)
		_, err := firmware.VerifyStatement(b, k.other.Public())
		wantErr(t, err, firmware.ErrSignature, k.name+": kid of B, signed by A, checked with B")
		_, err = firmware.VerifyStatement(b, k.pub)
		wantErr(t, err, firmware.ErrKeyMismatch, k.name+": kid of B, signed by A, checked with A")
	}
	// Algorithm and key kind disagree: alg ES256, kid of the Ed25519 key.
	khE, _ := firmware.KeyHash(e.pub)
	b := signRaw(t, p.signer, protectedMap(cose.AlgorithmES256, firmware.StatementContentType, khE[:]), payload)
	_, err = firmware.VerifyStatement(b, e.pub)
	wantErr(t, err, firmware.ErrKeyMismatch, "ES256 statement with an Ed25519 kid")
	ss, err := firmware.ParseStatement(b)
	if err != nil || ss.Algorithm != "ES256" {
		t.Errorf("ParseStatement: %+v, %v", ss, err)
	}
}

// cborHead is a deterministic CBOR head.
func cborHead(major byte, v uint64) []byte {
	m := major << 5
	switch {
	case v < 24:
		return []byte{m | byte(v)}
	case v < 1<<8:
		return []byte{m | 24, byte(v)}
	case v < 1<<16:
		return binary.BigEndian.AppendUint16([]byte{m | 25}, uint16(v))
	case v < 1<<32:
		return binary.BigEndian.AppendUint32([]byte{m | 26}, uint32(v))
	}
	return binary.BigEndian.AppendUint64([]byte{m | 27}, v)
}

func cborBytes(major byte, b []byte) []byte { return append(cborHead(major, uint64(len(b))), b...) }

type kv struct{ k, v []byte }

func cborMap(pairs ...kv) []byte {
	out := cborHead(5, uint64(len(pairs)))
	for _, p := range pairs {
		out = append(append(out, p.k...), p.v...)
	}
	return out
}

func statementPairs(s firmware.Statement) []kv {
	u := func(v uint64) []byte { return cborHead(0, v) }
	ver := append(cborHead(4, 4), u(uint64(s.Version.Major))...)
	ver = append(append(append(ver, u(uint64(s.Version.Minor))...), u(uint64(s.Version.Revision))...), u(uint64(s.Version.Build))...)
	return []kv{
		{u(1), cborBytes(3, []byte(s.Model))},
		{u(2), ver},
		{u(3), u(uint64(s.SecurityCounter))},
		{u(4), cborBytes(2, s.ImageSHA256[:])},
		{u(5), u(uint64(s.ImageSize))},
		{u(6), u(s.Sequence)},
		{u(7), u(uint64(s.IssuedAt.Unix()))},
		{u(8), u(uint64(s.ExpiresAt.Unix()))},
	}
}

func canonicalPayload(t testing.TB, s firmware.Statement) []byte {
	t.Helper()
	return cborMap(statementPairs(s)...)
}

func protectedMap(alg cose.Algorithm, ct string, kid []byte) []byte {
	a := cborHead(1, uint64(-1-int64(alg)))
	return cborMap(kv{cborHead(0, 1), a}, kv{cborHead(0, 3), cborBytes(3, []byte(ct))}, kv{cborHead(0, 4), cborBytes(2, kid)})
}

// signRaw signs exactly the given protected map and payload bytes with
// go-cose, so that the parser's strictness is tested on validly signed
// statements.
func signRaw(t testing.TB, signer crypto.Signer, protected, payload []byte) []byte {
	t.Helper()
	alg := coseAlg(signer)
	cs, err := cose.NewSigner(alg, signer)
	if err != nil {
		t.Fatal(err)
	}
	msg := cose.Sign1Message{
		Headers: cose.Headers{
			RawProtected: cborBytes(2, protected),
			Protected:    cose.ProtectedHeader{cose.HeaderLabelAlgorithm: alg},
			Unprotected:  cose.UnprotectedHeader{},
		},
		Payload: payload,
	}
	if err := msg.Sign(rand.Reader, nil, cs); err != nil {
		t.Fatal(err)
	}
	b, err := msg.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseStatementIsStrict(t *testing.T) {
	ks := testKeys(t)
	s := testStatement()
	kh, _ := firmware.KeyHash(ks[0].pub)
	prot := protectedMap(cose.AlgorithmES256, firmware.StatementContentType, kh[:])
	pairs := statementPairs(s)
	u := func(v uint64) []byte { return cborHead(0, v) }
	replace := func(key int, v []byte) []byte {
		p := append([]kv(nil), pairs...)
		p[key-1] = kv{p[key-1].k, v}
		return cborMap(p...)
	}
	without := func(key int) []byte {
		p := append([]kv(nil), pairs[:key-1]...)
		return cborMap(append(p, pairs[key:]...)...)
	}
	// Sanity: the building blocks make a statement that verifies.
	if _, err := firmware.VerifyStatement(signRaw(t, ks[0].signer, prot, cborMap(pairs...)), ks[0].pub); err != nil {
		t.Fatalf("hand-built statement: %v", err)
	}

	payloads := map[string][]byte{
		"unknown key 9":           cborMap(append(append([]kv(nil), pairs...), kv{u(9), u(0)})...),
		"missing expires-at":      without(8),
		"missing model":           without(1),
		"duplicate key":           cborMap(append(append([]kv(nil), pairs[:7]...), pairs[6])...),
		"keys out of order":       cborMap(append(append(append([]kv(nil), pairs[:6]...), pairs[7]), pairs[6])...),
		"text key":                cborMap(append([]kv{{cborBytes(3, []byte("1")), pairs[0].v}}, pairs[1:]...)...),
		"non-shortest key":        cborMap(append([]kv{{[]byte{0x18, 0x01}, pairs[0].v}}, pairs[1:]...)...),
		"non-shortest integer":    replace(6, []byte{0x19, 0x00, 0x2a}),
		"non-shortest 64-bit":     replace(6, []byte{0x1b, 0, 0, 0, 0, 0, 0, 0, 42}),
		"non-shortest length":     replace(1, append([]byte{0x78, byte(len(s.Model))}, s.Model...)),
		"indefinite map":          append(append([]byte{0xbf}, cborMap(pairs...)[1:]...), 0xff),
		"indefinite model":        replace(1, append(append([]byte{0x7f}, cborBytes(3, []byte(s.Model))...), 0xff)),
		"model as bytes":          replace(1, cborBytes(2, []byte(s.Model))),
		"empty model":             replace(1, cborBytes(3, nil)),
		"model of 65 bytes":       replace(1, cborBytes(3, bytes.Repeat([]byte("m"), 65))),
		"model with newline":      replace(1, cborBytes(3, []byte("a\nb"))),
		"model not UTF-8":         replace(1, cborBytes(3, []byte{0xff})),
		"version of 3":            replace(2, append(cborHead(4, 3), 1, 2, 3)),
		"version major 256":       replace(2, append(append(cborHead(4, 4), 0x19, 0x01, 0x00), 2, 3, 4)),
		"version revision 65536":  replace(2, append(append(cborHead(4, 4), 1, 2), append(cborHead(0, 65536), 4)...)),
		"version negative":        replace(2, append(cborHead(4, 4), 0x20, 2, 3, 4)),
		"version indefinite":      replace(2, []byte{0x9f, 1, 2, 3, 4, 0xff}),
		"counter 2^32":            replace(3, u(1<<32)),
		"counter negative":        replace(3, []byte{0x20}),
		"sha256 of 31 bytes":      replace(4, cborBytes(2, make([]byte, 31))),
		"sha256 as text":          replace(4, cborBytes(3, make([]byte, 32))),
		"size 0":                  replace(5, u(0)),
		"size 2^63":               replace(5, u(1<<63)),
		"sequence 0":              replace(6, u(0)),
		"issued-at as float":      replace(7, []byte{0xfb, 0x41, 0xda, 0x55, 0x6e, 0x40, 0, 0, 0}),
		"issued-at tagged":        replace(7, append([]byte{0xc1}, u(uint64(issued.Unix()))...)),
		"issued-at after 9999":    replace(7, u(253402300800)),
		"expires at issue":        replace(8, u(uint64(issued.Unix()))),
		"expires before issue":    replace(8, u(uint64(issued.Unix()-1))),
		"trailing byte":           append(cborMap(pairs...), 0),
		"array":                   append(cborHead(4, 8), cborMap(pairs...)[1:]...),
		"reserved head":           replace(6, []byte{0x1c}),
		"simple value":            replace(6, []byte{0xf5}),
		"empty":                   {},
		"payload is a nested map": cborMap(kv{u(1), cborMap(pairs...)}),
	}
	for name, p := range payloads {
		b := signRaw(t, ks[0].signer, prot, p)
		_, err := firmware.VerifyStatement(b, ks[0].pub)
		wantErr(t, err, firmware.ErrMalformed, "payload: "+name)
	}

	ctMap := func(extra ...kv) []byte {
		base := []kv{
			{u(1), cborHead(1, 6)},
			{u(3), cborBytes(3, []byte(firmware.StatementContentType))},
			{u(4), cborBytes(2, kh[:])},
		}
		return cborMap(append(base, extra...)...)
	}
	protecteds := map[string][]byte{
		"extra typ label":      ctMap(kv{u(16), u(1)}),
		"crit label":           cborMap(kv{u(1), cborHead(1, 6)}, kv{u(2), append(cborHead(4, 1), u(3)...)}, kv{u(3), cborBytes(3, []byte(firmware.StatementContentType))}, kv{u(4), cborBytes(2, kh[:])}),
		"no content type":      cborMap(kv{u(1), cborHead(1, 6)}, kv{u(4), cborBytes(2, kh[:])}),
		"no kid":               cborMap(kv{u(1), cborHead(1, 6)}, kv{u(3), cborBytes(3, []byte(firmware.StatementContentType))}),
		"wrong content type":   protectedMap(cose.AlgorithmES256, "application/cbor", kh[:]),
		"content type as uint": cborMap(kv{u(1), cborHead(1, 6)}, kv{u(3), u(60)}, kv{u(4), cborBytes(2, kh[:])}),
		"kid of 31 bytes":      protectedMap(cose.AlgorithmES256, firmware.StatementContentType, kh[:31]),
		"kid as text":          cborMap(kv{u(1), cborHead(1, 6)}, kv{u(3), cborBytes(3, []byte(firmware.StatementContentType))}, kv{u(4), cborBytes(3, kh[:])}),
		"alg as text":          cborMap(kv{u(1), cborBytes(3, []byte("ES256"))}, kv{u(3), cborBytes(3, []byte(firmware.StatementContentType))}, kv{u(4), cborBytes(2, kh[:])}),
		"alg ES384":            protectedMap(cose.AlgorithmES384, firmware.StatementContentType, kh[:]),
		"keys out of order":    cborMap(kv{u(4), cborBytes(2, kh[:])}, kv{u(3), cborBytes(3, []byte(firmware.StatementContentType))}, kv{u(1), cborHead(1, 6)}),
		"trailing byte":        append(bytes.Clone(prot), 0),
		"empty":                {},
		"non-shortest alg":     cborMap(kv{u(1), []byte{0x38, 0x06}}, kv{u(3), cborBytes(3, []byte(firmware.StatementContentType))}, kv{u(4), cborBytes(2, kh[:])}),
	}
	payload := cborMap(pairs...)
	for name, p := range protecteds {
		b, err := signRawMaybe(ks[0].signer, p, payload)
		if err != nil {
			continue // go-cose itself refuses to produce it: fine
		}
		_, err = firmware.VerifyStatement(b, ks[0].pub)
		wantErr(t, err, firmware.ErrMalformed, "protected: "+name)
	}

	// Outer-structure changes that keep the signature valid.
	good := signRaw(t, ks[0].signer, prot, payload)
	sig := good[len(good)-64:]
	body := good[2 : len(good)-66] // protected bstr, unprotected, payload bstr
	protBstr := cborBytes(2, prot)
	outer := map[string][]byte{
		"untagged":              good[1:],
		"tag 17":                append([]byte{0xd1}, good[1:]...),
		"tag 98":                append([]byte{0xd8, 0x62}, good[1:]...),
		"non-shortest tag":      append([]byte{0xd8, 0x12}, good[1:]...),
		"array of 3":            append([]byte{0xd2, 0x83}, good[2:]...),
		"unprotected kid":       concat([]byte{0xd2, 0x84}, protBstr, cborMap(kv{u(4), cborBytes(2, kh[:])}), cborBytes(2, payload), cborBytes(2, sig)),
		"unprotected nil":       concat([]byte{0xd2, 0x84}, protBstr, []byte{0xf6}, cborBytes(2, payload), cborBytes(2, sig)),
		"nil payload":           concat([]byte{0xd2, 0x84}, protBstr, []byte{0xa0, 0xf6}, cborBytes(2, sig)),
		"payload length 16-bit": concat([]byte{0xd2, 0x84}, protBstr, []byte{0xa0, 0x59, 0x00, byte(len(payload))}, payload, cborBytes(2, sig)),
		"signature of 63":       concat(good[:len(good)-66], []byte{0x58, 63}, sig[:63]),
		"signature of 65":       concat(good[:len(good)-66], []byte{0x58, 65}, sig, []byte{0}),
		"signature as text":     concat(good[:len(good)-66], []byte{0x78, 64}, sig),
		"indefinite array":      concat([]byte{0xd2, 0x9f}, body, cborBytes(2, sig), []byte{0xff}),
		"too long":              append(bytes.Clone(good), make([]byte, firmware.MaxStatementSize)...),
	}
	for name, b := range outer {
		_, err := firmware.ParseStatement(b)
		wantErr(t, err, firmware.ErrMalformed, "outer: "+name)
	}
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func signRawMaybe(signer crypto.Signer, protected, payload []byte) (b []byte, err error) {
	alg := coseAlg(signer)
	cs, err := cose.NewSigner(alg, signer)
	if err != nil {
		return nil, err
	}
	msg := cose.Sign1Message{
		Headers: cose.Headers{
			RawProtected: cborBytes(2, protected),
			Protected:    cose.ProtectedHeader{cose.HeaderLabelAlgorithm: alg},
			Unprotected:  cose.UnprotectedHeader{},
		},
		Payload: payload,
	}
	if err := msg.Sign(rand.Reader, nil, cs); err != nil {
		return nil, err
	}
	return msg.MarshalCBOR()
}

func TestStatementCheck(t *testing.T) {
	s := testStatement()
	now := issued.Add(24 * time.Hour)
	base := firmware.Policy{Model: s.Model, Current: firmware.Version{Major: 1, Minor: 2, Revision: 3, Build: 3}, SecurityCounter: 7, LastSequence: 41}
	v := func(str string) firmware.Version {
		x, err := firmware.ParseVersion(str)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	for _, tc := range []struct {
		name string
		mod  func(*firmware.Policy, *firmware.Statement, *time.Time)
		want error
	}{
		{"ok", func(*firmware.Policy, *firmware.Statement, *time.Time) {}, nil},
		{"other model", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) { p.Model = "other" }, firmware.ErrModel},
		{"model differs in case", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) { p.Model = strings.ToUpper(p.Model) }, firmware.ErrModel},
		{"one second before expiry", func(_ *firmware.Policy, _ *firmware.Statement, n *time.Time) { *n = expires.Add(-time.Second) }, nil},
		{"one nanosecond before expiry", func(_ *firmware.Policy, _ *firmware.Statement, n *time.Time) { *n = expires.Add(-1) }, nil},
		{"at expiry", func(_ *firmware.Policy, _ *firmware.Statement, n *time.Time) { *n = expires }, firmware.ErrExpired},
		{"after expiry", func(_ *firmware.Policy, _ *firmware.Statement, n *time.Time) { *n = expires.Add(time.Hour) }, firmware.ErrExpired},
		{"at issue", func(_ *firmware.Policy, _ *firmware.Statement, n *time.Time) { *n = issued }, nil},
		{"issued 5 minutes ahead", func(_ *firmware.Policy, _ *firmware.Statement, n *time.Time) { *n = issued.Add(-5 * time.Minute) }, nil},
		{"issued 5 minutes and 1s ahead", func(_ *firmware.Policy, _ *firmware.Statement, n *time.Time) {
			*n = issued.Add(-5*time.Minute - time.Second)
		}, firmware.ErrExpired},
		{"long before issue", func(_ *firmware.Policy, _ *firmware.Statement, n *time.Time) { *n = issued.Add(-24 * time.Hour) }, firmware.ErrExpired},
		{"sequence replayed", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) { p.LastSequence = 42 }, firmware.ErrReplay},
		{"sequence older", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) { p.LastSequence = 1000 }, firmware.ErrReplay},
		{"no statement yet", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) { p.LastSequence = 0 }, nil},
		{"counter equal", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) { p.SecurityCounter = 7 }, nil},
		{"counter below floor", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) { p.SecurityCounter = 8 }, firmware.ErrRollback},
		{"counter below floor, downgrade allowed", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) {
			p.SecurityCounter, p.AllowDowngrade = 8, true
		}, firmware.ErrRollback},
		{"same version", func(p *firmware.Policy, s *firmware.Statement, _ *time.Time) { p.Current = s.Version }, firmware.ErrNotNewer},
		{"same version, downgrade allowed", func(p *firmware.Policy, s *firmware.Statement, _ *time.Time) {
			p.Current, p.AllowDowngrade = s.Version, true
		}, firmware.ErrNotNewer},
		{"older build", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) { p.Current = v("1.2.3+5") }, firmware.ErrNotNewer},
		{"older major", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) { p.Current = v("2.0.0") }, firmware.ErrNotNewer},
		{"older, downgrade allowed", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) {
			p.Current, p.AllowDowngrade = v("2.0.0"), true
		}, nil},
		{"newer by build", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) { p.Current = v("1.2.3+3") }, nil},
		{"from 0.0.0", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) { p.Current = firmware.Version{} }, nil},
		// The order: model, validity, sequence, counter, version.
		{"model before expiry", func(p *firmware.Policy, _ *firmware.Statement, n *time.Time) { p.Model, *n = "x", expires }, firmware.ErrModel},
		{"expiry before replay", func(p *firmware.Policy, _ *firmware.Statement, n *time.Time) { p.LastSequence, *n = 42, expires }, firmware.ErrExpired},
		{"replay before rollback", func(p *firmware.Policy, _ *firmware.Statement, _ *time.Time) {
			p.LastSequence, p.SecurityCounter = 42, 8
		}, firmware.ErrReplay},
		{"rollback before version", func(p *firmware.Policy, s *firmware.Statement, _ *time.Time) {
			p.SecurityCounter, p.Current = 8, s.Version
		}, firmware.ErrRollback},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, st, n := base, s, now
			tc.mod(&p, &st, &n)
			err := st.Check(p, n)
			if tc.want == nil && err != nil {
				t.Errorf("refused: %v", err)
			}
			if tc.want != nil {
				wantErr(t, err, tc.want, tc.name)
			}
		})
	}
}

func TestMatchImage(t *testing.T) {
	for _, k := range testKeys(t) {
		t.Run(k.name, func(t *testing.T) {
			version := firmware.Version{Major: 2, Minor: 1}
			file := mustSign(t, testPayload(5000), k.signer, firmware.SignOptions{Version: version, SecurityCounter: 9})
			s := testStatement()
			s.Version, s.SecurityCounter = version, 9
			s.ImageSHA256, s.ImageSize = sha256.Sum256(file), int64(len(file))
			st, err := firmware.VerifyStatement(mustSignStatement(t, s, k.signer), k.pub)
			if err != nil {
				t.Fatal(err)
			}
			img, err := st.MatchImage(file, k.pub)
			if err != nil || img.Header.Version != version {
				t.Fatalf("MatchImage: %v", err)
			}

			_, err = st.MatchImage(append(bytes.Clone(file), 0xff), k.pub)
			wantErr(t, err, firmware.ErrDigest, "one byte longer")
			_, err = st.MatchImage(file[:len(file)-1], k.pub)
			wantErr(t, err, firmware.ErrDigest, "one byte shorter")
			flipped := bytes.Clone(file)
			flipped[0x300] ^= 1
			_, err = st.MatchImage(flipped, k.pub)
			wantErr(t, err, firmware.ErrDigest, "same size, other bytes")
			_, err = st.MatchImage(file, k.other.Public())
			wantErr(t, err, firmware.ErrKeyMismatch, "other key")

			for name, mod := range map[string]func(*firmware.Statement){
				"version":       func(s *firmware.Statement) { s.Version.Build++ },
				"counter above": func(s *firmware.Statement) { s.SecurityCounter++ },
				"counter below": func(s *firmware.Statement) { s.SecurityCounter-- },
			} {
				bad := st
				mod(&bad)
				_, err := bad.MatchImage(file, k.pub)
				wantErr(t, err, firmware.ErrMismatch, name)
			}

			// A validly signed image that is not the one named.
			other := mustSign(t, testPayload(5000), k.signer, firmware.SignOptions{Version: version, SecurityCounter: 9, HeaderSize: 32})
			_, err = st.MatchImage(other, k.pub)
			wantErr(t, err, firmware.ErrDigest, "another image")
			// The named file is not an image at all.
			junk := []byte("not an image")
			js := st
			js.ImageSHA256, js.ImageSize = sha256.Sum256(junk), int64(len(junk))
			_, err = js.MatchImage(junk, k.pub)
			wantErr(t, err, firmware.ErrMalformed, "not an image")
		})
	}
}
