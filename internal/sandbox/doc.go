// Package sandbox owns a sandbox's life on one host: it boots a VM from the guest image, talks to
// envd over the VM's channel (process service, power-off), runs commands with streamed output and
// stdin, and turns a dying VM into a clear error for whoever is waiting on it.
package sandbox
