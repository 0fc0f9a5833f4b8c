package sandbox

import (
	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/vmm"
)

// What the manager reads of a sandbox's VM and network, as methods: it drives sandboxes through
// an interface of its own (manager.Instance), which a test fakes without QEMU.

// PID returns the VM's QEMU process and its start time (see vmm.IsOurs).
func (s *Sandbox) PID() (pid int, startTicks uint64) { return s.VM.PID, s.VM.StartTicks }

// Exited is closed when the VM's QEMU has exited.
func (s *Sandbox) Exited() <-chan struct{} { return s.VM.Exited() }

// ExitReason says how the VM's QEMU exited (once Exited is closed).
func (s *Sandbox) ExitReason() string { return s.VM.ExitReason() }

// OpenConsoleLog opens the VM's console log (see vmm.VM.OpenConsoleLog).
func (s *Sandbox) OpenConsoleLog() (*vmm.ConsoleLog, error) { return s.VM.OpenConsoleLog() }

// Network returns the sandbox's network (nil: it has none).
func (s *Sandbox) Network() *netstack.Network { return s.Net }
