package enrollproto

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/smallstep/pkcs7"
)

// EST paths (RFC 7030 section 3.2.2) on Warden's api listener.
const (
	// PathCACerts answers, without authentication, the root and issuing CA
	// certificates as a certs-only body.
	PathCACerts = "/.well-known/est/cacerts"
	// PathSimpleEnroll takes a CSR authorized by an enrollment proof
	// (HeaderProof) or a claim certificate (mutual TLS).
	PathSimpleEnroll = "/.well-known/est/simpleenroll"
	// PathSimpleReenroll takes a CSR from a device authenticated by its
	// current, unexpired certificate, for the same device ID.
	PathSimpleReenroll = "/.well-known/est/simplereenroll"
)

// EST media types and Warden's EST headers.
const (
	// ContentTypePKCS10 is the media type of a request body
	// (EncodeCSRBody).
	ContentTypePKCS10 = "application/pkcs10"
	// ContentTypeCertsOnly is the media type of an answer body
	// (EncodeCertsOnly); the answer also carries
	// Content-Transfer-Encoding: base64.
	ContentTypeCertsOnly = "application/pkcs7-mime; smime-type=certs-only"
	// HeaderProof carries EncodeProofHeader(Proof(...)) on simpleenroll, so
	// the device proves its enrollment secret without sending it.
	HeaderProof = "Warden-Enroll-Proof"
	// HeaderClaimToken carries an app's claim token alongside an
	// enrollment, binding the device to the app's user in the same step.
	HeaderClaimToken = "Warden-Claim-Token"
)

// MaxBody bounds any EST body either side reads: a CSR or a handful of
// certificates is a few KiB, and the bound keeps an unauthenticated peer
// from making the other side buffer more. Read with
// io.LimitReader(r, MaxBody+1) and let the decoders refuse the excess.
const MaxBody = 64 << 10

// EncodeCSRBody returns the EST request body for a CSR: base64
// (StdEncoding) of the DER in lines of at most 76 characters, each ending in
// CRLF (RFC 2045, as RFC 7030 section 4.2.1 asks). A CSR over 47889 bytes
// encodes to more than MaxBody and will be refused by the reader; real ones
// are well under 1 KiB.
func EncodeCSRBody(csrDER []byte) []byte {
	return encodeBase64Lines(csrDER)
}

// pemCSRType is the PEM type a CSR file carries (RFC 7468 section 7).
const pemCSRType = "CERTIFICATE REQUEST"

// DecodeCSRBody reads an EST request body and returns the CSR DER. The body
// is base64 with any CR, LF, space or tab ignored; for the sake of hand-made
// requests (curl --data-binary @req.pem) a single PEM "CERTIFICATE REQUEST"
// block is accepted too. It does not parse the CSR (the server's pki
// package does), but it refuses an empty one and a body over MaxBody.
func DecodeCSRBody(body []byte) ([]byte, error) {
	if len(body) > MaxBody {
		return nil, fmt.Errorf("EST CSR body: %d bytes exceed the %d-byte limit", len(body), MaxBody)
	}
	var der []byte
	if trimmed := bytes.TrimLeft(body, " \t\r\n"); bytes.HasPrefix(trimmed, []byte("-----BEGIN ")) {
		block, rest := pem.Decode(trimmed)
		switch {
		case block == nil:
			return nil, errors.New("EST CSR body: malformed PEM; send base64 of the CSR DER or one PEM CERTIFICATE REQUEST block")
		case block.Type != pemCSRType:
			return nil, fmt.Errorf("EST CSR body: PEM block is %q, not %q", truncate(block.Type), pemCSRType)
		case len(block.Headers) != 0:
			return nil, errors.New("EST CSR body: PEM block has headers; a CSR carries none")
		case len(bytes.Trim(rest, " \t\r\n")) != 0:
			return nil, errors.New("EST CSR body: data after the PEM block; send exactly one CSR")
		}
		der = block.Bytes
	} else {
		var err error
		der, err = decodeBase64Body(body)
		if err != nil {
			return nil, fmt.Errorf("EST CSR body: %w; send base64 of the CSR DER (Content-Type %s)", err, ContentTypePKCS10)
		}
	}
	if len(der) == 0 {
		return nil, errors.New("EST CSR body: the CSR is empty")
	}
	if !fitsBody(len(der)) {
		return nil, fmt.Errorf("EST CSR body: a %d-byte CSR is too large to re-encode within %d bytes", len(der), MaxBody)
	}
	return der, nil
}

