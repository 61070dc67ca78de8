package firmware

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/veraison/go-cose"
)

// MaxStatementSize is the largest encoded release statement accepted. Real
// statements are under 300 bytes; the bound lets a device parse one in a
// fixed buffer before it trusts anything in it.
const MaxStatementSize = 1024

// StatementContentType is the COSE content type (protected header label 3)
// of a release statement.
const StatementContentType = "application/vnd.warden.release+cbor"

// Algorithm names as SignedStatement.Algorithm reports them (the COSE
// names of algorithms -7 and -8).
const (
	AlgorithmES256 = "ES256"
	AlgorithmEdDSA = "EdDSA"
)

const (
	maxModelLen = 64
	// maxUnixSeconds is 9999-12-31T23:59:59Z: later times are refused so
	// that every accepted time formats as an ordinary date.
	maxUnixSeconds = 253402300799
	// issuedAtSkew is how far in the future a statement's issue time may
	// be, for clocks that are slightly off.
	issuedAtSkew = 5 * time.Minute
	sigLen       = 64 // ES256 (r||s) and EdDSA signatures
)

// Statement keys of the payload map (docs/firmware.md, "Release
// statements").
const (
	keyModel           = 1
	keyVersion         = 2
	keySecurityCounter = 3
	keyImageSHA256     = 4
	keyImageSize       = 5
	keySequence        = 6
	keyIssuedAt        = 7
	keyExpiresAt       = 8
	statementKeys      = 8
)

// Statement is a release statement: the release manager's signed promise
// that the image file with this SHA-256 and size is version Version of the
// firmware for Model, with this security counter. A device checks it
// before downloading anything, so a replayed old (but validly signed)
// release is refused without a byte of firmware crossing the network.
type Statement struct {
	Model           string    // device model, 1 to 64 bytes of UTF-8 without control characters
	Version         Version   // must equal the image header's version
	SecurityCounter uint32    // must equal the image's security counter TLV
	ImageSHA256     [32]byte  // SHA-256 of the complete image file as served (not the MCUboot digest)
	ImageSize       int64     // size of that file in bytes, above 0
	Sequence        uint64    // above 0; increases with every statement of a release line
	IssuedAt        time.Time // second resolution, UTC
	ExpiresAt       time.Time // after IssuedAt; devices refuse the statement from then on
}

// SignedStatement is a parsed release statement whose signature has NOT
// been verified: the server uses KeyID to find the key, then calls
// VerifyStatement.
type SignedStatement struct {
	Statement Statement
	KeyID     string // lowercase hex of the COSE kid, which is KeyHash of the signing key
	Algorithm string // AlgorithmES256 or AlgorithmEdDSA
}

// Policy is what a device checks a release statement against before it
// downloads the image.
type Policy struct {
	Model           string  // the device's model
	Current         Version // the running version
	SecurityCounter uint32  // the running image's security counter: the floor
	LastSequence    uint64  // sequence of the statement of the running image, 0 if none
	AllowDowngrade  bool    // permit a lower Version (never a lower security counter)
}

