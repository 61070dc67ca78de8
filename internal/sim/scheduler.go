package sim

import (
	"container/heap"
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// scheduler decides when each device's next message is due: one goroutine
// and one timer for the whole fleet, instead of a ticker per device. Due
// devices go to work, which a bounded pool of publishers reads.
type scheduler struct {
	interval time.Duration
	work     chan *simDevice // closed when run returns

	mu      sync.Mutex
	due     dueHeap
	stopped bool
	wake    chan struct{} // a device was added or stop was called
	halt    context.CancelFunc
	ctx     context.Context
}

type dueEntry struct {
	at time.Time // carries a monotonic reading
	d  *simDevice
}

type dueHeap []dueEntry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueEntry)) }
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = dueEntry{}
	*h = old[:len(old)-1]
	return e
}

func newScheduler(interval time.Duration, queue int) *scheduler {
	ctx, halt := context.WithCancel(context.Background())
	return &scheduler{
		interval: interval,
		work:     make(chan *simDevice, queue),
		wake:     make(chan struct{}, 1),
		ctx:      ctx,
		halt:     halt,
	}
}

// add schedules d's first message at a random point of the next interval,
// so that devices connected together do not publish together.
func (s *scheduler) add(d *simDevice) {
	at := time.Now().Add(time.Duration(rand.Int64N(int64(s.interval))))
	s.mu.Lock()
	if !s.stopped {
		heap.Push(&s.due, dueEntry{at: at, d: d})
	}
	s.mu.Unlock()
	s.poke()
}

func (s *scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// stop ends run; publishers then drain work and return.
func (s *scheduler) stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	s.halt()
}

// run dispatches due devices until stop or ctx ends, then closes work.
// dispatch returns false when it gave up because its context ended.
func (s *scheduler) run(ctx context.Context, dispatch func(context.Context, *simDevice) bool) {
	defer close(s.work)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		if len(s.due) == 0 {
			s.mu.Unlock()
			select {
			case <-s.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		e := s.due[0]
		now := time.Now()
		if wait := e.at.Sub(now); wait > 0 {
			s.mu.Unlock()
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-s.wake:
			case <-ctx.Done():
				return
			}
			continue
		}
		// Fixed rate, without bursts to catch up: a device that fell a
		// whole interval behind starts afresh from now.
		next := e.at.Add(s.interval)
		if !next.After(now) {
			next = now.Add(s.interval)
		}
		s.due[0].at = next
		heap.Fix(&s.due, 0)
		s.mu.Unlock()
		if !dispatch(ctx, e.d) {
			return
		}
	}
}
