package broker

import (
	"syscall"
	"unsafe"
)

// peekSocket looks for a byte on socket fd without taking it or blocking:
// nil if there is one (or the peer closed), EAGAIN if not. recvfrom(2)
// directly: syscall.Recvfrom allocates the sender's address, once per
// idle connection's wake-up.
func peekSocket(fd uintptr, b []byte) error {
	_, _, e := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
