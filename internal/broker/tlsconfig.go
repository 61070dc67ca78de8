package broker

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
)

// TLS profiles. Both require and verify a client certificate; neither ever
// allows anything below TLS 1.2, CBC suites, RSA key exchange or
// renegotiation.
const (
	ProfileStrict = "strict" // TLS 1.3 only (default)
	ProfileCompat = "compat" // TLS 1.2 (ECDHE + AEAD suites only) and 1.3, for clients such as Tasmota
)

// compatSuites are the only TLS 1.2 suites a compat listener accepts: forward
// secret ECDHE with an AEAD. The server key is ECDSA P-256, so the RSA
// variants could never be negotiated anyway; listing them would only confuse
// scanners' reports.
var compatSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
}

// ServerTLSConfig builds the server side of a listener's TLS.
// hybridPQ offers X25519MLKEM768 first (protects recorded traffic against a
// future quantum computer at ~30% more handshake CPU); false keeps the
// classic groups only.
func ServerTLSConfig(cert tls.Certificate, clientCAs *x509.CertPool, profile string, hybridPQ bool) (*tls.Config, error) {
	if clientCAs == nil {
		return nil, fmt.Errorf("tls: no client CA pool: the broker cannot verify devices")
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		CurvePreferences: []tls.CurveID{
			tls.X25519, tls.CurveP256,
		},
		Renegotiation: tls.RenegotiateNever,
	}
	if hybridPQ {
		cfg.CurvePreferences = append([]tls.CurveID{tls.X25519MLKEM768}, cfg.CurvePreferences...)
	}
	switch profile {
	case ProfileStrict, "":
	case ProfileCompat:
		cfg.MinVersion = tls.VersionTLS12
		cfg.CipherSuites = compatSuites
	default:
		return nil, fmt.Errorf("tls: unknown profile %q (use %q or %q)", profile, ProfileStrict, ProfileCompat)
	}
	return cfg, nil
}
