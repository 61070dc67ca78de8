// Package vectors builds the envelope test vectors in testdata/envelope
// (schema: docs/envelope.md, "Test vectors"). The vectorgen command writes
// them; envelope's tests check that the committed files equal Generate's
// output.
//
// Every valid envelope is produced twice: by envelope.Seal and by a second,
// deliberately naive implementation in this file that follows the spec's
// steps with standard-library primitives. Generation fails if the two
// disagree, or if envelope.Open does not refuse an invalid case with the
// reason the case declares, so the files can only be written when the code
// and the spec agree.
package vectors

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/envelope/internal/ccm"
	"github.com/warden-iot/warden/envelope/internal/keysched"
)

// Format names of the two kinds of file.
const (
	FileFormat   = "warden-envelope-vectors-v1"
	ReplayFormat = "warden-envelope-replay-v1"
)

// File is one suite's vectors.
type File struct {
	Format      string    `json:"format"`
	Suite       string    `json:"suite"`
	SuiteCode   int       `json:"suite_code"`
	MasterSalt  string    `json:"master_salt,omitempty"`
	KeySchedule []KeyStep `json:"key_schedule,omitempty"`
	Valid       []Valid   `json:"valid"`
	Invalid     []Invalid `json:"invalid"`
}

// KeyStep is one HKDF derivation.
type KeyStep struct {
	Name         string `json:"name"`
	MasterSecret string `json:"master_secret"`
	Info         string `json:"info"`
	Length       int    `json:"length"`
	Output       string `json:"output"`
}

// Context is what the receiver knows besides the message.
type Context struct {
	MasterSecret string `json:"master_secret,omitempty"`
	PrivateKey   string `json:"private_key,omitempty"`
	PublicKey    string `json:"public_key,omitempty"`
	DeviceID     string `json:"device_id"`
	Epoch        uint32 `json:"epoch"`
	Direction    string `json:"direction"`
	Topic        string `json:"topic"`
}

// Valid is a case that must open.
type Valid struct {
	Name    string `json:"name"`
	Comment string `json:"comment"`
	Context
	Seq       uint64 `json:"seq"`
	Plaintext string `json:"plaintext"`
	EncKey    string `json:"enc_key,omitempty"`
	MACKey    string `json:"mac_key,omitempty"`
	CommonIV  string `json:"common_iv,omitempty"`
	IV        string `json:"iv,omitempty"`
	Nonce     string `json:"nonce,omitempty"`
	AAD       string `json:"aad"`
	Envelope  string `json:"envelope"`
}

// Invalid is a case that must fail.
type Invalid struct {
	Name    string `json:"name"`
	Comment string `json:"comment"`
	Context
	Envelope string `json:"envelope"`
	Reason   string `json:"reason"`
}

// ReplayFile is the replay window as a script.
type ReplayFile struct {
	Format string       `json:"format"`
	Window int          `json:"window"`
	Steps  []ReplayStep `json:"steps"`
}

// ReplayStep is one Check (and, if Accept, Commit).
type ReplayStep struct {
	Seq    uint64 `json:"seq"`
	Accept bool   `json:"accept"`
}

// The fixed inputs.
var (
	masterSecret = mustHex("0102030405060708090a0b0c0d0e0f10") // RFC 8613 Appendix C's
	otherSecret  = mustHex("f0e1d2c3b4a5968778695a4b3c2d1e0f")
)

const (
	device      = "0a1b2c3d"
	upTopic     = "private/0a1b2c3d/up/telemetry"
	downTopic   = "private/0a1b2c3d/down/cmd"
	longDevice  = "Z9_factory-line-7_unit-00000000000000000000000000000000000000042" // 64 characters, the longest device ID
	maxPayload  = 65535
	signContext = "warden-envelope-v1/sign-p256"
)

