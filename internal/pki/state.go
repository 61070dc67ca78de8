package pki

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Issuer states, as IssuerInfo.State and in authority.json.
const (
	// IssuerCurrent signs everything the CA issues. There is exactly one.
	IssuerCurrent = "current"
	// IssuerGrace no longer signs but is still trusted for client
	// certificates, until its GraceUntil (zero: until RetireIssuer).
	IssuerGrace = "grace"
	// IssuerRetired is no longer trusted; its certificates simply stop
	// working.
	IssuerRetired = "retired"
	// IssuerRevoked is no longer trusted because it must not be (a
	// compromised key, say). Unlike retirement it is final.
	IssuerRevoked = "revoked"
)

const (
	// stateVersion1 is authority.json before issuing-CA rotation: one
	// issuer, implicitly current. Load reads it; every write is version 2.
	stateVersion1 = 1
	stateVersion  = 2
	// maxStateSize bounds authority.json; a real one is a few KiB even
	// during a rotation (which carries four small files).
	maxStateSize = 1 << 20
	// maxIssuers bounds the issuer list: one rotation a month for 80 years.
	maxIssuers = 1000
	// MaxRevocationReason bounds RevokeIssuer's reason, in bytes.
	MaxRevocationReason = 256
)

// stateFile is authority.json.
type stateFile struct {
	Version      int       `json:"version"`
	Organization string    `json:"organization"`
	CRLURL       string    `json:"crl_url"`
	CRLNumber    uint64    `json:"crl_number"`
	Created      time.Time `json:"created"`
	// Issuers is every issuing CA this root has had here, current first
	// (version 2 only).
	Issuers []issuerRecord `json:"issuers,omitempty"`
	// Pending is present only between a rotation's commit and its end: the
	// exact contents of the four files that must be in place for Issuers
	// to be true. Whoever finds it writes them and removes it.
	Pending *pendingSwitch `json:"pending,omitempty"`
}

