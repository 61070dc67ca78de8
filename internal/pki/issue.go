package pki

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/warden-iot/warden/internal/identity"
)

// Lifetimes and clock-skew allowance of the certificate profiles.
const (
	rootLifetime          = 20 * 365 * 24 * time.Hour
	issuingLifetime       = 10 * 365 * 24 * time.Hour
	serverLifetime        = 397 * 24 * time.Hour
	DefaultClientLifetime = 10 * 365 * 24 * time.Hour
	// backdate covers devices whose clocks run a few minutes behind.
	backdate = 5 * time.Minute
)

// randomSuffix gives CA names a distinguishing tag, so that two Warden
// installations' CAs are told apart in certificate viewers and logs.
func randomSuffix() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("read random bytes: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// subjectKeyID is RFC 7093 method 1: the leftmost 160 bits of the SHA-256 of
// the subjectPublicKey bits (the uncompressed point for ECDSA).
func subjectKeyID(pub *ecdsa.PublicKey) ([]byte, error) {
	point, err := pub.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	sum := sha256.Sum256(point)
	return sum[:20], nil
}

func (a *Authority) createRoot(key *ecdsa.PrivateKey) (*x509.Certificate, error) {
	suffix, err := randomSuffix()
	if err != nil {
		return nil, fmt.Errorf("create root CA: %w", err)
	}
	ski, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("create root CA: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("create root CA: %w", err)
	}
	now := a.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Warden Root CA " + suffix, Organization: []string{a.org}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(rootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
		SubjectKeyId:          ski,
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
	}
	return signCert(tmpl, tmpl, &key.PublicKey, key, "root CA")
}

func (a *Authority) createIssuing(key *ecdsa.PrivateKey, root *x509.Certificate, rootKey *ecdsa.PrivateKey) (*x509.Certificate, error) {
	suffix, err := randomSuffix()
	if err != nil {
		return nil, fmt.Errorf("create issuing CA: %w", err)
	}
	ski, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("create issuing CA: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("create issuing CA: %w", err)
	}
	now := a.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Warden Issuing CA " + suffix, Organization: []string{a.org}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              capTime(now.Add(issuingLifetime), root.NotAfter),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
	}
	return signCert(tmpl, root, &key.PublicKey, rootKey, "issuing CA")
}

// signer is an issuing CA with its key.
type signer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func capTime(t, limit time.Time) time.Time {
	if t.After(limit) {
		return limit
	}
	return t
}

func signCert(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey, what string) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("sign %s certificate: %w", what, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new %s certificate: %w", what, err)
	}
	return cert, nil
}

// IssueDevice signs a client certificate for device id from csr with the
// current issuing CA (also when re-issuing from a stored CSR after a
// rotation). The CSR must be validly self-signed by a P-256 key and name id
// as its common name; nothing else in it is used. lifetime 0 means
// DefaultClientLifetime; the certificate never outlives the issuing CA.
func (a *Authority) IssueDevice(csr *x509.CertificateRequest, id string, lifetime time.Duration) (*x509.Certificate, error) {
	if err := identity.ValidateDeviceID(id); err != nil {
		return nil, fmt.Errorf("issue device certificate: %w", err)
	}
	cert, err := a.issueClient(csr, identity.KindDevice, id, "device ID", lifetime)
	if err != nil {
		return nil, fmt.Errorf("issue device certificate for %q: %w", id, err)
	}
	return cert, nil
}

// IssueService is IssueDevice for a service (an application that reads
// fleet data or sends commands) named name.
func (a *Authority) IssueService(csr *x509.CertificateRequest, name string, lifetime time.Duration) (*x509.Certificate, error) {
	if err := identity.ValidateServiceName(name); err != nil {
		return nil, fmt.Errorf("issue service certificate: %w", err)
	}
	cert, err := a.issueClient(csr, identity.KindService, name, "service name", lifetime)
	if err != nil {
		return nil, fmt.Errorf("issue service certificate for %q: %w", name, err)
	}
	return cert, nil
}

func (a *Authority) issueClient(csr *x509.CertificateRequest, kind identity.Kind, id, idWord string, lifetime time.Duration) (*x509.Certificate, error) {
	if err := checkCSR(csr); err != nil {
		return nil, err
	}
	if csr.Subject.CommonName != id {
		return nil, fmt.Errorf("CSR common name %q does not match %s %q", csr.Subject.CommonName, idWord, id)
	}
	if lifetime < 0 {
		return nil, fmt.Errorf("lifetime %s is negative", lifetime)
	}
	if lifetime == 0 {
		lifetime = DefaultClientLifetime
	}
	a.mu.RLock()
	iss, crlURL := a.current(), a.crlURL
	a.mu.RUnlock()
	now := a.now()
	notBefore, notAfter, err := validity(iss.cert, now, lifetime)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: id},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{identity.URI(kind, id)},
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
	}
	if crlURL != "" {
		tmpl.CRLDistributionPoints = []string{crlURL}
	}
	pub := csr.PublicKey.(*ecdsa.PublicKey) // checkCSR made sure
	return signCert(tmpl, iss.cert, pub, iss.key, string(kind))
}

// validity returns NotBefore and NotAfter for a certificate issued now by
// issuer, capped at the issuer's expiry.
func validity(issuer *x509.Certificate, now time.Time, lifetime time.Duration) (time.Time, time.Time, error) {
	notAfter := capTime(now.Add(lifetime), issuer.NotAfter)
	if !notAfter.After(now) {
		return time.Time{}, time.Time{}, fmt.Errorf("the issuing CA expired at %s; rotate it before issuing", issuer.NotAfter.UTC().Format(time.RFC3339))
	}
	return now.Add(-backdate), notAfter, nil
}

