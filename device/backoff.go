package device

import (
	"math"
	"math/rand/v2"
	"time"
)

// Backoff returns how long to wait before reconnection attempt number
// attempt (0 for the first retry after a loss): exponential backoff with
// full jitter, a duration drawn uniformly from
// [0, min(maxDelay, minDelay·2^attempt)].
//
// Full jitter matters more than the exponent: when a broker restarts, every
// device in the fleet loses its connection in the same instant, and
// without randomness they would all come back in lock step.
//
// rnd(n) must return a value in [0, n), like math/rand/v2.Int64N; nil uses
// math/rand/v2. The result is clamped to the bounds whatever rnd returns,
// and minDelay·2^attempt saturates at maxDelay instead of overflowing.
func Backoff(minDelay, maxDelay time.Duration, attempt int, rnd func(int64) int64) time.Duration {
	if minDelay <= 0 || maxDelay <= 0 {
		return 0
	}
	if attempt < 0 {
		attempt = 0
	}
	ceiling := maxDelay
	if minDelay < maxDelay && attempt < 63 && minDelay <= maxDelay>>uint(attempt) {
		// minDelay·2^attempt <= maxDelay, so the shift cannot overflow.
		ceiling = minDelay << uint(attempt)
	}
	if rnd == nil {
		rnd = rand.Int64N
	}
	n := int64(ceiling)
	if n < math.MaxInt64 {
		n++ // make the ceiling itself reachable
	}
	d := time.Duration(rnd(n))
	if d < 0 {
		return 0
	}
	if d > ceiling {
		return ceiling
	}
	return d
}
