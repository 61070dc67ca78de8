package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"time"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// Sealer seals secrets at rest under a record name and opens them again
// (*keystore.Keystore implements it). The name is authenticated, so a blob
// sealed under one name does not open under another.
type Sealer interface {
	Seal(name string, plaintext []byte) ([]byte, error)
	Open(name string, sealed []byte) ([]byte, error)
}

// FirstEnvelopeEpoch is the key epoch EnableEnvelope issues. It is 0 because
// the envelope format sends no key ID for epoch 0 (docs/envelope.md, "Key
// ID"): a device that never rekeys pays nothing for rekeying.
const FirstEnvelopeEpoch uint32 = 0

// EnvelopeSecret is one unsealed key epoch of an envelope device. Its
// String, GoString and LogValue leave the secret out, so printing or logging
// one by mistake reveals nothing.
type EnvelopeSecret struct {
	Epoch  uint32
	Suite  string
	Secret []byte // the 16-byte master secret; nil for sign-p256
	State  store.EnvelopeState
}

// String describes the key without its secret.
func (s EnvelopeSecret) String() string {
	return fmt.Sprintf("envelope key epoch %d (%s, %s, secret redacted)", s.Epoch, s.Suite, s.State)
}

// GoString is String, so %#v does not print the secret either.
func (s EnvelopeSecret) GoString() string { return s.String() }

// LogValue logs the key without its secret.
func (s EnvelopeSecret) LogValue() slog.Value {
	return slog.GroupValue(slog.Any("epoch", s.Epoch), slog.String("suite", s.Suite), slog.String("state", string(s.State)))
}

var errNoSealer = errors.New("the registry has no Sealer (Options.Sealer, normally the keystore), so it cannot keep envelope secrets")

// parseSuite validates a suite name. The envelope package owns the list.
func parseSuite(name string) (envelope.Suite, error) {
	s, err := envelope.ParseSuite(name)
	if err != nil {
		return 0, invalid(err)
	}
	return s, nil
}

// storedSuite parses a suite name read back from the store; a failure there
// is corruption (or a store written by a newer Warden), not the caller's
// fault.
func storedSuite(k store.EnvelopeKey) (envelope.Suite, error) {
	s, err := envelope.ParseSuite(k.Suite)
	if err != nil {
		return 0, fmt.Errorf("envelope key epoch %d of device %q names a suite this Warden does not know: %w", k.Epoch, k.DeviceID, err)
	}
	return s, nil
}

// hasSecret reports whether keys of the suite come from a master secret;
// sign-p256 uses the device's own key pair instead.
func hasSecret(s envelope.Suite) bool { return s != envelope.SignP256 }

// envelopeRecord is the keystore record name of a master secret. Naming the
// device and the epoch means a sealed blob moved to another device's row, or
// to another epoch, does not open.
func envelopeRecord(id string, epoch uint32) string {
	return "envelope/" + id + "/" + strconv.FormatUint(uint64(epoch), 10)
}

// newSecret makes and seals the master secret of one epoch. For sign-p256
// both are nil.
func (r *Registry) newSecret(id string, epoch uint32, suite envelope.Suite) (secret, sealed []byte, err error) {
	if !hasSecret(suite) {
		return nil, nil, nil
	}
	// Always fresh randomness: a secret derived from the device ID (as some
	// fielded designs do) is a secret anyone can compute.
	secret, err = envelope.NewMasterSecret()
	if err != nil {
		return nil, nil, err
	}
	sealed, err = r.sealer.Seal(envelopeRecord(id, epoch), secret)
	if err != nil {
		clear(secret)
		return nil, nil, fmt.Errorf("seal envelope secret of device %q epoch %d: %w", id, epoch, err)
	}
	return secret, sealed, nil
}

// openSecret unseals one key's master secret.
func (r *Registry) openSecret(k store.EnvelopeKey) (EnvelopeSecret, error) {
	s := EnvelopeSecret{Epoch: k.Epoch, Suite: k.Suite, State: k.State}
	suite, err := storedSuite(k)
	if err != nil {
		return EnvelopeSecret{}, err
	}
	if !hasSecret(suite) {
		if len(k.SealedSecret) != 0 {
			return EnvelopeSecret{}, fmt.Errorf("envelope key epoch %d of device %q is %s but has a stored secret; the record is corrupt", k.Epoch, k.DeviceID, k.Suite)
		}
		return s, nil
	}
	secret, err := r.sealer.Open(envelopeRecord(k.DeviceID, k.Epoch), k.SealedSecret)
	if err != nil {
		return EnvelopeSecret{}, fmt.Errorf("open envelope secret of device %q epoch %d: %w", k.DeviceID, k.Epoch, err)
	}
	if len(secret) != envelope.MasterSecretSize {
		clear(secret)
		return EnvelopeSecret{}, fmt.Errorf("envelope secret of device %q epoch %d is not %d bytes; the record is corrupt", k.DeviceID, k.Epoch, envelope.MasterSecretSize)
	}
	s.Secret = secret
	return s, nil
}

