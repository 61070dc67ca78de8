package flood

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/warden-iot/warden/internal/mqttattack"
	"github.com/warden-iot/warden/internal/wardentest"
)

// maxDeviceSubscriptions and maxTopicLevels are internal/broker's bounds
// (defense.go).
const (
	maxDeviceSubscriptions = 1000
	maxTopicLevels         = 128
)

// ack writes pkt and returns the reason codes of the SUBACK or PUBACK
// answering packet ID id, skipping anything else the broker sends.
func ack(t *testing.T, conn net.Conn, pkt []byte, id uint16) []byte {
	t.Helper()
	if _, err := conn.Write(pkt); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	for {
		cp, err := packets.ReadPacket(conn)
		if err != nil {
			t.Fatalf("waiting for the ack of packet %d: %v", id, err)
		}
		switch p := cp.Content.(type) {
		case *packets.Suback:
			if p.PacketID == id {
				return p.Reasons
			}
		case *packets.Puback:
			if p.PacketID == id {
				return []byte{p.ReasonCode}
			}
		}
	}
}

// TestDeepTopicsAndSubscriptionFloodsAreBounded sends what is valid MQTT
// but costly from an authenticated device: 30,000-level filters, retained
// 10,000-level publishes, and thousands of subscriptions in one SUBSCRIBE
// and across many.
//
// Threat: one device (or a stolen device key) exhausts the broker's CPU
// and memory. mochi's topic tree stores a topic of L levels in O(L^2) time
// with a node per level: before the bound, each 60 KB SUBSCRIBE cost ~6 s
// of CPU and ~19 MB, and each retained 10,000-level publish ~0.3 s; and
// subscriptions (~1.5 KB each, 2,000 per packet) had no bound at all.
// Control: maxTopicLevels (128) in securityHook.OnACLCheck and the will
// check in OnConnect, maxDeviceSubscriptions (1,000) in
// securityHook.OnSubscribe (internal/broker/defense.go, hook.go).
// Asserts: deep filters and publishes are refused (SUBACK/PUBACK 0x87)
// quickly, counted in warden_mqtt_acl_denials_total and audited with
// reason topic-too-deep; a 128-level filter is still granted; filters
// beyond the quota are refused (SUBACK 0x8F), counted in
// warden_mqtt_subscriptions_refused_total{reason="quota"} and audited
// (subscription-quota), while renewals pass; the heap grows by less than
// 64 MiB; the control group and the attacker's own connection keep working.
func TestDeepTopicsAndSubscriptionFloodsAreBounded(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	devs := s.ProvisionDevices(4)
	ctl := wardentest.StartControlGroup(t, s, devs[:2], 50*time.Millisecond)
	mallory, hoarder := devs[2], devs[3]
	mc := attacker(t, s, mallory, 30)
	heapBefore := s.Metric(t, "go_memstats_heap_inuse_bytes")
	readBefore := s.Metric(t, "warden_mqtt_acl_denials_total", `action="read"`)
	pubBefore := s.Metric(t, "warden_mqtt_acl_denials_total", `action="publish"`)

	// Deep filters and retained publishes, each under its own prefix so that
	// no two share a path in the tree.
	deep := scale(20, 100)
	start := time.Now()
	id := uint16(1)
	for i := range deep {
		codes := ack(t, mc, mqttattack.DeepSubscribe(id, fmt.Sprintf("private/%s/down/deep%d", mallory.ID, i), 30_000), id)
		if len(codes) != 1 || codes[0] != 0x87 {
			t.Fatalf("30,000-level filter %d: SUBACK %x, want 87 (refused)", i, codes)
		}
		id++
		pub := mqttattack.Publish(mqttattack.DeepTopic(fmt.Sprintf("private/%s/up/deep%d", mallory.ID, i), mqttattack.Levels), 1, id, []byte("x"))
		pub[0] |= 0x01 // retained: mochi would store it in the tree
		if codes := ack(t, mc, pub, id); codes[0] != 0x87 {
			t.Fatalf("retained 10,000-level publish %d: PUBACK %x, want 87 (refused)", i, codes)
		}
		id++
	}
	took := time.Since(start)
	t.Logf("%d deep filters and %d deep retained publishes refused in %v", deep, deep, took)
	if took > 10*time.Second {
		t.Errorf("refusing deep topics took %v: they reach the topic tree", took)
	}
	wardentest.Eventually(t, 3*time.Second, "deep topics counted as ACL denials", func() bool {
		return s.Metric(t, "warden_mqtt_acl_denials_total", `action="read"`)-readBefore >= float64(deep) &&
			s.Metric(t, "warden_mqtt_acl_denials_total", `action="publish"`)-pubBefore >= float64(deep)
	})
	for _, action := range []string{"mqtt.read", "mqtt.publish"} {
		if !s.AuditContains(`"action":"`+action+`"`, `"outcome":"denied"`, `"actor":"device:`+mallory.ID+`"`, `"reason":"topic-too-deep"`) {
			t.Errorf("no %s audit line with reason topic-too-deep", action)
		}
	}

	// The bound is a bound, not a ban: 128 levels are fine, 129 are not.
	boundary := "private/" + mallory.ID + "/down" + strings.Repeat("/a", maxTopicLevels-3)
	if codes := ack(t, mc, mqttattack.Subscribe(id, 0, boundary), id); codes[0] != 0 {
		t.Errorf("a %d-level filter: SUBACK %x, want granted", maxTopicLevels, codes)
	}
	id++
	if codes := ack(t, mc, mqttattack.Subscribe(id, 0, boundary+"/a"), id); codes[0] != 0x87 {
		t.Errorf("a %d-level filter: SUBACK %x, want 87", maxTopicLevels+1, codes)
	}
	id++

	// Thousands of subscriptions: 3,000 in packets of 500, and then one
	// packet of 2,000, from another device (audit lines are sampled per
	// client, and mallory has used its share).
	hc := attacker(t, s, hoarder, 30)
	down := "private/" + hoarder.ID + "/down"
	if codes := ack(t, hc, mqttattack.Subscribe(id, 0, down+"/held"), id); codes[0] != 0 {
		t.Fatalf("first subscription: SUBACK %x", codes)
	}
	id++
	quotaBefore := s.Metric(t, "warden_mqtt_subscriptions_refused_total", `reason="quota"`)
	granted, refused := 1, 0 // one filter is held
	for p := range 6 {
		codes := ack(t, hc, mqttattack.ManySubscriptions(id, fmt.Sprintf("%s/q%d", down, p), 500), id)
		id++
		for _, c := range codes {
			switch c {
			case 0:
				granted++
			case 0x8F:
				refused++
			default:
				t.Fatalf("SUBACK code %x", c)
			}
		}
	}
	codes := ack(t, hc, mqttattack.ManySubscriptions(id, down+"/one", 2000), id)
	id++
	for _, c := range codes {
		if c != 0x8F {
			t.Fatalf("a full device got a filter granted: %x", c)
		}
		refused++
	}
	t.Logf("subscriptions: %d granted, %d refused", granted, refused)
	if granted != maxDeviceSubscriptions || refused != 3000+2000+1-maxDeviceSubscriptions {
		t.Errorf("%d granted and %d refused, want the quota of %d granted and the rest refused", granted, refused, maxDeviceSubscriptions)
	}
	// Renewing a held filter is not a new subscription.
	if codes := ack(t, hc, mqttattack.Subscribe(id, 1, down+"/q0/7"), id); codes[0] != 1 {
		t.Errorf("renewing a held filter at a full quota: SUBACK %x, want granted at QoS 1", codes)
	}
	wardentest.Eventually(t, 3*time.Second, "refused subscriptions counted", func() bool {
		return s.Metric(t, "warden_mqtt_subscriptions_refused_total", `reason="quota"`)-quotaBefore == float64(refused)
	})
	if !s.AuditContains(`"action":"mqtt.subscribe"`, `"outcome":"denied"`, `"actor":"device:`+hoarder.ID+`"`, `"reason":"subscription-quota"`) {
		t.Error("no mqtt.subscribe audit line with reason subscription-quota")
	}

	heapAfter := s.Metric(t, "go_memstats_heap_inuse_bytes")
	t.Logf("broker heap in use: %.1f MiB before, %.1f MiB after", heapBefore/(1<<20), heapAfter/(1<<20))
	if heapAfter-heapBefore > 64<<20 {
		t.Errorf("the broker's heap grew by %.0f MiB", (heapAfter-heapBefore)/(1<<20))
	}
	if !alive(mc) || !alive(hc) {
		t.Error("an attacker's connection no longer works: the bounds should refuse, not disconnect")
	}
	controlOK(t, ctl)
	healthy(t, s)
}