// EncodeCertsOnly returns an EST answer body: base64 (lines of at most 76
// characters ending in CRLF) of a degenerate PKCS#7 SignedData holding the
// certificates in the order given (RFC 7030 section 4.1.3). It refuses no
// certificates, more than 16, a certificate without its DER, and a result
// over MaxBody.
func EncodeCertsOnly(certs []*x509.Certificate) ([]byte, error) {
	if len(certs) == 0 {
		return nil, errors.New("encode certs-only: no certificates")
	}
	if len(certs) > maxCerts {
		return nil, fmt.Errorf("encode certs-only: %d certificates exceed the limit of %d", len(certs), maxCerts)
	}
	var raw []byte
	for i, c := range certs {
		if c == nil || len(c.Raw) == 0 {
			return nil, fmt.Errorf("encode certs-only: certificate %d has no DER; pass certificates from x509.ParseCertificate", i)
		}
		raw = append(raw, c.Raw...)
	}
	der, err := pkcs7.DegenerateCertificate(raw)
	if err != nil {
		return nil, fmt.Errorf("encode certs-only: build PKCS#7: %w", err)
	}
	if !fitsBody(len(der)) {
		return nil, fmt.Errorf("encode certs-only: %d certificates take %d bytes of DER, too large for the %d-byte body limit", len(certs), len(der), MaxBody)
	}
	return encodeBase64Lines(der), nil
}

// DecodeCertsOnly reads an EST answer body and returns its certificates in
// order. The body is base64 with any CR, LF, space or tab ignored; when it
// is not base64 it is taken as the DER itself, as some EST servers send it
// without a transfer encoding. The PKCS#7 must be one definite-length
// structure with nothing after it, holding 1 to 16 certificates that all
// parse. Nothing is verified: the caller checks the chain against its
// pinned root.
func DecodeCertsOnly(body []byte) ([]*x509.Certificate, error) {
	if len(body) > MaxBody {
		return nil, fmt.Errorf("EST certs-only body: %d bytes exceed the %d-byte limit", len(body), MaxBody)
	}
	der, err := decodeBase64Body(body)
	if err != nil {
		if len(body) == 0 || body[0] != 0x30 { // a DER SEQUENCE starts with 0x30
			return nil, fmt.Errorf("EST certs-only body: %w, and not DER either", err)
		}
		der = body
	}
	if !fitsBody(len(der)) {
		return nil, fmt.Errorf("EST certs-only body: %d bytes of DER are too large to re-encode within %d bytes", len(der), MaxBody)
	}
	// pkcs7.Parse converts BER to DER and ignores whatever follows the
	// first structure; insisting on one definite-length outer structure
	// keeps a body from meaning one thing here and another to a stricter
	// parser. (BER inside it is still converted, in linear-ish time: a
	// crafted 48 KiB body costs milliseconds.)
	var outer asn1.RawValue
	rest, err := asn1.Unmarshal(der, &outer)
	if err != nil {
		return nil, fmt.Errorf("EST certs-only body: not a DER PKCS#7 structure: %w", err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("EST certs-only body: %d bytes of trailing data after the PKCS#7 structure", len(rest))
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		return nil, fmt.Errorf("EST certs-only body: parse PKCS#7: %w", err)
	}
	switch n := len(p7.Certificates); {
	case n == 0:
		return nil, errors.New("EST certs-only body: no certificates in the PKCS#7")
	case n > maxCerts:
		return nil, fmt.Errorf("EST certs-only body: %d certificates exceed the limit of %d", n, maxCerts)
	}
	for i, c := range p7.Certificates {
		if c == nil {
			return nil, fmt.Errorf("EST certs-only body: certificate %d did not parse", i)
		}
	}
	return p7.Certificates, nil
}
