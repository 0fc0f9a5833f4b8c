// Package manager owns the lifecycle of `cell serve`'s sandboxes: the state machine (creating →
// running → killed, expired, lost or failed, with room for paused), timeouts, envd's init
// (env vars, access token), persistence of every transition in the store, re-adoption
// of live VMs after a restart, and shutdown that either kills VMs or leaves them for the next run.
package manager
