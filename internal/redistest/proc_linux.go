package redistest

import "syscall"

// sysProcAttr makes redis-server die with the test binary, even when the
// binary is killed before Exit runs.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
