package onboard

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/apierror"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// PathClaims is the app-facing endpoint that mints claim tokens.
const PathClaims = "/v1/claims"

// TokenAuthenticator checks an API token (apitoken.Service implements it).
type TokenAuthenticator interface {
	Authenticate(ctx context.Context, token string) (store.APIToken, error)
}

// HTTPOptions configures the HTTP handler.
type HTTPOptions struct {
	// Tokens authenticates POST /v1/claims; nil turns the endpoint off.
	Tokens TokenAuthenticator
	// TokenHeader extracts the bearer token (apitoken.FromRequest).
	TokenHeader func(*http.Request) string
}

// Handler serves EST (/.well-known/est/...) and POST /v1/claims. Mount it
// on the HTTPS listener that asks for (but does not require) client
// certificates.
func (s *Service) Handler(o HTTPOptions) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+enrollproto.PathCACerts, s.serveCACerts)
	mux.HandleFunc("POST "+enrollproto.PathSimpleEnroll, s.serveEnroll)
	mux.HandleFunc("POST "+enrollproto.PathSimpleReenroll, s.serveReenroll)
	mux.HandleFunc("POST "+PathClaims, func(w http.ResponseWriter, r *http.Request) { s.serveClaims(w, r, o) })
	return mux
}

// refuse answers every refusal alike: the requester never learns which
// check failed (the reason is in the log and the audit record).
func refuse(w http.ResponseWriter) {
	http.Error(w, "request refused", http.StatusForbidden)
}

func internalError(w http.ResponseWriter) {
	http.Error(w, "internal error; try again later", http.StatusInternalServerError)
}

func (s *Service) serveCACerts(w http.ResponseWriter, r *http.Request) {
	body, err := enrollproto.EncodeCertsOnly(s.CACerts())
	if err != nil {
		s.log.Error("EST cacerts: encode", "error", err)
		internalError(w)
		return
	}
	writeCerts(w, body)
}

func writeCerts(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", enrollproto.ContentTypeCertsOnly)
	w.Header().Set("Content-Transfer-Encoding", "base64")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
}

// readCSR reads and decodes an EST request body; ok is false after it has
// answered a malformed request.
func readCSR(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != enrollproto.ContentTypePKCS10 {
			http.Error(w, "Content-Type must be "+enrollproto.ContentTypePKCS10, http.StatusUnsupportedMediaType)
			return nil, false
		}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, enrollproto.MaxBody+1))
	if err != nil {
		http.Error(w, "cannot read the request body", http.StatusBadRequest)
		return nil, false
	}
	if len(body) > enrollproto.MaxBody {
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		return nil, false
	}
	der, err := enrollproto.DecodeCSRBody(body)
	if err != nil {
		http.Error(w, "the body is not a base64 PKCS#10 request (RFC 7030)", http.StatusBadRequest)
		return nil, false
	}
	return der, true
}

func (s *Service) serveEnroll(w http.ResponseWriter, r *http.Request) {
	der, ok := readCSR(w, r)
	if !ok {
		return
	}
	req := Request{CSR: der, Via: "est", Remote: r.RemoteAddr, ClaimToken: r.Header.Get(enrollproto.HeaderClaimToken)}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		req.ClaimLeaf = r.TLS.PeerCertificates[0]
	} else if h := r.Header.Get(enrollproto.HeaderProof); h != "" {
		p, err := enrollproto.DecodeProofHeader(h)
		if err != nil {
			s.enrolled(r.Context(), req, store.EnrollSecret, csrName(der), &claimError{"bad-proof-header", err})
			refuse(w)
			return
		}
		req.Proof = p
	}
	_, cert, err := s.Enroll(r.Context(), req)
	if err != nil {
		if reasonOf(err) == "error" {
			internalError(w)
			return
		}
		refuse(w)
		return
	}
	s.writeIssued(w, cert)
}

func (s *Service) writeIssued(w http.ResponseWriter, leaf *x509.Certificate) {
	certs, err := enrollproto.EncodeCertsOnly(append([]*x509.Certificate{leaf}, s.Chain()...))
	if err != nil {
		s.log.Error("EST: encode the issued certificate", "error", err)
		internalError(w)
		return
	}
	writeCerts(w, certs)
}

func (s *Service) serveReenroll(w http.ResponseWriter, r *http.Request) {
	der, ok := readCSR(w, r)
	if !ok {
		return
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		s.renewals.WithLabelValues("est", "no-client-certificate").Inc()
		refuse(w)
		return
	}
	p, err := s.reg.Authenticate(r.Context(), r.TLS.PeerCertificates[0])
	if err != nil || p.Kind != identity.KindDevice {
		reason := reasonOf(err)
		if err == nil {
			reason = "not-a-device"
		}
		s.renewals.WithLabelValues("est", reason).Inc()
		s.log.Warn("EST re-enrollment refused", "reason", reason, "remote", r.RemoteAddr)
		refuse(w)
		return
	}
	cert, err := s.Renew(r.Context(), p.ID, der, "est", r.RemoteAddr)
	if err != nil {
		if reasonOf(err) == "error" {
			internalError(w)
			return
		}
		refuse(w)
		return
	}
	s.writeIssued(w, cert)
}

// reasonOf is the stable reason of a refusal, "error" for failures.
func reasonOf(err error) string {
	if err == nil {
		return ""
	}
	var ce *claimError
	if errors.As(err, &ce) {
		return ce.reason
	}
	return registry.EnrollReason(err)
}

// ClaimResponse is the answer of POST /v1/claims.
type ClaimResponse struct {
	Token     string    `json:"token"`
	ClaimID   string    `json:"claim_id"`
	User      string    `json:"user"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *Service) serveClaims(w http.ResponseWriter, r *http.Request, o HTTPOptions) {
	// Errors here answer as the rest of the API (/v1/...) does: JSON with
	// a stable code (docs/openapi.yaml).
	w.Header().Set("Cache-Control", "no-store")
	if o.Tokens == nil || o.TokenHeader == nil || s.claimKey == nil {
		apierror.Write(w, http.StatusNotFound, apierror.CodeNotFound, "app claiming is not enabled on this server")
		return
	}
	tok, err := o.Tokens.Authenticate(r.Context(), o.TokenHeader(r))
	if err != nil {
		apierror.WriteUnauthorized(w)
		return
	}
	if tok.Role == "viewer" {
		apierror.Write(w, http.StatusForbidden, apierror.CodeForbidden, "this token's role (viewer) may not mint claim tokens")
		return
	}
	var in struct {
		TTLSeconds int `json:"ttl_seconds"`
	}
	if r.ContentLength != 0 {
		dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil && !errors.Is(err, io.EOF) {
			apierror.Write(w, http.StatusBadRequest, apierror.CodeInvalid, `body must be JSON: {"ttl_seconds": N} (optional, at most 600)`)
			return
		}
	}
	ttl := time.Duration(in.TTLSeconds) * time.Second
	if in.TTLSeconds < 0 || ttl > DefaultClaimTTL {
		apierror.Write(w, http.StatusBadRequest, apierror.CodeInvalid, "ttl_seconds must be between 1 and 600")
		return
	}
	token, c, err := s.MintClaim(r.Context(), tok.User, "token:"+tok.ID, ttl)
	if err != nil {
		s.log.Error("mint claim token", "error", err)
		apierror.Write(w, http.StatusInternalServerError, apierror.CodeInternal, "internal error; the server log has the details")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(ClaimResponse{Token: token, ClaimID: c.ID, User: c.User, ExpiresAt: c.Expiry.UTC()})
}
