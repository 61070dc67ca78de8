package rotation

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// Issuer is one issuing CA as `warden ca status` shows it.
type Issuer struct {
	Fingerprint string    `json:"fingerprint"`
	Subject     string    `json:"subject"`
	State       string    `json:"state"` // current, grace, retired or revoked
	Created     time.Time `json:"created"`
	NotAfter    time.Time `json:"not_after"`
	GraceUntil  time.Time `json:"grace_until,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	RevokedAt   time.Time `json:"revoked_at,omitzero"`
	Reason      string    `json:"reason,omitempty"`
}

// Status is the state of the issuing CAs and of the latest rotation.
type Status struct {
	Issuers []Issuer `json:"issuers"`
	// Rotation is the running rotation, or the latest finished one; nil if
	// this CA never rotated.
	Rotation *store.Rotation `json:"rotation,omitempty"`
	// Devices counts the rotation's devices per state (pending, issued,
	// delivered, switched, failed) and Total all of them.
	Devices map[string]int `json:"devices,omitempty"`
	Total   int            `json:"total"`
	// Waiting lists up to 20 devices that have not switched yet, for the
	// operator to look at.
	Waiting []store.RotationDevice `json:"waiting,omitempty"`
	// Failed lists up to 20 devices whose certificate could not be
	// re-issued, with the reason.
	Failed []store.RotationDevice `json:"failed,omitempty"`
}

// Switched is how many devices have switched to the new issuing CA.
func (s Status) Switched() int { return s.Devices[store.RotationDeviceSwitched] }

// WaitingCount is how many devices have neither switched nor failed.
func (s Status) WaitingCount() int {
	return s.Devices[store.RotationDevicePending] + s.Devices[store.RotationDeviceIssued] + s.Devices[store.RotationDeviceDelivered]
}

// Status reports the issuing CAs and the running or latest rotation.
func (m *Manager) Status(ctx context.Context) (Status, error) {
	st := Status{Issuers: issuers(m.o.CA)}
	r, err := m.o.Store.RunningRotation(ctx)
	if errors.Is(err, store.ErrNotFound) {
		all, lerr := m.o.Store.ListRotations(ctx)
		if lerr != nil {
			return Status{}, lerr
		}
		if len(all) == 0 {
			return st, nil
		}
		r, err = all[0], nil
	}
	if err != nil {
		return Status{}, err
	}
	st.Rotation = &r
	if st.Devices, err = m.o.Store.RotationCounts(ctx, r.ID); err != nil {
		return Status{}, err
	}
	for _, n := range st.Devices {
		st.Total += n
	}
	for _, state := range []string{store.RotationDevicePending, store.RotationDeviceIssued, store.RotationDeviceDelivered} {
		if len(st.Waiting) >= 20 {
			break
		}
		page, err := m.o.Store.RotationDevices(ctx, r.ID, state, "", 20-len(st.Waiting))
		if err != nil {
			return Status{}, err
		}
		st.Waiting = append(st.Waiting, page...)
	}
	if st.Failed, err = m.o.Store.RotationDevices(ctx, r.ID, store.RotationDeviceFailed, "", 20); err != nil {
		return Status{}, err
	}
	return st, nil
}

func issuers(ca CA) []Issuer {
	infos := ca.Issuers()
	out := make([]Issuer, len(infos))
	for i, is := range infos {
		out[i] = Issuer{
			Fingerprint: is.Fingerprint, Subject: is.Certificate.Subject.CommonName, State: is.State,
			Created: is.Created, NotAfter: is.Certificate.NotAfter.UTC(), GraceUntil: is.GraceUntil,
			RetiredAt: is.RetiredAt, RevokedAt: is.RevokedAt, Reason: is.Reason,
		}
	}
	return out
}

// find returns the issuing CA named by fingerprint (any form Fingerprint
// or OpenSSL prints, or an unambiguous prefix of at least 8 hex digits).
func (m *Manager) find(fingerprint string) (pki.IssuerInfo, error) {
	fp := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(fingerprint), ":", ""))
	if i := strings.LastIndexByte(fp, '='); i >= 0 {
		fp = fp[i+1:]
	}
	if len(fp) < 8 {
		return pki.IssuerInfo{}, fmt.Errorf("issuing CA %q: give at least 8 hex digits of its fingerprint (`warden ca status` lists them): %w", fingerprint, pki.ErrUnknownIssuer)
	}
	var found []pki.IssuerInfo
	for _, is := range m.o.CA.Issuers() {
		if strings.HasPrefix(is.Fingerprint, fp) {
			found = append(found, is)
		}
	}
	switch len(found) {
	case 0:
		return pki.IssuerInfo{}, fmt.Errorf("issuing CA %q: %w (`warden ca status` lists them)", fingerprint, pki.ErrUnknownIssuer)
	case 1:
		return found[0], nil
	}
	return pki.IssuerInfo{}, fmt.Errorf("issuing CA %q: the prefix matches %d issuing CAs; give more digits: %w", fingerprint, len(found), pki.ErrUnknownIssuer)
}

// RetireIssuer stops trusting an issuing CA in its grace period now,
// before its grace ends, and cuts the connections still made with its
// certificates. A running rotation away from it completes. It returns how
// many connections were cut.
func (m *Manager) RetireIssuer(ctx context.Context, fingerprint, actor string) (int, error) {
	m.opMu.Lock()
	is, err := m.find(fingerprint)
	switch {
	case err != nil:
	case is.State == pki.IssuerCurrent:
		err = fmt.Errorf("issuing CA %s is the current one, which signs every certificate; `warden ca rotate` replaces it: %w", short(is.Fingerprint), registry.ErrInvalid)
	case is.State == pki.IssuerRevoked:
		err = fmt.Errorf("issuing CA %s is revoked already, which is final: %w", short(is.Fingerprint), registry.ErrInvalid)
	default:
		err = m.withReload(func() error { return m.o.CA.RetireIssuer(is.Fingerprint) })
	}
	m.opMu.Unlock()
	if err != nil {
		return 0, err
	}
	cut := m.cutUntrusted("issuer-retired")
	m.o.Audit.Record(ctx, audit.Event{Action: "ca.retire-issuer", Outcome: "done", Actor: actor, Subject: "issuer:" + is.Fingerprint,
		Details: map[string]string{"connections_cut": fmt.Sprint(cut)}})
	m.log.InfoContext(ctx, "issuing CA retired", "issuer", short(is.Fingerprint), "connections_cut", cut)
	m.wake()
	return cut, nil
}

// RevokeIssuer stops trusting an issuing CA at once and for good (its key
// leaked, say) and cuts every connection made with a certificate it
// signed: those devices must enroll again. A running rotation away from
// it completes. It returns how many connections were cut.
func (m *Manager) RevokeIssuer(ctx context.Context, fingerprint, reason, actor string) (int, error) {
	m.opMu.Lock()
	is, err := m.find(fingerprint)
	switch {
	case err != nil:
	case is.State == pki.IssuerCurrent:
		err = fmt.Errorf("issuing CA %s is the current one, which signs every certificate; rotate first (`warden ca rotate`), then revoke it: %w", short(is.Fingerprint), registry.ErrInvalid)
	default:
		err = m.withReload(func() error { return m.o.CA.RevokeIssuer(is.Fingerprint, reason) })
	}
	m.opMu.Unlock()
	if err != nil {
		return 0, err
	}
	cut := m.cutUntrusted("issuer-revoked")
	m.o.Audit.Record(ctx, audit.Event{Action: "ca.revoke-issuer", Outcome: "done", Actor: actor, Subject: "issuer:" + is.Fingerprint,
		Reason: reason, Details: map[string]string{"connections_cut": fmt.Sprint(cut)}})
	m.log.WarnContext(ctx, "issuing CA revoked; its devices were disconnected", "issuer", short(is.Fingerprint), "connections_cut", cut, "reason", reason)
	m.wake()
	return cut, nil
}
