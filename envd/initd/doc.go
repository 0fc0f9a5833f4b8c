// Package initd is envd's PID 1: it mounts the kernel file systems, sets the hostname, brings up
// the loopback interface, starts envd's server as a child, reaps every orphan, and on request
// stops all processes, syncs the disks and powers the VM off.
package initd
