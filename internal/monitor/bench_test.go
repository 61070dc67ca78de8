package monitor

import (
	"fmt"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/events"
)

// The publish path runs on every connection's read loop: it must not
// allocate, neither in steady state nor when a detector fires (the finding
// is queued by value) nor when the queue is full (dropped and counted).
func TestObservePublishedDoesNotAllocate(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	e := events.Event{Kind: events.Published, At: t0, Device: "dev-1", Topic: "private/dev-1/up/telemetry", Size: 120}
	h.m.Observe(e) // the device's state is created once

	steady := testing.AllocsPerRun(2000, func() {
		e.At = e.At.Add(time.Second)
		h.m.Observe(e)
	})
	if steady != 0 {
		t.Errorf("Observe(Published) allocates %v times per call in steady state", steady)
	}

	// Learn a baseline, then flood: findings are queued, then dropped.
	for range 40 {
		e.At = e.At.Add(time.Minute)
		h.m.Observe(e)
	}
	e.Size = 100_000
	flood := testing.AllocsPerRun(20_000, func() {
		e.At = e.At.Add(time.Millisecond)
		h.m.Observe(e)
	})
	if flood != 0 {
		t.Errorf("Observe(Published) allocates %v times per call while detectors fire", flood)
	}
	if len(h.m.queue) == 0 {
		t.Error("the flood raised no finding; the test measured nothing")
	}

	// Connects from one host and a disconnect do not allocate either.
	c := events.Event{Kind: events.Connected, At: e.At, Device: "dev-1", Remote: "192.0.2.1:4000"}
	d := events.Event{Kind: events.Disconnected, At: e.At, Device: "dev-1", Remote: "192.0.2.1:4000"}
	if n := testing.AllocsPerRun(1000, func() {
		c.At = c.At.Add(time.Hour)
		h.m.Observe(c)
		h.m.Observe(d)
	}); n != 0 {
		t.Errorf("Observe(Connected, Disconnected) allocates %v times", n)
	}
}

// BenchmarkObservePublished measures the publish path over a fleet of
// 10,000 devices, from one goroutine and from every processor at once.
func BenchmarkObservePublished(b *testing.B) {
	const fleet = 10_000
	ids := make([]string, fleet)
	for i := range ids {
		ids[i] = fmt.Sprintf("%08x", i)
	}
	setup := func(b *testing.B) *Monitor {
		h := newHarness(b, harnessOptions{})
		for _, id := range ids {
			h.m.Observe(events.Event{Kind: events.Published, At: t0, Device: id, Size: 100})
		}
		b.ReportAllocs()
		b.ResetTimer()
		return h.m
	}
	b.Run("serial", func(b *testing.B) {
		m := setup(b)
		at := t0
		for i := 0; b.Loop(); i++ {
			at = at.Add(time.Millisecond)
			m.Observe(events.Event{Kind: events.Published, At: at, Device: ids[i%fleet], Topic: "private/x/up/t", Size: 100 + i%100})
		}
	})
	b.Run("parallel", func(b *testing.B) {
		m := setup(b)
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			at := t0
			for pb.Next() {
				i++
				at = at.Add(time.Millisecond)
				m.Observe(events.Event{Kind: events.Published, At: at, Device: ids[(i*7919)%fleet], Topic: "private/x/up/t", Size: 100})
			}
		})
	})
}
