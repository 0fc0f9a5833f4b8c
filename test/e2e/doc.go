// Package e2e tests Cell end to end with real QEMU VMs (TCG here) booted from the real guest
// image: the `cell` CLI as a user runs it, and the sandbox runtime in-process where a test needs
// to reach inside (killing QEMU, counting goroutines). The image must be built first (`make
// image`); a missing image fails the tests with that instruction.
package e2e