// SignStatement validates s and signs it as a tagged COSE_Sign1 whose
// protected header holds the algorithm (ES256 for P-256 keys, EdDSA for
// Ed25519), the content type and the kid (KeyHash of the signer's public
// key). Times are truncated to whole seconds. Like Sign it accepts any
// crypto.Signer with a P-256 or Ed25519 public key, and it checks the
// result before returning it.
func SignStatement(s Statement, signer crypto.Signer) ([]byte, error) {
	kind, pub, err := signerKind(signer)
	if err != nil {
		return nil, err
	}
	s.IssuedAt = s.IssuedAt.Truncate(time.Second).UTC()
	s.ExpiresAt = s.ExpiresAt.Truncate(time.Second).UTC()
	if err := validateStatement(&s); err != nil {
		return nil, err
	}
	kid, err := KeyHash(pub)
	if err != nil {
		return nil, err
	}
	alg := coseAlgorithm(kind)
	cs, err := cose.NewSigner(alg, signer)
	if err != nil {
		return nil, fmt.Errorf("%w: COSE signer: %v", ErrUnsupportedKey, err)
	}
	msg := cose.Sign1Message{
		Headers: cose.Headers{
			Protected: cose.ProtectedHeader{
				cose.HeaderLabelAlgorithm:   alg,
				cose.HeaderLabelContentType: StatementContentType,
				cose.HeaderLabelKeyID:       kid[:],
			},
			Unprotected: cose.UnprotectedHeader{},
		},
		Payload: encodeStatementPayload(&s),
	}
	if err := msg.Sign(rand.Reader, nil, cs); err != nil {
		return nil, fmt.Errorf("firmware: sign statement: %w", err)
	}
	out, err := msg.MarshalCBOR()
	if err != nil {
		return nil, fmt.Errorf("firmware: encode statement: %w", err)
	}
	// The parser is the specification: what we emit must pass it, and
	// the signature must verify (a faulty HSM must not ship).
	if _, err := VerifyStatement(out, pub); err != nil {
		return nil, fmt.Errorf("%w: the signer produced a statement that does not verify: %v", ErrSignature, err)
	}
	return out, nil
}

func coseAlgorithm(k keyKind) cose.Algorithm {
	if k == kindECDSAP256 {
		return cose.AlgorithmES256
	}
	return cose.AlgorithmEdDSA
}

// parsedStatement is a statement that passed the strict parser.
type parsedStatement struct {
	SignedStatement
	alg cose.Algorithm
	kid []byte
}

// ParseStatement parses a release statement without verifying its
// signature. It accepts exactly one encoding of each statement: a tagged
// COSE_Sign1 of at most MaxStatementSize bytes in deterministic CBOR
// (shortest heads, definite lengths, map keys in ascending order), whose
// protected header holds exactly alg (-7 or -8), content type and a
// 32-byte kid, whose unprotected header is empty, whose payload map holds
// exactly keys 1 to 8 with values of their types and ranges, and whose
// signature is 64 bytes. Anything else is ErrMalformed.
func ParseStatement(b []byte) (*SignedStatement, error) {
	p, err := parseStatement(b)
	if err != nil {
		return nil, err
	}
	return &p.SignedStatement, nil
}

func parseStatement(b []byte) (*parsedStatement, error) {
	if len(b) > MaxStatementSize {
		return nil, fmt.Errorf("%w: release statement of %d bytes exceeds %d", ErrMalformed, len(b), MaxStatementSize)
	}
	r := cborReader{b: b}
	if err := r.expectHead(majorTag, 18, "COSE_Sign1 tag"); err != nil {
		return nil, err
	}
	if err := r.expectHead(majorArray, 4, "COSE_Sign1 array"); err != nil {
		return nil, err
	}
	protected, err := r.readBytes(majorBytes, "protected header")
	if err != nil {
		return nil, err
	}
	if err := r.expectHead(majorMap, 0, "unprotected header (must be empty)"); err != nil {
		return nil, err
	}
	payload, err := r.readBytes(majorBytes, "payload")
	if err != nil {
		return nil, err
	}
	sig, err := r.readBytes(majorBytes, "signature")
	if err != nil {
		return nil, err
	}
	if len(sig) != sigLen {
		return nil, fmt.Errorf("%w: statement signature is %d bytes, want %d", ErrMalformed, len(sig), sigLen)
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("%w: %d bytes after the COSE_Sign1", ErrMalformed, len(b)-r.off)
	}

	alg, kid, err := parseProtected(protected)
	if err != nil {
		return nil, err
	}
	s, err := decodeStatementPayload(payload)
	if err != nil {
		return nil, err
	}
	if err := validateStatement(&s); err != nil {
		return nil, err
	}
	// Every rule above is enforced while reading; rebuilding the one
	// canonical encoding and comparing closes any gap between them.
	if want := encodeStatement(alg, kid, encodeStatementPayload(&s), sig); !bytes.Equal(want, b) {
		return nil, fmt.Errorf("%w: statement is not in canonical form", ErrMalformed)
	}
	name := AlgorithmEdDSA
	if alg == cose.AlgorithmES256 {
		name = AlgorithmES256
	}
	return &parsedStatement{
		SignedStatement: SignedStatement{Statement: s, KeyID: hex.EncodeToString(kid), Algorithm: name},
		alg:             alg,
		kid:             kid,
	}, nil
}

