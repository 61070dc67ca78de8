package bench

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal has the kernel kill the child when the benchmark
// dies, so that an interrupted run leaves no server holding ports and
// thousands of sessions. (The signal follows the thread that started the
// child; Go ends threads only for goroutines that exit locked to one,
// which this package never does.)
func setParentDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
