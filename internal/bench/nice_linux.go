//go:build linux

package bench

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// reniceSelf sets every thread of this process to nice (Linux schedules
// threads, and a new thread inherits its creator's value, so the threads
// the Go runtime starts later follow). It reports the priority the
// process runs at, in words, for the report.
func reniceSelf(nice int) string {
	if nice == 0 {
		return "nice 0"
	}
	// Twice: a thread created while the first pass ran may have copied a
	// value not yet changed.
	for range 2 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Sprintf("inherited (cannot list threads: %v)", err)
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice); err != nil {
				return fmt.Sprintf("inherited (nice %d refused: %v; run as root for a prioritised control group)", nice, err)
			}
		}
	}
	return fmt.Sprintf("nice %d", nice)
}
