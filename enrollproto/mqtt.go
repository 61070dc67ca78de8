package enrollproto

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// MQTT channels under private/<id>/.
const (
	ChannelCSR         = "cert/csr"     // device -> Warden: a CSRRequest
	ChannelNew         = "cert/new"     // Warden -> device: a CertResponse
	ChannelClaim       = "claim"        // device -> Warden: a ClaimRequest
	ChannelClaimResult = "claim/result" // Warden -> device: a ClaimResult
)

const topicPrefix = "private/"

// Topic returns private/<id>/<channel>. The ID is not checked: callers pass
// an authenticated device's ID, whose grammar keeps it free of MQTT
// separators and wildcards.
func Topic(deviceID, channel string) string {
	return topicPrefix + deviceID + "/" + channel
}

// ParseTopic splits a topic of one of this protocol's four channels into
// the device ID and the channel. ok is false for any other topic, including
// one whose ID segment is not a valid device ID.
func ParseTopic(topic string) (deviceID, channel string, ok bool) {
	rest, found := strings.CutPrefix(topic, topicPrefix)
	if !found {
		return "", "", false
	}
	id, channel, found := strings.Cut(rest, "/")
	if !found || !validDeviceID(id) {
		return "", "", false
	}
	switch channel {
	case ChannelCSR, ChannelNew, ChannelClaim, ChannelClaimResult:
		return id, channel, true
	}
	return "", "", false
}

// MaxMessage bounds any MQTT payload of this protocol: a CSR, a claim token
// and a certificate chain are each a few KiB.
const MaxMessage = 16 << 10

// MaxClaimToken bounds a claim token (a compact JWE of a small JSON claim).
const MaxClaimToken = 4096

// CSRRequest asks for a certificate on private/<id>/cert/csr. From a device
// authenticated by its certificate it is a renewal; from a claim-certificate
// connection it is an enrollment, and Proof or the claim certificate
// authorizes it.
type CSRRequest struct {
	RequestID  string `json:"request_id"`            // 1..64 of [A-Za-z0-9_-], echoed in the CertResponse
	CSR        []byte `json:"csr"`                   // PKCS#10 DER, base64 in JSON
	Proof      []byte `json:"proof,omitempty"`       // Proof(...) when enrolling by secret: 32 bytes
	ClaimToken string `json:"claim_token,omitempty"` // an app's claim token riding along, <= MaxClaimToken
}

// Validate checks the request's shape. The CSR itself is parsed and checked
// by the server.
func (r CSRRequest) Validate() error {
	if !validRequestID(r.RequestID) {
		return requestIDError("CSR request", r.RequestID)
	}
	if len(r.CSR) == 0 {
		return errors.New("CSR request: csr is required")
	}
	if len(r.Proof) != 0 && len(r.Proof) != proofSize {
		return fmt.Errorf("CSR request: proof is %d bytes, want %d", len(r.Proof), proofSize)
	}
	if r.ClaimToken != "" && !validClaimToken(r.ClaimToken) {
		return claimTokenError("CSR request", len(r.ClaimToken))
	}
	return nil
}

// ParseCSRRequest reads a cert/csr payload strictly (at most MaxMessage
// bytes, one JSON object, no unknown or repeated fields, nothing after it)
// and validates it.
func ParseCSRRequest(b []byte) (CSRRequest, error) {
	var r CSRRequest
	if err := decodeStrictJSON(b, MaxMessage, "CSR request", &r); err != nil {
		return CSRRequest{}, err
	}
	if err := r.Validate(); err != nil {
		return CSRRequest{}, err
	}
	return r, nil
}

// Statuses of CertResponse and ClaimResult.
const (
	StatusIssued  = "issued"  // CertResponse: the certificate is in the message
	StatusRefused = "refused" // not authorized; the reason is only in Warden's log and audit
	StatusError   = "error"   // Warden failed; the device may retry later
	StatusBound   = "bound"   // ClaimResult: the device now belongs to the token's user
)

// CertResponse answers a CSRRequest on private/<id>/cert/new, or delivers a
// re-issued certificate unsolicited during a CA rotation (Rotation true,
// RequestID empty). Nothing in it is trusted until the device has checked
// the certificate against its pinned root.
type CertResponse struct {
	RequestID   string   `json:"request_id,omitempty"`  // the CSRRequest's; empty when unsolicited
	Status      string   `json:"status"`                // StatusIssued, StatusRefused or StatusError
	Certificate []byte   `json:"certificate,omitempty"` // leaf DER, when issued
	Chain       [][]byte `json:"chain,omitempty"`       // issuing CA DER(s), when issued
	Rotation    bool     `json:"rotation,omitempty"`    // re-issued by a CA rotation
}

