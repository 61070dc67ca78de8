package sealing

import (
	"context"
	"errors"
	"fmt"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// Reasons for refusing a plain-listener CONNECT, beside the registry's.
const (
	ReasonNotEnvelopeDevice = "not-envelope-device"
	ReasonBadPassword       = "bad-password"
)

// AuthenticatePassword admits an envelope device on the plain listener
// (broker.PasswordAuthenticator): the username names an active envelope
// device and the password is a fresh CONNECT envelope for it. Refusals are
// *registry.AuthError so the broker logs and counts them like certificate
// refusals; the peer only ever sees "not authorized".
func (s *Sealing) AuthenticatePassword(ctx context.Context, username string, password []byte) (identity.Principal, error) {
	refuse := func(p identity.Principal, reason string, err error) (identity.Principal, error) {
		return identity.Principal{}, &registry.AuthError{Reason: reason, Principal: p, Err: err}
	}
	if err := identity.ValidateDeviceID(username); err != nil {
		return refuse(identity.Principal{}, registry.ReasonUnknownDevice, err)
	}
	p := identity.Principal{Kind: identity.KindDevice, ID: username}
	info, err := s.dir.Device(ctx, username)
	if errors.Is(err, store.ErrNotFound) {
		return refuse(identity.Principal{}, registry.ReasonUnknownDevice, err)
	}
	if err != nil {
		return identity.Principal{}, fmt.Errorf("device %s: %w", username, err)
	}
	switch info.State {
	case store.StateActive:
	case store.StateDisabled:
		return refuse(p, registry.ReasonDeviceDisabled, nil)
	default:
		return refuse(p, registry.ReasonDeviceRevoked, nil)
	}
	err = s.CheckConnectPassword(ctx, username, password)
	switch {
	case err == nil:
		return p, nil
	case errors.Is(err, ErrNotEnvelopeDevice):
		return refuse(p, ReasonNotEnvelopeDevice, err)
	case errors.Is(err, envelope.ErrOpen):
		return refuse(p, ReasonBadPassword, err)
	}
	return identity.Principal{}, err
}
