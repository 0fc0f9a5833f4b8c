// Package vmm owns QEMU virtual machines: it probes which accelerator really works (KVM, else
// TCG), builds QEMU's microvm command line, gives every VM a private working directory (mode 0700,
// short socket paths), starts QEMU paused, attaches QMP, the serial console (a bounded log) and the
// guest channel, and waits for envd while watching QEMU's death; each of these start phases
// pushes its undoing on one cleanup stack that a failed attempt runs (start.go). It retries transient boot
// failures with jittered exponential backoff, bounds concurrent VMs, and tears every VM down
// (TERM, then KILL, sockets closed, directory removed) on every path. A VM's disk is a qcow2
// chain of layers that pauses, resumes and snapshots take by hard links, never by copy, and that
// it flattens in the background when deep (chain.go).
package vmm
