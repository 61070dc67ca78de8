package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/warden-iot/warden/commandproto"
	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/otaproto"
)

var (
	device    = identity.Principal{Kind: identity.KindDevice, ID: "abc"}
	reader    = identity.Principal{Kind: identity.KindService, ID: "dashboard", Role: identity.RoleReader}
	commander = identity.Principal{Kind: identity.KindService, ID: "ops", Role: identity.RoleCommander}
)

func defaultPolicy(t testing.TB) *Policy {
	t.Helper()
	p, err := New(DefaultRules())
	if err != nil {
		t.Fatalf("New(DefaultRules()): %v", err)
	}
	return p
}

func TestDefaultRights(t *testing.T) {
	p := defaultPolicy(t)
	type check struct {
		op   string // "pub", "sub", "recv"
		s    string
		want bool
	}
	tests := []struct {
		who    identity.Principal
		checks []check
	}{
		{device, []check{
			{"pub", "private/abc/up/telemetry", true},
			{"pub", "private/abc/up/température", true},
			{"pub", "private/abc/up/", true},
			{"pub", "private/abc/ota/status", true},
			{"pub", "private/abc/ota/get", true},
			{"pub", "private/abc/cert/csr", true},
			{"pub", "private/abc/claim", true},
			// The rest of its own subtree is Warden's to write: a device
			// (or a stolen device key) must not forge what Warden sends it.
			{"pub", "private/abc", false},
			{"pub", "private/abc/down/cmd", false},
			{"pub", "private/abc/down/_rekey", false},
			{"pub", "private/abc/ota/notify", false},
			{"pub", "private/abc/ota/block", false},
			{"pub", "private/abc/ota/status/x", false},
			{"pub", "private/abc/cert/new", false},
			{"pub", "private/abc/claim/result", false},
			{"pub", "private/abc/state", false},
			{"pub", "private/abcd/up/x", false},
			{"pub", "private/ab/up/x", false},
			{"pub", "private/xyz/up/x", false},
			{"pub", "private/abc/up/+", false}, // wildcard in a topic name
			{"pub", "private/abc/up/#", false},
			{"pub", "fleet/abc/up/x", false},
			{"pub", "fleet/abc/down/x", false},
			{"pub", "$SYS/broker", false},
			{"pub", "", false},
			{"pub", "private/abc/up/\x00", false},
			{"pub", "private/abc/up/\xff", false},
			{"pub", "private/abc/" + strings.Repeat("x", maxLen), false},

			{"sub", "private/abc/#", true},
			{"sub", "private/abc/down/+", true},
			{"sub", "private/abc/down/#", true},
			{"sub", "private/abc", true},
			{"sub", "private/abc/+/+", true},
			{"sub", "#", false},
			{"sub", "+/#", false},
			{"sub", "+/abc/#", false},
			{"sub", "private/#", false},
			{"sub", "private/+", false},
			{"sub", "private/+/up/#", false},
			{"sub", "private/+/down/x", false},
			{"sub", "private/abcd/#", false},
			{"sub", "private/ab/#", false},
			{"sub", "fleet/#", false},
			{"sub", "$SYS/#", false},
			{"sub", "$SYS/broker/uptime", false},
			{"sub", "$share/g/private/abc/#", false}, // no shared subscriptions for devices
			{"sub", "private/abc/down/a#", false},
			{"sub", "private/abc/#/x", false},
			{"sub", "private/abc/down/+x", false},
			{"sub", "", false},

			{"recv", "private/abc/down/cmd", true},
			{"recv", "private/abc", true},
			{"recv", "private/abcd/down/cmd", false},
			{"recv", "fleet/abc/down/cmd", false},
			{"recv", "$SYS/broker", false},
			{"recv", "private/abc/down/+", false},
		}},
		{reader, []check{
			{"pub", "fleet/abc/down/cmd", false},
			{"pub", "fleet/abc/up/x", false},
			{"pub", "private/dashboard/up/x", false}, // services never touch private/
			{"sub", "fleet/#", true},
			{"sub", "fleet/+/up/#", true},
			{"sub", "fleet/abc/up/temp", true},
			{"sub", "fleet", true},
			{"sub", "#", false},
			{"sub", "+/+/up/#", false},
			{"sub", "private/#", false},
			{"sub", "private/dashboard/#", false},
			{"sub", "$SYS/#", false},
			{"sub", "$share/relay/fleet/+/up/#", true},
			{"sub", "$share/relay/fleet/#", true},
			{"sub", "$share/relay/#", false},
			{"sub", "$share/relay/private/+/up/#", false},
			{"sub", "$share/relay/$SYS/#", false},
			{"sub", "$share/relay/$share/x/fleet/#", false},
			{"sub", "$share//fleet/#", false},
			{"sub", "$share/re+lay/fleet/#", false},
			{"sub", "$share/relay", false},
			{"sub", "$share/relay/", false},
			{"sub", "$share/relay/fleet/#/x", false},
			{"recv", "fleet/abc/up/temp", true},
			{"recv", "fleet/abc/down/cmd", true},
			{"recv", "private/abc/up/temp", false},
		}},
		{commander, []check{
			{"pub", "fleet/abc/down/cmd", true},
			{"pub", "fleet/abc/down", true},
			{"pub", "fleet//down/x", true}, // '+' matches the empty level
			{"pub", "fleet/abc/up/temp", false},
			{"pub", "fleet/abc/downx", false},
			{"pub", "private/abc/down/cmd", false},
			{"sub", "fleet/#", true},
			{"sub", "$share/cmds/fleet/+/down/#", true},
			{"sub", "private/abc/#", false},
			{"recv", "fleet/abc/down/cmd", true},
			{"recv", "private/abc/down/cmd", false},
		}},
	}
	for _, tt := range tests {
		r := p.Compile(tt.who)
		if r.Principal() != tt.who {
			t.Errorf("Principal() = %v, want %v", r.Principal(), tt.who)
		}
		for _, c := range tt.checks {
			var got bool
			switch c.op {
			case "pub":
				got = r.CanPublish(c.s)
			case "sub":
				got = r.CanSubscribe(c.s)
			case "recv":
				got = r.CanReceive(c.s)
			}
			s := c.s
			if len(s) > 50 {
				s = s[:50] + "..."
			}
			if got != c.want {
				t.Errorf("%s: %s %q = %v, want %v", tt.who, c.op, s, got, c.want)
			}
		}
	}
}

