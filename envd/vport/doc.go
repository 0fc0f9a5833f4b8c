// Package vport owns the guest end of the host channel: the virtio-serial character device named
// by the host. A port can be opened once, reads return EOF while no host is connected, and the
// host may leave and come back; Port hides that behind one connection per host visit.
package vport
