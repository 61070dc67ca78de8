package mqttattack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// FloodOptions shape a connection flood.
type FloodOptions struct {
	// Addr is the listener to flood, host:port.
	Addr string
	// Workers is how many connections are in the air at once; 0 means 16.
	Workers int
	// Hello is written on every connection as soon as it is open (a
	// ClientHello makes the server start a TLS handshake, the expensive
	// part of accepting a connection); nil writes nothing.
	Hello []byte
	// Wait bounds how long each connection waits for the server's first
	// byte or its close; 0 means one second.
	Wait time.Duration
}

// FloodReport counts what the server did with a flood's connections.
type FloodReport struct {
	// Attempts is how many connections were tried.
	Attempts int64
	// DialErrors could not even connect (the accept backlog full, the
	// local ports exhausted, the listener gone); DialError is the first.
	DialErrors int64
	DialError  error
	// Refused were closed (or reset) by the server before it sent a byte:
	// refused at accept.
	Refused int64
	// Answered got a byte back (a TLS ServerHello): the server accepted
	// the connection and worked on it.
	Answered int64
	// Unanswered got neither within Wait.
	Unanswered int64
	// Duration is how long the flood ran.
	Duration time.Duration
}

// Rate is connection attempts per second.
func (r FloodReport) Rate() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Attempts) / r.Duration.Seconds()
}

// Flood opens connections to o.Addr from o.Workers goroutines, each as
// fast as it can, until ctx ends: every connection writes o.Hello, waits
// for the server's first byte or its close, and is closed with a reset
// (SO_LINGER 0) so that thousands of them per second do not use up the
// local ports in TIME_WAIT.
func Flood(ctx context.Context, o FloodOptions) FloodReport {
	workers := o.Workers
	if workers <= 0 {
		workers = 16
	}
	wait := o.Wait
	if wait <= 0 {
		wait = time.Second
	}
	var r struct{ attempts, dialErrors, refused, answered, unanswered atomic.Int64 }
	var firstErr atomic.Pointer[error]
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			d := net.Dialer{Timeout: wait}
			buf := make([]byte, 1)
			for ctx.Err() == nil {
				r.attempts.Add(1)
				c, err := d.DialContext(ctx, "tcp", o.Addr)
				if err != nil {
					if ctx.Err() == nil {
						r.dialErrors.Add(1)
						firstErr.CompareAndSwap(nil, &err)
					} else {
						r.attempts.Add(-1)
					}
					continue
				}
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0)
				}
				_ = c.SetDeadline(time.Now().Add(wait))
				if len(o.Hello) > 0 {
					_, _ = c.Write(o.Hello)
				}
				_, err = c.Read(buf)
				switch {
				case err == nil:
					r.answered.Add(1)
				case errors.Is(err, os.ErrDeadlineExceeded):
					r.unanswered.Add(1)
				default:
					r.refused.Add(1)
				}
				_ = c.Close()
			}
		})
	}
	wg.Wait()
	rep := FloodReport{
		Attempts: r.attempts.Load(), DialErrors: r.dialErrors.Load(), Refused: r.refused.Load(),
		Answered: r.answered.Load(), Unanswered: r.unanswered.Load(), Duration: time.Since(start),
	}
	if e := firstErr.Load(); e != nil {
		rep.DialError = *e
	}
	return rep
}

// Stalled is a connection an attacker opened, wrote a little to and then
// left hanging, waiting for the server to give up on it.
type Stalled struct {
	conn     net.Conn
	opened   time.Time
	done     chan struct{}
	closedAt time.Time // written before done is closed
	closed   bool      // the server closed it (not Close)
}

// Stall writes prefix (possibly nothing) on conn and then only reads,
// discarding what the server sends, until the server closes the
// connection; Done is closed then. conn may be plain TCP (a peer that
// never starts TLS, or stops in the middle of its handshake after a
// ClientHello) or a TLS connection whose handshake is complete (a client
// that never sends CONNECT). The clock for ClosedAfter starts now.
func Stall(conn net.Conn, prefix []byte) (*Stalled, error) {
	s := &Stalled{conn: conn, opened: time.Now(), done: make(chan struct{})}
	if len(prefix) > 0 {
		_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write(prefix); err != nil {
			return nil, fmt.Errorf("mqttattack: stall: write the first %d bytes (did the server close the connection already?): %w", len(prefix), err)
		}
		_ = conn.SetWriteDeadline(time.Time{})
	}
	go func() {
		_, err := io.Copy(io.Discard, conn)
		s.closedAt = time.Now()
		s.closed = !errors.Is(err, net.ErrClosed)
		close(s.done)
	}()
	return s, nil
}

// Done is closed when the connection has ended.
func (s *Stalled) Done() <-chan struct{} { return s.done }

// ClosedByServer reports, once Done is closed, whether the server ended
// the connection (rather than Close).
func (s *Stalled) ClosedByServer() bool {
	select {
	case <-s.done:
		return s.closed
	default:
		return false
	}
}

// ClosedAfter is how long the server let the connection hang (from Stall
// to the close); zero while it is open.
func (s *Stalled) ClosedAfter() time.Duration {
	select {
	case <-s.done:
		return s.closedAt.Sub(s.opened)
	default:
		return 0
	}
}

// Close closes the connection and waits for its reader.
func (s *Stalled) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
}
