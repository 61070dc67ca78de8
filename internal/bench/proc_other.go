//go:build !linux

package bench

import "os/exec"

// setParentDeathSignal does nothing outside Linux, which has no parent
// death signal; stop servers with Proc.Stop.
func setParentDeathSignal(*exec.Cmd) {}
