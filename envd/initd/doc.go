// Package initd is envd's PID 1: it mounts the kernel file systems, sets the hostname, brings up
// the loopback interface and the network, runs envd's server (in PID 1 itself), reaps every
// orphan but the server's own children, and on request stops all processes, syncs the disks and
// powers the VM off.
package initd