// VerifyStatement parses b strictly, checks that its kid is KeyHash(pub)
// and its algorithm pub's (else ErrKeyMismatch), and verifies the
// signature (else ErrSignature). Only then is the statement worth
// checking against a Policy.
func VerifyStatement(b []byte, pub crypto.PublicKey) (Statement, error) {
	kind, err := publicKind(pub)
	if err != nil {
		return Statement{}, err
	}
	p, err := parseStatement(b)
	if err != nil {
		return Statement{}, err
	}
	want, err := KeyHash(pub)
	if err != nil {
		return Statement{}, err
	}
	if subtle.ConstantTimeCompare(p.kid, want[:]) != 1 {
		return Statement{}, fmt.Errorf("%w: statement kid is %x, verifying with key %x", ErrKeyMismatch, p.kid, want)
	}
	if p.alg != coseAlgorithm(kind) {
		return Statement{}, fmt.Errorf("%w: statement algorithm %s does not match a %s key", ErrKeyMismatch, p.Algorithm, kind)
	}
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(b); err != nil {
		return Statement{}, fmt.Errorf("%w: COSE_Sign1: %v", ErrMalformed, err)
	}
	v, err := cose.NewVerifier(p.alg, pub)
	if err != nil {
		return Statement{}, fmt.Errorf("%w: COSE verifier: %v", ErrUnsupportedKey, err)
	}
	if err := msg.Verify(nil, v); err != nil {
		return Statement{}, fmt.Errorf("%w: release statement: %v", ErrSignature, err)
	}
	return p.Statement, nil
}

