package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/warden-iot/warden/internal/wardentest"
)

// A back-end service reading fleet/# gets its own, deeper, queue and
// in-flight limit (limits.service_*; third_party/mochi patch 2): with a
// device's limits cut to 2 messages in flight (which is all the reader got
// before the patch), a reader that has not acknowledged anything yet still
// receives a burst of 200 QoS 1 messages.
func TestServiceGetsDeepQueues(t *testing.T) {
	s := wardentest.Start(t, t.TempDir(), "--max-inflight", "2", "--client-send-queue", "8", "--service-max-inflight", "1000", "--service-send-queue", "1000")
	dev := s.AddDevice("deep-q-dev")
	svc := s.AddService("deep-q-reader", "reader")

	// The reader: raw MQTT 5 so that it can hold back its PUBACKs.
	cert, pool := svc.TLS(t)
	conn, err := wardentest.DialTLS(t, s.MQTTS, &cert, pool)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	recvMax := uint16(65535)
	if _, err := (&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: svc.ID, CleanStart: true, KeepAlive: 60,
		Properties: &packets.Properties{ReceiveMaximum: &recvMax}}).WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	got := 0
	read := func() *packets.ControlPacket {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		cp, err := packets.ReadPacket(conn)
		if err != nil {
			t.Fatalf("read after %d messages: %v", got, err)
		}
		return cp
	}
	if ca, ok := read().Content.(*packets.Connack); !ok || ca.ReasonCode != 0 {
		t.Fatalf("reader not connected: %+v", ca)
	}
	if _, err := (&packets.Subscribe{PacketID: 1, Subscriptions: []packets.SubOptions{{Topic: "fleet/#", QoS: 1}}}).WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	if sa, ok := read().Content.(*packets.Suback); !ok || len(sa.Reasons) != 1 || sa.Reasons[0] != 1 {
		t.Fatalf("SUBACK %+v", sa)
	}

	rc := wardentest.MustConnectRaw(t, s.MQTTS, dev, wardentest.RawOpts{Clean: true})
	const n = 200
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		if _, err := rc.Client.Publish(ctx, &paho.Publish{Topic: "private/deep-q-dev/up/burst", QoS: 1, Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	for got < n {
		cp := read()
		if p, ok := cp.Content.(*packets.Publish); ok && p.Topic == "fleet/deep-q-dev/up/burst" {
			got++
		}
	}
	if got != n {
		t.Fatalf("the reader received %d of %d without acknowledging", got, n)
	}
}

// Go profiles are served on the loopback http listener only when asked
// for (--pprof), so that where time and memory go can be measured on a
// running server.
func TestProfilesOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		var extra []string
		if on {
			extra = []string{"--pprof"}
		}
		s := wardentest.Start(t, t.TempDir(), extra...)
		resp, err := http.Get("http://" + s.HTTP + "/debug/pprof/heap?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := resp.StatusCode == http.StatusOK && strings.Contains(string(body), "heap profile"); got != on {
			t.Errorf("--pprof %v: GET /debug/pprof/heap = %d", on, resp.StatusCode)
		}
		s.Stop()
	}
}
