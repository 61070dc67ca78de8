// Package ratelimit holds token buckets per key in a map of bounded size,
// and the key of a peer address (its IP, or its IPv6 /64): the API's
// throttles and the broker's per-source connection rate use them.
package ratelimit

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Set is a token bucket per key (a remote address, a token ID) in
// a map of bounded size. A bucket that has filled up again carries no
// state (a new one would be the same), so such buckets are dropped
// whenever the map is full; if it is still full, newcomers share one
// overflow bucket: memory stays bounded, and a caller with more addresses
// than the map holds gains one bucket, not one each.
type Set struct {
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

// NewSet returns a Set of buckets of perSecond events a second, burst at
// most, for up to max keys.
func NewSet(perSecond float64, burst, max int) *Set {
	return &Set{
		limit: rate.Limit(perSecond), burst: burst, max: max,
		m:        map[string]*rate.Limiter{},
		overflow: rate.NewLimiter(rate.Limit(perSecond), burst),
	}
}

// Wait returns how long key must wait before its next event would be
// allowed, taking nothing (0: it may go now).
func (s *Set) Wait(key string, now time.Time) time.Duration {
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

// Take spends one event of key's bucket and returns 0, or returns how long
// to wait if the bucket is empty.
func (s *Set) Take(key string, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	lim := s.bucket(key, now)
	if lim.AllowN(now, 1) {
		return 0
	}
	return s.until(lim, now)
}

// bucket returns key's bucket, making one if there is room.
func (s *Set) bucket(key string, now time.Time) *rate.Limiter {
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
func (s *Set) until(lim *rate.Limiter, now time.Time) time.Duration {
	missing := 1 - lim.TokensAt(now)
	if missing <= 0 {
		return 0
	}
	return max(time.Duration(missing/float64(s.limit)*float64(time.Second)), 1)
}

// Size is the number of keys with a bucket of their own.
func (s *Set) Size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// RemoteKey is the throttling key of a peer address: its IP, or for IPv6
// its /64, which one host usually holds whole and could otherwise walk
// through one address per request.
func RemoteKey(remoteAddr string) string {
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
