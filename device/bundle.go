package device

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/identity"
)

// maxBundleSize bounds what LoadEnvelopeBundle reads: a bundle is about 150
// bytes, so anything near this is not one.
const maxBundleSize = 64 << 10

// envelopeBundle is the JSON of ID.envelope.json (docs/envelope.md, "Device
// SDK"). Pointers tell a missing field from a zero one.
type envelopeBundle struct {
	DeviceID  *string `json:"device_id"`
	Suite     *string `json:"suite"`
	Epoch     *uint32 `json:"epoch"`
	SecretHex *string `json:"secret_hex"`
	Required  *bool   `json:"required"`
}

// LoadEnvelopeBundle reads the envelope bundle that `warden device add ID
// --envelope` writes (DIR/ID.envelope.json) and returns the device ID, for
// Config.DeviceID, and an Envelope with Suite, Epoch, Secret and Required
// filled in. The caller adds Counter (and NewCounter and OnRekey to accept
// rekeys, DownlinkWindows, ServerKey for sign-p256).
//
// The bundle holds the master secret: keep it readable by the device's own
// user only. After a rekey, the application's OnRekey persists the new
// epoch and secret; the bundle then describes an epoch the device has left.
func LoadEnvelopeBundle(path string) (string, *Envelope, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, fmt.Errorf("device: read envelope bundle: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxBundleSize+1))
	if err != nil {
		return "", nil, fmt.Errorf("device: read envelope bundle %s: %w", path, err)
	}
	defer clear(data)
	id, env, err := parseEnvelopeBundle(data)
	if err != nil {
		return "", nil, fmt.Errorf("device: envelope bundle %s: %w", path, err)
	}
	return id, env, nil
}

// parseEnvelopeBundle reads a bundle's JSON. Errors never quote the
// secret. Unknown fields are ignored, so that Warden may add some.
func parseEnvelopeBundle(data []byte) (string, *Envelope, error) {
	if len(data) > maxBundleSize {
		return "", nil, fmt.Errorf("larger than %d bytes; not an envelope bundle", maxBundleSize)
	}
	var b envelopeBundle
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&b); err != nil {
		// json's errors may quote the offending value, which could be the
		// secret: report where, not what.
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return "", nil, fmt.Errorf("not valid JSON (offset %d)", se.Offset)
		case errors.As(err, &te) && te.Field != "":
			return "", nil, fmt.Errorf("field %q has the wrong type (want %v)", te.Field, te.Type)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return "", nil, errors.New("the JSON is truncated")
		default:
			return "", nil, errors.New("not a JSON object")
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", nil, errors.New("data after the JSON object")
	}
	switch {
	case b.DeviceID == nil:
		return "", nil, errors.New(`missing "device_id"`)
	case b.Suite == nil:
		return "", nil, errors.New(`missing "suite"`)
	case b.Epoch == nil:
		return "", nil, errors.New(`missing "epoch"`)
	case b.Required == nil:
		return "", nil, errors.New(`missing "required"`)
	}
	if err := identity.ValidateDeviceID(*b.DeviceID); err != nil {
		return "", nil, fmt.Errorf(`"device_id": %w`, err)
	}
	suite, err := envelope.ParseSuite(*b.Suite)
	if err != nil {
		return "", nil, fmt.Errorf(`"suite": %w`, err)
	}
	env := &Envelope{Suite: suite, Epoch: *b.Epoch, Required: *b.Required}
	if suite == envelope.SignP256 {
		if b.SecretHex != nil && *b.SecretHex != "" {
			return "", nil, errors.New(`"secret_hex" is set, but a sign-p256 device has no master secret`)
		}
		return *b.DeviceID, env, nil
	}
	if b.SecretHex == nil {
		return "", nil, fmt.Errorf(`missing "secret_hex" (the %v master secret)`, suite)
	}
	if len(*b.SecretHex) != 2*envelope.MasterSecretSize {
		return "", nil, fmt.Errorf(`"secret_hex" has %d characters; the master secret is %d bytes, %d hex digits`, len(*b.SecretHex), envelope.MasterSecretSize, 2*envelope.MasterSecretSize)
	}
	secret, err := hex.DecodeString(*b.SecretHex)
	if err != nil {
		return "", nil, errors.New(`"secret_hex" is not hexadecimal`)
	}
	env.Secret = secret
	return *b.DeviceID, env, nil
}
