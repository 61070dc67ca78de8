package device

import (
	"math"
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	const minD, maxD = time.Second, 2 * time.Minute
	highest := func(n int64) int64 { return n - 1 }
	tests := []struct {
		attempt int
		ceiling time.Duration
	}{
		{-3, time.Second},
		{0, time.Second},
		{1, 2 * time.Second},
		{2, 4 * time.Second},
		{6, 64 * time.Second},
		{7, 2 * time.Minute}, // 128s is capped
		{62, 2 * time.Minute},
		{63, 2 * time.Minute},
		{64, 2 * time.Minute},
		{1 << 30, 2 * time.Minute},
	}
	for _, tt := range tests {
		if got := Backoff(minD, maxD, tt.attempt, highest); got != tt.ceiling {
			t.Errorf("attempt %d: the highest draw gave %v, want the ceiling %v", tt.attempt, got, tt.ceiling)
		}
		if got := Backoff(minD, maxD, tt.attempt, func(int64) int64 { return 0 }); got != 0 {
			t.Errorf("attempt %d: the lowest draw gave %v, want 0 (full jitter)", tt.attempt, got)
		}
		for range 200 {
			if got := Backoff(minD, maxD, tt.attempt, nil); got < 0 || got > tt.ceiling {
				t.Fatalf("attempt %d: %v is outside [0, %v]", tt.attempt, got, tt.ceiling)
			}
		}
	}
}

func TestBackoffIsJittered(t *testing.T) {
	const draws = 2000
	ceiling := 32 * time.Second
	seen := make(map[time.Duration]bool)
	var sum time.Duration
	for range draws {
		d := Backoff(time.Second, time.Hour, 5, nil)
		seen[d] = true
		sum += d
	}
	if len(seen) < draws*9/10 {
		t.Errorf("only %d distinct delays in %d draws", len(seen), draws)
	}
	// Uniform on [0, 32s]: the mean is 16s, and 2000 draws put it within
	// about ±0.8s with overwhelming probability.
	if mean := sum / draws; mean < 14*time.Second || mean > 18*time.Second {
		t.Errorf("mean delay %v, want about %v", mean, ceiling/2)
	}
}

func TestBackoffEdgeCases(t *testing.T) {
	tests := []struct {
		name       string
		min, max   time.Duration
		attempt    int
		rnd        func(int64) int64
		lo, hi     time.Duration
		wantExactN int64 // if non-zero, rnd must be asked for exactly this n
	}{
		{name: "zero min", min: 0, max: time.Minute, attempt: 3, lo: 0, hi: 0},
		{name: "zero max", min: time.Second, max: 0, attempt: 3, lo: 0, hi: 0},
		{name: "negative", min: -time.Second, max: -time.Second, attempt: 3, lo: 0, hi: 0},
		{name: "min above max", min: time.Minute, max: time.Second, attempt: 0, rnd: func(n int64) int64 { return n - 1 }, lo: time.Second, hi: time.Second},
		{name: "rnd too high", min: time.Second, max: time.Minute, attempt: 0, rnd: func(n int64) int64 { return n + 100 }, lo: time.Second, hi: time.Second},
		{name: "rnd negative", min: time.Second, max: time.Minute, attempt: 0, rnd: func(int64) int64 { return -5 }, lo: 0, hi: 0},
		{name: "ceiling reachable", min: 10, max: 100, attempt: 1, rnd: func(n int64) int64 { return n - 1 }, lo: 20, hi: 20, wantExactN: 21},
		{name: "largest durations", min: math.MaxInt64, max: math.MaxInt64, attempt: 5, rnd: func(n int64) int64 { return n - 1 }, lo: math.MaxInt64 - 1, hi: math.MaxInt64, wantExactN: math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var asked int64
			rnd := tt.rnd
			if rnd != nil {
				inner := rnd
				rnd = func(n int64) int64 { asked = n; return inner(n) }
			}
			got := Backoff(tt.min, tt.max, tt.attempt, rnd)
			if got < tt.lo || got > tt.hi {
				t.Errorf("got %v, want within [%v, %v]", got, tt.lo, tt.hi)
			}
			if tt.wantExactN != 0 && asked != tt.wantExactN {
				t.Errorf("rnd was asked for n=%d, want %d", asked, tt.wantExactN)
			}
		})
	}
}

func TestReconnectDelay(t *testing.T) {
	c := &Client{s: &settings{minBackoff: time.Second, maxBackoff: time.Minute}}
	if d := c.reconnectDelay(0); d != 0 {
		t.Errorf("the very first attempt waits %v, want 0", d)
	}
	for range 100 {
		if d := c.reconnectDelay(1); d > time.Second {
			t.Fatalf("the first retry of the first connection waits %v, want at most MinBackoff", d)
		}
	}
	c.everUp = true
	var sum time.Duration
	for range 100 {
		d := c.reconnectDelay(0)
		if d > time.Second {
			t.Fatalf("the first retry after a loss waits %v, want at most MinBackoff", d)
		}
		sum += d
	}
	if sum == 0 {
		t.Error("retries after a loss are not jittered: a fleet would reconnect in lock step")
	}
}