// TestKey returns a fixed P-256 key for the vectors: the scalar is
// SHA-256("warden envelope test vector key: " + label).
func TestKey(label string) (*ecdsa.PrivateKey, error) {
	d := sha256.Sum256([]byte("warden envelope test vector key: " + label))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		return nil, fmt.Errorf("test key %q: %w", label, err)
	}
	return k, nil
}

// DeterministicSigner signs with RFC 6979 deterministic ECDSA, so that
// sign-p256 vectors reproduce byte for byte.
func DeterministicSigner(k *ecdsa.PrivateKey) crypto.Signer { return rfc6979{k} }

type rfc6979 struct{ *ecdsa.PrivateKey }

func (s rfc6979) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.PrivateKey.Sign(nil, digest, opts)
}

// Generate returns every vector file by name.
func Generate() (map[string][]byte, error) {
	files := map[string]any{}
	for _, s := range []envelope.Suite{envelope.LegacyCBCHMAC, envelope.CCM8} {
		f, err := symmetricFile(s)
		if err != nil {
			return nil, fmt.Errorf("%v vectors: %w", s, err)
		}
		files[s.String()+".json"] = f
	}
	f, err := signFile()
	if err != nil {
		return nil, fmt.Errorf("sign-p256 vectors: %w", err)
	}
	files["sign-p256.json"] = f
	r, err := replayFile()
	if err != nil {
		return nil, fmt.Errorf("replay vectors: %w", err)
	}
	files["replay.json"] = r

	out := map[string][]byte{}
	for name, v := range files {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[name] = buf.Bytes()
	}
	return out, nil
}

// msgInput is what a sender seals.
type msgInput struct {
	name, comment string
	secret        []byte
	signer        *ecdsa.PrivateKey // sign-p256
	device        string
	epoch         uint32
	dir           envelope.Direction
	seq           uint64
	topic         string
	plaintext     []byte
}

func (in msgInput) context(suite envelope.Suite) Context {
	c := Context{DeviceID: in.device, Epoch: in.epoch, Direction: in.dir.String(), Topic: in.topic}
	if suite == envelope.SignP256 {
		c.PublicKey = pubHex(&in.signer.PublicKey)
	} else {
		c.MasterSecret = hex.EncodeToString(in.secret)
	}
	return c
}

func validInputs(suite envelope.Suite) ([]msgInput, error) {
	devKey, err := TestKey("device")
	if err != nil {
		return nil, err
	}
	serverKey, err := TestKey("server")
	if err != nil {
		return nil, err
	}
	seq256 := make([]byte, 256)
	for i := range seq256 {
		seq256[i] = byte(i)
	}
	longTopic := "private/0a1b2c3d/up/" + string(bytes.Repeat([]byte("x"), 280))
	ins := []msgInput{
		{name: "uplink-first-message", comment: "epoch 0 (no key ID), sequence number 0, empty payload",
			dir: envelope.Uplink, topic: upTopic},
		{name: "uplink-json", comment: "a typical telemetry reading",
			dir: envelope.Uplink, seq: 1, topic: upTopic, plaintext: []byte(`{"t":21.5,"rh":40}`)},
		{name: "downlink-command", comment: "downlink keys; payload of exactly one block",
			dir: envelope.Downlink, seq: 258, topic: downTopic, plaintext: []byte("set-interval=300")},
		{name: "uplink-epoch-1", comment: "epoch 1: key ID 0x01; 2-byte sequence number 0xffff",
			epoch: 1, dir: envelope.Uplink, seq: 0xffff, topic: upTopic, plaintext: []byte("fifteen bytes!!")},
		{name: "uplink-epoch-258-5-byte-seq", comment: "epoch 258: key ID 0x02; sequence number 2^32 takes 5 bytes",
			epoch: 258, dir: envelope.Uplink, seq: 1 << 32, topic: upTopic, plaintext: []byte("seventeen bytes!!")},
		{name: "downlink-last-sequence-number", comment: "2^40-1, the last number of an epoch",
			epoch: 7, dir: envelope.Downlink, seq: envelope.MaxSeq, topic: downTopic, plaintext: bytes.Repeat([]byte{0xa5}, 64)},
		{name: "uplink-all-byte-values", comment: "256-byte binary payload",
			dir: envelope.Uplink, seq: 3, topic: upTopic, plaintext: seq256},
		{name: "uplink-long-topic", comment: "a 300-byte topic (2-byte length above 255)",
			dir: envelope.Uplink, seq: 4, topic: longTopic, plaintext: []byte("x")},
		{name: "uplink-64-character-device-id", comment: "the longest device ID; another device's secret",
			dir: envelope.Uplink, seq: 5, topic: "private/" + longDevice + "/up/a", plaintext: []byte("hello"), device: longDevice, secret: otherSecret},
	}
	for i := range ins {
		if ins[i].device == "" {
			ins[i].device = device
		}
		if ins[i].secret == nil {
			ins[i].secret = masterSecret
		}
		ins[i].signer = devKey
		if suite == envelope.SignP256 && ins[i].dir == envelope.Downlink {
			ins[i].signer = serverKey
			ins[i].comment += "; signed by Warden's envelope key, which the device pins"
		}
	}
	return ins, nil
}

