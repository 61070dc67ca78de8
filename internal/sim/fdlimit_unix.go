//go:build unix

package sim

import "syscall"

// FileLimit returns the process's open-file limit (the soft limit, which
// the Go runtime raises to the hard limit at start) and true, or false
// where it cannot be read. Every simulated device holds one descriptor.
func FileLimit() (uint64, bool) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, false
	}
	return uint64(l.Cur), true
}
