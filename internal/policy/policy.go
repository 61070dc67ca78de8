// Package policy decides which MQTT topics a principal may publish to,
// subscribe to and receive. It is the only place in Warden where topic
// rights are decided: the broker's ACL hook, the relay and the API all ask
// it, so a rule means the same thing everywhere.
//
// Rules are written once with variables (${id}) and compiled per principal
// into a Rights value. The broker keeps the compiled Rights on the
// connection, which makes every check plain string work: no allocation, no
// regular expression, no recursion.
package policy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/warden-iot/warden/internal/identity"
)

// Access is what a rule grants on the topics its pattern matches.
type Access uint8

// Read allows subscribing and receiving; Write allows publishing.
const (
	Read      Access = 1
	Write     Access = 2
	ReadWrite Access = Read | Write
)

func (a Access) String() string {
	switch a {
	case Read:
		return "read"
	case Write:
		return "write"
	case ReadWrite:
		return "readwrite"
	}
	return fmt.Sprintf("access(%d)", uint8(a))
}

// Selector says which principals a rule applies to.
type Selector struct {
	Kind identity.Kind
	Role string // "" = any role; only services have roles
}

func (s Selector) String() string {
	if s.Role == "" {
		return string(s.Kind)
	}
	return string(s.Kind) + "/" + s.Role
}

func (s Selector) selects(pr identity.Principal) bool {
	return s.Kind == pr.Kind && (s.Role == "" || s.Role == pr.Role)
}

// VarID is replaced by the principal's ID (device ID or service name) when
// rules are compiled. It may only appear as a whole topic level, so an ID can
// never be spliced into a longer level ("dev${id}") and widen a rule.
const VarID = "${id}"

// Rule grants Access on the topics matched by Pattern to the principals
// chosen by Who. Pattern uses MQTT filter syntax and may contain VarID.
type Rule struct {
	Who     Selector
	Pattern string
	Access  Access
}

func (r Rule) String() string {
	return fmt.Sprintf("%s %s %q", r.Who, r.Access, r.Pattern)
}

// DefaultRules is Warden's topic layout (ARCHITECTURE.md, "Topics"): a
// device reads its whole private subtree but writes only the topics that
// carry its own messages to Warden: uplinks, OTA requests and reports
// (otaproto), CSRs and claims (enrollproto). The rest of its subtree
// (down/, ota/notify, ota/block, cert/new, claim/result) is Warden's to
// write: were the device allowed to, a stolen device key could leave a
// retained "command" or "certificate" there that the genuine device later
// takes for Warden's, with no role check and no audit line. Services see
// the fleet tree, and only commanders may send commands down it. Services
// never touch private/.
func DefaultRules() []Rule {
	dev := Selector{Kind: identity.KindDevice}
	own := "private/" + VarID
	return []Rule{
		{Who: dev, Pattern: own + "/#", Access: Read},
		{Who: dev, Pattern: own + "/up/#", Access: Write},
		{Who: dev, Pattern: own + "/ota/get", Access: Write},
		{Who: dev, Pattern: own + "/ota/status", Access: Write},
		{Who: dev, Pattern: own + "/cert/csr", Access: Write},
		{Who: dev, Pattern: own + "/claim", Access: Write},
		{Who: Selector{Kind: identity.KindService, Role: identity.RoleReader}, Pattern: "fleet/#", Access: Read},
		{Who: Selector{Kind: identity.KindService, Role: identity.RoleCommander}, Pattern: "fleet/#", Access: Read},
		{Who: Selector{Kind: identity.KindService, Role: identity.RoleCommander}, Pattern: "fleet/+/down/#", Access: Write},
	}
}

// ErrInvalidRule is wrapped by every error New returns.
var ErrInvalidRule = errors.New("invalid policy rule")

// Policy is a validated rule set. It is immutable and safe for concurrent
// use.
type Policy struct {
	rules []Rule
}

// New validates rules and returns a Policy holding a copy of them. Every
// rule must name a known kind (and, for services, a known role or none),
// grant Read, Write or ReadWrite, and carry a valid MQTT filter in which
// VarID appears only as a whole level. Patterns for '$' topics are refused:
// those belong to the broker and are closed to everyone.
func New(rules []Rule) (*Policy, error) {
	for i, r := range rules {
		if err := validateRule(r); err != nil {
			return nil, fmt.Errorf("%w: rule %d (%s): %w", ErrInvalidRule, i, r, err)
		}
	}
	return &Policy{rules: append([]Rule(nil), rules...)}, nil
}