// envelopeDevice checks, under the lifecycle lock, that id names a device
// that may still get envelope changes.
func (r *Registry) envelopeDevice(ctx context.Context, verb, id string) error {
	if err := identity.ValidateDeviceID(id); err != nil {
		return fmt.Errorf("%s: %w", verb, asInvalid(err))
	}
	d, err := r.st.GetDevice(ctx, id)
	if err != nil {
		return fmt.Errorf("%s: %w", verb, err)
	}
	if d.State == store.StateRevoked {
		return revokedFinal(verb, identity.KindDevice, id)
	}
	return nil
}

// policyOf returns the device's envelope policy; ErrNotFound if it is not an
// envelope device.
func (r *Registry) policyOf(ctx context.Context, id string) (store.EnvelopePolicy, error) {
	p, err := r.st.GetEnvelopePolicy(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return p, fmt.Errorf("device %q is not an envelope device (enable envelopes for it first): %w", id, err)
	}
	return p, err
}

// EnableEnvelope makes a device an envelope device: it generates a fresh
// 16-byte master secret (none for sign-p256), stores it sealed as key epoch
// FirstEnvelopeEpoch, active, with the policy MinSuite = suite, and returns
// the secret so it can be written once into the device's bundle. Warden keeps
// it only sealed. ErrConflict if the device already has envelope keys; a
// revoked device is refused (ErrRevoked).
func (r *Registry) EnableEnvelope(ctx context.Context, id, suite string, required bool) (EnvelopeSecret, error) {
	s, err := parseSuite(suite)
	if err != nil {
		return EnvelopeSecret{}, fmt.Errorf("enable envelope for device %q: %w", id, err)
	}
	if r.sealer == nil {
		return EnvelopeSecret{}, fmt.Errorf("enable envelope for device %q: %w", id, errNoSealer)
	}
	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	if err := r.envelopeDevice(ctx, "enable envelope for", id); err != nil {
		return EnvelopeSecret{}, err
	}
	epoch := FirstEnvelopeEpoch
	secret, sealed, err := r.newSecret(id, epoch, s)
	if err != nil {
		return EnvelopeSecret{}, fmt.Errorf("enable envelope for device %q: %w", id, err)
	}
	now := r.clock()
	k := store.EnvelopeKey{DeviceID: id, Epoch: epoch, Suite: suite, SealedSecret: sealed,
		State: store.EnvelopeActive, CreatedAt: now, ActivatedAt: now}
	p := store.EnvelopePolicy{DeviceID: id, MinSuite: suite, Required: required, UpdatedAt: now}
	if err := r.st.EnableEnvelope(ctx, k, p); err != nil {
		clear(secret)
		if errors.Is(err, store.ErrRevoked) {
			return EnvelopeSecret{}, revokedFinal("enable envelope for", identity.KindDevice, id)
		}
		return EnvelopeSecret{}, fmt.Errorf("enable envelope for device %q: %w", id, err)
	}
	r.emit(ctx, Event{Kind: EventEnvelopeChanged, Principal: devicePrincipal(id), Reason: "enabled", At: now},
		"epoch", epoch, "suite", suite, "required", required)
	return EnvelopeSecret{Epoch: epoch, Suite: suite, Secret: secret, State: store.EnvelopeActive}, nil
}