// keysFor returns the keys the sender or receiver of in uses.
func keysFor(suite envelope.Suite, in msgInput, seal bool) (*envelope.Keys, error) {
	if suite != envelope.SignP256 {
		return envelope.DeriveKeys(in.secret, in.device, in.epoch, suite, in.dir)
	}
	if seal {
		return envelope.SignKeys(DeterministicSigner(in.signer), in.device, in.epoch, in.dir)
	}
	return envelope.VerifyKeys(&in.signer.PublicKey, in.device, in.epoch, in.dir)
}

// independent is the second implementation: the spec's steps, spelled out.
type independent struct {
	env              []byte
	aad, iv, nonce   []byte
	enc, mac, common []byte
}

func specHeader(suite envelope.Suite, epoch uint32, seq uint64) []byte {
	n := 1
	for seq>>(8*n) != 0 {
		n++
	}
	h := []byte{0b01<<6 | byte(suite)<<4 | byte(n)}
	if epoch != 0 {
		h[0] |= 1 << 3
		h = append(h, byte(epoch%256))
	}
	for i := n - 1; i >= 0; i-- {
		h = append(h, byte(seq>>(8*i)))
	}
	return h
}

func specAAD(header []byte, dir envelope.Direction, epoch uint32, dev, topic string) []byte {
	a := append([]byte{}, header...)
	a = append(a, byte(dir))
	a = binary.BigEndian.AppendUint32(a, epoch)
	a = append(a, byte(len(dev)))
	a = append(a, dev...)
	a = binary.BigEndian.AppendUint16(a, uint16(len(topic)))
	return append(a, topic...)
}

