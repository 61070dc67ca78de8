//go:build !linux

package faults

import (
	"os"
	"testing"
	"time"
)

// watchDir reports the names of files that appear in dir (and, with
// modified, that change size), by polling every millisecond where there
// is no inotify.
func watchDir(t testing.TB, dir string, modified bool) <-chan string {
	t.Helper()
	names := make(chan string, 1<<16)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		defer close(names)
		seen := map[string]int64{}
		for {
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				info, err := e.Info()
				if err != nil {
					continue
				}
				size, ok := seen[e.Name()]
				if !ok || (modified && size != info.Size()) {
					seen[e.Name()] = info.Size()
					names <- e.Name()
				}
			}
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return names
}
