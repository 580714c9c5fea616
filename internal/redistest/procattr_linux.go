//go:build linux

package redistest

import "syscall"

// sysProcAttr makes a spawned redis-server die with the test binary: the kernel sends it SIGKILL
// when its parent goes away, so a killed or timed-out test binary leaves no server behind.
//
// Linux delivers Pdeathsig when the parent *thread* exits, not the process. The Go runtime only
// ends a thread when a goroutine exits while locked to it (runtime.LockOSThread); test code that
// does so while a real server runs may see that server killed.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