// Check applies a device's policy to a verified statement, in the order
// docs/firmware.md gives: model (ErrModel), validity window (ErrExpired:
// now must be before ExpiresAt, and IssuedAt at most five minutes after
// now), sequence above LastSequence (ErrReplay), security counter at
// least the floor (ErrRollback), and version above Current unless
// downgrades are allowed (ErrNotNewer; the running version itself is
// always refused, as there is nothing to do).
func (s Statement) Check(p Policy, now time.Time) error {
	if s.Model != p.Model {
		return fmt.Errorf("%w: release is for %q, the device is %q", ErrModel, s.Model, p.Model)
	}
	if !now.Before(s.ExpiresAt) {
		return fmt.Errorf("%w: statement expired at %s (now %s)", ErrExpired, s.ExpiresAt.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if s.IssuedAt.After(now.Add(issuedAtSkew)) {
		return fmt.Errorf("%w: statement issued at %s, more than %s after now (%s): check the clocks", ErrExpired, s.IssuedAt.UTC().Format(time.RFC3339), issuedAtSkew, now.UTC().Format(time.RFC3339))
	}
	if s.Sequence <= p.LastSequence {
		return fmt.Errorf("%w: statement sequence %d, the device already accepted %d", ErrReplay, s.Sequence, p.LastSequence)
	}
	if s.SecurityCounter < p.SecurityCounter {
		return fmt.Errorf("%w: release security counter %d, the device's is %d", ErrRollback, s.SecurityCounter, p.SecurityCounter)
	}
	switch c := s.Version.Compare(p.Current); {
	case c == 0:
		return fmt.Errorf("%w: release %s is the running version", ErrNotNewer, s.Version)
	case c < 0 && !p.AllowDowngrade:
		return fmt.Errorf("%w: release %s is older than the running %s and downgrades are not allowed", ErrNotNewer, s.Version, p.Current)
	}
	return nil
}

// MatchImage checks a downloaded file against the statement: its size and
// SHA-256 (ErrDigest: not the file the statement names), then ParseImage
// and Verify with pub, then that the image header's version and its
// security counter TLV equal the statement's (ErrMismatch).
func (s Statement) MatchImage(file []byte, pub crypto.PublicKey) (*Image, error) {
	if int64(len(file)) != s.ImageSize {
		return nil, fmt.Errorf("%w: file is %d bytes, the statement says %d", ErrDigest, len(file), s.ImageSize)
	}
	if sum := sha256.Sum256(file); subtle.ConstantTimeCompare(sum[:], s.ImageSHA256[:]) != 1 {
		return nil, fmt.Errorf("%w: file SHA-256 is %x, the statement says %x", ErrDigest, sum, s.ImageSHA256)
	}
	img, err := ParseImage(file)
	if err != nil {
		return nil, err
	}
	if err := img.Verify(pub); err != nil {
		return nil, err
	}
	if img.Header.Version != s.Version {
		return nil, fmt.Errorf("%w: image version %s, statement version %s", ErrMismatch, img.Header.Version, s.Version)
	}
	ctr, ok := img.SecurityCounter()
	if !ok {
		return nil, fmt.Errorf("%w: image has no security counter TLV, the statement says %d", ErrMismatch, s.SecurityCounter)
	}
	if ctr != s.SecurityCounter {
		return nil, fmt.Errorf("%w: image security counter %d, statement %d", ErrMismatch, ctr, s.SecurityCounter)
	}
	return img, nil
}

// validateStatement holds the rules both signer and parser enforce.
func validateStatement(s *Statement) error {
	switch {
	case s.Model == "":
		return fmt.Errorf("%w: statement model is empty", ErrMalformed)
	case len(s.Model) > maxModelLen:
		return fmt.Errorf("%w: statement model is %d bytes, at most %d", ErrMalformed, len(s.Model), maxModelLen)
	case !utf8.ValidString(s.Model):
		return fmt.Errorf("%w: statement model is not UTF-8", ErrMalformed)
	}
	for _, c := range s.Model {
		if unicode.IsControl(c) {
			return fmt.Errorf("%w: statement model %q holds a control character", ErrMalformed, s.Model)
		}
	}
	switch {
	case s.ImageSize <= 0:
		return fmt.Errorf("%w: statement image size %d must be above 0", ErrMalformed, s.ImageSize)
	case s.Sequence == 0:
		return fmt.Errorf("%w: statement sequence must be above 0 (devices start from 0)", ErrMalformed)
	case s.IssuedAt.Unix() < 0 || s.IssuedAt.Unix() > maxUnixSeconds:
		return fmt.Errorf("%w: statement issue time %s is not between 1970 and 9999", ErrMalformed, s.IssuedAt)
	case s.ExpiresAt.Unix() < 0 || s.ExpiresAt.Unix() > maxUnixSeconds:
		return fmt.Errorf("%w: statement expiry time %s is not between 1970 and 9999", ErrMalformed, s.ExpiresAt)
	case s.ExpiresAt.Unix() <= s.IssuedAt.Unix():
		return fmt.Errorf("%w: statement expires (%s) before it is issued (%s)", ErrMalformed, s.ExpiresAt.UTC().Format(time.RFC3339), s.IssuedAt.UTC().Format(time.RFC3339))
	}
	return nil
}

// Deterministic CBOR (RFC 8949 section 4.2.1) for the fixed shapes of a
// release statement. Hand-written rather than generic so that the bytes are
// exactly those docs/firmware.md lists and a C implementation can match
// them field by field.

const (
	majorUint   = 0
	majorNegInt = 1
	majorBytes  = 2
	majorText   = 3
	majorArray  = 4
	majorMap    = 5
	majorTag    = 6
)

func appendHead(b []byte, major byte, v uint64) []byte {
	m := major << 5
	switch {
	case v < 24:
		return append(b, m|byte(v))
	case v <= math.MaxUint8:
		return append(b, m|24, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, m|25), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, m|26), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, m|27), v)
}