func TestCompileFailsClosed(t *testing.T) {
	p := defaultPolicy(t)
	principals := []identity.Principal{
		{Kind: identity.KindDevice, ID: ""},
		{Kind: identity.KindDevice, ID: "+"},
		{Kind: identity.KindDevice, ID: "#"},
		{Kind: identity.KindDevice, ID: "a/b"},
		{Kind: identity.KindDevice, ID: "${id}"},
		{Kind: identity.KindService, ID: "a/#", Role: identity.RoleReader},
		{Kind: "robot", ID: "abc"},
		{Kind: identity.KindService, ID: "svc", Role: "admin"}, // no rule selects this role
	}
	topics := []string{"private/+/up/x", "private/#/up/x", "private/a/b/up/x", "fleet/x/up/y", "private/abc/up/x"}
	for _, pr := range principals {
		r := p.Compile(pr)
		for _, s := range topics {
			if r.CanPublish(s) || r.CanReceive(s) || r.CanSubscribe(s) {
				t.Errorf("%+v was granted something on %q", pr, s)
			}
		}
		if r.CanSubscribe("#") {
			t.Errorf("%+v may subscribe to #", pr)
		}
	}

	var nilRights *Rights
	if nilRights.CanPublish("a") || nilRights.CanSubscribe("a") || nilRights.CanReceive("a") {
		t.Error("nil *Rights allowed something")
	}
	var nilPolicy *Policy
	if r := nilPolicy.Compile(device); r.CanPublish("private/abc/up/x") {
		t.Error("nil *Policy granted a publish")
	}
}

