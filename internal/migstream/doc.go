// Package migstream reads and rewrites QEMU's migration stream, in the form Cell's VMs write it
// (QEMU 7.2, precopy, no compression, XBZRLE, multifd or postcopy). Split takes one RAM block's
// pages out of a stream into a file laid out like that RAM (zero pages left as holes), and
// passes everything else through unchanged: a VM restored with that file as its memory backend
// maps its RAM instead of reading it page by page from the stream. DeviceStream makes QEMU's
// RAM-less device state (xen-save-devices-state) loadable by -incoming. Anything the package
// does not understand is an error naming where it was found, never a guess.
package migstream