func u40(v uint64) []byte {
	return []byte{byte(v >> 32), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

func algOf(suite envelope.Suite) int64 {
	if suite == envelope.LegacyCBCHMAC {
		return keysched.AlgLegacyCBCHMAC
	}
	return keysched.AlgCCM8
}

// specSeal seals in by the spec. For legacy-cbc-hmac, padded (if not nil)
// replaces the PKCS#7-padded plaintext, to build bad-padding cases.
func specSeal(suite envelope.Suite, in msgInput, padded []byte) (independent, error) {
	var r independent
	hdr := specHeader(suite, in.epoch, in.seq)
	r.aad = specAAD(hdr, in.dir, in.epoch, in.device, in.topic)
	switch suite {
	case envelope.LegacyCBCHMAC:
		m, _, err := keysched.ForDirection(in.secret, in.device, in.epoch, algOf(suite), byte(in.dir))
		if err != nil {
			return r, err
		}
		r.enc, r.mac = m.EncKey, m.MACKey
		b, err := aes.NewCipher(m.EncKey)
		if err != nil {
			return r, err
		}
		ivIn := append(append([]byte{byte(in.dir)}, make([]byte, 10)...), u40(in.seq)...)
		r.iv = make([]byte, 16)
		b.Encrypt(r.iv, ivIn)
		if padded == nil {
			p := 16 - len(in.plaintext)%16
			padded = append(append([]byte{}, in.plaintext...), bytes.Repeat([]byte{byte(p)}, p)...)
		}
		ct := make([]byte, len(padded))
		cipher.NewCBCEncrypter(b, r.iv).CryptBlocks(ct, padded)
		h := hmac.New(sha256.New, m.MACKey)
		h.Write(r.aad)
		h.Write(ct)
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(r.aad))*8))
		r.env = append(append(hdr, ct...), h.Sum(nil)[:16]...)
	case envelope.CCM8:
		m, _, err := keysched.ForDirection(in.secret, in.device, in.epoch, algOf(suite), byte(in.dir))
		if err != nil {
			return r, err
		}
		r.enc, r.common = m.EncKey, m.CommonIV
		r.nonce = append(append([]byte{1}, make([]byte, 6)...), byte(in.dir))
		r.nonce = append(r.nonce, u40(in.seq)...)
		for i := range r.nonce {
			r.nonce[i] ^= m.CommonIV[i]
		}
		b, err := aes.NewCipher(m.EncKey)
		if err != nil {
			return r, err
		}
		a, err := ccm.New(b, 8, 13)
		if err != nil {
			return r, err
		}
		r.env = a.Seal(hdr, r.nonce, in.plaintext, r.aad)
	case envelope.SignP256:
		d := sha256.Sum256(append(append([]byte(signContext), r.aad...), in.plaintext...))
		der, err := in.signer.Sign(nil, d[:], crypto.SHA256)
		if err != nil {
			return r, err
		}
		var sig struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(der, &sig); err != nil {
			return r, err
		}
		r.env = append(append(hdr, in.plaintext...), append(sig.R.FillBytes(make([]byte, 32)), sig.S.FillBytes(make([]byte, 32))...)...)
	}
	return r, nil
}

// sealBoth seals in with envelope.Seal and by the spec, and insists they
// agree and that envelope.Open gives the plaintext back.
func sealBoth(suite envelope.Suite, in msgInput) (independent, error) {
	spec, err := specSeal(suite, in, nil)
	if err != nil {
		return spec, fmt.Errorf("%s: %w", in.name, err)
	}
	k, err := keysFor(suite, in, true)
	if err != nil {
		return spec, fmt.Errorf("%s: %w", in.name, err)
	}
	got, err := envelope.Seal(k, in.seq, in.topic, in.plaintext)
	if err != nil {
		return spec, fmt.Errorf("%s: %w", in.name, err)
	}
	if !bytes.Equal(got, spec.env) {
		return spec, fmt.Errorf("%s: envelope.Seal gives\n%x\nthe spec gives\n%x", in.name, got, spec.env)
	}
	rk, err := keysFor(suite, in, false)
	if err != nil {
		return spec, fmt.Errorf("%s: %w", in.name, err)
	}
	pt, h, err := envelope.Open(rk, in.topic, got)
	if err != nil || !bytes.Equal(pt, in.plaintext) || h.Seq != in.seq {
		return spec, fmt.Errorf("%s: envelope.Open = %x, seq %d, %v", in.name, pt, h.Seq, err)
	}
	return spec, nil
}

