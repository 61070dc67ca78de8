package broker

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync/atomic"
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

// TrustSource is where a listener's trust comes from when it can change
// while the server runs (a CA rotation, a revoked issuing CA, a renewed
// server certificate): *pki.Authority implements it.
type TrustSource interface {
	ClientCAs() *x509.CertPool
	ServerCertificate() (tls.Certificate, error)
	// Generation changes whenever the answers of the two others may have.
	Generation() uint64
}

// FollowTrust makes base pick up the client CAs and server certificate of
// src on every handshake, rebuilding its per-handshake config only when
// src's generation moved, so the cost per handshake is one atomic load.
func FollowTrust(base *tls.Config, src TrustSource) *tls.Config {
	type snapshot struct {
		gen uint64
		cfg *tls.Config
	}
	var cur atomic.Pointer[snapshot]
	build := func(gen uint64) (*tls.Config, error) {
		cert, err := src.ServerCertificate()
		if err != nil {
			return nil, err
		}
		c := base.Clone()
		c.GetConfigForClient = nil
		c.ClientCAs = src.ClientCAs()
		c.Certificates = []tls.Certificate{cert}
		cur.Store(&snapshot{gen: gen, cfg: c})
		return c, nil
	}
	out := base.Clone()
	out.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		gen := src.Generation()
		if s := cur.Load(); s != nil && s.gen == gen {
			return s.cfg, nil
		}
		return build(gen)
	}
	return out
}
