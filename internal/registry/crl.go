package registry

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"strings"
)

// CRL reason codes from RFC 5280, section 5.3.1, that an operator's reason
// can name. Zero (unspecified) leaves the extension out, as RFC 5280
// recommends.
const (
	crlReasonUnspecified          = 0
	crlReasonKeyCompromise        = 1
	crlReasonAffiliationChanged   = 3
	crlReasonSuperseded           = 4
	crlReasonCessationOfOperation = 5
	crlReasonPrivilegeWithdrawn   = 9
)

// crlReasons maps normalised reasons (lower case, without spaces, '-' or
// '_') to codes. Only whole reasons match: free text stays unspecified
// rather than being guessed at. cACompromise and certificateHold are
// missing on purpose: a device revocation is never the former, and
// Warden does not put certificates on hold (it disables devices instead).
var crlReasons = map[string]int{
	"keycompromise":        crlReasonKeyCompromise,
	"compromised":          crlReasonKeyCompromise,
	"stolen":               crlReasonKeyCompromise,
	"lost":                 crlReasonKeyCompromise,
	"affiliationchanged":   crlReasonAffiliationChanged,
	"superseded":           crlReasonSuperseded,
	"replaced":             crlReasonSuperseded,
	"cessationofoperation": crlReasonCessationOfOperation,
	"decommissioned":       crlReasonCessationOfOperation,
	"retired":              crlReasonCessationOfOperation,
	"privilegewithdrawn":   crlReasonPrivilegeWithdrawn,
}

// CRLReasonCode returns the RFC 5280 reason code for a revocation reason:
// the RFC's names (keyCompromise, affiliationChanged, superseded,
// cessationOfOperation, privilegeWithdrawn, in any case and with or
// without '-', '_' or spaces) and the synonyms compromised, stolen, lost
// (keyCompromise), replaced (superseded), decommissioned and retired
// (cessationOfOperation). Anything else is 0, unspecified.
func CRLReasonCode(reason string) int {
	norm := strings.Map(func(r rune) rune {
		switch r {
		case ' ', '-', '_':
			return -1
		}
		return r
	}, strings.ToLower(strings.TrimSpace(reason)))
	if code, ok := crlReasons[norm]; ok {
		return code
	}
	return crlReasonUnspecified
}

// RefreshCRL signs a new CRL listing every revoked credential and returns
// its DER (the CA also keeps it as its current CRL). Revoke calls it; the
// server must also call it before the current CRL's NextUpdate.
func (r *Registry) RefreshCRL(ctx context.Context) ([]byte, error) {
	r.crl.Lock()
	defer r.crl.Unlock()
	creds, err := r.st.RevokedCredentials(ctx)
	if err != nil {
		return nil, fmt.Errorf("refresh CRL: %w", err)
	}
	entries := make([]x509.RevocationListEntry, 0, len(creds))
	for _, c := range creds {
		serial, ok := new(big.Int).SetString(c.Serial, 16)
		if !ok || serial.Sign() <= 0 {
			// Leaving it out would silently un-revoke a certificate.
			return nil, fmt.Errorf("refresh CRL: stored serial %q of %s:%s is not a positive hex number; fix the record before the CRL can be signed",
				c.Serial, c.SubjectKind, c.SubjectID)
		}
		entries = append(entries, x509.RevocationListEntry{
			SerialNumber:   serial,
			RevocationTime: c.RevokedAt,
			ReasonCode:     CRLReasonCode(c.RevocationReason),
		})
	}
	der, err := r.ca.SignCRL(entries)
	if err != nil {
		return nil, fmt.Errorf("refresh CRL: %w", err)
	}
	r.log.DebugContext(ctx, "CRL signed", "entries", len(entries))
	return der, nil
}
