package relay

import (
	"context"
	"errors"
	"testing"

	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/identity"
)

type sent struct {
	topic string
	props map[string]string
}

type fakePub struct{ got []sent }

func (f *fakePub) Publish(topic string, payload []byte, qos byte, props ...broker.Property) error {
	m := map[string]string{}
	for _, p := range props {
		m[p.Key] = p.Value
	}
	f.got = append(f.got, sent{topic, m})
	return nil
}

type dir map[string]bool

func (d dir) DeviceExists(_ context.Context, id string) (bool, error) {
	if id == "broken" {
		return false, errors.New("db down")
	}
	return d[id], nil
}

func TestRoute(t *testing.T) {
	dev := identity.Principal{Kind: identity.KindDevice, ID: "abc"}
	cmd := identity.Principal{Kind: identity.KindService, ID: "ops", Role: identity.RoleCommander}
	rdr := identity.Principal{Kind: identity.KindService, ID: "dash", Role: identity.RoleReader}
	tests := []struct {
		name    string
		from    identity.Principal
		topic   string
		verdict broker.Verdict
		wantPub string
	}{
		{"uplink relayed", dev, "private/abc/up/telemetry", broker.Deliver, "fleet/abc/up/telemetry"},
		{"nested channel", dev, "private/abc/up/a/b", broker.Deliver, "fleet/abc/up/a/b"},
		{"device's other topics untouched", dev, "private/abc/state", broker.Deliver, ""},
		{"empty channel not relayed", dev, "private/abc/up/", broker.Deliver, ""},
		{"foreign subtree refused", dev, "private/xyz/up/t", broker.Refuse, ""},
		{"downlink forwarded and consumed", cmd, "fleet/abc/down/cmd", broker.Consume, "private/abc/down/cmd"},
		{"downlink to unknown device refused", cmd, "fleet/nope/down/cmd", broker.Refuse, ""},
		{"registry failure refused", cmd, "fleet/broken/down/cmd", broker.Refuse, ""},
		{"reader cannot command", rdr, "fleet/abc/down/cmd", broker.Refuse, ""},
		{"invalid id ignored", cmd, "fleet/+/down/cmd", broker.Deliver, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &fakePub{}
			r := New(p, dir{"abc": true}, nil, nil, nil, nil)
			v, _ := r.Route(context.Background(), broker.Origin{Principal: tt.from}, tt.topic, []byte("x"), 1)
			if v != tt.verdict {
				t.Errorf("verdict = %v, want %v", v, tt.verdict)
			}
			switch {
			case tt.wantPub == "" && len(p.got) != 0:
				t.Errorf("published %v, want nothing", p.got)
			case tt.wantPub != "" && (len(p.got) != 1 || p.got[0].topic != tt.wantPub):
				t.Errorf("published %v, want %q", p.got, tt.wantPub)
			}
		})
	}
}

func TestUplinkCarriesDeviceMetadata(t *testing.T) {
	p := &fakePub{}
	r := New(p, dir{}, nil, nil, nil, nil)
	r.Route(context.Background(), broker.Origin{Principal: identity.Principal{Kind: identity.KindDevice, ID: "abc"}}, "private/abc/up/t", nil, 0)
	if len(p.got) != 1 || p.got[0].props["warden-device"] != "abc" || p.got[0].props["warden-received"] == "" {
		t.Fatalf("props = %+v", p.got)
	}
}

func TestPlainOriginMustSeal(t *testing.T) {
	p := &fakePub{}
	r := New(p, dir{"abc": true}, nil, nil, nil, nil)
	dev := broker.Origin{Principal: identity.Principal{Kind: identity.KindDevice, ID: "abc"}, Plain: true}
	for _, topic := range []string{"private/abc/state", "private/abc/down/x"} {
		if v, _ := r.Route(context.Background(), dev, topic, []byte("plain"), 1); v != broker.Refuse {
			t.Errorf("plain publish to %s: verdict %v, want Refuse", topic, v)
		}
	}
	if len(p.got) != 0 {
		t.Fatalf("plaintext relayed: %v", p.got)
	}
}

func TestTapAndSendDown(t *testing.T) {
	p := &fakePub{}
	r := New(p, dir{"abc": true}, nil, nil, nil, nil)
	var tapped []string
	r.Tap("cmd-result", func(_ context.Context, id string, body []byte) { tapped = append(tapped, id+":"+string(body)) })
	dev := broker.Origin{Principal: identity.Principal{Kind: identity.KindDevice, ID: "abc"}}
	r.Route(context.Background(), dev, "private/abc/up/cmd-result", []byte("r1"), 1)
	r.Route(context.Background(), dev, "private/abc/up/telemetry", []byte("t"), 1)
	if len(tapped) != 1 || tapped[0] != "abc:r1" {
		t.Fatalf("tapped %v, want only the cmd-result uplink", tapped)
	}
	if len(p.got) != 2 || p.got[0].topic != "fleet/abc/up/cmd-result" {
		t.Fatalf("a tapped uplink must still reach fleet/: %v", p.got)
	}
	if err := r.SendDown(context.Background(), "abc", "cmd", []byte("c"), 1, broker.Property{Key: "warden-command", Value: "x"}); err != nil {
		t.Fatal(err)
	}
	if last := p.got[len(p.got)-1]; last.topic != "private/abc/down/cmd" || last.props["warden-command"] != "x" {
		t.Fatalf("SendDown published %+v", last)
	}
}