// Validate checks the response's shape: a known status; a certificate when
// and only when issued (and a chain only with it), at most 16 certificates
// in all with none empty; a request ID of the request grammar when present;
// and a rotation delivery issued and unsolicited. An empty request ID
// without Rotation is allowed, so Warden can answer a request it could not
// read.
func (r CertResponse) Validate() error {
	if r.RequestID != "" && !validRequestID(r.RequestID) {
		return requestIDError("certificate response", r.RequestID)
	}
	switch r.Status {
	case StatusIssued:
		if len(r.Certificate) == 0 {
			return errors.New("certificate response: status issued without a certificate")
		}
	case StatusRefused, StatusError:
		if len(r.Certificate) != 0 || len(r.Chain) != 0 {
			return fmt.Errorf("certificate response: status %s carries certificates", r.Status)
		}
	default:
		return fmt.Errorf("certificate response: unknown status %q (want %s, %s or %s)", truncate(r.Status), StatusIssued, StatusRefused, StatusError)
	}
	if 1+len(r.Chain) > maxCerts {
		return fmt.Errorf("certificate response: %d certificates exceed the limit of %d", 1+len(r.Chain), maxCerts)
	}
	for i, c := range r.Chain {
		if len(c) == 0 {
			return fmt.Errorf("certificate response: chain certificate %d is empty", i)
		}
	}
	if r.Rotation && (r.Status != StatusIssued || r.RequestID != "") {
		return errors.New("certificate response: a rotation delivery must be issued and carry no request ID")
	}
	return nil
}

// ParseCertResponse reads a cert/new payload strictly (at most MaxMessage
// bytes, one JSON object, no unknown or repeated fields, nothing after it)
// and validates it.
func ParseCertResponse(b []byte) (CertResponse, error) {
	var r CertResponse
	if err := decodeStrictJSON(b, MaxMessage, "certificate response", &r); err != nil {
		return CertResponse{}, err
	}
	if err := r.Validate(); err != nil {
		return CertResponse{}, err
	}
	return r, nil
}

// Certificates parses Certificate and Chain, leaf first. It verifies
// nothing: the caller checks the chain against its pinned root and the leaf
// against its own key and device ID.
func (r CertResponse) Certificates() ([]*x509.Certificate, error) {
	if len(r.Certificate) == 0 {
		return nil, fmt.Errorf("certificate response: no certificate (status %q)", truncate(r.Status))
	}
	certs := make([]*x509.Certificate, 0, 1+len(r.Chain))
	leaf, err := x509.ParseCertificate(r.Certificate)
	if err != nil {
		return nil, fmt.Errorf("certificate response: parse certificate: %w", err)
	}
	certs = append(certs, leaf)
	for i, der := range r.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("certificate response: parse chain certificate %d: %w", i, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// ClaimRequest forwards an app's claim token on private/<id>/claim. The
// device cannot read the token; only Warden can decrypt it.
type ClaimRequest struct {
	RequestID string `json:"request_id"` // 1..64 of [A-Za-z0-9_-], echoed in the ClaimResult
	Token     string `json:"token"`      // compact JWE: 1..MaxClaimToken of base64url and '.'
}

// Validate checks the request's shape; whether the token is genuine, fresh
// and unused is for the server to decide (and audit).
func (r ClaimRequest) Validate() error {
	if !validRequestID(r.RequestID) {
		return requestIDError("claim request", r.RequestID)
	}
	if !validClaimToken(r.Token) {
		return claimTokenError("claim request", len(r.Token))
	}
	return nil
}

// ParseClaimRequest reads a claim payload strictly (at most MaxMessage
// bytes, one JSON object, no unknown or repeated fields, nothing after it)
// and validates it.
func ParseClaimRequest(b []byte) (ClaimRequest, error) {
	var r ClaimRequest
	if err := decodeStrictJSON(b, MaxMessage, "claim request", &r); err != nil {
		return ClaimRequest{}, err
	}
	if err := r.Validate(); err != nil {
		return ClaimRequest{}, err
	}
	return r, nil
}

// ClaimResult answers a ClaimRequest on private/<id>/claim/result.
type ClaimResult struct {
	RequestID string `json:"request_id"` // the ClaimRequest's
	Status    string `json:"status"`     // StatusBound or StatusRefused
}

// Validate checks the result's shape.
func (r ClaimResult) Validate() error {
	if !validRequestID(r.RequestID) {
		return requestIDError("claim result", r.RequestID)
	}
	switch r.Status {
	case StatusBound, StatusRefused:
		return nil
	}
	return fmt.Errorf("claim result: unknown status %q (want %s or %s)", truncate(r.Status), StatusBound, StatusRefused)
}

// ParseClaimResult reads a claim/result payload strictly (at most
// MaxMessage bytes, one JSON object, no unknown or repeated fields, nothing
// after it) and validates it.
func ParseClaimResult(b []byte) (ClaimResult, error) {
	var r ClaimResult
	if err := decodeStrictJSON(b, MaxMessage, "claim result", &r); err != nil {
		return ClaimResult{}, err
	}
	if err := r.Validate(); err != nil {
		return ClaimResult{}, err
	}
	return r, nil
}

// requestIDError says what a request ID must look like.
func requestIDError(what, id string) error {
	return fmt.Errorf("%s: request_id %q must be 1-%d characters of letters, digits, '_' or '-'", what, truncate(id), maxRequestID)
}

// claimTokenError describes a bad token by its length only: a token is a
// bearer credential until it is used, so its text stays out of errors.
func claimTokenError(what string, n int) error {
	return fmt.Errorf("%s: claim token (%d bytes) must be 1-%d characters of base64url and '.' (a compact JWE)", what, n, MaxClaimToken)
}
