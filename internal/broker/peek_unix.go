//go:build unix && !linux

package broker

import "syscall"

// peekSocket looks for a byte on socket fd without taking it or blocking:
// nil if there is one (or the peer closed), EAGAIN if not.
func peekSocket(fd uintptr, b []byte) error {
	_, _, err := syscall.Recvfrom(int(fd), b, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err
}
