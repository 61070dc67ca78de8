package api

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiterSet is a token bucket per key (a remote address, a token ID) in
// a map of bounded size. A bucket that has filled up again carries no
// state (a new one would be the same), so such buckets are dropped
// whenever the map is full; if it is still full, newcomers share one
// overflow bucket: memory stays bounded, and a caller with more addresses
// than the map holds gains one bucket, not one each.
type limiterSet struct {
	limit rate.Limit
	burst int
	max   int

	mu        sync.Mutex
	m         map[string]*rate.Limiter
	overflow  *rate.Limiter
	nextSweep time.Time
}

// sweepEvery spaces out sweeps of a full map, each of which looks at
// every bucket.
const sweepEvery = time.Second

func newLimiterSet(perSecond float64, burst, max int) *limiterSet {
	return &limiterSet{
		limit: rate.Limit(perSecond), burst: burst, max: max,
		m:        map[string]*rate.Limiter{},
		overflow: rate.NewLimiter(rate.Limit(perSecond), burst),
	}
}

// wait returns how long key must wait before its next event would be
// allowed, taking nothing (0: it may go now).
func (s *limiterSet) wait(key string, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	lim := s.m[key]
	if lim == nil {
		if len(s.m) < s.max {
			return 0 // a new bucket would be full
		}
		lim = s.overflow
	}
	return s.until(lim, now)
}

// take spends one event of key's bucket and returns 0, or returns how long
// to wait if the bucket is empty.
func (s *limiterSet) take(key string, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	lim := s.bucket(key, now)
	if lim.AllowN(now, 1) {
		return 0
	}
	return s.until(lim, now)
}

// bucket returns key's bucket, making one if there is room.
func (s *limiterSet) bucket(key string, now time.Time) *rate.Limiter {
	if lim := s.m[key]; lim != nil {
		return lim
	}
	if len(s.m) >= s.max && !now.Before(s.nextSweep) {
		for k, lim := range s.m {
			if lim.TokensAt(now) >= float64(s.burst) {
				delete(s.m, k)
			}
		}
		s.nextSweep = now.Add(sweepEvery)
	}
	if len(s.m) >= s.max {
		return s.overflow
	}
	lim := rate.NewLimiter(s.limit, s.burst)
	s.m[key] = lim
	return lim
}

// until is how long until lim holds one whole event.
func (s *limiterSet) until(lim *rate.Limiter, now time.Time) time.Duration {
	missing := 1 - lim.TokensAt(now)
	if missing <= 0 {
		return 0
	}
	return max(time.Duration(missing/float64(s.limit)*float64(time.Second)), 1)
}

// size is the number of keys with a bucket of their own.
func (s *limiterSet) size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// remoteKey is the throttling key of a peer address: its IP, or for IPv6
// its /64, which one host usually holds whole and could otherwise walk
// through one address per request.
func remoteKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return ip.String()
	}
	p, err := ip.Prefix(64)
	if err != nil {
		return ip.String()
	}
	return p.String()
}