// EnvelopeSecrets returns the device's usable keys, unsealed, in ascending
// epoch order: the active key and, during a rekey, the pending one. Retired
// keys are left out (their secrets are erased). ErrNotFound if the device is
// not an envelope device; a revoked device has no usable keys.
//
// It does not look at the device's state: whether a disabled device may
// connect is Authenticate's question, not this one's. The relay should
// cache the result and drop the cache on EventEnvelopeChanged.
func (r *Registry) EnvelopeSecrets(ctx context.Context, id string) ([]EnvelopeSecret, error) {
	if err := identity.ValidateDeviceID(id); err != nil {
		return nil, fmt.Errorf("envelope secrets: %w", asInvalid(err))
	}
	if r.sealer == nil {
		return nil, fmt.Errorf("envelope secrets of device %q: %w", id, errNoSealer)
	}
	if _, err := r.policyOf(ctx, id); err != nil {
		return nil, err
	}
	keys, err := r.st.EnvelopeKeys(ctx, id)
	if err != nil {
		return nil, err
	}
	out := []EnvelopeSecret{}
	for _, k := range keys {
		if k.State == store.EnvelopeRetired {
			continue
		}
		s, err := r.openSecret(k)
		if err != nil {
			for _, o := range out {
				clear(o.Secret)
			}
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// EnvelopePolicy returns what Warden accepts from an envelope device.
// ErrNotFound if it is not one.
func (r *Registry) EnvelopePolicy(ctx context.Context, id string) (store.EnvelopePolicy, error) {
	return r.policyOf(ctx, id)
}

// SetEnvelopePolicy changes an envelope device's minimum suite and whether
// its uplinks must be sealed even over TLS. Raising the minimum above the
// suite of the device's active key refuses the device's messages until a
// rekey (BeginRekey issues the new key for the new minimum); the registry
// allows it, since that is what "no downgrade" asks for, and logs a warning.
// ErrNotFound if the device is not an envelope device.
func (r *Registry) SetEnvelopePolicy(ctx context.Context, id, minSuite string, required bool) error {
	minS, err := parseSuite(minSuite)
	if err != nil {
		return fmt.Errorf("set envelope policy of device %q: %w", id, err)
	}
	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	if err := r.envelopeDevice(ctx, "set envelope policy of", id); err != nil {
		return err
	}
	prev, err := r.policyOf(ctx, id)
	if err != nil {
		return fmt.Errorf("set envelope policy: %w", err)
	}
	if prev.MinSuite == minSuite && prev.Required == required {
		return nil
	}
	keys, err := r.st.EnvelopeKeys(ctx, id)
	if err != nil {
		return fmt.Errorf("set envelope policy of device %q: %w", id, err)
	}
	now := r.clock()
	if err := r.st.SetEnvelopePolicy(ctx, store.EnvelopePolicy{DeviceID: id, MinSuite: minSuite, Required: required, UpdatedAt: now}); err != nil {
		if errors.Is(err, store.ErrRevoked) {
			return revokedFinal("set envelope policy of", identity.KindDevice, id)
		}
		return fmt.Errorf("set envelope policy of device %q: %w", id, err)
	}
	for _, k := range keys {
		if k.State != store.EnvelopeActive {
			continue
		}
		if s, err := storedSuite(k); err == nil && !s.AtLeast(minS) {
			r.log.WarnContext(ctx, "envelope minimum suite is above the active key's suite: the device's messages are refused until a rekey",
				"device", id, "epoch", k.Epoch, "key_suite", k.Suite, "min_suite", minSuite)
		}
	}
	r.emit(ctx, Event{Kind: EventEnvelopeChanged, Principal: devicePrincipal(id), Reason: "policy-changed", At: now},
		"min_suite", minSuite, "previous_min_suite", prev.MinSuite, "required", required)
	return nil
}

// BeginRekey issues a pending key for the next epoch (one above the
// highest), for the active key's suite: a rekey never changes the suite
// (the rekey message carries none, and the firmware must support a new
// suite anyway), so a device whose policy now demands a stronger suite than
// its key is refused and must be re-provisioned. The caller sends the returned secret to the device sealed under the active
// epoch; both epochs are accepted until ConfirmRekey.
//
// While a rekey is pending, BeginRekey returns the pending key again instead
// of issuing another, so a rekey message that was lost can be resent; only
// ConfirmRekey ends a rekey. ErrNotFound if the device is not an envelope
// device or has no active key.
func (r *Registry) BeginRekey(ctx context.Context, id string) (EnvelopeSecret, error) {
	if r.sealer == nil {
		return EnvelopeSecret{}, fmt.Errorf("rekey device %q: %w", id, errNoSealer)
	}
	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	if err := r.envelopeDevice(ctx, "rekey", id); err != nil {
		return EnvelopeSecret{}, err
	}
	p, err := r.policyOf(ctx, id)
	if err != nil {
		return EnvelopeSecret{}, fmt.Errorf("rekey: %w", err)
	}
	keys, err := r.st.EnvelopeKeys(ctx, id)
	if err != nil {
		return EnvelopeSecret{}, fmt.Errorf("rekey device %q: %w", id, err)
	}
	var (
		active *store.EnvelopeKey
		last   uint32
	)
	for i, k := range keys {
		last = max(last, k.Epoch)
		switch k.State {
		case store.EnvelopePending:
			s, err := r.openSecret(k)
			if err != nil {
				return EnvelopeSecret{}, fmt.Errorf("rekey: %w", err)
			}
			r.log.InfoContext(ctx, "envelope rekey already pending; returning its key again", "device", id, "epoch", k.Epoch, "suite", k.Suite)
			return s, nil
		case store.EnvelopeActive:
			active = &keys[i]
		}
	}
	if active == nil {
		return EnvelopeSecret{}, fmt.Errorf("rekey device %q: it has no active envelope key to carry a new one (re-provision it): %w", id, store.ErrNotFound)
	}
	if last == math.MaxUint32 {
		return EnvelopeSecret{}, fmt.Errorf("rekey device %q: its key epochs are used up; re-provision it under a new ID", id)
	}
	suite, err := storedSuite(*active)
	if err != nil {
		return EnvelopeSecret{}, fmt.Errorf("rekey: %w", err)
	}
	minS, err := envelope.ParseSuite(p.MinSuite)
	if err != nil {
		return EnvelopeSecret{}, fmt.Errorf("rekey device %q: its policy names a suite this Warden does not know: %w", id, err)
	}
	if !suite.AtLeast(minS) {
		return EnvelopeSecret{}, fmt.Errorf("rekey device %q: its policy requires suite %v but its key is %v, and a rekey keeps the suite; re-provision the device with the new suite: %w",
			id, minS, suite, ErrInvalid)
	}
	epoch := last + 1
	secret, sealed, err := r.newSecret(id, epoch, suite)
	if err != nil {
		return EnvelopeSecret{}, fmt.Errorf("rekey device %q: %w", id, err)
	}
	now := r.clock()
	k := store.EnvelopeKey{DeviceID: id, Epoch: epoch, Suite: suite.String(), SealedSecret: sealed,
		State: store.EnvelopePending, CreatedAt: now}
	if err := r.st.AddEnvelopeKey(ctx, k); err != nil {
		clear(secret)
		if errors.Is(err, store.ErrRevoked) {
			return EnvelopeSecret{}, revokedFinal("rekey", identity.KindDevice, id)
		}
		return EnvelopeSecret{}, fmt.Errorf("rekey device %q: %w", id, err)
	}
	r.emit(ctx, Event{Kind: EventEnvelopeChanged, Principal: devicePrincipal(id), Reason: "rekey-begun", At: now},
		"epoch", epoch, "suite", k.Suite, "previous_epoch", active.Epoch)
	return EnvelopeSecret{Epoch: epoch, Suite: k.Suite, Secret: secret, State: store.EnvelopePending}, nil
}

// ConfirmRekey ends a rekey once the device has shown it holds the pending
// key: that key becomes active and the old one is retired, its secret
// erased. Confirming the active epoch again changes nothing. ErrNotFound if
// the device has no such key; a retired epoch is refused (ErrRevoked).
func (r *Registry) ConfirmRekey(ctx context.Context, id string, epoch uint32) error {
	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	if err := r.envelopeDevice(ctx, "confirm rekey of", id); err != nil {
		return err
	}
	keys, err := r.st.EnvelopeKeys(ctx, id)
	if err != nil {
		return fmt.Errorf("confirm rekey of device %q: %w", id, err)
	}
	var (
		found    *store.EnvelopeKey
		previous uint32
	)
	for i, k := range keys {
		if k.Epoch == epoch {
			found = &keys[i]
		}
		if k.State == store.EnvelopeActive {
			previous = k.Epoch
		}
	}
	switch {
	case found == nil:
		return fmt.Errorf("confirm rekey of device %q: no envelope key epoch %d: %w", id, epoch, store.ErrNotFound)
	case found.State == store.EnvelopeActive:
		return nil
	case found.State == store.EnvelopeRetired:
		return invalid(fmt.Errorf("confirm rekey of device %q: envelope key epoch %d is retired, which is final: %w", id, epoch, store.ErrRevoked))
	}
	now := r.clock()
	if err := r.st.PromoteEnvelopeKey(ctx, id, epoch, now); err != nil {
		return fmt.Errorf("confirm rekey of device %q: %w", id, err)
	}
	r.emit(ctx, Event{Kind: EventEnvelopeChanged, Principal: devicePrincipal(id), Reason: "rekey-confirmed", At: now},
		"epoch", epoch, "previous_epoch", previous)
	return nil
}

// envelopeRetiredBy reports whether revoking the device at `at` retired
// envelope keys. When it cannot tell, it says yes: announcing a change that
// did not happen costs a cache refill, missing one would keep using a
// retired secret.
func (r *Registry) envelopeRetiredBy(ctx context.Context, id string, at time.Time) bool {
	keys, err := r.st.EnvelopeKeys(ctx, id)
	if err != nil {
		r.log.ErrorContext(ctx, "cannot tell whether revocation retired envelope keys; announcing it anyway", "device", id, "error", err)
		return true
	}
	for _, k := range keys {
		if k.RetiredAt.Equal(at) {
			return true
		}
	}
	return false
}

// --- replay windows and sequence numbers ---
//
// The relay keeps replay windows and sequence counters through these thin
// wrappers rather than the store: they check their input, and they speak
// envelope's types (Direction, ReplayWindow), so a corrupt stored window is
// an error here and not a fresh window in the relay.

func storeDirection(dir envelope.Direction) (string, error) {
	switch dir {
	case envelope.Uplink:
		return store.EnvelopeUplink, nil
	case envelope.Downlink:
		return store.EnvelopeDownlink, nil
	}
	return "", invalidf("unknown envelope direction %v", dir)
}

// ReplayWindow returns the saved replay window of (device, direction,
// epoch), or a fresh one if none is saved. A stored window that does not
// decode is an error: per the envelope spec the epoch must then be treated as
// compromised for replay purposes and the device rekeyed.
func (r *Registry) ReplayWindow(ctx context.Context, id string, dir envelope.Direction, epoch uint32) (envelope.ReplayWindow, error) {
	d, err := storeDirection(dir)
	if err != nil {
		return envelope.ReplayWindow{}, fmt.Errorf("replay window of device %q: %w", id, err)
	}
	b, err := r.st.LoadReplayWindow(ctx, id, d, epoch)
	if err != nil || b == nil {
		return envelope.ReplayWindow{}, err
	}
	var w envelope.ReplayWindow
	if err := w.UnmarshalBinary(b); err != nil {
		return envelope.ReplayWindow{}, fmt.Errorf("%s replay window of device %q epoch %d: %w; rekey the device", d, id, epoch, err)
	}
	return w, nil
}

// SaveReplayWindow saves the replay window of (device, direction, epoch).
// ErrNotFound if the device has no key of that epoch, ErrRevoked if the key
// is retired (the message it was saved for must then be dropped).
func (r *Registry) SaveReplayWindow(ctx context.Context, id string, dir envelope.Direction, epoch uint32, w envelope.ReplayWindow) error {
	d, err := storeDirection(dir)
	if err != nil {
		return fmt.Errorf("save replay window of device %q: %w", id, err)
	}
	b, err := w.MarshalBinary()
	if err != nil {
		return fmt.Errorf("save %s replay window of device %q: %w", d, id, err)
	}
	return r.st.SaveReplayWindow(ctx, id, d, epoch, b)
}

// ReserveSequence reserves step sequence numbers for Warden as the sender
// of (device, direction, epoch) (in practice downlinks) and returns the
// first: the caller owns [start, start+step) and needs no store access until
// it has used them. Numbers survive restarts and are never handed out twice,
// also across several Warden nodes on one database. Once a range would pass
// envelope.MaxSeq it fails with envelope.ErrRekeyRequired.
func (r *Registry) ReserveSequence(ctx context.Context, id string, dir envelope.Direction, epoch uint32, step uint64) (uint64, error) {
	d, err := storeDirection(dir)
	if err != nil {
		return 0, fmt.Errorf("reserve sequence numbers of device %q: %w", id, err)
	}
	if step == 0 || step > envelope.MaxSeq+1 {
		return 0, fmt.Errorf("reserve sequence numbers of device %q: %w", id, invalidf("step %d is outside 1..2^40", step))
	}
	start, err := r.st.ReserveSequence(ctx, id, d, epoch, step)
	if err != nil {
		return 0, err
	}
	if start > envelope.MaxSeq+1-step {
		return 0, fmt.Errorf("reserve %s sequence numbers of device %q epoch %d: %w", d, id, epoch, envelope.ErrRekeyRequired)
	}
	return start, nil
}