func encodeStatementPayload(s *Statement) []byte {
	b := make([]byte, 0, 192)
	b = appendHead(b, majorMap, statementKeys)
	b = appendHead(b, majorUint, keyModel)
	b = appendHead(b, majorText, uint64(len(s.Model)))
	b = append(b, s.Model...)
	b = appendHead(b, majorUint, keyVersion)
	b = appendHead(b, majorArray, 4)
	b = appendHead(b, majorUint, uint64(s.Version.Major))
	b = appendHead(b, majorUint, uint64(s.Version.Minor))
	b = appendHead(b, majorUint, uint64(s.Version.Revision))
	b = appendHead(b, majorUint, uint64(s.Version.Build))
	b = appendHead(b, majorUint, keySecurityCounter)
	b = appendHead(b, majorUint, uint64(s.SecurityCounter))
	b = appendHead(b, majorUint, keyImageSHA256)
	b = appendHead(b, majorBytes, sha256.Size)
	b = append(b, s.ImageSHA256[:]...)
	b = appendHead(b, majorUint, keyImageSize)
	b = appendHead(b, majorUint, uint64(s.ImageSize))
	b = appendHead(b, majorUint, keySequence)
	b = appendHead(b, majorUint, s.Sequence)
	b = appendHead(b, majorUint, keyIssuedAt)
	b = appendHead(b, majorUint, uint64(s.IssuedAt.Unix()))
	b = appendHead(b, majorUint, keyExpiresAt)
	b = appendHead(b, majorUint, uint64(s.ExpiresAt.Unix()))
	return b
}

// encodeProtected is the protected header map {1: alg, 3: content type,
// 4: kid} with its keys in deterministic order.
func encodeProtected(alg cose.Algorithm, kid []byte) []byte {
	b := make([]byte, 0, 80)
	b = appendHead(b, majorMap, 3)
	b = appendHead(b, majorUint, uint64(cose.HeaderLabelAlgorithm))
	b = appendHead(b, majorNegInt, uint64(-1-int64(alg)))
	b = appendHead(b, majorUint, uint64(cose.HeaderLabelContentType))
	b = appendHead(b, majorText, uint64(len(StatementContentType)))
	b = append(b, StatementContentType...)
	b = appendHead(b, majorUint, uint64(cose.HeaderLabelKeyID))
	b = appendHead(b, majorBytes, uint64(len(kid)))
	return append(b, kid...)
}

// encodeStatement is the whole COSE_Sign1_Tagged.
func encodeStatement(alg cose.Algorithm, kid, payload, sig []byte) []byte {
	prot := encodeProtected(alg, kid)
	b := make([]byte, 0, 16+len(prot)+len(payload)+len(sig))
	b = appendHead(b, majorTag, cose.CBORTagSign1Message)
	b = appendHead(b, majorArray, 4)
	b = appendHead(b, majorBytes, uint64(len(prot)))
	b = append(b, prot...)
	b = appendHead(b, majorMap, 0)
	b = appendHead(b, majorBytes, uint64(len(payload)))
	b = append(b, payload...)
	b = appendHead(b, majorBytes, uint64(len(sig)))
	return append(b, sig...)
}

// cborReader reads deterministic CBOR heads and refuses everything else:
// non-shortest arguments, indefinite lengths and the reserved additional
// information values.
type cborReader struct {
	b   []byte
	off int
}

var errShortCBOR = errors.New("unexpected end of data")

func (r *cborReader) head() (major byte, v uint64, err error) {
	if r.off >= len(r.b) {
		return 0, 0, errShortCBOR
	}
	ib := r.b[r.off]
	major, ai := ib>>5, ib&0x1f
	r.off++
	var n int
	switch {
	case ai < 24:
		return major, uint64(ai), nil
	case ai == 24:
		n = 1
	case ai == 25:
		n = 2
	case ai == 26:
		n = 4
	case ai == 27:
		n = 8
	case ai == 31:
		return 0, 0, fmt.Errorf("indefinite length at offset %d", r.off-1)
	default:
		return 0, 0, fmt.Errorf("reserved additional information %d at offset %d", ai, r.off-1)
	}
	if len(r.b)-r.off < n {
		return 0, 0, errShortCBOR
	}
	for _, c := range r.b[r.off : r.off+n] {
		v = v<<8 | uint64(c)
	}
	r.off += n
	if (n == 1 && v < 24) || (n == 2 && v <= math.MaxUint8) || (n == 4 && v <= math.MaxUint16) || (n == 8 && v <= math.MaxUint32) {
		return 0, 0, fmt.Errorf("non-shortest encoding of %d at offset %d", v, r.off-1-n)
	}
	return major, v, nil
}

