package admin

import (
	"context"
	"errors"
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