func TestNewRejectsBadRules(t *testing.T) {
	dev := Selector{Kind: identity.KindDevice}
	tests := []struct {
		rule Rule
		want string
	}{
		{Rule{Who: Selector{Kind: "robot"}, Pattern: "a", Access: Read}, `kind "robot"`},
		{Rule{Who: Selector{Kind: identity.KindDevice, Role: identity.RoleReader}, Pattern: "a", Access: Read}, "devices have no roles"},
		{Rule{Who: Selector{Kind: identity.KindService, Role: "admin"}, Pattern: "a", Access: Read}, `role "admin"`},
		{Rule{Who: dev, Pattern: "a", Access: 0}, "access 0"},
		{Rule{Who: dev, Pattern: "a", Access: 4}, "access 4"},
		{Rule{Who: dev, Pattern: "", Access: Read}, "empty"},
		{Rule{Who: dev, Pattern: "a#", Access: Read}, "not a valid MQTT topic filter"},
		{Rule{Who: dev, Pattern: "#/a", Access: Read}, "not a valid MQTT topic filter"},
		{Rule{Who: dev, Pattern: "a/+b", Access: Read}, "not a valid MQTT topic filter"},
		{Rule{Who: dev, Pattern: "a/\x00", Access: Read}, "not a valid MQTT topic filter"},
		{Rule{Who: dev, Pattern: "private/dev${id}/#", Access: Read}, "whole level"},
		{Rule{Who: dev, Pattern: "private/${id}x/#", Access: Read}, "whole level"},
		{Rule{Who: dev, Pattern: "private/${device.id}/#", Access: Read}, "the only variable is ${id}"},
		{Rule{Who: dev, Pattern: "private/${idd}/#", Access: Read}, "the only variable is ${id}"},
		{Rule{Who: dev, Pattern: "$SYS/#", Access: Read}, "reserved to the broker"},
		{Rule{Who: dev, Pattern: "$share/g/a", Access: Read}, "reserved to the broker"},
	}
	for _, tt := range tests {
		rules := append(DefaultRules(), tt.rule)
		_, err := New(rules)
		if err == nil {
			t.Errorf("New accepted %s", tt.rule)
			continue
		}
		if !errors.Is(err, ErrInvalidRule) {
			t.Errorf("New(%s) error %v does not wrap ErrInvalidRule", tt.rule, err)
		}
		// The error names the rule by index and content, and says what is wrong.
		wantIndex := fmt.Sprintf("rule %d ", len(DefaultRules()))
		if !strings.Contains(err.Error(), wantIndex) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%s) error = %q, want it to contain %q and %q", tt.rule, err, wantIndex, tt.want)
		}
	}
}

func TestVariablePlacement(t *testing.T) {
	p, err := New([]Rule{
		{Who: Selector{Kind: identity.KindDevice}, Pattern: "${id}", Access: Write},
		{Who: Selector{Kind: identity.KindDevice}, Pattern: "shadow/${id}/${id}/+", Access: Read},
		{Who: Selector{Kind: identity.KindService}, Pattern: "svc/${id}/#", Access: ReadWrite},
	})
	if err != nil {
		t.Fatal(err)
	}
	d := p.Compile(device)
	if !d.CanPublish("abc") || d.CanPublish("abd") {
		t.Error("a pattern that is just ${id} should match the ID only")
	}
	if !d.CanSubscribe("shadow/abc/abc/+") || d.CanSubscribe("shadow/abc/x/+") {
		t.Error("every ${id} level should be substituted")
	}
	// A Role-less selector applies to every service role.
	for _, svc := range []identity.Principal{reader, commander} {
		r := p.Compile(svc)
		if !r.CanPublish("svc/"+svc.ID+"/x") || r.CanPublish("svc/other/x") {
			t.Errorf("%s: service variable not substituted", svc)
		}
	}
}