var majorNames = [8]string{"unsigned integer", "negative integer", "byte string", "text string", "array", "map", "tag", "simple value or float"}

// expectHead reads a head that must be exactly (major, v).
func (r *cborReader) expectHead(major byte, v uint64, what string) error {
	start := r.off
	m, got, err := r.head()
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	if m != major || got != v {
		return fmt.Errorf("%w: %s: found %s %d at offset %d, want %s %d", ErrMalformed, what, majorNames[m], got, start, majorNames[major], v)
	}
	return nil
}

func (r *cborReader) uint(what string) (uint64, error) {
	start := r.off
	m, v, err := r.head()
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	if m != majorUint {
		return 0, fmt.Errorf("%w: %s: found %s at offset %d, want unsigned integer", ErrMalformed, what, majorNames[m], start)
	}
	return v, nil
}

// readBytes reads a byte or text string of the given major type.
func (r *cborReader) readBytes(major byte, what string) ([]byte, error) {
	start := r.off
	m, n, err := r.head()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	if m != major {
		return nil, fmt.Errorf("%w: %s: found %s at offset %d, want %s", ErrMalformed, what, majorNames[m], start, majorNames[major])
	}
	if n > uint64(len(r.b)-r.off) {
		return nil, fmt.Errorf("%w: %s: %d bytes announced, %d left", ErrMalformed, what, n, len(r.b)-r.off)
	}
	out := r.b[r.off : r.off+int(n) : r.off+int(n)]
	r.off += int(n)
	return out, nil
}

// key reads map key want, which deterministic order and the fixed key set
// put exactly here.
func (r *cborReader) key(want uint64, where string) error {
	start := r.off
	m, v, err := r.head()
	if err != nil {
		return fmt.Errorf("%w: %s key %d: %v", ErrMalformed, where, want, err)
	}
	switch {
	case m != majorUint:
		return fmt.Errorf("%w: %s: key at offset %d is a %s, want unsigned integer %d", ErrMalformed, where, start, majorNames[m], want)
	case v < want:
		return fmt.Errorf("%w: %s: key %d at offset %d is duplicated or out of order", ErrMalformed, where, v, start)
	case v > want:
		return fmt.Errorf("%w: %s: key %d is missing (found %d at offset %d)", ErrMalformed, where, want, v, start)
	}
	return nil
}

func parseProtected(b []byte) (cose.Algorithm, []byte, error) {
	const where = "protected header"
	r := cborReader{b: b}
	if err := r.expectHead(majorMap, 3, where+" (want a map of alg, content type and kid)"); err != nil {
		return 0, nil, err
	}
	if err := r.key(uint64(cose.HeaderLabelAlgorithm), where); err != nil {
		return 0, nil, err
	}
	start := r.off
	m, v, err := r.head()
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %s alg: %v", ErrMalformed, where, err)
	}
	var alg cose.Algorithm
	switch {
	case m == majorNegInt && v == uint64(-1-int64(cose.AlgorithmES256)):
		alg = cose.AlgorithmES256
	case m == majorNegInt && v == uint64(-1-int64(cose.AlgorithmEdDSA)):
		alg = cose.AlgorithmEdDSA
	default:
		return 0, nil, fmt.Errorf("%w: %s: algorithm at offset %d is not ES256 (-7) or EdDSA (-8)", ErrMalformed, where, start)
	}
	if err := r.key(uint64(cose.HeaderLabelContentType), where); err != nil {
		return 0, nil, err
	}
	ct, err := r.readBytes(majorText, where+" content type")
	if err != nil {
		return 0, nil, err
	}
	if string(ct) != StatementContentType {
		return 0, nil, fmt.Errorf("%w: %s: content type %q, want %q", ErrMalformed, where, ct, StatementContentType)
	}
	if err := r.key(uint64(cose.HeaderLabelKeyID), where); err != nil {
		return 0, nil, err
	}
	kid, err := r.readBytes(majorBytes, where+" kid")
	if err != nil {
		return 0, nil, err
	}
	if len(kid) != sha256.Size {
		return 0, nil, fmt.Errorf("%w: %s: kid is %d bytes, want %d", ErrMalformed, where, len(kid), sha256.Size)
	}
	if r.off != len(b) {
		return 0, nil, fmt.Errorf("%w: %s: %d bytes after the map", ErrMalformed, where, len(b)-r.off)
	}
	return alg, kid, nil
}

