package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
)

// MaxCSRSize bounds what ParseCSR accepts. A P-256 CSR is a few hundred
// bytes; the bound stops a client from making the server parse megabytes.
const MaxCSRSize = 64 << 10

// maxKeySize bounds ParsePrivateKey input for the same reason.
const maxKeySize = 64 << 10

// Private key encodings accepted by EncodePrivateKey.
const (
	KeyFormatPEM = "pem" // PKCS#8, PEM type "PRIVATE KEY"
	KeyFormatDER = "der" // PKCS#8 DER
	KeyFormatRaw = "raw" // 32-byte big-endian private scalar
)

// rawKeySize is the length of a raw P-256 private scalar.
const rawKeySize = 32

// GenerateKey returns a new ECDSA P-256 key, the only key type Warden issues
// for.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate P-256 key: %w", err)
	}
	return key, nil
}

// CreateCSR returns a DER certificate signing request for key with the given
// common name and nothing else: Warden decides every other certificate field
// itself.
func CreateCSR(key *ecdsa.PrivateKey, commonName string) ([]byte, error) {
	if key == nil {
		return nil, errors.New("create CSR: no key")
	}
	tmpl := &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: commonName},
		SignatureAlgorithm: x509.ECDSAWithSHA256,
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR for %q: %w", commonName, err)
	}
	return der, nil
}

// ParseCSR reads a certificate signing request from untrusted bytes: PEM
// (type "CERTIFICATE REQUEST" or "NEW CERTIFICATE REQUEST") or DER, at most
// MaxCSRSize bytes. It checks the CSR's self-signature (proof that the
// requester holds the private key) and that the key is ECDSA P-256.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) > MaxCSRSize {
		return nil, fmt.Errorf("parse CSR: %d bytes is more than the %d allowed", len(data), MaxCSRSize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("parse CSR: no data")
	}
	der := data
	if !isDER(data) {
		block, rest := pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("parse CSR: %s", notPEMReason(data))
		}
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("parse CSR: PEM block is %q, want \"CERTIFICATE REQUEST\"", block.Type)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, errors.New("parse CSR: unexpected data after the PEM block; send exactly one CSR")
		}
		der = block.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: not a valid certificate request: %w", err)
	}
	if err := checkCSR(csr); err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	return csr, nil
}

// checkCSR is the part of ParseCSR that issuance repeats, because a CSR can
// reach IssueDevice without going through ParseCSR.
func checkCSR(csr *x509.CertificateRequest) error {
	if csr == nil {
		return errors.New("no CSR")
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("CSR signature does not verify (the request was altered or not signed by its key): %w", err)
	}
	return checkP256(csr.PublicKey, "CSR")
}

func checkP256(pub any, what string) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("%s key is ECDSA %s; Warden accepts only ECDSA P-256", what, k.Curve.Params().Name)
		}
		return nil
	case nil:
		return fmt.Errorf("%s has no public key", what)
	default:
		return fmt.Errorf("%s key is %T; Warden accepts only ECDSA P-256", what, pub)
	}
}

// EncodePrivateKey encodes a P-256 key as format: "pem" (PKCS#8 PEM), "der"
// (PKCS#8 DER) or "raw" (the 32-byte big-endian private scalar, left-padded
// with zeros, as many secure elements and microcontroller libraries take it).
func EncodePrivateKey(key *ecdsa.PrivateKey, format string) ([]byte, error) {
	if key == nil {
		return nil, errors.New("encode private key: no key")
	}
	if err := checkP256(&key.PublicKey, "private"); err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	switch format {
	case KeyFormatPEM, KeyFormatDER:
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("encode private key: %w", err)
		}
		if format == KeyFormatDER {
			return der, nil
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
	case KeyFormatRaw:
		raw, err := key.Bytes()
		if err != nil {
			return nil, fmt.Errorf("encode private key: %w", err)
		}
		return raw, nil
	default:
		return nil, fmt.Errorf("encode private key: unknown format %q; use one of %q, %q, %q", format, KeyFormatPEM, KeyFormatDER, KeyFormatRaw)
	}
}

