package faults

import (
	"bytes"
	"encoding/binary"
	"os"
	"syscall"
	"testing"
)

// watchDir reports the names of files created in or moved into dir (and,
// with modified, files written to) as the kernel sees them (inotify): a
// kill that waits for a file must land before the writer's next step,
// which polling every millisecond misses. The watch ends with the test.
func watchDir(t testing.TB, dir string, modified bool) <-chan string {
	t.Helper()
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		t.Fatalf("inotify: %v", err)
	}
	mask := uint32(syscall.IN_CREATE | syscall.IN_MOVED_TO)
	if modified {
		mask |= syscall.IN_MODIFY
	}
	if _, err := syscall.InotifyAddWatch(fd, dir, mask); err != nil {
		syscall.Close(fd)
		t.Fatalf("inotify watch %s: %v", dir, err)
	}
	// A non-blocking descriptor joins the runtime's poller, so Close
	// wakes the reader below.
	f := os.NewFile(uintptr(fd), "inotify")
	names := make(chan string, 1<<16)
	go func() {
		defer close(names)
		buf := make([]byte, 64<<10)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			for b := buf[:n]; len(b) >= syscall.SizeofInotifyEvent; {
				l := binary.NativeEndian.Uint32(b[12:16])
				end := syscall.SizeofInotifyEvent + int(l)
				if end > len(b) {
					break
				}
				name := string(bytes.TrimRight(b[syscall.SizeofInotifyEvent:end], "\x00"))
				select {
				case names <- name:
				default:
				}
				b = b[end:]
			}
		}
	}()
	t.Cleanup(func() { f.Close() })
	return names
}
