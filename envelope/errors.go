package envelope

import (
	"errors"
	"fmt"
)

// ErrOpen is the one error a peer may be told about a message that was
// refused. Every failure of Parse, Open, RequireSuite and the ReplayWindow is
// an *OpenError that matches ErrOpen with errors.Is.
var ErrOpen = errors.New("envelope: cannot open message")

// ErrRekeyRequired is returned by Seal and Counter.Next once the sequence
// numbers of the key epoch are used up (past MaxSeq): the device must move to
// a new epoch before it can send again.
var ErrRekeyRequired = errors.New("envelope: sequence numbers of this key epoch are exhausted; rekey the device")

// Reason says why a message was refused. It is for metrics and the audit log;
// it must never reach the peer.
type Reason string

// The reasons, as docs/envelope.md ("Receiving") defines them.
const (
	// ReasonMalformed: the message cannot be parsed (too short, reserved
	// version or suite, bad sequence-number encoding, impossible length).
	ReasonMalformed Reason = "malformed"
	// ReasonDowngrade: the suite is weaker than the device's minimum or than
	// the suite of the keys given to Open.
	ReasonDowngrade Reason = "downgrade"
	// ReasonUnknownKey: no keys for the message's suite, epoch or key ID.
	ReasonUnknownKey Reason = "unknown-key"
	// ReasonReplay: the sequence number was already accepted or is too old.
	ReasonReplay Reason = "replay"
	// ReasonBadTag: the tag or signature does not verify (tampering, or the
	// wrong key, topic, device, direction or epoch).
	ReasonBadTag Reason = "bad-tag"
	// ReasonBadPadding: legacy-cbc-hmac only; the message authenticated but
	// its padding is invalid, which only a broken sender or a stolen key can
	// produce.
	ReasonBadPadding Reason = "bad-padding"
)

// OpenError is the error of every failure to open a message. errors.Is(err,
// ErrOpen) holds for it. Its Reason and its Error text are for the receiver's
// own logs and metrics only.
type OpenError struct {
	Reason Reason
	detail string
}

func (e *OpenError) Error() string {
	if e.detail == "" {
		return ErrOpen.Error() + ": " + string(e.Reason)
	}
	return ErrOpen.Error() + ": " + string(e.Reason) + ": " + e.detail
}

// Is makes every OpenError match ErrOpen.
func (e *OpenError) Is(target error) bool { return target == ErrOpen }

// ReasonOf returns the Reason of an *OpenError anywhere in err's chain, or
// "" if there is none.
func ReasonOf(err error) Reason {
	var oe *OpenError
	if errors.As(err, &oe) {
		return oe.Reason
	}
	return ""
}

func openError(r Reason, format string, args ...any) *OpenError {
	return &OpenError{Reason: r, detail: fmt.Sprintf(format, args...)}
}
