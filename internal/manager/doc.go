// Package manager owns the lifecycle of `cell serve`'s sandboxes: the state machine (state.go:
// creating → running ⇄ pausing → paused ⇄ resuming, and killed, expired or failed; lost for what
// a restart cannot take back), timeouts, envd's init (env vars, access token), persistence of
// every transition in the store, re-adoption of live VMs after a restart, and shutdown that kills
// VMs, pauses them or leaves them for the next run. It drives VMs through Runtime and Instance
// (runtime.go), which SandboxRuntime adapts the QEMU runtime to and tests fake.
package manager
