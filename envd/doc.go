// Package envd is the root of Cell's guest agent. Its sub-packages own the parts: initd (PID 1:
// mounts, reaping, power-off), vport (the virtio-serial port to the host), process (E2B's
// process.Process service) and server (the HTTP endpoints served over the channel).
package envd