func validCase(suite envelope.Suite, in msgInput) (Valid, error) {
	r, err := sealBoth(suite, in)
	if err != nil {
		return Valid{}, err
	}
	v := Valid{
		Name: in.name, Comment: in.comment, Context: in.context(suite),
		Seq: in.seq, Plaintext: hex.EncodeToString(in.plaintext),
		EncKey: hexOrEmpty(r.enc), MACKey: hexOrEmpty(r.mac), CommonIV: hexOrEmpty(r.common),
		IV: hexOrEmpty(r.iv), Nonce: hexOrEmpty(r.nonce),
		AAD: hex.EncodeToString(r.aad), Envelope: hex.EncodeToString(r.env),
	}
	if suite == envelope.SignP256 {
		v.PrivateKey = hex.EncodeToString(in.signer.D.FillBytes(make([]byte, 32)))
	}
	return v, nil
}

// invalidBuilder collects invalid cases and checks each against
// envelope.Open as it goes.
type invalidBuilder struct {
	suite envelope.Suite
	cases []Invalid
	err   error
}

func (b *invalidBuilder) add(name, comment string, rx msgInput, env []byte, reason envelope.Reason) {
	if b.err != nil {
		return
	}
	k, err := keysFor(b.suite, rx, false)
	if err != nil {
		b.err = fmt.Errorf("%s: %w", name, err)
		return
	}
	if _, _, err := envelope.Open(k, rx.topic, env); envelope.ReasonOf(err) != reason {
		b.err = fmt.Errorf("invalid case %s: envelope.Open gives %v, the case says %q", name, err, reason)
		return
	}
	b.cases = append(b.cases, Invalid{Name: name, Comment: comment, Context: rx.context(b.suite),
		Envelope: hex.EncodeToString(env), Reason: string(reason)})
}