// ParsePrivateKey reads an ECDSA P-256 private key in any format
// EncodePrivateKey writes, and also SEC 1 ("EC PRIVATE KEY") PEM or DER as
// OpenSSL writes it. Input of exactly 32 bytes (that does not begin a PEM
// block) is a raw scalar.
func ParsePrivateKey(data []byte) (*ecdsa.PrivateKey, error) {
	if len(data) > maxKeySize {
		return nil, fmt.Errorf("parse private key: %d bytes is more than the %d allowed", len(data), maxKeySize)
	}
	// 32 bytes that start a PEM block are a truncated PEM file, not a
	// scalar; a random scalar begins with "-----BEGIN" with probability 2^-80.
	if len(data) == rawKeySize && !bytes.HasPrefix(data, []byte("-----BEGIN")) {
		key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), data)
		if err != nil {
			return nil, fmt.Errorf("parse private key: 32 bytes, so a raw P-256 scalar, but it is not valid (zero or not below the curve order): %w", err)
		}
		return key, nil
	}
	if len(data) == 0 {
		return nil, errors.New("parse private key: no data")
	}
	if !isDER(data) {
		if block, _ := pem.Decode(data); block == nil {
			return nil, fmt.Errorf("parse private key: %s, nor a raw key (which is exactly %d bytes; this is %d)", notPEMReason(data), rawKeySize, len(data))
		}
		return parsePEMPrivateKey(data)
	}
	if key, err := x509.ParsePKCS8PrivateKey(data); err == nil {
		return asP256(key)
	}
	if key, err := x509.ParseECPrivateKey(data); err == nil {
		return asP256(key)
	}
	return nil, fmt.Errorf("parse private key: %d bytes of DER that is neither PKCS#8 nor SEC 1", len(data))
}

func parsePEMPrivateKey(data []byte) (*ecdsa.PrivateKey, error) {
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("parse private key: the PEM data holds no private key block")
		}
		if block.Headers["Proc-Type"] != "" {
			return nil, fmt.Errorf("parse private key: the %q block is encrypted; decrypt it first", block.Type)
		}
		switch block.Type {
		case "EC PARAMETERS":
			// `openssl ecparam -genkey` writes the curve before the key.
			continue
		case "PRIVATE KEY":
			key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse private key: invalid PKCS#8 in PEM: %w", err)
			}
			return asP256(key)
		case "EC PRIVATE KEY":
			key, err := x509.ParseECPrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse private key: invalid SEC 1 key in PEM: %w", err)
			}
			return asP256(key)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("parse private key: the key is encrypted (ENCRYPTED PRIVATE KEY); decrypt it first")
		default:
			return nil, fmt.Errorf("parse private key: PEM block is %q, want \"PRIVATE KEY\" or \"EC PRIVATE KEY\"", block.Type)
		}
	}
}

func asP256(key any) (*ecdsa.PrivateKey, error) {
	k, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("parse private key: key is %T; Warden accepts only ECDSA P-256", key)
	}
	if err := checkP256(&k.PublicKey, "private"); err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	return k, nil
}

// ParseCertificates reads one or more certificates: PEM blocks of type
// "CERTIFICATE" (text between blocks, as in OpenSSL bundles, is ignored) or
// concatenated DER.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("parse certificates: no data")
	}
	if isDER(data) {
		certs, err := x509.ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("parse certificates: invalid DER: %w", err)
		}
		if len(certs) == 0 {
			return nil, errors.New("parse certificates: no certificate found")
		}
		return certs, nil
	}
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("parse certificates: %s", notPEMReason(data))
	}
	var certs []*x509.Certificate
	for i := 1; block != nil; i++ {
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("parse certificates: PEM block %d is %q, want \"CERTIFICATE\"", i, block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificates: PEM block %d: %w", i, err)
		}
		certs = append(certs, cert)
		block, rest = pem.Decode(rest)
	}
	return certs, nil
}

// isDER tells DER from PEM by the first byte: every DER structure these
// parsers read is an ASN.1 SEQUENCE (0x30), and PEM is text that does not
// start with '0' in practice. Looking for "-----BEGIN" anywhere instead would
// misread DER that merely contains those bytes (in a name, or a key).
func isDER(data []byte) bool {
	return len(data) > 0 && data[0] == 0x30
}

func notPEMReason(data []byte) string {
	if bytes.Contains(data, []byte("-----BEGIN")) {
		return "malformed PEM (truncated, or a broken base64 body or END line)"
	}
	return "neither PEM nor DER"
}

// Fingerprint returns the lowercase hex SHA-256 of the certificate's DER,
// the form operators compare with `openssl x509 -fingerprint -sha256`
// (minus the colons).
func Fingerprint(cert *x509.Certificate) string {
	if cert == nil {
		return ""
	}
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// SerialHex returns a serial number as lowercase hex without separators or
// leading zeros (big.Int.Text(16)). The registry keys credentials by this
// string, so every caller must produce it this way.
func SerialHex(serial *big.Int) string {
	if serial == nil {
		return ""
	}
	return serial.Text(16)
}

// newSerial returns a positive 128-bit random serial. With 128 random bits a
// collision is not a practical concern, which is why no registry lookup is
// needed to make serials unique.
func newSerial() (*big.Int, error) {
	var b [16]byte
	for range 4 {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if s := new(big.Int).SetBytes(b[:]); s.Sign() > 0 {
			return s, nil
		}
	}
	return nil, errors.New("generate serial number: the random source returned only zeros")
}
