package sim

import (
	"context"
	"sync"
	"testing"
	"time"
)

// One goroutine keeps every device on its own fixed-rate schedule, and
// stop ends it and closes the work queue.
func TestScheduler(t *testing.T) {
	const interval = 40 * time.Millisecond
	s := newScheduler(interval, 4)
	devs := make([]*simDevice, 20)
	for i := range devs {
		devs[i] = &simDevice{}
	}
	var mu sync.Mutex
	times := map[*simDevice][]time.Time{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.run(context.Background(), func(ctx context.Context, d *simDevice) bool {
			mu.Lock()
			times[d] = append(times[d], time.Now())
			mu.Unlock()
			return true
		})
	}()
	start := time.Now()
	for _, d := range devs {
		s.add(d)
	}
	time.Sleep(10*interval + interval/2)
	s.stop()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("run did not return after stop")
	}
	if _, open := <-s.work; open {
		t.Error("the work queue is still open")
	}
	s.add(&simDevice{}) // harmless after stop

	mu.Lock()
	defer mu.Unlock()
	for i, d := range devs {
		ts := times[d]
		// The first message comes within the first interval, then one per
		// interval: about 10 in 10.5 intervals.
		if len(ts) < 9 || len(ts) > 12 {
			t.Errorf("device %d: %d messages in %v", i, len(ts), 10*interval)
			continue
		}
		if ts[0].Sub(start) > interval+10*time.Millisecond {
			t.Errorf("device %d: first message after %v", i, ts[0].Sub(start))
		}
		for j := 1; j < len(ts); j++ {
			if gap := ts[j].Sub(ts[j-1]); gap < interval/2 {
				t.Errorf("device %d: messages %v apart", i, gap)
			}
		}
	}
}

// A dispatch that gives up (its context ended) ends run.
func TestSchedulerContext(t *testing.T) {
	s := newScheduler(time.Millisecond, 1)
	ctx, cancel := context.WithCancel(context.Background())
	s.add(&simDevice{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.run(ctx, func(ctx context.Context, d *simDevice) bool {
			cancel()
			<-ctx.Done()
			return false
		})
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("run did not return when its context ended")
	}
}
