package api

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/stream"
)

// Streamer hands out event subscriptions; *stream.Hub implements it.
type Streamer interface {
	Subscribe(match func(device string) bool, buffer int) *stream.Sub
}

// Stream limits.
const (
	// MaxStreamDevices is how many device= parameters a stream may name.
	MaxStreamDevices = 100
	// MaxStreamsPerToken bounds the streams one token holds open.
	MaxStreamsPerToken = 8
	// maxAppDevices bounds the devices an app's stream follows when it
	// names none (all its user's).
	maxAppDevices = 10000
	streamBuffer  = 256
	keepAlive     = 15 * time.Second
)

// streamed is what a route that wrote its own answer returns.
type streamed struct{}

// streamCounts counts open streams per token.
type streamCounts struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *streamCounts) take(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[string]int{}
	}
	if s.n[token] >= MaxStreamsPerToken {
		return false
	}
	s.n[token]++
	return true
}

func (s *streamCounts) give(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[token]--; s.n[token] <= 0 {
		delete(s.n, token)
	}
}

// openStream serves GET /v1/stream: Server-Sent Events of the telemetry
// and connections of the devices named by device= (all the caller may
// see when none is named; for an app, its user's devices).
func (a *API) openStream(c *call) (any, error) {
	if a.streamer == nil {
		return nil, &httpError{http.StatusServiceUnavailable, codeInternal, "event streams are not available on this server"}
	}
	q := c.r.URL.Query()
	for k := range q {
		if k != "device" {
			return nil, invalidf("unknown query parameter %q (only device= is accepted)", k)
		}
	}
	ids := q["device"]
	if len(ids) > MaxStreamDevices {
		return nil, invalidf("at most %d device= parameters", MaxStreamDevices)
	}
	match, err := a.streamScope(c, ids)
	if err != nil {
		return nil, err
	}
	if !a.streams.take(c.tok.ID) {
		return nil, &httpError{http.StatusTooManyRequests, codeRateLimited, fmt.Sprintf("this token has %d streams open already", MaxStreamsPerToken)}
	}
	defer a.streams.give(c.tok.ID)
	sub := a.streamer.Subscribe(match, streamBuffer)
	defer sub.Close()

	rc := http.NewResponseController(c.w)
	h := c.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	c.w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprint(c.w, "retry: 3000\n\n"); err != nil {
		return streamed{}, nil
	}
	_ = rc.Flush()
	a.log.Info("API stream opened", "token", c.tok.ID, "role", c.tok.Role, "devices", len(ids))
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		var err error
		select {
		case <-c.ctx().Done():
			return streamed{}, nil
		case <-tick.C:
			_, err = fmt.Fprint(c.w, ": keep-alive\n\n")
		case e := <-sub.C():
			if n := sub.TakeDropped(); n > 0 {
				_, err = fmt.Fprintf(c.w, "event: dropped\ndata: {\"count\":%d}\n\n", n)
			}
			if err == nil {
				_, err = fmt.Fprintf(c.w, "event: %s\ndata: %s\n\n", e.Type, e.Data)
			}
		}
		if err == nil {
			err = rc.Flush()
		}
		if err != nil {
			return streamed{}, nil // the reader went away
		}
	}
}

// streamScope returns which devices' events the caller's stream carries.
// An app names only its user's devices (any other answers not found, as
// everywhere) or, naming none, gets all of them as of now.
func (a *API) streamScope(c *call, ids []string) (func(string) bool, error) {
	if c.tok.Role != apitoken.RoleApp {
		if len(ids) == 0 {
			return func(string) bool { return true }, nil
		}
		return setOf(ids), nil
	}
	if len(ids) > 0 {
		for _, id := range ids {
			info, err := a.admin.Device(c.ctx(), id)
			if err != nil || info.Owner == "" || info.Owner != c.tok.User {
				return nil, &httpError{http.StatusNotFound, codeNotFound, fmt.Sprintf("device %q not found", id)}
			}
		}
		return setOf(ids), nil
	}
	var own []string
	f := store.DeviceFilter{Owner: c.tok.User, Limit: store.MaxListLimit}
	for len(own) < maxAppDevices {
		page, err := a.admin.ListDevices(c.ctx(), f)
		if err != nil {
			return nil, err
		}
		for _, d := range page {
			own = append(own, d.ID)
		}
		if len(page) < f.PageSize() {
			break
		}
		f.After = page[len(page)-1].ID
	}
	return setOf(own), nil
}

func setOf(ids []string) func(string) bool {
	set := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		set[id] = struct{}{}
	}
	return func(d string) bool { _, ok := set[d]; return ok }
}
