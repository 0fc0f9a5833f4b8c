// Package daemon owns `cell serve`'s life apart from its command line: the order in which a
// daemon comes up over a data directory, and what it gives back when it goes.
//
// Start takes, in this order: the data directory's lock (one daemon per directory, before
// anything else: a second one would take the first one's VMs for orphans), the sandbox runtime
// (the guest image, built if missing; the accelerator), the run directory's lock (it may be
// shared through $CELL_RUN_DIR), the base template's memory snapshot (built if missing), the
// store, the sandbox manager, the snapshots of sandboxes, the recovery of what the previous
// daemon left (running VMs re-adopted, paused ones taken back), the pruning of images earlier
// recipes built, and the warm pools. A Daemon owns all of these until Shutdown, which stops the
// sandboxes in one of the ShutdownModes and releases them in the reverse order; a Start that
// fails midway releases what it had taken, leaving the sandboxes it had re-adopted running.
//
// Listening is not the package's: the caller serves Handler (and MetricsHandler) on listeners
// of its own, and stops serving before it calls Shutdown.
package daemon
