package faults

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/internal/wardentest"
)

// Threat: a crash loses QoS 1 messages Warden already acknowledged: the
// device got its PUBACK and dropped the message, so a loss after that is
// silent and permanent (at-least-once broken).
//
// Control: the relay (internal/relay Relay.Route, called from the broker's
// OnPublish hook) republishes an uplink to fleet/<id>/up/... before mochi
// writes the device's PUBACK (third_party/mochi processPublish), and the
// delivery to a subscriber with a persistent session is put in its
// in-flight store (internal/broker sessionStore, bbolt) in the same call;
// committed pages survive a killed process. After a restart the session,
// its subscription and its in-flight messages are restored and resent.
//
// Kill points: during a burst from 4 devices (4 publishers each) to a
// reader service on a persistent session (clean start off, session expiry
// one hour, fleet/+/up/burst at QoS 1) that is (a) connected and reading,
// (b) disconnected, so that everything queues in its session; the server
// is killed once a share of the burst was acknowledged. After the restart
// the service reconnects (without subscribing again) and must receive
// every message whose PUBACK a device got; duplicates are allowed (QoS 1)
// and counted.
func TestKillDuringQoS1Burst(t *testing.T) {
	t.Parallel()
	for _, kp := range []struct {
		name    string
		offline bool
		killAt  int64
	}{
		{name: "service-online", killAt: 600},
		{name: "service-offline", offline: true, killAt: 400},
	} {
		t.Run(kp.name, func(t *testing.T) {
			n := startNode(t, "--publish-rate", "100000", "--publish-burst", "100000")
			svc := n.AddService("burst-reader", "reader")
			n.secrets.AddKeyFile(t, "service key", svc.Key)
			col := newCollectorState()
			col.connect(t, n.MQTTS, svc, "fleet/+/up/burst")
			if kp.offline {
				col.close()
			}
			const devices, publishers, perPublisher = 4, 4, 150
			dir := t.TempDir()
			ids := strings.Fields(n.mustCLI("device", "provision", "--count", fmt.Sprint(devices), "--out", dir))
			n.secrets.AddCredentialDir(t, dir)
			var clients []*wardentest.RawClient
			for _, id := range ids {
				clients = append(clients, wardentest.MustConnectRaw(t, n.MQTTS, creds(dir, id), wardentest.RawOpts{Clean: true}))
			}

			var mu sync.Mutex
			acked := map[string]bool{}
			var nAcked atomic.Int64
			var wg sync.WaitGroup
			burst, stopBurst := context.WithCancel(context.Background())
			defer stopBurst()
			for i, rc := range clients {
				for p := range publishers {
					wg.Go(func() {
						for s := range perPublisher {
							payload := fmt.Sprintf("%s/%d/%d", ids[i], p, s)
							ctx, cancel := context.WithTimeout(burst, 5*time.Second)
							pr, err := rc.Client.Publish(ctx, &paho.Publish{Topic: "private/" + ids[i] + "/up/burst", QoS: 1, Payload: []byte(payload)})
							cancel()
							if err != nil || pr == nil || pr.ReasonCode >= 0x80 {
								return // the server is gone: nothing after this was acknowledged
							}
							mu.Lock()
							acked[payload] = true
							mu.Unlock()
							nAcked.Add(1)
						}
					})
				}
			}
			if !poll(time.Minute, func() bool { return nAcked.Load() >= kp.killAt }) {
				t.Fatalf("only %d messages acknowledged", nAcked.Load())
			}
			n.kill()
			stopBurst() // what is still waiting for a PUBACK gets none
			wg.Wait()
			before := col.snapshot()
			mu.Lock()
			total := len(acked)
			mu.Unlock()
			t.Logf("killed after %d acknowledgements (%d in all); the service had received %d", kp.killAt, total, len(before))
			if total >= devices*publishers*perPublisher {
				t.Fatal("the burst finished before the kill")
			}

			n.restart()
			col.connect(t, n.MQTTS, svc, "")
			var missing []string
			wardentest.Eventually(t, 30*time.Second, "every acknowledged message to reach the service", func() bool {
				got := col.snapshot()
				missing = missing[:0]
				for p := range acked {
					if got[p] == 0 {
						missing = append(missing, p)
					}
				}
				return len(missing) == 0
			})
			got := col.snapshot()
			dups, extra := 0, 0
			for p, c := range got {
				dups += c - 1
				if !acked[p] {
					extra++ // sent, not acknowledged before the kill, delivered anyway: allowed
				}
			}
			t.Logf("acknowledged %d; received %d distinct (%d of them never acknowledged to the device), %d duplicates", total, len(got), extra, dups)
			// The restored subscription still works.
			rc := wardentest.MustConnectRaw(t, n.MQTTS, creds(dir, ids[0]), wardentest.RawOpts{Clean: true})
			if code, err := rc.Publish(t, "private/"+ids[0]+"/up/burst", []byte("after-restart"), 1); code != 0 || err != nil {
				t.Fatalf("publish after the restart: 0x%02x %v", code, err)
			}
			wardentest.Eventually(t, 10*time.Second, "a message after the restart", func() bool { return col.snapshot()["after-restart"] == 1 })
			// The resent backlog fitted the session: nothing dropped.
			if v := n.Metric(t, "warden_mqtt_messages_dropped_total"); v != 0 {
				t.Errorf("warden_mqtt_messages_dropped_total = %v after the restart, want 0", v)
			}
			n.checkAtRest()
		})
	}
}