func validateRule(r Rule) error {
	switch r.Who.Kind {
	case identity.KindDevice:
		if r.Who.Role != "" {
			return fmt.Errorf("devices have no roles; remove role %q", r.Who.Role)
		}
	case identity.KindService:
		if r.Who.Role != "" {
			if err := identity.ValidateRole(r.Who.Role); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("kind %q is neither %q nor %q", r.Who.Kind, identity.KindDevice, identity.KindService)
	}
	if r.Access != Read && r.Access != Write && r.Access != ReadWrite {
		return fmt.Errorf("access %d is not read (1), write (2) or readwrite (3)", uint8(r.Access))
	}
	if r.Pattern == "" {
		return errors.New("pattern is empty")
	}
	for i, first := 0, true; i >= 0; first = false {
		var level string
		level, i = nextLevel(r.Pattern, i)
		if level == VarID {
			continue
		}
		if strings.Contains(level, "${") {
			return fmt.Errorf("level %q: the only variable is %s, and it must be a whole level", level, VarID)
		}
		if first && strings.HasPrefix(level, "$") {
			return fmt.Errorf("topics starting with '$' are reserved to the broker and cannot be granted")
		}
	}
	// Any valid ID is a plain level, so checking with a stand-in is exact.
	if !ValidFilter(strings.ReplaceAll(r.Pattern, VarID, "x")) {
		return errors.New("pattern is not a valid MQTT topic filter ('+' and '#' must be whole levels, '#' only last; valid UTF-8, no NUL, at most 65535 bytes)")
	}
	return nil
}

// Rights are one principal's compiled rules. A nil *Rights allows nothing,
// so a connection whose rights were never compiled fails closed. Rights are
// immutable and safe for concurrent use.
type Rights struct {
	principal identity.Principal
	read      []string
	write     []string
}

// Quarantined returns the rights of a device the anomaly monitor put in
// quarantine: only what it needs to be repaired, its firmware updates
// (private/<id>/ota/...) and its certificate (private/<id>/cert/...), until
// an operator releases it. No configured rule widens them.
func Quarantined(id string) *Rights {
	r := &Rights{principal: identity.Principal{Kind: identity.KindDevice, ID: id}}
	if identity.ValidateDeviceID(id) != nil {
		return r
	}
	base := "private/" + id
	r.write = []string{base + "/ota/get", base + "/ota/status", base + "/cert/csr"}
	r.read = []string{base + "/ota/notify", base + "/ota/block", base + "/cert/new"}
	return r
}

// Compile substitutes the principal into every rule that selects it. A
// principal with an invalid ID, or of an unknown kind, gets Rights that
// allow nothing: the ID is spliced into topic patterns, so an ID that is not
// a plain level must never get that far.
func (p *Policy) Compile(pr identity.Principal) *Rights {
	r := &Rights{principal: pr}
	if p == nil {
		return r
	}
	switch pr.Kind {
	case identity.KindDevice:
		if identity.ValidateDeviceID(pr.ID) != nil {
			return r
		}
	case identity.KindService:
		if identity.ValidateServiceName(pr.ID) != nil {
			return r
		}
	case identity.KindClaim:
		// A claim-certificate connection may only enroll the device ID it
		// connected as: fixed rights that no configured rule can widen.
		if identity.ValidateDeviceID(pr.ID) != nil {
			return r
		}
		r.write = []string{"private/" + pr.ID + "/cert/csr"}
		r.read = []string{"private/" + pr.ID + "/cert/new"}
		return r
	default:
		return r
	}
	for _, rule := range p.rules {
		if !rule.Who.selects(pr) {
			continue
		}
		pattern := strings.ReplaceAll(rule.Pattern, VarID, pr.ID)
		if rule.Access&Read != 0 {
			r.read = append(r.read, pattern)
		}
		if rule.Access&Write != 0 {
			r.write = append(r.write, pattern)
		}
	}
	return r
}

// Principal returns the principal the rights were compiled for.
func (r *Rights) Principal() identity.Principal {
	if r == nil {
		return identity.Principal{}
	}
	return r.principal
}

// CanPublish reports whether the principal may publish to topic. The topic
// must be a valid topic name (no wildcards, non-empty, valid UTF-8, no NUL,
// at most 65535 bytes) and must not start with '$'.
func (r *Rights) CanPublish(topic string) bool {
	if r == nil || !ValidTopicName(topic) || topic[0] == '$' {
		return false
	}
	for _, p := range r.write {
		if match(p, topic) {
			return true
		}
	}
	return false
}

// CanSubscribe reports whether the principal may subscribe to filter: true
// only if one Read rule covers every topic the filter can match (see
// Covers), so "private/+/up/#" is refused to a device even though its own
// topics are among those it would match. Filters starting with '$' are
// refused to everyone. A shared subscription "$share/<group>/<filter>" is
// refused to devices and, for services, allowed iff the inner filter is.
//
// Coverage is decided per rule; a filter covered only by the union of two
// rules is refused. That errs on the side of refusing.
func (r *Rights) CanSubscribe(filter string) bool {
	if r == nil {
		return false
	}
	if inner, shared, ok := SplitShared(filter); shared {
		if !ok || r.principal.Kind != identity.KindService {
			return false
		}
		filter = inner
	}
	if !ValidFilter(filter) || filter[0] == '$' {
		return false
	}
	for _, p := range r.read {
		if covers(p, filter) {
			return true
		}
	}
	return false
}

// CanReceive reports whether a message on topic may be delivered to the
// principal: the broker's ACL hook is asked again for every recipient at
// delivery time, and this is its answer. Whenever CanSubscribe(f) is true,
// CanReceive holds for every topic f matches (FuzzRights checks this).
func (r *Rights) CanReceive(topic string) bool {
	if r == nil || !ValidTopicName(topic) || topic[0] == '$' {
		return false
	}
	for _, p := range r.read {
		if match(p, topic) {
			return true
		}
	}
	return false
}
