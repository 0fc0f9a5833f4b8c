// Package cli owns the `cell` command line: it parses flags (cobra), wires the image builder, the
// VM host and the sandbox runtime together for the commands that run VMs of their own, hands
// `cell serve`'s to a daemon (internal/daemon) that it serves and signals, and maps outcomes to
// exit codes.
package cli
