package stream

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/events"
)

func TestHubFansOutToMatchingSubscribers(t *testing.T) {
	h := NewHub(nil)
	a := h.Subscribe(func(d string) bool { return d == "dev-a" }, 4)
	defer a.Close()
	all := h.Subscribe(func(string) bool { return true }, 1)
	defer all.Close()

	h.Uplink(context.Background(), "dev-a", "telemetry", []byte(`{"t":21.5}`))
	h.Uplink(context.Background(), "dev-b", "raw", []byte{0xff, 0x00})
	h.Observe(events.Event{Kind: events.Disconnected, Device: "dev-a", At: time.Now(), Reason: "keepalive"})
	h.Observe(events.Event{Kind: events.Published, Device: "dev-a"}) // not a stream event

	got := drain(a)
	if len(got) != 2 || got[0].Type != TypeTelemetry || got[1].Type != TypeConnection {
		t.Fatalf("dev-a subscriber got %+v", got)
	}
	var tel Telemetry
	if err := json.Unmarshal(got[0].Data, &tel); err != nil || string(tel.Body) != `{"t":21.5}` || tel.Channel != "telemetry" {
		t.Fatalf("telemetry %s: %v", got[0].Data, err)
	}
	var conn Connection
	if err := json.Unmarshal(got[1].Data, &conn); err != nil || conn.Connected || conn.Reason != "keepalive" {
		t.Fatalf("connection %s: %v", got[1].Data, err)
	}
	// The catch-all subscriber's buffer of one kept the first event and
	// counted the rest as dropped.
	if got := drain(all); len(got) != 1 {
		t.Fatalf("catch-all got %d events", len(got))
	}
	if n := all.TakeDropped(); n != 2 {
		t.Fatalf("dropped %d, want 2", n)
	}
	if n := all.TakeDropped(); n != 0 {
		t.Fatalf("TakeDropped did not reset: %d", n)
	}
}

func TestBinaryUplinkIsBase64(t *testing.T) {
	h := NewHub(nil)
	s := h.Subscribe(func(string) bool { return true }, 1)
	defer s.Close()
	body := []byte{1, 2, 3}
	h.Uplink(context.Background(), "d", "bin", body)
	body[0] = 9 // the relay reuses its buffer: the event must have copied it
	var tel Telemetry
	if err := json.Unmarshal((<-s.C()).Data, &tel); err != nil || string(tel.BodyBase64) != "\x01\x02\x03" || tel.Body != nil {
		t.Fatalf("%+v %v", tel, err)
	}
}

func TestNobodyListening(t *testing.T) {
	h := NewHub(nil)
	s := h.Subscribe(func(string) bool { return true }, 1)
	s.Close()
	s.Close() // idempotent
	if h.wanted("d") {
		t.Fatal("a closed subscriber is still wanted")
	}
	body := []byte("x")
	if n := testing.AllocsPerRun(100, func() { h.Uplink(context.Background(), "d", "c", body) }); n != 0 {
		t.Fatalf("Uplink allocates %v times with nobody listening", n)
	}
}

func drain(s *Sub) []Event {
	var out []Event
	for {
		select {
		case e := <-s.C():
			out = append(out, e)
		default:
			return out
		}
	}
}
