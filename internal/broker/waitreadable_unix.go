//go:build unix

package broker

import (
	"errors"
	"syscall"
)

// WaitReadable returns when the socket under the TLS connection has bytes
// to read (or the peer closed it), without reading them, or with the
// read deadline's error. mochi's reader waits here for a client that has
// been idle a while (PATCHES.md 13): parked in a few hundred bytes of
// frames, where a Read of the TLS connection parks under 2 KiB of its
// record layer's, so the collector can shrink an idle connection's stack
// to 4 KiB. crypto/tls buffers only what it read from this socket, and
// the caller makes sure it holds no complete record first.
func (c *guardedConn) WaitReadable() error {
	if c.raw == nil {
		return errors.ErrUnsupported
	}
	var werr error
	err := c.raw.Read(func(fd uintptr) bool {
		switch e := peekSocket(fd, c.peek[:]); e {
		case syscall.EAGAIN, syscall.EINTR:
			return false // nothing yet: wait for the poller
		case nil:
			return true // bytes, or the peer's FIN: the Read that follows sees them
		default:
			werr = e // a reset: the Read that follows would see it too
			return true
		}
	})
	if err != nil {
		return err
	}
	return werr
}
