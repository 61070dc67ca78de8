package admin

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/warden-iot/warden/internal/rotation"
	"github.com/warden-iot/warden/internal/store"
)

// CA is every issuing-CA action the CLI offers (`warden ca ...`).
type CA interface {
	// RotateCA starts a rotation to a new issuing CA; the old one stays
	// trusted for grace or until every device has switched.
	RotateCA(ctx context.Context, grace time.Duration) (store.Rotation, error)
	CAStatus(ctx context.Context) (rotation.Status, error)
	RetireIssuer(ctx context.Context, fingerprint string) (IssuerChange, error)
	RevokeIssuer(ctx context.Context, fingerprint, reason string) (IssuerChange, error)
}

// IssuerChange is the result of retiring or revoking an issuing CA.
type IssuerChange struct {
	ConnectionsCut int             `json:"connections_cut"`
	Status         rotation.Status `json:"status"`
}

// errNoRotation is returned by a Local without a rotation manager.
var errNoRotation = errors.New("CA rotation is not available here")

func (l Local) rotation() (*rotation.Manager, error) {
	if l.Rotation == nil {
		return nil, errNoRotation
	}
	return l.Rotation, nil
}

// RotateCA implements CA. Without a running server the certificates are
// re-issued before it returns (Progress sees how far it got) and the
// server delivers them when it starts.
func (l Local) RotateCA(ctx context.Context, grace time.Duration) (store.Rotation, error) {
	m, err := l.rotation()
	if err != nil {
		return store.Rotation{}, err
	}
	return m.Start(ctx, grace, actor, l.Progress)
}

// CAStatus implements CA.
func (l Local) CAStatus(ctx context.Context) (rotation.Status, error) {
	m, err := l.rotation()
	if err != nil {
		return rotation.Status{}, err
	}
	return m.Status(ctx)
}

// RetireIssuer implements CA.
func (l Local) RetireIssuer(ctx context.Context, fingerprint string) (IssuerChange, error) {
	return l.issuerChange(ctx, func(m *rotation.Manager) (int, error) { return m.RetireIssuer(ctx, fingerprint, actor) })
}

// RevokeIssuer implements CA.
func (l Local) RevokeIssuer(ctx context.Context, fingerprint, reason string) (IssuerChange, error) {
	return l.issuerChange(ctx, func(m *rotation.Manager) (int, error) { return m.RevokeIssuer(ctx, fingerprint, reason, actor) })
}

func (l Local) issuerChange(ctx context.Context, op func(*rotation.Manager) (int, error)) (IssuerChange, error) {
	m, err := l.rotation()
	if err != nil {
		return IssuerChange{}, err
	}
	cut, err := op(m)
	if err != nil {
		return IssuerChange{}, err
	}
	st, err := m.Status(ctx)
	return IssuerChange{ConnectionsCut: cut, Status: st}, err
}

type rotateRequest struct {
	GraceSeconds int64 `json:"grace_seconds"`
}

type revokeIssuerRequest struct {
	Reason string `json:"reason,omitempty"`
}

func (h *handler) caRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/ca/rotate", func(w http.ResponseWriter, r *http.Request) {
		var req rotateRequest
		if err := decode(r, &req); err != nil {
			h.fail(w, err)
			return
		}
		rot, err := h.svc.RotateCA(r.Context(), time.Duration(req.GraceSeconds)*time.Second)
		h.reply(w, rot, err)
	})
	mux.HandleFunc("GET /v1/ca", func(w http.ResponseWriter, r *http.Request) {
		st, err := h.svc.CAStatus(r.Context())
		h.reply(w, st, err)
	})
	mux.HandleFunc("POST /v1/ca/issuers/{fp}/retire", func(w http.ResponseWriter, r *http.Request) {
		res, err := h.svc.RetireIssuer(r.Context(), r.PathValue("fp"))
		h.reply(w, res, err)
	})
	mux.HandleFunc("POST /v1/ca/issuers/{fp}/revoke", func(w http.ResponseWriter, r *http.Request) {
		var req revokeIssuerRequest
		if err := decode(r, &req); err != nil {
			h.fail(w, err)
			return
		}
		res, err := h.svc.RevokeIssuer(r.Context(), r.PathValue("fp"), req.Reason)
		h.reply(w, res, err)
	})
}

// RotateCA implements CA.
func (c *Client) RotateCA(ctx context.Context, grace time.Duration) (store.Rotation, error) {
	var out store.Rotation
	err := c.do(ctx, http.MethodPost, "/v1/ca/rotate", rotateRequest{GraceSeconds: int64(grace / time.Second)}, &out)
	return out, err
}

// CAStatus implements CA.
func (c *Client) CAStatus(ctx context.Context) (rotation.Status, error) {
	var out rotation.Status
	err := c.do(ctx, http.MethodGet, "/v1/ca", nil, &out)
	return out, err
}

// RetireIssuer implements CA.
func (c *Client) RetireIssuer(ctx context.Context, fingerprint string) (IssuerChange, error) {
	var out IssuerChange
	err := c.do(ctx, http.MethodPost, "/v1/ca/issuers/"+url.PathEscape(fingerprint)+"/retire", nil, &out)
	return out, err
}

// RevokeIssuer implements CA.
func (c *Client) RevokeIssuer(ctx context.Context, fingerprint, reason string) (IssuerChange, error) {
	var out IssuerChange
	err := c.do(ctx, http.MethodPost, "/v1/ca/issuers/"+url.PathEscape(fingerprint)+"/revoke", revokeIssuerRequest{Reason: reason}, &out)
	return out, err
}
