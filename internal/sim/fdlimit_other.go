//go:build !unix

package sim

// FileLimit reports false: this platform has no open-file limit to read.
func FileLimit() (uint64, bool) { return 0, false }
