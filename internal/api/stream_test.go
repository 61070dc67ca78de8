package api

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/store"
)

// TestStream: an app's stream carries its own devices' telemetry and
// connections, and nothing of another user's device.
func TestStream(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		// The subscription starts inside the request: keep producing
		// until the stream has ended.
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			f.hub.Uplink(context.Background(), "dev-a1", "telemetry", []byte(`{"t":1}`))
			f.hub.Uplink(context.Background(), "dev-b1", "telemetry", []byte(`{"secret":true}`))
			f.hub.Observe(events.Event{Kind: events.Connected, Device: "dev-a2", At: time.Now()})
		}
	})
	w := f.do(req{method: "GET", path: "/v1/stream", token: "app"})
	close(stop)
	wg.Wait()
	body := w.Body.String()
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream answered %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	for _, want := range []string{"retry: 3000", "event: telemetry\ndata: {\"device\":\"dev-a1\",\"channel\":\"telemetry\"", `"body":{"t":1}`,
		"event: connection\ndata: {\"device\":\"dev-a2\",\"connected\":true"} {
		if !strings.Contains(body, want) {
			t.Errorf("stream lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "dev-b1") || strings.Contains(body, "secret") {
		t.Fatalf("an app's stream carried another user's device:\n%s", body)
	}
	// Naming another user's device is not found; unknown parameters are refused.
	if w := f.do(req{method: "GET", path: "/v1/stream?device=dev-b1", token: "app"}); w.Code != http.StatusNotFound {
		t.Fatalf("app stream of bob's device: %d", w.Code)
	}
	if w := f.do(req{method: "GET", path: "/v1/stream?devices=dev-a1", token: "admin"}); w.Code != http.StatusBadRequest {
		t.Fatalf("unknown parameter: %d", w.Code)
	}
}

func TestShowDeviceFirmware(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	var d DeviceDetail
	decode(t, f.do(req{method: "GET", path: "/v1/devices/dev-a1", token: "viewer"}), &d)
	if d.Firmware != nil {
		t.Fatalf("firmware %+v before any report", d.Firmware)
	}
	if err := f.st.SetDeviceFirmware(context.Background(), store.DeviceFirmware{DeviceID: "dev-a1", Version: "1.4.2",
		SecurityCounter: 3, ReportedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	decode(t, f.do(req{method: "GET", path: "/v1/devices/dev-a1", token: "viewer"}), &d)
	if d.Firmware == nil || d.Firmware.Version != "1.4.2" || d.Firmware.SecurityCounter != 3 {
		t.Fatalf("firmware %+v", d.Firmware)
	}
}
