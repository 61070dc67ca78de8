package audit

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"
)

// memRecorder keeps events.
type memRecorder struct {
	mu     sync.Mutex
	events []Event
}

func (m *memRecorder) Record(_ context.Context, e Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events = append(m.events, e)
}

func (m *memRecorder) take() []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.events
	m.events = nil
	return out
}

// A flood of one action's refusals passes its burst, then its rate; the
// rest is counted and summarised once, and other events are untouched.
func TestLimiterBoundsRefusalsAndSaysHowMany(t *testing.T) {
	mem := new(memRecorder)
	now := time.Date(2026, 11, 22, 4, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	l := NewLimiter(mem, LimiterOptions{PerSecond: 2, Burst: 5, SummaryEvery: time.Hour, Now: clock})
	defer l.Close()
	ctx := context.Background()

	for i := range 50 {
		l.Record(ctx, Event{Action: "est.enroll", Outcome: "denied", Reason: "bad-secret", Details: map[string]string{"i": strconv.Itoa(i)}})
		l.Record(ctx, Event{Action: "device.revoke", Outcome: "done"}) // never held back
	}
	l.Record(ctx, Event{Action: "ota.http.check", Outcome: "failed"}) // its own bucket
	advance(time.Second)                                              // two more refusals may pass
	for range 10 {
		l.Record(ctx, Event{Action: "est.enroll", Outcome: "denied", Reason: "bad-secret"})
	}
	got := mem.take()
	count := map[string]int{}
	for _, e := range got {
		count[e.Action+"/"+e.Outcome]++
	}
	if count["est.enroll/denied"] != 5+2 || count["device.revoke/done"] != 50 || count["ota.http.check/failed"] != 1 {
		t.Fatalf("passed %v, want 7 refusals of est.enroll, 50 revocations, 1 OTA failure", count)
	}

	// A refusal for another reason has a bucket of its own: the flood
	// of bad secrets does not hide it.
	l.Record(ctx, Event{Action: "est.enroll", Outcome: "denied", Reason: "device-revoked"})
	if got := mem.take(); len(got) != 1 || got[0].Reason != "device-revoked" {
		t.Fatalf("a refusal for another reason: passed %+v", got)
	}

	l.Flush()
	sum := mem.take()
	if len(sum) != 1 {
		t.Fatalf("summaries %+v, want one", sum)
	}
	s := sum[0]
	if s.Action != SuppressedAction || s.Subject != "est.enroll" || s.Details["reason"] != "bad-secret" || s.Details["count"] != "53" ||
		s.Details["first"] != "2026-11-22T04:00:00Z" || s.Details["last"] != "2026-11-22T04:00:01Z" {
		t.Errorf("summary %+v, want 53 est.enroll bad-secret refusals from 04:00:00 to 04:00:01", s)
	}
	l.Flush()
	if extra := mem.take(); len(extra) != 0 {
		t.Errorf("a second flush with nothing held back recorded %+v", extra)
	}
}

// Actions past MaxActions share one bucket, so made-up action names
// cannot grow the Limiter without bound.
func TestLimiterBoundsItsActions(t *testing.T) {
	mem := new(memRecorder)
	l := NewLimiter(mem, LimiterOptions{PerSecond: 1, Burst: 1, SummaryEvery: time.Hour, MaxActions: 3})
	defer l.Close()
	for i := range 100 {
		l.Record(context.Background(), Event{Action: "ota.mqtt." + strconv.Itoa(i), Outcome: "denied"})
	}
	l.mu.Lock()
	n := len(l.state)
	l.mu.Unlock()
	if n != 4 { // three actions and "other"
		t.Errorf("%d actions tracked, want 4", n)
	}
	if passed := len(mem.take()); passed != 4 {
		t.Errorf("%d refusals passed, want one per bucket (4)", passed)
	}
	l.Flush()
	sum := mem.take()
	if len(sum) != 1 || sum[0].Subject != "other" || sum[0].Details["count"] != "96" {
		t.Errorf("summaries %+v, want 96 under other", sum)
	}
}

// Close records what is still held back, once, and the timer summarises
// on its own.
func TestLimiterSummarisesOnCloseAndOnItsTimer(t *testing.T) {
	mem := new(memRecorder)
	l := NewLimiter(mem, LimiterOptions{PerSecond: 1, Burst: 1, SummaryEvery: 20 * time.Millisecond})
	for range 3 {
		l.Record(context.Background(), Event{Action: "x", Outcome: "denied"})
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs := mem.take()
		found := false
		for _, e := range evs {
			found = found || e.Action == SuppressedAction
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the timer never summarised")
		}
		time.Sleep(5 * time.Millisecond)
	}
	l.Record(context.Background(), Event{Action: "x", Outcome: "denied"})
	l.Close()
	l.Close()
	evs := mem.take()
	if len(evs) != 1 || evs[0].Action != SuppressedAction || evs[0].Details["count"] != "1" {
		t.Errorf("after Close: %+v, want one summary of 1", evs)
	}
}
