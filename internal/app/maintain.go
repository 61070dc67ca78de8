package app

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
)

// Certificates that Warden itself depends on are renewed well before they
// lapse, so a server left running for months stays valid.
const (
	serverCertRenewBefore = 30 * 24 * time.Hour
	crlRefreshBefore      = 3 * 24 * time.Hour // CRLs are valid for pki.CRLValidity (7 days)
	maintainEvery         = time.Hour
)

// ensureServerCertificate re-issues the broker's certificate when it is
// close to expiry or does not cover a configured hostname (an operator
// added --hostname after init).
func ensureServerCertificate(ca *pki.Authority, hostnames []string, now time.Time, log *slog.Logger) error {
	cert, err := ca.ServerCertificate()
	var reason string
	switch {
	case err != nil:
		reason = "unusable: " + err.Error()
	case cert.Leaf == nil:
		reason = "unreadable"
	case cert.Leaf.NotAfter.Sub(now) < serverCertRenewBefore:
		reason = "expires " + cert.Leaf.NotAfter.UTC().Format(time.RFC3339)
	default:
		for _, h := range hostnames {
			if !covers(cert.Leaf, h) {
				reason = "does not cover " + h
				break
			}
		}
	}
	if reason == "" {
		return nil
	}
	if err := ca.RenewServerCertificate(hostnames); err != nil {
		return fmt.Errorf("server certificate %s, and renewing it failed: %w", reason, err)
	}
	log.Info("renewed the server certificate", "reason", reason, "hostnames", hostnames)
	return nil
}

func covers(c *x509.Certificate, host string) bool {
	if ip := net.ParseIP(host); ip != nil {
		for _, a := range c.IPAddresses {
			if a.Equal(ip) {
				return true
			}
		}
		return false
	}
	return c.VerifyHostname(host) == nil
}

// refreshCRLIfDue re-signs the CRL when it is missing, unreadable or close
// to its NextUpdate, so relying parties never see a stale one.
func refreshCRLIfDue(ctx context.Context, ca *pki.Authority, reg *registry.Registry, now time.Time) (bool, error) {
	der, err := ca.CurrentCRL()
	if err == nil {
		// A CRL signed by an issuing CA that is no longer current (after a
		// rotation) is re-signed at once: relying parties that fetch it
		// check it against the current one.
		if crl, perr := x509.ParseRevocationList(der); perr == nil && crl.NextUpdate.Sub(now) > crlRefreshBefore &&
			crl.CheckSignatureFrom(ca.Issuing()) == nil {
			return false, nil
		}
	}
	if _, err := reg.RefreshCRL(ctx); err != nil {
		return false, fmt.Errorf("re-sign the CRL: %w", err)
	}
	return true, nil
}

// maintain runs the periodic checks until ctx ends.
func (s *Server) maintain(ctx context.Context) {
	t := time.NewTicker(maintainEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if done, err := refreshCRLIfDue(ctx, s.Env.CA, s.Env.Registry, now); err != nil {
				s.Env.Log.Error("CRL refresh failed; relying parties will see a stale CRL", "error", err)
			} else if done {
				s.Env.Log.Info("re-signed the CRL")
			}
			// Used claim tokens that expired can no longer be replayed:
			// forget them so the table stays the size of ten minutes.
			if n, err := s.Onboard.PurgeClaims(ctx); err != nil {
				s.Env.Log.Warn("could not purge expired claim-token uses", "error", err)
			} else if n > 0 {
				s.Env.Log.Debug("purged expired claim-token uses", "count", n)
			}
		}
	}
}
