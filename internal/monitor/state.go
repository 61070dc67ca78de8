package monitor

import (
	"strings"
	"sync"
	"sync/atomic"
)

// window counts events in a sliding window of fixed width in O(1) memory:
// the counts of the current and the previous fixed interval, the previous
// one weighted by how much of it the sliding window still covers. The
// estimate is exact when events are spread evenly over the previous
// interval and never off by more than that interval's count.
type window struct {
	idx       int64 // the current fixed interval: time / width
	prev, cur uint32
}

// add counts one event at now (Unix nanoseconds) in a window of width w
// and returns the estimated number of events in the last w.
func (x *window) add(now, w int64) float64 {
	i := now / w
	switch {
	case i == x.idx:
	case i == x.idx+1:
		x.prev, x.cur = x.cur, 0
	case i > x.idx+1:
		x.prev, x.cur = 0, 0
	default:
		// The clock went back: count the event in the current interval
		// rather than lose what was counted.
		i = x.idx
	}
	x.idx = i
	if x.cur < ^uint32(0) {
		x.cur++
	}
	frac := float64(now-i*w) / float64(w)
	frac = min(max(frac, 0), 1)
	return float64(x.prev)*(1-frac) + float64(x.cur)
}

// reset forgets the counts, so that a detector that fired starts counting
// afresh: a sustained flood fires once per threshold events.
func (x *window) reset() { x.prev, x.cur = 0, 0 }

// ewma is an exponentially weighted moving average that starts as a plain
// mean: during warm-up every sample weighs the same, so the baseline does
// not depend on the first sample alone.
type ewma struct {
	mean float64
	n    int64 // samples seen, saturating
}

// add learns sample x with smoothing alpha once warm samples were seen.
func (e *ewma) add(x, alpha float64, warm int64) {
	if e.n < warm {
		e.n++
		e.mean += (x - e.mean) / float64(e.n)
		return
	}
	if e.n < 1<<62 {
		e.n++
	}
	e.mean += alpha * (x - e.mean)
}

// deviceState is what the monitor knows of one authenticated device.
// Every field is guarded by the mutex of the device's shard.
type deviceState struct {
	lastSeen        int64  // last Connected or Published (Unix ns); 0: never
	lastAny         int64  // last event of any kind, for forgetting
	model           string // as the device last reported with its firmware
	silenceReported bool   // reported silent since it was last seen

	acl      window
	connects window

	lastHost string // host of the last Connected
	switches window // changes of host between consecutive connects

	bucket         int64 // the publish-rate interval being counted: time / interval
	bucketCount    int64
	bucketReported bool
	rate           ewma  // publishes per interval, over intervals with publishes
	size           ewma  // payload bytes
	sizeReported   int64 // the interval of the last payload-size finding

	counts Activity // what the operator sees (Monitor.Activity)
}

// subjectState is what the monitor counts of a subject it cannot trust to
// exist: a claimed device ID, a source host, a service.
type subjectState struct {
	lastAny int64
	auth    window
	tag     window
	replay  window
	acl     window
}

// shardCount spreads the tables over independently locked maps, so that
// connections publishing at once rarely wait on one another.
const shardCount = 64

// table is a bounded map from an ID to its state, sharded by the ID's
// hash. Entries are created on first sight while the table holds fewer
// than max; beyond that the subject is not tracked (and counted), so that
// peers cannot make the monitor's memory grow without bound.
type table[T any] struct {
	shards [shardCount]shard[T]
	n      atomic.Int64
	max    int64
}

type shard[T any] struct {
	mu sync.Mutex
	m  map[string]*T
	_  [48]byte // keeps neighbouring shards' locks off one cache line
}

func newTable[T any](max int) *table[T] {
	t := &table[T]{max: int64(max)}
	for i := range t.shards {
		t.shards[i].m = make(map[string]*T)
	}
	return t
}

// shard returns the shard holding id.
func (t *table[T]) shard(id string) *shard[T] {
	// FNV-1a, inline: hashing must not allocate.
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return &t.shards[h%shardCount]
}

// lookup returns id's state in sh, whose lock the caller holds, creating
// it if the table has room; nil if it has none.
func (t *table[T]) lookup(sh *shard[T], id string) *T {
	if v := sh.m[id]; v != nil {
		return v
	}
	if t.n.Load() >= t.max {
		return nil
	}
	v := new(T)
	// The key is copied: the event's string may be a slice of a larger
	// buffer the producer reuses or keeps.
	sh.m[strings.Clone(id)] = v
	t.n.Add(1)
	return v
}

// sweep visits every entry, shard by shard (each shard locked only while
// it is visited), and deletes those for which fn returns true.
func (t *table[T]) sweep(fn func(id string, v *T) (drop bool)) {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for id, v := range sh.m {
			if fn(id, v) {
				delete(sh.m, id)
				t.n.Add(-1)
			}
		}
		sh.mu.Unlock()
	}
}

// len is the number of entries.
func (t *table[T]) len() int64 { return t.n.Load() }

// hostOf returns the host of a host:port address without allocating: the
// address itself if it has no port, without the brackets of an IPv6
// literal.
func hostOf(addr string) string {
	if addr == "" {
		return ""
	}
	if addr[0] == '[' {
		if end := strings.IndexByte(addr, ']'); end > 0 {
			return addr[1:end]
		}
		return addr
	}
	i := strings.LastIndexByte(addr, ':')
	if i < 0 || strings.IndexByte(addr[:i], ':') >= 0 {
		// No port, or a bare IPv6 address.
		return addr
	}
	return addr[:i]
}