func decodeStatementPayload(b []byte) (Statement, error) {
	const where = "statement payload"
	var s Statement
	r := cborReader{b: b}
	if err := r.expectHead(majorMap, statementKeys, where+" (want a map of keys 1 to 8)"); err != nil {
		return s, err
	}
	uintField := func(key uint64, name string, limit uint64) (uint64, error) {
		if err := r.key(key, where); err != nil {
			return 0, err
		}
		v, err := r.uint(where + " " + name)
		if err != nil {
			return 0, err
		}
		if v > limit {
			return 0, fmt.Errorf("%w: %s %s %d exceeds %d", ErrMalformed, where, name, v, limit)
		}
		return v, nil
	}

	if err := r.key(keyModel, where); err != nil {
		return s, err
	}
	model, err := r.readBytes(majorText, where+" model")
	if err != nil {
		return s, err
	}
	s.Model = string(model)

	if err := r.key(keyVersion, where); err != nil {
		return s, err
	}
	if err := r.expectHead(majorArray, 4, where+" version (want [major, minor, revision, build])"); err != nil {
		return s, err
	}
	var ver [4]uint64
	for i, limit := range [4]uint64{math.MaxUint8, math.MaxUint8, math.MaxUint16, math.MaxUint32} {
		v, err := r.uint(where + " version")
		if err != nil {
			return s, err
		}
		if v > limit {
			return s, fmt.Errorf("%w: %s version component %d is %d, at most %d", ErrMalformed, where, i, v, limit)
		}
		ver[i] = v
	}
	s.Version = Version{Major: uint8(ver[0]), Minor: uint8(ver[1]), Revision: uint16(ver[2]), Build: uint32(ver[3])}

	ctr, err := uintField(keySecurityCounter, "security counter", math.MaxUint32)
	if err != nil {
		return s, err
	}
	s.SecurityCounter = uint32(ctr)

	if err := r.key(keyImageSHA256, where); err != nil {
		return s, err
	}
	sum, err := r.readBytes(majorBytes, where+" image SHA-256")
	if err != nil {
		return s, err
	}
	if len(sum) != sha256.Size {
		return s, fmt.Errorf("%w: %s image SHA-256 is %d bytes, want %d", ErrMalformed, where, len(sum), sha256.Size)
	}
	copy(s.ImageSHA256[:], sum)

	size, err := uintField(keyImageSize, "image size", math.MaxInt64)
	if err != nil {
		return s, err
	}
	s.ImageSize = int64(size)
	if s.Sequence, err = uintField(keySequence, "sequence", math.MaxUint64); err != nil {
		return s, err
	}
	iat, err := uintField(keyIssuedAt, "issued-at", maxUnixSeconds)
	if err != nil {
		return s, err
	}
	s.IssuedAt = time.Unix(int64(iat), 0).UTC()
	exp, err := uintField(keyExpiresAt, "expires-at", maxUnixSeconds)
	if err != nil {
		return s, err
	}
	s.ExpiresAt = time.Unix(int64(exp), 0).UTC()
	if r.off != len(b) {
		return s, fmt.Errorf("%w: %s: %d bytes after the map", ErrMalformed, where, len(b)-r.off)
	}
	return s, nil
}
