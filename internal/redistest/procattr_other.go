//go:build !linux

package redistest

import "syscall"

// sysProcAttr returns nil off Linux: there is no parent-death signal, so a shared server outlives
// a test binary that is killed before Main stops it.
func sysProcAttr() *syscall.SysProcAttr { return nil }