// issuerRecord is one issuing CA in authority.json.
type issuerRecord struct {
	Fingerprint string    `json:"fingerprint"`
	State       string    `json:"state"`
	Created     time.Time `json:"created"`
	GraceUntil  time.Time `json:"grace_until,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	RevokedAt   time.Time `json:"revoked_at,omitzero"`
	Reason      string    `json:"reason,omitempty"`
}

// pendingSwitch holds the files of a committed rotation, byte for byte
// (base64 in JSON). Keeping them inside the commit record means a rotation
// commits with one atomic write and can always be finished from it alone.
type pendingSwitch struct {
	IssuingCert      []byte `json:"issuing_crt"`
	IssuingKeySealed []byte `json:"issuing_key_sealed"`
	ServerCert       []byte `json:"server_crt"`
	ServerKeySealed  []byte `json:"server_key_sealed"`
}

// parseState decodes and checks authority.json. Everything it accepts is
// internally consistent; whether it matches the certificates on disk is
// Load's business.
func parseState(data []byte) (*stateFile, error) {
	if len(data) > maxStateSize {
		return nil, fmt.Errorf("%s is corrupt: %d bytes is more than the %d a CA state can take", fileAuthority, len(data), maxStateSize)
	}
	var st stateFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", fileAuthority, err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s is corrupt: data after the JSON object", fileAuthority)
	}
	switch st.Version {
	case stateVersion1:
		if st.Issuers != nil || st.Pending != nil {
			return nil, fmt.Errorf("%s is corrupt: version 1 has no issuer list or pending rotation", fileAuthority)
		}
	case stateVersion:
		if err := validateIssuers(st.Issuers); err != nil {
			return nil, fmt.Errorf("%s (version 2) is corrupt: %w", fileAuthority, err)
		}
		if p := st.Pending; p != nil && (len(p.IssuingCert) == 0 || len(p.IssuingKeySealed) == 0 || len(p.ServerCert) == 0 || len(p.ServerKeySealed) == 0) {
			return nil, fmt.Errorf("%s (version 2) is corrupt: the pending rotation lacks a file", fileAuthority)
		}
	default:
		return nil, fmt.Errorf("%s has version %d; this Warden reads versions %d and %d (was it written by a newer Warden?)", fileAuthority, st.Version, stateVersion1, stateVersion)
	}
	if err := validateCRLURL(st.CRLURL); err != nil {
		return nil, fmt.Errorf("%s: %w", fileAuthority, err)
	}
	return &st, nil
}

func validateIssuers(recs []issuerRecord) error {
	if len(recs) == 0 {
		return errors.New("it lists no issuing CA")
	}
	if len(recs) > maxIssuers {
		return fmt.Errorf("it lists %d issuing CAs, more than the %d allowed", len(recs), maxIssuers)
	}
	seen := make(map[string]bool, len(recs))
	current := 0
	for i, r := range recs {
		if !validFingerprint(r.Fingerprint) {
			return fmt.Errorf("issuer %d: fingerprint %q is not 64 lowercase hex digits", i+1, r.Fingerprint)
		}
		if seen[r.Fingerprint] {
			return fmt.Errorf("issuer %s is listed twice", r.Fingerprint)
		}
		seen[r.Fingerprint] = true
		if r.Created.IsZero() {
			return fmt.Errorf("issuer %s has no creation time", r.Fingerprint)
		}
		if r.Reason != "" && r.State != IssuerRevoked {
			return fmt.Errorf("issuer %s is %s but has a revocation reason", r.Fingerprint, r.State)
		}
		switch r.State {
		case IssuerCurrent:
			current++
			if !r.GraceUntil.IsZero() || !r.RetiredAt.IsZero() || !r.RevokedAt.IsZero() {
				return fmt.Errorf("issuer %s is current but has a grace, retirement or revocation time", r.Fingerprint)
			}
		case IssuerGrace:
			if !r.RetiredAt.IsZero() || !r.RevokedAt.IsZero() {
				return fmt.Errorf("issuer %s is in grace but has a retirement or revocation time", r.Fingerprint)
			}
		case IssuerRetired:
			if r.RetiredAt.IsZero() || !r.RevokedAt.IsZero() {
				return fmt.Errorf("issuer %s is retired, so needs a retirement time and no revocation time", r.Fingerprint)
			}
		case IssuerRevoked:
			if r.RevokedAt.IsZero() {
				return fmt.Errorf("issuer %s is revoked but has no revocation time", r.Fingerprint)
			}
			if err := validateReason(r.Reason); err != nil {
				return fmt.Errorf("issuer %s: %w", r.Fingerprint, err)
			}
		default:
			return fmt.Errorf("issuer %s has unknown state %q", r.Fingerprint, r.State)
		}
	}
	if current != 1 {
		return fmt.Errorf("it lists %d current issuing CAs, want exactly 1", current)
	}
	return nil
}

func validFingerprint(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// normaliseFingerprint accepts Fingerprint's form and OpenSSL's
// (`openssl x509 -fingerprint -sha256`: uppercase, colon-separated, with or
// without the "sha256 Fingerprint=" prefix).
func normaliseFingerprint(s string) (string, error) {
	fp := strings.TrimSpace(s)
	if i := strings.LastIndexByte(fp, '='); i >= 0 {
		fp = fp[i+1:]
	}
	fp = strings.ToLower(strings.ReplaceAll(fp, ":", ""))
	if !validFingerprint(fp) {
		if _, err := hex.DecodeString(fp); err == nil && len(fp) < 64 {
			return "", fmt.Errorf("fingerprint %q is %d hex digits; give all 64 of the SHA-256", s, len(fp))
		}
		return "", fmt.Errorf("fingerprint %q is not a SHA-256 fingerprint (64 hex digits, colons allowed)", s)
	}
	return fp, nil
}

// validateReason keeps revocation reasons to one line of printable text,
// since they end up in terminals and logs.
func validateReason(reason string) error {
	if len(reason) > MaxRevocationReason {
		return fmt.Errorf("revocation reason is %d bytes; at most %d are allowed", len(reason), MaxRevocationReason)
	}
	if !utf8.ValidString(reason) {
		return errors.New("revocation reason is not valid UTF-8")
	}
	for _, r := range reason {
		if unicode.IsControl(r) {
			return fmt.Errorf("revocation reason contains the control character %U; use one line of plain text", r)
		}
	}
	return nil
}

func encodeState(st *stateFile) ([]byte, error) {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", fileAuthority, err)
	}
	return append(data, '\n'), nil
}
