package audit

import (
	"context"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter bounds the refusals a Recorder receives. A peer that sends bad
// requests as fast as it can (an EST enrollment guessed, an OTA download
// asked without an offer, a CONNECT with a revoked certificate) would
// otherwise add an audit line per request, and the audit log, which is
// fsynced and never rotated away, would grow with the attack. Each action's
// refusals (outcome "denied" or "failed") with each reason pass up to a
// burst, then at a steady rate; the ones beyond are held back and counted,
// and once per summary interval each action and reason with refusals held
// back gets one event of its own: action "audit.suppressed", subject the
// action, reason "rate-limited", details "reason" (the refusals'),
// "count", "first" and "last". Every other event passes untouched. A
// flood of one kind of refusal (garbage certificates) then does not hide
// a refusal of another kind (a revoked device trying again). The
// log stays bounded under attack and still says how much it left out; the
// components' metrics count every refusal.
type Limiter struct {
	next  Recorder
	opts  LimiterOptions
	mu    sync.Mutex
	state map[limitKey]*actionState // at most opts.MaxActions
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
}

// LimiterOptions configures a Limiter; zero fields take the defaults.
type LimiterOptions struct {
	// PerSecond and Burst bound each action's refusals (default 10 a
	// second, bursts of 100).
	PerSecond float64
	Burst     int
	// SummaryEvery is how often held-back refusals are summarised
	// (default one minute).
	SummaryEvery time.Duration
	// MaxActions bounds the actions and reasons tracked (default 256);
	// the refusals of further ones share one bucket, summarised under
	// "other".
	MaxActions int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Limiter defaults.
const (
	DefaultLimitPerSecond  = 10
	DefaultLimitBurst      = 100
	DefaultLimitSummary    = time.Minute
	DefaultLimitMaxActions = 256
)

// SuppressedAction is the action of the events that count refusals a
// Limiter held back.
const SuppressedAction = "audit.suppressed"

// limiterOtherAction is the subject under which refusals of actions past
// LimiterOptions.MaxActions are counted.
const limiterOtherAction = "other"

type limitKey struct{ action, reason string }

type actionState struct {
	bucket      *rate.Limiter
	held        int
	first, last time.Time
}

// NewLimiter returns a Limiter in front of next and starts its summary
// timer; Close stops it and records what is still held back.
func NewLimiter(next Recorder, o LimiterOptions) *Limiter {
	if o.PerSecond <= 0 {
		o.PerSecond = DefaultLimitPerSecond
	}
	if o.Burst <= 0 {
		o.Burst = DefaultLimitBurst
	}
	if o.SummaryEvery <= 0 {
		o.SummaryEvery = DefaultLimitSummary
	}
	if o.MaxActions <= 0 {
		o.MaxActions = DefaultLimitMaxActions
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	l := &Limiter{next: next, opts: o, state: map[limitKey]*actionState{}, stop: make(chan struct{}), done: make(chan struct{})}
	go l.summarise()
	return l
}

// Record passes e on, unless it is a refusal beyond its action's bound.
func (l *Limiter) Record(ctx context.Context, e Event) {
	if e.Outcome != "denied" && e.Outcome != "failed" {
		l.next.Record(ctx, e)
		return
	}
	now := l.opts.Now()
	l.mu.Lock()
	st := l.stateOf(limitKey{e.Action, e.Reason})
	if st.bucket.AllowN(now, 1) {
		l.mu.Unlock()
		l.next.Record(ctx, e)
		return
	}
	if st.held == 0 {
		st.first = now
	}
	st.held++
	st.last = now
	l.mu.Unlock()
}

// stateOf returns k's state, creating it; called with mu held.
func (l *Limiter) stateOf(k limitKey) *actionState {
	st, ok := l.state[k]
	if ok {
		return st
	}
	if len(l.state) >= l.opts.MaxActions {
		k = limitKey{action: limiterOtherAction}
		if st, ok := l.state[k]; ok {
			return st
		}
	}
	st = &actionState{bucket: rate.NewLimiter(rate.Limit(l.opts.PerSecond), l.opts.Burst)}
	l.state[k] = st
	return st
}

func (l *Limiter) summarise() {
	defer close(l.done)
	t := time.NewTicker(l.opts.SummaryEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			l.Flush()
		case <-l.stop:
			l.Flush()
			return
		}
	}
}

// Flush records one audit.suppressed event for each action and reason
// with refusals held back since the last one.
func (l *Limiter) Flush() {
	type held struct {
		key         limitKey
		n           int
		first, last time.Time
	}
	var out []held
	l.mu.Lock()
	for k, st := range l.state {
		if st.held > 0 {
			out = append(out, held{k, st.held, st.first, st.last})
			st.held = 0
		}
	}
	l.mu.Unlock()
	for _, h := range out {
		d := map[string]string{
			"count": strconv.Itoa(h.n),
			"first": h.first.UTC().Format(time.RFC3339Nano),
			"last":  h.last.UTC().Format(time.RFC3339Nano),
		}
		if h.key.reason != "" {
			d["reason"] = h.key.reason
		}
		l.next.Record(context.Background(), Event{Action: SuppressedAction, Outcome: "done", Actor: "warden", Subject: h.key.action,
			Reason: "rate-limited", Details: d})
	}
}

// Close stops the summary timer and records what is still held back. It
// does not close the Recorder behind it.
func (l *Limiter) Close() {
	l.once.Do(func() { close(l.stop) })
	<-l.done
}