func invalidCases(suite envelope.Suite) ([]Invalid, error) {
	devKey, err := TestKey("device")
	if err != nil {
		return nil, err
	}
	otherKey, err := TestKey("other")
	if err != nil {
		return nil, err
	}
	// The base message: epoch 1 (key ID 0x01), sequence number 0x0102.
	base := msgInput{name: "base", secret: masterSecret, signer: devKey, device: device, epoch: 1,
		dir: envelope.Uplink, seq: 0x0102, topic: upTopic, plaintext: []byte(`{"t":21.5,"rh":40}`)}
	r, err := sealBoth(suite, base)
	if err != nil {
		return nil, err
	}
	env := r.env
	const hdrLen = 4 // header, key ID, two sequence-number bytes
	b := &invalidBuilder{suite: suite}
	mod := func(f func(e []byte) []byte) []byte { return f(bytes.Clone(env)) }
	with := func(f func(in *msgInput)) msgInput { in := base; f(&in); return in }
	setHeader := func(mask, bits byte) []byte {
		return mod(func(e []byte) []byte { e[0] = e[0]&^mask | bits; return e })
	}
	M, BT, UK, DG := envelope.ReasonMalformed, envelope.ReasonBadTag, envelope.ReasonUnknownKey, envelope.ReasonDowngrade

	b.add("empty", "no bytes at all", base, []byte{}, M)
	b.add("header-only", "one byte", base, env[:1], M)
	b.add("truncated-in-sequence-number", "ends after the first of two sequence-number bytes", base, env[:3], M)
	b.add("no-body", "header, key ID and sequence number only", base, env[:hdrLen], M)
	minBody := map[envelope.Suite]int{envelope.LegacyCBCHMAC: 32, envelope.CCM8: 8, envelope.SignP256: 64}[suite]
	b.add("body-too-short", fmt.Sprintf("a %d-byte body; the suite needs at least %d", minBody-1, minBody), base, env[:hdrLen+minBody-1], M)
	lastByte := BT
	if suite == envelope.LegacyCBCHMAC {
		lastByte = M // no longer whole blocks and a tag
	}
	b.add("truncated-last-byte", "the last byte removed", base, env[:len(env)-1], lastByte)
	b.add("version-0", "version bits 00 (reserved)", base, setHeader(0xc0, 0x00), M)
	b.add("version-2", "version bits 10 (reserved)", base, setHeader(0xc0, 0x80), M)
	b.add("version-3", "version bits 11 (reserved)", base, setHeader(0xc0, 0xc0), M)
	b.add("suite-0", "suite code 0 (reserved)", base, setHeader(0x30, 0x00), M)
	for _, n := range []byte{0, 6, 7} {
		b.add(fmt.Sprintf("sequence-number-length-%d", n), "outside 1..5", base, setHeader(0x07, n), M)
	}
	b.add("non-minimal-sequence-number", "0x0102 sent as 00 01 02", base,
		mod(func(e []byte) []byte {
			e[0] = e[0]&^0x07 | 3
			return append(append(e[:2:2], 0), env[2:]...)
		}), M)
	zero := with(func(in *msgInput) { in.seq = 0 })
	rz, err := sealBoth(suite, zero)
	if err != nil {
		return nil, err
	}
	b.add("non-minimal-sequence-number-zero", "0 sent as 00 00", base,
		append([]byte{rz.env[0]&^0x07 | 2, rz.env[1], 0}, rz.env[2:]...), M)

	flagReason := UK // parses, but a message without a key ID is not epoch 1's
	if suite == envelope.LegacyCBCHMAC {
		flagReason = M // the key ID byte moves into the sequence number; the body is no longer whole blocks
	}
	b.add("key-id-flag-cleared", "K bit cleared: the key ID byte is read as part of the sequence number", base, setHeader(0x08, 0x00), flagReason)
	b.add("key-id-changed", "key ID 0x00 for an epoch-1 receiver", base, mod(func(e []byte) []byte { e[1] ^= 0x01; return e }), UK)
	b.add("sequence-number-bit-flipped", "0x0102 became 0x0103", base, mod(func(e []byte) []byte { e[3] ^= 0x01; return e }), BT)
	b.add("body-first-bit-flipped", "first byte after the sequence number", base, mod(func(e []byte) []byte { e[hdrLen] ^= 0x80; return e }), BT)
	b.add("last-bit-flipped", "last byte of the tag or signature", base, mod(func(e []byte) []byte { e[len(e)-1] ^= 0x01; return e }), BT)
	b.add("wrong-topic", "sealed for .../up/telemetry, received on .../up/status", with(func(in *msgInput) { in.topic = "private/0a1b2c3d/up/status" }), env, BT)
	b.add("wrong-device", "the same secret or key, another device ID", with(func(in *msgInput) { in.device = "0a1b2c3e" }), env, BT)
	b.add("wrong-direction", "an uplink presented as a downlink", with(func(in *msgInput) { in.dir = envelope.Downlink }), env, BT)
	b.add("wrong-epoch-same-key-id", "epoch 257 has key ID 0x01 too; the AAD holds the full epoch", with(func(in *msgInput) { in.epoch = 257 }), env, BT)
	b.add("wrong-epoch", "an epoch-2 receiver", with(func(in *msgInput) { in.epoch = 2 }), env, UK)

	e256, err := sealBoth(suite, with(func(in *msgInput) { in.epoch = 256 }))
	if err != nil {
		return nil, err
	}
	b.add("key-id-for-epoch-0", "sealed at epoch 256 (key ID 0x00), received at epoch 0, which has no key ID", with(func(in *msgInput) { in.epoch = 0 }), e256.env, UK)
	e0, err := sealBoth(suite, with(func(in *msgInput) { in.epoch = 0 }))
	if err != nil {
		return nil, err
	}
	b.add("key-id-missing", "sealed at epoch 0 (no key ID), received at epoch 1", base, e0.env, UK)

	if suite == envelope.SignP256 {
		b.add("wrong-public-key", "verified with another key", with(func(in *msgInput) { in.signer = otherKey }), env, BT)
		n := elliptic.P256().Params().N
		sigAt := len(env) - 64
		setInt := func(off int, v *big.Int) []byte {
			return mod(func(e []byte) []byte { v.FillBytes(e[sigAt+off : sigAt+off+32]); return e })
		}
		b.add("r-zero", "r = 0", base, setInt(0, new(big.Int)), BT)
		b.add("s-zero", "s = 0", base, setInt(32, new(big.Int)), BT)
		b.add("r-equals-n", "r = n, outside 1..n-1", base, setInt(0, n), BT)
		b.add("s-equals-n", "s = n, outside 1..n-1", base, setInt(32, n), BT)
		b.add("plaintext-bit-flipped", "the cleartext payload changed", base, mod(func(e []byte) []byte { e[hdrLen+3] ^= 0x04; return e }), BT)
	} else {
		b.add("wrong-master-secret", "another device's secret", with(func(in *msgInput) { in.secret = otherSecret }), env, BT)
	}
	if suite == envelope.LegacyCBCHMAC {
		for _, c := range []struct {
			name, comment string
			pad           []byte
		}{
			{"bad-padding-zero", "authenticated, but the last byte is 0x00", append(bytes.Repeat([]byte("p"), 31), 0)},
			{"bad-padding-17", "authenticated, but the last byte is 0x11 (more than a block)", append(bytes.Repeat([]byte("p"), 15), bytes.Repeat([]byte{17}, 17)...)},
			{"bad-padding-inconsistent", "authenticated, last byte 0x03 but the byte before is not", append(bytes.Repeat([]byte("p"), 14), 2, 3)},
		} {
			pr, err := specSeal(suite, base, c.pad)
			if err != nil {
				return nil, err
			}
			b.add(c.name, c.comment, base, pr.env, envelope.ReasonBadPadding)
		}
	}

	// Other suites' envelopes, sealed correctly for the same context.
	for _, other := range []envelope.Suite{envelope.LegacyCBCHMAC, envelope.CCM8, envelope.SignP256} {
		if other == suite {
			continue
		}
		or, err := sealBoth(other, base)
		if err != nil {
			return nil, err
		}
		if other < suite {
			b.add("weaker-suite-"+other.String(), "a valid "+other.String()+" envelope given to "+suite.String()+" keys", base, or.env, DG)
		} else {
			b.add("other-suite-"+other.String(), "a valid "+other.String()+" envelope; the receiver has no keys for it", base, or.env, UK)
		}
	}

	maxBody := map[envelope.Suite]int{envelope.LegacyCBCHMAC: 65552, envelope.CCM8: maxPayload + 8, envelope.SignP256: maxPayload + 64}[suite]
	over := maxBody + 1
	if suite == envelope.LegacyCBCHMAC {
		over = maxBody + 16 // still whole blocks: only the size is wrong
	}
	b.add("oversized", fmt.Sprintf("a %d-byte body; the suite allows %d", over, maxBody), base,
		append(bytes.Clone(env[:hdrLen]), make([]byte, over)...), M)
	return b.cases, b.err
}

