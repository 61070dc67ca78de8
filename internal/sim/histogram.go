package sim

import (
	"encoding/json"
	"math"
	"math/bits"
	"time"
)

// The histogram is log-linear, like HdrHistogram: values below subBuckets
// nanoseconds have a bucket each; above, every power of two is split into
// subBuckets equal buckets, so a bucket is at most 1/64 (1.6%) of its
// values wide. Values above maxTracked land in the last bucket; Max stays
// exact.
const (
	subBits    = 6
	subBuckets = 1 << subBits
	// maxExp: 2^41 ns is about 37 minutes, beyond any latency worth
	// resolving.
	maxExp     = 41 - subBits - 1
	numBuckets = subBuckets + (maxExp+1)*subBuckets
	maxTracked = int64(1)<<(maxExp+subBits+1) - 1
)

// Histogram records durations (latencies) in fixed log-linear buckets of
// at most 1.6% relative width, so that quantiles are accurate to that and
// merging two histograms is adding two arrays: each publisher or consumer
// can keep its own and a summary adds them up. It is about 18 KiB.
//
// The zero value is empty and ready to use. A Histogram is not safe for
// concurrent use.
type Histogram struct {
	counts   [numBuckets]uint64
	n        uint64
	sum      float64 // nanoseconds; float so that it cannot overflow
	min, max int64
}

func bucketOf(v int64) int {
	if v < subBuckets {
		return int(v)
	}
	if v > maxTracked {
		v = maxTracked
	}
	e := bits.Len64(uint64(v)) - subBits - 1 // v>>e is in [subBuckets, 2*subBuckets)
	return subBuckets + e*subBuckets + int(v>>e) - subBuckets
}

// bucketRange returns the smallest and largest value of bucket i.
func bucketRange(i int) (lo, hi int64) {
	if i < subBuckets {
		return int64(i), int64(i)
	}
	e := (i - subBuckets) / subBuckets
	m := int64(subBuckets + (i-subBuckets)%subBuckets)
	return m << e, (m+1)<<e - 1
}

// Record adds one duration; a negative one (a clock stepped back between
// send and receipt) counts as zero.
func (h *Histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// Merge adds every value recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil || o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// Reset empties h.
func (h *Histogram) Reset() { *h = Histogram{} }

// Count is the number of values recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Min and Max are the smallest and largest values recorded, exactly; 0
// when empty.
func (h *Histogram) Min() time.Duration { return time.Duration(h.min) }

// Max is the largest value recorded, exactly; 0 when empty.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean is the average of the values recorded; 0 when empty.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(math.Round(h.sum / float64(h.n)))
}

// Quantile returns the value below which a fraction q (0 to 1) of the
// recorded values lie, to within the bucket width; the middle of the
// bucket that holds it, kept within [Min, Max]. 0 when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	q = min(max(q, 0), 1)
	// The rank of the value, 1-based: the ceiling, so that p50 of two
	// values is the first and p100 the last.
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	if rank >= h.n {
		return time.Duration(h.max) // exact, and the last bucket may hold anything beyond maxTracked
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := bucketRange(i)
			v := lo + (hi-lo)/2
			return time.Duration(min(max(v, h.min), h.max))
		}
	}
	return time.Duration(h.max)
}

// Latency summarises a Histogram.
func (h *Histogram) Latency() Latency {
	return Latency{
		Count: h.n,
		Min:   h.Min(),
		Mean:  h.Mean(),
		P50:   h.Quantile(0.50),
		P90:   h.Quantile(0.90),
		P99:   h.Quantile(0.99),
		P999:  h.Quantile(0.999),
		Max:   h.Max(),
	}
}

// Latency is a summary of recorded durations. In JSON the durations are
// milliseconds with microsecond resolution ("p99_ms": 1.234), which is what
// a reader of a benchmark file wants to see.
type Latency struct {
	Count                               uint64
	Min, Mean, P50, P90, P99, P999, Max time.Duration
}

type latencyJSON struct {
	Count  uint64  `json:"count"`
	MinMS  float64 `json:"min_ms"`
	MeanMS float64 `json:"mean_ms"`
	P50MS  float64 `json:"p50_ms"`
	P90MS  float64 `json:"p90_ms"`
	P99MS  float64 `json:"p99_ms"`
	P999MS float64 `json:"p999_ms"`
	MaxMS  float64 `json:"max_ms"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func fromMS(v float64) time.Duration { return time.Duration(math.Round(v * 1e6)) }

// MarshalJSON writes the durations as milliseconds.
func (l Latency) MarshalJSON() ([]byte, error) {
	return json.Marshal(latencyJSON{l.Count, ms(l.Min), ms(l.Mean), ms(l.P50), ms(l.P90), ms(l.P99), ms(l.P999), ms(l.Max)})
}

// UnmarshalJSON reads what MarshalJSON writes, so that a tool can compare
// summaries saved by earlier runs.
func (l *Latency) UnmarshalJSON(b []byte) error {
	var j latencyJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*l = Latency{j.Count, fromMS(j.MinMS), fromMS(j.MeanMS), fromMS(j.P50MS), fromMS(j.P90MS), fromMS(j.P99MS), fromMS(j.P999MS), fromMS(j.MaxMS)}
	return nil
}
