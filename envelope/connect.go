package envelope

import (
	"encoding/hex"
	"fmt"
)

// ConnectTopic is the topic bound into a CONNECT password. Nothing is ever
// published on it (it starts with '$', which MQTT reserves); binding it
// keeps a password from being accepted as a message and a message from
// being accepted as a password.
const ConnectTopic = "$warden/connect"

// maxConnectPassword bounds the hex text Warden decodes: the largest
// password is a sign-p256 envelope of an empty plaintext (1 + 1 + 5 + 64
// bytes), 142 hex digits.
const maxConnectPassword = 2 * (1 + 1 + 5 + signatureSize)

// ConnectPassword is the MQTT password a device presents on Warden's plain
// (non-TLS) listener, with its device ID as the username: an envelope of an
// empty uplink message on ConnectTopic with sequence number seq, written as
// lowercase hex so that modem AT-command stacks that only take text can send
// it. keys must be the device's uplink keys for its current epoch, and seq
// must come from the same Counter as its messages: sharing the counter is
// what keeps a password from ever reusing a message's nonce.
//
// The password proves the device holds the key, and the receiver's replay
// window makes each one usable once: a recorded CONNECT cannot be replayed.
func ConnectPassword(keys *Keys, seq uint64) ([]byte, error) {
	if keys == nil || keys.Direction() != Uplink {
		return nil, fmt.Errorf("envelope: a connect password needs the device's uplink keys")
	}
	msg, err := Seal(keys, seq, ConnectTopic, nil)
	if err != nil {
		return nil, err
	}
	out := make([]byte, hex.EncodedLen(len(msg)))
	hex.Encode(out, msg)
	return out, nil
}

// ParseConnectPassword decodes a password's hex text and parses its
// header without verifying it, so the receiver can pick the epoch's keys.
func ParseConnectPassword(password []byte) (Header, []byte, error) {
	if len(password) == 0 || len(password) > maxConnectPassword || len(password)%2 != 0 {
		return Header{}, nil, &OpenError{Reason: ReasonMalformed, detail: "connect password length"}
	}
	for _, c := range password {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return Header{}, nil, &OpenError{Reason: ReasonMalformed, detail: "connect password is not lowercase hex"}
		}
	}
	msg := make([]byte, hex.DecodedLen(len(password)))
	if _, err := hex.Decode(msg, password); err != nil {
		return Header{}, nil, &OpenError{Reason: ReasonMalformed, detail: "connect password hex"}
	}
	h, err := Parse(msg)
	if err != nil {
		return Header{}, nil, err
	}
	return h, msg, nil
}

// OpenConnectPassword verifies a password made by ConnectPassword under
// keys (the device's uplink keys for the epoch the header names) and
// returns its header. Like Open it does not consult a replay window: the
// caller checks the sequence number against the device's uplink window
// before calling and commits it after, exactly as for a message. Every
// failure is ErrOpen.
func OpenConnectPassword(keys *Keys, password []byte) (Header, error) {
	_, msg, err := ParseConnectPassword(password)
	if err != nil {
		return Header{}, err
	}
	pt, h, err := Open(keys, ConnectTopic, msg)
	if err != nil {
		return Header{}, err
	}
	if len(pt) != 0 {
		return Header{}, &OpenError{Reason: ReasonMalformed, detail: "connect password carries a payload"}
	}
	return h, nil
}