func symmetricFile(suite envelope.Suite) (*File, error) {
	f := &File{Format: FileFormat, Suite: suite.String(), SuiteCode: int(suite),
		MasterSalt: hex.EncodeToString([]byte(keysched.MasterSalt))}
	for _, dir := range []envelope.Direction{envelope.Uplink, envelope.Downlink} {
		_, steps, err := keysched.ForDirection(masterSecret, device, 1, algOf(suite), byte(dir))
		if err != nil {
			return nil, err
		}
		for _, s := range steps {
			if s.Name == "common_iv" && dir == envelope.Downlink {
				continue // shared by both directions: listed once
			}
			f.KeySchedule = append(f.KeySchedule, KeyStep{
				Name:         stepName(dir, s.Name),
				MasterSecret: hex.EncodeToString(masterSecret), Info: hex.EncodeToString(s.Info),
				Length: s.Length, Output: hex.EncodeToString(s.Output)})
		}
	}
	return fillCases(f, suite)
}

func stepName(dir envelope.Direction, name string) string {
	if name == "common_iv" {
		return fmt.Sprintf("device %s, epoch 1, common_iv (both directions)", device)
	}
	return fmt.Sprintf("device %s, epoch 1, %v %s", device, dir, name)
}

func signFile() (*File, error) {
	f := &File{Format: FileFormat, Suite: envelope.SignP256.String(), SuiteCode: int(envelope.SignP256)}
	f, err := fillCases(f, envelope.SignP256)
	if err != nil {
		return nil, err
	}
	// ECDSA signatures are malleable: (r, n-s) verifies too. The spec says
	// so; this case proves it, so that nobody treats envelope bytes as an
	// identity.
	src := f.Valid[1]
	env, err := hex.DecodeString(src.Envelope)
	if err != nil {
		return nil, err
	}
	n := elliptic.P256().Params().N
	s := new(big.Int).SetBytes(env[len(env)-32:])
	new(big.Int).Sub(n, s).FillBytes(env[len(env)-32:])
	pub, err := parsePub(src.PublicKey)
	if err != nil {
		return nil, err
	}
	k, err := envelope.VerifyKeys(pub, src.DeviceID, src.Epoch, envelope.Uplink)
	if err != nil {
		return nil, err
	}
	if _, _, err := envelope.Open(k, src.Topic, env); err != nil {
		return nil, fmt.Errorf("malleated signature: %w", err)
	}
	m := src
	m.Name, m.Comment = "uplink-json-malleated-signature", "uplink-json with s replaced by n - s: still valid (ECDSA is malleable; dedupe by sequence number, not bytes)"
	m.Envelope = hex.EncodeToString(env)
	f.Valid = append(f.Valid, m)
	return f, nil
}

