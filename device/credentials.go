package device

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/warden-iot/warden/internal/identity"
)

// LoadCredentials reads a device's certificate, private key and the Warden
// root to pin.
//
// certFile holds the device certificate in PEM, optionally followed by the
// intermediate certificates of its chain (a single DER certificate is also
// accepted). keyFile holds the private key as PKCS#8 PEM, SEC1 PEM ("EC
// PRIVATE KEY", as openssl ecparam writes it), PKCS#8 DER, or the raw
// 32-byte private scalar that some secure elements and factory tools
// export (read as a P-256 scalar or an Ed25519 seed, whichever the
// certificate's key is). Whatever the format, the public key is recomputed
// from the private key and must equal the certificate's. caFile holds one or
// more PEM certificates: the roots the broker's certificate must chain to.
func LoadCredentials(certFile, keyFile, caFile string) (tls.Certificate, *x509.CertPool, error) {
	certBytes, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("device: read certificate: %w", err)
	}
	chain, err := parseCertificates(certBytes)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("device: certificate file %s: %w", certFile, err)
	}
	leaf := chain[0]

	keyBytes, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("device: read private key: %w", err)
	}
	key, err := parsePrivateKey(keyBytes, leaf.PublicKey)
	clear(keyBytes)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("device: private key file %s: %w", keyFile, err)
	}
	if err := keyMatches(leaf, key); err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("device: private key file %s does not belong to certificate file %s: %w", keyFile, certFile, err)
	}

	caBytes, err := os.ReadFile(caFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("device: read CA file: %w", err)
	}
	roots, err := parseCertificates(caBytes)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("device: CA file %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}

	cert := tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, pool, nil
}

// parseCertificates reads every CERTIFICATE block of a PEM file, or a
// single DER certificate.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, fmt.Errorf("neither PEM nor a DER certificate: %w", err)
		}
		return []*x509.Certificate{c}, nil
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

// parsePrivateKey reads a private key in any of the formats LoadCredentials
// documents. certKey decides how a raw 32-byte key is read. Errors never
// include key material.
func parsePrivateKey(data []byte, certKey crypto.PublicKey) (crypto.Signer, error) {
	if bytes.Contains(data, []byte("-----BEGIN")) {
		for rest := data; ; {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				return nil, errors.New("no PEM PRIVATE KEY or EC PRIVATE KEY block found")
			}
			switch block.Type {
			case "PRIVATE KEY":
				return signer(x509.ParsePKCS8PrivateKey(block.Bytes))
			case "EC PRIVATE KEY":
				return signer(x509.ParseECPrivateKey(block.Bytes))
			case "ENCRYPTED PRIVATE KEY":
				return nil, errors.New("the key is encrypted; store it decrypted (for example `openssl pkcs8 -topk8 -nocrypt`) and protect the file instead")
			}
			// Skip other blocks, such as the EC PARAMETERS that
			// `openssl ecparam -genkey` writes before the key.
		}
	}
	if len(data) == 32 {
		switch pub := certKey.(type) {
		case *ecdsa.PublicKey:
			if pub.Curve != elliptic.P256() {
				return nil, fmt.Errorf("a raw 32-byte key needs a P-256 certificate, not %s", pub.Curve.Params().Name)
			}
			k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), data)
			if err != nil {
				return nil, fmt.Errorf("raw P-256 scalar: %w", err)
			}
			return k, nil
		case ed25519.PublicKey:
			return ed25519.NewKeyFromSeed(data), nil
		default:
			return nil, fmt.Errorf("a raw 32-byte key needs a P-256 or Ed25519 certificate, not %T", certKey)
		}
	}
	if k, err := x509.ParsePKCS8PrivateKey(data); err == nil {
		return signer(k, nil)
	}
	if k, err := x509.ParseECPrivateKey(data); err == nil {
		return k, nil
	}
	return nil, fmt.Errorf("not a PKCS#8 or SEC1 PEM key, a PKCS#8 DER key, or a raw 32-byte scalar (%d bytes)", len(data))
}

func signer(k any, err error) (crypto.Signer, error) {
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %T cannot sign", k)
	}
	return s, nil
}

// keyMatches checks that key is the private half of the certificate's
// public key, so that a mixed-up key file fails here with a clear message
// instead of as an obscure TLS handshake failure.
func keyMatches(leaf *x509.Certificate, key crypto.Signer) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return fmt.Errorf("the key's public key (%T) differs from the certificate's (%T, subject %q)", key.Public(), leaf.PublicKey, leaf.Subject.String())
	}
	return nil
}

// deviceIdentity returns the certificate's leaf and the device ID in its
// urn:warden:device: URI SAN, after checking that the certificate has a
// usable private key that belongs to it.
func deviceIdentity(cert tls.Certificate) (*x509.Certificate, string, error) {
	if len(cert.Certificate) == 0 {
		return nil, "", errors.New("Config.Certificate is empty; load it with LoadCredentials or tls.LoadX509KeyPair")
	}
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, "", fmt.Errorf("Config.Certificate: %w", err)
		}
	}
	key, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, "", fmt.Errorf("Config.Certificate has no usable private key (%T)", cert.PrivateKey)
	}
	if err := keyMatches(leaf, key); err != nil {
		return nil, "", fmt.Errorf("Config.Certificate: %w", err)
	}
	kind, id, err := identity.FromURIs(leaf.URIs)
	if err != nil {
		return nil, "", fmt.Errorf("Config.Certificate: %w", err)
	}
	if kind != identity.KindDevice {
		return nil, "", fmt.Errorf("Config.Certificate names a %s (%q), not a device", kind, id)
	}
	return leaf, id, nil
}