func TestNewCopiesRules(t *testing.T) {
	rules := DefaultRules()
	p, err := New(rules)
	if err != nil {
		t.Fatal(err)
	}
	rules[0].Pattern = "#"
	if p.Compile(device).CanSubscribe("#") {
		t.Error("mutating the caller's slice changed the policy")
	}
}

func TestChecksDoNotAllocate(t *testing.T) {
	r := defaultPolicy(t).Compile(device)
	s := defaultPolicy(t).Compile(reader)
	allocs := testing.AllocsPerRun(100, func() {
		r.CanPublish("private/abc/up/telemetry")
		r.CanSubscribe("private/abc/down/+")
		r.CanSubscribe("private/+/up/#")
		r.CanReceive("private/abc/down/cmd")
		s.CanSubscribe("$share/relay/fleet/+/up/#")
		Matches("a/+/#", "a/b/c")
		Covers("a/#", "a/+/c")
	})
	if allocs != 0 {
		t.Errorf("checks allocated %.0f times per run; want 0", allocs)
	}
}

func BenchmarkCanPublish(b *testing.B) {
	r := defaultPolicy(b).Compile(device)
	for b.Loop() {
		r.CanPublish("private/abc/up/telemetry")
	}
}

func BenchmarkCanSubscribe(b *testing.B) {
	r := defaultPolicy(b).Compile(reader)
	for b.Loop() {
		r.CanSubscribe("$share/relay/fleet/+/up/#")
	}
}

func TestQuarantinedRights(t *testing.T) {
	r := Quarantined("0badf00d")
	for _, topic := range []string{"private/0badf00d/ota/get", "private/0badf00d/ota/status", "private/0badf00d/cert/csr"} {
		if !r.CanPublish(topic) {
			t.Errorf("a quarantined device cannot publish %s", topic)
		}
	}
	for _, topic := range []string{"private/0badf00d/up/telemetry", "private/0badf00d/ota/block", "private/0badf00d/state", "fleet/0badf00d/up/x"} {
		if r.CanPublish(topic) {
			t.Errorf("a quarantined device may publish %s", topic)
		}
	}
	for _, filter := range []string{"private/0badf00d/ota/notify", "private/0badf00d/ota/block", "private/0badf00d/cert/new"} {
		if !r.CanSubscribe(filter) {
			t.Errorf("a quarantined device cannot read %s", filter)
		}
	}
	for _, filter := range []string{"private/0badf00d/#", "private/0badf00d/down/cmd", "private/0badf00d/ota/#"} {
		if r.CanSubscribe(filter) {
			t.Errorf("a quarantined device may subscribe %s", filter)
		}
	}
	if r := Quarantined("../x"); r.CanPublish("private/../x/ota/get") {
		t.Error("an invalid ID got rights")
	}
}

// TestDeviceWritesFollowTheProtocols ties the device rules to the wire
// protocols: a device may publish exactly the device-to-Warden topics that
// otaproto, enrollproto and commandproto define, never the Warden-to-device
// ones.
func TestDeviceWritesFollowTheProtocols(t *testing.T) {
	r := defaultPolicy(t).Compile(device)
	id := device.ID
	for _, topic := range []string{
		otaproto.Topic(id, otaproto.TopicGet), otaproto.Topic(id, otaproto.TopicStatus),
		enrollproto.Topic(id, enrollproto.ChannelCSR), enrollproto.Topic(id, enrollproto.ChannelClaim),
		commandproto.ResultTopic(id),
	} {
		if !r.CanPublish(topic) {
			t.Errorf("a device may not publish its own %q", topic)
		}
	}
	for _, topic := range []string{
		otaproto.Topic(id, otaproto.TopicNotify), otaproto.Topic(id, otaproto.TopicBlock),
		enrollproto.Topic(id, enrollproto.ChannelNew), enrollproto.Topic(id, enrollproto.ChannelClaimResult),
		commandproto.CommandTopic(id),
	} {
		if r.CanPublish(topic) {
			t.Errorf("a device may publish %q, which only Warden writes", topic)
		}
		if !r.CanReceive(topic) {
			t.Errorf("a device may not receive its own %q", topic)
		}
	}
}