func fillCases(f *File, suite envelope.Suite) (*File, error) {
	ins, err := validInputs(suite)
	if err != nil {
		return nil, err
	}
	for _, in := range ins {
		v, err := validCase(suite, in)
		if err != nil {
			return nil, err
		}
		f.Valid = append(f.Valid, v)
	}
	if f.Invalid, err = invalidCases(suite); err != nil {
		return nil, err
	}
	return f, nil
}

func replayFile() (*ReplayFile, error) {
	steps := []ReplayStep{
		{0, true}, {0, false}, {5, true}, {5, false}, {3, true}, {3, false}, {4, true},
		{70, true}, {6, false}, {7, true}, {7, false}, {5, false}, {71, true}, {70, false},
		{200, true}, {137, true}, {136, false}, {199, true}, {201, true}, {137, false},
		{envelope.MaxSeq, true}, {envelope.MaxSeq, false}, {envelope.MaxSeq - 63, true}, {envelope.MaxSeq - 64, false},
	}
	var w envelope.ReplayWindow
	for i, s := range steps {
		err := w.Check(s.Seq)
		if (err == nil) != s.Accept {
			return nil, fmt.Errorf("step %d (seq %d): Check = %v, the script says accept=%v", i, s.Seq, err, s.Accept)
		}
		if s.Accept {
			if err := w.Commit(s.Seq); err != nil {
				return nil, fmt.Errorf("step %d: Commit: %w", i, err)
			}
		}
	}
	return &ReplayFile{Format: ReplayFormat, Window: envelope.ReplayWindowSize, Steps: steps}, nil
}

func pubHex(p *ecdsa.PublicKey) string {
	b, err := p.Bytes()
	if err != nil {
		return ""
	}
	return hex.EncodeToString(b)
}

func parsePub(h string) (*ecdsa.PublicKey, error) {
	b, err := hex.DecodeString(h)
	if err != nil {
		return nil, err
	}
	return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), b)
}

func hexOrEmpty(b []byte) string {
	if b == nil {
		return ""
	}
	return hex.EncodeToString(b)
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err) // only ever called on constants in this file
	}
	return b
}