// serverNameSet is the normalised subject and SANs of a server certificate.
type serverNameSet struct {
	commonName string
	dns        []string
	ips        []net.IP
	extra      []string // the caller's names, normalised, for error messages
}

// serverNames validates extra hostnames and adds the ones always present.
func serverNames(hostnames []string) (serverNameSet, error) {
	set := serverNameSet{
		dns: []string{"localhost"},
		ips: []net.IP{net.IPv4(127, 0, 0, 1).To4(), net.IPv6loopback},
	}
	seen := map[string]bool{"localhost": true, "127.0.0.1": true, "::1": true}
	for _, h := range hostnames {
		name, ip, err := normaliseHostname(h)
		if err != nil {
			return serverNameSet{}, err
		}
		if set.commonName == "" {
			set.commonName = name
		}
		set.extra = append(set.extra, name)
		if seen[name] {
			continue
		}
		seen[name] = true
		if ip.IsValid() {
			set.ips = append(set.ips, net.IP(ip.AsSlice()))
		} else {
			set.dns = append(set.dns, name)
		}
	}
	if set.commonName == "" {
		set.commonName = "localhost"
	}
	return set, nil
}

// normaliseHostname accepts an IP literal or a DNS name of letters, digits
// and hyphens, and returns it in canonical form (lowercase, unmapped IPv4).
func normaliseHostname(h string) (string, netip.Addr, error) {
	if ip, err := netip.ParseAddr(h); err == nil {
		if ip.Zone() != "" {
			return "", netip.Addr{}, fmt.Errorf("server hostname %q: an IP address with a zone cannot go in a certificate", h)
		}
		ip = ip.Unmap()
		return ip.String(), ip, nil
	}
	name := strings.ToLower(h)
	if len(name) == 0 || len(name) > 253 {
		return "", netip.Addr{}, fmt.Errorf("server hostname %q must be 1-253 characters", h)
	}
	for _, label := range strings.Split(name, ".") {
		if !validLabel(label) {
			return "", netip.Addr{}, fmt.Errorf("server hostname %q is neither an IP address nor a DNS name (labels of 1-63 letters, digits and inner hyphens, separated by dots)", h)
		}
	}
	return name, netip.Addr{}, nil
}

func validLabel(label string) bool {
	if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
		return false
	}
	for i := 0; i < len(label); i++ {
		c := label[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// extraNames recovers the operator's hostnames from a server certificate,
// so it can be re-issued for the same names.
func extraNames(cert *x509.Certificate) []string {
	var names []string
	if cert.Subject.CommonName != "" && cert.Subject.CommonName != "localhost" {
		names = append(names, cert.Subject.CommonName)
	}
	for _, d := range cert.DNSNames {
		if d != "localhost" {
			names = append(names, d)
		}
	}
	for _, ip := range cert.IPAddresses {
		if !ip.Equal(net.IPv4(127, 0, 0, 1)) && !ip.Equal(net.IPv6loopback) {
			names = append(names, ip.String())
		}
	}
	return names
}

// newServerCertificate issues a server certificate with subject O org under
// a fresh key, signed by iss, and returns it ready for TLS, as a PEM chain,
// and with its key sealed.
func (a *Authority) newServerCertificate(org string, iss signer, names serverNameSet) (tls.Certificate, []byte, []byte, error) {
	key, err := GenerateKey()
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("server certificate: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("server certificate: %w", err)
	}
	notBefore, notAfter, err := validity(iss.cert, a.now(), serverLifetime)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("server certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: names.commonName, Organization: []string{org}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              names.dns,
		IPAddresses:           names.ips,
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
	}
	leaf, err := signCert(tmpl, iss.cert, &key.PublicKey, iss.key, "server")
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	sealed, err := sealKey(a.ks, recordServerKey, key)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("server certificate: %w", err)
	}
	chainPEM := append(certPEM(leaf), certPEM(iss.cert)...)
	cert := tls.Certificate{
		Certificate: [][]byte{leaf.Raw, iss.cert.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}
	return cert, chainPEM, sealed, nil
}

// RenewServerCertificate issues a new server certificate under a new key for
// hostnames (which replace the previous extra names; localhost, 127.0.0.1
// and ::1 are always included), stores it, and serves it from then on.
// Connections already established keep the old one. Like SignCRL it fails
// with ErrChangedOnDisk if another process changed the issuing CAs.
func (a *Authority) RenewServerCertificate(hostnames []string) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	if _, err := a.checkCurrent(); err != nil {
		return fmt.Errorf("renew server certificate: %w", err)
	}
	cert, err := a.writeServer(a.org, a.current(), hostnames)
	if err != nil {
		return fmt.Errorf("renew server certificate: %w", err)
	}
	a.mu.Lock()
	a.server = cert
	a.generation++
	a.mu.Unlock()
	return nil
}

// writeServer issues a server certificate under iss for hostnames and
// stores it. It writes the key before the certificate; Load repairs the
// mismatch a crash between the two would leave.
func (a *Authority) writeServer(org string, iss signer, hostnames []string) (tls.Certificate, error) {
	names, err := serverNames(hostnames)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, chainPEM, sealed, err := a.newServerCertificate(org, iss, names)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := writeFileAtomic(filepath.Join(a.dir, fileServerKey), sealed, filePermSecret); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeFileAtomic(filepath.Join(a.dir, fileServer), chainPEM, filePermPublic); err != nil {
		return tls.Certificate{}, err
	}
	return cert, nil
}
