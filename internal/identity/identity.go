// Package identity names the principals Warden knows (devices and services),
// validates their identifiers, and maps them to and from the URI SANs that
// Warden's certificates carry. It holds no state and makes no decisions:
// registry decides whether a principal may connect, policy what it may touch.
package identity

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Kind says what sort of principal a certificate names.
type Kind string

const (
	KindDevice  Kind = "device"
	KindService Kind = "service"
	// KindClaim is a fleet claim certificate (urn:warden:claim:<name>): it
	// may only enroll the device IDs on its allow-list, never act as one.
	KindClaim Kind = "claim"
)

// Service roles. A reader may read fleet/#; a commander may also publish
// fleet/+/down/#.
const (
	RoleReader    = "reader"
	RoleCommander = "commander"
)

// Principal is an authenticated identity: a device (Role empty), a service,
// or a claim-certificate connection (ID is the device ID it may enroll as
// MQTT client ID, Role the claim certificate's name).
type Principal struct {
	Kind Kind
	ID   string // device ID or service name
	Role string // services: the role; claim connections: the claim name
}

func (p Principal) String() string { return string(p.Kind) + ":" + p.ID }

// validID checks the ID grammar from ARCHITECTURE.md,
// [A-Za-z0-9][A-Za-z0-9_-]{0,63}, without a regexp: it runs on every
// relayed message. The grammar excludes every MQTT wildcard and separator,
// so an ID can be substituted into a topic.
func validID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// ErrInvalidID is wrapped by every ID validation error.
var ErrInvalidID = errors.New("invalid identifier")

// ValidateDeviceID checks a device ID against [A-Za-z0-9][A-Za-z0-9_-]{0,63}.
func ValidateDeviceID(id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: device ID %q must be 1-64 characters of letters, digits, '_' or '-', starting with a letter or digit", ErrInvalidID, id)
	}
	return nil
}

// ValidateServiceName checks a service name; the grammar is the device one.
func ValidateServiceName(name string) error {
	if !validID(name) {
		return fmt.Errorf("%w: service name %q must be 1-64 characters of letters, digits, '_' or '-', starting with a letter or digit", ErrInvalidID, name)
	}
	return nil
}

// ValidateClaimName checks a claim certificate's name; the grammar is the
// device one.
func ValidateClaimName(name string) error {
	if !validID(name) {
		return fmt.Errorf("%w: claim certificate name %q must be 1-64 characters of letters, digits, '_' or '-', starting with a letter or digit", ErrInvalidID, name)
	}
	return nil
}

// ValidateRole checks a service role.
func ValidateRole(role string) error {
	switch role {
	case RoleReader, RoleCommander:
		return nil
	}
	return fmt.Errorf("%w: service role %q is not one of %q, %q", ErrInvalidID, role, RoleReader, RoleCommander)
}

// NewDeviceID returns a random 32-bit device ID as 8 lowercase hex digits,
// the form factory lines use.
func NewDeviceID() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate device ID: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

const urnPrefix = "urn:warden:"

// URI returns the URI SAN for a principal: urn:warden:device:<id> or
// urn:warden:service:<name>.
func URI(kind Kind, id string) *url.URL {
	return &url.URL{Scheme: "urn", Opaque: "warden:" + string(kind) + ":" + id}
}

// ParseURI reads a Warden URI SAN. It rejects anything that is not exactly
// urn:warden:<kind>:<valid id>.
func ParseURI(u *url.URL) (Kind, string, error) {
	if u == nil {
		return "", "", fmt.Errorf("%w: no URI", ErrInvalidID)
	}
	s := u.String()
	if !strings.HasPrefix(s, urnPrefix) {
		return "", "", fmt.Errorf("%w: URI %q is not a Warden identity (urn:warden:...)", ErrInvalidID, s)
	}
	rest := strings.TrimPrefix(s, urnPrefix)
	kind, id, ok := strings.Cut(rest, ":")
	if !ok {
		return "", "", fmt.Errorf("%w: URI %q has no identifier", ErrInvalidID, s)
	}
	switch Kind(kind) {
	case KindDevice:
		if err := ValidateDeviceID(id); err != nil {
			return "", "", err
		}
	case KindService:
		if err := ValidateServiceName(id); err != nil {
			return "", "", err
		}
	case KindClaim:
		if err := ValidateClaimName(id); err != nil {
			return "", "", err
		}
	default:
		return "", "", fmt.Errorf("%w: URI %q names unknown kind %q", ErrInvalidID, s, kind)
	}
	return Kind(kind), id, nil
}

// FromURIs finds the single Warden identity among a certificate's URI SANs.
// A certificate with none, or with more than one, names no principal.
func FromURIs(uris []*url.URL) (Kind, string, error) {
	var (
		kind  Kind
		id    string
		found int
	)
	for _, u := range uris {
		if !strings.HasPrefix(u.String(), urnPrefix) {
			continue
		}
		k, i, err := ParseURI(u)
		if err != nil {
			return "", "", err
		}
		kind, id = k, i
		found++
	}
	switch found {
	case 0:
		return "", "", fmt.Errorf("%w: certificate carries no urn:warden: URI SAN", ErrInvalidID)
	case 1:
		return kind, id, nil
	default:
		return "", "", fmt.Errorf("%w: certificate carries %d urn:warden: URI SANs; exactly one is allowed", ErrInvalidID, found)
	}
}
