package sim

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// Buckets tile the tracked range without gaps or overlaps, and none is
// wider than 1/64 of the values in it.
func TestBuckets(t *testing.T) {
	prevHi := int64(-1)
	for i := range numBuckets {
		lo, hi := bucketRange(i)
		if lo != prevHi+1 || hi < lo {
			t.Fatalf("bucket %d is [%d, %d] after one ending at %d", i, lo, hi, prevHi)
		}
		if float64(hi-lo+1) > float64(lo)/subBuckets+1 {
			t.Fatalf("bucket %d [%d, %d] is wider than 1/%d of its values", i, lo, hi, subBuckets)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i {
			t.Fatalf("bucket %d [%d, %d]: bucketOf gives %d and %d", i, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		prevHi = hi
	}
	if prevHi != maxTracked {
		t.Fatalf("the last bucket ends at %d, want %d", prevHi, maxTracked)
	}
	if bucketOf(math.MaxInt64) != numBuckets-1 {
		t.Fatal("a value beyond the range does not land in the last bucket")
	}
}

// Quantiles agree with the exact order statistics of the same values to
// within the bucket width.
func TestQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	vals := make([]time.Duration, 100_000)
	for i := range vals {
		// Log-normal-ish latencies from microseconds to seconds.
		vals[i] = time.Duration(math.Exp(rng.NormFloat64()*2+13)) + time.Duration(rng.IntN(50))
		h.Record(vals[i])
	}
	slices.Sort(vals)
	for _, q := range []float64{0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1} {
		rank := max(int(math.Ceil(q*float64(len(vals)))), 1)
		exact := vals[rank-1]
		got := h.Quantile(q)
		if diff := math.Abs(float64(got - exact)); diff > float64(exact)/subBuckets+1 {
			t.Errorf("q%v = %v, exact %v (off by %.2f%%)", q, got, exact, 100*diff/float64(exact))
		}
	}
	if h.Min() != vals[0] || h.Max() != vals[len(vals)-1] || h.Count() != uint64(len(vals)) {
		t.Errorf("min %v max %v count %d, want %v %v %d", h.Min(), h.Max(), h.Count(), vals[0], vals[len(vals)-1], len(vals))
	}
	var sum float64
	for _, v := range vals {
		sum += float64(v)
	}
	if mean := time.Duration(math.Round(sum / float64(len(vals)))); h.Mean() != mean {
		t.Errorf("mean %v, want %v", h.Mean(), mean)
	}
}

func TestHistogramEdges(t *testing.T) {
	var h Histogram
	if l := h.Latency(); l != (Latency{}) {
		t.Errorf("empty histogram: %+v", l)
	}
	h.Record(-time.Second) // a clock stepped back
	if h.Min() != 0 || h.Max() != 0 || h.Count() != 1 {
		t.Errorf("a negative value: min %v max %v count %d", h.Min(), h.Max(), h.Count())
	}
	h.Record(time.Hour) // beyond the tracked range: Max stays exact
	if h.Max() != time.Hour || h.Quantile(1) != time.Hour {
		t.Errorf("an hour: max %v, q1 %v", h.Max(), h.Quantile(1))
	}
	// Two values: p50 is the first, p100 the last.
	var two Histogram
	two.Record(10 * time.Microsecond)
	two.Record(10 * time.Millisecond)
	if q := two.Quantile(0.5); q < 9*time.Microsecond || q > 11*time.Microsecond {
		t.Errorf("p50 of two values = %v, want the smaller", q)
	}
	h.Reset()
	if h.Count() != 0 || h.Max() != 0 {
		t.Error("Reset left values")
	}
}

// Merging is the same as recording everything in one histogram.
func TestMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var all, a, b Histogram
	for i := range 10_000 {
		v := time.Duration(rng.Int64N(int64(time.Second)))
		all.Record(v)
		if i%3 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
	}
	var m Histogram
	m.Merge(&a)
	m.Merge(&b)
	m.Merge(nil)
	m.Merge(&Histogram{})
	if m.counts != all.counts || m.Latency() != all.Latency() {
		t.Errorf("merged %+v, recorded together %+v", m.Latency(), all.Latency())
	}
}

func TestLatencyJSON(t *testing.T) {
	l := Latency{Count: 3, Min: 1500 * time.Nanosecond, Mean: 2 * time.Millisecond, P50: 1234567 * time.Nanosecond,
		P90: 3 * time.Millisecond, P99: 4 * time.Millisecond, P999: 5 * time.Millisecond, Max: 2 * time.Second}
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"count":3,"min_ms":0.001,"mean_ms":2,"p50_ms":1.234,"p90_ms":3,"p99_ms":4,"p999_ms":5,"max_ms":2000}`
	if string(b) != want {
		t.Errorf("JSON %s, want %s", b, want)
	}
	var back Latency
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	// Microsecond resolution survives.
	if back.P50 != 1234*time.Microsecond || back.Max != 2*time.Second || back.Min != time.Microsecond {
		t.Errorf("read back %+v", back)
	}
	if err := json.Unmarshal([]byte(`{"p50_ms":"x"}`), &back); err == nil {
		t.Error("a string latency was accepted")
	}
}
